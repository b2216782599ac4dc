//! `CacheAside`: read L1 → L2 → source, filling the tiers on the way back; single-flight, refresh-ahead, negative caching.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{LoadError, is_caller_error};
use crate::cache::Cache;
use crate::engine::{Books, Layout, OnL2Failure, Values};
use crate::error::Error;
use crate::fallback::{FallbackReason, FallbackSnapshot};
use crate::key::{BookSchema, Key, KeySchema, ValueSchema};
use crate::outcome::{Read, SetOptions, Tier, WriteOutcome};
use crate::schema::BookSide;
use crate::source::{Load, Loaded, Source};

/// Default deadline for one source load.
pub const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_millis(500);

/// Options of a [`CacheAside`]; see [`CacheAsideBuilder`].
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct AsideOptions {
    /// Deadline for one source load.
    pub source_timeout: Duration,
    /// Refresh-ahead per kind: a read finding less than this fraction of the TTL left starts
    /// one background reload of the key.
    pub refresh_ahead: Vec<(String, f64)>,
    /// How long "not found" is remembered (`None`: not at all). Needs an L1 (the `memory` or
    /// `layered` backend); with the `redis` backend it has no effect.
    pub negative_ttl: Option<Duration>,
    /// Most background refreshes running at once; past it, refreshes are skipped (the key
    /// then simply misses once at expiry). Refreshes have this budget of their own: they
    /// never take one of the foreground load slots (the cache's
    /// [`max_concurrent_loads`](crate::CacheBuilder::max_concurrent_loads)), so the source
    /// sees at most the sum of the two per handle.
    pub max_refreshes: usize,
}

impl Default for AsideOptions {
    fn default() -> Self {
        AsideOptions {
            source_timeout: DEFAULT_SOURCE_TIMEOUT,
            refresh_ahead: Vec::new(),
            negative_ttl: None,
            max_refreshes: 16,
        }
    }
}

impl AsideOptions {
    /// Checks what [`CacheAsideBuilder::build`] refuses, with an [`Error::Config`] naming the
    /// setting: a refresh-ahead fraction that is not strictly between 0 and 1 (`NaN`
    /// included), and a negative-cache TTL above [`MAX_TTL`](crate::MAX_TTL) (7 days;
    /// deadlines are `now + duration`, which must not overflow).
    pub fn validate(&self) -> Result<(), Error> {
        for (kind, fraction) in &self.refresh_ahead {
            if !(*fraction > 0.0 && *fraction < 1.0) {
                return Err(Error::config(
                    format!("refresh_ahead({kind})"),
                    format!("the fraction {fraction} must be between 0 and 1, both excluded"),
                ));
            }
        }
        if let Some(ttl) = self.negative_ttl {
            crate::clock::at_most_max_ttl("negative_ttl", ttl)?;
        }
        Ok(())
    }
}

/// Ids loaded per source query by [`CacheAside::warm`].
pub const WARM_BATCH: usize = 1000;

/// How far a warm has got: [`CacheAside::warm`]'s progress callback gets one after each batch.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmProgress {
    /// Ids handled so far.
    pub done: usize,
    /// Ids asked for.
    pub total: usize,
    /// Source queries made so far.
    pub queries: usize,
}

/// What a warm did.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WarmReport {
    /// Ids asked for.
    pub requested: usize,
    /// Ids handled.
    pub done: usize,
    /// Source queries made (one per [`WARM_BATCH`] ids).
    pub queries: usize,
    /// Values written to Redis (and L1); for market data, handed to the writer, which warming
    /// flushes every `CACHE_FLUSH_MAX_KEYS` values.
    pub filled: usize,
    /// Values not written because the cache held a newer version.
    pub kept_newer: usize,
    /// Values put in L1 only (Redis not writable now, or L1 already held newer).
    pub l1_only: usize,
    /// Ids the source does not have.
    pub missing: usize,
    /// How long it took.
    pub elapsed: Duration,
}

/// Where a value from the source went ([`AsideInner::fill`]).
enum Filled {
    Redis,
    KeptNewer,
    L1Only,
}

