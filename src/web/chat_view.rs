//! What a chat page shows of a turn, built two ways that render identically: from the stored
//! transcript (finished turns) and by folding the running turn's events (its partial reply, the
//! same steps the live fragments take in the browser).

use serde_json::Value;
use uuid::Uuid;

use crate::agent::store::{Message, TurnJob};
use crate::events::Event;
use crate::llm::config::Models;
use crate::llm::types::Usage;
use crate::queue::JobState;

/// Where a turn is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Waiting behind the running turn; 1 is next.
    Queued(usize),
    Running,
    Done(JobState),
}

/// One turn: the user's message and what the agent did with it.
#[derive(Debug, Clone)]
pub struct TurnView {
    pub id: Uuid,
    pub phase: Phase,
    pub user_text: String,
    /// Files attached to the user's message.
    pub files: Vec<super::chat_files::FileView>,
    pub items: Vec<ItemView>,
    /// `1,204 in · 88 out · cache hit 42% · $0.0031`, once known.
    pub usage: Option<String>,
    /// Why a turn failed, or that it was cancelled.
    pub note: Option<String>,
    /// Once finished: its trace link and cache-hit badge (read from spans by the caller).
    pub trace: Option<super::chat_trace::TurnTrace>,
}

/// A state badge: its CSS class and its symbol-and-word label.
#[derive(Debug, Clone)]
pub struct Badge {
    pub class: String,
    pub label: &'static str,
}

impl TurnView {
    /// The queue position, while queued.
    pub fn queued(&self) -> Option<usize> {
        match self.phase {
            Phase::Queued(n) => Some(n),
            _ => None,
        }
    }

    /// The badge beside the user's message: running, or how an unsuccessful turn ended.
    pub fn badge(&self) -> Option<Badge> {
        let state = match &self.phase {
            Phase::Running => JobState::Running,
            Phase::Done(s) if *s != JobState::Succeeded => *s,
            _ => return None,
        };
        Some(Badge {
            class: format!("state-{}", state.as_str()),
            label: super::view::state_label(state.as_str()),
        })
    }
}

/// An assistant reply or a tool call, in the order they happened.
#[derive(Debug, Clone)]
pub struct ItemView {
    pub assistant: Option<AssistantView>,
    pub tool: Option<ToolView>,
}

/// One model reply.
#[derive(Debug, Clone)]
pub struct AssistantView {
    /// The message id; DOM ids derive from it (`a-`, `t-`, `r-`, `meta-`).
    pub mid: String,
    pub text: String,
    pub reasoning: String,
    /// `streaming`, `complete`, `cancelled` or `error`.
    pub status: String,
    pub meta: String,
}

/// One tool call and, once it has finished, its result.
#[derive(Debug, Clone)]
pub struct ToolView {
    /// DOM id: the turn and the hex of the call id (call ids are not safe CSS).
    pub dom: String,
    pub name: String,
    pub arguments: String,
    pub result: Option<String>,
    pub is_error: bool,
    pub duration: String,
}

/// The DOM id of a tool call's row.
pub fn tool_dom(turn: Uuid, call_id: &str) -> String {
    format!("tool-{}-{}", turn.simple(), hex::encode(call_id.as_bytes()))
}

fn text_of(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

/// A tool call's arguments, pretty-printed when they are JSON.
fn arguments(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .map(|j| super::view::pretty(&j))
            .unwrap_or_else(|_| s.clone()),
        other => super::view::pretty(other),
    }
}

impl ToolView {
    /// `◷ running…`, or `✓ done · 12 ms` / `✗ error · 3.1 s` once it has a result.
    pub fn status_line(&self) -> String {
        match (&self.result, self.is_error) {
            (None, _) => "◷ running…".into(),
            (Some(_), err) => {
                let word = if err { "✗ error" } else { "✓ done" };
                if self.duration.is_empty() {
                    word.into()
                } else {
                    format!("{word} · {}", self.duration)
                }
            }
        }
    }

