//! The `agent.title` job: after a session's first turn, the model names the session. Until then
//! the session carries its first message cut to 100 characters.

use std::sync::Arc;

use serde_json::{Value, json};
use uuid::Uuid;

use super::store;
use super::turn::{AgentDeps, db, load_session};
use crate::llm::{ChatMessage, ChatRequest, Role};
use crate::queue::{NewJob, enqueue};
use crate::worker::{JobContext, JobError, Registry};

/// The job kind that writes a session's title.
pub const TITLE_KIND: &str = "agent.title";

/// Adds the `agent.title` kind to `registry`.
pub fn register(registry: Registry, deps: Arc<AgentDeps>) -> Registry {
    registry.register(TITLE_KIND, move |ctx: JobContext| {
        run(Arc::clone(&deps), ctx)
    })
}

/// Enqueues the title job once per session (its idempotency key makes retries harmless).
pub async fn request(
    deps: &AgentDeps,
    ctx: &JobContext,
    session_id: Uuid,
) -> Result<(), sqlx::Error> {
    let mut job = NewJob::new(TITLE_KIND, json!({ "session_id": session_id }));
    job.idempotency_key = Some(format!("title:{session_id}"));
    job.parent_id = Some(ctx.id);
    // The title job hangs under this attempt's span in the trace.
    job.trace_id = Some(ctx.trace_id.clone());
    job.parent_span_id = Some(ctx.span_id.clone());
    job.stream_id = Some(session_id);
    job.max_attempts = Some(2);
    let mut conn = deps.pool.acquire().await?;
    match enqueue(&mut conn, ctx.project_id, &job).await {
        Ok(_) => Ok(()),
        Err(crate::queue::QueueError::Db(e)) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "title job not enqueued");
            Ok(())
        }
    }
}

async fn run(deps: Arc<AgentDeps>, ctx: JobContext) -> Result<Value, JobError> {
    let session = load_session(&deps, &ctx).await?;
    let session_id = session.id;
    let model = deps
        .models
        .get(&session.model)
        .cloned()
        .unwrap_or_else(|| deps.models.default_model().clone());
    if model.provider == crate::llm::config::Provider::Mock {
        // The offline model would only echo; the first-message title stays.
        return Ok(json!({ "title": session.title, "skipped": "mock model" }));
    }
    let messages = store::messages(&deps.pool, session_id).await.map_err(db)?;
    let excerpt: String = messages
        .iter()
        .filter(|m| m.role != "tool")
        .take(2)
        .filter_map(|m| {
            m.content
                .get("text")
                .and_then(Value::as_str)
                .map(|t| format!("{}: {}", m.role, t.chars().take(1000).collect::<String>()))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let req = ChatRequest {
        model: model.wire_model().to_owned(),
        messages: vec![
            ChatMessage { role: Role::System, content: Some("Write a title of at most six words for this conversation. Answer with the title only.".into()), tool_calls: vec![], tool_call_id: None, media: vec![] },
            ChatMessage { role: Role::User, content: Some(excerpt), tool_calls: vec![], tool_call_id: None, media: vec![] },
        ],
        tools: vec![],
        max_tokens: Some(32),
    };
    let done = deps
        .llm
        .stream(&model, &req, ctx.cancellation(), &mut |_| {})
        .await
        .map_err(|e| match e {
            crate::llm::LlmError::Retryable {
                message,
                retry_after,
            } => JobError::Retry {
                message,
                retry_after,
            },
            crate::llm::LlmError::Fatal(m) => JobError::fail(m),
            crate::llm::LlmError::Cancelled => JobError::Cancelled,
        })?;
    let title: String = done
        .text
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches(['"', '\'', '*', '#', ' '])
        .chars()
        .take(80)
        .collect();
    if title.is_empty() {
        return Err(JobError::fail("the model returned an empty title"));
    }
    store::set_title(&deps.pool, session_id, &title)
        .await
        .map_err(db)?;
    ctx.emit("title", json!({ "title": title }));
    Ok(json!({ "title": title, "usage": done.usage }))
}
