//! From the stored transcript to what a provider is sent, repaired so strict providers accept it:
//! every tool call has exactly one result right after its assistant message, and no result lacks
//! its call.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use uuid::Uuid;

use super::attachments::Loaded;
use super::store::Message;
use crate::llm::{ChatMessage, Role, ToolCall};

/// The attachments a turn sends, loaded once per turn, and whether the model sees images.
#[derive(Debug, Default)]
pub struct Files {
    pub loaded: HashMap<Uuid, Loaded>,
    pub vision: bool,
}

/// What a call that never got a result is answered with, so the history stays well-formed.
pub const INTERRUPTED: &str = "error: this tool call was interrupted and has no result";

/// The tool calls an assistant message made.
pub fn tool_calls(content: &Value) -> Vec<ToolCall> {
    content
        .get("tool_calls")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn text(content: &Value) -> Option<String> {
    content
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// Builds the provider history from `messages` (in order). Partial replies still streaming are
/// left out; results without a call are dropped; calls without a result get [`INTERRUPTED`].
pub fn build(
    system: Option<&str>,
    summary: Option<&str>,
    messages: &[Message],
    files: &Files,
) -> Vec<ChatMessage> {
    let results: HashMap<&str, &Message> = messages
        .iter()
        .filter(|m| m.role == "tool")
        .filter_map(|m| m.tool_call_id.as_deref().map(|id| (id, m)))
        .collect();
    let mut out = Vec::with_capacity(messages.len() + 1);
    if let Some(s) = system.filter(|s| !s.is_empty()) {
        out.push(ChatMessage::text(Role::System, s));
    }
    if let Some(s) = summary {
        out.push(ChatMessage::text(
            Role::System,
            format!("Summary of the earlier conversation:\n{s}"),
        ));
    }
    for m in messages {
        match (m.role.as_str(), m.status.as_str()) {
            ("user", _) => out.push(user_message(&m.content, files)),
            ("assistant", "complete" | "cancelled" | "error") => {
                let calls = tool_calls(&m.content);
                let content = text(&m.content);
                if content.is_none() && calls.is_empty() {
                    continue;
                }
                out.push(ChatMessage {
                    role: Role::Assistant,
                    content,
                    tool_calls: calls.clone(),
                    tool_call_id: None,
                    media: vec![],
                });
                for call in calls {
                    let result = results
                        .get(call.id.as_str())
                        .and_then(|r| r.content.get("content").and_then(Value::as_str))
                        .unwrap_or(INTERRUPTED);
                    out.push(ChatMessage {
                        tool_call_id: Some(call.id),
                        ..ChatMessage::text(Role::Tool, result)
                    });
                }
            }
            // Tool results are placed right after their call above; streaming partials are skipped.
            _ => {}
        }
    }
    out
}

/// A user message: its text, with text files inlined by name and images beside it for a model
/// that sees them (and named in the text for one that does not).
fn user_message(content: &Value, files: &Files) -> ChatMessage {
    let summaries: HashMap<&str, &str> = content
        .get("attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a.get("id")?.as_str()?, a.get("name")?.as_str()?)))
        .collect();
    let blocks = content.get("input").and_then(Value::as_array);
    let (Some(blocks), false) = (blocks, summaries.is_empty()) else {
        return ChatMessage::text(Role::User, text(content).unwrap_or_default());
    };
    let mut parts: Vec<String> = Vec::new();
    let mut media = Vec::new();
    for b in blocks {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            parts.push(t.to_owned());
            continue;
        }
        let Some(id) = b.get("attachment_id").and_then(Value::as_str) else {
            continue;
        };
        let named = summaries.get(id).copied().unwrap_or(id);
        let loaded = id.parse::<Uuid>().ok().and_then(|id| files.loaded.get(&id));
        parts.push(match loaded {
            Some(Loaded::Text { name, text }) => format!("<file name=\"{name}\">\n{text}\n</file>"),
            Some(Loaded::Media(m)) if files.vision => {
                media.push(m.clone());
                continue;
            }
            Some(Loaded::Media(m)) => format!(
                "[attached file `{}` ({}) is not shown: this model does not accept images]",
                m.name, m.media_type
            ),
            Some(Loaded::Missing { name }) => {
                format!("[attached file `{name}` is no longer available]")
            }
            None => format!("[attached file `{named}`]"),
        });
    }
    ChatMessage {
        media,
        ..ChatMessage::text(Role::User, parts.join("\n\n"))
    }
}

/// The calls of the turn's last assistant message that have no stored result yet: on resume they
/// run, and the calls that finished before the crash do not.
pub fn pending_calls(messages: &[Message], turn_id: uuid::Uuid) -> Vec<ToolCall> {
    let Some(last) = messages
        .iter()
        .rev()
        .find(|m| m.turn_id == turn_id && m.role == "assistant" && m.status == "complete")
    else {
        return Vec::new();
    };
    let done: HashSet<&str> = messages
        .iter()
        .filter(|m| m.turn_id == turn_id && m.role == "tool")
        .filter_map(|m| m.tool_call_id.as_deref())
        .collect();
    tool_calls(&last.content)
        .into_iter()
        .filter(|c| !done.contains(c.id.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn msg(role: &str, content: Value, tool_call_id: Option<&str>, turn: Uuid) -> Message {
        Message {
            id: Uuid::now_v7(),
            session_id: Uuid::nil(),
            turn_id: turn,
            role: role.into(),
            content,
            status: "complete".into(),
            tool_call_id: tool_call_id.map(str::to_owned),
            usage: None,
            model: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn orphans_are_repaired() {
        let t = Uuid::now_v7();
        let call = |id: &str| json!({ "id": id, "name": "list_dir", "arguments": "{}" });
        let history = vec![
            msg("user", json!({ "text": "hi" }), None, t),
            msg("tool", json!({ "content": "stray" }), Some("nobody"), t),
            msg(
                "assistant",
                json!({ "text": "", "tool_calls": [call("a"), call("b")] }),
                None,
                t,
            ),
            msg("tool", json!({ "content": "result a" }), Some("a"), t),
        ];
        let out = build(Some("sys"), None, &history, &Files::default());
        let roles: Vec<Role> = out.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Tool
            ]
        );
        assert_eq!(out[3].content.as_deref(), Some("result a"));
        assert_eq!(out[4].content.as_deref(), Some(INTERRUPTED));
        assert!(out.iter().all(|m| m.content.as_deref() != Some("stray")));
        let pending: Vec<String> = pending_calls(&history, t)
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(pending, ["b"]);
    }
}
