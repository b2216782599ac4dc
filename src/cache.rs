//! `Cache`: the facade that composes L1 and L2 behind typed reads and writes, and its builder.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, Instant, deadline_after};
use crate::codec;
use crate::config::{Backend, CacheConfig, MAX_TTL};
use crate::error::{Error, ErrorKind, Result};
use crate::key::{BookSchema, Key, KeySchema, Storage, ValueSchema, validate_kind};
use crate::l1::{InsertOutcome, L1};
use crate::l2::book;
use crate::l2::guard::{BreakerSnapshot, BreakerState};
use crate::l2::redis::{Fetched, RedisOptions, RedisTier, ttl_ms};
use crate::patterns::dirty::DEFAULT_DIRTY_CAPACITY;
use crate::patterns::dirty::DirtyLog;
use crate::schema::BookSide;
use crate::stats::{KindStats, Stats, StatsSnapshot};

/// Where a read was served from (DESIGN §4 rule 6).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The in-process tier.
    L1,
    /// Redis.
    L2,
    /// The source of record (database), after a miss in every tier.
    Source,
    /// A value past its TTL, served only by the fail-safe path and always marked so.
    Stale,
}

impl Tier {
    /// `l1`, `l2`, `source` or `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
            Tier::Source => "source",
            Tier::Stale => "stale",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value with its provenance: where it came from, its version and how old it is.
#[non_exhaustive]
#[derive(Debug)]
pub struct Read<V> {
    /// The value, shared with the tier it came from.
    pub value: Arc<V>,
    /// The version it was written with.
    pub version: u64,
    /// The tier that served it.
    pub tier: Tier,
    /// Time since it was written, as far as this process can tell: exact for values written
    /// here; for values from Redis, the TTL the writer recorded in the envelope minus the
    /// remaining TTL, both on Redis's clock (for envelopes of format 1, which record no TTL,
    /// the kind's TTL stands in).
    pub age: Duration,
    /// Time left before it expires; `None` when the Redis key has no expiry.
    pub ttl_remaining: Option<Duration>,
}

impl<V> Clone for Read<V> {
    fn clone(&self) -> Self {
        Read {
            value: Arc::clone(&self.value),
            version: self.version,
            tier: self.tier,
            age: self.age,
            ttl_remaining: self.ttl_remaining,
        }
    }
}

/// What a write did.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The value is now cached.
    Applied,
    /// A higher version was already cached; nothing changed (DESIGN §4 rule 2).
    Superseded,
    /// The Redis write failed (an error, a timeout, or the circuit breaker open, in which case
    /// Redis was not contacted at all). The value is in this process's L1 only (under the
    /// version rule, with the deadline a successful write would have had) and the key is in
    /// the [dirty log](Cache::dirty_log), so Redis's copy is distrusted by this cache until
    /// recovery deletes it. Other processes do not see the value, and it dies with this one.
    ///
    /// Returned only by the cache-only writes ([`Cache::set`], [`Cache::set_book`] and their
    /// `_with` forms) of a cache with an L1 (the layered backend); see [`Cache::set`].
    LocalOnly,
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
}

impl<V: Send + Sync + 'static> LocalWrite<V> {
    fn insert_into<S: KeySchema>(self, l1: &L1, key: &Key<S>) -> InsertOutcome {
        l1.insert_versioned(
            key.shared(),
            self.value,
            self.version,
            deadline_after(self.t0, self.ttl),
            self.t0,
            self.bytes,
        )
    }
}

/// A key's remaining lifetime.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTtl {
    /// The key is not cached.
    Missing,
    /// The key exists without an expiry (written by something other than mdcache).
    Persistent,
    /// The key expires after this long.
    Expires(Duration),
}

/// Options for one write.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// TTL for this write instead of the key's (kind's) TTL.
    pub ttl: Option<Duration>,
}

impl SetOptions {
    /// Options with a TTL override.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// How long a version floor (DESIGN §4 rule 9) is held at least: longer than any source load
/// that may be in flight when it is set (cache-aside's default source deadline is 500 ms),
/// so a load that read the older row before the write committed cannot fill L1 after it.
/// A key's floor is held for the longer of this and the key's TTL.
pub const FLOOR_HOLD: Duration = Duration::from_secs(10);

/// What became of a value fetched from Redis.
pub(crate) enum Fetch<V> {
    /// Served.
    Hit(Read<V>),
    /// Not servable: gone, or older than what L1 holds (a version floor).
    Miss,
    /// The bytes did not decode; counted, and to be removed from Redis if unchanged.
    Undecodable(Vec<u8>),
}

/// The L1 marker for "the source has no such key" (negative caching).
#[derive(Debug)]
struct NotFound;

/// A book side as held in L1: sorted best first, and whether it holds every level or only
/// the top levels a depth-limited read fetched.
#[derive(Debug)]
pub(crate) struct BookEntry {
    side: Arc<BookSide>,
    complete: bool,
}

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
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: CacheConfig,
    backend: Backend,
    l1: Option<L1>,
    /// Shared with the recovery supervisor task.
    l2: Option<Arc<RedisTier>>,
    clock: Clock,
    stats: Stats,
    /// Keys whose L2 copy is untrusted until recovery deletes them (DESIGN §4 rule 3).
    dirty: Arc<DirtyLog>,
    /// Stops the recovery supervisor when the last clone of the cache is dropped.
    _supervisor: Option<tokio_util::sync::DropGuard>,
}

