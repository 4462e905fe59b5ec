//! Traces: a turn's span tree, W3C `traceparent` joining, abandoned spans of a lapsed attempt,
//! and the trace API's answers to bad input.

mod common;

use std::time::Duration;

use common::chat::agent_env;
use common::fake_llm::{FakeLlm, Reply};
use common::{env, eventually, fast_worker};
use serde_json::{Value, json};
use spool::queue::claim;
use spool::worker::WorkerConfig;
use uuid::Uuid;

/// Every span of a tree, depth first.
fn flatten(nodes: &[Value], out: &mut Vec<Value>) {
    for n in nodes {
        out.push(n.clone());
        flatten(n["children"].as_array().map_or(&[][..], |v| v), out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_with_a_tool_round_makes_the_expected_tree() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        Reply::tool_call("call_1", "list_dir", r#"{"path":"."}"#),
        Reply::tool_call("call_2", "read_file", r#"{"path":"notes.txt"}"#),
        Reply::text("The notes say hello spool."),
        Reply::text("A title"),
    ]);
    let e = agent_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let (st, b) = s
        .post("/api/v1/sessions", json!({ "workspace": "demo" }))
        .await;
    assert_eq!(st, 201, "{b}");
    let session = b["id"].as_str().expect("id").to_owned();
    let (st, b) = s
        .post(
            &format!("/api/v1/sessions/{session}/turns"),
            json!({ "input": "What is in my notes?" }),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    let turn: Uuid = b["turn_id"].as_str().expect("turn").parse().expect("uuid");
    assert_eq!(s.wait(turn, 30).await["state"], "succeeded");
    w.shutdown(Duration::from_secs(1)).await;

    let (st, trace) = s.get(&format!("/api/v1/jobs/{turn}/trace")).await;
    assert_eq!(st, 200, "{trace}");
    let roots = trace["spans"].as_array().expect("spans");
    assert_eq!(roots.len(), 1, "one root: the turn's job span: {trace}");
    let job = &roots[0];
    assert_eq!(job["kind"], "job");
    assert_eq!(job["name"], "agent.turn");
    assert_eq!(job["status"], "ok");
    assert_eq!(job["job_id"], turn.to_string());
    assert!(job["parent_span_id"].is_null());
    let kids = job["children"].as_array().expect("children");
    let kinds: Vec<&str> = kids.iter().filter_map(|k| k["kind"].as_str()).collect();
    // Three model calls, two tool calls, then the session's title job, a child job.
    assert_eq!(
        kinds,
        ["llm", "tool", "llm", "tool", "llm", "job"],
        "{trace}"
    );
    assert_eq!(kids[5]["name"], "agent.title");
    let mut all = Vec::new();
    flatten(roots, &mut all);
    assert_eq!(all.len(), 7);
    assert_eq!(trace["span_count"], 7);
    for k in kids {
        assert_eq!(k["parent_span_id"], job["span_id"]);
        assert_eq!(k["status"], "ok", "{k}");
        assert!(k["ended_at"].is_string());
        assert_eq!(k["session_id"], session);
    }
    let llm: Vec<&Value> = kids.iter().filter(|k| k["kind"] == "llm").collect();
    assert_eq!(llm[0]["attrs"]["gen_ai.request.model"], "fake");
    assert_eq!(llm[0]["attrs"]["gen_ai.operation.name"], "chat");
    let last = &llm[2]["attrs"];
    assert_eq!(last["gen_ai.usage.input_tokens"], 10);
    assert!(
        last["gen_ai.usage.output_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    assert!(last["gen_ai.response.finish_reasons"].is_array());
    let tools: Vec<&Value> = kids.iter().filter(|k| k["kind"] == "tool").collect();
    assert_eq!(tools[0]["attrs"]["gen_ai.tool.name"], "list_dir");
    assert_eq!(tools[0]["attrs"]["gen_ai.tool.call.id"], "call_1");
    assert!(
        tools[1]["attrs"]["gen_ai.tool.call.result"]
            .as_str()
            .is_some_and(|r| r.contains("hello spool"))
    );
    // The same tree by trace id.
    let id = job["trace_id"].as_str().expect("trace id");
    let (st, again) = s.get(&format!("/api/v1/traces/{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(again["span_count"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_joins_the_callers_trace_and_bad_ids_are_refused() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = s
        .req(reqwest::Method::POST, "/api/v1/jobs")
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(&json!({ "kind": "noop", "args": {} }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    let job: Value = r.json().await.expect("json");
    let id: Uuid = job["id"].as_str().expect("id").parse().expect("uuid");
    assert_eq!(s.wait(id, 10).await["state"], "succeeded");
    let (st, t) = s.get(&format!("/api/v1/traces/{trace}")).await;
    assert_eq!(st, 200, "{t}");
    let root = &t["spans"][0];
    assert_eq!(
        root["parent_span_id"], parent,
        "the job span hangs under the caller's span"
    );
    assert_eq!(root["job_id"], id.to_string());
    assert_eq!(root["status"], "ok");

    // A malformed header is ignored, as the spec asks: the job starts a trace of its own.
    let r = s
        .req(reqwest::Method::POST, "/api/v1/jobs")
        .header("traceparent", format!("00-{trace}-0000000000000000-01"))
        .json(&json!({ "kind": "noop", "args": {} }))
        .send()
        .await
        .expect("send");
    let other: Value = r.json().await.expect("json");
    let other: Uuid = other["id"].as_str().expect("id").parse().expect("uuid");
    assert_eq!(s.wait(other, 10).await["state"], "succeeded");
    let (_, t2) = s.get(&format!("/api/v1/jobs/{other}/trace")).await;
    assert_ne!(t2["trace_id"], trace);
    assert!(t2["spans"][0]["parent_span_id"].is_null());
    w.shutdown(Duration::from_secs(1)).await;

    let (st, b) = s.get("/api/v1/traces/not-a-trace").await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(b["error"]["field"], "trace_id");
    let (st, _) = s
        .get("/api/v1/traces/0123456789abcdef0123456789abcdef")
        .await;
    assert_eq!(st, 404);
    // Another project's trace is a 404 as well.
    let p2 = spool::projects::ensure(&e.svc.pool, "other")
        .await
        .expect("project");
    let t2 =
        spool::projects::tokens::create(&e.svc.pool, p2.id, spool::projects::tokens::Scope::Read)
            .await
            .expect("token");
    let r = s
        .http
        .get(s.url(&format!("/api/v1/traces/{trace}")))
        .bearer_auth(&t2.secret)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_attempt_leaves_an_abandoned_span_and_the_retry_a_complete_one() {
    let e = env().await;
    let s = e.serve(e.registry()).await;
    let id = s.enqueue("noop", json!({})).await;
    // A worker that "crashes": it claims with a 1 s lease and never renews or finishes.
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
    let cfg = WorkerConfig {
        rescue_interval: Duration::from_millis(200),
        ..fast_worker()
    };
    let w = e.worker(e.registry(), cfg).await;
    let done = eventually(Duration::from_secs(10), || async {
        (s.get(&format!("/api/v1/jobs/{id}")).await.1["state"] == "succeeded").then_some(())
    })
    .await;
    w.shutdown(Duration::from_secs(1)).await;
    assert!(done.is_some(), "the job was not rescued and completed");
    let (st, t) = s.get(&format!("/api/v1/jobs/{id}/trace")).await;
    assert_eq!(st, 200, "{t}");
    let spans = t["spans"].as_array().expect("spans");
    let by_attempt = |n: i64| {
        spans
            .iter()
            .find(|s| s["attempt"] == n)
            .unwrap_or_else(|| panic!("no span for attempt {n}: {t}"))
    };
    assert_eq!(spans.len(), 2, "{t}");
    assert_eq!(by_attempt(1)["status"], "abandoned");
    assert!(by_attempt(1)["ended_at"].is_string());
    assert_eq!(by_attempt(2)["status"], "ok");
    assert_eq!(by_attempt(1)["span_id"], stale[0].span_id);
}

/// An agent env whose `fake` model has prices (USD 1 per million input tokens, 2 per million
/// output), so spans carry costs.
async fn priced_env(fake: &FakeLlm) -> common::Env {
    let mut e = agent_env(fake).await;
    let table: toml::Table = toml::from_str(&format!(
        "default_model = \"fake\"\n[[models]]\nname = \"fake\"\nprovider = \"openai\"\nbase_url = \"{}\"\ncontext_window = 8000\ninput_price_per_mtok = 1.0\noutput_price_per_mtok = 2.0\n",
        fake.base_url
    ))
    .expect("toml");
    e.settings.models = spool::llm::config::Models::from_toml(&table).expect("models");
    e
}

/// A one-chunk text reply with this usage.
fn reply_with_usage(text: &str, input: u64, output: u64, cache_read: u64) -> Reply {
    Reply::Stream {
        chunks: vec![common::fake_llm::Chunk::Text(text.to_owned())],
        usage: Some(spool::llm::Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            ..Default::default()
        }),
        delay_ms: 0,
    }
}

/// Sends a turn and waits for it to succeed.
async fn run_turn(s: &common::Server, session: &str, input: &str) -> Uuid {
    let (st, b) = s
        .post(
            &format!("/api/v1/sessions/{session}/turns"),
            json!({ "input": input }),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    let turn: Uuid = b["turn_id"].as_str().expect("turn").parse().expect("uuid");
    assert_eq!(s.wait(turn, 30).await["state"], "succeeded");
    turn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_traces_sum_each_turns_spans_and_page_by_cursor() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        Reply::tool_call("call_1", "list_dir", r#"{"path":"."}"#),
        reply_with_usage("Two files.", 300, 7, 0),
        Reply::text("A title"),
        reply_with_usage("Cached answer.", 1000, 20, 800),
        reply_with_usage("Third.", 100, 3, 10),
    ]);
    let e = priced_env(&fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    let (st, b) = s
        .post("/api/v1/sessions", json!({ "workspace": "demo" }))
        .await;
    assert_eq!(st, 201, "{b}");
    let session = b["id"].as_str().expect("id").to_owned();
    let t1 = run_turn(&s, &session, "List my files").await;
    // The title job asks the model next; let it take its reply before the second turn does.
    let titled = eventually(Duration::from_secs(10), || async {
        let (_, b) = s.get("/api/v1/jobs?kind=agent.title").await;
        (b["jobs"][0]["state"] == "succeeded").then_some(())
    })
    .await;
    assert!(titled.is_some(), "the title job did not finish");
    let t2 = run_turn(&s, &session, "Again").await;
    let t3 = run_turn(&s, &session, "Once more").await;
    w.shutdown(Duration::from_secs(1)).await;

    let base = format!("/api/v1/sessions/{session}/traces");
    let (st, page) = s.get(&base).await;
    assert_eq!(st, 200, "{page}");
    let items = page["traces"].as_array().expect("traces");
    let ids: Vec<&str> = items.iter().filter_map(|i| i["turn_id"].as_str()).collect();
    assert_eq!(
        ids,
        [t3.to_string(), t2.to_string(), t1.to_string()],
        "newest first"
    );
    assert!(page["next_cursor"].is_null());

    // Turn 1: two model calls and a tool call under its job span, and the title job it started.
    let first = &items[2];
    let (_, tree) = s.get(&format!("/api/v1/jobs/{t1}/trace")).await;
    assert_eq!(first["trace_id"], tree["trace_id"]);
    assert_eq!(first["status"], "ok");
    assert_eq!(first["attempts"], 1);
    assert_eq!(
        first["span_count"], 5,
        "job, llm, tool, llm, title job: {tree}"
    );
    assert_eq!(
        first["tokens"],
        json!({ "input": 310, "output": 12, "cache_read": 0 })
    );
    let cost = first["cost_usd"].as_f64().expect("cost");
    assert!((cost - (310.0 + 2.0 * 12.0) / 1e6).abs() < 1e-12, "{cost}");
    assert!(first["ended_at"].is_string());
    let started = first["started_at"].as_str().expect("started");
    assert!(started <= first["ended_at"].as_str().expect("ended"));
    assert!(first["duration_ms"].as_i64().is_some_and(|d| d >= 0));
    // Turn 2: the cache-read tokens are summed apart from the input.
    assert_eq!(
        items[1]["tokens"],
        json!({ "input": 1000, "output": 20, "cache_read": 800 })
    );
    assert_eq!(items[1]["span_count"], 2);
    assert_ne!(
        items[1]["trace_id"], first["trace_id"],
        "each turn is its own trace"
    );

    // Keyset pages: 2, then the last 1, with no overlap.
    let (st, p1) = s.get(&format!("{base}?limit=2")).await;
    assert_eq!(st, 200, "{p1}");
    assert_eq!(p1["traces"].as_array().map(Vec::len), Some(2));
    let cursor = p1["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let (st, p2) = s.get(&format!("{base}?limit=2&cursor={cursor}")).await;
    assert_eq!(st, 200, "{p2}");
    assert_eq!(p2["traces"].as_array().map(Vec::len), Some(1));
    assert_eq!(p2["traces"][0]["turn_id"], t1.to_string());
    assert!(p2["next_cursor"].is_null());
    let (_, p) = s.get(&format!("{base}?limit=1")).await;
    assert_eq!(p["traces"][0]["turn_id"], t3.to_string());

    // One turn; a turn of no session here gives an empty page.
    let (st, one) = s.get(&format!("{base}?turn={t2}")).await;
    assert_eq!(st, 200, "{one}");
    assert_eq!(one["traces"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["traces"][0]["turn_id"], t2.to_string());
    let (_, none) = s.get(&format!("{base}?turn={}", Uuid::now_v7())).await;
    assert_eq!(none["traces"], json!([]));

    // Malformed input is a 400 naming the field.
    let forged = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("12.not-a-span")
    };
    for (query, field) in [
        ("limit=0", Some("limit")),
        ("limit=201", Some("limit")),
        ("limit=ten", Some("limit")),
        ("cursor=%%%", None),
        ("cursor=bm90IGEgY3Vyc29y", Some("cursor")),
        (&format!("cursor={forged}")[..], Some("cursor")),
        ("turn=not-a-uuid", Some("turn")),
        ("page=2", None),
    ] {
        let (st, b) = s.get(&format!("{base}?{query}")).await;
        assert_eq!(st, 400, "{query}: {b}");
        if let Some(f) = field {
            assert_eq!(b["error"]["field"], f, "{query}: {b}");
        }
    }
    // Unknown, malformed and other projects' sessions are 404s.
    let (st, _) = s
        .get(&format!("/api/v1/sessions/{}/traces", Uuid::now_v7()))
        .await;
    assert_eq!(st, 404);
    let (st, _) = s.get("/api/v1/sessions/nope/traces").await;
    assert_eq!(st, 404);
    let p2 = spool::projects::ensure(&e.svc.pool, "other")
        .await
        .expect("project");
    let other =
        spool::projects::tokens::create(&e.svc.pool, p2.id, spool::projects::tokens::Scope::Read)
            .await
            .expect("token");
    let r = s
        .http
        .get(s.url(&base))
        .bearer_auth(&other.secret)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
}
