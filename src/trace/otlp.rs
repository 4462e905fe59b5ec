//! OpenTelemetry export of the spans stored in Postgres, over OTLP/HTTP (protobuf).
//!
//! Postgres stays the source of truth: spans are written by the claim, the handler and the finish
//! exactly as before, and this module only reads them back. A background task in each process
//! that sets `OTEL_EXPORTER_OTLP_ENDPOINT` wakes every second, claims a batch of ended,
//! unexported spans (`FOR UPDATE SKIP LOCKED`, see [`super::export`]), turns them into the SDK's
//! `SpanData` with their stored ids ([`convert`]), sends them with `opentelemetry-otlp`'s HTTP
//! exporter and stamps `exported_at` in the same transaction. Holding the row locks across the
//! send is what keeps two processes from exporting the same span; a crash between the
//! collector's answer and the commit means the batch is sent again (at least once, never lost).
//! A failed send rolls the batch back for the next round and backs off up to `max_backoff`;
//! only spans that started more than `max_age` ago are passed over (they stay in Postgres).
//! A batch the collector refuses as such (400, 413) is halved until the refused span stands
//! alone; that one is settled unsent, as the OTLP spec asks, so it cannot wedge the queue.
//! Nothing on the job path waits for this task: ended spans are never written again, so its
//! locks block no job.

mod convert;

use std::time::Duration;

use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::export;
use crate::queue::backoff::Backoff;

/// The spec's default for `OTEL_EXPORTER_OTLP_TIMEOUT`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a shutdown waits for the last spans to go out; whatever is left stays in Postgres.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The full traces URL, e.g. `http://collector:4318/v1/traces`.
    pub endpoint: String,
    /// The resource's `service.name`.
    pub service_name: String,
    /// The pause between rounds while the exporter keeps up.
    pub interval: Duration,
    /// Spans per request (and per claim).
    pub batch_size: i64,
    /// How long one request may take.
    pub timeout: Duration,
    /// The longest pause after repeated failures.
    pub max_backoff: Duration,
    /// Spans that started longer ago than this are not exported, so turning export on does not
    /// replay the whole history (they stay in Postgres and the trace API).
    pub max_age: Duration,
}

