//! Steps between the journal and the jobs: what a journal row means to the script, and how a new
//! step becomes a child job (an agent step, or a nested run).

use chrono::Utc;
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::engine::{Known, Request, StepKind};
use super::store::{self, NewRun, Run, Step};
use super::{KIND, catalog};
use crate::agent::step::KIND as STEP_KIND;
use crate::queue::{Enqueued, NewJob, QueueError, enqueue};
use crate::worker::JobContext;

/// Whether a job state is terminal.
pub fn terminal(state: Option<&str>) -> bool {
    matches!(state, Some("succeeded" | "failed" | "cancelled"))
}

fn tokens_of(usage: &Value) -> i64 {
    usage["input_tokens"].as_i64().unwrap_or(0) + usage["output_tokens"].as_i64().unwrap_or(0)
}

/// A successful step's value, as the script and the cache see it.
fn success(kind: &str, result: &Value) -> Value {
    if kind == "workflow" {
        let spent = result["spent"].as_i64().unwrap_or(0);
        return json!({ "ok": true, "output": result["output"],
                       "usage": { "input_tokens": spent, "output_tokens": 0 }, "cached": false });
    }
    let usage = &result["usage"];
    json!({ "ok": true, "output": result["output"],
            "usage": { "input_tokens": usage["input_tokens"].as_i64().unwrap_or(0),
                       "output_tokens": usage["output_tokens"].as_i64().unwrap_or(0) },
            "cached": false })
}

/// What the script gets for this row, if it has a result yet.
pub fn known(s: &Step) -> Option<Known> {
    if s.cached {
        let mut value = s.result.clone()?;
        value["cached"] = json!(true);
        return Some(Known { value, tokens: 0 });
    }
    if s.kind == "sleep" {
        return s.wake_at.filter(|w| *w <= Utc::now()).map(|_| Known {
            value: Value::Null,
            tokens: 0,
        });
    }
    match s.job_state.as_deref() {
        Some("succeeded") => {
            let value = success(&s.kind, s.job_result.as_ref().unwrap_or(&Value::Null));
            Some(Known {
                tokens: tokens_of(&value["usage"]),
                value,
            })
        }
        Some(state @ ("failed" | "cancelled")) => Some(Known {
            value: json!({ "ok": false, "output": null, "cached": false,
                           "error": s.job_error.clone().unwrap_or_else(|| state.to_owned()),
                           "usage": { "input_tokens": 0, "output_tokens": 0 } }),
            tokens: 0,
        }),
        _ => None,
    }
}

/// The value a completed step leaves in the cache (successes only: a failure is retried).
pub fn cacheable(s: &Step) -> Option<Value> {
    (s.job_state.as_deref() == Some("succeeded") && s.kind != "sleep")
        .then(|| success(&s.kind, s.job_result.as_ref().unwrap_or(&Value::Null)))
}

/// A step session id that every activation derives alike (so a re-enqueue is idempotent).
pub(super) fn derived_id(run_id: Uuid, key: &str) -> Uuid {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{run_id}:{key}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

/// Why a step could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The run must fail with this message.
    #[error("{0}")]
    Fatal(String),
}

/// Enqueues the child job of a new agent or workflow step, in the caller's transaction.
pub async fn spawn(
    conn: &mut PgConnection,
    ctx: &JobContext,
    run: &Run,
    r: &Request,
    remaining: i64,
    nested: Option<&catalog::Entry>,
) -> Result<Uuid, SpawnError> {
    let mut job = match r.kind {
        StepKind::Agent => {
            let mut prompt = r.inputs["prompt"].as_str().unwrap_or("").to_owned();
            if !r.inputs["schema"].is_null() {
                prompt.push_str(&format!(
                    "\n\nAnswer with JSON only (no prose), matching this JSON Schema:\n{}",
                    r.inputs["schema"]
                ));
            }
            NewJob::new(
                STEP_KIND,
                json!({ "session_id": derived_id(run.id, &r.key), "prompt": prompt,
                        "model": r.inputs["model"], "tools": r.inputs["tools"],
                        "max_tool_calls": r.inputs["max_tool_calls"], "budget_tokens": remaining,
                        "workspace": run.workspace, "run_id": run.id, "step_key": r.key,
                        "label": r.label }),
            )
        }
        StepKind::Workflow => NewJob::new(KIND, json!({ "workflow": r.inputs["name"] })),
        StepKind::Sleep => return Err(SpawnError::Fatal("a sleep is not a job".into())),
    };
    job.parent_id = Some(run.id);
    // A crashed activation runs this again: the key finds the same child.
    job.idempotency_key = Some(format!("wf:{}:{}", run.id, r.key));
    job.trace_id = Some(ctx.trace_id.clone());
    job.parent_span_id = Some(ctx.span_id.clone());
    job.max_attempts = Some(3);
    let created = match enqueue(conn, run.project_id, &job).await {
        Ok(Enqueued::Created(j)) => j,
        Ok(Enqueued::Existing(j)) => return Ok(j.id),
        Err(QueueError::Db(e)) => return Err(e.into()),
        Err(e) => return Err(SpawnError::Fatal(format!("could not start a step: {e}"))),
    };
    if let Some(entry) = nested {
        let seed = i64::from(u32::from_str_radix(&r.key[..8], 16).unwrap_or(0));
        store::insert_run(
            conn,
            &NewRun {
                id: created.id,
                project_id: run.project_id,
                workflow: &entry.name,
                source: &entry.source,
                args: &r.inputs["args"],
                budget_total: remaining.max(1),
                seed,
                depth: run.depth + 1,
                workspace: run.workspace.as_deref(),
            },
        )
        .await?;
    }
    Ok(created.id)
}
