//! `/api/v1/sessions`: chat sessions, their turns, transcript and merged event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::auth::Auth;
use super::events::{EventsQuery, async_stream, cursor_from, wants_json};
use super::input::{self, ValidQuery, bounded};
use super::turn_input::{MAX_INPUT_BYTES, check_input};
use super::{ApiError, AppState};
use crate::agent::attachments;
use crate::agent::sessions::{self, Multitask, NewTurn, SessionError};
use crate::agent::store;
use crate::events::log;
use crate::projects::tokens::Scope;

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotFound => ApiError::not_found("session"),
            SessionError::Busy => ApiError::conflict(
                "turn_running",
                "a turn is already running in this session (multitask: reject)",
            ),
            SessionError::Invalid(i) => ApiError::invalid_field(i.field, i.to_string()),
            SessionError::Queue(q) => q.into(),
            SessionError::Db(d) => d.into(),
        }
    }
}

pub(super) fn session_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("session"))
}

pub(super) async fn load(
    state: &AppState,
    project_id: Uuid,
    id: Uuid,
) -> Result<store::Session, ApiError> {
    let mut conn = state.pool.acquire().await?;
    store::session(&mut conn, project_id, id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("session"))
}

/// The body of `POST /api/v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    title: Option<String>,
    model: Option<String>,
    system_prompt: Option<String>,
    workspace: Option<String>,
}

/// `POST /api/v1/sessions`: 201 with the session.
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    auth.require(Scope::Write)?;
    let body: CreateSession = input::json(req.into_body(), 1024 * 1024).await?;
    let model = match body.model {
        Some(m) => {
            state.agent.models.get(&m).ok_or_else(|| {
                ApiError::unprocessable(
                    "unknown_model",
                    "model",
                    format!(
                        "unknown model `{m}`; known: {}",
                        state.agent.models.names().join(", ")
                    ),
                )
            })?;
            m
        }
        None => state.agent.models.default_model().name.clone(),
    };
    if let Some(w) = &body.workspace
        && !state.agent.workspaces.iter().any(|x| &x.name == w)
    {
        return Err(ApiError::unprocessable(
            "unknown_workspace",
            "workspace",
            format!("unknown workspace `{w}`"),
        ));
    }
    if body.title.as_ref().is_some_and(|t| t.chars().count() > 200) {
        return Err(ApiError::invalid_field(
            "title",
            "title must be at most 200 characters",
        ));
    }
    let s = store::create_session(
        &state.pool,
        auth.0.project_id,
        body.title.as_deref(),
        &model,
        body.system_prompt.as_deref(),
        body.workspace.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(s)).into_response())
}

/// Query of `GET /api/v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/v1/sessions`: newest first, keyset-paginated.
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ValidQuery(q): ValidQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = bounded(q.limit.as_deref(), "limit", 50, 1..=200)?;
    let before = input::cursor(q.cursor.as_deref())?;
    let mut rows = store::sessions(&state.pool, auth.0.project_id, before, limit + 1).await?;
    let next = input::page(&mut rows, limit, |r| r.id);
    Ok(Json(json!({ "sessions": rows, "next_cursor": next })))
}

/// `GET /api/v1/sessions/{id}`.
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<store::Session>, ApiError> {
    Ok(Json(
        load(&state, auth.0.project_id, session_id(&id)?).await?,
    ))
}

