//! A scripted model provider for tests: a real HTTP server on 127.0.0.1 that answers each request
//! with the next queued [`Reply`], in OpenAI's exact SSE chunk format on `/v1/chat/completions`
//! and in Anthropic's exact event format on `/v1/messages` (one queue serves both).

mod anthropic;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use spool::llm::Usage;
use spool::llm::config::{ModelConfig, Provider};

/// A fake provider; stops when dropped.
pub struct FakeLlm {
    /// `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
    shared: Arc<Mutex<Shared>>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    replies: VecDeque<Reply>,
    /// Conversations with scripts of their own: (marker, replies), see [`FakeLlm::route`].
    routes: Vec<(String, VecDeque<Reply>)>,
    requests: Vec<Value>,
    authorizations: Vec<Option<String>>,
    headers: Vec<HeaderMap>,
}

/// One scripted answer to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Streams these chunks (each becomes one or more SSE `data:` chunks), then usage, then [DONE].
    Stream {
        chunks: Vec<Chunk>,
        usage: Option<Usage>,
        /// Pause before each chunk.
        delay_ms: u64,
    },
    /// Answers with this status and body (and Retry-After if given), no stream.
    Status {
        status: u16,
        retry_after: Option<u64>,
        body: String,
    },
    /// Streams these chunks then drops the connection without [DONE].
    Cut { chunks: Vec<Chunk> },
    /// Sends these chunks then stalls (keeps the connection open, sends nothing) for `stall_ms`,
    /// then finishes normally.
    Stall { chunks: Vec<Chunk>, stall_ms: u64 },
    /// Sends this exact event-stream body, for wire-format edge cases.
    Raw { body: String },
}

/// One piece of a streamed answer.
#[derive(Clone, Debug)]
pub enum Chunk {
    Text(String),
    Reasoning(String),
    /// A tool call split across `parts` chunks of its arguments text.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
        parts: usize,
    },
}

impl Reply {
    /// Streams `text` one word per chunk (each keeping its trailing space), with usage.
    pub fn text(text: &str) -> Self {
        let chunks: Vec<Chunk> = text
            .split_inclusive(' ')
            .map(|w| Chunk::Text(w.to_owned()))
            .collect();
        let usage = Usage {
            input_tokens: 10,
            output_tokens: chunks.len() as u64,
            ..Usage::default()
        };
        Reply::Stream {
            chunks,
            usage: Some(usage),
            delay_ms: 0,
        }
    }

    /// Streams one tool call with its arguments split across 3 chunks, with usage.
    pub fn tool_call(id: &str, name: &str, arguments: &str) -> Self {
        Reply::Stream {
            chunks: vec![Chunk::ToolCall {
                id: id.to_owned(),
                name: name.to_owned(),
                arguments: arguments.to_owned(),
                parts: 3,
            }],
            usage: Some(Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            }),
            delay_ms: 0,
        }
    }

    /// Answers with `status` and `body`, no Retry-After.
    pub fn status(status: u16, body: &str) -> Self {
        Reply::Status {
            status,
            retry_after: None,
            body: body.to_owned(),
        }
    }
}

