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

/// One job's share of a batched append: its fence, its events and its latest progress.
#[derive(Debug, Clone)]
pub struct JobBatch {
    pub job_id: Uuid,
    pub lease_token: Uuid,
    pub events: Vec<NewEvent>,
    pub progress: Option<Value>,
}

/// Where one appended event landed: its job's `seq`, and its stream cursor if the job has a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub job_id: Uuid,
    pub seq: i64,
    pub stream_id: Option<Uuid>,
    pub stream_seq: Option<i64>,
}

/// Appends the events of many running jobs in one statement: each job's part is fenced by its
/// lease and gets its `seq`s from its own row, so seq order stays commit order per job. Returns
/// every written event, ordered by job and seq; a job whose lease was not still its own has none
/// (its events were not written).
pub async fn append_batch(pool: &PgPool, batch: &[JobBatch]) -> Result<Vec<Appended>, sqlx::Error> {
    let mut job_ids = Vec::with_capacity(batch.len());
    let mut tokens = Vec::with_capacity(batch.len());
    let mut counts = Vec::with_capacity(batch.len());
    let mut progress = Vec::with_capacity(batch.len());
    let (mut ev_jobs, mut ev_ords, mut kinds, mut datas, mut ats) =
        (vec![], vec![], vec![], vec![], vec![]);
    // A stable lock order (by job id) keeps concurrent batches from deadlocking on job rows.
    let mut sorted: Vec<&JobBatch> = batch.iter().filter(|b| !b.events.is_empty()).collect();
    sorted.sort_by_key(|b| b.job_id);
    for b in sorted {
        job_ids.push(b.job_id);
        tokens.push(b.lease_token);
        counts.push(b.events.len() as i64);
        progress.push(b.progress.clone());
        for (i, e) in b.events.iter().enumerate() {
            ev_jobs.push(b.job_id);
            ev_ords.push(i as i64 + 1);
            kinds.push(e.kind.clone());
            datas.push(e.data.clone());
            ats.push(e.at);
        }
    }
    if job_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as!(
        Appended,
        r#"
        WITH input AS (
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::jsonb[])
                AS i(job_id, token, n, progress)
        ), bump AS (
            UPDATE jobs j SET last_seq = j.last_seq + i.n, progress = coalesce(i.progress, j.progress)
            FROM input i
            WHERE j.id = i.job_id AND j.lease_token = i.token
            RETURNING j.id, j.last_seq, i.n, j.stream_id
        ), per_stream AS (
            SELECT stream_id, sum(n) AS n FROM bump WHERE stream_id IS NOT NULL GROUP BY stream_id
        ), locked AS (
            -- Every writer of several streams locks their rows in id order (the queue's state
            -- events too), so two of them cannot deadlock on a pair of streams.
            SELECT s.id FROM event_streams s WHERE s.id IN (SELECT stream_id FROM per_stream)
            ORDER BY s.id FOR UPDATE
        ), streams AS (
            -- One grouped bump per stream instead of a trigger call per row; the row lock keeps
            -- stream order equal to commit order.
            UPDATE event_streams s SET last_seq = s.last_seq + p.n
            FROM per_stream p JOIN locked l ON l.id = p.stream_id WHERE s.id = p.stream_id
            RETURNING s.id, s.last_seq, s.last_seq - p.n AS base
        ), bases AS (
            -- One lookup map rather than a join: the planner cannot know how many rows the CTEs
            -- hold and would loop over every stream for every event.
            SELECT jsonb_object_agg(id::text, base) AS m FROM streams
        ), rows AS (
            SELECT e.job_id, b.last_seq - b.n + e.ord AS seq, e.kind, e.data, e.at, b.stream_id,
                   ((SELECT m FROM bases) ->> b.stream_id::text)::bigint
                       + row_number() OVER (PARTITION BY b.stream_id ORDER BY e.job_id, e.ord)
                       AS stream_seq
            FROM unnest($5::uuid[], $6::bigint[], $7::text[], $8::jsonb[], $9::timestamptz[])
                AS e(job_id, ord, kind, data, at)
            JOIN bump b ON b.id = e.job_id
        ), ins AS (
            INSERT INTO job_events (job_id, seq, kind, data, at, stream_id, stream_seq)
            SELECT job_id, seq, kind, data, at, stream_id, stream_seq FROM rows
            ORDER BY job_id, seq
            RETURNING job_id, seq, stream_id, stream_seq
        ), wake AS (
            -- Streams go out as `id@cursor`, so a process that already holds them (its own writer
            -- handed them over) need not read them back.
            SELECT pg_notify('spool_events', string_agg(id, ','))
            FROM (SELECT id, (row_number() OVER ()) / 150 AS chunk
                  FROM (SELECT id::text FROM bump
                        UNION ALL SELECT id::text || '@' || last_seq FROM streams) ids) x
            GROUP BY chunk
        )
        SELECT job_id AS "job_id!", seq AS "seq!", stream_id, stream_seq FROM ins
        WHERE (SELECT count(*) FROM wake) >= 0
        ORDER BY job_id, seq
        "#,
        &job_ids,
        &tokens,
        &counts,
        &progress as &[Option<Value>],
        &ev_jobs,
        &ev_ords,
        &kinds,
        &datas,
        &ats,
    )
    .fetch_all(pool)
    .await
}

