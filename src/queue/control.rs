//! Reading jobs and the operator-side state changes: cancel (with its cascade) and retry.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::model::{Job, JobState, QueueError};

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
    sqlx::query!(
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
        ), keys AS (
            UPDATE job_keys k SET holder = NULL FROM ended e
            WHERE e.concurrency_key IS NOT NULL
              AND k.project_id = e.project_id AND k.key = e.concurrency_key AND k.holder = e.id
        )
        SELECT
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
    tx.commit().await?;
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
