//! The chat page's live feed: each event of the session stream becomes the fragment that makes
//! the same change in the page that [`chat_view::apply`] makes to a folded turn.
//!
//! Token deltas are appended as escaped text and need no database read; a page costs the server
//! one follower share of the process's stream pump, not a connection. Only state changes (a turn
//! queued, started or ended) read the database, to render that turn whole.

use askama::Template;
use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};
use uuid::Uuid;

use super::chat_trace;
use super::chat_view::{self, AssistantView, ItemView, Phase, ToolView, TurnView};
use super::live::{Feed, Fragment};
use super::view::escape;
use super::{WebError, WebState};
use crate::agent::transcript;
use crate::events::log::{self, StreamEvent};
use crate::events::pump::Batch;
use crate::queue::JobState;

/// Events read from the log per query while catching up.
const PAGE: i64 = 500;

/// One turn, rendered (`oob` makes it replace the turn already on the page).
#[derive(Template)]
#[template(path = "chat_turn.html")]
pub struct TurnTpl<'a> {
    pub t: &'a TurnView,
    pub session: Uuid,
    pub csrf: &'a str,
    pub oob: bool,
}

/// One reply or tool call, rendered.
#[derive(Template)]
#[template(path = "chat_item.html")]
struct ItemTpl<'a> {
    item: &'a ItemView,
}

/// The abort button and queue length under the transcript.
#[derive(Template)]
#[template(path = "chat_controls.html")]
pub struct ControlsTpl<'a> {
    pub session: Uuid,
    pub csrf: &'a str,
    pub running: bool,
    pub queued: usize,
    pub oob: bool,
}

/// Phases of the unfinished turns: the running one, then queue positions from 1.
pub fn phases(active: &[(Uuid, JobState)]) -> Vec<(Uuid, Phase)> {
    let mut pos = 0;
    active
        .iter()
        .map(|(id, s)| match s {
            JobState::Queued => {
                pos += 1;
                (*id, Phase::Queued(pos))
            }
            _ => (*id, Phase::Running),
        })
        .collect()
}

/// Follows one session for one page.
pub struct ChatFeed {
    state: WebState,
    project: Uuid,
    session: Uuid,
    csrf: String,
    rx: broadcast::Receiver<Batch>,
    pending: Vec<StreamEvent>,
    /// Read the log (first call, or after falling behind the pump) rather than `pending`.
    from_log: bool,
}

impl ChatFeed {
    /// Starts following before the first read, so nothing committed in between is missed.
    pub async fn start(
        state: WebState,
        project: Uuid,
        session: Uuid,
        csrf: String,
    ) -> Result<Self, WebError> {
        let rx = state.app.hub.follow_stream(session).await?;
        Ok(Self {
            state,
            project,
            session,
            csrf,
            rx,
            pending: Vec::new(),
            from_log: true,
        })
    }

    async fn fragment(&self, e: &StreamEvent) -> Result<Option<String>, WebError> {
        let models = &self.state.app.agent.models;
        let mid = e
            .data
            .get("message_id")
            .and_then(Value::as_str)
            .unwrap_or("");
        let html = match e.kind.as_str() {
            "state" => return self.state_changed(e).await.map(Some),
            "title" => {
                let title = e.data.get("title").and_then(Value::as_str).unwrap_or("");
                format!(
                    r#"<h1 id="chat-title" hx-swap-oob="true">{}</h1>"#,
                    escape(title)
                )
            }
            "message_started" => {
                let item = ItemView {
                    assistant: Some(AssistantView {
                        mid: mid.to_owned(),
                        text: String::new(),
                        reasoning: String::new(),
                        status: "streaming".into(),
                        meta: e
                            .data
                            .get("model")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                    }),
                    tool: None,
                };
                let html = ItemTpl { item: &item }.render()?;
                // A step retry restarts its reply in place; a first start appends it.
                if e.data.get("retry").and_then(Value::as_i64).unwrap_or(0) > 0 {
                    html.replacen("<article ", "<article hx-swap-oob=\"true\" ", 1)
                } else {
                    format!(
                        r#"<div hx-swap-oob="beforeend:#items-{}">{html}</div>"#,
                        e.job_id
                    )
                }
            }
            "delta" | "reasoning_delta" => {
                let target = if e.kind == "delta" { "t" } else { "r" };
                let text = e.data.get("text").and_then(Value::as_str).unwrap_or("");
                format!(
                    r#"<span hx-swap-oob="beforeend:#{target}-{}">{}</span>"#,
                    escape(mid),
                    escape(text)
                )
            }
            "message_complete" | "error" => {
                let meta = if e.kind == "error" {
                    let err = e.data.get("error").and_then(Value::as_str).unwrap_or("");
                    format!("error: {err}")
                } else {
                    chat_view::complete_meta(models, &e.data)
                };
                format!(
                    r#"<div class="msg-meta" id="meta-{}" hx-swap-oob="true">{}</div>"#,
                    escape(mid),
                    escape(&meta)
                )
            }
            "tool_call" => {
                let mut view = empty_turn(e.job_id);
                chat_view::apply(models, &mut view, "tool_call", &e.data);
                let Some(item) = view.items.pop() else {
                    return Ok(None);
                };
                let html = ItemTpl { item: &item }.render()?;
                format!(
                    r#"<div hx-swap-oob="beforeend:#items-{}">{html}</div>"#,
                    e.job_id
                )
            }
            "tool_result" => {
                let call_id = e
                    .data
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let dom = chat_view::tool_dom(e.job_id, call_id);
                let mut tool = ToolView {
                    dom: dom.clone(),
                    name: e
                        .data
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    arguments: String::new(),
                    result: None,
                    is_error: false,
                    duration: String::new(),
                };
                tool.finish(&e.data);
                format!(
                    r#"<summary id="{dom}-s" hx-swap-oob="true"><span aria-hidden="true">🔧</span> <code>{}</code> · {}</summary><div id="{dom}-r" hx-swap-oob="true"><h3 class="sub">Result</h3><pre class="text">{}</pre></div>"#,
                    escape(&tool.name),
                    escape(&tool.status_line()),
                    escape(tool.result.as_deref().unwrap_or(""))
                )
            }
            "usage" => {
                let mut view = empty_turn(e.job_id);
                chat_view::apply(models, &mut view, "usage", &e.data);
                format!(
                    r#"<div class="msg-meta turn-usage" id="usage-{}" hx-swap-oob="true">Turn: {}</div>"#,
                    e.job_id,
                    escape(view.usage.as_deref().unwrap_or(""))
                )
            }
            _ => return Ok(None),
        };
        Ok(Some(html))
    }

