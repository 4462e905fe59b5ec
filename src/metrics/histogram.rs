//! A fixed-bucket histogram of durations that records with two relaxed atomic adds and no lock,
//! so the job hot path (tens of thousands of observations a second) pays next to nothing.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Counts of durations in fixed buckets, with their sum.
pub struct Histogram {
    /// Upper bounds in seconds, ascending, as rendered in `le`.
    bounds: &'static [f64],
    /// The same bounds in microseconds, so an observation compares integers.
    bounds_us: Box<[u64]>,
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

/// A point-in-time copy of a histogram, with cumulative bucket counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `(le, cumulative count)` for every finite bound.
    pub buckets: Vec<(f64, u64)>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// Sum of observations in seconds.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            bounds_us: bounds.iter().map(|b| (b * 1e6).round() as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = self
            .bounds_us
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(self.bounds_us.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The counts so far. Concurrent observations may land in the sum but not yet the buckets;
    /// Prometheus tolerates that skew within one scrape.
    pub fn snapshot(&self) -> Snapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (le, n) in self.bounds.iter().zip(self.buckets.iter()) {
            running += n.load(Relaxed);
            buckets.push((*le, running));
        }
        let count = running + self.buckets.last().map_or(0, |b| b.load(Relaxed));
        Snapshot {
            buckets,
            count,
            sum: self.sum_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        static BOUNDS: [f64; 3] = [0.01, 0.1, 1.0];
        let h = Histogram::new(&BOUNDS);
        h.observe(Duration::from_millis(10));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.01, 1), (0.1, 3), (1.0, 3)]);
        assert_eq!(s.count, 4);
        assert!((s.sum - 5.11).abs() < 1e-9, "{}", s.sum);
    }
}
