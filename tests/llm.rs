//! The LLM client against a scripted OpenAI-compatible server, the offline mock model, and model
//! configuration. No database needed.

mod common;

use std::time::{Duration, Instant};

use common::fake_llm::{Chunk, FakeLlm, Reply};
use serde_json::json;
use spool::llm::config::{ModelConfig, Models, Provider};
use spool::llm::openai::parse_retry_after;
use spool::llm::sse::SseParser;
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
        media: vec![],
    }
}

fn tool(name: &str) -> ToolDef {
    ToolDef {
        name: name.to_owned(),
        description: format!("the {name} tool"),
        parameters: json!({ "type": "object", "properties": { "path": { "type": "string" } } }),
    }
}

fn request(messages: Vec<ChatMessage>, tools: Vec<ToolDef>) -> ChatRequest {
    ChatRequest {
        model: String::new(),
        messages,
        tools,
        max_tokens: None,
    }
}

fn ask(text: &str) -> ChatRequest {
    request(vec![msg(Role::User, text)], Vec::new())
}

/// Streams one call and returns its result and every event it reported.
async fn run(
    client: &LlmClient,
    model: &ModelConfig,
    req: &ChatRequest,
    cancel: &CancellationToken,
) -> (Result<Completion, LlmError>, Vec<StreamEvent>) {
    let mut events = Vec::new();
    let mut on_event = |e: StreamEvent| events.push(e);
    let result = client.stream(model, req, cancel, &mut on_event).await;
    (result, events)
}

async fn run_fake(
    fake: &FakeLlm,
    req: &ChatRequest,
) -> (Result<Completion, LlmError>, Vec<StreamEvent>) {
    let client = client(Duration::from_secs(5));
    run(
        &client,
        &fake.model("fake-model"),
        req,
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

fn tool_events(events: &[StreamEvent]) -> Vec<ToolCall> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCall(c) => Some(c.clone()),
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

#[tokio::test]
async fn text_streams_as_deltas() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::text("Hello there, how are you today?"));
    let (r, events) = run_fake(&fake, &ask("hi")).await;
    let done = r.expect("completion");
    let deltas = deltas(&events);
    assert!(deltas.len() >= 2, "{deltas:?}");
    assert_eq!(deltas.concat(), done.text);
    assert_eq!(done.text, "Hello there, how are you today?");
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    assert_eq!(done.model, "fake-model");
    assert!(done.tool_calls.is_empty());
}

#[tokio::test]
async fn tool_calls_assemble_from_split_chunks() {
    let fake = FakeLlm::start().await;
    let args = r#"{"path": "src/main.rs", "limit": 40}"#;
    fake.push(Reply::Stream {
        chunks: vec![
            Chunk::Reasoning("I should read it.".to_owned()),
            Chunk::Text("Let me look.".to_owned()),
            Chunk::ToolCall {
                id: "call_abc".to_owned(),
                name: "read_file".to_owned(),
                arguments: args.to_owned(),
                parts: 3,
            },
            Chunk::ToolCall {
                id: "call_def".to_owned(),
                name: "list_dir".to_owned(),
                arguments: r#"{"path": "."}"#.to_owned(),
                parts: 3,
            },
        ],
        usage: None,
        delay_ms: 0,
    });
    let (r, events) = run_fake(&fake, &ask("read main")).await;
    let done = r.expect("completion");
    let want = vec![
        ToolCall {
            id: "call_abc".to_owned(),
            name: "read_file".to_owned(),
            arguments: args.to_owned(),
        },
        ToolCall {
            id: "call_def".to_owned(),
            name: "list_dir".to_owned(),
            arguments: r#"{"path": "."}"#.to_owned(),
        },
    ];
    assert_eq!(tool_events(&events), want);
    assert_eq!(done.tool_calls, want);
    assert_eq!(done.text, "Let me look.");
    assert_eq!(done.reasoning, "I should read it.");
    assert!(events.contains(&StreamEvent::ReasoningDelta("I should read it.".to_owned())));
    assert_eq!(done.finish_reason.as_deref(), Some("tool_calls"));
}

#[tokio::test]
async fn usage_with_cached_tokens_is_parsed() {
    let fake = FakeLlm::start().await;
    let usage = Usage {
        input_tokens: 1200,
        output_tokens: 34,
        cache_read_tokens: 1024,
        cache_write_tokens: 0,
        reasoning_tokens: 8,
    };
    fake.push(Reply::Stream {
        chunks: vec![Chunk::Text("ok".to_owned())],
        usage: Some(usage),
        delay_ms: 0,
    });
    let (r, _) = run_fake(&fake, &ask("hi")).await;
    assert_eq!(r.expect("completion").usage, usage);
}

