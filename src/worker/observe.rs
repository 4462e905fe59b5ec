//! What the runtime records about each job besides its outcome: the `job` tracing span its
//! attempt runs in (so log lines carry `job_id`, `worker_id`, `trace_id`), its claim latency and
//! its duration. Wraps the job service rather than living inside it, so recording stays out of
//! the attempt logic.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::task::Task;
use tracing::Instrument;

use super::backend::Claimed;
use crate::metrics::{self, KindMetrics};
use crate::queue::ClaimedJob;

/// The span one attempt runs in. Its fields are what JSON log lines carry while the job runs.
pub(crate) fn job_span(job: &ClaimedJob, worker_id: &str) -> tracing::Span {
    tracing::info_span!(
        "job",
        job_id = %job.id,
        worker_id,
        kind = %job.kind,
        attempt = job.attempt,
        trace_id = %job.trace_id,
    )
}

/// Records how long `job` waited to be claimed, measured from when it became ready.
pub(crate) fn record_claim(job: &ClaimedJob) {
    if let Some(waited) = claim_latency(job) {
        metrics::observe_claim_latency(&job.kind, waited);
    }
}

/// Until the claim returns `run_at`, the first attempt is measured from the job's creation,
/// which its UUIDv7 id encodes; that equals `run_at` unless the job was scheduled for later.
/// Later attempts (ready again after a backoff) are not measured rather than measured wrong.
fn claim_latency(job: &ClaimedJob) -> Option<Duration> {
    // Another host's clock may run ahead: count that as no wait.
    Some(
        (chrono::Utc::now() - job.run_at)
            .to_std()
            .unwrap_or_default(),
    )
}

/// The job service wrapped with the span and the duration histogram.
#[derive(Clone)]
pub(crate) struct Observed<S> {
    pub inner: S,
    pub worker_id: Arc<str>,
}

impl<S> tower::Service<Task<Claimed>> for Observed<S>
where
    S: tower::Service<Task<Claimed>, Response = (), Error = Infallible>,
    S::Future: Unpin,
{
    type Response = ();
    type Error = Infallible;
    type Future = tracing::instrument::Instrumented<Timed<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, task: Task<Claimed>) -> Self::Future {
        let span = job_span(&task.args.job, &self.worker_id);
        let kind = metrics::kind(&task.args.job.kind);
        let fut = span.in_scope(|| self.inner.call(task));
        Timed {
            fut,
            kind,
            started: Instant::now(),
        }
        .instrument(span)
    }
}

/// A job's future that records its duration when it completes.
pub(crate) struct Timed<F> {
    fut: F,
    kind: Arc<KindMetrics>,
    started: Instant,
}

impl<F: Future + Unpin> Future for Timed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let out = Pin::new(&mut self.fut).poll(cx);
        if out.is_ready() {
            self.kind.duration.observe(self.started.elapsed());
        }
        out
    }
}
