//! Reading jobs (whole, or as the lighter rows pages list) and the operator-side state changes:
//! cancel (with its cascade) and retry, one job or many.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::model::{Job, JobState, QueueError};
use crate::events::Event;

macro_rules! select_job {
    ($where:literal, $($arg:expr),* $(,)?) => {
        sqlx::query_as!(
            Job,
            r#"SELECT id, project_id, kind, queue, state AS "state: JobState", priority, attempt,
                      max_attempts, args, result, error, progress, parent_id, root_id,
                      concurrency_key, idempotency_key, timeout_s, run_at, cancel_requested_at,
                      created_at, started_at, finished_at
               FROM jobs "# + $where,
            $($arg),*
        )
    };
}

/// One job of `project_id`; another project's job is [`QueueError::NotFound`].
pub async fn fetch(conn: &mut PgConnection, project_id: Uuid, id: Uuid) -> Result<Job, QueueError> {
    select_job!("WHERE id = $1 AND project_id = $2", id, project_id)
        .fetch_optional(conn)
        .await?
        .ok_or(QueueError::NotFound)
}

/// Filters for [`list`]; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub parent_id: Option<Uuid>,
    /// Keyset cursor: only jobs older than this id.
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// A page of jobs, newest first.
pub async fn list(pool: &PgPool, project_id: Uuid, f: &JobFilter) -> Result<Vec<Job>, QueueError> {
    Ok(select_job!(
        r#"WHERE project_id = $1
             AND ($2::job_state IS NULL OR state = $2)
             AND ($3::text IS NULL OR kind = $3)
             AND ($4::text IS NULL OR queue = $4)
             AND ($5::uuid IS NULL OR id < $5)
             AND ($7::uuid IS NULL OR parent_id = $7)
           ORDER BY id DESC LIMIT $6"#,
        project_id,
        f.state as Option<JobState>,
        f.kind,
        f.queue,
        f.before,
        f.limit,
        f.parent_id,
    )
    .fetch_all(pool)
    .await?)
}

/// What a cancel did to the job it named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was queued or waiting and is now `cancelled`.
    Now,
    /// It is running; its worker has been asked to stop and will end it `cancelled`.
    Requested,
    /// It had already been cancelled.
    Already,
}

