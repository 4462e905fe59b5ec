//! One trace as a waterfall: its spans in tree order on one time axis, each bar's offset and
//! width as percentages of the axis, labels in words, attributes ready to show, and per-job
//! totals of the LLM calls beneath each job span.
//!
//! Everything here is plain data for the templates; text is escaped when they render it.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::trace::store::SpanRow;
use crate::web::view::{self, CacheHit};

/// The longest attribute value shown; tool results are already cut to 16 KiB when stored.
const MAX_ATTR_CHARS: usize = 20_000;

/// One span as a waterfall row.
#[derive(Debug, Clone)]
pub struct Row {
    /// The span id: 16 lowercase hex digits (the table's check), so safe in DOM ids.
    pub id: String,
    /// The parent's span id when the parent is in this trace.
    pub parent: Option<String>,
    pub depth: usize,
    /// How many `</ol></li>` follow this row when the whole tree is rendered flat.
    pub closes: usize,
    /// CSS suffix of the kind (`job`, `llm`, …, or `other`).
    pub kind: &'static str,
    pub kind_label: &'static str,
    pub name: String,
    /// CSS suffix of the status.
    pub status: &'static str,
    pub status_label: &'static str,
    /// How long it took (`so far` while open).
    pub took: String,
    /// When it started, relative to the trace's start: `+120 ms`.
    pub at: String,
    pub left: String,
    pub width: String,
    pub open: bool,
    pub started: String,
    pub ended: String,
    pub job: Option<Uuid>,
    pub attrs: Vec<Attr>,
}

/// One attribute: its name and its value as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub key: String,
    pub value: String,
    /// Long or multi-line values go in a `<pre>` block.
    pub block: bool,
}

/// What the LLM calls under one job span add up to.
#[derive(Debug, Clone)]
pub struct Total {
    pub id: String,
    pub label: String,
    pub status: &'static str,
    pub status_label: &'static str,
    pub took: String,
    pub calls: i64,
    pub input: String,
    pub output: String,
    pub cache_read: String,
    pub cache: Option<CacheHit>,
    pub cost: String,
}

/// A mark on the time axis.
#[derive(Debug, Clone)]
pub struct Tick {
    pub left: String,
    pub label: String,
}

/// The whole page's data.
#[derive(Debug, Clone)]
pub struct Waterfall {
    pub trace_id: String,
    pub short: String,
    pub rows: Vec<Row>,
    pub totals: Vec<Total>,
    pub ticks: Vec<Tick>,
    /// Some span has not ended yet.
    pub open: bool,
    pub span_count: usize,
    pub took: String,
    /// The first root job, and the chat session, for links.
    pub job: Option<Uuid>,
    pub session: Option<Uuid>,
}

fn kind_of(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "job" => ("job", "JOB"),
        "llm" => ("llm", "LLM"),
        "tool" => ("tool", "TOOL"),
        "step" => ("step", "STEP"),
        "subagent" => ("subagent", "SUBAGENT"),
        "workflow" => ("workflow", "WORKFLOW"),
        "http" => ("http", "HTTP"),
        _ => ("other", "SPAN"),
    }
}

fn status_of(status: &str) -> (&'static str, &'static str) {
    match status {
        "running" => ("running", "▶ running"),
        "ok" => ("ok", "✓ ok"),
        "error" => ("error", "✗ error"),
        "cancelled" => ("cancelled", "⊘ cancelled"),
        "abandoned" => ("abandoned", "⚠ abandoned"),
        _ => ("other", "? unknown"),
    }
}

/// JSON on one line when it is short (`["stop"]`), else pretty-printed.
fn json_text(v: &Value) -> String {
    let line = v.to_string();
    if line.chars().count() <= 60 {
        line
    } else {
        view::pretty(v)
    }
}

/// An attribute value as text: strings as they are (JSON when they hold an object or an array,
/// as tool arguments do), anything else as JSON.
fn attr(key: &str, v: &Value) -> Attr {
    let value = match v {
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(j @ (Value::Object(_) | Value::Array(_))) => json_text(&j),
            _ => s.clone(),
        },
        other => json_text(other),
    };
    let value = view::clip(&value, MAX_ATTR_CHARS);
    Attr {
        key: key.to_owned(),
        block: value.contains('\n') || value.chars().count() > 80,
        value,
    }
}

/// The axis length while spans are still open: the next round length past what has elapsed,
/// so bars do not all rescale every second.
fn round_up(elapsed: TimeDelta) -> TimeDelta {
    const STEPS_MS: [i64; 16] = [
        100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 60_000, 120_000, 300_000,
        600_000, 1_200_000, 1_800_000, 3_600_000,
    ];
    let ms = elapsed.num_milliseconds().max(1);
    let step = STEPS_MS.iter().copied().find(|s| *s >= ms);
    // Past an hour, whole hours.
    TimeDelta::milliseconds(step.unwrap_or_else(|| (ms + 3_599_999) / 3_600_000 * 3_600_000))
}

fn pct(part: TimeDelta, whole: TimeDelta) -> f64 {
    let whole = whole.num_microseconds().unwrap_or(i64::MAX).max(1) as f64;
    (part.num_microseconds().unwrap_or(0) as f64 / whole * 100.0).clamp(0.0, 100.0)
}

