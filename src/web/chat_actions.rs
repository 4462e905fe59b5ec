//! What a chat page's forms do: send a turn, abort the running one, cancel a queued one. Each
//! answers htmx with a fragment (or nothing) and a plain form with a redirect back to the chat.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::auth::User;
use super::chats::{Composer, chat_id, chat_page, is_htmx, model_choices};
use super::{WebError, WebState};
use crate::agent::sessions::{self, Multitask, NewTurn, SessionError};
use crate::queue::control;

/// Largest message accepted from the composer, in bytes.
const MAX_INPUT: usize = 256 * 1024;

/// The composer form.
#[derive(Debug, Deserialize)]
pub struct SendForm {
    input: String,
    model: Option<String>,
    multitask: Option<String>,
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
    let problem = if form.input.trim().is_empty() {
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
    let outcome = match (problem, multitask) {
        (Some(p), _) | (None, Err(p)) => Err(p),
        (None, Ok(mt)) => {
            let input = Value::String(form.input.clone());
            match sessions::send_turn(
                &state.app.pool,
                user.project(),
                id,
                NewTurn {
                    model: model.as_deref(),
                    multitask: mt,
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
            }
        }
    };
    let selected = model.unwrap_or_default();
    match (outcome, is_htmx(&headers)) {
        (Ok(()), true) => {
            let composer = Composer {
                session: id,
                csrf: &user.csrf,
                models: model_choices(&state, &selected),
                input: "",
                error: None,
            };
            Ok(Html(composer.render()?).into_response())
        }
        (Ok(()), false) => Ok(Redirect::to(&format!("/chats/{id}")).into_response()),
        (Err(msg), true) => {
            let composer = Composer {
                session: id,
                csrf: &user.csrf,
                models: model_choices(&state, &selected),
                input: &form.input,
                error: Some(msg),
            };
            Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(composer.render()?)).into_response())
        }
        (Err(msg), false) => {
            let html = chat_page(&state, &user, id, &form.input, Some(msg)).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(html)).into_response())
        }
    }
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
