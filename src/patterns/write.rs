//! `WriteThrough`: the database first, then L2, then L1; a refused write invalidates, a failed cache write goes to the dirty log.

use std::sync::Arc;
use std::time::Duration;

use super::WriteError;
use crate::cache::Cache;
use crate::engine::dirty::DirtyLog;
use crate::engine::{Books, Engine, Layout, OnL2Failure, Values};
use crate::key::{BookSchema, Key, KeySchema, ValueSchema};
use crate::outcome::{SetOptions, WriteOutcome};
use crate::schema::BookSide;
use crate::source::{Source, Store};

/// Default deadline for one source write.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_millis(1000);

/// What an acknowledged write did.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteAck {
    /// The version the database gave the value.
    pub version: u64,
    /// What the cache did with it; `None` when the cache write failed (L1 then holds a
    /// version floor at `version`, so no older value can be read back from it, and the key is
    /// in the dirty log when Redis was unhealthy).
    pub cached: Option<WriteOutcome>,
}

/// Write-through (DESIGN §4 rule 3): the source of record first, and only a value it accepted
/// reaches a cache tier.
///
/// 1. The value is checked (size, book rules) before anything is written anywhere.
/// 2. The writer (the database) is called. If it fails or times out, the key is invalidated
///    in both tiers and the error returned: no reader sees a value the database refused, and
///    the previous value is gone, so the next read loads what the database holds.
/// 3. The cache gets the value with the database's version, so concurrent writers can never
///    leave an older value cached. If that cache write fails, the write is still acknowledged
///    (the database has it): L1 keeps a version floor at that version (DESIGN §4 rule 9; no
///    in-flight load can put the older value back), and the key is recorded in the bounded
///    [`DirtyLog`], to be deleted from L2 before L2 is trusted again.
/// 4. Cancel-safe: if the caller drops the future after the database write started (a
///    timeout, a `select!`), the key is floored (or evicted, when the database's answer never
///    arrived) and recorded dirty all the same.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mdcache::{Cache, MemorySource, Position, WriteThrough};
///
/// let cache = Cache::builder().build()?;
/// let writer = WriteThrough::new(cache.clone(), std::sync::Arc::new(MemorySource::default()));
/// let key = cache.key::<Position>("AAPL")?;
/// let ack = writer.write(&key, Position { qty: 5.0, avg_price: 10.0, realized_pnl: 0.0, seq: 1 }).await?;
/// assert_eq!(cache.read(&key).await?.unwrap().version, ack.version);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WriteThrough<Src> {
    cache: Cache,
    source: Arc<Src>,
    dirty: Arc<DirtyLog>,
    source_timeout: Duration,
}

impl<Src> Clone for WriteThrough<Src> {
    fn clone(&self) -> Self {
        WriteThrough {
            cache: self.cache.clone(),
            source: Arc::clone(&self.source),
            dirty: Arc::clone(&self.dirty),
            source_timeout: self.source_timeout,
        }
    }
}

/// Builds a [`WriteThrough`]; [`build`](Self::build) validates.
#[derive(Debug)]
#[must_use]
pub struct WriteThroughBuilder<Src> {
    cache: Cache,
    source: Arc<Src>,
    source_timeout: Duration,
}

impl<Src: Source> WriteThroughBuilder<Src> {
    /// Deadline for one source write (default 1 s); at most [`MAX_TTL`](crate::MAX_TTL).
    pub fn source_timeout(mut self, d: Duration) -> Self {
        self.source_timeout = d;
        self
    }

    /// Checks the settings (an error names the setting) and builds the write-through.
    pub fn build(self) -> Result<WriteThrough<Src>, crate::Error> {
        if self.source_timeout.is_zero() || self.source_timeout > crate::clock::MAX_TTL {
            return Err(crate::Error::config(
                "source_timeout",
                format!(
                    "must be greater than 0 and at most {:?}, not {:?}",
                    crate::clock::MAX_TTL,
                    self.source_timeout
                ),
            ));
        }
        Ok(WriteThrough::new(self.cache, self.source).with_source_timeout(self.source_timeout))
    }
}

