//! Handler-facing runtime behaviour: timeouts, and events emitted through the coalescing writer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{env, eventually, fast_worker, hold_job_row, reaches_state};
use serde_json::{Value, json};
use spool::events::writer;
use spool::queue::NewJob;
use spool::worker::{JobContext, JobError, Registry};
use tokio::sync::Notify;

#[tokio::test]
async fn a_timeout_stops_the_handler_and_counts_as_a_failed_attempt() {
    let e = env().await;
    let mut job = NewJob::new("sleep", json!({ "ms": 20_000 }));
    job.timeout_s = Some(1);
    job.max_attempts = Some(2);
    let id = e.enqueue_job(&job).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let failed = eventually(Duration::from_secs(15), || async {
        let (state, attempt, msg): (String, i32, Option<String>) = sqlx::query_as(
            "SELECT state::text, attempt, error->>'message' FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&e.svc.pool)
        .await
        .expect("row");
        (state == "failed").then_some((attempt, msg))
    })
    .await;
    w.shutdown(Duration::from_secs(1)).await;
    let (attempt, msg) = failed.expect("the job did not fail by timeout");
    assert_eq!(attempt, 2, "each timeout is one failed attempt");
    assert_eq!(msg.as_deref(), Some("timed out after 1s"));
    let retried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE job_id = $1 AND data->>'state' = 'queued' AND data->'error'->>'message' = 'timed out after 1s'",
    )
    .bind(id)
    .fetch_one(&e.svc.pool)
    .await
    .expect("count");
    assert_eq!(retried, 1);
}

