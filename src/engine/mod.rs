//! The engine behind the `Cache` facade: L1, L2, the dirty log, stats and the clock, with the read path, the write policy, fills, version floors, stale reads and negative entries.
//!
//! Split by concern: this file holds the engine's state, its construction and the key-level
//! operations (delete, TTL, floors, the dirty log); `layout.rs` the one storage path that
//! values and book sides share (reads, writes and the write policy, fills, re-checks, stale
//! reads), written against the `Layout` trait; `values.rs` and `books.rs` the two layouts
//! (and the value-only batches); `local.rs` the raw L1 fill and negative entries.

mod books;
mod coherence;
pub(crate) mod dirty;
pub(crate) mod flight;
mod layout;
mod local;
mod values;
pub(crate) mod writer;

pub(crate) use books::Books;
pub(crate) use layout::Layout;
pub(crate) use values::Values;

use std::sync::Arc;
use std::time::Duration;

use crate::backplane::{Backplane, BackplaneOptions};
use crate::clock::{Clock, Instant, deadline_after};
use crate::codec;
use crate::config::{Backend, CacheConfig, MAX_TTL};
use crate::error::{Error, Result};
use crate::fallback::FallbackHandler;
use crate::key::{BookSchema, Key, KeySchema, Storage, ValueSchema, validate_kind};
use crate::l1::{InsertOutcome, L1};
use crate::l2::book;
use crate::l2::{ClusterOptions, Endpoint, Fetched, L2Tier, RedisOptions, ttl_ms};
use crate::outcome::{KeyTtl, Read, SetOptions, Tier, WriteOutcome};
use crate::recovery::Supervisor;
use crate::resilience::{BreakerSnapshot, BreakerState};
use crate::schema::BookSide;
use crate::stats::{KindStats, Stats, StatsSnapshot};
use dirty::{DEFAULT_DIRTY_CAPACITY, DirtyLog};
use flight::Flights;
use writer::WriterHandle;

/// Most keys loading at once that still share their loads (beyond it, loads run unshared).
const MAX_FLIGHTS: usize = 65_536;

/// The state every `Cache` clone shares, and the behaviour behind its methods.
#[derive(Debug)]
pub(crate) struct Engine {
    config: CacheConfig,
    backend: Backend,
    l1: Option<L1>,
    /// Shared with the recovery supervisor task.
    l2: Option<Arc<L2Tier>>,
    clock: Clock,
    stats: Stats,
    /// Keys whose L2 copy is untrusted until recovery deletes them (DESIGN §4 rule 3).
    dirty: Arc<DirtyLog>,
    /// The loads in flight, shared by every `CacheAside` over this cache, so two handles
    /// never load one key twice at once.
    flights: Flights,
    /// The fallback path's limit on source loads, stale policy and counts, shared by every
    /// `CacheAside` over this cache, so together they never exceed the database's budget.
    fallback: FallbackHandler,
    /// The recovery supervisor, stopped when the last clone of the cache is dropped.
    supervisor: Option<Supervisor>,
    /// The conflating market-data writer (DESIGN §4 rule 8), with a Redis tier and at least
    /// one conflating kind; stopped when the last clone of the cache is dropped.
    writer: Option<WriterHandle>,
    /// The backplane (DESIGN §4 rule 5), with Redis and `CACHE_BACKPLANE` on (receiving only with an L1);
    /// its tasks stop when the last clone of the cache is dropped.
    backplane: Option<Arc<Backplane>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(bp) = &self.backplane {
            bp.stop();
        }
    }
}

