//! The Anthropic Messages client against the scripted fake provider. No database needed.

mod common;

use std::time::{Duration, Instant};

use common::fake_llm::{Chunk, FakeLlm, Reply};
use serde_json::{Value, json};
use spool::llm::config::ModelConfig;
use spool::llm::{
    ChatMessage, ChatRequest, Completion, LlmClient, LlmError, Role, StreamEvent, ToolCall,
    ToolDef, Usage,
};
use tokio_util::sync::CancellationToken;

fn client(idle: Duration) -> LlmClient {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");
    LlmClient::new(http, idle)
}

fn msg(role: Role, content: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: Some(content.to_owned()),
        tool_calls: Vec::new(),
        tool_call_id: None,
    }
}

fn result(id: &str, content: &str) -> ChatMessage {
    ChatMessage {
        tool_call_id: Some(id.to_owned()),
        ..msg(Role::Tool, content)
    }
}

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.to_owned(),
        name: name.to_owned(),
        arguments: arguments.to_owned(),
    }
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest {
        model: String::new(),
        messages: vec![msg(Role::User, text)],
        tools: Vec::new(),
        max_tokens: None,
    }
}

/// Streams one call with `model` and returns its result and every event it reported.
async fn run_with(
    model: &ModelConfig,
    req: &ChatRequest,
    idle: Duration,
    cancel: &CancellationToken,
) -> (Result<Completion, LlmError>, Vec<StreamEvent>) {
    let mut events = Vec::new();
    let mut on_event = |e: StreamEvent| events.push(e);
    let result = client(idle).stream(model, req, cancel, &mut on_event).await;
    (result, events)
}

async fn run(
    fake: &FakeLlm,
    req: &ChatRequest,
) -> (Result<Completion, LlmError>, Vec<StreamEvent>) {
    let model = fake.anthropic_model("claude-fake");
    run_with(
        &model,
        req,
        Duration::from_secs(5),
        &CancellationToken::new(),
    )
    .await
}

