//! What a client does to a session: send a turn (with a strategy for a turn already running),
//! abort the running turn, cancel a queued one, delete the session.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{attachments, store};
use crate::queue::control::{self, active_with_key};
use crate::queue::{Enqueued, JobState, NewJob, QueueError, enqueue};
use crate::store::Blobs;

/// The job kind of a chat turn.
pub const TURN_KIND: &str = "agent.turn";

/// How a new turn treats one that is already running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Multitask {
    /// Queue behind it (FIFO).
    #[default]
    Enqueue,
    /// Refuse with 409.
    Reject,
    /// Cancel it, keeping its partial output, then run.
    Interrupt,
    /// Cancel it, remove its messages, then run.
    Rollback,
}

/// What a user sends: the input and how to treat a turn that is already running.
#[derive(Debug, Clone)]
pub struct NewTurn<'a> {
    pub input: &'a Value,
    /// Overrides the session's model for this turn.
    pub model: Option<&'a str>,
    pub multitask: Multitask,
    pub idempotency_key: Option<String>,
    /// The caller's trace, from `traceparent`.
    pub trace: Option<crate::trace::TraceParent>,
    /// What the user message records of the attachments the input names (see
    /// [`super::attachments::check_turn`]).
    pub attachments: Vec<Value>,
}

impl<'a> NewTurn<'a> {
    /// A turn with `input`, queued behind any running one.
    pub fn new(input: &'a Value) -> Self {
        Self {
            input,
            model: None,
            multitask: Multitask::Enqueue,
            idempotency_key: None,
            trace: None,
            attachments: Vec::new(),
        }
    }
}

/// A turn that was accepted.
#[derive(Debug, Clone, Serialize)]
pub struct SentTurn {
    pub turn_id: Uuid,
    pub job_id: Uuid,
    /// Turns ahead of this one (0: it runs next).
    pub position: usize,
    pub message_id: Uuid,
}

