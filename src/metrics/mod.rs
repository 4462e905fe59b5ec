//! Process-local metrics: what this process did (attempts claimed, outcomes written, rescues,
//! cancels, LLM usage) and how long it took (claim latency, job duration), rendered in the
//! Prometheus text format by [`render::Exposition`] for `GET /metrics`.
//!
//! Everything here is a global of the process, recorded through free functions so any layer can
//! count without threading a handle through. The job hot path costs a few relaxed atomic adds and
//! one read-locked map lookup per job; LLM usage (a few calls a second) takes a mutex. Label sets
//! that come from data (kinds, models) are capped, so a runaway producer cannot grow the
//! exposition without bound: past the cap, new values are counted under `other`.

pub mod histogram;
pub mod render;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

use uuid::Uuid;

pub use histogram::{Histogram, Snapshot};

use crate::llm::types::Usage;
use crate::queue::Finish;
use crate::queue::model::Outcome;

/// Claim-latency buckets (seconds): a healthy queue claims within milliseconds; a backlog, minutes.
pub const CLAIM_LATENCY_BOUNDS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Job-duration buckets (seconds): from a `noop` to an hour-long agent turn.
pub const DURATION_BOUNDS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];
/// Most distinct kinds (or models) given their own label value.
const MAX_LABELS: usize = 500;
/// The label value for everything past [`MAX_LABELS`].
pub const OTHER: &str = "other";

/// How an attempt's written finish ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeLabel {
    Succeeded,
    /// Back to `queued` for another attempt.
    Retried,
    Failed,
    Cancelled,
    /// Handed back on shutdown, the attempt not counted.
    Released,
}

impl OutcomeLabel {
    /// Every label, in exposition order.
    pub const ALL: [Self; 5] = [
        Self::Succeeded,
        Self::Retried,
        Self::Failed,
        Self::Cancelled,
        Self::Released,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retried => "retried",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Released => "released",
        }
    }

    fn of(o: &Outcome) -> Self {
        match o {
            Outcome::Succeeded(_) => Self::Succeeded,
            Outcome::Retry { .. } => Self::Retried,
            Outcome::Failed(_) => Self::Failed,
            Outcome::Cancelled(_) => Self::Cancelled,
            Outcome::Released => Self::Released,
        }
    }
}

/// The timing histograms of one job kind.
pub struct KindMetrics {
    /// From when the job became ready to its claim.
    pub claim_latency: Histogram,
    /// From dispatch to the handler's end (its finish handed to the completer).
    pub duration: Histogram,
}

/// Tokens and cost of one model's calls.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LlmTotals {
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_usd: f64,
}

static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
static OUTCOMES: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
static RESCUES: AtomicU64 = AtomicU64::new(0);
static CANCELS: AtomicU64 = AtomicU64::new(0);
static KINDS: LazyLock<RwLock<HashMap<Box<str>, Arc<KindMetrics>>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));
static LLM: LazyLock<Mutex<BTreeMap<String, LlmTotals>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// The histograms of `kind`, created on first use. The common case is a read lock and a lookup.
pub fn kind(kind: &str) -> Arc<KindMetrics> {
    // A poisoned lock still holds consistent atomics: keep using it.
    if let Some(k) = KINDS.read().unwrap_or_else(|e| e.into_inner()).get(kind) {
        return Arc::clone(k);
    }
    let mut map = KINDS.write().unwrap_or_else(|e| e.into_inner());
    let key = if map.len() >= MAX_LABELS && !map.contains_key(kind) {
        OTHER
    } else {
        kind
    };
    Arc::clone(map.entry(key.into()).or_insert_with(|| {
        Arc::new(KindMetrics {
            claim_latency: Histogram::new(&CLAIM_LATENCY_BOUNDS),
            duration: Histogram::new(&DURATION_BOUNDS),
        })
    }))
}

/// Records how long a job of `kind` waited between becoming ready and being claimed.
pub fn observe_claim_latency(kind_name: &str, waited: Duration) {
    kind(kind_name).claim_latency.observe(waited);
}

/// Records how long one attempt of a job of `kind` ran.
pub fn observe_job_duration(kind_name: &str, ran: Duration) {
    kind(kind_name).duration.observe(ran);
}

/// Counts attempts this process claimed.
pub fn count_attempts(n: u64) {
    ATTEMPTS.fetch_add(n, Relaxed);
}

