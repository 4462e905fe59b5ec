//! The `agent.turn` job: load the context, stream the model's reply into the event log, run the
//! tools it calls, and checkpoint every step under the lease fence, so a retried turn resumes
//! from its last checkpoint and never runs a finished tool call again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::compaction::{self, Policy};
use super::history::Files;
use super::saver::{Buffer, PartialSaver};
use super::sessions::TURN_KIND;
use super::spans;
use super::store;
use super::subagents;
use super::subagents::tools::Caller;
use super::tool_calls::{self, Round};
use super::{attachments, history, title};
use crate::llm::config::{ModelConfig, Models};
use crate::llm::{ChatRequest, Completion, LlmClient, LlmError, StreamEvent, ToolDef, Usage};
use crate::store::Blobs;
use crate::tools::{self, ToolContext, Workspace};
use crate::worker::{JobContext, JobError, Registry};

/// What turns need from the process.
pub struct AgentDeps {
    pub pool: PgPool,
    pub llm: LlmClient,
    pub models: Models,
    pub workspaces: Vec<Workspace>,
    pub http: reqwest::Client,
    pub allow_loopback: bool,
    pub allow_private: bool,
    /// Rounds of model calls per turn; on the last one the tools are withheld.
    pub max_rounds: usize,
    /// Retries of one model call after a retryable failure, before the job attempt fails.
    pub step_retries: u32,
    pub compaction: Policy,
    /// Saves every streaming reply's text about every 250 ms, in one statement.
    pub saver: PartialSaver,
    /// Limits on spawning subagents.
    pub subagent_limits: subagents::Limits,
    /// Attachments' bytes, and where tool outputs over the offload limit go.
    pub blobs: Blobs,
}

/// Adds the `agent.turn` kind to `registry`.
pub fn register(registry: Registry, deps: Arc<AgentDeps>) -> Registry {
    let for_titles = Arc::clone(&deps);
    let for_subagents = Arc::clone(&deps);
    let for_steps = Arc::clone(&deps);
    let registry = registry.register(TURN_KIND, move |ctx: JobContext| {
        run(Arc::clone(&deps), ctx)
    });
    let registry = subagents::kind::register(registry, for_subagents);
    let registry = super::step::register(registry, for_steps);
    title::register(registry, for_titles)
}

/// The session named by a job's `args.session_id`, in the job's project.
pub(super) async fn load_session(
    deps: &AgentDeps,
    ctx: &JobContext,
) -> Result<store::Session, JobError> {
    let session_id = ctx
        .args
        .get("session_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| JobError::fail("args.session_id is missing"))?;
    let mut conn = deps.pool.acquire().await.map_err(db)?;
    store::session(&mut conn, ctx.project_id, session_id, false)
        .await
        .map_err(db)?
        .ok_or_else(|| JobError::fail("the session no longer exists"))
}

pub(super) fn lost() -> JobError {
    JobError::retry("lease lost while writing the transcript")
}

pub(super) fn db(e: sqlx::Error) -> JobError {
    JobError::retry(format!("database error: {e}"))
}

async fn run(deps: Arc<AgentDeps>, ctx: JobContext) -> Result<Value, JobError> {
    let end = run_loop(&deps, &ctx, &Scope::default()).await?;
    // Subagents' usage rolls up into the turn that spawned them.
    let (sub_in, sub_out, sub_cost) = subagents::store::usage_of_children(&deps.pool, ctx.id)
        .await
        .map_err(db)?;
    let subs = json!({ "input_tokens": sub_in, "output_tokens": sub_out, "cost_usd": sub_cost });
    ctx.emit(
        "usage",
        json!({ "usage": end.usage, "cost_usd": end.cost, "model": end.model, "rounds": end.rounds,
                "subagents": subs, "total_cost_usd": end.cost + sub_cost }),
    );
    Ok(
        json!({ "session_id": end.session_id, "usage": end.usage, "cost_usd": end.cost,
               "rounds": end.rounds, "subagents": subs, "total_cost_usd": end.cost + sub_cost }),
    )
}

/// What sets a subagent's loop apart from a chat turn's.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// 0 for a chat turn.
    pub depth: i32,
    /// The visible chat session at the root (the session itself for a turn).
    pub root_session_id: Option<Uuid>,
    /// The workspace tools it may use (all when `None`).
    pub tools: Option<Vec<String>>,
    /// Stop once input plus output tokens reach this.
    pub budget_tokens: Option<u64>,
    /// Rounds of model calls (the last without tools); the process default when `None`.
    pub max_rounds: Option<usize>,
}

