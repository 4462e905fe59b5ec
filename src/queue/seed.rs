//! Bulk test data for `spool bench --seed N`: jobs spread over states, kinds and queues with
//! realistic timestamps, their state events, and a small fleet of workers.
//!
//! Everything is one set-based statement (`INSERT … SELECT … FROM generate_series`), so 100,000
//! jobs take seconds. Seeded rows are ordinary rows: they are never cleaned up.

use sqlx::{ConnectOptions, Connection, PgPool};
use uuid::Uuid;

/// Inserts `n` jobs into `project_id`, each with its `state` events, and returns how many.
///
/// Terminal jobs finished over the last six hours (with a burst of failures 5 to 8 minutes ago,
/// so the throughput chart has a shape); queued ones are from the last ten minutes, a quarter of
/// them scheduled for later; running ones hold a live lease of a `seed-worker-*`. Ids are UUIDv7
/// built from each job's `created_at`, so id order is creation order as for real jobs.
pub async fn jobs(pool: &PgPool, project_id: Uuid, n: i64) -> Result<i64, sqlx::Error> {
    // A connection of its own: the statement is slow on purpose, and the pool's slow-statement
    // warning would print all of it.
    let mut conn = pool
        .connect_options()
        .as_ref()
        .clone()
        .disable_statement_logging()
        .connect()
        .await?;
    let jobs = sqlx::query_scalar!(
        r#"
        WITH g AS (
            SELECT i, random() AS rs, random() AS rk, random() AS ra, random() AS rd, random() AS rw
            FROM generate_series(1, $2::bigint) AS i
        ), s AS (
            SELECT i, rk, rd, rw, ra * 21600 AS age_s,
                   CASE
                       WHEN rs < 0.04 THEN 'queued'
                       WHEN rs < 0.042 THEN 'running'
                       WHEN rs < 0.05 THEN 'waiting'
                       WHEN rs < 0.07 THEN 'cancelled'
                       -- A burst of failures 5 to 8 minutes ago, so the chart has something to show.
                       WHEN rs < CASE WHEN ra * 21600 BETWEEN 300 AND 480 THEN 0.45 ELSE 0.15 END
                           THEN 'failed'
                       ELSE 'succeeded'
                   END::job_state AS state,
                   (ARRAY['email.send', 'email.send', 'email.send', 'http', 'http', 'report.build',
                          'agent.turn', 'agent.turn', 'image.resize', 'noop'])[1 + floor(rk * 10)::int] AS kind,
                   -- Run times from 50 ms to 30 s, most of them short.
                   make_interval(secs => exp(ln(0.05) + rd * rd * ln(600))) AS dur,
                   make_interval(secs => rw * rw * rw * 5) AS wait
            FROM g
        ), t AS (
            SELECT s.*,
                   CASE state
                       WHEN 'queued' THEN now() - make_interval(secs => age_s / 36)
                       WHEN 'running' THEN now() - make_interval(secs => age_s / 180) - dur - wait
                       WHEN 'waiting' THEN now() - make_interval(secs => age_s / 6) - dur - wait
                       WHEN 'cancelled' THEN now() - make_interval(secs => age_s) - wait
                       ELSE now() - make_interval(secs => age_s) - dur - wait
                   END AS created_at
            FROM s
        ), j AS (
            SELECT t.*,
                   CASE WHEN state IN ('queued', 'cancelled') THEN NULL ELSE created_at + wait END AS started_at,
                   CASE WHEN state IN ('succeeded', 'failed') THEN created_at + wait + dur
                        WHEN state = 'cancelled' THEN created_at + wait END AS finished_at,
                   CASE WHEN state = 'queued' AND rw > 0.75
                        THEN now() + make_interval(secs => rd * 3600) ELSE created_at END AS run_at
            FROM t
        ), ins AS (
            INSERT INTO jobs (id, project_id, kind, queue, args, state, run_at, attempt, max_attempts,
                              lease_token, lease_expires_at, worker_id, result, error, last_seq,
                              created_at, started_at, finished_at)
            SELECT (lpad(to_hex((extract(epoch FROM created_at) * 1000)::bigint), 12, '0') || '7'
                    || substr(md5(random()::text), 1, 3) || '8'
                    || substr(md5(random()::text), 1, 15))::uuid,
                   $1, kind,
                   CASE kind WHEN 'email.send' THEN 'email' WHEN 'report.build' THEN 'reports'
                             WHEN 'agent.turn' THEN 'agents' ELSE 'default' END,
                   jsonb_build_object('seed', i),
                   state, run_at,
                   CASE WHEN state = 'queued' THEN 0 WHEN state = 'failed' THEN 3
                        WHEN rw > 0.9 THEN 2 ELSE 1 END,
                   3,
                   CASE WHEN state = 'running' THEN gen_random_uuid() END,
                   CASE WHEN state = 'running' THEN now() + interval '30 seconds' END,
                   CASE WHEN state IN ('running', 'waiting', 'succeeded', 'failed')
                        THEN 'seed-worker-' || (i % 4) END,
                   CASE WHEN state = 'succeeded' THEN jsonb_build_object('ok', true) END,
                   CASE WHEN state = 'failed' THEN jsonb_build_object(
                           'message', (ARRAY['connection reset by peer', 'HTTP 503 from upstream',
                                             'timed out after 30 s', 'invalid recipient'])[1 + (i % 4)::int],
                           'retryable', false) END,
                   1 + (started_at IS NOT NULL)::int + (finished_at IS NOT NULL)::int,
                   created_at, started_at, finished_at
            FROM j
            RETURNING id, state, attempt, worker_id, created_at, started_at, finished_at
        ), ev AS (
        INSERT INTO job_events (job_id, seq, kind, data, at)
        SELECT ins.id, e.seq, 'state', e.data, e.at
        FROM ins, LATERAL (VALUES
            (1::bigint, '{"state":"queued"}'::jsonb, ins.created_at),
            (2, jsonb_build_object('state', 'running', 'attempt', ins.attempt, 'worker_id', ins.worker_id),
             ins.started_at),
            (1 + (ins.started_at IS NOT NULL)::int + 1, jsonb_build_object('state', ins.state), ins.finished_at)
        ) AS e (seq, data, at)
        WHERE e.at IS NOT NULL
        )
        SELECT count(*) AS "jobs!" FROM ins
        "#,
        project_id,
        n
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok(jobs)
}

/// Registers a small fleet (`seed-worker-0` … `seed-worker-6`): four running, one draining, one
/// stopped and one lost. Running counts match the seeded running jobs each one holds.
pub async fn workers(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        r#"
        INSERT INTO workers (id, host, pid, version, queues, concurrency, running, state,
                             started_at, last_heartbeat_at)
        SELECT 'seed-worker-' || g, 'seed-host-' || (g % 3), 1000 + g, $1,
               ARRAY['default', 'email', 'reports', 'agents'], 64,
               least(64, (SELECT count(*) FROM jobs j
                          WHERE j.state = 'running' AND j.worker_id = 'seed-worker-' || g))::int,
               (ARRAY['running', 'running', 'running', 'running', 'draining', 'stopped', 'lost'])[g + 1],
               now() - make_interval(hours => 2 + g),
               now() - make_interval(secs => CASE WHEN g < 5 THEN 2 + g ELSE 600 * g END)
        FROM generate_series(0, 6) AS g
        ON CONFLICT (id) DO UPDATE SET
            running = excluded.running, state = excluded.state,
            started_at = excluded.started_at, last_heartbeat_at = excluded.last_heartbeat_at
        "#,
        env!("CARGO_PKG_VERSION")
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Brings the tables that were just seeded to the state autovacuum keeps them in: fresh planner
/// statistics and a current visibility map (which index-only scans rely on).
pub async fn vacuum(pool: &PgPool) -> Result<(), sqlx::Error> {
    // VACUUM cannot run in a transaction block, and a prepared statement may open one: send it
    // as a simple query. Nothing in it is checked at compile time, so it need not be a macro.
    sqlx::raw_sql("VACUUM (ANALYZE) jobs, job_events, workers")
        .execute(pool)
        .await?;
    Ok(())
}