fn deltas(events: &[StreamEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn retryable(r: Result<Completion, LlmError>) -> (String, Option<Duration>) {
    match r {
        Err(LlmError::Retryable {
            message,
            retry_after,
        }) => (message, retry_after),
        other => panic!("expected Retryable, got {other:?}"),
    }
}

fn fatal(r: Result<Completion, LlmError>) -> String {
    match r {
        Err(LlmError::Fatal(m)) => m,
        other => panic!("expected Fatal, got {other:?}"),
    }
}

/// An event-stream body of these events, each named by its `type`.
fn raw_body(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect()
}

fn raw(events: &[Value]) -> Reply {
    Reply::Raw {
        body: raw_body(events),
    }
}

#[tokio::test]
async fn text_streams_as_deltas() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::text("Hello there, how are you today?"));
    let (r, events) = run(&fake, &ask("hi")).await;
    let done = r.expect("completion");
    let deltas = deltas(&events);
    assert!(deltas.len() >= 2, "{deltas:?}");
    assert_eq!(deltas.concat(), "Hello there, how are you today?");
    assert_eq!(done.text, "Hello there, how are you today?");
    assert_eq!(done.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(done.model, "claude-fake");
    assert!(done.tool_calls.is_empty());
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn tool_calls_assemble_from_split_input_json() {
    let fake = FakeLlm::start().await;
    let args = r#"{"path": "src/main.rs", "limit": 40}"#;
    fake.push(Reply::Stream {
        chunks: vec![
            Chunk::Reasoning("I should ".to_owned()),
            Chunk::Reasoning("read it.".to_owned()),
            Chunk::Text("Let me look.".to_owned()),
            Chunk::ToolCall {
                id: "toolu_abc".to_owned(),
                name: "read_file".to_owned(),
                arguments: args.to_owned(),
                parts: 4,
            },
            Chunk::ToolCall {
                id: "toolu_def".to_owned(),
                name: "list_dir".to_owned(),
                arguments: String::new(),
                parts: 1,
            },
        ],
        usage: None,
        delay_ms: 0,
    });
    let (r, events) = run(&fake, &ask("read main")).await;
    let done = r.expect("completion");
    let want = vec![
        call("toolu_abc", "read_file", args),
        call("toolu_def", "list_dir", "{}"),
    ];
    assert_eq!(
        events,
        [
            StreamEvent::ReasoningDelta("I should ".to_owned()),
            StreamEvent::ReasoningDelta("read it.".to_owned()),
            StreamEvent::TextDelta("Let me look.".to_owned()),
            StreamEvent::ToolCall(want[0].clone()),
            StreamEvent::ToolCall(want[1].clone()),
        ]
    );
    assert_eq!(done.tool_calls, want);
    assert_eq!(done.text, "Let me look.");
    assert_eq!(done.reasoning, "I should read it.");
    assert_eq!(done.finish_reason.as_deref(), Some("tool_use"));
}

#[tokio::test]
async fn history_maps_onto_alternating_content_blocks() {
    let fake = FakeLlm::start().await;
    let assistant = ChatMessage {
        tool_calls: vec![
            call("toolu_1", "list_dir", r#"{"path":"."}"#),
            call("toolu_2", "read_file", r#"{"path": "a.t"#),
        ],
        ..msg(Role::Assistant, "Looking.")
    };
    let tool = ToolDef {
        name: "list_dir".to_owned(),
        description: "the list_dir tool".to_owned(),
        parameters: json!({ "type": "object", "properties": { "path": { "type": "string" } } }),
    };
    let req = ChatRequest {
        model: String::new(),
        messages: vec![
            msg(Role::System, "be brief"),
            msg(Role::User, "list"),
            msg(Role::User, ""),
            msg(Role::User, "then read a.txt"),
            assistant,
            result("toolu_1", "a.txt\nb.txt"),
            result("toolu_2", ""),
            msg(Role::User, "thanks"),
            msg(Role::System, "answer in English"),
        ],
        tools: vec![tool],
        max_tokens: Some(100),
    };
    run(&fake, &req).await.0.expect("first");
    run(&fake, &ask("no tools")).await.0.expect("second");

    let bodies = fake.requests();
    let b = &bodies[0];
    assert_eq!(b["model"], json!("claude-fake"));
    assert_eq!(b["stream"], json!(true));
    assert_eq!(b["max_tokens"], json!(100));
    assert_eq!(b["system"], json!("be brief\n\nanswer in English"));
    assert_eq!(
        b["tools"],
        json!([{ "name": "list_dir", "description": "the list_dir tool",
            "input_schema": { "type": "object", "properties": { "path": { "type": "string" } } } }])
    );
    let text = |t: &str| json!({ "type": "text", "text": t });
    assert_eq!(
        b["messages"],
        json!([
            { "role": "user", "content": [text("list"), text("then read a.txt")] },
            { "role": "assistant", "content": [
                text("Looking."),
                { "type": "tool_use", "id": "toolu_1", "name": "list_dir", "input": { "path": "." } },
                { "type": "tool_use", "id": "toolu_2", "name": "read_file", "input": {} },
            ] },
            { "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt\nb.txt" },
                { "type": "tool_result", "tool_use_id": "toolu_2" },
                text("thanks"),
            ] },
        ])
    );
    let plain = &bodies[1];
    assert_eq!(plain["max_tokens"], json!(4096));
    assert!(
        plain.get("tools").is_none() && plain.get("system").is_none(),
        "{plain}"
    );
    assert_eq!(
        plain["messages"],
        json!([{ "role": "user", "content": [text("no tools")] }])
    );
}

#[tokio::test]
async fn usage_counts_cache_reads_and_writes_as_input() {
    let fake = FakeLlm::start().await;
    let usage = Usage {
        input_tokens: 1500,
        output_tokens: 42,
        cache_read_tokens: 1000,
        cache_write_tokens: 300,
        reasoning_tokens: 0,
    };
    fake.push(Reply::Stream {
        chunks: vec![Chunk::Text("ok".to_owned())],
        usage: Some(usage),
        delay_ms: 0,
    });
    let (r, _) = run(&fake, &ask("hi")).await;
    assert_eq!(r.expect("completion").usage, usage);
}

#[tokio::test]
async fn raw_wire_variants_are_understood() {
    // CRLF line ends, an unknown event kind, a tool block with no input JSON, usage totals
    // repeated in message_delta, and the model named by the provider.
    let events = [
        json!({ "type": "message_start", "message": { "model": "claude-x-2025", "usage": {
            "input_tokens": 7, "cache_read_input_tokens": 3, "output_tokens": 1 } } }),
        json!({ "type": "future_event", "index": 0 }),
        json!({ "type": "content_block_start", "index": 0,
            "content_block": { "type": "tool_use", "id": "toolu_9", "name": "now", "input": {} } }),
        json!({ "type": "content_block_stop", "index": 0 }),
        json!({ "type": "message_delta", "delta": { "stop_reason": "tool_use" },
            "usage": { "input_tokens": 7, "cache_read_input_tokens": 3, "output_tokens": 12 } }),
        json!({ "type": "message_stop" }),
    ];
    let fake = FakeLlm::start().await;
    fake.push(Reply::Raw {
        body: raw_body(&events).replace('\n', "\r\n"),
    });
    let (r, events) = run(&fake, &ask("time?")).await;
    let done = r.expect("completion");
    assert_eq!(
        events,
        [StreamEvent::ToolCall(call("toolu_9", "now", "{}"))]
    );
    assert_eq!(done.model, "claude-x-2025");
    let u = done.usage;
    assert_eq!(
        (u.input_tokens, u.cache_read_tokens, u.output_tokens),
        (10, 3, 12)
    );
}

#[tokio::test]
async fn rate_limit_and_overload_are_retryable_with_retry_after() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        Reply::Status {
            status: 429,
            retry_after: Some(7),
            body: r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#
                .to_owned(),
        },
        Reply::status(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error"}}"#,
        ),
        Reply::text("fine now"),
    ]);
    let (message, retry_after) = retryable(run(&fake, &ask("a")).await.0);
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    assert!(
        message.contains("429") && message.contains("slow down"),
        "{message}"
    );
    let (message, retry_after) = retryable(run(&fake, &ask("b")).await.0);
    assert!(
        message.contains("529") && message.contains("overloaded"),
        "{message}"
    );
    assert_eq!(retry_after, None);
    assert_eq!(
        run(&fake, &ask("c")).await.0.expect("third").text,
        "fine now"
    );
}

