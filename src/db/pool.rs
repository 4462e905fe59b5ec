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