/// Cache-aside reads (DESIGN §4 rule 4): L1, then L2, then the source, filling the tiers on
/// the way back with the kind's TTL and the source's version.
///
/// - **Single-flight**: any number of concurrent misses of one key call the source once —
///   across every `CacheAside` over the same [`Cache`] (and the same source type), since the
///   loads in flight belong to the cache, not to a handle.
/// - **Refresh-ahead** (per kind, optional): a hit with less than the configured fraction of
///   its TTL left starts one background reload and returns at once, so hot keys do not miss.
/// - **Negative caching** (optional): "not found" is remembered for a short TTL.
/// - **Provenance**: every read says where it came from (`l1`, `l2`, `source`).
///
/// If Redis fails during a read, the read goes to the source (and the error is counted); the
/// circuit breaker and fallback policy build on this.
///
/// Background refreshes are owned: they stop when the last clone of the `CacheAside` is
/// dropped, or on [`shutdown`](Self::shutdown).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mdcache::{Cache, CacheAside, MemorySource, Position, Store, Tier};
///
/// let cache = Cache::builder().build()?;
/// let db = std::sync::Arc::new(MemorySource::default());
/// let key = cache.key::<Position>("AAPL")?;
/// db.write(&key, &Position { qty: 5.0, avg_price: 10.0, realized_pnl: 0.0, seq: 1 }).await?;
///
/// let aside = CacheAside::builder(cache, db).build()?;
/// assert_eq!(aside.read(&key).await?.unwrap().tier, Tier::Source); // loaded and filled
/// assert_eq!(aside.read(&key).await?.unwrap().tier, Tier::L1);
/// assert_eq!(aside.get(&key).await?.unwrap().qty, 5.0); // the value alone
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CacheAside<Src: Source> {
    inner: Arc<AsideInner<Src>>,
    /// Cancels background refreshes when the last handle goes.
    _stop: Arc<StopOnDrop>,
}

impl<Src: Source> Clone for CacheAside<Src> {
    fn clone(&self) -> Self {
        CacheAside {
            inner: Arc::clone(&self.inner),
            _stop: Arc::clone(&self._stop),
        }
    }
}

#[derive(Debug)]
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[derive(Debug)]
struct AsideInner<Src> {
    cache: Cache,
    source: Arc<Src>,
    opts: AsideOptions,
    /// Keys with a background refresh running, so a hot key starts one refresh, not one per
    /// read. Bounded by `max_refreshes` (an entry exists only while its permit is held).
    refreshing: Mutex<HashSet<Arc<str>>>,
    refresh_permits: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// Builds a [`CacheAside`].
#[derive(Debug)]
#[must_use]
pub struct CacheAsideBuilder<Src> {
    cache: Cache,
    source: Arc<Src>,
    opts: AsideOptions,
}

impl<Src: Source> CacheAsideBuilder<Src> {
    /// Deadline for one source load (default 500 ms).
    pub fn source_timeout(mut self, d: Duration) -> Self {
        self.opts.source_timeout = d;
        self
    }

    /// Refresh-ahead for the kind `S` (`.refresh_ahead::<Price>(0.2)`): a read that finds
    /// less than `fraction` (0 < fraction < 1) of the TTL left starts a background reload.
    /// Any other fraction makes [`build`](Self::build) fail.
    pub fn refresh_ahead<S: KeySchema>(self, fraction: f64) -> Self {
        self.refresh_ahead_kind(S::KIND, fraction)
    }

    /// [`refresh_ahead`](Self::refresh_ahead) by kind name (`price`, `book:bid`, …; the exact
    /// kind, not a prefix), for names known only at run time.
    pub fn refresh_ahead_kind(mut self, kind: &str, fraction: f64) -> Self {
        self.opts.refresh_ahead.push((kind.to_owned(), fraction));
        self
    }

    /// Remembers "not found" for `ttl` (at most [`MAX_TTL`](crate::MAX_TTL), else
    /// [`build`](Self::build) fails).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.opts.negative_ttl = Some(ttl);
        self
    }

