//! `GET /jobs/{id}`: one job — its args, outcome, attempts, parent and children, and timeline —
//! with its live feed (`/jobs/{id}/live`) and the cancel and retry actions.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use super::blocks::{Blocks, EventView, Tree, json_block};
use super::feed::{DetailFeed, JobLive};
use super::job_id;
use crate::events::log;
use crate::queue::control;
use crate::queue::{Job, QueueError};
use crate::web::auth::User;
use crate::web::live;
use crate::web::view::{Layout, short_id};
use crate::web::{WebError, WebState};

/// Timeline entries a page starts with; older ones stay in the API.
const TIMELINE: i64 = 200;

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    layout: Layout,
    oob: bool,
    id: String,
    short: String,
    kind: String,
    args: String,
    blocks: Blocks,
    events: Vec<EventView>,
    omitted: i64,
    tree: Tree,
    live_url: Option<String>,
    /// The job's trace, once it has a span.
    trace: Option<String>,
}

async fn load(state: &WebState, project: Uuid, id: Uuid) -> Result<Job, WebError> {
    let mut job = {
        let mut conn = state.app.pool.acquire().await?;
        control::fetch(&mut conn, project, id).await?
    };
    if let Some(r) = job.result.as_mut() {
        state.app.blobs.resolve(project, r).await;
    }
    Ok(job)
}

/// `GET /jobs/{id}`; another project's job is a 404 like an unknown one.
pub async fn page(
    State(state): State<WebState>,
    user: User,
    Path(raw): Path<String>,
) -> Result<Html<String>, WebError> {
    let id = job_id(&raw)?;
    let pool = &state.app.pool;
    let head = control::last_seq(pool, user.project(), id).await?;
    let from = (head - TIMELINE).max(0);
    let mut events = log::read_after(pool, id, from, TIMELINE * 2).await?;
    let datas = events.iter_mut().map(|e| &mut e.data).collect();
    state.app.blobs.resolve_all(user.project(), datas).await;
    // The row is read after the events, so the page's blocks are never older than its timeline
    // and the live feed, starting after the last entry, cannot miss a change.
    let job = load(&state, user.project(), id).await?;
    let blocks = Blocks::build(pool, &job, &user.csrf).await?;
    let tree = Tree::load(pool, user.project(), id).await?;
    let trace = crate::trace::store::started_trace_of_job(pool, user.project(), id).await?;
    let cursor = events.last().map_or(from, |e| e.seq);
    let now = Utc::now();
    let page = JobPage {
        layout: user.layout("jobs"),
        oob: false,
        id: id.to_string(),
        short: short_id(&id),
        kind: job.kind.clone(),
        args: json_block(&job.args),
        blocks,
        events: events
            .iter()
            .map(|e| EventView::new(e, job.created_at, now))
            .collect(),
        omitted: from,
        tree,
        live_url: (!job.state.is_terminal()).then(|| format!("/jobs/{id}/live?after={cursor}")),
        trace,
    };
    Ok(Html(page.render()?))
}

/// Query of the live feed.
#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    after: Option<String>,
}

/// `GET /jobs/{id}/live?after=<seq>`: SSE (or one poll answer) of the page's changes.
pub async fn live(
    State(state): State<WebState>,
    user: User,
    headers: HeaderMap,
    Path(raw): Path<String>,
    Query(q): Query<LiveQuery>,
) -> Result<Response, WebError> {
    let id = job_id(&raw)?;
    let after = live::cursor(&headers, q.after.as_deref())?;
    let sub = state.app.hub.subscribe(id);
    let job = load(&state, user.project(), id).await?;
    let feed = DetailFeed::new(
        state.app.pool.clone(),
        user.project(),
        id,
        user.csrf.clone(),
        job.created_at,
        sub,
        state.app.blobs.clone(),
    );
    Ok(live::respond(&headers, after, feed).await)
}

/// Whether htmx sent the request (it then wants fragments, not a redirect).
fn is_htmx(headers: &HeaderMap) -> bool {
    headers.get("hx-request").is_some()
}

/// After an action: htmx gets the job's re-rendered blocks as out-of-band swaps; a plain form
/// goes back to the job page.
async fn answer(
    state: &WebState,
    user: &User,
    headers: &HeaderMap,
    id: Uuid,
) -> Result<Response, WebError> {
    if !is_htmx(headers) {
        return Ok(Redirect::to(&format!("/jobs/{id}")).into_response());
    }
    let job = load(state, user.project(), id).await?;
    let html = JobLive {
        events: Vec::new(),
        blocks: Some(Blocks::build(&state.app.pool, &job, &user.csrf).await?),
        oob: true,
    }
    .render()?;
    Ok(Html(html).into_response())
}

/// A readable refusal for an action the job's state does not allow.
fn wrong_state(e: QueueError, allowed: &str) -> WebError {
    match e {
        QueueError::WrongState(s, verb) => WebError::Conflict(format!(
            "this job is {}; only {allowed} jobs can be {verb}",
            s.as_str()
        )),
        other => other.into(),
    }
}

/// `POST /jobs/{id}/cancel`: queued and waiting jobs end now; a running one is asked to stop.
pub async fn cancel(
    State(state): State<WebState>,
    user: User,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, WebError> {
    user.require_write()?;
    let id = job_id(&raw)?;
    control::cancel(&state.app.pool, user.project(), id)
        .await
        .map_err(|e| wrong_state(e, "queued, running or waiting"))?;
    answer(&state, &user, &headers, id).await
}

/// `POST /jobs/{id}/retry`: a failed or cancelled job is queued again as a new attempt.
pub async fn retry(
    State(state): State<WebState>,
    user: User,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, WebError> {
    user.require_write()?;
    let id = job_id(&raw)?;
    control::retry(&state.app.pool, user.project(), id)
        .await
        .map_err(|e| wrong_state(e, "failed or cancelled"))?;
    // A retried job needs the page's live feed again, which only a fresh page opens.
    if is_htmx(&headers) {
        let mut res = Response::default();
        if let Ok(v) = format!("/jobs/{id}").parse() {
            res.headers_mut().insert("hx-redirect", v);
        }
        return Ok(res);
    }
    answer(&state, &user, &headers, id).await
}
