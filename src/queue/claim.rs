//! The worker side of the queue: claiming batches, renewing leases, and fenced completion.
//!
//! Every statement here that touches a held job carries `lease_token = $token`, so a worker whose
//! lease lapsed (and whose job was rescued or re-claimed) changes nothing.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::model::{ClaimedJob, Finish, JobState, Outcome};
use super::suspend::{self, ParentEvent};

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Claims up to `limit` ready jobs from `queue` for `worker_id`: plain jobs by priority, `run_at`
/// and age, plus the head of each free concurrency key. One statement; `SKIP LOCKED` keeps
/// concurrent claimers off each other's rows, and the key row lock keeps one holder per key.
pub async fn claim(
    pool: &PgPool,
    queue: &str,
    worker_id: &str,
    limit: i64,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        WITH plain AS (
            SELECT id FROM jobs
            WHERE state = 'queued' AND concurrency_key IS NULL AND queue = $1 AND run_at <= now()
            ORDER BY priority DESC, run_at, id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ), heads AS (
            SELECT DISTINCT ON (project_id, concurrency_key)
                   id, project_id, concurrency_key, queue, run_at, priority
            FROM jobs
            WHERE state = 'queued' AND concurrency_key IS NOT NULL
            ORDER BY project_id, concurrency_key, id
        ), keyed AS (
            SELECT h.id FROM heads h
            JOIN job_keys k ON k.project_id = h.project_id AND k.key = h.concurrency_key
            -- A job resumed from `waiting` still holds its key.
            WHERE (k.holder IS NULL OR k.holder = h.id) AND h.queue = $1 AND h.run_at <= now()
            ORDER BY h.priority DESC, h.run_at, h.id
            LIMIT $2
            FOR UPDATE OF k SKIP LOCKED
        ), claimed AS (
            UPDATE jobs j SET
                state = 'running',
                attempt = j.attempt + 1,
                lease_token = gen_random_uuid(),
                lease_expires_at = now() + make_interval(secs => $3),
                worker_id = $4,
                started_at = now(),
                last_seq = j.last_seq + 1,
                span_id = substr(md5(random()::text || j.id::text), 1, 16)
            FROM (SELECT id FROM plain UNION ALL SELECT id FROM keyed) p
            WHERE j.id = p.id AND j.state = 'queued'
            RETURNING j.id, j.project_id, j.kind, j.args, j.attempt, j.max_attempts, j.timeout_s,
                      j.lease_token, j.concurrency_key, j.last_seq, j.stream_id, j.trace_id,
                      j.parent_span_id, j.run_at, j.span_id, j.wait_until
        ), span AS (
            -- The attempt's span opens with the claim; the finish or a rescue closes it.
            INSERT INTO spans (trace_id, span_id, parent_span_id, project_id, job_id, attempt,
                               session_id, kind, name, attrs)
            SELECT trace_id, span_id, parent_span_id, project_id, id, attempt, stream_id, 'job',
                   -- The columns already say job, kind and attempt (the exporter adds them).
                   kind, jsonb_build_object('spool.worker.id', $4::text)
            FROM claimed
        ), held AS (
            UPDATE job_keys k SET holder = c.id FROM claimed c
            WHERE c.concurrency_key IS NOT NULL
              AND k.project_id = c.project_id AND k.key = c.concurrency_key
        ), ev AS (
            INSERT INTO job_events (job_id, seq, kind, data, stream_id)
            SELECT id, last_seq, 'state',
                   jsonb_build_object('state', 'running', 'attempt', attempt, 'worker_id', $4::text),
                   stream_id
            FROM claimed
            -- Stream rows are locked in id order by every writer of several streams.
            ORDER BY stream_id
        )
        SELECT id AS "id!", project_id AS "project_id!", kind AS "kind!", args AS "args!",
               attempt AS "attempt!", max_attempts AS "max_attempts!", timeout_s,
               lease_token AS "lease_token!", trace_id AS "trace_id!", span_id AS "span_id!",
               run_at AS "run_at!", wait_until
        FROM claimed
        "#,
        queue,
        limit,
        secs(lease),
        worker_id,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ClaimedJob {
            id: r.id,
            project_id: r.project_id,
            kind: r.kind,
            args: r.args,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            timeout_s: r.timeout_s,
            lease_token: r.lease_token,
            trace_id: r.trace_id,
            span_id: r.span_id,
            run_at: r.run_at,
            resumed_wait: r.wait_until,
        })
        .collect())
}

