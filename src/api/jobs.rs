//! `/api/v1/jobs`: enqueue, read, list, cancel, retry and long-poll.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::Auth;
use super::input::{self, ValidQuery, bounded};
use super::{ApiError, AppState};
use crate::projects::tokens::Scope;
use crate::queue::control::{self, Cancelled, JobFilter};
use crate::queue::{Enqueued, Job, JobState, NewJob, enqueue};

/// The body of `POST /api/v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    kind: String,
    #[serde(default)]
    args: Value,
    queue: Option<String>,
    priority: Option<i16>,
    run_at: Option<String>,
    max_attempts: Option<i32>,
    timeout_s: Option<i32>,
    idempotency_key: Option<String>,
    concurrency_key: Option<String>,
}

/// The caller's W3C trace context. An unparseable header is ignored and the job starts a new
/// trace, as the trace-context spec asks of every participant.
pub(super) fn traceparent(headers: &axum::http::HeaderMap) -> Option<crate::trace::TraceParent> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::trace::TraceParent::parse)
}

/// Parses a job id from the path; a malformed id is a 404 like any unknown job.
pub(super) fn job_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("job"))
}

impl CreateJob {
    fn into_new_job(self, state: &AppState) -> Result<NewJob, ApiError> {
        let run_at = self
            .run_at
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| {
                        ApiError::invalid_field("run_at", format!("run_at must be RFC 3339: {e}"))
                    })
            })
            .transpose()?;
        let args = if self.args.is_null() {
            json!({})
        } else {
            self.args
        };
        let size = serde_json::to_vec(&args)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > state.limits.max_args_bytes {
            return Err(ApiError::too_large(
                "args",
                format!(
                    "args are {size} bytes; the limit is {}",
                    state.limits.max_args_bytes
                ),
            ));
        }
        let job = NewJob {
            kind: self.kind,
            args,
            queue: self.queue,
            priority: self.priority.unwrap_or(0),
            run_at,
            max_attempts: self.max_attempts,
            timeout_s: self.timeout_s,
            idempotency_key: self.idempotency_key,
            concurrency_key: self.concurrency_key,
            parent_id: None,
            stream_id: None,
            trace_id: None,
            parent_span_id: None,
        };
        job.validate()
            .map_err(|e| ApiError::invalid_field(e.field, e.to_string()))?;
        if !state.registry.contains(&job.kind) {
            return Err(ApiError::unprocessable(
                "unknown_kind",
                "kind",
                format!(
                    "unknown job kind `{}`; known kinds: {}",
                    job.kind,
                    state.registry.kinds().join(", ")
                ),
            ));
        }
        state
            .registry
            .validate_args(&job.kind, &job.args)
            .map_err(|m| {
                ApiError::invalid_field("args", format!("invalid args for `{}`: {m}", job.kind))
            })?;
        Ok(job)
    }
}

/// One job of the caller's project (an offloaded result resolved), or a 404.
pub(super) async fn load(state: &AppState, project_id: Uuid, id: Uuid) -> Result<Job, ApiError> {
    let mut job = {
        let mut conn = state.pool.acquire().await?;
        control::fetch(&mut conn, project_id, id).await?
    };
    if let Some(r) = job.result.as_mut() {
        state.blobs.resolve(project_id, r).await;
    }
    Ok(job)
}

/// `POST /api/v1/jobs`: 201 with a new job, 200 with the job an idempotency key already made.
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    auth.require(Scope::Write)?;
    let limit = state.limits.max_args_bytes + 64 * 1024;
    let parent = traceparent(req.headers());
    let input: CreateJob = input::json(req.into_body(), limit).await?;
    let mut job = input.into_new_job(&state)?;
    if let Some(p) = parent {
        job.trace_id = Some(p.trace_id);
        job.parent_span_id = Some(p.span_id);
    }
    let mut conn = state.pool.acquire().await?;
    Ok(match enqueue(&mut conn, auth.0.project_id, &job).await? {
        Enqueued::Created(j) => (StatusCode::CREATED, Json(j)).into_response(),
        Enqueued::Existing(j) => (StatusCode::OK, Json(j)).into_response(),
    })
}

/// `GET /api/v1/jobs/{id}`.
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let job = load(&state, auth.0.project_id, id).await?;
    Ok(Json(job).into_response())
}