impl Engine {
    /// Builds the tiers for a validated `config` and starts the recovery supervisor (on the
    /// current Tokio runtime) when there is a Redis tier.
    pub(crate) fn start(config: CacheConfig, clock: Clock) -> Result<Engine> {
        let backend = config.effective_backend();
        let l1 = match backend {
            Backend::Memory | Backend::Layered => Some(L1::new(
                config.l1_max_entries,
                config.l1_max_bytes,
                clock.clone(),
            )),
            Backend::Redis => None,
        };
        // How to reach Redis (URL or cluster seeds, credentials, TLS roots), worked out once
        // for the L2 and the backplane.
        let endpoint = match backend {
            Backend::Redis | Backend::Layered => Some(crate::l2::endpoint(&config)?),
            Backend::Memory => None,
        };
        if endpoint.is_some() && tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "CACHE_BACKEND",
                "the redis and layered backends must be built inside a Tokio runtime",
            ));
        }
        let l2 = match &endpoint {
            Some(Endpoint::Server(info)) => Some(Arc::new(L2Tier::redis(RedisOptions {
                info: info.clone(),
                pool_size: config.pool_size.get(),
                op_timeout: config.op_timeout,
                connect_timeout: config.connect_timeout,
                breaker: config.breaker.clone(),
                retry: config.retry.clone(),
            })?)),
            Some(Endpoint::Cluster { seeds, ca }) => {
                Some(Arc::new(L2Tier::cluster(ClusterOptions {
                    seeds: seeds.clone(),
                    ca: ca.clone(),
                    op_timeout: config.op_timeout,
                    longest_op: config.writer.flush_timeout,
                    connect_timeout: config.connect_timeout,
                    breaker: config.breaker.clone(),
                    retry: config.retry.clone(),
                })?))
            }
            None => None,
        };
        // Every instance with Redis publishes its writes; only one with an L1 also receives.
        let backplane = match endpoint {
            Some(endpoint) if l2.is_some() && config.backplane => {
                Some(Arc::new(Backplane::new(BackplaneOptions {
                    servers: endpoint.servers(),
                    channel: format!("{}:backplane", config.namespace),
                    connect_timeout: config.connect_timeout,
                    interval: config.writer.flush_interval,
                    publish_timeout: config.writer.flush_timeout.max(config.op_timeout),
                    max_pending: config.writer.max_pending.get(),
                })))
            }
            _ => None,
        };
        let dirty = Arc::new(DirtyLog::new(DEFAULT_DIRTY_CAPACITY));
        // The recovery supervisor lives as long as the cache: its handle stops it on drop.
        let supervisor = l2.as_ref().map(|l2| {
            Supervisor::start(
                Arc::clone(l2),
                Arc::clone(&dirty),
                config.namespace.clone(),
                backplane.clone(),
            )
        });
        let fallback = FallbackHandler::new(config.fallback.clone());
        let writer = l2
            .as_ref()
            .filter(|_| !config.writer.conflate.is_empty())
            .map(|l2| WriterHandle::new(config.writer.clone(), Arc::clone(l2)));
        Ok(Engine {
            config,
            backend,
            l1,
            l2,
            clock,
            stats: Stats::default(),
            dirty,
            flights: Flights::new(MAX_FLIGHTS),
            fallback,
            supervisor,
            writer,
            backplane,
        })
    }

    /// Starts the tasks that need the engine itself (the market-data writer's flush task),
    /// once it is shared: they hold it weakly.
    pub(crate) fn spawn_tasks(&self, this: &Arc<Engine>) {
        if let Some(w) = &self.writer {
            w.spawn(Arc::downgrade(this));
        }
        if let Some(bp) = &self.backplane {
            let weak = Arc::downgrade(this);
            let receiver: std::sync::Weak<dyn crate::backplane::Receiver> = weak;
            bp.spawn(self.l1.is_some().then_some(receiver));
        }
    }

    /// The market-data writer, when `kind` conflates.
    #[inline]
    fn conflating(&self, kind: &str) -> Option<&writer::Writer> {
        self.writer
            .as_ref()
            .map(|w| &*w.writer)
            .filter(|w| w.conflates(kind))
    }
}

/// What a write does when its Redis write fails (see [`Cache::set`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnL2Failure {
    /// A cache-aside fill: drop an *older* L1 copy (never a newer one: rule 9, no tier goes
    /// backwards) and return the error. Nothing is recorded: a fill is not a new value, and
    /// the caller puts the source's value in L1 itself, under the version rule.
    Fill,
    /// Write-through (DESIGN §4 rules 3 and 9): the database acknowledged this version, so
    /// L1 keeps a version floor at it — no in-flight fill, refresh or negative entry with an
    /// older version can land — and the error is returned; `WriteThrough` records the key
    /// dirty when Redis was unhealthy.
    Floor,
    /// Record the key dirty and keep the value in L1 under the version rule
    /// ([`WriteOutcome::LocalOnly`]); without an L1, record it dirty and return the error.
    /// For the cache-only writes `set` and `set_book`.
    KeepLocal,
}