    fn call(turn: Uuid, call: &Value) -> Self {
        Self {
            dom: tool_dom(turn, &text_of(call, "id")),
            name: text_of(call, "name"),
            arguments: arguments(call.get("arguments").unwrap_or(&Value::Null)),
            result: None,
            is_error: false,
            duration: String::new(),
        }
    }

    /// Fills in a stored or announced result (`{content, is_error, duration_ms}`).
    pub fn finish(&mut self, result: &Value) {
        self.result = Some(match result.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => super::view::pretty(other),
            None => String::new(),
        });
        self.is_error = result.get("is_error").and_then(Value::as_bool) == Some(true);
        self.duration = result
            .get("duration_ms")
            .and_then(Value::as_i64)
            .map(|ms| super::view::duration(chrono::TimeDelta::milliseconds(ms)))
            .unwrap_or_default();
    }
}

/// `model · 1,204 in · 88 out · cache hit 42% · $0.0031` for one call or a whole turn.
pub fn usage_line(models: &Models, model: Option<&str>, usage: &Usage) -> String {
    let mut parts = Vec::new();
    if let Some(m) = model {
        parts.push(m.to_owned());
    }
    parts.push(format!("{} in", group(usage.input_tokens)));
    parts.push(format!("{} out", group(usage.output_tokens)));
    let prompt = usage.input_tokens.max(usage.cache_read_tokens);
    if prompt > 0 {
        let share = usage.cache_read_tokens as f64 * 100.0 / prompt as f64;
        parts.push(format!("cache hit {share:.0}%"));
    }
    if let Some(cfg) = model.and_then(|m| models.get(m)) {
        let cost = cfg.cost(usage);
        if cost > 0.0 {
            parts.push(format!("${cost:.4}"));
        }
    }
    parts.join(" · ")
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn usage_of(v: Option<&Value>) -> Option<Usage> {
    v.and_then(|u| serde_json::from_value(u.clone()).ok())
}

fn note_for(job: Option<&TurnJob>) -> Option<String> {
    let job = job?;
    match job.state {
        JobState::Cancelled => Some("This turn was cancelled.".into()),
        JobState::Failed => Some(format!(
            "This turn failed: {}",
            job.error
                .as_ref()
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
        )),
        _ => None,
    }
}

/// A turn from its stored messages (in order) and its job.
pub fn from_messages(
    models: &Models,
    turn: Uuid,
    phase: Phase,
    messages: &[&Message],
    job: Option<&TurnJob>,
) -> TurnView {
    let mut view = TurnView {
        id: turn,
        phase,
        user_text: String::new(),
        files: Vec::new(),
        items: Vec::new(),
        usage: None,
        note: note_for(job),
        trace: None,
    };
    let mut total = Usage::default();
    let mut model = None;
    for m in messages {
        match m.role.as_str() {
            "user" => {
                view.user_text = text_of(&m.content, "text");
                view.files = super::chat_files::files_of(&m.content);
            }
            "assistant" => {
                let usage = usage_of(m.usage.as_ref());
                if let Some(u) = &usage {
                    total.add(u);
                    model = m.model.clone();
                }
                let meta = match (&usage, m.status.as_str()) {
                    (_, "error") => format!("error: {}", text_of(&m.content, "error")),
                    (_, "cancelled") => "stopped".to_owned(),
                    (Some(u), _) => usage_line(models, m.model.as_deref(), u),
                    (None, s) => s.to_owned(),
                };
                view.items.push(ItemView {
                    assistant: Some(AssistantView {
                        mid: m.id.to_string(),
                        text: text_of(&m.content, "text"),
                        reasoning: text_of(&m.content, "reasoning"),
                        status: m.status.clone(),
                        meta,
                    }),
                    tool: None,
                });
                for call in m
                    .content
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    view.items.push(ItemView {
                        assistant: None,
                        tool: Some(ToolView::call(turn, call)),
                    });
                }
            }
            "tool" => {
                let dom = tool_dom(turn, m.tool_call_id.as_deref().unwrap_or(""));
                if let Some(t) = view
                    .items
                    .iter_mut()
                    .filter_map(|i| i.tool.as_mut())
                    .find(|t| t.dom == dom)
                {
                    t.finish(&m.content);
                }
            }
            _ => {}
        }
    }
    if total != Usage::default() {
        view.usage = Some(usage_line(models, model.as_deref(), &total));
    }
    view
}

