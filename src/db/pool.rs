//! Connecting to PostgreSQL and applying the schema migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Connects a pool (max_connections configurable) to `url` with a 5 s acquire timeout and short statement cache defaults.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    // A bounded cache keeps per-connection server memory predictable with hundreds of connections.
    let options = PgConnectOptions::from_str(url)?.statement_cache_capacity(100);
    PgPoolOptions::new()
        .max_connections(max_connections)
        // Fail fast under pool exhaustion instead of queueing requests indefinitely.
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// Applies the embedded migrations (`sqlx::migrate!("./migrations")`).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

/// Checks that the database answers.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// Refreshes planner statistics (after bulk loads).
pub async fn analyze(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("ANALYZE").execute(pool).await.map(|_| ())
}

/// A small pool on the same database as `pool`, connected on first use, for one hot path that
/// must not queue behind the main pool's other work.
pub fn side_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    side_pool_with(max_connections, pool.connect_options().as_ref().clone())
}

/// A small pool on the same database for the claim statement alone, with
/// `synchronous_commit = off`: a claim's commit does not wait for the WAL flush. Losing a claim
/// in a server crash is harmless (the job is simply `queued` again), and a job's durable
/// completion flushes the WAL up to and including its claim, so no completion ever rests on an
/// unflushed claim. (A forced generic plan was tried here and made drains 2× slower: the planner
/// must see the LIMIT.)
pub fn claim_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("synchronous_commit", "off")]);
    side_pool_with(max_connections, options)
}

fn side_pool_with(max_connections: u32, options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options)
}
