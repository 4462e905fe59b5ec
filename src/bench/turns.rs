//! `spool bench --mode turns`: N chat turns at once against an in-process provider that streams
//! T timestamped tokens each, read back by N SSE clients through Spool's own API server.
//!
//! Reported: turns per second (first send to last turn seen `succeeded`), database writes per
//! turn, and the delay each token takes from the provider to an SSE client.
//!
//! **Database writes** are counted as write transactions: Postgres assigns a transaction id only
//! to a transaction that writes (a row, a row lock, a NOTIFY), so the growth of `txid_current()`
//! between two probes is the number of write transactions in between, exactly and at once, with
//! no statistics delay (the `pg_stat_*` counters are flushed lazily: an idle backend may hold its
//! counts up to 10 s on PostgreSQL 15+) and without counting the many read-only queries SSE
//! readers make. It is cluster-wide, so the idle rate is measured over one second just before
//! the turns start and subtracted. WAL bytes are taken from the same probes.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use spool::agent::sessions::{self, NewTurn};
use spool::agent::store;
use spool::app;
use spool::config::Settings;
use spool::events::log;
use spool::llm::config::Models;
use spool::projects::tokens::{self, Scope};
use spool::queue::control::has_unfinished;
use spool::worker::WorkerRuntime;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::provider::{Provider, WARM_UP};
use super::reader::{self, Outcome};
use super::{BenchArgs, pct, round, sorted};

/// What every measured turn asks.
const PROMPT: &str = "Count slowly.";
/// Threads of the runtime the provider and the SSE clients run on.
const HARNESS_THREADS: usize = 1;
/// How long the idle write rate is measured before the turns start.
const IDLE_WINDOW: Duration = Duration::from_secs(1);

const WRITES_METHOD: &str = "write transactions: growth of txid_current() (Postgres gives an xid \
    only to transactions that write) from just before the first send until every job of the run \
    finished, minus the idle rate measured over 1 s just before, per turn; includes sending the \
    turn, its claim, lease renewals, event appends, transcript saves and its completion";

/// Runs the turns and returns the JSON line.
pub async fn run(
    svc: &app::Services,
    settings: &Settings,
    project: Uuid,
    b: &BenchArgs,
) -> anyhow::Result<Value> {
    let base = Instant::now();
    // The provider and the SSE clients stand in for other machines: they run on their own
    // threads, so their 40,000 chunks a second queue behind each other and not behind Spool's
    // tasks. The two still share the machine's cores with Spool and Postgres.
    let harness = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(HARNESS_THREADS)
        .thread_name("bench-harness")
        .enable_all()
        .build()
        .context("starting the bench harness runtime")?;
    let result = run_with(svc, settings, project, b, base, harness.handle()).await;
    harness.shutdown_background();
    result
}

