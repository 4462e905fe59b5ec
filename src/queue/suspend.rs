//! Suspend and resume: a job that waits for its children gives its worker slot back and goes to
//! `waiting`; the completion of the child it needed queues it again in the same transaction.
//!
//! No wake-up may be lost between a suspend and a child finishing at the same moment, so both
//! sides meet on the parent's row lock: the suspend locks the parent before it counts the open
//! children (in a later statement, so with a snapshot taken after the lock), and every child's
//! completion locks its non-terminal parent and decrements `pending_children` on the newest row
//! version. Whichever comes second sees the first.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// What a suspended job waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    /// Children of the job (others are ignored).
    pub children: Vec<Uuid>,
    /// Wake when any of them finishes, rather than all.
    pub any: bool,
    /// Wake at this time whatever the children do.
    pub until: DateTime<Utc>,
}

/// How a suspend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspended {
    /// The job is `waiting` and holds no lease.
    Waiting,
    /// What it waits for had already happened: it is `queued` again at once.
    Requeued,
    /// The lease was no longer ours; nothing changed.
    Lost,
    /// A cancel was requested; nothing changed, and the caller finishes the job as cancelled.
    CancelRequested,
}

/// An event a finishing child leaves in its parent's log (e.g. `subagent_completed`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParentEvent {
    pub child: Uuid,
    pub kind: String,
    pub data: Value,
}

/// Suspends job `id` (fenced by `token`) until `wait` holds. The attempt is handed back
/// uncounted, the concurrency key stays held, and the attempt's span ends. With no `children`
/// the job sleeps until `until` (queued at once when that has passed).
pub async fn suspend(
    pool: &PgPool,
    id: Uuid,
    token: Uuid,
    wait: &Wait,
) -> Result<Suspended, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let cancel_requested = sqlx::query_scalar!(
        r#"SELECT cancel_requested_at IS NOT NULL AS "cancel!" FROM jobs
           WHERE id = $1 AND lease_token = $2 FOR UPDATE"#,
        id,
        token
    )
    .fetch_optional(&mut *tx)
    .await?;
    match cancel_requested {
        None => return Ok(Suspended::Lost),
        // A cancel that came while the handler was deciding to wait wins: the job must end, not
        // sleep. A cancel arriving after this lock finds the job `waiting` and ends it at once.
        Some(true) => return Ok(Suspended::CancelRequested),
        Some(false) => {}
    }
    // A new statement, so a new snapshot: every child completion that reached this row before
    // our lock has committed and is seen here; any later one blocks on the lock and counts down.
    let row = sqlx::query!(
        r#"
        WITH open AS (
            SELECT count(*) FILTER (WHERE state NOT IN ('succeeded', 'failed', 'cancelled')) AS open,
                   count(*) AS total
            FROM jobs WHERE id = ANY($3) AND parent_id = $1
        ), need AS (
            -- No children: a pure timer (a workflow's `sleep`). It waits for `until` alone, which
            -- only `resume_expired` ends; no child can count it down, so no race to lose.
            SELECT CASE WHEN cardinality($3::uuid[]) = 0 THEN (CASE WHEN $5 > now() THEN 1 ELSE 0 END)
                        WHEN NOT $4 THEN open
                        WHEN open = total AND total > 0 THEN 1
                        ELSE 0 END AS n
            FROM open
        ), done AS (
            UPDATE jobs j SET
                state = CASE WHEN n.n > 0 THEN 'waiting' ELSE 'queued' END::job_state,
                pending_children = n.n,
                wait_for = $3,
                wait_until = $5,
                run_at = now(),
                attempt = j.attempt - 1,
                lease_token = NULL, lease_expires_at = NULL, worker_id = NULL,
                last_seq = j.last_seq + 1
            FROM need n
            WHERE j.id = $1 AND j.lease_token = $2
            RETURNING j.id, j.state, j.queue, j.last_seq, j.stream_id, j.pending_children,
                      j.trace_id, j.span_id
        ), ev AS (
            INSERT INTO job_events (job_id, seq, kind, data, stream_id)
            SELECT id, last_seq, 'state', jsonb_build_object(
                'state', state, 'waiting_for', pending_children, 'wait_until', $5::timestamptz,
                'reason', CASE WHEN state = 'queued' THEN 'nothing left to wait for'
                               ELSE 'waiting for children' END), stream_id
            FROM done
        ), span_end AS (
            UPDATE spans s SET ended_at = now(), status = 'ok',
                attrs = s.attrs || jsonb_build_object('spool.job.state', 'waiting')
            FROM done d
            WHERE s.trace_id = d.trace_id AND s.span_id = d.span_id AND s.ended_at IS NULL
        )
        SELECT d.state = 'waiting' AS "waiting!",
               (SELECT count(*) FROM (SELECT pg_notify('spool_events', d.id::text),
                       CASE WHEN d.state = 'queued' THEN pg_notify('spool_jobs', d.queue) END) n)
                   AS "notified!"
        FROM done d
        "#,
        id,
        token,
        &wait.children,
        wait.any,
        wait.until,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match row {
        None => Suspended::Lost,
        Some(r) if r.waiting => Suspended::Waiting,
        Some(_) => Suspended::Requeued,
    })
}

