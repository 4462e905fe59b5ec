//! Reading request input ourselves, so size, syntax and range errors all get our JSON error shape.

use std::ops::RangeInclusive;

use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
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
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        let err = ApiError::bad_request(format!("invalid JSON body: {msg}"));
        if path != "." {
            return err.with_field(&path);
        }
        // At the top level serde names a missing or unknown field in backticks.
        match msg.split('`').nth(1) {
            Some(field) if msg.contains("field") => err.with_field(field),
            _ => err,
        }
    })
}

/// A query string parsed into `T`, where a malformed or unknown parameter is a JSON 400.
pub struct ValidQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ValidQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// An optional integer parameter within `range`, else `default`; a 400 naming `field` otherwise.
pub fn bounded(
    raw: Option<&str>,
    field: &str,
    default: i64,
    range: RangeInclusive<i64>,
) -> Result<i64, ApiError> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.trim().parse::<i64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ApiError::invalid_field(
            field,
            format!(
                "{field} must be an integer from {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

/// A keyset cursor: the id of the last row of the previous page.
pub fn cursor(raw: Option<&str>) -> Result<Option<uuid::Uuid>, ApiError> {
    raw.map(|c| {
        uuid::Uuid::parse_str(c)
            .map_err(|_| ApiError::invalid_field("cursor", "cursor is not valid"))
    })
    .transpose()
}

/// Trims a page fetched with `limit + 1` rows to `limit`, returning the next cursor when more exist.
pub fn page<T>(rows: &mut Vec<T>, limit: i64, id: impl Fn(&T) -> uuid::Uuid) -> Option<String> {
    if rows.len() as i64 <= limit {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last().map(|r| id(r).to_string())
}
