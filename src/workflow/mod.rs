//! Workflow scripts: sandboxed JavaScript whose every `agent()`, `workflow()` and `sleep()` call
//! is a durable, memoized step. A run is a `workflow.run` job that executes its script by replay
//! (see `run`): steps with a stored result return at once, the others become child jobs, and the
//! run suspends until they finish.
//!
//! Owns the catalog (built-ins, the `workflows/` directory, uploads), the QuickJS engine, the
//! `workflow_*` tables and the `workflow.run` kind. It must not touch job rows except through
//! `queue` (enqueue, suspend, cancel) and its own lease-fenced writes; agent steps run as
//! `workflow.step` jobs owned by `agent`.

pub mod catalog;
pub mod engine;
mod host;
pub mod run;
pub mod steps;
pub mod store;
pub mod view;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The job kind of a run.
pub const KIND: &str = "workflow.run";

/// `[workflows]` in spool.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The project's workflow files (`*.js`), relative to the working directory.
    pub dir: PathBuf,
    /// Memory one activation's QuickJS runtime may use, in MiB.
    pub memory_mb: usize,
    /// CPU time one activation may run for, in milliseconds.
    pub cpu_ms: u64,
    /// The token budget of a run that names none.
    pub budget_tokens: i64,
    /// How long a completed step's result is reused by later runs, in seconds.
    pub cache_ttl_s: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("workflows"),
            memory_mb: 64,
            cpu_ms: 5000,
            budget_tokens: 100_000,
            cache_ttl_s: 7 * 24 * 3600,
        }
    }
}

impl Settings {
    /// The sandbox of one activation.
    pub fn sandbox(&self) -> engine::Sandbox {
        engine::Sandbox {
            memory_bytes: self.memory_mb.max(1) * 1024 * 1024,
            cpu: std::time::Duration::from_millis(self.cpu_ms.max(1)),
        }
    }
}
