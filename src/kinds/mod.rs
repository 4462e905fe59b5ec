//! The built-in job kinds: `noop`, `sleep` and `http`. Each is an ordinary handler registered
//! on the worker registry, exactly as a user's own kind would be.

pub mod basic;
pub mod http;

use serde_json::Value;
use sqlx::PgPool;

use crate::projects;
use crate::worker::{JobContext, JobError, Registry};

/// What the built-in kinds need from the process.
#[derive(Clone)]
pub struct BuiltinDeps {
    pub pool: PgPool,
    pub http: reqwest::Client,
    pub net: http::NetPolicy,
}

/// Adds `noop`, `sleep` and `http` to `registry`.
pub fn register_builtins(registry: Registry, deps: BuiltinDeps) -> Registry {
    let http_deps = deps.clone();
    registry
        .register("noop", basic::noop)
        .register_validated("sleep", basic::sleep, basic::validate_sleep)
        .register_validated(
            "http",
            move |ctx: JobContext| run_http(http_deps.clone(), ctx),
            |args: &Value| http::validate(args).map(|_| ()),
        )
}

async fn run_http(deps: BuiltinDeps, ctx: JobContext) -> Result<Value, JobError> {
    let args = http::validate(&ctx.args).map_err(JobError::fail)?;
    let secret = projects::signing_secret(&deps.pool, ctx.project_id)
        .await
        .map_err(|e| JobError::retry(format!("loading the signing secret failed: {e}")))?;
    let traceparent = ctx.traceparent().header();
    http::call(
        &deps.http,
        &args,
        &secret,
        deps.net,
        Some(&traceparent),
        ctx.cancellation(),
    )
    .await
}