    /// A turn was queued, started or ended: render it whole, with the queue and controls.
    async fn state_changed(&self, e: &StreamEvent) -> Result<String, WebError> {
        let now = transcript::turn_now(
            &self.state.app.pool,
            &self.state.app.blobs,
            self.project,
            self.session,
            e.job_id,
            e.seq,
        )
        .await?;
        let models = &self.state.app.agent.models;
        let phases = phases(&now.active);
        let phase_of = |id: Uuid| {
            phases
                .iter()
                .find(|(t, _)| *t == id)
                .map(|(_, p)| p.clone())
        };
        let mut out = String::new();
        let mut totals = None;
        if let Some(job) = &now.job {
            let phase = phase_of(job.id).unwrap_or(Phase::Done(job.state));
            let mut view = match phase {
                Phase::Running => {
                    let user = now.messages.iter().find(|m| m.role == "user");
                    chat_view::from_events(models, job.id, user, &now.events)
                }
                p => {
                    let refs: Vec<_> = now.messages.iter().collect();
                    chat_view::from_messages(models, job.id, p, &refs, Some(job))
                }
            };
            // A finished turn gets its trace link and badge as on a fresh page, and the
            // header's session totals move on.
            let pool = &self.state.app.pool;
            if matches!(view.phase, Phase::Done(_)) {
                view.trace = chat_trace::for_turns(pool, self.project, self.session, &[job.id])
                    .await?
                    .remove(&job.id);
                totals = Some(chat_trace::usage(pool, self.project, self.session, true).await?);
            }
            let first = e.data.get("state").and_then(Value::as_str) == Some("queued") && e.seq == 1;
            let html = TurnTpl {
                t: &view,
                session: self.session,
                csrf: &self.csrf,
                oob: !first,
            }
            .render()?;
            if first {
                out.push_str(&format!(
                    r#"<div hx-swap-oob="beforeend:#turns">{html}</div>"#
                ));
            } else {
                out.push_str(&html);
            }
        }
        // Everyone behind a started or finished turn moved up one place.
        for (id, p) in &phases {
            if let (Phase::Queued(n), true) = (p, *id != e.job_id) {
                out.push_str(&format!(
                    r#"<span class="state state-queued" id="pos-{id}" hx-swap-oob="true">◷ queued · #{n}</span>"#
                ));
            }
        }
        out.push_str(&self.controls(&phases)?);
        out.push_str(&totals.unwrap_or_default());
        Ok(out)
    }

    fn controls(&self, phases: &[(Uuid, Phase)]) -> Result<String, WebError> {
        Ok(ControlsTpl {
            session: self.session,
            csrf: &self.csrf,
            running: phases.iter().any(|(_, p)| *p == Phase::Running),
            queued: phases
                .iter()
                .filter(|(_, p)| matches!(p, Phase::Queued(_)))
                .count(),
            oob: true,
        }
        .render()?)
    }
}

fn empty_turn(id: Uuid) -> TurnView {
    TurnView {
        id,
        phase: Phase::Running,
        user_text: String::new(),
        files: Vec::new(),
        items: Vec::new(),
        usage: None,
        note: None,
        trace: None,
    }
}

impl Feed for ChatFeed {
    async fn read(&mut self, after: i64) -> Result<Vec<Fragment>, WebError> {
        let mut events: Vec<StreamEvent> = if self.from_log {
            self.pending.clear();
            let page =
                log::read_stream_after(&self.state.app.pool, self.session, after, PAGE).await?;
            // A full page means more is waiting: stay on the log for the next read.
            self.from_log = page.len() as i64 == PAGE;
            page
        } else {
            std::mem::take(&mut self.pending)
        };
        let datas = events.iter_mut().map(|e| &mut e.data).collect();
        self.state.app.blobs.resolve_all(self.project, datas).await;
        let mut out = Vec::with_capacity(events.len());
        for e in events.iter().filter(|e| e.cursor > after) {
            if let Some(html) = self.fragment(e).await? {
                out.push(Fragment {
                    cursor: e.cursor,
                    html,
                });
            } else {
                // Events the page does not show still move its cursor.
                out.push(Fragment {
                    cursor: e.cursor,
                    html: String::new(),
                });
            }
        }
        Ok(out)
    }

    async fn wait(&mut self) {
        if self.from_log {
            return;
        }
        match self.rx.recv().await {
            Ok(batch) => self.pending.extend(batch.iter().cloned()),
            Err(RecvError::Lagged(_)) => self.from_log = true,
            // The hub is stopping with the process; the browser will reconnect elsewhere.
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}
