//! All workflow SQL: uploaded files, runs, the step journal and the step cache. Writes a run
//! makes carry its lease fence, so a stale activation changes nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A run attempt's write fence: (job id, lease token).
pub type Fence = (Uuid, Uuid);

/// A run as stored, with its job's state.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: Uuid,
    pub project_id: Uuid,
    pub workflow: String,
    #[serde(skip)]
    pub source: String,
    pub args: Value,
    pub budget_total: i64,
    #[serde(skip)]
    pub seed: i64,
    pub depth: i32,
    pub workspace: Option<String>,
    #[serde(skip)]
    pub events_emitted: i32,
    pub created_at: DateTime<Utc>,
    /// The `workflow.run` job's state, result and error message.
    pub state: String,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One journal row with its step job's state.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub position: String,
    pub step_key: String,
    pub kind: String,
    pub label: Option<String>,
    pub phase: Option<String>,
    pub job_id: Option<Uuid>,
    pub cached: bool,
    /// The result when it came from the cache.
    pub result: Option<Value>,
    pub wake_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub job_state: Option<String>,
    pub job_result: Option<Value>,
    pub job_error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What a new run row holds.
pub struct NewRun<'a> {
    pub id: Uuid,
    pub project_id: Uuid,
    pub workflow: &'a str,
    pub source: &'a str,
    pub args: &'a Value,
    pub budget_total: i64,
    pub seed: i64,
    pub depth: i32,
    pub workspace: Option<&'a str>,
}

/// Inserts a run, in the caller's transaction (the one that enqueues its job).
pub async fn insert_run(conn: &mut PgConnection, r: &NewRun<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO workflow_runs (id, project_id, workflow, source, args, budget_total, seed, depth, workspace)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
        r.id,
        r.project_id,
        r.workflow,
        r.source,
        r.args,
        r.budget_total,
        r.seed,
        r.depth,
        r.workspace,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A run of `project_id`.
pub async fn run(pool: &PgPool, project_id: Uuid, id: Uuid) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as!(
        Run,
        r#"SELECT r.id, r.project_id, r.workflow, r.source, r.args, r.budget_total, r.seed, r.depth,
                  r.workspace, r.events_emitted, r.created_at,
                  coalesce(j.state::text, 'unknown') AS "state!", j.result,
                  j.error->>'message' AS error, j.finished_at
           FROM workflow_runs r LEFT JOIN jobs j ON j.id = r.id
           WHERE r.id = $1 AND r.project_id = $2"#,
        id,
        project_id
    )
    .fetch_optional(pool)
    .await
}

/// The newest runs of `project_id`.
pub async fn runs(pool: &PgPool, project_id: Uuid, limit: i64) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as!(
        Run,
        r#"SELECT r.id, r.project_id, r.workflow, r.source, r.args, r.budget_total, r.seed, r.depth,
                  r.workspace, r.events_emitted, r.created_at,
                  coalesce(j.state::text, 'unknown') AS "state!", j.result,
                  j.error->>'message' AS error, j.finished_at
           FROM workflow_runs r LEFT JOIN jobs j ON j.id = r.id
           WHERE r.project_id = $1 ORDER BY r.id DESC LIMIT $2"#,
        project_id,
        limit
    )
    .fetch_all(pool)
    .await
}

/// The journal of run `run_id`, oldest first.
pub async fn steps(pool: &PgPool, run_id: Uuid) -> Result<Vec<Step>, sqlx::Error> {
    sqlx::query_as!(
        Step,
        r#"SELECT s.position, s.step_key, s.kind, s.label, s.phase, s.job_id, s.cached, s.result,
                  s.wake_at, s.created_at, s.completed_at, j.state::text AS job_state,
                  j.result AS job_result, j.error->>'message' AS job_error, j.started_at, j.finished_at
           FROM workflow_steps s LEFT JOIN jobs j ON j.id = s.job_id
           WHERE s.run_id = $1 ORDER BY s.created_at, s.position"#,
        run_id
    )
    .fetch_all(pool)
    .await
}

/// New journal rows (fenced). Rows already recorded at a position are kept as they are.
pub struct NewSteps {
    pub position: Vec<String>,
    pub key: Vec<String>,
    pub kind: Vec<String>,
    pub label: Vec<Option<String>>,
    pub phase: Vec<Option<String>>,
    pub job_id: Vec<Option<Uuid>>,
    pub cached: Vec<bool>,
    pub result: Vec<Option<Value>>,
    pub wake_at: Vec<Option<DateTime<Utc>>>,
}

