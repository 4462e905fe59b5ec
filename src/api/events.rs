//! `GET /api/v1/jobs/{id}/events`: the job's event log as Server-Sent Events (resumable with
//! `Last-Event-ID` or `?after=`), or as a JSON page with `Accept: application/json`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header::ACCEPT;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::auth::Auth;
use super::input::{ValidQuery, bounded};
use super::jobs::{job_id, load};
use super::{ApiError, AppState};
use crate::events::{Event, log};

/// Events read per query.
const PAGE: i64 = 500;
/// How often a live reader re-reads the log even without a NOTIFY.
const BACKSTOP: Duration = Duration::from_secs(2);

/// Query of the events endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub(super) after: Option<String>,
    pub(super) limit: Option<String>,
}

fn parse_cursor(raw: &str, field: &str) -> Result<i64, ApiError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError::invalid_field(
                field,
                format!("{field} must be a non-negative integer event id"),
            )
        })
}

fn is_terminal(e: &Event) -> bool {
    e.kind == "state"
        && matches!(
            e.data.get("state").and_then(|s| s.as_str()),
            Some("succeeded" | "failed" | "cancelled")
        )
}

/// The resume cursor: `Last-Event-ID` when present, else `?after=`, else 0.
pub(super) fn cursor_from(headers: &HeaderMap, after: Option<&str>) -> Result<i64, ApiError> {
    if let Some(last) = headers.get("last-event-id") {
        let raw = last
            .to_str()
            .map_err(|_| ApiError::invalid_field("Last-Event-ID", "Last-Event-ID is not valid"))?;
        return parse_cursor(raw, "Last-Event-ID");
    }
    after.map_or(Ok(0), |a| parse_cursor(a, "after"))
}

/// Whether the client asked for a JSON page rather than an event stream.
pub(super) fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json") && !v.contains("text/event-stream"))
}

/// SSE or JSON, by `Accept`.
pub async fn job_events(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    ValidQuery(q): ValidQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let after = cursor_from(&headers, q.after.as_deref())?;
    // Project scoping: another project's job is a 404 before anything is read.
    load(&state, auth.0.project_id, id).await?;
    if wants_json(&headers) {
        let limit = bounded(q.limit.as_deref(), "limit", PAGE, 1..=1000)?;
        let mut events = log::read_after(&state.pool, id, after, limit).await?;
        let next = events.last().map_or(after, |e| e.seq);
        let datas = events.iter_mut().map(|e| &mut e.data).collect();
        state.blobs.resolve_all(auth.0.project_id, datas).await;
        return Ok(Json(json!({ "events": events, "next": next })).into_response());
    }
    let stream = tail(state, auth.0.project_id, id, after);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Exactly the events after `after`, then the live tail, ending after the terminal event.
fn tail(
    state: AppState,
    project_id: Uuid,
    job: Uuid,
    mut after: i64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    async_stream(move |tx| async move {
        let mut sub = state.hub.subscribe(job);
        loop {
            let events = match log::read_after(&state.pool, job, after, PAGE).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, %job, "reading events failed; retrying");
                    sub.changed(BACKSTOP).await;
                    continue;
                }
            };
            let full_page = events.len() as i64 == PAGE;
            let empty = events.is_empty();
            for mut e in events {
                state.blobs.resolve(project_id, &mut e.data).await;
                let data = serde_json::to_string(&e.data).unwrap_or_else(|_| "null".into());
                let ev = SseEvent::default()
                    .id(e.seq.to_string())
                    .event(&e.kind)
                    .data(data);
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
                after = e.seq;
                if is_terminal(&e) {
                    return;
                }
            }
            if full_page {
                continue;
            }
            if empty {
                // Resumed past the terminal event: nothing more will come.
                let done = match load(&state, project_id, job).await {
                    Ok(j) => j.state.is_terminal(),
                    Err(e) => e.status == axum::http::StatusCode::NOT_FOUND,
                };
                if done
                    && log::read_after(&state.pool, job, after, 1)
                        .await
                        .map(|e| e.is_empty())
                        .unwrap_or(false)
                {
                    return;
                }
            }
            sub.changed(BACKSTOP).await;
        }
    })
}

/// A stream fed by a producer task through a small channel; the task stops when the client goes.
pub(super) fn async_stream<T, F, Fut>(producer: F) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(producer(tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
