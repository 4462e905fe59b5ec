//! The provider-neutral shapes of a chat call: messages, tool definitions, stream events, usage.

use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// One tool call the model made; `arguments` is the raw JSON text the model produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A message in the history sent to the model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    /// Text content; `None` for an assistant message that only calls tools.
    pub content: Option<String>,
    /// Assistant messages: the tools it called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Tool messages: which call this is the result of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// User messages: images and documents sent beside the text (only to models with vision).
    #[serde(skip)]
    pub media: Vec<Media>,
}

impl ChatMessage {
    /// A message of plain text.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(content.into()),
            tool_calls: Vec::new(),
            tool_call_id: None,
            media: Vec::new(),
        }
    }
}

/// An image or document a user attached, as its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Media {
    pub name: String,
    /// `image/png`, `image/jpeg`, `image/gif`, `image/webp` or `application/pdf`.
    pub media_type: String,
    pub data: bytes::Bytes,
}

impl Media {
    /// The bytes as base64, as both providers take them.
    pub fn base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&self.data)
    }

    /// Whether this is a PDF rather than an image.
    pub fn is_pdf(&self) -> bool {
        self.media_type == "application/pdf"
    }
}

/// A tool the model may call, with its JSON-schema parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// One streamed chat completion request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The provider's model id (what goes on the wire).
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Sorted by name by the caller; empty means "no tools offered".
    pub tools: Vec<ToolDef>,
    pub max_tokens: Option<u32>,
}

/// Token usage of one provider call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Adds another call's usage to this one (cost is summed, never overwritten).
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
    }
}

/// What the stream reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    TextDelta(String),
    ReasoningDelta(String),
    /// A complete tool call, once all its chunks have arrived.
    ToolCall(ToolCall),
}

/// The finished result of one streamed call.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub text: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub finish_reason: Option<String>,
    /// The model the provider says answered.
    pub model: String,
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    /// 429, 5xx, a stalled or broken stream, a connection error: the step may be retried.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// Bad request, auth failure, unknown model: retrying will not help.
    #[error("{0}")]
    Fatal(String),
    #[error("cancelled")]
    Cancelled,
}