#[tokio::test]
async fn raw_wire_variants_are_understood() {
    // CRLF line ends, comments, `reasoning` (not `_content`), DeepSeek's cache field, and a
    // server that closes after finish_reason without `[DONE]`.
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| json!({ "model": "deepseek-chat", "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] });
    let usage = json!({ "model": "deepseek-chat", "choices": [], "usage": {
        "prompt_tokens": 50, "completion_tokens": 7, "prompt_cache_hit_tokens": 32 } });
    let body = format!(
        ": keep-alive\r\n\r\ndata: {}\r\n\r\ndata: {}\r\n\r\ndata: {}\r\n\r\ndata: {}\r\n\r\n",
        chunk(json!({ "reasoning": "hmm" }), json!(null)),
        chunk(json!({ "content": "yes" }), json!(null)),
        chunk(json!({}), json!("stop")),
        usage,
    );
    let fake = FakeLlm::start().await;
    fake.push(Reply::Raw { body });
    let (r, events) = run_fake(&fake, &ask("hi")).await;
    let done = r.expect("completion");
    assert_eq!(done.text, "yes");
    assert_eq!(done.reasoning, "hmm");
    assert_eq!(events[0], StreamEvent::ReasoningDelta("hmm".to_owned()));
    assert_eq!(done.model, "deepseek-chat");
    assert_eq!(
        (
            done.usage.input_tokens,
            done.usage.output_tokens,
            done.usage.cache_read_tokens
        ),
        (50, 7, 32)
    );
}

#[tokio::test]
async fn rate_limit_is_retryable_with_retry_after() {
    let fake = FakeLlm::start().await;
    fake.push_all([
        Reply::Status {
            status: 429,
            retry_after: Some(2),
            body: r#"{"error":{"message":"Rate limit reached"}}"#.to_owned(),
        },
        Reply::text("fine now"),
    ]);
    let (r, _) = run_fake(&fake, &ask("hi")).await;
    let (message, retry_after) = retryable(r);
    assert_eq!(retry_after, Some(Duration::from_secs(2)));
    assert!(
        message.contains("429") && message.contains("Rate limit reached"),
        "{message}"
    );
    let (r, _) = run_fake(&fake, &ask("hi")).await;
    assert_eq!(r.expect("second attempt").text, "fine now");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn server_errors_are_retryable_and_client_errors_fatal() {
    let fake = FakeLlm::start().await;
    let long = "x".repeat(2000);
    fake.push_all([
        Reply::status(503, "overloaded"),
        Reply::status(400, r#"{"error":{"message":"Unknown parameter: 'foo'"}}"#),
        Reply::status(401, &long),
    ]);
    let (message, retry_after) = retryable(run_fake(&fake, &ask("a")).await.0);
    assert!(
        message.contains("503") && message.contains("overloaded"),
        "{message}"
    );
    assert_eq!(retry_after, None);
    match run_fake(&fake, &ask("b")).await.0 {
        Err(LlmError::Fatal(m)) => {
            assert!(m.contains("400") && m.contains("Unknown parameter"), "{m}")
        }
        other => panic!("expected Fatal, got {other:?}"),
    }
    match run_fake(&fake, &ask("c")).await.0 {
        Err(LlmError::Fatal(m)) => {
            assert!(
                m.contains(&"x".repeat(500)) && !m.contains(&"x".repeat(501)),
                "{m}"
            )
        }
        other => panic!("expected Fatal, got {other:?}"),
    }
}

#[tokio::test]
async fn cut_stream_is_retryable() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Cut {
        chunks: vec![
            Chunk::Text("partial ".to_owned()),
            Chunk::Text("answ".to_owned()),
        ],
    });
    let (r, events) = run_fake(&fake, &ask("hi")).await;
    let (message, _) = retryable(r);
    assert!(message.contains("stream broke"), "{message}");
    assert_eq!(deltas(&events).concat(), "partial answ");
}

#[tokio::test]
async fn stream_ending_without_finish_is_retryable() {
    let body = format!(
        "data: {}\n\n",
        json!({ "model": "m", "choices": [{ "index": 0, "delta": { "content": "half" }, "finish_reason": null }] })
    );
    let fake = FakeLlm::start().await;
    fake.push(Reply::Raw { body });
    let (message, _) = retryable(run_fake(&fake, &ask("hi")).await.0);
    assert!(message.contains("ended early"), "{message}");
}

#[tokio::test]
async fn stall_longer_than_idle_timeout_is_retryable() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Stall {
        chunks: vec![Chunk::Text("thinking".to_owned())],
        stall_ms: 2000,
    });
    let client = client(Duration::from_millis(300));
    let started = Instant::now();
    let (r, _) = run(
        &client,
        &fake.model("m"),
        &ask("hi"),
        &CancellationToken::new(),
    )
    .await;
    let (message, _) = retryable(r);
    assert!(message.contains("stalled"), "{message}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn pause_shorter_than_idle_timeout_is_fine() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Stall {
        chunks: vec![Chunk::Text("thinking".to_owned())],
        stall_ms: 200,
    });
    let client = client(Duration::from_secs(2));
    let (r, _) = run(
        &client,
        &fake.model("m"),
        &ask("hi"),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(r.expect("completion").text, "thinking");
}

