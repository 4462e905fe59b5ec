//! Anthropic Messages, streamed over SSE. The provider-neutral history is mapped onto Anthropic's
//! content blocks; failures are classified exactly as for [`super::openai`], whose helpers this
//! reuses.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::config::{ANTHROPIC_BASE_URL, ModelConfig};
use super::openai::{chain, guarded, retryable, send_error, status_error};
use super::sse::SseParser;
use super::types::{ChatMessage, ChatRequest, Completion, LlmError, Role, StreamEvent, ToolCall};
use super::types::{Media, ToolDef, Usage};

/// The API version this client's wire format follows; Anthropic requires it on every request.
const API_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; this is used when the request sets none.
const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Streams one completion; see [`super::LlmClient::stream`].
pub(crate) async fn stream(
    http: &reqwest::Client,
    idle: Duration,
    model: &ModelConfig,
    req: &ChatRequest,
    cancel: &CancellationToken,
    on_event: &mut (dyn FnMut(StreamEvent) + Send),
) -> Result<Completion, LlmError> {
    let base = model.base_url.as_deref().unwrap_or(ANTHROPIC_BASE_URL);
    let url = format!("{}/messages", base.trim_end_matches('/'));
    let mut builder = http
        .post(url)
        .header("anthropic-version", API_VERSION)
        .json(&request_body(model, req));
    if let Some(key) = super::api_key(model)? {
        let mut value = HeaderValue::from_str(&key).map_err(|_| {
            LlmError::Fatal(format!(
                "model {:?}: the API key is not a valid header value",
                model.name
            ))
        })?;
        // Keeps the key out of any debug output of the request.
        value.set_sensitive(true);
        builder = builder.header("x-api-key", value);
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
        let (events, ended) = match guarded(cancel, idle, "no data", body.next()).await? {
            Some(Ok(bytes)) => (sse.feed(&bytes), false),
            Some(Err(e)) => return Err(retryable(format!("stream broke: {}", chain(&e)))),
            None => (sse.finish().into_iter().collect(), true),
        };
        for data in events {
            if acc.handle(&data, on_event)? {
                return Ok(acc.finish(on_event));
            }
        }
        // Only `message_stop` proves the answer is whole; anything short of it may be cut.
        if ended {
            return Err(retryable("stream ended early".to_owned()));
        }
    }
}

/// The JSON body of a streamed Messages request.
fn request_body(model: &ModelConfig, req: &ChatRequest) -> Value {
    let wire = if req.model.is_empty() {
        model.wire_model()
    } else {
        &req.model
    };
    let (system, messages) = map_history(&req.messages);
    let mut body = json!({
        "model": wire,
        "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "stream": true,
        "messages": messages,
    });
    if let Some(system) = system {
        body["system"] = system.into();
    }
    if !req.tools.is_empty() {
        body["tools"] = req.tools.iter().map(tool_json).collect();
    }
    body
}

