//! The agent layer on top of jobs: chat sessions, their transcripts, and the `agent.turn` job
//! that streams a model's reply and runs its tool calls, checkpointing every step.
//!
//! Owns `sessions` and `messages`; uses the queue to enqueue and cancel turns and never touches
//! job rows itself except through the lease fence of its own writes.

pub mod attachments;
pub mod compaction;
pub mod history;
pub mod saver;
pub mod sessions;
mod spans;
pub mod step;
pub mod store;
pub mod subagents;
pub mod title;
pub mod tool_calls;
pub mod transcript;
pub mod turn;
