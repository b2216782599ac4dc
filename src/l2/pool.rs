//! The bb8 connection manager behind `RedisTier`: multiplexed connections, flagged when their socket dies, retired by generation, with the last connect error kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bb8_redis::RedisConnectionManager;
use redis::RedisError;
use redis::aio::MultiplexedConnection;

/// Connection manager: bb8-redis's manager (its validity check), connections opened without
/// redis-rs's own response timeout, plus a flag that marks a connection broken.
#[derive(Debug, Clone)]
pub(crate) struct Manager {
    pub(crate) inner: RedisConnectionManager,
    /// Opens the connections: bb8-redis's `connect` would keep redis-rs's default 500 ms
    /// response timeout, a second timer per command beside the guard's deadline (every
    /// caller's operation has one), measurable CPU at tens of thousands of reads a second.
    pub(crate) client: redis::Client,
    pub(crate) connect_timeout: Duration,
    pub(crate) last_error: LastError,
    /// Connections opened before this generation are retired (see [`Generation::retire_all`]).
    pub(crate) generation: Generation,
}

/// The most recent failure to open a connection, cleared by the next success. bb8 reports a
/// caller only "timed out waiting for a connection"; this lets the caller hear "connection
/// refused" instead, so a dead server is not mistaken for a hung one.
#[derive(Debug, Clone, Default)]
pub(crate) struct LastError(Arc<std::sync::Mutex<Option<RedisError>>>);

impl LastError {
    fn set(&self, e: Option<RedisError>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub(crate) fn get(&self) -> Option<RedisError> {
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

/// The pool's generation: a connection opened in an older one is discarded when next seen.
#[derive(Debug, Clone, Default)]
pub(crate) struct Generation(Arc<AtomicU64>);

impl Generation {
    fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Retires every connection open now: each is discarded when next checked out, so the
    /// probe after an outage talks over fresh sockets instead of finding the dead ones one
    /// probe period at a time.
    pub(crate) fn retire_all(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
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
    /// Flags the connection for replacement when `e` says its socket is gone.
    pub(crate) fn note(&self, e: &RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            self.broken.store(true, Ordering::Relaxed);
        }
    }

    /// True when the connection is known dead or was retired.
    #[inline]
    pub(crate) fn is_stale(&self, generation: &Generation) -> bool {
        self.broken.load(Ordering::Relaxed) || self.generation < generation.current()
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let opening = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let mux = match tokio::time::timeout(self.connect_timeout, opening).await {
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
            generation: self.generation.current(),
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        self.inner.is_valid(&mut conn.mux).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.is_stale(&self.generation)
    }
}
