//! Background subagents on the chat pages: the panel under a chat's transcript listing every
//! subagent of the session (all depths) with its status, elapsed time, tokens and a cancel
//! button, and a read-only page per subagent showing its hidden session's transcript.
//!
//! The panel is one fragment (`GET /chats/{id}/subagents`). While something in it is unfinished
//! it asks for itself again a second later and replaces itself (htmx `load delay:1s`), so the
//! polling stops by itself once everything has ended; `app.js` asks for it again when the chat's
//! live feed shows a subagent tool at work, which is how a new spawn appears. Without JavaScript
//! the chat page renders the same panel and the cancel button is a plain form.

use std::collections::{HashMap, HashSet};

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::auth::User;
use super::chat_live::TurnTpl;
use super::chat_view::{self, Phase};
use super::chats::{chat_id, is_htmx};
use super::view::{self, Layout};
use super::{WebError, WebState};
use crate::agent::subagents::store::{self as subs, By, Subagent};
use crate::agent::{store, transcript};
use crate::queue::control::{self, Cancelled};
use crate::queue::{JobState, QueueError};

/// Read-only routes.
pub fn pages() -> Router<WebState> {
    Router::new()
        .route("/chats/{id}/subagents", get(panel_fragment))
        .route("/chats/{id}/subagents/{sub}", get(page))
}

/// State-changing routes (behind the CSRF check).
pub fn actions() -> Router<WebState> {
    Router::new().route("/chats/{id}/subagents/{sub}/cancel", post(cancel))
}

fn sub_id(raw: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(raw).map_err(|_| WebError::NotFound("subagent"))
}

/// The subagent `sub` of chat `session`; one of another chat or project is a 404 like an
/// unknown one, so ids cannot be probed across chats.
async fn find(
    state: &WebState,
    user: &User,
    session: Uuid,
    sub: Uuid,
) -> Result<Subagent, WebError> {
    subs::list(&state.app.pool, user.project(), By::Id, sub)
        .await?
        .into_iter()
        .find(|s| s.root_session_id == session)
        .ok_or(WebError::NotFound("subagent"))
}

/// `alpha`, or `subagent 1a2b3c4d` when it was given no label.
fn name(s: &Subagent) -> String {
    match s.label.as_deref().map(str::trim) {
        Some(l) if !l.is_empty() => l.to_owned(),
        _ => format!("subagent {}", view::short_id(&s.id)),
    }
}

/// The symbol-and-word label of a subagent status; `budget_exhausted` is not a job state.
fn status_label(status: &str) -> &'static str {
    match status {
        "budget_exhausted" => "◔ budget exhausted",
        s => view::state_label(s),
    }
}

/// How long it ran, or has been running; empty before it started.
fn elapsed(s: &Subagent, now: DateTime<Utc>) -> String {
    match s.started_at {
        Some(start) => view::duration(s.finished_at.unwrap_or(now) - start),
        None => "not started".into(),
    }
}

/// `1,234 tokens · 1,000 in · 234 out`.
fn tokens(input: i64, output: i64) -> String {
    format!(
        "{} tokens · {} in · {} out",
        view::thousands(input + output),
        view::thousands(input),
        view::thousands(output)
    )
}

/// Parents before their children, siblings oldest first: the panel reads as a tree.
fn tree_order(list: Vec<Subagent>) -> Vec<Subagent> {
    let ids: HashSet<Uuid> = list.iter().map(|s| s.id).collect();
    let mut kids: HashMap<Uuid, Vec<Subagent>> = HashMap::new();
    let mut roots = Vec::new();
    for s in list {
        if ids.contains(&s.parent_job_id) {
            kids.entry(s.parent_job_id).or_default().push(s);
        } else {
            roots.push(s);
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    let mut stack: Vec<Subagent> = roots.into_iter().rev().collect();
    while let Some(s) = stack.pop() {
        if let Some(children) = kids.remove(&s.id) {
            stack.extend(children.into_iter().rev());
        }
        out.push(s);
    }
    out
}

/// One subagent as the panel shows it.
struct Row {
    id: Uuid,
    name: String,
    prompt: String,
    /// Nesting under the first level, for the indent.
    indent: i32,
    status: String,
    status_label: &'static str,
    finished: bool,
    /// Running, and already asked to stop.
    stopping: bool,
    elapsed: String,
    tokens: String,
    cost: String,
    summary: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "chat_subagents.html")]
struct PanelTpl<'a> {
    session: Uuid,
    csrf: &'a str,
    rows: Vec<Row>,
    unfinished: usize,
    notice: Option<String>,
}

