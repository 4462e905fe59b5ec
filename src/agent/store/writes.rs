//! The writes a turn makes under its lease fence: each is one statement that changes nothing
//! once the lease is gone.

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::Fence;

/// Drops what a dead attempt left half-written, so the retry replaces it instead of adding to it.
pub async fn discard_partial(pool: &PgPool, fence: Fence) -> Result<bool, sqlx::Error> {
    let ok = sqlx::query_scalar!(
        r#"WITH f AS (SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2),
                d AS (DELETE FROM messages WHERE turn_id = $1 AND status = 'streaming'
                      AND EXISTS (SELECT 1 FROM f))
           SELECT EXISTS (SELECT 1 FROM f) AS "ok!""#,
        fence.0,
        fence.1
    )
    .fetch_one(pool)
    .await?;
    Ok(ok)
}

/// Writes (or rewrites) an assistant message under the fence. `status` is `streaming` while the
/// reply is coming, then `complete`, `cancelled` or `error`. Returns `false` when fenced out.
#[allow(clippy::too_many_arguments)]
pub async fn upsert_assistant(
    pool: &PgPool,
    fence: Fence,
    session_id: Uuid,
    id: Uuid,
    content: &Value,
    status: &str,
    usage: Option<&Value>,
    model: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        "INSERT INTO messages (id, session_id, turn_id, role, content, status, usage, model)
         SELECT $3, $4, $1, 'assistant', $5, $6, $7, $8
         WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2)
         ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content, status = EXCLUDED.status,
             usage = EXCLUDED.usage, model = EXCLUDED.model, updated_at = now()",
        fence.0,
        fence.1,
        id,
        session_id,
        content,
        status,
        usage,
        model
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Stores one tool result, keyed by (turn, tool_call_id): a result already stored is kept.
/// Returns `false` when fenced out.
pub async fn insert_tool_result(
    pool: &PgPool,
    fence: Fence,
    session_id: Uuid,
    tool_call_id: &str,
    content: &Value,
) -> Result<bool, sqlx::Error> {
    let ok = sqlx::query_scalar!(
        r#"WITH f AS (SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2),
                ins AS (
                    INSERT INTO messages (id, session_id, turn_id, role, content, status, tool_call_id)
                    SELECT $3, $4, $1, 'tool', $5, 'complete', $6 WHERE EXISTS (SELECT 1 FROM f)
                    ON CONFLICT (turn_id, tool_call_id) WHERE tool_call_id IS NOT NULL DO NOTHING)
           SELECT EXISTS (SELECT 1 FROM f) AS "ok!""#,
        fence.0,
        fence.1,
        Uuid::now_v7(),
        session_id,
        content,
        tool_call_id
    )
    .fetch_one(pool)
    .await?;
    Ok(ok)
}

/// Moves the compaction boundary with its summary, in one fenced statement: nothing changes
/// unless the summary exists, and a failed summary never touches the old one.
pub async fn set_summary(
    pool: &PgPool,
    fence: Fence,
    session_id: Uuid,
    summary: &str,
    upto: Uuid,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        "UPDATE sessions SET summary = $3, summary_upto = $4, updated_at = now()
         WHERE id = $5 AND EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2)",
        fence.0,
        fence.1,
        summary,
        upto,
        session_id
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// One streaming reply's latest text, for [`save_partials`].
#[derive(Debug, Clone)]
pub struct Partial {
    pub message_id: Uuid,
    pub fence: Fence,
    pub content: Value,
}

/// Saves many streaming replies' text in one statement. Only rows still `streaming` change, so a
/// late save never overwrites a finished or cancelled reply, nor brings back a discarded one; each
/// row is fenced by its turn's lease.
pub async fn save_partials(pool: &PgPool, partials: &[Partial]) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = partials.iter().map(|p| p.message_id).collect();
    let jobs: Vec<Uuid> = partials.iter().map(|p| p.fence.0).collect();
    let tokens: Vec<Uuid> = partials.iter().map(|p| p.fence.1).collect();
    let contents: Vec<Value> = partials.iter().map(|p| p.content.clone()).collect();
    let r = sqlx::query!(
        "UPDATE messages m SET content = u.content, updated_at = now()
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::jsonb[]) AS u(id, job_id, token, content)
         JOIN jobs j ON j.id = u.job_id AND j.lease_token = u.token
         WHERE m.id = u.id AND m.status = 'streaming'",
        &ids,
        &jobs,
        &tokens,
        &contents
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Which of `keys` the tool results of turns `jobs` refer to (offloaded outputs; see
/// `store::offload`).
pub async fn referenced_tool_results(
    pool: &PgPool,
    jobs: &[Uuid],
    keys: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT content #>> '{$blob,key}' AS "key!" FROM messages
           WHERE turn_id = ANY($1) AND tool_call_id IS NOT NULL
             AND content #>> '{$blob,key}' = ANY($2)"#,
        jobs,
        keys
    )
    .fetch_all(pool)
    .await
}
