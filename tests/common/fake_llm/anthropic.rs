//! The Anthropic face of [`super::FakeLlm`]: the same scripted replies, served on
//! `POST /v1/messages` as Anthropic Messages stream events (`event:` + `data:` lines, a `ping`,
//! one content block per run of text or reasoning and one per tool call).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};
use spool::llm::Usage;

use super::{Chunk, Reply, Shared, Step, halves, split, status_response, stream_response, take};

/// Answers one Messages request with the next queued reply.
pub(super) async fn messages(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (model, reply) = take(&shared, headers, &body);
    let events = match reply {
        Reply::Status {
            status,
            retry_after,
            body,
        } => return status_response(status, retry_after, body),
        Reply::Raw { body } => return stream_response(vec![Step::Data(body)]),
        Reply::Stream {
            chunks,
            usage,
            delay_ms,
        } => {
            let mut events = start(&model, usage);
            events.extend(blocks(&chunks, delay_ms));
            events.extend(finish(&chunks, usage));
            events
        }
        Reply::Cut { chunks } => {
            let mut events = start(&model, None);
            events.extend(blocks(&chunks, 0));
            // Leave the last block open, as a connection lost mid-block would.
            if matches!(events.last(), Some(Step::Data(d)) if d.starts_with("event: content_block_stop"))
            {
                events.pop();
            }
            // The pause lets hyper flush what was sent; aborting at once would discard it.
            events.push(Step::Sleep(50));
            events.push(Step::Abort);
            events
        }
        Reply::Stall { chunks, stall_ms } => {
            let mut events = start(&model, None);
            events.extend(blocks(&chunks, 0));
            events.push(Step::Sleep(stall_ms));
            events.extend(finish(&chunks, None));
            events
        }
    };
    // Every event goes out in two halves so clients must handle lines split across reads.
    let mut steps = Vec::new();
    for e in events {
        match e {
            Step::Data(text) => halves(&mut steps, &text),
            other => steps.push(other),
        }
    }
    stream_response(steps)
}

/// One whole event, named by its `type` as Anthropic does.
fn event(out: &mut Vec<Step>, data: Value) {
    let kind = data["type"].as_str().unwrap_or("").to_owned();
    out.push(Step::Data(format!("event: {kind}\ndata: {data}\n\n")));
}

/// `message_start` (with the prompt side of `usage`, cache tokens apart as Anthropic reports
/// them) and the `ping` Anthropic sends right after.
fn start(model: &str, usage: Option<Usage>) -> Vec<Step> {
    let mut message = json!({
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": null, "stop_sequence": null,
    });
    if let Some(u) = usage {
        let cached = u.cache_read_tokens + u.cache_write_tokens;
        message["usage"] = json!({
            "input_tokens": u.input_tokens.saturating_sub(cached),
            "cache_creation_input_tokens": u.cache_write_tokens,
            "cache_read_input_tokens": u.cache_read_tokens,
            "output_tokens": 1,
        });
    }
    let mut out = Vec::new();
    event(
        &mut out,
        json!({ "type": "message_start", "message": message }),
    );
    event(&mut out, json!({ "type": "ping" }));
    out
}

/// The content blocks: consecutive text (or reasoning) chunks share one block; each tool call
/// is its own block whose input JSON arrives in `parts` pieces after an empty one.
fn blocks(chunks: &[Chunk], delay_ms: u64) -> Vec<Step> {
    let mut out = Vec::new();
    let mut open: Option<(&'static str, usize)> = None;
    let mut next = 0;
    for chunk in chunks {
        if delay_ms > 0 {
            out.push(Step::Sleep(delay_ms));
        }
        match chunk {
            Chunk::Text(t) => {
                let index = open_block(&mut out, &mut open, &mut next, "text");
                let delta = json!({ "type": "text_delta", "text": t });
                event(&mut out, block_delta(index, delta));
            }
            Chunk::Reasoning(r) => {
                let index = open_block(&mut out, &mut open, &mut next, "thinking");
                let delta = json!({ "type": "thinking_delta", "thinking": r });
                event(&mut out, block_delta(index, delta));
            }
            Chunk::ToolCall {
                id,
                name,
                arguments,
                parts,
            } => {
                close(&mut out, &mut open);
                let index = next;
                next += 1;
                let block = json!({ "type": "tool_use", "id": id, "name": name, "input": {} });
                event(&mut out, block_start(index, block));
                let pieces = std::iter::once(String::new()).chain(split(arguments, *parts));
                for piece in pieces {
                    let delta = json!({ "type": "input_json_delta", "partial_json": piece });
                    event(&mut out, block_delta(index, delta));
                }
                event(
                    &mut out,
                    json!({ "type": "content_block_stop", "index": index }),
                );
            }
        }
    }
    close(&mut out, &mut open);
    out
}

/// The index of the open block if it is a `kind` block, else closes it and opens a new one.
fn open_block(
    out: &mut Vec<Step>,
    open: &mut Option<(&'static str, usize)>,
    next: &mut usize,
    kind: &'static str,
) -> usize {
    if let Some((k, index)) = *open
        && k == kind
    {
        return index;
    }
    close(out, open);
    let index = *next;
    *next += 1;
    let mut block = json!({ "type": kind });
    block[kind] = "".into();
    event(out, block_start(index, block));
    *open = Some((kind, index));
    index
}

/// Closes the open block; a thinking block first gets its signature, as Anthropic sends it.
fn close(out: &mut Vec<Step>, open: &mut Option<(&'static str, usize)>) {
    if let Some((kind, index)) = open.take() {
        if kind == "thinking" {
            let delta = json!({ "type": "signature_delta", "signature": "c2lnbmF0dXJl" });
            event(out, block_delta(index, delta));
        }
        event(out, json!({ "type": "content_block_stop", "index": index }));
    }
}

fn block_start(index: usize, block: Value) -> Value {
    json!({ "type": "content_block_start", "index": index, "content_block": block })
}

fn block_delta(index: usize, delta: Value) -> Value {
    json!({ "type": "content_block_delta", "index": index, "delta": delta })
}

/// `message_delta` (stop reason, output tokens) and `message_stop`.
fn finish(chunks: &[Chunk], usage: Option<Usage>) -> Vec<Step> {
    let calls = chunks.iter().any(|c| matches!(c, Chunk::ToolCall { .. }));
    let reason = if calls { "tool_use" } else { "end_turn" };
    let mut delta = json!({
        "type": "message_delta",
        "delta": { "stop_reason": reason, "stop_sequence": null },
    });
    if let Some(u) = usage {
        delta["usage"] = json!({ "output_tokens": u.output_tokens });
    }
    let mut out = Vec::new();
    event(&mut out, delta);
    event(&mut out, json!({ "type": "message_stop" }));
    out
}
