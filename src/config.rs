//! `CacheConfig`: every setting of DESIGN §6, its defaults, and `from_env()` with errors naming the variable.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::codec::DEFAULT_MAX_VALUE_BYTES;
use crate::error::{Error, Result};

/// Default deadline for one L2 operation. A few milliseconds: a loopback round trip is
/// ~25 µs here, so 5 ms means the server is in trouble, and a hung Redis costs a caller 5 ms.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(5);
/// Longest TTL, negative-cache TTL or stale bound any setting or write may ask for (7 days).
/// Deadlines are instants on a monotonic clock; a bound keeps `now + ttl` far from overflow,
/// and no hot trading state should live longer than this without being rewritten.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default deadline for establishing a Redis connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

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
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Which tiers to use; `None` means `memory` without a Redis address, else `layered`.
    pub backend: Option<Backend>,
    /// `redis://` or `rediss://` URL (`CACHE_REDIS_URL`, or built from `CACHE_ADDRESS`,
    /// `CACHE_PORT`, `CACHE_PASSWORD`).
    pub redis_url: Option<String>,
    /// Key prefix (`CACHE_NAMESPACE`), `mdc` by default.
    pub namespace: String,
    /// Multiplexed connections in the bb8 pool (`CACHE_POOL_SIZE`).
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
    /// Consecutive failures that open the circuit breaker (`CACHE_BREAKER_FAILURES`).
    pub breaker_failures: NonZeroU32,
    /// How long the breaker stays open before probing (`CACHE_BREAKER_OPEN_MS`).
    pub breaker_open: Duration,
    /// Open on a failure rate instead of consecutive failures (`CACHE_BREAKER_FAILURE_RATE`,
    /// e.g. `0.5`; measured over `CACHE_BREAKER_WINDOW_MS`, at least 1 s, once
    /// `CACHE_BREAKER_FAILURES` requests were seen in the window).
    pub breaker_failure_rate: Option<f64>,
    /// The window of the failure-rate policy (`CACHE_BREAKER_WINDOW_MS`).
    pub breaker_window: Duration,
    /// Deadline of the breaker's probe and recovery steps (`CACHE_PROBE_TIMEOUT_MS`).
    pub probe_timeout: Duration,
    /// Tries per L2 operation, retries only inside its deadline (`CACHE_RETRY_MAX_TRIES`).
    pub retry_max_tries: NonZeroU32,
    /// PostgreSQL source of record (`DATABASE_URL`); `None` means the in-memory source.
    pub database_url: Option<String>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: None,
            redis_url: None,
            namespace: "mdc".to_owned(),
            pool_size: NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN),
            op_timeout: DEFAULT_OP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            l1_max_entries: NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN),
            l1_max_bytes: NonZeroUsize::new(100 << 20).unwrap_or(NonZeroUsize::MIN),
            ttl_overrides: Vec::new(),
            max_value_bytes: NonZeroUsize::new(DEFAULT_MAX_VALUE_BYTES)
                .unwrap_or(NonZeroUsize::MIN),
            breaker_failures: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
            breaker_open: Duration::from_secs(30),
            breaker_failure_rate: None,
            breaker_window: Duration::from_secs(30),
            probe_timeout: Duration::from_millis(50),
            retry_max_tries: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            database_url: None,
        }
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
        let (mut address, mut port, mut password) = (None, None, None);
        for (name, value) in vars {
            let (name, value) = (name.as_ref(), value.as_ref());
            match name {
                "CACHE_BACKEND" => cfg.backend = Some(value.parse()?),
                "CACHE_REDIS_URL" => cfg.redis_url = non_empty(name, value)?,
                "CACHE_ADDRESS" => address = non_empty(name, value)?,
                "CACHE_PORT" => port = Some(parse_num::<u16>(name, value, 1)?),
                "CACHE_PASSWORD" => password = Some(value.to_owned()),
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
                "CACHE_BREAKER_FAILURES" => cfg.breaker_failures = nonzero_u32(name, value)?,
                "CACHE_BREAKER_OPEN_MS" => cfg.breaker_open = millis(name, value)?,
                "CACHE_BREAKER_FAILURE_RATE" => match value.trim().parse::<f64>() {
                    Ok(r) if r > 0.0 && r < 1.0 => cfg.breaker_failure_rate = Some(r),
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
                    cfg.breaker_window = w;
                }
                "CACHE_PROBE_TIMEOUT_MS" => cfg.probe_timeout = millis(name, value)?,
                "CACHE_RETRY_MAX_TRIES" => cfg.retry_max_tries = nonzero_u32(name, value)?,
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
        if cfg.redis_url.is_none()
            && let Some(address) = address
        {
            let auth = password
                .map(|p| format!(":{}@", percent_encode(&p)))
                .unwrap_or_default();
            cfg.redis_url = Some(format!("redis://{auth}{address}:{}/", port.unwrap_or(6379)));
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
        self.backend.unwrap_or(if self.redis_url.is_some() {
            Backend::Layered
        } else {
            Backend::Memory
        })
    }

    /// The circuit breaker and retry settings.
    pub fn breaker_config(&self) -> crate::BreakerConfig {
        let policy = match self.breaker_failure_rate {
            Some(rate) => crate::BreakerPolicy::FailureRate {
                max_failure_rate: rate,
                min_requests: self.breaker_failures.get(),
                window: self.breaker_window,
            },
            None => crate::BreakerPolicy::ConsecutiveFailures(self.breaker_failures.get()),
        };
        crate::BreakerConfig {
            policy,
            open_for: self.breaker_open,
            probe_timeout: self.probe_timeout,
            max_tries: self.retry_max_tries.get(),
            ..crate::BreakerConfig::default()
        }
    }

    /// Checks the settings that cannot be expressed in the types; errors name the variable.
    pub fn validate(&self) -> Result<()> {
        crate::key::validate_namespace(&self.namespace)?;
        if self.op_timeout.is_zero() {
            return Err(Error::config(
                "CACHE_OP_TIMEOUT_MS",
                "must be greater than 0",
            ));
        }
        if self.probe_timeout.is_zero() {
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
        if let Some(rate) = self.breaker_failure_rate
            && !(rate > 0.0 && rate < 1.0)
        {
            return Err(Error::config(
                "CACHE_BREAKER_FAILURE_RATE",
                "must be between 0 and 1",
            ));
        }
        if self.breaker_window < Duration::from_secs(1) {
            return Err(Error::config(
                "CACHE_BREAKER_WINDOW_MS",
                "must be at least 1000",
            ));
        }
        for (kind, ttl) in &self.ttl_overrides {
            if ttl.is_zero() {
                let var = format!(
                    "CACHE_TTL_{}_MS",
                    kind.to_ascii_uppercase().replace(':', "_")
                );
                return Err(Error::config(var, "must be greater than 0"));
            }
        }
        match (self.effective_backend(), &self.redis_url) {
            (Backend::Redis | Backend::Layered, None) => Err(Error::config(
                "CACHE_REDIS_URL",
                "the redis and layered backends need a Redis address (CACHE_REDIS_URL or CACHE_ADDRESS)",
            )),
            (Backend::Redis | Backend::Layered, Some(url)) => redis::Client::open(url.as_str())
                .map(|_| ())
                .map_err(|e| Error::config("CACHE_REDIS_URL", e.to_string())),
            _ => Ok(()),
        }
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

fn millis(name: &str, value: &str) -> Result<Duration> {
    parse_num::<u64>(name, value, 1).map(Duration::from_millis)
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

/// Percent-encodes everything but RFC 3986 unreserved characters (for a password in a URL).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let c = CacheConfig::from_vars(Vec::<(String, String)>::new()).unwrap();
        assert_eq!(c.effective_backend(), Backend::Memory);
        assert_eq!(c.namespace, "mdc");
        assert_eq!(c.pool_size.get(), 16);
        assert_eq!(c.l1_max_entries.get(), 100_000);
        assert_eq!(c.l1_max_bytes.get(), 100 << 20);
        assert_eq!(c.breaker_failures.get(), 5);
        assert_eq!(c.breaker_open, Duration::from_secs(30));
        c.validate().unwrap();
    }

    #[test]
    fn every_variable_is_read() {
        let c = CacheConfig::from_vars([
            ("CACHE_BACKEND", "redis"),
            ("CACHE_ADDRESS", "cache.internal"),
            ("CACHE_PORT", "6380"),
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
        assert_eq!(
            c.redis_url.as_deref(),
            Some("redis://:p%40ss%20word@cache.internal:6380/")
        );
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
        assert_eq!(c.breaker_failures.get(), 7);
        assert_eq!(c.breaker_open, Duration::from_millis(1500));
        assert_eq!(c.database_url.as_deref(), Some("postgres://localhost/x"));
        c.validate().unwrap();
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
}
