//! Sessions and their transcripts: all agent SQL. Writes a turn makes carry its lease fence
//! (`EXISTS (SELECT 1 FROM jobs WHERE id = $job AND lease_token = $token)`), so a stale attempt's
//! write changes nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A chat session.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub id: Uuid,
    pub project_id: Uuid,
    pub title: Option<String>,
    pub model: String,
    pub system_prompt: Option<String>,
    pub workspace: Option<String>,
    /// Compaction: a summary of every turn up to and including `summary_upto`.
    pub summary: Option<String>,
    pub summary_upto: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One transcript entry.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub id: Uuid,
    pub session_id: Uuid,
    pub turn_id: Uuid,
    pub role: String,
    pub content: Value,
    pub status: String,
    pub tool_call_id: Option<String>,
    pub usage: Option<Value>,
    pub model: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A turn attempt's write fence: (job id, lease token).
pub type Fence = (Uuid, Uuid);

mod writes;
pub use writes::*;

/// Creates a session.
pub async fn create_session(
    pool: &PgPool,
    project_id: Uuid,
    title: Option<&str>,
    model: &str,
    system_prompt: Option<&str>,
    workspace: Option<&str>,
) -> Result<Session, sqlx::Error> {
    sqlx::query_as!(
        Session,
        "INSERT INTO sessions (id, project_id, title, model, system_prompt, workspace)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, project_id, title, model, system_prompt, workspace, summary, summary_upto, created_at, updated_at",
        Uuid::now_v7(),
        project_id,
        title,
        model,
        system_prompt,
        workspace
    )
    .fetch_one(pool)
    .await
}

/// One session of `project_id`, optionally locked for the caller's transaction.
pub async fn session(
    conn: &mut PgConnection,
    project_id: Uuid,
    id: Uuid,
    lock: bool,
) -> Result<Option<Session>, sqlx::Error> {
    if lock {
        return sqlx::query_as!(
            Session,
            "SELECT id, project_id, title, model, system_prompt, workspace, summary, summary_upto, created_at, updated_at
             FROM sessions WHERE id = $1 AND project_id = $2 FOR UPDATE",
            id,
            project_id
        )
        .fetch_optional(conn)
        .await;
    }
    sqlx::query_as!(
        Session,
        "SELECT id, project_id, title, model, system_prompt, workspace, summary, summary_upto, created_at, updated_at
         FROM sessions WHERE id = $1 AND project_id = $2",
        id,
        project_id
    )
    .fetch_optional(conn)
    .await
}

