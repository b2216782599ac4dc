//! `CacheConfig`: every setting of DESIGN §6, its defaults, and `from_env()` with errors naming the variable.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::codec::DEFAULT_MAX_VALUE_BYTES;
use crate::error::{Error, Result};
use crate::fallback::FallbackOptions;
use crate::resilience::{BreakerConfig, BreakerPolicy, RetryConfig};

/// Default deadline for one L2 operation. A few milliseconds: a loopback round trip is
/// ~25 µs here, so 5 ms means the server is in trouble, and a hung Redis costs a caller 5 ms.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(5);
pub use crate::clock::MAX_TTL;
/// Default deadline for establishing a Redis connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// The failure-rate window when `CACHE_BREAKER_FAILURE_RATE` is set without
/// `CACHE_BREAKER_WINDOW_MS`.
const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(30);

/// Which tiers a [`Cache`](crate::Cache) uses.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// L1 only (in-process).
    Memory,
    /// L2 only (Redis).
    Redis,
    /// L1 in front of L2.
    Layered,
}

impl std::str::FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "memory" => Ok(Backend::Memory),
            "redis" => Ok(Backend::Redis),
            "layered" => Ok(Backend::Layered),
            _ => Err(Error::config(
                "CACHE_BACKEND",
                format!("{s:?} is not one of memory, redis, layered"),
            )),
        }
    }
}

impl Backend {
    /// The name used in `CACHE_BACKEND`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::Layered => "layered",
        }
    }
}

/// Every setting of the cache. Build one with [`CacheConfig::default`] and the
/// [`CacheBuilder`](crate::CacheBuilder) setters, or read it with [`CacheConfig::from_env`].
///
/// Its `Debug` output shows the Redis and database URLs with their passwords replaced by
/// `***`, so a configuration can be logged.
#[non_exhaustive]
#[derive(Clone, PartialEq)]
pub struct CacheConfig {
    /// Which tiers to use; `None` means `memory` without a Redis address, else `layered`.
    pub backend: Option<Backend>,
    /// `redis://` or `rediss://` URL (`CACHE_REDIS_URL`, or built from `CACHE_ADDRESS` and
    /// `CACHE_PORT`). It may carry an ACL user and password (`redis://user:pw@host/`), or
    /// they may come from [`redis_username`](Self::redis_username) and
    /// [`redis_password`](Self::redis_password): one place or the other, not both.
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster (Valkey cluster, ElastiCache in cluster mode), instead of
    /// [`redis_url`](Self::redis_url): `CACHE_REDIS_CLUSTER=host:port,host:port,…`. Each seed
    /// is `host:port` or a `redis://`/`rediss://` URL (all of one scheme); the cache learns
    /// the rest of the cluster from them. Empty: no cluster.
    pub redis_cluster: Vec<String>,
    /// ACL user Redis authenticates (`CACHE_USERNAME`); without it, a password authenticates
    /// the `default` user.
    pub redis_username: Option<String>,
    /// Password of the ACL user, or of `default` (`CACHE_PASSWORD`).
    pub redis_password: Option<Password>,
    /// PEM file of the certificate authorities a `rediss://` server's certificate must chain
    /// to (`CACHE_TLS_CA_FILE`); without it, the system's roots. Only with a `rediss://` URL.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Key prefix (`CACHE_NAMESPACE`), `mdc` by default.
    pub namespace: String,
    /// Multiplexed connections the bb8 pool keeps open (`CACHE_POOL_SIZE`). Operations do not
    /// check one out each time: callers' operations share one of them, the writer's batches,
    /// recovery and admin commands another; the rest are spares, already connected, that
    /// replace a connection found broken without waiting for a connect.
    pub pool_size: NonZeroU32,
    /// Deadline of one L2 operation, including acquiring its connection (`CACHE_OP_TIMEOUT_MS`).
    pub op_timeout: Duration,
    /// Deadline of establishing one connection (`CACHE_CONNECT_TIMEOUT_MS`).
    pub connect_timeout: Duration,
    /// L1 entry bound (`CACHE_L1_MAX_ENTRIES`).
    pub l1_max_entries: NonZeroUsize,
    /// L1 byte bound (`CACHE_L1_MAX_MEMORY_MB`, in MiB there).
    pub l1_max_bytes: NonZeroUsize,
    /// Per-kind TTL overrides by kind name (`price`, `book:bid`, or `book` for both sides);
    /// from `CACHE_TTL_<KIND>_MS`.
    pub ttl_overrides: Vec<(String, Duration)>,
    /// Largest encoded value accepted.
    pub max_value_bytes: NonZeroUsize,
    /// The circuit breaker and its probe: when it opens (`CACHE_BREAKER_FAILURES`, or
    /// `CACHE_BREAKER_FAILURE_RATE` over `CACHE_BREAKER_WINDOW_MS`, at least 1 s, once
    /// `CACHE_BREAKER_FAILURES` requests were seen in the window), how long it stays open
    /// (`CACHE_BREAKER_OPEN_MS`), the probe's deadline (`CACHE_PROBE_TIMEOUT_MS`).
    pub breaker: BreakerConfig,
    /// Retries of an L2 operation, only inside its deadline (`CACHE_RETRY_MAX_TRIES`,
    /// `CACHE_RETRY_BACKOFF_US`, `CACHE_RETRY_BACKOFF_CAP_US`).
    pub retry: RetryConfig,
    /// The fallback path shared by every `CacheAside` over the cache: the source-load limit
    /// and its wait, and the per-kind stale bounds (builder setters only).
    pub fallback: FallbackOptions,
    /// PostgreSQL source of record (`DATABASE_URL`); `None` means the in-memory source.
    pub database_url: Option<String>,
    /// The conflating market-data writer (DESIGN §4 rule 8): which kinds conflate
    /// (`CACHE_CONFLATE_KINDS`), how often it flushes (`CACHE_FLUSH_INTERVAL_US`), the
    /// largest batch (`CACHE_FLUSH_MAX_KEYS`) and the pending bound (`CACHE_FLUSH_MAX_PENDING`).
    pub writer: WriterOptions,
    /// The backplane (DESIGN §4 rule 5, `CACHE_BACKPLANE=on|off`): on by default, used when the
    /// cache has Redis (publishing); with an L1 too (layered) it also receives.
    pub backplane: bool,
}

