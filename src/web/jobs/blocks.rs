//! What a job's page shows, precomputed for the templates: the blocks that change as the job runs
//! (status, progress, actions, facts, outcome, attempts), rebuilt for every live update; the
//! timeline entries; and the tree of child jobs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{RowView, When, progress_pct, took};
use crate::events::Event;
use crate::queue::control::{self, JobRow};
use crate::queue::{Job, JobState};
use crate::web::WebError;
use crate::web::view::{self, clip, pretty, short_id, state_label};

/// The most characters of args, result or error a page prints.
const MAX_JSON_CHARS: usize = 100_000;
/// Children shown per tree level, and how deep the tree goes.
const TREE_LEVEL: usize = 50;
const TREE_DEPTH: usize = 3;

/// One line of the facts list; `href` makes it a link, `when` a `<time>`.
pub(super) struct Fact {
    pub(super) name: &'static str,
    pub(super) text: String,
    pub(super) href: Option<String>,
    pub(super) when: Option<When>,
}

impl Fact {
    fn text(name: &'static str, text: impl Into<String>) -> Self {
        Self {
            name,
            text: text.into(),
            href: None,
            when: None,
        }
    }

    fn time(name: &'static str, t: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        let when = When::new(t, now);
        Self {
            name,
            text: when.ago.clone(),
            href: None,
            when: Some(when),
        }
    }

    fn job(name: &'static str, id: Uuid) -> Self {
        Self {
            name,
            text: short_id(&id),
            href: Some(format!("/jobs/{id}")),
            when: None,
        }
    }
}

/// One attempt: from its `running` event to the state event that ended it.
pub(super) struct AttemptView {
    pub(super) number: String,
    pub(super) worker: String,
    pub(super) started: When,
    pub(super) took: String,
    pub(super) state: &'static str,
    pub(super) label: &'static str,
    pub(super) note: String,
    pub(super) error: String,
}

/// The parts of the job page that change while the job runs.
pub(super) struct Blocks {
    pub(super) id: String,
    pub(super) state: &'static str,
    pub(super) label: &'static str,
    pub(super) attempt: String,
    pub(super) cancel_requested: bool,
    pub(super) can_cancel: bool,
    pub(super) can_retry: bool,
    pub(super) pct: u8,
    pub(super) has_progress: bool,
    pub(super) progress_text: String,
    pub(super) facts: Vec<Fact>,
    pub(super) result: Option<String>,
    pub(super) error: Option<String>,
    pub(super) attempts: Vec<AttemptView>,
    pub(super) csrf: String,
}

/// Pretty JSON, cut short for huge values (the API has the whole value).
pub(super) fn json_block(v: &Value) -> String {
    clip(&pretty(v), MAX_JSON_CHARS)
}

impl Blocks {
    /// The blocks for `job`, with its attempts read from its state events.
    pub(super) async fn build(pool: &PgPool, job: &Job, csrf: &str) -> Result<Self, WebError> {
        let events = control::state_events(pool, job.id).await?;
        let now = Utc::now();
        let pct = progress_pct(job.progress.as_ref());
        let progress_text = job
            .progress
            .as_ref()
            .and_then(|p| p.get("message"))
            .and_then(Value::as_str)
            .map(|m| clip(m, 200))
            .unwrap_or_default();
        Ok(Self {
            id: job.id.to_string(),
            state: job.state.as_str(),
            label: state_label(job.state.as_str()),
            attempt: format!("{} of {}", job.attempt, job.max_attempts),
            cancel_requested: job.cancel_requested_at.is_some() && !job.state.is_terminal(),
            can_cancel: !job.state.is_terminal(),
            can_retry: matches!(job.state, JobState::Failed | JobState::Cancelled),
            pct: pct.unwrap_or(0),
            has_progress: pct.is_some(),
            progress_text,
            facts: facts(job, now),
            result: job.result.as_ref().map(json_block),
            error: job.error.as_ref().map(json_block),
            attempts: attempts(&events, now),
            csrf: csrf.to_owned(),
        })
    }
}

