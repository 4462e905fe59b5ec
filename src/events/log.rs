//! Appending to and reading from `job_events`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// One stored event; `seq` is the cursor SSE sends as `id:`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: i64,
    pub kind: String,
    pub data: Value,
    pub at: DateTime<Utc>,
}

/// An event a handler emitted, waiting to be written.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: String,
    pub data: Value,
    pub at: DateTime<Utc>,
}

/// Appends `events` to a running job's log under its lease, in one statement that also allocates
/// their `seq`s from the job row (so seq order is commit order) and updates `progress` when given.
/// Returns `None` when the lease is no longer ours: nothing was written.
pub async fn append(
    pool: &PgPool,
    job_id: Uuid,
    lease_token: Uuid,
    events: &[NewEvent],
    progress: Option<&Value>,
) -> Result<Option<i64>, sqlx::Error> {
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let datas: Vec<&Value> = events.iter().map(|e| &e.data).collect();
    let ats: Vec<DateTime<Utc>> = events.iter().map(|e| e.at).collect();
    sqlx::query_scalar!(
        r#"
        WITH bump AS (
            UPDATE jobs SET last_seq = last_seq + $3, progress = coalesce($4, progress)
            WHERE id = $1 AND lease_token = $2
            RETURNING last_seq, stream_id
        ), ins AS (
            INSERT INTO job_events (job_id, seq, kind, data, at, stream_id)
            SELECT $1, b.last_seq - $3 + e.ord, e.kind, e.data, e.at, b.stream_id
            FROM bump b, unnest($5::text[], $6::jsonb[], $7::timestamptz[]) WITH ORDINALITY
                AS e(kind, data, at, ord)
            ORDER BY e.ord
        )
        SELECT b.last_seq AS "last_seq!" FROM bump b,
            LATERAL (SELECT pg_notify('spool_events', $1::text)) n
        "#,
        job_id,
        lease_token,
        events.len() as i64,
        progress,
        &kinds as &[&str],
        &datas as &[&Value],
        &ats,
    )
    .fetch_optional(pool)
    .await
}

/// Up to `limit` events of `job_id` with `seq > after`, in order. Callers check project access.
pub async fn read_after(
    pool: &PgPool,
    job_id: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<Event>, sqlx::Error> {
    sqlx::query_as!(
        Event,
        "SELECT seq, kind, data, at FROM job_events WHERE job_id = $1 AND seq > $2
         ORDER BY seq LIMIT $3",
        job_id,
        after,
        limit
    )
    .fetch_all(pool)
    .await
}

/// One event of a stream (a chat session), with the stream cursor SSE sends as `id:`.
#[derive(Debug, Clone, Serialize)]
pub struct StreamEvent {
    pub cursor: i64,
    pub job_id: Uuid,
    pub seq: i64,
    pub kind: String,
    pub data: Value,
    pub at: DateTime<Utc>,
}

/// Up to `limit` events of stream `stream_id` after `cursor`, across all its jobs, in order.
pub async fn read_stream_after(
    pool: &PgPool,
    stream_id: Uuid,
    cursor: i64,
    limit: i64,
) -> Result<Vec<StreamEvent>, sqlx::Error> {
    sqlx::query_as!(
        StreamEvent,
        r#"SELECT stream_seq AS "cursor!", job_id, seq, kind, data, at FROM job_events
           WHERE stream_id = $1 AND stream_seq > $2 ORDER BY stream_seq LIMIT $3"#,
        stream_id,
        cursor,
        limit
    )
    .fetch_all(pool)
    .await
}
