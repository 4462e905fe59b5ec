//! The chat list and the chat page: start a chat, send a turn (Enter sends), abort the running
//! turn, cancel a queued one, and follow every turn live. A page is rendered from one snapshot of
//! the session and then fed the events after that snapshot's cursor (see `chat_live`), so a
//! reload mid-stream shows everything so far and keeps streaming without repeating a token.

use askama::Template;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::auth::User;
use super::chat_live::{ChatFeed, ControlsTpl, TurnTpl, phases};
use super::chat_view::{self, Phase};
use super::view::{self, Layout};
use super::{WebError, WebState, chat_actions, chat_files, chat_trace, live};

use crate::agent::{store, transcript};

/// Read-only routes.
pub fn pages() -> Router<WebState> {
    Router::new()
        .route("/chats", get(list))
        .route("/chats/{id}", get(page))
        .route("/chats/{id}/live", get(live_feed))
        .route(
            "/chats/{id}/attachments/{attachment}",
            get(chat_files::file),
        )
}

/// State-changing routes (behind the CSRF check); uploads may be `max_upload` bytes.
pub fn actions(max_upload: usize) -> Router<WebState> {
    let upload_body = max_upload + crate::api::MULTIPART_OVERHEAD;
    Router::new()
        .route(
            "/chats/{id}/attachments",
            post(chat_files::upload).layer(DefaultBodyLimit::max(upload_body)),
        )
        .route("/chats", post(create))
        .route("/chats/{id}/turns", post(chat_actions::send))
        .route("/chats/{id}/abort", post(chat_actions::abort))
        .route(
            "/chats/{id}/turns/{turn}/cancel",
            post(chat_actions::cancel_turn),
        )
}

pub(super) fn chat_id(raw: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(raw).map_err(|_| WebError::NotFound("chat"))
}

pub(super) fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// Model names with the one to preselect.
pub(super) fn model_choices(state: &WebState, selected: &str) -> Vec<(String, bool)> {
    let names = state.app.agent.models.names();
    names
        .into_iter()
        .map(|n| {
            let sel = n == selected;
            (n, sel)
        })
        .collect()
}

/// One row of the chat list.
struct SessionRow {
    id: Uuid,
    title: String,
    model: String,
    created: String,
    created_full: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "chats.html")]
struct ChatsPage {
    layout: Layout,
    sessions: Vec<SessionRow>,
    models: Vec<(String, bool)>,
    next: Option<Uuid>,
    error: Option<String>,
}

/// Query of the chat list.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    before: Option<String>,
}

const PER_PAGE: i64 = 50;

async fn list_page(
    state: &WebState,
    user: &User,
    before: Option<Uuid>,
    error: Option<String>,
) -> Result<ChatsPage, WebError> {
    let mut rows = store::sessions(&state.app.pool, user.project(), before, PER_PAGE + 1).await?;
    let next = (rows.len() as i64 > PER_PAGE).then(|| {
        rows.truncate(PER_PAGE as usize);
        rows.last().map(|r| r.id)
    });
    let now = chrono::Utc::now();
    Ok(ChatsPage {
        layout: user.layout("chats"),
        sessions: rows
            .into_iter()
            .map(|s| SessionRow {
                id: s.id,
                title: s.title.unwrap_or_else(|| "Untitled chat".into()),
                model: s.model,
                created: view::ago(s.created_at, now),
                created_full: view::stamp(s.created_at),
                updated: view::ago(s.updated_at, now),
            })
            .collect(),
        models: model_choices(state, &state.app.agent.models.default_model().name),
        next: next.flatten(),
        error,
    })
}

/// `GET /chats`.
pub async fn list(
    State(state): State<WebState>,
    user: User,
    Query(q): Query<ListQuery>,
) -> Result<Html<String>, WebError> {
    let before = match q.before.as_deref() {
        Some(b) => Some(
            Uuid::parse_str(b).map_err(|_| WebError::BadRequest("`before` is not an id".into()))?,
        ),
        None => None,
    };
    Ok(Html(
        list_page(&state, &user, before, None).await?.render()?,
    ))
}

/// The new-chat form.
#[derive(Debug, Deserialize)]
pub struct NewChat {
    title: Option<String>,
    model: Option<String>,
}

/// `POST /chats`: creates a chat and opens it.
pub async fn create(
    State(state): State<WebState>,
    user: User,
    Form(form): Form<NewChat>,
) -> Result<Response, WebError> {
    user.require_write()?;
    let title = form
        .title
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let model = form
        .model
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| state.app.agent.models.default_model().name.clone());
    let problem = if title.is_some_and(|t| t.chars().count() > 200) {
        Some("The title must be at most 200 characters.".to_owned())
    } else if state.app.agent.models.get(&model).is_none() {
        Some(format!("Unknown model `{model}`."))
    } else {
        None
    };
    if let Some(p) = problem {
        let page = list_page(&state, &user, None, Some(p)).await?;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(page.render()?)).into_response());
    }
    let s =
        store::create_session(&state.app.pool, user.project(), title, &model, None, None).await?;
    Ok(Redirect::to(&format!("/chats/{}", s.id)).into_response())
}