fn facts(job: &Job, now: DateTime<Utc>) -> Vec<Fact> {
    let mut f = vec![
        Fact::text("Queue", job.queue.clone()),
        Fact::text("Priority", job.priority.to_string()),
        Fact::text(
            "Attempt",
            format!("{} of {}", job.attempt, job.max_attempts),
        ),
        Fact::time("Created", job.created_at, now),
    ];
    if job.state == JobState::Queued {
        f.push(Fact::time("Runs", job.run_at, now));
    }
    if let Some(t) = job.started_at {
        f.push(Fact::time("Started", t, now));
    }
    if let Some(t) = job.finished_at {
        f.push(Fact::time("Finished", t, now));
    }
    let ran = took(job.started_at, job.finished_at, now);
    if !ran.is_empty() {
        f.push(Fact::text("Took", ran));
    }
    if let Some(t) = job.cancel_requested_at {
        f.push(Fact::time("Cancel requested", t, now));
    }
    if let Some(s) = job.timeout_s {
        f.push(Fact::text(
            "Timeout",
            view::duration(chrono::TimeDelta::seconds(s.into())),
        ));
    }
    if let Some(k) = &job.concurrency_key {
        f.push(Fact::text("Concurrency key", k.clone()));
    }
    if let Some(k) = &job.idempotency_key {
        f.push(Fact::text("Idempotency key", k.clone()));
    }
    if let Some(p) = job.parent_id {
        f.push(Fact::job("Parent", p));
    }
    if let Some(r) = job
        .root_id
        .filter(|r| *r != job.id && Some(*r) != job.parent_id)
    {
        f.push(Fact::job("Root", r));
    }
    f
}

/// The state's name for a CSS class, or empty for anything unknown.
fn known_state(s: &str) -> &'static str {
    s.parse::<JobState>().map_or("", JobState::as_str)
}

fn str_field<'a>(data: &'a Value, key: &str) -> Option<&'a str> {
    data.get(key).and_then(Value::as_str)
}

/// An error value as one line: its `message`, else compact JSON.
fn error_text(v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        _ => str_field(v, "message").map_or_else(|| v.to_string(), str::to_owned),
    };
    clip(&text, 500)
}

/// Tells the attempts from the `running` state events and whatever state event follows each.
fn attempts(events: &[Event], now: DateTime<Utc>) -> Vec<AttemptView> {
    let mut out: Vec<AttemptView> = Vec::new();
    let mut open: Option<(usize, DateTime<Utc>)> = None;
    for e in events {
        if e.kind == "cancel_requested" {
            if let Some(a) = open.and_then(|(i, _)| out.get_mut(i)) {
                a.note = format!("cancel requested {}", view::ago(e.at, now));
            }
            continue;
        }
        let state = str_field(&e.data, "state").unwrap_or("");
        if state == "running" {
            let n = e.data.get("attempt").and_then(Value::as_i64);
            out.push(AttemptView {
                number: n.map_or_else(|| (out.len() + 1).to_string(), |n| n.to_string()),
                worker: str_field(&e.data, "worker_id").unwrap_or("").to_owned(),
                started: When::new(e.at, now),
                took: format!("{} so far", view::duration(now - e.at)),
                state: "running",
                label: state_label("running"),
                note: String::new(),
                error: String::new(),
            });
            open = Some((out.len() - 1, e.at));
        } else if let Some((a, started)) = open.take().and_then(|(i, t)| Some((out.get_mut(i)?, t)))
        {
            a.took = view::duration(e.at - started);
            a.state = known_state(state);
            a.label = state_label(state);
            let mut notes: Vec<String> = Vec::new();
            if !a.note.is_empty() {
                notes.push(std::mem::take(&mut a.note));
            }
            if let Some(r) = str_field(&e.data, "reason") {
                notes.push(r.to_owned());
            }
            let next =
                str_field(&e.data, "run_at").and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            if let Some(t) = next {
                notes.push(format!(
                    "next try {}",
                    view::ago(t.with_timezone(&Utc), now)
                ));
            }
            a.note = notes.join(" · ");
            a.error = e.data.get("error").map(error_text).unwrap_or_default();
        }
    }
    out
}

