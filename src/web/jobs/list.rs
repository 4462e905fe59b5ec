//! `GET /jobs`: the filtered list, newest first, 50 a page by keyset (`?before=<id>`); and
//! `GET /jobs/live`: one SSE stream per list page that re-renders the rows that changed.

use std::collections::HashMap;
use std::time::Duration;

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{Html, Response};
use chrono::Utc;
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::{RowView, bulk, progress_pct};
use crate::events::hub::Subscription;
use crate::queue::JobState;
use crate::queue::control::{self, JobFilter, JobRow};
use crate::web::auth::User;
use crate::web::live::{self, Feed, Fragment};
use crate::web::view::{self, Layout};
use crate::web::{WebError, WebState};

/// Rows per page.
const PAGE: usize = 50;
/// The most rows one live stream follows.
const MAX_LIVE: usize = 100;
/// A list page re-reads its rows at most this often, however busy the jobs are.
const MIN_GAP: Duration = Duration::from_secs(1);
/// ...and at least this often, in case a wake-up was lost.
const BACKSTOP: Duration = Duration::from_secs(2);

const STATES: [JobState; 6] = [
    JobState::Queued,
    JobState::Running,
    JobState::Waiting,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

/// The list's query: filters, the page cursor, and the outcome of a bulk action.
#[derive(Debug, Default)]
pub(super) struct ListParams {
    state: Option<JobState>,
    kind: Option<String>,
    queue: Option<String>,
    parent: Option<Uuid>,
    before: Option<Uuid>,
    bulk: Option<String>,
    done: Option<String>,
}

fn uuid_param(v: &str, name: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(v).map_err(|_| WebError::BadRequest(format!("`{name}` must be a job id")))
}

impl ListParams {
    /// Reads a query string; empty values mean "any", unknown keys are ignored.
    pub(super) fn parse(raw: &str) -> Result<Self, WebError> {
        let mut p = Self::default();
        for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match &*k {
                "state" => {
                    let s = v.parse().map_err(|e: String| WebError::BadRequest(e))?;
                    p.state = Some(s);
                }
                "kind" => p.kind = Some(v.to_owned()),
                "queue" => p.queue = Some(v.to_owned()),
                "parent" => p.parent = Some(uuid_param(v, "parent")?),
                "before" => p.before = Some(uuid_param(v, "before")?),
                "bulk" => p.bulk = Some(v.to_owned()),
                "done" => p.done = Some(v.to_owned()),
                _ => {}
            }
        }
        Ok(p)
    }

    /// The filters and cursor as a query string, without any bulk summary.
    fn query(&self, before: Option<Uuid>) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        if let Some(x) = self.state {
            s.append_pair("state", x.as_str());
        }
        if let Some(x) = &self.kind {
            s.append_pair("kind", x);
        }
        if let Some(x) = &self.queue {
            s.append_pair("queue", x);
        }
        if let Some(x) = self.parent {
            s.append_pair("parent", &x.to_string());
        }
        if let Some(x) = before {
            s.append_pair("before", &x.to_string());
        }
        s.finish()
    }

    /// The list URL with these filters at `before`.
    fn url(&self, before: Option<Uuid>) -> String {
        let q = self.query(before);
        if q.is_empty() {
            "/jobs".into()
        } else {
            format!("/jobs?{q}")
        }
    }

    /// The list URL the current page is on.
    pub(super) fn here(&self) -> String {
        self.url(self.before)
    }

    /// The query string of [`Self::here`].
    pub(super) fn here_query(&self) -> String {
        self.query(self.before)
    }
}

/// An entry of the state filter.
struct StateOption {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct ListPage {
    layout: Layout,
    rows: Vec<RowView>,
    oob: bool,
    states: Vec<StateOption>,
    kind: String,
    queue: String,
    kinds: Vec<String>,
    parent: Option<String>,
    filtered: bool,
    back: String,
    newest: Option<String>,
    older: Option<String>,
    live_url: Option<String>,
    summary: Option<bulk::Summary>,
}

/// `GET /jobs`.
pub async fn page(
    State(state): State<WebState>,
    user: User,
    RawQuery(raw): RawQuery,
) -> Result<Html<String>, WebError> {
    let q = ListParams::parse(raw.as_deref().unwrap_or(""))?;
    let filter = JobFilter {
        state: q.state,
        kind: q.kind.clone(),
        queue: q.queue.clone(),
        parent_id: q.parent,
        before: q.before,
        limit: PAGE as i64 + 1,
    };
    let mut rows = control::list_rows(&state.app.pool, user.project(), &filter).await?;
    let more = rows.len() > PAGE;
    rows.truncate(PAGE);
    let now = Utc::now();
    let page = ListPage {
        layout: user.layout("jobs"),
        older: more
            .then(|| rows.last().map(|r| q.url(Some(r.id))))
            .flatten(),
        newest: q.before.map(|_| q.url(None)),
        live_url: live_url(&rows),
        rows: rows.iter().map(|r| RowView::new(r, now)).collect(),
        oob: false,
        states: STATES
            .iter()
            .map(|s| StateOption {
                value: s.as_str(),
                label: view::state_label(s.as_str()),
                selected: q.state == Some(*s),
            })
            .collect(),
        kind: q.kind.clone().unwrap_or_default(),
        queue: q.queue.clone().unwrap_or_default(),
        kinds: state.app.registry.kinds(),
        parent: q.parent.map(|p| p.to_string()),
        filtered: q.state.is_some() || q.kind.is_some() || q.queue.is_some() || q.parent.is_some(),
        back: q.here(),
        summary: bulk::Summary::from_params(q.bulk.as_deref(), q.done.as_deref()),
    };
    Ok(Html(page.render()?))
}

/// The live stream for the unfinished rows of a page (finished ones do not change), or none.
fn live_url(rows: &[JobRow]) -> Option<String> {
    let ids: Vec<String> = rows
        .iter()
        .filter(|r| !r.state.is_terminal())
        .map(|r| format!("{}:{}", r.id, r.last_seq))
        .collect();
    (!ids.is_empty()).then(|| format!("/jobs/live?ids={}", ids.join(",")))
}

/// What a list row shows that can change; a row is re-sent only when this does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shown {
    state: JobState,
    attempt: i32,
    pct: Option<u8>,
    cancel_requested: bool,
}

