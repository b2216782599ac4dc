//! `RetryConfig`: how many tries an L2 operation gets, which failures are tried again, and the backoff between tries.

use std::num::NonZeroU32;
use std::time::Duration;

use super::backoff::FullJitter;
use crate::error::Error;

/// Retries of one L2 operation. Every retry happens inside the operation's deadline
/// (`op_timeout`): a retry never makes a caller wait longer, it only uses the time left.
///
/// Only failures [`Error::is_retryable`] says may pass (a timeout, a dead or refused
/// connection) are tried again, and only for idempotent operations — which every L2 operation
/// is (reads, `UNLINK`, versioned writes).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Tries per operation, the first included (1 = no retry; `CACHE_RETRY_MAX_TRIES`).
    pub max_tries: NonZeroU32,
    /// Bound of the first wait: full jitter, a random wait in `[0, backoff)`, the bound
    /// doubling per try (`CACHE_RETRY_BACKOFF_US`). Default 200 µs: a loopback round trip is
    /// ~25 µs, and three tries must fit in the default 5 ms deadline.
    pub backoff: Duration,
    /// Largest bound a wait can reach however many tries (`CACHE_RETRY_BACKOFF_CAP_US`);
    /// `None` (the default) means 8 × `backoff`, so the bound doubles three times.
    pub backoff_cap: Option<Duration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_tries: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            backoff: Duration::from_micros(200),
            backoff_cap: None,
        }
    }
}

impl RetryConfig {
    /// Whether the failure of try number `tries` (1-based) is tried again.
    #[inline]
    pub(crate) fn retries(&self, error: &Error, tries: u32) -> bool {
        error.is_retryable() && tries < self.max_tries.get()
    }

    /// The largest bound a wait reaches.
    pub(crate) fn cap(&self) -> Duration {
        self.backoff_cap.unwrap_or(self.backoff.saturating_mul(8))
    }

    /// The waits before the second, third, … tries.
    pub(crate) fn waits(&self) -> FullJitter {
        FullJitter::new(self.backoff, self.cap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_failures_are_retried_and_only_up_to_max_tries() {
        let r = RetryConfig::default();
        let timeout = Error::Timeout {
            op: "get",
            after: Duration::from_millis(5),
        };
        assert!(r.retries(&timeout, 1));
        assert!(r.retries(&timeout, 2));
        assert!(!r.retries(&timeout, 3), "three tries by default");
        let invalid = Error::InvalidValue {
            reason: "bad".to_owned(),
        };
        assert!(!r.retries(&invalid, 1), "a caller's mistake is not retried");
        assert!(!r.retries(&Error::BreakerOpen, 1));
    }

    #[test]
    fn the_default_backoff_doubles_three_times() {
        let r = RetryConfig::default();
        assert_eq!(r.cap(), Duration::from_micros(1600));
        for w in r.waits().take(10) {
            assert!(w < r.cap());
        }
    }
}
