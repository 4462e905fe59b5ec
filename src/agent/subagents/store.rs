//! All subagent SQL: the `subagents` rows, their hidden sessions, and what the limits count.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::agent::store::Fence;

/// A subagent as tools, the API and the pages see it: its row, with the state of its job.
#[derive(Debug, Clone, Serialize)]
pub struct Subagent {
    pub id: Uuid,
    pub session_id: Uuid,
    pub root_session_id: Uuid,
    pub parent_job_id: Uuid,
    pub hidden_session_id: Uuid,
    pub depth: i32,
    pub label: Option<String>,
    pub prompt: String,
    pub model: String,
    pub tools: Vec<String>,
    pub budget_tokens: Option<i64>,
    /// `queued`, `running`, `waiting`, `succeeded`, `budget_exhausted`, `failed` or `cancelled`.
    pub status: String,
    pub summary: Option<String>,
    pub output: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub collected_by: Option<Uuid>,
    /// The job's error message when it failed.
    pub error: Option<String>,
}

impl Subagent {
    /// Whether it has ended, one way or another.
    pub fn finished(&self) -> bool {
        matches!(
            self.status.as_str(),
            "succeeded" | "budget_exhausted" | "failed" | "cancelled"
        )
    }
}

/// What a spawn writes besides the job: the hidden session, its first message and the row.
pub struct NewSubagent<'a> {
    pub id: Uuid,
    pub project_id: Uuid,
    pub session_id: Uuid,
    pub root_session_id: Uuid,
    pub parent_job_id: Uuid,
    pub hidden_session_id: Uuid,
    pub depth: i32,
    pub label: Option<&'a str>,
    pub prompt: &'a str,
    pub model: &'a str,
    pub tools: &'a [String],
    pub budget_tokens: Option<i64>,
    pub workspace: Option<&'a str>,
}

/// Creates the hidden session (with the prompt as its user message) and the subagent row, in the
/// caller's transaction (the one that enqueues the job).
pub async fn insert(conn: &mut PgConnection, s: &NewSubagent<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"
        WITH hidden AS (
            INSERT INTO sessions (id, project_id, title, model, workspace, parent_session_id, purpose)
            VALUES ($5, $2, coalesce($7, 'subagent'), $9, $12, $4, 'subagent')
        ), msg AS (
            INSERT INTO messages (id, session_id, turn_id, role, content, status)
            VALUES ($13, $5, $1, 'user', jsonb_build_object('text', $8::text), 'complete')
        )
        INSERT INTO subagents (id, project_id, session_id, parent_job_id, root_session_id,
                               hidden_session_id, depth, label, prompt, model, tools, budget_tokens)
        VALUES ($1, $2, $3, $6, $4, $5, $14, $7, $8, $9, $10, $11)
        "#,
        s.id,
        s.project_id,
        s.session_id,
        s.root_session_id,
        s.hidden_session_id,
        s.parent_job_id,
        s.label,
        s.prompt,
        s.model,
        s.tools,
        s.budget_tokens,
        s.workspace,
        Uuid::now_v7(),
        s.depth,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Counts that the spawn limits compare against: unfinished subagents of the project, and all
/// subagents `parent_job_id` has spawned. Taken under a per-project advisory lock held to the end
/// of the caller's transaction, so two spawns at once cannot both take the last place or the
/// same lane.
pub async fn counts(
    conn: &mut PgConnection,
    project_id: Uuid,
    parent_job_id: Uuid,
) -> Result<(i64, i64), sqlx::Error> {
    // Its own statement: a lock inside a CTE is skipped when nothing reads the CTE's row.
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('subagents:' || $1::uuid::text, 0))",
        project_id
    )
    .execute(&mut *conn)
    .await?;
    let r = sqlx::query!(
        r#"
        SELECT
            (SELECT count(*) FROM subagents s JOIN jobs j ON j.id = s.id
             WHERE s.project_id = $1 AND j.state IN ('queued', 'running', 'waiting')) AS "open!",
            (SELECT count(*) FROM subagents WHERE parent_job_id = $2) AS "spawned!"
        "#,
        project_id,
        parent_job_id
    )
    .fetch_one(conn)
    .await?;
    Ok((r.open, r.spawned))
}

/// The lane (0..lanes) of `parent_job_id` with the fewest unfinished children; lanes are
/// concurrency keys, so at most `lanes` children run at once and the rest queue.
pub async fn quietest_lane(
    conn: &mut PgConnection,
    parent_job_id: Uuid,
    lanes: i32,
) -> Result<i32, sqlx::Error> {
    let lane = sqlx::query_scalar!(
        r#"
        SELECT l AS "lane!" FROM generate_series(0, $2 - 1) l
        LEFT JOIN jobs j ON j.parent_id = $1 AND j.kind = 'agent.subagent'
             AND j.state IN ('queued', 'running', 'waiting')
             AND j.concurrency_key = 'subagents:' || $1::text || ':' || l
        GROUP BY l ORDER BY count(j.id), l LIMIT 1
        "#,
        parent_job_id,
        lanes
    )
    .fetch_one(conn)
    .await?;
    Ok(lane)
}

