//! Large payloads as blobs: a tool output, a job result and an event payload over the offload
//! limit are stored as blobs with a reference in the row and read back identical; the orphan
//! sweep removes exactly the unreferenced blobs past the grace period.

mod common;

use std::time::Duration;

use common::chat::agent_env;
use common::fake_llm::{FakeLlm, Reply};
use common::{env, eventually, fast_worker};
use serde_json::{Value, json};
use spool::agent::{attachments, store as agent_store};
use spool::housekeeping::{self, Housekeeping, Retention, Swept};
use spool::store::Blobs;
use spool::worker::JobContext;
use uuid::Uuid;

async fn blob_rows(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT key FROM blobs ORDER BY key")
        .fetch_all(pool)
        .await
        .expect("blob keys")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_tool_output_is_offloaded_and_read_back_identical() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        Reply::tool_call("call_1", "read_file", r#"{"path":"big.txt"}"#),
        Reply::text("It is long."),
        Reply::text("Title"),
    ]);
    let mut e = agent_env(&fake).await;
    e.settings.blobs = Blobs::open(None, &e.settings.data_dir, &[], 4096).expect("blobs");
    let text: String = (0..800)
        .map(|i| format!("line {i:04} of a long file\n"))
        .collect();
    std::fs::write(e.settings.workspaces[0].root.join("big.txt"), &text).expect("file");
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let (_, b) = s
        .post("/api/v1/sessions", json!({ "workspace": "demo" }))
        .await;
    let session = b["id"].as_str().expect("session").to_owned();
    let (st, b) = s
        .post(
            &format!("/api/v1/sessions/{session}/turns"),
            json!({ "input": "read big.txt" }),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    let turn: Uuid = b["turn_id"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("turn");
    assert_eq!(s.wait(turn, 30).await["state"], "succeeded");

    // The row and the event hold the same small reference; the registry names the turn.
    let row: Value = sqlx::query_scalar("SELECT content FROM messages WHERE role = 'tool'")
        .fetch_one(&e.svc.pool)
        .await
        .expect("tool row");
    let key = spool::store::reference_key(&row)
        .expect("the tool row holds a reference")
        .to_owned();
    let event: Value = sqlx::query_scalar(
        "SELECT data FROM job_events WHERE job_id = $1 AND kind = 'tool_result'",
    )
    .bind(turn)
    .fetch_one(&e.svc.pool)
    .await
    .expect("tool_result event");
    assert_eq!(event, row, "the event carries the same reference");
    let owner: Option<Uuid> = sqlx::query_scalar("SELECT job_id FROM blobs WHERE key = $1")
        .bind(&key)
        .fetch_one(&e.svc.pool)
        .await
        .expect("registered");
    assert_eq!(owner, Some(turn));
    let raw = e.settings.blobs.get(&key).await.expect("blob bytes");
    assert!(raw.len() > 4096);

    // Read back through the API, the model's next request and the event log: all identical.
    let (_, m) = s.get(&format!("/api/v1/sessions/{session}/messages")).await;
    let tool = m["messages"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["role"] == "tool"))
        .expect("tool message")["content"]
        .clone();
    let output = tool["content"].as_str().expect("output text");
    assert!(output.contains(&text), "the whole file came back");
    assert_eq!(serde_json::to_vec(&tool).expect("json"), raw.to_vec());
    let second = &fake.requests()[1];
    let sent = second["messages"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["role"] == "tool"))
        .and_then(|m| m["content"].as_str())
        .expect("tool message sent to the model");
    assert_eq!(sent, output, "the model saw the whole output");
    let r = s
        .req(
            reqwest::Method::GET,
            &format!("/api/v1/jobs/{turn}/events?limit=1000"),
        )
        .header("accept", "application/json")
        .send()
        .await
        .expect("events");
    let events: Value = r.json().await.expect("json");
    let resolved = events["events"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["kind"] == "tool_result"))
        .expect("tool_result")["data"]
        .clone();
    assert_eq!(resolved, tool);
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_and_event_are_blobs_that_the_api_resolves_and_streams() {
    let e = env().await;
    let big = "r".repeat(100_000);
    let registry = e.registry().register("big", move |ctx: JobContext| {
        let big = big.clone();
        async move {
            ctx.emit("chunk", json!({ "data": big.replace('r', "e") }));
            ctx.emit("small", json!({ "n": 1 }));
            Ok(json!({ "data": big }))
        }
    });
    let s = e.serve(registry.clone()).await;
    let w = e.worker(registry, fast_worker()).await;
    let id = s.enqueue("big", json!({})).await;
    let job = s.wait(id, 30).await;
    assert_eq!(job["state"], "succeeded");
    let want = json!({ "data": "r".repeat(100_000) });
    assert_eq!(job["result"], want, "GET /wait resolves the result");

    let (result, chunk, small): (Value, Value, Value) = sqlx::query_as(
        "SELECT j.result,
                (SELECT data FROM job_events WHERE job_id = j.id AND kind = 'chunk'),
                (SELECT data FROM job_events WHERE job_id = j.id AND kind = 'small')
         FROM jobs j WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&e.svc.pool)
    .await
    .expect("row");
    assert!(spool::store::is_reference(&result), "{result}");
    assert!(spool::store::is_reference(&chunk), "{chunk}");
    assert_eq!(small, json!({ "n": 1 }), "small payloads stay inline");
    assert_eq!(blob_rows(&e.svc.pool).await.len(), 2);

    let (st, got) = s.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!((st, &got["result"]), (200, &want));
    let (_, list) = s.get("/api/v1/jobs?kind=big").await;
    assert_eq!(list["jobs"][0]["result"], want);
    let r = s
        .req(reqwest::Method::GET, &format!("/api/v1/jobs/{id}/result"))
        .send()
        .await
        .expect("result");
    assert_eq!(r.headers()["content-type"], "application/json");
    let streamed: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(streamed, want);
    let r = s
        .req(reqwest::Method::GET, &format!("/api/v1/jobs/{id}/events"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("events");
    let events: Value = r.json().await.expect("json");
    let chunk = events["events"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["kind"] == "chunk"))
        .expect("chunk event");
    assert_eq!(chunk["data"], json!({ "data": "e".repeat(100_000) }));
    w.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_exactly_the_old_unreferenced_blobs() {
    let e = env().await;
    let pool = &e.svc.pool;
    let blobs = e.settings.blobs.clone();
    let p = e.project;
    let big = json!({ "text": "b".repeat(100_000) });
    let offload = |job: Uuid| {
        let (blobs, big) = (blobs.clone(), big.clone());
        async move { blobs.offload(pool, p, job, big).await.expect("offload") }
    };
    let key = |r: &Value| {
        spool::store::reference_key(r)
            .expect("reference")
            .to_owned()
    };

    // Referenced: by a job result, an event, a tool result, an attachment.
    let mut conn = pool.acquire().await.expect("conn");
    let job = spool::enqueue(&mut conn, p, &spool::NewJob::new("noop", json!({})))
        .await
        .expect("enqueue")
        .job()
        .id;
    drop(conn);
    let by_result = offload(job).await;
    sqlx::query("UPDATE jobs SET result = $1 WHERE id = $2")
        .bind(&by_result)
        .bind(job)
        .execute(pool)
        .await
        .expect("result");
    let evented = Uuid::now_v7();
    let by_event = offload(evented).await;
    sqlx::query("INSERT INTO job_events (job_id, seq, kind, data) VALUES ($1, 1, 'x', $2)")
        .bind(evented)
        .bind(&by_event)
        .execute(pool)
        .await
        .expect("event");
    let session = agent_store::create_session(pool, p, None, "mock", None, None)
        .await
        .expect("session");
    let turn = Uuid::now_v7();
    let by_tool = offload(turn).await;
    sqlx::query(
        "INSERT INTO messages (id, session_id, turn_id, role, content, status, tool_call_id)
         VALUES ($1, $2, $3, 'tool', $4, 'complete', 'c1')",
    )
    .bind(Uuid::now_v7())
    .bind(session.id)
    .bind(turn)
    .bind(&by_tool)
    .execute(pool)
    .await
    .expect("tool row");
    let attached = attachments::upload(pool, &blobs, p, session.id, "a.txt", "hi\n".into(), 1024)
        .await
        .expect("upload");
    // Unreferenced: two old (a payload and an attachment-like blob), one new.
    let old_orphan = key(&offload(Uuid::now_v7()).await);
    let stray = spool::store::attachment_key(p, Uuid::now_v7());
    blobs
        .put(pool, &stray, p, None, "stray".into())
        .await
        .expect("put");
    let new_orphan = key(&offload(Uuid::now_v7()).await);
    sqlx::query("UPDATE blobs SET created_at = now() - interval '2 hours' WHERE key <> $1")
        .bind(&new_orphan)
        .execute(pool)
        .await
        .expect("age");

    let swept = housekeeping::sweep_orphans(pool, &blobs, Duration::from_secs(3600))
        .await
        .expect("sweep");
    assert_eq!(
        swept,
        Swept {
            examined: 6,
            deleted: 2
        }
    );
    let mut kept = vec![
        key(&by_result),
        key(&by_event),
        key(&by_tool),
        attached.blob_key.clone(),
        new_orphan.clone(),
    ];
    kept.sort();
    assert_eq!(blob_rows(pool).await, kept);
    for k in &kept {
        assert!(blobs.exists(k).await.expect("head"), "{k} is kept");
    }
    for k in [&old_orphan, &stray] {
        assert!(!blobs.exists(k).await.expect("head"), "{k} is gone");
    }

    // The periodic duty does the same on its own once the new orphan has aged.
    sqlx::query("UPDATE blobs SET created_at = now() - interval '2 hours' WHERE key = $1")
        .bind(&new_orphan)
        .execute(pool)
        .await
        .expect("age");
    let stop = tokio_util::sync::CancellationToken::new();
    let task = housekeeping::start(
        pool.clone(),
        blobs.clone(),
        Housekeeping {
            interval: Duration::from_secs(1),
            orphan_grace: Duration::from_secs(3600),
            retain: Retention::default(),
        },
        stop.clone(),
    );
    let gone = eventually(Duration::from_secs(20), || async {
        (!blobs.exists(&new_orphan).await.expect("head")).then_some(())
    })
    .await;
    stop.cancel();
    let _ = task.await;
    assert!(gone.is_some(), "the periodic sweep removed the aged orphan");
    assert_eq!(blob_rows(pool).await.len(), 4);
}
