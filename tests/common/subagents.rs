//! Subagent test fixtures: a session with the demo workspace, turns, and scripted tool calls.

use serde_json::json;
use uuid::Uuid;

use super::Server;
use super::fake_llm::{Chunk, Reply};

/// Creates a session with the `demo` workspace and returns its id.
pub async fn new_session(s: &Server) -> Uuid {
    let (st, b) = s
        .post("/api/v1/sessions", json!({ "workspace": "demo" }))
        .await;
    assert_eq!(st, 201, "{b}");
    b["id"].as_str().and_then(|i| i.parse().ok()).expect("id")
}

/// Sends a turn and returns its id.
pub async fn send_turn(s: &Server, session: Uuid, input: &str) -> Uuid {
    let (st, b) = s
        .post(
            &format!("/api/v1/sessions/{session}/turns"),
            json!({ "input": input }),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    b["turn_id"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("turn id")
}

/// A `spawn_subagent` call.
pub fn spawn_call(id: &str, prompt: &str, label: &str) -> Chunk {
    Chunk::ToolCall {
        id: id.to_owned(),
        name: "spawn_subagent".to_owned(),
        arguments: json!({ "prompt": prompt, "label": label }).to_string(),
        parts: 2,
    }
}

/// A `wait_subagents` call for all of them.
pub fn wait_all_call(id: &str, wait_s: u64) -> Chunk {
    Chunk::ToolCall {
        id: id.to_owned(),
        name: "wait_subagents".to_owned(),
        arguments: json!({ "mode": "all", "wait_s": wait_s }).to_string(),
        parts: 1,
    }
}

/// One reply that makes these calls at once.
pub fn calls(chunks: Vec<Chunk>) -> Reply {
    Reply::Stream {
        chunks,
        usage: None,
        delay_ms: 0,
    }
}