/// Settings of the conflating market-data writer (DESIGN §4 rule 8). Used only with a Redis
/// tier; a memory-only cache writes L1 directly.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// Kinds whose cache writes (`set`, `set_book`) conflate, by exact kind name
    /// (`CACHE_CONFLATE_KINDS`, comma-separated; empty or `none` for none). Default: `price`,
    /// `book:bid`, `book:ask`. Orders, positions, risk and strategy state should not be here:
    /// their writes go through write-through, which never conflates.
    pub conflate: Vec<String>,
    /// How long the writer gathers writes after the first one before it flushes
    /// (`CACHE_FLUSH_INTERVAL_US`, default 1000 µs, at most 1 s). Tokio's timers tick in whole
    /// milliseconds, so a shorter interval flushes on the next tick.
    pub flush_interval: Duration,
    /// Largest batch (one pipeline) and the pending count that makes the writer flush before
    /// its interval (`CACHE_FLUSH_MAX_KEYS`, default 256, at most 100 000).
    pub flush_max_keys: NonZeroUsize,
    /// Deadline of one batch (`CACHE_FLUSH_TIMEOUT_MS`, default 50 ms, between 1 ms and 10 s).
    /// Longer than the operation deadline because a batch of hundreds of keys takes Redis
    /// longer than one command, and no caller waits on it; a batch that misses it counts as
    /// one failure toward opening the breaker, and its keys go to the dirty log.
    pub flush_timeout: Duration,
    /// Most keys pending at once (`CACHE_FLUSH_MAX_PENDING`, default 65 536). A write of a
    /// new key beyond it is not queued: it goes to L1 alone and the key is recorded dirty
    /// (`WriteOutcome::LocalOnly`), as when Redis fails.
    pub max_pending: NonZeroUsize,
    /// Most of the time, in percent, the writer may keep a batch in Redis
    /// (`CACHE_FLUSH_MAX_BUSY_PCT`, default 50, between 1 and 100). After a batch that took
    /// `t`, the next one waits at least `t × (100 − pct) / pct`, so a Redis slowed by load
    /// gets the writer's requests less often while pending writes conflate: synchronous
    /// operations (write-through, cache-aside reads and fills) always find it with time to
    /// spare instead of queued behind back-to-back batches. 100 turns the pacing off. A caller
    /// awaiting [`Cache::flush`](crate::Cache::flush) cuts the wait short.
    pub max_busy_pct: u8,
}

/// Most keys in one writer batch.
const MAX_FLUSH_KEYS: usize = 100_000;

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            conflate: vec!["price".into(), "book:bid".into(), "book:ask".into()],
            flush_interval: Duration::from_micros(1000),
            flush_max_keys: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            flush_timeout: Duration::from_millis(50),
            max_pending: NonZeroUsize::new(65_536).unwrap_or(NonZeroUsize::MIN),
            max_busy_pct: 50,
        }
    }
}

impl WriterOptions {
    /// Checks the bounds, with an [`Error::Config`] naming the variable.
    pub fn validate(&self) -> Result<()> {
        if self.flush_interval.is_zero() || self.flush_interval > Duration::from_secs(1) {
            return Err(Error::config(
                "CACHE_FLUSH_INTERVAL_US",
                format!(
                    "must be between 1 µs and 1 s, not {:?}",
                    self.flush_interval
                ),
            ));
        }
        if self.flush_timeout < Duration::from_millis(1)
            || self.flush_timeout > Duration::from_secs(10)
        {
            return Err(Error::config(
                "CACHE_FLUSH_TIMEOUT_MS",
                format!(
                    "must be between 1 ms and 10 s, not {:?}",
                    self.flush_timeout
                ),
            ));
        }
        if self.flush_max_keys.get() > MAX_FLUSH_KEYS {
            return Err(Error::config(
                "CACHE_FLUSH_MAX_KEYS",
                format!("must be at most {MAX_FLUSH_KEYS}"),
            ));
        }
        if !(1..=100).contains(&self.max_busy_pct) {
            return Err(Error::config(
                "CACHE_FLUSH_MAX_BUSY_PCT",
                format!("must be between 1 and 100, not {}", self.max_busy_pct),
            ));
        }
        if self.max_pending < self.flush_max_keys {
            return Err(Error::config(
                "CACHE_FLUSH_MAX_PENDING",
                "must be at least CACHE_FLUSH_MAX_KEYS",
            ));
        }
        for kind in &self.conflate {
            crate::key::validate_kind(kind)
                .map_err(|e| Error::config("CACHE_CONFLATE_KINDS", format!("{kind:?}: {e}")))?;
        }
        Ok(())
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: None,
            redis_url: None,
            redis_cluster: Vec::new(),
            redis_username: None,
            redis_password: None,
            tls_ca_file: None,
            namespace: "mdc".to_owned(),
            pool_size: NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN),
            op_timeout: DEFAULT_OP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            l1_max_entries: NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN),
            l1_max_bytes: NonZeroUsize::new(100 << 20).unwrap_or(NonZeroUsize::MIN),
            ttl_overrides: Vec::new(),
            max_value_bytes: NonZeroUsize::new(DEFAULT_MAX_VALUE_BYTES)
                .unwrap_or(NonZeroUsize::MIN),
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            fallback: FallbackOptions::default(),
            database_url: None,
            writer: WriterOptions::default(),
            backplane: true,
        }
    }
}

/// By hand, not derived: the URLs carry passwords (DESIGN §6 lets `CACHE_REDIS_URL`,
/// `CACHE_PASSWORD` and `DATABASE_URL` hold them), and a configuration is the first thing
/// anyone logs. The destructuring makes a new field a compile error here until it is shown.
impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let CacheConfig {
            backend,
            redis_url,
            redis_cluster,
            redis_username,
            redis_password,
            tls_ca_file,
            namespace,
            pool_size,
            op_timeout,
            connect_timeout,
            l1_max_entries,
            l1_max_bytes,
            ttl_overrides,
            max_value_bytes,
            breaker,
            retry,
            fallback,
            database_url,
            writer,
            backplane,
        } = self;
        f.debug_struct("CacheConfig")
            .field("backend", backend)
            .field("redis_url", &redis_url.as_deref().map(redact_url))
            .field(
                "redis_cluster",
                &redis_cluster
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>(),
            )
            .field("redis_username", redis_username)
            .field("redis_password", redis_password)
            .field("tls_ca_file", tls_ca_file)
            .field("namespace", namespace)
            .field("pool_size", pool_size)
            .field("op_timeout", op_timeout)
            .field("connect_timeout", connect_timeout)
            .field("l1_max_entries", l1_max_entries)
            .field("l1_max_bytes", l1_max_bytes)
            .field("ttl_overrides", ttl_overrides)
            .field("max_value_bytes", max_value_bytes)
            .field("breaker", breaker)
            .field("retry", retry)
            .field("fallback", fallback)
            .field("database_url", &database_url.as_deref().map(redact_url))
            .field("writer", writer)
            .field("backplane", backplane)
            .finish()
    }
}

