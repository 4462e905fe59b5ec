//! Chat turns as durable jobs, against the fake OpenAI-compatible server over real HTTP.

mod common;

use std::time::Duration;

use common::chat::{agent_env, slow_text, worker_process};
use common::fake_llm::{Chunk, FakeLlm, Reply};
use common::{Server, eventually, fast_worker};
use serde_json::{Value, json};
use spool::worker::WorkerConfig;
use uuid::Uuid;

/// The requests turns made, leaving out the title job's.
fn turn_requests(fake: &FakeLlm) -> Vec<Value> {
    fake.requests()
        .into_iter()
        .filter(|r| {
            !r["messages"][0]["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("Write a title"))
        })
        .collect()
}

async fn new_session(s: &Server, body: Value) -> Uuid {
    let (st, b) = s.post("/api/v1/sessions", body).await;
    assert_eq!(st, 201, "{b}");
    b["id"]
        .as_str()
        .and_then(|i| i.parse().ok())
        .expect("session id")
}

async fn send(s: &Server, session: Uuid, body: Value) -> (u16, Value) {
    s.post(&format!("/api/v1/sessions/{session}/turns"), body)
        .await
}

async fn turn(s: &Server, session: Uuid, input: &str) -> Uuid {
    let (st, b) = send(s, session, json!({ "input": input })).await;
    assert_eq!(st, 202, "{b}");
    b["turn_id"]
        .as_str()
        .and_then(|i| i.parse().ok())
        .expect("turn id")
}

async fn messages(s: &Server, session: Uuid) -> Vec<Value> {
    let (st, b) = s.get(&format!("/api/v1/sessions/{session}/messages")).await;
    assert_eq!(st, 200, "{b}");
    b["messages"].as_array().cloned().unwrap_or_default()
}

async fn session_events(s: &Server, session: Uuid) -> Vec<Value> {
    let r = s
        .req(
            reqwest::Method::GET,
            &format!("/api/v1/sessions/{session}/events?limit=1000"),
        )
        .header("accept", "application/json")
        .send()
        .await
        .expect("events");
    let b: Value = r.json().await.expect("json");
    b["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_with_two_tool_rounds_streams_checkpoints_and_sums_usage() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        Reply::tool_call("call_1", "list_dir", r#"{"path":"."}"#),
        Reply::tool_call("call_2", "read_file", r#"{"path":"notes.txt"}"#),
        // Spaced past the 30 ms write window, so the reply reaches clients in several deltas.
        spaced("The notes say hello spool.", 60),
    ]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(
        &s,
        json!({ "workspace": "demo", "system_prompt": "Be brief." }),
    )
    .await;
    let turn_id = turn(&s, session, "What is in my notes?").await;
    let job = s.wait(turn_id, 30).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let msgs = messages(&s, session).await;
    let roles: Vec<&str> = msgs
        .iter()
        .map(|m| m["role"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant"
        ]
    );
    assert!(msgs.iter().all(|m| m["status"] == "complete"));
    assert!(
        msgs[2]["content"]["content"]
            .as_str()
            .unwrap_or("")
            .contains("notes.txt")
    );
    assert!(
        msgs[4]["content"]["content"]
            .as_str()
            .unwrap_or("")
            .contains("hello spool")
    );
    assert_eq!(msgs[5]["content"]["text"], "The notes say hello spool.");
    assert_eq!(job["result"]["usage"]["input_tokens"], 30);
    assert_eq!(job["result"]["usage"]["output_tokens"], 15);
    let events = session_events(&s, session).await;
    let count = |k: &str| events.iter().filter(|e| e["kind"] == k).count();
    assert_eq!(count("message_started"), 3);
    assert_eq!(count("message_complete"), 3);
    assert_eq!(count("tool_call"), 2);
    assert_eq!(count("tool_result"), 2);
    assert_eq!(count("usage"), 1);
    let cursors: Vec<i64> = events
        .iter()
        .map(|e| e["cursor"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(
        cursors,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "session cursor is gapless"
    );
    let final_id = msgs[5]["id"].clone();
    let streamed: String = events
        .iter()
        .filter(|e| e["kind"] == "delta" && e["data"]["message_id"] == final_id)
        .filter_map(|e| e["data"]["text"].as_str())
        .collect();
    assert_eq!(streamed, "The notes say hello spool.");
    assert!(count("delta") >= 2, "text must stream in pieces");
    let reqs = turn_requests(&fake);
    assert_eq!(reqs.len(), 3);
    let names: Vec<&str> = reqs[0]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "tools are sent sorted by name");
    assert_eq!(reqs[0]["messages"][0]["role"], "system");
    let tool_msg = reqs[1]["messages"]
        .as_array()
        .expect("msgs")
        .iter()
        .find(|m| m["role"] == "tool")
        .cloned()
        .expect("tool msg");
    assert_eq!(tool_msg["tool_call_id"], "call_1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_round_withholds_tools_so_the_model_must_answer() {
    let fake = FakeLlm::start().await;
    for i in 0..7 {
        fake.push(Reply::tool_call(
            &format!("c{i}"),
            "list_dir",
            r#"{"path":"."}"#,
        ));
    }
    fake.push(Reply::text("Done looking."));
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s, json!({ "workspace": "demo" })).await;
    let job = s.wait(turn(&s, session, "look around").await, 30).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let reqs = turn_requests(&fake);
    assert_eq!(reqs.len(), 8);
    assert!(
        reqs[..7]
            .iter()
            .all(|r| r["tools"].as_array().is_some_and(|t| !t.is_empty()))
    );
    assert!(
        reqs[7]
            .get("tools")
            .is_none_or(|t| t.as_array().is_none_or(|a| a.is_empty())),
        "last round offered tools"
    );
}

fn spaced(text: &str, delay_ms: u64) -> Reply {
    match Reply::text(text) {
        Reply::Stream { chunks, usage, .. } => Reply::Stream {
            chunks,
            usage,
            delay_ms,
        },
        other => other,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_queue_fifo_and_abort_keeps_partial_text_then_runs_the_next() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        slow_text(60, 100),
        Reply::text("second answer"),
        Reply::text("third answer"),
    ]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s, json!({})).await;
    let t1 = turn(&s, session, "one").await;
    let (_, b2) = send(&s, session, json!({ "input": "two" })).await;
    let (_, b3) = send(
        &s,
        session,
        json!({ "input": [{ "type": "text", "text": "three" }] }),
    )
    .await;
    assert_eq!(b2["position"], 1);
    assert_eq!(b3["position"], 2);
    let streaming = eventually(Duration::from_secs(10), || async {
        let evs = session_events(&s, session).await;
        (evs.iter().filter(|e| e["kind"] == "delta").count() >= 3).then_some(())
    })
    .await;
    assert!(streaming.is_some(), "turn 1 never streamed");
    // The reply so far is saved while it streams, so a page loaded now shows it.
    let saved = eventually(Duration::from_secs(5), || async {
        let msgs = messages(&s, session).await;
        msgs.iter()
            .find(|m| m["role"] == "assistant" && m["status"] == "streaming")
            .and_then(|m| m["content"]["text"].as_str().map(str::to_owned))
            .filter(|t| t.starts_with("w0 w1"))
    })
    .await;
    assert!(
        saved.is_some(),
        "the streaming reply was not saved while it streamed"
    );
    let (st, ab) = s
        .post(&format!("/api/v1/sessions/{session}/abort"), json!({}))
        .await;
    assert_eq!(st, 200, "{ab}");
    assert_eq!(ab["aborted_turn"], json!(t1.to_string()));
    let j1 = s.wait(t1, 5).await;
    assert_eq!(j1["state"], "cancelled");
    let t3: Uuid = b3["turn_id"]
        .as_str()
        .and_then(|i| i.parse().ok())
        .expect("t3");
    let j3 = s.wait(t3, 20).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(j3["state"], "succeeded");
    let msgs = messages(&s, session).await;
    let summary: Vec<(String, String)> = msgs
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or("").to_owned(),
                m["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expect: Vec<(String, String)> = [
        ("user", "complete"),
        ("assistant", "cancelled"),
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(summary, expect);
    let partial = msgs[1]["content"]["text"].as_str().unwrap_or("");
    assert!(
        partial.starts_with("w0 w1 w2"),
        "partial text kept: {partial:?}"
    );
    assert!(!partial.contains("w59"), "the aborted reply did not stop");
    assert_eq!(msgs[3]["content"]["text"], "second answer");
    assert_eq!(msgs[5]["content"]["text"], "third answer");
    // FIFO: each turn's request carried the earlier turns as history.
    let reqs = fake.requests();
    let last_user = |r: &Value| {
        r["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|x| x["role"] == "user").cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(last_user(&reqs[1])["content"], "two");
    assert_eq!(last_user(&reqs[2])["content"], "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_interrupt_and_rollback_strategies() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        slow_text(60, 100),
        Reply::text("after interrupt"),
        slow_text(60, 100),
        Reply::text("after rollback"),
    ]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s, json!({})).await;
    let t1 = turn(&s, session, "first").await;
    let wait_deltas = |n: usize| {
        let s = &s;
        async move {
            eventually(Duration::from_secs(10), || async {
                let evs = session_events(s, session).await;
                (evs.iter().filter(|e| e["kind"] == "delta").count() >= n).then_some(())
            })
            .await
        }
    };
    assert!(wait_deltas(2).await.is_some());
    let (st, b) = send(
        &s,
        session,
        json!({ "input": "nope", "multitask": "reject" }),
    )
    .await;
    assert_eq!(st, 409, "{b}");
    let (st, b) = send(
        &s,
        session,
        json!({ "input": "now this", "multitask": "interrupt" }),
    )
    .await;
    assert_eq!(st, 202, "{b}");
    let t2: Uuid = b["turn_id"]
        .as_str()
        .and_then(|i| i.parse().ok())
        .expect("t2");
    assert_eq!(s.wait(t1, 5).await["state"], "cancelled");
    assert_eq!(s.wait(t2, 20).await["state"], "succeeded");
    let t3 = turn(&s, session, "third, to be rolled back").await;
    let before = session_events(&s, session)
        .await
        .iter()
        .filter(|e| e["kind"] == "delta")
        .count();
    assert!(wait_deltas(before + 2).await.is_some());
    let (st, b) = send(
        &s,
        session,
        json!({ "input": "replace it", "multitask": "rollback" }),
    )
    .await;
    assert_eq!(st, 202, "{b}");
    let t4: Uuid = b["turn_id"]
        .as_str()
        .and_then(|i| i.parse().ok())
        .expect("t4");
    assert_eq!(s.wait(t3, 5).await["state"], "cancelled");
    assert_eq!(s.wait(t4, 20).await["state"], "succeeded");
    w.shutdown(Duration::from_secs(1)).await;
    let msgs = messages(&s, session).await;
    let texts: Vec<String> = msgs
        .iter()
        .map(|m| {
            format!(
                "{}:{}",
                m["role"].as_str().unwrap_or(""),
                m["content"]["text"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        !texts
            .iter()
            .any(|t| t.contains("rejected") || t == "user:nope"),
        "a rejected turn left a message"
    );
    assert!(
        !texts.iter().any(|t| t.contains("rolled back")),
        "rollback kept the cancelled turn's messages: {texts:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m["status"] == "cancelled" && m["turn_id"] == json!(t1.to_string())),
        "interrupt keeps the partial reply"
    );
    assert_eq!(
        texts.last().map(String::as_str),
        Some("assistant:after rollback")
    );
}

#[tokio::test]
async fn bad_turn_input_gets_a_clear_4xx_and_stores_nothing() {
    let fake = FakeLlm::start().await;
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let session = new_session(&s, json!({})).await;
    let (st, b) = s
        .post("/api/v1/sessions", json!({ "model": "gpt-9" }))
        .await;
    assert_eq!(
        (st, b["error"]["code"].clone()),
        (422, json!("unknown_model"))
    );
    let (st, b) = s
        .post("/api/v1/sessions", json!({ "workspace": "nowhere" }))
        .await;
    assert_eq!(
        (st, b["error"]["code"].clone()),
        (422, json!("unknown_workspace"))
    );
    let cases = [
        (json!({ "input": "" }), 400, "input"),
        (json!({ "input": "   " }), 400, "input"),
        (json!({ "input": [] }), 400, "input"),
        (json!({ "input": [{ "type": "image" }] }), 400, "input"),
        (json!({ "input": [{ "type": "text" }] }), 400, "input"),
        (json!({ "input": 42 }), 400, "input"),
        (json!({ "input": "hi", "model": "gpt-9" }), 422, "model"),
        (
            json!({ "input": "hi", "multitask": "sometimes" }),
            400,
            "multitask",
        ),
        (json!({ "input": "x".repeat(300 * 1024) }), 413, "input"),
    ];
    for (i, (body, status, field)) in cases.into_iter().enumerate() {
        let (st, b) = send(&s, session, body).await;
        assert_eq!(st, status, "case {i}: {b}");
        assert_eq!(b["error"]["field"], field, "case {i}: {b}");
    }
    let (st, b) = send(&s, Uuid::now_v7(), json!({ "input": "hi" })).await;
    assert_eq!((st, b["error"]["code"].clone()), (404, json!("not_found")));
    let (jobs, msgs): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM messages)")
            .fetch_one(&e.svc.pool)
            .await
            .expect("counts");
    assert_eq!((jobs, msgs), (0, 0));
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_session_stream_resumes_to_the_identical_transcript() {
    let fake = FakeLlm::start().await;
    fake.push(slow_text(30, 40));
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let session = new_session(&s, json!({})).await;
    let path = format!("/api/v1/sessions/{session}/events");
    let open = |last: Option<i64>| {
        let mut r = s
            .req(reqwest::Method::GET, &path)
            .header("accept", "text/event-stream");
        if let Some(id) = last {
            r = r.header("last-event-id", id.to_string());
        }
        r.send()
    };
    let finished = |f: &common::sse::Frame| f.1 == "state" && f.2["data"]["state"] == "succeeded";
    let steady = open(None).await.expect("sse");
    let w = e.worker(e.registry(), fast_worker()).await;
    let turn_id = turn(&s, session, "stream please").await;
    let reader = tokio::spawn(common::sse::read(steady, 10_000, finished));
    let first = common::sse::read(open(None).await.expect("sse"), 8, |_| false).await;
    assert_eq!(first.len(), 8);
    assert!(
        first.iter().any(|f| f.1 == "delta"),
        "reconnect should happen mid-stream"
    );
    let rest = tokio::time::timeout(
        Duration::from_secs(20),
        common::sse::read(
            open(first.last().map(|f| f.0)).await.expect("sse"),
            10_000,
            finished,
        ),
    )
    .await
    .expect("the resumed stream reached the end of the turn");
    let steady = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("steady reader")
        .expect("join");
    assert_eq!(s.wait(turn_id, 10).await["state"], "succeeded");
    w.shutdown(Duration::from_secs(1)).await;
    let resumed: Vec<common::sse::Frame> = first.into_iter().chain(rest).collect();
    assert_eq!(
        resumed, steady,
        "a refreshed client must see exactly the uninterrupted transcript"
    );
    let text: String = steady
        .iter()
        .filter(|f| f.1 == "delta")
        .filter_map(|f| f.2["data"]["text"].as_str())
        .collect();
    assert_eq!(text, (0..30).map(|i| format!("w{i} ")).collect::<String>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_round_one_resumes_without_rerunning_tools() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let side_effect = axum::Router::new().route(
        "/side-effect",
        axum::routing::get(move || {
            let counted = Arc::clone(&counted);
            async move { format!("effect #{}", counted.fetch_add(1, Ordering::SeqCst) + 1) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, side_effect).await });

    let fake = FakeLlm::start().await;
    let url = format!("http://{addr}/side-effect");
    fake.push_all([
        Reply::tool_call("call_1", "http_fetch", &json!({ "url": url }).to_string()),
        Reply::Stall {
            chunks: vec![Chunk::Text("doomed partial ".into())],
            stall_ms: 60_000,
        },
        Reply::text("The effect happened once."),
    ]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let mut victim = worker_process(&e, &fake).await;
    let session = new_session(&s, json!({ "workspace": "demo" })).await;
    let turn_id = turn(&s, session, "trigger the side effect").await;
    let mid_round_two = eventually(Duration::from_secs(30), || async {
        let saved = messages(&s, session)
            .await
            .iter()
            .any(|m| m["role"] == "tool");
        (saved && fake.request_count() == 2).then_some(())
    })
    .await;
    assert!(
        mid_round_two.is_some(),
        "the first worker never reached round 2"
    );
    victim.start_kill().expect("kill -9");
    let _ = victim.wait().await;
    let cfg = spool::worker::WorkerConfig {
        rescue_interval: Duration::from_millis(200),
        ..fast_worker()
    };
    let w = e.worker(e.registry(), cfg).await;
    let job = s.wait(turn_id, 30).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 2);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the finished tool call ran again"
    );
    let msgs = messages(&s, session).await;
    let roles: Vec<&str> = msgs
        .iter()
        .map(|m| m["role"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
    assert_eq!(msgs[3]["content"]["text"], "The effect happened once.");
    assert!(
        msgs.iter()
            .all(|m| !m.to_string().contains("doomed partial")),
        "the dead attempt's partial text was kept"
    );
    assert_eq!(turn_requests(&fake).len(), 3);

    // The trace: the killed attempt's open spans are marked abandoned, what it had finished
    // stays ok, and the retried attempt's spans are complete.
    let (st, trace) = s.get(&format!("/api/v1/jobs/{turn_id}/trace")).await;
    assert_eq!(st, 200, "{trace}");
    let mut spans = Vec::new();
    let mut stack: Vec<Value> = trace["spans"].as_array().cloned().unwrap_or_default();
    while let Some(n) = stack.pop() {
        stack.extend(n["children"].as_array().cloned().unwrap_or_default());
        spans.push(n);
    }
    let of_turn = |attempt: i64, kind: &str| -> Vec<String> {
        let mut v: Vec<String> = spans
            .iter()
            .filter(|s| {
                s["job_id"] == turn_id.to_string() && s["attempt"] == attempt && s["kind"] == kind
            })
            .map(|s| s["status"].as_str().unwrap_or("?").to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(of_turn(1, "job"), ["abandoned"]);
    assert_eq!(
        of_turn(1, "llm"),
        ["abandoned", "ok"],
        "round 1 ended, round 2 was cut off"
    );
    assert_eq!(of_turn(1, "tool"), ["ok"]);
    assert_eq!(of_turn(2, "job"), ["ok"]);
    assert_eq!(of_turn(2, "llm"), ["ok"]);
    assert!(
        of_turn(2, "tool").is_empty(),
        "the finished tool call is not run again"
    );
    assert!(
        spans.iter().all(|s| s["ended_at"].is_string()),
        "no span is left open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_and_a_cut_stream_retry_the_step_not_the_turn() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        Reply::Status {
            status: 429,
            retry_after: Some(1),
            body: "slow down".into(),
        },
        Reply::Cut {
            chunks: vec![Chunk::Text("half a ".into())],
        },
        Reply::text("whole answer"),
    ]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s, json!({})).await;
    let started = std::time::Instant::now();
    let job = s.wait(turn(&s, session, "hello").await, 30).await;
    w.shutdown(Duration::from_secs(1)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["attempt"], 1,
        "step retries stay inside one job attempt"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After was not honoured"
    );
    let events = session_events(&s, session).await;
    assert_eq!(
        events.iter().filter(|e| e["kind"] == "step_retry").count(),
        2
    );
    let msgs = messages(&s, session).await;
    let roles: Vec<&str> = msgs
        .iter()
        .map(|m| m["role"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        roles,
        ["user", "assistant"],
        "a broken reply must be replaced, not kept"
    );
    assert_eq!(msgs[1]["content"]["text"], "whole answer");
}

fn with_prompt_tokens(text: &str, input_tokens: u64) -> Reply {
    Reply::Stream {
        chunks: text
            .split_inclusive(' ')
            .map(|w| Chunk::Text(w.to_owned()))
            .collect(),
        usage: Some(spool::llm::Usage {
            input_tokens,
            output_tokens: 3,
            ..Default::default()
        }),
        delay_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_summarises_past_half_the_window_and_a_failed_summary_keeps_history() {
    let fake = FakeLlm::start().await;
    // context_window is 8000 for the fake model: 4,500 measured prompt tokens is past 50%.
    fake.push_all([
        with_prompt_tokens("first reply", 4500),
        Reply::text("Title"),
        Reply::status(400, "summary refused"),
        with_prompt_tokens("second reply", 4600),
        Reply::text("SUMMARY: the user said one and two."),
        Reply::text("third reply"),
    ]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e
        .worker(
            e.registry(),
            WorkerConfig {
                concurrency: 1,
                ..fast_worker()
            },
        )
        .await;
    let session = new_session(&s, json!({})).await;
    for input in ["one", "two", "three"] {
        let t = turn(&s, session, input).await;
        let job = s.wait(t, 30).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        // Let the title job (after the first turn) take its reply before the next turn asks.
        let _ = eventually(Duration::from_secs(10), || async {
            let (st, b) = s.get("/api/v1/jobs?kind=agent.title").await;
            (st == 200
                && b["jobs"]
                    .as_array()
                    .is_some_and(|j| j.iter().all(|x| x["state"] == "succeeded")))
            .then_some(())
        })
        .await;
    }
    w.shutdown(Duration::from_secs(1)).await;
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 6, "{reqs:#?}");
    // Turn 2: the summary call failed, so turn 2 was sent with the full history.
    let turn2 = reqs[3]["messages"].as_array().expect("msgs");
    assert!(
        turn2.iter().any(|m| m["content"] == "one"),
        "failed compaction must keep the full history"
    );
    // Turn 3: compacted; the old turns travel as the summary only.
    let turn3 = reqs[5]["messages"].as_array().expect("msgs");
    assert!(turn3.iter().any(|m| {
        m["role"] == "system"
            && m["content"]
                .as_str()
                .is_some_and(|c| c.contains("SUMMARY: the user said one and two."))
    }));
    assert!(
        !turn3
            .iter()
            .any(|m| m["content"] == "one" || m["content"] == "two"),
        "summarised turns were sent again"
    );
    assert!(turn3.iter().any(|m| m["content"] == "three"));
    let events = session_events(&s, session).await;
    let compactions: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "compaction_completed")
        .collect();
    assert_eq!(compactions.len(), 2);
    assert_eq!(compactions[0]["data"]["ok"], false);
    assert!(
        compactions[0]["data"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("400")
    );
    assert_eq!(compactions[1]["data"]["ok"], true);
    // Nothing was erased: the transcript still has all three turns.
    let msgs = messages(&s, session).await;
    let replies: Vec<&str> = msgs
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["content"]["text"].as_str())
        .collect();
    assert_eq!(replies, ["first reply", "second reply", "third reply"]);
    assert_eq!(msgs.len(), 6);
    let (st, sess) = s.get(&format!("/api/v1/sessions/{session}")).await;
    assert_eq!(st, 200);
    assert_eq!(sess["summary"], "SUMMARY: the user said one and two.");
    assert_eq!(
        sess["title"], "Title",
        "the model-written title replaces the first-message cut"
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "title" && e["data"]["title"] == "Title")
    );
}

#[tokio::test]
async fn a_replayed_turn_returns_the_same_turn_and_stores_one_message() {
    let fake = FakeLlm::start().await;
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let session = new_session(&s, json!({})).await;
    let body = json!({ "input": "only once", "idempotency_key": "client-msg-1", "multitask": "interrupt" });
    let (st1, a) = send(&s, session, body.clone()).await;
    let (st2, b) = send(&s, session, body).await;
    assert_eq!((st1, st2), (202, 202), "{a} {b}");
    assert_eq!(a["turn_id"], b["turn_id"]);
    assert_eq!(a["message_id"], b["message_id"]);
    let msgs = messages(&s, session).await;
    assert_eq!(msgs.len(), 1, "a replay stored a second message");
    let (st, c) = send(&s, session, json!({ "input": "x", "idempotency_key": "" })).await;
    assert_eq!(
        (st, c["error"]["field"].clone()),
        (400, json!("idempotency_key"))
    );
    let (jobs,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
        .fetch_one(&e.svc.pool)
        .await
        .expect("count");
    assert_eq!(jobs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_turn_cancels_alone_and_deleting_a_session_cancels_its_turns() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        slow_text(80, 100),
        Reply::text("never"),
        Reply::text("never either"),
    ]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let session = new_session(&s, json!({})).await;
    let running = turn(&s, session, "long one").await;
    let queued = turn(&s, session, "cancel me").await;
    let last = turn(&s, session, "delete me").await;
    let (st, j) = s
        .post(&format!("/api/v1/jobs/{queued}/cancel"), json!({}))
        .await;
    assert_eq!((st, j["state"].clone()), (200, json!("cancelled")), "{j}");
    let (st, _) = s.get(&format!("/api/v1/jobs/{running}")).await;
    assert_eq!(st, 200);
    // Delete once the first turn is streaming from the model.
    let streaming = eventually(Duration::from_secs(10), || async {
        (fake.request_count() >= 1).then_some(())
    })
    .await;
    assert!(streaming.is_some(), "the first turn never called the model");
    let r = s
        .req(
            reqwest::Method::DELETE,
            &format!("/api/v1/sessions/{session}"),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(s.wait(running, 5).await["state"], "cancelled");
    assert_eq!(s.wait(last, 5).await["state"], "cancelled");
    w.shutdown(Duration::from_secs(1)).await;
    let (st, b) = s.get(&format!("/api/v1/sessions/{session}")).await;
    assert_eq!((st, b["error"]["code"].clone()), (404, json!("not_found")));
    let left: (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
        .fetch_one(&e.svc.pool)
        .await
        .expect("count");
    assert_eq!(left.0, 0, "the transcript outlived its session");
    assert_eq!(
        turn_requests(&fake).len(),
        1,
        "cancelled turns must not call the model"
    );
}
