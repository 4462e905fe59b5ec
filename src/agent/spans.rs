//! The spans a turn writes under its job span: one per provider request (each retry its own,
//! marked) and one per tool call, with OpenTelemetry GenAI attribute names where they exist
//! (`spool.*` where they do not). Written when they start and ended when they end, awaited and
//! fenced like every other write of the turn.

use serde_json::{Value, json};
use uuid::Uuid;

use super::turn::{AgentDeps, db, lost};
use crate::llm::config::{ModelConfig, Provider};
use crate::llm::types::{Completion, LlmError, Usage};
use crate::tools::ToolOutput;
use crate::trace::{Span, Status, truncate};
use crate::worker::{JobContext, JobError};

/// Tool arguments and results kept on a span, at most.
const MAX_ATTR_BYTES: usize = 16 * 1024;

fn system(model: &ModelConfig) -> &'static str {
    match model.provider {
        Provider::OpenAi => "openai",
        Provider::Anthropic => "anthropic",
        Provider::Mock => "spool.mock",
    }
}

/// Opens the span of one provider request.
pub async fn llm_start(
    deps: &AgentDeps,
    ctx: &JobContext,
    session_id: Uuid,
    model: &ModelConfig,
    round: usize,
    retry: u32,
) -> Result<Span, JobError> {
    let attrs = json!({
        "gen_ai.operation.name": "chat",
        "gen_ai.system": system(model),
        "gen_ai.request.model": model.wire_model(),
        "spool.model": model.name,
        "spool.round": round,
        "spool.retry": retry,
    });
    let name = format!("chat {}", model.wire_model());
    Span::start(
        &deps.pool,
        &ctx.trace_scope(Some(session_id)),
        None,
        "llm",
        &name,
        attrs,
    )
    .await
    .map_err(db)?
    .ok_or_else(lost)
}

/// The GenAI usage attributes of a call.
pub fn usage_attrs(usage: &Usage) -> Value {
    json!({
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cache_read_tokens,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_tokens,
        "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens,
    })
}

/// Ends a provider request's span with what came of it.
pub async fn llm_end(
    span: &Span,
    model: &ModelConfig,
    result: &Result<Completion, LlmError>,
) -> Result<(), JobError> {
    let (status, attrs) = match result {
        Ok(c) => {
            let mut a = usage_attrs(&c.usage);
            a["gen_ai.response.model"] = json!(c.model);
            a["gen_ai.response.finish_reasons"] = json!(c.finish_reason.iter().collect::<Vec<_>>());
            a["spool.cost_usd"] = json!(model.cost(&c.usage));
            (Status::Ok, a)
        }
        Err(LlmError::Cancelled) => (Status::Cancelled, json!({})),
        Err(LlmError::Retryable { message, .. }) => (
            Status::Error,
            json!({ "error.type": "retryable", "error.message": message }),
        ),
        Err(LlmError::Fatal(message)) => (
            Status::Error,
            json!({ "error.type": "fatal", "error.message": message }),
        ),
    };
    if span.end(status, attrs).await.map_err(db)? {
        Ok(())
    } else {
        Err(lost())
    }
}

/// Opens the span of one tool call.
pub async fn tool_start(
    deps: &AgentDeps,
    ctx: &JobContext,
    session_id: Uuid,
    call_id: &str,
    name: &str,
    arguments: &str,
) -> Result<Span, JobError> {
    let (args, cut) = truncate(arguments, MAX_ATTR_BYTES);
    let attrs = json!({
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.call.arguments": args,
        "spool.arguments_truncated": cut,
    });
    Span::start(
        &deps.pool,
        &ctx.trace_scope(Some(session_id)),
        None,
        "tool",
        &format!("execute_tool {name}"),
        attrs,
    )
    .await
    .map_err(db)?
    .ok_or_else(lost)
}

/// Ends a tool call's span with its (truncated) output.
pub async fn tool_end(span: &Span, out: &ToolOutput) -> Result<(), JobError> {
    let (text, cut) = truncate(&out.content, MAX_ATTR_BYTES);
    let status = if out.is_error {
        Status::Error
    } else {
        Status::Ok
    };
    let attrs = json!({
        "gen_ai.tool.call.result": text,
        "spool.result_truncated": cut || out.truncated,
    });
    if span.end(status, attrs).await.map_err(db)? {
        Ok(())
    } else {
        Err(lost())
    }
}
