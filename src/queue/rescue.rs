//! Rescue of jobs whose lease lapsed: their worker died or lost the database. Runs in every worker
//! process; `SKIP LOCKED` lets any number of rescuers run at once without a leader.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::backoff::Backoff;
use super::model::JobState;
use super::suspend;

/// Moves up to `limit` running jobs with expired leases back to `queued` (with backoff, the lapsed
/// attempt counted) or to `failed` once their attempts are used up, or to `cancelled` when a cancel
/// was pending. Records why as a `state` event. Returns how many were rescued.
pub async fn rescue_expired(
    pool: &PgPool,
    backoff: Backoff,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        r#"
        WITH expired AS (
            SELECT id FROM jobs
            WHERE state = 'running' AND lease_expires_at < now()
            ORDER BY lease_expires_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ), done AS (
            UPDATE jobs j SET
                state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                             WHEN j.attempt >= j.max_attempts THEN 'failed'
                             ELSE 'queued' END::job_state,
                run_at = CASE WHEN j.cancel_requested_at IS NULL AND j.attempt < j.max_attempts
                              THEN now() + make_interval(secs =>
                                   least($3, $2 * power(2, greatest(j.attempt, 1) - 1))
                                   * (0.8 + random() * 0.4))
                              ELSE j.run_at END,
                error = jsonb_build_object('message', 'lease expired: worker ' || coalesce(j.worker_id, '?')
                                           || ' stopped renewing it', 'attempt', j.attempt),
                finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR j.attempt >= j.max_attempts
                                   THEN now() END,
                lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, wait_until = NULL,
                last_seq = j.last_seq + 1
            FROM expired e WHERE j.id = e.id
            RETURNING j.id, j.project_id, j.queue, j.concurrency_key, j.state, j.attempt, j.run_at,
                      j.error, j.last_seq, j.stream_id, j.trace_id
        ), ev AS (
            INSERT INTO job_events (job_id, seq, kind, data, stream_id)
            SELECT id, last_seq, 'state', jsonb_strip_nulls(jsonb_build_object(
                'state', state, 'attempt', attempt, 'error', error, 'reason', 'lease expired',
                'run_at', CASE WHEN state = 'queued' THEN run_at END)), stream_id
            FROM done
            ORDER BY stream_id
        ), keys AS (
            UPDATE job_keys k SET holder = NULL FROM done d
            WHERE d.concurrency_key IS NOT NULL
              AND k.project_id = d.project_id AND k.key = d.concurrency_key AND k.holder = d.id
        ), spans_abandoned AS (
            -- The lapsed attempt's open spans (its job span, and any LLM or tool call it was in).
            UPDATE spans s SET ended_at = now(), status = 'abandoned',
                attrs = s.attrs || jsonb_build_object('error.message', 'worker stopped renewing the lease')
            -- The trace is the primary key's prefix, so this needs no per-job index.
            FROM done d WHERE s.trace_id = d.trace_id AND s.job_id = d.id AND s.ended_at IS NULL
        )
        SELECT done.id AS "id!", done.state AS "state!: JobState" FROM done,
            LATERAL (SELECT pg_notify('spool_events', done.id::text)) n
        "#,
        limit,
        backoff.base.as_secs_f64(),
        backoff.max.as_secs_f64(),
    )
    .fetch_all(&mut *tx)
    .await?;
    // A child that failed for good counts off its waiting parent, like any other finish.
    let ended: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.state.is_terminal())
        .map(|r| r.id)
        .collect();
    suspend::children_finished(&mut tx, &ended, &[]).await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// Marks running or draining workers whose heartbeat is older than `stale` as `lost`, so the
/// fleet view stays honest about a worker that died mid-drain too.
pub async fn mark_lost_workers(pool: &PgPool, stale: Duration) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        "UPDATE workers SET state = 'lost'
         WHERE state IN ('running', 'draining') AND last_heartbeat_at < now() - make_interval(secs => $1)",
        stale.as_secs_f64()
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}