impl FakeLlm {
    /// Starts the server on a free port.
    pub async fn start() -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/messages", post(anthropic::messages))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake llm");
        let addr = listener.local_addr().expect("fake llm address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake llm server");
        });
        FakeLlm {
            base_url: format!("http://{addr}/v1"),
            shared,
            server,
        }
    }

    /// Queues a reply; each request pops the next one; when empty, replies with a default Stream of Text("ok").
    pub fn push(&self, reply: Reply) {
        self.lock().replies.push_back(reply);
    }

    /// Gives the conversation whose first user message contains `marker` its own replies, in
    /// order, so concurrent conversations (subagents) each get their script whatever the
    /// interleaving. Requests of other conversations use the shared queue.
    pub fn route(&self, marker: &str, replies: impl IntoIterator<Item = Reply>) {
        self.lock()
            .routes
            .push((marker.to_owned(), replies.into_iter().collect()));
    }

    /// Queues several replies, in order.
    pub fn push_all(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().replies.extend(replies);
    }

    /// Every request body received, in order (parsed JSON; `null` when not JSON).
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    /// How many requests arrived.
    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// The `Authorization` header of every request, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.lock().authorizations.clone()
    }

    /// Every request's headers, in order.
    pub fn request_headers(&self) -> Vec<HeaderMap> {
        self.lock().headers.clone()
    }

    /// Like [`FakeLlm::model`] but with provider anthropic, so calls go to `/v1/messages`.
    pub fn anthropic_model(&self, name: &str) -> ModelConfig {
        ModelConfig {
            provider: Provider::Anthropic,
            ..self.model(name)
        }
    }

    /// A ModelConfig pointing at this server (provider openai, name `name`, context_window 8000).
    pub fn model(&self, name: &str) -> ModelConfig {
        ModelConfig {
            name: name.to_owned(),
            provider: Provider::OpenAi,
            base_url: Some(self.base_url.clone()),
            api_key_env: None,
            model: None,
            context_window: 8000,
            vision: false,
            input_price_per_mtok: 0.0,
            output_price_per_mtok: 0.0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("fake llm state")
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn chat(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (model, reply) = take(&shared, headers, &body);
    let steps = match reply {
        Reply::Status {
            status,
            retry_after,
            body,
        } => return status_response(status, retry_after, body),
        Reply::Raw { body } => vec![Step::Data(body)],
        Reply::Stream {
            chunks,
            usage,
            delay_ms,
        } => {
            let mut steps = chunk_steps(&model, &chunks, delay_ms);
            steps.extend(finish_steps(&model, &chunks, usage));
            steps
        }
        Reply::Cut { chunks } => {
            let mut steps = chunk_steps(&model, &chunks, 0);
            // The pause lets hyper flush what was sent; aborting at once would discard it.
            steps.push(Step::Sleep(50));
            steps.push(Step::Abort);
            steps
        }
        Reply::Stall { chunks, stall_ms } => {
            let mut steps = chunk_steps(&model, &chunks, 0);
            steps.push(Step::Sleep(stall_ms));
            steps.extend(finish_steps(&model, &chunks, None));
            steps
        }
    };
    stream_response(steps)
}

/// Records a request and pops its reply; returns the requested model (or `fake`) and the reply.
fn take(shared: &Mutex<Shared>, headers: HeaderMap, body: &[u8]) -> (String, Reply) {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("fake").to_owned();
    let mut s = shared.lock().expect("fake llm state");
    s.requests.push(request.clone());
    let auth = headers.get(header::AUTHORIZATION);
    s.authorizations
        .push(auth.and_then(|v| v.to_str().ok()).map(str::to_owned));
    s.headers.push(headers);
    let first_user = request["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
        .map(|m| m["content"].to_string())
        .unwrap_or_default();
    let routed = s
        .routes
        .iter_mut()
        .find(|(marker, _)| first_user.contains(marker.as_str()))
        .map(|(_, replies)| replies.pop_front().unwrap_or_else(|| Reply::text("ok")));
    let reply = routed
        .or_else(|| s.replies.pop_front())
        .unwrap_or_else(|| Reply::text("ok"));
    (model, reply)
}

/// A plain (non-stream) answer with `status`, `body` and Retry-After if given.
fn status_response(status: u16, retry_after: Option<u64>, body: String) -> Response {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(status).expect("status code"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(s) = retry_after {
        r = r.header(header::RETRY_AFTER, s.to_string());
    }
    r.body(Body::from(body)).expect("status response")
}

fn stream_response(steps: Vec<Step>) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body_of(steps))
        .expect("stream response")
}

/// What the response body does next.
enum Step {
    Data(String),
    Sleep(u64),
    /// Fails the body, which makes the server drop the connection mid-response.
    Abort,
}

fn body_of(steps: Vec<Step>) -> Body {
    let stream = futures::stream::unfold(steps.into_iter(), |mut steps| async move {
        loop {
            match steps.next()? {
                Step::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Step::Data(s) => return Some((Ok(Bytes::from(s)), steps)),
                Step::Abort => return Some((Err(std::io::Error::other("cut")), steps)),
            }
        }
    });
    Body::from_stream(stream)
}

/// One SSE event, written in two halves so clients must handle lines split across reads.
fn event(steps: &mut Vec<Step>, data: &Value) {
    halves(steps, &format!("data: {data}\n\n"));
}

/// `text` as two body writes, split mid-way on a char boundary.
fn halves(steps: &mut Vec<Step>, text: &str) {
    let mid = (0..=text.len() / 2)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    steps.push(Step::Data(text[..mid].to_owned()));
    steps.push(Step::Data(text[mid..].to_owned()));
}

fn frame(model: &str, delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
    })
}

/// The opening role chunk (as OpenAI sends it) and one or more chunks per [`Chunk`].
fn chunk_steps(model: &str, chunks: &[Chunk], delay_ms: u64) -> Vec<Step> {
    let mut steps = Vec::new();
    let opening = json!({ "role": "assistant", "content": "", "refusal": null });
    event(&mut steps, &frame(model, opening, None));
    let mut tool_index = 0;
    for chunk in chunks {
        if delay_ms > 0 {
            steps.push(Step::Sleep(delay_ms));
        }
        match chunk {
            Chunk::Text(t) => event(&mut steps, &frame(model, json!({ "content": t }), None)),
            Chunk::Reasoning(r) => {
                let delta = json!({ "reasoning_content": r });
                event(&mut steps, &frame(model, delta, None));
            }
            Chunk::ToolCall {
                id,
                name,
                arguments,
                parts,
            } => {
                let head = json!({ "tool_calls": [{
                    "index": tool_index, "id": id, "type": "function",
                    "function": { "name": name, "arguments": "" },
                }]});
                event(&mut steps, &frame(model, head, None));
                for piece in split(arguments, *parts) {
                    let delta = json!({ "tool_calls": [{
                        "index": tool_index, "function": { "arguments": piece },
                    }]});
                    event(&mut steps, &frame(model, delta, None));
                }
                tool_index += 1;
            }
        }
    }
    steps
}

/// The finish chunk, the usage chunk (when given) and `[DONE]`.
fn finish_steps(model: &str, chunks: &[Chunk], usage: Option<Usage>) -> Vec<Step> {
    let mut steps = Vec::new();
    let calls = chunks.iter().any(|c| matches!(c, Chunk::ToolCall { .. }));
    let reason = if calls { "tool_calls" } else { "stop" };
    event(&mut steps, &frame(model, json!({}), Some(reason)));
    if let Some(u) = usage {
        let usage = json!({
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens + u.output_tokens,
            "prompt_tokens_details": { "cached_tokens": u.cache_read_tokens, "audio_tokens": 0 },
            "completion_tokens_details": { "reasoning_tokens": u.reasoning_tokens, "audio_tokens": 0 },
        });
        let chunk = json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [],
            "usage": usage,
        });
        event(&mut steps, &chunk);
    }
    steps.push(Step::Data("data: [DONE]\n\n".to_owned()));
    steps
}

/// `s` cut into `parts` pieces of roughly equal length (on char boundaries).
fn split(s: &str, parts: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let size = chars.len().div_ceil(parts.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}
