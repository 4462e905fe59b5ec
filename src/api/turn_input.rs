//! The shape of a turn's input: a non-empty string, or a non-empty array of content blocks —
//! `{"type": "text", "text"}`, `{"type": "image", "attachment_id"}` and
//! `{"type": "file", "attachment_id"}`. Whether named attachments exist is the agent's check.

use serde_json::Value;

use super::ApiError;

/// Largest accepted turn input, in bytes of JSON.
pub const MAX_INPUT_BYTES: usize = 256 * 1024;

/// Whether one content block has exactly one of the accepted shapes.
fn block_ok(b: &Value) -> bool {
    let Some(o) = b.as_object().filter(|o| o.len() == 2) else {
        return false;
    };
    match o.get("type").and_then(Value::as_str) {
        Some("text") => o
            .get("text")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.trim().is_empty()),
        Some("image" | "file") => o
            .get("attachment_id")
            .and_then(Value::as_str)
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
        _ => false,
    }
}

/// Checks the input's size and shape; a 413 or a 400 naming the first bad block.
pub fn check_input(input: &Value) -> Result<(), ApiError> {
    let size = serde_json::to_vec(input)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_INPUT_BYTES {
        return Err(ApiError::too_large(
            "input",
            format!("input is {size} bytes; the limit is {MAX_INPUT_BYTES}"),
        ));
    }
    match input {
        Value::String(s) if !s.trim().is_empty() => Ok(()),
        Value::String(_) => Err(ApiError::invalid_field("input", "input must not be empty")),
        Value::Array(blocks) if !blocks.is_empty() => {
            match blocks.iter().position(|b| !block_ok(b)) {
                None => Ok(()),
                Some(i) => Err(ApiError::invalid_field(
                    "input",
                    format!(
                        "content block {i} must be {{\"type\": \"text\", \"text\": <non-empty string>}} \
                         or {{\"type\": \"image\" | \"file\", \"attachment_id\": <uuid>}}"
                    ),
                )),
            }
        }
        _ => Err(ApiError::invalid_field(
            "input",
            "input must be a non-empty string or array of content blocks",
        )),
    }
}
