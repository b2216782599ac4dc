//! The Redis tier: a bb8 pool of multiplexed connections, `SET PX` through a versioned script, `GET`+`PTTL`, batches.
//!
//! Pool use: an operation checks a connection out, *clones* its multiplexed handle and returns
//! the connection to the pool at once, then sends its command on the clone. Many concurrent
//! operations therefore pipeline over a few sockets instead of each holding a connection for a
//! round trip (DESIGN §9 measured the hold-per-op pattern at 2–4× less throughput with ms tails),
//! and the default test-on-checkout `PING` (a second round trip per operation) is turned off.
//! A connection whose socket died is flagged and bb8 replaces it when it comes back to the pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult, Script, Value};

use crate::error::{Error, Result};

/// Versioned write (DESIGN §4 rule 2): store the envelope unless the stored one carries a higher
/// version. Versions are compared byte by byte on the envelope header (bytes 3..10 in Lua's
/// 1-based indexing), exactly, without Lua's doubles. Only an envelope this build reads has a
/// version: magic `M` and format 1 (header 10 bytes) or 2 (header 18 bytes). Anything else
/// (garbage, an unknown format) counts as absent and is replaced, so bytes that happen to
/// carry a high "version" cannot pin the key. Returns 1 when stored, 0 when superseded.
const SET_VERSIONED: &str = r#"
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'string' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
local cur = redis.call('GET', KEYS[1])
local new = ARGV[1]
local versioned = false
if cur and string.byte(cur, 1) == 77 then
  local f, n = string.byte(cur, 2), string.len(cur)
  versioned = (f == 1 and n >= 10) or (f == 2 and n >= 18)
end
if versioned then
  for i = 3, 10 do
    local a, b = string.byte(cur, i), string.byte(new, i)
    if a > b then return 0 end
    if a < b then break end
  end
end
redis.call('SET', KEYS[1], new, 'PX', ARGV[2])
return 1
"#;

/// Delete KEYS[1] only while it still holds ARGV[1] (a string key; any other type is left
/// alone). Returns 1 when deleted, 0 otherwise.
const UNLINK_IF_EQUALS: &str = r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('UNLINK', KEYS[1])
return 1
"#;

/// What a successful L2 read of a string key returns: the envelope and its remaining TTL.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) bytes: Vec<u8>,
    /// Remaining TTL reported by `PTTL`; `None` when the key has no expiry.
    pub(crate) remaining: Option<Duration>,
}

/// Connection manager: bb8-redis's manager, plus a flag that marks a connection broken.
#[derive(Debug, Clone)]
pub(crate) struct Manager {
    inner: RedisConnectionManager,
    connect_timeout: Duration,
    last_error: LastError,
    /// Connections opened before this generation are retired (see [`RedisTier::retire_connections`]).
    generation: Arc<AtomicU64>,
}

/// The most recent failure to open a connection, cleared by the next success. bb8 reports a
/// caller only "timed out waiting for a connection"; this lets the caller hear "connection
/// refused" instead, so a dead server is not mistaken for a hung one.
#[derive(Debug, Clone, Default)]
struct LastError(Arc<std::sync::Mutex<Option<RedisError>>>);

impl LastError {
    fn set(&self, e: Option<RedisError>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn get(&self) -> Option<RedisError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl bb8::ErrorSink<RedisError> for LastError {
    fn sink(&self, error: RedisError) {
        tracing::debug!(%error, "redis connection attempt failed");
        self.set(Some(error));
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<RedisError>> {
        Box::new(self.clone())
    }
}

/// A pooled multiplexed connection and the flag bb8 checks when it comes back.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) mux: MultiplexedConnection,
    /// Set by an operation that saw the socket die, so bb8 drops and replaces this connection.
    broken: Arc<AtomicBool>,
    /// The pool generation this connection was opened in.
    generation: u64,
}

impl Conn {
    fn note(&self, e: &RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            self.broken.store(true, Ordering::Relaxed);
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let mux = match tokio::time::timeout(self.connect_timeout, self.inner.connect()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to redis timed out",
                )));
            }
        };
        self.last_error.set(None);
        Ok(Conn {
            mux,
            broken: Arc::new(AtomicBool::new(false)),
            generation: self.generation.load(Ordering::Acquire),
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        self.inner.is_valid(&mut conn.mux).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken.load(Ordering::Relaxed)
            || conn.generation < self.generation.load(Ordering::Acquire)
    }
}