/// A running turn rebuilt from its user message and its events so far.
pub fn from_events(
    models: &Models,
    turn: Uuid,
    user: Option<&Message>,
    events: &[Event],
) -> TurnView {
    let mut view = TurnView {
        id: turn,
        phase: Phase::Running,
        user_text: user
            .map(|m| text_of(&m.content, "text"))
            .unwrap_or_default(),
        files: user
            .map(|m| super::chat_files::files_of(&m.content))
            .unwrap_or_default(),
        items: Vec::new(),
        usage: None,
        note: None,
        trace: None,
    };
    for e in events {
        apply(models, &mut view, &e.kind, &e.data);
    }
    view
}

fn assistant_mut<'a>(view: &'a mut TurnView, mid: &str) -> Option<&'a mut AssistantView> {
    view.items
        .iter_mut()
        .filter_map(|i| i.assistant.as_mut())
        .find(|a| a.mid == mid)
}

/// One event's effect on a running turn; the live fragments make the same change in the page.
pub fn apply(models: &Models, view: &mut TurnView, kind: &str, data: &Value) {
    let mid = text_of(data, "message_id");
    match kind {
        "message_started" => {
            let fresh = AssistantView {
                mid: mid.clone(),
                text: String::new(),
                reasoning: String::new(),
                status: "streaming".into(),
                meta: text_of(data, "model"),
            };
            match assistant_mut(view, &mid) {
                Some(a) => *a = fresh,
                None => view.items.push(ItemView {
                    assistant: Some(fresh),
                    tool: None,
                }),
            }
        }
        "delta" => {
            if let Some(a) = assistant_mut(view, &mid) {
                a.text.push_str(&text_of(data, "text"));
            }
        }
        "reasoning_delta" => {
            if let Some(a) = assistant_mut(view, &mid) {
                a.reasoning.push_str(&text_of(data, "text"));
            }
        }
        "message_complete" => {
            if let Some(a) = assistant_mut(view, &mid) {
                a.status = if data.get("cancelled").is_some() {
                    "cancelled"
                } else {
                    "complete"
                }
                .into();
                a.meta = complete_meta(models, data);
            }
        }
        "error" => {
            if let Some(a) = assistant_mut(view, &mid) {
                a.status = "error".into();
                a.meta = format!("error: {}", text_of(data, "error"));
            }
        }
        "tool_call" => view.items.push(ItemView {
            assistant: None,
            tool: Some(ToolView::call(view.id, data)),
        }),
        "tool_result" => {
            let dom = tool_dom(view.id, &text_of(data, "tool_call_id"));
            if let Some(t) = view
                .items
                .iter_mut()
                .filter_map(|i| i.tool.as_mut())
                .find(|t| t.dom == dom)
            {
                t.finish(data);
            }
        }
        "usage" => {
            if let Some(u) = usage_of(data.get("usage")) {
                view.usage = Some(usage_line(
                    models,
                    data.get("model").and_then(Value::as_str),
                    &u,
                ));
            }
        }
        _ => {}
    }
}

/// The meta line of a finished reply, from its `message_complete` event.
pub fn complete_meta(models: &Models, data: &Value) -> String {
    if data.get("cancelled").is_some() {
        return "stopped".into();
    }
    match usage_of(data.get("usage")) {
        Some(u) => usage_line(models, data.get("model").and_then(Value::as_str), &u),
        None => "complete".into(),
    }
}
