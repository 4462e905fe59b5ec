//! `spool bench`: drain throughput, enqueue-to-start latency, streamed chat turns and web page
//! times, printed as one JSON line; `--seed N` fills project `default` with N jobs first.

mod pages;
mod provider;
mod reader;
mod seed;
mod turns;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use spool::app;
use spool::config::{FileConfig, Overrides, Settings};
use spool::queue::control::has_unfinished;
use spool::queue::enqueue::enqueue_many;
use spool::queue::{NewJob, enqueue};
use spool::worker::{JobContext, JobError, Registry, WorkerRuntime};

/// What to measure.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// Pre-enqueue N noop jobs, then time the workers draining them.
    Drain,
    /// Enqueue one job at a time at a fixed rate; measure enqueue to handler start.
    Latency,
    /// Run N chat turns at once against an in-process provider streaming T tokens each; measure
    /// turns/s, database writes per turn and provider-chunk-to-SSE-client latency.
    Turns,
    /// Serve the web pages in process and time each one (p50/p99 over --requests requests) as
    /// a signed-in browser of project `default`; combine with --seed to fill it first.
    Pages,
}

/// Options of `spool bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure [default: drain; with --seed alone, only seed].
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Insert this many jobs (spread over states, kinds and queues, with realistic timestamps)
    /// into project `default` first, then VACUUM ANALYZE. Alone or with --mode pages only: the
    /// other modes' workers would run the seeded jobs.
    #[arg(long)]
    seed: Option<u64>,
    /// Requests per page for `pages`.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Jobs for `drain`.
    #[arg(long, default_value_t = 50_000)]
    jobs: usize,
    /// Jobs per second for `latency`.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Duration of `latency`.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent chat turns for `turns`.
    #[arg(long, default_value_t = 200)]
    turns: usize,
    /// Tokens each turn streams, for `turns`.
    #[arg(long, default_value_t = 500)]
    tokens: usize,
    /// Milliseconds between two streamed tokens, for `turns`.
    #[arg(long, default_value_t = 5)]
    chunk_ms: u64,
    /// For `turns`: measure each session's first turn (with its title job) instead of a second
    /// turn after a one-token warm-up turn.
    #[arg(long)]
    first_turn: bool,
    /// Worker concurrency [default: 256; for `turns` at least twice --turns, so every turn and
    /// its title job run at once].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Milliseconds a running job's events gather before a write (the worker's
    /// `--event-window-ms`).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(15..=1000))]
    event_window_ms: u64,
    /// Database connections of the bench process (API, worker and measurement share them).
    #[arg(long, default_value_t = 20)]
    db_pool: u32,
    /// Postgres URL; without it an embedded cluster is started in a temporary directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// Runs the benchmark and prints its JSON line.
pub async fn run(b: BenchArgs) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("spool-bench-{}", std::process::id()));
    let settings = Settings::resolve(
        Overrides {
            database_url: b.database_url.clone(),
            data_dir: Some(tmp.clone()),
            ..Overrides::default()
        },
        FileConfig::default(),
    )?;
    let mode = match (b.mode, b.seed) {
        (None, Some(_)) => None,
        (None, None) => Some(Mode::Drain),
        (Some(m @ (Mode::Drain | Mode::Latency | Mode::Turns)), Some(_)) => anyhow::bail!(
            "--seed fills project `default` with queued jobs that the workers of --mode {} would \
             run; use --seed alone or with --mode pages",
            format!("{m:?}").to_lowercase()
        ),
        (Some(m), _) => Some(m),
    };
    let (url, pg) = crate::cli::database(&settings).await?;
    let svc = app::connect(&url, b.db_pool.max(2)).await?;
    let result = measure(&svc, &settings, mode, &b).await;
    if let Ok(line) = &result {
        println!("{line}");
    }
    svc.hub.stop();
    // Lets the LISTEN task see the stop before the pool closes its connection under it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    svc.pool.close().await;
    drop(pg);
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|_| ())
}

async fn measure(
    svc: &app::Services,
    settings: &Settings,
    mode: Option<Mode>,
    b: &BenchArgs,
) -> anyhow::Result<Value> {
    let fresh_project = || async {
        spool::projects::ensure(&svc.pool, &format!("bench-{}", uuid::Uuid::new_v4())).await
    };
    Ok(match mode {
        None => seed::run(svc, b.seed.unwrap_or(0)).await?,
        Some(Mode::Pages) => pages::run(svc, settings, b).await?,
        Some(Mode::Drain) => drain(svc, settings, fresh_project().await?.id, b).await?,
        Some(Mode::Latency) => latency(svc, fresh_project().await?.id, b).await?,
        Some(Mode::Turns) => turns::run(svc, settings, fresh_project().await?.id, b).await?,
    })
}

