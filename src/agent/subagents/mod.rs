//! Background subagents: child jobs of kind `agent.subagent` that a turn spawns with a tool, that
//! run their own turn loop in a hidden session on any worker, and whose results the turn collects
//! later, waiting without holding a worker slot (`queue::suspend`).
//!
//! Owns the subagent tools, the `agent.subagent` kind and the `subagents` table. It must not
//! touch job rows except through `queue`.

pub mod kind;
pub mod store;
pub mod tools;

use serde::{Deserialize, Serialize};

pub use store::{By, Subagent};

/// The job kind of a subagent.
pub const KIND: &str = "agent.subagent";

/// Limits on spawning (`[subagents]` in spool.toml). Going past one is a tool error the model
/// reads, never a failed turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// How deep subagents may nest: 2 lets a subagent spawn one more level.
    pub max_depth: i32,
    /// Children of one parent that run at once; further ones queue.
    pub running_per_parent: i32,
    /// Subagents one turn (or one subagent) may spawn in all.
    pub per_turn: i64,
    /// Unfinished subagents per project.
    pub per_project: i64,
    /// The longest a wait may last, in seconds.
    pub max_wait_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 2,
            running_per_parent: 4,
            per_turn: 16,
            per_project: 32,
            max_wait_s: 3600,
        }
    }
}