/// Up to `limit` events of `job_id` with `seq > after`, in order. Callers check project access.
pub async fn read_after(
    db: impl sqlx::PgExecutor<'_>,
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
    .fetch_all(db)
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

/// The newest cursor of a stream (0 when it has no events yet). Committed events only.
pub async fn stream_head(
    db: impl sqlx::PgExecutor<'_>,
    stream_id: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT coalesce((SELECT last_seq FROM event_streams WHERE id = $1), 0) AS "head!""#,
        stream_id
    )
    .fetch_one(db)
    .await
}

/// New events of many streams at once, each after its own cursor, ordered by stream then cursor.
/// Each stream is its own index range scan: as a plain join the planner, which cannot see how
/// few streams the arrays hold, hashes the whole event table instead (13 ms a read at 60,000
/// events, growing with the table).
pub async fn read_streams_after(
    pool: &PgPool,
    streams: &[(Uuid, i64)],
    limit: i64,
) -> Result<Vec<(Uuid, StreamEvent)>, sqlx::Error> {
    let (ids, cursors): (Vec<Uuid>, Vec<i64>) = streams.iter().copied().unzip();
    let rows = sqlx::query!(
        r#"SELECT e.stream_id AS "stream_id!", e.stream_seq AS "cursor!", e.job_id, e.seq, e.kind,
                  e.data, e.at
           FROM unnest($1::uuid[], $2::bigint[]) AS s(id, cursor)
           CROSS JOIN LATERAL (
               SELECT * FROM job_events e
               WHERE e.stream_id = s.id AND e.stream_seq > s.cursor
               ORDER BY e.stream_seq
               LIMIT $3
           ) e
           ORDER BY e.stream_id, e.stream_seq
           LIMIT $3"#,
        &ids,
        &cursors,
        limit
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let event = StreamEvent {
                cursor: r.cursor,
                job_id: r.job_id,
                seq: r.seq,
                kind: r.kind,
                data: r.data,
                at: r.at,
            };
            (r.stream_id, event)
        })
        .collect())
}

/// Deletes up to `limit` events of `jobs` (retention); callers repeat while a full batch went,
/// so each statement locks few rows. Returns how many went.
pub async fn delete_for_jobs(pool: &PgPool, jobs: &[Uuid], limit: i64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        "DELETE FROM job_events WHERE (job_id, seq) IN
            (SELECT job_id, seq FROM job_events WHERE job_id = ANY($1) LIMIT $2)",
        jobs,
        limit
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Which of `keys` the events of `jobs` refer to (offloaded payloads; see `store::offload`).
pub async fn referenced(
    pool: &PgPool,
    jobs: &[Uuid],
    keys: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT DISTINCT data #>> '{$blob,key}' AS "key!" FROM job_events
           WHERE job_id = ANY($1) AND data #>> '{$blob,key}' = ANY($2)"#,
        jobs,
        keys
    )
    .fetch_all(pool)
    .await
}
