//! The circuit breaker (failsafe) and retry policy around every Redis operation: L2 fails fast, the patterns decide where to go.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use failsafe::backoff::{self, Constant};
use failsafe::failure_policy::{ConsecutiveFailures, SuccessRateOverTimeWindow};
use failsafe::{FailurePolicy, Instrument, StateMachine};
use tokio::sync::Notify;

/// When the breaker opens.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BreakerPolicy {
    /// Open after this many consecutive failures (timeouts count).
    ConsecutiveFailures(u32),
    /// Open when the failure rate over `window` exceeds `max_failure_rate` (0..1), once at
    /// least `min_requests` requests were seen in the window.
    FailureRate {
        /// Highest tolerated failure rate, e.g. 0.5.
        max_failure_rate: f64,
        /// Requests needed in the window before the rate counts.
        min_requests: u32,
        /// The window the rate is measured over.
        window: Duration,
    },
}

/// Settings of the circuit breaker and retries.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// When to open.
    pub policy: BreakerPolicy,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Deadline of one probe (`PING`), and of each step of the recovery replay.
    pub probe_timeout: Duration,
    /// Tries per operation (1 = no retry). Retries happen only inside the operation's deadline.
    pub max_tries: u32,
    /// First retry backoff (full jitter: a random wait in `[0, backoff)`, doubling per try).
    pub retry_backoff: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            policy: BreakerPolicy::ConsecutiveFailures(5),
            open_for: Duration::from_secs(30),
            probe_timeout: Duration::from_millis(50),
            max_tries: 3,
            retry_backoff: Duration::from_micros(200),
        }
    }
}

/// The breaker's state as callers see it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Redis is trusted; operations go through.
    Closed,
    /// Redis is not used; operations fail at once with `BreakerOpen`.
    Open,
    /// The probe is running (a `PING`, then the dirty-log replay); callers still get
    /// `BreakerOpen` until it succeeds, so nothing reads L2 before it is cleaned.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            CLOSED => BreakerState::Closed,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Breaker figures for reports.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSnapshot {
    /// Current state.
    pub state: BreakerState,
    /// Times it opened (once per outage: re-opening after a failed probe is not counted).
    pub opened: u64,
    /// Times it closed again.
    pub closed: u64,
    /// Operations refused while open.
    pub rejected: u64,
    /// Probes sent.
    pub probes: u64,
}

/// The failsafe policy: one of the two, chosen by configuration.
#[derive(Debug)]
enum Policy {
    Consecutive(ConsecutiveFailures<Constant>),
    Rate(SuccessRateOverTimeWindow<Constant>),
}

impl FailurePolicy for Policy {
    fn record_success(&mut self) {
        match self {
            Policy::Consecutive(p) => p.record_success(),
            Policy::Rate(p) => p.record_success(),
        }
    }

    fn mark_dead_on_failure(&mut self) -> Option<Duration> {
        match self {
            Policy::Consecutive(p) => p.mark_dead_on_failure(),
            Policy::Rate(p) => p.mark_dead_on_failure(),
        }
    }

    fn revived(&mut self) {
        match self {
            Policy::Consecutive(p) => p.revived(),
            Policy::Rate(p) => p.revived(),
        }
    }
}

/// Mirrors failsafe's transitions into an atomic (so the hot path reads one byte), counts and
/// logs them, and wakes the prober when the breaker opens.
#[derive(Debug, Clone)]
struct Mirror(Arc<MirrorInner>);

#[derive(Debug)]
struct MirrorInner {
    state: AtomicU8,
    opened: AtomicU64,
    closed: AtomicU64,
    rejected: AtomicU64,
    probes: AtomicU64,
    wake: Notify,
}

impl Instrument for Mirror {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        let m = &self.0;
        let was = m.state.swap(OPEN, Ordering::AcqRel);
        metrics::counter!("mdcache_breaker_transitions_total", "to" => "open").increment(1);
        metrics::gauge!("mdcache_breaker_state").set(f64::from(OPEN));
        if was == CLOSED {
            // Counted once per outage; a failed probe re-opens without counting again.
            m.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("circuit breaker opened: Redis is not used until a probe succeeds");
        } else {
            tracing::debug!("breaker probe failed; open again");
        }
        m.wake.notify_one();
    }

    fn on_half_open(&self) {
        let m = &self.0;
        m.state.store(HALF_OPEN, Ordering::Release);
        metrics::counter!("mdcache_breaker_transitions_total", "to" => "half_open").increment(1);
        metrics::gauge!("mdcache_breaker_state").set(f64::from(HALF_OPEN));
        tracing::info!("circuit breaker half-open: probing Redis");
    }

    fn on_closed(&self) {
        let m = &self.0;
        // failsafe reports the initial Closed state at construction; count real closings only.
        if m.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            m.closed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("mdcache_breaker_transitions_total", "to" => "closed").increment(1);
            tracing::info!("circuit breaker closed: Redis trusted again");
        }
        metrics::gauge!("mdcache_breaker_state").set(f64::from(CLOSED));
    }
}

