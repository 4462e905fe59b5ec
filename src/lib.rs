//! Spool: a durable, Postgres-backed job system for AI-agent work.
//!
//! Dependencies point one way: `api` → domain → `queue`/`events` → `db`, with `store` (blobs)
//! beside `db` at the bottom; `housekeeping` sits above the domains whose rows it prunes and
//! whose blob references it asks about. Rust users register
//! their own kinds on a [`worker::Registry`] and enqueue from their own transactions with
//! [`enqueue`].

pub mod agent;
pub mod api;
pub mod app;
pub mod config;
pub mod db;
pub mod events;
pub mod housekeeping;
pub mod kinds;
pub mod llm;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod projects;
pub mod queue;
pub mod store;
pub mod tools;
pub mod trace;
pub mod web;
pub mod worker;
pub mod workflow;

pub use queue::{Enqueued, Job, JobState, NewJob, enqueue};
pub use worker::{JobContext, JobError, Registry};
