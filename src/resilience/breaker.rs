//! `CircuitBreaker` over failsafe: when L2 is used at all, the probe's admission and outcome, counts and a watch of the state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use failsafe::backoff::{self, Constant};
use failsafe::failure_policy::{ConsecutiveFailures, SuccessRateOverTimeWindow};
use failsafe::{FailurePolicy, Instrument, StateMachine};
use tokio::sync::watch;

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

impl BreakerPolicy {
    /// The count `CACHE_BREAKER_FAILURES` sets: the consecutive failures that open, or the
    /// requests a failure-rate window needs.
    pub(crate) fn failures(&self) -> u32 {
        match *self {
            BreakerPolicy::ConsecutiveFailures(n) => n,
            BreakerPolicy::FailureRate { min_requests, .. } => min_requests,
        }
    }

    /// The same policy with that count replaced (so the count and the choice of policy can
    /// be set in either order).
    pub(crate) fn with_failures(self, n: u32) -> Self {
        match self {
            BreakerPolicy::ConsecutiveFailures(_) => BreakerPolicy::ConsecutiveFailures(n),
            BreakerPolicy::FailureRate {
                max_failure_rate,
                window,
                ..
            } => BreakerPolicy::FailureRate {
                max_failure_rate,
                min_requests: n,
                window,
            },
        }
    }
}

/// Settings of the circuit breaker and of its probe. Retries are
/// [`RetryConfig`](crate::RetryConfig)'s.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// When to open (`CACHE_BREAKER_FAILURES`, `CACHE_BREAKER_FAILURE_RATE`,
    /// `CACHE_BREAKER_WINDOW_MS`).
    pub policy: BreakerPolicy,
    /// How long it stays open before probing (`CACHE_BREAKER_OPEN_MS`).
    pub open_for: Duration,
    /// Deadline of one probe's connection, and of each step of the recovery replay
    /// (`CACHE_PROBE_TIMEOUT_MS`).
    pub probe_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            policy: BreakerPolicy::ConsecutiveFailures(5),
            open_for: Duration::from_secs(30),
            probe_timeout: Duration::from_millis(50),
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
    /// Failures not counted toward opening because the operation had started before the
    /// last counted failure was seen: one stall (of Redis, the network or this process) that
    /// times out every operation in flight at once counts once, not once per operation.
    pub overlapping_failures: u64,
    /// Probes sent.
    pub probes: u64,
}

impl BreakerSnapshot {
    /// Several breakers' figures as one (a cluster's shards): counts summed, the least
    /// healthy state (open, then half-open, then closed).
    pub(crate) fn merge(self, other: BreakerSnapshot) -> BreakerSnapshot {
        let rank = |s: BreakerState| match s {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        BreakerSnapshot {
            state: if rank(other.state) > rank(self.state) {
                other.state
            } else {
                self.state
            },
            opened: self.opened + other.opened,
            closed: self.closed + other.closed,
            rejected: self.rejected + other.rejected,
            overlapping_failures: self.overlapping_failures + other.overlapping_failures,
            probes: self.probes + other.probes,
        }
    }
}

/// One shard's breaker on a Redis Cluster ([`Cache::shard_breakers`](crate::Cache::shard_breakers)).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardBreaker {
    /// The lowest hash slot the shard serves: its name, kept across a failover (the replica
    /// promoted serves the same slots), and the `shard` label of the breaker metrics.
    pub first_slot: u16,
    /// The shard's primary (`host:port`) as the cluster last named it; `None` before the
    /// cluster was asked.
    pub primary: Option<String>,
    /// Its breaker.
    pub breaker: BreakerSnapshot,
}

/// The `shard` label of a breaker that guards a whole L2 (one server, or a cluster's
/// operations that span it, like `PING` of every primary).
pub(crate) const ALL_SHARDS: &str = "all";

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

/// Mirrors failsafe's transitions into an atomic (so the hot path reads one byte) and a watch
/// channel (so the prober and `Cache::recovered` wait instead of polling), counts and logs them.
#[derive(Debug, Clone)]
struct Mirror(Arc<MirrorInner>);

