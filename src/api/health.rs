//! Liveness, readiness, the OpenAPI document and the JSON 404.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::{ApiError, AppState};

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    crate::db::pool::ping(&state.pool)
        .await
        .map_err(|e| ApiError::unavailable(format!("database unreachable: {e}")))?;
    Ok(Json(json!({ "status": "ready" })))
}

/// The OpenAPI 3.1 description of REST v1.
pub async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// Unknown routes answer with the same JSON error shape.
pub async fn not_found() -> ApiError {
    ApiError::not_found("route")
}