impl OtlpConfig {
    /// Defaults around `endpoint`, the full traces URL.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            service_name: "spool".into(),
            interval: Duration::from_secs(1),
            // Tool spans carry up to 16 kB of arguments and results each; this keeps a request
            // within collectors' usual body limits.
            batch_size: 256,
            timeout: DEFAULT_TIMEOUT,
            max_backoff: Duration::from_secs(30),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// What can go wrong configuring or running the exporter.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The configured endpoint is not an http(s) URL.
    #[error("{var}: `{value}` is not an http(s) URL")]
    Endpoint { var: &'static str, value: String },
    /// The SDK would not build the exporter (e.g. a compression it was built without).
    #[error("building the OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Claiming or stamping spans failed; the round is retried.
    #[error("span export database access: {0}")]
    Db(#[from] sqlx::Error),
    /// The send failed in a way worth retrying as is (network, 429, 5xx, auth, 404).
    #[error("OTLP export failed: {0}")]
    Export(#[from] OTelSdkError),
    /// The collector refused the data itself (400 or 413).
    #[error("the collector refused a batch of {spans} spans with HTTP {status}")]
    Refused { status: u16, spans: usize },
    /// The send did not finish in time.
    #[error("OTLP export took longer than {0:?}")]
    Timeout(Duration),
}

/// Reads the OpenTelemetry environment: `Ok(None)` when no OTLP endpoint is set (or the SDK or
/// the traces exporter is switched off).
pub fn from_env() -> Result<Option<OtlpConfig>, OtlpError> {
    from_vars(|k| std::env::var(k).ok())
}

/// [`from_env`] over any lookup, so the rules can be tested without touching the process.
pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<OtlpConfig>, OtlpError> {
    let var = |k: &str| {
        var(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if var("OTEL_TRACES_EXPORTER").is_some_and(|v| !v.split(',').any(|e| e.trim() == "otlp")) {
        return Ok(None);
    }
    // The per-signal URL is used as is; the base one gets `v1/traces` appended (OTLP spec).
    let (name, endpoint) = if let Some(v) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v)
    } else if let Some(v) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let sep = if v.ends_with('/') { "" } else { "/" };
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{v}{sep}v1/traces"))
    } else {
        return Ok(None);
    };
    let ok = url::Url::parse(&endpoint)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
    if !ok {
        return Err(OtlpError::Endpoint {
            var: name,
            value: endpoint,
        });
    }
    let protocol =
        var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(p) = protocol.filter(|p| p != "http/protobuf") {
        tracing::warn!(protocol = %p, "only OTLP http/protobuf is supported; exporting with it");
    }
    let mut cfg = OtlpConfig::new(endpoint);
    if let Some(name) = var("OTEL_SERVICE_NAME").or_else(|| resource_service_name(&var)) {
        cfg.service_name = name;
    }
    let timeout =
        var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT"));
    if let Some(ms) = timeout.and_then(|t| t.parse::<u64>().ok()) {
        cfg.timeout = Duration::from_millis(ms);
    }
    Ok(Some(cfg))
}

/// `service.name` from `OTEL_RESOURCE_ATTRIBUTES`, which ranks below `OTEL_SERVICE_NAME`.
fn resource_service_name(var: &impl Fn(&str) -> Option<String>) -> Option<String> {
    var("OTEL_RESOURCE_ATTRIBUTES")?
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == "service.name")
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Builds the exporter and spawns its loop, which runs until `stop` is cancelled, then makes a
/// last bounded attempt to send what has ended and returns.
pub fn start(
    pool: PgPool,
    cfg: OtlpConfig,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, OtlpError> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(cfg.endpoint.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(cfg.timeout)
        // Retries are ours, between rounds: retrying inside a round would hold the batch's row
        // locks and a pooled connection through the backoff.
        .with_retry_policy(RetryPolicy::disabled())
        .build()?;
    let resource = Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    exporter.set_resource(&resource);
    Ok(tokio::spawn(run(pool, exporter, cfg, stop)))
}

/// A running exporter, for a process's lifecycle: started from the environment, shut down after
/// the worker runtime has drained so the last job spans go out with the final flush.
#[derive(Debug)]
pub struct Exporter {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Starts an exporter when the environment configures one (see [`from_env`]).
    pub fn from_env(pool: &PgPool) -> Result<Option<Self>, OtlpError> {
        let Some(cfg) = from_env()? else {
            return Ok(None);
        };
        tracing::info!(endpoint = %cfg.endpoint, service = %cfg.service_name, "exporting spans over OTLP");
        let stop = CancellationToken::new();
        let task = start(pool.clone(), cfg, stop.clone())?;
        Ok(Some(Self { stop, task }))
    }

    /// Stops the loop and waits for its final, bounded flush.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the OTLP exporter task failed");
        }
    }
}

async fn run(
    pool: PgPool,
    exporter: opentelemetry_otlp::SpanExporter,
    cfg: OtlpConfig,
    stop: CancellationToken,
) {
    let backoff = Backoff {
        base: cfg.interval,
        max: cfg.max_backoff,
    };
    let mut failures = 0;
    let mut pause = cfg.interval;
    // Narrowed when the collector refuses a batch, widened again by each success.
    let mut limit = cfg.batch_size;
    let mut stuck = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
        let result = tokio::select! {
            r = round(&pool, &exporter, &cfg, limit) => r,
            // A send under way at shutdown gets the flush's grace, then is rolled back.
            _ = after_grace(&stop) => {
                stuck = true;
                break;
            }
        };
        match result {
            Ok(n) => {
                if failures > 0 {
                    tracing::info!(after = failures, "OTLP span export recovered");
                }
                failures = 0;
                // A full batch means a backlog: keep draining without the pause.
                pause = if n >= limit {
                    Duration::ZERO
                } else {
                    cfg.interval
                };
                limit = (limit * 2).min(cfg.batch_size);
            }
            Err(OtlpError::Refused { status, spans }) => {
                limit = (spans as i64 / 2).max(1);
                pause = cfg.interval;
                tracing::warn!(
                    status,
                    spans,
                    "the OTLP collector refused a batch; retrying in halves"
                );
            }
            Err(e) => {
                failures += 1;
                pause = backoff.delay(failures);
                tracing::warn!(error = %e, failures, retry_in = ?pause, "OTLP span export failed; the spans stay queued");
            }
        }
    }
    // The drain has ended the last job spans; send them now rather than leave them for another
    // process, but never hold up the shutdown for long.
    let flush = async {
        while let Ok(n) = round(&pool, &exporter, &cfg, limit).await {
            if n < limit {
                break;
            }
        }
    };
    if !stuck && tokio::time::timeout(FLUSH_DEADLINE, flush).await.is_err() {
        tracing::warn!("OTLP span export: the final flush ran out of time; the rest stays queued");
    }
    let _ = exporter.shutdown();
}

