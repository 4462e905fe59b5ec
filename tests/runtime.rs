//! Handler-facing runtime behaviour: timeouts, and events emitted through the coalescing writer.

mod common;

use std::time::Duration;

use common::{env, eventually, fast_worker};
use serde_json::{Value, json};
use spool::queue::{NewJob, enqueue};
use spool::worker::{JobContext, JobError, Registry};

#[tokio::test]
async fn a_timeout_stops_the_handler_and_counts_as_a_failed_attempt() {
    let e = env().await;
    let mut job = NewJob::new("sleep", json!({ "ms": 20_000 }));
    job.timeout_s = Some(1);
    job.max_attempts = Some(2);
    let id = {
        let mut conn = e.svc.pool.acquire().await.expect("conn");
        enqueue(&mut conn, e.project, &job)
            .await
            .expect("enqueue")
            .job()
            .id
    };
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
    let id = {
        let mut conn = e.svc.pool.acquire().await.expect("conn");
        enqueue(&mut conn, e.project, &NewJob::new("chatty", json!({})))
            .await
            .expect("enqueue")
            .job()
            .id
    };
    let w = e.worker(registry, fast_worker()).await;
    let done = eventually(Duration::from_secs(10), || async {
        let s: String = sqlx::query_scalar("SELECT state::text FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&e.svc.pool)
            .await
            .expect("state");
        (s == "succeeded").then_some(())
    })
    .await;
    w.shutdown(Duration::from_secs(1)).await;
    assert!(done.is_some());
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
