//! The worker runtime: the kind registry, claiming under a concurrency limit, per-job leases with
//! heartbeats, cancellation on any node, timeouts, fenced completion and graceful drain.
//!
//! Built on apalis-core's `WorkerBuilder` over a project-owned [`backend::SpoolBackend`]: apalis
//! drives the poll → dispatch loop and the worker's run/stop lifecycle; leases, fencing and
//! per-job cancel are ours, because the apalis Backend contract has no per-job lease token to
//! fence an ack with. This module talks to Postgres only through `queue` and `events`.

pub mod backend;
mod completer;
pub mod context;
pub mod error;
mod observe;
pub mod registry;
pub mod runtime;
mod service;

pub use context::JobContext;
pub use error::JobError;
pub use registry::{Handler, Registry};
pub use runtime::{RuntimeHandle, WorkerConfig, WorkerRuntime};