#[tokio::test]
async fn bad_request_is_fatal() {
    let fake = FakeLlm::start().await;
    let body = r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: roles must alternate"}}"#;
    fake.push(Reply::status(400, body));
    let m = fatal(run(&fake, &ask("hi")).await.0);
    assert!(
        m.contains("400") && m.contains("roles must alternate"),
        "{m}"
    );
}

#[tokio::test]
async fn error_events_in_the_stream_are_classified() {
    let start = json!({ "type": "message_start", "message": { "model": "m", "usage": {} } });
    let error =
        |kind: &str| json!({ "type": "error", "error": { "type": kind, "message": "boom" } });
    let fake = FakeLlm::start().await;
    fake.push_all([
        raw(&[start.clone(), error("overloaded_error")]),
        raw(&[start, error("invalid_request_error")]),
    ]);
    let (message, _) = retryable(run(&fake, &ask("a")).await.0);
    assert!(
        message.contains("overloaded_error") && message.contains("boom"),
        "{message}"
    );
    let m = fatal(run(&fake, &ask("b")).await.0);
    assert!(m.contains("invalid_request_error"), "{m}");
}

#[tokio::test]
async fn cut_or_unfinished_streams_are_retryable() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Cut {
        chunks: vec![
            Chunk::Text("partial ".to_owned()),
            Chunk::Text("answ".to_owned()),
        ],
    });
    let (r, events) = run(&fake, &ask("hi")).await;
    let (message, _) = retryable(r);
    assert!(message.contains("stream broke"), "{message}");
    assert_eq!(deltas(&events).concat(), "partial answ");

    // A clean close after the stop reason but before message_stop is still not a whole answer.
    fake.push(raw(&[
        json!({ "type": "message_start", "message": { "model": "m" } }),
        json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "half" } }),
        json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn" } }),
    ]));
    let (message, _) = retryable(run(&fake, &ask("hi")).await.0);
    assert!(message.contains("ended early"), "{message}");
}

#[tokio::test]
async fn stall_is_retryable_and_cancel_returns_quickly() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Stall {
        chunks: vec![Chunk::Text("thinking".to_owned())],
        stall_ms: 2000,
    });
    let model = fake.anthropic_model("m");
    let started = Instant::now();
    let idle = Duration::from_millis(300);
    let (r, _) = run_with(&model, &ask("hi"), idle, &CancellationToken::new()).await;
    let (message, _) = retryable(r);
    assert!(message.contains("stream stalled"), "{message}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    fake.push(Reply::Stream {
        chunks: (0..20).map(|i| Chunk::Text(format!("w{i} "))).collect(),
        usage: None,
        delay_ms: 200,
    });
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.cancel();
    });
    let started = Instant::now();
    let (r, events) = run_with(&model, &ask("hi"), Duration::from_secs(5), &cancel).await;
    assert!(matches!(r, Err(LlmError::Cancelled)), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert!((1..20).contains(&deltas(&events).len()), "{events:?}");
}

#[tokio::test]
async fn api_key_and_version_headers_are_sent_and_a_missing_key_is_fatal() {
    let fake = FakeLlm::start().await;
    // PATH is set in every test environment, which spares mutating the process environment.
    let mut model = fake.anthropic_model("m");
    model.api_key_env = Some("PATH".to_owned());
    model.model = Some("claude-provider-id".to_owned());
    let cancel = CancellationToken::new();
    let idle = Duration::from_secs(5);
    run_with(&model, &ask("hi"), idle, &cancel)
        .await
        .0
        .expect("completion");
    let headers = fake.request_headers();
    let header = |name: &str| {
        headers[0]
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let path = std::env::var("PATH").expect("PATH");
    assert_eq!(header("x-api-key"), Some(path));
    assert_eq!(header("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert_eq!(fake.authorizations(), [None]);
    assert_eq!(fake.requests()[0]["model"], json!("claude-provider-id"));

    model.api_key_env = Some("SPOOL_TEST_SURELY_UNSET_KEY".to_owned());
    let m = fatal(run_with(&model, &ask("hi"), idle, &cancel).await.0);
    assert!(m.contains("SPOOL_TEST_SURELY_UNSET_KEY"), "{m}");
    assert_eq!(fake.request_count(), 1);
}