/// Options for building a [`RedisTier`].
#[derive(Clone)]
pub(crate) struct RedisOptions {
    /// May hold a password: `Debug` shows it redacted.
    pub(crate) url: String,
    pub(crate) pool_size: u32,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker: super::guard::BreakerConfig,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let RedisOptions {
            url,
            pool_size,
            op_timeout,
            connect_timeout,
            breaker,
        } = self;
        f.debug_struct("RedisOptions")
            .field("url", &crate::config::redact_url(url))
            .field("pool_size", pool_size)
            .field("op_timeout", op_timeout)
            .field("connect_timeout", connect_timeout)
            .field("breaker", breaker)
            .finish()
    }
}

/// The Redis tier.
pub(crate) struct RedisTier {
    pool: bb8::Pool<Manager>,
    op_timeout: Duration,
    connect_timeout: Duration,
    last_error: LastError,
    generation: Arc<AtomicU64>,
    pool_size: u32,
    set_script: Script,
    unlink_if_equals_script: Script,
    pub(crate) book: super::book::BookScripts,
    pub(crate) breaker: super::guard::Breaker,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("pool", &self.pool.state())
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

impl RedisTier {
    /// Builds the pool without waiting for a connection: a cache must start (and serve L1 and
    /// errors quickly) even while Redis is down. Connections are opened in the background.
    pub(crate) fn new(opts: RedisOptions) -> Result<Self> {
        let inner = RedisConnectionManager::new(opts.url.as_str()).map_err(|e| {
            let reason = crate::config::redact_in(&e.to_string(), &opts.url);
            Error::config("CACHE_REDIS_URL", reason)
        })?;
        let last_error = LastError::default();
        let generation = Arc::new(AtomicU64::new(0));
        let manager = Manager {
            inner,
            connect_timeout: opts.connect_timeout,
            last_error: last_error.clone(),
            generation: Arc::clone(&generation),
        };
        let pool = bb8::Pool::builder()
            .max_size(opts.pool_size)
            .min_idle(Some(opts.pool_size))
            .test_on_check_out(false)
            .connection_timeout(opts.connect_timeout)
            // Fail a checkout at once when opening a connection fails (refused, reset) instead
            // of retrying until connection_timeout: our own retries and deadline decide.
            .retry_connection(false)
            .error_sink(Box::new(last_error.clone()))
            .build_unchecked(manager);
        Ok(RedisTier {
            pool,
            op_timeout: opts.op_timeout,
            connect_timeout: opts.connect_timeout,
            last_error,
            generation,
            pool_size: opts.pool_size,
            set_script: Script::new(SET_VERSIONED),
            unlink_if_equals_script: Script::new(UNLINK_IF_EQUALS),
            book: super::book::BookScripts::new(),
            breaker: super::guard::Breaker::new(opts.breaker),
        })
    }

    /// A multiplexed handle from the pool; the pooled connection goes straight back.
    async fn conn(&self) -> Result<Conn> {
        // Skip connections known dead or retired: dropping the guard hands them back to bb8,
        // which discards them. Bounded by the pool size (+1 for the fresh one).
        for _ in 0..self.pool_size {
            match self.pool.get().await {
                Ok(pooled) => {
                    if pooled.broken.load(Ordering::Relaxed)
                        || pooled.generation < self.generation.load(Ordering::Acquire)
                    {
                        continue;
                    }
                    return Ok(Conn::clone(&pooled));
                }
                Err(e) => return Err(self.checkout_error(e)),
            }
        }
        match self.pool.get().await {
            Ok(pooled) => Ok(Conn::clone(&pooled)),
            Err(e) => Err(self.checkout_error(e)),
        }
    }

    fn checkout_error(&self, e: bb8::RunError<RedisError>) -> Error {
        match e {
            bb8::RunError::User(e) => Error::Redis(e),
            bb8::RunError::TimedOut => match self.last_error.get() {
                Some(e) => Error::Redis(e),
                None => Error::Timeout {
                    op: "connect",
                    after: self.connect_timeout,
                },
            },
        }
    }

