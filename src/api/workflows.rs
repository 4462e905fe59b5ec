//! `/api/v1/workflows` and `/api/v1/workflow-runs`: the catalog, uploads, starting, reading and
//! cancelling runs, and clearing a workflow's step cache. A run's events stream from its job's
//! log (`/api/v1/workflow-runs/{id}/events` is the job events endpoint).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::Auth;
use super::input;
use super::{ApiError, AppState};
use crate::projects::tokens::Scope;
use crate::queue::control;
use crate::workflow::{catalog, run, store, view};

/// Largest accepted script.
const MAX_SOURCE_BYTES: usize = 256 * 1024;

/// The body of `PUT /api/v1/workflows/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    source: String,
}

/// The body of `POST /api/v1/workflows/{name}/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    #[serde(default)]
    args: Value,
    budget_tokens: Option<i64>,
}

fn run_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("workflow run"))
}

/// `GET /api/v1/workflows`: every workflow, the invalid ones with their error.
pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<Json<Value>, ApiError> {
    let entries = catalog::list(&state.pool, auth.0.project_id, &state.workflows).await?;
    Ok(Json(json!({ "workflows": entries })))
}

/// `PUT /api/v1/workflows/{name}`: stores a script after validating it.
pub async fn upload(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    auth.require(Scope::Write)?;
    if !catalog::valid_name(&name) {
        return Err(ApiError::invalid_field(
            "name",
            "a workflow name is 1–64 of a–z, 0–9, - and _",
        ));
    }
    let body: Upload = input::json(req.into_body(), MAX_SOURCE_BYTES + 1024).await?;
    let meta = catalog::validate(&body.source, state.workflows.sandbox())
        .await
        .map_err(|e| ApiError::invalid_field("source", format!("invalid workflow: {e}")))?;
    store::put_file(&state.pool, auth.0.project_id, &name, &body.source).await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "name": name, "origin": "upload", "meta": meta })),
    )
        .into_response())
}

/// `POST /api/v1/workflows/{name}/runs`: 202 with the new run.
pub async fn start(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    auth.require(Scope::Write)?;
    let body: StartRun = input::json(req.into_body(), state.limits.max_args_bytes).await?;
    if body.budget_tokens.is_some_and(|b| b < 1) {
        return Err(ApiError::invalid_field(
            "budget_tokens",
            "budget_tokens must be at least 1",
        ));
    }
    let entry = catalog::find(&state.pool, auth.0.project_id, &state.workflows, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("workflow"))?;
    if let Some(e) = &entry.error {
        return Err(ApiError::unprocessable(
            "invalid_workflow",
            "name",
            format!("workflow `{name}` is invalid: {e}"),
        ));
    }
    let args = if body.args.is_null() {
        json!({})
    } else {
        body.args
    };
    let id = run::start(
        &state.pool,
        auth.0.project_id,
        &state.workflows,
        &entry,
        &args,
        body.budget_tokens,
    )
    .await
    .map_err(|e| match e {
        run::StartError::Queue(q) => ApiError::from(q),
        run::StartError::Db(d) => ApiError::from(d),
    })?;
    let found = view::run(&state.pool, auth.0.project_id, id)
        .await?
        .ok_or_else(|| ApiError::internal("the new run is missing"))?;
    Ok((StatusCode::ACCEPTED, Json(found)).into_response())
}

/// `GET /api/v1/workflow-runs/{id}`: the run with its steps.
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = run_id(&id)?;
    let found = view::run(&state.pool, auth.0.project_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("workflow run"))?;
    Ok(Json(found).into_response())
}

/// `POST /api/v1/workflow-runs/{id}/cancel`: cancels the run and, through the job tree, its
/// running steps.
pub async fn cancel(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Write)?;
    let id = run_id(&id)?;
    if store::run(&state.pool, auth.0.project_id, id)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("workflow run"));
    }
    let outcome = control::cancel(&state.pool, auth.0.project_id, id).await?;
    let status = match outcome {
        control::Cancelled::Requested => StatusCode::ACCEPTED,
        control::Cancelled::Now | control::Cancelled::Already => StatusCode::OK,
    };
    let found = view::run(&state.pool, auth.0.project_id, id).await?;
    Ok((status, Json(found)).into_response())
}

/// `DELETE /api/v1/workflows/{name}/cache`: forgets the workflow's cached steps.
pub async fn clear_cache(
    State(state): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Scope::Write)?;
    let n = store::cache_clear(&state.pool, auth.0.project_id, &name).await?;
    Ok(Json(json!({ "workflow": name, "cleared": n })))
}