/// `GET /api/v1/jobs/{id}/children`: the job's descendants, each with its depth and parent.
pub async fn children(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = job_id(&id)?;
    load(&state, auth.0.project_id, id).await?;
    let nodes = crate::queue::tree::tree(&state.pool, auth.0.project_id, id).await?;
    Ok(Json(serde_json::json!({ "job_id": id, "children": nodes })))
}

/// Query of `GET /api/v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    kind: Option<String>,
    queue: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/v1/jobs`: newest first, keyset-paginated by `cursor`.
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ValidQuery(q): ValidQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = bounded(q.limit.as_deref(), "limit", 50, 1..=200)?;
    let state_filter = q
        .state
        .as_deref()
        .map(|s| {
            s.parse::<JobState>()
                .map_err(|e| ApiError::invalid_field("state", e))
        })
        .transpose()?;
    let before = input::cursor(q.cursor.as_deref())?;
    let filter = JobFilter {
        state: state_filter,
        kind: q.kind,
        queue: q.queue,
        parent_id: None,
        before,
        limit: limit + 1,
    };
    let mut jobs = control::list(&state.pool, auth.0.project_id, &filter).await?;
    let next_cursor = input::page(&mut jobs, limit, |j| j.id);
    let results = jobs.iter_mut().filter_map(|j| j.result.as_mut()).collect();
    state.blobs.resolve_all(auth.0.project_id, results).await;
    Ok(Json(json!({ "jobs": jobs, "next_cursor": next_cursor })))
}

/// `POST /api/v1/jobs/{id}/cancel`: 200 when cancelled now, 202 when a running job was asked to stop.
pub async fn cancel(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Write)?;
    let id = job_id(&id)?;
    let outcome = control::cancel(&state.pool, auth.0.project_id, id).await?;
    let job = load(&state, auth.0.project_id, id).await?;
    let status = match outcome {
        Cancelled::Requested => StatusCode::ACCEPTED,
        Cancelled::Now | Cancelled::Already => StatusCode::OK,
    };
    Ok((status, Json(job)).into_response())
}

/// `POST /api/v1/jobs/{id}/retry`: a failed or cancelled job goes back to `queued`.
pub async fn retry(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Write)?;
    let id = job_id(&id)?;
    control::retry(&state.pool, auth.0.project_id, id).await?;
    let job = load(&state, auth.0.project_id, id).await?;
    Ok(Json(job).into_response())
}

/// Query of the long poll.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    timeout_s: Option<String>,
}

/// `GET /api/v1/jobs/{id}/wait?timeout_s=N`: answers as soon as the job is terminal, or with its
/// current state after N seconds (at most 60).
pub async fn wait(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ValidQuery(q): ValidQuery<WaitQuery>,
) -> Result<Response, ApiError> {
    let secs = bounded(q.timeout_s.as_deref(), "timeout_s", 30, 0..=60)? as u64;
    let id = job_id(&id)?;
    // Subscribe before reading, so a finish between the read and the wait still wakes us.
    let mut sub = state.hub.subscribe(id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let job = load(&state, auth.0.project_id, id).await?;
        let now = tokio::time::Instant::now();
        if job.state.is_terminal() || now >= deadline {
            return Ok(Json(job).into_response());
        }
        let left = deadline - now;
        tokio::select! {
            _ = sub.changed(Duration::from_secs(2)) => {}
            _ = tokio::time::sleep(left) => {}
        }
    }
}

/// `GET /api/v1/jobs/{id}/result`: the result alone as JSON (`null` until there is one); an
/// offloaded result is streamed from its blob rather than read into memory.
pub async fn result(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let job = {
        let mut conn = state.pool.acquire().await?;
        control::fetch(&mut conn, auth.0.project_id, id).await?
    };
    let key = job
        .result
        .as_ref()
        .and_then(crate::store::reference_key)
        .filter(|k| k.starts_with(&format!("{}/payloads/", auth.0.project_id)));
    let Some(key) = key else {
        return Ok(Json(job.result.unwrap_or(Value::Null)).into_response());
    };
    let (size, chunks) = state.blobs.stream(key).await?;
    let body = axum::body::Body::from_stream(chunks.map(|c| c.map_err(std::io::Error::other)));
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}
