//! Running one round's tool calls: workspace tools and subagent tools side by side, each result
//! stored under the lease fence as soon as it is ready. Calls that must wait for subagents leave
//! no result; the turn then suspends, and they run again when it resumes.

use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::json;

use super::subagents::tools::{self as sub_tools, Asked, Called, Caller};
use super::turn::{db, lost};
use super::{spans, store};
use crate::llm::ToolCall;
use crate::queue::Wait;
use crate::tools::{self, ToolContext};
use crate::worker::JobError;

/// Where the calls run: the workspace tools' context, and who asks for subagent tools.
pub struct Round<'a> {
    pub caller: Caller<'a>,
    pub tool_ctx: &'a ToolContext,
}

/// Runs `calls` concurrently. `may_wait` is false when they are the calls a resumed turn runs
/// again after its wait: they answer with what there is instead of waiting twice.
pub async fn run(r: &Round<'_>, calls: &[ToolCall], may_wait: bool) -> Result<(), JobError> {
    let fence = r.caller.ctx.fence();
    let mut running: FuturesUnordered<_> = calls
        .iter()
        .map(|call| async move {
            let span = spans::tool_start(
                r.caller.deps,
                r.caller.ctx,
                r.caller.session_id,
                &call.id,
                &call.name,
                &call.arguments,
            )
            .await?;
            let started = Instant::now();
            let out = if sub_tools::NAMES.contains(&call.name.as_str()) {
                let asked = Asked {
                    may_wait,
                    span_id: &span.span_id,
                };
                match sub_tools::run(&r.caller, &asked, call).await.map_err(db)? {
                    Called::Done(out) => out,
                    Called::Wait(w) => {
                        // The span stays open across the wait only in spirit: it ends here and
                        // the rerun after the wait opens a new one.
                        spans::tool_end(&span, &tools::ToolOutput {
                            content: "waiting for subagents".into(),
                            is_error: false,
                            truncated: false,
                            data: serde_json::Value::Null,
                        })
                        .await?;
                        return Ok::<_, JobError>(Err(w));
                    }
                }
            } else {
                tools::run(&call.name, &call.arguments, r.tool_ctx).await
            };
            spans::tool_end(&span, &out).await?;
            let content = json!({
                "tool_call_id": call.id, "name": call.name, "content": out.content, "is_error": out.is_error,
                "truncated": out.truncated, "data": out.data, "duration_ms": started.elapsed().as_millis() as u64,
            });
            // A large output is written as a blob before the row and the event that refer to it;
            // both carry the same small reference.
            let content = r.caller.deps.blobs.offload_or_keep(&r.caller.deps.pool, r.caller.ctx.project_id, r.caller.ctx.id, content).await;
            let stored = store::insert_tool_result(&r.caller.deps.pool, fence, r.caller.session_id, &call.id, &content).await;
            Ok(Ok((content, stored)))
        })
        .collect();
    let mut waits: Vec<Wait> = Vec::new();
    while let Some(done) = running.next().await {
        match done? {
            Ok((content, stored)) => {
                if !stored.map_err(db)? {
                    return Err(lost());
                }
                r.caller.ctx.emit("tool_result", content);
            }
            Err(w) => waits.push(w),
        }
    }
    if r.caller.ctx.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    match merge(waits) {
        Some(w) => {
            r.caller.ctx.emit(
                "waiting",
                json!({ "subagents": w.children, "mode": if w.any { "any" } else { "all" }, "until": w.until }),
            );
            Err(JobError::Suspend(w))
        }
        None => Ok(()),
    }
}

/// Several waiting calls in one round become one wait: on all their subagents, on any when one
/// of them asked for any, until the earliest deadline.
fn merge(waits: Vec<Wait>) -> Option<Wait> {
    let mut it = waits.into_iter();
    let mut w = it.next()?;
    for other in it {
        w.any |= other.any;
        w.until = w.until.min(other.until);
        for c in other.children {
            if !w.children.contains(&c) {
                w.children.push(c);
            }
        }
    }
    Some(w)
}
