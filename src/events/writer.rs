//! The coalescing writer behind handlers' `progress` and `emit`. One writer per process gathers
//! the events of every running job and writes them in batched statements, each job's part fenced
//! by its lease. Every job is written at most once per window (30 ms unless configured), in its
//! own phase of it: the running jobs are spread over three phases, so each statement carries a
//! third of them and their readers are served a third of a window apart rather than all in one
//! burst. A job's first events and a closing job's last ones go out at the next phase, whichever
//! it is (the last before the job's state changes). Writes may overlap, up to [`WRITERS`] at
//! once, each on a connection of its own: a write slowed by a busy database does not hold the
//! next phases' writes behind it. A job is never in two writes at once, so its events still
//! commit in order; one whose write outlasted its next phase goes at the first tick after that
//! write instead.
//!
//! The window is what a streamed token waits at worst before its write, so it sets the floor of
//! chunk-to-reader latency: with tokens arriving steadily, 1% of them wait at least 99% of it.
//! 30 ms keeps the p99 under 50 ms with room for the write and the hand-over to the reader; a
//! longer one writes fewer rows. However long, there is one statement per tick (a third of the
//! window), whatever the number of running jobs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::log::{Appended, JobBatch, NewEvent, StreamEvent, append_batch};
use super::pump::Pump;
use crate::store::Blobs;

/// How long a job's events gather before a write unless configured: each job is written at most
/// once a window.
pub const COALESCE: Duration = Duration::from_millis(30);
/// How many phases the window is cut into; a job's phase comes from its id.
const PHASES: u32 = 3;
/// How many writes may be under way at once; give the writer's pool this many connections.
pub const WRITERS: u32 = 4;

/// The process's event writer. Cheap to clone.
#[derive(Clone)]
pub struct EventWriter {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// This process's stream pump, handed each committed stream event at once, so local pages
    /// need not wait for the NOTIFY and a read of what this writer just wrote.
    local: Option<Pump>,
    /// Where event payloads over the offload limit go, before the write that refers to them.
    blobs: Option<Blobs>,
    jobs: Mutex<HashMap<Uuid, Pending>>,
    /// Each job is written at most once per this long.
    window: Duration,
    /// Something is buffered, or a closer waits.
    wake: Notify,
    /// One permit per write under way.
    slots: Arc<Semaphore>,
    stop: CancellationToken,
}

/// One job's buffered events.
struct Pending {
    project_id: Uuid,
    lease_token: Uuid,
    events: Vec<NewEvent>,
    progress: Option<Value>,
    fenced_out: CancellationToken,
    /// Closers waiting for their final flush: told whether the lease was still theirs.
    closers: Vec<oneshot::Sender<bool>>,
    /// This job's events go at the next tick rather than its phase's: its first ones, and ones
    /// whose phase came while its previous write was still under way.
    next_tick: bool,
    /// A write of this job's events is under way; later ones wait for it to end.
    busy: bool,
}

/// Where one running job's events go.
#[derive(Clone)]
pub struct EventSink {
    inner: Arc<Inner>,
    job_id: Uuid,
    project_id: Uuid,
    lease_token: Uuid,
    fenced_out: CancellationToken,
    /// Whether this job ever buffered an event; jobs that never did close without a flush.
    touched: Arc<AtomicBool>,
}

impl EventWriter {
    /// Starts the writer's flush loop on `pool` (best [`WRITERS`] connections of its own, so its
    /// writes never queue behind handlers' queries); `local` is the pump of this process's hub,
    /// `blobs` takes payloads over its offload limit, and `window` is how often at most each job
    /// is written.
    pub fn start(
        pool: PgPool,
        local: Option<Pump>,
        blobs: Option<Blobs>,
        window: Duration,
    ) -> Self {
        let inner = Arc::new(Inner {
            pool,
            local,
            blobs,
            jobs: Mutex::new(HashMap::new()),
            window,
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(WRITERS as usize)),
            stop: CancellationToken::new(),
        });
        tokio::spawn(flush_loop(Arc::clone(&inner)));
        Self { inner }
    }

    /// A sink for one held job; `fenced_out` fires if a write finds the lease gone.
    pub fn sink(
        &self,
        job_id: Uuid,
        project_id: Uuid,
        lease_token: Uuid,
        fenced_out: CancellationToken,
    ) -> EventSink {
        EventSink {
            inner: Arc::clone(&self.inner),
            job_id,
            project_id,
            lease_token,
            fenced_out,
            touched: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops the flush loop (after the runtime has closed every sink).
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }
}