/// A write's value on its way to L1, with what the version rule and the deadline need.
struct LocalWrite<V> {
    value: Arc<V>,
    version: u64,
    /// Taken before the Redis request, so the L1 deadline `t0 + ttl` is never after the Redis
    /// key's expiry.
    t0: Instant,
    ttl: Duration,
    /// Encoded size, for L1's byte bound.
    bytes: usize,
    /// This process's write (not a fill): stays trusted across an L1 epoch bump.
    own: bool,
}

impl<V: Send + Sync + 'static> LocalWrite<V> {
    fn insert_into<S: KeySchema>(self, l1: &L1, key: &Key<S>) -> InsertOutcome {
        l1.insert_entry(
            key.shared(),
            self.value,
            self.version,
            deadline_after(self.t0, self.ttl),
            self.t0,
            self.bytes,
            self.own,
        )
    }
}

/// How long a version floor (DESIGN §4 rule 9) is held at least: longer than any source load
/// that may be in flight when it is set (cache-aside's default source deadline is 500 ms),
/// so a load that read the older row before the write committed cannot fill L1 after it.
/// A key's floor is held for the longer of this and the key's TTL.
pub const FLOOR_HOLD: Duration = Duration::from_secs(10);

/// The L1 marker for "the source has no such key" (negative caching).
#[derive(Debug)]
struct NotFound;

impl Engine {
    /// The single-flight loads of this cache.
    #[inline]
    pub(crate) fn flights(&self) -> &Flights {
        &self.flights
    }

    /// The fallback path's limiter, stale policy and counts.
    #[inline]
    pub(crate) fn fallback(&self) -> &FallbackHandler {
        &self.fallback
    }
}

impl Engine {
    /// See [`Cache::key`](crate::Cache::key).
    pub(crate) fn key<S: KeySchema>(&self, id: &str) -> Result<Key<S>> {
        validate_kind(S::KIND)?;
        let ttl = self.config.ttl_for(S::KIND, S::KEY_PREFIX, S::DEFAULT_TTL);
        Key::new(&self.config.namespace, id, ttl, self.stats.kind(S::KIND))
    }

    #[inline]
    pub(crate) fn ks<'a, S: KeySchema>(&'a self, key: &'a Key<S>) -> KindRef<'a> {
        if key.stats.owner == self.stats.id {
            KindRef::Borrowed(&key.stats)
        } else {
            self.foreign_ks(S::KIND)
        }
    }

