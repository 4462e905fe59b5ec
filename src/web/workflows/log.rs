//! A run's log as the run page shows it: the script's `phase()` and `log()` lines, steps starting
//! and ending (with tokens and duration, or "from the cache"), the budget, and the run job's
//! state changes, each as one readable line.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::events::log::Event;
use crate::web::view;

/// One log line.
pub(super) struct LogLine {
    pub(super) seq: i64,
    pub(super) offset: String,
    pub(super) stamp: String,
    pub(super) kind: String,
    pub(super) state: &'static str,
    pub(super) text: String,
}

/// A job state as a CSS class suffix; empty for anything else.
fn known_state(s: &str) -> &'static str {
    match s {
        "queued" => "queued",
        "running" => "running",
        "waiting" => "waiting",
        "succeeded" => "succeeded",
        "failed" => "failed",
        "cancelled" => "cancelled",
        _ => "",
    }
}

/// A log line's text.
fn log_text(e: &Event) -> String {
    let d = &e.data;
    let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("");
    let step = || {
        let label = s("label");
        if label.is_empty() {
            format!("{} {}", s("kind"), s("position"))
        } else {
            label.to_owned()
        }
    };
    let text = match e.kind.as_str() {
        "phase" => format!("phase: {}", s("title")),
        "log" => s("message").to_owned(),
        "step_started" => {
            let cached = d["cached"].as_bool().unwrap_or(false);
            format!(
                "{} started{}",
                step(),
                if cached { " (cached)" } else { "" }
            )
        }
        "step_completed" => {
            if d["cached"].as_bool().unwrap_or(false) {
                format!("{} from the cache", step())
            } else {
                let mut parts = vec![format!("{} {}", step(), s("state"))];
                if let Some(t) = d["tokens"].as_i64() {
                    parts.push(format!("{} tokens", view::thousands(t)));
                }
                if let Some(ms) = d["duration_ms"].as_i64() {
                    parts.push(view::duration(chrono::TimeDelta::milliseconds(ms)));
                }
                parts.join(" · ")
            }
        }
        "budget" => format!(
            "spent {} of {} tokens",
            view::thousands(d["spent"].as_i64().unwrap_or(0)),
            view::thousands(d["total"].as_i64().unwrap_or(0))
        ),
        "state" => {
            let mut parts = vec![format!("run {}", s("state"))];
            if !s("reason").is_empty() {
                parts.push(s("reason").to_owned());
            }
            if let Some(m) = d
                .get("error")
                .and_then(|e| e.get("message").and_then(Value::as_str).or(e.as_str()))
            {
                parts.push(m.to_owned());
            }
            parts.join(" · ")
        }
        "cancel_requested" => "cancel requested".to_owned(),
        _ => d
            .get("text")
            .or_else(|| d.get("message"))
            .and_then(Value::as_str)
            .map_or_else(|| d.to_string(), str::to_owned),
    };
    view::clip(&text, 500)
}

/// The page's lines for `events`, with offsets from the run's start.
pub(super) fn lines(events: &[Event], created: DateTime<Utc>) -> Vec<LogLine> {
    events
        .iter()
        .map(|e| LogLine {
            seq: e.seq,
            offset: format!("+{}", view::duration(e.at - created)),
            stamp: view::stamp(e.at),
            kind: e.kind.replace('_', " "),
            state: if e.kind == "state" {
                known_state(e.data["state"].as_str().unwrap_or(""))
            } else {
                ""
            },
            text: log_text(e),
        })
        .collect()
}