/// One timeline entry.
pub(super) struct EventView {
    pub(super) seq: i64,
    pub(super) kind: String,
    pub(super) offset: String,
    pub(super) when: When,
    pub(super) state: &'static str,
    pub(super) label: &'static str,
    pub(super) text: String,
}

impl EventView {
    /// `created` is the job's creation time; entries show their offset from it.
    pub(super) fn new(e: &Event, created: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        let (state, label, text) = match e.kind.as_str() {
            "state" => {
                let s = str_field(&e.data, "state").unwrap_or("");
                let mut parts = Vec::new();
                if let Some(n) = e.data.get("attempt").and_then(Value::as_i64) {
                    parts.push(format!("attempt {n}"));
                }
                if let Some(w) = str_field(&e.data, "worker_id") {
                    parts.push(format!("on {w}"));
                }
                if let Some(r) = str_field(&e.data, "reason") {
                    parts.push(r.to_owned());
                }
                if let Some(err) = e.data.get("error") {
                    parts.push(error_text(err));
                }
                (known_state(s), state_label(s), parts.join(" · "))
            }
            "progress" => {
                let pct = progress_pct(Some(&e.data)).unwrap_or(0);
                let msg = str_field(&e.data, "message").unwrap_or("");
                ("", "", clip(&format!("{pct}% {msg}"), 300))
            }
            "cancel_requested" => ("", "", "cancel requested".to_owned()),
            _ => {
                let text = str_field(&e.data, "text")
                    .or_else(|| str_field(&e.data, "message"))
                    .map_or_else(|| e.data.to_string(), str::to_owned);
                ("", "", clip(&text, 300))
            }
        };
        Self {
            seq: e.seq,
            kind: e.kind.clone(),
            offset: format!("+{}", view::duration(e.at - created)),
            when: When::new(e.at, now),
            state,
            label,
            text,
        }
    }
}

/// A job in the tree, with its children.
pub(super) struct Node {
    pub(super) row: RowView,
    pub(super) children: Vec<Node>,
}

/// A job's descendants, up to [`TREE_DEPTH`] levels of at most [`TREE_LEVEL`] jobs each;
/// `cut` says which levels had more than were shown.
pub(super) struct Tree {
    pub(super) nodes: Vec<Node>,
    pub(super) cut: Vec<usize>,
    pub(super) parent_link: String,
}

impl Tree {
    /// One query per level, over `jobs_parent_idx`; most jobs have no children and cost one.
    pub(super) async fn load(pool: &PgPool, project: Uuid, id: Uuid) -> Result<Self, WebError> {
        let now = Utc::now();
        let mut levels: Vec<Vec<JobRow>> = Vec::new();
        let mut cut = Vec::new();
        let mut parents = vec![id];
        for depth in 1..=TREE_DEPTH {
            let mut rows =
                control::children_rows(pool, project, &parents, TREE_LEVEL as i64 + 1).await?;
            if rows.len() > TREE_LEVEL {
                rows.truncate(TREE_LEVEL);
                cut.push(depth);
            }
            if rows.is_empty() {
                break;
            }
            parents = rows.iter().map(|r| r.id).collect();
            levels.push(rows);
        }
        // Built bottom-up: each level's nodes take their children from the level below.
        let mut below: HashMap<Uuid, Vec<Node>> = HashMap::new();
        for rows in levels.into_iter().rev() {
            let mut next: HashMap<Uuid, Vec<Node>> = HashMap::new();
            for r in &rows {
                let node = Node {
                    row: RowView::new(r, now),
                    children: below.remove(&r.id).unwrap_or_default(),
                };
                next.entry(r.parent_id.unwrap_or(id))
                    .or_default()
                    .push(node);
            }
            below = next;
        }
        Ok(Self {
            nodes: below.remove(&id).unwrap_or_default(),
            cut,
            parent_link: format!("/jobs?parent={id}"),
        })
    }
}