/// Resolves [`FLUSH_DEADLINE`] after `stop` is cancelled.
async fn after_grace(stop: &CancellationToken) {
    stop.cancelled().await;
    tokio::time::sleep(FLUSH_DEADLINE).await;
}

/// One claim of up to `limit` spans, send and stamp; returns how many spans were claimed.
async fn round(
    pool: &PgPool,
    exporter: &opentelemetry_otlp::SpanExporter,
    cfg: &OtlpConfig,
    limit: i64,
) -> Result<i64, OtlpError> {
    let mut tx = pool.begin().await?;
    let rows = export::claim(&mut tx, limit, cfg.max_age).await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let trace_ids: Vec<String> = rows.iter().map(|r| r.trace_id.clone()).collect();
    let span_ids: Vec<String> = rows.iter().map(|r| r.span_id.clone()).collect();
    let scope = InstrumentationScope::builder("spool")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let batch: Vec<SpanData> = rows
        .iter()
        .filter_map(|r| convert::span_data(r, &scope))
        .collect();
    if !batch.is_empty() {
        // The client has its own timeout; this bounds the whole call, and the locks with it.
        let wait = cfg.timeout + Duration::from_secs(1);
        let sent = tokio::time::timeout(wait, exporter.export(batch))
            .await
            .map_err(|_| OtlpError::Timeout(wait))?;
        match sent.map_err(|e| classify(e, rows.len())) {
            Ok(()) => {}
            // The collector will never take this span: settle it (it stays in Postgres).
            Err(OtlpError::Refused { status, .. }) if rows.len() == 1 => {
                tracing::warn!(status, trace_id = %trace_ids[0], span_id = %span_ids[0],
                    "the OTLP collector refused a span; it is not exported");
            }
            // Dropping `tx` rolls back: the spans stay unexported for the next round.
            Err(e) => return Err(e),
        }
    }
    export::mark_exported(&mut tx, &trace_ids, &span_ids).await?;
    tx.commit().await?;
    Ok(rows.len() as i64)
}

/// Tells the statuses that refuse the data itself (the OTLP spec's non-retryable 400, and 413
/// for a body too large) from everything worth retrying as is: 429 and 5xx, network errors, but
/// also 401, 403 and 404, which a fixed configuration cures and which must not cost any spans.
fn classify(e: OTelSdkError, spans: usize) -> OtlpError {
    // The SDK keeps the status only in its message: "… failed with status code: 413".
    let status = match &e {
        OTelSdkError::InternalFailure(m) => m
            .rsplit_once("status code: ")
            .and_then(|(_, code)| code.trim().parse::<u16>().ok()),
        _ => None,
    };
    match status {
        Some(status @ (400 | 413)) => OtlpError::Refused { status, spans },
        _ => OtlpError::Export(e),
    }
}
