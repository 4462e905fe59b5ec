//! Retry spacing: exponential with jitter, so a burst of failures does not retry in lockstep.

use std::time::Duration;

/// Backoff settings; `base` doubles each attempt up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// The delay before the attempt after `attempt` (1-based), jittered by ±20%.
    pub fn delay(&self, attempt: i32) -> Duration {
        let exp = attempt.clamp(1, 31) as u32 - 1;
        let raw = self.base.saturating_mul(1u32 << exp.min(20)).min(self.max);
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        raw.mul_f64(jitter)
    }

    /// The delay to use when the failure also carried a server-requested wait (`Retry-After`).
    pub fn delay_honouring(&self, attempt: i32, retry_after: Option<Duration>) -> Duration {
        let own = self.delay(attempt);
        retry_after.map_or(own, |ra| ra.max(own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let d1 = b.delay(1).as_millis();
        let d3 = b.delay(3).as_millis();
        let d9 = b.delay(9).as_millis();
        assert!((80..=120).contains(&d1), "{d1}");
        assert!((320..=480).contains(&d3), "{d3}");
        assert!((800..=1200).contains(&d9), "{d9}");
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let b = Backoff::default();
        let d = b.delay_honouring(1, Some(Duration::from_secs(30)));
        assert_eq!(d, Duration::from_secs(30));
    }
}