/// The circuit breaker around the Redis tier.
#[derive(Debug)]
pub(crate) struct Breaker {
    machine: StateMachine<Policy, Mirror>,
    mirror: Mirror,
    pub(crate) config: BreakerConfig,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        let open = backoff::constant(config.open_for);
        let policy = match config.policy {
            BreakerPolicy::ConsecutiveFailures(n) => Policy::Consecutive(
                failsafe::failure_policy::consecutive_failures(n.max(1), open),
            ),
            BreakerPolicy::FailureRate {
                max_failure_rate,
                min_requests,
                window,
            } => Policy::Rate(failsafe::failure_policy::success_rate_over_time_window(
                (1.0 - max_failure_rate).clamp(0.0, 1.0),
                min_requests,
                window,
                open,
            )),
        };
        let mirror = Mirror(Arc::new(MirrorInner {
            state: AtomicU8::new(CLOSED),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            wake: Notify::new(),
        }));
        Breaker {
            machine: StateMachine::new(policy, mirror.clone()),
            mirror,
            config,
        }
    }

    /// The state callers see.
    #[inline]
    pub(crate) fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.mirror.0.state.load(Ordering::Acquire))
    }

    /// Whether a caller's operation may use Redis now. Only `Closed` admits callers: the
    /// half-open probe is mdcache's own.
    #[inline]
    pub(crate) fn admit(&self) -> bool {
        if self.mirror.0.state.load(Ordering::Acquire) == CLOSED {
            true
        } else {
            self.mirror.0.rejected.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Records an operation that reached Redis and got an answer.
    #[inline]
    pub(crate) fn success(&self) {
        self.machine.on_success();
    }

    /// Records a failure that says Redis is unhealthy (a timeout, a dead connection).
    pub(crate) fn failure(&self) {
        self.machine.on_error();
    }

    /// Waits until the breaker opens (returns at once if it is not closed).
    pub(crate) async fn opened(&self) {
        loop {
            let notified = self.mirror.0.wake.notified();
            if self.state() != BreakerState::Closed {
                return;
            }
            notified.await;
        }
    }

    /// Starts a probe once the open period is over: moves failsafe to half-open. Returns
    /// false while the open period is still running.
    pub(crate) fn begin_probe(&self) -> bool {
        if self.state() == BreakerState::HalfOpen {
            return true;
        }
        // failsafe moves Open → HalfOpen inside is_call_permitted once the period is over.
        let permitted = self.machine.is_call_permitted();
        if permitted {
            self.mirror.0.probes.fetch_add(1, Ordering::Relaxed);
        }
        permitted && self.state() == BreakerState::HalfOpen
    }

    /// The probe and recovery succeeded: close.
    pub(crate) fn probe_succeeded(&self) {
        self.machine.on_success();
    }

    /// The probe or recovery failed: open again for another period.
    pub(crate) fn probe_failed(&self) {
        self.machine.on_error();
    }

    pub(crate) fn snapshot(&self) -> BreakerSnapshot {
        let m = &self.mirror.0;
        BreakerSnapshot {
            state: self.state(),
            opened: m.opened.load(Ordering::Relaxed),
            closed: m.closed.load(Ordering::Relaxed),
            rejected: m.rejected.load(Ordering::Relaxed),
            probes: m.probes.load(Ordering::Relaxed),
        }
    }

    /// Backoff waits between tries: full jitter, doubling from `retry_backoff`.
    pub(crate) fn retry_waits(&self) -> FullJitter {
        FullJitter::new(self.config.retry_backoff)
    }
}

/// Full-jitter exponential backoff: the n-th wait is uniform in `[0, base · 2ⁿ)`, capped at
/// `base · 8`. Written here because failsafe's `full_jittered` refuses starts under one
/// second, and our retries live inside a few-millisecond deadline.
#[derive(Debug)]
pub(crate) struct FullJitter {
    base_ns: u64,
    step: u32,
    rng: u64,
}

impl FullJitter {
    fn new(base: Duration) -> Self {
        // Seed from the clock and a per-process counter: jitter needs spread, not secrecy.
        static SEQ: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        let seed = SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ t;
        FullJitter {
            base_ns: u64::try_from(base.as_nanos()).unwrap_or(u64::MAX).max(1),
            step: 0,
            rng: seed | 1,
        }
    }
}

impl Iterator for FullJitter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let cap = self.base_ns.saturating_mul(1 << self.step.min(3));
        self.step += 1;
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Some(Duration::from_nanos(r % cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration) -> Breaker {
        Breaker::new(BreakerConfig {
            policy: BreakerPolicy::ConsecutiveFailures(3),
            open_for,
            ..BreakerConfig::default()
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_rejects() {
        let b = breaker(Duration::from_secs(60));
        b.failure();
        b.failure();
        b.success(); // resets the run
        b.failure();
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.admit());
        assert!(!b.begin_probe(), "probe before the open period is over");
        let s = b.snapshot();
        assert_eq!((s.opened, s.closed, s.rejected), (1, 0, 1));
    }

    #[test]
    fn a_successful_probe_closes_and_a_failed_one_reopens() {
        let b = breaker(Duration::ZERO);
        for _ in 0..3 {
            b.failure();
        }
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(2));
        assert!(b.begin_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.admit(), "callers wait while the probe runs");
        b.probe_failed();
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(2));
        assert!(b.begin_probe());
        b.probe_succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit());
        let s = b.snapshot();
        assert_eq!((s.opened, s.closed, s.probes), (1, 1, 2));
    }

    #[test]
    fn full_jitter_stays_under_its_doubling_cap() {
        let waits: Vec<Duration> = FullJitter::new(Duration::from_micros(100))
            .take(6)
            .collect();
        for (i, w) in waits.iter().enumerate() {
            let cap = Duration::from_micros(100) * (1 << i.min(3));
            assert!(*w < cap, "wait {i}: {w:?} >= {cap:?}");
        }
        assert!(waits.iter().any(|w| !w.is_zero()));
    }

    #[test]
    fn the_failure_rate_policy_opens_too() {
        // failsafe measures the rate only once a whole window (whole seconds) has passed.
        let b = Breaker::new(BreakerConfig {
            policy: BreakerPolicy::FailureRate {
                max_failure_rate: 0.5,
                min_requests: 4,
                window: Duration::from_secs(1),
            },
            ..BreakerConfig::default()
        });
        for _ in 0..100 {
            b.failure();
            if b.state() == BreakerState::Open {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(b.state(), BreakerState::Open);
    }
}
