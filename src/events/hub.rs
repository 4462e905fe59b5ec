//! The process's one LISTEN connection. It turns NOTIFYs into in-process wake-ups: claimers wake
//! on new jobs, workers on cancel requests, and live readers (SSE, long polls) on new events of the
//! jobs they follow. A reader costs a map entry here, not a database connection.
//!
//! Notifications can be lost when the connection drops; on reconnect the hub wakes everyone, and
//! every reader also re-reads the log on a short backstop timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::pump::{Batch, Pump};
use crate::queue::{CANCEL_CHANNEL, EVENTS_CHANNEL, JOBS_CHANNEL};

/// Shared handle to the process's listener.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: watch::Sender<u64>,
    cancels: broadcast::Sender<Vec<Uuid>>,
    topics: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    /// Bumped on every reconnect; readers treat it as "anything may have changed".
    epoch: watch::Sender<u64>,
    stop: CancellationToken,
    /// Reads followed streams for every open stream reader of this process at once.
    pump: Pump,
}

/// A live reader's interest in one job's events. Dropping it unsubscribes.
pub struct Subscription {
    hub: Hub,
    topic: Uuid,
    rx: watch::Receiver<u64>,
    epoch: watch::Receiver<u64>,
}

impl Subscription {
    /// Resolves when new events may exist, or after `backstop` at the latest.
    pub async fn changed(&mut self, backstop: Duration) {
        tokio::select! {
            _ = self.rx.changed() => {}
            _ = self.epoch.changed() => {}
            _ = tokio::time::sleep(backstop) => {}
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut topics) = self.hub.inner.topics.lock()
            && let Some(tx) = topics.get(&self.topic)
            && tx.receiver_count() <= 1
        {
            topics.remove(&self.topic);
        }
    }
}

impl Hub {
    /// Connects the LISTEN connection and starts dispatching. Reconnects on its own.
    pub async fn start(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all([JOBS_CHANNEL, CANCEL_CHANNEL, EVENTS_CHANNEL])
            .await?;
        let stop = CancellationToken::new();
        let hub = Self {
            inner: Arc::new(Inner {
                jobs: watch::Sender::new(0),
                cancels: broadcast::Sender::new(1024),
                topics: Mutex::new(HashMap::new()),
                epoch: watch::Sender::new(0),
                pump: Pump::start(pool.clone(), stop.clone()),
                stop,
            }),
        };
        tokio::spawn(hub.clone().run(listener));
        Ok(hub)
    }

    async fn run(self, mut listener: PgListener) {
        loop {
            let next = tokio::select! {
                // A stop closes the pool right after: its errors are not failures to report.
                biased;
                _ = self.inner.stop.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(n)) => self.dispatch(n.channel(), n.payload()),
                // The connection dropped and will be re-established: notifications may be lost.
                Ok(None) => self.wake_all(),
                Err(_) if self.inner.stop.is_cancelled() => return,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                    self.wake_all();
                    tokio::select! {
                        _ = self.inner.stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    fn dispatch(&self, channel: &str, payload: &str) {
        match channel {
            JOBS_CHANNEL => self.inner.jobs.send_modify(|v| *v += 1),
            CANCEL_CHANNEL => {
                let ids: Vec<Uuid> = parse_ids(payload).collect();
                let _ = self.inner.cancels.send(ids);
            }
            EVENTS_CHANNEL => {
                self.inner.pump.mark(parse_marks(payload));
                if let Ok(topics) = self.inner.topics.lock() {
                    for id in parse_ids(payload) {
                        if let Some(tx) = topics.get(&id) {
                            tx.send_modify(|v| *v += 1);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn wake_all(&self) {
        self.inner.pump.mark_all();
        self.inner.jobs.send_modify(|v| *v += 1);
        self.inner.epoch.send_modify(|v| *v += 1);
    }

    /// Follows one job's (or other topic's) events.
    pub fn subscribe(&self, topic: Uuid) -> Subscription {
        let rx = match self.inner.topics.lock() {
            Ok(mut topics) => topics
                .entry(topic)
                .or_insert_with(|| watch::Sender::new(0))
                .subscribe(),
            // A poisoned map only costs liveness: the backstop timer still re-reads.
            Err(_) => watch::Sender::new(0).subscribe(),
        };
        Subscription {
            hub: self.clone(),
            topic,
            rx,
            epoch: self.inner.epoch.subscribe(),
        }
    }

    /// Follows a stream (a chat session) through the process's pump; see [`Pump::follow`].
    pub async fn follow_stream(
        &self,
        stream_id: Uuid,
    ) -> Result<broadcast::Receiver<Batch>, sqlx::Error> {
        self.inner.pump.follow(stream_id).await
    }

    /// The process's stream pump, for an event writer in this process to hand its writes to.
    pub fn pump(&self) -> Pump {
        self.inner.pump.clone()
    }

    /// Wakes when jobs may be ready to claim.
    pub fn job_wakeups(&self) -> watch::Receiver<u64> {
        self.inner.jobs.subscribe()
    }

    /// Cancel requests for running jobs, as job ids.
    pub fn cancel_requests(&self) -> broadcast::Receiver<Vec<Uuid>> {
        self.inner.cancels.subscribe()
    }

    /// How many topics have live readers (for metrics and tests).
    pub fn subscriber_topics(&self) -> usize {
        self.inner.topics.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// How many readers follow job topics (SSE streams, long polls), for metrics.
    pub fn subscribers(&self) -> usize {
        self.inner
            .topics
            .lock()
            .map(|t| t.values().map(|tx| tx.receiver_count()).sum())
            .unwrap_or(0)
    }

    /// Streams the pump follows and how many readers they have, for metrics.
    pub fn followed_streams(&self) -> (usize, usize) {
        self.inner.pump.followed()
    }

    /// Stops the listener task.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }
}

/// The ids of a payload (`id,id@cursor,…`); a stream's `@cursor` is dropped.
fn parse_ids(payload: &str) -> impl Iterator<Item = Uuid> + '_ {
    parse_marks(payload).map(|(id, _)| id)
}

/// The ids of a payload with the cursor a stream has reached, where the writer said so.
fn parse_marks(payload: &str) -> impl Iterator<Item = (Uuid, Option<i64>)> + '_ {
    payload.split(',').filter_map(|item| {
        let (id, cursor) = match item.trim().split_once('@') {
            Some((id, c)) => (id, Some(c.parse().ok()?)),
            None => (item.trim(), None),
        };
        Some((Uuid::parse_str(id).ok()?, cursor))
    })
}
