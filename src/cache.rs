//! `Cache`: the public facade — typed reads and writes over L1 and L2, each a one-line delegation to the engine.

use std::sync::Arc;

use crate::builder::CacheBuilder;
use crate::config::{Backend, CacheConfig};
use crate::engine::dirty::DirtyLog;
use crate::engine::{Books, Engine, OnL2Failure, Values};
use crate::error::Result;
use crate::key::{BookSchema, Key, KeySchema, ValueSchema};
use crate::outcome::{KeyTtl, Read, SetOptions, WriteOutcome};
use crate::resilience::BreakerSnapshot;
use crate::schema::BookSide;
use crate::stats::StatsSnapshot;

/// The cache: typed reads and writes over L1 (in-process) and L2 (Redis).
///
/// Cheap to clone (one `Arc`); clones share everything.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> mdcache::Result<()> {
/// use mdcache::{Cache, Price, Tier};
///
/// let cache = Cache::builder().build()?; // memory backend: L1 only
/// let key = cache.key::<Price>("AAPL")?;  // mdc:price:{AAPL}, TTL 100 ms
/// let px = Price { bid: 189.51, ask: 189.53, bid_size: 300.0, ask_size: 200.0,
///                  last: 189.52, seq: 42, exchange_ts_ns: 0 };
/// cache.set(&key, px, 42).await?;
/// let read = cache.read(&key).await?.expect("just written");
/// assert_eq!((read.version, read.tier), (42, Tier::L1));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Engine>,
}

impl Cache {
    /// A builder with the defaults of DESIGN §6.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// A validated key of kind `S` for identifier `id`, with the kind's TTL after overrides.
    /// Build keys once and reuse them: reads then do no formatting.
    pub fn key<S: KeySchema>(&self, id: &str) -> Result<Key<S>> {
        self.inner.key(id)
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.inner.backend()
    }

    /// The configuration the cache was built with.
    pub fn config(&self) -> &CacheConfig {
        self.inner.config()
    }

