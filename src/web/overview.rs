//! The overview page: job counts by state and kind, throughput over the last 15 minutes, the
//! oldest queued job and the live fleet, all for the signed-in project (the fleet is shared).
//!
//! The page renders fully on the server; `GET /overview/live` then keeps it fresh over one SSE
//! connection, re-rendering on a timer (sooner after an enqueue) and sending only the parts that
//! changed (see [`feed`]).

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Response};
use axum::routing::get;
use chrono::Utc;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::auth::User;
use super::live;
use super::view::{self, Layout};
use super::workers::{WorkerView, iso};
use super::{WebError, WebState};
use crate::queue::{stats, workers};

mod chart;
mod counts;
pub(in crate::web) mod feed;

use chart::Chart;
pub(in crate::web) use counts::thousands;
use counts::{Cell, KindRow, StateTotal, tabulate};
use feed::{Block, BlockFeed, Blocks};

/// Minutes of throughput the chart shows, the current one included.
const MINUTES: i32 = 15;
/// Live workers listed on the overview (the workers page lists them all).
const MAX_WORKERS: i64 = 50;
/// The oldest ready job, ready to print.
#[derive(Debug, Clone, PartialEq)]
pub struct Oldest {
    pub id: String,
    pub href: String,
    pub short_id: String,
    pub kind: String,
    pub queue: String,
    pub waiting: String,
    pub since: String,
    pub since_iso: String,
}

/// Everything the overview shows, as display strings.
#[derive(Debug, Clone)]
pub struct Overview {
    pub states: Vec<StateTotal>,
    /// The busiest kinds, by name; the rest summed into a last row.
    pub kinds: Vec<KindRow>,
    /// Per state, then all.
    pub totals: Vec<Cell>,
    /// What the kinds table's structure depends on: its kinds, in order.
    pub kinds_sig: String,
    pub chart: Chart,
    pub oldest: Option<Oldest>,
    pub workers: Vec<WorkerView>,
}

impl Overview {
    /// Reads the project's numbers, four queries at once.
    pub async fn load(pool: &PgPool, project: Uuid) -> Result<Self, WebError> {
        let (counts, minutes, oldest, fleet) = tokio::try_join!(
            stats::counts(pool, project),
            stats::throughput(pool, project, MINUTES),
            stats::oldest_queued(pool, project),
            workers::list(pool, true, MAX_WORKERS),
        )?;
        let now = Utc::now();
        let (states, kinds, totals) = tabulate(&counts);
        let kinds_sig = kinds
            .iter()
            .map(|k| k.kind.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        Ok(Self {
            states,
            kinds,
            totals,
            kinds_sig,
            chart: Chart::new(&minutes),
            oldest: oldest.map(|o| Oldest {
                id: o.id.to_string(),
                href: format!("/jobs/{}", o.id),
                short_id: view::short_id(&o.id),
                kind: o.kind,
                queue: o.queue,
                waiting: view::duration(now - o.run_at),
                since: view::stamp(o.run_at),
                since_iso: iso(o.run_at),
            }),
            workers: fleet.iter().map(|w| WorkerView::new(w, now)).collect(),
        })
    }

    /// The live parts, containers first.
    fn blocks(&self) -> Result<Vec<Block>, WebError> {
        let mut out = vec![Block::keyed(
            "ov-kinds",
            self.kinds_sig.clone(),
            KindsBlock {
                ov: self,
                oob: true,
            }
            .render()?,
        )];
        let cells = self.states.iter().map(|s| &s.count);
        let cells = cells.chain(self.kinds.iter().flat_map(|k| &k.cells));
        out.extend(cells.chain(&self.totals).map(|c| Block::span(&c.id, &c.n)));
        out.push(Block::whole(
            "ov-chart",
            ChartBlock {
                ov: self,
                oob: true,
            }
            .render()?,
        ));
        out.push(Block::whole(
            "ov-minutes",
            MinutesBlock {
                ov: self,
                oob: true,
            }
            .render()?,
        ));
        let oldest = self.oldest.as_ref().map_or(String::new(), |o| o.id.clone());
        out.push(Block::keyed(
            "ov-oldest",
            oldest,
            OldestBlock {
                ov: self,
                oob: true,
            }
            .render()?,
        ));
        if let Some(o) = &self.oldest {
            out.push(Block::span("ov-oldest-age", &o.waiting));
        }
        out.push(Block::whole(
            "ov-workers",
            WorkersBlock {
                ov: self,
                oob: true,
            }
            .render()?,
        ));
        Ok(out)
    }
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Page {
    layout: Layout,
    ov: Overview,
    oob: bool,
}

#[derive(Template)]
#[template(path = "overview_kinds.html")]
struct KindsBlock<'a> {
    ov: &'a Overview,
    oob: bool,
}

#[derive(Template)]
#[template(path = "overview_chart.html")]
struct ChartBlock<'a> {
    ov: &'a Overview,
    oob: bool,
}

#[derive(Template)]
#[template(path = "overview_minutes.html")]
struct MinutesBlock<'a> {
    ov: &'a Overview,
    oob: bool,
}

#[derive(Template)]
#[template(path = "overview_oldest.html")]
struct OldestBlock<'a> {
    ov: &'a Overview,
    oob: bool,
}

#[derive(Template)]
#[template(path = "overview_workers.html")]
struct WorkersBlock<'a> {
    ov: &'a Overview,
    oob: bool,
}

/// `GET /`.
pub async fn page(State(state): State<WebState>, user: User) -> Result<Html<String>, WebError> {
    let ov = Overview::load(&state.app.pool, user.project()).await?;
    let page = Page {
        layout: user.layout("overview"),
        ov,
        oob: false,
    };
    Ok(Html(page.render()?))
}

/// Query of a live endpoint.
#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    pub after: Option<String>,
}

/// The overview's blocks for [`BlockFeed`].
struct OverviewBlocks {
    pool: PgPool,
    project: Uuid,
}

impl Blocks for OverviewBlocks {
    async fn render(&self) -> Result<Vec<Block>, WebError> {
        Overview::load(&self.pool, self.project).await?.blocks()
    }
}

/// `GET /overview/live`: the overview's blocks as they change.
async fn live_blocks(
    State(state): State<WebState>,
    user: User,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
) -> Result<Response, WebError> {
    let after = live::cursor(&headers, q.after.as_deref())?;
    let blocks = OverviewBlocks {
        pool: state.app.pool.clone(),
        project: user.project(),
    };
    let feed = BlockFeed::new(&state, &user, blocks, Some(state.app.hub.job_wakeups()));
    Ok(live::respond(&headers, after, feed).await)
}

/// Routes besides `/`.
pub fn pages() -> Router<WebState> {
    Router::new().route("/overview/live", get(live_blocks))
}
