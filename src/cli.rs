//! Command-line parsing and the role entry points.

mod storage;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use spool::app::{self, Services};
use spool::config::{FileConfig, Overrides, Settings};
use spool::db::embedded::{EmbeddedPostgres, LaunchOptions};
use spool::logging;
use spool::projects::{self, tokens};
use spool::worker::WorkerRuntime;
use tokio_util::sync::CancellationToken;

/// Spool: durable, Postgres-backed jobs for AI-agent work.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Web, API and one worker in one process, on an embedded Postgres unless DATABASE_URL is set.
    Dev(Common),
    /// The web pages, REST API and SSE streams.
    Serve(Common),
    /// Runs jobs.
    Worker(Common),
    /// Applies database migrations and exits.
    Migrate(Common),
    /// Measures throughput or latency; prints one JSON line.
    Bench(crate::bench::BenchArgs),
    /// Manages API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Creates a token (and the project, if missing) and prints it.
    Create {
        #[arg(long)]
        project: String,
        #[arg(long, default_value = "admin")]
        scope: String,
        #[command(flatten)]
        common: Common,
    },
    /// Revokes a token, given the token itself or its id.
    Revoke {
        token: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Settings shared by every command; each flag also reads its environment variable.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Path of spool.toml (default: ./spool.toml, then <data-dir>/spool.toml).
    #[arg(long, env = "SPOOL_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Postgres URL; without it, `dev` and `bench` start an embedded cluster.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Data directory for the embedded cluster and the admin token.
    #[arg(long, env = "SPOOL_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Address the API and pages listen on.
    #[arg(long, env = "SPOOL_LISTEN", global = true)]
    listen: Option<String>,
    /// Jobs run at once by this process's worker.
    #[arg(long, env = "SPOOL_CONCURRENCY", global = true)]
    concurrency: Option<usize>,
    /// Queues this worker claims from, comma-separated.
    #[arg(long, env = "SPOOL_QUEUES", value_delimiter = ',', global = true)]
    queues: Option<Vec<String>>,
    /// Lease length in seconds; heartbeats renew it every third of that.
    #[arg(long, env = "SPOOL_LEASE_S", global = true)]
    lease_s: Option<u64>,
    /// Seconds running jobs get to finish on shutdown before they are handed back.
    #[arg(long, env = "SPOOL_SHUTDOWN_GRACE_S", global = true)]
    shutdown_grace_s: Option<u64>,
    /// Largest accepted job args in bytes.
    #[arg(long, env = "SPOOL_MAX_ARGS_BYTES", global = true)]
    max_args_bytes: Option<usize>,
    /// Database connections per process.
    #[arg(long, env = "SPOOL_DB_POOL", global = true)]
    db_pool: Option<u32>,
    /// Let `http` jobs call loopback addresses (on by default in `dev`).
    #[arg(long, env = "SPOOL_HTTP_ALLOW_LOOPBACK", global = true)]
    http_allow_loopback: Option<bool>,
    /// Let `http` jobs call private and link-local addresses.
    #[arg(long, env = "SPOOL_HTTP_ALLOW_PRIVATE", global = true)]
    http_allow_private: Option<bool>,
    /// First retry delay in milliseconds; doubles per attempt.
    #[arg(long, env = "SPOOL_RETRY_BASE_MS", global = true)]
    retry_base_ms: Option<u64>,
    /// Longest retry delay in seconds.
    #[arg(long, env = "SPOOL_RETRY_MAX_S", global = true)]
    retry_max_s: Option<u64>,
    /// Share of the context window a prompt may fill before the session is compacted.
    #[arg(long, env = "SPOOL_COMPACTION_SHARE", global = true)]
    compaction_share: Option<f64>,
    /// Bearer token `/metrics` requires; without one, only loopback may scrape.
    #[arg(
        long,
        env = "SPOOL_METRICS_TOKEN",
        global = true,
        hide_env_values = true
    )]
    metrics_token: Option<String>,
    /// Extra address serving only `/metrics` (the way to scrape `spool worker`).
    #[arg(long, env = "SPOOL_METRICS_LISTEN", global = true)]
    metrics_listen: Option<String>,
    /// Log lines as `text` or `json`.
    #[arg(long, env = "SPOOL_LOG_FORMAT", global = true)]
    log_format: Option<String>,
    /// Milliseconds a running job's events gather before a write (15 to 1000): shorter reaches
    /// readers sooner, longer writes fewer rows.
    #[arg(long, env = "SPOOL_EVENT_WINDOW_MS", global = true)]
    event_window_ms: Option<u64>,
    #[command(flatten)]
    storage: storage::StorageArgs,
}

