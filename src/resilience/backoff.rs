//! Full-jitter exponential backoff: the waits between the tries of one operation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The n-th wait is uniform in `[0, min(base · 2ⁿ, cap))`. Written here because failsafe's
/// `full_jittered` refuses starts under one second, and our retries live inside a
/// few-millisecond deadline.
#[derive(Debug)]
pub(crate) struct FullJitter {
    base_ns: u64,
    cap_ns: u64,
    step: u32,
    rng: u64,
}

impl FullJitter {
    /// Waits doubling from `base`, never above `cap` (a `cap` under `base` caps the first too).
    pub(crate) fn new(base: Duration, cap: Duration) -> Self {
        // Seed from the clock and a per-process counter: jitter needs spread, not secrecy.
        static SEQ: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
        let seed = SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ t;
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        FullJitter {
            // At least 1 ns: the modulo below needs a non-zero bound.
            base_ns: nanos(base).max(1),
            cap_ns: nanos(cap).max(1),
            step: 0,
            rng: seed | 1,
        }
    }
}

impl Iterator for FullJitter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // 2^32 already saturates any base of a nanosecond or more against a sane cap.
        let ceiling = self
            .base_ns
            .saturating_mul(1 << self.step.min(32))
            .min(self.cap_ns);
        self.step = self.step.saturating_add(1);
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Some(Duration::from_nanos(r % ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_its_doubling_cap() {
        let base = Duration::from_micros(100);
        let waits: Vec<Duration> = FullJitter::new(base, base * 8).take(6).collect();
        for (i, w) in waits.iter().enumerate() {
            let cap = base * (1 << i.min(3));
            assert!(*w < cap, "wait {i}: {w:?} >= {cap:?}");
        }
        assert!(waits.iter().any(|w| !w.is_zero()));
    }

    #[test]
    fn a_cap_below_the_base_bounds_every_wait() {
        let cap = Duration::from_micros(10);
        for w in FullJitter::new(Duration::from_millis(1), cap).take(40) {
            assert!(w < cap, "{w:?}");
        }
        // A zero base or cap waits nothing rather than dividing by zero.
        assert!(
            FullJitter::new(Duration::ZERO, Duration::ZERO)
                .take(5)
                .all(|w| w.is_zero())
        );
    }
}