impl Shown {
    fn of(r: &JobRow) -> Self {
        Self {
            state: r.state,
            attempt: r.attempt,
            pct: progress_pct(r.progress.as_ref()),
            cancel_requested: r.cancel_requested_at.is_some(),
        }
    }
}

#[derive(Template)]
#[template(path = "job_rows_oob.html")]
struct RowsOob {
    rows: Vec<RowView>,
    oob: bool,
}

/// Follows a page's rows: the page says which `last_seq` it rendered for each, so anything that
/// changed before the stream opened is sent too.
struct RowsFeed {
    pool: PgPool,
    project: Uuid,
    ids: Vec<Uuid>,
    seen: HashMap<Uuid, (i64, Option<Shown>)>,
    subs: Vec<Subscription>,
    last_read: Option<Instant>,
    done: bool,
}

impl Feed for RowsFeed {
    async fn read(&mut self, _after: i64) -> Result<Vec<Fragment>, WebError> {
        self.last_read = Some(Instant::now());
        let rows = control::rows_by_ids(&self.pool, self.project, &self.ids).await?;
        self.done = rows.iter().all(|r| r.state.is_terminal());
        let now = Utc::now();
        let mut changed = Vec::new();
        for r in &rows {
            let shown = Shown::of(r);
            let seen = self.seen.entry(r.id).or_insert((0, None));
            if seen.0 == r.last_seq {
                continue;
            }
            let differs = seen.1 != Some(shown);
            *seen = (r.last_seq, Some(shown));
            if differs {
                changed.push(RowView::new(r, now));
            }
        }
        if changed.is_empty() && !self.done {
            return Ok(Vec::new());
        }
        let mut html = RowsOob {
            rows: changed,
            oob: true,
        }
        .render()?;
        if self.done {
            // Removing the SSE element closes the stream before the server ends it, so the
            // browser does not reconnect to a list that can no longer change.
            html.push_str(r#"<div id="jobs-live" hx-swap-oob="delete"></div>"#);
        }
        // Rows have no shared sequence; a clock reading is a cursor that only grows.
        let cursor = now.timestamp_millis();
        Ok(vec![Fragment { cursor, html }])
    }

    async fn wait(&mut self) {
        if let Some(t) = self.last_read {
            tokio::time::sleep_until(t + MIN_GAP).await;
        }
        if self.subs.is_empty() {
            tokio::time::sleep(BACKSTOP).await;
            return;
        }
        let waits = self.subs.iter_mut().map(|s| Box::pin(s.changed(BACKSTOP)));
        futures::future::select_all(waits).await;
    }

    fn done(&self) -> bool {
        self.done
    }
}

/// `GET /jobs/live?ids=<id>:<last_seq>,…`: the rows of those jobs whenever they change.
pub async fn live(
    State(state): State<WebState>,
    user: User,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, WebError> {
    let raw = raw.unwrap_or_default();
    let mut ids_param = None;
    let mut after = None;
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match &*k {
            "ids" => ids_param = Some(v.into_owned()),
            "after" => after = Some(v.into_owned()),
            _ => {}
        }
    }
    let after = live::cursor(&headers, after.as_deref())?;
    let mut seen = HashMap::new();
    for item in ids_param.as_deref().unwrap_or("").split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (id, seq) = item.split_once(':').unwrap_or((item, "0"));
        let id = uuid_param(id, "ids")?;
        let seq = seq.parse::<i64>().unwrap_or(0);
        seen.insert(id, (seq, None));
    }
    if seen.is_empty() || seen.len() > MAX_LIVE {
        return Err(WebError::BadRequest(format!(
            "`ids` must name between 1 and {MAX_LIVE} jobs"
        )));
    }
    let ids: Vec<Uuid> = seen.keys().copied().collect();
    // Subscribe before the first read, so a change between the two still wakes the stream.
    let subs = ids.iter().map(|id| state.app.hub.subscribe(*id)).collect();
    let feed = RowsFeed {
        pool: state.app.pool.clone(),
        project: user.project(),
        ids,
        seen,
        subs,
        last_read: None,
        done: false,
    };
    Ok(live::respond(&headers, after, feed).await)
}