#[tokio::test]
async fn cancel_during_slow_stream_returns_quickly() {
    let fake = FakeLlm::start().await;
    fake.push(Reply::Stream {
        chunks: (0..20).map(|i| Chunk::Text(format!("w{i} "))).collect(),
        usage: None,
        delay_ms: 200,
    });
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let cancelled_at = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.cancel();
        Instant::now()
    });
    let client = client(Duration::from_secs(5));
    let (r, events) = run(&client, &fake.model("m"), &ask("hi"), &cancel).await;
    let returned = Instant::now();
    assert!(matches!(r, Err(LlmError::Cancelled)), "{r:?}");
    let cancelled_at = cancelled_at.await.expect("cancel task");
    assert!(returned - cancelled_at < Duration::from_millis(100));
    let n = deltas(&events).len();
    assert!((1..20).contains(&n), "{n} deltas before cancel");
}

#[tokio::test]
async fn request_body_has_openai_shape() {
    let fake = FakeLlm::start().await;
    let mut assistant = msg(Role::Assistant, "");
    assistant.content = None;
    assistant.tool_calls = vec![ToolCall {
        id: "call_1".to_owned(),
        name: "list_dir".to_owned(),
        arguments: r#"{"path":"."}"#.to_owned(),
    }];
    let mut result = msg(Role::Tool, "a.txt\nb.txt");
    result.tool_call_id = Some("call_1".to_owned());
    let mut req = request(
        vec![
            msg(Role::System, "be brief"),
            msg(Role::User, "list"),
            assistant,
            result,
        ],
        vec![tool("zeta"), tool("alpha")],
    );
    req.max_tokens = Some(100);
    run_fake(&fake, &req).await.0.expect("first");
    run_fake(&fake, &ask("no tools")).await.0.expect("second");

    let bodies = fake.requests();
    let b = &bodies[0];
    assert_eq!(b["stream"], json!(true));
    assert_eq!(b["stream_options"], json!({ "include_usage": true }));
    assert_eq!(b["model"], json!("fake-model"));
    assert_eq!(b["max_tokens"], json!(100));
    let names: Vec<&str> = b["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["zeta", "alpha"]);
    assert_eq!(b["tools"][0]["type"], json!("function"));
    assert_eq!(
        b["tools"][0]["function"]["parameters"]["type"],
        json!("object")
    );
    let messages = b["messages"].as_array().expect("messages");
    assert_eq!(
        messages[0],
        json!({ "role": "system", "content": "be brief" })
    );
    assert_eq!(
        messages[2],
        json!({ "role": "assistant", "content": null, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": { "name": "list_dir", "arguments": "{\"path\":\".\"}" } }] })
    );
    assert_eq!(
        messages[3],
        json!({ "role": "tool", "tool_call_id": "call_1", "content": "a.txt\nb.txt" })
    );
    assert!(bodies[1].get("tools").is_none(), "{}", bodies[1]);
    assert!(bodies[1].get("max_tokens").is_none());
    assert_eq!(fake.authorizations(), [None, None]);
}

