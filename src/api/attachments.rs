//! `/api/v1/sessions/{id}/attachments`: multipart uploads checked by their bytes, and streamed
//! downloads. The pages' upload and image routes reuse the reading and the response here.

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::MultipartError;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::json;
use uuid::Uuid;

use super::auth::Auth;
use super::sessions::{load, session_id};
use super::{ApiError, AppState};
use crate::agent::attachments::{self, Attachment, AttachmentError};
use crate::projects::tokens::Scope;
use crate::store::{BlobError, Blobs};

/// Room for the multipart framing and small fields around the file itself.
pub const MULTIPART_OVERHEAD: usize = 64 * 1024;

impl From<AttachmentError> for ApiError {
    fn from(e: AttachmentError) -> Self {
        let message = e.to_string();
        match e {
            AttachmentError::Empty => ApiError::invalid_field("file", message),
            AttachmentError::TooLarge { .. } => ApiError::too_large("file", message),
            AttachmentError::Unsupported(_) | AttachmentError::Mismatch { .. } => {
                ApiError::unsupported_media_type("file", message)
            }
            AttachmentError::SessionNotFound => ApiError::not_found("session"),
            AttachmentError::Unknown { .. } => {
                ApiError::unprocessable("unknown_attachment", "input", message)
            }
            AttachmentError::NotImage { .. } => {
                ApiError::unprocessable("not_an_image", "input", message)
            }
            AttachmentError::NoVision { .. } => {
                ApiError::unprocessable("model_without_vision", "model", message)
            }
            AttachmentError::Blob(b) => b.into(),
            AttachmentError::Db(d) => d.into(),
        }
    }
}

fn multipart_error(e: MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::too_large("file", format!("the upload is over {limit} bytes"));
    }
    ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
}

/// Reads the one `file` field of a `multipart/form-data` request: its file name and bytes. More
/// than `limit` bytes is a 413 as soon as it is known, before the rest is read.
pub async fn read_upload(req: Request, limit: usize) -> Result<(String, Bytes), ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit + MULTIPART_OVERHEAD) {
        return Err(ApiError::too_large(
            "file",
            format!("the upload is over {limit} bytes"),
        ));
    }
    let mut form = Multipart::from_request(req, &()).await.map_err(|e| {
        ApiError::bad_request(format!(
            "expected a multipart/form-data body with a `file` field: {}",
            e.body_text()
        ))
    })?;
    let mut file = None;
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        if field.name() != Some("file") {
            continue;
        }
        if file.is_some() {
            return Err(ApiError::invalid_field("file", "send one file per upload"));
        }
        let name = field.file_name().unwrap_or("file").to_owned();
        let mut buf = BytesMut::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::too_large(
                    "file",
                    format!("the file is over the limit of {limit} bytes"),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        file = Some((name, buf.freeze()));
    }
    file.ok_or_else(|| ApiError::invalid_field("file", "the upload has no `file` field"))
}

/// `POST /api/v1/sessions/{id}/attachments`: 201 `{attachment_id, name, media_type, size}`.
pub async fn upload(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    auth.require(Scope::Write)?;
    let session = load(&state, auth.0.project_id, session_id(&id)?).await?;
    let limit = state.limits.max_upload_bytes;
    let (name, bytes) = read_upload(req, limit).await?;
    let a = attachments::upload(
        &state.pool,
        &state.blobs,
        auth.0.project_id,
        session.id,
        &name,
        bytes,
        limit,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created(&a))).into_response())
}

/// What an upload answers.
pub fn created(a: &Attachment) -> serde_json::Value {
    json!({ "attachment_id": a.id, "name": a.name, "media_type": a.media_type, "size": a.size })
}

/// `GET /api/v1/sessions/{id}/attachments/{attachment_id}`: the bytes, streamed.
pub async fn download(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, attachment)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let session = session_id(&id)?;
    let attachment = Uuid::parse_str(&attachment).map_err(|_| ApiError::not_found("attachment"))?;
    let a = attachments::one(&state.pool, auth.0.project_id, session, attachment)
        .await?
        .ok_or_else(|| ApiError::not_found("attachment"))?;
    Ok(stream(&state.blobs, &a).await?)
}

/// An attachment's bytes as a streamed response. Images are shown inline; everything else is a
/// download, and nothing served may run script or be sniffed into another type.
pub async fn stream(blobs: &Blobs, a: &Attachment) -> Result<Response, BlobError> {
    let (size, chunks) = blobs.stream(&a.blob_key).await?;
    let media_type = if a.media_type.starts_with("text/") {
        format!("{}; charset=utf-8", a.media_type)
    } else {
        a.media_type.clone()
    };
    let disposition = format!(
        "{}; filename*=UTF-8''{}",
        if a.is_image() { "inline" } else { "attachment" },
        percent_encode(&a.name)
    );
    let body = Body::from_stream(chunks.map(|c| c.map_err(std::io::Error::other)));
    let mut res = body.into_response();
    let h = res.headers_mut();
    // Both values are ASCII by construction (a sniffed media type, a percent-encoded name).
    if let Ok(v) = HeaderValue::from_str(&media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(res)
}

/// RFC 5987 percent-encoding of a file name for `filename*`.
fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
