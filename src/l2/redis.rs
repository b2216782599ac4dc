//! `RedisTier`: the L2 on one Redis server, a bb8 pool of multiplexed connections, every caller's operation through the resilience guard.
//!
//! Pool use: bb8 opens, keeps and replaces the connections; an operation does not check one out.
//! Two *lanes* each hold a multiplexed handle taken from the pool: callers' operations share
//! one, the market-data writer's batches and recovery's commands the other (so a read never
//! waits behind a thousand-key flush on the same socket). Every caller's command pipelines on
//! the one socket, which is what keeps Redis's cost per read low: spread over 16 connections the
//! same reads cost Redis about twice the CPU (issue 15's measurements), and a bb8 checkout per
//! operation cost more than the command's own client work. A lane goes back to the pool for a
//! fresh handle when its connection is found dead (an I/O error flags it) or retired
//! ([`reset_connections`](L2::reset_connections) after an outage); bb8 then drops the dead one
//! and opens its replacement. The default test-on-checkout `PING` is turned off.

use std::time::Duration;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bb8_redis::RedisConnectionManager;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult, Value};

use super::book;
use super::boundary::{Fetched, L2, Put, PutReply, ScanPos, TopReply};
use super::commands::{self, Scripts};
use super::pool::{Conn, Generation, LastError, Manager};
use super::values;
use crate::error::{Error, Result};
use crate::resilience::{BreakerConfig, CircuitBreaker, Guard, RetryConfig, ShardBreaker};
use crate::schema::{BookSide, BookSideKind};

/// Options for building a [`RedisTier`].
#[derive(Clone)]
pub(crate) struct RedisOptions {
    /// Where and how to connect ([`connection_info`](super::connection_info)); may hold a
    /// password, so `Debug` shows the address only.
    pub(crate) info: redis::ConnectionInfo,
    pub(crate) pool_size: u32,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker: BreakerConfig,
    pub(crate) retry: RetryConfig,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let RedisOptions {
            info,
            pool_size,
            op_timeout,
            connect_timeout,
            breaker,
            retry,
        } = self;
        f.debug_struct("RedisOptions")
            .field("addr", &info.addr().to_string())
            .field("pool_size", pool_size)
            .field("op_timeout", op_timeout)
            .field("connect_timeout", connect_timeout)
            .field("breaker", breaker)
            .field("retry", retry)
            .finish()
    }
}

/// A multiplexed connection operations use without a checkout; refilled from the pool when
/// empty or stale.
#[derive(Default)]
struct Lane(ArcSwapOption<Conn>);

/// The L2 on one Redis (or Valkey) server.
pub(crate) struct RedisTier {
    pool: bb8::Pool<Manager>,
    /// Callers' operations.
    callers: Lane,
    /// The writer's batches, recovery and admin commands.
    batches: Lane,
    /// Admission, deadline, retries and the breaker of every caller's operation.
    guard: Guard,
    connect_timeout: Duration,
    /// Shared with the manager, which records connect failures in it.
    last_error: LastError,
    /// Shared with the manager; bumped to retire every open connection.
    generation: Generation,
    pool_size: u32,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("pool", &self.pool.state())
            .field("op_timeout", &self.guard.deadline())
            .finish()
    }
}

impl RedisTier {
    /// Builds the pool without waiting for a connection: a cache must start (and serve L1 and
    /// errors quickly) even while Redis is down. Connections are opened in the background.
    pub(crate) fn new(opts: RedisOptions) -> Result<Self> {
        let inner = RedisConnectionManager::new(opts.info.clone())
            .map_err(|e| Error::config("CACHE_REDIS_URL", e.to_string()))?;
        let last_error = LastError::default();
        let generation = Generation::default();
        let client = redis::Client::open(opts.info.clone())
            .map_err(|e| Error::config("CACHE_REDIS_URL", e.to_string()))?;
        let manager = Manager {
            inner,
            client,
            connect_timeout: opts.connect_timeout,
            last_error: last_error.clone(),
            generation: generation.clone(),
        };
        let pool = bb8::Pool::builder()
            .max_size(opts.pool_size)
            .min_idle(Some(opts.pool_size))
            .test_on_check_out(false)
            .connection_timeout(opts.connect_timeout)
            // Fail a checkout at once when opening a connection fails (refused, reset) instead
            // of retrying until connection_timeout: our own retries and deadline decide.
            .retry_connection(false)
            // No reaper task: connections are replaced when found broken or retired (see
            // `conn`), never for age or idleness, and a dropped cache leaves no task behind.
            .idle_timeout(None)
            .max_lifetime(None)
            .error_sink(Box::new(last_error.clone()))
            .build_unchecked(manager);
        Ok(RedisTier {
            pool,
            callers: Lane::default(),
            batches: Lane::default(),
            guard: Guard::new(&opts.breaker, opts.retry, opts.op_timeout),
            connect_timeout: opts.connect_timeout,
            last_error,
            generation,
            pool_size: opts.pool_size,
            scripts: Scripts::new(),
        })
    }

