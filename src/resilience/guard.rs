//! `Guard`: admission, deadline and retries around one L2 operation, its outcome recorded by the circuit breaker.

use std::time::Duration;

use super::breaker::{BreakerConfig, CircuitBreaker};
use super::retry::RetryConfig;
use crate::error::{Error, Result};

/// What every caller's L2 operation goes through: refused at once while the breaker is not
/// closed; otherwise tried under one deadline, retried (per [`RetryConfig`]) with full-jitter
/// backoff only inside that deadline; and whatever came of it recorded by the breaker.
///
/// One per L2 on one server; on a cluster one per shard, plus one for the operations that
/// span the cluster. Recovery's own operations bypass it through
/// [`run_unguarded`](Self::run_unguarded).
#[derive(Debug)]
pub(crate) struct Guard {
    breaker: CircuitBreaker,
    retry: RetryConfig,
    /// The deadline of one caller's operation, every try and wait included (`op_timeout`).
    deadline: Duration,
}

impl Guard {
    pub(crate) fn new(breaker: &BreakerConfig, retry: RetryConfig, deadline: Duration) -> Self {
        Guard {
            breaker: CircuitBreaker::new(breaker),
            retry,
            deadline,
        }
    }

    /// A guard whose breaker's metrics carry `shard` as their `shard` label.
    pub(crate) fn for_shard(
        breaker: &BreakerConfig,
        retry: RetryConfig,
        deadline: Duration,
        shard: String,
    ) -> Self {
        Guard {
            breaker: CircuitBreaker::labelled(breaker, shard),
            retry,
            deadline,
        }
    }

    /// The breaker this guard admits and records through.
    #[inline]
    pub(crate) fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The deadline of one caller's operation.
    #[inline]
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Runs `attempt` for a caller: admission, deadline, retries, breaker bookkeeping.
    ///
    /// `attempt` makes one try; every L2 operation is idempotent, so a try that may have
    /// landed can be made again. When the deadline passes, `cause` may name a better reason
    /// than "timed out" (connections failing to open: "connection refused"); otherwise the
    /// error is [`Error::Timeout`] for `op`.
    #[inline]
    pub(crate) async fn run<T, A, Fut, C>(
        &self,
        op: &'static str,
        attempt: A,
        cause: C,
    ) -> Result<T>
    where
        A: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
        C: FnOnce() -> Option<Error>,
    {
        self.run_within(op, self.deadline, attempt, cause).await
    }

