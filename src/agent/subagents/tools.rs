//! The tools a turn uses to spawn, watch, collect and cancel subagents. A wait that cannot be
//! answered yet becomes a [`Wait`]: the turn suspends and the call runs again when it resumes.

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::store::{self, By, NewSubagent, Subagent};
use super::{KIND, Limits};
use crate::agent::turn::AgentDeps;
use crate::llm::ToolCall;
use crate::queue::{Enqueued, NewJob, Wait, control, enqueue};
use crate::tools::{ToolOutput, ToolSpec};
use crate::worker::JobContext;

/// Names of the subagent tools.
pub const NAMES: [&str; 5] = [
    "spawn_subagent",
    "subagent_status",
    "subagent_result",
    "wait_subagents",
    "cancel_subagent",
];

/// What one call came to.
pub enum Called {
    Done(ToolOutput),
    /// Not answerable yet: suspend the turn until this holds, then run the call again.
    Wait(Wait),
}

/// Who is calling: the turn (depth 0) or a subagent, in which session, with which tools.
pub struct Caller<'a> {
    pub deps: &'a AgentDeps,
    pub ctx: &'a JobContext,
    pub session_id: Uuid,
    pub root_session_id: Uuid,
    pub model: &'a str,
    pub workspace: Option<&'a str>,
    pub depth: i32,
    /// Tools a subagent may be given (the caller's own, workspace ones).
    pub grantable: &'a [String],
}

/// What one call adds to its caller.
pub struct Asked<'a> {
    /// False when this call already waited once (the turn resumed from that wait).
    pub may_wait: bool,
    /// The call's `execute_tool` span: a spawned subagent's job span hangs under it.
    pub span_id: &'a str,
}

/// The tools offered at `depth`: none beyond the depth limit.
pub fn specs(depth: i32, limits: &Limits) -> Vec<ToolSpec> {
    if depth >= limits.max_depth {
        return Vec::new();
    }
    let id = json!({ "type": "string", "description": "The subagent_id spawn_subagent returned." });
    let spec = |name: &str, description: &str, parameters: Value| ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters,
    };
    vec![
        spec(
            "cancel_subagent",
            "Cancel a subagent and every subagent below it.",
            json!({ "type": "object", "properties": { "subagent_id": id }, "required": ["subagent_id"] }),
        ),
        spec(
            "spawn_subagent",
            "Start a subagent that works on `prompt` in the background, on its own, and returns at once. Collect its answer later with subagent_result or wait_subagents.",
            json!({ "type": "object", "properties": {
                "prompt": { "type": "string", "description": "The complete task; the subagent sees nothing else." },
                "label": { "type": "string" },
                "model": { "type": "string" },
                "tools": { "type": "array", "items": { "type": "string" }, "description": "Tools it may use (default: your workspace tools)." },
                "budget_tokens": { "type": "integer", "minimum": 1 } }, "required": ["prompt"] }),
        ),
        spec(
            "subagent_result",
            "A subagent's final answer; with wait_s, wait up to that many seconds for it.",
            json!({ "type": "object", "properties": { "subagent_id": id, "wait_s": { "type": "integer", "minimum": 0 } }, "required": ["subagent_id"] }),
        ),
        spec(
            "subagent_status",
            "A subagent's status, elapsed time and tokens used so far.",
            json!({ "type": "object", "properties": { "subagent_id": id }, "required": ["subagent_id"] }),
        ),
        spec(
            "wait_subagents",
            "Wait until all (or any) of the given subagents (default: all you spawned) have finished, up to wait_s seconds; returns their results.",
            json!({ "type": "object", "properties": {
                "ids": { "type": "array", "items": { "type": "string" } },
                "mode": { "type": "string", "enum": ["all", "any"] },
                "wait_s": { "type": "integer", "minimum": 0 } }, "required": ["wait_s"] }),
        ),
    ]
}