    /// The lane's connection, or (when it has none, or a dead or retired one) a fresh one from
    /// the pool, which the lane then keeps. Tasks that find it stale together may each check
    /// one out; the last one stored stays, the others serve their own operation only.
    #[inline]
    async fn lane_conn(&self, lane: &Lane) -> Result<Arc<Conn>> {
        if let Some(conn) = &*lane.0.load()
            && !conn.is_stale(&self.generation)
        {
            return Ok(Arc::clone(conn));
        }
        let fresh = Arc::new(self.conn().await?);
        lane.0.store(Some(Arc::clone(&fresh)));
        Ok(fresh)
    }

    /// A multiplexed handle from the pool; the pooled connection goes straight back.
    async fn conn(&self) -> Result<Conn> {
        // Skip connections known dead or retired: dropping the guard hands them back to bb8,
        // which discards them. Bounded by the pool size (+1 for the fresh one).
        for _ in 0..self.pool_size {
            match self.pool.get().await {
                Ok(pooled) => {
                    if pooled.is_stale(&self.generation) {
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
            bb8::RunError::User(e) => Error::redis(e),
            bb8::RunError::TimedOut => match self.last_error.get() {
                Some(e) => Error::redis(e),
                None => Error::Timeout {
                    op: "connect",
                    after: self.connect_timeout,
                },
            },
        }
    }

    /// Runs `f` for a caller through the [`Guard`] (refused while the breaker is open; under
    /// the operation deadline; retried on connection failures; recorded by the breaker).
    /// Errors for `key` are mapped (`WRONGTYPE` → [`Error::WrongType`]) and a dead socket is
    /// flagged for replacement.
    #[inline]
    async fn run<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.guard
            .run(
                op,
                || self.attempt(&self.callers, key, &f),
                // If connections are failing to open, say why rather than only "timed out".
                || {
                    self.last_error
                        .get()
                        .filter(|e| !e.is_timeout())
                        .map(Error::redis)
                },
            )
            .await
    }

    /// [`run`](Self::run) under `deadline` instead of the operation deadline, on the batches'
    /// lane (the writer's flushes).
    async fn run_within<T, F, Fut>(
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
        self.guard
            .run_within(
                op,
                deadline,
                || self.attempt(&self.batches, key, &f),
                || {
                    self.last_error
                        .get()
                        .filter(|e| !e.is_timeout())
                        .map(Error::redis)
                },
            )
            .await
    }

    /// Runs `f` once under the probe deadline, bypassing the breaker (the recovery replay
    /// uses it while callers are kept out).
    async fn run_for_recovery<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = self.guard.breaker().probe_timeout();
        Guard::run_unguarded(op, deadline, self.attempt(&self.batches, "", &f)).await
    }

    async fn attempt<T, F, Fut>(&self, lane: &Lane, key: &str, f: &F) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self.lane_conn(lane).await?;
        f(conn.mux.clone()).await.map_err(|e| {
            conn.note(&e);
            Error::from_redis(e, key)
        })
    }
}

impl L2 for RedisTier {
    commands::keyed_operations!();

    /// `PTTL` then `GET` of one key, pipelined in one round trip: two commands, not the four
    /// of `MULTI GET PTTL EXEC`. Another client's write may run between the two; the order
    /// makes that safe (see [`values::fetched_pttl_first`]).
    async fn get(&self, key: &str) -> Result<Option<Fetched>> {
        let (pttl, bytes): (i64, Option<Vec<u8>>) = self
            .run("get", key, |mut c| async move {
                redis::pipe().pttl(key).get(key).query_async(&mut c).await
            })
            .await?;
        Ok(bytes.map(|bytes| values::fetched_pttl_first(bytes, pttl)))
    }

    /// `GET`+`PTTL` of many keys in one round trip (`MULTI`, one `MGET`, a `PTTL` per key).
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Fetched>>> {
        let Some(&first) = keys.first() else {
            return Ok(Vec::new());
        };
        let replies: Vec<Value> = self
            .run("get_many", first, |mut c| async move {
                let mut p = redis::pipe();
                p.atomic().cmd("MGET").arg(keys);
                for k in keys {
                    p.pttl(*k);
                }
                p.query_async(&mut c).await
            })
            .await?;
        values::parse_get_many(first, replies)
    }