    /// Most background refreshes at once (default 16), a budget apart from the foreground
    /// load limit.
    pub fn max_refreshes(mut self, n: usize) -> Self {
        self.opts.max_refreshes = n;
        self
    }

    /// Checks the options ([`AsideOptions::validate`]) and builds it: an invalid setting is
    /// an [`Error::Config`] naming it (`negative_ttl`, `refresh_ahead(price)`).
    pub fn build(self) -> Result<CacheAside<Src>, Error> {
        self.opts.validate()?;
        let stop = CancellationToken::new();
        Ok(CacheAside {
            inner: Arc::new(AsideInner {
                cache: self.cache,
                source: self.source,
                refreshing: Mutex::new(HashSet::new()),
                refresh_permits: Arc::new(Semaphore::new(self.opts.max_refreshes)),
                opts: self.opts,
                tasks: TaskTracker::new(),
                stop: stop.clone(),
            }),
            _stop: Arc::new(StopOnDrop(stop)),
        })
    }
}

impl<Src: Source> CacheAside<Src> {
    /// A builder over `cache` and `source`.
    pub fn builder(cache: Cache, source: Arc<Src>) -> CacheAsideBuilder<Src> {
        CacheAsideBuilder {
            cache,
            source,
            opts: AsideOptions::default(),
        }
    }

    /// The cache underneath.
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// The source underneath.
    pub fn source(&self) -> &Arc<Src> {
        &self.inner.source
    }

    /// The options in force.
    pub fn options(&self) -> &AsideOptions {
        &self.inner.opts
    }

    /// What the fallback path has done so far — the cache's figures, shared by every
    /// `CacheAside` over it (the same as [`Cache::fallback_stats`]).
    pub fn fallback_stats(&self) -> FallbackSnapshot {
        self.inner.cache.fallback_stats()
    }

    /// Stops background refreshes and waits for running ones to finish.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// The value at `key`: from L1, L2, or (after a miss in both) the source, which then
    /// fills the tiers. `Ok(None)`: the source has no such key. [`read`](Self::read) says
    /// where it came from, too.
    pub async fn get<S: ValueSchema>(
        &self,
        key: &Key<S>,
    ) -> Result<Option<Arc<S::Value>>, LoadError<Src::Error>>
    where
        Src: Load<S>,
    {
        Ok(self.read_through(key, Values).await?.map(|r| r.value))
    }

    /// Like [`get`](Self::get), with provenance: tier (`L1`, `L2`, `Source`, `Stale`),
    /// version, age and remaining TTL.
    pub async fn read<S: ValueSchema>(
        &self,
        key: &Key<S>,
    ) -> Result<Option<Read<S::Value>>, LoadError<Src::Error>>
    where
        Src: Load<S>,
    {
        self.read_through(key, Values).await
    }

