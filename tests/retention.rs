//! Retention pruning removes exactly the finished work past its age — jobs with their events and
//! spans, or events alone — in batches, and a fleet claims each round once.

mod common;

use std::time::Duration;

use common::env;
use spool::housekeeping::{self, Pruned, Retention};
use uuid::Uuid;

/// Inserts a job with an id and timestamps `created_days` ago, `n_events` events and two spans.
async fn old_job(
    pool: &sqlx::PgPool,
    project: Uuid,
    state: &str,
    created_days: f64,
    finished_days: Option<f64>,
    n_events: i64,
) -> Uuid {
    let ago = |d: f64| chrono::Utc::now() - chrono::Duration::seconds((d * 86_400.0) as i64);
    let created = ago(created_days);
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        created.timestamp() as u64,
        created.timestamp_subsec_nanos(),
    );
    let id = Uuid::new_v7(ts);
    sqlx::query(
        "INSERT INTO jobs (id, project_id, kind, args, state, created_at, finished_at, attempt)
         VALUES ($1, $2, 'noop', '{}', $3::job_state, $4, $5, 1)",
    )
    .bind(id)
    .bind(project)
    .bind(state)
    .bind(created)
    .bind(finished_days.map(ago))
    .execute(pool)
    .await
    .expect("job");
    sqlx::query(
        "INSERT INTO job_events (job_id, seq, kind, data)
         SELECT $1, s, 'progress', '{}' FROM generate_series(1, $2) s",
    )
    .bind(id)
    .bind(n_events)
    .execute(pool)
    .await
    .expect("events");
    sqlx::query(
        "INSERT INTO spans (trace_id, span_id, project_id, job_id, kind, name)
         SELECT replace(gen_random_uuid()::text, '-', ''), substr(md5(random()::text), 1, 16),
                $2, $1, 'job', 'noop'
         FROM generate_series(1, 2)",
    )
    .bind(id)
    .bind(project)
    .execute(pool)
    .await
    .expect("spans");
    id
}

async fn counts(pool: &sqlx::PgPool, id: Uuid) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE id = $1),
                (SELECT count(*) FROM job_events WHERE job_id = $1),
                (SELECT count(*) FROM spans WHERE job_id = $1)",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("counts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_exactly_the_finished_work_past_its_age() {
    let e = env().await;
    let pool = &e.svc.pool;
    let p = e.project;
    let old_done = old_job(pool, p, "succeeded", 10.0, Some(9.9), 2500).await;
    let old_failed = old_job(pool, p, "failed", 9.0, Some(9.0), 3).await;
    let recent = old_job(pool, p, "succeeded", 2.0, Some(2.0), 3).await;
    let old_queued = old_job(pool, p, "queued", 10.0, None, 3).await;
    let long_runner = old_job(pool, p, "succeeded", 10.0, Some(1.0), 3).await;
    let week = Duration::from_secs(7 * 86_400);
    let pruned = housekeeping::prune(
        pool,
        &Retention {
            jobs: Some(week),
            events: Some(week),
            spans: Some(week),
        },
    )
    .await
    .expect("prune");
    assert_eq!(
        pruned,
        Pruned {
            jobs: 2,
            events: 2503,
            spans: 4
        }
    );
    assert_eq!(counts(pool, old_done).await, (0, 0, 0));
    assert_eq!(counts(pool, old_failed).await, (0, 0, 0));
    for kept in [recent, old_queued, long_runner] {
        assert_eq!(counts(pool, kept).await, (1, 3, 2), "{kept} is kept whole");
    }

    // Events alone may go sooner: the jobs and their spans stay.
    let pruned = housekeeping::prune(
        pool,
        &Retention {
            jobs: None,
            events: Some(Duration::from_secs(36 * 3600)),
            spans: None,
        },
    )
    .await
    .expect("prune events");
    assert_eq!(
        pruned,
        Pruned {
            jobs: 0,
            events: 3,
            spans: 0
        }
    );
    assert_eq!(counts(pool, recent).await, (1, 0, 2));
    assert_eq!(counts(pool, old_queued).await, (1, 3, 2));
    assert_eq!(counts(pool, long_runner).await, (1, 3, 2));

    // A fleet runs each round once per interval.
    let every = Duration::from_secs(60);
    assert!(
        spool::queue::retention::claim_round(pool, "t", every)
            .await
            .expect("claim")
    );
    assert!(
        !spool::queue::retention::claim_round(pool, "t", every)
            .await
            .expect("claim")
    );
}
