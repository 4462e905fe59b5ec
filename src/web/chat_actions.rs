//! What a chat page's forms do: send a turn, abort the running one, cancel a queued one. Each
//! answers htmx with a fragment (or nothing) and a plain form with a redirect back to the chat.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::User;
use super::chats::{Composer, chat_id, chat_page, is_htmx, model_choices};
use super::{WebError, WebState};
use crate::agent::attachments::{self, AttachmentError};
use crate::agent::sessions::{self, Multitask, NewTurn, SessionError};
use crate::agent::store;
use crate::queue::control;

/// Largest message accepted from the composer, in bytes.
const MAX_INPUT: usize = 256 * 1024;

/// The composer form.
#[derive(Debug, Deserialize)]
pub struct SendForm {
    input: String,
    model: Option<String>,
    multitask: Option<String>,
    /// Ids of files uploaded for this message, comma-separated.
    #[serde(default)]
    attachments: String,
}

/// The turn input a form makes: its text, then a `file` block per attached file.
fn turn_input(text: &str, ids: &[Uuid]) -> Value {
    if ids.is_empty() {
        return Value::String(text.to_owned());
    }
    let mut blocks = Vec::with_capacity(ids.len() + 1);
    if !text.trim().is_empty() {
        blocks.push(json!({ "type": "text", "text": text }));
    }
    blocks.extend(
        ids.iter()
            .map(|id| json!({ "type": "file", "attachment_id": id })),
    );
    Value::Array(blocks)
}

/// Checks the attachments against the chat and the model that will answer; the summaries the
/// message keeps, or why not.
async fn check_files(
    state: &WebState,
    user: &User,
    id: Uuid,
    input: &Value,
    model: Option<&str>,
) -> Result<Result<Vec<Value>, String>, WebError> {
    let mut conn = state.app.pool.acquire().await?;
    let session = store::session(&mut conn, user.project(), id, false)
        .await?
        .ok_or(WebError::NotFound("chat"))?;
    drop(conn);
    let model = model.unwrap_or(&session.model);
    let vision = state.app.agent.models.get(model).is_some_and(|m| m.vision);
    match attachments::check_turn(&state.app.pool, id, input, model, vision).await {
        Ok(summaries) => Ok(Ok(summaries)),
        Err(AttachmentError::NoVision { model, .. }) => Ok(Err(format!(
            "The model `{model}` does not accept images or PDFs; pick one that does, or remove them."
        ))),
        Err(AttachmentError::Unknown { .. }) => Ok(Err(
            "An attached file is no longer in this chat; attach it again.".to_owned(),
        )),
        Err(AttachmentError::Db(e)) => Err(e.into()),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// `POST /chats/{id}/turns`: stores the message and queues its turn. The turn appears through
/// the live feed; htmx gets a fresh composer back, a plain form a redirect to the chat.
pub async fn send(
    State(state): State<WebState>,
    user: User,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<SendForm>,
) -> Result<Response, WebError> {
    user.require_write()?;
    let id = chat_id(&id)?;
    let model = form.model.filter(|m| !m.is_empty());
    let multitask = match form.multitask.as_deref().unwrap_or("enqueue") {
        "enqueue" => Ok(Multitask::Enqueue),
        "reject" => Ok(Multitask::Reject),
        "interrupt" => Ok(Multitask::Interrupt),
        "rollback" => Ok(Multitask::Rollback),
        other => Err(format!("Unknown choice `{other}` for a running turn.")),
    };
    let ids: Result<Vec<Uuid>, _> = form
        .attachments
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| Uuid::parse_str(s.trim()))
        .collect();
    let ids = ids.unwrap_or_default();
    let problem = if form.input.trim().is_empty() && ids.is_empty() {
        Some("Write a message first.".to_owned())
    } else if form.input.len() > MAX_INPUT {
        Some(format!(
            "The message is longer than {} KiB.",
            MAX_INPUT / 1024
        ))
    } else if let Some(m) = model
        .as_ref()
        .filter(|m| state.app.agent.models.get(m).is_none())
    {
        Some(format!("Unknown model `{m}`."))
    } else {
        multitask.as_ref().err().cloned()
    };
    let input = turn_input(&form.input, &ids);
    let outcome = match (problem, multitask) {
        (Some(p), _) | (None, Err(p)) => Err(p),
        (None, Ok(mt)) => match check_files(&state, &user, id, &input, model.as_deref()).await? {
            Err(p) => Err(p),
            Ok(summaries) => match sessions::send_turn(
                &state.app.pool,
                user.project(),
                id,
                NewTurn {
                    model: model.as_deref(),
                    multitask: mt,
                    attachments: summaries,
                    ..NewTurn::new(&input)
                },
            )
            .await
            {
                Ok(_) => Ok(()),
                Err(SessionError::Busy) => {
                    Err("A turn is already running; it was not interrupted.".to_owned())
                }
                Err(SessionError::Invalid(i)) => Err(i.to_string()),
                Err(e) => return Err(e.into()),
            },
        },
    };
    let selected = model.unwrap_or_default();
    let (input, error, attached) = match outcome {
        Ok(()) if !is_htmx(&headers) => {
            return Ok(Redirect::to(&format!("/chats/{id}")).into_response());
        }
        Ok(()) => ("", None, ""),
        Err(msg) => (form.input.as_str(), Some(msg), form.attachments.as_str()),
    };
    if !is_htmx(&headers) {
        let html = chat_page(&state, &user, id, input, error).await?;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(html)).into_response());
    }
    // A refused message keeps its files: the composer shows them again by name.
    let files = match attached.is_empty() {
        true => Vec::new(),
        false => attachments::of_session(&state.app.pool, id, &ids)
            .await?
            .into_iter()
            .map(|a| (a.id.to_string(), a.name))
            .collect(),
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let composer = Composer {
        session: id,
        csrf: &user.csrf,
        models: model_choices(&state, &selected),
        input,
        error,
        files,
        attachments: attached,
    };
    Ok((status, Html(composer.render()?)).into_response())
}

fn done(headers: &HeaderMap, id: Uuid) -> Response {
    if is_htmx(headers) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        Redirect::to(&format!("/chats/{id}")).into_response()
    }
}

/// `POST /chats/{id}/abort`: stops the running turn, keeping its partial reply.
pub async fn abort(
    State(state): State<WebState>,
    user: User,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    user.require_write()?;
    let id = chat_id(&id)?;
    sessions::abort(&state.app.pool, user.project(), id).await?;
    Ok(done(&headers, id))
}

/// `POST /chats/{id}/turns/{turn}/cancel`: takes a queued turn out of the queue.
pub async fn cancel_turn(
    State(state): State<WebState>,
    user: User,
    Path((id, turn)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    user.require_write()?;
    let id = chat_id(&id)?;
    let turn = Uuid::parse_str(&turn).map_err(|_| WebError::NotFound("turn"))?;
    let mut conn = state.app.pool.acquire().await?;
    let active =
        control::active_with_key(&mut conn, user.project(), &sessions::turn_key(id)).await?;
    drop(conn);
    if !active.iter().any(|(t, _)| *t == turn) {
        return Err(WebError::Conflict(
            "that turn is not waiting in this chat any more".into(),
        ));
    }
    control::cancel(&state.app.pool, user.project(), turn).await?;
    Ok(done(&headers, id))
}