impl CacheConfig {
    /// Reads the configuration from the process environment (DESIGN §6). Unset variables keep
    /// their defaults; an invalid value is an [`Error::Config`] naming the variable.
    pub fn from_env() -> Result<Self> {
        // Not `std::env::vars()`: it panics on any variable that is not UTF-8, even one that
        // has nothing to do with us. Only our own variables must be UTF-8.
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with("CACHE_") || name == "DATABASE_URL") {
                continue;
            }
            match value.into_string() {
                Ok(value) => vars.push((name.to_owned(), value)),
                Err(_) => return Err(Error::config(name, "is not valid UTF-8")),
            }
        }
        Self::from_vars(vars)
    }

    /// Like [`from_env`](Self::from_env), from any list of `(name, value)` pairs.
    ///
    /// ```
    /// use mdcache::CacheConfig;
    /// let cfg = CacheConfig::from_vars([("CACHE_TTL_PRICE_MS", "250")]).unwrap();
    /// assert_eq!(cfg.ttl_overrides[0].1.as_millis(), 250);
    /// let err = CacheConfig::from_vars([("CACHE_POOL_SIZE", "zero")]).unwrap_err();
    /// assert!(err.to_string().contains("CACHE_POOL_SIZE"));
    /// ```
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut cfg = CacheConfig::default();
        let (mut address, mut port) = (None, None);
        // The breaker's policy is assembled after the loop: these three may come in any order.
        let (mut failures, mut failure_rate, mut window) = (None, None, None);
        for (name, value) in vars {
            let (name, value) = (name.as_ref(), value.as_ref());
            match name {
                "CACHE_BACKEND" => cfg.backend = Some(value.parse()?),
                "CACHE_REDIS_URL" => cfg.redis_url = non_empty(name, value)?,
                "CACHE_REDIS_CLUSTER" => cfg.redis_cluster = seed_list(name, value)?,
                "CACHE_ADDRESS" => address = Some(host(name, value)?),
                "CACHE_PORT" => port = Some(parse_num::<u16>(name, value, 1)?),
                "CACHE_USERNAME" => cfg.redis_username = non_empty(name, value)?,
                // Not trimmed (a password may hold spaces), but never empty: an empty one is
                // a template that was not filled in.
                "CACHE_PASSWORD" if value.is_empty() => {
                    return Err(Error::config(name, "is set but empty"));
                }
                "CACHE_PASSWORD" => cfg.redis_password = Some(Password::new(value)),
                "CACHE_TLS_CA_FILE" => cfg.tls_ca_file = non_empty(name, value)?.map(Into::into),
                "CACHE_NAMESPACE" => cfg.namespace = value.to_owned(),
                "CACHE_POOL_SIZE" => cfg.pool_size = nonzero_u32(name, value)?,
                "CACHE_OP_TIMEOUT_MS" => cfg.op_timeout = millis(name, value)?,
                "CACHE_CONNECT_TIMEOUT_MS" => cfg.connect_timeout = millis(name, value)?,
                "CACHE_L1_MAX_ENTRIES" => cfg.l1_max_entries = nonzero_usize(name, value)?,
                "CACHE_L1_MAX_MEMORY_MB" => {
                    let mb = nonzero_usize(name, value)?;
                    cfg.l1_max_bytes = mb
                        .checked_mul(NonZeroUsize::new(1 << 20).unwrap_or(NonZeroUsize::MIN))
                        .ok_or_else(|| Error::config(name, "too large"))?;
                }
                "CACHE_BREAKER_FAILURES" => failures = Some(nonzero_u32(name, value)?),
                "CACHE_BREAKER_OPEN_MS" => cfg.breaker.open_for = millis(name, value)?,
                "CACHE_BREAKER_FAILURE_RATE" => match value.trim().parse::<f64>() {
                    Ok(r) if r > 0.0 && r < 1.0 => failure_rate = Some(r),
                    _ => {
                        return Err(Error::config(
                            name,
                            format!("{value:?} must be a number between 0 and 1"),
                        ));
                    }
                },
                "CACHE_BREAKER_WINDOW_MS" => {
                    let w = millis(name, value)?;
                    if w < Duration::from_secs(1) {
                        return Err(Error::config(name, "must be at least 1000"));
                    }
                    window = Some(w);
                }
                "CACHE_PROBE_TIMEOUT_MS" => cfg.breaker.probe_timeout = millis(name, value)?,
                "CACHE_RETRY_MAX_TRIES" => cfg.retry.max_tries = nonzero_u32(name, value)?,
                "CACHE_RETRY_BACKOFF_US" => cfg.retry.backoff = micros(name, value)?,
                "CACHE_CONFLATE_KINDS" => cfg.writer.conflate = kind_list(value),
                "CACHE_FLUSH_INTERVAL_US" => cfg.writer.flush_interval = micros(name, value)?,
                "CACHE_FLUSH_TIMEOUT_MS" => cfg.writer.flush_timeout = millis(name, value)?,
                "CACHE_FLUSH_MAX_KEYS" => {
                    cfg.writer.flush_max_keys = nonzero_usize(name, value)?;
                }
                "CACHE_FLUSH_MAX_PENDING" => {
                    cfg.writer.max_pending = nonzero_usize(name, value)?;
                }
                "CACHE_BACKPLANE" => {
                    cfg.backplane = match value.trim().to_ascii_lowercase().as_str() {
                        "on" | "true" | "1" => true,
                        "off" | "false" | "0" => false,
                        _ => {
                            return Err(Error::config(
                                name,
                                format!("{value:?} must be on or off"),
                            ));
                        }
                    };
                }
                "CACHE_FLUSH_MAX_BUSY_PCT" => match value.trim().parse::<u8>() {
                    Ok(pct) if (1..=100).contains(&pct) => cfg.writer.max_busy_pct = pct,
                    _ => {
                        return Err(Error::config(
                            name,
                            format!("{value:?} must be a whole number between 1 and 100"),
                        ));
                    }
                },
                "CACHE_RETRY_BACKOFF_CAP_US" => cfg.retry.backoff_cap = Some(micros(name, value)?),
                "DATABASE_URL" => cfg.database_url = non_empty(name, value)?,
                _ => {
                    if let Some(kind) = name
                        .strip_prefix("CACHE_TTL_")
                        .and_then(|k| k.strip_suffix("_MS"))
                    {
                        let ttl = millis(name, value)?;
                        cfg.ttl_overrides
                            .push((kind.to_ascii_lowercase().replace('_', ":"), ttl));
                    }
                }
            }
        }
        let failures = failures.map_or(cfg.breaker.policy.failures(), NonZeroU32::get);
        cfg.breaker.policy = match failure_rate {
            Some(max_failure_rate) => BreakerPolicy::FailureRate {
                max_failure_rate,
                min_requests: failures,
                window: window.unwrap_or(DEFAULT_BREAKER_WINDOW),
            },
            None => cfg.breaker.policy.with_failures(failures),
        };
        if cfg.redis_url.is_none()
            && cfg.redis_cluster.is_empty()
            && let Some(address) = address
        {
            cfg.redis_url = Some(format!("redis://{address}:{}/", port.unwrap_or(6379)));
        }
        Ok(cfg)
    }

    /// The TTL for `kind`: an override for the exact kind (`book:bid`), else for its key prefix
    /// (`book`), else `default`.
    pub fn ttl_for(&self, kind: &str, key_prefix: &str, default: Duration) -> Duration {
        let find = |name: &str| {
            self.ttl_overrides
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, d)| *d)
        };
        find(kind).or_else(|| find(key_prefix)).unwrap_or(default)
    }

    /// The backend actually used: the configured one, else `layered` with a Redis address and
    /// `memory` without.
    pub fn effective_backend(&self) -> Backend {
        self.backend.unwrap_or(if self.has_redis() {
            Backend::Layered
        } else {
            Backend::Memory
        })
    }

    /// True when a Redis is configured: a server ([`redis_url`](Self::redis_url)) or a
    /// cluster ([`redis_cluster`](Self::redis_cluster)).
    pub fn has_redis(&self) -> bool {
        self.redis_url.is_some() || !self.redis_cluster.is_empty()
    }

    /// Checks the settings that cannot be expressed in the types; errors name the variable.
    ///
    /// Every duration (TTL overrides, operation, connect and probe deadlines, the breaker's
    /// open period and window) must be at most [`MAX_TTL`] (7 days): deadlines are computed
    /// as `now + duration`, and a larger setting could overflow that sum.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mdcache::Cache;
    /// let err = Cache::builder()
    ///     .ttl_kind("price", Duration::from_millis(u64::MAX))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("CACHE_TTL_PRICE_MS"), "{err}");
    /// ```
    pub fn validate(&self) -> Result<()> {
        crate::key::validate_namespace(&self.namespace)?;
        self.fallback.validate()?;
        self.writer.validate()?;
        for (name, d) in [
            ("CACHE_OP_TIMEOUT_MS", self.op_timeout),
            ("CACHE_CONNECT_TIMEOUT_MS", self.connect_timeout),
            ("CACHE_PROBE_TIMEOUT_MS", self.breaker.probe_timeout),
            ("CACHE_BREAKER_OPEN_MS", self.breaker.open_for),
            ("CACHE_RETRY_BACKOFF_US", self.retry.backoff),
            // Unset, the cap is 8× the backoff: a cap too large is then the backoff's fault.
            (
                if self.retry.backoff_cap.is_some() {
                    "CACHE_RETRY_BACKOFF_CAP_US"
                } else {
                    "CACHE_RETRY_BACKOFF_US"
                },
                self.retry.cap(),
            ),
        ] {
            at_most_max_ttl(name, d)?;
        }
        if self.op_timeout.is_zero() {
            return Err(Error::config(
                "CACHE_OP_TIMEOUT_MS",
                "must be greater than 0",
            ));
        }
        if self.breaker.probe_timeout.is_zero() {
            return Err(Error::config(
                "CACHE_PROBE_TIMEOUT_MS",
                "must be greater than 0",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config(
                "CACHE_CONNECT_TIMEOUT_MS",
                "must be greater than 0",
            ));
        }
        if self.breaker.policy.failures() == 0 {
            return Err(Error::config(
                "CACHE_BREAKER_FAILURES",
                "must be greater than 0",
            ));
        }
        if let BreakerPolicy::FailureRate {
            max_failure_rate,
            window,
            ..
        } = self.breaker.policy
        {
            if !(max_failure_rate > 0.0 && max_failure_rate < 1.0) {
                return Err(Error::config(
                    "CACHE_BREAKER_FAILURE_RATE",
                    "must be between 0 and 1",
                ));
            }
            at_most_max_ttl("CACHE_BREAKER_WINDOW_MS", window)?;
            if window < Duration::from_secs(1) {
                return Err(Error::config(
                    "CACHE_BREAKER_WINDOW_MS",
                    "must be at least 1000",
                ));
            }
        }
        if self
            .retry
            .backoff_cap
            .is_some_and(|cap| cap < self.retry.backoff)
        {
            return Err(Error::config(
                "CACHE_RETRY_BACKOFF_CAP_US",
                "must be at least CACHE_RETRY_BACKOFF_US",
            ));
        }
        for (kind, ttl) in &self.ttl_overrides {
            let var = || {
                format!(
                    "CACHE_TTL_{}_MS",
                    kind.to_ascii_uppercase().replace(':', "_")
                )
            };
            if ttl.is_zero() {
                return Err(Error::config(var(), "must be greater than 0"));
            }
            at_most_max_ttl(&var(), *ttl)?;
        }
        match (self.effective_backend(), self.has_redis()) {
            (Backend::Redis | Backend::Layered, false) => Err(Error::config(
                "CACHE_REDIS_URL",
                "the redis and layered backends need a Redis address (CACHE_REDIS_URL, CACHE_ADDRESS or CACHE_REDIS_CLUSTER)",
            )),
            (Backend::Redis | Backend::Layered, true) => crate::l2::check_settings(self),
            _ => Ok(()),
        }
    }
}

