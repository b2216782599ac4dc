//! `FallbackHandler`: what a read does when Redis is unavailable — source loads behind a concurrency limit, the per-kind stale policy, fallback counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, ErrorKind};

/// Why a read fell back past Redis.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// The breaker was open: Redis was not contacted.
    BreakerOpen,
    /// The Redis operation missed its deadline.
    Timeout,
    /// Redis failed otherwise (connection refused or reset, server error).
    Error,
}

impl FallbackReason {
    /// The reason for an L2 error.
    pub fn of(e: &Error) -> Self {
        match e.kind() {
            ErrorKind::BreakerOpen => FallbackReason::BreakerOpen,
            ErrorKind::Timeout => FallbackReason::Timeout,
            _ => FallbackReason::Error,
        }
    }

    /// `breaker_open`, `timeout` or `error` (the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::BreakerOpen => "breaker_open",
            FallbackReason::Timeout => "timeout",
            FallbackReason::Error => "error",
        }
    }

    fn index(self) -> usize {
        match self {
            FallbackReason::BreakerOpen => 0,
            FallbackReason::Timeout => 1,
            FallbackReason::Error => 2,
        }
    }
}

/// Options of the fallback path.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackOptions {
    /// Most source loads at once (all loads, not only fallbacks: a cold start stampedes too).
    pub max_concurrent_loads: usize,
    /// How long a load waits for a slot before failing with `Overloaded`.
    pub overload_wait: Duration,
    /// Per kind (name like `price`, or key prefix like `book` for both sides): how far past
    /// its TTL a value may be served, marked `Stale`, when both Redis and the source fail.
    /// Kinds not listed fail closed (DESIGN §4 rule 7). At most [`MAX_TTL`](crate::MAX_TTL)
    /// each.
    pub stale_bounds: Vec<(String, Duration)>,
}

impl Default for FallbackOptions {
    fn default() -> Self {
        FallbackOptions {
            max_concurrent_loads: 64,
            overload_wait: Duration::from_millis(50),
            stale_bounds: vec![
                ("price".to_owned(), Duration::from_secs(1)),
                ("book".to_owned(), Duration::from_secs(1)),
            ],
        }
    }
}

impl FallbackOptions {
    /// Checks the options, with an [`Error::Config`] naming the setting: a stale bound above
    /// [`MAX_TTL`](crate::MAX_TTL) (7 days) is refused as `stale_bound(<kind>)`, since the
    /// stale deadline is the value's expiry plus the bound and must not overflow.
    pub fn validate(&self) -> Result<(), Error> {
        for (kind, bound) in &self.stale_bounds {
            crate::clock::at_most_max_ttl(&format!("stale_bound({kind})"), *bound)?;
        }
        Ok(())
    }
}

/// Fallback figures, from [`CacheAside::fallback_stats`](crate::CacheAside::fallback_stats).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FallbackSnapshot {
    /// Reads that fell back, all reasons.
    pub total: u64,
    /// ... because the breaker was open.
    pub breaker_open: u64,
    /// ... because a Redis operation timed out.
    pub timeout: u64,
    /// ... because Redis failed otherwise.
    pub error: u64,
    /// Loads refused because the concurrency limit stayed full past `overload_wait`.
    pub overloaded: u64,
    /// Values served past their TTL (marked `Stale`) because the source failed too.
    pub stale_served: u64,
    /// Total latency of the fallback reads.
    pub latency_total: Duration,
    /// Slowest fallback read.
    pub latency_max: Duration,
}

/// The fallback path shared by a [`CacheAside`](crate::CacheAside)'s reads.
#[derive(Debug)]
pub struct FallbackHandler {
    limiter: Arc<Semaphore>,
    opts: FallbackOptions,
    counts: [AtomicU64; 3],
    latency_ns: AtomicU64,
    latency_max_ns: AtomicU64,
    overloaded: AtomicU64,
    stale_served: AtomicU64,
}

impl FallbackHandler {
    /// A handler with `opts`.
    pub fn new(opts: FallbackOptions) -> Self {
        FallbackHandler {
            limiter: Arc::new(Semaphore::new(opts.max_concurrent_loads.max(1))),
            opts,
            counts: Default::default(),
            latency_ns: AtomicU64::new(0),
            latency_max_ns: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
        }
    }