#[tokio::test]
async fn bursts_of_emitted_events_all_arrive_in_order_before_the_final_state() {
    let e = env().await;
    let registry = Registry::new().register("chatty", |ctx: JobContext| async move {
        for i in 0..300 {
            ctx.emit("tick", json!({ "i": i }));
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        }
        ctx.progress(100.0, "done");
        Ok::<_, JobError>(Value::Null)
    });
    let id = e.enqueue_job(&NewJob::new("chatty", json!({}))).await;
    let w = e.worker(registry, fast_worker()).await;
    let done = reaches_state(&e.svc.pool, id, "succeeded", Duration::from_secs(10)).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert!(done);
    let rows: Vec<(i64, String, Value)> =
        sqlx::query_as("SELECT seq, kind, data FROM job_events WHERE job_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&e.svc.pool)
            .await
            .expect("events");
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        seqs,
        (1..=rows.len() as i64).collect::<Vec<_>>(),
        "seqs must be contiguous"
    );
    let ticks: Vec<i64> = rows
        .iter()
        .filter(|r| r.1 == "tick")
        .map(|r| r.2["i"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(ticks, (0..300).collect::<Vec<_>>(), "every tick, in order");
    let kinds: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(kinds.last(), Some(&"state"));
    assert_eq!(
        rows.last().map(|r| r.2["state"].clone()),
        Some(json!("succeeded"))
    );
    assert_eq!(
        kinds[kinds.len() - 2],
        "progress",
        "events are flushed before the state change"
    );
    let (last_seq, progress): (i64, Value) =
        sqlx::query_as("SELECT last_seq, progress FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&e.svc.pool)
            .await
            .expect("job");
    assert_eq!(last_seq, rows.len() as i64);
    assert_eq!(progress["pct"], json!(100.0));
}

/// Eight jobs stream deltas every 2 ms for 600 ms. Each job is written at most once per
/// configured window (so its deltas coalesce into few rows, every one of them kept in order),
/// and the writes are spread over the window's phases: a statement carries one phase's jobs.
#[tokio::test]
async fn streaming_jobs_are_written_once_a_window_each_in_statements_spread_over_its_phases() {
    const JOBS: usize = 8;
    const DELTAS: usize = 300;
    let e = env().await;
    let registry = Registry::new().register("streamer", |ctx: JobContext| async move {
        for i in 0..DELTAS {
            ctx.emit_delta("delta", json!({ "text": format!("{i},") }));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok::<_, JobError>(Value::Null)
    });
    let phases = |jobs: &mut dyn Iterator<Item = &uuid::Uuid>| {
        jobs.map(|id| writer::phase_of(*id))
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    // Ids are random: eight may (rarely) share one phase, so more come until two phases have jobs.
    let mut ids = Vec::new();
    while ids.len() < JOBS || (phases(&mut ids.iter()) < 2 && ids.len() < 5 * JOBS) {
        ids.push(e.enqueue_job(&NewJob::new("streamer", json!({}))).await);
    }
    assert!(
        phases(&mut ids.iter()) >= 2,
        "jobs are not spread over phases"
    );
    let jobs = ids.len();
    // A configured window, twice the default: the writer must honour it, not its default.
    let window = writer::COALESCE * 2;
    let cfg = spool::worker::WorkerConfig {
        event_window: window,
        ..fast_worker()
    };
    let w = e.worker(registry, cfg).await;
    let done = eventually(Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE id = ANY($1) AND state = 'succeeded'",
        )
        .bind(&ids)
        .fetch_one(&e.svc.pool)
        .await
        .expect("states");
        (n == jobs as i64).then_some(())
    })
    .await;
    w.shutdown(Duration::from_secs(1)).await;
    assert!(done.is_some(), "the streaming jobs did not all succeed");

    // Rows of one statement share its transaction id (xmin).
    let rows: Vec<(uuid::Uuid, String, String, f64)> = sqlx::query_as(
        "SELECT e.job_id, e.xmin::text, e.data->>'text',
                (extract(epoch FROM j.finished_at - j.started_at) * 1000)::float8
         FROM job_events e JOIN jobs j ON j.id = e.job_id
         WHERE e.job_id = ANY($1) AND e.kind = 'delta' ORDER BY e.job_id, e.seq",
    )
    .bind(&ids)
    .fetch_all(&e.svc.pool)
    .await
    .expect("deltas");
    let expected: String = (0..DELTAS).map(|i| format!("{i},")).collect();
    for id in &ids {
        let mine: Vec<&(uuid::Uuid, String, String, f64)> =
            rows.iter().filter(|r| r.0 == *id).collect();
        let text: String = mine.iter().map(|r| r.2.as_str()).collect();
        assert_eq!(text, expected, "job {id}: every delta, in order");
        let ran_ms = mine.first().map_or(0.0, |r| r.3);
        // One write per started window, plus the first events' early write and the final flush.
        let window_ms = window.as_secs_f64() * 1e3;
        let allowed = (ran_ms / window_ms).ceil() as usize + 2;
        assert!(
            mine.len() <= allowed,
            "job {id}: {} delta rows in {ran_ms:.0} ms; at most {allowed} expected",
            mine.len()
        );
        assert!(
            mine.len() >= 3,
            "job {id}: deltas must not all wait for the end"
        );
    }
    // Mid-stream: without each job's first row (written at once) and last (its closing flush).
    let mut mid: std::collections::HashMap<&str, std::collections::HashSet<uuid::Uuid>> =
        std::collections::HashMap::new();
    for id in &ids {
        let mine: Vec<&(uuid::Uuid, String, String, f64)> =
            rows.iter().filter(|r| r.0 == *id).collect();
        for r in mine.iter().skip(1).take(mine.len().saturating_sub(2)) {
            mid.entry(r.1.as_str()).or_default().insert(r.0);
        }
    }
    // Each mid-stream statement carries the jobs of one phase, so never all of them. Only a write
    // that outlasted the next phases (a stall) sends the jobs it held up with the next phase's.
    let one_phase = mid
        .values()
        .filter(|set| phases(&mut set.iter()) == 1 && set.len() < jobs)
        .count();
    assert!(
        one_phase * 4 >= mid.len() * 3,
        "only {one_phase} of {} mid-stream statements carried one phase's jobs, not all {jobs}",
        mid.len()
    );
    // And each phase the jobs fall in was written on its own.
    let written: std::collections::HashSet<u32> = mid
        .values()
        .filter(|set| phases(&mut set.iter()) == 1)
        .filter_map(|set| set.iter().next().map(|id| writer::phase_of(*id)))
        .collect();
    assert_eq!(
        written.len(),
        phases(&mut ids.iter()),
        "not every phase the jobs fall in was written on its own"
    );
}

/// One job's write stuck behind a row lock (a busy or locked database) holds back no other job:
/// another job streams all its deltas meanwhile, and the stuck job's events, held back with
/// it, follow in order once the lock is gone.
#[tokio::test]
async fn a_stuck_event_write_holds_back_no_other_job() {
    let e = env().await;
    let (go_a1, go_a2) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (a1, a2) = (Arc::clone(&go_a1), Arc::clone(&go_a2));
    let registry = Registry::new()
        .register("held", move |ctx: JobContext| {
            let (a1, a2) = (Arc::clone(&a1), Arc::clone(&a2));
            async move {
                a1.notified().await;
                ctx.emit_delta("delta", json!({ "text": "a1," }));
                a2.notified().await;
                ctx.emit_delta("delta", json!({ "text": "a2," }));
                Ok::<_, JobError>(Value::Null)
            }
        })
        .register("free", |ctx: JobContext| async move {
            for i in 0..20 {
                ctx.emit_delta("delta", json!({ "text": format!("b{i},") }));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, JobError>(Value::Null)
        });
    let held = e.enqueue_job(&NewJob::new("held", json!({}))).await;
    // Leases are renewed every 100 ms meanwhile: the renewals must skip the locked row without
    // stopping its job (it is busy, not lost) and without holding up the other job's writes.
    let cfg = spool::worker::WorkerConfig {
        heartbeat: Duration::from_millis(100),
        ..fast_worker()
    };
    let w = e.worker(registry, cfg).await;
    let running = reaches_state(&e.svc.pool, held, "running", Duration::from_secs(10)).await;
    assert!(running, "the held job did not start");
    // The lock every event write of `held` needs (its lease fence), taken before its first one.
    let lock = hold_job_row(&e.svc.pool, held).await;
    go_a1.notify_one();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let free = e.enqueue_job(&NewJob::new("free", json!({}))).await;
    let texts = |id: uuid::Uuid| {
        let pool = e.svc.pool.clone();
        async move {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT data->>'text' FROM job_events
                 WHERE job_id = $1 AND kind = 'delta' ORDER BY seq",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .expect("deltas");
            rows.concat()
        }
    };
    let expected: String = (0..20).map(|i| format!("b{i},")).collect();
    let streamed = eventually(Duration::from_secs(5), || async {
        (texts(free).await == expected).then_some(())
    })
    .await;
    let held_meanwhile = texts(held).await;
    go_a2.notify_one();
    lock.rollback().await.expect("unlock");
    assert!(
        streamed.is_some(),
        "the other job's deltas were not written while one write waited on a lock: {:?}",
        texts(free).await
    );
    assert_eq!(
        held_meanwhile, "",
        "the locked job's write cannot have committed"
    );
    let finished = reaches_state(&e.svc.pool, held, "succeeded", Duration::from_secs(10)).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert!(finished, "the held job did not finish after the unlock");
    assert_eq!(
        texts(held).await,
        "a1,a2,",
        "the held job's deltas, in order"
    );
}
