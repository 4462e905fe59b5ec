//! The one error shape every API answer uses: `{"error": {"code", "message", "field"?}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::queue::QueueError;

/// An API failure with its status, a stable code, a readable message and the offending field.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 400: malformed input.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 naming the bad field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message).with_field(field)
    }

    /// 401: missing or invalid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the token's scope does not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404, also for another project's resources.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 409: conflicts with stored state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 413: over a size limit.
    pub fn too_large(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message).with_field(field)
    }

    /// 415: a file type that is not accepted.
    pub fn unsupported_media_type(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
        .with_field(field)
    }

    /// 422: well-formed but not processable (e.g. an unknown job kind).
    pub fn unprocessable(code: &'static str, field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_field(field)
    }

    /// 500; the cause is logged, not sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// 503: a dependency (the database) is unreachable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// Names the offending field.
    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
                tracing::error!(error = %e, "database unavailable");
                Self::unavailable("database unavailable")
            }
            other => Self::internal(other),
        }
    }
}

impl From<crate::store::BlobError> for ApiError {
    fn from(e: crate::store::BlobError) -> Self {
        match e {
            crate::store::BlobError::Db(d) => d.into(),
            crate::store::BlobError::NotFound(_) => Self::not_found("blob"),
            other => {
                tracing::error!(error = %other, "blob store unavailable");
                Self::unavailable("blob store unavailable")
            }
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NotFound => Self::not_found("job"),
            QueueError::IdempotencyConflict => Self::conflict(
                "idempotency_conflict",
                "idempotency key already used with different kind or args",
            )
            .with_field("idempotency_key"),
            QueueError::ParentNotFound => Self::not_found("parent job"),
            QueueError::WrongState(state, action) => Self::conflict(
                "invalid_state",
                format!("job is {} and cannot be {action}", state.as_str()),
            ),
            QueueError::Db(e) => e.into(),
        }
    }
}