async fn run_with(
    svc: &app::Services,
    settings: &Settings,
    project: Uuid,
    b: &BenchArgs,
    base: Instant,
    harness: &tokio::runtime::Handle,
) -> anyhow::Result<Value> {
    let (tokens, gap) = (b.tokens, Duration::from_millis(b.chunk_ms));
    let provider = harness
        .spawn(async move { Provider::start(base, tokens, gap).await })
        .await
        .context("the bench provider task")??;
    let mut settings = settings.clone();
    let models: toml::Table = format!(
        "default_model = \"fake\"\n[[models]]\nname = \"fake\"\nprovider = \"openai\"\n\
         base_url = \"{}\"\ncontext_window = 128000\n",
        provider.base_url
    )
    .parse()
    .context("the bench model table")?;
    settings.models = Models::from_toml(&models).map_err(anyhow::Error::msg)?;
    let registry = app::builtin_registry(&svc.pool, &settings)?;
    let rt = WorkerRuntime::start(
        svc.pool.clone(),
        svc.hub.clone(),
        registry.clone(),
        super::worker_cfg(b),
    )
    .await?;
    let stop = CancellationToken::new();
    let state = app::api_state(svc, registry, &settings);
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let stopped = stop.clone();
    let mut server = tokio::spawn(app::serve(
        state,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        move |addr| {
            let _ = addr_tx.send(addr);
        },
        async move { stopped.cancelled().await },
    ));
    let result = match addr_rx.await {
        Ok(addr) => {
            let api = format!("http://{addr}/api/v1");
            measure(svc, project, b, base, &api, harness).await
        }
        Err(_) => Err(anyhow::anyhow!("the API server did not start")),
    };
    // Each server-side stream ends once it notices its client left (within its 2 s backstop).
    let quiet = Instant::now() + Duration::from_secs(4);
    while svc.hub.subscriber_topics() > 0 && Instant::now() < quiet {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rt.shutdown(crate::cli::bench_grace()).await;
    stop.cancel();
    // Streams of finished readers may hold the graceful shutdown until their next keep-alive.
    if tokio::time::timeout(Duration::from_secs(2), &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
    let mut line = result?;
    line["peak_provider_streams"] = provider.peak_streams().into();
    Ok(line)
}

async fn measure(
    svc: &app::Services,
    project: Uuid,
    b: &BenchArgs,
    base: Instant,
    api: &str,
    harness: &tokio::runtime::Handle,
) -> anyhow::Result<Value> {
    let pool = &svc.pool;
    let n = b.turns;
    let token = tokens::create(pool, project, Scope::Read).await?.secret;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(
            store::create_session(pool, project, None, "fake", None, None)
                .await?
                .id,
        );
    }
    if !b.first_turn {
        // A short first turn per session, so the measured turn is a steady-state one: the
        // session's title job runs (and finishes) here, outside the measurement.
        send_all(pool, project, &ids, WARM_UP, &[]).await?;
        if !wait_idle(pool, project, Duration::from_secs(120)).await? {
            anyhow::bail!("the warm-up turns did not finish within 120 s");
        }
    }
    // Readers resume after what their stream already holds and are connected before any send.
    let mut cursors = Vec::with_capacity(n);
    for id in &ids {
        let events = log::read_stream_after(pool, *id, 0, 1000).await?;
        cursors.push(events.last().map_or(0, |e| e.cursor));
    }
    let client = reqwest::Client::builder()
        .build()
        .context("building the HTTP client")?;
    // Opened on the harness runtime, so each connection's I/O is driven there too.
    let opening: Vec<_> = ids
        .iter()
        .zip(&cursors)
        .map(|(id, c)| {
            let (client, api, token, id, c) =
                (client.clone(), api.to_owned(), token.clone(), *id, *c);
            harness.spawn(async move { reader::open(&client, &api, &token, id, c).await })
        })
        .collect();
    let mut opened = Vec::with_capacity(n);
    for o in opening {
        opened.push(o.await.context("opening a reader")??);
    }
    let jobs: Vec<Arc<OnceLock<Uuid>>> = (0..n).map(|_| Arc::default()).collect();
    let readers: Vec<JoinHandle<Outcome>> = opened
        .into_iter()
        .zip(&jobs)
        .map(|(resp, job)| harness.spawn(reader::read(resp, base, Arc::clone(job))))
        .collect();

    let idle_start = Probe::take(pool, base).await?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let start = Probe::take(pool, base).await?;
    let sent_at = base.elapsed().as_secs_f64();
    send_all(pool, project, &ids, PROMPT, &jobs).await?;
    let limit =
        Duration::from_secs(120) + Duration::from_millis(b.chunk_ms) * (4 * b.tokens) as u32;
    let deadline = tokio::time::Instant::now() + limit;
    let mut outcomes = Vec::with_capacity(n);
    for mut r in readers {
        outcomes.push(match tokio::time::timeout_at(deadline, &mut r).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => Outcome::failed(format!("reader task: {e}")),
            Err(_) => {
                r.abort();
                Outcome::failed(format!("no terminal state within {limit:?}"))
            }
        });
    }
    let idle = wait_idle(pool, project, Duration::from_secs(60)).await?;
    let end = Probe::take(pool, base).await?;

    let done: Vec<&Outcome> = outcomes.iter().filter(|o| o.succeeded()).collect();
    let last = done
        .iter()
        .filter_map(|o| o.end.as_ref().map(|(t, _)| *t))
        .fold(sent_at, f64::max);
    let seconds = last - sent_at;
    let lat = sorted(
        outcomes
            .iter()
            .flat_map(|o| o.latencies_ms.iter().copied())
            .collect(),
    );
    let idle_rate = idle_start.rates_until(&start);
    let (writes, wal) = start.growth_until(&end);
    let busy = end.at - start.at;
    let per_turn = |total: f64, rate: f64| (total - rate * busy).max(0.0) / n.max(1) as f64;
    let mut errors: Vec<String> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    errors.sort();
    errors.dedup();
    errors.truncate(3);
    Ok(json!({
        "mode": "turns", "turns": n, "tokens": b.tokens, "chunk_ms": b.chunk_ms,
        "first_turn": b.first_turn, "concurrency": b.concurrency(), "db_pool": b.db_pool,
        "event_window_ms": b.event_window_ms,
        "completed": done.len(), "seconds": round(seconds),
        "turns_per_s": round(if seconds > 0.0 { done.len() as f64 / seconds } else { 0.0 }),
        "db_writes_per_turn": round(per_turn(writes, idle_rate.0)),
        "db_writes_method": if b.first_turn {
            format!("{WRITES_METHOD}, and the session's title job")
        } else {
            WRITES_METHOD.to_owned()
        },
        "db_idle_writes_per_s": round(idle_rate.0),
        "wal_kib_per_turn": round(per_turn(wal, idle_rate.1) / 1024.0),
        "chunk_to_sse_p50_ms": pct(&lat, 0.50), "chunk_to_sse_p99_ms": pct(&lat, 0.99),
        "max_ms": pct(&lat, 1.0),
        "tokens_received": lat.len(), "tokens_expected": n * b.tokens,
        "all_jobs_finished": idle, "errors": errors,
    }))
}