    /// The options in force.
    pub fn options(&self) -> &FallbackOptions {
        &self.opts
    }

    /// A slot for one source load, waiting at most `overload_wait`; `None` means overloaded.
    pub(crate) async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        let acquire = Arc::clone(&self.limiter).acquire_owned();
        match tokio::time::timeout(self.opts.overload_wait, acquire).await {
            Ok(Ok(p)) => Some(p),
            _ => {
                self.overloaded.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("mdcache_fallback_overloaded_total").increment(1);
                None
            }
        }
    }

    /// How far past its TTL a value of this kind may be served, if at all.
    pub(crate) fn stale_bound(&self, kind: &str, key_prefix: &str) -> Option<Duration> {
        // Capped even though `CacheAsideBuilder::build` validates: `new` takes any options.
        let find = |name: &str| {
            self.opts
                .stale_bounds
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, d)| (*d).min(crate::clock::MAX_TTL))
        };
        find(kind).or_else(|| find(key_prefix))
    }

    /// Counts one fallback read and its latency.
    pub(crate) fn record(&self, reason: FallbackReason, latency: Duration) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.fetch_add(ns, Ordering::Relaxed);
        self.latency_max_ns.fetch_max(ns, Ordering::Relaxed);
        metrics::counter!("mdcache_fallbacks_total", "reason" => reason.as_str()).increment(1);
        metrics::histogram!("mdcache_fallback_seconds", "reason" => reason.as_str())
            .record(latency.as_secs_f64());
    }

    /// Counts one stale value served.
    pub(crate) fn stale_served(&self) {
        // The Prometheus counter (with its kind label) is recorded by the cache's stats.
        self.stale_served.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> FallbackSnapshot {
        let c = |i: usize| self.counts[i].load(Ordering::Relaxed);
        FallbackSnapshot {
            total: c(0) + c(1) + c(2),
            breaker_open: c(0),
            timeout: c(1),
            error: c(2),
            overloaded: self.overloaded.load(Ordering::Relaxed),
            stale_served: self.stale_served.load(Ordering::Relaxed),
            latency_total: Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed)),
            latency_max: Duration::from_nanos(self.latency_max_ns.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limiter_turns_a_stampede_into_overloaded() {
        let h = FallbackHandler::new(FallbackOptions {
            max_concurrent_loads: 1,
            overload_wait: Duration::from_millis(10),
            ..FallbackOptions::default()
        });
        let held = h.permit().await.expect("first slot");
        assert!(h.permit().await.is_none());
        drop(held);
        assert!(h.permit().await.is_some());
        assert_eq!(h.snapshot().overloaded, 1);
    }

    #[test]
    fn market_data_may_be_stale_and_the_rest_fails_closed() {
        let h = FallbackHandler::new(FallbackOptions::default());
        assert!(h.stale_bound("price", "price").is_some());
        assert!(h.stale_bound("book:bid", "book").is_some());
        for k in ["pos", "risk", "ord", "strat"] {
            assert!(h.stale_bound(k, k).is_none(), "{k}");
        }
        h.record(FallbackReason::Timeout, Duration::from_millis(3));
        h.record(FallbackReason::BreakerOpen, Duration::from_millis(1));
        let s = h.snapshot();
        assert_eq!((s.total, s.timeout, s.breaker_open), (2, 1, 1));
        assert_eq!(s.latency_max, Duration::from_millis(3));
    }

    #[test]
    fn stale_bounds_above_max_ttl_are_refused_naming_the_kind() {
        let max = crate::clock::MAX_TTL;
        for bound in [max + Duration::from_nanos(1), Duration::MAX] {
            let opts = FallbackOptions {
                stale_bounds: vec![("price".to_owned(), bound)],
                ..FallbackOptions::default()
            };
            let err = opts.validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains("stale_bound(price)"), "{err}");
            // A handler built from them anyway never uses more than the maximum.
            let h = FallbackHandler::new(opts);
            assert_eq!(h.stale_bound("price", "price"), Some(max));
        }
        FallbackOptions::default().validate().unwrap();
        let at_max = FallbackOptions {
            stale_bounds: vec![("book".to_owned(), max)],
            ..FallbackOptions::default()
        };
        at_max.validate().unwrap();
    }
}
