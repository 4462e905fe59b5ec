//! `spool bench --mode pages`: the web pages' server time, each page requested one after another
//! (after a short warm-up) by a signed-in browser session against Spool's own server, in process.
//!
//! With `--seed N`, project `default` is first filled with N jobs (see [`super::seed`]). The
//! session is a real one: an admin token pasted into `POST /login` gives the `spool_session`
//! cookie. Times are measured by the client over loopback, from sending the request to the last
//! byte of the body, so they include HTTP overhead (well under a millisecond) on top of the
//! server's work; p50 and p99 are over `--requests` requests per page.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::header;
use serde_json::{Value, json};
use spool::app;
use spool::config::Settings;
use spool::projects::tokens::{self, Scope};
use spool::queue::JobState;
use spool::queue::control::{self, JobFilter};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::seed::{self, PROJECT};
use super::{BenchArgs, pct, sorted};

/// Requests per page before measuring: warms the statement caches and the buffer cache.
const WARM_UP: usize = 10;

/// Seeds if asked, serves, signs in and times every page.
pub async fn run(svc: &app::Services, settings: &Settings, b: &BenchArgs) -> anyhow::Result<Value> {
    let project = spool::projects::ensure(&svc.pool, PROJECT).await?;
    let seeded = match b.seed {
        Some(n) => Some(seed::fill(svc, project.id, n).await?),
        None => None,
    };
    let registry = app::builtin_registry(&svc.pool, settings)?;
    let state = app::api_state(svc, registry, settings);
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let mut server = tokio::spawn(app::serve(
        state,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        move |addr| {
            let _ = addr_tx.send(addr);
        },
        async move { stopped.cancelled().await },
    ));
    let result = match addr_rx.await {
        Ok(addr) => measure(svc, project.id, b, &format!("http://{addr}")).await,
        Err(_) => Err(anyhow::anyhow!("the web server did not start")),
    };
    stop.cancel();
    if tokio::time::timeout(Duration::from_secs(2), &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
    let mut line = result?;
    if let Some(s) = seeded {
        seed::merge(&mut line, s.json());
    }
    Ok(line)
}

async fn measure(
    svc: &app::Services,
    project: Uuid,
    b: &BenchArgs,
    base: &str,
) -> anyhow::Result<Value> {
    let pool = &svc.pool;
    let token = tokens::create(pool, project, Scope::Admin).await?;
    let client = reqwest::Client::builder()
        // The sign-in answers with a redirect that carries the cookie: read it, don't follow it.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let cookie = sign_in(&client, base, &token.secret).await?;
    let jobs: i64 = spool::queue::stats::counts(pool, project)
        .await?
        .iter()
        .map(|c| c.count)
        .sum();
    let job = sample_job(pool, project).await?;
    let mut paths = vec!["/".to_owned(), "/jobs".into(), "/jobs?state=failed".into()];
    match job {
        Some(id) => paths.push(format!("/jobs/{id}")),
        None => tracing::warn!("project `default` has no jobs: skipping the job page"),
    }
    paths.extend(["/workers".to_owned(), "/chats".into()]);
    let mut pages = Vec::with_capacity(paths.len());
    for path in &paths {
        pages.push(time_page(&client, base, &cookie, path, b.requests.max(1)).await?);
    }
    let revoked = tokens::revoke(pool, &token.id.to_string()).await?;
    if !revoked {
        tracing::warn!("the bench token was already revoked");
    }
    Ok(json!({
        "mode": "pages", "project": PROJECT, "jobs": jobs, "requests": b.requests.max(1),
        "timing": "client, loopback, request sent to last body byte", "pages": pages,
    }))
}

/// Signs in the way a browser does and returns the session cookie (`spool_session=…`).
async fn sign_in(client: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<String> {
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("next", "/")
        .finish();
    let res = client
        .post(format!("{base}/login"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .context("POST /login")?;
    if !res.status().is_redirection() {
        bail!(
            "POST /login answered {} instead of a redirect",
            res.status()
        );
    }
    res.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let pair = v.split(';').next()?.trim();
            pair.starts_with("spool_session=").then(|| pair.to_owned())
        })
        .context("POST /login set no spool_session cookie")
}

/// A job for the detail page: the newest failed one (it has an error to show), else the newest.
async fn sample_job(pool: &sqlx::PgPool, project: Uuid) -> anyhow::Result<Option<Uuid>> {
    for state in [Some(JobState::Failed), None] {
        let filter = JobFilter {
            state,
            limit: 1,
            ..JobFilter::default()
        };
        if let Some(j) = control::list(pool, project, &filter).await?.first() {
            return Ok(Some(j.id));
        }
    }
    Ok(None)
}

/// Requests `path` `n` times after a warm-up; returns its status, size and latency figures.
async fn time_page(
    client: &reqwest::Client,
    base: &str,
    cookie: &str,
    path: &str,
    n: usize,
) -> anyhow::Result<Value> {
    let url = format!("{base}{path}");
    let mut ms = Vec::with_capacity(n);
    let mut status = 0;
    let mut bytes = 0;
    for i in 0..WARM_UP + n {
        let start = Instant::now();
        let res = client
            .get(&url)
            .header(header::COOKIE, cookie)
            .header(header::ACCEPT, "text/html")
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        status = res.status().as_u16();
        bytes = res
            .bytes()
            .await
            .with_context(|| format!("GET {path}"))?
            .len();
        if i >= WARM_UP {
            ms.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    if !(200..300).contains(&status) {
        tracing::warn!(
            path,
            status,
            "page did not answer 2xx; its timing is of the error"
        );
    }
    let v = sorted(ms);
    Ok(json!({
        "path": path, "status": status, "bytes": bytes,
        "p50_ms": pct(&v, 0.50), "p99_ms": pct(&v, 0.99), "max_ms": pct(&v, 1.0),
    }))
}
