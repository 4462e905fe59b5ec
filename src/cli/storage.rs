//! Flags for blobs, uploads and retention, each also read from its environment variable, and
//! the periodic duties (orphan sweep, pruning) that `dev` and `worker` run.

use clap::Args;
use spool::app::Services;
use spool::config::{Overrides, Settings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where blobs go, how large uploads and inline payloads may be, and how long finished work is kept.
#[derive(Debug, Clone, Default, Args)]
pub struct StorageArgs {
    /// Blob store URL: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or
    /// file:///path (default: <data-dir>/blobs).
    #[arg(long, env = "SPOOL_BLOB_URL", global = true)]
    blob_url: Option<String>,
    /// Largest accepted attachment in bytes (default 20 MiB).
    #[arg(long, env = "SPOOL_MAX_UPLOAD_BYTES", global = true)]
    max_upload_bytes: Option<usize>,
    /// Job results, tool outputs and event payloads larger than this many bytes of JSON are
    /// stored as blobs (default 65536).
    #[arg(long, env = "SPOOL_OFFLOAD_BYTES", global = true)]
    offload_bytes: Option<usize>,
    /// Seconds an unreferenced blob is kept before the sweep removes it (default 3600).
    #[arg(long, env = "SPOOL_ORPHAN_GRACE_S", global = true)]
    orphan_grace_s: Option<u64>,
    /// Days finished jobs are kept, with their events and spans (default: for ever).
    #[arg(long, env = "SPOOL_RETAIN_DAYS", global = true)]
    retain_days: Option<u32>,
    /// Days the events of finished jobs are kept (default: as long as the jobs).
    #[arg(long, env = "SPOOL_RETAIN_EVENTS_DAYS", global = true)]
    retain_events_days: Option<u32>,
    /// Days the spans of finished jobs are kept (default: as long as the jobs).
    #[arg(long, env = "SPOOL_RETAIN_SPANS_DAYS", global = true)]
    retain_spans_days: Option<u32>,
    /// Seconds between rounds of the orphan sweep and retention pruning (default 600).
    #[arg(long, env = "SPOOL_HOUSEKEEPING_INTERVAL_S", global = true)]
    housekeeping_interval_s: Option<u64>,
}

impl StorageArgs {
    /// Copies the flags given into `over`.
    pub fn apply(&self, over: &mut Overrides) {
        over.blob_url.clone_from(&self.blob_url);
        over.max_upload_bytes = self.max_upload_bytes;
        over.offload_bytes = self.offload_bytes;
        over.orphan_grace_s = self.orphan_grace_s;
        over.retain_days = self.retain_days;
        over.retain_events_days = self.retain_events_days;
        over.retain_spans_days = self.retain_spans_days;
        over.housekeeping_interval_s = self.housekeeping_interval_s;
    }
}

/// The orphan sweep and retention pruning, running in this process until stopped.
pub struct Duties {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Duties {
    /// Starts the duties' loop (see `spool::housekeeping`).
    pub fn start(svc: &Services, s: &Settings) -> Self {
        let stop = CancellationToken::new();
        let task = spool::housekeeping::start(
            svc.pool.clone(),
            s.blobs.clone(),
            s.housekeeping.clone(),
            stop.clone(),
        );
        Self { stop, task }
    }

    /// Stops the loop and waits for a round under way to end.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