    /// A key built by another cache: this cache's counters for the kind, found without a lock
    /// (the first kinds registered). Out of line, so the common path above stays small.
    #[cold]
    #[inline(never)]
    fn foreign_ks(&self, kind: &'static str) -> KindRef<'_> {
        match self.stats.find(kind) {
            Some(k) => KindRef::Borrowed(k),
            None => KindRef::Owned(self.stats.kind(kind)),
        }
    }

    /// See [`Cache::backend`](crate::Cache::backend).
    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// See [`Cache::config`](crate::Cache::config).
    pub(crate) fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// See [`Cache::stats`](crate::Cache::stats).
    pub(crate) fn stats(&self) -> StatsSnapshot {
        let (entries, bytes) = self
            .l1
            .as_ref()
            .map_or((0, 0), |l1| (l1.len(), l1.weight()));
        self.stats.snapshot(
            entries,
            bytes,
            self.writer.as_ref().map(|w| w.writer.snapshot()),
            self.backplane.as_ref().map(|bp| bp.snapshot()),
        )
    }

    /// Sets a version floor at `key` (DESIGN §4 rule 9): for the longer of the key's TTL and
    /// [`FLOOR_HOLD`], nothing older than `version` lands in L1 and reads of the key skip L1
    /// until a value at `version` or newer fills it. A no-op without an L1.
    pub(crate) fn floor<S: KeySchema>(&self, key: &Key<S>, version: u64) {
        if let Some(l1) = &self.l1 {
            let hold = key.ttl().max(FLOOR_HOLD);
            l1.set_floor(
                key.shared(),
                version,
                deadline_after(self.clock.now(), hold),
            );
        }
    }

    /// Drops `key` from L1 (whatever version it holds).
    pub(crate) fn evict_l1<S: KeySchema>(&self, key: &Key<S>) {
        if let Some(l1) = &self.l1 {
            l1.remove(key.as_str());
        }
    }

    /// The version L1 holds at `key` (a value, a negative entry or a floor), if live. A read
    /// that found an older version elsewhere must not serve it.
    pub(crate) fn l1_version<S: KeySchema>(&self, key: &Key<S>) -> Option<u64> {
        self.l1.as_ref()?.live_version(key.as_str())
    }

    /// What L1 holds at `key`, live or not, for a diagnostic line.
    pub(crate) fn l1_held<S: KeySchema>(&self, key: &Key<S>) -> Option<crate::l1::Held> {
        self.l1.as_ref()?.held(key.as_str())
    }

    /// True when Redis is there and its breaker closed: a fill or refresh may write to it.
    pub(crate) fn l2_writable(&self) -> bool {
        self.l2
            .as_ref()
            .is_some_and(|l2| l2.breaker().state() == BreakerState::Closed)
    }

    /// See [`Cache::delete`](crate::Cache::delete).
    pub(crate) async fn delete<S: KeySchema>(&self, key: &Key<S>) -> Result<bool> {
        // A queued write must not bring the key back after the delete.
        if let Some(w) = &self.writer {
            w.writer.forget(key.as_str());
        }
        let existed_l1 = self
            .l1
            .as_ref()
            .is_some_and(|l1| l1.deadline(key.as_str()).is_some());
        let result = match &self.l2 {
            None => Ok(existed_l1),
            Some(l2) => match S::STORAGE {
                Storage::Book => {
                    let vkey = book::version_key(key.as_str());
                    l2.unlink(&[key.as_str(), vkey.as_str()]).await
                }
                _ => l2.unlink(&[key.as_str()]).await,
            }
            .map(|n| n > 0),
        };
        if let Some(l1) = &self.l1 {
            l1.remove(key.as_str());
        }
        self.publish_deleted(key.shared());
        match &result {
            Ok(_) => self.ks(key).deletes.inc(),
            Err(e) => {
                self.ks(key).error(e);
                // The key may still be in Redis: distrust it until recovery deletes it.
                if is_l2_outage(e) {
                    self.record_dirty(key);
                }
            }
        }
        result
    }

    /// See [`Cache::ttl`](crate::Cache::ttl).
    pub(crate) async fn ttl<S: KeySchema>(&self, key: &Key<S>) -> Result<KeyTtl> {
        let Some(l2) = &self.l2 else {
            let now = self.clock.now();
            return Ok(self
                .l1
                .as_ref()
                .and_then(|l1| l1.deadline(key.as_str()))
                .filter(|d| *d > now)
                .map_or(KeyTtl::Missing, |d| KeyTtl::Expires(d - now)));
        };
        let pttl = match S::STORAGE {
            Storage::Book => l2.pttl(&book::version_key(key.as_str())).await,
            _ => l2.pttl(key.as_str()).await,
        }
        .inspect_err(|e| self.ks(key).error(e))?;
        Ok(match pttl {
            None => KeyTtl::Missing,
            Some(None) => KeyTtl::Persistent,
            Some(Some(d)) => KeyTtl::Expires(d),
        })
    }

    /// See [`Cache::ping`](crate::Cache::ping).
    pub(crate) async fn ping(&self) -> Result<()> {
        match &self.l2 {
            Some(l2) => l2.ping().await,
            None => Ok(()),
        }
    }

    /// See [`Cache::breaker`](crate::Cache::breaker).
    pub(crate) fn breaker(&self) -> Option<BreakerSnapshot> {
        self.l2.as_ref().map(|l2| l2.breaker_snapshot())
    }

    /// The L2, when there is one (the admin operations reach it directly).
    pub(crate) fn l2(&self) -> Option<&Arc<L2Tier>> {
        self.l2.as_ref()
    }

    /// Forgets `keys` (full names, as `SCAN` found them, deleted from Redis by the caller)
    /// in this instance — a queued write dropped, the L1 entry removed — and publishes their
    /// deletion on the backplane so the other instances evict them too.
    pub(crate) fn forget_keys(&self, keys: &[String]) {
        for key in keys {
            if let Some(w) = &self.writer {
                w.writer.forget(key);
            }
            if let Some(l1) = &self.l1 {
                l1.remove(key);
            }
            self.publish_deleted(&Arc::from(key.as_str()));
        }
    }

    /// See [`Cache::shard_breakers`](crate::Cache::shard_breakers).
    pub(crate) fn shard_breakers(&self) -> Vec<crate::resilience::ShardBreaker> {
        self.l2
            .as_ref()
            .map(|l2| l2.shard_breakers())
            .unwrap_or_default()
    }

    /// See [`Cache::recovered`](crate::Cache::recovered).
    pub(crate) async fn recovered(&self) {
        if let Some(supervisor) = &self.supervisor {
            supervisor.recovered().await;
        }
    }

    /// See [`Cache::dirty_log`](crate::Cache::dirty_log).
    pub(crate) fn dirty_log(&self) -> &Arc<DirtyLog> {
        &self.dirty
    }

    /// Records `key` in the dirty log. For a book side its version key goes in too, so
    /// recovery deletes both: a version key left behind would make the side read back, from
    /// any process, as an empty book at the old version.
    pub(crate) fn record_dirty<S: KeySchema>(&self, key: &Key<S>) {
        self.record_dirty_key(key.shared(), S::KEY_PREFIX, S::STORAGE == Storage::Book);
    }

    /// A write of `key` reached Redis: forget a dirty entry recorded before `mark` (see
    /// [`DirtyLog::settled`]); for a book side, its version key's too.
    pub(crate) fn settle_dirty(&self, key: &str, book: bool, mark: Option<u64>) {
        if mark.is_none() {
            return;
        }
        self.dirty.settled(key, mark);
        if book {
            self.dirty.settled(&book::version_key(key), mark);
        }
    }

    /// [`record_dirty`](Self::record_dirty) by the key's name and prefix.
    pub(crate) fn record_dirty_key(&self, key: &Arc<str>, prefix: &'static str, book: bool) {
        self.dirty.record(key, prefix);
        if book {
            let vkey: Arc<str> = Arc::from(book::version_key(key));
            self.dirty.record(&vkey, prefix);
        }
    }

    /// See [`Cache::clear_l1`](crate::Cache::clear_l1).
    pub(crate) fn clear_l1(&self) {
        if let Some(l1) = &self.l1 {
            l1.clear();
        }
    }
}

/// A key's counters in *this* cache: the ones the key carries when this cache built it,
/// else (a key built by another instance) this cache's counters for the kind.
pub(crate) enum KindRef<'a> {
    Borrowed(&'a KindStats),
    Owned(Arc<KindStats>),
}

impl std::ops::Deref for KindRef<'_> {
    type Target = KindStats;