fn number(attrs: &Value, key: &str) -> i64 {
    attrs.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// Tree order: each span after its parent, siblings by start; spans whose parent is not in the
/// trace are roots. Returns `(index, depth)` pairs; a span on a parent cycle still appears once.
fn tree_order(spans: &[SpanRow], parent: &[Option<usize>]) -> Vec<(usize, usize)> {
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, p) in parent.iter().enumerate() {
        match p {
            Some(p) => kids[*p].push(i),
            None => roots.push(i),
        }
    }
    let mut seen = vec![false; spans.len()];
    let mut out = Vec::with_capacity(spans.len());
    // Roots first; then any span not reached from one (only a parent cycle leaves one) as a root.
    for start in roots.into_iter().chain(0..spans.len()) {
        // Children lists are in start order (spans are read that way); the stack takes them
        // reversed so they are visited first to last.
        let mut stack = vec![(start, 0)];
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            out.push((i, depth));
            stack.extend(kids[i].iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    out
}

/// Lays out `spans` (as [`crate::trace::store::by_trace`] returns them) as of `now`.
pub fn build(trace_id: &str, spans: &[SpanRow], now: DateTime<Utc>) -> Waterfall {
    let index: HashMap<&str, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id.as_str(), i))
        .collect();
    let parent: Vec<Option<usize>> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = *index.get(s.parent_span_id.as_deref()?)?;
            (p != i).then_some(p)
        })
        .collect();
    let end = |s: &SpanRow| s.ended_at.unwrap_or(now).max(s.started_at);
    let t0 = spans.iter().map(|s| s.started_at).min().unwrap_or(now);
    let t1 = spans.iter().map(end).max().unwrap_or(now);
    let open = spans.iter().any(|s| s.ended_at.is_none());
    let axis = if open {
        round_up(t1 - t0)
    } else {
        (t1 - t0).max(TimeDelta::milliseconds(1))
    };

    let order = tree_order(spans, &parent);
    let mut rows = Vec::with_capacity(order.len());
    for (n, &(i, depth)) in order.iter().enumerate() {
        let s = &spans[i];
        let next_depth = order.get(n + 1).map_or(0, |(_, d)| *d);
        let (kind, kind_label) = kind_of(&s.kind);
        let (status, status_label) = status_of(&s.status);
        let took = view::duration(end(s) - s.started_at);
        let left = pct(s.started_at - t0, axis).min(99.8);
        // A span too short to see still gets a sliver, kept inside the track.
        let width = pct(end(s) - s.started_at, axis).max(0.2).min(100.0 - left);
        rows.push(Row {
            id: s.span_id.clone(),
            parent: parent[i].map(|p| spans[p].span_id.clone()),
            depth,
            closes: depth + 1 - next_depth,
            kind,
            kind_label,
            name: s.name.clone(),
            status,
            status_label,
            took: if s.ended_at.is_some() {
                took
            } else {
                format!("{took} so far")
            },
            at: format!("+{}", view::duration(s.started_at - t0)),
            left: format!("{left:.3}"),
            width: format!("{width:.3}"),
            open: s.ended_at.is_none(),
            started: view::stamp(s.started_at),
            ended: s.ended_at.map_or_else(|| "not yet".to_owned(), view::stamp),
            job: s.job_id,
            attrs: match &s.attrs {
                Value::Object(map) => map.iter().map(|(k, v)| attr(k, v)).collect(),
                Value::Null => Vec::new(),
                other => vec![attr("value", other)],
            },
        });
    }

    Waterfall {
        trace_id: trace_id.to_owned(),
        short: trace_id.chars().take(8).collect(),
        totals: totals(spans, &parent, &order, end),
        ticks: (0..=4)
            .map(|q| Tick {
                left: format!("{}", q * 25),
                label: view::duration(axis * q / 4),
            })
            .collect(),
        open,
        span_count: spans.len(),
        took: view::duration(t1 - t0),
        job: order
            .iter()
            .map(|(i, _)| &spans[*i])
            .find(|s| s.kind == "job")
            .and_then(|s| s.job_id),
        session: spans.iter().find_map(|s| s.session_id),
        rows,
    }
}

/// Per job span (in tree order): the tokens and cost of every LLM call beneath it.
fn totals(
    spans: &[SpanRow],
    parent: &[Option<usize>],
    order: &[(usize, usize)],
    end: impl Fn(&SpanRow) -> DateTime<Utc>,
) -> Vec<Total> {
    // (calls, input, output, cache read, cost) per span index.
    let mut sums: HashMap<usize, (i64, i64, i64, i64, f64)> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        if s.kind != "llm" {
            continue;
        }
        let a = &s.attrs;
        let add = (
            number(a, "gen_ai.usage.input_tokens"),
            number(a, "gen_ai.usage.output_tokens"),
            number(a, "gen_ai.usage.cache_read.input_tokens"),
            a.get("spool.cost_usd")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
        );
        // Up the ancestors, at most once per span even if parents loop.
        let mut at = parent[i];
        for _ in 0..spans.len() {
            let Some(p) = at else { break };
            if spans[p].kind == "job" {
                let e = sums.entry(p).or_default();
                e.0 += 1;
                e.1 += add.0;
                e.2 += add.1;
                e.3 += add.2;
                e.4 += add.3;
            }
            at = parent[p];
        }
    }
    order
        .iter()
        .filter(|(i, _)| spans[*i].kind == "job")
        .map(|&(i, _)| {
            let s = &spans[i];
            let (calls, input, output, cache_read, cost) =
                sums.get(&i).copied().unwrap_or_default();
            let (status, status_label) = status_of(&s.status);
            Total {
                id: s.span_id.clone(),
                label: match s.attempt {
                    Some(n) => format!("{} · attempt {n}", s.name),
                    None => s.name.clone(),
                },
                status,
                status_label,
                took: view::duration(end(s) - s.started_at),
                calls,
                input: view::thousands(input),
                output: view::thousands(output),
                cache_read: view::thousands(cache_read),
                cache: CacheHit::new(input, cache_read),
                cost: view::usd(cost),
            }
        })
        .collect()
}