#[derive(Debug)]
struct MirrorInner {
    state: AtomicU8,
    opened: AtomicU64,
    closed: AtomicU64,
    rejected: AtomicU64,
    probes: AtomicU64,
    /// The `shard` label of its metrics: `all` for a whole L2 (one server), a cluster
    /// shard's lowest hash slot otherwise.
    shard: String,
    /// Sent after the atomic is stored, on transitions only (never on the hot path). failsafe
    /// calls the instrument under its own lock, so sends arrive in transition order.
    watch: watch::Sender<BreakerState>,
}

impl Instrument for Mirror {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        let m = &self.0;
        let was = m.state.swap(OPEN, Ordering::AcqRel);
        let shard = m.shard.clone();
        metrics::counter!("mdcache_breaker_transitions_total", "to" => "open", "shard" => shard.clone())
            .increment(1);
        metrics::gauge!("mdcache_breaker_state", "shard" => shard).set(f64::from(OPEN));
        if was == CLOSED {
            // Counted once per outage; a failed probe re-opens without counting again.
            m.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(shard = %m.shard, "circuit breaker opened: Redis is not used until a probe succeeds");
        } else {
            tracing::debug!("breaker probe failed; open again");
        }
        m.watch.send_replace(BreakerState::Open);
    }

    fn on_half_open(&self) {
        let m = &self.0;
        m.state.store(HALF_OPEN, Ordering::Release);
        let shard = m.shard.clone();
        metrics::counter!("mdcache_breaker_transitions_total", "to" => "half_open", "shard" => shard.clone())
            .increment(1);
        metrics::gauge!("mdcache_breaker_state", "shard" => shard).set(f64::from(HALF_OPEN));
        tracing::info!(shard = %m.shard, "circuit breaker half-open: probing Redis");
        m.watch.send_replace(BreakerState::HalfOpen);
    }

    fn on_closed(&self) {
        let m = &self.0;
        // failsafe reports the initial Closed state at construction; count real closings only.
        if m.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            m.closed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("mdcache_breaker_transitions_total", "to" => "closed", "shard" => m.shard.clone())
                .increment(1);
            tracing::info!(shard = %m.shard, "circuit breaker closed: Redis trusted again");
            m.watch.send_replace(BreakerState::Closed);
        }
        metrics::gauge!("mdcache_breaker_state", "shard" => m.shard.clone()).set(f64::from(CLOSED));
    }
}

/// The circuit breaker around one L2 (DESIGN §5): closed, callers' operations go through and
/// their outcomes count; open, none does; half-open, only mdcache's own probe runs.
///
/// A failure counts toward opening only when its operation started after the last counted
/// failure was recorded: operations in flight together during one stall are one piece of
/// evidence, so "N consecutive failures" means N operations that each began after the
/// previous failure was seen. A hiccup of a few milliseconds (the host preempting Redis, say)
/// that times out every reader at once does not open the breaker for its whole open period;
/// a dead or hung Redis still does, after N deadlines in a row.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    machine: StateMachine<Policy, Mirror>,
    mirror: Mirror,
    /// Origin of the nanosecond stamps below.
    epoch: Instant,
    /// When the last counted failure was recorded, in ns since `epoch` (0: none yet).
    last_failure: AtomicU64,
    overlapping: AtomicU64,
    /// Whether successes can be skipped while no failure is pending: true for the
    /// consecutive-failures policy, where a success only resets the count; false for the
    /// failure-rate policy, whose window must see every success.
    successes_reset_only: bool,
    /// A failure was counted that no success has reset yet (consecutive policy only).
    unreset: AtomicBool,
    /// How long it stays open before the probe; read by the recovery supervisor.
    open_for: Duration,
    /// The probe's connection deadline and each recovery step's.
    probe_timeout: Duration,
}

impl CircuitBreaker {
    pub(crate) fn new(config: &BreakerConfig) -> Self {
        Self::labelled(config, ALL_SHARDS.to_owned())
    }

