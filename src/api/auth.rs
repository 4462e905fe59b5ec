//! Bearer-token authentication: every request resolves to one project and a scope.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::projects::tokens::{self, Principal, Scope};

/// The caller, resolved from `Authorization: Bearer <token>`.
pub struct Auth(pub Principal);

impl Auth {
    /// Refuses the request unless the token's scope is at least `needed`.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        if self.0.scope >= needed {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this token has scope `{}`; `{}` is needed",
                self.0.scope.as_str(),
                needed.as_str()
            )))
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing Authorization: Bearer <token> header")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization header must be `Bearer <token>`")
            })?;
        tokens::verify(&state.pool, token)
            .await?
            .map(Auth)
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked token"))
    }
}
