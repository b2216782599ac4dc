//! One storage path for values and book sides: the `Layout` trait says how a kind is held in each tier, and the engine's read, write, fill, re-check and stale paths are written once against it.
//!
//! Two layouts: [`Values`] (one envelope string in Redis, the value itself in L1; `values.rs`)
//! and [`Books`] (a sorted set and its stamp in Redis, a [`BookEntry`] in L1, and a read asks
//! for the best `depth` levels; `books.rs`). Everything else — the version rule, floors
//! (DESIGN §4 rule 9), the write policy on a failed Redis write, TTL arithmetic, counters —
//! is here, once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::writer::{self, Enqueued, Payload, Writer};
use super::*;

/// How the values of kind `S` are held in the tiers. A layout is a small `Copy` value that
/// carries what one read asks for (a book side's depth); the engine's paths are generic
/// over it, so values and book sides share every rule.
pub(crate) trait Layout<S: KeySchema>: Copy + Send + Sync + 'static {
    /// What L1 holds at a key of this layout.
    type Entry: Send + Sync + 'static;
    /// What a write sends to Redis.
    type Payload: Send + Sync;

    /// The layout of a read that wants the whole value: a single-flight load always loads,
    /// fills and re-checks whole values, and each caller then [`cut`](Self::cut)s its own.
    fn whole() -> Self;

    /// True when this read asks for the whole value (what [`whole`](Self::whole) gives): such
    /// reads can share one Redis read in a single-flight; a partial read (a book's top
    /// levels) reads its own, smaller part.
    fn is_whole(self) -> bool;

    /// Refuses, before any I/O, what a write of `value` would refuse (its size against
    /// `limit`, the kind's rules), so write-through can check before the database sees it.
    fn check(value: &S::Value, limit: usize) -> Result<()>;

    /// A value as it is stored (a book side sorted best first).
    fn normalise(value: S::Value) -> S::Value;

    /// Checks a write and prepares it: L1's entry, its size in bytes (L1's byte bound), and
    /// what goes to Redis (which carries `version` and `ttl`).
    fn prepare(
        value: Arc<S::Value>,
        version: u64,
        ttl: Duration,
        limit: usize,
    ) -> Result<(Arc<Self::Entry>, usize, Self::Payload)>;

    /// L1's entry for a whole, normalised value loaded from the source, with its size.
    fn entry(value: Arc<S::Value>) -> (Arc<Self::Entry>, usize);

    /// What this read returns from an L1 entry, or `None` when the entry cannot answer it
    /// (a side holding only the top levels, asked for more).
    fn view(self, entry: Arc<Self::Entry>) -> Option<Arc<S::Value>>;

    /// What a stale read (DESIGN §4 rule 7) returns from an L1 entry: whatever it holds.
    fn view_stale(self, entry: Arc<Self::Entry>) -> Arc<S::Value>;

    /// A whole value cut to what this read asks for.
    fn cut(self, whole: Arc<S::Value>) -> Arc<S::Value>;

    /// A write's payload as the market-data writer queues it.
    fn into_pending(payload: Self::Payload) -> Payload;

    /// What this read returns from a write still queued for Redis (this process's newest
    /// value of the key), or `None` if it cannot be read back.
    fn read_pending(self, payload: &Payload) -> Option<Arc<S::Value>>;

    /// Stores `payload` in Redis under the versioned compare-and-set: `Ok(true)` stored,
    /// `Ok(false)` superseded by a higher version there.
    fn l2_write<'a>(
        l2: &'a L2Tier,
        key: &'a str,
        payload: &'a Self::Payload,
        version: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool>> + Send + 'a;

    /// Reads `key` from Redis (L1 missed and the dirty log trusts it), promotes what it
    /// finds to L1 through [`Engine::promote`], and repairs bytes that do not decode.
    /// `t0` is taken before the request (see [`Engine::read_below_l1`]).
    fn l2_read<'a>(
        self,
        engine: &'a Engine,
        l2: &'a L2Tier,
        key: &'a Key<S>,
        t0: Instant,
    ) -> impl Future<Output = Result<Option<Read<S::Value>>>> + Send + 'a;
}