    /// A breaker whose metrics carry `shard` as their `shard` label (a cluster shard's).
    pub(crate) fn labelled(config: &BreakerConfig, shard: String) -> Self {
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
            shard,
            watch: watch::Sender::new(BreakerState::Closed),
        }));
        CircuitBreaker {
            machine: StateMachine::new(policy, mirror.clone()),
            mirror,
            epoch: Instant::now(),
            last_failure: AtomicU64::new(0),
            overlapping: AtomicU64::new(0),
            successes_reset_only: matches!(config.policy, BreakerPolicy::ConsecutiveFailures(_)),
            unreset: AtomicBool::new(false),
            open_for: config.open_for,
            probe_timeout: config.probe_timeout,
        }
    }

    /// The state callers see.
    #[inline]
    pub(crate) fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.mirror.0.state.load(Ordering::Acquire))
    }

    /// The state now, and every change after it.
    pub(crate) fn watch(&self) -> watch::Receiver<BreakerState> {
        self.mirror.0.watch.subscribe()
    }

    /// How long the breaker stays open before a probe is admitted.
    pub(crate) fn open_for(&self) -> Duration {
        self.open_for
    }

    /// Deadline of the probe's connection and of each recovery step.
    pub(crate) fn probe_timeout(&self) -> Duration {
        self.probe_timeout
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
    ///
    /// Under the consecutive-failures policy, with the breaker closed and no failure counted
    /// since the last reset, a success changes nothing in failsafe's state machine, so it is
    /// not taken there: that saves every healthy operation a lock that all of them share.
    /// Operations running together have no single order; a success that skips while a
    /// concurrent failure is being counted is ordered before that failure, and the next
    /// success resets it.
    #[inline]
    pub(crate) fn success(&self) {
        if self.successes_reset_only
            && self.mirror.0.state.load(Ordering::Acquire) == CLOSED
            && !self.unreset.load(Ordering::Acquire)
        {
            return;
        }
        // Cleared before failsafe hears of the success: a failure counted after this point
        // sets the flag again after its own `on_error`, so no failure is left unreset.
        self.unreset.store(false, Ordering::Release);
        self.machine.on_success();
    }

    /// Records a failure that says Redis is unhealthy (a timeout, a dead connection) of an
    /// operation that started at `started`; not counted when a failure recorded after that
    /// start was already counted (see the type's documentation).
    pub(crate) fn failure(&self, started: Instant) {
        let stamp = |t: Instant| {
            u64::try_from(t.saturating_duration_since(self.epoch).as_nanos())
                .unwrap_or(u64::MAX)
                .saturating_add(1)
        };
        let began = stamp(started);
        let now = stamp(Instant::now());
        let mut last = self.last_failure.load(Ordering::Acquire);
        loop {
            if began < last {
                self.overlapping.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("mdcache_breaker_overlapping_failures_total").increment(1);
                return;
            }
            match self.last_failure.compare_exchange_weak(
                last,
                now.max(last),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(seen) => last = seen,
            }
        }
        self.machine.on_error();
        // After `on_error`, so the next success resets this failure (see `success`).
        self.unreset.store(true, Ordering::Release);
    }

    /// Waits until the breaker is not closed (returns at once if it is not).
    pub(crate) async fn opened(&self) {
        let mut watch = self.watch();
        // The sender lives in `self`, which outlives this borrow: the wait cannot fail.
        let _ = watch.wait_for(|s| *s != BreakerState::Closed).await;
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

    /// Closes now, open period or not: for a probe that found a new server answering in the
    /// place of the failed one (a cluster shard whose replica was promoted).
    pub(crate) fn close_now(&self) {
        self.mirror.0.probes.fetch_add(1, Ordering::Relaxed);
        self.machine.reset();
    }

    pub(crate) fn snapshot(&self) -> BreakerSnapshot {
        let m = &self.mirror.0;
        BreakerSnapshot {
            state: self.state(),
            opened: m.opened.load(Ordering::Relaxed),
            closed: m.closed.load(Ordering::Relaxed),
            rejected: m.rejected.load(Ordering::Relaxed),
            overlapping_failures: self.overlapping.load(Ordering::Relaxed),
            probes: m.probes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration) -> CircuitBreaker {
        CircuitBreaker::new(&BreakerConfig {
            policy: BreakerPolicy::ConsecutiveFailures(3),
            open_for,
            ..BreakerConfig::default()
        })
    }

    /// The success fast path (no failsafe lock while closed with nothing to reset) must still
    /// reset the count after a failure, and skip nothing that matters.
    #[test]
    fn a_success_resets_the_consecutive_count_and_healthy_successes_change_nothing() {
        let b = breaker(Duration::from_secs(60));
        let fail = || b.failure(Instant::now());
        for _ in 0..1_000 {
            b.success();
        }
        // Two failures, a success, two failures: never three in a row.
        fail();
        fail();
        b.success();
        fail();
        fail();
        assert_eq!(b.state(), BreakerState::Closed);
        // The success after them reset the count, and skipped successes do not undo that.
        b.success();
        b.success();
        fail();
        fail();
        assert_eq!(b.state(), BreakerState::Closed);
        fail();
        assert_eq!(b.state(), BreakerState::Open);
    }

    /// The success fast path is the consecutive policy's only: under the failure-rate policy
    /// every success must reach failsafe, whose rate needs them. (failsafe's rate is a
    /// time-weighted average, so a behavioural test of a skipped success would depend on
    /// timing; the switch that decides it is checked instead.)
    #[test]
    fn only_the_consecutive_policy_skips_successes() {
        let with = |policy| {
            CircuitBreaker::new(&BreakerConfig {
                policy,
                ..BreakerConfig::default()
            })
        };
        assert!(with(BreakerPolicy::ConsecutiveFailures(3)).successes_reset_only);
        let rate = with(BreakerPolicy::FailureRate {
            max_failure_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(1),
        });
        assert!(!rate.successes_reset_only);
    }

    #[test]
    fn failures_of_operations_in_flight_together_count_once() {
        let b = breaker(Duration::from_secs(60));
        // Ten operations that started together and all timed out: one stall.
        let together = Instant::now();
        for _ in 0..10 {
            b.failure(together);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.snapshot().overlapping_failures, 9);
        // Operations that each began after the previous failure was seen: the run goes on
        // from the stall's one failure and opens at the third.
        b.failure(Instant::now());
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure(Instant::now());
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.snapshot().opened, 1);
        assert_eq!(b.snapshot().overlapping_failures, 9);
    }

    #[test]
    fn opens_after_consecutive_failures_and_rejects() {
        let b = breaker(Duration::from_secs(60));
        b.failure(Instant::now());
        b.failure(Instant::now());
        b.success(); // resets the run
        b.failure(Instant::now());
        b.failure(Instant::now());
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure(Instant::now());
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
            b.failure(Instant::now());
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
    fn the_watch_sees_every_transition() {
        let b = breaker(Duration::ZERO);
        let mut w = b.watch();
        assert_eq!(*w.borrow_and_update(), BreakerState::Closed);
        for _ in 0..3 {
            b.failure(Instant::now());
        }
        assert!(w.has_changed().unwrap());
        assert_eq!(*w.borrow_and_update(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(2));
        assert!(b.begin_probe());
        assert_eq!(*w.borrow_and_update(), BreakerState::HalfOpen);
        b.probe_succeeded();
        assert_eq!(*w.borrow_and_update(), BreakerState::Closed);
        // Successes while closed are not transitions.
        b.success();
        assert!(!w.has_changed().unwrap());
    }

    #[tokio::test]
    async fn opened_waits_for_the_breaker_to_open() {
        let b = Arc::new(breaker(Duration::from_secs(60)));
        let waiter = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.opened().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        for _ in 0..3 {
            b.failure(Instant::now());
        }
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the breaker opens")
            .unwrap();
        // Not closed: returns at once.
        b.opened().await;
    }

    #[test]
    fn the_failure_count_survives_a_change_of_policy() {
        let p = BreakerPolicy::ConsecutiveFailures(7);
        assert_eq!(p.failures(), 7);
        let rate = BreakerPolicy::FailureRate {
            max_failure_rate: 0.5,
            min_requests: 2,
            window: Duration::from_secs(1),
        };
        assert_eq!(rate.with_failures(9).failures(), 9);
        assert_eq!(p.with_failures(1), BreakerPolicy::ConsecutiveFailures(1));
    }

    #[test]
    fn the_failure_rate_policy_opens_too() {
        // failsafe measures the rate only once a whole window (whole seconds) has passed.
        let b = CircuitBreaker::new(&BreakerConfig {
            policy: BreakerPolicy::FailureRate {
                max_failure_rate: 0.5,
                min_requests: 4,
                window: Duration::from_secs(1),
            },
            ..BreakerConfig::default()
        });
        for _ in 0..100 {
            b.failure(Instant::now());
            if b.state() == BreakerState::Open {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(b.state(), BreakerState::Open);
    }
}
