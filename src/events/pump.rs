//! The stream pump: one reader per process for every followed stream (chat session). When events
//! of followed streams are announced, it reads them for all those streams in one query and fans
//! them out in memory, so an open page costs a channel receiver, not a query per write.
//!
//! Events this process's own writer commits are handed over directly ([`Pump::offer`]) when they
//! continue a stream without a gap; everything else comes from the log.
//!
//! The log stays the source of truth: a follower catches up from the log by its own cursor first,
//! takes the pump's batches after that (dropping what it already has), and falls back to the log
//! again if it lags.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::log::{StreamEvent, read_streams_after, stream_head};

/// Batches a slow follower may fall behind before it must re-read from the log.
const BACKLOG: usize = 256;
/// Rows one pump read takes at most; more simply means another read right away.
const READ_LIMIT: i64 = 5000;
/// A read of every followed stream even without announcements, in case a NOTIFY was lost.
const BACKSTOP: Duration = Duration::from_secs(2);

/// A batch of one stream's new events, in cursor order.
pub type Batch = Arc<Vec<StreamEvent>>;

struct Followed {
    cursor: i64,
    tx: broadcast::Sender<Batch>,
}

#[derive(Default)]
struct State {
    streams: HashMap<Uuid, Followed>,
    dirty: HashSet<Uuid>,
    all_dirty: bool,
}

/// Shared handle to the pump.
#[derive(Clone)]
pub struct Pump {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    state: Mutex<State>,
    wake: Notify,
    stop: CancellationToken,
}

impl Pump {
    /// Starts the pump's read loop.
    pub fn start(pool: PgPool, stop: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            pool,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            stop,
        });
        tokio::spawn(run(Arc::clone(&inner)));
        Self { inner }
    }

    /// Marks streams as having new events, up to the cursor given where it is known; a stream
    /// this pump has already delivered that far stays clean.
    pub fn mark(&self, marks: impl IntoIterator<Item = (Uuid, Option<i64>)>) {
        let mut any = false;
        if let Ok(mut s) = self.inner.state.lock() {
            for (id, upto) in marks {
                let behind = match s.streams.get(&id) {
                    Some(f) => upto.is_none_or(|c| c > f.cursor),
                    None => false,
                };
                if behind {
                    s.dirty.insert(id);
                    any = true;
                }
            }
        }
        if any {
            self.inner.wake.notify_one();
        }
    }

    /// After a LISTEN reconnect: anything may have changed.
    pub fn mark_all(&self) {
        if let Ok(mut s) = self.inner.state.lock() {
            s.all_dirty = true;
        }
        self.inner.wake.notify_one();
    }

    /// Follows a stream: batches of events committed after this call arrive on the receiver.
    pub async fn follow(&self, stream_id: Uuid) -> Result<broadcast::Receiver<Batch>, sqlx::Error> {
        if let Some(rx) = self.existing(stream_id) {
            return Ok(rx);
        }
        // Everything up to the committed head is the follower's to read from the log.
        let head = stream_head(&self.inner.pool, stream_id).await?;
        let Ok(mut s) = self.inner.state.lock() else {
            return Err(sqlx::Error::PoolClosed);
        };
        let entry = s.streams.entry(stream_id).or_insert_with(|| Followed {
            cursor: head,
            tx: broadcast::Sender::new(BACKLOG),
        });
        Ok(entry.tx.subscribe())
    }

    /// Takes events this process has just committed. A followed stream whose next events these
    /// are gets them at once; one that missed something (another process wrote in between) is
    /// left to the log read, which the NOTIFY of that other write triggers anyway.
    pub fn offer(&self, events: Vec<(Uuid, StreamEvent)>) {
        let mut by_stream: Vec<(Uuid, Vec<StreamEvent>)> = Vec::new();
        let mut sorted = events;
        sorted.sort_by_key(|(id, e)| (*id, e.cursor));
        for (id, e) in sorted {
            match by_stream.last_mut() {
                Some((last, events)) if *last == id => events.push(e),
                _ => by_stream.push((id, vec![e])),
            }
        }
        let Ok(mut s) = self.inner.state.lock() else {
            return;
        };
        let mut gap = false;
        for (id, mut events) in by_stream {
            let Some(f) = s.streams.get_mut(&id) else {
                continue;
            };
            events.retain(|e| e.cursor > f.cursor);
            match events.first() {
                None => {}
                Some(first) if first.cursor == f.cursor + 1 => {
                    f.cursor = events.last().map_or(f.cursor, |e| e.cursor);
                    let _ = f.tx.send(Arc::new(events));
                }
                Some(_) => {
                    s.dirty.insert(id);
                    gap = true;
                }
            }
        }
        drop(s);
        if gap {
            self.inner.wake.notify_one();
        }
    }

    /// Streams with live followers and how many followers they have, for metrics. Streams whose
    /// last follower left but that the read loop has not dropped yet are not counted.
    pub fn followed(&self) -> (usize, usize) {
        let Ok(s) = self.inner.state.lock() else {
            return (0, 0);
        };
        s.streams
            .values()
            .map(|f| f.tx.receiver_count())
            .filter(|n| *n > 0)
            .fold((0, 0), |(streams, readers), n| (streams + 1, readers + n))
    }

    fn existing(&self, stream_id: Uuid) -> Option<broadcast::Receiver<Batch>> {
        let s = self.inner.state.lock().ok()?;
        s.streams.get(&stream_id).map(|f| f.tx.subscribe())
    }
}

async fn run(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(BACKSTOP) => {
                if let Ok(mut s) = inner.state.lock() { s.all_dirty = true; }
            }
        }
        loop {
            let wanted: Vec<(Uuid, i64)> = match inner.state.lock() {
                Ok(mut s) => {
                    s.streams.retain(|_, f| f.tx.receiver_count() > 0);
                    let all = std::mem::take(&mut s.all_dirty);
                    let dirty = std::mem::take(&mut s.dirty);
                    s.streams
                        .iter()
                        .filter(|(id, _)| all || dirty.contains(id))
                        .map(|(id, f)| (*id, f.cursor))
                        .collect()
                }
                Err(_) => return,
            };
            if wanted.is_empty() {
                break;
            }
            match read_streams_after(&inner.pool, &wanted, READ_LIMIT).await {
                Ok(rows) => {
                    let full = rows.len() as i64 == READ_LIMIT;
                    deliver(&inner, rows, full);
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stream pump read failed");
                    if let Ok(mut s) = inner.state.lock() {
                        s.dirty.extend(wanted.iter().map(|w| w.0));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

/// Sends each stream its new events and advances its cursor. A truncated read leaves the last
/// stream dirty so the next read continues it.
fn deliver(inner: &Inner, rows: Vec<(Uuid, StreamEvent)>, truncated: bool) {
    let mut by_stream: Vec<(Uuid, Vec<StreamEvent>)> = Vec::new();
    for (id, e) in rows {
        match by_stream.last_mut() {
            Some((last, events)) if *last == id => events.push(e),
            _ => by_stream.push((id, vec![e])),
        }
    }
    let Ok(mut s) = inner.state.lock() else {
        return;
    };
    for (id, mut events) in by_stream {
        if let Some(f) = s.streams.get_mut(&id) {
            // The local writer may have handed over some of these already.
            events.retain(|e| e.cursor > f.cursor);
            if let Some(last) = events.last() {
                f.cursor = last.cursor;
                let _ = f.tx.send(Arc::new(events));
            }
        }
        if truncated {
            s.dirty.insert(id);
        }
    }
}
