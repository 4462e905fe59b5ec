//! Composing a process from its parts: connect and migrate, start the LISTEN hub, build the kind
//! registry, serve HTTP, run workers. `main` and the tests both start roles through here.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use sqlx::PgPool;

use std::sync::Arc;

use crate::agent::turn::{self, AgentDeps};
use crate::api::metrics::MetricsState;
use crate::api::{self, AgentCatalog, ApiError, AppState, Limits};
use crate::config::Settings;
use crate::db::pool;
use crate::events::Hub;
use crate::kinds::{self, BuiltinDeps, http::NetPolicy};
use crate::llm::LlmClient;
use crate::web;
use crate::worker::Registry;

/// A connected, migrated database with the process's listener.
#[derive(Clone)]
pub struct Services {
    pub pool: PgPool,
    pub hub: Hub,
}

/// Connects a pool to `url`, applies migrations and starts the LISTEN hub.
pub async fn connect(url: &str, pool_size: u32) -> anyhow::Result<Services> {
    let pool = pool::connect(url, pool_size)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    pool::migrate(&pool).await.context("applying migrations")?;
    let hub = Hub::start(&pool)
        .await
        .context("starting LISTEN connection")?;
    Ok(Services { pool, hub })
}

/// The built-in kinds with the settings' network policy.
pub fn builtin_registry(pool: &PgPool, s: &Settings) -> anyhow::Result<Registry> {
    let http = reqwest::Client::builder()
        .user_agent(concat!("spool/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let deps = BuiltinDeps {
        pool: pool.clone(),
        http,
        net: NetPolicy {
            allow_loopback: s.http_allow_loopback,
            allow_private: s.http_allow_private,
        },
    };
    let agent = Arc::new(AgentDeps {
        pool: pool.clone(),
        llm: LlmClient::new(deps.http.clone(), Duration::from_secs(60)),
        models: s.models.clone(),
        workspaces: s.workspaces.clone(),
        http: deps.http.clone(),
        allow_loopback: s.http_allow_loopback,
        allow_private: s.http_allow_private,
        max_rounds: 8,
        step_retries: 2,
        saver: crate::agent::saver::PartialSaver::start(pool.clone()),
        blobs: s.blobs.clone(),
        compaction: crate::agent::compaction::Policy {
            share: s.compaction_share,
            ..Default::default()
        },
        subagent_limits: s.subagents,
    });
    let workflows = Arc::new(crate::workflow::run::Deps {
        pool: pool.clone(),
        settings: s.workflows.clone(),
    });
    let registry = turn::register(kinds::register_builtins(Registry::new(), deps), agent);
    Ok(crate::workflow::run::register(registry, workflows))
}

/// The API state for these services.
pub fn api_state(svc: &Services, registry: Registry, s: &Settings) -> AppState {
    AppState {
        pool: svc.pool.clone(),
        hub: svc.hub.clone(),
        registry,
        agent: Arc::new(AgentCatalog {
            models: s.models.clone(),
            workspaces: s.workspaces.clone(),
        }),
        limits: Limits {
            max_args_bytes: s.max_args_bytes,
            max_upload_bytes: s.max_upload_bytes,
        },
        metrics_token: s.metrics_token.as_ref().map(|t| Arc::from(t.expose())),
        blobs: s.blobs.clone(),
        workflows: Arc::new(s.workflows.clone()),
    }
}

/// Binds `listen` and serves the API and the pages until `shutdown` resolves. Returns the bound address through
/// `bound` before serving, so callers that asked for port 0 learn the port.
pub async fn serve(
    state: AppState,
    listen: SocketAddr,
    bound: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    bound(listener.local_addr()?);
    let keys = web::Keys::load(&state.pool)
        .await
        .context("loading the web cookie key")?;
    let app = api::router(state.clone())
        .merge(web::router(state, keys))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    serve_on(listener, app, shutdown).await
}

/// Binds `listen` and serves only `GET /metrics` until `shutdown` resolves: the
/// `metrics_listen` setting, and the only way to scrape a `spool worker`.
pub async fn serve_metrics(
    state: MetricsState,
    listen: SocketAddr,
    bound: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    bound(listener.local_addr()?);
    let app = api::metrics::router(state).fallback(|| async { ApiError::not_found("route") });
    serve_on(listener, app, shutdown).await
}

/// The metrics endpoint's view of these services.
pub fn metrics_state(svc: &Services, s: &Settings) -> MetricsState {
    MetricsState {
        pool: svc.pool.clone(),
        hub: svc.hub.clone(),
        token: s.metrics_token.as_ref().map(|t| Arc::from(t.expose())),
    }
}

async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))
}

async fn serve_on(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Streams send many small frames; Nagle's algorithm would hold each behind the last ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    // The peer address lets `/metrics` tell loopback scrapes from others.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")
}

/// A database URL with its password hidden, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
