//! Dashboard reads for one project: job counts by state and kind, finished jobs per minute and
//! the oldest queued job; and the fleet-wide depth and oldest ready age that `/metrics` reports.
//!
//! Each read is one statement shaped for an index, so the overview stays within its 50 ms budget
//! with 100,000 jobs: counts are an index-only scan of `jobs_project_state_kind_idx`, throughput
//! reads `jobs_project_finished_idx` over the window only, and the oldest queued job is the first
//! ready entry of `jobs_project_state_idx` in id (creation) order.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::model::JobState;

/// How many jobs of one kind are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindCount {
    pub state: JobState,
    pub kind: String,
    pub count: i64,
}

/// Job counts of `project_id` by state and kind, ordered by state then kind.
pub async fn counts(pool: &PgPool, project_id: Uuid) -> Result<Vec<KindCount>, sqlx::Error> {
    // `GROUP BY state, kind` in index order lets the planner aggregate the index-only scan as it
    // streams, with no hash table.
    sqlx::query_as!(
        KindCount,
        r#"SELECT state AS "state!: JobState", kind AS "kind!", count(*) AS "count!"
           FROM jobs WHERE project_id = $1
           GROUP BY state, kind
           ORDER BY state, kind"#,
        project_id
    )
    .fetch_all(pool)
    .await
}

/// Jobs that finished in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minute {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    pub succeeded: i64,
    pub failed: i64,
}

/// Jobs of `project_id` finished per minute over the last `minutes` minutes (the current,
/// partial minute last), from `finished_at`. Every minute is present, with zeros when idle.
pub async fn throughput(
    pool: &PgPool,
    project_id: Uuid,
    minutes: i32,
) -> Result<Vec<Minute>, sqlx::Error> {
    sqlx::query_as!(
        Minute,
        r#"WITH f AS (
               SELECT date_trunc('minute', finished_at) AS minute, state FROM jobs
               WHERE project_id = $1
                 AND finished_at >= date_trunc('minute', now()) - make_interval(mins => $2 - 1)
           )
           SELECT s.minute AS "minute!",
                  count(*) FILTER (WHERE f.state = 'succeeded') AS "succeeded!",
                  count(*) FILTER (WHERE f.state = 'failed') AS "failed!"
           FROM generate_series(date_trunc('minute', now()) - make_interval(mins => $2 - 1),
                                date_trunc('minute', now()), interval '1 minute') AS s (minute)
           LEFT JOIN f ON f.minute = s.minute
           GROUP BY s.minute
           ORDER BY s.minute"#,
        project_id,
        minutes.max(1)
    )
    .fetch_all(pool)
    .await
}

/// The queued job that has been ready the longest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldestQueued {
    pub id: Uuid,
    pub kind: String,
    pub queue: String,
    pub created_at: DateTime<Utc>,
    /// When it became ready to run.
    pub run_at: DateTime<Utc>,
}

/// The oldest queued job of `project_id` that is ready to run (jobs scheduled for later are not
/// late). "Oldest" is by id, which is creation order: one index step, however long the backlog.
pub async fn oldest_queued(
    pool: &PgPool,
    project_id: Uuid,
) -> Result<Option<OldestQueued>, sqlx::Error> {
    sqlx::query_as!(
        OldestQueued,
        "SELECT id, kind, queue, created_at, run_at FROM jobs
         WHERE project_id = $1 AND state = 'queued' AND run_at <= now()
         ORDER BY id LIMIT 1",
        project_id
    )
    .fetch_optional(pool)
    .await
}

/// Unfinished (`queued`, `running`, `waiting`) jobs of every project by state and kind, ordered by
/// state then kind: the queue depth `/metrics` reports. Finished jobs are left out because they
/// grow without bound and are not depth.
pub async fn fleet_depth(pool: &PgPool) -> Result<Vec<KindCount>, sqlx::Error> {
    // Per project, so each count is a range of `jobs_project_state_kind_idx` over the three
    // unfinished states only; without a leading `project_id` the planner would scan every job.
    sqlx::query_as!(
        KindCount,
        r#"SELECT c.state AS "state!: JobState", c.kind AS "kind!", sum(c.n)::bigint AS "count!"
           FROM projects p
           CROSS JOIN LATERAL (
               SELECT state, kind, count(*) AS n FROM jobs
               WHERE project_id = p.id AND state IN ('queued', 'running', 'waiting')
               GROUP BY state, kind
           ) c
           GROUP BY c.state, c.kind
           ORDER BY c.state, c.kind"#
    )
    .fetch_all(pool)
    .await
}

/// Seconds the longest-waiting ready job has been ready (`now() - run_at`), across projects, or 0
/// when none is. As on the overview, each project's candidate is its oldest ready queued job by id
/// (creation order), one index step per project however long the backlog.
pub async fn fleet_oldest_ready_age(pool: &PgPool) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT coalesce(extract(epoch FROM now() - min(o.run_at)), 0)::float8 AS "age!"
           FROM projects p
           CROSS JOIN LATERAL (
               SELECT run_at FROM jobs
               WHERE project_id = p.id AND state = 'queued' AND run_at <= now()
               ORDER BY id LIMIT 1
           ) o"#
    )
    .fetch_one(pool)
    .await
}
