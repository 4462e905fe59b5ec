//! Starting and stopping a worker runtime: the claim loop, the apalis worker that dispatches, the
//! heartbeat that renews leases and notices cancels, the completer, and background maintenance
//! (rescue of lapsed leases) that every worker process runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis_core::worker::builder::WorkerBuilder;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::backend::{Claimed, SpoolBackend};
use super::service::{JobService, Shared, Stop};
use super::{Registry, completer, observe};
use crate::events::Hub;
use crate::metrics;
use crate::queue::backoff::Backoff;
use crate::queue::claim::Renewal;
use crate::queue::{claim, rescue, suspend, workers};

/// Passes a renewal makes over rows another transaction held, and the pause between them.
const RENEW_ROUNDS: usize = 10;
const RENEW_RETRY: Duration = Duration::from_millis(20);

/// How a worker runtime claims and runs jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub queues: Vec<String>,
    /// Jobs run at once by this runtime.
    pub concurrency: usize,
    /// How long a claim holds a job without a heartbeat.
    pub lease: Duration,
    pub heartbeat: Duration,
    /// Backstop poll when no NOTIFY arrives (also how late a delayed job may start).
    pub poll_interval: Duration,
    pub rescue_interval: Duration,
    /// How long a stopped handler may take to return before it is aborted.
    pub cancel_grace: Duration,
    /// Timeout for jobs that set none.
    pub default_timeout: Option<Duration>,
    pub backoff: Backoff,
    /// Most jobs one claim statement takes.
    pub claim_batch: usize,
    /// Stable id for this runtime; generated when `None`.
    pub worker_id: Option<String>,
    /// Where results and event payloads over its offload limit go; none keeps them inline.
    pub blobs: Option<crate::store::Blobs>,
    /// Each running job's events are written at most once per this long.
    pub event_window: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            queues: vec!["default".into()],
            concurrency: 16,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            rescue_interval: Duration::from_secs(5),
            cancel_grace: Duration::from_secs(5),
            default_timeout: None,
            backoff: Backoff::default(),
            claim_batch: 500,
            worker_id: None,
            blobs: None,
            event_window: crate::events::writer::COALESCE,
        }
    }
}

/// Entry point for running jobs in this process.
pub struct WorkerRuntime;

/// A started runtime; call [`shutdown`](Self::shutdown) to drain it.
pub struct RuntimeHandle {
    shared: Arc<Shared>,
    stop_claiming: CancellationToken,
    closing: CancellationToken,
    background: CancellationToken,
    dispatch: JoinHandle<()>,
    completer: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

impl WorkerRuntime {
    /// Registers the worker and starts claiming from `cfg.queues`.
    pub async fn start(
        pool: PgPool,
        hub: Hub,
        registry: Registry,
        cfg: WorkerConfig,
    ) -> Result<RuntimeHandle, sqlx::Error> {
        let host = host_name();
        let pid = std::process::id();
        let worker_id = cfg.worker_id.clone().unwrap_or_else(|| {
            let suffix = uuid::Uuid::new_v4().simple().to_string();
            format!("{host}-{pid}-{}", &suffix[..8])
        });
        workers::register(
            &pool,
            &workers::WorkerInfo {
                id: worker_id.clone(),
                host,
                pid: pid as i32,
                version: env!("CARGO_PKG_VERSION").into(),
                queues: cfg.queues.clone(),
                concurrency: cfg.concurrency as i32,
            },
        )
        .await?;
        let concurrency = cfg.concurrency.max(1);
        let (finish_tx, finish_rx) = mpsc::channel(concurrency * 2 + 1024);
        // The event writer has connections of its own, so a burst of handlers' queries (200 turns
        // starting or ending at once) cannot hold every stream's next write behind them.
        let pool_for_events = crate::db::pool::side_pool(&pool, crate::events::writer::WRITERS);
        let (blobs, window) = (cfg.blobs.clone(), cfg.event_window);
        let shared = Arc::new(Shared {
            claim_pool: crate::db::pool::claim_pool(&pool, 2),
            pool,
            registry,
            cfg,
            worker_id,
            inflight: Mutex::new(HashMap::new()),
            finishes: finish_tx,
            events: crate::events::EventWriter::start(
                pool_for_events,
                Some(hub.pump()),
                blobs,
                window,
            ),
        });
        let closing = CancellationToken::new();
        let completer = tokio::spawn(completer::run(
            Arc::clone(&shared),
            finish_rx,
            closing.clone(),
        ));

        let (claim_tx, claim_rx) = mpsc::channel(concurrency);
        let stop_claiming = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(concurrency));
        let background = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(claim_loop(
                Arc::clone(&shared),
                slots,
                claim_tx,
                hub.job_wakeups(),
                stop_claiming.clone(),
            )),
            tokio::spawn(heartbeat_loop(Arc::clone(&shared), background.clone())),
            tokio::spawn(cancel_loop(Arc::clone(&shared), hub, background.clone())),
            tokio::spawn(maintenance_loop(Arc::clone(&shared), background.clone())),
        ];

