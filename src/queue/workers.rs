//! The fleet registry: each worker process's row, heartbeat and final state.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A worker process as it registers itself.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub queues: Vec<String>,
    pub concurrency: i32,
}

/// Registers (or re-registers) a worker as running.
pub async fn register(pool: &PgPool, w: &WorkerInfo) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO workers (id, host, pid, version, queues, concurrency)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET state = 'running', last_heartbeat_at = now()",
        w.id,
        w.host,
        w.pid,
        w.version,
        &w.queues,
        w.concurrency
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a heartbeat with the number of jobs the worker holds.
pub async fn heartbeat(pool: &PgPool, id: &str, running: i32) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE workers SET last_heartbeat_at = now(), running = $2,
                state = CASE WHEN state = 'lost' THEN 'running' ELSE state END
         WHERE id = $1",
        id,
        running
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Sets the worker's state (`draining`, `stopped`); a stopped worker holds no jobs.
pub async fn set_state(pool: &PgPool, id: &str, state: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE workers SET state = $2, last_heartbeat_at = now(),
                running = CASE WHEN $2 = 'stopped' THEN 0 ELSE running END
         WHERE id = $1",
        id,
        state
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A worker as the fleet pages show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub queues: Vec<String>,
    pub concurrency: i32,
    /// Jobs held at the last heartbeat.
    pub running: i32,
    /// `running`, `draining`, `stopped` or `lost`.
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
}

/// Up to `limit` workers, live ones (running, draining) first, then by latest heartbeat;
/// `live_only` leaves out stopped and lost ones.
pub async fn list(
    pool: &PgPool,
    live_only: bool,
    limit: i64,
) -> Result<Vec<WorkerRow>, sqlx::Error> {
    sqlx::query_as!(
        WorkerRow,
        "SELECT id, host, pid, version, queues, concurrency, running, state, started_at,
                last_heartbeat_at
         FROM workers
         WHERE NOT $1 OR state IN ('running', 'draining')
         ORDER BY state IN ('running', 'draining') DESC, last_heartbeat_at DESC, id
         LIMIT $2",
        live_only,
        limit
    )
    .fetch_all(pool)
    .await
}