#[tokio::test]
async fn api_key_is_sent_as_bearer_and_a_missing_one_is_fatal() {
    let fake = FakeLlm::start().await;
    // PATH is set in every test environment, which spares mutating the process environment.
    let mut model = fake.model("m");
    model.api_key_env = Some("PATH".to_owned());
    model.model = Some("provider-id".to_owned());
    let client = client(Duration::from_secs(5));
    let (r, _) = run(&client, &model, &ask("hi"), &CancellationToken::new()).await;
    r.expect("completion");
    let path = std::env::var("PATH").expect("PATH");
    assert_eq!(fake.authorizations(), [Some(format!("Bearer {path}"))]);
    assert_eq!(fake.requests()[0]["model"], json!("provider-id"));

    model.api_key_env = Some("SPOOL_TEST_SURELY_UNSET_KEY".to_owned());
    let (r, _) = run(&client, &model, &ask("hi"), &CancellationToken::new()).await;
    assert!(
        matches!(&r, Err(LlmError::Fatal(m)) if m.contains("SPOOL_TEST_SURELY_UNSET_KEY")),
        "{r:?}"
    );
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut model = ModelConfig::mock();
    model.provider = Provider::OpenAi;
    model.base_url = Some(format!("http://{addr}/v1"));
    let client = client(Duration::from_secs(5));
    let (r, _) = run(&client, &model, &ask("hi"), &CancellationToken::new()).await;
    let (message, _) = retryable(r);
    assert!(message.contains("request failed"), "{message}");
}

#[test]
fn sse_parser_handles_splits_crlf_and_comments() {
    let wire = "data: a\r\n\r\n: comment\n\nevent: x\r\ndata: b\r\ndata:c\r\n\r\nid: 1\rdata: [DONE]\r\rdata: tail\n";
    // Byte by byte: every split point, including between \r and \n.
    let mut p = SseParser::new();
    let mut got: Vec<String> = wire.bytes().flat_map(|b| p.feed(&[b])).collect();
    got.extend(p.finish());
    assert_eq!(got, ["a", "b\nc", "[DONE]", "tail"]);
    // All at once gives the same.
    let mut p = SseParser::new();
    let mut once = p.feed(wire.as_bytes());
    once.extend(p.finish());
    assert_eq!(once, got);
    // A line cut off by the end of the stream is dropped.
    let mut p = SseParser::new();
    assert!(p.feed(b"data: {\"cho").is_empty());
    assert_eq!(p.finish(), None);
}

#[test]
fn retry_after_parses_seconds_and_dates_capped() {
    let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:27:30 GMT")
        .expect("date")
        .to_utc();
    let secs = |v| parse_retry_after(v, now).map(|d| d.as_secs());
    assert_eq!(secs("2"), Some(2));
    assert_eq!(secs("Wed, 21 Oct 2015 07:28:00 GMT"), Some(30));
    assert_eq!(secs("Wed, 21 Oct 2015 07:00:00 GMT"), Some(0));
    assert_eq!(secs("86400"), Some(300));
    assert_eq!(secs("soon"), None);
}

#[tokio::test]
async fn mock_calls_list_dir_when_asked_to_list_files() {
    let client = client(Duration::from_secs(5));
    let req = request(
        vec![msg(Role::User, "Please LIST FILES here")],
        vec![tool("list_dir"), tool("read_file")],
    );
    let (r, events) = run(
        &client,
        &ModelConfig::mock(),
        &req,
        &CancellationToken::new(),
    )
    .await;
    let done = r.expect("completion");
    let call = ToolCall {
        id: "mock_call_1".to_owned(),
        name: "list_dir".to_owned(),
        arguments: r#"{"path": "."}"#.to_owned(),
    };
    assert_eq!(events, [StreamEvent::ToolCall(call.clone())]);
    assert_eq!(done.tool_calls, [call]);
    assert_eq!(done.text, "");
    assert_eq!(done.model, "mock");

    // Without list_dir on offer it just answers.
    let (r, _) = run(
        &client,
        &ModelConfig::mock(),
        &ask("please list files"),
        &CancellationToken::new(),
    )
    .await;
    assert!(r.expect("completion").tool_calls.is_empty());
}