        let worker = WorkerBuilder::new(shared.worker_id.as_str())
            .backend(SpoolBackend::new(claim_rx, shared.finishes.clone()))
            .build(observe::Observed {
                inner: JobService {
                    shared: Arc::clone(&shared),
                },
                worker_id: Arc::from(shared.worker_id.as_str()),
            });
        let stopped = stop_claiming.clone();
        let dispatch = tokio::spawn(async move {
            let signal = async move {
                stopped.cancelled().await;
                Ok::<(), std::io::Error>(())
            };
            if let Err(e) = worker.run_until(signal).await {
                tracing::error!(error = %e, "worker dispatch loop ended with an error");
            }
        });
        tracing::info!(worker_id = %shared.worker_id, concurrency, "worker started");
        Ok(RuntimeHandle {
            shared,
            stop_claiming,
            closing,
            background,
            dispatch,
            completer,
            tasks,
        })
    }
}

impl RuntimeHandle {
    /// This runtime's worker id.
    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    /// Jobs this runtime holds right now.
    pub fn running(&self) -> usize {
        self.shared.with_inflight(|m| m.len()).unwrap_or(0)
    }

    /// Stops claiming, lets running jobs finish for up to `grace`, then stops the rest and hands
    /// them back to `queued` at once (their attempt not counted), and writes every finish before
    /// returning. No job is left `running` by a clean shutdown.
    pub async fn shutdown(mut self, grace: Duration) {
        let pool = self.shared.pool.clone();
        let id = self.shared.worker_id.clone();
        let _ = workers::set_state(&pool, &id, "draining").await;
        self.stop_claiming.cancel();
        if tokio::time::timeout(grace, &mut self.dispatch)
            .await
            .is_err()
        {
            let n = self
                .shared
                .with_inflight(|m| {
                    m.values().for_each(|f| f.stop(Stop::Shutdown));
                    m.len()
                })
                .unwrap_or(0);
            tracing::info!(jobs = n, "grace period over; handing running jobs back");
            let _ = (&mut self.dispatch).await;
        }
        self.closing.cancel();
        let _ = (&mut self.completer).await;
        self.shared.events.stop();
        self.background.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let _ = workers::set_state(&pool, &id, "stopped").await;
        tracing::info!(worker_id = %id, "worker stopped");
    }
}

async fn claim_loop(
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Claimed>,
    mut wake: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let cfg = &shared.cfg;
    let batch = cfg.claim_batch.max(1);
    loop {
        let mut permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let extra = slots.available_permits().min(batch - 1);
        if extra > 0
            && let Ok(more) = Arc::clone(&slots).try_acquire_many_owned(extra as u32)
        {
            permit.merge(more);
        }
        wake.borrow_and_update();
        let mut claimed = 0;
        for queue in &cfg.queues {
            let want = permit.num_permits();
            if want == 0 {
                break;
            }
            match claim::claim(
                &shared.claim_pool,
                queue,
                &shared.worker_id,
                want as i64,
                cfg.lease,
            )
            .await
            {
                Ok(jobs) => {
                    metrics::count_attempts(jobs.len() as u64);
                    for job in jobs {
                        observe::record_claim(&job);
                        let Some(slot) = permit.split(1) else { break };
                        claimed += 1;
                        if tx.send(Claimed { job, slot }).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue, "claim failed");
                    tokio::time::sleep(cfg.poll_interval).await;
                }
            }
        }
        drop(permit);
        if claimed == 0 {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wake.changed() => {}
                _ = tokio::time::sleep(cfg.poll_interval) => {}
            }
        }
    }
}

