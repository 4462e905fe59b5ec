//! One attempt of one job, from dispatch to the finish handed to the completer: the handler runs on
//! its own task (a panic fails only that attempt), under its timeout and cancellation token.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::task::Task;
use chrono::Utc;
use futures::future::BoxFuture;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::backend::Claimed;
use super::registry::HandlerResult;
use super::{JobContext, JobError, Registry, WorkerConfig};
use crate::events::EventWriter;
use crate::queue::claim::error_value;
use crate::queue::model::Outcome;
use crate::queue::suspend::{self, ParentEvent, Wait};
use crate::queue::{ClaimedJob, Finish};

/// Why the runtime asked a handler to stop. The first reason wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Cancelled,
    Timeout,
    Shutdown,
    LeaseLost,
}

/// A job this process holds: renewed by the heartbeat until its finish is committed.
pub(crate) struct InFlight {
    pub lease_token: Uuid,
    pub cancel: CancellationToken,
    pub stop: Arc<OnceLock<Stop>>,
}

impl InFlight {
    /// Records why, then fires the handler's token.
    pub fn stop(&self, why: Stop) {
        let _ = self.stop.set(why);
        self.cancel.cancel();
    }
}

/// State shared by the claim loop, the job service, the heartbeat and the completer.
pub(crate) struct Shared {
    pub pool: PgPool,
    /// Claims only: commits without waiting for the WAL flush (see `db::pool::claim_pool`).
    pub claim_pool: PgPool,
    pub registry: Registry,
    pub cfg: WorkerConfig,
    pub worker_id: String,
    pub inflight: Mutex<HashMap<Uuid, InFlight>>,
    pub finishes: mpsc::Sender<Finish>,
    /// The process's batched, fenced event writer.
    pub events: EventWriter,
}

impl Shared {
    /// Applies `f` to every held job (used by heartbeat, cancel and shutdown).
    pub fn with_inflight<R>(&self, f: impl FnOnce(&mut HashMap<Uuid, InFlight>) -> R) -> Option<R> {
        self.inflight.lock().ok().map(|mut m| f(&mut m))
    }
}

/// The tower service apalis calls for each claimed job.
#[derive(Clone)]
pub(crate) struct JobService {
    pub shared: Arc<Shared>,
}

impl tower::Service<Task<Claimed>> for JobService {
    type Response = ();
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<Claimed>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            run_job(shared, task.args).await;
            Ok(())
        })
    }
}

async fn run_job(shared: Arc<Shared>, claimed: Claimed) {
    let Claimed { job, slot } = claimed;
    let cancel = CancellationToken::new();
    let stop = Arc::new(OnceLock::new());
    shared.with_inflight(|m| {
        m.insert(
            job.id,
            InFlight {
                lease_token: job.lease_token,
                cancel: cancel.clone(),
                stop: Arc::clone(&stop),
            },
        )
    });
    // A write rejected by the fence means another worker owns the job now.
    let fenced_out = CancellationToken::new();
    let events = shared
        .events
        .sink(job.id, job.project_id, job.lease_token, fenced_out.clone());
    let ctx = JobContext {
        id: job.id,
        project_id: job.project_id,
        kind: job.kind.clone(),
        args: job.args.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        lease_token: job.lease_token,
        trace_id: job.trace_id.clone(),
        span_id: job.span_id.clone(),
        resumed_wait: job.resumed_wait,
        cancel: cancel.clone(),
        events: events.clone(),
        parent_event: Arc::default(),
    };
    let parent_event = Arc::clone(&ctx.parent_event);
    let started = std::time::Instant::now();
    let result = execute(&shared, &job, ctx, &cancel, &stop, &fenced_out).await;
    drop(slot);
    let events_ok = events.close().await;
    let stop_reason = if events_ok {
        stop.get().copied()
    } else {
        Some(Stop::LeaseLost)
    };
    tracing::debug!(job_id = %job.id, kind = %job.kind, elapsed_ms = started.elapsed().as_millis() as u64, "attempt ended");
    let result = match (stop_reason, result) {
        (None, Err(JobError::Suspend(wait))) => {
            if suspend(&shared, &job, &wait).await {
                shared.with_inflight(|m| m.remove(&job.id));
                return;
            }
            Err(JobError::Cancelled)
        }
        (_, r) => r,
    };
    match decide(&shared.cfg, &job, result, stop_reason) {
        Some(outcome) => {
            let parent_event =
                parent_event
                    .lock()
                    .ok()
                    .and_then(|mut e| e.take())
                    .map(|(kind, data)| ParentEvent {
                        child: job.id,
                        kind,
                        data,
                    });
            let outcome = offload_result(&shared, &job, outcome).await;
            let finish = Finish {
                id: job.id,
                lease_token: job.lease_token,
                outcome,
                parent_event,
            };
            if shared.finishes.send(finish).await.is_err() {
                // The completer is gone (process exiting); the lease will lapse and rescue runs.
                tracing::error!(job_id = %job.id, "completer closed; leaving job to rescue");
            }
        }
        None => {
            shared.with_inflight(|m| m.remove(&job.id));
        }
    }
}

