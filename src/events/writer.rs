//! The coalescing writer behind a handler's `progress` and `emit`: at most one database write per
//! job about every 50 ms, every write fenced by the lease, and a final flush before the job's
//! state changes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::log::{NewEvent, append};

/// How long events gather before one write.
pub const COALESCE: Duration = Duration::from_millis(50);

/// Where a running job's events go. Cheap to clone; writes happen in the background.
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    job_id: Uuid,
    lease_token: Uuid,
    /// Fired when a write finds the lease gone, so the runtime stops the handler.
    fenced_out: CancellationToken,
    wake: Notify,
    state: Mutex<Buffer>,
}

#[derive(Default)]
struct Buffer {
    events: Vec<NewEvent>,
    progress: Option<Value>,
    flusher: Option<JoinHandle<()>>,
    closed: bool,
}

impl EventSink {
    /// A sink for one held job; `fenced_out` fires if the lease turns out to be lost.
    pub fn new(
        pool: PgPool,
        job_id: Uuid,
        lease_token: Uuid,
        fenced_out: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                job_id,
                lease_token,
                fenced_out,
                wake: Notify::new(),
                state: Mutex::new(Buffer::default()),
            }),
        }
    }

    /// Queues an event; it is written within about 50 ms. Ignored after [`close`](Self::close).
    pub fn emit(&self, kind: &str, data: Value) {
        self.push(kind, data, None);
    }

    /// Queues a `progress` event and records it as the job's current progress.
    pub fn progress(&self, pct: f64, message: &str) {
        let data = serde_json::json!({ "pct": pct.clamp(0.0, 100.0), "message": message });
        self.push("progress", data.clone(), Some(data));
    }

    fn push(&self, kind: &str, data: Value, progress: Option<Value>) {
        let Ok(mut buf) = self.inner.state.lock() else {
            return;
        };
        if buf.closed {
            return;
        }
        buf.events.push(NewEvent {
            kind: kind.to_owned(),
            data,
            at: Utc::now(),
        });
        if progress.is_some() {
            buf.progress = progress;
        }
        if buf.flusher.is_none() {
            let inner = Arc::clone(&self.inner);
            buf.flusher = Some(tokio::spawn(flush_loop(inner)));
        }
        drop(buf);
        self.inner.wake.notify_one();
    }

    /// Stops accepting events and writes what is buffered. Returns `false` if the lease was lost
    /// (some events could not be written because the job is no longer ours).
    pub async fn close(&self) -> bool {
        let flusher = match self.inner.state.lock() {
            Ok(mut buf) => {
                buf.closed = true;
                buf.flusher.take()
            }
            Err(_) => None,
        };
        self.inner.wake.notify_one();
        if let Some(handle) = flusher {
            let _ = handle.await;
        }
        !self.inner.fenced_out.is_cancelled()
    }
}

async fn flush_loop(inner: Arc<Inner>) {
    loop {
        inner.wake.notified().await;
        let closed = inner.state.lock().map(|b| b.closed).unwrap_or(true);
        if !closed {
            // Let a burst of deltas gather into one write.
            tokio::select! {
                _ = tokio::time::sleep(COALESCE) => {}
                _ = wait_closed(&inner) => {}
            }
        }
        let (events, progress, closed) = match inner.state.lock() {
            Ok(mut b) => (std::mem::take(&mut b.events), b.progress.take(), b.closed),
            Err(_) => return,
        };
        if !events.is_empty() && !write(&inner, &events, progress.as_ref()).await {
            inner.fenced_out.cancel();
            return;
        }
        if closed {
            return;
        }
    }
}

async fn wait_closed(inner: &Inner) {
    loop {
        inner.wake.notified().await;
        if inner.state.lock().map(|b| b.closed).unwrap_or(true) {
            return;
        }
    }
}

/// Writes one batch, retrying database errors while the lease may still be ours; `false` means
/// the fence rejected it.
async fn write(inner: &Inner, events: &[NewEvent], progress: Option<&Value>) -> bool {
    let mut delay = Duration::from_millis(50);
    for _ in 0..8 {
        match append(
            &inner.pool,
            inner.job_id,
            inner.lease_token,
            events,
            progress,
        )
        .await
        {
            Ok(Some(_)) => return true,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(job_id = %inner.job_id, error = %e, "event write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    false
}