/// A password: shown as `***` by `Debug`, so a configuration that holds one can be logged.
///
/// ```
/// let p = mdcache::Password::new("s3cret-pw");
/// assert_eq!(format!("{p:?}"), "***");
/// assert_eq!(p.expose(), "s3cret-pw");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps `password`.
    pub fn new(password: impl Into<String>) -> Self {
        Password(password.into())
    }

    /// The password itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Most seed nodes `CACHE_REDIS_CLUSTER` takes (a cluster is learnt from any one of them).
const MAX_SEEDS: usize = 64;

/// A comma-separated list of cluster seed nodes: trimmed, none empty, at most [`MAX_SEEDS`].
fn seed_list(name: &str, value: &str) -> Result<Vec<String>> {
    let seeds: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
    if seeds.iter().any(String::is_empty) {
        return Err(Error::config(
            name,
            "wants host:port seed nodes separated by commas, none empty",
        ));
    }
    if seeds.len() > MAX_SEEDS {
        return Err(Error::config(
            name,
            format!("at most {MAX_SEEDS} seed nodes (any one of them finds the rest)"),
        ));
    }
    Ok(seeds)
}

/// A host name or an IP address, as `CACHE_ADDRESS` takes it (an IPv6 address in brackets):
/// anything else would be spliced into a URL and fail there, blamed on `CACHE_REDIS_URL`.
fn host(name: &str, value: &str) -> Result<String> {
    let v = value.trim();
    let name_chars = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    let ipv6 = v
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
    if name_chars(v) || ipv6 {
        Ok(v.to_owned())
    } else {
        Err(Error::config(
            name,
            format!(
                "{value:?} is not a host name or IP address (an IPv6 address goes in brackets; \
                 a whole URL goes in CACHE_REDIS_URL)"
            ),
        ))
    }
}

fn non_empty(name: &str, value: &str) -> Result<Option<String>> {
    if value.trim().is_empty() {
        Err(Error::config(name, "is set but empty"))
    } else {
        Ok(Some(value.trim().to_owned()))
    }
}

fn parse_num<T: std::str::FromStr + PartialOrd + From<u8>>(
    name: &str,
    value: &str,
    min: u8,
) -> Result<T> {
    match value.trim().parse::<T>() {
        Ok(n) if n >= T::from(min) => Ok(n),
        Ok(_) => Err(Error::config(
            name,
            format!("{value:?} must be at least {min}"),
        )),
        Err(_) => Err(Error::config(
            name,
            format!("{value:?} is not a valid number"),
        )),
    }
}