    /// Many versioned writes in one round trip (see [`commands::set_many`]).
    async fn set_many(&self, items: &[(&str, Vec<u8>, Duration)]) -> Result<Vec<bool>> {
        let Some(first) = items.first().map(|i| i.0) else {
            return Ok(Vec::new());
        };
        let items: Vec<(&str, &[u8], Duration)> = items
            .iter()
            .map(|(k, b, t)| (*k, b.as_slice(), *t))
            .collect();
        let (scripts, items) = (&self.scripts, items.as_slice());
        let stored = self
            .run("set_many", first, |mut c| async move {
                commands::set_many(&mut c, scripts, items).await
            })
            .await?;
        Ok(stored.into_iter().map(|s| s == 1).collect())
    }

    /// The whole batch as one pipeline (see [`commands::put_many`]).
    async fn put_many(&self, items: &[Put<'_>], within: Duration) -> Result<Vec<PutReply>> {
        let Some(first) = items.first() else {
            return Ok(Vec::new());
        };
        let scripts = &self.scripts;
        self.run_within(
            "put_many",
            commands::put_key(first),
            within,
            |mut c| async move { commands::put_many(&mut c, scripts, items).await },
        )
        .await
    }

    async fn unlink(&self, keys: &[&str]) -> Result<u64> {
        let first = keys.first().copied().unwrap_or_default();
        self.run("delete", first, |mut c| async move {
            commands::unlink(&mut c, keys).await
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self
            .run("ping", "", |mut c| async move {
                redis::cmd("PING").query_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    #[inline]
    fn breaker(&self) -> &CircuitBreaker {
        self.guard.breaker()
    }

    /// One server is one shard.
    async fn probe_shards(&self) -> bool {
        false
    }

    fn shard_breakers(&self) -> Vec<ShardBreaker> {
        Vec::new()
    }

    fn replay_group(&self, _key: &str) -> Option<u16> {
        Some(0)
    }

    async fn probe_ping(&self) -> Result<()> {
        let within = self.guard.breaker().probe_timeout();
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
        let answer_within = self.guard.deadline();
        match tokio::time::timeout(answer_within, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                conn.note(&e);
                Err(Error::from_redis(e, ""))
            }
            Err(_) => Err(Error::Timeout {
                op: "probe",
                after: answer_within,
            }),
        }
    }

    /// Retires every pooled connection: each is discarded when next checked out, and the lanes
    /// let go of theirs at once (else a lane would hold a retired socket open until its next
    /// operation, which an open breaker may not allow for a while).
    fn reset_connections(&self) {
        self.generation.retire_all();
        self.callers.0.store(None);
        self.batches.0.store(None);
    }

    async fn recovery_unlink(&self, keys: &[&str]) -> Result<u64> {
        self.run_for_recovery("recovery_unlink", |mut c| async move {
            commands::unlink(&mut c, keys).await
        })
        .await
    }

    async fn info(&self, section: &str) -> Result<Vec<(String, String)>> {
        let text = self
            .run_for_recovery("admin_info", |mut c| async move {
                redis::cmd("INFO")
                    .arg(section)
                    .query_async::<String>(&mut c)
                    .await
            })
            .await?;
        Ok(vec![("server".to_owned(), text)])
    }

    async fn scan_step(
        &self,
        at: ScanPos,
        pattern: &str,
        count: u32,
    ) -> Result<(Vec<String>, Option<ScanPos>)> {
        if at.node != 0 {
            return Ok((Vec::new(), None));
        }
        let (next, keys) = self
            .run_for_recovery("admin_scan", |mut c| async move {
                commands::scan_counting(&mut c, at.cursor, pattern, count).await
            })
            .await?;
        Ok((
            keys,
            (next != 0).then_some(ScanPos {
                node: 0,
                cursor: next,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::resilience::BreakerState;

    use crate::l2::test_support as support;

    fn tier(server: &support::RedisServer) -> RedisTier {
        RedisTier::new(RedisOptions {
            info: redis::IntoConnectionInfo::into_connection_info(server.url().as_str()).unwrap(),
            pool_size: 2,
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
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
        let b = l2.breaker().snapshot();
        assert_eq!((b.state, b.opened), (BreakerState::Closed, 0));
    }
}
