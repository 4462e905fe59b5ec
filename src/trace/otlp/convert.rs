//! Stored spans as the OpenTelemetry SDK's `SpanData`: their own W3C ids and parent links, the
//! span kind and status OTel knows, and the `attrs` JSON as typed attributes.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status as OtelStatus, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value as OtelValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use serde_json::Value;

use crate::trace::export::Pending;

/// A stored span as the SDK's span data, under its own ids; `None` (logged) for ids that are
/// not W3C ids, which the table's checks rule out.
pub(super) fn span_data(r: &Pending, scope: &InstrumentationScope) -> Option<SpanData> {
    let ids = (
        TraceId::from_hex(&r.trace_id),
        SpanId::from_hex(&r.span_id),
        r.parent_span_id
            .as_deref()
            .map(SpanId::from_hex)
            .transpose(),
    );
    let (Ok(trace_id), Ok(span_id), Ok(parent)) = ids else {
        tracing::warn!(trace_id = %r.trace_id, span_id = %r.span_id, "span with malformed ids not exported");
        return None;
    };
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    Some(SpanData {
        span_context: context,
        parent_span_id: parent.unwrap_or(SpanId::INVALID),
        // A job span hangs under whoever enqueued it (an API caller's `traceparent`, or the
        // step that spawned it in another attempt): context that came from outside this span's
        // process. Child spans' parent is their own attempt's job span.
        parent_span_is_remote: r.kind == "job" && parent.is_some(),
        span_kind: span_kind(&r.kind),
        name: Cow::Owned(r.name.clone()),
        start_time: SystemTime::from(r.started_at),
        end_time: SystemTime::from(r.ended_at),
        attributes: attributes(r),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: status(r),
        instrumentation_scope: scope.clone(),
    })
}

/// Calls out of the process are clients; everything else happens inside it.
fn span_kind(kind: &str) -> SpanKind {
    match kind {
        "llm" | "http" => SpanKind::Client,
        _ => SpanKind::Internal,
    }
}

/// OTel has only ok and error: a cancelled or abandoned span is an error that says which.
fn status(r: &Pending) -> OtelStatus {
    let message = r.attrs.get("error.message").and_then(Value::as_str);
    match (r.status.as_str(), message) {
        ("ok", _) => OtelStatus::Ok,
        ("error", Some(m)) => OtelStatus::error(m.to_owned()),
        ("abandoned", Some(m)) => OtelStatus::error(format!("abandoned: {m}")),
        (other, _) => OtelStatus::error(other.to_owned()),
    }
}

/// The stored attributes, then what the columns add that the attributes do not already say.
fn attributes(r: &Pending) -> Vec<KeyValue> {
    let mut out: Vec<KeyValue> = match &r.attrs {
        Value::Object(map) => map
            .iter()
            .filter_map(|(k, v)| Some(KeyValue::new(k.clone(), attr_value(v)?)))
            .collect(),
        _ => Vec::new(),
    };
    let mut extra = vec![
        KeyValue::new("spool.span.kind", r.kind.clone()),
        KeyValue::new("spool.span.status", r.status.clone()),
        KeyValue::new("spool.project.id", r.project_id.to_string()),
    ];
    if let Some(job) = r.job_id {
        extra.push(KeyValue::new("spool.job.id", job.to_string()));
    }
    if r.kind == "job" {
        extra.push(KeyValue::new("spool.job.kind", r.name.clone()));
    }
    if let Some(attempt) = r.attempt {
        extra.push(KeyValue::new("spool.job.attempt", i64::from(attempt)));
    }
    if let Some(session) = r.session_id {
        extra.push(KeyValue::new("spool.session.id", session.to_string()));
    }
    extra.retain(|kv| r.attrs.get(kv.key.as_str()).is_none());
    out.extend(extra);
    out
}

/// A JSON value as an attribute value: scalars as themselves, homogeneous arrays of scalars as
/// arrays, anything nested as its JSON text; `null` is left out, which is how OTel says "unset".
fn attr_value(v: &Value) -> Option<OtelValue> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => OtelValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => OtelValue::I64(i),
            // Beyond i64 (or fractional): f64 is the only wider OTel number.
            None => OtelValue::F64(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => OtelValue::String(s.clone().into()),
        Value::Array(items) => match array(items) {
            Some(a) => OtelValue::Array(a),
            None => OtelValue::String(v.to_string().into()),
        },
        Value::Object(_) => OtelValue::String(v.to_string().into()),
    })
}

/// An OTel array when every item is a scalar of one type (an empty array is an empty string
/// array); `None` otherwise.
fn array(items: &[Value]) -> Option<Array> {
    if items.iter().all(Value::is_string) {
        let strings = items.iter().filter_map(Value::as_str);
        return Some(Array::String(
            strings.map(|s| StringValue::from(s.to_owned())).collect(),
        ));
    }
    if items.iter().all(Value::is_boolean) {
        return Some(Array::Bool(
            items.iter().filter_map(Value::as_bool).collect(),
        ));
    }
    if items.iter().all(Value::is_i64) {
        return Some(Array::I64(items.iter().filter_map(Value::as_i64).collect()));
    }
    if items.iter().all(Value::is_number) {
        return Some(Array::F64(items.iter().filter_map(Value::as_f64).collect()));
    }
    None
}