/// A page of chat sessions (not subagents' or workflow steps'), newest first, older than `before`.
pub async fn sessions(
    pool: &PgPool,
    project_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Session>, sqlx::Error> {
    sqlx::query_as!(
        Session,
        "SELECT id, project_id, title, model, system_prompt, workspace, summary, summary_upto, created_at, updated_at
         FROM sessions WHERE project_id = $1 AND purpose = 'chat' AND ($2::uuid IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
        project_id,
        before,
        limit
    )
    .fetch_all(pool)
    .await
}

/// Deletes a session with its transcript. Returns whether it existed.
pub async fn delete_session(
    pool: &PgPool,
    project_id: Uuid,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        "DELETE FROM sessions WHERE id = $1 AND project_id = $2",
        id,
        project_id
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Gives an untitled session its first title.
pub async fn set_title_if_empty(
    conn: &mut PgConnection,
    id: Uuid,
    title: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE sessions SET title = $2, updated_at = now() WHERE id = $1 AND title IS NULL",
        id,
        title
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The whole transcript, in order: turn by turn (turn ids are time-ordered job ids), and within a
/// turn the user's message, then each step's reply and tool results. Queued turns' user messages
/// are stored when sent, so they come after the running turn's replies, not among them.
pub async fn messages(
    db: impl sqlx::PgExecutor<'_>,
    session_id: Uuid,
) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as!(
        Message,
        "SELECT id, session_id, turn_id, role, content, status, tool_call_id, usage, model, created_at
         FROM messages WHERE session_id = $1 ORDER BY turn_id, id",
        session_id
    )
    .fetch_all(db)
    .await
}

/// A chat session and the hidden sessions of the subagents under it, at any depth.
pub async fn session_family(db: &PgPool, session_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT $1::uuid AS "id!" UNION ALL SELECT id FROM sessions WHERE parent_session_id = $1"#,
        session_id
    )
    .fetch_all(db)
    .await
}

/// Stores the user's message, in the same transaction as the turn's enqueue.
pub async fn insert_user_message(
    conn: &mut PgConnection,
    session_id: Uuid,
    turn_id: Uuid,
    content: &Value,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query!(
        "INSERT INTO messages (id, session_id, turn_id, role, content, status)
         VALUES ($1, $2, $3, 'user', $4, 'complete')",
        id,
        session_id,
        turn_id,
        content
    )
    .execute(conn)
    .await?;
    Ok(id)
}

/// Removes every message of a turn (rollback of a cancelled turn).
pub async fn delete_turn_messages(pool: &PgPool, turn_id: Uuid) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!("DELETE FROM messages WHERE turn_id = $1", turn_id)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

/// Sets the session's title (the model-written one replaces the first-message cut).
pub async fn set_title(pool: &PgPool, session_id: Uuid, title: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE sessions SET title = $2, updated_at = now() WHERE id = $1",
        session_id,
        title
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The user message a turn was sent with.
pub async fn user_message_of(pool: &PgPool, turn_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT id FROM messages WHERE turn_id = $1 AND role = 'user' ORDER BY id LIMIT 1",
        turn_id
    )
    .fetch_optional(pool)
    .await
}

/// A turn's job, as a transcript shows it.
#[derive(Debug, Clone)]
pub struct TurnJob {
    pub id: Uuid,
    pub state: crate::queue::JobState,
    pub error: Option<Value>,
    pub attempt: i32,
}

/// The jobs of these turns in `project_id`; other jobs of the session (titles) are left out.
pub async fn turn_jobs(
    db: impl sqlx::PgExecutor<'_>,
    project_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<TurnJob>, sqlx::Error> {
    sqlx::query_as!(
        TurnJob,
        r#"SELECT id, state AS "state: crate::queue::JobState", error, attempt FROM jobs
           WHERE id = ANY($1) AND project_id = $2 AND kind = 'agent.turn'"#,
        ids,
        project_id
    )
    .fetch_all(db)
    .await
}

/// One turn's messages, in order.
pub async fn turn_messages(
    db: impl sqlx::PgExecutor<'_>,
    session_id: Uuid,
    turn_id: Uuid,
) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as!(
        Message,
        "SELECT id, session_id, turn_id, role, content, status, tool_call_id, usage, model, created_at
         FROM messages WHERE session_id = $1 AND turn_id = $2 ORDER BY id",
        session_id,
        turn_id
    )
    .fetch_all(db)
    .await
}

/// Makes the caller's transaction one read-only snapshot, so what it reads agrees with the
/// stream head it reads.
pub async fn snapshot_isolation(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(conn)
        .await?;
    Ok(())
}

/// Creates a workflow step's session, with `prompt` as the user message of the step's turn
/// (`fence.0`), unless an earlier attempt of the step already did. False when the lease is lost.
pub async fn ensure_step_session(
    pool: &PgPool,
    fence: Fence,
    project_id: Uuid,
    session_id: Uuid,
    prompt: &str,
    model: &str,
    workspace: Option<&str>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"
        WITH fence AS (SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2),
        s AS (
            INSERT INTO sessions (id, project_id, title, model, workspace, purpose)
            SELECT $3, $4, 'workflow step', $5, $6, 'workflow_step' WHERE EXISTS (SELECT 1 FROM fence)
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        ), m AS (
            INSERT INTO messages (id, session_id, turn_id, role, content, status)
            SELECT $7, id, $1, 'user', jsonb_build_object('text', $8::text), 'complete' FROM s
        )
        SELECT EXISTS (SELECT 1 FROM fence) AS "ok!"
        "#,
        fence.0,
        fence.1,
        session_id,
        project_id,
        model,
        workspace,
        Uuid::now_v7(),
        prompt,
    )
    .fetch_one(pool)
    .await
}
