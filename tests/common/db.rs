//! Throwaway PostgreSQL for integration tests: one private cluster per test process, with a
//! migrated template database that each test clones into a fresh database of its own.
#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use spool::db::embedded::{EmbeddedPostgres, LaunchOptions};
use spool::db::pool;
use sqlx::{Connection, PgConnection, PgPool};

const TEMPLATE: &str = "spool_template";

/// A fresh, migrated database owned by one test.
pub struct TestDb {
    /// Pool (max 20 connections) to the test's database.
    pub pool: PgPool,
    /// URL of the test's database, for code that connects by itself.
    pub url: String,
    /// Database name, `t_<random>`.
    pub name: String,
}

/// `postgres://spool@127.0.0.1:PORT/`, to which a database name is appended. Only the address is
/// shared: each `#[tokio::test]` has its own runtime, so pools cannot outlive a test.
static CLUSTER_URL: OnceLock<String> = OnceLock::new();
/// Asks the cluster thread to stop the server and delete its files; it replies when done.
static STOP: OnceLock<mpsc::Sender<mpsc::Sender<()>>> = OnceLock::new();

/// Creates a fresh database `t_<random>` from the template and returns a pool (max 20 connections) to it.
pub async fn test_db() -> TestDb {
    // Blocking here is fine: it happens once per process, and other tests must wait anyway.
    let base = CLUSTER_URL.get_or_init(start_cluster);
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&format!("{base}postgres"))
        .await
        .expect("connecting to the test cluster");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {TEMPLATE}"
    )))
    .execute(&mut admin)
    .await
    .expect("creating a test database from the template");
    let _ = admin.close().await;
    let url = format!("{base}{name}");
    let pool = pool::connect(&url, 20)
        .await
        .expect("connecting to the test database");
    TestDb { pool, url, name }
}

/// Starts the cluster on a thread that lives as long as the process: the postmaster's
/// PDEATHSIG fires when the spawning *thread* exits, and test threads end with their test.
fn start_cluster() -> String {
    sweep_dead_clusters();
    let dir = std::env::temp_dir().join(format!(
        "spool-test-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
    let (stop_tx, stop_rx) = mpsc::channel::<mpsc::Sender<()>>();
    std::thread::Builder::new()
        .name("test-postgres".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the test cluster runtime");
            let pg = match runtime.block_on(launch(&dir)) {
                Ok(pg) => pg,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(pg.url_for("")));
            // STOP keeps the sender alive forever, so this returns only when exit asks us to.
            if let Ok(done) = stop_rx.recv() {
                drop(pg);
                let _ = std::fs::remove_dir_all(&dir);
                let _ = done.send(());
            }
        })
        .expect("spawning the test cluster thread");
    match ready_rx.recv() {
        Ok(Ok(url)) => {
            let _ = STOP.set(stop_tx);
            // SAFETY: registers a plain extern "C" function with no arguments.
            unsafe { libc::atexit(stop_cluster_at_exit) };
            url
        }
        Ok(Err(e)) => panic!("test PostgreSQL cluster failed to start: {e}"),
        Err(_) => panic!("test PostgreSQL cluster thread died while starting"),
    }
}

async fn launch(dir: &Path) -> Result<EmbeddedPostgres, String> {
    let pg = EmbeddedPostgres::start(LaunchOptions {
        cluster_dir: dir.to_path_buf(),
        port: None,
        database: TEMPLATE.into(),
        log_file: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    let template = pool::connect(&pg.database_url(), 2)
        .await
        .map_err(|e| format!("connecting to {TEMPLATE}: {e}"))?;
    pool::migrate(&template)
        .await
        .map_err(|e| format!("migrating {TEMPLATE}: {e}"))?;
    // CREATE DATABASE ... TEMPLATE refuses while anyone is connected to the template.
    template.close().await;
    Ok(pg)
}

/// Runs at normal process exit (libtest exits through `exit`), while the cluster thread still
/// exists; a killed test process relies on PDEATHSIG instead and leaves files for the sweep.
extern "C" fn stop_cluster_at_exit() {
    if let Some(stop) = STOP.get() {
        let (done_tx, done_rx) = mpsc::channel();
        if stop.send(done_tx).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
        }
    }
}

/// Deletes clusters left by test processes that were killed; their postmasters exited via PDEATHSIG.
fn sweep_dead_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("spool-test-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn process_alive(pid: u32) -> bool {
    // A killed test process lingers as a zombie ('Z') until its parent reaps it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}
