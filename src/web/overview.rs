//! The overview page: job counts, throughput, queue age and the live fleet.

use axum::Router;
use axum::response::Html;

use super::auth::User;
use super::{WebError, WebState};

/// `GET /`.
pub async fn page(user: User) -> Result<Html<String>, WebError> {
    let _ = user;
    Ok(Html("overview".into()))
}

/// Routes besides `/`.
pub fn pages() -> Router<WebState> {
    Router::new()
}
