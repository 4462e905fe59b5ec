//! The offline `mock` model: streams a plausible reply word by word with small delays (~15 ms
//! per word); it calls a tool when the prompt asks for it, e.g. "list files" calls `list_dir`.
//!
//! Replies are deterministic so tests (and demos without an API key) can predict them:
//! - last message a user message containing "list files", with `list_dir` offered: one call
//!   `list_dir {"path": "."}` and no text;
//! - last message a tool result: a short summary quoting its first 200 characters;
//! - otherwise: [`plain_reply`] of the last user message.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::types::{ChatRequest, Completion, LlmError, Role, StreamEvent, ToolCall, Usage};

/// The pause before each streamed word, so the reply visibly streams.
const WORD_DELAY: Duration = Duration::from_millis(15);
/// How much of the user's text or a tool result the reply quotes.
const QUOTE_CHARS: usize = 200;

/// The reply to a prompt that asks for nothing in particular: it echoes `user_text` (trimmed,
/// cut to 200 characters).
pub fn plain_reply(user_text: &str) -> String {
    let said = quote(user_text);
    if said.is_empty() {
        return "Hello! I'm the mock model, running offline. Configure a real model in \
                spool.toml to get real answers."
            .to_owned();
    }
    format!(
        "I'm the mock model, running offline. You said: \"{said}\". Configure a real model in \
         spool.toml to get real answers."
    )
}

/// The reply after a tool result: quotes its first 200 characters.
pub fn tool_result_reply(result: &str) -> String {
    format!(
        "The tool returned: \"{}\". That is all I can tell you, as the offline mock model.",
        quote(result)
    )
}

/// Streams the mock's answer to `req`.
pub(crate) async fn stream(
    req: &ChatRequest,
    cancel: &CancellationToken,
    on_event: &mut (dyn FnMut(StreamEvent) + Send),
) -> Result<Completion, LlmError> {
    let input_chars: usize = req
        .messages
        .iter()
        .map(|m| {
            m.content.as_deref().map_or(0, str::len)
                + m.tool_calls
                    .iter()
                    .map(|c| c.name.len() + c.arguments.len())
                    .sum::<usize>()
        })
        .sum();
    let mut done = Completion {
        model: "mock".to_owned(),
        usage: Usage {
            input_tokens: (input_chars / 4) as u64,
            ..Usage::default()
        },
        ..Completion::default()
    };
    let last = req.messages.last();
    let asks_for_files = last.is_some_and(|m| {
        m.role == Role::User
            && m.content
                .as_deref()
                .is_some_and(|c| c.to_lowercase().contains("list files"))
    });
    if asks_for_files && req.tools.iter().any(|t| t.name == "list_dir") {
        pause(cancel).await?;
        // Numbered by the calls already in the history, so ids stay unique within a session.
        let n = req
            .messages
            .iter()
            .map(|m| m.tool_calls.len())
            .sum::<usize>()
            + 1;
        let call = ToolCall {
            id: format!("mock_call_{n}"),
            name: "list_dir".to_owned(),
            arguments: r#"{"path": "."}"#.to_owned(),
        };
        on_event(StreamEvent::ToolCall(call.clone()));
        done.tool_calls.push(call);
        done.usage.output_tokens = 5;
        done.finish_reason = Some("tool_calls".to_owned());
        return Ok(done);
    }
    let reply = match last {
        Some(m) if m.role == Role::Tool => tool_result_reply(m.content.as_deref().unwrap_or("")),
        _ => {
            let user = req.messages.iter().rev().find(|m| m.role == Role::User);
            plain_reply(user.and_then(|m| m.content.as_deref()).unwrap_or(""))
        }
    };
    // Each delta keeps its trailing space, so the deltas concatenate to exactly the reply.
    for word in reply.split_inclusive(' ') {
        pause(cancel).await?;
        done.text.push_str(word);
        done.usage.output_tokens += 1;
        on_event(StreamEvent::TextDelta(word.to_owned()));
    }
    done.finish_reason = Some("stop".to_owned());
    Ok(done)
}

async fn pause(cancel: &CancellationToken) -> Result<(), LlmError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(LlmError::Cancelled),
        () = tokio::time::sleep(WORD_DELAY) => Ok(()),
    }
}

/// `s` trimmed, on one line, cut to [`QUOTE_CHARS`] characters (with `…` when cut).
fn quote(s: &str) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= QUOTE_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(QUOTE_CHARS).collect();
    cut.push('…');
    cut
}
