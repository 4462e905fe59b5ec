//! Files on the chat page: the composer's uploads (the file picker or a drop, sent by
//! `static/app.js` with the page's CSRF header) and the route that streams an attachment to the
//! signed-in browser, for thumbnails and the full-size view.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use uuid::Uuid;

use super::auth::User;
use super::chats::chat_id;
use super::{WebError, WebState};
use crate::agent::attachments;
use crate::api::{self, ApiError};
use crate::store::BlobError;

/// `POST /chats/{id}/attachments`: answers the script in the API's JSON, 201
/// `{attachment_id, name, media_type, size}` or an error body it can show.
pub async fn upload(
    State(state): State<WebState>,
    user: User,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    if user.require_write().is_err() {
        return Err(ApiError::forbidden("this sign-in may only read"));
    }
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("chat"))?;
    let limit = state.app.limits.max_upload_bytes;
    let (name, bytes) = api::read_upload(req, limit).await?;
    let a = attachments::upload(
        &state.app.pool,
        &state.app.blobs,
        user.project(),
        id,
        &name,
        bytes,
        limit,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(api::upload_answer(&a))).into_response())
}

/// `GET /chats/{id}/attachments/{attachment}`: the file, streamed.
pub async fn file(
    State(state): State<WebState>,
    user: User,
    Path((id, attachment)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let id = chat_id(&id)?;
    let attachment = Uuid::parse_str(&attachment).map_err(|_| WebError::NotFound("attachment"))?;
    let a = attachments::one(&state.app.pool, user.project(), id, attachment)
        .await?
        .ok_or(WebError::NotFound("attachment"))?;
    api::attachment_response(&state.app.blobs, &a)
        .await
        .map_err(|e| match e {
            BlobError::NotFound(_) => WebError::NotFound("attachment"),
            other => {
                tracing::error!(error = %other, "reading an attachment failed");
                WebError::Internal("the file store did not answer; try again".into())
            }
        })
}

/// A file attached to a user message: images show as thumbnails, others as a named link.
#[derive(Debug, Clone)]
pub struct FileView {
    pub id: String,
    pub name: String,
    pub is_image: bool,
    /// `12.3 KB`.
    pub size: String,
}

/// The files a user message records (`content.attachments`).
pub fn files_of(content: &Value) -> Vec<FileView> {
    content
        .get("attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|a| FileView {
            id: text(a, "id"),
            name: text(a, "name"),
            is_image: text(a, "media_type").starts_with("image/"),
            size: super::view::bytes(a.get("size").and_then(Value::as_u64).unwrap_or(0)),
        })
        .collect()
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}