impl Cache {
    /// A builder with the defaults of DESIGN §6.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// A validated key of kind `S` for identifier `id`, with the kind's TTL after overrides.
    /// Build keys once and reuse them: reads then do no formatting.
    pub fn key<S: KeySchema>(&self, id: &str) -> Result<Key<S>> {
        validate_kind(S::KIND)?;
        let ttl = self
            .inner
            .config
            .ttl_for(S::KIND, S::KEY_PREFIX, S::DEFAULT_TTL);
        Key::new(
            &self.inner.config.namespace,
            id,
            ttl,
            self.inner.stats.kind(S::KIND),
        )
    }

    #[inline]
    pub(crate) fn ks<'a, S: KeySchema>(&'a self, key: &'a Key<S>) -> KindRef<'a> {
        if key.stats.owner == self.inner.stats.id {
            KindRef::Borrowed(&key.stats)
        } else {
            KindRef::Owned(self.inner.stats.kind(S::KIND))
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The configuration the cache was built with.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// A snapshot of the counters, with L1's current size.
    pub fn stats(&self) -> StatsSnapshot {
        let (entries, bytes) = self
            .inner
            .l1
            .as_ref()
            .map_or((0, 0), |l1| (l1.len(), l1.weight()));
        self.inner.stats.snapshot(entries, bytes)
    }

    /// The value at `key`, from the nearest tier that has it fresh.
    ///
    /// An L1 hit costs one map lookup, one clock read and an `Arc` clone. A value in Redis that
    /// does not decode is counted in `decode_errors` and returned as a miss, never served.
    #[inline]
    pub async fn get<S: ValueSchema>(&self, key: &Key<S>) -> Result<Option<Arc<S::Value>>> {
        if let Some(l1) = &self.inner.l1
            && let Some(hit) = l1.get::<S::Value>(key.as_str())
        {
            self.ks(key).l1_hits.inc();
            return Ok(Some(hit.value));
        }
        // Boxed: the L2 path's future is large (deadline, retries, repair), and kept inline it
        // would make every L1 hit's future that large too — moved and initialised per call.
        // One allocation per L1 miss is noise next to a Redis round trip.
        Ok(Box::pin(self.read_below_l1(key)).await?.map(|r| r.value))
    }

    /// Like [`get`](Self::get), with provenance: tier, version, age and remaining TTL.
    pub async fn read<S: ValueSchema>(&self, key: &Key<S>) -> Result<Option<Read<S::Value>>> {
        if let Some(l1) = &self.inner.l1
            && let Some(hit) = l1.get::<S::Value>(key.as_str())
        {
            self.ks(key).l1_hits.inc();
            return Ok(Some(self.l1_read(hit)));
        }
        // Boxed for the same reason as in `get`.
        Box::pin(self.read_below_l1(key)).await
    }

    fn l1_read<V>(&self, hit: crate::l1::L1Hit<V>) -> Read<V> {
        let now = hit.now;
        Read {
            value: hit.value,
            version: hit.version,
            tier: Tier::L1,
            age: now.saturating_duration_since(hit.stored_at),
            ttl_remaining: Some(hit.deadline.saturating_duration_since(now)),
        }
    }

    async fn read_below_l1<S: ValueSchema>(&self, key: &Key<S>) -> Result<Option<Read<S::Value>>> {
        if self.inner.l1.is_some() {
            self.ks(key).l1_misses.inc();
        }
        let Some(l2) = &self.inner.l2 else {
            return Ok(None);
        };
        if self.inner.dirty.distrusts(key.as_str(), S::KEY_PREFIX) {
            self.ks(key).l2_misses.inc();
            return Ok(None);
        }
        // Taken before the request: the server measures the remaining TTL later, so
        // `t0 + remaining` is never after the real expiry (L1 never outlives L2).
        let t0 = self.inner.clock.now();
        let fetched = l2
            .get(key.as_str())
            .await
            .inspect_err(|e| self.ks(key).error(e))?;
        match fetched {
            None => {
                self.ks(key).l2_misses.inc();
                Ok(None)
            }
            Some(f) => Ok(self.settle_fetched(l2, key, f, t0).await),
        }
    }

    /// [`accept_fetched`](Self::accept_fetched), repairing undecodable bytes: they are deleted
    /// from Redis if nobody replaced them meanwhile, so the next fill can land (a garbage
    /// header version would otherwise win every compare-and-set and pin the key).
    async fn settle_fetched<S: ValueSchema>(
        &self,
        l2: &RedisTier,
        key: &Key<S>,
        f: Fetched,
        t0: Instant,
    ) -> Option<Read<S::Value>> {
        match self.accept_fetched(key, f, t0) {
            Fetch::Hit(r) => Some(r),
            Fetch::Miss => None,
            Fetch::Undecodable(bytes) => {
                if let Err(e) = l2.unlink_if_equals(key.as_str(), &bytes).await {
                    tracing::debug!(key = key.as_str(), error = %e, "removing an undecodable value failed");
                }
                None
            }
        }
    }

    /// Decodes a value fetched from L2 and promotes it to L1 with the remaining TTL. A value
    /// older than what L1 holds (a version floor, or a newer value written meanwhile) is not
    /// served: the fresher L1 value is, or the read misses.
    fn accept_fetched<S: ValueSchema>(
        &self,
        key: &Key<S>,
        f: Fetched,
        t0: Instant,
    ) -> Fetch<S::Value> {
        let env = match codec::decode_envelope::<S::Value>(&f.bytes) {
            Ok(env) => env,
            Err(reason) => {
                self.ks(key).decode_errors.inc();
                self.ks(key).l2_misses.inc();
                tracing::warn!(key = key.as_str(), %reason, "undecodable value treated as a miss");
                return Fetch::Undecodable(f.bytes);
            }
        };
        let value = Arc::new(env.value);
        let version = env.version;
        let remaining = f.remaining.unwrap_or(key.ttl());
        let age = env.ttl.unwrap_or(key.ttl()).saturating_sub(remaining);
        if let Some(l1) = &self.inner.l1 {
            let written = t0.checked_sub(age).unwrap_or(t0);
            let outcome = l1.insert_versioned(
                key.shared(),
                Arc::clone(&value),
                version,
                deadline_after(t0, remaining),
                written,
                f.bytes.len(),
            );
            if outcome == InsertOutcome::HigherVersionHeld {
                return match l1.get::<S::Value>(key.as_str()) {
                    Some(hit) if hit.version >= version => {
                        self.ks(key).l1_hits.inc();
                        Fetch::Hit(self.l1_read(hit))
                    }
                    _ => {
                        self.ks(key).l2_misses.inc();
                        Fetch::Miss
                    }
                };
            }
        }
        self.ks(key).l2_hits.inc();
        Fetch::Hit(Read {
            value,
            version,
            tier: Tier::L2,
            age,
            ttl_remaining: f.remaining,
        })
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
        self.set_with_policy(key, value.into(), version, opts, OnL2Failure::KeepLocal)
            .await
    }

    /// [`set_with`](Self::set_with), with what to do when the Redis write fails.
    pub(crate) async fn set_with_policy<S: ValueSchema>(
        &self,
        key: &Key<S>,
        value: Arc<S::Value>,
        version: u64,
        opts: SetOptions,
        on_failure: OnL2Failure,
    ) -> Result<WriteOutcome> {
        let ttl = write_ttl(key, opts).inspect_err(|e| self.ks(key).error(e))?;
        let bytes = codec::encode_with_ttl(
            version,
            Some(ttl),
            &*value,
            self.inner.config.max_value_bytes.get(),
        )
        .inspect_err(|e| self.ks(key).error(e))?;
        let t0 = self.inner.clock.now();
        let local = LocalWrite {
            value,
            version,
            t0,
            ttl,
            bytes: bytes.len(),
        };
        let l2_stored = match &self.inner.l2 {
            None => None,
            Some(l2) => match l2.set_versioned(key.as_str(), &bytes, ttl).await {
                Ok(stored) => Some(stored),
                Err(e) => return self.after_failed_write(key, e, on_failure, local),
            },
        };
        Ok(self.finish_write(key, local, l2_stored))
    }

    /// Applies a write's outcome to L1 and the counters.
    fn finish_write<S: KeySchema, V: Send + Sync + 'static>(
        &self,
        key: &Key<S>,
        local: LocalWrite<V>,
        l2_stored: Option<bool>,
    ) -> WriteOutcome {
        let applied = match (l2_stored, &self.inner.l1) {
            // L2 refused: a higher version is there; drop an older L1 copy so reads fetch it.
            (Some(false), Some(l1)) => {
                l1.remove_older_than(key.as_str(), local.version);
                false
            }
            (Some(false), None) => false,
            (Some(true), Some(l1)) => {
                local.insert_into(l1, key);
                true
            }
            (Some(true), None) => true,
            (None, Some(l1)) => local.insert_into(l1, key) == InsertOutcome::Stored,
            (None, None) => false,
        };
        if applied {
            self.ks(key).writes.inc();
            WriteOutcome::Applied
        } else {
            self.ks(key).writes_superseded.inc();
            WriteOutcome::Superseded
        }
    }

    /// After an L2 write failed we cannot know what Redis holds. The error is counted; then,
    /// by policy: a fill drops only an older L1 copy; a write-through floors L1 at its version;
    /// a cache-only write, when Redis was unhealthy ([`is_l2_outage`]), is recorded dirty and
    /// kept in L1 ([`WriteOutcome::LocalOnly`]). No policy ever removes a newer L1 entry
    /// (DESIGN §4 rule 9).
    fn after_failed_write<S: KeySchema, V: Send + Sync + 'static>(
        &self,
        key: &Key<S>,
        e: Error,
        on_failure: OnL2Failure,
        local: LocalWrite<V>,
    ) -> Result<WriteOutcome> {
        self.ks(key).error(&e);
        let version = local.version;
        match on_failure {
            OnL2Failure::Floor => {
                self.floor(key, version);
                return Err(e);
            }
            OnL2Failure::Fill => {
                if let Some(l1) = &self.inner.l1 {
                    l1.remove_older_than(key.as_str(), version);
                }
                return Err(e);
            }
            OnL2Failure::KeepLocal if !is_l2_outage(&e) => {
                // Redis is healthy and refused the key (another type): nothing local may
                // claim this version, but a newer L1 value stays.
                if let Some(l1) = &self.inner.l1 {
                    l1.remove_older_than(key.as_str(), version.saturating_add(1));
                }
                return Err(e);
            }
            OnL2Failure::KeepLocal => {}
        }
        // Recorded before the L1 insert: from here on, a reader that misses L1 (the entry
        // evicted for room, say) gets a miss, never Redis's older copy.
        self.record_dirty(key);
        let Some(l1) = &self.inner.l1 else {
            return Err(e);
        };
        match local.insert_into(l1, key) {
            InsertOutcome::Stored => {
                self.ks(key).writes_local_only.inc();
                Ok(WriteOutcome::LocalOnly)
            }
            InsertOutcome::HigherVersionHeld => {
                self.ks(key).writes_superseded.inc();
                Ok(WriteOutcome::Superseded)
            }
            InsertOutcome::NotStored => {
                // The value is nowhere we can vouch for: no older copy may stay in its place.
                l1.remove_older_than(key.as_str(), version);
                Err(e)
            }
        }
    }