    /// The best `depth` levels (0 = all) of a book side, through the cache like
    /// [`get`](Self::get). The source holds whole sides; the cache is filled with all levels.
    pub async fn get_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        depth: usize,
    ) -> Result<Option<Arc<BookSide>>, LoadError<Src::Error>>
    where
        Src: Load<S>,
    {
        Ok(self
            .read_through(key, Books::depth(depth))
            .await?
            .map(|r| r.value))
    }

    /// Like [`get_book`](Self::get_book), with provenance.
    pub async fn read_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        depth: usize,
    ) -> Result<Option<Read<BookSide>>, LoadError<Src::Error>>
    where
        Src: Load<S>,
    {
        self.read_through(key, Books::depth(depth)).await
    }

    /// The read path of values and book sides alike: the cache (L1, then Redis), else one
    /// single-flight load of the whole value from the source, which every waiting caller cuts
    /// to what it asked for; the fallback path and the stale read when Redis fails.
    /// Preloads `ids` of the value kind `S` from the source: one `load_many` (one query on
    /// PostgreSQL) per [`WARM_BATCH`] ids, each value through the normal versioned fill
    /// (Redis and L1; market data through the writer, flushed as it goes), so warming never
    /// replaces a newer version and is not broadcast. `progress` is called after each batch.
    /// Every id is checked first: a bad one loads nothing.
    pub async fn warm<S: ValueSchema>(
        &self,
        ids: &[&str],
        mut progress: impl FnMut(WarmProgress),
    ) -> Result<WarmReport, LoadError<Src::Error>>
    where
        Src: Load<S>,
    {
        self.inner.warm_with::<S, Values>(ids, &mut progress).await
    }

    /// [`warm`](Self::warm) for a book side kind (whole sides).
    pub async fn warm_books<S: BookSchema>(
        &self,
        ids: &[&str],
        mut progress: impl FnMut(WarmProgress),
    ) -> Result<WarmReport, LoadError<Src::Error>>
    where
        Src: Load<S>,
    {
        self.inner.warm_with::<S, Books>(ids, &mut progress).await
    }

    async fn read_through<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        layout: L,
    ) -> Result<Option<Read<S::Value>>, LoadError<Src::Error>>
    where
        Src: Load<S>,
    {
        let inner = &self.inner;
        if inner.negative_hit(key) {
            return Ok(None);
        }
        let engine = inner.cache.engine();
        let refresh = |r: &Read<S::Value>| {
            self.maybe_refresh(key, r.ttl_remaining, |i, k| {
                Box::pin(async move {
                    i.load_with(&k, L::whole(), false, true, Budget::Refresh)
                        .await
                        .map(|_| ())
                })
            });
        };
        if let Some(r) = engine.read_l1(key, layout) {
            refresh(&r);
            return Ok(Some(r));
        }
        engine.count_l1_miss(key);
        let started = std::time::Instant::now();
        // Why this read fell back past Redis, if it did: set by whichever flight served it.
        let fell_back = std::sync::Mutex::new(None::<FallbackReason>);
        let whole = if layout.is_whole() {
            // One flight per key covers the whole miss: one Redis read and, if Redis misses
            // or fails, one source load, however many callers missed L1 together.
            inner
                .floor_checked(
                    key,
                    || async {
                        let (result, reason) = engine
                            .flights()
                            .run(key.shared(), || inner.miss::<S, L>(key))
                            .await
                            .unwrap_or_else(|| (Err(internal()), None));
                        *fell_back.lock().unwrap_or_else(|p| p.into_inner()) = reason;
                        result
                    },
                    || async { engine.recheck(key, L::whole()).await.ok().flatten() },
                    || inner.held_stale(key, L::whole()),
                )
                .await
        } else {
            // A partial read (a book's best levels) reads its own, smaller part of Redis; only
            // the source load of the whole value is shared.
            let fallback = match engine.read_l2(key, layout).await {
                Ok(Some(r)) => {
                    refresh(&r);
                    return Ok(Some(r));
                }
                Ok(None) => None,
                Err(e) if is_caller_error(&e) => return Err(e.into()),
                Err(e) => Some(FallbackReason::of(&e)),
            };
            *fell_back.lock().unwrap_or_else(|p| p.into_inner()) = fallback;
            // On the fallback path there is no re-check of Redis and no fill of it, only of L1.
            inner
                .floor_checked(
                    key,
                    || async {
                        engine
                            .flights()
                            .run(key.shared(), || {
                                inner.load_with(
                                    key,
                                    L::whole(),
                                    fallback.is_none(),
                                    fallback.is_none(),
                                    Budget::Foreground,
                                )
                            })
                            .await
                            .unwrap_or_else(|| Err(internal()))
                    },
                    || async { engine.recheck(key, L::whole()).await.ok().flatten() },
                    || inner.held_stale(key, L::whole()),
                )
                .await
        };
        if let Some(reason) = *fell_back.lock().unwrap_or_else(|p| p.into_inner()) {
            engine.fallback().record(reason, started.elapsed());
        }
        if let Ok(Some(r)) = &whole
            && r.tier == Tier::L2
        {
            refresh(r);
        }
        match whole {
            Ok(whole) => Ok(whole.map(|r| Read {
                value: layout.cut(r.value),
                ..r
            })),
            Err(e) if !matches!(&e, LoadError::Cache(c) if is_caller_error(c)) => {
                match inner.stale(key, layout) {
                    Some(r) => Ok(Some(r)),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Starts a background reload of `key` if the read found less than the kind's
    /// refresh-ahead fraction of its TTL left.
    fn maybe_refresh<S: KeySchema>(
        &self,
        key: &Key<S>,
        left: Option<Duration>,
        reload: fn(Arc<AsideInner<Src>>, Key<S>) -> RefreshFuture<Src>,
    ) {
        let inner = &self.inner;
        let Some(fraction) = inner
            .opts
            .refresh_ahead
            .iter()
            .find(|(k, _)| k == S::KIND)
            .map(|(_, f)| *f)
        else {
            return;
        };
        let Some(left) = left else { return };
        if left.as_secs_f64() >= key.ttl().as_secs_f64() * fraction {
            return;
        }
        let Ok(permit) = Arc::clone(&inner.refresh_permits).try_acquire_owned() else {
            return;
        };
        {
            let mut refreshing = inner.refreshing.lock().unwrap_or_else(|p| p.into_inner());
            if !refreshing.insert(Arc::clone(key.shared())) {
                return;
            }
        }
        inner.cache.engine().ks(key).refreshes.inc();
        let (task_inner, key) = (Arc::clone(inner), key.clone());
        let stop = inner.stop.clone();
        inner.tasks.spawn(async move {
            let shared = Arc::clone(key.shared());
            let flight_key = Arc::clone(&shared);
            let work = {
                let i = Arc::clone(&task_inner);
                async move {
                    let i2 = Arc::clone(&i);
                    // One refresh per key at a time, even across clones of this handle.
                    let _ = i
                        .cache
                        .engine()
                        .flights()
                        .run(&flight_key, move || reload(i2, key))
                        .await;
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = work => {}
            }
            task_inner
                .refreshing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&shared);
            drop(permit);
        });
    }
}

type RefreshFuture<Src> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), LoadError<<Src as Source>::Error>>> + Send>,
>;

fn internal<E: std::error::Error + 'static>() -> LoadError<E> {
    LoadError::Cache(Error::Unsupported(
        "internal: single-flight result of an unexpected type",
    ))
}

/// Whose load-slot budget a source load uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// A caller is waiting: the fallback handler's concurrency limit.
    Foreground,
    /// A refresh-ahead in the background: it already holds one of the (smaller) refresh
    /// permits, and must not take a foreground slot, so refreshes never starve misses.
    Refresh,
}

