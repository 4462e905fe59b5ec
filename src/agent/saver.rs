//! Saving streaming replies: every running turn's latest text is written about every 250 ms, in
//! batched statements, so a refreshed page or the messages API sees the reply so far without a
//! write per turn per tick.
//!
//! The replies are spread over five phases of the 250 ms, each saved in its own statement. A save
//! rewrites each reply's whole text: one statement for 200 long replies took about 16 ms, and the
//! event writer's statement running beside it (which SSE readers wait for) took 19 ms instead of
//! 2, every 250 ms at 200 concurrent turns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::store::{self, Fence, Partial};

/// How often each streaming reply is saved.
pub const EVERY: Duration = Duration::from_millis(250);
/// How many phases of [`EVERY`] the replies are spread over; a reply's phase comes from its id.
const PHASES: u32 = 5;

/// A reply's text as it streams in, shared between the turn and the saver.
#[derive(Debug, Default)]
pub struct Streaming {
    pub text: String,
    pub reasoning: String,
}

/// Handle to a streaming reply's text.
pub type Buffer = Arc<Mutex<Streaming>>;

struct Tracked {
    fence: Fence,
    buffer: Buffer,
    saved_len: usize,
}

/// The process's saver of streaming replies. Cheap to clone.
#[derive(Clone)]
pub struct PartialSaver {
    tracked: Arc<Mutex<HashMap<Uuid, Tracked>>>,
}

impl PartialSaver {
    /// Starts the save loop on `pool`.
    pub fn start(pool: PgPool) -> Self {
        let tracked: Arc<Mutex<HashMap<Uuid, Tracked>>> = Arc::default();
        tokio::spawn(run(pool, Arc::clone(&tracked)));
        Self { tracked }
    }

    /// Saves `buffer` as message `message_id` on every tick where it grew, until [`forget`](Self::forget).
    pub fn track(&self, message_id: Uuid, fence: Fence, buffer: Buffer) {
        if let Ok(mut t) = self.tracked.lock() {
            t.insert(
                message_id,
                Tracked {
                    fence,
                    buffer,
                    saved_len: 0,
                },
            );
        }
    }

    /// Stops saving a reply (its final state is being written instead).
    pub fn forget(&self, message_id: Uuid) {
        if let Ok(mut t) = self.tracked.lock() {
            t.remove(&message_id);
        }
    }
}

/// The replies of `phase` that grew since their last save, with their text now.
fn grown(tracked: &Mutex<HashMap<Uuid, Tracked>>, phase: u32) -> Option<Vec<Partial>> {
    let mut t = tracked.lock().ok()?;
    let mut out = Vec::new();
    // The low bits of a UUIDv7 are random, so replies spread evenly over the phases.
    let mine = |id: &Uuid| (id.as_u128() % u128::from(PHASES)) as u32 == phase;
    for (id, tr) in t.iter_mut().filter(|(id, _)| mine(id)) {
        let Ok(buf) = tr.buffer.lock() else { continue };
        let len = buf.text.len() + buf.reasoning.len();
        if len != tr.saved_len {
            tr.saved_len = len;
            let content = serde_json::json!({ "text": buf.text, "reasoning": buf.reasoning });
            out.push(Partial {
                message_id: *id,
                fence: tr.fence,
                content,
            });
        }
    }
    Some(out)
}

async fn run(pool: PgPool, tracked: Arc<Mutex<HashMap<Uuid, Tracked>>>) {
    let mut tick = tokio::time::interval(EVERY / PHASES);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut phase = 0;
    loop {
        tick.tick().await;
        phase = (phase + 1) % PHASES;
        // The saver lives as long as its process; with no handle left there is nothing to save.
        if Arc::strong_count(&tracked) == 1 {
            return;
        }
        let Some(batch) = grown(&tracked, phase) else {
            return;
        };
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = store::save_partials(&pool, &batch).await {
            // A missed save only delays the text shown on refresh; the next tick carries newer text.
            tracing::warn!(error = %e, replies = batch.len(), "saving streaming replies failed");
        }
    }
}