/// How a loop ended.
pub struct LoopEnd {
    pub session_id: Uuid,
    pub usage: Usage,
    pub cost: f64,
    pub model: String,
    pub rounds: usize,
    pub budget_exhausted: bool,
    /// The text of the last complete reply (the answer, or what there was when it stopped).
    pub answer: String,
}

/// The turn loop shared by chat turns and subagents: context, model call, tools, until the model
/// answers without tools (or the rounds or the budget run out).
pub(super) async fn run_loop(
    deps: &AgentDeps,
    ctx: &JobContext,
    scope: &Scope,
) -> Result<LoopEnd, JobError> {
    let fence = ctx.fence();
    let session = load_session(deps, ctx).await?;
    let session_id = session.id;
    let root_session_id = scope.root_session_id.unwrap_or(session_id);
    let model_name = ctx
        .args
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&session.model)
        .to_owned();
    let model = deps
        .models
        .get(&model_name)
        .cloned()
        .ok_or_else(|| JobError::fail(format!("unknown model `{model_name}`")))?;
    if !store::discard_partial(&deps.pool, fence)
        .await
        .map_err(db)?
    {
        return Err(lost());
    }
    let workspace = session
        .workspace
        .as_deref()
        .and_then(|w| deps.workspaces.iter().find(|x| x.name == w))
        .cloned();
    let workspace_specs: Vec<_> = tools::specs(workspace.as_ref())
        .into_iter()
        .filter(|s| scope.tools.as_ref().is_none_or(|t| t.contains(&s.name)))
        .collect();
    let grantable: Vec<String> = workspace_specs.iter().map(|s| s.name.clone()).collect();
    let mut defs: Vec<ToolDef> = workspace_specs
        .into_iter()
        .chain(subagents::tools::specs(scope.depth, &deps.subagent_limits))
        .map(|s| ToolDef {
            name: s.name,
            description: s.description,
            parameters: s.parameters,
        })
        .collect();
    // Sorted by name across both sets: a stable prefix for providers' prompt caches.
    defs.sort_by(|a, b| a.name.cmp(&b.name));
    let tool_ctx = ToolContext {
        workspace,
        cancel: ctx.cancellation().clone(),
        http: deps.http.clone(),
        allow_loopback: deps.allow_loopback,
        allow_private: deps.allow_private,
    };
    // The model learns which workspace its file tools read, without the server's paths.
    let mut system = match (&session.system_prompt, &tool_ctx.workspace) {
        (p, Some(w)) => Some(format!(
            "{}{}Files of the workspace `{}` can be read with the file tools; paths are relative to its root.",
            p.as_deref().unwrap_or(""),
            if p.as_deref().is_some_and(|p| !p.is_empty()) {
                "\n\n"
            } else {
                ""
            },
            w.name
        )),
        (p, None) => p.clone(),
    };
    if scope.depth == 0 {
        let notices = subagents::kind::notices(deps, ctx, session_id).await?;
        if !notices.is_empty() {
            system = Some(format!("{}{notices}", system.unwrap_or_default()));
        }
    }
    let round = Round {
        caller: Caller {
            deps,
            ctx,
            session_id,
            root_session_id,
            model: &model.name,
            workspace: session.workspace.as_deref(),
            depth: scope.depth,
            grantable: &grantable,
        },
        tool_ctx: &tool_ctx,
    };
    let mut total = Usage::default();
    let mut rounds = 0usize;
    let mut budget_exhausted = false;
    let mut answer = String::new();
    let (mut summary, mut upto) = (session.summary.clone(), session.summary_upto);
    let (first_turn, files) = {
        let all = store::messages(&deps.pool, session_id).await.map_err(db)?;
        let mut visible: Vec<_> = all
            .into_iter()
            .filter(|m| m.turn_id <= ctx.id && upto.is_none_or(|u| m.turn_id > u))
            .collect();
        resolve_outputs(deps, ctx, &mut visible).await;
        // Attachments are read once per turn: only user messages name them, and those do not
        // change while the turn runs.
        let named: Vec<&Value> = visible
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| &m.content)
            .collect();
        let loaded = attachments::load(&deps.pool, &deps.blobs, session_id, &named)
            .await
            .map_err(db)?;
        let files = Files {
            loaded,
            vision: model.vision,
        };
        if deps.compaction.due(&visible, model.context_window) {
            compaction::compact(
                deps,
                ctx,
                &model,
                session_id,
                &visible,
                &mut summary,
                &mut upto,
                &mut total,
            )
            .await?;
        }
        (
            upto.is_none() && visible.iter().all(|m| m.turn_id == ctx.id),
            files,
        )
    };
    loop {
        let mut messages = store::messages(&deps.pool, session_id).await.map_err(db)?;
        // Later turns' messages (already stored while they wait) are not this turn's context, and
        // summarised turns are sent as their summary.
        messages.retain(|m| m.turn_id <= ctx.id && upto.is_none_or(|u| m.turn_id > u));
        resolve_outputs(deps, ctx, &mut messages).await;
        let pending = history::pending_calls(&messages, ctx.id);
        if !pending.is_empty() {
            // Resuming after a crash or a wait: only the calls without a stored result run, and
            // after a wait they answer with what there is instead of waiting again.
            tool_calls::run(&round, &pending, ctx.resumed_wait.is_none()).await?;
            continue;
        }
        let done_rounds = messages
            .iter()
            .filter(|m| m.turn_id == ctx.id && m.role == "assistant" && m.status == "complete")
            .count();
        if let Some(last) = messages
            .iter()
            .rev()
            .find(|m| m.turn_id == ctx.id && m.role == "assistant" && m.status == "complete")
            && history::tool_calls(&last.content).is_empty()
        {
            // The reply was already complete when the previous attempt died.
            answer = last.content["text"].as_str().unwrap_or("").to_owned();
            break;
        }
        let offer_tools = done_rounds + 1 < scope.max_rounds.unwrap_or(deps.max_rounds);
        let req = ChatRequest {
            model: model.wire_model().to_owned(),
            messages: history::build(system.as_deref(), summary.as_deref(), &messages, &files),
            tools: if offer_tools {
                defs.clone()
            } else {
                Vec::new()
            },
            max_tokens: None,
        };
        let completion = step(deps, ctx, &model, &req, session_id, done_rounds).await?;
        answer.clone_from(&completion.text);
        total.add(&completion.usage);
        rounds += 1;
        if completion.tool_calls.is_empty() || !offer_tools {
            break;
        }
        if scope
            .budget_tokens
            .is_some_and(|b| total.input_tokens + total.output_tokens >= b)
        {
            budget_exhausted = true;
            break;
        }
        tool_calls::run(&round, &completion.tool_calls, true).await?;
    }
    // A cancelled turn starts no title job under it.
    if scope.depth == 0
        && first_turn
        && !ctx.is_cancelled()
        && let Err(e) = title::request(deps, ctx, session_id).await
    {
        tracing::warn!(error = %e, "could not request a session title");
    }
    Ok(LoopEnd {
        session_id,
        cost: model.cost(&total),
        usage: total,
        model: model.name.clone(),
        rounds,
        budget_exhausted,
        answer,
    })
}

