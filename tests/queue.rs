//! The job core against a real Postgres: claiming, ordering, keys, retries, rescue, cancel, drain.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{env, eventually, fast_worker, hold_job_row};
use serde_json::{Value, json};
use spool::queue::claim;
use spool::queue::enqueue::enqueue_many;
use spool::queue::model::{Finish, Outcome};
use spool::queue::{NewJob, enqueue};
use spool::worker::{JobContext, JobError, Registry, WorkerConfig};
use uuid::Uuid;

async fn state_of(pool: &sqlx::PgPool, id: Uuid) -> String {
    sqlx::query_scalar::<_, String>("SELECT state::text FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("state")
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect(sql)
}

async fn enqueue_one(pool: &sqlx::PgPool, project: Uuid, job: NewJob) -> Uuid {
    let mut conn = pool.acquire().await.expect("conn");
    enqueue(&mut conn, project, &job)
        .await
        .expect("enqueue")
        .job()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_runtimes_run_each_of_2000_jobs_exactly_once() {
    let e = env().await;
    let runs: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    let seen = Arc::clone(&runs);
    let registry = Registry::new().register("count", move |ctx: JobContext| {
        let seen = Arc::clone(&seen);
        async move {
            let i = ctx.args["i"].as_i64().unwrap_or(-1);
            *seen.lock().expect("lock").entry(i).or_default() += 1;
            Ok::<_, JobError>(Value::Null)
        }
    });
    let args: Vec<Value> = (0..2000).map(|i| json!({ "i": i })).collect();
    let mut conn = e.svc.pool.acquire().await.expect("conn");
    enqueue_many(&mut conn, e.project, "count", "default", &args)
        .await
        .expect("enqueue");
    drop(conn);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let cfg = WorkerConfig {
            concurrency: 16,
            claim_batch: 50,
            ..fast_worker()
        };
        workers.push(e.worker(registry.clone(), cfg).await);
    }
    let done = eventually(Duration::from_secs(60), || async {
        let n = count(
            &e.svc.pool,
            "SELECT count(*) FROM jobs WHERE state = 'succeeded'",
        )
        .await;
        (n == 2000).then_some(())
    })
    .await;
    for w in workers {
        w.shutdown(Duration::from_secs(2)).await;
    }
    assert!(done.is_some(), "not all jobs succeeded");
    let runs = runs.lock().expect("lock").clone();
    assert_eq!(runs.len(), 2000);
    assert!(runs.values().all(|n| *n == 1), "a job ran more than once");
    let succeeded_events = count(
        &e.svc.pool,
        "SELECT count(*) FROM job_events WHERE kind = 'state' AND data->>'state' = 'succeeded'",
    )
    .await;
    assert_eq!(succeeded_events, 2000);
    let distinct_workers = count(
        &e.svc.pool,
        "SELECT count(DISTINCT data->>'worker_id') FROM job_events WHERE data->>'state' = 'running'",
    )
    .await;
    assert!(
        distinct_workers >= 2,
        "work was not shared: {distinct_workers} worker(s)"
    );
}

/// Which job started when.
type StartLog = Arc<Mutex<Vec<(String, Instant)>>>;

/// (key, position in its key, start, end) of one keyed job.
type Span = (String, usize, Instant, Instant);

fn recorder() -> (Registry, StartLog) {
    let log: StartLog = Arc::default();
    let seen = Arc::clone(&log);
    let registry = Registry::new().register("rec", move |ctx: JobContext| {
        let seen = Arc::clone(&seen);
        async move {
            let name = ctx.args["name"].as_str().unwrap_or("?").to_owned();
            seen.lock().expect("lock").push((name, Instant::now()));
            let ms = ctx.args["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, JobError>(Value::Null)
        }
    });
    (registry, log)
}

#[tokio::test]
async fn priority_then_run_at_then_fifo() {
    let e = env().await;
    let (registry, log) = recorder();
    let later = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    for (name, priority, run_at) in [
        ("low-1", 0, None),
        ("high", 5, None),
        ("low-2", 0, None),
        ("delayed-urgent", 9, Some(later)),
        ("mid", 2, None),
    ] {
        let mut job = NewJob::new("rec", json!({ "name": name }));
        job.priority = priority;
        job.run_at = run_at;
        enqueue_one(&e.svc.pool, e.project, job).await;
    }
    let w = e
        .worker(
            registry,
            WorkerConfig {
                concurrency: 1,
                ..fast_worker()
            },
        )
        .await;
    let done = eventually(Duration::from_secs(10), || async {
        (log.lock().expect("lock").len() == 5).then_some(())
    })
    .await;
    w.shutdown(Duration::from_secs(1)).await;
    assert!(done.is_some());
    let log = log.lock().expect("lock").clone();
    let order: Vec<&str> = log.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(order, ["high", "mid", "low-1", "low-2", "delayed-urgent"]);
    let started_delayed =
        chrono::Utc::now() - chrono::Duration::from_std(log[4].1.elapsed()).expect("duration");
    assert!(
        started_delayed >= later - chrono::Duration::milliseconds(5),
        "ran before run_at"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_sharing_a_key_never_overlap_and_run_fifo() {
    let e = env().await;
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let seen = Arc::clone(&spans);
    let registry = Registry::new().register("keyed", move |ctx: JobContext| {
        let seen = Arc::clone(&seen);
        async move {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(40)).await;
            let key = ctx.args["key"].as_str().unwrap_or("?").to_owned();
            let n = ctx.args["n"].as_u64().unwrap_or(0) as usize;
            seen.lock()
                .expect("lock")
                .push((key, n, start, Instant::now()));
            Ok::<_, JobError>(Value::Null)
        }
    });
    for n in 0..8 {
        for key in ["a", "b"] {
            let mut job = NewJob::new("keyed", json!({ "key": key, "n": n }));
            job.concurrency_key = Some(format!("session-{key}"));
            enqueue_one(&e.svc.pool, e.project, job).await;
        }
    }
    let w1 = e
        .worker(
            registry.clone(),
            WorkerConfig {
                concurrency: 8,
                ..fast_worker()
            },
        )
        .await;
    let w2 = e
        .worker(
            registry,
            WorkerConfig {
                concurrency: 8,
                ..fast_worker()
            },
        )
        .await;
    let done = eventually(Duration::from_secs(20), || async {
        (spans.lock().expect("lock").len() == 16).then_some(())
    })
    .await;
    w1.shutdown(Duration::from_secs(1)).await;
    w2.shutdown(Duration::from_secs(1)).await;
    assert!(done.is_some(), "keyed jobs did not all run");
    let spans = spans.lock().expect("lock").clone();
    for key in ["a", "b"] {
        let mut mine: Vec<_> = spans.iter().filter(|s| s.0 == key).collect();
        mine.sort_by_key(|s| s.2);
        let order: Vec<usize> = mine.iter().map(|s| s.1).collect();
        assert_eq!(order, (0..8).collect::<Vec<_>>(), "key {key} not FIFO");
        for pair in mine.windows(2) {
            assert!(pair[1].2 >= pair[0].3, "key {key}: jobs overlapped");
        }
    }
    let (a, b): (Vec<_>, Vec<_>) = spans.iter().partition(|s| s.0 == "a");
    let overlapped = a.iter().any(|x| b.iter().any(|y| x.2 < y.3 && y.2 < x.3));
    assert!(overlapped, "different keys should run side by side");
    let holders = count(
        &e.svc.pool,
        "SELECT count(*) FROM job_keys WHERE holder IS NOT NULL",
    )
    .await;
    assert_eq!(holders, 0, "keys still held after all jobs finished");
}

#[tokio::test]
async fn retries_back_off_then_fail_with_the_last_error() {
    let e = env().await;
    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = Arc::clone(&starts);
    let registry = Registry::new().register("flaky", move |ctx: JobContext| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().expect("lock").push(Instant::now());
            Err::<Value, _>(JobError::retry(format!("boom {}", ctx.attempt)))
        }
    });
    let mut job = NewJob::new("flaky", json!({}));
    job.max_attempts = Some(3);
    let id = enqueue_one(&e.svc.pool, e.project, job).await;
    let mut cfg = fast_worker();
    cfg.backoff.base = Duration::from_millis(300);
    let w = e.worker(registry, cfg).await;
    let failed = eventually(Duration::from_secs(15), || async {
        (state_of(&e.svc.pool, id).await == "failed").then_some(())
    })
    .await;
    w.shutdown(Duration::from_secs(1)).await;
    assert!(failed.is_some(), "job did not fail");
    let starts = starts.lock().expect("lock").clone();
    assert_eq!(starts.len(), 3, "expected exactly 3 attempts");
    let gap1 = starts[1] - starts[0];
    let gap2 = starts[2] - starts[1];
    assert!(
        gap1 >= Duration::from_millis(240),
        "first backoff too short: {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(480),
        "second backoff too short: {gap2:?}"
    );
    let (attempt, message): (i32, String) =
        sqlx::query_as("SELECT attempt, error->>'message' FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&e.svc.pool)
            .await
            .expect("row");
    assert_eq!(attempt, 3);
    assert_eq!(message, "boom 3");
    let queued_after_retry = count(
        &e.svc.pool,
        &format!("SELECT count(*) FROM job_events WHERE job_id = '{id}' AND data->>'state' = 'queued' AND data ? 'run_at'"),
    )
    .await;
    assert_eq!(
        queued_after_retry, 2,
        "each retry records when it runs next"
    );
}

#[tokio::test]
async fn a_lapsed_lease_is_rescued_and_the_stale_worker_changes_nothing() {
    let e = env().await;
    let id = enqueue_one(
        &e.svc.pool,
        e.project,
        NewJob::new("noop", json!({ "v": 1 })),
    )
    .await;
    // The "crashed" worker claims with a 1 s lease and never renews it.
    let stale = claim::claim(
        &e.svc.pool,
        "default",
        "crashed",
        10,
        Duration::from_secs(1),
    )
    .await
    .expect("claim");
    assert_eq!(stale.len(), 1);
    let stale = stale.into_iter().next().expect("claimed");
    assert_eq!(state_of(&e.svc.pool, id).await, "running");
    let cfg = WorkerConfig {
        rescue_interval: Duration::from_millis(200),
        ..fast_worker()
    };
    let w = e.worker(e.registry(), cfg).await;
    let done = eventually(Duration::from_secs(10), || async {
        (state_of(&e.svc.pool, id).await == "succeeded").then_some(())
    })
    .await;
    w.shutdown(Duration::from_secs(1)).await;
    assert!(done.is_some(), "the job was not rescued and completed");
    let rescued = count(
        &e.svc.pool,
        &format!("SELECT count(*) FROM job_events WHERE job_id = '{id}' AND data->>'reason' = 'lease expired'"),
    )
    .await;
    assert_eq!(rescued, 1);
    // The stale worker wakes up and tries to finish and to write events: both are fenced out.
    let applied = claim::finish(
        &e.svc.pool,
        &[Finish {
            id,
            lease_token: stale.lease_token,
            outcome: Outcome::Failed(json!({"message": "stale"})),
            parent_event: None,
        }],
    )
    .await
    .expect("finish");
    assert!(applied.is_empty(), "a stale finish was applied");
    let appended = spool::events::log::append_batch(
        &e.svc.pool,
        &[spool::events::log::JobBatch {
            job_id: id,
            lease_token: stale.lease_token,
            events: vec![spool::events::NewEvent {
                kind: "log".into(),
                data: json!("stale"),
                at: chrono::Utc::now(),
            }],
            progress: None,
        }],
    )
    .await
    .expect("append");
    assert!(
        appended.is_empty(),
        "a stale event was written: {appended:?}"
    );
    let (state, attempt, result): (String, i32, Value) =
        sqlx::query_as("SELECT state::text, attempt, result FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&e.svc.pool)
            .await
            .expect("row");
    assert_eq!((state.as_str(), attempt), ("succeeded", 2));
    assert_eq!(result, json!({ "v": 1 }));
    let stale_logs = count(
        &e.svc.pool,
        "SELECT count(*) FROM job_events WHERE kind = 'log'",
    )
    .await;
    assert_eq!(stale_logs, 0);
}

/// A renewal never waits on a row another transaction holds (an event write, say): it renews the
/// rest, reports the held one busy rather than lost, and renews it once it is free.
#[tokio::test]
async fn a_renewal_skips_a_held_row_and_reports_it_busy_not_lost() {
    let e = env().await;
    for _ in 0..3 {
        enqueue_one(&e.svc.pool, e.project, NewJob::new("noop", json!({}))).await;
    }
    let claimed = claim::claim(&e.svc.pool, "default", "w", 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    let mut held: Vec<(Uuid, Uuid)> = claimed.iter().map(|c| (c.id, c.lease_token)).collect();
    held.sort();
    let (busy, cancelled) = (held[1].0, held[2].0);
    sqlx::query("UPDATE jobs SET cancel_requested_at = now() WHERE id = $1")
        .bind(cancelled)
        .execute(&e.svc.pool)
        .await
        .expect("request cancel");
    // A pair that holds no lease (here: no job at all): lost.
    let stranger = (Uuid::new_v4(), Uuid::new_v4());
    let lock = hold_job_row(&e.svc.pool, busy).await;
    let lease = Duration::from_secs(3600);
    let mut ask = held.clone();
    ask.push(stranger);
    let found = tokio::time::timeout(
        Duration::from_secs(5),
        claim::renew(&e.svc.pool, &ask, lease),
    )
    .await
    .expect("the renewal waited on the held row")
    .expect("renew");
    let of = |id: Uuid| {
        found
            .iter()
            .find(|(f, _)| *f == id)
            .map(|(_, r)| *r)
            .expect("an answer for every pair")
    };
    assert_eq!(found.len(), 4);
    assert_eq!(
        of(held[0].0),
        claim::Renewal::Renewed {
            cancel_requested: false
        }
    );
    assert_eq!(of(held[1].0), claim::Renewal::Busy);
    assert_eq!(
        of(held[2].0),
        claim::Renewal::Renewed {
            cancel_requested: true
        }
    );
    assert_eq!(of(stranger.0), claim::Renewal::Lost);
    let far = |id: Uuid| {
        let pool = e.svc.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT lease_expires_at > now() + interval '30 minutes' FROM jobs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("lease")
        }
    };
    assert!(
        far(held[0].0).await && far(cancelled).await,
        "renewed leases"
    );
    lock.rollback().await.expect("unlock");
    assert!(!far(busy).await, "the held row's lease cannot have moved");
    let again = claim::renew(&e.svc.pool, &[held[1]], lease)
        .await
        .expect("renew");
    assert_eq!(
        again,
        vec![(
            busy,
            claim::Renewal::Renewed {
                cancel_requested: false
            }
        )]
    );
    assert!(far(busy).await, "renewed once free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_a_running_job_on_another_runtime_and_cascades_to_children() {
    let e = env().await;
    let server = e.serve(e.registry()).await;
    let parent = server.enqueue("sleep", json!({ "ms": 30_000 })).await;
    let mut child_ids = Vec::new();
    for _ in 0..3 {
        let mut job = NewJob::new("sleep", json!({ "ms": 30_000 }));
        job.parent_id = Some(parent);
        child_ids.push(enqueue_one(&e.svc.pool, e.project, job).await);
    }
    let w = e
        .worker(
            e.registry(),
            WorkerConfig {
                concurrency: 2,
                ..fast_worker()
            },
        )
        .await;
    let running = eventually(Duration::from_secs(10), || async {
        let n = count(
            &e.svc.pool,
            "SELECT count(*) FROM jobs WHERE state = 'running'",
        )
        .await;
        (n == 2).then_some(())
    })
    .await;
    assert!(running.is_some(), "jobs did not start");
    let (status, body) = server
        .post(&format!("/api/v1/jobs/{parent}/cancel"), json!({}))
        .await;
    let asked = Instant::now();
    assert!(status == 202 || status == 200, "{status} {body}");
    let all_cancelled = eventually(Duration::from_secs(1), || async {
        let mut states = vec![state_of(&e.svc.pool, parent).await];
        for c in &child_ids {
            states.push(state_of(&e.svc.pool, *c).await);
        }
        states.iter().all(|s| s == "cancelled").then_some(())
    })
    .await;
    let took = asked.elapsed();
    w.shutdown(Duration::from_secs(1)).await;
    assert!(
        all_cancelled.is_some(),
        "parent and children not all cancelled within 1 s"
    );
    assert!(took <= Duration::from_secs(1), "{took:?}");
    let succeeded_after = count(
        &e.svc.pool,
        "SELECT count(*) FROM job_events WHERE data->>'state' = 'succeeded'",
    )
    .await;
    assert_eq!(succeeded_after, 0);
}

#[tokio::test]
async fn shutdown_hands_running_jobs_back_and_leaves_none_running() {
    let e = env().await;
    for _ in 0..6 {
        enqueue_one(
            &e.svc.pool,
            e.project,
            NewJob::new("sleep", json!({ "ms": 20_000 })),
        )
        .await;
    }
    let w = e
        .worker(
            e.registry(),
            WorkerConfig {
                concurrency: 3,
                ..fast_worker()
            },
        )
        .await;
    let running = eventually(Duration::from_secs(10), || async {
        let n = count(
            &e.svc.pool,
            "SELECT count(*) FROM jobs WHERE state = 'running'",
        )
        .await;
        (n == 3).then_some(())
    })
    .await;
    assert!(running.is_some());
    let started = Instant::now();
    w.shutdown(Duration::from_millis(300)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for leases"
    );
    let running = count(
        &e.svc.pool,
        "SELECT count(*) FROM jobs WHERE state = 'running'",
    )
    .await;
    assert_eq!(running, 0);
    let queued = count(
        &e.svc.pool,
        "SELECT count(*) FROM jobs WHERE state = 'queued' AND attempt = 0",
    )
    .await;
    assert_eq!(
        queued, 6,
        "handed-back jobs should be queued with the attempt not counted"
    );
    let released = count(
        &e.svc.pool,
        "SELECT count(*) FROM job_events WHERE data->>'reason' = 'released by worker shutdown'",
    )
    .await;
    assert_eq!(released, 3);
    let state: String = sqlx::query_scalar("SELECT state FROM workers")
        .fetch_one(&e.svc.pool)
        .await
        .expect("worker");
    assert_eq!(state, "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_cancel_meet_on_the_parent_row_whichever_comes_first() {
    use spool::queue::control;
    use spool::queue::suspend::{self, Suspended, Wait};
    let e = env().await;
    let pool = &e.svc.pool;
    let claim_one = |id: Uuid| async move {
        let held = claim::claim(pool, "default", "w1", 10, Duration::from_secs(30))
            .await
            .expect("claim");
        held.into_iter().find(|j| j.id == id).expect("claimed")
    };
    let wait_on = |child: Uuid| Wait {
        children: vec![child],
        any: false,
        until: chrono::Utc::now() + chrono::Duration::seconds(60),
    };
    // A cancel requested while the handler decides to wait: the suspend refuses, nothing moves.
    let a = enqueue_one(pool, e.project, NewJob::new("noop", json!({}))).await;
    let held = claim_one(a).await;
    let mut child = NewJob::new("noop", json!({}));
    child.parent_id = Some(a);
    child.run_at = Some(chrono::Utc::now() + chrono::Duration::seconds(3600));
    let a_child = enqueue_one(pool, e.project, child.clone()).await;
    control::cancel(pool, e.project, a).await.expect("cancel");
    let s = suspend::suspend(pool, a, held.lease_token, &wait_on(a_child))
        .await
        .expect("suspend");
    assert_eq!(s, Suspended::CancelRequested);
    assert_eq!(state_of(pool, a).await, "running");
    // A suspend first, then the cancel: the waiting job and its child end at once.
    let b = enqueue_one(pool, e.project, NewJob::new("noop", json!({}))).await;
    let held = claim_one(b).await;
    child.parent_id = Some(b);
    let b_child = enqueue_one(pool, e.project, child).await;
    let s = suspend::suspend(pool, b, held.lease_token, &wait_on(b_child))
        .await
        .expect("suspend");
    assert_eq!(s, Suspended::Waiting);
    assert_eq!(state_of(pool, b).await, "waiting");
    control::cancel(pool, e.project, b).await.expect("cancel");
    assert_eq!(state_of(pool, b).await, "cancelled");
    assert_eq!(state_of(pool, b_child).await, "cancelled");
}