impl EventSink {
    /// Queues an event; it is written within one window and the write's duration.
    pub fn emit(&self, kind: &str, data: Value) {
        self.push(kind, data, None, false);
    }

    /// Queues a text delta. Deltas that only differ in `text` merge with the one queued right
    /// before them, so a burst of tokens becomes one row and one SSE frame.
    pub fn emit_delta(&self, kind: &str, data: Value) {
        self.push(kind, data, None, true);
    }

    /// Queues a `progress` event and records it as the job's current progress.
    pub fn progress(&self, pct: f64, message: &str) {
        let data = serde_json::json!({ "pct": pct.clamp(0.0, 100.0), "message": message });
        self.push("progress", data.clone(), Some(data), false);
    }

    fn push(&self, kind: &str, data: Value, progress: Option<Value>, merge: bool) {
        let Ok(mut jobs) = self.inner.jobs.lock() else {
            return;
        };
        self.touched.store(true, Ordering::Release);
        let pending = jobs.entry(self.job_id).or_insert_with(|| self.empty());
        if merge
            && let Some(last) = pending.events.last_mut()
            && last.kind == kind
            && mergeable(&last.data, &data)
        {
            if let (Some(Value::String(acc)), Some(Value::String(more))) =
                (last.data.get_mut("text"), data.get("text"))
            {
                acc.push_str(more);
            }
        } else {
            pending.events.push(NewEvent {
                kind: kind.to_owned(),
                data,
                at: Utc::now(),
            });
        }
        if progress.is_some() {
            pending.progress = progress;
        }
        drop(jobs);
        self.inner.wake.notify_one();
    }

    fn empty(&self) -> Pending {
        Pending {
            project_id: self.project_id,
            lease_token: self.lease_token,
            events: Vec::new(),
            progress: None,
            fenced_out: self.fenced_out.clone(),
            closers: Vec::new(),
            next_tick: true,
            busy: false,
        }
    }

    /// Writes what is buffered, after any write already under way for this job, and ends the
    /// job's buffer. Returns `false` if the lease was lost (events could not be written).
    pub async fn close(&self) -> bool {
        if !self.touched.load(Ordering::Acquire) {
            return !self.fenced_out.is_cancelled();
        }
        let (tx, rx) = oneshot::channel();
        match self.inner.jobs.lock() {
            Ok(mut jobs) => jobs
                .entry(self.job_id)
                .or_insert_with(|| self.empty())
                .closers
                .push(tx),
            Err(_) => return false,
        }
        self.inner.wake.notify_one();
        rx.await.unwrap_or(false)
    }
}

/// The committed events that belong to a stream, with their cursors. `rows` come ordered by job
/// and seq, which is each job's event order in `batch`.
fn stream_events(batch: &[JobBatch], rows: &[Appended]) -> Vec<(Uuid, StreamEvent)> {
    let mut out = Vec::new();
    let mut jobs: Vec<&JobBatch> = batch.iter().collect();
    jobs.sort_by_key(|b| b.job_id);
    let mut rest = rows;
    for b in jobs {
        let n = rest.iter().take_while(|r| r.job_id == b.job_id).count();
        let (mine, after) = rest.split_at(n);
        rest = after;
        for (row, e) in mine.iter().zip(&b.events) {
            if let (Some(stream), Some(cursor)) = (row.stream_id, row.stream_seq) {
                out.push((
                    stream,
                    StreamEvent {
                        cursor,
                        job_id: b.job_id,
                        seq: row.seq,
                        kind: e.kind.clone(),
                        data: e.data.clone(),
                        at: e.at,
                    },
                ));
            }
        }
    }
    out
}

/// Two deltas merge when everything but their `text` is the same.
fn mergeable(a: &Value, b: &Value) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter().all(|(k, v)| k == "text" || b.get(k) == Some(v))
                && a.get("text").is_some_and(Value::is_string)
        }
        _ => false,
    }
}

