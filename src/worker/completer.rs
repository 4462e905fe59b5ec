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
/// Refusals of a whole batch before its finishes are written one at a time.
const BATCH_TRIES: u32 = 3;
/// Refusals of a single finish before it is left to rescue (its lease lapses once the
/// heartbeat stops renewing it).
const SINGLE_TRIES: u32 = 5;

/// Writes finishes until the channel closes and is drained. A batch is never dropped because the
/// database is unreachable: it is retried while the heartbeat keeps its leases alive. A batch the
/// database keeps refusing is written one finish at a time, so one bad finish cannot hold up
/// every other; a finish still refused is left to rescue.
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
        if !write(&shared, &batch, BATCH_TRIES).await && batch.len() > 1 {
            // A batch that keeps failing may hold one finish the database refuses for good (a
            // constraint it breaks): written one by one, the others still land.
            for f in &batch {
                write(&shared, std::slice::from_ref(f), SINGLE_TRIES).await;
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

/// Writes `batch`. Errors of the connection (an outage, a restart) are retried for as long as
/// they last, as before: the heartbeat keeps the leases alive. A statement the database itself
/// refuses `tries` times running (other than a deadlock or serialization failure) is given up;
/// returns false then.
async fn write(shared: &Shared, batch: &[Finish], tries: u32) -> bool {
    let mut delay = Duration::from_millis(20);
    let mut refusals = 0;
    loop {
        match claim::finish(&shared.pool, batch).await {
            Ok(applied) => {
                crate::metrics::count_written(batch, &applied);
                if applied.len() < batch.len() {
                    tracing::warn!(
                        stale = batch.len() - applied.len(),
                        "finishes rejected by the lease fence; those jobs belong to another attempt"
                    );
                }
                return true;
            }
            Err(e) => {
                if refused(&e) {
                    refusals += 1;
                    if refusals >= tries {
                        tracing::error!(error = %e, jobs = batch.len(), "the database refuses these finishes; giving up on them");
                        return false;
                    }
                }
                tracing::warn!(error = %e, jobs = batch.len(), "writing finishes failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Whether the server rejected the statement itself (a constraint, a bad value), rather than the
/// connection failing or a transaction conflict (SQLSTATE class 40) that a retry resolves.
fn refused(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => !d
            .code()
            .is_some_and(|c| c.starts_with("40") || c.starts_with("08") || c.starts_with("57")),
        _ => false,
    }
}