/// What renewing one held lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease is extended; the job's cancel may have been requested meanwhile.
    Renewed { cancel_requested: bool },
    /// The lease is no longer ours: rescued, re-claimed or finished elsewhere.
    Lost,
    /// Another transaction (an event write, a finish) holds the row right now; try again shortly.
    Busy,
}

/// Extends the leases of `held` (id, token) pairs, and says for each what it found.
///
/// Rows locked by someone else are skipped, not waited for: a renewal that waited would keep
/// every row it had locked so far, and those jobs' event writes would queue behind it. The rows
/// are locked in id order, as every statement that locks several job rows does.
pub async fn renew(
    pool: &PgPool,
    held: &[(Uuid, Uuid)],
    lease: Duration,
) -> Result<Vec<(Uuid, Renewal)>, sqlx::Error> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, tokens): (Vec<Uuid>, Vec<Uuid>) = held.iter().copied().unzip();
    let rows = sqlx::query!(
        r#"
        WITH held AS (
            SELECT * FROM unnest($1::uuid[], $2::uuid[]) AS h(id, token)
        ), locked AS (
            SELECT j.id FROM jobs j JOIN held h ON h.id = j.id AND j.lease_token = h.token
            ORDER BY j.id
            FOR NO KEY UPDATE OF j SKIP LOCKED
        ), renewed AS (
            UPDATE jobs j SET lease_expires_at = now() + make_interval(secs => $3)
            FROM locked l WHERE j.id = l.id
            RETURNING j.id, j.lease_token, (j.cancel_requested_at IS NOT NULL) AS cancel_requested
        )
        SELECT h.id AS "id!", r.id IS NOT NULL AS "renewed!",
               coalesce(r.cancel_requested, false) AS "cancel_requested!",
               -- Skipped, yet still ours as of this statement's snapshot: locked, not lost.
               (r.id IS NULL AND EXISTS (
                   SELECT 1 FROM jobs j WHERE j.id = h.id AND j.lease_token = h.token
               )) AS "busy!"
        FROM held h LEFT JOIN renewed r ON r.id = h.id AND r.lease_token = h.token
        "#,
        &ids,
        &tokens,
        secs(lease),
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let found = match (r.renewed, r.busy) {
                (true, _) => Renewal::Renewed {
                    cancel_requested: r.cancel_requested,
                },
                (false, true) => Renewal::Busy,
                (false, false) => Renewal::Lost,
            };
            (r.id, found)
        })
        .collect())
}

/// Columns of a batch of finishes, in the shape `unnest` wants.
#[derive(Default)]
struct FinishColumns {
    ids: Vec<Uuid>,
    tokens: Vec<Uuid>,
    states: Vec<JobState>,
    results: Vec<Option<Value>>,
    errors: Vec<Option<Value>>,
    run_ats: Vec<Option<DateTime<Utc>>>,
    refunds: Vec<i32>,
}

impl FinishColumns {
    fn push(&mut self, f: &Finish) {
        let (state, result, error, run_at, refund) = match &f.outcome {
            Outcome::Succeeded(v) => (JobState::Succeeded, Some(v.clone()), None, None, 0),
            Outcome::Retry { error, run_at } => (
                JobState::Queued,
                None,
                Some(error.clone()),
                Some(*run_at),
                0,
            ),
            Outcome::Failed(e) => (JobState::Failed, None, Some(e.clone()), None, 0),
            Outcome::Cancelled(e) => (JobState::Cancelled, None, Some(e.clone()), None, 0),
            Outcome::Released => (JobState::Queued, None, None, Some(Utc::now()), 1),
        };
        self.ids.push(f.id);
        self.tokens.push(f.lease_token);
        self.states.push(state);
        self.results.push(result);
        self.errors.push(error);
        self.run_ats.push(run_at);
        self.refunds.push(refund);
    }
}