/// Runs one subagent tool call. Never fails the turn: problems are tool errors for the model,
/// except a database error, which the caller retries as a whole attempt.
pub async fn run(
    c: &Caller<'_>,
    asked: &Asked<'_>,
    call: &ToolCall,
) -> Result<Called, sqlx::Error> {
    let args: Value = serde_json::from_str(&call.arguments).unwrap_or(Value::Null);
    let out = match call.name.as_str() {
        "spawn_subagent" => match serde_json::from_value::<Spawn>(args) {
            Ok(a) => spawn(c, asked.span_id, &call.id, a).await?,
            Err(e) => ToolOutput::error(format!("invalid arguments: {e}")),
        },
        "subagent_status" | "subagent_result" | "cancel_subagent" => {
            let Some(id) = args["subagent_id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
            else {
                return Ok(Called::Done(ToolOutput::error(
                    "subagent_id must be the id spawn_subagent returned",
                )));
            };
            let Some(sub) = own(c, id).await? else {
                return Ok(Called::Done(ToolOutput::error(format!(
                    "no subagent {id} was spawned in this session"
                ))));
            };
            match call.name.as_str() {
                "subagent_status" => answer(status(&sub)),
                "cancel_subagent" => cancel(c, &sub).await?,
                _ => {
                    let wait_s = args["wait_s"].as_u64().unwrap_or(0);
                    return collect(c, asked.may_wait, vec![sub], false, wait_s).await;
                }
            }
        }
        "wait_subagents" => {
            let mut subs =
                store::list(&c.deps.pool, c.ctx.project_id, By::Parent, c.ctx.id).await?;
            if let Some(ids) = args["ids"].as_array() {
                let wanted: Vec<Option<Uuid>> = ids
                    .iter()
                    .map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
                    .collect();
                if let Some(bad) = wanted
                    .iter()
                    .position(|w| w.is_none_or(|w| !subs.iter().any(|s| s.id == w)))
                {
                    return Ok(Called::Done(ToolOutput::error(format!(
                        "ids[{bad}] is not a subagent you spawned"
                    ))));
                }
                subs.retain(|s| wanted.contains(&Some(s.id)));
            }
            if subs.is_empty() {
                return Ok(Called::Done(ToolOutput::error(
                    "there are no subagents to wait for",
                )));
            }
            let any = args["mode"].as_str() == Some("any");
            let wait_s = args["wait_s"].as_u64().unwrap_or(0);
            return collect(c, asked.may_wait, subs, any, wait_s).await;
        }
        other => ToolOutput::error(format!("unknown tool `{other}`")),
    };
    Ok(Called::Done(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spawn {
    prompt: String,
    label: Option<String>,
    model: Option<String>,
    tools: Option<Vec<String>>,
    budget_tokens: Option<i64>,
}

async fn spawn(
    c: &Caller<'_>,
    span_id: &str,
    call_id: &str,
    a: Spawn,
) -> Result<ToolOutput, sqlx::Error> {
    let limits = &c.deps.subagent_limits;
    let depth = c.depth + 1;
    if depth > limits.max_depth {
        return Ok(ToolOutput::error(format!(
            "depth limit reached: subagents may nest {} level(s) deep, and this one would be level {depth}",
            limits.max_depth
        )));
    }
    if a.prompt.trim().is_empty() {
        return Ok(ToolOutput::error("prompt must not be empty"));
    }
    if a.budget_tokens.is_some_and(|b| b < 1) {
        return Ok(ToolOutput::error("budget_tokens must be at least 1"));
    }
    let model = a.model.unwrap_or_else(|| c.model.to_owned());
    if c.deps.models.get(&model).is_none() {
        return Ok(ToolOutput::error(format!("unknown model `{model}`")));
    }
    let tools = a.tools.unwrap_or_else(|| c.grantable.to_vec());
    if let Some(bad) = tools.iter().find(|t| !c.grantable.contains(t)) {
        return Ok(ToolOutput::error(format!(
            "tool `{bad}` cannot be given; available: {}",
            c.grantable.join(", ")
        )));
    }
    let mut tx = c.deps.pool.begin().await?;
    let (open, spawned) = store::counts(&mut tx, c.ctx.project_id, c.ctx.id).await?;
    if spawned >= limits.per_turn {
        return Ok(ToolOutput::error(format!(
            "limit reached: at most {} subagents per turn, and {spawned} were spawned already",
            limits.per_turn
        )));
    }
    if open >= limits.per_project {
        return Ok(ToolOutput::error(format!(
            "limit reached: {open} subagents are unfinished in this project (at most {}); wait for some to finish",
            limits.per_project
        )));
    }
    let lane = store::quietest_lane(&mut tx, c.ctx.id, limits.running_per_parent.max(1)).await?;
    let hidden = Uuid::now_v7();
    let mut job = NewJob::new(
        KIND,
        json!({ "session_id": hidden, "root_session_id": c.root_session_id, "depth": depth,
                "tools": tools, "budget_tokens": a.budget_tokens, "model": model }),
    );
    job.parent_id = Some(c.ctx.id);
    job.stream_id = Some(hidden);
    job.concurrency_key = Some(format!("subagents:{}:{lane}", c.ctx.id));
    // A turn retried after a crash runs this call again: the key makes it find the same child.
    job.idempotency_key = Some(format!("spawn:{}:{call_id}", c.ctx.id));
    job.trace_id = Some(c.ctx.trace_id.clone());
    job.parent_span_id = Some(span_id.to_owned());
    job.max_attempts = Some(3);
    let child = match enqueue(&mut tx, c.ctx.project_id, &job).await {
        Ok(Enqueued::Created(j)) => j,
        Ok(Enqueued::Existing(j)) => {
            return Ok(ToolOutput {
                data: json!({ "subagent_id": j.id }),
                ..answer(json!({ "subagent_id": j.id, "status": j.state }))
            });
        }
        Err(crate::queue::QueueError::Db(e)) => return Err(e),
        Err(e) => return Ok(ToolOutput::error(format!("could not spawn: {e}"))),
    };
    store::insert(
        &mut tx,
        &NewSubagent {
            id: child.id,
            project_id: c.ctx.project_id,
            session_id: c.session_id,
            root_session_id: c.root_session_id,
            parent_job_id: c.ctx.id,
            hidden_session_id: hidden,
            depth,
            label: a.label.as_deref(),
            prompt: &a.prompt,
            model: &model,
            tools: &tools,
            budget_tokens: a.budget_tokens,
            workspace: c.workspace,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(ToolOutput {
        data: json!({ "subagent_id": child.id }),
        ..answer(json!({ "subagent_id": child.id, "status": "queued" }))
    })
}

/// A subagent of this session (spawned by any of its turns, or by this subagent).
async fn own(c: &Caller<'_>, id: Uuid) -> Result<Option<Subagent>, sqlx::Error> {
    let found = store::list(&c.deps.pool, c.ctx.project_id, By::Id, id).await?;
    Ok(found.into_iter().find(|s| s.session_id == c.session_id))
}

fn status(s: &Subagent) -> Value {
    let end = s.finished_at.unwrap_or_else(Utc::now);
    let elapsed = s
        .started_at
        .map(|t| (end - t).num_milliseconds() as f64 / 1000.0);
    json!({
        "subagent_id": s.id, "label": s.label, "status": s.status, "started_at": s.started_at,
        "finished_at": s.finished_at, "elapsed_s": elapsed.unwrap_or(0.0),
        "tokens_used": s.input_tokens + s.output_tokens,
    })
}

async fn cancel(c: &Caller<'_>, s: &Subagent) -> Result<ToolOutput, sqlx::Error> {
    if s.finished() {
        return Ok(answer(
            json!({ "subagent_id": s.id, "status": s.status, "cancelled": false, "note": "it had already finished" }),
        ));
    }
    match control::cancel(&c.deps.pool, c.ctx.project_id, s.id).await {
        Ok(_) => Ok(answer(json!({ "subagent_id": s.id, "cancelled": true }))),
        Err(crate::queue::QueueError::Db(e)) => Err(e),
        Err(e) => Ok(ToolOutput::error(format!("could not cancel: {e}"))),
    }
}

/// Answers with the results when the condition holds (or waiting is over), otherwise asks the
/// turn to wait for the unfinished ones.
async fn collect(
    c: &Caller<'_>,
    may_wait: bool,
    subs: Vec<Subagent>,
    any: bool,
    wait_s: u64,
) -> Result<Called, sqlx::Error> {
    let done = subs.iter().filter(|s| s.finished()).count();
    let holds = if any { done > 0 } else { done == subs.len() };
    if !holds && wait_s > 0 && may_wait {
        let wait_s = wait_s.min(c.deps.subagent_limits.max_wait_s);
        return Ok(Called::Wait(Wait {
            children: subs
                .iter()
                .filter(|s| !s.finished())
                .map(|s| s.id)
                .collect(),
            any,
            until: Utc::now() + chrono::Duration::seconds(wait_s as i64),
        }));
    }
    let finished: Vec<Uuid> = subs.iter().filter(|s| s.finished()).map(|s| s.id).collect();
    store::collect(&c.deps.pool, c.ctx.fence(), &finished).await?;
    let results: Vec<Value> = subs
        .iter()
        .map(|s| {
            if s.finished() {
                json!({ "subagent_id": s.id, "label": s.label, "status": s.status,
                        "output": s.output.as_deref().or(s.error.as_deref()).unwrap_or(""),
                        "usage": { "input_tokens": s.input_tokens, "output_tokens": s.output_tokens, "cost_usd": s.cost_usd } })
            } else {
                json!({ "subagent_id": s.id, "label": s.label, "status": s.status, "result": "not finished" })
            }
        })
        .collect();
    Ok(Called::Done(answer(json!({ "results": results }))))
}

fn answer(v: Value) -> ToolOutput {
    ToolOutput {
        content: v.to_string(),
        is_error: false,
        truncated: false,
        data: Value::Null,
    }
}
