//! The stream pump's local hand-over: only events that continue a followed stream without a gap
//! are delivered from the writer; anything else waits for the log. And how appends to several
//! streams take their locks.

mod common;

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use spool::events::log::StreamEvent;
use spool::events::pump::Pump;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn event(cursor: i64) -> StreamEvent {
    StreamEvent {
        cursor,
        job_id: Uuid::nil(),
        seq: cursor,
        kind: "delta".into(),
        data: json!({ "text": cursor.to_string() }),
        at: Utc::now(),
    }
}

#[tokio::test]
async fn offers_are_delivered_in_order_once_and_never_across_a_gap() {
    let e = common::env().await;
    let stop = CancellationToken::new();
    let pump = Pump::start(e.svc.pool.clone(), stop.clone());
    let stream = Uuid::now_v7();
    let mut rx = pump.follow(stream).await.expect("follow");
    let cursors = |rx: &mut tokio::sync::broadcast::Receiver<_>| {
        let mut got = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            let batch: std::sync::Arc<Vec<StreamEvent>> = batch;
            got.extend(batch.iter().map(|e| e.cursor));
        }
        got
    };

    // 2 and 3 do not follow 0: they must not be delivered ahead of the missing 1.
    pump.offer(vec![(stream, event(2)), (stream, event(3))]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(cursors(&mut rx), Vec::<i64>::new());

    pump.offer(vec![(stream, event(1))]);
    assert_eq!(cursors(&mut rx), vec![1]);
    // Out of order within one offer is fine; already-delivered cursors are dropped.
    pump.offer(vec![
        (stream, event(3)),
        (stream, event(1)),
        (stream, event(2)),
    ]);
    assert_eq!(cursors(&mut rx), vec![2, 3]);
    // A stream nobody follows is ignored.
    pump.offer(vec![(Uuid::now_v7(), event(1))]);
    assert_eq!(cursors(&mut rx), Vec::<i64>::new());
    stop.cancel();
}

/// Every writer of several streams locks their rows in id order, so two writers cannot each hold
/// a stream the other waits for. An append blocked on the last of ten streams must already hold
/// the nine before it (in any other order some of them would still be free).
#[tokio::test]
async fn an_append_to_many_streams_locks_them_in_id_order() {
    use spool::events::log::{JobBatch, NewEvent, append_batch};
    use spool::queue::{NewJob, claim, enqueue};

    let e = common::env().await;
    let pool = &e.svc.pool;
    let mut streams: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    streams.sort();
    {
        let mut conn = pool.acquire().await.expect("conn");
        for s in &streams {
            let mut job = NewJob::new("noop", json!({}));
            job.stream_id = Some(*s);
            enqueue(&mut conn, e.project, &job).await.expect("enqueue");
        }
    }
    let claimed = claim::claim(pool, "default", "test", 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 10);
    let batch: Vec<JobBatch> = claimed
        .iter()
        .map(|c| JobBatch {
            job_id: c.id,
            lease_token: c.lease_token,
            events: vec![NewEvent {
                kind: "delta".into(),
                data: json!({ "text": "x" }),
                at: Utc::now(),
            }],
            progress: None,
        })
        .collect();

    let (last, before) = streams.split_last().expect("ten streams");
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM event_streams WHERE id = $1 FOR UPDATE")
        .bind(last)
        .execute(&mut *holder)
        .await
        .expect("lock the last stream");
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move { append_batch(&pool, &batch).await })
    };
    let blocked = common::eventually(Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE '%locked AS%'",
        )
        .fetch_one(pool)
        .await
        .expect("activity");
        (n > 0).then_some(())
    })
    .await;
    assert!(
        blocked.is_some(),
        "the append never waited for the locked stream"
    );
    let free: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM event_streams WHERE id = ANY($1) ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .bind(before)
    .fetch_all(&mut *holder)
    .await
    .expect("probe");
    assert!(
        free.is_empty(),
        "the append waited on the last stream while {} streams ordered before it were free",
        free.len()
    );
    holder.rollback().await.expect("release");
    let rows = writer.await.expect("join").expect("append");
    assert_eq!(
        rows.len(),
        10,
        "every job's event is written once the lock is released"
    );
}
