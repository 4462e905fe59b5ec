//! The `agent.subagent` job: the turn loop on the subagent's hidden session, with the tools and
//! budget it was given; at the end its answer is recorded and announced in the parent's log.

use std::sync::Arc;

use serde_json::{Value, json};
use uuid::Uuid;

use super::{KIND, store};
use crate::agent::turn::{self, AgentDeps, Scope, db, lost};
use crate::worker::{JobContext, JobError, Registry};

/// Adds the `agent.subagent` kind to `registry`.
pub fn register(registry: Registry, deps: Arc<AgentDeps>) -> Registry {
    registry.register(KIND, move |ctx: JobContext| run(Arc::clone(&deps), ctx))
}

async fn run(deps: Arc<AgentDeps>, ctx: JobContext) -> Result<Value, JobError> {
    let arg_uuid = |k: &str| {
        ctx.args[k]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| JobError::fail(format!("args.{k} is missing")))
    };
    let scope = Scope {
        depth: ctx.args["depth"].as_i64().unwrap_or(1) as i32,
        root_session_id: Some(arg_uuid("root_session_id")?),
        tools: ctx.args["tools"].as_array().map(|t| {
            t.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        }),
        budget_tokens: ctx.args["budget_tokens"].as_u64(),
        max_rounds: None,
    };
    let end = turn::run_loop(&deps, &ctx, &scope).await?;
    let text = end.answer.clone();
    let (status, output) = if end.budget_exhausted {
        let spent = end.usage.input_tokens + end.usage.output_tokens;
        (
            "budget_exhausted",
            format!(
                "budget exhausted: {spent} tokens used of {}. Last answer so far: {text}",
                scope.budget_tokens.unwrap_or(0)
            ),
        )
    } else {
        ("succeeded", text)
    };
    let usage = (
        end.usage.input_tokens as i64,
        end.usage.output_tokens as i64,
        end.cost,
    );
    if !store::finish(&deps.pool, ctx.fence(), status, &output, usage)
        .await
        .map_err(db)?
    {
        return Err(lost());
    }
    let summary: String = output.chars().take(280).collect();
    ctx.tell_parent(
        "subagent_completed",
        json!({ "subagent_id": ctx.id, "status": status, "summary": summary }),
    );
    Ok(json!({ "status": status, "output": output, "usage": end.usage, "cost_usd": end.cost }))
}

/// The context note a new turn of `session_id` gets about subagents that finished after the turn
/// that spawned them had ended: nothing is lost, even when no turn waited for them.
pub async fn notices(
    deps: &AgentDeps,
    ctx: &JobContext,
    session_id: Uuid,
) -> Result<String, JobError> {
    let rows = store::notices_for_turn(&deps.pool, ctx.fence(), session_id)
        .await
        .map_err(db)?;
    if rows.is_empty() {
        return Ok(String::new());
    }
    let mut out = String::from(
        "\n\nBackground subagents finished after the turn that started them had ended:",
    );
    for (id, label, status, output) in rows {
        let label = label.map(|l| format!(" ({l})")).unwrap_or_default();
        out.push_str(&format!(
            "\n- subagent {id}{label}: {status}. Result: {output}"
        ));
    }
    Ok(out)
}