impl<Src: Source> AsideInner<Src> {
    /// Runs `load` (a single-flight load) and never returns a result older than what L1
    /// held for the key when the attempt began — a version floor an acknowledged write left
    /// (DESIGN §4 rule 9), or a newer value: this process's write, or one it cached (from
    /// Redis or another instance through the backplane) and has stopped trusting. A flight
    /// that read the source before such a write committed (a flight this caller joined), or a
    /// source behind the feed, is not served: L1's value is, if it has one at the floor or
    /// above, else one more flight is tried; then the value L1 held when that attempt began
    /// is served marked `Stale`, if the kind has a stale bound and the value is within it
    /// (`held`: taken when the attempt begins, since an invalidation may remove it while
    /// the load runs), and otherwise the read fails with [`LoadError::BehindFloor`].
    async fn floor_checked<S, V, L, LF, R, RF, H>(
        &self,
        key: &Key<S>,
        load: L,
        l1_value: R,
        held: H,
    ) -> Result<Option<Read<V>>, LoadError<Src::Error>>
    where
        S: KeySchema,
        L: Fn() -> LF,
        LF: std::future::Future<Output = Result<Option<Read<V>>, LoadError<Src::Error>>>,
        R: Fn() -> RF,
        RF: std::future::Future<Output = Option<Read<V>>>,
        H: Fn() -> Option<Read<V>>,
    {
        let mut tries = 0;
        loop {
            // The floor as this attempt starts. A write acknowledged while the load runs may
            // raise L1's floor meanwhile; the load overlapped that write, so returning the
            // version from before it is what a read concurrent with a write may see
            // (linearizable). Only a version below what was acknowledged before the load
            // began would go backwards. (Comparing with the floor at the end instead made a
            // hot key under a stream of write-throughs fail reads that lost the race twice.)
            let floor_before = self.cache.engine().l1_version(key);
            // Only a read with something to fall back on pays for the look-up and the clock.
            let held_before = floor_before
                .and_then(|_| held())
                .map(|r| (r, std::time::Instant::now()));
            let result = load().await;
            let loaded = match &result {
                Ok(r) => r.as_ref().map(|r| r.version),
                Err(_) => return result,
            };
            let Some(floor) = floor_before.filter(|&held| loaded.unwrap_or(0) < held) else {
                return result;
            };
            if let Some(r) = l1_value().await
                && r.version >= floor
            {
                return Ok(Some(r));
            }
            tries += 1;
            if tries == 2 {
                if let Some((r, held_at)) = held_before.filter(|(r, _)| r.version >= floor) {
                    self.count_stale(key);
                    return Ok(Some(Read {
                        age: r.age + held_at.elapsed(),
                        ..r
                    }));
                }
                tracing::warn!(
                    key = key.as_str(),
                    floor,
                    ?loaded,
                    held = ?self.cache.engine().l1_held(key),
                    "source behind a version this process holds"
                );
                return Err(LoadError::BehindFloor { floor, loaded });
            }
        }
    }

