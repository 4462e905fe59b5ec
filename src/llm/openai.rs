//! OpenAI-compatible Chat Completions, streamed over SSE. One attempt per call; failures are
//! classified so the caller knows whether retrying the step can help.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::config::{ModelConfig, OPENAI_BASE_URL};
use super::sse::SseParser;
use super::types::{ChatRequest, Completion, LlmError, StreamEvent, ToolCall, Usage};
use request::request_body;

mod request;

/// Longest `Retry-After` honoured: a provider asking for more is treated as a plain backoff.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// How much of an error body goes into the error message.
const ERROR_BODY_CHARS: usize = 500;
/// How much of an error body is read at most; the rest is never needed.
const ERROR_BODY_BYTES: usize = 16 * 1024;

/// Streams one completion; see [`super::LlmClient::stream`].
pub(crate) async fn stream(
    http: &reqwest::Client,
    idle: Duration,
    model: &ModelConfig,
    req: &ChatRequest,
    cancel: &CancellationToken,
    on_event: &mut (dyn FnMut(StreamEvent) + Send),
) -> Result<Completion, LlmError> {
    let base = model.base_url.as_deref().unwrap_or(OPENAI_BASE_URL);
    let url = format!("{}/chat/completions", base.trim_end_matches('/'));
    let mut builder = http.post(url).json(&request_body(model, req));
    if let Some(key) = super::api_key(model)? {
        builder = builder.bearer_auth(key);
    }
    let resp = guarded(cancel, idle, "no response", builder.send())
        .await?
        .map_err(send_error)?;
    if !resp.status().is_success() {
        return Err(status_error(resp, idle, cancel).await);
    }
    let mut body = resp.bytes_stream();
    let mut sse = SseParser::new();
    let mut acc = Assembler::new(model.wire_model());
    loop {
        // Returning drops `body`, which closes the connection so the provider stops generating.
        let events = match guarded(cancel, idle, "no data", body.next()).await? {
            Some(Ok(bytes)) => sse.feed(&bytes),
            Some(Err(e)) => return Err(retryable(format!("stream broke: {}", chain(&e)))),
            None => {
                if let Some(data) = sse.finish()
                    && acc.handle(&data, on_event)?
                {
                    return Ok(acc.finish(on_event));
                }
                break;
            }
        };
        for data in events {
            if acc.handle(&data, on_event)? {
                return Ok(acc.finish(on_event));
            }
        }
    }
    // Some servers close without `[DONE]`; a finish_reason still means the answer is whole.
    if acc.finish_reason.is_some() {
        Ok(acc.finish(on_event))
    } else {
        Err(retryable("stream ended early".to_owned()))
    }
}

/// Awaits `fut` unless `cancel` fires or it takes longer than `idle`.
pub(super) async fn guarded<F: Future>(
    cancel: &CancellationToken,
    idle: Duration,
    what: &str,
    fut: F,
) -> Result<F::Output, LlmError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(LlmError::Cancelled),
        r = tokio::time::timeout(idle, fut) => {
            r.map_err(|_| retryable(format!("stream stalled: {what} for {}", secs(idle))))
        }
    }
}

pub(super) fn send_error(e: reqwest::Error) -> LlmError {
    if e.is_builder() {
        LlmError::Fatal(format!("invalid request: {}", chain(&e)))
    } else {
        retryable(format!("request failed: {}", chain(&e)))
    }
}

/// Classifies a non-2xx answer, quoting the start of its body.
pub(super) async fn status_error(
    resp: reqwest::Response,
    idle: Duration,
    cancel: &CancellationToken,
) -> LlmError {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
    let mut buf = Vec::new();
    let mut body = resp.bytes_stream();
    while buf.len() < ERROR_BODY_BYTES {
        match guarded(cancel, idle, "no data", body.next()).await {
            Err(LlmError::Cancelled) => return LlmError::Cancelled,
            Ok(Some(Ok(bytes))) => buf.extend_from_slice(&bytes),
            // The status already says what happened; a body we cannot read is no reason to hide it.
            _ => break,
        }
    }
    let text: String = String::from_utf8_lossy(&buf)
        .trim()
        .chars()
        .take(ERROR_BODY_CHARS)
        .collect();
    let message = format!("provider returned {status}: {text}");
    let transient = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT
    ) || status.is_server_error();
    if transient {
        LlmError::Retryable {
            message,
            retry_after,
        }
    } else {
        LlmError::Fatal(message)
    }
}

/// `Retry-After` as a wait, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    crate::net::parse_retry_after(v, now, MAX_RETRY_AFTER)
}

/// Builds the completion from stream chunks, reporting deltas as they come.
struct Assembler {
    text: String,
    reasoning: String,
    /// Tool calls still arriving, keyed by their `index`.
    partial: BTreeMap<u64, ToolCall>,
    tool_calls: Vec<ToolCall>,
    usage: Usage,
    finish_reason: Option<String>,
    model: String,
}

impl Assembler {
    fn new(model: &str) -> Self {
        Self {
            text: String::new(),
            reasoning: String::new(),
            partial: BTreeMap::new(),
            tool_calls: Vec::new(),
            usage: Usage::default(),
            finish_reason: None,
            model: model.to_owned(),
        }
    }

