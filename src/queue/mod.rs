//! The durable job queue: the job model and every state change a job goes through — enqueue,
//! claim, lease renewal, fenced completion, rescue of lapsed leases, cancel and retry.
//!
//! All job SQL lives here. Each state change is one statement or one transaction and writes its
//! `state` event in the same statement, so the event log never disagrees with the row. This module
//! knows nothing about agents, HTTP or the worker runtime; callers pass plain values in.

pub mod backoff;
pub mod claim;
pub mod control;
pub mod enqueue;
pub mod model;
pub mod rescue;
pub mod retention;
pub mod seed;
pub mod stats;
pub mod suspend;
pub mod tree;
pub mod workers;

pub use enqueue::{Enqueued, NewJob, enqueue};
pub use model::{ClaimedJob, Finish, Job, JobState, QueueError};
pub use suspend::{ParentEvent, Wait};

/// The channel that wakes claimers; the payload is the queue name.
pub const JOBS_CHANNEL: &str = "spool_jobs";
/// The channel that asks workers to cancel running jobs; the payload is comma-separated job ids.
pub const CANCEL_CHANNEL: &str = "spool_cancel";
/// The channel that announces new events; the payload is comma-separated job ids.
pub const EVENTS_CHANNEL: &str = "spool_events";
