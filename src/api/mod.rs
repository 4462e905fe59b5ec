//! REST v1 over axum: jobs, their events (SSE or JSON), health, the OpenAPI document, and the
//! Prometheus scrape at `/metrics` (see [`metrics`]).
//!
//! Handlers parse and check input, then call the `queue`, `events`, `agent` and `store` domains;
//! they never write SQL. Offloaded payloads (see `store::offload`) are resolved before they are
//! answered, so clients never see a blob reference. Every error is an [`ApiError`] with a JSON body, and a rejected request changes nothing.

mod attachments;
mod auth;
mod error;
mod events;
mod health;
mod input;
mod jobs;
pub mod metrics;
mod sessions;
mod traces;
mod turn_input;
mod workflows;

pub use attachments::{
    MULTIPART_OVERHEAD, created as upload_answer, read_upload, stream as attachment_response,
};

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use sqlx::PgPool;

pub use error::ApiError;

use crate::events::Hub;
use crate::llm::config::Models;
use crate::store::Blobs;
use crate::tools::Workspace;
use crate::worker::Registry;

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub hub: Hub,
    /// Kinds the API accepts, with their args checks.
    pub registry: Registry,
    /// Models and workspaces sessions may name.
    pub agent: Arc<AgentCatalog>,
    pub limits: Limits,
    /// The bearer token `/metrics` requires; without one, only loopback may scrape.
    pub metrics_token: Option<Arc<str>>,
    /// Attachments and offloaded payloads.
    pub blobs: Blobs,
    /// Where workflow files live, and the limits runs get.
    pub workflows: Arc<crate::workflow::Settings>,
}

/// What sessions may refer to.
#[derive(Debug, Clone)]
pub struct AgentCatalog {
    pub models: Models,
    pub workspaces: Vec<Workspace>,
}

/// Size limits on input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted `args`, serialized.
    pub max_args_bytes: usize,
    /// Largest accepted attachment.
    pub max_upload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_args_bytes: 1024 * 1024,
            max_upload_bytes: 20 * 1024 * 1024,
        }
    }
}

/// The API, health and metrics routes.
pub fn router(state: AppState) -> Router {
    let metrics = metrics::router(metrics::MetricsState {
        pool: state.pool.clone(),
        hub: state.hub.clone(),
        token: state.metrics_token.clone(),
    });
    let upload_body = state.limits.max_upload_bytes + attachments::MULTIPART_OVERHEAD;
    Router::new()
        .route("/api/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/api/v1/jobs/{id}", get(jobs::get))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/api/v1/jobs/{id}/wait", get(jobs::wait))
        .route("/api/v1/jobs/{id}/result", get(jobs::result))
        .route("/api/v1/jobs/{id}/events", get(events::job_events))
        .route("/api/v1/jobs/{id}/trace", get(traces::of_job))
        .route("/api/v1/jobs/{id}/children", get(jobs::children))
        .route("/api/v1/traces/{trace_id}", get(traces::get))
        .route(
            "/api/v1/sessions",
            post(sessions::create).get(sessions::list),
        )
        .route(
            "/api/v1/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/api/v1/sessions/{id}/turns", post(sessions::send))
        .route(
            "/api/v1/sessions/{id}/attachments",
            post(attachments::upload).layer(DefaultBodyLimit::max(upload_body)),
        )
        .route(
            "/api/v1/sessions/{id}/attachments/{attachment_id}",
            get(attachments::download),
        )
        .route("/api/v1/sessions/{id}/messages", get(sessions::messages))
        .route("/api/v1/sessions/{id}/events", get(sessions::events))
        .route("/api/v1/sessions/{id}/abort", post(sessions::abort))
        .route("/api/v1/sessions/{id}/subagents", get(sessions::subagents))
        .route("/api/v1/sessions/{id}/traces", get(traces::of_session))
        .route("/api/v1/workflows", get(workflows::list))
        .route("/api/v1/workflows/{name}", put(workflows::upload))
        .route("/api/v1/workflows/{name}/runs", post(workflows::start))
        .route(
            "/api/v1/workflows/{name}/cache",
            delete(workflows::clear_cache),
        )
        .route("/api/v1/workflow-runs/{id}", get(workflows::get))
        .route("/api/v1/workflow-runs/{id}/cancel", post(workflows::cancel))
        .route("/api/v1/workflow-runs/{id}/events", get(events::job_events))
        .route("/api/v1/openapi.json", get(health::openapi))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(health::not_found)
        .with_state(state)
        .merge(metrics)
}
