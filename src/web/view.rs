//! Small helpers that turn domain values into what templates show: the page frame, times,
//! durations, JSON and state labels. Templates get ready-made strings; they hold no logic.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// What the shared frame (`base.html`) needs on every page.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The CSRF token htmx sends as `X-CSRF-Token` and forms carry as `_csrf`.
    pub csrf: String,
    /// The nav entry to mark current: `overview`, `jobs`, `chats`, `workflows`,
    /// `workers`, or empty.
    pub section: &'static str,
    pub signed_in: bool,
}

impl Layout {
    /// The frame for pages shown before signing in.
    pub fn bare() -> Self {
        Self {
            csrf: String::new(),
            section: "",
            signed_in: false,
        }
    }

    /// `"page"` when `section` is the current one, for `aria-current`.
    pub fn current(&self, section: &str) -> &'static str {
        if self.section == section {
            "page"
        } else {
            "false"
        }
    }
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A compact duration: `850 ms`, `12.4 s`, `3 m 05 s`, `2 h 10 m`, `3 d 4 h`.
pub fn duration(d: chrono::TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} m {:02} s", ms / 60_000, (ms / 1000) % 60),
        3_600_000..86_400_000 => format!("{} h {:02} m", ms / 3_600_000, (ms / 60_000) % 60),
        _ => format!("{} d {} h", ms / 86_400_000, (ms / 3_600_000) % 24),
    }
}

/// How long ago `t` was, relative to `now`: `4 s ago`; `in 3 s` for future times.
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if t > now {
        format!("in {}", duration(t - now))
    } else {
        format!("{} ago", duration(now - t))
    }
}

/// An absolute UTC timestamp for `title` attributes and `<time datetime>`.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

/// Pretty-printed JSON for `<pre>` blocks (escaped by the template like any text).
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Shortens `s` to `max` characters with an ellipsis.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The last 8 characters of an id (v7 ids share their time prefix), for tables; the full id goes in links and titles.
pub fn short_id(id: &uuid::Uuid) -> String {
    id.simple().to_string()[24..].to_owned()
}

/// The text-and-symbol label of a job state, so state is never told by colour alone.
pub fn state_label(state: &str) -> &'static str {
    match state {
        "queued" => "◷ queued",
        "running" => "▶ running",
        "waiting" => "◫ waiting",
        "succeeded" => "✓ succeeded",
        "failed" => "✗ failed",
        "cancelled" => "⊘ cancelled",
        _ => "? unknown",
    }
}

/// Escapes text for HTML content and attribute values, for fragments built without a template.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A size as `512 B`, `12.3 KB` or `4.5 MB` (powers of 1000, as file managers show them).
pub fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} KB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

/// A whole number with thousands separators: `12,345`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A cost in dollars, with the precision small LLM costs need: `$0.0031`.
pub fn usd(cost: f64) -> String {
    format!("${cost:.4}")
}

/// Cache-read tokens as a share of the prompt, for a badge whose word (`high`, `medium`,
/// `low`) says what its colour reinforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheHit {
    /// Whole percent, 0–100.
    pub pct: u32,
    /// `high` (≥ 60%), `medium` (30–59%) or `low` (< 30%); also the CSS class suffix.
    pub level: &'static str,
}

impl CacheHit {
    /// The share of `cache_read` in `input`; `None` when no input tokens were counted.
    pub fn new(input: i64, cache_read: i64) -> Option<Self> {
        // Some providers count cached tokens inside the input and others beside it; the larger
        // is the prompt either way (as in the chat's usage line), so the share never passes 100%.
        let prompt = input.max(cache_read);
        if prompt <= 0 {
            return None;
        }
        let pct = (cache_read.max(0) as f64 * 100.0 / prompt as f64).round() as u32;
        // The level follows the shown number, so `60%` never reads "medium".
        let level = match pct {
            60.. => "high",
            30..=59 => "medium",
            _ => "low",
        };
        Some(Self { pct, level })
    }

    /// `cache hit 72% · high`.
    pub fn label(&self) -> String {
        format!("cache hit {}% · {}", self.pct, self.level)
    }
}