/// Writes a suspend; a database error is retried for a while, then the lease is left to lapse
/// (rescue queues the job again). False when a cancel was requested instead: the job is to
/// finish as cancelled.
async fn suspend(shared: &Shared, job: &ClaimedJob, wait: &Wait) -> bool {
    let mut delay = Duration::from_millis(20);
    for _ in 0..8 {
        match suspend::suspend(&shared.pool, job.id, job.lease_token, wait).await {
            Ok(suspend::Suspended::CancelRequested) => return false,
            Ok(s) => {
                tracing::debug!(job_id = %job.id, outcome = ?s, "suspended");
                return true;
            }
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "suspend failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    tracing::error!(job_id = %job.id, "could not suspend; leaving the job to rescue");
    true
}

/// A large result is written as a blob before the fenced finish that refers to it.
async fn offload_result(shared: &Shared, job: &ClaimedJob, outcome: Outcome) -> Outcome {
    match (outcome, &shared.cfg.blobs) {
        (Outcome::Succeeded(v), Some(blobs)) => Outcome::Succeeded(
            blobs
                .offload_or_keep(&shared.pool, job.project_id, job.id, v)
                .await,
        ),
        (other, _) => other,
    }
}

async fn execute(
    shared: &Shared,
    job: &ClaimedJob,
    ctx: JobContext,
    cancel: &CancellationToken,
    stop: &OnceLock<Stop>,
    fenced_out: &CancellationToken,
) -> HandlerResult {
    let Some(handler) = shared.registry.handler(&job.kind) else {
        return Err(JobError::fail(format!(
            "no handler for kind `{}` on worker {}",
            job.kind, shared.worker_id
        )));
    };
    let mut handle = tokio::spawn(handler.run(ctx));
    let timeout = job
        .timeout_s
        .map(|s| Duration::from_secs(s as u64))
        .or(shared.cfg.default_timeout)
        .unwrap_or(Duration::MAX);
    let deadline = tokio::time::sleep(timeout.min(Duration::from_secs(86_400 * 365)));
    tokio::pin!(deadline);
    let joined = tokio::select! {
        r = &mut handle => r,
        _ = &mut deadline => {
            let _ = stop.set(Stop::Timeout);
            cancel.cancel();
            return finish_within_grace(handle, shared.cfg.cancel_grace).await;
        }
        _ = cancel.cancelled() => return finish_within_grace(handle, shared.cfg.cancel_grace).await,
        _ = fenced_out.cancelled() => {
            let _ = stop.set(Stop::LeaseLost);
            cancel.cancel();
            return finish_within_grace(handle, shared.cfg.cancel_grace).await;
        }
    };
    join_result(joined)
}

/// Gives a stopped handler `grace` to return, then aborts it.
async fn finish_within_grace(
    mut handle: tokio::task::JoinHandle<HandlerResult>,
    grace: Duration,
) -> HandlerResult {
    match tokio::time::timeout(grace, &mut handle).await {
        Ok(joined) => join_result(joined),
        Err(_) => {
            handle.abort();
            Err(JobError::Cancelled)
        }
    }
}

fn join_result(joined: Result<HandlerResult, tokio::task::JoinError>) -> HandlerResult {
    match joined {
        Ok(r) => r,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".into());
            Err(JobError::retry(format!("handler panicked: {msg}")))
        }
        Err(_) => Err(JobError::Cancelled),
    }
}

/// Maps a handler's result and the stop reason to what the completer writes; `None` when the
/// lease is gone and nothing may be written.
fn decide(
    cfg: &WorkerConfig,
    job: &ClaimedJob,
    result: HandlerResult,
    stop: Option<Stop>,
) -> Option<Outcome> {
    let retry_or_fail = |message: String, retry_after: Option<Duration>| {
        let error = error_value(&message, job.attempt);
        if job.attempt < job.max_attempts {
            let delay = cfg.backoff.delay_honouring(job.attempt, retry_after);
            let run_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            Outcome::Retry { error, run_at }
        } else {
            Outcome::Failed(error)
        }
    };
    Some(match (stop, result) {
        (Some(Stop::LeaseLost), _) => return None,
        (Some(Stop::Cancelled), _) | (None, Err(JobError::Cancelled)) => {
            Outcome::Cancelled(json!({ "message": "cancelled", "attempt": job.attempt }))
        }
        (Some(Stop::Shutdown), Err(_)) => Outcome::Released,
        (Some(Stop::Timeout), _) => {
            let secs = job
                .timeout_s
                .map(|s| s as u64)
                .or(cfg.default_timeout.map(|d| d.as_secs()));
            retry_or_fail(format!("timed out after {}s", secs.unwrap_or(0)), None)
        }
        (_, Ok(v)) => Outcome::Succeeded(v),
        (
            _,
            Err(JobError::Retry {
                message,
                retry_after,
            }),
        ) => retry_or_fail(message, retry_after),
        (_, Err(JobError::Fail { message })) => Outcome::Failed(error_value(&message, job.attempt)),
        // Only reached with a stop reason (a plain suspend is written before this): hand back.
        (_, Err(JobError::Suspend(_))) => Outcome::Released,
    })
}
