//! Job kinds and their handlers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use tracing::Instrument;

use super::{JobContext, JobError};

/// What a handler returns: the job's result, or why the attempt failed.
pub type HandlerResult = Result<Value, JobError>;

/// Runs jobs of one kind. Any `Fn(JobContext) -> impl Future<Output = HandlerResult>` is one.
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt.
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, HandlerResult>;
}

impl<F, Fut> Handler for F
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    /// The attempt runs on a task of its own, which would not inherit the caller's span; it is
    /// instrumented with the current one (the worker's `job` span) so the handler's log lines
    /// carry `job_id`, `worker_id` and `trace_id`.
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, HandlerResult> {
        Box::pin(self(ctx).in_current_span())
    }
}

/// Checks a kind's args before anything is stored, so bad args answer 400 at enqueue.
pub type ArgsValidator = fn(&Value) -> Result<(), String>;

struct Kind {
    handler: Arc<dyn Handler>,
    validate: Option<ArgsValidator>,
}

/// The kinds a process knows. The API refuses unknown kinds; workers run the known ones.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: HashMap<String, Arc<Kind>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the handler for `kind`.
    pub fn register(self, kind: &str, handler: impl Handler) -> Self {
        self.insert(kind, Arc::new(handler), None)
    }

    /// Adds a handler together with an args check run at enqueue time.
    pub fn register_validated(
        self,
        kind: &str,
        handler: impl Handler,
        validate: ArgsValidator,
    ) -> Self {
        self.insert(kind, Arc::new(handler), Some(validate))
    }

    fn insert(
        mut self,
        kind: &str,
        handler: Arc<dyn Handler>,
        validate: Option<ArgsValidator>,
    ) -> Self {
        self.kinds
            .insert(kind.to_owned(), Arc::new(Kind { handler, validate }));
        self
    }

    /// The handler for `kind`, if registered.
    pub fn handler(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.kinds.get(kind).map(|k| Arc::clone(&k.handler))
    }

    /// Whether `kind` is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// Runs the kind's args check; `Ok` for kinds without one.
    pub fn validate_args(&self, kind: &str, args: &Value) -> Result<(), String> {
        match self.kinds.get(kind).and_then(|k| k.validate) {
            Some(check) => check(args),
            None => Ok(()),
        }
    }

    /// Registered kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kinds.keys().cloned().collect();
        v.sort();
        v
    }
}