/// Counts the children `finished` (ids of jobs that just reached a terminal state, in this
/// transaction) off their waiting parents, queues each parent whose wait is over, and leaves
/// `events` in the logs of parents that have not finished. Returns how many parents woke.
pub async fn children_finished(
    conn: &mut PgConnection,
    finished: &[Uuid],
    events: &[ParentEvent],
) -> Result<u64, sqlx::Error> {
    if finished.is_empty() {
        return Ok(0);
    }
    let (ev_child, (ev_kind, ev_data)): (Vec<Uuid>, (Vec<String>, Vec<Value>)) = events
        .iter()
        .map(|e| (e.child, (e.kind.clone(), e.data.clone())))
        .unzip();
    let woke = sqlx::query_scalar!(
        r#"
        WITH kids AS (
            SELECT c.parent_id, array_agg(c.id) AS ids FROM jobs c
            WHERE c.id = ANY($1) AND c.parent_id IS NOT NULL
              AND c.state IN ('succeeded', 'failed', 'cancelled')
            GROUP BY c.parent_id
        ), locked AS (
            -- Any unfinished parent is locked, not only a waiting one: a parent suspending right
            -- now is still `running` in this statement's snapshot, and the lock returns the
            -- newest version once that suspend commits.
            SELECT p.id, p.state, p.wait_for, p.pending_children, k.ids FROM jobs p
            JOIN kids k ON k.parent_id = p.id
            WHERE p.state IN ('queued', 'running', 'waiting')
            ORDER BY p.id
            FOR UPDATE OF p
        ), evs AS (
            SELECT e.child, e.kind, e.data, l.id AS parent,
                   row_number() OVER (PARTITION BY l.id ORDER BY e.child) AS n
            FROM unnest($2::uuid[], $3::text[], $4::jsonb[]) AS e(child, kind, data)
            JOIN locked l ON e.child = ANY(l.ids)
        ), counted AS (
            SELECT l.id,
                   CASE WHEN l.state = 'waiting'
                        THEN l.pending_children
                             - (SELECT count(*) FROM unnest(l.ids) c WHERE c = ANY(l.wait_for))
                   END AS left_over,
                   (SELECT count(*) FROM evs WHERE evs.parent = l.id) AS events
            FROM locked l
        ), upd AS (
            UPDATE jobs p SET
                pending_children = CASE WHEN c.left_over IS NULL THEN p.pending_children
                                        ELSE greatest(c.left_over, 0) END,
                state = CASE WHEN c.left_over <= 0 THEN 'queued' ELSE p.state END,
                run_at = CASE WHEN c.left_over <= 0 THEN now() ELSE p.run_at END,
                wait_for = CASE WHEN c.left_over <= 0 THEN NULL ELSE p.wait_for END,
                last_seq = p.last_seq + c.events + coalesce(c.left_over <= 0, false)::int
            FROM counted c
            WHERE p.id = c.id AND (c.left_over IS NOT NULL OR c.events > 0)
            RETURNING p.id, p.queue, p.last_seq, p.stream_id, c.events, coalesce(c.left_over <= 0, false) AS woke
        ), ev AS (
            INSERT INTO job_events (job_id, seq, kind, data, stream_id)
            SELECT u.id, u.last_seq - u.woke::int - u.events + e.n, e.kind, e.data, u.stream_id
            FROM upd u JOIN evs e ON e.parent = u.id
            UNION ALL
            SELECT id, last_seq, 'state',
                   '{"state":"queued","reason":"the children it waited for finished"}'::jsonb, stream_id
            FROM upd WHERE woke
            -- Stream rows are locked in id order by every writer of several streams; within a
            -- job, in seq order.
            ORDER BY 5, 1, 2
        )
        SELECT count(*) FILTER (WHERE u.woke) AS "woke!" FROM upd u,
            LATERAL (SELECT pg_notify('spool_events', u.id::text),
                            CASE WHEN u.woke THEN pg_notify('spool_jobs', u.queue) END) n
        "#,
        finished,
        &ev_child,
        &ev_kind,
        &ev_data,
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(woke as u64)
}

/// Queues again up to `limit` waiting jobs whose wait ran out.
pub async fn resume_expired(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    let n = sqlx::query_scalar!(
        r#"
        WITH due AS (
            SELECT id FROM jobs WHERE state = 'waiting' AND wait_until <= now()
            ORDER BY wait_until LIMIT $1 FOR UPDATE SKIP LOCKED
        ), upd AS (
            UPDATE jobs j SET state = 'queued', run_at = now(), wait_for = NULL,
                   pending_children = 0, last_seq = j.last_seq + 1
            FROM due WHERE j.id = due.id
            RETURNING j.id, j.queue, j.last_seq, j.stream_id
        ), ev AS (
            INSERT INTO job_events (job_id, seq, kind, data, stream_id)
            SELECT id, last_seq, 'state', '{"state":"queued","reason":"wait ran out"}'::jsonb, stream_id
            FROM upd
            ORDER BY stream_id
        )
        SELECT count(*) AS "n!" FROM upd,
            LATERAL (SELECT pg_notify('spool_jobs', upd.queue), pg_notify('spool_events', upd.id::text)) n
        "#,
        limit
    )
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}