    #[inline]
    fn deref(&self) -> &KindStats {
        match self {
            KindRef::Borrowed(k) => k,
            KindRef::Owned(k) => k,
        }
    }
}

/// A `PTTL` as L1 may use it: Redis counts expiry in whole milliseconds and reports what is
/// left against its millisecond clock, so the key can live up to 1 ms past `PTTL` from the
/// request (and be served in its last millisecond). L1 takes 1 ms less, so it never holds a
/// value past the key's expiry — nor past its TTL.
pub(crate) fn below_redis_precision(pttl: Duration) -> Duration {
    pttl.saturating_sub(Duration::from_millis(1))
}

/// True when a Redis write failed because Redis was not healthy: a timeout, a broken or
/// refused connection, an error reply, or the circuit breaker open (no I/O at all). The write
/// may or may not have landed, and Redis may keep an older copy. False for refused input
/// (never sent) and for a key holding another Redis type: Redis is healthy then, and the key
/// is not ours, so recovery must not delete it.
fn is_l2_outage(e: &Error) -> bool {
    e.trips_breaker() || e.is_breaker_open()
}

/// The TTL a write uses: the override or the key's, in whole milliseconds. Redis keeps
/// whole milliseconds (`PX`, truncated), so L1 uses the same: with the L1 deadline taken
/// before the request, L1 never outlives the Redis key (DESIGN §4 rule 1). A TTL under
/// 1 ms becomes 1 ms in both tiers.
fn write_ttl<S: KeySchema>(key: &Key<S>, opts: SetOptions) -> Result<Duration> {
    let ttl = opts.ttl.unwrap_or(key.ttl());
    if ttl.is_zero() {
        return Err(Error::InvalidValue {
            reason: "a write's TTL must be greater than zero".to_owned(),
        });
    }
    if ttl > MAX_TTL {
        return Err(Error::InvalidValue {
            reason: format!("a write's TTL must be at most {MAX_TTL:?}, not {ttl:?}"),
        });
    }
    Ok(Duration::from_millis(ttl_ms(ttl)))
}