/// `DELETE /api/v1/sessions/{id}`: cancels its turns, then deletes it. 204.
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Scope::Write)?;
    let id = session_id(&id)?;
    sessions::delete(&state.pool, &state.blobs, auth.0.project_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /api/v1/sessions/{id}/turns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendTurn {
    input: Value,
    model: Option<String>,
    #[serde(default)]
    multitask: Multitask,
    idempotency_key: Option<String>,
}

/// `POST /api/v1/sessions/{id}/turns`: 202 with `{turn_id, job_id, position}`.
pub async fn send(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    auth.require(Scope::Write)?;
    let id = session_id(&id)?;
    let parent = super::jobs::traceparent(req.headers());
    let body: SendTurn = input::json(req.into_body(), MAX_INPUT_BYTES + 64 * 1024).await?;
    check_input(&body.input)?;
    let session = load(&state, auth.0.project_id, id).await?;
    let model = body.model.as_deref().unwrap_or(&session.model);
    let config = state.agent.models.get(model);
    if body.model.is_some() && config.is_none() {
        return Err(ApiError::unprocessable(
            "unknown_model",
            "model",
            format!("unknown model `{model}`"),
        ));
    }
    // A session whose model left the configuration still queues; its turn says why it fails.
    let vision = config.is_some_and(|c| c.vision);
    let attachments = attachments::check_turn(&state.pool, id, &body.input, model, vision).await?;
    let sent = sessions::send_turn(
        &state.pool,
        auth.0.project_id,
        id,
        NewTurn {
            input: &body.input,
            model: body.model.as_deref(),
            multitask: body.multitask,
            idempotency_key: body.idempotency_key,
            trace: parent,
            attachments,
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(sent)).into_response())
}

/// `GET /api/v1/sessions/{id}/messages`: the transcript, in order.
pub async fn messages(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = load(&state, auth.0.project_id, session_id(&id)?).await?;
    let mut messages = store::messages(&state.pool, s.id).await?;
    let contents = messages.iter_mut().map(|m| &mut m.content).collect();
    state.blobs.resolve_all(auth.0.project_id, contents).await;
    Ok(Json(json!({ "messages": messages })))
}

/// `GET /api/v1/sessions/{id}/subagents`: every subagent under the session, at any depth.
pub async fn subagents(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = load(&state, auth.0.project_id, session_id(&id)?).await?;
    let list = crate::agent::subagents::store::list(
        &state.pool,
        auth.0.project_id,
        crate::agent::subagents::By::Root,
        s.id,
    )
    .await?;
    Ok(Json(json!({ "subagents": list })))
}

/// `POST /api/v1/sessions/{id}/abort`: stops the running turn within a second.
pub async fn abort(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Scope::Write)?;
    let stopped = sessions::abort(&state.pool, auth.0.project_id, session_id(&id)?).await?;
    Ok(Json(json!({ "aborted_turn": stopped })))
}

/// `GET /api/v1/sessions/{id}/events`: every turn's events in one ordered, resumable stream.
pub async fn events(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    ValidQuery(q): ValidQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let id = session_id(&id)?;
    let after = cursor_from(&headers, q.after.as_deref())?;
    load(&state, auth.0.project_id, id).await?;
    if wants_json(&headers) {
        let limit = bounded(q.limit.as_deref(), "limit", 500, 1..=1000)?;
        let mut events = log::read_stream_after(&state.pool, id, after, limit).await?;
        let next = events.last().map_or(after, |e| e.cursor);
        let datas = events.iter_mut().map(|e| &mut e.data).collect();
        state.blobs.resolve_all(auth.0.project_id, datas).await;
        return Ok(Json(json!({ "events": events, "next": next })).into_response());
    }
    let project = auth.0.project_id;
    let stream = async_stream(move |tx| async move {
        // Follow first, then read the log: whatever commits in between arrives from the pump.
        let mut rx = match state.hub.follow_stream(id).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(error = %e, session = %id, "following session events failed");
                return;
            }
        };
        let mut after = after;
        if !catch_up(&state, project, id, &mut after, &tx).await {
            return;
        }
        loop {
            let batch = tokio::select! {
                b = rx.recv() => b,
                _ = tx.closed() => return,
            };
            match batch {
                Ok(batch) => {
                    for e in batch.iter() {
                        if e.cursor <= after {
                            continue; // already sent while catching up
                        }
                        if tx.send(Ok(frame(&state, project, e).await)).await.is_err() {
                            return;
                        }
                        after = e.cursor;
                    }
                }
                // Fell behind the pump: the log has everything, read it by our own cursor.
                Err(RecvError::Lagged(_)) => {
                    if !catch_up(&state, project, id, &mut after, &tx).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One SSE frame, with an offloaded payload resolved.
async fn frame(state: &AppState, project: Uuid, e: &log::StreamEvent) -> SseEvent {
    let mut payload = e.data.clone();
    state.blobs.resolve(project, &mut payload).await;
    let data = json!({ "job_id": e.job_id, "seq": e.seq, "data": payload });
    SseEvent::default()
        .id(e.cursor.to_string())
        .event(&e.kind)
        .data(data.to_string())
}

/// Sends every logged event after `after`, page by page; `false` once the client is gone.
async fn catch_up(
    state: &AppState,
    project: Uuid,
    id: Uuid,
    after: &mut i64,
    tx: &tokio::sync::mpsc::Sender<Result<SseEvent, Infallible>>,
) -> bool {
    loop {
        let page = match log::read_stream_after(&state.pool, id, *after, 500).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, session = %id, "reading session events failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for e in &page {
            if tx.send(Ok(frame(state, project, e).await)).await.is_err() {
                return false;
            }
            *after = e.cursor;
        }
        if page.len() < 500 {
            return true;
        }
    }
}