    fn negative_hit<S: KeySchema>(&self, key: &Key<S>) -> bool {
        if self.opts.negative_ttl.is_some() && self.cache.engine().negative_hit(key.as_str()) {
            self.cache.engine().ks(key).negative_hits.inc();
            return true;
        }
        false
    }

    /// One source load under the deadline, counted.
    async fn load<S: KeySchema>(
        &self,
        key: &Key<S>,
        budget: Budget,
    ) -> Result<Option<Loaded<S::Value>>, LoadError<Src::Error>>
    where
        Src: Load<S>,
    {
        let _permit = match budget {
            Budget::Foreground => match self.cache.engine().fallback().permit().await {
                Some(p) => Some(p),
                None => {
                    return Err(LoadError::Overloaded(
                        self.cache.engine().fallback().options().overload_wait,
                    ));
                }
            },
            Budget::Refresh => None,
        };
        let ks = self.cache.engine().ks(key);
        ks.source_loads.inc();
        let result =
            match tokio::time::timeout(self.opts.source_timeout, self.source.load(key)).await {
                Err(_) => Err(LoadError::SourceTimeout(self.opts.source_timeout)),
                Ok(Err(e)) => Err(LoadError::Source(Arc::new(e))),
                Ok(Ok(loaded)) => Ok(loaded),
            };
        if result.is_err() {
            ks.source_errors.inc();
        }
        if let Ok(None) = result
            && let Some(ttl) = self.opts.negative_ttl
        {
            self.cache.engine().put_negative(key.shared(), ttl);
        }
        result
    }