/// Renews the leases of every held job, and stops those whose cancel was requested or whose lease
/// is gone. Runs now and then every `cfg.heartbeat`. Jobs whose rows were busy are retried a few
/// times right away; any still busy after that wait for the next heartbeat, with two thirds of
/// their lease left.
async fn renew_all(shared: &Shared) {
    let mut held: Vec<(uuid::Uuid, uuid::Uuid)> = shared
        .with_inflight(|m| m.iter().map(|(id, f)| (*id, f.lease_token)).collect())
        .unwrap_or_default();
    let running = held.len() as i32;
    for round in 0..RENEW_ROUNDS {
        if held.is_empty() {
            break;
        }
        if round > 0 {
            tokio::time::sleep(RENEW_RETRY).await;
        }
        let found: HashMap<uuid::Uuid, Renewal> =
            match claim::renew(&shared.pool, &held, shared.cfg.lease).await {
                Ok(found) => found.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    break;
                }
            };
        shared.with_inflight(|m| {
            for (id, token) in &held {
                // The job may have finished and been claimed again meanwhile, under a new lease.
                let Some(f) = m.get(id).filter(|f| f.lease_token == *token) else {
                    continue;
                };
                match found.get(id) {
                    Some(Renewal::Lost) => f.stop(Stop::LeaseLost),
                    Some(Renewal::Renewed {
                        cancel_requested: true,
                    }) => f.stop(Stop::Cancelled),
                    _ => {}
                }
            }
        });
        held.retain(|(id, _)| found.get(id) == Some(&Renewal::Busy));
    }
    if !held.is_empty() {
        tracing::debug!(
            jobs = held.len(),
            "leases left for the next heartbeat: rows busy"
        );
    }
    if let Err(e) = workers::heartbeat(&shared.pool, &shared.worker_id, running).await {
        tracing::warn!(error = %e, "worker heartbeat failed");
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => renew_all(&shared).await,
        }
    }
}

async fn cancel_loop(shared: Arc<Shared>, hub: Hub, stop: CancellationToken) {
    let mut rx = hub.cancel_requests();
    loop {
        let ids = tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.recv() => r,
        };
        match ids {
            Ok(ids) => {
                shared.with_inflight(|m| {
                    for id in ids {
                        if let Some(f) = m.get(&id) {
                            f.stop(Stop::Cancelled);
                        }
                    }
                });
            }
            // Missed some requests: the lease renewal reports pending cancels, so run it now.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => renew_all(&shared).await,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn maintenance_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.cfg.rescue_interval;
    loop {
        // Jitter keeps a fleet's rescuers from all firing in the same instant.
        let jitter = every.mul_f64(0.8 + rand::random::<f64>() * 0.4);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(jitter) => {}
        }
        match rescue::rescue_expired(&shared.pool, shared.cfg.backoff, 1000).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::count_rescues(n);
                tracing::info!(jobs = n, "rescued jobs with lapsed leases");
            }
            Err(e) => tracing::warn!(error = %e, "rescue failed"),
        }
        match suspend::resume_expired(&shared.pool, 1000).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(jobs = n, "requeued jobs whose wait ran out"),
            Err(e) => tracing::warn!(error = %e, "resuming expired waits failed"),
        }
        let stale = (shared.cfg.lease * 3).max(Duration::from_secs(30));
        if let Err(e) = rescue::mark_lost_workers(&shared.pool, stale).await {
            tracing::warn!(error = %e, "marking lost workers failed");
        }
    }
}