/// A duration in whole milliseconds, from 1 to [`MAX_TTL`]: any other number (and anything
/// that is not a `u64`) is an error naming the variable, never a panic or an overflow later.
fn millis(name: &str, value: &str) -> Result<Duration> {
    let d = Duration::from_millis(parse_num::<u64>(name, value, 1)?);
    at_most_max_ttl(name, d)?;
    Ok(d)
}

/// Microseconds, 0 allowed (no wait), at most [`MAX_TTL`].
fn micros(name: &str, value: &str) -> Result<Duration> {
    let d = Duration::from_micros(parse_num::<u64>(name, value, 0)?);
    at_most_max_ttl(name, d)?;
    Ok(d)
}

pub(crate) use crate::clock::at_most_max_ttl;

/// A comma-separated list of kind names; empty or `none` for none (each is checked by
/// validation, so a bad name is an error naming the variable).
fn kind_list(value: &str) -> Vec<String> {
    let v = value.trim();
    if v.is_empty() || v.eq_ignore_ascii_case("none") {
        return Vec::new();
    }
    v.split(',').map(|k| k.trim().to_owned()).collect()
}

fn nonzero_u32(name: &str, value: &str) -> Result<NonZeroU32> {
    parse_num::<u32>(name, value, 1).map(|n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn nonzero_usize(name: &str, value: &str) -> Result<NonZeroUsize> {
    parse_num::<u64>(name, value, 1).and_then(|n| {
        usize::try_from(n)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| Error::config(name, "too large"))
    })
}

/// What replaces a password in anything shown: `Debug` output, logs, error messages.
const REDACTED: &str = "***";

/// `conn` (a connection URL or a libpq `key=value` string) with every password in it replaced
/// by `***`, for `Debug` output, logs and errors. Everything else is kept, so the result still
/// says where it points:
///
/// - URL user info: `redis://user:PASSWORD@host/`, `redis://:PASSWORD@host/`;
/// - URL query parameters `pass` and `password` (`redis+unix:///s.sock?pass=PASSWORD`,
///   `postgres://host/db?password=PASSWORD`);
/// - libpq's `password=PASSWORD` (quoted or not) in a string without a scheme.
///
/// Parsers disagree on where a password with an unencoded `@` or `/` ends (the `url` crate
/// takes the last `@` of the authority, tokio-postgres the first `@` of the string), so the
/// user info runs to the *last* `@`: a password is never under-redacted, at worst an odd path
/// is hidden with it.
pub(crate) fn redact_url(conn: &str) -> String {
    let mut out = String::with_capacity(conn.len());
    let mut copied = 0;
    for span in secret_spans(conn) {
        out.push_str(&conn[copied..span.start]);
        out.push_str(REDACTED);
        copied = span.end;
    }
    out.push_str(&conn[copied..]);
    out
}

/// `text` (an error message about `conn`) with every password of `conn` replaced by `***`,
/// as written and percent-decoded: a parser's message may quote the part it choked on.
/// Passwords shorter than 3 bytes are left alone: masking every `a` of a message would make it
/// unreadable while hiding nothing a guess would not find.
pub(crate) fn redact_in(text: &str, conn: &str) -> String {
    let mut text = text.to_owned();
    for span in secret_spans(conn) {
        let raw = &conn[span];
        let unquoted = raw
            .strip_prefix('\'')
            .map(|r| r.strip_suffix('\'').unwrap_or(r))
            .unwrap_or(raw);
        for secret in [
            raw.to_owned(),
            unquoted.to_owned(),
            percent_decode(unquoted),
        ] {
            if secret.len() >= 3 {
                text = text.replace(&secret, REDACTED);
            }
        }
    }
    text
}

/// The byte ranges of `conn` that hold passwords, in order and disjoint.
fn secret_spans(conn: &str) -> Vec<std::ops::Range<usize>> {
    match url_rest(conn) {
        Some(rest_at) => {
            let mut spans = Vec::new();
            let rest = &conn[rest_at..];
            // User info runs to the last '@' (see `redact_url`); its password after the first ':'.
            let mut host_at = rest_at;
            if let Some(at) = rest.rfind('@') {
                if let Some(colon) = rest[..at].find(':')
                    && colon + 1 < at
                {
                    spans.push(rest_at + colon + 1..rest_at + at);
                }
                host_at = rest_at + at + 1;
            }
            if let Some(q) = conn[host_at..].find('?') {
                let mut param_at = host_at + q + 1;
                for param in conn[param_at..].split(['&', '#']) {
                    if let Some((name, value)) = param.split_once('=')
                        && !value.is_empty()
                        && (name.eq_ignore_ascii_case("pass")
                            || name.eq_ignore_ascii_case("password"))
                    {
                        spans.push(param_at + name.len() + 1..param_at + param.len());
                    }
                    param_at += param.len() + 1;
                }
            }
            spans
        }
        None => libpq_password_spans(conn),
    }
}

/// Where the part after `scheme://` starts, if `conn` is a URL (an empty scheme counts: a
/// mangled URL is still redacted as one).
fn url_rest(conn: &str) -> Option<usize> {
    let (scheme, _) = conn.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = match chars.next() {
        None => true,
        Some(first) => {
            first.is_ascii_alphabetic()
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
    };
    valid.then_some(scheme.len() + 3)
}

/// The values of `password` keywords in a libpq `key=value` string: `password=pw`,
/// `password = 'p w'`, with backslash escapes, as tokio-postgres reads them.
fn libpq_password_spans(conn: &str) -> Vec<std::ops::Range<usize>> {
    const KEYWORD: &str = "password";
    let b = conn.as_bytes();
    let skip_ws = |mut i: usize| {
        while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
            i += 1;
        }
        i
    };
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let at_token = i == 0 || b[i - 1].is_ascii_whitespace();
        let keyword = conn
            .get(i..i + KEYWORD.len())
            .is_some_and(|k| k.eq_ignore_ascii_case(KEYWORD));
        if !(at_token && keyword) {
            i += 1;
            continue;
        }
        let eq = skip_ws(i + KEYWORD.len());
        if b.get(eq) != Some(&b'=') {
            i += KEYWORD.len();
            continue;
        }
        let start = skip_ws(eq + 1);
        let mut end = start;
        let quoted = b.get(start) == Some(&b'\'');
        if quoted {
            end += 1;
        }
        while end < b.len() {
            match b[end] {
                b'\\' => end += 2,
                b'\'' if quoted => {
                    end += 1;
                    break;
                }
                c if !quoted && c.is_ascii_whitespace() => break,
                _ => end += 1,
            }
        }
        // An escape may have stepped into (or past) a multi-byte character.
        let mut end = end.min(b.len());
        while !conn.is_char_boundary(end) {
            end += 1;
        }
        if end > start {
            spans.push(start..end);
        }
        i = end.max(i + 1);
    }
    spans
}