async fn flush_loop(inner: Arc<Inner>) {
    let tick = inner.window / PHASES;
    let mut phase = 0;
    let mut next = tokio::time::Instant::now();
    loop {
        if !inner.has_work() {
            tokio::select! {
                _ = inner.stop.cancelled() => return,
                _ = inner.wake.notified() => {}
            }
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        // With every connection writing, this phase waits, and takes whatever gathered meanwhile.
        let permit = tokio::select! {
            _ = inner.stop.cancelled() => return,
            p = Arc::clone(&inner.slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let taken = take(&inner, phase);
        if !taken.is_empty() {
            tokio::spawn(write(Arc::clone(&inner), taken, permit));
        }
        phase = (phase + 1) % PHASES;
        // Ticks run start to start: a slow write shortens the next wait instead of adding to it.
        next = (next + tick).max(tokio::time::Instant::now());
    }
}

/// The phase of the window in which a job's events are written.
pub fn phase_of(job_id: Uuid) -> u32 {
    // The low bits of a UUIDv7 are random, so running jobs spread evenly over the phases.
    (job_id.as_u128() % u128::from(PHASES)) as u32
}

impl Inner {
    /// Whether any job has events buffered or a closer waiting.
    fn has_work(&self) -> bool {
        self.jobs
            .lock()
            .map(|jobs| {
                jobs.values()
                    .any(|p| !p.events.is_empty() || !p.closers.is_empty())
            })
            .unwrap_or(false)
    }
}

/// Takes the buffered events of the jobs in `phase` and of every closing job, leaving out jobs
/// whose earlier write is still under way; marks the others busy until their write ends.
fn take(inner: &Inner, phase: u32) -> Vec<(Uuid, Pending)> {
    let Ok(mut jobs) = inner.jobs.lock() else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for (id, p) in jobs.iter_mut() {
        let due = p.next_tick || phase_of(*id) == phase;
        if p.closers.is_empty() && (p.events.is_empty() || !due) {
            continue;
        }
        if p.busy {
            p.next_tick = true;
        } else {
            ids.push(*id);
        }
    }
    ids.into_iter()
        .filter_map(|id| {
            let p = jobs.get_mut(&id)?;
            let closing = !p.closers.is_empty();
            let taken = Pending {
                project_id: p.project_id,
                lease_token: p.lease_token,
                events: std::mem::take(&mut p.events),
                progress: p.progress.take(),
                fenced_out: p.fenced_out.clone(),
                closers: std::mem::take(&mut p.closers),
                next_tick: false,
                busy: true,
            };
            p.next_tick = false;
            p.busy = true;
            if closing {
                jobs.remove(&id);
            }
            Some((id, taken))
        })
        .collect()
}

/// Writes `taken` in one statement, retrying database errors (the events stay in hand, so
/// nothing is lost on a failed attempt), then frees its jobs for the next write.
async fn write(inner: Arc<Inner>, taken: Vec<(Uuid, Pending)>, _slot: OwnedSemaphorePermit) {
    let mut batch: Vec<JobBatch> = taken
        .iter()
        .map(|(id, p)| JobBatch {
            job_id: *id,
            lease_token: p.lease_token,
            events: p.events.clone(),
            progress: p.progress.clone(),
        })
        .collect();
    if let Some(blobs) = &inner.blobs {
        for (b, (_, p)) in batch.iter_mut().zip(&taken) {
            for e in &mut b.events {
                if crate::store::json_len_over(&e.data, blobs.offload_bytes()) {
                    let data = std::mem::take(&mut e.data);
                    e.data = blobs
                        .offload_or_keep(&inner.pool, p.project_id, b.job_id, data)
                        .await;
                }
            }
        }
    }
    let mut delay = Duration::from_millis(50);
    let started = std::time::Instant::now();
    let written = loop {
        match append_batch(&inner.pool, &batch).await {
            Ok(rows) => {
                tracing::debug!(
                    jobs = batch.len(),
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "events written"
                );
                if let Some(pump) = &inner.local {
                    pump.offer(stream_events(&batch, &rows));
                }
                let mut ids: Vec<Uuid> = rows.iter().map(|r| r.job_id).collect();
                ids.dedup();
                break ids;
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = batch.len(), "event write failed; retrying");
                if inner.stop.is_cancelled() {
                    break Vec::new();
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    };
    if let Ok(mut jobs) = inner.jobs.lock() {
        for (id, _) in &taken {
            if let Some(p) = jobs.get_mut(id) {
                p.busy = false;
            }
        }
    }
    // Events that came in meanwhile, or a closer, may wait on exactly these jobs.
    inner.wake.notify_one();
    for (id, p) in taken {
        // Jobs with nothing to write this time keep whatever their earlier writes found.
        let ours = if p.events.is_empty() {
            !p.fenced_out.is_cancelled()
        } else {
            written.contains(&id)
        };
        if !ours {
            p.fenced_out.cancel();
        }
        for closer in p.closers {
            let _ = closer.send(ours);
        }
    }
}