    /// A snapshot of the counters, with L1's current size.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats()
    }

    /// The value at `key`, from the nearest tier that has it fresh.
    ///
    /// An L1 hit costs one map lookup, one clock read and an `Arc` clone. A value in Redis that
    /// does not decode is counted in `decode_errors` and returned as a miss, never served.
    ///
    /// (Written as a function returning the engine's future rather than an `async fn`, so the
    /// hit path is one future, not a future wrapping another: `cache.get(&key).await` as usual.)
    #[inline]
    pub fn get<'a, S: ValueSchema>(
        &'a self,
        key: &'a Key<S>,
    ) -> impl Future<Output = Result<Option<Arc<S::Value>>>> + Send + 'a {
        self.inner.get(key)
    }

    /// Like [`get`](Self::get), with provenance: tier, version, age and remaining TTL.
    #[inline]
    pub fn read<'a, S: ValueSchema>(
        &'a self,
        key: &'a Key<S>,
    ) -> impl Future<Output = Result<Option<Read<S::Value>>>> + Send + 'a {
        self.inner.read(key)
    }

    /// Writes `value` at `version` with the key's TTL. A lower version never replaces a higher
    /// one in either tier; that write returns [`WriteOutcome::Superseded`].
    ///
    /// # When Redis fails
    ///
    /// If the Redis write fails with Redis unhealthy (a timeout, a broken or refused
    /// connection, an error reply, or the circuit breaker open, when Redis is not contacted at
    /// all), the error is counted and the key is recorded in the [dirty log](Self::dirty_log):
    /// this cache stops trusting Redis's copy, and recovery deletes it before Redis is trusted
    /// again (DESIGN §5). Then:
    ///
    /// - with an L1 (the layered backend), the value goes to L1 under the version rule, with
    ///   the deadline a successful write would have had, and the write returns
    ///   [`WriteOutcome::LocalOnly`] ([`WriteOutcome::Superseded`] if L1 holds a higher
    ///   version). Readers in this process see the value; other processes do not. Should L1
    ///   not take it for another reason (its TTL ran out while Redis was being tried), the
    ///   error is returned;
    /// - without an L1 (the Redis backend), the error is returned.
    ///
    /// Refused input (a zero TTL or one above [`MAX_TTL`](crate::MAX_TTL), a value over the
    /// size limit) is an error before any I/O, with nothing written or recorded. The TTL is
    /// used in whole milliseconds (Redis's precision) in both tiers; under 1 ms it becomes
    /// 1 ms. A key that holds another Redis type
    /// ([`ErrorKind::WrongType`](crate::ErrorKind::WrongType)) is an error too: an older L1
    /// copy is evicted (a newer one stays) and nothing is recorded, since Redis is healthy and
    /// the key is not ours to delete.
    ///
    /// [`WriteThrough`](crate::WriteThrough) does not keep a value in L1 when its cache write
    /// fails; it leaves a version floor there (DESIGN §4 rule 9) and acknowledges with
    /// `cached: None`.
    pub async fn set<S: ValueSchema>(
        &self,
        key: &Key<S>,
        value: impl Into<Arc<S::Value>>,
        version: u64,
    ) -> Result<WriteOutcome> {
        self.set_with(key, value, version, SetOptions::default())
            .await
    }

    /// [`set`](Self::set) with options (a TTL override).
    pub async fn set_with<S: ValueSchema>(
        &self,
        key: &Key<S>,
        value: impl Into<Arc<S::Value>>,
        version: u64,
        opts: SetOptions,
    ) -> Result<WriteOutcome> {
        self.inner
            .store::<S, Values>(key, value.into(), version, opts, OnL2Failure::KeepLocal)
            .await
    }

    /// Deletes `key` from both tiers (`UNLINK` in Redis). Returns whether it existed in the
    /// outermost tier (Redis when there is one).
    pub async fn delete<S: KeySchema>(&self, key: &Key<S>) -> Result<bool> {
        self.inner.delete(key).await
    }

    /// The key's remaining TTL in the outermost tier (Redis when there is one).
    pub async fn ttl<S: KeySchema>(&self, key: &Key<S>) -> Result<KeyTtl> {
        self.inner.ttl(key).await
    }

    /// Reads many keys: L1 first, then every L1 miss from Redis in one round trip.
    /// The result has one entry per key, in order.
    pub async fn get_many<S: ValueSchema>(
        &self,
        keys: &[Key<S>],
    ) -> Result<Vec<Option<Read<S::Value>>>> {
        self.inner.get_many(keys).await
    }

    /// Writes many values (each with its version and the key's TTL) in one Redis round trip.
    /// Every value is encoded and checked first: if any is refused, nothing is written.
    ///
    /// Unlike [`set`](Self::set), a failed Redis round trip is an error for the whole batch,
    /// and no value is kept in L1: every key is evicted from L1 and the error counted for it.
    /// When Redis was unhealthy (a timeout, a broken or refused connection, an error reply, or
    /// the circuit breaker open) every key is also recorded in the
    /// [dirty log](Self::dirty_log), since any part of the batch may or may not have landed
    /// and Redis may keep older copies: they are distrusted by this cache, and deleted from
    /// Redis by recovery before it is trusted again.
    pub async fn set_many<'k, S: ValueSchema>(
        &self,
        items: impl IntoIterator<Item = (&'k Key<S>, S::Value, u64)>,
    ) -> Result<Vec<WriteOutcome>> {
        self.inner.set_many(items).await
    }

    /// Replaces one side of a book (every level) at `version`, atomically with its expiry.
    /// Levels may come in any order; prices must be finite and distinct, quantities finite
    /// and non-negative, or nothing is written.
    ///
    /// When the Redis write fails, the side is kept in this process's L1 and the key recorded
    /// in the dirty log ([`WriteOutcome::LocalOnly`]), exactly as for [`set`](Self::set) (see
    /// its "When Redis fails"); an invalid side is an error before any I/O, with nothing
    /// written or recorded.
    pub async fn set_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        side: BookSide,
        version: u64,
    ) -> Result<WriteOutcome> {
        self.set_book_with(key, side, version, SetOptions::default())
            .await
    }

    /// [`set_book`](Self::set_book) with options (a TTL override).
    pub async fn set_book_with<S: BookSchema>(
        &self,
        key: &Key<S>,
        side: BookSide,
        version: u64,
        opts: SetOptions,
    ) -> Result<WriteOutcome> {
        self.inner
            .store::<S, Books>(key, Arc::new(side), version, opts, OnL2Failure::KeepLocal)
            .await
    }

    /// The best `depth` levels of a book side (best first: highest bid, lowest ask), from the
    /// nearest tier that has them fresh. `depth == 0` reads every level.
    pub async fn get_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        depth: usize,
    ) -> Result<Option<Arc<BookSide>>> {
        Ok(self
            .inner
            .read_with(key, Books::depth(depth))
            .await?
            .map(|r| r.value))
    }

    /// Like [`get_book`](Self::get_book), with provenance: tier, version, age and remaining
    /// TTL.
    pub async fn read_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        depth: usize,
    ) -> Result<Option<Read<BookSide>>> {
        self.inner.read_with(key, Books::depth(depth)).await
    }

    /// Waits until every market-data write queued before this call (each
    /// [`WriteOutcome::Queued`]) has reached Redis: flushed now, without waiting for the flush
    /// interval. `Ok(())` when Redis took each of them or held a higher version; an error when
    /// some of them could not be written (Redis failing, or the breaker open) — those keys are
    /// then in this process's L1 and the [dirty log](Self::dirty_log), like a failed `set`.
    /// (The error is conservative: a failed flush of a key queued after the call reports it
    /// too.) `Ok(())` at once when nothing is queued, or without a Redis tier.
    ///
    /// Until a queued write is flushed, this process reads it from L1 (or from the queue, if
    /// L1 dropped it), and other processes read the older value Redis still holds (or, with
    /// the backplane, the value itself once its next round has published it).
    ///
    /// With the backplane, it also waits until everything this cache queued for it before the
    /// call has been published (one round, at most a flush interval plus a `PUBLISH`), so a
    /// process that writes and exits still tells the other instances.
    pub async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    /// Round trip to Redis under the operation deadline; `Ok` for a memory-only cache.
    pub async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    /// The circuit breaker's figures; `None` without Redis. On a Redis Cluster, every
    /// shard's breaker and the cluster's own together: counts summed, and the least healthy
    /// state (one open shard shows `Open`); [`shard_breakers`](Self::shard_breakers) has them
    /// one by one.
    pub fn breaker(&self) -> Option<BreakerSnapshot> {
        self.inner.breaker()
    }

    /// Each shard's circuit breaker on a Redis Cluster, by lowest hash slot: one failed
    /// primary opens its own shard's breaker only, so its keys fail fast (and fall back to
    /// the source) while the other shards serve as usual. Empty on one server.
    ///
    /// ```
    /// # let cache = mdcache::Cache::builder().build().unwrap();
    /// for shard in cache.shard_breakers() {
    ///     println!("slots from {}: {:?}", shard.first_slot, shard.breaker.state);
    /// }
    /// ```
    pub fn shard_breakers(&self) -> Vec<crate::ShardBreaker> {
        self.inner.shard_breakers()
    }

    /// The dirty log: keys whose Redis copy is distrusted until recovery deletes them.
    /// [`WriteThrough`](crate::WriteThrough) records into it, and so do cache writes whose
    /// Redis write failed ([`set`](Self::set), [`set_book`](Self::set_book),
    /// [`set_many`](Self::set_many)); recovery replays it.
    pub fn dirty_log(&self) -> &Arc<DirtyLog> {
        self.inner.dirty_log()
    }

    /// Drops every L1 entry (Redis is untouched).
    pub fn clear_l1(&self) {
        self.inner.clear_l1()
    }

    /// What the fallback path has done so far: source loads while Redis failed, by reason,
    /// with latency, loads refused for lack of a slot, stale values served. One set of
    /// figures per cache, shared by every [`CacheAside`](crate::CacheAside) over it.
    pub fn fallback_stats(&self) -> crate::fallback::FallbackSnapshot {
        self.inner.fallback().snapshot()
    }

    /// Wraps a started engine.
    pub(crate) fn from_engine(engine: Engine) -> Cache {
        let inner = Arc::new(engine);
        // Background tasks that need the engine hold it weakly, so dropping the last `Cache`
        // still drops it (and stops them).
        inner.spawn_tasks(&inner);
        Cache { inner }
    }

    /// The engine, for the patterns (cache-aside, write-through) built over this cache.
    #[inline]
    pub(crate) fn engine(&self) -> &Engine {
        &self.inner
    }

    /// Resolves once Redis is trusted again after an outage: the circuit breaker closed and
    /// the dirty log replayed (empty). At once when it already is, and for a memory-only
    /// cache. Wakes on the breaker's transitions and the supervisor's replays, not on a timer;
    /// bound it with a timeout (it cannot resolve while Redis stays down).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = mdcache::Cache::builder().build().unwrap();
    /// cache.recovered().await; // memory-only: nothing to recover
    /// # }
    /// ```
    pub async fn recovered(&self) {
        self.inner.recovered().await
    }
}