impl<Src: Source> WriteThrough<Src> {
    /// Write-through over `cache` and `source`, recording into the cache's dirty log (which
    /// the cache's recovery replays before Redis is trusted again).
    pub fn new(cache: Cache, source: Arc<Src>) -> Self {
        WriteThrough {
            dirty: Arc::clone(cache.dirty_log()),
            cache,
            source,
            source_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }

    /// A builder over `cache` and `source` whose [`build`](WriteThroughBuilder::build)
    /// validates the settings.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::{sync::Arc, time::Duration};
    /// use mdcache::{Cache, MemorySource, WriteThrough};
    ///
    /// let cache = Cache::builder().build()?;
    /// let src = Arc::new(MemorySource::default());
    /// let writes = WriteThrough::builder(cache.clone(), Arc::clone(&src))
    ///     .source_timeout(Duration::from_millis(200))
    ///     .build()?;
    /// assert!(WriteThrough::builder(cache, src).source_timeout(Duration::ZERO).build().is_err());
    /// # drop(writes); Ok(()) }
    /// ```
    pub fn builder(cache: Cache, source: Arc<Src>) -> WriteThroughBuilder<Src> {
        WriteThroughBuilder {
            cache,
            source,
            source_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }

    /// Deadline for one source write (default 1 s). Not validated: prefer
    /// [`builder`](Self::builder), whose `build()` refuses a zero or over-long deadline.
    #[must_use]
    pub fn with_source_timeout(mut self, d: Duration) -> Self {
        self.source_timeout = d;
        self
    }

    /// The dirty log.
    pub fn dirty_log(&self) -> &Arc<DirtyLog> {
        &self.dirty
    }

    /// The source underneath.
    pub fn source(&self) -> &Arc<Src> {
        &self.source
    }

    /// Writes `value` at `key`: the database first, then the cache.
    pub async fn write<S: ValueSchema>(
        &self,
        key: &Key<S>,
        value: impl Into<Arc<S::Value>>,
    ) -> Result<WriteAck, WriteError<Src::Error>>
    where
        Src: Store<S>,
    {
        self.write_with::<S, Values>(key, value.into()).await
    }

    /// Writes a whole book side: the database first, then the cache.
    pub async fn write_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        side: BookSide,
    ) -> Result<WriteAck, WriteError<Src::Error>>
    where
        Src: Store<S>,
    {
        self.write_with::<S, Books>(key, Arc::new(side)).await
    }

    /// The write path of values and book sides alike.
    async fn write_with<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        value: Arc<S::Value>,
    ) -> Result<WriteAck, WriteError<Src::Error>>
    where
        Src: Store<S>,
    {
        let engine = self.cache.engine();
        // Refuse what the cache would refuse, before the database sees it.
        L::check(&value, engine.config().max_value_bytes.get()).map_err(WriteError::Invalid)?;
        // From here the database may hold a new version: if this future is dropped (the
        // caller's timeout, a `select!`) before the cache is settled, the guard distrusts the
        // key instead of leaving the older cached value in place.
        let mut guard = Unsettled::new(engine, key);
        let version = match self.write_source(key, &value).await {
            Ok(v) => v,
            Err(e) => {
                // Refused: write_source already invalidated the key (or recorded it dirty).
                guard.settled();
                return Err(e);
            }
        };
        guard.version = Some(version);
        // On a failed cache write, L1 keeps a floor at this version (rule 9), not the value.
        let cached = engine
            .store::<S, L>(
                key,
                value,
                version,
                SetOptions::default(),
                OnL2Failure::Floor,
            )
            .await;
        guard.settled();
        Ok(self.finish(key, version, cached))
    }

    async fn write_source<S: KeySchema>(
        &self,
        key: &Key<S>,
        value: &S::Value,
    ) -> Result<u64, WriteError<Src::Error>>
    where
        Src: Store<S>,
    {
        let ks = self.cache.engine().ks(key);
        ks.source_writes.inc();
        let result = tokio::time::timeout(self.source_timeout, self.source.write(key, value)).await;
        let err = match result {
            Ok(Ok(version)) => return Ok(version),
            Ok(Err(e)) => WriteError::Source(e),
            Err(_) => WriteError::SourceTimeout(self.source_timeout),
        };
        ks.source_errors.inc();
        // Whatever was cached may no longer match the database (or the write may still
        // commit after a timeout): drop it from both tiers so the next read loads.
        if let Err(e) = self.cache.engine().delete(key).await {
            tracing::warn!(key = key.as_str(), error = %e, "invalidation after a refused write failed; key recorded as dirty");
            self.cache.engine().record_dirty(key);
        }
        Err(err)
    }

    fn finish<S: KeySchema>(
        &self,
        key: &Key<S>,
        version: u64,
        cached: crate::Result<WriteOutcome>,
    ) -> WriteAck {
        match cached {
            Ok(outcome) => WriteAck {
                version,
                cached: Some(outcome),
            },
            Err(e) => {
                // The cache write (policy `Floor`) left a version floor in L1. When Redis was
                // unhealthy, it may or may not hold the value: distrust its copy until
                // recovery deletes it. When Redis is healthy and refused (the key holds
                // another Redis type), the key is not ours: recovery must not delete it.
                if e.trips_breaker() || e.is_breaker_open() {
                    tracing::warn!(key = key.as_str(), error = %e, "cache write after a database write failed; key recorded as dirty");
                    self.cache.engine().record_dirty(key);
                } else {
                    tracing::warn!(key = key.as_str(), error = %e, "cache write after a database write refused by redis; L1 floored");
                }
                WriteAck {
                    version,
                    cached: None,
                }
            }
        }
    }
}

/// The cancel-safety guard of a write-through (DESIGN §4 rule 9): armed from the moment the
/// source write starts until the cache is settled. Dropped armed (the caller's future was
/// dropped), it distrusts the key: with the database's version known, L1 keeps a floor at it;
/// with the source write itself interrupted (committed or not, nobody knows), L1 drops the
/// key. Either way the key goes to the dirty log, so Redis's copy is deleted before it is
/// trusted again.
struct Unsettled<'a, S: KeySchema> {
    engine: &'a Engine,
    key: &'a Key<S>,
    /// The version the database gave the value, once known.
    version: Option<u64>,
    armed: bool,
}

impl<'a, S: KeySchema> Unsettled<'a, S> {
    fn new(engine: &'a Engine, key: &'a Key<S>) -> Self {
        Unsettled {
            engine,
            key,
            version: None,
            armed: true,
        }
    }

    /// The write finished (acknowledged or refused): nothing for the guard to do.
    fn settled(&mut self) {
        self.armed = false;
    }
}

impl<S: KeySchema> Drop for Unsettled<'_, S> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match self.version {
            Some(v) => self.engine.floor(self.key, v),
            None => self.engine.evict_l1(self.key),
        }
        self.engine.record_dirty(self.key);
        tracing::debug!(
            key = self.key.as_str(),
            version = ?self.version,
            "write-through dropped before the cache was settled; key distrusted"
        );
    }
}
