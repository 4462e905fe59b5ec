//! The fleet registry: each worker process's row, heartbeat and final state.

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

/// Sets the worker's state (`draining`, `stopped`).
pub async fn set_state(pool: &PgPool, id: &str, state: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE workers SET state = $2, last_heartbeat_at = now() WHERE id = $1",
        id,
        state
    )
    .execute(pool)
    .await?;
    Ok(())
}