    /// Takes one event's data; true at `[DONE]`.
    fn handle(
        &mut self,
        data: &str,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
    ) -> Result<bool, LlmError> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            let start: String = data.chars().take(200).collect();
            retryable(format!("malformed stream chunk ({e}): {start}"))
        })?;
        if let Some(err) = chunk.get("error") {
            return Err(in_stream_error(err));
        }
        if let Some(m) = chunk["model"].as_str()
            && !m.is_empty()
        {
            self.model = m.to_owned();
        }
        // The last usage wins: some servers report running totals on every chunk.
        if chunk["usage"].is_object() {
            self.usage = parse_usage(&chunk["usage"]);
        }
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            // We never ask for n > 1; other choices would only interleave.
            if choice["index"].as_u64().unwrap_or(0) != 0 {
                continue;
            }
            let delta = &choice["delta"];
            if let Some(t) = delta["content"].as_str()
                && !t.is_empty()
            {
                self.text.push_str(t);
                on_event(StreamEvent::TextDelta(t.to_owned()));
            }
            // DeepSeek/vLLM say `reasoning_content`, OpenRouter/Ollama `reasoning`; some send both.
            let reasoning = delta["reasoning_content"]
                .as_str()
                .or_else(|| delta["reasoning"].as_str());
            if let Some(r) = reasoning
                && !r.is_empty()
            {
                self.reasoning.push_str(r);
                on_event(StreamEvent::ReasoningDelta(r.to_owned()));
            }
            for tc in delta["tool_calls"].as_array().into_iter().flatten() {
                self.tool_delta(tc);
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                self.finish_reason = Some(f.to_owned());
                self.flush_tools(on_event);
            }
        }
        Ok(false)
    }

    fn tool_delta(&mut self, tc: &Value) {
        let id = tc["id"].as_str().unwrap_or("");
        let index = match tc["index"].as_u64() {
            Some(i) => i,
            // Without an index (some servers), a new id starts a new call.
            None => match self.partial.last_key_value() {
                Some((k, p)) if id.is_empty() || p.id == id => *k,
                Some((k, _)) => k + 1,
                None => self.tool_calls.len() as u64,
            },
        };
        let call = self.partial.entry(index).or_insert_with(|| ToolCall {
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
        });
        if call.id.is_empty() {
            call.id = id.to_owned();
        }
        // The name arrives whole in the first chunk; later repeats must not double it.
        if let Some(name) = tc["function"]["name"].as_str()
            && call.name.is_empty()
        {
            call.name = name.to_owned();
        }
        if let Some(args) = tc["function"]["arguments"].as_str() {
            call.arguments.push_str(args);
        }
    }

    /// Emits the tool calls assembled so far, in index order.
    fn flush_tools(&mut self, on_event: &mut (dyn FnMut(StreamEvent) + Send)) {
        for (index, mut call) in std::mem::take(&mut self.partial) {
            if call.id.is_empty() {
                call.id = format!("call_{index}");
            }
            // A call without parameters often streams no arguments; "{}" keeps it valid JSON.
            if call.arguments.trim().is_empty() {
                call.arguments = "{}".to_owned();
            }
            on_event(StreamEvent::ToolCall(call.clone()));
            self.tool_calls.push(call);
        }
    }

    fn finish(mut self, on_event: &mut (dyn FnMut(StreamEvent) + Send)) -> Completion {
        self.flush_tools(on_event);
        Completion {
            text: self.text,
            reasoning: self.reasoning,
            tool_calls: self.tool_calls,
            usage: self.usage,
            finish_reason: self.finish_reason,
            model: self.model,
        }
    }
}

fn parse_usage(u: &Value) -> Usage {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Usage {
        input_tokens: n(&u["prompt_tokens"]),
        output_tokens: n(&u["completion_tokens"]),
        // DeepSeek reports cache hits as `prompt_cache_hit_tokens`.
        cache_read_tokens: n(&u["prompt_tokens_details"]["cached_tokens"])
            .max(n(&u["prompt_cache_hit_tokens"])),
        cache_write_tokens: 0,
        reasoning_tokens: n(&u["completion_tokens_details"]["reasoning_tokens"]),
    }
}

/// An `{"error": …}` chunk inside a stream (OpenRouter, vLLM do this after a 200).
fn in_stream_error(err: &Value) -> LlmError {
    let message = err["message"]
        .as_str()
        .map_or_else(|| err.to_string(), str::to_owned);
    let kind = err["type"].as_str().unwrap_or("");
    let code = err["code"].as_str().unwrap_or("");
    let fatal = matches!(
        kind,
        "invalid_request_error" | "authentication_error" | "permission_error"
    ) || code == "context_length_exceeded";
    let message = format!("provider error in stream: {message}");
    if fatal {
        LlmError::Fatal(message)
    } else {
        retryable(message)
    }
}

pub(super) fn retryable(message: String) -> LlmError {
    LlmError::Retryable {
        message,
        retry_after: None,
    }
}

/// An error and its sources, because reqwest's top-level message rarely names the cause.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A duration as `3s` or `0.3s`.
fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