/// The rendered panel of chat `session` (the chat page embeds it; htmx swaps it whole).
pub(super) async fn panel(
    state: &WebState,
    user: &User,
    session: Uuid,
    notice: Option<String>,
) -> Result<String, WebError> {
    let pool = &state.app.pool;
    let project = user.project();
    let list = tree_order(subs::list(pool, project, By::Root, session).await?);
    // Whether an unfinished one was asked to stop lives on its job row: one read for all of
    // them, through their parents' child lists.
    let open_parents: Vec<Uuid> = list
        .iter()
        .filter(|s| !s.finished())
        .map(|s| s.parent_job_id)
        .collect();
    let stopping: HashSet<Uuid> = if open_parents.is_empty() {
        HashSet::new()
    } else {
        control::children_rows(pool, project, &open_parents, 1000)
            .await?
            .into_iter()
            .filter(|r| r.cancel_requested_at.is_some() && !r.state.is_terminal())
            .map(|r| r.id)
            .collect()
    };
    let now = Utc::now();
    let mut rows = Vec::with_capacity(list.len());
    for s in &list {
        let finished = s.finished();
        // A subagent's row gets its usage when it ends; until then its own model calls so far
        // (ended ones, from the trace) say how much it has used.
        let (input, output, cost) = if finished {
            (s.input_tokens, s.output_tokens, s.cost_usd)
        } else {
            let u =
                crate::trace::store::session_usage(pool, project, &[s.hidden_session_id]).await?;
            (u.input_tokens, u.output_tokens, u.cost_usd)
        };
        rows.push(Row {
            id: s.id,
            name: name(s),
            prompt: view::clip(&s.prompt, 160),
            indent: (s.depth - 1).max(0),
            status: s.status.clone(),
            status_label: status_label(&s.status),
            finished,
            stopping: stopping.contains(&s.id),
            elapsed: elapsed(s, now),
            tokens: tokens(input, output),
            cost: if cost > 0.0 {
                view::usd(cost)
            } else {
                String::new()
            },
            summary: if finished {
                view::clip(s.summary.as_deref().unwrap_or(""), 280)
            } else {
                String::new()
            },
            error: s.error.clone().filter(|_| s.status == "failed"),
        });
    }
    Ok(PanelTpl {
        session,
        csrf: &user.csrf,
        unfinished: rows.iter().filter(|r| !r.finished).count(),
        rows,
        notice,
    }
    .render()?)
}

