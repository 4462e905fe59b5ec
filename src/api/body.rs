//! Reading JSON bodies ourselves, so size and syntax errors get our JSON error shape.

use axum::body::{Body, to_bytes};
use serde::de::DeserializeOwned;

use super::ApiError;

/// Reads at most `limit` bytes and parses them as `T`; 413 past the limit, 400 for bad JSON.
pub async fn json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large("body", format!("request body is over {limit} bytes")))?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let msg = e.to_string();
        let err = ApiError::bad_request(format!("invalid JSON body: {msg}"));
        // serde names the field in backticks for missing/unknown/invalid fields.
        match msg.split('`').nth(1) {
            Some(field) if msg.contains("field") => err.with_field(field),
            _ => err,
        }
    })
}
