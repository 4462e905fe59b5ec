//! The server-rendered pages: sign-in, overview, jobs, chats, workers, traces and workflows,
//! with askama templates, htmx and live fragments over SSE.
//!
//! Owns routing, the browser session (a signed cookie) and CSRF checks, and turns domain values
//! into HTML. It never writes SQL: reads and state changes go through `queue`, `events`, `agent`
//! and `projects`. It shares the API's [`AppState`] so both surfaces see one pool and one hub.

mod assets;
pub mod auth;
mod chat_actions;
mod chat_files;
mod chat_live;
mod chat_trace;
mod chat_view;
mod chats;
mod error;
mod jobs;
mod live;
mod overview;
mod subagents;
mod traces;
pub mod view;
mod workers;
mod workflows;

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::routing::{get, post};

pub use auth::Keys;
pub use error::WebError;

use crate::api::AppState;

/// What page handlers share: the API's state plus the cookie-signing keys.
#[derive(Clone)]
pub struct WebState {
    pub app: AppState,
    pub keys: Arc<Keys>,
}

/// Every page route. State-changing routes sit behind the CSRF check.
pub fn router(app: AppState, keys: Keys) -> Router {
    let max_upload = app.limits.max_upload_bytes;
    let state = WebState {
        app,
        keys: Arc::new(keys),
    };
    let guarded = Router::new()
        .route("/logout", post(auth::logout))
        .merge(jobs::actions())
        .merge(chats::actions(max_upload))
        .merge(subagents::actions())
        .merge(workflows::actions())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::csrf_guard,
        ));
    Router::new()
        .route("/", get(overview::page))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/login/{code}", get(auth::login_link))
        .route("/static/{file}", get(assets::serve))
        .merge(overview::pages())
        .merge(jobs::pages())
        .merge(chats::pages())
        .merge(subagents::pages())
        .merge(workers::pages())
        .merge(traces::pages())
        .merge(workflows::pages())
        .merge(guarded)
        .layer(middleware::from_fn(error::security_headers))
        .with_state(state)
}