/// `GET /chats/{id}/subagents`: the panel alone, for htmx.
pub async fn panel_fragment(
    State(state): State<WebState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Html<String>, WebError> {
    let session = chat_id(&id)?;
    let mut conn = state.app.pool.acquire().await?;
    store::session(&mut conn, user.project(), session, false)
        .await?
        .ok_or(WebError::NotFound("chat"))?;
    drop(conn);
    Ok(Html(panel(&state, &user, session, None).await?))
}

/// `POST /chats/{id}/subagents/{sub}/cancel`: cancels one subagent of this chat and, with it,
/// everything it spawned. htmx gets the panel back; a plain form goes back to the chat.
pub async fn cancel(
    State(state): State<WebState>,
    user: User,
    Path((id, sub)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    user.require_write()?;
    let session = chat_id(&id)?;
    let s = find(&state, &user, session, sub_id(&sub)?).await?;
    let who = name(&s);
    let notice = if s.finished() {
        format!("{who} had already ended ({}).", status_label(&s.status))
    } else {
        match control::cancel(&state.app.pool, user.project(), s.id).await {
            Ok(Cancelled::Requested) => format!("Asked {who} to stop; it ends in a moment."),
            Ok(Cancelled::Now | Cancelled::Already) => format!("{who} was cancelled."),
            // It ended between the list and the cancel: nothing to stop.
            Err(QueueError::WrongState(st, _)) => {
                format!("{who} had already ended ({}).", st.as_str())
            }
            Err(e) => return Err(e.into()),
        }
    };
    if !is_htmx(&headers) {
        return Ok(Redirect::to(&format!("/chats/{session}#subagents")).into_response());
    }
    Ok(Html(panel(&state, &user, session, Some(notice)).await?).into_response())
}

/// A link to a related subagent.
struct Link {
    id: Uuid,
    name: String,
    status: String,
    status_label: &'static str,
}

impl Link {
    fn new(s: &Subagent) -> Self {
        Self {
            id: s.id,
            name: name(s),
            status: s.status.clone(),
            status_label: status_label(&s.status),
        }
    }
}

#[derive(Template)]
#[template(path = "chat_subagents_page.html")]
struct SubagentPage {
    layout: Layout,
    session: Uuid,
    chat_title: String,
    id: Uuid,
    name: String,
    status: String,
    status_label: &'static str,
    finished: bool,
    depth: i32,
    model: String,
    elapsed: String,
    tokens: String,
    cost: String,
    error: Option<String>,
    parent: Option<Link>,
    children: Vec<Link>,
    trace: Option<String>,
    turns: Vec<String>,
}

/// `GET /chats/{id}/subagents/{sub}`: the subagent's own conversation, read-only. While it runs
/// the page re-reads its body every two seconds.
pub async fn page(
    State(state): State<WebState>,
    user: User,
    Path((id, sub)): Path<(String, String)>,
) -> Result<Html<String>, WebError> {
    let session = chat_id(&id)?;
    let s = find(&state, &user, session, sub_id(&sub)?).await?;
    let pool = &state.app.pool;
    let project = user.project();
    let mut conn = pool.acquire().await?;
    let chat = store::session(&mut conn, project, session, false)
        .await?
        .ok_or(WebError::NotFound("chat"))?;
    drop(conn);
    let snap = transcript::snapshot(pool, &state.app.blobs, project, s.hidden_session_id)
        .await?
        .ok_or(WebError::NotFound("subagent transcript"))?;
    // The hidden session has no `agent.turn` jobs: its one job is the subagent's, so its status
    // gives every turn's phase. A queued or waiting one must not render the queued-turn cancel
    // form of the chat page, so only `running` maps to the running phase.
    let phase = match s.status.as_str() {
        "running" => Phase::Running,
        "budget_exhausted" => Phase::Done(JobState::Succeeded),
        st => Phase::Done(st.parse().unwrap_or(JobState::Succeeded)),
    };
    let models = &state.app.agent.models;
    let mut turns = Vec::new();
    for group in snap.messages.chunk_by(|a, b| a.turn_id == b.turn_id) {
        let msgs: Vec<_> = group.iter().collect();
        let turn = group[0].turn_id;
        let v = chat_view::from_messages(models, turn, phase.clone(), &msgs, None);
        turns.push(
            TurnTpl {
                t: &v,
                session: s.hidden_session_id,
                csrf: &user.csrf,
                oob: false,
            }
            .render()?,
        );
    }
    let parent = if s.depth > 1 {
        subs::list(pool, project, By::Id, s.parent_job_id)
            .await?
            .first()
            .map(Link::new)
    } else {
        None
    };
    let children = subs::list(pool, project, By::Parent, s.id)
        .await?
        .iter()
        .map(Link::new)
        .collect();
    let trace = crate::trace::store::started_trace_of_job(pool, project, s.id).await?;
    let (input, output, cost) = if s.finished() {
        (s.input_tokens, s.output_tokens, s.cost_usd)
    } else {
        let u = crate::trace::store::session_usage(pool, project, &[s.hidden_session_id]).await?;
        (u.input_tokens, u.output_tokens, u.cost_usd)
    };
    Ok(Html(
        SubagentPage {
            layout: user.layout("chats"),
            session,
            chat_title: chat.title.unwrap_or_else(|| "Untitled chat".into()),
            id: s.id,
            name: name(&s),
            status: s.status.clone(),
            status_label: status_label(&s.status),
            finished: s.finished(),
            depth: s.depth,
            model: s.model.clone(),
            elapsed: elapsed(&s, Utc::now()),
            tokens: tokens(input, output),
            cost: if cost > 0.0 {
                view::usd(cost)
            } else {
                String::new()
            },
            error: s.error.clone().filter(|_| s.status == "failed"),
            parent,
            children,
            trace,
            turns,
        }
        .render()?,
    ))
}
