//! `CacheBuilder`: every setting of a `Cache` as a `#[must_use]` by-value setter (its `build()` lives with `Cache`, which it creates).

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::clock::Clock;
use crate::config::{Backend, CacheConfig};
use crate::error::Error;
use crate::key::KeySchema;

/// Builds a [`Cache`](crate::Cache). Setters take and return the builder; [`build`](Self::build) validates.
///
/// ```
/// use std::time::Duration;
/// use mdcache::{Backend, Cache};
///
/// let err = Cache::builder().backend(Backend::Redis).build().unwrap_err();
/// assert!(err.to_string().contains("CACHE_REDIS_URL"));
/// let cache = Cache::builder()
///     .namespace("sim")
///     .ttl::<mdcache::Price>(Duration::from_millis(250))
///     .build()
///     .unwrap();
/// assert_eq!(cache.key::<mdcache::Price>("ES").unwrap().as_str(), "sim:price:{ES}");
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct CacheBuilder {
    pub(crate) config: CacheConfig,
    /// The first error met while reading the environment, reported by `build()`.
    pub(crate) error: Option<Error>,
    pub(crate) clock: Option<Clock>,
}

impl CacheBuilder {
    /// Replaces every setting with `config`.
    pub fn config(mut self, config: CacheConfig) -> Self {
        self.config = config;
        self
    }

    /// Reads every setting from the environment (DESIGN §6); an invalid variable makes
    /// [`build`](Self::build) fail, naming it.
    pub fn from_env(mut self) -> Self {
        match CacheConfig::from_env() {
            Ok(c) => self.config = c,
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Which tiers to use.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.config.backend = Some(backend);
        self
    }

    /// Redis URL (`redis://`, `rediss://` for TLS, or `redis+unix://`). It may carry an ACL
    /// user and password (`redis://user:password@host:6379/`), or they may be set with
    /// [`redis_username`](Self::redis_username) and [`redis_password`](Self::redis_password),
    /// not both.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.config.redis_url = Some(url.into());
        self
    }

    /// A Redis Cluster (Valkey cluster, ElastiCache in cluster mode) instead of one server
    /// (`CACHE_REDIS_CLUSTER`): its seed nodes as `host:port` or `redis://`/`rediss://`
    /// URLs. The cache learns the other nodes from them; credentials and TLS roots are set
    /// as for one server.
    ///
    /// ```
    /// # async fn f() -> mdcache::Result<()> {
    /// let cache = mdcache::Cache::builder()
    ///     .redis_cluster(["10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"])
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn redis_cluster<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.redis_cluster = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// The ACL user to authenticate as (`CACHE_USERNAME`); needs
    /// [`redis_password`](Self::redis_password).
    pub fn redis_username(mut self, user: impl Into<String>) -> Self {
        self.config.redis_username = Some(user.into());
        self
    }

