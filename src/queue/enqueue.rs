//! Putting jobs on the queue, inside the caller's transaction.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::control::fetch;
use super::model::{Job, JobState, QueueError};

/// A job to enqueue. Only `kind` and `args` are required.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub kind: String,
    pub args: Value,
    pub queue: Option<String>,
    pub priority: i16,
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: Option<i32>,
    pub timeout_s: Option<i32>,
    pub idempotency_key: Option<String>,
    pub concurrency_key: Option<String>,
    pub parent_id: Option<Uuid>,
    /// An event stream (e.g. a chat session) that also numbers this job's events.
    pub stream_id: Option<Uuid>,
    /// The trace to join (32 lowercase hex digits); without it the job inherits its parent's
    /// trace, or starts a new one.
    pub trace_id: Option<String>,
    /// The span the job was created under (16 lowercase hex digits), e.g. from `traceparent`.
    pub parent_span_id: Option<String>,
}

/// Whether enqueue made a new job or found one under the same idempotency key.
#[derive(Debug, Clone)]
pub enum Enqueued {
    Created(Job),
    Existing(Job),
}

impl Enqueued {
    /// The job, new or existing.
    pub fn job(&self) -> &Job {
        match self {
            Self::Created(j) | Self::Existing(j) => j,
        }
    }
}

/// A field of a [`NewJob`] that cannot be accepted.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidJob {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidJob {
    InvalidJob {
        field,
        message: message.into(),
    }
}

fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), InvalidJob> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/');
    if value.is_empty() || value.len() > max || !value.chars().all(ok_char) {
        return Err(invalid(
            field,
            format!("must be 1–{max} characters of letters, digits and . _ - : /"),
        ));
    }
    Ok(())
}

impl NewJob {
    /// A job of `kind` with `args` and every other field defaulted.
    pub fn new(kind: impl Into<String>, args: Value) -> Self {
        Self {
            kind: kind.into(),
            args,
            ..Self::default()
        }
    }

    /// Checks every field against the limits the schema and the runtime rely on.
    pub fn validate(&self) -> Result<(), InvalidJob> {
        check_name("kind", &self.kind, 128)?;
        if let Some(q) = &self.queue {
            check_name("queue", q, 64)?;
        }
        if !(-100..=100).contains(&self.priority) {
            return Err(invalid("priority", "must be between -100 and 100"));
        }
        if let Some(m) = self.max_attempts
            && !(1..=100).contains(&m)
        {
            return Err(invalid("max_attempts", "must be between 1 and 100"));
        }
        if let Some(t) = self.timeout_s
            && !(1..=86_400).contains(&t)
        {
            return Err(invalid("timeout_s", "must be between 1 and 86400 seconds"));
        }
        for (field, key) in [
            ("idempotency_key", &self.idempotency_key),
            ("concurrency_key", &self.concurrency_key),
        ] {
            if let Some(k) = key
                && (k.is_empty() || k.len() > 255)
            {
                return Err(invalid(field, "must be 1–255 characters"));
            }
        }
        let hex = |v: &str, n: usize| {
            v.len() == n
                && v.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && v.bytes().any(|b| b != b'0')
        };
        if let Some(t) = &self.trace_id
            && !hex(t, 32)
        {
            return Err(invalid(
                "trace_id",
                "must be 32 lowercase hex digits, not all zero",
            ));
        }
        if let Some(p) = &self.parent_span_id
            && !hex(p, 16)
        {
            return Err(invalid(
                "parent_span_id",
                "must be 16 lowercase hex digits, not all zero",
            ));
        }
        if self.parent_span_id.is_some() && self.trace_id.is_none() {
            return Err(invalid("trace_id", "a parent span needs its trace id"));
        }
        Ok(())
    }
}

