//! The `blobs` table: one row per blob, written before its bytes and removed after them, so the
//! registry always covers what the store holds. The orphan sweep pages through old rows here
//! and asks the owning domains which of them they still refer to.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// Records a blob about to be written. Registering a key twice is harmless.
pub async fn register(
    pool: &PgPool,
    key: &str,
    project_id: Uuid,
    job_id: Option<Uuid>,
    size: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO blobs (key, project_id, job_id, size) VALUES ($1, $2, $3, $4)
         ON CONFLICT (key) DO NOTHING",
        key,
        project_id,
        job_id,
        size
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets blobs whose bytes are gone. Returns how many rows went.
pub async fn unregister(pool: &PgPool, keys: &[String]) -> Result<u64, sqlx::Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let r = sqlx::query!("DELETE FROM blobs WHERE key = ANY($1)", keys)
        .execute(pool)
        .await?;
    Ok(r.rows_affected())
}

/// A registered blob, as the sweep sees it.
#[derive(Debug, Clone)]
pub struct Registered {
    pub key: String,
    pub project_id: Uuid,
    /// For payloads: the job whose rows may refer to it.
    pub job_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` blobs registered before `before`, oldest first, after the keyset position
/// `after` (the last row of the previous page).
pub async fn older_than(
    pool: &PgPool,
    before: DateTime<Utc>,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<Registered>, sqlx::Error> {
    let (after_at, after_key) = after.unzip();
    sqlx::query_as!(
        Registered,
        "SELECT key, project_id, job_id, created_at FROM blobs
         WHERE created_at < $1
           AND ($2::timestamptz IS NULL OR (created_at, key) > ($2, $3::text))
         ORDER BY created_at, key LIMIT $4",
        before,
        after_at,
        after_key,
        limit
    )
    .fetch_all(pool)
    .await
}
