//! What a tool call needs and what it gives back.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A configured root that file tools may read (`[[workspaces]]` in spool.toml).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub name: String,
    pub root: PathBuf,
    /// `run_command` is offered only when this is true.
    #[serde(default)]
    pub allow_commands: bool,
}

/// A tool the model may call: name, description, JSON-schema parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// The environment one tool call runs in.
#[derive(Clone)]
pub struct ToolContext {
    pub workspace: Option<Workspace>,
    pub cancel: CancellationToken,
    pub http: reqwest::Client,
    pub allow_loopback: bool,
    pub allow_private: bool,
}

/// A tool's answer. Errors are answers too (`is_error`), returned to the model as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// What the model sees.
    pub content: String,
    pub is_error: bool,
    /// Whether `content` was cut at the tool's output cap.
    pub truncated: bool,
    /// Structured detail for the UI and traces (e.g. exit code, duration).
    #[serde(default)]
    pub data: serde_json::Value,
}

impl ToolOutput {
    /// A tool error the model should read and react to.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            content: message.into(),
            is_error: true,
            truncated: false,
            data: serde_json::Value::Null,
        }
    }
}
