//! Shared test harness: a real Postgres per test process (see `db`), and an in-process Spool
//! server and workers started through the same code paths as the binary.
#![allow(dead_code)]

pub mod browser;
pub mod chat;
pub mod db;
pub mod fake_llm;
pub mod files;
pub mod moto;
pub mod sse;
pub mod subagents;
pub mod web;
pub mod workflows;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use spool::app::{self, Services};
use spool::config::{FileConfig, Overrides, Settings};
use spool::projects::{self, tokens};
use spool::worker::{Registry, RuntimeHandle, WorkerConfig, WorkerRuntime};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A test's database, services and an admin token for project `default`.
pub struct Env {
    pub db: db::TestDb,
    pub svc: Services,
    pub settings: Settings,
    pub project: Uuid,
    pub token: String,
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("spool-{what}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Settings for tests: fast retries, short leases where a test asks for them, and a data
/// directory (so a blob store) of the test's own.
pub fn settings(url: &str) -> Settings {
    Settings::resolve(
        Overrides {
            database_url: Some(url.to_owned()),
            data_dir: Some(temp_dir("data")),
            http_allow_loopback: Some(true),
            retry_base_ms: Some(100),
            ..Overrides::default()
        },
        FileConfig::default(),
    )
    .expect("test settings")
}

/// A fresh database with services and a token.
pub async fn env() -> Env {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let db = db::test_db().await;
    let svc = app::connect(&db.url, 20).await.expect("connect");
    let settings = settings(&db.url);
    let project = projects::ensure(&svc.pool, "default")
        .await
        .expect("project");
    let token = tokens::create(&svc.pool, project.id, tokens::Scope::Admin)
        .await
        .expect("token")
        .secret;
    Env {
        db,
        svc,
        settings,
        project: project.id,
        token,
    }
}

impl Env {
    /// The built-in kinds.
    pub fn registry(&self) -> Registry {
        app::builtin_registry(&self.svc.pool, &self.settings).expect("registry")
    }

    /// Starts the API on a free port; stops when the returned token is cancelled.
    pub async fn serve(&self, registry: Registry) -> Server {
        let state = app::api_state(&self.svc, registry, &self.settings);
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let s = stop.clone();
        tokio::spawn(async move {
            app::serve(
                state,
                "127.0.0.1:0".parse().expect("addr"),
                move |a| {
                    let _ = tx.send(a);
                },
                async move { s.cancelled().await },
            )
            .await
            .expect("serve");
        });
        let addr = rx.await.expect("bound address");
        Server {
            addr,
            stop,
            token: self.token.clone(),
            http: reqwest::Client::new(),
        }
    }

    /// Enqueues `job` in the env's project straight through the queue; returns its id.
    pub async fn enqueue_job(&self, job: &spool::queue::NewJob) -> Uuid {
        let mut conn = self.svc.pool.acquire().await.expect("conn");
        spool::queue::enqueue(&mut conn, self.project, job)
            .await
            .expect("enqueue")
            .job()
            .id
    }

    /// Starts a worker runtime with its own LISTEN hub, like a separate node would have. Large
    /// payloads go to the env's blob store, as in `spool worker`, unless `cfg` names another.
    pub async fn worker(&self, registry: Registry, mut cfg: WorkerConfig) -> RuntimeHandle {
        if cfg.blobs.is_none() {
            cfg.blobs = Some(self.settings.blobs.clone());
        }
        let hub = spool::events::Hub::start(&self.svc.pool)
            .await
            .expect("hub");
        WorkerRuntime::start(self.svc.pool.clone(), hub, registry, cfg)
            .await
            .expect("worker")
    }
}

/// Worker settings tuned for tests.
pub fn fast_worker() -> WorkerConfig {
    WorkerConfig {
        concurrency: 8,
        poll_interval: Duration::from_millis(200),
        cancel_grace: Duration::from_secs(2),
        backoff: spool::queue::backoff::Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        },
        ..WorkerConfig::default()
    }
}

/// A running API server.
pub struct Server {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub token: String,
    pub http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    /// `http://addr/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// An authenticated request builder.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// POSTs JSON and returns (status, body).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GETs and returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Enqueues a job and returns its id.
    pub async fn enqueue(&self, kind: &str, args: Value) -> Uuid {
        let (status, body) = self
            .post("/api/v1/jobs", json!({ "kind": kind, "args": args }))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("job id")
    }

    /// Long-polls until the job is terminal (or `secs` pass) and returns it.
    pub async fn wait(&self, id: Uuid, secs: u64) -> Value {
        let (status, body) = self
            .get(&format!("/api/v1/jobs/{id}/wait?timeout_s={secs}"))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// Whether job `id` is in `state` (e.g. `"succeeded"`) within `timeout`.
pub async fn reaches_state(pool: &sqlx::PgPool, id: Uuid, state: &str, timeout: Duration) -> bool {
    eventually(timeout, || async {
        let now: String = sqlx::query_scalar("SELECT state::text FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("job state");
        (now == state).then_some(())
    })
    .await
    .is_some()
}

/// A transaction holding job `id`'s row lock, the lock its event writes, renewals and finish
/// need; the lock goes when the transaction is dropped or rolled back.
pub async fn hold_job_row(
    pool: &sqlx::PgPool,
    id: Uuid,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("lock the job row");
    tx
}

/// Polls `f` until it returns `Some`, for up to `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