    /// The password of the ACL user, or of Redis's `default` user without one
    /// (`CACHE_PASSWORD`). Kept in a [`Password`](crate::Password): `Debug` shows `***`.
    ///
    /// ```
    /// # async fn f() -> mdcache::Result<()> {
    /// let cache = mdcache::Cache::builder()
    ///     .redis_url("rediss://cache.internal:6380/")
    ///     .redis_username("engine")
    ///     .redis_password(std::env::var("REDIS_PASSWORD").unwrap_or_default())
    ///     .tls_ca_file("/etc/mdcache/ca.pem")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn redis_password(mut self, password: impl Into<String>) -> Self {
        self.config.redis_password = Some(crate::Password::new(password));
        self
    }

    /// PEM file of the certificate authorities a `rediss://` server's certificate must chain
    /// to (`CACHE_TLS_CA_FILE`); without it, the system's roots.
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.tls_ca_file = Some(path.into());
        self
    }

    /// Key prefix.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.config.namespace = ns.into();
        self
    }

    /// Multiplexed connections the pool keeps open (see
    /// [`CacheConfig::pool_size`](crate::CacheConfig::pool_size): two are in use, the rest are
    /// connected spares).
    pub fn pool_size(mut self, n: NonZeroU32) -> Self {
        self.config.pool_size = n;
        self
    }

    /// Deadline for one L2 operation (including getting its connection).
    pub fn op_timeout(mut self, d: Duration) -> Self {
        self.config.op_timeout = d;
        self
    }

    /// Deadline for establishing a connection.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// L1 entry bound.
    pub fn l1_max_entries(mut self, n: NonZeroUsize) -> Self {
        self.config.l1_max_entries = n;
        self
    }

    /// L1 byte bound.
    pub fn l1_max_bytes(mut self, n: NonZeroUsize) -> Self {
        self.config.l1_max_bytes = n;
        self
    }

    /// TTL override for the kind `S`: `.ttl::<Price>(Duration::from_millis(250))`. Typed,
    /// so a misspelt kind is a compile error instead of a setting that silently does nothing.
    pub fn ttl<S: KeySchema>(self, ttl: Duration) -> Self {
        self.ttl_kind(S::KIND, ttl)
    }

    /// TTL override by kind name, for names known only at run time (`price`, `book:bid`, or
    /// `book` for both sides, as `CACHE_TTL_<KIND>_MS` does). Prefer [`ttl`](Self::ttl).
    pub fn ttl_kind(mut self, kind: &str, ttl: Duration) -> Self {
        self.config.ttl_overrides.push((kind.to_owned(), ttl));
        self
    }

    /// Largest encoded value accepted.
    pub fn max_value_bytes(mut self, n: NonZeroUsize) -> Self {
        self.config.max_value_bytes = n;
        self
    }

    /// Consecutive failures that open the circuit breaker (with
    /// [`breaker_failure_rate`](Self::breaker_failure_rate): the requests its window needs).
    pub fn breaker_failures(mut self, n: NonZeroU32) -> Self {
        self.config.breaker.policy = self.config.breaker.policy.with_failures(n.get());
        self
    }

    /// How long the breaker stays open before the probe.
    pub fn breaker_open(mut self, d: Duration) -> Self {
        self.config.breaker.open_for = d;
        self
    }

    /// Open on a failure rate (0..1) over `window` (whole seconds, at least 1) instead of on
    /// consecutive failures; `breaker_failures` is then the minimum of requests in the window.
    pub fn breaker_failure_rate(mut self, rate: f64, window: Duration) -> Self {
        self.config.breaker.policy = crate::BreakerPolicy::FailureRate {
            max_failure_rate: rate,
            min_requests: self.config.breaker.policy.failures(),
            window,
        };
        self
    }

    /// Deadline of the breaker's probe and of each recovery step.
    pub fn probe_timeout(mut self, d: Duration) -> Self {
        self.config.breaker.probe_timeout = d;
        self
    }

    /// Tries per L2 operation (1 = no retries); retries stay inside the operation's deadline.
    pub fn retry_max_tries(mut self, n: NonZeroU32) -> Self {
        self.config.retry.max_tries = n;
        self
    }

    /// The waits between tries: full jitter, a random wait under a bound that starts at
    /// `base` and doubles per try up to `cap` (default 200 µs and 1.6 ms). Waits never
    /// stretch an operation past its deadline; `build()` refuses a `cap` under `base`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mdcache::Cache;
    /// let cache = Cache::builder()
    ///     .retry_backoff(Duration::from_micros(100), Duration::from_millis(1))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.config().retry.backoff, Duration::from_micros(100));
    /// ```
    pub fn retry_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.config.retry.backoff = base;
        self.config.retry.backoff_cap = Some(cap);
        self
    }

    /// Most source loads at once (default 64), across every
    /// [`CacheAside`](crate::CacheAside) over this cache, so a dead cache cannot stampede the
    /// database. Background refreshes have their own budget
    /// ([`max_refreshes`](crate::CacheAsideBuilder::max_refreshes)).
    pub fn max_concurrent_loads(mut self, n: usize) -> Self {
        self.config.fallback.max_concurrent_loads = n;
        self
    }

    /// How long a load waits for a slot before failing with `Overloaded` (default 50 ms).
    pub fn overload_wait(mut self, d: Duration) -> Self {
        self.config.fallback.overload_wait = d;
        self
    }

    /// Lets the kind `S` be served up to `bound` past its TTL, marked `Stale`, when Redis and
    /// the source both fail (see [`stale_bound_kind`](Self::stale_bound_kind)).
    pub fn stale_bound<S: KeySchema>(self, bound: Duration) -> Self {
        self.stale_bound_kind(S::KIND, bound)
    }

    /// Lets `kind` (a name like `price`, or a key prefix like `book`) be served up to `bound`
    /// past its TTL, marked `Stale`, when Redis and the source both fail. Defaults: `price`
    /// and `book` 1 s; every other kind fails closed. A bound above
    /// [`MAX_TTL`](crate::MAX_TTL) makes [`build`](Self::build) fail, naming
    /// `stale_bound(<kind>)`.
    pub fn stale_bound_kind(mut self, kind: &str, bound: Duration) -> Self {
        let bounds = &mut self.config.fallback.stale_bounds;
        bounds.retain(|(k, _)| k != kind);
        bounds.push((kind.to_owned(), bound));
        self
    }

    /// No kind may be served stale (every kind fails closed).
    pub fn no_stale(mut self) -> Self {
        self.config.fallback.stale_bounds.clear();
        self
    }

    /// Whether `set`/`set_book` of the kind `S` go through the conflating market-data writer
    /// (DESIGN §4 rule 8; see [`WriterOptions`](crate::WriterOptions)). On by default for
    /// `Price`, `BookBid` and `BookAsk`; turning it on for orders, positions, risk or strategy
    /// state is allowed but wrong for them: their writes should be write-through.
    pub fn conflate<S: KeySchema>(self, on: bool) -> Self {
        self.conflate_kind(S::KIND, on)
    }

    /// [`conflate`](Self::conflate) by kind name (`price`, `book:bid`, …; exact names).
    pub fn conflate_kind(mut self, kind: &str, on: bool) -> Self {
        let kinds = &mut self.config.writer.conflate;
        kinds.retain(|k| k != kind);
        if on {
            kinds.push(kind.to_owned());
        }
        self
    }

    /// No kind conflates: every `set`/`set_book` writes Redis before it returns.
    pub fn no_conflation(mut self) -> Self {
        self.config.writer.conflate.clear();
        self
    }

    /// How long the market-data writer gathers writes before it flushes (default 1 ms,
    /// at most 1 s).
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.config.writer.flush_interval = d;
        self
    }

    /// The writer's largest batch, and the pending count that makes it flush early
    /// (default 256).
    pub fn flush_max_keys(mut self, n: NonZeroUsize) -> Self {
        self.config.writer.flush_max_keys = n;
        self
    }

    /// Deadline of one writer batch (default 50 ms).
    pub fn flush_timeout(mut self, d: Duration) -> Self {
        self.config.writer.flush_timeout = d;
        self
    }

    /// Most keys pending in the writer (default 65 536); a write of a new key beyond it goes
    /// to L1 alone, its key recorded dirty (`WriteOutcome::LocalOnly`).
    pub fn max_pending_writes(mut self, n: NonZeroUsize) -> Self {
        self.config.writer.max_pending = n;
        self
    }

    /// Most of the time, in percent, the writer keeps a batch in Redis (default 50; 100 for
    /// no pacing). See [`WriterOptions::max_busy_pct`](crate::WriterOptions::max_busy_pct).
    pub fn flush_max_busy_pct(mut self, pct: u8) -> Self {
        self.config.writer.max_busy_pct = pct;
        self
    }

    /// Whether the backplane runs (DESIGN §4 rule 5; default on, with Redis): this cache
    /// publishes its writes, and with an L1 applies other instances' to it.
    pub fn backplane(mut self, on: bool) -> Self {
        self.config.backplane = on;
        self
    }

    /// The clock TTL deadlines are read from (a mock in tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }
}