/// One model call, streamed and checkpointed; retried on retryable failures.
async fn step(
    deps: &AgentDeps,
    ctx: &JobContext,
    model: &ModelConfig,
    req: &ChatRequest,
    session_id: Uuid,
    round: usize,
) -> Result<Completion, JobError> {
    let fence = ctx.fence();
    let mut retries = 0;
    loop {
        let message_id = Uuid::now_v7();
        let model_name = Some(model.name.as_str());
        if !store::upsert_assistant(
            &deps.pool,
            fence,
            session_id,
            message_id,
            &json!({ "text": "" }),
            "streaming",
            None,
            model_name,
        )
        .await
        .map_err(db)?
        {
            return Err(lost());
        }
        ctx.emit("message_started", json!({ "message_id": message_id, "round": round, "model": model.name, "retry": retries }));
        let span = spans::llm_start(deps, ctx, session_id, model, round, retries).await?;
        let partial: Buffer = Arc::default();
        deps.saver.track(message_id, fence, Arc::clone(&partial));
        let started = Instant::now();
        let mut on_event = |ev: StreamEvent| {
            match ev {
            StreamEvent::TextDelta(t) => {
                ctx.emit_delta("delta", json!({ "message_id": message_id, "text": t }));
                if let Ok(mut p) = partial.lock() { p.text.push_str(&t); }
            }
            StreamEvent::ReasoningDelta(t) => {
                ctx.emit_delta("reasoning_delta", json!({ "message_id": message_id, "text": t }));
                if let Ok(mut p) = partial.lock() { p.reasoning.push_str(&t); }
            }
            StreamEvent::ToolCall(c) => ctx.emit("tool_call", json!({ "message_id": message_id, "id": c.id, "name": c.name, "arguments": c.arguments })),
        }
        };
        let result = deps
            .llm
            .stream(model, req, ctx.cancellation(), &mut on_event)
            .await;
        spans::llm_end(&span, model, &result).await?;
        // Only rows still `streaming` take partial saves, so the final write below cannot be
        // overtaken by a late one.
        deps.saver.forget(message_id);
        let (text, reasoning) = partial
            .lock()
            .map(|p| (p.text.clone(), p.reasoning.clone()))
            .unwrap_or_default();
        match result {
            Ok(c) => {
                let content =
                    json!({ "text": c.text, "reasoning": c.reasoning, "tool_calls": c.tool_calls });
                let usage = json!(c.usage);
                if !store::upsert_assistant(
                    &deps.pool,
                    fence,
                    session_id,
                    message_id,
                    &content,
                    "complete",
                    Some(&usage),
                    Some(&c.model),
                )
                .await
                .map_err(db)?
                {
                    return Err(lost());
                }
                ctx.emit("message_complete", json!({
                    "message_id": message_id, "usage": c.usage, "model": c.model, "finish_reason": c.finish_reason,
                    "duration_ms": started.elapsed().as_millis() as u64, "cost_usd": model.cost(&c.usage),
                }));
                return Ok(c);
            }
            Err(LlmError::Cancelled) => {
                let content = json!({ "text": text, "reasoning": reasoning });
                store::upsert_assistant(
                    &deps.pool,
                    fence,
                    session_id,
                    message_id,
                    &content,
                    "cancelled",
                    None,
                    model_name,
                )
                .await
                .map_err(db)?;
                ctx.emit(
                    "message_complete",
                    json!({ "message_id": message_id, "cancelled": true }),
                );
                return Err(JobError::Cancelled);
            }
            Err(LlmError::Retryable {
                message,
                retry_after,
            }) if retries < deps.step_retries => {
                // The broken reply is dropped, not kept beside the retry's.
                store::discard_partial(&deps.pool, fence)
                    .await
                    .map_err(db)?;
                ctx.emit(
                    "step_retry",
                    json!({ "message_id": message_id, "error": message, "retry": retries + 1 }),
                );
                let wait = retry_after
                    .unwrap_or(Duration::from_millis(500 << retries))
                    .min(Duration::from_secs(60));
                tokio::select! {
                    _ = ctx.cancellation().cancelled() => return Err(JobError::Cancelled),
                    _ = tokio::time::sleep(wait) => {}
                }
                retries += 1;
            }
            Err(LlmError::Retryable {
                message,
                retry_after,
            }) => {
                store::discard_partial(&deps.pool, fence)
                    .await
                    .map_err(db)?;
                return Err(JobError::Retry {
                    message: format!("model call failed: {message}"),
                    retry_after,
                });
            }
            Err(LlmError::Fatal(message)) => {
                let content = json!({ "text": text, "error": message });
                store::upsert_assistant(
                    &deps.pool, fence, session_id, message_id, &content, "error", None, model_name,
                )
                .await
                .map_err(db)?;
                ctx.emit(
                    "error",
                    json!({ "message_id": message_id, "error": message }),
                );
                return Err(JobError::fail(format!("model call failed: {message}")));
            }
        }
    }
}

/// Replaces offloaded tool outputs with their content, so the model sees them whole.
async fn resolve_outputs(deps: &AgentDeps, ctx: &JobContext, messages: &mut [store::Message]) {
    let outputs = messages
        .iter_mut()
        .filter(|m| m.role == "tool")
        .map(|m| &mut m.content)
        .collect();
    deps.blobs.resolve_all(ctx.project_id, outputs).await;
}