impl CacheBuilder {
    /// Validates the settings and builds the cache. Backends with Redis need a Tokio runtime
    /// (the pool opens its connections in the background) but do not wait for Redis: a cache
    /// built while Redis is down starts, and its L2 operations fail fast until Redis is back.
    ///
    /// The recovery supervisor (probe, dirty-log replay, closing the breaker) is spawned on
    /// the current runtime: build the cache on a runtime that lives as long as the cache. If
    /// that runtime shuts down first, an open breaker can never close again.
    pub fn build(self) -> Result<Cache> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let config = self.config;
        config.validate()?;
        Engine::start(config, self.clock.unwrap_or_default()).map(Cache::from_engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::schema::{BookBid, Level, Price};
    use std::time::Duration;

    fn px(seq: u64) -> Price {
        Price {
            bid: 1.0,
            ask: 2.0,
            bid_size: 1.0,
            ask_size: 1.0,
            last: 1.5,
            seq,
            exchange_ts_ns: 0,
        }
    }

    #[tokio::test]
    async fn memory_backend_honours_ttl_with_a_mock_clock() {
        let (clock, mock) = Clock::mock();
        let cache = Cache::builder().clock(clock).build().unwrap();
        let key = cache.key::<Price>("AAPL").unwrap();
        assert_eq!(
            cache.set(&key, px(1), 1).await.unwrap(),
            WriteOutcome::Applied
        );
        mock.advance(Duration::from_millis(99));
        assert!(cache.get(&key).await.unwrap().is_some());
        assert_eq!(
            cache.ttl(&key).await.unwrap(),
            KeyTtl::Expires(Duration::from_millis(1))
        );
        mock.advance(Duration::from_millis(1));
        assert!(cache.get(&key).await.unwrap().is_none());
        assert_eq!(cache.ttl(&key).await.unwrap(), KeyTtl::Missing);
    }

    #[tokio::test]
    async fn memory_backend_keeps_the_highest_version() {
        let cache = Cache::builder().build().unwrap();
        let key = cache.key::<Price>("AAPL").unwrap();
        cache.set(&key, px(5), 5).await.unwrap();
        assert_eq!(
            cache.set(&key, px(3), 3).await.unwrap(),
            WriteOutcome::Superseded
        );
        let r = cache.read(&key).await.unwrap().unwrap();
        assert_eq!((r.version, r.value.seq), (5, 5));
        let s = cache.stats();
        assert_eq!(s.total.writes, 1);
        assert_eq!(s.total.writes_superseded, 1);
        assert_eq!(s.kind("price").unwrap().l1_hits, 1);
    }

    #[tokio::test]
    async fn memory_books_read_top_n_best_first() {
        let cache = Cache::builder().build().unwrap();
        let key = cache.key::<BookBid>("ES").unwrap();
        let levels = [(10.0, 1.0), (12.0, 2.0), (11.0, 3.0)]
            .into_iter()
            .map(|(price, qty)| Level { price, qty })
            .collect();
        cache.set_book(&key, BookSide { levels }, 1).await.unwrap();
        let r = cache.read_book(&key, 2).await.unwrap().unwrap();
        let prices: Vec<f64> = r.value.levels.iter().map(|l| l.price).collect();
        assert_eq!(prices, vec![12.0, 11.0]);
        assert_eq!(
            cache
                .read_book(&key, 0)
                .await
                .unwrap()
                .unwrap()
                .value
                .levels
                .len(),
            3
        );
    }

    #[test]
    fn invalid_ids_are_refused() {
        let cache = Cache::builder().build().unwrap();
        assert!(cache.key::<Price>("a b").is_err());
    }
}
