//! Several `spool worker` processes against one database, one of them killed with SIGKILL.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{env, eventually};
use serde_json::{Value, json};
use spool::queue::enqueue::enqueue_many;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .expect(sql)
}

/// Starts `spool worker` and returns it with the worker id it printed.
async fn start_worker(url: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spool"))
        .arg("worker")
        .env("DATABASE_URL", url)
        .env("SPOOL_CONCURRENCY", "8")
        .env("SPOOL_LEASE_S", "2")
        .env("SPOOL_RETRY_BASE_MS", "100")
        .env("SPOOL_SHUTDOWN_GRACE_S", "5")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn spool worker");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("worker did not start")
        .expect("read")
        .expect("a line");
    let id = line
        .strip_prefix("spool worker ")
        .and_then(|rest| rest.strip_suffix(" running"))
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    (child, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_finish_3000_jobs_despite_a_kill_9() {
    let e = env().await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(start_worker(&e.db.url).await);
    }
    let args: Vec<Value> = (0..3000).map(|i| json!({ "i": i })).collect();
    let mut conn = e.svc.pool.acquire().await.expect("conn");
    enqueue_many(&mut conn, e.project, "noop", "default", &args)
        .await
        .expect("enqueue");
    drop(conn);
    let started = eventually(Duration::from_secs(30), || async {
        let n = count(
            &e.svc.pool,
            "SELECT count(*) FROM jobs WHERE state = 'succeeded'",
        )
        .await;
        (n >= 300).then_some(())
    })
    .await;
    assert!(started.is_some(), "workers did not make progress");
    let (victim, victim_id) = &mut workers[0];
    victim.start_kill().expect("kill -9");
    let status = victim.wait().await.expect("wait");
    assert!(
        !status.success(),
        "the killed worker should not exit cleanly"
    );
    let done = eventually(Duration::from_secs(90), || async {
        let n = count(
            &e.svc.pool,
            "SELECT count(*) FROM jobs WHERE state = 'succeeded'",
        )
        .await;
        (n == 3000).then_some(())
    })
    .await;
    let summary = count(
        &e.svc.pool,
        "SELECT count(*) FROM jobs WHERE state <> 'succeeded'",
    )
    .await;
    assert!(done.is_some(), "{summary} jobs did not succeed");
    assert_eq!(
        count(&e.svc.pool, "SELECT count(*) FROM jobs").await,
        3000,
        "jobs lost or duplicated"
    );
    assert_eq!(
        count(
            &e.svc.pool,
            "SELECT count(*) FROM jobs WHERE state = 'running'"
        )
        .await,
        0
    );
    let succeeded_events = count(
        &e.svc.pool,
        "SELECT count(*) FROM job_events WHERE kind = 'state' AND data->>'state' = 'succeeded'",
    )
    .await;
    assert_eq!(succeeded_events, 3000, "a job completed more than once");
    let victim_claims: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE data->>'state' = 'running' AND data->>'worker_id' = $1",
    )
    .bind(victim_id.as_str())
    .fetch_one(&e.svc.pool)
    .await
    .expect("claims");
    assert!(victim_claims > 0, "the killed worker never took part");
    // The survivors drain cleanly on SIGTERM.
    for (child, _) in workers.iter_mut().skip(1) {
        let pid = child.id().expect("pid") as i32;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("worker did not stop on SIGTERM")
            .expect("wait");
        assert!(status.success(), "worker exited with {status}");
    }
    let stopped = count(
        &e.svc.pool,
        "SELECT count(*) FROM workers WHERE state = 'stopped'",
    )
    .await;
    assert_eq!(stopped, 2);
}
