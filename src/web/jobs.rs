//! The jobs list and job detail pages: filters, keyset pages and live rows on the list; bulk
//! cancel and retry behind a confirmation page; each job's args, outcome, attempts, tree and live
//! timeline, with cancel and retry.
//!
//! `list` serves the list and its live rows, `bulk` the confirm-then-act flow, `detail` the job
//! page and its actions, `blocks` the parts of the job page that change, and `feed` the job
//! page's live stream. Everything reads and writes through `queue::control` and `events::log`.

mod blocks;
mod bulk;
mod detail;
mod feed;
mod list;

use axum::Router;
use axum::routing::{get, post};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::view;
use super::{WebError, WebState};
use crate::queue::control::JobRow;

/// Read-only routes.
pub fn pages() -> Router<WebState> {
    Router::new()
        .route("/jobs", get(list::page))
        .route("/jobs/live", get(list::live))
        .route("/jobs/{id}", get(detail::page))
        .route("/jobs/{id}/live", get(detail::live))
}

/// State-changing routes (behind the CSRF check).
pub fn actions() -> Router<WebState> {
    Router::new()
        .route("/jobs/bulk", post(bulk::submit))
        .route("/jobs/{id}/cancel", post(detail::cancel))
        .route("/jobs/{id}/retry", post(detail::retry))
}

/// A job id from a path; a malformed one is a 404 like any unknown job.
fn job_id(raw: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(raw).map_err(|_| WebError::NotFound("job"))
}

/// A point in time as templates show it: relative text, with the absolute time for `title`.
#[derive(Debug, Clone)]
struct When {
    ago: String,
    stamp: String,
    iso: String,
}

impl When {
    fn new(t: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        Self {
            ago: view::ago(t, now),
            stamp: view::stamp(t),
            iso: t.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }
}

/// The whole-number percentage in a `progress` value (`{"pct": 40, ...}`), clamped to 0–100.
fn progress_pct(progress: Option<&Value>) -> Option<u8> {
    let pct = progress?.get("pct")?.as_f64()?;
    Some(pct.clamp(0.0, 100.0).round() as u8)
}

/// How long a job ran (so far, while running); empty before it started.
fn took(
    started: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> String {
    match (started, finished) {
        (Some(s), Some(f)) => view::duration(f - s),
        (Some(s), None) => view::duration(now - s),
        _ => String::new(),
    }
}

/// One job as a table row (the list, live rows, the bulk confirmation and the job tree).
#[derive(Debug, Clone)]
struct RowView {
    id: String,
    short: String,
    kind: String,
    queue: String,
    state: &'static str,
    label: &'static str,
    attempts: String,
    progress: String,
    cancel_requested: bool,
    created: When,
    took: String,
}

impl RowView {
    fn new(r: &JobRow, now: DateTime<Utc>) -> Self {
        Self {
            id: r.id.to_string(),
            short: view::short_id(&r.id),
            kind: r.kind.clone(),
            queue: r.queue.clone(),
            state: r.state.as_str(),
            label: view::state_label(r.state.as_str()),
            attempts: format!("{}/{}", r.attempt, r.max_attempts),
            progress: progress_pct(r.progress.as_ref()).map_or(String::new(), |p| format!("{p}%")),
            cancel_requested: r.cancel_requested_at.is_some() && !r.state.is_terminal(),
            created: When::new(r.created_at, now),
            took: took(r.started_at, r.finished_at, now),
        }
    }
}