/// Cancels a job and every unfinished descendant, in one statement. Queued and waiting jobs end
/// at once; running ones get `cancel_requested_at` and a NOTIFY that reaches whichever worker
/// holds them. Finished jobs other than cancelled ones answer [`QueueError::WrongState`].
pub async fn cancel(pool: &PgPool, project_id: Uuid, id: Uuid) -> Result<Cancelled, QueueError> {
    let mut tx = pool.begin().await?;
    let state = sqlx::query_scalar!(
        r#"SELECT state AS "state: JobState" FROM jobs WHERE id = $1 AND project_id = $2 FOR UPDATE"#,
        id,
        project_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(QueueError::NotFound)?;
    match state {
        JobState::Cancelled => return Ok(Cancelled::Already),
        JobState::Succeeded | JobState::Failed => {
            return Err(QueueError::WrongState(state, "cancelled"));
        }
        _ => {}
    }
    let ended = sqlx::query!(
        r#"
        WITH RECURSIVE tree AS (
            SELECT $1::uuid AS id
            UNION ALL
            SELECT c.id FROM jobs c JOIN tree t ON c.parent_id = t.id
        ), targets AS (
            SELECT j.id FROM jobs j JOIN tree USING (id)
            WHERE j.state IN ('queued', 'running', 'waiting')
            FOR UPDATE OF j
        ), ended AS (
            UPDATE jobs j SET state = 'cancelled', finished_at = now(),
                   cancel_requested_at = coalesce(j.cancel_requested_at, now()),
                   last_seq = j.last_seq + 1
            FROM targets t WHERE j.id = t.id AND j.state IN ('queued', 'waiting')
            RETURNING j.id, j.project_id, j.concurrency_key, j.last_seq, j.stream_id
        ), asked AS (
            UPDATE jobs j SET cancel_requested_at = now(), last_seq = j.last_seq + 1
            FROM targets t
            WHERE j.id = t.id AND j.state = 'running' AND j.cancel_requested_at IS NULL
            RETURNING j.id, j.last_seq, j.stream_id
        ), ev AS (
            INSERT INTO job_events (job_id, seq, kind, data, stream_id)
            SELECT id, last_seq, 'state', '{"state":"cancelled"}'::jsonb, stream_id FROM ended
            UNION ALL
            SELECT id, last_seq, 'cancel_requested', '{}'::jsonb, stream_id FROM asked
            ORDER BY 5, 1, 2
        ), keys AS (
            UPDATE job_keys k SET holder = NULL FROM ended e
            WHERE e.concurrency_key IS NOT NULL
              AND k.project_id = e.project_id AND k.key = e.concurrency_key AND k.holder = e.id
        )
        SELECT
            ARRAY(SELECT id FROM ended) AS "ended!",
            (SELECT count(*) FROM (SELECT pg_notify('spool_cancel', string_agg(id::text, ','))
                                   FROM asked HAVING count(*) > 0) a) AS "asked!",
            (SELECT count(*) FROM (SELECT pg_notify('spool_events', string_agg(id::text, ','))
                                   FROM (SELECT id FROM ended UNION ALL SELECT id FROM asked) x
                                   HAVING count(*) > 0) b) AS "announced!"
        "#,
        id
    )
    .fetch_one(&mut *tx)
    .await?;
    // Cancelled children of a parent outside this subtree count off its wait.
    super::suspend::children_finished(&mut tx, &ended.ended, &[]).await?;
    tx.commit().await?;
    crate::metrics::count_cancel();
    Ok(if state == JobState::Running {
        Cancelled::Requested
    } else {
        Cancelled::Now
    })
}

/// Puts a `failed` or `cancelled` job back to `queued` as a new attempt, with at least one
/// attempt left.
pub async fn retry(pool: &PgPool, project_id: Uuid, id: Uuid) -> Result<(), QueueError> {
    let row = sqlx::query!(
        r#"
        WITH target AS (
            SELECT id, state FROM jobs WHERE id = $1 AND project_id = $2 FOR UPDATE
        ), requeued AS (
            UPDATE jobs j SET state = 'queued', run_at = now(), finished_at = NULL, result = NULL,
                   cancel_requested_at = NULL, max_attempts = greatest(j.max_attempts, j.attempt + 1),
                   last_seq = j.last_seq + 1
            FROM target t WHERE j.id = t.id AND t.state IN ('failed', 'cancelled')
            RETURNING j.id, j.queue, j.last_seq, j.stream_id
        ), ev AS (
            INSERT INTO job_events (job_id, seq, kind, data, stream_id)
            SELECT id, last_seq, 'state', '{"state":"queued","reason":"retry requested"}'::jsonb,
                   stream_id
            FROM requeued
            ORDER BY stream_id
        )
        SELECT t.state AS "state!: JobState",
               (SELECT count(*) FROM requeued r, LATERAL (SELECT pg_notify('spool_jobs', r.queue),
                       pg_notify('spool_events', r.id::text)) n) AS "requeued!"
        FROM target t
        "#,
        id,
        project_id
    )
    .fetch_optional(pool)
    .await?
    .ok_or(QueueError::NotFound)?;
    if row.requeued == 0 {
        return Err(QueueError::WrongState(row.state, "retried"));
    }
    Ok(())
}

/// Whether `project_id` still has queued or running jobs (cheap: both states have partial indexes).
pub async fn has_unfinished(pool: &PgPool, project_id: Uuid) -> Result<bool, QueueError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM jobs WHERE project_id = $1 AND state IN ('queued', 'running')) AS "any!""#,
        project_id
    )
    .fetch_one(pool)
    .await?)
}

/// The unfinished jobs holding or waiting for `key`, oldest first: the running one first, then
/// the FIFO queue behind it.
pub async fn active_with_key(
    conn: &mut PgConnection,
    project_id: Uuid,
    key: &str,
) -> Result<Vec<(Uuid, JobState)>, QueueError> {
    let rows = sqlx::query!(
        r#"SELECT id, state AS "state: JobState" FROM jobs
           WHERE project_id = $1 AND concurrency_key = $2 AND state IN ('queued', 'running', 'waiting')
           ORDER BY (state = 'queued'), id"#,
        project_id,
        key
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.state)).collect())
}

/// The job an idempotency key already names in `project_id`, if any.
pub async fn by_idempotency_key(
    conn: &mut PgConnection,
    project_id: Uuid,
    key: &str,
) -> Result<Option<Uuid>, QueueError> {
    Ok(sqlx::query_scalar!(
        "SELECT id FROM jobs WHERE project_id = $1 AND idempotency_key = $2",
        project_id,
        key
    )
    .fetch_optional(conn)
    .await?)
}

