//! All span SQL: fenced writes of child spans, and the reads the API and pages use.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Scope, Status};

/// Writes an open span under the attempt's lease fence; `false` if the lease is gone.
pub async fn start(
    pool: &PgPool,
    scope: &Scope,
    span_id: &str,
    parent_span_id: &str,
    kind: &str,
    name: &str,
    attrs: &Value,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        "INSERT INTO spans (trace_id, span_id, parent_span_id, project_id, job_id, attempt,
                            session_id, kind, name, attrs)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10
         WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $5 AND lease_token = $11)",
        scope.trace_id,
        span_id,
        parent_span_id,
        scope.project_id,
        scope.job_id,
        scope.attempt,
        scope.session_id,
        kind,
        name,
        attrs,
        scope.lease_token,
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Ends an open span under the attempt's lease fence; `false` if the lease is gone (a rescue
/// has marked the span `abandoned` or will).
pub async fn end(
    pool: &PgPool,
    scope: &Scope,
    span_id: &str,
    status: Status,
    attrs: &Value,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        "UPDATE spans SET ended_at = now(), status = $3, attrs = attrs || $4
         WHERE trace_id = $1 AND span_id = $2 AND ended_at IS NULL
           AND EXISTS (SELECT 1 FROM jobs WHERE id = $5 AND lease_token = $6)",
        scope.trace_id,
        span_id,
        status.as_str(),
        attrs,
        scope.job_id,
        scope.lease_token,
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A stored span.
#[derive(Debug, Clone, Serialize)]
pub struct SpanRow {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub job_id: Option<Uuid>,
    pub attempt: Option<i32>,
    pub session_id: Option<Uuid>,
    pub kind: String,
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub status: String,
    pub attrs: Value,
}

/// Every span of a trace in `project_id`, by start time.
pub async fn by_trace(
    pool: &PgPool,
    project_id: Uuid,
    trace_id: &str,
) -> Result<Vec<SpanRow>, sqlx::Error> {
    sqlx::query_as!(
        SpanRow,
        "SELECT trace_id, span_id, parent_span_id, job_id, attempt, session_id, kind, name,
                started_at, ended_at, status, attrs
         FROM spans WHERE trace_id = $1 AND project_id = $2
         ORDER BY started_at, span_id LIMIT 10000",
        trace_id,
        project_id
    )
    .fetch_all(pool)
    .await
}

/// The trace a job belongs to, if the job is in `project_id`.
pub async fn trace_of_job(
    pool: &PgPool,
    project_id: Uuid,
    job_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT trace_id FROM jobs WHERE id = $1 AND project_id = $2",
        job_id,
        project_id
    )
    .fetch_optional(pool)
    .await
}

/// A chat turn's trace and what its spans add up to: the tokens and cost of every LLM call in
/// the subtree of the turn's job spans (all attempts, and child jobs such as subagents).
#[derive(Debug, Clone, Serialize)]
pub struct TurnTrace {
    pub turn_id: Uuid,
    pub trace_id: String,
    /// When the first attempt started.
    pub started_at: DateTime<Utc>,
    /// When the latest attempt ended; `None` while it runs.
    pub ended_at: Option<DateTime<Utc>>,
    /// The latest attempt's span status.
    pub status: String,
    pub attempts: i64,
    pub span_count: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cost_usd: f64,
    /// The attempts' spans, summed (an open one counts up to now).
    pub duration_ms: i64,
    /// The keyset position: the first attempt's span id (ties on `started_at`).
    #[serde(skip)]
    pub span_id: String,
}

/// Where a page of [`turn_traces`] continues: after this first-attempt start and span id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCursor {
    pub started_at: DateTime<Utc>,
    pub span_id: String,
}