/// A value fetched from Redis on its way to L1: what [`Engine::promote`] needs.
pub(super) struct Promoted<E, V> {
    pub(super) entry: Arc<E>,
    pub(super) value: Arc<V>,
    pub(super) version: u64,
    /// Taken before the request.
    pub(super) t0: Instant,
    /// The TTL Redis reported left (`None`: the key has no expiry).
    pub(super) ttl_remaining: Option<Duration>,
    /// What L1 uses as the remaining TTL: Redis's, or the kind's TTL for a key without one.
    pub(super) remaining: Duration,
    /// Time since the write, by the TTL its writer gave it.
    pub(super) age: Duration,
    /// Stored size, for L1's byte bound.
    pub(super) bytes: usize,
}

impl Engine {
    /// The value L1 holds fresh at `key`, as layout `layout` reads it; not counted.
    #[inline]
    fn l1_peek<S: KeySchema, L: Layout<S>>(
        &self,
        l1: &L1,
        key: &Key<S>,
        layout: L,
    ) -> Option<Read<S::Value>> {
        let hit = l1.get::<L::Entry>(key.as_str())?;
        let now = hit.now;
        Some(Read {
            value: layout.view(hit.value)?,
            version: hit.version,
            tier: Tier::L1,
            age: now.saturating_duration_since(hit.stored_at),
            ttl_remaining: Some(hit.deadline.saturating_duration_since(now)),
        })
    }

    /// [`l1_peek`](Self::l1_peek), counted as an L1 hit when found (a miss is counted by the
    /// caller, which knows whether it goes on to L2).
    #[inline]
    pub(super) fn l1_get<S: KeySchema, L: Layout<S>>(
        &self,
        l1: &L1,
        key: &Key<S>,
        layout: L,
    ) -> Option<Read<S::Value>> {
        let read = self.l1_peek(l1, key, layout)?;
        self.ks(key).l1_hits.inc();
        Some(read)
    }