/// A job as list pages and live rows show it: no args, result or error bodies.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub kind: String,
    pub queue: String,
    pub state: JobState,
    pub attempt: i32,
    pub max_attempts: i32,
    pub progress: Option<Value>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Bumped with every event of the job, so an unchanged `last_seq` means an unchanged row.
    pub last_seq: i64,
}

macro_rules! select_row {
    ($where:literal, $($arg:expr),* $(,)?) => {
        sqlx::query_as!(
            JobRow,
            r#"SELECT id, parent_id, kind, queue, state AS "state: JobState", attempt, max_attempts,
                      progress, cancel_requested_at, created_at, started_at, finished_at, last_seq
               FROM jobs "# + $where,
            $($arg),*
        )
    };
}

/// Like [`list`], in the lighter [`JobRow`] shape. `ORDER BY id DESC` with the project (and
/// state or kind) equality lets the planner walk `jobs_project*_idx` and stop at the limit.
pub async fn list_rows(
    pool: &PgPool,
    project_id: Uuid,
    f: &JobFilter,
) -> Result<Vec<JobRow>, QueueError> {
    Ok(select_row!(
        r#"WHERE project_id = $1
             AND ($2::job_state IS NULL OR state = $2)
             AND ($3::text IS NULL OR kind = $3)
             AND ($4::text IS NULL OR queue = $4)
             AND ($5::uuid IS NULL OR id < $5)
             AND ($7::uuid IS NULL OR parent_id = $7)
           ORDER BY id DESC LIMIT $6"#,
        project_id,
        f.state as Option<JobState>,
        f.kind,
        f.queue,
        f.before,
        f.limit,
        f.parent_id,
    )
    .fetch_all(pool)
    .await?)
}

/// The rows of `ids` that belong to `project_id`, newest first; unknown ids are left out.
pub async fn rows_by_ids(
    pool: &PgPool,
    project_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<JobRow>, QueueError> {
    Ok(select_row!(
        "WHERE project_id = $1 AND id = ANY($2) ORDER BY id DESC",
        project_id,
        ids
    )
    .fetch_all(pool)
    .await?)
}

/// Up to `limit` children of any of `parents`, oldest first: one level of a job tree.
pub async fn children_rows(
    pool: &PgPool,
    project_id: Uuid,
    parents: &[Uuid],
    limit: i64,
) -> Result<Vec<JobRow>, QueueError> {
    Ok(select_row!(
        "WHERE project_id = $1 AND parent_id = ANY($2) ORDER BY id LIMIT $3",
        project_id,
        parents,
        limit
    )
    .fetch_all(pool)
    .await?)
}

/// The newest event seq of a job of `project_id`; another project's job is [`QueueError::NotFound`].
pub async fn last_seq(pool: &PgPool, project_id: Uuid, id: Uuid) -> Result<i64, QueueError> {
    sqlx::query_scalar!(
        "SELECT last_seq FROM jobs WHERE id = $1 AND project_id = $2",
        id,
        project_id
    )
    .fetch_optional(pool)
    .await?
    .ok_or(QueueError::NotFound)
}

/// The `state` and `cancel_requested` events of a job, oldest first (at most 1,000): what the
/// claim, finish, rescue, cancel and retry statements record, from which attempts are told.
pub async fn state_events(pool: &PgPool, job_id: Uuid) -> Result<Vec<Event>, QueueError> {
    Ok(sqlx::query_as!(
        Event,
        "SELECT seq, kind, data, at FROM job_events
         WHERE job_id = $1 AND kind IN ('state', 'cancel_requested') ORDER BY seq LIMIT 1000",
        job_id
    )
    .fetch_all(pool)
    .await?)
}

/// Cancels each of `ids` in turn (ascending, so concurrent bulk cancels lock in one order) and
/// says what happened to each; one job's failure does not stop the others.
pub async fn cancel_many(
    pool: &PgPool,
    project_id: Uuid,
    ids: &[Uuid],
) -> Vec<(Uuid, Result<Cancelled, QueueError>)> {
    let mut out = Vec::with_capacity(ids.len());
    for id in sorted_unique(ids) {
        out.push((id, cancel(pool, project_id, id).await));
    }
    out
}

/// Retries each of `ids` in turn and says what happened to each.
pub async fn retry_many(
    pool: &PgPool,
    project_id: Uuid,
    ids: &[Uuid],
) -> Vec<(Uuid, Result<(), QueueError>)> {
    let mut out = Vec::with_capacity(ids.len());
    for id in sorted_unique(ids) {
        out.push((id, retry(pool, project_id, id).await));
    }
    out
}

fn sorted_unique(ids: &[Uuid]) -> Vec<Uuid> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}
