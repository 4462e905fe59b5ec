//! The OTLP exporter's SQL (see [`super::otlp`]): claiming a batch of ended, unexported spans
//! under row locks that other processes' exporters skip, and stamping them once the collector has
//! them. Both run in the caller's transaction, so a failed export leaves the spans as they were.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// An ended span waiting to be exported.
#[derive(Debug, Clone)]
pub struct Pending {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub project_id: Uuid,
    pub job_id: Option<Uuid>,
    pub attempt: Option<i32>,
    pub session_id: Option<Uuid>,
    pub kind: String,
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub status: String,
    pub attrs: Value,
}

/// Locks and returns up to `limit` ended, unexported spans that started within `max_age`, oldest
/// first. Rows another transaction holds are skipped, so concurrent exporters split the work;
/// the locks last until the caller's transaction ends.
pub async fn claim(
    tx: &mut PgConnection,
    limit: i64,
    max_age: Duration,
) -> Result<Vec<Pending>, sqlx::Error> {
    // Ended spans are never written again (every end, finish and rescue matches
    // `ended_at IS NULL`), so these locks cannot hold up a job's writes.
    sqlx::query_as!(
        Pending,
        r#"SELECT trace_id, span_id, parent_span_id, project_id, job_id, attempt, session_id,
                  kind, name, started_at, ended_at AS "ended_at!", status, attrs
           FROM spans
           WHERE exported_at IS NULL AND ended_at IS NOT NULL
             AND started_at > now() - make_interval(secs => $2)
           ORDER BY started_at
           LIMIT $1
           FOR UPDATE SKIP LOCKED"#,
        limit,
        max_age.as_secs_f64(),
    )
    .fetch_all(tx)
    .await
}

/// Stamps the given spans (pairs of `trace_ids[i]`, `span_ids[i]`) as exported now.
pub async fn mark_exported(
    tx: &mut PgConnection,
    trace_ids: &[String],
    span_ids: &[String],
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        "UPDATE spans s SET exported_at = now()
         FROM unnest($1::text[], $2::text[]) AS k(trace_id, span_id)
         WHERE s.trace_id = k.trace_id AND s.span_id = k.span_id AND s.exported_at IS NULL",
        trace_ids,
        span_ids,
    )
    .execute(tx)
    .await?;
    Ok(r.rows_affected())
}

/// How many ended spans wait for export (within `max_age`): the exporter's backlog.
pub async fn backlog(pool: &PgPool, max_age: Duration) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM spans
           WHERE exported_at IS NULL AND ended_at IS NOT NULL
             AND started_at > now() - make_interval(secs => $1)"#,
        max_age.as_secs_f64(),
    )
    .fetch_one(pool)
    .await
}
