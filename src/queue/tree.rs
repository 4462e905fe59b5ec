//! A job's descendants as a tree: children, their children, and so on.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::model::JobState;

/// One descendant, with its depth below the root (1 for a child).
#[derive(Debug, Clone, Serialize)]
pub struct TreeNode {
    pub id: Uuid,
    pub parent_id: Option<Uuid>,
    pub kind: String,
    pub state: JobState,
    pub depth: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Every descendant of `root` in `project_id` (at most 1,000), depth first by creation.
pub async fn tree(
    pool: &PgPool,
    project_id: Uuid,
    root: Uuid,
) -> Result<Vec<TreeNode>, sqlx::Error> {
    sqlx::query_as!(
        TreeNode,
        r#"
        WITH RECURSIVE t AS (
            SELECT j.id, j.parent_id, 1 AS depth, ARRAY[j.id] AS path
            FROM jobs j WHERE j.parent_id = $2 AND j.project_id = $1
            UNION ALL
            SELECT c.id, c.parent_id, t.depth + 1, t.path || c.id
            FROM jobs c JOIN t ON c.parent_id = t.id
            WHERE c.project_id = $1 AND t.depth < 32
        )
        SELECT j.id, j.parent_id, j.kind, j.state AS "state: JobState", t.depth AS "depth!",
               j.created_at, j.started_at, j.finished_at
        FROM (SELECT * FROM t LIMIT 1000) t JOIN jobs j ON j.id = t.id
        ORDER BY t.path
        "#,
        project_id,
        root
    )
    .fetch_all(pool)
    .await
}
