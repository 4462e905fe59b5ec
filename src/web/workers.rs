//! The workers page: the whole fleet (it is shared by every project), each worker's host, start,
//! heartbeat, load, version and state, kept fresh over `GET /workers/live`.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Response};
use axum::routing::get;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use sqlx::PgPool;

use super::auth::User;
use super::live;
use super::overview::feed::{Block, BlockFeed, Blocks};
use super::overview::{LiveQuery, thousands};
use super::view::{self, Layout};
use super::{WebError, WebState};
use crate::queue::workers::{self, WorkerRow};

/// Workers listed, live ones first; older stopped and lost ones past this are left out.
const MAX_WORKERS: i64 = 200;
/// Heartbeats come every 10 s; three missed ones mean the worker is probably gone, even before
/// a rescuer marks it `lost` (after 90 s).
const LATE_AFTER: TimeDelta = TimeDelta::seconds(30);

/// A worker, ready to print.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub queues: String,
    pub concurrency: String,
    pub running: String,
    /// Symbol and word, e.g. `▶ running`.
    pub state_label: &'static str,
    pub state_class: &'static str,
    pub started: String,
    pub started_stamp: String,
    /// RFC 3339, for `<time datetime>`.
    pub started_iso: String,
    pub heartbeat: String,
    pub heartbeat_stamp: String,
    pub heartbeat_iso: String,
    /// Live by its state but silent for too long.
    pub late: bool,
}

impl WorkerView {
    /// The display form of `w` at `now`.
    pub fn new(w: &WorkerRow, now: DateTime<Utc>) -> Self {
        let (state_label, state_class) = state(&w.state);
        let live = matches!(w.state.as_str(), "running" | "draining");
        Self {
            id: w.id.clone(),
            host: w.host.clone(),
            pid: w.pid,
            version: w.version.clone(),
            queues: w.queues.join(", "),
            concurrency: thousands(i64::from(w.concurrency)),
            running: thousands(i64::from(w.running)),
            state_label,
            state_class,
            started: view::ago(w.started_at, now),
            started_stamp: view::stamp(w.started_at),
            started_iso: iso(w.started_at),
            heartbeat: view::ago(w.last_heartbeat_at, now),
            heartbeat_stamp: view::stamp(w.last_heartbeat_at),
            heartbeat_iso: iso(w.last_heartbeat_at),
            late: live && now - w.last_heartbeat_at > LATE_AFTER,
        }
    }
}

/// A machine-readable time for `<time datetime>`.
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The symbol-and-word label and CSS class of a worker state.
fn state(s: &str) -> (&'static str, &'static str) {
    match s {
        "running" => ("▶ running", "wstate-running"),
        "draining" => ("◐ draining", "wstate-draining"),
        "stopped" => ("■ stopped", "wstate-stopped"),
        "lost" => ("⚠ lost", "wstate-lost"),
        _ => ("? unknown", "wstate-stopped"),
    }
}

/// The fleet with its totals.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub workers: Vec<WorkerView>,
    /// One line: how many are in each state, and slots in use.
    pub summary: String,
    /// The list was cut at [`MAX_WORKERS`].
    pub truncated: bool,
}

impl Fleet {
    async fn load(pool: &PgPool) -> Result<Self, WebError> {
        let rows = workers::list(pool, false, MAX_WORKERS).await?;
        let now = Utc::now();
        let count = |s: &str| rows.iter().filter(|w| w.state == s).count();
        let live = rows
            .iter()
            .filter(|w| matches!(w.state.as_str(), "running" | "draining"));
        let (slots, busy) = live.fold((0i64, 0i64), |(c, r), w| {
            (c + i64::from(w.concurrency), r + i64::from(w.running))
        });
        let summary = format!(
            "{} running, {} draining, {} stopped, {} lost; {} of {} job slots in use on live workers.",
            count("running"),
            count("draining"),
            count("stopped"),
            count("lost"),
            thousands(busy),
            thousands(slots)
        );
        Ok(Self {
            truncated: rows.len() as i64 >= MAX_WORKERS,
            workers: rows.iter().map(|w| WorkerView::new(w, now)).collect(),
            summary,
        })
    }
}

#[derive(Template)]
#[template(path = "workers.html")]
struct Page {
    layout: Layout,
    fleet: Fleet,
    oob: bool,
}

#[derive(Template)]
#[template(path = "workers_table.html")]
struct TableBlock<'a> {
    fleet: &'a Fleet,
    oob: bool,
}

/// `GET /workers`.
async fn page(State(state): State<WebState>, user: User) -> Result<Html<String>, WebError> {
    let page = Page {
        layout: user.layout("workers"),
        fleet: Fleet::load(&state.app.pool).await?,
        oob: false,
    };
    Ok(Html(page.render()?))
}

struct FleetBlocks {
    pool: PgPool,
}

impl Blocks for FleetBlocks {
    async fn render(&self) -> Result<Vec<Block>, WebError> {
        let fleet = Fleet::load(&self.pool).await?;
        let html = TableBlock {
            fleet: &fleet,
            oob: true,
        }
        .render()?;
        Ok(vec![Block::whole("workers-fleet", html)])
    }
}

/// `GET /workers/live`: the fleet table as it changes.
async fn live_table(
    State(state): State<WebState>,
    user: User,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
) -> Result<Response, WebError> {
    let after = live::cursor(&headers, q.after.as_deref())?;
    let blocks = FleetBlocks {
        pool: state.app.pool.clone(),
    };
    // Nothing announces heartbeats, so the timer alone drives this feed.
    let feed = BlockFeed::new(&state, &user, blocks, None);
    Ok(live::respond(&headers, after, feed).await)
}

/// Read-only routes.
pub fn pages() -> Router<WebState> {
    Router::new()
        .route("/workers", get(page))
        .route("/workers/live", get(live_table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &str, heartbeat_age: i64) -> WorkerRow {
        let now = Utc::now();
        WorkerRow {
            id: "w1".into(),
            host: "h".into(),
            pid: 7,
            version: "0.1.0".into(),
            queues: vec!["default".into(), "email".into()],
            concurrency: 16,
            running: 3,
            state: state.into(),
            started_at: now - TimeDelta::hours(1),
            last_heartbeat_at: now - TimeDelta::seconds(heartbeat_age),
        }
    }

    #[test]
    fn states_have_symbol_and_word() {
        let now = Utc::now();
        let v = WorkerView::new(&row("draining", 2), now);
        assert_eq!(v.state_label, "◐ draining");
        assert_eq!(v.queues, "default, email");
        assert!(!v.late);
        assert!(WorkerView::new(&row("running", 45), now).late);
        // A stopped worker is not late: it said goodbye.
        assert!(!WorkerView::new(&row("stopped", 4500), now).late);
        assert_eq!(state("lost").0, "⚠ lost");
    }
}
