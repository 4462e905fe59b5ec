//! The JSON a Chat Completions request carries: messages (with images and documents as content
//! parts), tools and limits.

use serde_json::{Value, json};

use crate::llm::config::ModelConfig;
use crate::llm::types::{ChatMessage, ChatRequest, Role, ToolDef};

/// The JSON body of a streamed Chat Completions request.
pub(super) fn request_body(model: &ModelConfig, req: &ChatRequest) -> Value {
    let wire = if req.model.is_empty() {
        model.wire_model()
    } else {
        &req.model
    };
    let messages: Vec<Value> = req.messages.iter().map(message_json).collect();
    let mut body = json!({
        "model": wire,
        "messages": messages,
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    if !req.tools.is_empty() {
        body["tools"] = req.tools.iter().map(tool_json).collect();
    }
    if let Some(max) = req.max_tokens {
        body["max_tokens"] = max.into();
    }
    body
}

fn message_json(m: &ChatMessage) -> Value {
    let content = m.content.as_deref().unwrap_or("");
    match m.role {
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": m.tool_call_id.as_deref().unwrap_or(""),
            "content": content,
        }),
        Role::Assistant if !m.tool_calls.is_empty() => {
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": "function",
                        "function": { "name": c.name, "arguments": c.arguments },
                    })
                })
                .collect();
            json!({ "role": "assistant", "content": m.content, "tool_calls": calls })
        }
        Role::User if !m.media.is_empty() => {
            let mut parts: Vec<Value> = Vec::with_capacity(m.media.len() + 1);
            if !content.is_empty() {
                parts.push(json!({ "type": "text", "text": content }));
            }
            for media in &m.media {
                let url = format!("data:{};base64,{}", media.media_type, media.base64());
                parts.push(if media.is_pdf() {
                    json!({ "type": "file", "file": { "filename": media.name, "file_data": url } })
                } else {
                    json!({ "type": "image_url", "image_url": { "url": url } })
                });
            }
            json!({ "role": "user", "content": parts })
        }
        Role::System | Role::User | Role::Assistant => {
            json!({ "role": m.role, "content": content })
        }
    }
}

fn tool_json(t: &ToolDef) -> Value {
    json!({
        "type": "function",
        "function": { "name": t.name, "description": t.description, "parameters": t.parameters },
    })
}