    /// Sets a version floor at `key` (DESIGN §4 rule 9): for the longer of the key's TTL and
    /// [`FLOOR_HOLD`], nothing older than `version` lands in L1 and reads of the key skip L1
    /// until a value at `version` or newer fills it. A no-op without an L1.
    pub(crate) fn floor<S: KeySchema>(&self, key: &Key<S>, version: u64) {
        if let Some(l1) = &self.inner.l1 {
            let hold = key.ttl().max(FLOOR_HOLD);
            l1.set_floor(
                key.shared(),
                version,
                deadline_after(self.inner.clock.now(), hold),
            );
        }
    }

    /// Drops `key` from L1 (whatever version it holds).
    pub(crate) fn evict_l1<S: KeySchema>(&self, key: &Key<S>) {
        if let Some(l1) = &self.inner.l1 {
            l1.remove(key.as_str());
        }
    }

    /// The version L1 holds at `key` (a value, a negative entry or a floor), if live. A read
    /// that found an older version elsewhere must not serve it.
    pub(crate) fn l1_version<S: KeySchema>(&self, key: &Key<S>) -> Option<u64> {
        self.inner.l1.as_ref()?.live_version(key.as_str())
    }

    /// True when Redis is there and its breaker closed: a fill or refresh may write to it.
    pub(crate) fn l2_writable(&self) -> bool {
        self.inner
            .l2
            .as_ref()
            .is_some_and(|l2| l2.breaker.state() == BreakerState::Closed)
    }