impl Common {
    /// Resolves flags/env over spool.toml over defaults, then starts logging in the format they
    /// name (so the file's own warnings are written in that format too).
    pub fn settings(&self, dev: bool) -> anyhow::Result<Settings> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".spool"));
        let candidates = [PathBuf::from("spool.toml"), data_dir.join("spool.toml")];
        let file = FileConfig::load(self.config.as_deref(), &candidates)?;
        let unknown = file.unknown_keys();
        let path = file.path.clone().unwrap_or_default();
        let mut over = Overrides {
            database_url: self.database_url.clone(),
            data_dir: self.data_dir.clone(),
            listen: self.listen.clone(),
            concurrency: self.concurrency,
            queues: self.queues.clone(),
            lease_s: self.lease_s,
            shutdown_grace_s: self.shutdown_grace_s,
            max_args_bytes: self.max_args_bytes,
            db_pool: self.db_pool,
            http_allow_loopback: self.http_allow_loopback.or(dev.then_some(true)),
            http_allow_private: self.http_allow_private,
            retry_base_ms: self.retry_base_ms,
            retry_max_s: self.retry_max_s,
            compaction_share: self.compaction_share,
            metrics_token: self.metrics_token.clone(),
            metrics_listen: self.metrics_listen.clone(),
            log_format: self.log_format.clone(),
            event_window_ms: self.event_window_ms,
            ..Overrides::default()
        };
        self.storage.apply(&mut over);
        let s = Settings::resolve(over, file)?;
        logging::init(s.log_format);
        for key in unknown {
            tracing::warn!(%key, path = %path.display(), "unknown setting in config file; ignored");
        }
        Ok(s)
    }
}

/// Logging for commands without [`Common`] settings (`bench`): the format from
/// `SPOOL_LOG_FORMAT`, text when unset or unknown.
pub fn init_logging_from_env() {
    let format = std::env::var("SPOOL_LOG_FORMAT")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or_default();
    logging::init(format);
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(c) => dev(c.settings(true)?).await,
        Command::Serve(c) => serve(c.settings(false)?).await,
        Command::Worker(c) => worker(c.settings(false)?).await,
        Command::Migrate(c) => {
            let s = c.settings(false)?;
            app::connect(&require_url(&s)?, 2).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Bench(b) => {
            init_logging_from_env();
            crate::bench::run(b).await
        }
        Command::Token(TokenCommand::Create {
            project,
            scope,
            common,
        }) => {
            let scope: tokens::Scope = scope.parse().map_err(anyhow::Error::msg)?;
            let svc = app::connect(&require_url(&common.settings(false)?)?, 2).await?;
            let p = projects::ensure(&svc.pool, &project).await?;
            let t = tokens::create(&svc.pool, p.id, scope).await?;
            println!("{}", t.secret);
            eprintln!(
                "token {} for project `{}` with scope `{}`",
                t.id,
                p.name,
                scope.as_str()
            );
            Ok(())
        }
        Command::Token(TokenCommand::Revoke { token, common }) => {
            let svc = app::connect(&require_url(&common.settings(false)?)?, 2).await?;
            if !tokens::revoke(&svc.pool, &token).await? {
                bail!("no active token matches");
            }
            eprintln!("token revoked");
            Ok(())
        }
    }
}

fn require_url(s: &Settings) -> anyhow::Result<String> {
    s.database_url.clone().context(
        "DATABASE_URL is not set (use --database-url, DATABASE_URL or database_url in spool.toml)",
    )
}

