//! The chat list and the chat page: send, abort, cancel a queued turn.

use axum::Router;

use super::WebState;

/// Read-only routes.
pub fn pages() -> Router<WebState> {
    Router::new()
}

/// State-changing routes (behind the CSRF check).
pub fn actions() -> Router<WebState> {
    Router::new()
}
