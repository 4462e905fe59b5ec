//! The `workflow.step` job: one `agent()` call of a workflow script. It runs the same turn loop as
//! chat turns and subagents, in a session of its own created on its first attempt, and answers
//! with the final text and its usage (the workflow reads the job's result).

use std::sync::Arc;

use serde_json::{Value, json};
use uuid::Uuid;

use super::store;
use super::turn::{self, AgentDeps, Scope, db, lost};
use crate::worker::{JobContext, JobError, Registry};

/// The job kind of a workflow step.
pub const KIND: &str = "workflow.step";

/// Adds the `workflow.step` kind to `registry`.
pub fn register(registry: Registry, deps: Arc<AgentDeps>) -> Registry {
    registry.register(KIND, move |ctx: JobContext| run(Arc::clone(&deps), ctx))
}

async fn run(deps: Arc<AgentDeps>, ctx: JobContext) -> Result<Value, JobError> {
    let session_id = ctx.args["session_id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| JobError::fail("args.session_id is missing"))?;
    let prompt = ctx.args["prompt"]
        .as_str()
        .ok_or_else(|| JobError::fail("args.prompt is missing"))?;
    let model = match ctx.args["model"].as_str() {
        Some(m) => m.to_owned(),
        None => deps.models.default_model().name.clone(),
    };
    if deps.models.get(&model).is_none() {
        return Err(JobError::fail(format!("unknown model `{model}`")));
    }
    let workspace = ctx.args["workspace"].as_str();
    let fresh = store::ensure_step_session(
        &deps.pool,
        ctx.fence(),
        ctx.project_id,
        session_id,
        prompt,
        &model,
        workspace,
    )
    .await
    .map_err(db)?;
    if !fresh {
        return Err(lost());
    }
    let scope = Scope {
        // A step is a leaf: at the depth limit it is offered no subagent tools.
        depth: deps.subagent_limits.max_depth,
        root_session_id: None,
        tools: Some(
            ctx.args["tools"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        budget_tokens: ctx.args["budget_tokens"].as_u64(),
        max_rounds: ctx.args["max_tool_calls"]
            .as_u64()
            .map(|n| (n as usize).saturating_add(1)),
    };
    let end = turn::run_loop(&deps, &ctx, &scope).await?;
    Ok(json!({
        "output": end.answer, "usage": end.usage, "cost_usd": end.cost, "model": end.model,
        "budget_exhausted": end.budget_exhausted, "session_id": end.session_id,
    }))
}