/// Splits off the system text and turns the rest into strictly alternating user/assistant
/// messages of content blocks, because Anthropic rejects consecutive same-role messages and
/// expects tool results in the user turn that follows the calls.
fn map_history(messages: &[ChatMessage]) -> (Option<String>, Vec<Value>) {
    let mut system: Vec<&str> = Vec::new();
    let mut turns: Vec<(Role, Vec<Value>)> = Vec::new();
    for m in messages {
        let text = m.content.as_deref().unwrap_or("");
        let (role, blocks) = match m.role {
            Role::System => {
                if !text.trim().is_empty() {
                    system.push(text);
                }
                continue;
            }
            Role::User => {
                // Images and documents go before the text that talks about them, as Anthropic
                // recommends.
                let mut blocks: Vec<Value> = m.media.iter().map(media_block).collect();
                blocks.extend(text_block(text));
                (Role::User, blocks)
            }
            Role::Assistant => {
                let mut blocks: Vec<Value> = text_block(text).into_iter().collect();
                blocks.extend(m.tool_calls.iter().map(tool_use_block));
                (Role::Assistant, blocks)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or("");
                let mut block = json!({ "type": "tool_result", "tool_use_id": id });
                // `content` is optional; an empty one is better left out than risk a rejection.
                if !text.is_empty() {
                    block["content"] = text.into();
                }
                (Role::User, vec![block])
            }
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => append(existing, blocks),
            _ if blocks.is_empty() => {}
            _ => turns.push((role, blocks)),
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    let messages = turns
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    (system, messages)
}

/// A text block, or none for blank text: Anthropic rejects empty and whitespace-only text blocks.
fn text_block(text: &str) -> Option<Value> {
    (!text.trim().is_empty()).then(|| json!({ "type": "text", "text": text }))
}

/// An `image` block, or a `document` block for a PDF, with the bytes inline as base64.
fn media_block(media: &Media) -> Value {
    let kind = if media.is_pdf() { "document" } else { "image" };
    json!({
        "type": kind,
        "source": { "type": "base64", "media_type": media.media_type, "data": media.base64() },
    })
}

fn tool_use_block(call: &ToolCall) -> Value {
    // `input` must be an object; a call whose arguments never parsed is replayed as empty.
    let input = serde_json::from_str::<Value>(&call.arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": input })
}

/// Adds blocks to a turn, keeping tool results ahead of any text: Anthropic requires them first.
fn append(blocks: &mut Vec<Value>, new: Vec<Value>) {
    for block in new {
        if block["type"] == "tool_result" {
            let at = blocks
                .iter()
                .take_while(|b| b["type"] == "tool_result")
                .count();
            blocks.insert(at, block);
        } else {
            blocks.push(block);
        }
    }
}

fn tool_json(t: &ToolDef) -> Value {
    json!({ "name": t.name, "description": t.description, "input_schema": t.parameters })
}

/// Builds the completion from stream events, reporting deltas as they come.
struct Assembler {
    text: String,
    reasoning: String,
    /// `tool_use` blocks still arriving, keyed by their block index.
    open_tools: BTreeMap<u64, ToolCall>,
    tool_calls: Vec<ToolCall>,
    /// Anthropic's `input_tokens`, which leaves out cached prompt tokens.
    uncached_input: u64,
    usage: Usage,
    finish_reason: Option<String>,
    model: String,
}

impl Assembler {
    fn new(model: &str) -> Self {
        Self {
            text: String::new(),
            reasoning: String::new(),
            open_tools: BTreeMap::new(),
            tool_calls: Vec::new(),
            uncached_input: 0,
            usage: Usage::default(),
            finish_reason: None,
            model: model.to_owned(),
        }
    }

    /// Takes one event's data; true at `message_stop`.
    fn handle(
        &mut self,
        data: &str,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
    ) -> Result<bool, LlmError> {
        let ev: Value = serde_json::from_str(data.trim()).map_err(|e| {
            let start: String = data.chars().take(200).collect();
            retryable(format!("malformed stream event ({e}): {start}"))
        })?;
        let index = ev["index"].as_u64().unwrap_or(0);
        match ev["type"].as_str().unwrap_or("") {
            "message_start" => {
                let message = &ev["message"];
                if let Some(m) = message["model"].as_str()
                    && !m.is_empty()
                {
                    self.model = m.to_owned();
                }
                self.apply_usage(&message["usage"]);
            }
            "content_block_start" => {
                let block = &ev["content_block"];
                match block["type"].as_str().unwrap_or("") {
                    "tool_use" => {
                        let call = ToolCall {
                            id: block["id"].as_str().unwrap_or("").to_owned(),
                            name: block["name"].as_str().unwrap_or("").to_owned(),
                            arguments: String::new(),
                        };
                        self.open_tools.insert(index, call);
                    }
                    // The opening block is normally empty; text in it is still part of the answer.
                    "text" => self.push_text(block["text"].as_str(), on_event),
                    "thinking" => self.push_reasoning(block["thinking"].as_str(), on_event),
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &ev["delta"];
                match delta["type"].as_str().unwrap_or("") {
                    "text_delta" => self.push_text(delta["text"].as_str(), on_event),
                    "thinking_delta" => self.push_reasoning(delta["thinking"].as_str(), on_event),
                    "input_json_delta" => {
                        if let (Some(call), Some(part)) = (
                            self.open_tools.get_mut(&index),
                            delta["partial_json"].as_str(),
                        ) {
                            call.arguments.push_str(part);
                        }
                    }
                    // `signature_delta` and future kinds carry nothing the completion keeps.
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let Some(call) = self.open_tools.remove(&index) {
                    self.emit_tool(index, call, on_event);
                }
            }
            "message_delta" => {
                if let Some(reason) = ev["delta"]["stop_reason"].as_str() {
                    self.finish_reason = Some(reason.to_owned());
                }
                self.apply_usage(&ev["usage"]);
            }
            "message_stop" => return Ok(true),
            "error" => return Err(in_stream_error(&ev["error"])),
            // `ping` keeps the connection alive; Anthropic may add event kinds at any time.
            _ => {}
        }
        Ok(false)
    }

    fn push_text(&mut self, t: Option<&str>, on_event: &mut (dyn FnMut(StreamEvent) + Send)) {
        if let Some(t) = t.filter(|t| !t.is_empty()) {
            self.text.push_str(t);
            on_event(StreamEvent::TextDelta(t.to_owned()));
        }
    }

    fn push_reasoning(&mut self, r: Option<&str>, on_event: &mut (dyn FnMut(StreamEvent) + Send)) {
        if let Some(r) = r.filter(|r| !r.is_empty()) {
            self.reasoning.push_str(r);
            on_event(StreamEvent::ReasoningDelta(r.to_owned()));
        }
    }

    /// Takes whichever counts an event carries: `message_delta` totals are cumulative, so the
    /// latest value of each field wins.
    fn apply_usage(&mut self, u: &Value) {
        if let Some(n) = u["input_tokens"].as_u64() {
            self.uncached_input = n;
        }
        if let Some(n) = u["cache_read_input_tokens"].as_u64() {
            self.usage.cache_read_tokens = n;
        }
        if let Some(n) = u["cache_creation_input_tokens"].as_u64() {
            self.usage.cache_write_tokens = n;
        }
        if let Some(n) = u["output_tokens"].as_u64() {
            self.usage.output_tokens = n;
        }
    }

    fn emit_tool(
        &mut self,
        index: u64,
        mut call: ToolCall,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
    ) {
        if call.id.is_empty() {
            call.id = format!("toolu_{index}");
        }
        // A call without parameters may stream no JSON at all; "{}" keeps it valid.
        if call.arguments.trim().is_empty() {
            call.arguments = "{}".to_owned();
        }
        on_event(StreamEvent::ToolCall(call.clone()));
        self.tool_calls.push(call);
    }

    fn finish(mut self, on_event: &mut (dyn FnMut(StreamEvent) + Send)) -> Completion {
        // A block the server never closed still arrived whole once the message stopped.
        for (index, call) in std::mem::take(&mut self.open_tools) {
            self.emit_tool(index, call, on_event);
        }
        // Count every prompt token as input, as OpenAI's `prompt_tokens` does, so costs and
        // context accounting do not depend on the provider.
        self.usage.input_tokens =
            self.uncached_input + self.usage.cache_read_tokens + self.usage.cache_write_tokens;
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

/// An `error` event inside a 200 stream; the kinds that mirror 429/5xx answers are retryable.
fn in_stream_error(err: &Value) -> LlmError {
    let kind = err["type"].as_str().unwrap_or("");
    let message = err["message"]
        .as_str()
        .map_or_else(|| err.to_string(), str::to_owned);
    let message = format!("provider error in stream: {kind}: {message}");
    let transient = matches!(
        kind,
        "overloaded_error" | "api_error" | "rate_limit_error" | "timeout_error"
    );
    if transient {
        retryable(message)
    } else {
        LlmError::Fatal(message)
    }
}