impl BenchArgs {
    /// The worker concurrency: as given, else 256 (for `turns`, at least twice the turns).
    fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(match self.mode {
            Some(Mode::Turns) => self.turns.saturating_mul(2).max(256),
            _ => 256,
        })
    }
}

fn worker_cfg(b: &BenchArgs) -> spool::worker::WorkerConfig {
    spool::worker::WorkerConfig {
        concurrency: b.concurrency(),
        event_window: Duration::from_millis(b.event_window_ms),
        ..Default::default()
    }
}

async fn drain(
    svc: &app::Services,
    s: &Settings,
    project: uuid::Uuid,
    b: &BenchArgs,
) -> anyhow::Result<Value> {
    let mut conn = svc.pool.acquire().await?;
    for chunk in (0..b.jobs).collect::<Vec<_>>().chunks(10_000) {
        let args: Vec<Value> = chunk.iter().map(|i| json!({ "i": i })).collect();
        enqueue_many(&mut conn, project, "noop", "default", &args).await?;
    }
    drop(conn);
    sqlx_analyze(svc).await;
    let registry = app::builtin_registry(&svc.pool, s)?;
    let start = Instant::now();
    let rt =
        WorkerRuntime::start(svc.pool.clone(), svc.hub.clone(), registry, worker_cfg(b)).await?;
    while has_unfinished(&svc.pool, project).await? {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    rt.shutdown(crate::cli::bench_grace()).await;
    Ok(json!({
        "mode": "drain", "jobs": b.jobs, "concurrency": b.concurrency(),
        "seconds": round(elapsed), "jobs_per_s": round(b.jobs as f64 / elapsed),
    }))
}

async fn sqlx_analyze(svc: &app::Services) {
    // Fresh statistics, as autovacuum would have after a real backlog built up.
    if let Err(e) = spool::db::pool::analyze(&svc.pool).await {
        tracing::warn!(error = %e, "ANALYZE failed");
    }
}

async fn latency(svc: &app::Services, project: uuid::Uuid, b: &BenchArgs) -> anyhow::Result<Value> {
    let base = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::<f64>::new()));
    let seen = Arc::clone(&samples);
    let registry = Registry::new().register("bench.latency", move |ctx: JobContext| {
        let started = base.elapsed().as_nanos() as f64;
        let seen = Arc::clone(&seen);
        async move {
            let sent = ctx.args.get("t").and_then(Value::as_f64).unwrap_or(started);
            if let Ok(mut v) = seen.lock() {
                v.push((started - sent) / 1e6);
            }
            Ok::<_, JobError>(Value::Null)
        }
    });
    let rt =
        WorkerRuntime::start(svc.pool.clone(), svc.hub.clone(), registry, worker_cfg(b)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = (u64::from(b.rate) * b.seconds) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(b.rate.max(1))));
    let mut producers = Vec::with_capacity(total);
    for _ in 0..total {
        tick.tick().await;
        let pool = svc.pool.clone();
        producers.push(tokio::spawn(async move {
            let t = base.elapsed().as_nanos() as f64;
            let mut tx = pool.begin().await?;
            enqueue(
                &mut tx,
                project,
                &NewJob::new("bench.latency", json!({ "t": t })),
            )
            .await?;
            tx.commit().await?;
            anyhow::Ok((base.elapsed().as_nanos() as f64 - t) / 1e6)
        }));
    }
    let mut enqueue_ms = Vec::with_capacity(total);
    for p in producers {
        enqueue_ms.push(p.await.context("producer task")??);
    }
    while has_unfinished(&svc.pool, project).await? {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rt.shutdown(crate::cli::bench_grace()).await;
    let v = sorted(samples.lock().map(|v| v.clone()).unwrap_or_default());
    let enq = sorted(enqueue_ms);
    // `enqueue_*` is the caller's own BEGIN/INSERT/COMMIT, which the enqueue-to-start figures include.
    Ok(json!({
        "mode": "latency", "jobs": v.len(), "rate": b.rate, "seconds": b.seconds,
        "p50_ms": pct(&v, 0.50), "p95_ms": pct(&v, 0.95), "p99_ms": pct(&v, 0.99),
        "max_ms": pct(&v, 1.0),
        "enqueue_p50_ms": pct(&enq, 0.50), "enqueue_p99_ms": pct(&enq, 0.99),
    }))
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The `p` quantile of sorted samples, rounded to microseconds.
fn pct(v: &[f64], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    round(v.get(i).copied().unwrap_or(0.0))
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
