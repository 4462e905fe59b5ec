//! Keeping a long session within its model's context: when the last measured prompt passes a
//! share of the context window (or the transcript grows past a message cap), earlier turns are
//! summarised. The boundary moves only when a summary exists; a failed summary changes nothing.

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use serde_json::json;
use uuid::Uuid;

use super::history;
use super::store::{self, Message};
use super::turn::{AgentDeps, db, lost};
use crate::llm::config::ModelConfig;
use crate::llm::{ChatMessage, ChatRequest, LlmClient, LlmError, Role, Usage};
use crate::worker::{JobContext, JobError};

/// When to compact.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Share of the context window the last prompt may fill before compaction (0.5 = 50%).
    pub share: f64,
    /// Transcript length that triggers compaction whatever the tokens.
    pub max_messages: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            share: 0.5,
            max_messages: 200,
        }
    }
}

impl Policy {
    /// Whether `visible` (the messages still sent in full) is due for compaction.
    pub fn due(&self, visible: &[Message], context_window: u64) -> bool {
        let last_prompt = visible
            .iter()
            .rev()
            .filter(|m| m.role == "assistant")
            .find_map(|m| {
                m.usage
                    .as_ref()?
                    .get("input_tokens")
                    .and_then(Value::as_u64)
            });
        let over_tokens =
            last_prompt.is_some_and(|t| t as f64 > self.share * context_window as f64);
        over_tokens || visible.len() > self.max_messages
    }
}

const INSTRUCTION: &str = "Summarise the conversation so far for your own future reference. Keep every fact, \
decision, open question, file name and tool result that later turns may need. Answer with the summary only.";

/// Asks the model for a summary of `earlier` (provider history), folding in any `previous` one.
pub async fn summarise(
    llm: &LlmClient,
    model: &ModelConfig,
    cancel: &CancellationToken,
    previous: Option<&str>,
    earlier: Vec<ChatMessage>,
) -> Result<(String, Usage), LlmError> {
    let mut messages = vec![system(INSTRUCTION)];
    if let Some(p) = previous {
        messages.push(system(&format!(
            "Summary of the conversation before these messages:\n{p}"
        )));
    }
    messages.extend(earlier.into_iter().filter(|m| m.role != Role::System));
    messages.push(ChatMessage {
        role: Role::User,
        content: Some("Write the summary now.".into()),
        tool_calls: vec![],
        tool_call_id: None,
        media: vec![],
    });
    let req = ChatRequest {
        model: model.wire_model().to_owned(),
        messages,
        tools: vec![],
        max_tokens: Some(2048),
    };
    let done = llm.stream(model, &req, cancel, &mut |_| {}).await?;
    let text = done.text.trim().to_owned();
    if text.is_empty() {
        return Err(LlmError::Fatal(
            "the model returned an empty summary".into(),
        ));
    }
    Ok((text, done.usage))
}

fn system(text: &str) -> ChatMessage {
    ChatMessage {
        role: Role::System,
        content: Some(text.to_owned()),
        tool_calls: vec![],
        tool_call_id: None,
        media: vec![],
    }
}

/// Summarises every earlier turn still sent in full; on success moves the boundary (fenced), on
/// failure keeps the full history and reports why.
#[allow(clippy::too_many_arguments)]
pub(super) async fn compact(
    deps: &AgentDeps,
    ctx: &JobContext,
    model: &ModelConfig,
    session_id: Uuid,
    visible: &[store::Message],
    summary: &mut Option<String>,
    upto: &mut Option<Uuid>,
    total: &mut Usage,
) -> Result<(), JobError> {
    let earlier: Vec<store::Message> = visible
        .iter()
        .filter(|m| m.turn_id < ctx.id)
        .cloned()
        .collect();
    let Some(last_turn) = earlier.last().map(|m| m.turn_id) else {
        return Ok(());
    };
    ctx.emit("compaction_started", json!({ "messages": earlier.len() }));
    let history = history::build(None, None, &earlier, &history::Files::default());
    match summarise(
        &deps.llm,
        model,
        ctx.cancellation(),
        summary.as_deref(),
        history,
    )
    .await
    {
        Ok((text, usage)) => {
            total.add(&usage);
            if !store::set_summary(&deps.pool, ctx.fence(), session_id, &text, last_turn)
                .await
                .map_err(db)?
            {
                return Err(lost());
            }
            ctx.emit("compaction_completed", json!({ "ok": true, "upto_turn": last_turn, "summary_chars": text.len(), "usage": usage }));
            *summary = Some(text);
            *upto = Some(last_turn);
        }
        Err(LlmError::Cancelled) => return Err(JobError::Cancelled),
        Err(e) => ctx.emit(
            "compaction_completed",
            json!({ "ok": false, "error": e.to_string() }),
        ),
    }
    Ok(())
}
