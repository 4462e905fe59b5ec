//! Periodic duties every worker process takes part in: the sweep of orphaned blobs and the
//! retention pruning of finished jobs, their events and their spans.
//!
//! A round runs in whichever process first moves the duty's next run forward (see
//! `queue::retention::claim_round`), so a fleet runs each duty once per interval without a
//! leader. Every deletion is a short batch, so no statement holds locks on many rows. This
//! module owns no table: it asks each domain to delete its own rows and to name the blobs it
//! still refers to.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agent::{attachments, store as agent_store};
use crate::events::log;
use crate::queue::retention;
use crate::store::{BlobError, Blobs, registry};

/// Rows per deleting statement, and jobs per retention batch.
const BATCH: i64 = 1000;
/// Blobs examined per sweep page.
const SWEEP_PAGE: i64 = 500;

/// How often the duties run, and what they keep.
#[derive(Debug, Clone)]
pub struct Housekeeping {
    pub interval: Duration,
    /// A blob nothing refers to is removed once it is older than this: a blob is written just
    /// before the row that refers to it, and must not be taken in between.
    pub orphan_grace: Duration,
    pub retain: Retention,
}

/// How long finished work is kept; `None` keeps it for ever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Finished jobs, with their events and spans.
    pub jobs: Option<Duration>,
    /// Events of finished jobs (the jobs stay).
    pub events: Option<Duration>,
    /// Spans of finished jobs (the jobs stay).
    pub spans: Option<Duration>,
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Registered blobs older than the grace period that were looked at.
    pub examined: u64,
    /// Of those, the ones nothing referred to, now deleted.
    pub deleted: u64,
}

/// Deletes every blob registered more than `grace` ago that no row refers to any more: no
/// attachment, and no result, event or tool result of the job it was written for.
pub async fn sweep_orphans(
    pool: &PgPool,
    blobs: &Blobs,
    grace: Duration,
) -> Result<Swept, BlobError> {
    let before = Utc::now() - chrono::Duration::from_std(grace).unwrap_or(chrono::TimeDelta::MAX);
    let mut out = Swept::default();
    let mut after = None;
    loop {
        let page = registry::older_than(pool, before, after.clone(), SWEEP_PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = Some((last.created_at, last.key.clone()));
        out.examined += page.len() as u64;
        let keys: Vec<String> = page.iter().map(|b| b.key.clone()).collect();
        let jobs: Vec<Uuid> = page.iter().filter_map(|b| b.job_id).collect();
        let mut held: HashSet<String> = attachments::referenced(pool, &keys)
            .await?
            .into_iter()
            .collect();
        if !jobs.is_empty() {
            held.extend(retention::referenced_results(pool, &jobs, &keys).await?);
            held.extend(log::referenced(pool, &jobs, &keys).await?);
            held.extend(agent_store::referenced_tool_results(pool, &jobs, &keys).await?);
        }
        let orphans: Vec<String> = keys.into_iter().filter(|k| !held.contains(k)).collect();
        out.deleted += blobs.delete(pool, &orphans).await?;
        if (page.len() as i64) < SWEEP_PAGE {
            return Ok(out);
        }
    }
}

/// What a pruning round deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub events: u64,
    pub spans: u64,
}

fn cutoff(keep: Duration) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::TimeDelta::MAX)
}

/// Deletes what `retain` no longer keeps, in batches: finished jobs (their events and spans
/// first, so an interrupted round leaves nothing behind that the next one cannot find), then
/// the events and spans of finished jobs that are kept longer than those.
pub async fn prune(pool: &PgPool, retain: &Retention) -> Result<Pruned, sqlx::Error> {
    let mut out = Pruned::default();
    if let Some(keep) = retain.jobs {
        let before = cutoff(keep);
        loop {
            let ids = retention::finished_before(pool, before, None, BATCH).await?;
            if ids.is_empty() {
                break;
            }
            out.events += drain(|| log::delete_for_jobs(pool, &ids, BATCH)).await?;
            out.spans += drain(|| crate::trace::store::delete_for_jobs(pool, &ids, BATCH)).await?;
            let gone = retention::delete_finished(pool, &ids, before).await?;
            out.jobs += gone;
            if gone == 0 {
                break;
            }
        }
    }
    for (keep, events) in [(retain.events, true), (retain.spans, false)] {
        // Events and spans kept no longer than their jobs already went with them.
        let Some(keep) = keep.filter(|k| retain.jobs.is_none_or(|j| *k < j)) else {
            continue;
        };
        let before = cutoff(keep);
        let mut after = None;
        loop {
            let ids = retention::finished_before(pool, before, after, BATCH).await?;
            let Some(last) = ids.last() else { break };
            after = Some(*last);
            if events {
                out.events += drain(|| log::delete_for_jobs(pool, &ids, BATCH)).await?;
            } else {
                out.spans +=
                    drain(|| crate::trace::store::delete_for_jobs(pool, &ids, BATCH)).await?;
            }
        }
    }
    Ok(out)
}

/// Repeats a batched delete until a batch comes back short; returns the total.
async fn drain<F, Fut>(mut batch: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, sqlx::Error>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// The duties' loop in this process; stop it by cancelling the token, then await the handle.
pub fn start(
    pool: PgPool,
    blobs: Blobs,
    cfg: Housekeeping,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Looking a few times per interval keeps a fleet's rounds close to the interval even
        // when the process that ran the last one has gone.
        let look = (cfg.interval / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
        loop {
            round(&pool, &blobs, &cfg).await;
            let jitter = look.mul_f64(0.8 + rand::random::<f64>() * 0.4);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(jitter) => {}
            }
        }
    })
}

async fn round(pool: &PgPool, blobs: &Blobs, cfg: &Housekeeping) {
    match retention::claim_round(pool, "blob_sweep", cfg.interval).await {
        Ok(true) => match sweep_orphans(pool, blobs, cfg.orphan_grace).await {
            Ok(s) if s.deleted > 0 => tracing::info!(
                deleted = s.deleted,
                examined = s.examined,
                "removed orphaned blobs"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "orphaned blob sweep failed"),
        },
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "claiming the blob sweep failed"),
    }
    if cfg.retain == Retention::default() {
        return;
    }
    match retention::claim_round(pool, "retention", cfg.interval).await {
        Ok(true) => match prune(pool, &cfg.retain).await {
            Ok(p) if p != Pruned::default() => tracing::info!(
                jobs = p.jobs,
                events = p.events,
                spans = p.spans,
                "pruned finished work past retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pruning failed"),
        },
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "claiming the retention round failed"),
    }
}