    /// The flight of a whole read that missed L1: Redis, then (on a miss, or Redis failing)
    /// the source. Returns the read and why it fell back past Redis, if it did; every caller
    /// sharing the flight gets both.
    async fn miss<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
    ) -> (
        Result<Option<Read<S::Value>>, LoadError<Src::Error>>,
        Option<FallbackReason>,
    )
    where
        Src: Load<S>,
    {
        let engine = self.cache.engine();
        // The flight before this one may have finished between its callers' L1 miss and
        // this flight's start: what it put in L1 is served without reading Redis again.
        if let Some(r) = engine.peek_l1(key, L::whole()) {
            return (Ok(Some(r)), None);
        }
        let fallback = match engine.read_l2(key, L::whole()).await {
            Ok(Some(r)) => return (Ok(Some(r)), None),
            Ok(None) => None,
            Err(e) if is_caller_error(&e) => return (Err(e.into()), None),
            Err(e) => Some(FallbackReason::of(&e)),
        };
        // A flight that finished just before this one began may have filled L1 only (Redis
        // failing): not loaded again. Redis itself was just read.
        if let Some(r) = engine.peek_l1(key, L::whole()) {
            return (Ok(Some(r)), fallback);
        }
        // On the fallback path Redis is not filled, only L1.
        let loaded = self
            .load_with(
                key,
                L::whole(),
                false,
                fallback.is_none(),
                Budget::Foreground,
            )
            .await;
        (loaded, fallback)
    }

    /// The flight body: re-check the cache (a flight that just finished may have filled
    /// it), else load the whole value from the source and fill both tiers with its version.
    async fn load_with<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        layout: L,
        recheck: bool,
        fill_l2: bool,
        budget: Budget,
    ) -> Result<Option<Read<S::Value>>, LoadError<Src::Error>>
    where
        Src: Load<S>,
    {
        let engine = self.cache.engine();
        if recheck && let Ok(Some(r)) = engine.recheck(key, layout).await {
            return Ok(Some(r));
        }
        let Some(loaded) = self.load(key, budget).await? else {
            return Ok(None);
        };
        let value = Arc::new(L::normalise(loaded.value));
        self.fill::<S, L>(key, Arc::clone(&value), loaded.version, fill_l2)
            .await;
        Ok(Some(from_source(key, value, loaded.version)))
    }

    /// Puts a value fresh from the source in the tiers: Redis too when `fill_l2` and
    /// [`may_fill_l2`](Self::may_fill_l2) allow, through the versioned fill (never over a
    /// newer version; market data through the writer, not broadcast); otherwise, or if that
    /// fails, L1 alone under the version rule.
    async fn fill<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        value: Arc<S::Value>,
        version: u64,
        fill_l2: bool,
    ) -> Filled {
        let engine = self.cache.engine();
        // `Fill`: a failed fill is not a new value to keep or to record dirty, and it never
        // removes a newer L1 entry; the source's value goes to L1 below, under the version rule.
        let filled = if self.may_fill_l2(key, fill_l2, version) {
            engine
                .store::<S, L>(
                    key,
                    Arc::clone(&value),
                    version,
                    SetOptions::default(),
                    OnL2Failure::Fill,
                )
                .await
                .inspect_err(|e| {
                    tracing::debug!(key = key.as_str(), error = %e, "cache fill went to L1 only");
                })
                .ok()
        } else {
            // The fallback path (Redis is failing; the reason was counted there), Redis is
            // not to be filled now, or L1 holds a newer version.
            None
        };
        match filled {
            Some(WriteOutcome::Superseded) => Filled::KeptNewer,
            Some(_) => Filled::Redis,
            None => {
                // The value is fresh from the source, so L1 may hold it.
                engine.fill_loaded::<S, L>(key, value, version);
                Filled::L1Only
            }
        }
    }

    /// [`load`](Self::load) of many keys: one `load_many` (one query on PostgreSQL), under
    /// one load slot and the source deadline; each key counted as a source load.
    async fn load_batch<S: KeySchema>(
        &self,
        keys: &[Key<S>],
    ) -> Result<Vec<Option<Loaded<S::Value>>>, LoadError<Src::Error>>
    where
        Src: Load<S>,
    {
        let fallback = self.cache.engine().fallback();
        let Some(_permit) = fallback.permit().await else {
            return Err(LoadError::Overloaded(fallback.options().overload_wait));
        };
        for k in keys {
            self.cache.engine().ks(k).source_loads.inc();
        }
        match tokio::time::timeout(self.opts.source_timeout, self.source.load_many(keys)).await {
            Err(_) => Err(LoadError::SourceTimeout(self.opts.source_timeout)),
            Ok(Err(e)) => Err(LoadError::Source(Arc::new(e))),
            Ok(Ok(loaded)) if loaded.len() == keys.len() => Ok(loaded),
            Ok(Ok(loaded)) => Err(LoadError::Cache(Error::Unsupported(
                if loaded.len() < keys.len() {
                    "the source's load_many returned fewer values than keys"
                } else {
                    "the source's load_many returned more values than keys"
                },
            ))),
        }
    }

    /// See [`CacheAside::warm`].
    async fn warm_with<S: KeySchema, L: Layout<S>>(
        &self,
        ids: &[&str],
        progress: &mut dyn FnMut(WarmProgress),
    ) -> Result<WarmReport, LoadError<Src::Error>>
    where
        Src: Load<S>,
    {
        let started = std::time::Instant::now();
        // Every identifier checked before the source is asked anything.
        let keys = ids
            .iter()
            .map(|id| self.cache.key::<S>(id))
            .collect::<Result<Vec<_>, Error>>()?;
        let mut report = WarmReport {
            requested: keys.len(),
            ..WarmReport::default()
        };
        // The market-data writer takes at most a batch's worth of fills at a time (a fill
        // does not crowd out writes): warming flushes it as often.
        let per_flush = self.cache.engine().config().writer.flush_max_keys.get();
        let mut since_flush = 0;
        for chunk in keys.chunks(WARM_BATCH) {
            let loaded = self.load_batch(chunk).await?;
            report.queries += 1;
            for (key, found) in chunk.iter().zip(loaded) {
                if since_flush >= per_flush {
                    // A failed flush leaves its keys dirty, as for any write: not an error here.
                    let _ = self.cache.flush().await;
                    since_flush = 0;
                }
                let Some(l) = found else {
                    report.missing += 1;
                    continue;
                };
                let value = Arc::new(L::normalise(l.value));
                since_flush += 1;
                match self.fill::<S, L>(key, value, l.version, true).await {
                    Filled::Redis => report.filled += 1,
                    Filled::KeptNewer => report.kept_newer += 1,
                    Filled::L1Only => report.l1_only += 1,
                }
            }
            report.done += chunk.len();
            let _ = self.cache.flush().await;
            since_flush = 0;
            progress(WarmProgress {
                done: report.done,
                total: report.requested,
                queries: report.queries,
            });
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Whether a load's value may go to Redis: not on the fallback path, not while the
    /// breaker is not closed (the write would only fail or be refused), and not when L1 holds
    /// a newer version or a floor above it — the load read the source before a write this
    /// process acknowledged, and Redis must not get the older value (DESIGN §4 rule 9).
    fn may_fill_l2<S: KeySchema>(&self, key: &Key<S>, fill_l2: bool, version: u64) -> bool {
        fill_l2
            && self.cache.engine().l2_writable()
            && self
                .cache
                .engine()
                .l1_version(key)
                .is_none_or(|held| held <= version)
    }

    /// The fail-safe read (DESIGN §4 rule 7): a value past its TTL, within the kind's stale
    /// bound, when both Redis and the source failed; `None` for kinds that fail closed.
    fn stale<S: KeySchema, L: Layout<S>>(&self, key: &Key<S>, layout: L) -> Option<Read<S::Value>> {
        let r = self.held_stale(key, layout)?;
        self.count_stale(key);
        Some(r)
    }

    /// What [`stale`](Self::stale) would serve now, not counted (the read may not need it).
    fn held_stale<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        layout: L,
    ) -> Option<Read<S::Value>> {
        let engine = self.cache.engine();
        let bound = engine.fallback().stale_bound(S::KIND, S::KEY_PREFIX)?;
        engine.l1_stale(key, bound, layout)
    }

    /// Counts one fail-safe read served.
    fn count_stale<S: KeySchema>(&self, key: &Key<S>) {
        let engine = self.cache.engine();
        engine.fallback().stale_served();
        engine.ks(key).stale_served.inc();
    }
}

fn from_source<S: KeySchema, V>(key: &Key<S>, value: Arc<V>, version: u64) -> Read<V> {
    Read {
        value,
        version,
        tier: Tier::Source,
        age: Duration::ZERO,
        ttl_remaining: Some(key.ttl()),
    }
}
