//! A run as the API and the pages show it: its row, its steps with status, cache flag, tokens
//! and duration, and "N of M steps cached".

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::steps::{self, terminal};
use super::store::{self, Run};

/// One step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub position: String,
    pub key: String,
    pub kind: String,
    pub label: Option<String>,
    pub phase: Option<String>,
    pub job_id: Option<Uuid>,
    /// `cached`, the step job's state, `sleeping` or `done` (a sleep that is over).
    pub status: String,
    pub cached: bool,
    pub ok: Option<bool>,
    pub tokens: i64,
    pub duration_ms: Option<i64>,
}

/// A run with its steps.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub run: Run,
    pub steps: Vec<StepView>,
    pub steps_total: usize,
    pub steps_cached: usize,
    /// "N of M steps cached".
    pub cache_summary: String,
    /// Tokens this run's own steps used.
    pub spent: i64,
    pub output: Option<Value>,
}

/// The run `id` of `project_id`, with its steps.
pub async fn run(
    pool: &PgPool,
    project_id: Uuid,
    id: Uuid,
) -> Result<Option<RunView>, sqlx::Error> {
    let Some(run) = store::run(pool, project_id, id).await? else {
        return Ok(None);
    };
    let journal = store::steps(pool, id).await?;
    let steps: Vec<StepView> = journal
        .iter()
        .map(|s| {
            let known = steps::known(s);
            let status = if s.cached {
                "cached".to_owned()
            } else if s.kind == "sleep" {
                if known.is_some() { "done" } else { "sleeping" }.to_owned()
            } else {
                s.job_state.clone().unwrap_or_else(|| "unknown".into())
            };
            StepView {
                position: s.position.clone(),
                key: s.step_key.clone(),
                kind: s.kind.clone(),
                label: s.label.clone(),
                phase: s.phase.clone(),
                job_id: s.job_id,
                status,
                cached: s.cached,
                ok: known
                    .as_ref()
                    .filter(|_| s.kind != "sleep")
                    .and_then(|k| k.value["ok"].as_bool()),
                tokens: known.as_ref().map_or(0, |k| k.tokens),
                duration_ms: (terminal(s.job_state.as_deref()))
                    .then(|| s.started_at.zip(s.finished_at))
                    .flatten()
                    .map(|(a, b)| (b - a).num_milliseconds()),
            }
        })
        .collect();
    let cached = steps.iter().filter(|s| s.cached).count();
    let spent = steps.iter().map(|s| s.tokens).sum();
    let output = run.result.as_ref().map(|r| r["output"].clone());
    Ok(Some(RunView {
        steps_total: steps.len(),
        steps_cached: cached,
        cache_summary: format!("{cached} of {} steps cached", steps.len()),
        spent,
        output,
        steps,
        run,
    }))
}

/// The session an agent step's turn runs in; it exists once the step's job has started.
pub fn step_session(run_id: Uuid, key: &str) -> Uuid {
    steps::derived_id(run_id, key)
}
