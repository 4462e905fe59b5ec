//! The job row and the values that move between the queue and its callers.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A job's lifecycle state, mirrored by the `job_state` Postgres enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, sqlx::Type)]
#[sqlx(type_name = "job_state", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    /// Terminal states never change again, except through an explicit retry.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The lowercase name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "waiting" => Self::Waiting,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => return Err(format!("unknown state `{other}`")),
        })
    }
}

/// A job as the API and dashboards see it. Lease internals stay out.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub project_id: Uuid,
    pub kind: String,
    pub queue: String,
    pub state: JobState,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub args: Value,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub progress: Option<Value>,
    pub parent_id: Option<Uuid>,
    pub root_id: Option<Uuid>,
    pub concurrency_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub timeout_s: Option<i32>,
    pub run_at: DateTime<Utc>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job a worker holds under a lease; `lease_token` fences every write it makes.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub project_id: Uuid,
    pub kind: String,
    pub args: Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub timeout_s: Option<i32>,
    pub lease_token: Uuid,
    /// The job's trace, and this attempt's span in it (opened by the claim).
    pub trace_id: String,
    pub span_id: String,
    /// When the job became due: claim latency is measured from here.
    pub run_at: DateTime<Utc>,
    /// Set when the job has waited before (see [`super::suspend`]): when that wait was to end.
    pub resumed_wait: Option<DateTime<Utc>>,
}

/// What a worker reports at the end of an attempt; applied in batches, fenced by the lease.
#[derive(Debug, Clone)]
pub struct Finish {
    pub id: Uuid,
    pub lease_token: Uuid,
    pub outcome: Outcome,
    /// Left in the parent's log when this ends the job (see [`super::suspend::children_finished`]).
    pub parent_event: Option<super::suspend::ParentEvent>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded(Value),
    /// Back to `queued` at `run_at`, the attempt counted.
    Retry {
        error: Value,
        run_at: DateTime<Utc>,
    },
    Failed(Value),
    Cancelled(Value),
    /// Handed back untouched (worker shutdown): `queued` now, the attempt not counted.
    Released,
}

/// Errors from queue operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job not found")]
    NotFound,
    #[error("idempotency key already used with different arguments")]
    IdempotencyConflict,
    #[error("parent job not found")]
    ParentNotFound,
    #[error("job is {0:?} and cannot be {1}")]
    WrongState(JobState, &'static str),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}