/// Sends `text` as a turn to every session at once; each turn's job id goes to `jobs[i]` as soon
/// as its send returns.
async fn send_all(
    pool: &PgPool,
    project: Uuid,
    ids: &[Uuid],
    text: &str,
    jobs: &[Arc<OnceLock<Uuid>>],
) -> anyhow::Result<()> {
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (pool, id, input) = (pool.clone(), *id, json!(text));
            let job = jobs.get(i).cloned();
            tokio::spawn(async move {
                let sent = sessions::send_turn(&pool, project, id, NewTurn::new(&input)).await?;
                if let Some(job) = job {
                    let _ = job.set(sent.job_id);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await.context("send task")??;
    }
    Ok(())
}

/// Waits until no job of `project` is unfinished; `false` if `limit` passed first.
async fn wait_idle(pool: &PgPool, project: Uuid, limit: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + limit;
    while has_unfinished(pool, project).await? {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(true)
}

/// The cluster's transaction id and WAL position at one moment.
struct Probe {
    xid: i64,
    wal: i64,
    /// Seconds since the bench's base instant.
    at: f64,
}

impl Probe {
    /// Takes one probe; it is itself one write transaction (`txid_current()` assigns an xid).
    async fn take(pool: &PgPool, base: Instant) -> anyhow::Result<Self> {
        let (xid, wal): (i64, i64) = sqlx::query_as(
            "SELECT txid_current(), pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint",
        )
        .fetch_one(pool)
        .await
        .context("probing the transaction id and WAL position")?;
        Ok(Self {
            xid,
            wal,
            at: base.elapsed().as_secs_f64(),
        })
    }

    /// Write transactions (not counting `later`'s own) and WAL bytes from here to `later`.
    fn growth_until(&self, later: &Self) -> (f64, f64) {
        (
            (later.xid - self.xid - 1).max(0) as f64,
            (later.wal - self.wal).max(0) as f64,
        )
    }

    /// [`growth_until`](Self::growth_until) per second.
    fn rates_until(&self, later: &Self) -> (f64, f64) {
        let (w, b) = self.growth_until(later);
        let secs = (later.at - self.at).max(1e-3);
        (w / secs, b / secs)
    }
}
