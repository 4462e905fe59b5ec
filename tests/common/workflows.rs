//! Workflow test fixtures: uploading scripts, starting runs and waiting for them over the API.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use spool::worker::RuntimeHandle;

use super::chat::agent_env;
use super::fake_llm::{Chunk, FakeLlm, Reply};
use super::{Env, Server, eventually, fast_worker};

/// An agent environment on `fake` with its API server and a fast worker (keep the handle alive).
pub async fn running(fake: &FakeLlm) -> (Env, Server, RuntimeHandle) {
    let e = agent_env(fake).await;
    let s = e.serve(e.registry()).await;
    let w = e.worker(e.registry(), fast_worker()).await;
    (e, s, w)
}

/// Uploads `source` as workflow `name`; panics unless it is accepted.
pub async fn upload(s: &Server, name: &str, source: &str) {
    let r = s
        .req(reqwest::Method::PUT, &format!("/api/v1/workflows/{name}"))
        .json(&json!({ "source": source }))
        .send()
        .await
        .expect("upload");
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, 200, "{body}");
}

/// Starts a run; returns its id.
pub async fn start(s: &Server, name: &str, body: Value) -> Uuid {
    let (st, b) = s
        .post(&format!("/api/v1/workflows/{name}/runs"), body)
        .await;
    assert_eq!(st, 202, "{b}");
    b["id"]
        .as_str()
        .and_then(|i| i.parse().ok())
        .expect("run id")
}

/// The run as the API shows it.
pub async fn get_run(s: &Server, id: Uuid) -> Value {
    let (st, b) = s.get(&format!("/api/v1/workflow-runs/{id}")).await;
    assert_eq!(st, 200, "{b}");
    b
}

/// Waits (up to `secs`) for the run to reach a terminal state and returns it.
pub async fn finished(s: &Server, id: Uuid, secs: u64) -> Value {
    eventually(Duration::from_secs(secs), || async {
        let r = get_run(s, id).await;
        matches!(
            r["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
        .then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("run {id} did not finish"))
}

/// How many requests the fake model got whose first user message contains `marker`.
pub fn calls_with(fake: &FakeLlm, marker: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| {
            r["messages"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["role"] == "user"))
                .is_some_and(|m| m["content"].to_string().contains(marker))
        })
        .count()
}

/// A reply that takes `ms` to stream.
pub fn slow(text: &str, ms: u64) -> Reply {
    Reply::Stream {
        chunks: vec![Chunk::Text(text.into())],
        usage: None,
        delay_ms: ms,
    }
}

/// The most step jobs of `run` that were unfinished at the same moment (enqueued, not yet ended).
pub async fn max_open_steps(e: &Env, run: Uuid) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT coalesce(max(n), 0) FROM (
           SELECT (SELECT count(*) FROM jobs j WHERE j.parent_id = $1 AND j.kind = 'workflow.step'
                     AND j.created_at <= c.created_at
                     AND coalesce(j.finished_at, 'infinity') > c.created_at) AS n
           FROM jobs c WHERE c.parent_id = $1 AND c.kind = 'workflow.step') t",
    )
    .bind(run)
    .fetch_one(&e.svc.pool)
    .await
    .expect("overlap")
}

/// Step jobs of `run` in `state` (any state with `None`).
pub async fn step_jobs(e: &Env, run: Uuid, state: Option<&str>) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM jobs WHERE parent_id = $1 AND kind = 'workflow.step'
           AND ($2::text IS NULL OR state::text = $2)",
    )
    .bind(run)
    .bind(state)
    .fetch_one(&e.svc.pool)
    .await
    .expect("count")
}