/// Why a turn or session operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session not found")]
    NotFound,
    #[error("a turn is already running in this session")]
    Busy,
    #[error(transparent)]
    Invalid(#[from] crate::queue::enqueue::InvalidJob),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The concurrency key that makes a session's turns run one at a time, in order.
pub fn turn_key(session_id: Uuid) -> String {
    format!("session:{session_id}")
}

/// Stores the user's message and enqueues its turn in one transaction.
pub async fn send_turn(
    pool: &PgPool,
    project_id: Uuid,
    session_id: Uuid,
    turn: NewTurn<'_>,
) -> Result<SentTurn, SessionError> {
    let NewTurn {
        input,
        model,
        multitask,
        idempotency_key,
        trace,
        attachments,
    } = turn;
    let key = turn_key(session_id);
    let mut job = NewJob::new(
        TURN_KIND,
        json!({ "session_id": session_id, "model": model }),
    );
    job.concurrency_key = Some(key.clone());
    job.stream_id = Some(session_id);
    job.idempotency_key = idempotency_key;
    if let Some(t) = trace {
        job.trace_id = Some(t.trace_id);
        job.parent_span_id = Some(t.span_id);
    }
    job.max_attempts = Some(3);
    job.validate()?;
    let replay = match &job.idempotency_key {
        Some(k) => {
            let mut conn = pool.acquire().await?;
            control::by_idempotency_key(&mut conn, project_id, k)
                .await?
                .is_some()
        }
        None => false,
    };
    // A replayed request must not stop anything: it may name the very turn that is running.
    if !replay && matches!(multitask, Multitask::Interrupt | Multitask::Rollback) {
        stop_active(
            pool,
            project_id,
            session_id,
            multitask == Multitask::Rollback,
        )
        .await?;
    }
    let mut tx = pool.begin().await?;
    // Locking the session serializes senders, so positions and `reject` are exact.
    store::session(&mut tx, project_id, session_id, true)
        .await?
        .ok_or(SessionError::NotFound)?;
    let active = active_with_key(&mut tx, project_id, &key).await?;
    let running = active
        .iter()
        .any(|(_, s)| matches!(s, JobState::Running | JobState::Waiting));
    if !replay && multitask == Multitask::Reject && running {
        return Err(SessionError::Busy);
    }
    let turn = enqueue(&mut tx, project_id, &job).await?;
    let turn_id = turn.job().id;
    if let Enqueued::Existing(_) = turn {
        // A replay of the same request: the turn and its message already exist.
        tx.rollback().await?;
        let message_id = store::user_message_of(pool, turn_id)
            .await?
            .unwrap_or(turn_id);
        return Ok(SentTurn {
            turn_id,
            job_id: turn_id,
            position: 0,
            message_id,
        });
    }
    let mut content = json!({ "text": input_text(input), "input": input });
    if !attachments.is_empty() {
        content["attachments"] = Value::Array(attachments);
    }
    let message_id = store::insert_user_message(&mut tx, session_id, turn_id, &content).await?;
    let title: String = input_text(input).chars().take(100).collect();
    if !title.trim().is_empty() {
        store::set_title_if_empty(&mut tx, session_id, title.trim()).await?;
    }
    tx.commit().await?;
    Ok(SentTurn {
        turn_id,
        job_id: turn_id,
        position: active.len(),
        message_id,
    })
}

/// The plain text of an input: a string, or the text blocks of a content array joined.
pub fn input_text(input: &Value) -> String {
    match input {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Cancels the running turn (and, for rollback, waits for it to end and removes its messages).
async fn stop_active(
    pool: &PgPool,
    project_id: Uuid,
    session_id: Uuid,
    rollback: bool,
) -> Result<(), SessionError> {
    let running: Vec<Uuid> = {
        let mut conn = pool.acquire().await?;
        active_with_key(&mut conn, project_id, &turn_key(session_id))
            .await?
            .into_iter()
            .filter(|(_, s)| matches!(s, JobState::Running | JobState::Waiting))
            .map(|(id, _)| id)
            .collect()
    };
    for id in running {
        match control::cancel(pool, project_id, id).await {
            Ok(_) | Err(QueueError::WrongState(..)) => {}
            Err(e) => return Err(e.into()),
        }
        if rollback {
            wait_terminal(pool, project_id, id, Duration::from_secs(10)).await?;
            store::delete_turn_messages(pool, id).await?;
        }
    }
    Ok(())
}

async fn wait_terminal(
    pool: &PgPool,
    project_id: Uuid,
    id: Uuid,
    limit: Duration,
) -> Result<(), SessionError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut conn = pool.acquire().await?;
        let job = control::fetch(&mut conn, project_id, id).await?;
        if job.state.is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        drop(conn);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the running turn: its partial text is kept and marked cancelled; the next queued turn
/// starts. Returns the turn that was asked to stop, if any.
pub async fn abort(
    pool: &PgPool,
    project_id: Uuid,
    session_id: Uuid,
) -> Result<Option<Uuid>, SessionError> {
    let mut conn = pool.acquire().await?;
    store::session(&mut conn, project_id, session_id, false)
        .await?
        .ok_or(SessionError::NotFound)?;
    let running = active_with_key(&mut conn, project_id, &turn_key(session_id))
        .await?
        .into_iter()
        .find(|(_, s)| matches!(s, JobState::Running | JobState::Waiting));
    drop(conn);
    let Some((id, _)) = running else {
        return Ok(None);
    };
    match control::cancel(pool, project_id, id).await {
        Ok(_) | Err(QueueError::WrongState(..)) => Ok(Some(id)),
        Err(e) => Err(e.into()),
    }
}

/// Cancels every unfinished turn, then deletes the session with its transcript and attachments.
/// Attachment bytes that cannot be deleted now are left to the orphan sweep.
pub async fn delete(
    pool: &PgPool,
    blobs: &Blobs,
    project_id: Uuid,
    session_id: Uuid,
) -> Result<(), SessionError> {
    let active = {
        let mut conn = pool.acquire().await?;
        store::session(&mut conn, project_id, session_id, false)
            .await?
            .ok_or(SessionError::NotFound)?;
        active_with_key(&mut conn, project_id, &turn_key(session_id)).await?
    };
    for (id, _) in active {
        match control::cancel(pool, project_id, id).await {
            Ok(_) | Err(QueueError::WrongState(..)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let keys = attachments::keys_of_session(pool, session_id).await?;
    store::delete_session(pool, project_id, session_id).await?;
    if let Err(e) = blobs.delete(pool, &keys).await {
        tracing::warn!(error = %e, session = %session_id, "deleting attachment blobs failed; the orphan sweep will");
    }
    Ok(())
}
