//! The durable event log of every job: fenced appends, the coalescing writer handlers use, reads
//! after a cursor, and the process's single LISTEN connection that wakes live readers.
//!
//! The log, not a NOTIFY payload, is the source of truth: a notify only says "read again". This
//! module owns `job_events`; it must not change job state (that is the queue's).

pub mod hub;
pub mod log;
pub mod pump;
pub mod writer;

pub use hub::Hub;
pub use log::{Event, NewEvent};
pub use writer::{EventSink, EventWriter};
