//! How a handler tells the runtime what became of an attempt.

use std::time::Duration;

/// Why an attempt did not succeed; decides between retry, failure and cancellation.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient: retried with backoff while attempts remain. `retry_after` (e.g. an HTTP
    /// `Retry-After`) overrides the computed backoff when it is longer.
    #[error("{message}")]
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Permanent: the job fails now, whatever attempts remain.
    #[error("{message}")]
    Fail { message: String },
    /// The handler stopped because its cancellation token fired.
    #[error("cancelled")]
    Cancelled,
    /// Not an error: the job waits for children without holding a worker slot, and runs again
    /// (a new claim, the attempt not counted) when the wait is over.
    #[error("suspended")]
    Suspend(crate::queue::Wait),
}

impl JobError {
    /// A transient error with the computed backoff.
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A permanent error: no further attempts.
    pub fn fail(message: impl Into<String>) -> Self {
        Self::Fail {
            message: message.into(),
        }
    }
}
