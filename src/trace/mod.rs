//! Traces: spans in Postgres for every job attempt, LLM call and tool call, with W3C trace
//! context on the way in (`traceparent` on the API) and out (the `http` kind).
//!
//! A job attempt's span is opened by the claim and closed by the finish or the rescue, in those
//! statements (see `queue`). This module owns the child spans a handler opens under its job span,
//! each written when it starts and finished when it ends, both under the job's lease fence, and
//! the reads. It knows nothing about agents: callers name the kind and pass the attributes, using
//! the OpenTelemetry GenAI names where they exist.

pub mod export;
pub mod otlp;
pub mod store;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// A W3C `traceparent`: the trace and the span a new job or span hangs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub span_id: String,
    pub sampled: bool,
}

/// Whether `v` is `n` lowercase hex digits, not all zero (a valid W3C trace or span id).
pub fn is_hex(v: &str, n: usize) -> bool {
    v.len() == n
        && v.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && v.bytes().any(|b| b != b'0')
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex flags>`; `None` for anything else (all-zero ids and
    /// version `ff` included), as the W3C spec asks.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Future versions may append fields; version 00 may not.
        if version.len() != 2 || version == "ff" || !version.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if !is_hex(trace, 32) || !is_hex(span, 16) || flags.len() != 2 {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id: trace.to_owned(),
            span_id: span.to_owned(),
            sampled: flags & 1 == 1,
        })
    }

    /// The header value for outbound calls.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            self.span_id,
            if self.sampled { "01" } else { "00" }
        )
    }
}

/// A fresh span id: 16 lowercase hex digits.
pub fn new_span_id() -> String {
    let id = Uuid::new_v4().simple().to_string();
    id[..16].to_owned()
}

/// How a span ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
    Cancelled,
}

impl Status {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The job attempt a child span belongs to: where it hangs and the fence its writes carry.
#[derive(Debug, Clone)]
pub struct Scope {
    pub project_id: Uuid,
    pub job_id: Uuid,
    pub attempt: i32,
    pub session_id: Option<Uuid>,
    pub trace_id: String,
    /// The job attempt's own span.
    pub span_id: String,
    pub lease_token: Uuid,
}

/// An open child span. End it with [`Span::end`]; a span never ended is closed as `abandoned`
/// when its attempt's lease lapses.
#[derive(Debug, Clone)]
pub struct Span {
    pool: PgPool,
    scope: Scope,
    pub span_id: String,
}

impl Span {
    /// Opens a span of `kind` named `name` under `parent` (the job span when `None`). Returns
    /// `None` when the attempt no longer holds its lease (nothing was written).
    pub async fn start(
        pool: &PgPool,
        scope: &Scope,
        parent: Option<&str>,
        kind: &str,
        name: &str,
        attrs: Value,
    ) -> Result<Option<Self>, sqlx::Error> {
        let span_id = new_span_id();
        let parent = parent.unwrap_or(&scope.span_id);
        let written = store::start(pool, scope, &span_id, parent, kind, name, &attrs).await?;
        Ok(written.then(|| Self {
            pool: pool.clone(),
            scope: scope.clone(),
            span_id,
        }))
    }

    /// This span as the parent of outbound calls.
    pub fn traceparent(&self) -> TraceParent {
        TraceParent {
            trace_id: self.scope.trace_id.clone(),
            span_id: self.span_id.clone(),
            sampled: true,
        }
    }

    /// Ends the span with `status`, merging `attrs` into what it started with. Returns whether
    /// the write went through (the attempt still held its lease).
    pub async fn end(&self, status: Status, attrs: Value) -> Result<bool, sqlx::Error> {
        store::end(&self.pool, &self.scope, &self.span_id, status, &attrs).await
    }
}

/// Cuts a text attribute to `max` bytes (on a character boundary); returns it and whether it was cut.
pub fn truncate(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_owned(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}
