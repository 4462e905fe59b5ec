//! REST v1 over axum: jobs, their events (SSE or JSON), health and the OpenAPI document.
//!
//! Handlers parse and check input, then call the `queue` and `events` domains; they never write
//! SQL. Every error is an [`ApiError`] with a JSON body, and a rejected request changes nothing.

mod auth;
mod error;
mod events;
mod health;
mod input;
mod jobs;

use axum::Router;
use axum::routing::{get, post};
use sqlx::PgPool;

pub use error::ApiError;

use crate::events::Hub;
use crate::worker::Registry;

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub hub: Hub,
    /// Kinds the API accepts, with their args checks.
    pub registry: Registry,
    pub limits: Limits,
}

/// Size limits on input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted `args`, serialized.
    pub max_args_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_args_bytes: 1024 * 1024,
        }
    }
}

/// The API and health routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/api/v1/jobs/{id}", get(jobs::get))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/api/v1/jobs/{id}/wait", get(jobs::wait))
        .route("/api/v1/jobs/{id}/events", get(events::job_events))
        .route("/api/v1/openapi.json", get(health::openapi))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(health::not_found)
        .with_state(state)
}
