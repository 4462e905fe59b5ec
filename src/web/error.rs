//! Page failures as readable HTML, and the headers every page carries.

use askama::Template;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::view::Layout;
use crate::agent::sessions::SessionError;
use crate::queue::QueueError;

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// No valid browser session: go to the sign-in page, then back to `next`.
    #[error("sign in first")]
    SignIn { next: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("something went wrong on the server: {0}")]
    Internal(String),
}

impl WebError {
    fn status(&self) -> StatusCode {
        match self {
            Self::SignIn { .. } => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for WebError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error on a page");
        Self::Internal("the database did not answer; try again".into())
    }
}

impl From<askama::Error> for WebError {
    fn from(e: askama::Error) -> Self {
        tracing::error!(error = %e, "template error");
        Self::Internal("a page failed to render".into())
    }
}

impl From<QueueError> for WebError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NotFound => Self::NotFound("job"),
            QueueError::Db(d) => d.into(),
            other => Self::Conflict(other.to_string()),
        }
    }
}

impl From<SessionError> for WebError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotFound => Self::NotFound("chat"),
            SessionError::Busy => Self::Conflict("a turn is already running in this chat".into()),
            SessionError::Invalid(i) => Self::BadRequest(i.to_string()),
            SessionError::Queue(q) => q.into(),
            SessionError::Db(d) => d.into(),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    layout: Layout,
    status: u16,
    title: &'a str,
    message: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::SignIn { next } = &self {
            let to = format!("/login?next={}", super::view::url_encode(next));
            return Redirect::to(&to).into_response();
        }
        let page = ErrorPage {
            layout: Layout::bare(),
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            message: self.to_string(),
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, self.to_string()).into_response(),
        }
    }
}

/// Adds the content security policy and friends: no inline script runs, so text that slipped
/// through escaping still could not execute.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
             form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}