/// The turns of session `session_id` in `project_id` that have started, newest first, after
/// `after`; only those in `turns` when given. A turn is listed by its first attempt's span, so a
/// retried turn appears once, and a turn still queued (no span yet) not at all.
pub async fn turn_traces(
    pool: &PgPool,
    project_id: Uuid,
    session_id: Uuid,
    turns: Option<&[Uuid]>,
    after: Option<&TurnCursor>,
    limit: i64,
) -> Result<Vec<TurnTrace>, sqlx::Error> {
    // The recursion only follows spans of the turn's own trace (the primary key's prefix), and
    // `UNION` rather than `UNION ALL` ends it even on a corrupt parent cycle.
    sqlx::query_as!(
        TurnTrace,
        r#"WITH RECURSIVE page AS (
               SELECT s.job_id, s.trace_id, s.started_at, s.span_id
               FROM spans s
               WHERE s.project_id = $1 AND s.session_id = $2 AND s.kind = 'job'
                 AND s.name = 'agent.turn' AND s.attempt = 1
                 AND ($3::uuid[] IS NULL OR s.job_id = ANY($3))
                 AND ($4::timestamptz IS NULL OR s.started_at < $4
                      OR (s.started_at = $4 AND s.span_id > $5))
               ORDER BY s.started_at DESC, s.span_id
               LIMIT $6
           ), attempts AS (
               SELECT p.job_id AS turn_id, a.trace_id, a.span_id, a.attempt, a.started_at,
                      a.ended_at, a.status
               FROM page p
               JOIN spans a ON a.job_id = p.job_id AND a.trace_id = p.trace_id AND a.kind = 'job'
           ), tree AS (
               SELECT turn_id, trace_id, span_id FROM attempts
               UNION
               SELECT t.turn_id, s.trace_id, s.span_id FROM tree t
               JOIN spans s ON s.trace_id = t.trace_id AND s.parent_span_id = t.span_id
           ), sums AS (
               SELECT t.turn_id, count(*) AS spans,
                      sum(CASE WHEN s.kind = 'llm'
                               AND jsonb_typeof(s.attrs->'gen_ai.usage.input_tokens') = 'number'
                          THEN (s.attrs->'gen_ai.usage.input_tokens')::numeric END) AS input,
                      sum(CASE WHEN s.kind = 'llm'
                               AND jsonb_typeof(s.attrs->'gen_ai.usage.output_tokens') = 'number'
                          THEN (s.attrs->'gen_ai.usage.output_tokens')::numeric END) AS output,
                      sum(CASE WHEN s.kind = 'llm'
                               AND jsonb_typeof(s.attrs->'gen_ai.usage.cache_read.input_tokens') = 'number'
                          THEN (s.attrs->'gen_ai.usage.cache_read.input_tokens')::numeric END) AS cache_read,
                      sum(CASE WHEN s.kind = 'llm'
                               AND jsonb_typeof(s.attrs->'spool.cost_usd') = 'number'
                          THEN (s.attrs->'spool.cost_usd')::float8 END) AS cost
               FROM tree t JOIN spans s ON s.trace_id = t.trace_id AND s.span_id = t.span_id
               GROUP BY t.turn_id
           ), latest AS (
               SELECT DISTINCT ON (turn_id) turn_id, ended_at, status
               FROM attempts ORDER BY turn_id, attempt DESC
           ), took AS (
               SELECT turn_id, count(*) AS attempts,
                      sum(extract(epoch FROM coalesce(ended_at, now()) - started_at) * 1000) AS ms
               FROM attempts GROUP BY turn_id
           )
           SELECT p.job_id AS "turn_id!", p.trace_id AS "trace_id!", p.started_at AS "started_at!",
                  l.ended_at, l.status AS "status!", k.attempts AS "attempts!",
                  coalesce(m.spans, 0) AS "span_count!",
                  coalesce(m.input, 0)::bigint AS "input_tokens!",
                  coalesce(m.output, 0)::bigint AS "output_tokens!",
                  coalesce(m.cache_read, 0)::bigint AS "cache_read_tokens!",
                  coalesce(m.cost, 0)::float8 AS "cost_usd!",
                  greatest(coalesce(k.ms, 0), 0)::bigint AS "duration_ms!",
                  p.span_id AS "span_id!"
           FROM page p
           JOIN latest l ON l.turn_id = p.job_id
           JOIN took k ON k.turn_id = p.job_id
           LEFT JOIN sums m ON m.turn_id = p.job_id
           ORDER BY p.started_at DESC, p.span_id"#,
        project_id,
        session_id,
        turns,
        after.map(|c| c.started_at),
        after.map(|c| c.span_id.as_str()),
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Tokens and cost of a set of LLM calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct UsageTotals {
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cost_usd: f64,
}

/// Every LLM call of the sessions `sessions` in `project_id`, summed (a chat session with its
/// subagents' hidden sessions: their usage rolls up into it).
pub async fn session_usage(
    pool: &PgPool,
    project_id: Uuid,
    sessions: &[Uuid],
) -> Result<UsageTotals, sqlx::Error> {
    sqlx::query_as!(
        UsageTotals,
        r#"SELECT count(*) AS "calls!",
                  coalesce(sum(CASE WHEN jsonb_typeof(attrs->'gen_ai.usage.input_tokens') = 'number'
                      THEN (attrs->'gen_ai.usage.input_tokens')::numeric END), 0)::bigint
                      AS "input_tokens!",
                  coalesce(sum(CASE WHEN jsonb_typeof(attrs->'gen_ai.usage.output_tokens') = 'number'
                      THEN (attrs->'gen_ai.usage.output_tokens')::numeric END), 0)::bigint
                      AS "output_tokens!",
                  coalesce(sum(CASE WHEN jsonb_typeof(attrs->'gen_ai.usage.cache_read.input_tokens') = 'number'
                      THEN (attrs->'gen_ai.usage.cache_read.input_tokens')::numeric END), 0)::bigint
                      AS "cache_read_tokens!",
                  coalesce(sum(CASE WHEN jsonb_typeof(attrs->'spool.cost_usd') = 'number'
                      THEN (attrs->'spool.cost_usd')::float8 END), 0)::float8 AS "cost_usd!"
           FROM spans
           WHERE project_id = $1 AND session_id = ANY($2) AND kind = 'llm' AND ended_at IS NOT NULL"#,
        project_id,
        sessions
    )
    .fetch_one(pool)
    .await
}

/// The trace of a job in `project_id` that has started (has a span); `None` for an unknown job,
/// another project's, or one still waiting for its first attempt.
pub async fn started_trace_of_job(
    pool: &PgPool,
    project_id: Uuid,
    job_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT j.trace_id FROM jobs j
         WHERE j.id = $1 AND j.project_id = $2
           AND EXISTS (SELECT 1 FROM spans s WHERE s.job_id = j.id AND s.trace_id = j.trace_id)",
        job_id,
        project_id
    )
    .fetch_optional(pool)
    .await
}

/// How far a trace has got: its span count and how many have ended. Both only grow, so an
/// unchanged pair means no span started, ended or changed its attributes.
pub async fn trace_version(
    pool: &PgPool,
    project_id: Uuid,
    trace_id: &str,
) -> Result<(i64, i64), sqlx::Error> {
    let r = sqlx::query!(
        r#"SELECT count(*) AS "spans!", count(ended_at) AS "ended!"
           FROM spans WHERE trace_id = $1 AND project_id = $2"#,
        trace_id,
        project_id
    )
    .fetch_one(pool)
    .await?;
    Ok((r.spans, r.ended))
}

/// Deletes up to `limit` spans of `jobs` (retention); callers repeat while a full batch went.
pub async fn delete_for_jobs(pool: &PgPool, jobs: &[Uuid], limit: i64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        "DELETE FROM spans WHERE (trace_id, span_id) IN
            (SELECT trace_id, span_id FROM spans WHERE job_id = ANY($1) LIMIT $2)",
        jobs,
        limit
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}