/// Enqueues `job` for `project_id` on `conn`, which may be inside the caller's transaction: the
/// job becomes visible, and workers are woken, when that transaction commits.
///
/// With an `idempotency_key` already used in the project, returns the existing job when the kind
/// and args match, and [`QueueError::IdempotencyConflict`] when they do not.
pub async fn enqueue(
    conn: &mut PgConnection,
    project_id: Uuid,
    job: &NewJob,
) -> Result<Enqueued, QueueError> {
    let id = Uuid::now_v7();
    let queue = job.queue.as_deref().unwrap_or("default");
    let inserted = sqlx::query_as!(
        Job,
        r#"
        WITH parent AS (
            SELECT coalesce(root_id, id) AS root, trace_id FROM jobs WHERE id = $11 AND project_id = $2
        ), ins AS (
            INSERT INTO jobs (id, project_id, kind, queue, args, priority, run_at, max_attempts,
                              timeout_s, idempotency_key, concurrency_key, parent_id, root_id, last_seq,
                              stream_id, trace_id, parent_span_id)
            SELECT $1, $2, $3, $4, $5, $6, coalesce($7, now()), coalesce($8, 5), $9, $10, $12, $11,
                   coalesce((SELECT root FROM parent), $1), 1, $13,
                   coalesce($14, (SELECT trace_id FROM parent), replace(gen_random_uuid()::text, '-', '')),
                   $15
            WHERE $11::uuid IS NULL OR EXISTS (SELECT 1 FROM parent)
            ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
            RETURNING *
        ), ev AS (
            INSERT INTO job_events (job_id, seq, kind, data, stream_id)
            SELECT id, 1, 'state', '{"state":"queued"}'::jsonb, stream_id FROM ins
        ), k AS (
            INSERT INTO job_keys (project_id, key)
            SELECT project_id, concurrency_key FROM ins WHERE concurrency_key IS NOT NULL
            ON CONFLICT DO NOTHING
        )
        SELECT ins.id AS "id!", ins.project_id AS "project_id!", ins.kind AS "kind!",
               ins.queue AS "queue!", ins.state AS "state!: JobState", ins.priority AS "priority!",
               ins.attempt AS "attempt!", ins.max_attempts AS "max_attempts!", ins.args AS "args!",
               ins.result, ins.error, ins.progress, ins.parent_id, ins.root_id, ins.concurrency_key,
               ins.idempotency_key, ins.timeout_s, ins.run_at AS "run_at!",
               ins.cancel_requested_at, ins.created_at AS "created_at!", ins.started_at,
               ins.finished_at
        FROM ins
        LEFT JOIN LATERAL (SELECT pg_notify('spool_jobs', ins.queue) WHERE ins.run_at <= now()) n ON true
        "#,
        id,
        project_id,
        job.kind,
        queue,
        job.args,
        job.priority,
        job.run_at,
        job.max_attempts,
        job.timeout_s,
        job.idempotency_key,
        job.parent_id,
        job.concurrency_key,
        job.stream_id,
        job.trace_id,
        job.parent_span_id,
    )
    .fetch_optional(&mut *conn)
    .await?;

    if let Some(created) = inserted {
        return Ok(Enqueued::Created(created));
    }
    // Nothing inserted: either the idempotency key exists, or the named parent does not.
    if let Some(key) = &job.idempotency_key {
        let existing = sqlx::query!(
            r#"SELECT id, (kind = $3 AND args = $4) AS "same!" FROM jobs
               WHERE project_id = $1 AND idempotency_key = $2"#,
            project_id,
            key,
            job.kind,
            job.args,
        )
        .fetch_optional(&mut *conn)
        .await?;
        match existing {
            Some(row) if row.same => {
                let job = fetch(&mut *conn, project_id, row.id).await?;
                return Ok(Enqueued::Existing(job));
            }
            Some(_) => return Err(QueueError::IdempotencyConflict),
            None => {}
        }
    }
    Err(QueueError::ParentNotFound)
}

/// Bulk-enqueues plain jobs of one kind (no keys, no parent) with one statement; returns the count.
/// Used by the benchmark and by bulk producers that want one round trip.
pub async fn enqueue_many(
    conn: &mut PgConnection,
    project_id: Uuid,
    kind: &str,
    queue: &str,
    args: &[Value],
) -> Result<u64, QueueError> {
    let ids: Vec<Uuid> = args.iter().map(|_| Uuid::now_v7()).collect();
    let n = sqlx::query_scalar!(
        r#"
        WITH ins AS (
            INSERT INTO jobs (id, project_id, kind, queue, args, root_id, last_seq)
            SELECT i.id, $2, $3, $4, i.args, i.id, 1 FROM unnest($1::uuid[], $5::jsonb[]) AS i(id, args)
            RETURNING id
        ), ev AS (
            INSERT INTO job_events (job_id, seq, kind, data)
            SELECT id, 1, 'state', '{"state":"queued"}'::jsonb FROM ins
        )
        SELECT count(*) AS "n!" FROM ins, (SELECT pg_notify('spool_jobs', $4)) n
        "#,
        &ids,
        project_id,
        kind,
        queue,
        args,
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(n as u64)
}
