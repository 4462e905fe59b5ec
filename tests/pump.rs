//! The stream pump's local hand-over: only events that continue a followed stream without a gap
//! are delivered from the writer; anything else waits for the log.

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
