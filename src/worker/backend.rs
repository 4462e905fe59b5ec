//! The apalis Backend over our own schema. Claiming happens in the runtime's claim loop, which
//! takes only as many jobs as it has free slots; this backend hands them to apalis one by one.

use std::convert::Infallible;
use std::task::{Context, Poll};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tower::layer::util::Identity;

use crate::queue::model::Outcome;
use crate::queue::{ClaimedJob, Finish};

/// A claimed job with the worker slot it occupies; the slot frees when the handler ends.
pub struct Claimed {
    pub job: ClaimedJob,
    pub slot: OwnedSemaphorePermit,
}

/// Feeds claimed jobs to apalis. The stream ends when the claim loop stops (shutdown).
pub struct SpoolBackend {
    rx: mpsc::Receiver<Claimed>,
    /// Where jobs claimed but never dispatched are handed back on close.
    finishes: mpsc::Sender<Finish>,
}

impl SpoolBackend {
    /// A backend reading from the claim loop's channel.
    pub fn new(rx: mpsc::Receiver<Claimed>, finishes: mpsc::Sender<Finish>) -> Self {
        Self { rx, finishes }
    }
}

impl Backend for SpoolBackend {
    type Task = Task<Claimed>;
    type Error = Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<Claimed>, Infallible>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|c| Ok(Task::new(c))))
    }

    /// Jobs still in the channel were claimed but never started: release them at once instead of
    /// leaving them `running` until their leases lapse.
    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        self.rx.close();
        while let Ok(Claimed { job, .. }) = self.rx.try_recv() {
            let finish = Finish {
                id: job.id,
                lease_token: job.lease_token,
                outcome: Outcome::Released,
                parent_event: None,
            };
            if let Err(mpsc::error::TrySendError::Full(f)) = self.finishes.try_send(finish) {
                let tx = self.finishes.clone();
                tokio::spawn(async move { tx.send(f).await });
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for SpoolBackend {
    type Args = Claimed;
    type Id = ();
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}