/// Counts the finishes of `batch` the database applied (`applied` holds their ids); finishes the
/// lease fence rejected belong to another attempt and are not this process's outcomes.
pub fn count_written(batch: &[Finish], applied: &[Uuid]) {
    let mut n = [0u64; 5];
    if applied.len() == batch.len() {
        // Every finish applied (the usual case): no set to build.
        batch
            .iter()
            .for_each(|f| n[OutcomeLabel::of(&f.outcome) as usize] += 1);
    } else {
        let applied: HashSet<&Uuid> = applied.iter().collect();
        batch
            .iter()
            .filter(|f| applied.contains(&f.id))
            .for_each(|f| n[OutcomeLabel::of(&f.outcome) as usize] += 1);
    }
    for (counter, n) in OUTCOMES.iter().zip(n) {
        if n > 0 {
            counter.fetch_add(n, Relaxed);
        }
    }
}

/// Counts jobs the maintenance loop rescued from lapsed leases.
pub fn count_rescues(n: u64) {
    RESCUES.fetch_add(n, Relaxed);
}

/// Counts one cancel that stopped a job or asked its worker to.
pub fn count_cancel() {
    CANCELS.fetch_add(1, Relaxed);
}

/// Records one LLM call's usage and cost (USD, from `ModelConfig::cost`) under `model`.
pub fn record_llm(model: &str, usage: &Usage, cost_usd: f64) {
    let mut map = LLM.lock().unwrap_or_else(|e| e.into_inner());
    let key = if map.len() >= MAX_LABELS && !map.contains_key(model) {
        OTHER
    } else {
        model
    };
    // Look up by &str first so the common case allocates nothing.
    let t = match map.get_mut(key) {
        Some(t) => t,
        None => map.entry(key.to_owned()).or_default(),
    };
    t.calls += 1;
    t.input_tokens += usage.input_tokens;
    t.output_tokens += usage.output_tokens;
    t.cache_read_tokens += usage.cache_read_tokens;
    t.cache_write_tokens += usage.cache_write_tokens;
    t.reasoning_tokens += usage.reasoning_tokens;
    if cost_usd.is_finite() && cost_usd > 0.0 {
        t.cost_usd += cost_usd;
    }
}

/// The process's counters at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    pub attempts: u64,
    /// Written outcomes, indexed like [`OutcomeLabel::ALL`].
    pub outcomes: [u64; 5],
    pub rescues: u64,
    pub cancels: u64,
}

impl Counters {
    /// Written outcomes of one label.
    pub fn outcome(&self, o: OutcomeLabel) -> u64 {
        self.outcomes[o as usize]
    }

    /// Attempts that ended in an error: retried or failed.
    pub fn failures(&self) -> u64 {
        self.outcome(OutcomeLabel::Retried) + self.outcome(OutcomeLabel::Failed)
    }
}

/// The counters now.
pub fn counters() -> Counters {
    Counters {
        attempts: ATTEMPTS.load(Relaxed),
        outcomes: std::array::from_fn(|i| OUTCOMES[i].load(Relaxed)),
        rescues: RESCUES.load(Relaxed),
        cancels: CANCELS.load(Relaxed),
    }
}

/// Every kind's histograms, sorted by kind.
pub fn kinds() -> Vec<(String, Arc<KindMetrics>)> {
    let map = KINDS.read().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = map
        .iter()
        .map(|(k, m)| (k.to_string(), Arc::clone(m)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Every model's LLM totals, sorted by model.
pub fn llm() -> Vec<(String, LlmTotals)> {
    let map = LLM.lock().unwrap_or_else(|e| e.into_inner());
    map.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llm_usage_adds_up_per_model() {
        let u = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: 3,
            cache_write_tokens: 2,
            reasoning_tokens: 1,
        };
        record_llm("unit-test-model", &u, 0.5);
        record_llm("unit-test-model", &u, 0.25);
        let t = llm()
            .into_iter()
            .find(|(m, _)| m == "unit-test-model")
            .map(|(_, t)| t)
            .unwrap_or_default();
        assert_eq!(t.calls, 2);
        assert_eq!(t.input_tokens, 20);
        assert_eq!(t.reasoning_tokens, 2);
        assert!((t.cost_usd - 0.75).abs() < 1e-12);
    }
}
