//! The injected clock every TTL deadline is read from: the TSC-backed system clock, or a mock in tests.

use std::sync::Arc;
use std::time::Duration;

pub use quanta::Instant;

/// A monotonic clock. Cheap to clone and to read.
///
/// Production code uses [`Clock::system`]: a `quanta` TSC read (~10 ns here, against ~25–35 ns
/// for `std::time::Instant::now()`), which matters because the L1 hit path reads the clock
/// once per hit to check the entry's deadline. Tests use [`Clock::mock`] and move time by hand,
/// so millisecond TTL logic is tested without sleeping.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: quanta::Clock,
}

/// The handle that moves a [`Clock::mock`] clock forward.
#[derive(Clone, Debug)]
pub struct MockClock {
    inner: Arc<quanta::Mock>,
}

impl Clock {
    /// The real monotonic clock.
    pub fn system() -> Self {
        Clock {
            inner: quanta::Clock::new(),
        }
    }

    /// A clock that only moves when the returned [`MockClock`] says so.
    pub fn mock() -> (Self, MockClock) {
        let (inner, mock) = quanta::Clock::mock();
        // A mock starts at zero; move it off zero so `now - ttl` never underflows in tests.
        mock.increment(Duration::from_secs(3600));
        (Clock { inner }, MockClock { inner: mock })
    }

    /// The current instant.
    #[inline]
    pub fn now(&self) -> Instant {
        self.inner.now()
    }
}

/// Longest TTL, negative-cache TTL or stale bound any setting or write may ask for (7 days).
/// Deadlines are instants on a monotonic clock; a bound keeps `now + ttl` far from overflow,
/// and no hot trading state should live longer than this without being rewritten.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Refuses a duration setting above [`MAX_TTL`], naming it.
pub(crate) fn at_most_max_ttl(name: &str, d: Duration) -> crate::error::Result<()> {
    if d > MAX_TTL {
        return Err(crate::error::Error::config(
            name,
            format!(
                "{d:?} is above the maximum of {} ms (7 days)",
                MAX_TTL.as_millis()
            ),
        ));
    }
    Ok(())
}

/// `now + after`, never panicking: `after` is capped at [`MAX_TTL`](MAX_TTL)
/// (a TTL read from Redis can be anything another program wrote), and on overflow the
/// deadline is `now` — already expired, the safe direction for a cache deadline.
#[inline]
pub(crate) fn deadline_after(now: Instant, after: Duration) -> Instant {
    now.checked_add(after.min(MAX_TTL)).unwrap_or(now)
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl MockClock {
    /// Moves the mock clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.inner.increment(by);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_never_overflow() {
        let (clock, _mock) = Clock::mock();
        let now = clock.now();
        let far = deadline_after(now, Duration::from_millis(100_000_000_000_000_000));
        assert_eq!(far - now, MAX_TTL);
        assert_eq!(deadline_after(now, Duration::MAX) - now, MAX_TTL);
        assert_eq!(
            deadline_after(now, Duration::from_millis(5)) - now,
            Duration::from_millis(5)
        );
    }

    #[test]
    fn mock_moves_only_when_told() {
        let (clock, mock) = Clock::mock();
        let a = clock.now();
        assert_eq!(clock.now(), a);
        mock.advance(Duration::from_millis(7));
        assert_eq!(clock.now() - a, Duration::from_millis(7));
    }
}