    /// [`run`](Self::run) under `deadline` instead of the operation deadline: for work no
    /// caller waits on whose size sets its duration (the market-data writer's batches).
    pub(crate) async fn run_within<T, A, Fut, C>(
        &self,
        op: &'static str,
        deadline: Duration,
        attempt: A,
        cause: C,
    ) -> Result<T>
    where
        A: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
        C: FnOnce() -> Option<Error>,
    {
        if !self.breaker.admit() {
            return Err(Error::BreakerOpen);
        }
        let started = std::time::Instant::now();
        let work = async {
            // Created on the first retry only: most operations never retry.
            let mut waits = None;
            let mut tries = 1;
            loop {
                match attempt().await {
                    Err(e) if self.retry.retries(&e, tries) => {
                        tries += 1;
                        let wait = waits
                            .get_or_insert_with(|| self.retry.waits())
                            .next()
                            .unwrap_or_default();
                        tokio::time::sleep(wait).await;
                    }
                    other => return other,
                }
            }
        };
        let result = match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => {
                tracing::debug!(op, after = ?deadline, "redis operation missed its deadline");
                Err(cause().unwrap_or(Error::Timeout {
                    op,
                    after: deadline,
                }))
            }
        };
        match &result {
            Err(e) if e.trips_breaker() => self.breaker.failure(started),
            // An answer, even an error reply, means Redis is alive.
            _ => self.breaker.success(),
        }
        result
    }

    /// Runs `work` once under `deadline`, bypassing the breaker and recording nothing: for
    /// the probe and the recovery replay, which run while callers are kept out.
    pub(crate) async fn run_unguarded<T>(
        op: &'static str,
        deadline: Duration,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                op,
                after: deadline,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::resilience::{BreakerPolicy, BreakerState};

    fn guard(max_tries: u32, deadline: Duration) -> Guard {
        let breaker = BreakerConfig {
            policy: BreakerPolicy::ConsecutiveFailures(2),
            open_for: Duration::from_secs(60),
            ..BreakerConfig::default()
        };
        let retry = RetryConfig {
            max_tries: NonZeroU32::new(max_tries).unwrap(),
            ..RetryConfig::default()
        };
        Guard::new(&breaker, retry, deadline)
    }

    fn unavailable() -> Error {
        Error::redis(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )))
    }

    #[tokio::test]
    async fn retries_health_failures_then_succeeds_and_records_one_success() {
        let g = guard(3, Duration::from_secs(5));
        let tries = AtomicU32::new(0);
        let r = g
            .run(
                "get",
                || async {
                    if tries.fetch_add(1, Ordering::Relaxed) < 2 {
                        Err(unavailable())
                    } else {
                        Ok(7)
                    }
                },
                || None,
            )
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(tries.load(Ordering::Relaxed), 3);
        assert_eq!(g.breaker().state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn gives_up_after_max_tries_and_counts_one_failure_per_operation() {
        let g = guard(3, Duration::from_secs(5));
        let tries = AtomicU32::new(0);
        let attempt = || async {
            tries.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(unavailable())
        };
        assert!(
            g.run("get", attempt, || None)
                .await
                .unwrap_err()
                .trips_breaker()
        );
        assert_eq!(tries.load(Ordering::Relaxed), 3);
        assert_eq!(
            g.breaker().state(),
            BreakerState::Closed,
            "one failure of two"
        );
        let _ = g.run("get", attempt, || None).await;
        assert_eq!(g.breaker().state(), BreakerState::Open);
        let before = tries.load(Ordering::Relaxed);
        let err = g.run("get", attempt, || None).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::BreakerOpen);
        assert_eq!(tries.load(Ordering::Relaxed), before, "no I/O while open");
    }

    #[tokio::test]
    async fn a_caller_mistake_is_neither_retried_nor_counted() {
        let g = guard(3, Duration::from_secs(5));
        let tries = AtomicU32::new(0);
        for _ in 0..5 {
            let err = g
                .run(
                    "set",
                    || async {
                        tries.fetch_add(1, Ordering::Relaxed);
                        Err::<(), _>(Error::InvalidValue {
                            reason: "bad".to_owned(),
                        })
                    },
                    || None,
                )
                .await
                .unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidValue);
        }
        assert_eq!(tries.load(Ordering::Relaxed), 5);
        assert_eq!(g.breaker().snapshot().opened, 0);
    }

    #[tokio::test]
    async fn the_deadline_bounds_every_try_and_names_the_cause_when_there_is_one() {
        let g = guard(3, Duration::from_millis(20));
        let hang = || std::future::pending::<Result<()>>();
        let err = g.run("get", hang, || None).await.unwrap_err();
        assert!(
            matches!(err, Error::Timeout { op: "get", after }
                if after == Duration::from_millis(20)),
            "{err}"
        );
        let err = g
            .run("get", hang, || Some(unavailable()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Unavailable, "{err}");
        assert_eq!(
            g.breaker().state(),
            BreakerState::Open,
            "two timeouts open it"
        );
    }

    #[tokio::test]
    async fn unguarded_runs_ignore_the_breaker() {
        let g = guard(1, Duration::from_millis(20));
        for _ in 0..2 {
            let _ = g
                .run("get", || async { Err::<(), _>(unavailable()) }, || None)
                .await;
        }
        assert_eq!(g.breaker().state(), BreakerState::Open);
        let r = Guard::run_unguarded("probe", Duration::from_secs(1), async { Ok(1) }).await;
        assert_eq!(r.unwrap(), 1);
        let err = Guard::run_unguarded(
            "probe",
            Duration::from_millis(5),
            std::future::pending::<Result<()>>(),
        )
        .await
        .unwrap_err();
        assert!(err.is_timeout());
    }
}