/// Decodes `%XX` escapes; invalid escapes and non-UTF-8 results are kept as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `tests/fuzz.rs`: a backoff under the limit whose default cap (8×) is over it
    /// was refused as a bad `CACHE_RETRY_BACKOFF_CAP_US`, which the operator never set.
    #[test]
    fn a_backoff_whose_derived_cap_is_too_large_is_blamed_on_the_backoff() {
        let vars = [("CACHE_RETRY_BACKOFF_US", "75600000001")];
        let err = CacheConfig::from_vars(vars)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("CACHE_RETRY_BACKOFF_US:"), "{err}");
        let vars = [
            ("CACHE_RETRY_BACKOFF_US", "1000"),
            ("CACHE_RETRY_BACKOFF_CAP_US", "604800000001"),
        ];
        let err = CacheConfig::from_vars(vars)
            .and_then(|c| c.validate())
            .unwrap_err();
        assert!(
            err.to_string().contains("CACHE_RETRY_BACKOFF_CAP_US"),
            "{err}"
        );
    }

    /// Found by `tests/fuzz.rs`: `CACHE_ADDRESS=redis://` was spliced into a URL and refused as
    /// a bad `CACHE_REDIS_URL`, a variable the operator never set.
    #[test]
    fn a_bad_address_is_refused_naming_cache_address() {
        for bad in [
            "redis://",
            "h:1",
            "a b",
            "user@h",
            "h/0",
            "[::1",
            "[nothost]",
        ] {
            let err = CacheConfig::from_vars([("CACHE_ADDRESS", bad)]).unwrap_err();
            assert!(err.to_string().contains("CACHE_ADDRESS"), "{bad}: {err}");
        }
        for good in ["cache.internal", "10.0.0.9", "[::1]", "redis-1_a"] {
            let cfg = CacheConfig::from_vars([("CACHE_ADDRESS", good)]).unwrap();
            assert!(cfg.validate().is_ok(), "{good}");
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let c = CacheConfig::from_vars(Vec::<(String, String)>::new()).unwrap();
        assert_eq!(c.effective_backend(), Backend::Memory);
        assert_eq!(c.namespace, "mdc");
        assert_eq!(c.pool_size.get(), 16);
        assert_eq!(c.l1_max_entries.get(), 100_000);
        assert_eq!(c.l1_max_bytes.get(), 100 << 20);
        assert_eq!(c.breaker.policy, BreakerPolicy::ConsecutiveFailures(5));
        assert_eq!(c.breaker.open_for, Duration::from_secs(30));
        assert_eq!(c.breaker.probe_timeout, Duration::from_millis(50));
        assert_eq!(c.retry.max_tries.get(), 3);
        assert_eq!(c.retry.cap(), Duration::from_micros(1600));
        c.validate().unwrap();
    }

    #[test]
    fn the_writer_pacing_is_read_and_bounded() {
        let c = CacheConfig::from_vars([("CACHE_FLUSH_MAX_BUSY_PCT", "80")]).unwrap();
        assert_eq!(c.writer.max_busy_pct, 80);
        assert_eq!(WriterOptions::default().max_busy_pct, 50);
        for bad in ["0", "101", "-5", "50%", "", "1e2"] {
            let e = CacheConfig::from_vars([("CACHE_FLUSH_MAX_BUSY_PCT", bad)]).unwrap_err();
            assert!(
                e.to_string().contains("CACHE_FLUSH_MAX_BUSY_PCT"),
                "{bad:?}: {e}"
            );
        }
        let opts = WriterOptions {
            max_busy_pct: 0,
            ..WriterOptions::default()
        };
        let e = opts.validate().unwrap_err();
        assert!(e.to_string().contains("CACHE_FLUSH_MAX_BUSY_PCT"), "{e}");
    }

    #[test]
    fn every_variable_is_read() {
        let c = CacheConfig::from_vars([
            ("CACHE_BACKEND", "redis"),
            ("CACHE_ADDRESS", "cache.internal"),
            ("CACHE_PORT", "6380"),
            ("CACHE_USERNAME", "engine"),
            ("CACHE_PASSWORD", "p@ss word"),
            ("CACHE_NAMESPACE", "prod"),
            ("CACHE_POOL_SIZE", "4"),
            ("CACHE_OP_TIMEOUT_MS", "3"),
            ("CACHE_CONNECT_TIMEOUT_MS", "250"),
            ("CACHE_L1_MAX_ENTRIES", "10"),
            ("CACHE_L1_MAX_MEMORY_MB", "2"),
            ("CACHE_TTL_BOOK_MS", "70"),
            ("CACHE_TTL_BOOK_ASK_MS", "80"),
            ("CACHE_BREAKER_FAILURES", "7"),
            ("CACHE_BREAKER_OPEN_MS", "1500"),
            ("DATABASE_URL", "postgres://localhost/x"),
        ])
        .unwrap();
        assert_eq!(c.effective_backend(), Backend::Redis);
        assert_eq!(c.redis_url.as_deref(), Some("redis://cache.internal:6380/"));
        assert_eq!(c.redis_username.as_deref(), Some("engine"));
        assert_eq!(c.redis_password, Some(Password::new("p@ss word")));
        // A CA file goes with a rediss:// URL (read when a cache is built, not here).
        let tls = CacheConfig::from_vars([
            ("CACHE_REDIS_URL", "rediss://cache.internal:6380/"),
            ("CACHE_TLS_CA_FILE", "/etc/mdcache/ca.pem"),
        ])
        .unwrap();
        assert_eq!(
            tls.tls_ca_file.as_deref(),
            Some(std::path::Path::new("/etc/mdcache/ca.pem"))
        );
        tls.validate().unwrap();
        let plain = CacheConfig::from_vars([
            ("CACHE_REDIS_URL", "redis://cache.internal:6380/"),
            ("CACHE_TLS_CA_FILE", "/etc/mdcache/ca.pem"),
        ])
        .unwrap();
        let e = plain.validate().unwrap_err();
        assert!(e.to_string().contains("CACHE_TLS_CA_FILE"), "{e}");
        assert_eq!(c.namespace, "prod");
        assert_eq!(c.pool_size.get(), 4);
        assert_eq!(c.op_timeout, Duration::from_millis(3));
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.l1_max_entries.get(), 10);
        assert_eq!(c.l1_max_bytes.get(), 2 << 20);
        let d = Duration::from_millis(50);
        assert_eq!(c.ttl_for("book:ask", "book", d), Duration::from_millis(80));
        assert_eq!(c.ttl_for("book:bid", "book", d), Duration::from_millis(70));
        assert_eq!(c.ttl_for("price", "price", d), d);
        assert_eq!(c.breaker.policy, BreakerPolicy::ConsecutiveFailures(7));
        assert_eq!(c.breaker.open_for, Duration::from_millis(1500));
        assert_eq!(c.database_url.as_deref(), Some("postgres://localhost/x"));
        c.validate().unwrap();
    }

    #[test]
    fn breaker_and_retry_variables_fill_one_struct_each_in_any_order() {
        let rate_first = CacheConfig::from_vars([
            ("CACHE_BREAKER_FAILURE_RATE", "0.25"),
            ("CACHE_BREAKER_FAILURES", "9"),
            ("CACHE_PROBE_TIMEOUT_MS", "70"),
        ])
        .unwrap();
        let rate_last = CacheConfig::from_vars([
            ("CACHE_BREAKER_FAILURES", "9"),
            ("CACHE_PROBE_TIMEOUT_MS", "70"),
            ("CACHE_BREAKER_FAILURE_RATE", "0.25"),
        ])
        .unwrap();
        assert_eq!(rate_first, rate_last);
        assert_eq!(
            rate_first.breaker.policy,
            BreakerPolicy::FailureRate {
                max_failure_rate: 0.25,
                min_requests: 9,
                window: DEFAULT_BREAKER_WINDOW,
            }
        );
        assert_eq!(rate_first.breaker.probe_timeout, Duration::from_millis(70));
        let c = CacheConfig::from_vars([
            ("CACHE_BREAKER_WINDOW_MS", "2000"),
            ("CACHE_BREAKER_FAILURE_RATE", "0.5"),
            ("CACHE_RETRY_MAX_TRIES", "1"),
            ("CACHE_RETRY_BACKOFF_US", "50"),
        ])
        .unwrap();
        assert_eq!(
            c.breaker.policy,
            BreakerPolicy::FailureRate {
                max_failure_rate: 0.5,
                min_requests: 5,
                window: Duration::from_secs(2),
            }
        );
        assert_eq!(c.retry.max_tries.get(), 1);
        assert_eq!(c.retry.backoff, Duration::from_micros(50));
        assert_eq!(c.retry.cap(), Duration::from_micros(400));
        c.validate().unwrap();
        let c = CacheConfig::from_vars([
            ("CACHE_RETRY_BACKOFF_US", "500"),
            ("CACHE_RETRY_BACKOFF_CAP_US", "100"),
        ])
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("CACHE_RETRY_BACKOFF_CAP_US"), "{err}");
    }

    #[test]
    fn errors_name_the_variable() {
        for (var, value) in [
            ("CACHE_BACKEND", "disk"),
            ("CACHE_PORT", "70000"),
            ("CACHE_POOL_SIZE", "0"),
            ("CACHE_OP_TIMEOUT_MS", "-1"),
            ("CACHE_CONNECT_TIMEOUT_MS", "soon"),
            ("CACHE_L1_MAX_ENTRIES", "0"),
            ("CACHE_L1_MAX_MEMORY_MB", "x"),
            ("CACHE_TTL_PRICE_MS", "0"),
            ("CACHE_BREAKER_FAILURES", ""),
            ("CACHE_BREAKER_OPEN_MS", "1.5"),
            ("CACHE_RETRY_MAX_TRIES", "0"),
            ("CACHE_RETRY_BACKOFF_US", "-1"),
            ("CACHE_RETRY_BACKOFF_CAP_US", "soon"),
            ("CACHE_REDIS_URL", " "),
        ] {
            let err = CacheConfig::from_vars([(var, value)]).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Config);
            assert!(err.to_string().contains(var), "{var}: {err}");
        }
    }

    #[test]
    fn validation_names_the_variable() {
        let c = CacheConfig::from_vars([("CACHE_BACKEND", "layered")]).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("CACHE_REDIS_URL")
        );
        let c = CacheConfig::from_vars([("CACHE_REDIS_URL", "http://nope")]).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("CACHE_REDIS_URL")
        );
        let c = CacheConfig::from_vars([("CACHE_NAMESPACE", "a:b")]).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("CACHE_NAMESPACE")
        );
    }

    #[test]
    fn redact_url_hides_every_password_shape() {
        for (conn, shown) in [
            // URL user info, with and without a user, with odd characters in the password.
            (
                "redis://user:pw@host:6379/0",
                "redis://user:***@host:6379/0",
            ),
            ("redis://:pw@host/", "redis://:***@host/"),
            (
                "rediss://default:p@ss@cache:6380",
                "rediss://default:***@cache:6380",
            ),
            ("redis://u:a:b:c@h/", "redis://u:***@h/"),
            ("redis://u:p%40ss%3Aw%2Fd@h/", "redis://u:***@h/"),
            ("redis://u:pa/ss@h/", "redis://u:***@h/"),
            ("redis://u:p?w#x@h/", "redis://u:***@h/"),
            (
                "postgres://trader:pw@db:5432/trading",
                "postgres://trader:***@db:5432/trading",
            ),
            (
                "postgresql://:pw@db/x?sslmode=disable",
                "postgresql://:***@db/x?sslmode=disable",
            ),
            ("valkey://u:üñï©ødé@h/", "valkey://u:***@h/"),
            // Query parameters.
            (
                "redis+unix:///tmp/r.sock?db=1&pass=pw",
                "redis+unix:///tmp/r.sock?db=1&pass=***",
            ),
            (
                "postgres://db/x?user=u&password=pw&a=b",
                "postgres://db/x?user=u&password=***&a=b",
            ),
            (
                "postgres://u:pw@db/x?PASSWORD=pw2",
                "postgres://u:***@db/x?PASSWORD=***",
            ),
            // No password: shown as it is.
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            ("redis://user@host/", "redis://user@host/"),
            ("redis://user:@host/", "redis://user:@host/"),
            ("redis://host/?pass=", "redis://host/?pass="),
            (
                "postgres://u@db/x?passfile=/p",
                "postgres://u@db/x?passfile=/p",
            ),
            // libpq key=value strings.
            (
                "host=db user=u password=pw dbname=x",
                "host=db user=u password=*** dbname=x",
            ),
            ("password = 'p w\\' x' host=db", "password = *** host=db"),
            (
                "host=db password=p\\ w port=1",
                "host=db password=*** port=1",
            ),
            ("host=db PASSWORD='pw", "host=db PASSWORD=***"),
            (
                "host=db passwordx=1 mypassword=2",
                "host=db passwordx=1 mypassword=2",
            ),
            ("host=db password", "host=db password"),
            ("host=db password=", "host=db password="),
            ("password=ünï user=u", "password=*** user=u"),
            // Not connection strings at all.
            ("", ""),
            ("not a url", "not a url"),
            ("://user:pw@host", "://user:***@host"),
            ("1http://x", "1http://x"),
        ] {
            assert_eq!(redact_url(conn), shown, "{conn}");
        }
    }

    #[test]
    fn redact_in_masks_a_password_quoted_by_an_error_message() {
        let url = "redis://u:s%40cret@h/";
        assert_eq!(
            redact_in("bad password s@cret and s%40cret", url),
            "bad password *** and ***"
        );
        assert_eq!(
            redact_in("unterminated 'sec ret", "password='sec ret"),
            "unterminated ***"
        );
        // Too short to mask without wrecking the message.
        assert_eq!(redact_in("a bad url", "redis://:a@h/"), "a bad url");
        assert_eq!(redact_in("no secrets", "redis://h/"), "no secrets");
    }

    #[test]
    fn debug_shows_urls_without_their_passwords() {
        let c = CacheConfig::from_vars([
            ("CACHE_ADDRESS", "cache.internal"),
            ("CACHE_PASSWORD", "p@ss word"),
            ("DATABASE_URL", "postgres://trader:hunter22@db/trading"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("p@ss") && !shown.contains("hunter22"),
            "{shown}"
        );
        assert!(shown.contains("redis_password: Some(***)"), "{shown}");
        assert!(
            shown.contains("postgres://trader:***@db/trading"),
            "{shown}"
        );
    }

    #[test]
    fn env_durations_above_max_ttl_are_errors_never_panics() {
        let vars = [
            "CACHE_OP_TIMEOUT_MS",
            "CACHE_CONNECT_TIMEOUT_MS",
            "CACHE_BREAKER_OPEN_MS",
            "CACHE_BREAKER_WINDOW_MS",
            "CACHE_PROBE_TIMEOUT_MS",
            "CACHE_TTL_PRICE_MS",
            "CACHE_TTL_BOOK_BID_MS",
        ];
        let max = MAX_TTL.as_millis().to_string();
        let above = (MAX_TTL.as_millis() + 1).to_string();
        for var in vars {
            for value in [
                above.as_str(),
                "18446744073709551615",
                "18446744073709551616",
                "340282366920938463463374607431768211456",
                "-1",
                "1e3",
                "0x10",
                "1.5",
                "",
                "\u{0}",
                "\u{ff}\u{fe}",
            ] {
                let err = CacheConfig::from_vars([(var, value)]).unwrap_err();
                assert_eq!(err.kind(), crate::ErrorKind::Config, "{var}={value:?}");
                assert!(err.to_string().contains(var), "{var}={value:?}: {err}");
            }
            let c = CacheConfig::from_vars([(var, max.as_str())]).unwrap();
            c.validate().unwrap();
        }
    }

    #[test]
    fn validation_refuses_every_duration_above_max_ttl() {
        let huge = Duration::from_millis(u64::MAX);
        let above = MAX_TTL + Duration::from_nanos(1);
        type Set = fn(&mut CacheConfig, Duration);
        let settings: [(&str, Set); 5] = [
            ("CACHE_OP_TIMEOUT_MS", |c, d| c.op_timeout = d),
            ("CACHE_CONNECT_TIMEOUT_MS", |c, d| c.connect_timeout = d),
            ("CACHE_PROBE_TIMEOUT_MS", |c, d| c.breaker.probe_timeout = d),
            ("CACHE_BREAKER_OPEN_MS", |c, d| c.breaker.open_for = d),
            ("CACHE_BREAKER_WINDOW_MS", |c, d| {
                c.breaker.policy = BreakerPolicy::FailureRate {
                    max_failure_rate: 0.5,
                    min_requests: 5,
                    window: d,
                }
            }),
        ];
        for (var, set) in settings {
            for d in [huge, above, Duration::MAX] {
                let mut c = CacheConfig::default();
                set(&mut c, d);
                let err = c.validate().unwrap_err();
                assert!(err.to_string().contains(var), "{var} = {d:?}: {err}");
            }
            let mut c = CacheConfig::default();
            set(&mut c, MAX_TTL);
            c.validate().unwrap();
        }
        for (kind, var) in [
            ("price", "CACHE_TTL_PRICE_MS"),
            ("book:bid", "CACHE_TTL_BOOK_BID_MS"),
            ("my_kind", "CACHE_TTL_MY_KIND_MS"),
        ] {
            for d in [huge, above, Duration::MAX] {
                let mut c = CacheConfig::default();
                c.ttl_overrides.push((kind.to_owned(), d));
                let err = c.validate().unwrap_err();
                assert_eq!(err.kind(), crate::ErrorKind::Config);
                assert!(err.to_string().contains(var), "{kind} = {d:?}: {err}");
            }
            let mut c = CacheConfig::default();
            c.ttl_overrides.push((kind.to_owned(), MAX_TTL));
            c.validate().unwrap();
        }
    }

    #[test]
    fn cluster_seeds_are_a_list_exclusive_with_the_url() {
        let c = CacheConfig::from_vars([(
            "CACHE_REDIS_CLUSTER",
            " 10.0.0.1:6379, rediss://u:pw@10.0.0.2:6380 ",
        )])
        .unwrap();
        assert_eq!(
            c.redis_cluster,
            vec!["10.0.0.1:6379", "rediss://u:pw@10.0.0.2:6380"]
        );
        assert!(c.has_redis());
        assert_eq!(c.effective_backend(), Backend::Layered);
        assert!(!format!("{c:?}").contains("pw"), "{c:?}");
        // CACHE_ADDRESS does not make a URL beside a cluster.
        let c = CacheConfig::from_vars([
            ("CACHE_REDIS_CLUSTER", "10.0.0.1:6379"),
            ("CACHE_ADDRESS", "10.0.0.9"),
        ])
        .unwrap();
        assert_eq!(c.redis_url, None);
        for bad in ["", "a:1,,b:2", " , "] {
            let e = CacheConfig::from_vars([("CACHE_REDIS_CLUSTER", bad)]).unwrap_err();
            assert!(
                e.to_string().contains("CACHE_REDIS_CLUSTER"),
                "{bad:?}: {e}"
            );
        }
        let many = vec!["h:1"; 65].join(",");
        let e = CacheConfig::from_vars([("CACHE_REDIS_CLUSTER", many.as_str())]).unwrap_err();
        assert!(e.to_string().contains("at most 64"), "{e}");
        // A URL and a cluster: refused, naming the cluster variable.
        let both = CacheConfig::from_vars([
            ("CACHE_REDIS_CLUSTER", "10.0.0.1:6379"),
            ("CACHE_REDIS_URL", "redis://10.0.0.2:6379/"),
        ])
        .unwrap();
        let e = both.validate().unwrap_err();
        assert!(e.to_string().contains("CACHE_REDIS_CLUSTER"), "{e}");
        // Mixed TLS and plain seeds, and a seed that does not parse.
        for seeds in ["rediss://a:1,b:2", "a:notaport"] {
            let c = CacheConfig::from_vars([("CACHE_REDIS_CLUSTER", seeds)]).unwrap();
            let e = c.validate().unwrap_err();
            assert!(
                e.to_string().contains("CACHE_REDIS_CLUSTER"),
                "{seeds}: {e}"
            );
        }
    }

    #[test]
    fn a_bad_redis_url_error_does_not_show_its_password() {
        let c = CacheConfig::from_vars([("CACHE_REDIS_URL", "redis://u:hunter22@h:99999999/")])
            .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("CACHE_REDIS_URL") && !err.contains("hunter22"),
            "{err}"
        );
    }
}
