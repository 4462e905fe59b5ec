//! `GET /metrics`: Prometheus text exposition of the queue (read from the database at scrape
//! time, fleet-wide) and of this process (counters, timings, LLM usage, live readers, pool).
//!
//! Access: with a metrics token configured, only `Authorization: Bearer <metrics token>`; without
//! one, only direct loopback connections. A request that carries forwarding headers is treated as
//! not loopback, because a reverse proxy on the same host would otherwise make every outside
//! request look local. Anything else gets 403 with the API's JSON error body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::ApiError;
use crate::events::Hub;
use crate::metrics::render::{self, Exposition, Type};
use crate::queue::stats;

/// How long the scrape's database reads may take before they are skipped for this scrape.
const DB_BUDGET: Duration = Duration::from_secs(5);

/// What the metrics endpoint reads.
#[derive(Clone)]
pub struct MetricsState {
    pub pool: PgPool,
    pub hub: Hub,
    /// When set, the bearer token a scrape must carry (and loopback alone no longer suffices).
    pub token: Option<Arc<str>>,
}

/// The `/metrics` route alone: merged into the API router, and served by itself on
/// `metrics_listen` (the only way to scrape a `spool worker`).
pub fn router(state: MetricsState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(state)
}

async fn scrape(
    State(state): State<MetricsState>,
    req: Request<axum::body::Body>,
) -> Result<Response, ApiError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    check_access(state.token.as_deref(), req.headers(), peer)?;
    let body = exposition(&state).await;
    Ok(([(CONTENT_TYPE, render::CONTENT_TYPE)], body).into_response())
}

/// Allows the request or says why not.
pub fn check_access(
    token: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<(), ApiError> {
    if let Some(expected) = token {
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        // Comparing digests keeps the comparison's time independent of where the strings differ.
        if !given.is_empty() && Sha256::digest(given) == Sha256::digest(expected) {
            return Ok(());
        }
        return Err(ApiError::forbidden(
            "metrics need `Authorization: Bearer <metrics token>`",
        ));
    }
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h));
    let loopback = peer.is_some_and(|p| p.ip().to_canonical().is_loopback());
    if loopback && !forwarded {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "metrics are served to loopback only; set metrics_token to scrape from elsewhere",
        ))
    }
}

/// The whole exposition. A failed or slow database read leaves the queue families without
/// samples and sets `spool_queue_stats_up` to 0; the process's own metrics are always there.
pub async fn exposition(state: &MetricsState) -> String {
    let mut e = Exposition::new();
    e.family(
        "spool_build_info",
        Type::Gauge,
        "Always 1; the version of this process.",
    );
    e.int(
        "spool_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    queue(&mut e, &state.pool).await;
    render::process(&mut e);

    live_readers(&mut e, &state.hub);

    let size = state.pool.size();
    let idle = u32::try_from(state.pool.num_idle())
        .unwrap_or(u32::MAX)
        .min(size);
    e.family(
        "spool_db_pool_connections",
        Type::Gauge,
        "Open connections of this process's database pool, by state (in_use, idle).",
    );
    e.int(
        "spool_db_pool_connections",
        &[("state", "in_use")],
        u64::from(size - idle),
    );
    e.int(
        "spool_db_pool_connections",
        &[("state", "idle")],
        u64::from(idle),
    );
    e.family(
        "spool_db_pool_max_connections",
        Type::Gauge,
        "Most connections this process's database pool may open.",
    );
    e.int(
        "spool_db_pool_max_connections",
        &[],
        u64::from(state.pool.options().get_max_connections()),
    );
    e.finish()
}

fn live_readers(e: &mut Exposition, hub: &Hub) {
    let (streams, stream_readers) = hub.followed_streams();
    e.family(
        "spool_sse_topics",
        Type::Gauge,
        "What this process follows for live readers: jobs (source=job) and sessions (source=stream).",
    );
    e.int(
        "spool_sse_topics",
        &[("source", "job")],
        hub.subscriber_topics() as u64,
    );
    e.int("spool_sse_topics", &[("source", "stream")], streams as u64);
    e.family(
        "spool_sse_subscribers",
        Type::Gauge,
        "Live readers in this process: of jobs (SSE, long polls; source=job) and of sessions (source=stream).",
    );
    e.int(
        "spool_sse_subscribers",
        &[("source", "job")],
        hub.subscribers() as u64,
    );
    e.int(
        "spool_sse_subscribers",
        &[("source", "stream")],
        stream_readers as u64,
    );
}

async fn queue(e: &mut Exposition, pool: &PgPool) {
    let reads = async {
        let depth = stats::fleet_depth(pool).await?;
        let age = stats::fleet_oldest_ready_age(pool).await?;
        Ok::<_, sqlx::Error>((depth, age))
    };
    let read = match tokio::time::timeout(DB_BUDGET, reads).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "metrics: reading queue stats failed");
            None
        }
        Err(_) => {
            tracing::warn!("metrics: reading queue stats timed out");
            None
        }
    };
    e.family(
        "spool_queue_stats_up",
        Type::Gauge,
        "1 when this scrape read the queue from the database, 0 when that failed.",
    );
    e.int("spool_queue_stats_up", &[], u64::from(read.is_some()));
    e.family(
        "spool_queue_depth",
        Type::Gauge,
        "Unfinished jobs of all projects by state (queued, running, waiting) and kind; the same on every process.",
    );
    if let Some((depth, _)) = &read {
        for c in depth {
            let n = u64::try_from(c.count).unwrap_or(0);
            e.int(
                "spool_queue_depth",
                &[("state", c.state.as_str()), ("kind", &c.kind)],
                n,
            );
        }
    }
    e.family(
        "spool_queue_oldest_ready_age_seconds",
        Type::Gauge,
        "How long the oldest ready queued job (by creation, across projects) has been ready; 0 when none is.",
    );
    if let Some((_, age)) = read {
        e.float("spool_queue_oldest_ready_age_seconds", &[], age.max(0.0));
    }
}