    /// Deletes `key` from both tiers (`UNLINK` in Redis). Returns whether it existed in the
    /// outermost tier (Redis when there is one).
    pub async fn delete<S: KeySchema>(&self, key: &Key<S>) -> Result<bool> {
        let existed_l1 = self
            .inner
            .l1
            .as_ref()
            .is_some_and(|l1| l1.deadline(key.as_str()).is_some());
        let result = match &self.inner.l2 {
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
        if let Some(l1) = &self.inner.l1 {
            l1.remove(key.as_str());
        }
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

    /// The key's remaining TTL in the outermost tier (Redis when there is one).
    pub async fn ttl<S: KeySchema>(&self, key: &Key<S>) -> Result<KeyTtl> {
        let Some(l2) = &self.inner.l2 else {
            let now = self.inner.clock.now();
            return Ok(self
                .inner
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

    /// Reads many keys: L1 first, then every L1 miss from Redis in one round trip.
    /// The result has one entry per key, in order.
    pub async fn get_many<S: ValueSchema>(
        &self,
        keys: &[Key<S>],
    ) -> Result<Vec<Option<Read<S::Value>>>> {
        let mut out: Vec<Option<Read<S::Value>>> = Vec::with_capacity(keys.len());
        let mut missing: Vec<usize> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = self
                .inner
                .l1
                .as_ref()
                .and_then(|l1| l1.get::<S::Value>(key.as_str()));
            match hit {
                Some(hit) => {
                    self.ks(key).l1_hits.inc();
                    out.push(Some(self.l1_read(hit)));
                }
                None => {
                    if self.inner.l1.is_some() {
                        self.ks(key).l1_misses.inc();
                    }
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        let Some(l2) = &self.inner.l2 else {
            return Ok(out);
        };
        if missing.is_empty() {
            return Ok(out);
        }
        // Keys the dirty log distrusts stay misses; the rest go to Redis.
        missing.retain(|&i| {
            let distrusted = self.inner.dirty.distrusts(keys[i].as_str(), S::KEY_PREFIX);
            if distrusted {
                self.ks(&keys[i]).l2_misses.inc();
            }
            !distrusted
        });
        if missing.is_empty() {
            return Ok(out);
        }
        let names: Vec<&str> = missing.iter().map(|&i| keys[i].as_str()).collect();
        let t0 = self.inner.clock.now();
        let fetched = l2.get_many(&names).await.inspect_err(|e| {
            for &i in &missing {
                self.ks(&keys[i]).error(e);
            }
        })?;
        for (&i, f) in missing.iter().zip(fetched) {
            let key = &keys[i];
            out[i] = match f {
                None => {
                    self.ks(key).l2_misses.inc();
                    None
                }
                Some(f) => self.settle_fetched(l2, key, f, t0).await,
            };
        }
        Ok(out)
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
        let limit = self.inner.config.max_value_bytes.get();
        let mut prepared = Vec::new();
        for (key, value, version) in items {
            let ttl =
                write_ttl(key, SetOptions::default()).inspect_err(|e| self.ks(key).error(e))?;
            let bytes = codec::encode_with_ttl(version, Some(ttl), &value, limit)
                .inspect_err(|e| self.ks(key).error(e))?;
            prepared.push((key, Arc::new(value), version, bytes, ttl));
        }
        let t0 = self.inner.clock.now();
        let stored: Vec<Option<bool>> = match &self.inner.l2 {
            None => vec![None; prepared.len()],
            Some(l2) => {
                let batch: Vec<(&str, Vec<u8>, Duration)> = prepared
                    .iter()
                    .map(|(k, _, _, b, ttl)| (k.as_str(), b.clone(), *ttl))
                    .collect();
                match l2.set_many(&batch).await {
                    Ok(s) => s.into_iter().map(Some).collect(),
                    Err(e) => {
                        let outage = is_l2_outage(&e);
                        for (key, _, version, ..) in &prepared {
                            if outage {
                                self.record_dirty(*key);
                            }
                            // An older L1 copy goes; a newer one stays (rule 9).
                            if let Some(l1) = &self.inner.l1 {
                                l1.remove_older_than(key.as_str(), version.saturating_add(1));
                            }
                            self.ks(*key).error(&e);
                        }
                        return Err(e);
                    }
                }
            }
        };
        Ok(prepared
            .into_iter()
            .zip(stored)
            .map(|((key, value, version, bytes, ttl), s)| {
                let local = LocalWrite {
                    value,
                    version,
                    t0,
                    ttl,
                    bytes: bytes.len(),
                };
                self.finish_write(key, local, s)
            })
            .collect())
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
        self.set_book_with_policy(key, side, version, opts, OnL2Failure::KeepLocal)
            .await
    }

    /// [`set_book_with`](Self::set_book_with), with what to do when the Redis write fails.
    pub(crate) async fn set_book_with_policy<S: BookSchema>(
        &self,
        key: &Key<S>,
        side: BookSide,
        version: u64,
        opts: SetOptions,
        on_failure: OnL2Failure,
    ) -> Result<WriteOutcome> {
        let mut side = side;
        let ttl = write_ttl(key, opts).inspect_err(|e| self.ks(key).error(e))?;
        // What Redis will hold, against the value limit; then the book rules.
        let bytes = book::check(&side, self.inner.config.max_value_bytes.get())
            .inspect_err(|e| self.ks(key).error(e))?;
        book::sort_best_first(&mut side.levels, S::SIDE);
        let side = Arc::new(side);
        let t0 = self.inner.clock.now();
        let result = match &self.inner.l2 {
            None => None,
            Some(l2) => Some(l2.book_replace(key.as_str(), &side, version, ttl).await),
        };
        let local = LocalWrite {
            value: Arc::new(BookEntry {
                side,
                complete: true,
            }),
            version,
            t0,
            ttl,
            bytes,
        };
        match result {
            None => Ok(self.finish_write(key, local, None)),
            Some(Ok(stored)) => Ok(self.finish_write(key, local, Some(stored))),
            Some(Err(e)) => self.after_failed_write(key, e, on_failure, local),
        }
    }

    /// The best `depth` levels of a book side (best first: highest bid, lowest ask), with
    /// provenance. `depth == 0` reads every level.
    pub async fn get_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        depth: usize,
    ) -> Result<Option<Read<BookSide>>> {
        if let Some(l1) = &self.inner.l1 {
            if let Some(read) = self.l1_book(l1, key, depth) {
                return Ok(Some(read));
            }
            self.ks(key).l1_misses.inc();
        }
        let Some(l2) = &self.inner.l2 else {
            return Ok(None);
        };
        if self.inner.dirty.distrusts(key.as_str(), S::KEY_PREFIX) {
            self.ks(key).l2_misses.inc();
            return Ok(None);
        }
        let t0 = self.inner.clock.now();
        let fetched = l2
            .book_top(key.as_str(), S::SIDE, depth)
            .await
            .inspect_err(|e| {
                if e.kind() == crate::ErrorKind::Decode {
                    self.ks(key).decode_errors.inc();
                }
                self.ks(key).error(e)
            })?;
        let f = match fetched {
            book::TopReply::Found(f) => f,
            book::TopReply::Missing => {
                self.ks(key).l2_misses.inc();
                return Ok(None);
            }
            book::TopReply::Undecodable { stamp, error } => {
                // A miss, like an undecodable value; and removed (unless a writer replaced
                // it meanwhile), so the reload that follows can fill it again.
                self.ks(key).decode_errors.inc();
                self.ks(key).l2_misses.inc();
                tracing::warn!(key = key.as_str(), %error, "undecodable book side treated as a miss");
                if let Err(e) = l2.book_unlink_if_stamp(key.as_str(), &stamp).await {
                    tracing::debug!(key = key.as_str(), error = %e, "removing an undecodable book side failed");
                }
                return Ok(None);
            }
        };
        // Age by the TTL its writer gave it (a per-write TTL included), both figures from
        // Redis's clock; the kind's TTL stands in for a side written by an earlier build.
        let written_ttl = f.written_ttl.unwrap_or(key.ttl());
        let remaining = f.remaining.unwrap_or(written_ttl);
        let age = written_ttl.saturating_sub(remaining);
        let complete = depth == 0 || f.side.levels.len() < depth;
        let bytes = f.bytes;
        let side = Arc::new(f.side);
        if let Some(l1) = &self.inner.l1 {
            let entry = Arc::new(BookEntry {
                side: Arc::clone(&side),
                complete,
            });
            let written = t0.checked_sub(age).unwrap_or(t0);
            let outcome = l1.insert_versioned(
                key.shared(),
                entry,
                f.version,
                deadline_after(t0, remaining),
                written,
                bytes,
            );
            if outcome == InsertOutcome::HigherVersionHeld {
                // L1 holds a newer side or a version floor: Redis's older side is not served.
                return Ok(match self.l1_book(l1, key, depth) {
                    Some(r) if r.version >= f.version => Some(r),
                    _ => {
                        self.ks(key).l2_misses.inc();
                        None
                    }
                });
            }
        }
        self.ks(key).l2_hits.inc();
        Ok(Some(Read {
            value: side,
            version: f.version,
            tier: Tier::L2,
            age,
            ttl_remaining: f.remaining,
        }))
    }

    /// The top `depth` levels of a book side from L1, if it holds them fresh (counted as an
    /// L1 hit; a miss is not counted here).
    #[inline]
    fn l1_book<S: BookSchema>(
        &self,
        l1: &L1,
        key: &Key<S>,
        depth: usize,
    ) -> Option<Read<BookSide>> {
        let hit = l1.get::<BookEntry>(key.as_str())?;
        let have = hit.value.side.levels.len();
        if !(hit.value.complete || (depth != 0 && have >= depth)) {
            return None;
        }
        self.ks(key).l1_hits.inc();
        let side = top(&hit.value.side, depth);
        let read = self.l1_read(hit);
        Some(Read {
            value: side,
            version: read.version,
            tier: read.tier,
            age: read.age,
            ttl_remaining: read.ttl_remaining,
        })
    }

    /// Cache-aside's re-check inside a single flight: has a flight that just finished filled
    /// the key? That flight filled L1 (in this process) as well as Redis, so with an L1 only
    /// L1 is asked — no second Redis round trip before the source; without one, Redis is.
    pub(crate) async fn recheck<S: ValueSchema>(
        &self,
        key: &Key<S>,
    ) -> Result<Option<Read<S::Value>>> {
        match &self.inner.l1 {
            Some(l1) => Ok(l1.get::<S::Value>(key.as_str()).map(|hit| {
                self.ks(key).l1_hits.inc();
                self.l1_read(hit)
            })),
            None => self.read(key).await,
        }
    }

    /// [`recheck`](Self::recheck) for a book side.
    pub(crate) async fn recheck_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        depth: usize,
    ) -> Result<Option<Read<BookSide>>> {
        match &self.inner.l1 {
            Some(l1) => Ok(self.l1_book(l1, key, depth)),
            None => self.get_book(key, depth).await,
        }
    }

    /// Round trip to Redis under the operation deadline; `Ok` for a memory-only cache.
    pub async fn ping(&self) -> Result<()> {
        match &self.inner.l2 {
            Some(l2) => l2.ping().await,
            None => Ok(()),
        }
    }

    /// The circuit breaker's figures; `None` without Redis.
    pub fn breaker(&self) -> Option<BreakerSnapshot> {
        self.inner.l2.as_ref().map(|l2| l2.breaker.snapshot())
    }

    /// The dirty log: keys whose Redis copy is distrusted until recovery deletes them.
    /// [`WriteThrough`](crate::WriteThrough) records into it, and so do cache writes whose
    /// Redis write failed ([`set`](Self::set), [`set_book`](Self::set_book),
    /// [`set_many`](Self::set_many)); recovery replays it.
    pub fn dirty_log(&self) -> &Arc<DirtyLog> {
        &self.inner.dirty
    }

    /// Records `key` in the dirty log. For a book side its version key goes in too, so
    /// recovery deletes both: a version key left behind would make the side read back, from
    /// any process, as an empty book at the old version.
    pub(crate) fn record_dirty<S: KeySchema>(&self, key: &Key<S>) {
        self.inner.dirty.record(key.shared(), S::KEY_PREFIX);
        if S::STORAGE == Storage::Book {
            let vkey: Arc<str> = Arc::from(book::version_key(key.as_str()));
            self.inner.dirty.record(&vkey, S::KEY_PREFIX);
        }
    }

    /// Puts a value loaded from the source into L1 only (used while Redis is unavailable),
    /// under the version rule: refused when L1 holds a newer version or a floor above it.
    pub(crate) fn fill_l1<S: KeySchema, V: Send + Sync + 'static>(
        &self,
        key: &Key<S>,
        value: Arc<V>,
        version: u64,
        bytes: usize,
    ) -> InsertOutcome {
        match &self.inner.l1 {
            Some(l1) => {
                let now = self.inner.clock.now();
                let ttl = Duration::from_millis(ttl_ms(key.ttl()));
                l1.insert_versioned(
                    key.shared(),
                    value,
                    version,
                    deadline_after(now, ttl),
                    now,
                    bytes,
                )
            }
            None => InsertOutcome::NotStored,
        }
    }

    /// Puts a book side loaded from the source into L1 only (sorted best first by the caller).
    pub(crate) fn fill_l1_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        side: BookSide,
        version: u64,
    ) -> InsertOutcome {
        let bytes = book::stored_bytes(&side);
        let entry = Arc::new(BookEntry {
            side: Arc::new(side),
            complete: true,
        });
        self.fill_l1(key, entry, version, bytes)
    }

    /// A value past its deadline by at most `bound`, for the fail-safe read of DESIGN §4
    /// rule 7 (always reported as [`Tier::Stale`]).
    pub(crate) fn l1_stale<V: Send + Sync + 'static>(
        &self,
        key: &str,
        bound: Duration,
    ) -> Option<Read<V>> {
        let l1 = self.inner.l1.as_ref()?;
        let hit = l1.get_stale::<V>(key, bound)?;
        let now = hit.now;
        Some(Read {
            value: hit.value,
            version: hit.version,
            tier: Tier::Stale,
            age: now.saturating_duration_since(hit.stored_at),
            ttl_remaining: Some(Duration::ZERO),
        })
    }

    /// A stale book side (see [`l1_stale`](Self::l1_stale)), cut to `depth`.
    pub(crate) fn l1_stale_book(
        &self,
        key: &str,
        bound: Duration,
        depth: usize,
    ) -> Option<Read<BookSide>> {
        let r = self.l1_stale::<BookEntry>(key, bound)?;
        Some(Read {
            value: top(&r.value.side, depth),
            version: r.version,
            tier: r.tier,
            age: r.age,
            ttl_remaining: r.ttl_remaining,
        })
    }

    /// True when L1 remembers that the source has no value at `key` (negative caching).
    pub(crate) fn negative_hit(&self, key: &str) -> bool {
        self.inner
            .l1
            .as_ref()
            .is_some_and(|l1| l1.get::<NotFound>(key).is_some())
    }

    /// Remembers in L1, for `ttl`, that the source has no value at `key`. Stored with version
    /// 0, so any real write replaces it. A no-op without an L1.
    pub(crate) fn put_negative(&self, key: &Arc<str>, ttl: Duration) {
        if let Some(l1) = &self.inner.l1 {
            let now = self.inner.clock.now();
            l1.insert(key, Arc::new(NotFound), 0, deadline_after(now, ttl), now, 0);
        }
    }

    /// Drops every L1 entry (Redis is untouched).
    pub fn clear_l1(&self) {
        if let Some(l1) = &self.inner.l1 {
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

/// The first `depth` levels (all when 0), sharing the `Arc` when nothing is cut.
pub(crate) fn top(side: &Arc<BookSide>, depth: usize) -> Arc<BookSide> {
    if depth == 0 || side.levels.len() <= depth {
        Arc::clone(side)
    } else {
        Arc::new(BookSide {
            levels: side.levels[..depth].to_vec(),
        })
    }
}

/// True when a Redis write failed because Redis was not healthy: a timeout, a broken or
/// refused connection, an error reply, or the circuit breaker open (no I/O at all). The write
/// may or may not have landed, and Redis may keep an older copy. False for refused input
/// (never sent) and for a key holding another Redis type: Redis is healthy then, and the key
/// is not ours, so recovery must not delete it.
fn is_l2_outage(e: &Error) -> bool {
    e.trips_breaker() || e.kind() == ErrorKind::BreakerOpen
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

/// Builds a [`Cache`]. Setters take and return the builder; [`build`](Self::build) validates.
///
/// ```
/// use std::time::Duration;
/// use mdcache::{Backend, Cache};
///
/// let err = Cache::builder().backend(Backend::Redis).build().unwrap_err();
/// assert!(err.to_string().contains("CACHE_REDIS_URL"));
/// let cache = Cache::builder()
///     .namespace("sim")
///     .ttl("price", Duration::from_millis(250))
///     .build()
///     .unwrap();
/// assert_eq!(cache.key::<mdcache::Price>("ES").unwrap().as_str(), "sim:price:{ES}");
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct CacheBuilder {
    config: CacheConfig,
    /// The first error met while reading the environment, reported by `build()`.
    error: Option<Error>,
    clock: Option<Clock>,
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

    /// Redis URL (`redis://` or `rediss://`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.config.redis_url = Some(url.into());
        self
    }

    /// Key prefix.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.config.namespace = ns.into();
        self
    }

    /// Multiplexed connections in the pool.
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

    /// TTL override for a kind (`price`, `book:bid`, or `book` for both sides).
    pub fn ttl(mut self, kind: &str, ttl: Duration) -> Self {
        self.config.ttl_overrides.push((kind.to_owned(), ttl));
        self
    }

    /// Largest encoded value accepted.
    pub fn max_value_bytes(mut self, n: NonZeroUsize) -> Self {
        self.config.max_value_bytes = n;
        self
    }

    /// Consecutive failures that open the circuit breaker.
    pub fn breaker_failures(mut self, n: NonZeroU32) -> Self {
        self.config.breaker_failures = n;
        self
    }

    /// How long the breaker stays open before the probe.
    pub fn breaker_open(mut self, d: Duration) -> Self {
        self.config.breaker_open = d;
        self
    }

    /// Open on a failure rate (0..1) over `window` (whole seconds, at least 1) instead of on
    /// consecutive failures; `breaker_failures` is then the minimum of requests in the window.
    pub fn breaker_failure_rate(mut self, rate: f64, window: Duration) -> Self {
        self.config.breaker_failure_rate = Some(rate);
        self.config.breaker_window = window;
        self
    }

    /// Deadline of the breaker's probe and of each recovery step.
    pub fn probe_timeout(mut self, d: Duration) -> Self {
        self.config.probe_timeout = d;
        self
    }

    /// Tries per L2 operation (1 = no retries); retries stay inside the operation's deadline.
    pub fn retry_max_tries(mut self, n: NonZeroU32) -> Self {
        self.config.retry_max_tries = n;
        self
    }

    /// The clock TTL deadlines are read from (a mock in tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

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
        let clock = self.clock.unwrap_or_default();
        let backend = config.effective_backend();
        let l1 = match backend {
            Backend::Memory | Backend::Layered => Some(L1::new(
                config.l1_max_entries,
                config.l1_max_bytes,
                clock.clone(),
            )),
            Backend::Redis => None,
        };
        let l2 = match (backend, &config.redis_url) {
            (Backend::Redis | Backend::Layered, Some(url)) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(Error::config(
                        "CACHE_BACKEND",
                        "the redis and layered backends must be built inside a Tokio runtime",
                    ));
                }
                Some(Arc::new(RedisTier::new(RedisOptions {
                    url: url.clone(),
                    pool_size: config.pool_size.get(),
                    op_timeout: config.op_timeout,
                    connect_timeout: config.connect_timeout,
                    breaker: config.breaker_config(),
                })?))
            }
            _ => None,
        };
        let dirty = Arc::new(DirtyLog::new(DEFAULT_DIRTY_CAPACITY));
        // The recovery supervisor lives as long as the cache: the guard cancels it on drop.
        let supervisor = l2.as_ref().map(|l2| {
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(crate::recovery::supervise(
                Arc::clone(l2),
                Arc::clone(&dirty),
                config.namespace.clone(),
                stop.clone(),
            ));
            stop.drop_guard()
        });
        Ok(Cache {
            inner: Arc::new(Inner {
                config,
                backend,
                l1,
                l2,
                clock,
                stats: Stats::default(),
                dirty,
                _supervisor: supervisor,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{BookBid, Level, Price};

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
        let r = cache.get_book(&key, 2).await.unwrap().unwrap();
        let prices: Vec<f64> = r.value.levels.iter().map(|l| l.price).collect();
        assert_eq!(prices, vec![12.0, 11.0]);
        assert_eq!(
            cache
                .get_book(&key, 0)
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