    /// Retires every connection open now: each is discarded when next checked out, so the
    /// probe after an outage talks over fresh sockets instead of finding the dead ones one
    /// probe period at a time.
    pub(crate) fn retire_connections(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Runs `f` for a caller: refused at once while the breaker is open; otherwise under the
    /// operation deadline, retried (all of this tier's operations are idempotent: reads, `UNLINK`,
    /// versioned writes) on connection failures with full-jitter backoff, never past the
    /// deadline; the outcome is recorded by the breaker. Errors for `key` are mapped
    /// (`WRONGTYPE` → [`Error::WrongType`]) and a dead socket is flagged for replacement.
    pub(crate) async fn run<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.breaker.admit() {
            return Err(Error::BreakerOpen);
        }
        let work = async {
            // Created on the first retry only: most operations never retry.
            let mut waits = None;
            let mut tries = 1;
            loop {
                match self.attempt(key, &f).await {
                    Err(e) if e.is_retryable() && tries < self.breaker.config.max_tries => {
                        tries += 1;
                        let wait = waits
                            .get_or_insert_with(|| self.breaker.retry_waits())
                            .next()
                            .unwrap_or_default();
                        tokio::time::sleep(wait).await;
                    }
                    other => return other,
                }
            }
        };
        let result = match tokio::time::timeout(self.op_timeout, work).await {
            Ok(r) => r,
            // If connections are failing to open, say why rather than only "timed out".
            Err(_) => Err(match self.last_error.get() {
                Some(e) if !e.is_timeout() => Error::Redis(e),
                _ => Error::Timeout {
                    op,
                    after: self.op_timeout,
                },
            }),
        };
        match &result {
            Err(e) if e.trips_breaker() => self.breaker.failure(),
            // An answer, even an error reply, means Redis is alive.
            _ => self.breaker.success(),
        }
        result
    }