    /// Reads `key`: L1, then Redis (promoting what it finds to L1).
    pub(crate) async fn read_with<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        layout: L,
    ) -> Result<Option<Read<S::Value>>> {
        if let Some(l1) = &self.l1
            && let Some(read) = self.l1_get(l1, key, layout)
        {
            return Ok(Some(read));
        }
        self.read_below_l1(key, layout).await
    }

    /// The read after an L1 miss: counted, then Redis unless the dirty log distrusts the key.
    pub(super) async fn read_below_l1<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        layout: L,
    ) -> Result<Option<Read<S::Value>>> {
        self.count_l1_miss(key);
        self.read_l2(key, layout).await
    }

    /// L1 alone, counted as a hit when found (a miss is for the caller to count, with
    /// [`count_l1_miss`](Self::count_l1_miss)); `None` also without an L1.
    #[inline]
    pub(crate) fn read_l1<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        layout: L,
    ) -> Option<Read<S::Value>> {
        self.l1_get(self.l1.as_ref()?, key, layout)
    }

    /// L1 alone, not counted (a single-flight's look before it reads Redis: its callers
    /// already counted their miss).
    #[inline]
    pub(crate) fn peek_l1<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        layout: L,
    ) -> Option<Read<S::Value>> {
        self.l1_peek(self.l1.as_ref()?, key, layout)
    }

    /// Counts a read that missed L1 (nothing without an L1).
    #[inline]
    pub(crate) fn count_l1_miss<S: KeySchema>(&self, key: &Key<S>) {
        if self.l1.is_some() {
            self.ks(key).l1_misses.inc();
        }
    }

    /// What lies below L1 for a read that missed it (the miss already counted): a write this
    /// process still has queued, else Redis unless the dirty log distrusts the key.
    pub(crate) async fn read_l2<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        layout: L,
    ) -> Result<Option<Read<S::Value>>> {
        let Some(l2) = &self.l2 else {
            return Ok(None);
        };
        if let Some(read) = self.queued(key, layout) {
            return Ok(Some(read));
        }
        if self.dirty.distrusts(key.as_str(), S::KEY_PREFIX) {
            self.ks(key).l2_misses.inc();
            return Ok(None);
        }
        // Taken before the request: the server measures the remaining TTL later, so
        // `t0 + remaining` is never after the real expiry (L1 never outlives L2).
        let t0 = self.clock.now();
        layout.l2_read(self, l2, key, t0).await
    }

    /// A write of `key` this process queued for Redis and the writer has not flushed yet:
    /// newer than anything Redis holds, so a read that missed L1 (the entry evicted for
    /// room) serves it instead of going backwards to Redis's copy. Counted as an L1 hit.
    /// Never past its TTL, counted from the write: a write that waited that long is not
    /// served (nor sent: the writer drops it), and the read goes on to Redis and the source.
    pub(super) fn queued<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        layout: L,
    ) -> Option<Read<S::Value>> {
        let w = self.conflating(S::KIND)?;
        let (payload, version, ttl, written) = w.peek(key.as_str())?;
        let age = written.elapsed();
        if age >= ttl {
            return None;
        }
        let value = layout.read_pending(&payload)?;
        self.ks(key).l1_hits.inc();
        Some(Read {
            value,
            version,
            tier: Tier::L1,
            age,
            ttl_remaining: Some(ttl.saturating_sub(age)),
        })
    }

    /// Promotes a value fetched from Redis to L1 with its remaining TTL, and serves it. A
    /// value older than what L1 holds (a version floor, or a newer value written meanwhile)
    /// is not served: the fresher L1 value is, or the read misses.
    pub(super) fn promote<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        layout: L,
        p: Promoted<L::Entry, S::Value>,
    ) -> Option<Read<S::Value>> {
        if let Some(l1) = &self.l1 {
            let written = p.t0.checked_sub(p.age).unwrap_or(p.t0);
            let outcome = l1.insert_versioned(
                key.shared(),
                p.entry,
                p.version,
                deadline_after(p.t0, p.remaining),
                written,
                p.bytes,
            );
            if outcome == InsertOutcome::HigherVersionHeld {
                return match self.l1_peek(l1, key, layout) {
                    Some(r) if r.version >= p.version => {
                        self.ks(key).l1_hits.inc();
                        Some(r)
                    }
                    _ => {
                        self.ks(key).l2_misses.inc();
                        None
                    }
                };
            }
        }
        self.ks(key).l2_hits.inc();
        // Request to answer, for the dashboard's read latency (an L2 hit costs tens of µs;
        // the registry lookup here is ~0.1 µs of it).
        metrics::histogram!("mdcache_l2_read_seconds", "kind" => S::KIND).record(
            self.clock
                .now()
                .saturating_duration_since(p.t0)
                .as_secs_f64(),
        );
        Some(Read {
            value: p.value,
            version: p.version,
            tier: Tier::L2,
            age: p.age,
            ttl_remaining: p.ttl_remaining,
        })
    }

    /// Writes `value` at `version` to Redis and L1, with what to do when the Redis write
    /// fails ([`OnL2Failure`]). The one write path of `set`, `set_book`, write-through and
    /// cache-aside's fills.
    pub(crate) async fn store<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        value: Arc<S::Value>,
        version: u64,
        opts: SetOptions,
        on_failure: OnL2Failure,
    ) -> Result<WriteOutcome> {
        let ttl = write_ttl(key, opts).inspect_err(|e| self.ks(key).error(e))?;
        let (entry, bytes, payload) =
            L::prepare(value, version, ttl, self.config.max_value_bytes.get())
                .inspect_err(|e| self.ks(key).error(e))?;
        let t0 = self.clock.now();
        let local = LocalWrite {
            value: entry,
            version,
            t0,
            ttl,
            bytes,
            // A fill is the source's value, not this process's write: an epoch bump distrusts it.
            own: on_failure != OnL2Failure::Fill,
        };
        // A fill of a market-data kind, with an L1 to hold it: L1 now, Redis with the writer's
        // next flush (the same versioned compare-and-set), so the reader does not wait on Redis
        // a second time and fills ride the batches instead of costing a script call each.
        if on_failure == OnL2Failure::Fill
            && let (Some(l1), Some(writer)) = (&self.l1, self.conflating(S::KIND))
        {
            if !self.l2_writable() {
                // The caller puts the value in L1 alone.
                return Err(Error::BreakerOpen);
            }
            if local.insert_into(l1, key) == InsertOutcome::HigherVersionHeld {
                return Ok(WriteOutcome::Superseded);
            }
            let pending = L::into_pending(payload);
            // Older (a higher version is pending) or full: L1 holds the value, and a fill
            // owes Redis nothing.
            let _ = writer.enqueue(key.shared(), S::KEY_PREFIX, pending, version, ttl, true);
            return Ok(WriteOutcome::Queued);
        }
        // Market data from `set`/`set_book`: L1 now, Redis with the writer's next flush.
        // Write-through stays synchronous.
        if on_failure == OnL2Failure::KeepLocal
            && let Some(writer) = self.conflating(S::KIND)
        {
            // Redis will not take it now (breaker open or probing): kept in L1, key dirty,
            // exactly as a synchronous write refused by the breaker.
            if !self.l2_writable() {
                return self.after_failed_write(key, Error::BreakerOpen, on_failure, local);
            }
            match self.enqueue::<S, L>(writer, key, local, payload) {
                Ok(outcome) => return Ok(outcome),
                // The writer is full and there is no L1 to hold the value: write it now.
                Err((local, pending)) => {
                    return match &self.l2 {
                        Some(l2) => {
                            match writer::put_one(
                                l2,
                                key.as_str(),
                                &pending,
                                version,
                                ttl,
                                self.config.op_timeout,
                            )
                            .await
                            {
                                Ok(stored) => Ok(self.finish_write(key, local, Some(stored))),
                                Err(e) => self.after_failed_write(key, e, on_failure, local),
                            }
                        }
                        None => Ok(self.finish_write(key, local, None)),
                    };
                }
            }
        }
        let mark = self.dirty.mark();
        let l2_stored = match &self.l2 {
            None => None,
            Some(l2) => match L::l2_write(l2, key.as_str(), &payload, version, ttl).await {
                Ok(stored) => {
                    self.settle_dirty(key.as_str(), S::STORAGE == Storage::Book, mark);
                    // An authoritative write (not a fill): other instances drop older copies.
                    if stored && on_failure != OnL2Failure::Fill {
                        self.publish_written(key.shared(), version);
                    }
                    Some(stored)
                }
                Err(e) => return self.after_failed_write(key, e, on_failure, local),
            },
        };
        Ok(self.finish_write(key, local, l2_stored))
    }

    /// Queues a market-data write: L1 first (a higher version there makes it `Superseded`,
    /// not queued), then the writer. The writer full: with an L1, the value stays there and
    /// the key is recorded dirty (`LocalOnly`); without one, the write is handed back to be
    /// written synchronously.
    #[allow(clippy::type_complexity)]
    fn enqueue<S: KeySchema, L: Layout<S>>(
        &self,
        writer: &Writer,
        key: &Key<S>,
        local: LocalWrite<L::Entry>,
        payload: L::Payload,
    ) -> std::result::Result<WriteOutcome, (LocalWrite<L::Entry>, Payload)> {
        let (version, ttl) = (local.version, local.ttl);
        if let Some(l1) = &self.l1 {
            if local.insert_into(l1, key) == InsertOutcome::HigherVersionHeld {
                self.ks(key).writes_superseded.inc();
                return Ok(WriteOutcome::Superseded);
            }
            let pending = L::into_pending(payload);
            // Other instances get the value itself with the writer's cadence, not Redis's.
            let update = self.value_update(key.shared(), &pending, version, ttl);
            return Ok(
                match writer.enqueue(key.shared(), S::KEY_PREFIX, pending, version, ttl, false) {
                    Enqueued::Queued => {
                        self.ks(key).writes_queued.inc();
                        self.publish(key.shared(), update);
                        WriteOutcome::Queued
                    }
                    Enqueued::Older => {
                        self.ks(key).writes_superseded.inc();
                        WriteOutcome::Superseded
                    }
                    Enqueued::Full => {
                        self.record_dirty(key);
                        self.ks(key).writes_local_only.inc();
                        WriteOutcome::LocalOnly
                    }
                },
            );
        }
        let pending = L::into_pending(payload);
        match writer.enqueue(
            key.shared(),
            S::KEY_PREFIX,
            pending.clone(),
            version,
            ttl,
            false,
        ) {
            Enqueued::Queued => {
                self.ks(key).writes_queued.inc();
                Ok(WriteOutcome::Queued)
            }
            Enqueued::Older => {
                self.ks(key).writes_superseded.inc();
                Ok(WriteOutcome::Superseded)
            }
            Enqueued::Full => Err((local, pending)),
        }
    }

    /// Cache-aside's re-check inside a single flight: has a flight that just finished filled
    /// the key? That flight filled L1 (in this process) as well as Redis, so with an L1 only
    /// L1 is asked — no second Redis round trip before the source; without one, Redis is.
    pub(crate) async fn recheck<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        layout: L,
    ) -> Result<Option<Read<S::Value>>> {
        match &self.l1 {
            Some(l1) => Ok(self.l1_get(l1, key, layout)),
            None => self.read_with(key, layout).await,
        }
    }

    /// Puts a whole, normalised value loaded from the source into L1 only (used while Redis
    /// is unavailable, or not to be filled), under the version rule: refused when L1 holds a
    /// newer version or a floor above it.
    pub(crate) fn fill_loaded<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        value: Arc<S::Value>,
        version: u64,
    ) -> InsertOutcome {
        let (entry, bytes) = L::entry(value);
        self.fill_l1(key, entry, version, bytes)
    }

    /// A value past its deadline by at most `bound`, for the fail-safe read of DESIGN §4
    /// rule 7 (always reported as [`Tier::Stale`]).
    pub(crate) fn l1_stale<S: KeySchema, L: Layout<S>>(
        &self,
        key: &Key<S>,
        bound: Duration,
        layout: L,
    ) -> Option<Read<S::Value>> {
        let l1 = self.l1.as_ref()?;
        let hit = l1.get_stale::<L::Entry>(key.as_str(), bound)?;
        let now = hit.now;
        Some(Read {
            value: layout.view_stale(hit.value),
            version: hit.version,
            tier: Tier::Stale,
            age: now.saturating_duration_since(hit.stored_at),
            ttl_remaining: Some(Duration::ZERO),
        })
    }

    /// Applies a write's outcome to L1 and the counters.
    pub(super) fn finish_write<S: KeySchema, V: Send + Sync + 'static>(
        &self,
        key: &Key<S>,
        local: LocalWrite<V>,
        l2_stored: Option<bool>,
    ) -> WriteOutcome {
        let applied = match (l2_stored, &self.l1) {
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
    pub(super) fn after_failed_write<S: KeySchema, V: Send + Sync + 'static>(
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
                if let Some(l1) = &self.l1 {
                    l1.remove_older_than(key.as_str(), version);
                }
                return Err(e);
            }
            OnL2Failure::KeepLocal if !is_l2_outage(&e) => {
                // Redis is healthy and refused the key (another type): nothing local may
                // claim this version, but a newer L1 value stays.
                if let Some(l1) = &self.l1 {
                    l1.remove_older_than(key.as_str(), version.saturating_add(1));
                }
                return Err(e);
            }
            OnL2Failure::KeepLocal => {}
        }
        // Recorded before the L1 insert: from here on, a reader that misses L1 (the entry
        // evicted for room, say) gets a miss, never Redis's older copy.
        self.record_dirty(key);
        let Some(l1) = &self.l1 else {
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
}
