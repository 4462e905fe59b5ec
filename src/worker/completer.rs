//! Fenced completion in batches: finishes from all of a process's jobs are gathered and written
//! with one statement per batch, so a durable commit is shared by many jobs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::service::Shared;
use crate::queue::{Finish, claim};

/// The most finishes written by one statement.
const MAX_BATCH: usize = 1000;

/// Writes finishes until the channel closes and is drained. A batch is never dropped on a
/// database error: it is retried, and the heartbeat keeps its leases alive meanwhile.
/// After `closing` fires, it drains what is queued and returns.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Finish>,
    closing: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            _ = closing.cancelled() => {
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(f) => batch.push(f),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    return;
                }
                batch.len()
            }
        };
        if n == 0 {
            return;
        }
        let mut delay = Duration::from_millis(20);
        loop {
            match claim::finish(&shared.pool, &batch).await {
                Ok(applied) => {
                    crate::metrics::count_written(&batch, &applied);
                    if applied.len() < batch.len() {
                        tracing::warn!(
                            stale = batch.len() - applied.len(),
                            "finishes rejected by the lease fence; those jobs belong to another attempt"
                        );
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, jobs = batch.len(), "writing finishes failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        shared.with_inflight(|m| {
            for f in &batch {
                m.remove(&f.id);
            }
        });
        batch.clear();
    }
}