/// Starts the embedded cluster under `data_dir/pg` unless a URL is configured.
pub async fn database(s: &Settings) -> anyhow::Result<(String, Option<EmbeddedPostgres>)> {
    if let Some(url) = &s.database_url {
        return Ok((url.clone(), None));
    }
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("creating {}", s.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&s.data_dir)?;
    let pg = EmbeddedPostgres::start(LaunchOptions {
        cluster_dir: data_dir.join("pg"),
        port: None,
        database: "spool".into(),
        log_file: None,
    })
    .await?;
    Ok((pg.database_url(), Some(pg)))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Reuses the admin token saved in the data dir while it still works; else makes a new one.
async fn admin_token(svc: &Services, data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-token");
    if let Ok(saved) = std::fs::read_to_string(&path) {
        let saved = saved.trim().to_owned();
        if tokens::verify(&svc.pool, &saved).await?.is_some() {
            return Ok(saved);
        }
    }
    let project = projects::ensure(&svc.pool, "default").await?;
    let t = tokens::create(&svc.pool, project.id, tokens::Scope::Admin).await?;
    std::fs::write(&path, format!("{}\n", t.secret))
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(t.secret)
}

/// Serves `/metrics` on `metrics_listen` when it is set, until the returned token is cancelled.
/// A port that cannot be bound fails the start rather than leaving the process unscrapeable.
async fn metrics_listener(svc: &Services, s: &Settings) -> anyhow::Result<CancellationToken> {
    let stop = CancellationToken::new();
    let Some(addr) = s.metrics_listen else {
        return Ok(stop);
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let until = stop.clone();
    let task = tokio::spawn(app::serve_metrics(
        app::metrics_state(svc, s),
        addr,
        move |a| {
            let _ = tx.send(a);
        },
        async move { until.cancelled().await },
    ));
    match rx.await {
        Ok(bound) => {
            println!("metrics on http://{bound}/metrics");
            tokio::spawn(async move {
                if let Ok(Err(e)) = task.await {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            });
            Ok(stop)
        }
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e),
            _ => bail!("the metrics listener on {addr} stopped before serving"),
        },
    }
}

async fn dev(s: Settings) -> anyhow::Result<()> {
    let (url, mut pg) = database(&s).await?;
    let svc = app::connect(&url, s.db_pool).await?;
    // Spans go out over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; a bad setting stops here.
    let otlp = spool::trace::otlp::Exporter::from_env(&svc.pool)?;
    let metrics = metrics_listener(&svc, &s).await?;
    let token = admin_token(&svc, &s.data_dir).await?;
    let link_code = match tokens::verify(&svc.pool, &token).await? {
        Some(p) => Some(
            projects::signin::issue_code(
                &svc.pool,
                p.token_id,
                chrono::Utc::now() + chrono::TimeDelta::minutes(30),
            )
            .await?,
        ),
        None => None,
    };
    let registry = app::builtin_registry(&svc.pool, &s)?;
    let runtime = WorkerRuntime::start(
        svc.pool.clone(),
        svc.hub.clone(),
        registry.clone(),
        s.worker(),
    )
    .await?;
    let state = app::api_state(&svc, registry, &s);
    let housekeeping = storage::Duties::start(&svc, &s);
    let stop = CancellationToken::new();
    let stop_serving = stop.clone();
    let served = app::serve(
        state,
        s.listen,
        |addr| {
            println!("spool dev listening on http://{addr}");
            if let Some(code) = &link_code {
                println!("sign in (one-time link, 30 min): http://{addr}/login/{code}");
            }
            println!("admin token (project `default`): {token}");
            println!("  saved in {}", s.data_dir.join("admin-token").display());
        },
        async move { stop_serving.cancelled().await },
    );
    tokio::pin!(served);
    let result = tokio::select! {
        r = &mut served => r,
        _ = shutdown_signal() => {
            eprintln!("shutting down…");
            stop.cancel();
            served.await
        }
    };
    runtime.shutdown(s.shutdown_grace).await;
    housekeeping.stop().await;
    // After the drain, so the spans it closed go out in the final flush.
    if let Some(otlp) = otlp {
        otlp.shutdown().await;
    }
    metrics.cancel();
    svc.hub.stop();
    svc.pool.close().await;
    if let Some(pg) = pg.as_mut() {
        pg.stop()?;
    }
    result
}

async fn serve(s: Settings) -> anyhow::Result<()> {
    let svc = app::connect(&require_url(&s)?, s.db_pool).await?;
    let registry = app::builtin_registry(&svc.pool, &s)?;
    let state = app::api_state(&svc, registry, &s);
    let metrics = metrics_listener(&svc, &s).await?;
    let served = app::serve(
        state,
        s.listen,
        |addr| println!("spool serve listening on http://{addr}"),
        shutdown_signal(),
    )
    .await;
    metrics.cancel();
    served
}

async fn worker(s: Settings) -> anyhow::Result<()> {
    let svc = app::connect(&require_url(&s)?, s.db_pool).await?;
    let otlp = spool::trace::otlp::Exporter::from_env(&svc.pool)?;
    let metrics = metrics_listener(&svc, &s).await?;
    let registry = app::builtin_registry(&svc.pool, &s)?;
    let runtime =
        WorkerRuntime::start(svc.pool.clone(), svc.hub.clone(), registry, s.worker()).await?;
    let housekeeping = storage::Duties::start(&svc, &s);
    println!("spool worker {} running", runtime.worker_id());
    shutdown_signal().await;
    eprintln!("draining (grace {:?})…", s.shutdown_grace);
    runtime.shutdown(s.shutdown_grace).await;
    housekeeping.stop().await;
    // After the drain, so the spans it closed go out in the final flush.
    if let Some(otlp) = otlp {
        otlp.shutdown().await;
    }
    metrics.cancel();
    Ok(())
}

/// Lets the bench reuse the roles' database resolution.
pub fn bench_grace() -> Duration {
    Duration::from_secs(5)
}
