//! The `workflow.run` job: replay the script with every known step result, start the steps it
//! reached without one, and suspend until one of them finishes. Each claim of the job is an
//! activation; inside one, a replay that found new cached results runs again at once.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Duration, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::engine::{self, Activation, Outcome, StepKind};
use super::steps::{self, SpawnError, terminal};
use super::store::{self, NewRun, NewSteps, Run};
use super::{KIND, Settings, catalog};
use crate::queue::{Enqueued, NewJob, QueueError, Wait, enqueue};
use crate::worker::{JobContext, JobError, Registry};

/// Replays within one activation before it gives up (each finds at least one new result).
const MAX_REPLAYS: usize = 1000;

/// What runs need from the process.
pub struct Deps {
    pub pool: PgPool,
    pub settings: Settings,
}

/// Adds the `workflow.run` kind to `registry`.
pub fn register(registry: Registry, deps: Arc<Deps>) -> Registry {
    registry.register(KIND, move |ctx: JobContext| {
        activate(Arc::clone(&deps), ctx)
    })
}

/// Why a run could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Starts a run of `entry` (a valid catalog entry) with `args`; returns the run's id.
pub async fn start(
    pool: &PgPool,
    project_id: Uuid,
    s: &Settings,
    entry: &catalog::Entry,
    args: &Value,
    budget_tokens: Option<i64>,
) -> Result<Uuid, StartError> {
    let mut tx = pool.begin().await?;
    let job = NewJob::new(KIND, json!({ "workflow": entry.name }));
    let id = match enqueue(&mut tx, project_id, &job).await? {
        Enqueued::Created(j) | Enqueued::Existing(j) => j.id,
    };
    store::insert_run(
        &mut tx,
        &NewRun {
            id,
            project_id,
            workflow: &entry.name,
            source: &entry.source,
            args,
            budget_total: budget_tokens.unwrap_or(s.budget_tokens),
            seed: i64::from(rand::random::<u32>()),
            depth: 0,
            workspace: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

fn db(e: sqlx::Error) -> JobError {
    JobError::retry(format!("database error: {e}"))
}

fn lost() -> JobError {
    JobError::retry("lease lost while recording workflow steps")
}

async fn activate(deps: Arc<Deps>, ctx: JobContext) -> Result<Value, JobError> {
    let run = store::run(&deps.pool, ctx.project_id, ctx.id)
        .await
        .map_err(db)?
        .ok_or_else(|| JobError::fail("the workflow run's row is missing"))?;
    let mut emitted = usize::try_from(run.events_emitted).unwrap_or(0);
    for _ in 0..MAX_REPLAYS {
        if ctx.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        let journal = store::steps(&deps.pool, run.id).await.map_err(db)?;
        record_completions(&deps, &ctx, &run, &journal).await?;
        let activation = Activation {
            source: run.source.clone(),
            args: run.args.clone(),
            seed: u32::try_from(run.seed & 0xffff_ffff).unwrap_or(0),
            now_ms: Utc::now().timestamp_millis(),
            budget_total: run.budget_total,
            known: journal
                .iter()
                .filter_map(|s| steps::known(s).map(|k| (s.step_key.clone(), k)))
                .collect(),
            journal: journal
                .iter()
                .map(|s| (s.position.clone(), s.step_key.clone()))
                .collect(),
            may_nest: run.depth == 0,
            sandbox: deps.settings.sandbox(),
        };
        let report = tokio::task::spawn_blocking(move || engine::activate(activation))
            .await
            .map_err(|e| JobError::fail(format!("the script's thread stopped: {e}")))?;
        // Replays make the script's events again; only those past the last written are new.
        if report.events.len() > emitted {
            for (kind, data) in &report.events[emitted..] {
                ctx.emit(kind, data.clone());
            }
            emitted = report.events.len();
            let n = i32::try_from(emitted).unwrap_or(i32::MAX);
            store::set_events_emitted(&deps.pool, ctx.fence(), n)
                .await
                .map_err(db)?;
        }
        let total = run.budget_total;
        match report.outcome {
            Outcome::Done(output) => {
                let cached = journal.iter().filter(|s| s.cached).count();
                ctx.emit("budget", json!({ "spent": report.spent, "total": total }));
                return Ok(json!({
                    "output": output, "steps": journal.len(), "cached": cached,
                    "spent": report.spent, "budget": total,
                    "summary": format!("{cached} of {} steps cached", journal.len()),
                }));
            }
            Outcome::Failed(message) => return Err(JobError::fail(message)),
            Outcome::Blocked => {}
        }
        let recorded: HashMap<&str, &store::Step> =
            journal.iter().map(|s| (s.position.as_str(), s)).collect();
        let new: Vec<&engine::Request> = report
            .requests
            .iter()
            .filter(|r| !recorded.contains_key(r.position.as_str()))
            .collect();
        let replay = record_new(&deps, &ctx, &run, &new, total - report.spent).await?;
        if replay {
            continue;
        }
        // Wait for any unfinished step job, or the earliest sleep.
        let journal = store::steps(&deps.pool, run.id).await.map_err(db)?;
        let children: Vec<Uuid> = journal
            .iter()
            .filter(|s| !terminal(s.job_state.as_deref()))
            .filter_map(|s| s.job_id)
            .collect();
        let wake = journal
            .iter()
            .filter(|s| s.kind == "sleep" && s.completed_at.is_none())
            .filter_map(|s| s.wake_at)
            .min();
        if children.is_empty() && wake.is_none_or(|w| w <= Utc::now()) {
            continue; // What it waited for has happened already.
        }
        return Err(JobError::Suspend(Wait {
            children,
            any: true,
            until: wake.unwrap_or_else(|| Utc::now() + Duration::hours(24)),
        }));
    }
    Err(JobError::fail(
        "the workflow replayed too often in one activation",
    ))
}

/// Marks steps whose jobs ended (or whose sleep is over), caches their results and tells the log.
async fn record_completions(
    deps: &Deps,
    ctx: &JobContext,
    run: &Run,
    journal: &[store::Step],
) -> Result<(), JobError> {
    let now = Utc::now();
    let done: Vec<&store::Step> = journal
        .iter()
        .filter(|s| s.completed_at.is_none())
        .filter(|s| {
            terminal(s.job_state.as_deref())
                || (s.kind == "sleep" && s.wake_at.is_some_and(|w| w <= now))
        })
        .collect();
    if done.is_empty() {
        return Ok(());
    }
    let positions: Vec<String> = done.iter().map(|s| s.position.clone()).collect();
    let marked = store::mark_completed(&deps.pool, ctx.fence(), &positions)
        .await
        .map_err(db)?;
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for s in done.iter().filter(|s| marked.contains(&s.position)) {
        if let Some(v) = steps::cacheable(s) {
            keys.push(s.step_key.clone());
            values.push(v);
        }
        let tokens = steps::known(s).map_or(0, |k| k.tokens);
        let duration_ms = s
            .started_at
            .zip(s.finished_at)
            .map(|(a, b)| (b - a).num_milliseconds());
        ctx.emit(
            "step_completed",
            json!({ "key": s.step_key, "position": s.position, "kind": s.kind, "label": s.label,
                    "job_id": s.job_id, "state": s.job_state, "cached": false,
                    "tokens": tokens, "duration_ms": duration_ms }),
        );
    }
    if !keys.is_empty() {
        store::cache_put(
            &deps.pool,
            run.project_id,
            &run.workflow,
            &keys,
            &values,
            deps.settings.cache_ttl_s,
        )
        .await
        .map_err(db)?;
    }
    Ok(())
}

/// Journals the steps this replay reached for the first time: cached results, sleeps, and child
/// jobs for the rest. True when a cached result was found (the script can go further at once).
async fn record_new(
    deps: &Deps,
    ctx: &JobContext,
    run: &Run,
    new: &[&engine::Request],
    remaining: i64,
) -> Result<bool, JobError> {
    if new.is_empty() {
        return Ok(false);
    }
    let keys: Vec<String> = new
        .iter()
        .filter(|r| r.kind != StepKind::Sleep)
        .map(|r| r.key.clone())
        .collect();
    let hits: HashMap<String, Value> =
        store::cache_get(&deps.pool, run.project_id, &run.workflow, &keys)
            .await
            .map_err(db)?
            .into_iter()
            .collect();
    let mut nested = HashMap::new();
    for r in new
        .iter()
        .filter(|r| r.kind == StepKind::Workflow && !hits.contains_key(&r.key))
    {
        let name = r.inputs["name"].as_str().unwrap_or("");
        let entry = catalog::find(&deps.pool, run.project_id, &deps.settings, name)
            .await
            .map_err(db)?
            .filter(|e| e.error.is_none())
            .ok_or_else(|| {
                JobError::fail(format!("workflow(): no valid workflow named `{name}`"))
            })?;
        nested.insert(r.key.clone(), entry);
    }
    let mut rows = NewSteps {
        position: Vec::new(),
        key: Vec::new(),
        kind: Vec::new(),
        label: Vec::new(),
        phase: Vec::new(),
        job_id: Vec::new(),
        cached: Vec::new(),
        result: Vec::new(),
        wake_at: Vec::new(),
    };
    let mut tx = deps.pool.begin().await.map_err(db)?;
    for r in new {
        let hit = hits.get(&r.key).cloned();
        let (job_id, wake_at) = match (r.kind, &hit) {
            (_, Some(_)) => (None, None),
            (StepKind::Sleep, None) => {
                let ms = r.inputs["ms"].as_i64().unwrap_or(0);
                (None, Some(Utc::now() + Duration::milliseconds(ms)))
            }
            (_, None) => {
                let id = steps::spawn(&mut tx, ctx, run, r, remaining, nested.get(&r.key))
                    .await
                    .map_err(|e| match e {
                        SpawnError::Db(e) => db(e),
                        SpawnError::Fatal(m) => JobError::fail(m),
                    })?;
                (Some(id), None)
            }
        };
        rows.position.push(r.position.clone());
        rows.key.push(r.key.clone());
        rows.kind.push(r.kind.as_str().to_owned());
        rows.label.push(r.label.clone());
        rows.phase.push(r.phase.clone());
        rows.job_id.push(job_id);
        rows.cached.push(hit.is_some());
        rows.result.push(hit);
        rows.wake_at.push(wake_at);
    }
    if !store::record_steps(&mut tx, ctx.fence(), &rows)
        .await
        .map_err(db)?
    {
        return Err(lost());
    }
    tx.commit().await.map_err(db)?;
    for (i, r) in new.iter().enumerate() {
        let cached = rows.cached[i];
        ctx.emit(
            "step_started",
            json!({ "key": r.key, "position": r.position, "kind": r.kind.as_str(),
                    "label": r.label, "phase": r.phase, "job_id": rows.job_id[i], "cached": cached }),
        );
        if cached {
            ctx.emit(
                "step_completed",
                json!({ "key": r.key, "position": r.position, "kind": r.kind.as_str(),
                        "label": r.label, "cached": true, "tokens": 0 }),
            );
        }
    }
    Ok(!hits.is_empty())
}