#[tokio::test]
async fn mock_streams_a_reply_that_echoes_the_prompt() {
    let client = client(Duration::from_secs(5));
    let req = request(
        vec![msg(Role::System, "sys"), msg(Role::User, "what is spool?")],
        Vec::new(),
    );
    let (r, events) = run(
        &client,
        &ModelConfig::mock(),
        &req,
        &CancellationToken::new(),
    )
    .await;
    let done = r.expect("completion");
    let deltas = deltas(&events);
    assert!(deltas.len() >= 3, "{deltas:?}");
    assert_eq!(deltas.concat(), done.text);
    assert!(
        done.text.contains("You said: \"what is spool?\""),
        "{}",
        done.text
    );
    assert_eq!(done.text, spool::llm::mock::plain_reply("what is spool?"));
    assert_eq!(done.usage.output_tokens, deltas.len() as u64);
    assert!(done.usage.input_tokens > 0);
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn mock_summarises_a_tool_result_and_honours_cancel() {
    let client = client(Duration::from_secs(5));
    let mut result = msg(Role::Tool, "Cargo.toml\nsrc/\nREADME.md");
    result.tool_call_id = Some("mock_call_1".to_owned());
    let req = request(
        vec![msg(Role::User, "list files"), result],
        vec![tool("list_dir")],
    );
    let (r, _) = run(
        &client,
        &ModelConfig::mock(),
        &req,
        &CancellationToken::new(),
    )
    .await;
    let text = r.expect("completion").text;
    assert!(text.contains("Cargo.toml src/ README.md"), "{text}");

    let cancel = CancellationToken::new();
    cancel.cancel();
    let (r, events) = run(&client, &ModelConfig::mock(), &ask("hello"), &cancel).await;
    assert!(matches!(r, Err(LlmError::Cancelled)), "{r:?}");
    assert!(events.is_empty());
}

const EXAMPLE: &str = r#"
default_model = "gpt-4o-mini"
[[models]]
name = "gpt-4o-mini"
provider = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
context_window = 128000
vision = true
input_price_per_mtok = 0.15
output_price_per_mtok = 0.60
"#;

fn models(text: &str) -> Result<Models, String> {
    Models::from_toml(&toml::from_str(text).expect("toml"))
}

#[test]
fn models_default_to_mock_only() {
    let m = models("listen = \"127.0.0.1:8080\"").expect("models");
    assert!(m.is_mock_only());
    assert_eq!(m.names(), ["mock"]);
    assert_eq!(m.default_model(), &ModelConfig::mock());
    assert_eq!(m.default_model().context_window, 32_000);
}

#[test]
fn models_read_the_example_config() {
    let m = models(EXAMPLE).expect("models");
    assert!(!m.is_mock_only());
    assert_eq!(m.names(), ["gpt-4o-mini"]);
    let d = m.default_model();
    assert_eq!(d.provider, Provider::OpenAi);
    assert_eq!(d.base_url.as_deref(), Some("https://api.openai.com/v1"));
    assert_eq!(d.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    assert_eq!(d.wire_model(), "gpt-4o-mini");
    assert!(d.vision);
    assert_eq!(m.get("gpt-4o-mini"), Some(d));
    assert_eq!(m.get("mock"), None);
    let usage = Usage {
        input_tokens: 1_000_000,
        output_tokens: 500_000,
        ..Usage::default()
    };
    assert!((d.cost(&usage) - 0.45).abs() < 1e-9, "{}", d.cost(&usage));
}

#[test]
fn models_pick_the_first_without_a_default() {
    let m = models(
        "[[models]]\nname = \"a\"\nprovider = \"mock\"\n[[models]]\nname = \"b\"\nprovider = \"openai\"\nmodel = \"b-2025\"\n",
    )
    .expect("models");
    assert_eq!(m.default_model().name, "a");
    assert_eq!(
        m.get("b").map(|b| (b.wire_model(), b.context_window)),
        Some(("b-2025", 128_000))
    );
}

#[test]
fn models_reject_bad_configs() {
    let unknown = models(&EXAMPLE.replace(
        "default_model = \"gpt-4o-mini\"",
        "default_model = \"gpt-5\"",
    ));
    assert!(
        unknown.as_ref().is_err_and(|e| e.contains("gpt-5")),
        "{unknown:?}"
    );
    let twice = format!("{EXAMPLE}\n[[models]]\nname = \"gpt-4o-mini\"\nprovider = \"mock\"\n");
    assert!(models(&twice).is_err());
    let typo = EXAMPLE.replace("vision", "visoin");
    assert!(models(&typo).is_err_and(|e| e.contains("visoin")));
    let provider = EXAMPLE.replace("\"openai\"", "\"gemini\"");
    assert!(models(&provider).is_err());
    assert!(models("default_model = \"gpt-4o\"").is_err());
}