#[derive(Template)]
#[template(path = "chat_composer.html")]
pub(super) struct Composer<'a> {
    pub(super) session: Uuid,
    pub(super) csrf: &'a str,
    pub(super) models: Vec<(String, bool)>,
    pub(super) input: &'a str,
    pub(super) error: Option<String>,
    /// Files already attached to the message being written: (id, name).
    pub(super) files: Vec<(String, String)>,
    /// Their ids, comma-separated, as the form sends them.
    pub(super) attachments: &'a str,
}

#[derive(Template)]
#[template(path = "chat.html")]
struct ChatPage {
    layout: Layout,
    session: Uuid,
    title: String,
    /// The session's totals (`chat_usage.html`, rendered).
    usage: String,
    cursor: i64,
    turns: Vec<String>,
    /// The background subagents panel (`chat_subagents.html`, rendered).
    subagents: String,
    controls: String,
    composer: String,
}

/// Renders the chat page; `input` and `error` refill the composer after a refused send.
pub(super) async fn chat_page(
    state: &WebState,
    user: &User,
    id: Uuid,
    input: &str,
    error: Option<String>,
) -> Result<String, WebError> {
    let snap = transcript::snapshot(&state.app.pool, &state.app.blobs, user.project(), id)
        .await?
        .ok_or(WebError::NotFound("chat"))?;
    let models = &state.app.agent.models;
    let phases = phases(&snap.active);
    let mut views = Vec::new();
    let mut i = 0;
    while i < snap.messages.len() {
        let turn = snap.messages[i].turn_id;
        let mut j = i;
        while j < snap.messages.len() && snap.messages[j].turn_id == turn {
            j += 1;
        }
        let msgs: Vec<_> = snap.messages[i..j].iter().collect();
        let job = snap.turns.iter().find(|t| t.id == turn);
        let phase = phases
            .iter()
            .find(|(t, _)| *t == turn)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| {
                Phase::Done(job.map_or(crate::queue::JobState::Succeeded, |j| j.state))
            });
        views.push(if phase == Phase::Running {
            let user_msg = msgs.iter().copied().find(|m| m.role == "user");
            chat_view::from_events(models, turn, user_msg, &snap.running_events)
        } else {
            chat_view::from_messages(models, turn, phase, &msgs, job)
        });
        i = j;
    }
    // Finished turns link to their traces, as the live feed renders a turn that finishes.
    let done: Vec<Uuid> = views
        .iter()
        .filter(|v| matches!(v.phase, Phase::Done(_)))
        .map(|v| v.id)
        .collect();
    let pool = &state.app.pool;
    let mut traces = chat_trace::for_turns(pool, user.project(), id, &done).await?;
    let mut turns = Vec::with_capacity(views.len());
    for mut view in views {
        if matches!(view.phase, Phase::Done(_)) {
            view.trace = traces.remove(&view.id);
        }
        turns.push(
            TurnTpl {
                t: &view,
                session: id,
                csrf: &user.csrf,
                oob: false,
            }
            .render()?,
        );
    }
    let controls = ControlsTpl {
        session: id,
        csrf: &user.csrf,
        running: phases.iter().any(|(_, p)| *p == Phase::Running),
        queued: phases
            .iter()
            .filter(|(_, p)| matches!(p, Phase::Queued(_)))
            .count(),
        oob: false,
    }
    .render()?;
    let composer = Composer {
        session: id,
        csrf: &user.csrf,
        models: model_choices(state, &snap.session.model),
        input,
        error,
        files: Vec::new(),
        attachments: "",
    }
    .render()?;
    let usage = chat_trace::usage(pool, user.project(), id, false).await?;
    let subagents = super::subagents::panel(state, user, id, None).await?;
    Ok(ChatPage {
        layout: user.layout("chats"),
        session: id,
        title: snap.session.title.unwrap_or_else(|| "Untitled chat".into()),
        usage,
        cursor: snap.cursor,
        turns,
        subagents,
        controls,
        composer,
    }
    .render()?)
}

/// `GET /chats/{id}`.
pub async fn page(
    State(state): State<WebState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Html<String>, WebError> {
    Ok(Html(
        chat_page(&state, &user, chat_id(&id)?, "", None).await?,
    ))
}

/// Query of the live feed.
#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    after: Option<String>,
}

/// `GET /chats/{id}/live`: the page's fragments as SSE, or one poll answer.
pub async fn live_feed(
    State(state): State<WebState>,
    user: User,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
) -> Result<Response, WebError> {
    let id = chat_id(&id)?;
    let after = live::cursor(&headers, q.after.as_deref())?;
    let mut conn = state.app.pool.acquire().await?;
    store::session(&mut conn, user.project(), id, false)
        .await?
        .ok_or(WebError::NotFound("chat"))?;
    drop(conn);
    let feed = ChatFeed::start(state, user.project(), id, user.csrf.clone()).await?;
    Ok(live::respond(&headers, after, feed).await)
}