/// Records steps in the journal, in the caller's transaction; false when the lease is lost.
pub async fn record_steps(
    conn: &mut PgConnection,
    fence: Fence,
    s: &NewSteps,
) -> Result<bool, sqlx::Error> {
    let ok = sqlx::query_scalar!(
        r#"
        WITH fence AS (SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2),
        ins AS (
            INSERT INTO workflow_steps (run_id, position, step_key, kind, label, phase, job_id,
                                        cached, result, wake_at, completed_at)
            SELECT $1, p, k, kd, l, ph, j, c, r, w, CASE WHEN c THEN now() END
            FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::uuid[],
                        $9::bool[], $10::jsonb[], $11::timestamptz[]) AS t(p, k, kd, l, ph, j, c, r, w)
            WHERE EXISTS (SELECT 1 FROM fence)
            ON CONFLICT (run_id, position) DO NOTHING
        )
        SELECT EXISTS (SELECT 1 FROM fence) AS "ok!"
        "#,
        fence.0,
        fence.1,
        &s.position,
        &s.key,
        &s.kind,
        &s.label as &[Option<String>],
        &s.phase as &[Option<String>],
        &s.job_id as &[Option<Uuid>],
        &s.cached,
        &s.result as &[Option<Value>],
        &s.wake_at as &[Option<DateTime<Utc>>],
    )
    .fetch_one(conn)
    .await?;
    Ok(ok)
}

/// Marks steps as completed (fenced); returns the positions this call marked.
pub async fn mark_completed(
    pool: &PgPool,
    fence: Fence,
    positions: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE workflow_steps SET completed_at = now()
         WHERE run_id = $1 AND position = ANY($3) AND completed_at IS NULL
           AND EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2)
         RETURNING position",
        fence.0,
        fence.1,
        positions
    )
    .fetch_all(pool)
    .await
}

/// Stores completed steps' results for later runs of `workflow`, for `ttl_s` seconds.
pub async fn cache_put(
    pool: &PgPool,
    project_id: Uuid,
    workflow: &str,
    keys: &[String],
    results: &[Value],
    ttl_s: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO workflow_cache (project_id, workflow, step_key, result, expires_at)
         SELECT $1, $2, k, r, now() + make_interval(secs => $5)
         FROM unnest($3::text[], $4::jsonb[]) AS t(k, r)
         ON CONFLICT (project_id, workflow, step_key)
         DO UPDATE SET result = excluded.result, created_at = now(), expires_at = excluded.expires_at",
        project_id,
        workflow,
        keys,
        results,
        ttl_s as f64,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Unexpired cached results of `workflow` for these step keys.
pub async fn cache_get(
    pool: &PgPool,
    project_id: Uuid,
    workflow: &str,
    keys: &[String],
) -> Result<Vec<(String, Value)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT step_key, result FROM workflow_cache
         WHERE project_id = $1 AND workflow = $2 AND step_key = ANY($3) AND expires_at > now()",
        project_id,
        workflow,
        keys
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.step_key, r.result)).collect())
}

/// Forgets every cached step of `workflow`; returns how many there were.
pub async fn cache_clear(
    pool: &PgPool,
    project_id: Uuid,
    workflow: &str,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        "DELETE FROM workflow_cache WHERE project_id = $1 AND workflow = $2",
        project_id,
        workflow
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Notes how many script events are in the run's log (fenced).
pub async fn set_events_emitted(pool: &PgPool, fence: Fence, n: i32) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE workflow_runs SET events_emitted = $3
         WHERE id = $1 AND EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2)",
        fence.0,
        fence.1,
        n
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores (or replaces) an uploaded script.
pub async fn put_file(
    pool: &PgPool,
    project_id: Uuid,
    name: &str,
    source: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO workflow_files (project_id, name, source) VALUES ($1, $2, $3)
         ON CONFLICT (project_id, name) DO UPDATE SET source = excluded.source, updated_at = now()",
        project_id,
        name,
        source
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The project's uploaded scripts: (name, source), by name.
pub async fn files(pool: &PgPool, project_id: Uuid) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT name, source FROM workflow_files WHERE project_id = $1 ORDER BY name",
        project_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.name, r.source)).collect())
}
