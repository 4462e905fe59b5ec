//! A step's tool calls: run concurrently, each result offloaded when large, stored under the
//! lease fence keyed by `(turn, tool_call_id)`, and announced as soon as it is done.

use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::json;
use uuid::Uuid;

use super::spans;
use super::store;
use super::turn::{AgentDeps, db, lost};
use crate::llm::ToolCall;
use crate::tools::{self, ToolContext};
use crate::worker::{JobContext, JobError};

/// Runs calls concurrently; each result is stored (fenced) and announced as soon as it is done.
pub(super) async fn run_tools(
    deps: &AgentDeps,
    ctx: &JobContext,
    session_id: Uuid,
    calls: &[ToolCall],
    tool_ctx: &ToolContext,
) -> Result<(), JobError> {
    let fence = ctx.fence();
    let mut running: FuturesUnordered<_> = calls
        .iter()
        .map(|call| async move {
            let span =
                spans::tool_start(deps, ctx, session_id, &call.id, &call.name, &call.arguments)
                    .await?;
            let started = Instant::now();
            let out = tools::run(&call.name, &call.arguments, tool_ctx).await;
            spans::tool_end(&span, &out).await?;
            let content = json!({
                "tool_call_id": call.id, "name": call.name, "content": out.content, "is_error": out.is_error,
                "truncated": out.truncated, "data": out.data, "duration_ms": started.elapsed().as_millis() as u64,
            });
            // A large output is written as a blob before the row and the event that refer to it;
            // both carry the same small reference.
            let content = deps.blobs.offload_or_keep(&deps.pool, ctx.project_id, ctx.id, content).await;
            let stored = store::insert_tool_result(&deps.pool, fence, session_id, &call.id, &content).await;
            Ok::<_, JobError>((content, stored))
        })
        .collect();
    while let Some(done) = running.next().await {
        let (content, stored) = done?;
        if !stored.map_err(db)? {
            return Err(lost());
        }
        ctx.emit("tool_result", content);
    }
    if ctx.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    Ok(())
}