/// Applies a batch of finishes in one statement and returns the ids that were still ours.
///
/// A job whose cancel was requested ends `cancelled` whatever its handler returned, so no
/// `succeeded` is ever written after a cancel. Each finished job gets its `state` event, releases
/// its concurrency key, and is announced on the events channel in the same statement.
pub async fn finish(pool: &PgPool, batch: &[Finish]) -> Result<Vec<Uuid>, sqlx::Error> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = FinishColumns::default();
    batch.iter().for_each(|f| c.push(f));
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        r#"
        WITH input AS (
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::job_state[], $4::jsonb[], $5::jsonb[],
                                 $6::timestamptz[], $7::int[])
                AS i(id, token, state, result, error, run_at, refund)
        ), done AS (
            UPDATE jobs j SET
                state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE i.state END,
                result = CASE WHEN j.cancel_requested_at IS NOT NULL THEN NULL ELSE i.result END,
                error = coalesce(i.error, j.error),
                run_at = coalesce(i.run_at, j.run_at),
                attempt = j.attempt - i.refund,
                lease_token = NULL,
                lease_expires_at = NULL,
                worker_id = NULL,
                wait_until = NULL,
                finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL
                                     OR i.state IN ('succeeded', 'failed', 'cancelled')
                                   THEN now() END,
                last_seq = j.last_seq + 1
            FROM input i
            WHERE j.id = i.id AND j.lease_token = i.token
            RETURNING j.id, j.project_id, j.queue, j.concurrency_key, j.state, j.last_seq,
                      j.attempt, j.run_at, i.error, i.refund, j.stream_id, j.trace_id, j.span_id,
                      j.parent_id
        ), ev AS (
            INSERT INTO job_events (job_id, seq, kind, data, stream_id)
            SELECT id, last_seq, 'state', jsonb_strip_nulls(jsonb_build_object(
                'state', state,
                'attempt', attempt,
                'error', error,
                'run_at', CASE WHEN state = 'queued' THEN run_at END,
                'reason', CASE WHEN refund > 0 THEN 'released by worker shutdown' END)),
                stream_id
            FROM done
            ORDER BY stream_id
        ), keys AS (
            UPDATE job_keys k SET holder = NULL FROM done d
            WHERE d.concurrency_key IS NOT NULL
              AND k.project_id = d.project_id AND k.key = d.concurrency_key AND k.holder = d.id
            RETURNING d.queue
        ), span_end AS (
            UPDATE spans s SET
                ended_at = now(),
                status = CASE WHEN d.refund > 0 THEN 'abandoned'
                              WHEN d.state = 'succeeded' THEN 'ok'
                              WHEN d.state = 'cancelled' THEN 'cancelled'
                              ELSE 'error' END,
                attrs = s.attrs || jsonb_strip_nulls(jsonb_build_object(
                    'spool.job.state', d.state, 'error.message', d.error->>'message'))
            FROM done d
            WHERE s.trace_id = d.trace_id AND s.span_id = d.span_id AND s.ended_at IS NULL
        ), wake_events AS (
            SELECT pg_notify('spool_events', string_agg(id::text, ','))
            FROM (SELECT id, (row_number() OVER ()) / 150 AS chunk FROM done) d GROUP BY chunk
        ), wake_claimers AS (
            SELECT pg_notify('spool_jobs', queue) FROM keys GROUP BY queue
        )
        SELECT id AS "id!", parent_id, state AS "state!: JobState" FROM done
        WHERE (SELECT count(*) FROM wake_events) >= 0 AND (SELECT count(*) FROM wake_claimers) >= 0
        "#,
        &c.ids,
        &c.tokens,
        &c.states as &[JobState],
        &c.results as &[Option<Value>],
        &c.errors as &[Option<Value>],
        &c.run_ats as &[Option<DateTime<Utc>>],
        &c.refunds,
    )
    .fetch_all(&mut *tx)
    .await?;
    // Children that ended wake (or count down) their waiting parents in the same transaction.
    let ended: HashSet<Uuid> = rows
        .iter()
        .filter(|r| r.parent_id.is_some() && r.state.is_terminal())
        .map(|r| r.id)
        .collect();
    if !ended.is_empty() {
        let events: Vec<ParentEvent> = batch
            .iter()
            .filter(|f| ended.contains(&f.id))
            .filter_map(|f| f.parent_event.clone())
            .collect();
        let ended: Vec<Uuid> = ended.into_iter().collect();
        suspend::children_finished(&mut tx, &ended, &events).await?;
    }
    tx.commit().await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// An error value as stored in `jobs.error` and in `state` events.
pub fn error_value(message: &str, attempt: i32) -> Value {
    json!({ "message": message, "attempt": attempt })
}
