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

fn msg(role: Role, content: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: Some(content.to_owned()),
        tool_calls: Vec::new(),
        tool_call_id: None,
        media: vec![],
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

/// A streamed tool call whose arguments arrive in `parts` pieces.
fn tool_chunk(c: ToolCall, parts: usize) -> Chunk {
    Chunk::ToolCall {
        id: c.id,
        name: c.name,
        arguments: c.arguments,
        parts,
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

/// A call's result and every event it reported.
type Outcome = (Result<Completion, LlmError>, Vec<StreamEvent>);

/// Streams one call with `model`; a stream silent for `idle` counts as stalled.
async fn run_with(
    model: &ModelConfig,
    req: &ChatRequest,
    idle: Duration,
    cancel: &CancellationToken,
) -> Outcome {
    let mut events = Vec::new();
    let mut on_event = |e: StreamEvent| events.push(e);
    let http = reqwest::Client::builder().no_proxy().build();
    let client = LlmClient::new(http.expect("http client"), idle);
    let result = client.stream(model, req, cancel, &mut on_event).await;
    (result, events)
}

async fn run(fake: &FakeLlm, req: &ChatRequest) -> Outcome {
    let (model, cancel) = (
        fake.anthropic_model("claude-fake"),
        CancellationToken::new(),
    );
    run_with(&model, req, Duration::from_secs(5), &cancel).await
}

/// Asserts that `message` mentions every one of `parts`.
fn mentions(message: &str, parts: &[&str]) {
    assert!(parts.iter().all(|p| message.contains(p)), "{message}");
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

/// A reply of exactly these events, each named by its `type`, lines ending in `eol`.
fn raw(events: &[Value], eol: &str) -> Reply {
    let kind = |e: &Value| e["type"].as_str().unwrap_or("").to_owned();
    let body = events
        .iter()
        .map(|e| format!("event: {}{eol}data: {e}{eol}{eol}", kind(e)))
        .collect();
    Reply::Raw { body }
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
            tool_chunk(call("toolu_abc", "read_file", args), 4),
            // No parameters: the input JSON streams as nothing at all.
            tool_chunk(call("toolu_def", "list_dir", ""), 1),
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
    let mut expected = vec![
        StreamEvent::ReasoningDelta("I should ".to_owned()),
        StreamEvent::ReasoningDelta("read it.".to_owned()),
        StreamEvent::TextDelta("Let me look.".to_owned()),
    ];
    expected.extend(want.iter().cloned().map(StreamEvent::ToolCall));
    assert_eq!(events, expected);
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
    let schema = json!({ "type": "object", "properties": { "path": { "type": "string" } } });
    let tool = ToolDef {
        name: "list_dir".to_owned(),
        description: "the list_dir tool".to_owned(),
        parameters: schema.clone(),
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
    let text = |t: &str| json!({ "type": "text", "text": t });
    let messages = json!([
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
    ]);
    let tools =
        json!([{ "name": "list_dir", "description": "the list_dir tool", "input_schema": schema }]);
    assert_eq!(
        bodies[0],
        json!({ "model": "claude-fake", "max_tokens": 100, "stream": true,
            "system": "be brief\n\nanswer in English", "messages": messages, "tools": tools })
    );
    // Without tools or system text neither key is sent, and max_tokens takes its default.
    assert_eq!(
        bodies[1],
        json!({ "model": "claude-fake", "max_tokens": 4096, "stream": true,
            "messages": [{ "role": "user", "content": [text("no tools")] }] })
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
    fake.push(raw(&events, "\r\n"));
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
    mentions(&message, &["429", "slow down"]);
    let (message, retry_after) = retryable(run(&fake, &ask("b")).await.0);
    mentions(&message, &["529", "overloaded"]);
    assert_eq!(retry_after, None);
    let done = run(&fake, &ask("c")).await.0.expect("third");
    assert_eq!(done.text, "fine now");
}

#[tokio::test]
async fn bad_request_is_fatal() {
    let fake = FakeLlm::start().await;
    let body = r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: roles must alternate"}}"#;
    fake.push(Reply::status(400, body));
    mentions(
        &fatal(run(&fake, &ask("hi")).await.0),
        &["400", "roles must alternate"],
    );
}

#[tokio::test]
async fn error_events_in_the_stream_are_classified() {
    let start = json!({ "type": "message_start", "message": { "model": "m", "usage": {} } });
    let error =
        |kind: &str| json!({ "type": "error", "error": { "type": kind, "message": "boom" } });
    let fake = FakeLlm::start().await;
    fake.push_all([
        raw(&[start.clone(), error("overloaded_error")], "\n"),
        raw(&[start, error("invalid_request_error")], "\n"),
    ]);
    let (message, _) = retryable(run(&fake, &ask("a")).await.0);
    mentions(&message, &["overloaded_error", "boom"]);
    mentions(
        &fatal(run(&fake, &ask("b")).await.0),
        &["invalid_request_error"],
    );
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
    mentions(&retryable(r).0, &["stream broke"]);
    assert_eq!(deltas(&events).concat(), "partial answ");

    // A clean close after the stop reason but before message_stop is still not a whole answer.
    let events = [
        json!({ "type": "message_start", "message": { "model": "m" } }),
        json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "half" } }),
        json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn" } }),
    ];
    fake.push(raw(&events, "\n"));
    mentions(
        &retryable(run(&fake, &ask("hi")).await.0).0,
        &["ended early"],
    );
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
    mentions(&retryable(r).0, &["stream stalled"]);
    assert!(started.elapsed() < Duration::from_millis(1500));

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
    assert!(started.elapsed() < Duration::from_millis(1000));
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
    let (r, _) = run_with(&model, &ask("hi"), idle, &cancel).await;
    r.expect("completion");
    let headers = fake.request_headers();
    let header = |name: &str| headers[0].get(name).map(|v| v.as_bytes().to_vec());
    let path = std::env::var("PATH").expect("PATH");
    assert_eq!(header("x-api-key"), Some(path.into_bytes()));
    assert_eq!(header("anthropic-version"), Some(b"2023-06-01".to_vec()));
    assert_eq!(header("content-type"), Some(b"application/json".to_vec()));
    assert_eq!(fake.authorizations(), [None]);
    assert_eq!(fake.requests()[0]["model"], json!("claude-provider-id"));

    model.api_key_env = Some("SPOOL_TEST_SURELY_UNSET_KEY".to_owned());
    let m = fatal(run_with(&model, &ask("hi"), idle, &cancel).await.0);
    mentions(&m, &["SPOOL_TEST_SURELY_UNSET_KEY"]);
    assert_eq!(fake.request_count(), 1);
}