/// Subagents of `project_id` matching the filter, oldest first.
pub async fn list(
    db: &PgPool,
    project_id: Uuid,
    by: By,
    id: Uuid,
) -> Result<Vec<Subagent>, sqlx::Error> {
    sqlx::query_as!(
        Subagent,
        r#"
        SELECT s.id, s.session_id, s.root_session_id, s.parent_job_id, s.hidden_session_id, s.depth,
               s.label, s.prompt, s.model, s.tools, s.budget_tokens,
               -- The job's state is the truth: the row's own status only tells a succeeded job
               -- that ran out of budget from one that answered.
               CASE WHEN j.state = 'succeeded' AND s.status = 'budget_exhausted' THEN s.status
                    ELSE j.state::text END AS "status!",
               s.summary, s.output, s.input_tokens, s.output_tokens, s.cost_usd, s.created_at,
               j.started_at, coalesce(s.finished_at, j.finished_at) AS finished_at, s.collected_by,
               j.error->>'message' AS error
        FROM subagents s JOIN jobs j ON j.id = s.id
        WHERE s.project_id = $1
          AND CASE $2 WHEN 'id' THEN s.id = $3
                      WHEN 'parent' THEN s.parent_job_id = $3
                      WHEN 'root' THEN s.root_session_id = $3
                      ELSE s.session_id = $3 END
        ORDER BY s.id LIMIT 1000
        "#,
        project_id,
        by.as_str(),
        id
    )
    .fetch_all(db)
    .await
}

/// Which subagents [`list`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The one with this id.
    Id,
    /// Those spawned by this job.
    Parent,
    /// Those anywhere under this visible chat session.
    Root,
    /// Those spawned from this session (visible or hidden).
    Session,
}

impl By {
    fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Parent => "parent",
            Self::Root => "root",
            Self::Session => "session",
        }
    }
}

/// Records a subagent's end (fenced by its own lease): status, output and usage.
pub async fn finish(
    db: &PgPool,
    fence: Fence,
    status: &str,
    output: &str,
    usage: (i64, i64, f64),
) -> Result<bool, sqlx::Error> {
    let summary: String = output.chars().take(280).collect();
    let r = sqlx::query!(
        "UPDATE subagents SET status = $3, output = $4, summary = $5, input_tokens = $6,
                output_tokens = $7, cost_usd = $8, finished_at = now()
         WHERE id = $1 AND EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2)",
        fence.0,
        fence.1,
        status,
        output,
        summary,
        usage.0,
        usage.1,
        usage.2,
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Marks results as received by job `by` (fenced by its lease) when nobody has yet.
pub async fn collect(db: &PgPool, fence: Fence, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE subagents SET collected_by = $1
         WHERE id = ANY($3) AND collected_by IS NULL
           AND EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2)",
        fence.0,
        fence.1,
        ids
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The results a turn of `session_id` owes its context: finished subagents spawned by earlier
/// turns that no turn received, now claimed by this turn (fenced), plus those it claimed on an
/// earlier attempt.
pub async fn notices_for_turn(
    db: &PgPool,
    fence: Fence,
    session_id: Uuid,
) -> Result<Vec<(Uuid, Option<String>, String, String)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        WITH fence AS (SELECT 1 FROM jobs WHERE id = $1 AND lease_token = $2),
        claimed AS (
            UPDATE subagents s SET collected_by = $1
            FROM jobs j
            WHERE j.id = s.id AND s.session_id = $3 AND s.collected_by IS NULL
              AND s.parent_job_id <> $1 AND j.state IN ('succeeded', 'failed', 'cancelled')
              AND EXISTS (SELECT 1 FROM fence)
            RETURNING s.id
        )
        SELECT s.id, s.label,
               CASE WHEN j.state = 'succeeded' AND s.status = 'budget_exhausted' THEN s.status
                    ELSE j.state::text END AS "status!",
               coalesce(s.output, j.error->>'message', '') AS "output!"
        FROM subagents s JOIN jobs j ON j.id = s.id
        WHERE s.session_id = $3 AND (s.collected_by = $1 OR s.id IN (SELECT id FROM claimed))
          AND s.parent_job_id <> $1
        ORDER BY s.id
        "#,
        fence.0,
        fence.1,
        session_id
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.id, r.label, r.status, r.output))
        .collect())
}

/// Tokens and cost of the finished subagents `parent_job_id` spawned (for its usage roll-up).
pub async fn usage_of_children(
    db: &PgPool,
    parent_job_id: Uuid,
) -> Result<(i64, i64, f64), sqlx::Error> {
    let r = sqlx::query!(
        r#"SELECT coalesce(sum(input_tokens), 0)::bigint AS "input!",
                  coalesce(sum(output_tokens), 0)::bigint AS "output!",
                  coalesce(sum(cost_usd), 0)::float8 AS "cost!"
           FROM subagents WHERE parent_job_id = $1"#,
        parent_job_id
    )
    .fetch_one(db)
    .await?;
    Ok((r.input, r.output, r.cost))
}
