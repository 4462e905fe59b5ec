//! What a handler sees of its job.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::EventSink;

/// One attempt of one job, handed to its handler.
#[derive(Clone)]
pub struct JobContext {
    pub id: Uuid,
    pub project_id: Uuid,
    pub kind: String,
    pub args: Value,
    /// 1 for the first attempt.
    pub attempt: i32,
    pub max_attempts: i32,
    pub(crate) lease_token: Uuid,
    /// The job's trace, and this attempt's span in it.
    pub trace_id: String,
    pub span_id: String,
    /// Set when this claim resumes the job after a wait: when that wait was to end.
    pub resumed_wait: Option<DateTime<Utc>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) events: EventSink,
    pub(crate) parent_event: Arc<Mutex<Option<(String, Value)>>>,
}

impl JobContext {
    /// Records progress (0–100) with a message; coalesced with other events.
    pub fn progress(&self, pct: f64, message: &str) {
        self.events.progress(pct, message);
    }

    /// Appends a custom event to the job's log; coalesced, written within ~50 ms.
    pub fn emit(&self, kind: &str, data: Value) {
        self.events.emit(kind, data);
    }

    /// Appends a text delta (`data` with a string `text`); deltas differing only in `text` merge
    /// within one write window, so a token stream costs a few rows, not one per token.
    pub fn emit_delta(&self, kind: &str, data: Value) {
        self.events.emit_delta(kind, data);
    }

    /// Fires when the job is cancelled, times out, loses its lease or the worker shuts down.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The job id and lease token that fence this attempt's own writes: a domain write made with
    /// `WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $job AND lease_token = $token)` changes nothing
    /// once the lease is lost.
    pub fn fence(&self) -> (Uuid, Uuid) {
        (self.id, self.lease_token)
    }

    /// Where this attempt's child spans hang, and the fence their writes carry; `session_id`
    /// files them under a chat session too.
    pub fn trace_scope(&self, session_id: Option<Uuid>) -> crate::trace::Scope {
        crate::trace::Scope {
            project_id: self.project_id,
            job_id: self.id,
            attempt: self.attempt,
            session_id,
            trace_id: self.trace_id.clone(),
            span_id: self.span_id.clone(),
            lease_token: self.lease_token,
        }
    }

    /// This attempt's span as the `traceparent` of outbound calls.
    pub fn traceparent(&self) -> crate::trace::TraceParent {
        crate::trace::TraceParent {
            trace_id: self.trace_id.clone(),
            span_id: self.span_id.clone(),
            sampled: true,
        }
    }

    /// Leaves an event in the parent job's log when this attempt ends the job, written in the
    /// same transaction as the finish (the last call wins).
    pub fn tell_parent(&self, kind: &str, data: Value) {
        if let Ok(mut slot) = self.parent_event.lock() {
            *slot = Some((kind.to_owned(), data));
        }
    }

    /// Whether the handler has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}
