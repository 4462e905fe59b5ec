//! The OTLP tests' harness: a tiny OTLP/HTTP collector (`POST /v1/traces`, protobuf, on a free
//! port) that answers 503 to the next `fail_next` requests, lets `refuse` turn a request down
//! with a status of its choosing, holds requests while `stall` is set until `release`, and keeps
//! what it accepted and refused; and the reads of Postgres the tests compare it with.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use spool::trace::{export, otlp};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::common::eventually;

/// Decides whether to refuse a request (with which status) from its spans.
type Rule = Box<dyn Fn(&[Got]) -> Option<u16> + Send + Sync>;

/// The collector's state.
#[derive(Default)]
pub struct Receiver {
    accepted: Mutex<Vec<ExportTraceServiceRequest>>,
    refused: Mutex<Vec<(u16, ExportTraceServiceRequest)>>,
    pub fail_next: AtomicUsize,
    pub refuse: Mutex<Option<Rule>>,
    pub stall: AtomicBool,
    pub stalled: AtomicUsize,
    pub release: CancellationToken,
}

async fn traces(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    if rx.stall.load(Ordering::SeqCst) {
        rx.stalled.fetch_add(1, Ordering::SeqCst);
        rx.release.cancelled().await;
    }
    let fail = rx
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail {
        Some(503)
    } else {
        let rule = rx.refuse.lock().expect("lock");
        rule.as_ref()
            .and_then(|r| r(&flatten(std::slice::from_ref(&req))))
    };
    if let Some(status) = status {
        rx.refused.lock().expect("lock").push((status, req));
        let code = StatusCode::from_u16(status).expect("status");
        return (code, "refused").into_response();
    }
    rx.accepted.lock().expect("lock").push(req);
    let ok = ExportTraceServiceResponse::default().encode_to_vec();
    ([(header::CONTENT_TYPE, "application/x-protobuf")], ok).into_response()
}

impl Receiver {
    /// Starts the collector; returns it and its traces URL.
    pub async fn start() -> (Arc<Self>, String) {
        let rx = Arc::new(Self::default());
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(traces))
            .with_state(rx.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver") });
        (rx, format!("http://{addr}/v1/traces"))
    }

    /// The spans of every accepted request.
    pub fn accepted(&self) -> Vec<Got> {
        flatten(&self.accepted.lock().expect("lock"))
    }

    /// Each refused request: its status and its spans.
    pub fn refused(&self) -> Vec<(u16, Vec<Got>)> {
        let refused = self.refused.lock().expect("lock");
        refused
            .iter()
            .map(|(s, r)| (*s, flatten(std::slice::from_ref(r))))
            .collect()
    }
}

/// A received span, ids in hex.
#[derive(Debug, Clone)]
pub struct Got {
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub name: String,
    pub kind: i32,
    pub code: i32,
    pub message: String,
    pub flags: u32,
    pub start: u64,
    pub end: u64,
    pub attrs: HashMap<String, Any>,
    pub service: String,
    pub scope: String,
}

/// Every span of `reqs`, with its resource's `service.name` and its scope's name.
pub fn flatten(reqs: &[ExportTraceServiceRequest]) -> Vec<Got> {
    let mut out = Vec::new();
    for rs in reqs.iter().flat_map(|r| &r.resource_spans) {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.clone());
        let service = match service {
            Some(Any::StringValue(s)) => s,
            other => panic!("service.name: {other:?}"),
        };
        for ss in &rs.scope_spans {
            let scope = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for s in &ss.spans {
                let status = s.status.clone().unwrap_or_default();
                out.push(Got {
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent: hex::encode(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: s.kind,
                    code: status.code,
                    message: status.message,
                    flags: s.flags,
                    start: s.start_time_unix_nano,
                    end: s.end_time_unix_nano,
                    attrs: s
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
                        .collect(),
                    service: service.clone(),
                    scope: scope.clone(),
                });
            }
        }
    }
    out
}

/// A stored span: trace, span, parent, kind, name, job, exported.
pub type Row = (
    String,
    String,
    Option<String>,
    String,
    String,
    Option<Uuid>,
    bool,
);

pub async fn stored(pool: &PgPool) -> Vec<Row> {
    sqlx::query_as(
        "SELECT trace_id, span_id, parent_span_id, kind, name, job_id, exported_at IS NOT NULL
         FROM spans ORDER BY started_at",
    )
    .fetch_all(pool)
    .await
    .expect("spans")
}

/// Waits until every job is terminal and every span ended.
pub async fn settled(pool: &PgPool) {
    let done = eventually(Duration::from_secs(15), || async {
        let (open,): (i64,) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM spans WHERE ended_at IS NULL)
                  + (SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled'))",
        )
        .fetch_one(pool)
        .await
        .expect("count");
        (open == 0).then_some(())
    })
    .await;
    assert!(done.is_some(), "jobs or spans did not settle");
}

/// Waits until nothing is left to export.
pub async fn drained(pool: &PgPool, secs: u64) {
    let done = eventually(Duration::from_secs(secs), || async {
        let n = export::backlog(pool, Duration::from_secs(3600))
            .await
            .expect("backlog");
        (n == 0).then_some(())
    })
    .await;
    assert!(done.is_some(), "spans were left unexported");
}

pub fn fast(endpoint: &str) -> otlp::OtlpConfig {
    otlp::OtlpConfig {
        interval: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        ..otlp::OtlpConfig::new(endpoint)
    }
}

/// Each stored span arrived exactly once.
pub fn once_each(got: &[Got], rows: &[Row]) -> HashMap<String, Got> {
    let by_id: HashMap<String, Got> = got.iter().map(|g| (g.span_id.clone(), g.clone())).collect();
    assert_eq!(by_id.len(), got.len(), "a span arrived twice: {got:#?}");
    let stored: HashSet<&String> = rows.iter().map(|r| &r.1).collect();
    let arrived: HashSet<&String> = by_id.keys().collect();
    assert_eq!(arrived, stored, "received vs stored span ids");
    by_id
}