    /// Runs `f` once under `deadline`, bypassing the breaker (the probe and the recovery
    /// replay use it while callers are kept out).
    pub(crate) async fn run_unguarded<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        deadline: Duration,
        f: F,
    ) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match tokio::time::timeout(deadline, self.attempt(key, &f)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                op,
                after: deadline,
            }),
        }
    }

    async fn attempt<T, F, Fut>(&self, key: &str, f: &F) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self.conn().await?;
        f(conn.mux.clone()).await.map_err(|e| {
            conn.note(&e);
            Error::from_redis(e, key)
        })
    }

    /// `GET` and `PTTL` of one key in one round trip, atomically (`MULTI`/`EXEC`), so the TTL
    /// belongs to the value read.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Fetched>> {
        let (bytes, pttl): (Option<Vec<u8>>, i64) = self
            .run("get", key, |mut c| async move {
                redis::pipe()
                    .atomic()
                    .get(key)
                    .pttl(key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(bytes.and_then(|bytes| fetched(bytes, pttl)))
    }

    /// `GET`+`PTTL` of many keys in one round trip (`MULTI`, one `MGET`, a `PTTL` per key).
    pub(crate) async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Fetched>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let first = keys[0];
        let values: Vec<Value> = self
            .run("get_many", first, |mut c| async move {
                let mut p = redis::pipe();
                p.atomic().cmd("MGET").arg(keys);
                for k in keys {
                    p.pttl(*k);
                }
                p.query_async(&mut c).await
            })
            .await?;
        let mut it = values.into_iter();
        let blobs: Vec<Option<Vec<u8>>> = match it.next() {
            Some(v) => {
                redis::from_redis_value(v).map_err(|e| Error::from_redis(e.into(), first))?
            }
            None => return Err(malformed(first)),
        };
        let mut out = Vec::with_capacity(keys.len());
        for blob in blobs {
            let pttl: i64 = match it.next() {
                Some(v) => {
                    redis::from_redis_value(v).map_err(|e| Error::from_redis(e.into(), first))?
                }
                None => return Err(malformed(first)),
            };
            out.push(blob.and_then(|b| fetched(b, pttl)));
        }
        Ok(out)
    }

    /// Versioned `SET … PX`: true when stored, false when a higher version was already there.
    pub(crate) async fn set_versioned(
        &self,
        key: &str,
        envelope: &[u8],
        ttl: Duration,
    ) -> Result<bool> {
        let ttl_ms = ttl_ms(ttl);
        let script = &self.set_script;
        let stored: i64 = self
            .run("set", key, |mut c| async move {
                script
                    .key(key)
                    .arg(envelope)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(stored == 1)
    }

    /// Many versioned writes in one round trip. On `NOSCRIPT` (the server lost its script
    /// cache, e.g. after a restart) the script is loaded and the batch sent once more; the
    /// writes are idempotent, so a partial first attempt is harmless.
    pub(crate) async fn set_many(&self, items: &[(&str, Vec<u8>, Duration)]) -> Result<Vec<bool>> {
        let Some(first) = items.first().map(|i| i.0) else {
            return Ok(Vec::new());
        };
        let script = &self.set_script;
        let build = || {
            let mut p = redis::pipe();
            for (key, bytes, ttl) in items {
                p.cmd("EVALSHA")
                    .arg(script.get_hash())
                    .arg(1)
                    .arg(*key)
                    .arg(bytes.as_slice())
                    .arg(ttl_ms(*ttl));
            }
            p
        };
        let stored: Vec<i64> = self
            .run("set_many", first, |mut c| async move {
                match build().query_async(&mut c).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        script.load_async(&mut c).await?;
                        build().query_async(&mut c).await
                    }
                    other => other,
                }
            })
            .await?;
        Ok(stored.into_iter().map(|s| s == 1).collect())
    }

    /// `UNLINK` of the given keys (non-blocking delete on the server).
    pub(crate) async fn unlink(&self, keys: &[&str]) -> Result<u64> {
        let first = keys.first().copied().unwrap_or_default();
        self.run("delete", first, |mut c| async move {
            redis::cmd("UNLINK").arg(keys).query_async(&mut c).await
        })
        .await
    }

    /// Deletes `key` if it still holds exactly `bytes` (for a value that failed to decode: it
    /// goes, so a fill can replace it, unless someone wrote the key since it was read).
    /// Guarded like every caller's operation. True when it was deleted.
    pub(crate) async fn unlink_if_equals(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let script = &self.unlink_if_equals_script;
        let deleted: i64 = self
            .run("unlink_if_equals", key, |mut c| async move {
                script.key(key).arg(bytes).invoke_async(&mut c).await
            })
            .await?;
        Ok(deleted == 1)
    }

    /// Remaining TTL: `Ok(None)` when the key does not exist, `Some(None)` when it has no expiry.
    pub(crate) async fn pttl(&self, key: &str) -> Result<Option<Option<Duration>>> {
        let pttl: i64 = self
            .run("ttl", key, |mut c| async move {
                redis::cmd("PTTL").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok(match pttl {
            -2 => None,
            -1 => Some(None),
            ms => Some(Some(Duration::from_millis(ms.max(0) as u64))),
        })
    }

    /// `PING`, under the operation deadline.
    pub(crate) async fn ping(&self) -> Result<()> {
        let _: String = self
            .run("ping", "", |mut c| async move {
                redis::cmd("PING").query_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// The breaker's probe: `PING`, bypassing the breaker. Getting a connection (perhaps a
    /// fresh one) may take the probe deadline; the `PING` itself must answer within the
    /// callers' operation deadline: a Redis too slow for callers is not healthy yet. If the
    /// socket used turns out dead (pooled sockets are only found dead when used), every
    /// pooled socket is retired and the probe asks once more on a fresh one, rather than
    /// finding the dead ones one probe period at a time.
    pub(crate) async fn probe(&self) -> Result<()> {
        match self.probe_once().await {
            Err(e) if e.kind() == crate::ErrorKind::Unavailable => {
                tracing::debug!(error = %e, "probe socket dead; asking again on a fresh one");
                self.retire_connections();
                self.probe_once().await
            }
            other => other,
        }
    }

    async fn probe_once(&self) -> Result<()> {
        let within = self.breaker.config.probe_timeout;
        let conn = match tokio::time::timeout(within, self.conn()).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(Error::Timeout {
                    op: "probe_connect",
                    after: within,
                });
            }
        };
        let mut mux = conn.mux.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut mux);
        match tokio::time::timeout(self.op_timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                conn.note(&e);
                Err(Error::from_redis(e, ""))
            }
            Err(_) => Err(Error::Timeout {
                op: "probe",
                after: self.op_timeout,
            }),
        }
    }

    /// `UNLINK` for recovery, bypassing the breaker, under the probe deadline.
    pub(crate) async fn unlink_unguarded(&self, keys: &[&str]) -> Result<u64> {
        let deadline = self.breaker.config.probe_timeout;
        self.run_unguarded("recovery_unlink", "", deadline, |mut c| async move {
            redis::cmd("UNLINK").arg(keys).query_async(&mut c).await
        })
        .await
    }

    /// One `SCAN` step for `pattern` (recovery of an overflowed dirty log), bypassing the
    /// breaker: the next cursor and the keys found.
    pub(crate) async fn scan_unguarded(
        &self,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<String>)> {
        let deadline = self.breaker.config.probe_timeout;
        self.run_unguarded("recovery_scan", "", deadline, |mut c| async move {
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
        })
        .await
    }
}

/// A Redis TTL argument in whole milliseconds, at least 1 (`PX 0` is an error).
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn fetched(bytes: Vec<u8>, pttl: i64) -> Option<Fetched> {
    match pttl {
        // Gone between GET and PTTL cannot happen inside MULTI, but never serve it if it does.
        -2 => None,
        -1 => Some(Fetched {
            bytes,
            remaining: None,
        }),
        ms => Some(Fetched {
            bytes,
            remaining: Some(Duration::from_millis(ms.max(0) as u64)),
        }),
    }
}

fn malformed(key: &str) -> Error {
    Error::Decode {
        key: key.to_owned(),
        reason: "unexpected reply shape from redis".to_owned(),
    }
}

// The integration tests' harness (a real redis-server on a free port, killed on drop),
// shared rather than copied. A `#[path]` inside `mod tests` would resolve through a
// directory that does not exist, hence here.
#[cfg(test)]
#[allow(unreachable_pub, missing_docs, missing_debug_implementations)]
#[path = "../../tests/support/mod.rs"]
mod test_support;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::l2::guard::{BreakerConfig, BreakerState};

    use super::test_support as support;

    fn tier(server: &support::RedisServer) -> RedisTier {
        RedisTier::new(RedisOptions {
            url: server.url(),
            pool_size: 2,
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
        })
        .unwrap()
    }

    async fn raw_set(server: &support::RedisServer, key: &str, bytes: &[u8]) {
        let mut c = server.multiplexed().await;
        let () = redis::cmd("SET")
            .arg(key)
            .arg(bytes)
            .query_async(&mut c)
            .await
            .unwrap();
    }

    async fn raw_get(server: &support::RedisServer, key: &str) -> Option<Vec<u8>> {
        let mut c = server.multiplexed().await;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn unlink_if_equals_deletes_only_the_value_it_was_given() {
        let server = support::RedisServer::start();
        let l2 = tier(&server);
        raw_set(&server, "k", b"garbage").await;
        // Changed since it was read: left alone.
        assert!(!l2.unlink_if_equals("k", b"garbag").await.unwrap());
        raw_set(&server, "k", b"rewritten").await;
        assert!(!l2.unlink_if_equals("k", b"garbage").await.unwrap());
        assert_eq!(
            raw_get(&server, "k").await.as_deref(),
            Some(&b"rewritten"[..])
        );
        // Unchanged: deleted.
        assert!(l2.unlink_if_equals("k", b"rewritten").await.unwrap());
        assert_eq!(raw_get(&server, "k").await, None);
        // Absent, or another type: nothing to do, and not an error.
        assert!(!l2.unlink_if_equals("k", b"rewritten").await.unwrap());
        let mut c = server.multiplexed().await;
        let () = redis::cmd("RPUSH")
            .arg("list")
            .arg("x")
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .unwrap();
        assert!(!l2.unlink_if_equals("list", b"x").await.unwrap());
        assert_eq!(server.dbsize(), 1);
    }

    #[tokio::test]
    async fn only_envelopes_of_formats_1_and_2_carry_a_version_for_the_compare_and_set() {
        let server = support::RedisServer::start();
        let l2 = tier(&server);
        let ttl = Duration::from_secs(60);
        let v5 = codec::encode(5, &1u32, 1024).unwrap();
        // Format 2 at version 9 is a real version: version 5 is refused.
        raw_set(&server, "f2", &codec::encode(9, &1u32, 1024).unwrap()).await;
        assert!(!l2.set_versioned("f2", &v5, ttl).await.unwrap());
        // Format 1 at version 9 likewise.
        let mut f1 = vec![codec::MAGIC, codec::FORMAT_V1];
        f1.extend_from_slice(&9u64.to_be_bytes());
        f1.push(0x01);
        raw_set(&server, "f1", &f1).await;
        assert!(!l2.set_versioned("f1", &v5, ttl).await.unwrap());
        // An unknown format, or a format-2 header cut short, with a huge "version": absent.
        for (key, mut bytes) in [
            ("f3", vec![codec::MAGIC, 3]),
            ("short", vec![codec::MAGIC, codec::FORMAT]),
        ] {
            bytes.extend_from_slice(&[0xff; 8]);
            raw_set(&server, key, &bytes).await;
            assert!(l2.set_versioned(key, &v5, ttl).await.unwrap(), "{key}");
            assert_eq!(raw_get(&server, key).await.as_deref(), Some(&v5[..]));
        }
    }

    #[tokio::test]
    async fn argument_errors_from_redis_do_not_trip_the_breaker() {
        let server = support::RedisServer::start();
        let l2 = tier(&server);
        for _ in 0..10 {
            let err = l2
                .run("test", "z", |mut c| async move {
                    redis::cmd("EVAL")
                        .arg("return redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]))")
                        .arg(1)
                        .arg("z")
                        .arg(u64::MAX)
                        .query_async::<Value>(&mut c)
                        .await
                })
                .await
                .unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidValue, "{err}");
        }
        let b = l2.breaker.snapshot();
        assert_eq!((b.state, b.opened), (BreakerState::Closed, 0));
    }
}
