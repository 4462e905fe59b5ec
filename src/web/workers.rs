//! The workers page: the fleet.

use axum::Router;

use super::WebState;

/// Read-only routes.
pub fn pages() -> Router<WebState> {
    Router::new()
}
