//! The in-process tier: a quick_cache map bounded by entries and bytes, with per-entry deadlines and the version rule.

use std::any::Any;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::Weighter;
use quick_cache::sync::{Cache as QuickCache, EntryAction, EntryResult};

use crate::clock::{Clock, Instant};

/// Bookkeeping bytes charged per entry on top of the encoded value and the key
/// (the `Entry` struct, the map slot, the `Arc` headers).
const ENTRY_OVERHEAD: usize = 96;

/// How long an insert waits for a concurrent insert of the same key to finish. Inserts hold
/// the slot for nanoseconds; the bound only guards against a bug turning into a hang.
const INSERT_WAIT: Duration = Duration::from_millis(5);

/// A decoded value in L1. Values are stored decoded (type-erased) so a hit costs a lookup,
/// a clock read and an `Arc` clone — no MessagePack decode.
#[derive(Clone)]
pub(crate) struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    version: u64,
    /// The moment the value stops being servable: the L2 key's expiry when it came from L2
    /// (`now + PTTL`), so L1 never extends a value's life.
    deadline: Instant,
    /// When the value was written (estimated from the TTL for values from L2), for the
    /// read's reported age.
    stored_at: Instant,
    /// Weight charged against the byte bound; see [`L1::weight_of`].
    weight: u32,
    /// The L1 epoch it was stored in: an entry from an earlier epoch is distrusted (not
    /// served), though its version still orders later inserts ([`L1::bump_epoch`]).
    epoch: u64,
    /// This process wrote it (`set`, write-through): an epoch bump does not distrust it.
    own: bool,
}

impl Entry {
    #[inline]
    fn trusted(&self, epoch: u64) -> bool {
        self.own || self.epoch == epoch
    }
}

/// The L1 marker of a version floor (see [`L1::set_floor`]): it holds no value, so typed reads
/// miss, but its version blocks older inserts.
#[derive(Debug)]
pub(crate) struct Floor;

/// What L1 holds at a key, as a diagnostic line shows it ([`L1::held`]).
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // read through `Debug` only
pub(crate) struct Held {
    /// The entry's version.
    pub(crate) version: u64,
    /// Microseconds to its deadline (negative: past it).
    pub(crate) left_us: i64,
    /// Stored in the current epoch, or by this process.
    pub(crate) trusted: bool,
    /// A version floor (no value).
    pub(crate) floor: bool,
}

/// Weighs entries by the weight computed once at insert time.
#[derive(Clone, Copy, Debug)]
struct EntryWeighter;

impl Weighter<Arc<str>, Entry> for EntryWeighter {
    #[inline]
    fn weight(&self, _key: &Arc<str>, entry: &Entry) -> u64 {
        u64::from(entry.weight)
    }
}

/// A fresh L1 hit.
#[derive(Debug)]
pub(crate) struct L1Hit<V> {
    pub(crate) value: Arc<V>,
    pub(crate) version: u64,
    pub(crate) deadline: Instant,
    pub(crate) stored_at: Instant,
    /// The instant the deadline was checked against, so age and remaining TTL reported for
    /// this hit agree with the check (a second clock read could land past the deadline).
    pub(crate) now: Instant,
}

/// What [`L1::insert_versioned`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InsertOutcome {
    /// The value is stored.
    Stored,
    /// A fresh entry with a higher version is there; it stays (the version rule).
    HigherVersionHeld,
    /// Not stored for another reason: the deadline had already passed, or a concurrent insert
    /// of the same key held the slot too long (the key is then removed).
    NotStored,
}

/// The in-process tier.
pub(crate) struct L1 {
    map: QuickCache<Arc<str>, Entry, EntryWeighter>,
    clock: Clock,
    /// Smallest weight any entry is charged: `max_bytes / max_entries`. With it, staying under
    /// the byte capacity also keeps the entry count under `max_entries`, so one weighted
    /// bound enforces both limits.
    min_weight: usize,
    /// The current epoch (see [`L1::bump_epoch`]).
    epoch: AtomicU64,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("entries", &self.map.len())
            .field("weight", &self.map.weight())
            .field("capacity", &self.map.capacity())
            .finish()
    }
}

impl L1 {
    pub(crate) fn new(max_entries: NonZeroUsize, max_bytes: NonZeroUsize, clock: Clock) -> Self {
        let min_weight = (max_bytes.get() / max_entries.get()).max(1);
        L1 {
            map: QuickCache::with_weighter(
                max_entries.get(),
                max_bytes.get() as u64,
                EntryWeighter,
            ),
            clock,
            min_weight,
            epoch: AtomicU64::new(0),
        }
    }

    /// Distrusts everything stored so far: no entry stored before now is served again
    /// (reads miss and go to Redis), though versions and floors still order later inserts,
    /// so nothing older can land in their place. The backplane bumps it when it may have
    /// missed an update (a gap in a publisher's sequence, a lost subscription).
    pub(crate) fn bump_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    #[inline]
    fn current_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The weight charged for a value of `value_bytes` encoded bytes under `key`.
    fn weight_of(&self, key: &str, value_bytes: usize) -> u32 {
        let w = (value_bytes + key.len() + ENTRY_OVERHEAD).max(self.min_weight);
        u32::try_from(w).unwrap_or(u32::MAX)
    }

    /// The entry at `key` if it is still before its deadline and holds a `V`.
    #[inline]
    pub(crate) fn get<V: Send + Sync + 'static>(&self, key: &str) -> Option<L1Hit<V>> {
        let e = self.map.get(key)?;
        let now = self.clock.now();
        if now >= e.deadline || !e.trusted(self.current_epoch()) {
            return None;
        }
        let value = e.value.downcast::<V>().ok()?;
        Some(L1Hit {
            value,
            version: e.version,
            deadline: e.deadline,
            stored_at: e.stored_at,
            now,
        })
    }

    /// The entry at `key` if it holds a `V` and is at most `bound` past its deadline (fresh
    /// entries qualify too). Only for the fail-safe stale read.
    pub(crate) fn get_stale<V: Send + Sync + 'static>(
        &self,
        key: &str,
        bound: Duration,
    ) -> Option<L1Hit<V>> {
        let e = self.map.get(key)?;
        let now = self.clock.now();
        // Checked: `bound` comes from configuration.
        if e.deadline.checked_add(bound).is_none_or(|end| now >= end) {
            return None;
        }
        let value = e.value.downcast::<V>().ok()?;
        Some(L1Hit {
            value,
            version: e.version,
            deadline: e.deadline,
            stored_at: e.stored_at,
            now,
        })
    }

    /// Stores `value` unless a fresh entry with a higher version is present (the version rule,
    /// DESIGN §4 rule 2). Returns whether the value was stored.
    pub(crate) fn insert<V: Send + Sync + 'static>(
        &self,
        key: &Arc<str>,
        value: Arc<V>,
        version: u64,
        deadline: Instant,
        written_at: Instant,
        encoded_bytes: usize,
    ) -> bool {
        self.insert_versioned(key, value, version, deadline, written_at, encoded_bytes)
            == InsertOutcome::Stored
    }

    /// [`insert`](Self::insert), telling a value refused for a higher version apart from one
    /// not stored for another reason.
    pub(crate) fn insert_versioned<V: Send + Sync + 'static>(
        &self,
        key: &Arc<str>,
        value: Arc<V>,
        version: u64,
        deadline: Instant,
        written_at: Instant,
        encoded_bytes: usize,
    ) -> InsertOutcome {
        self.insert_entry(
            key,
            value,
            version,
            deadline,
            written_at,
            encoded_bytes,
            false,
        )
    }

    /// [`insert_versioned`](Self::insert_versioned), saying whether this process wrote the
    /// value (`own`: an epoch bump leaves it trusted, since the process knows of nothing
    /// newer than its own write except what missed updates held, which the bump cannot
    /// recover either).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert_entry<V: Send + Sync + 'static>(
        &self,
        key: &Arc<str>,
        value: Arc<V>,
        version: u64,
        deadline: Instant,
        written_at: Instant,
        encoded_bytes: usize,
        own: bool,
    ) -> InsertOutcome {
        let Some((new, now)) = self.new_entry(
            key,
            value,
            version,
            deadline,
            written_at,
            encoded_bytes,
            own,
        ) else {
            return InsertOutcome::NotStored;
        };
        // A fresh entry with a higher version (a value or a version floor) stays.
        self.put(key, new, now, |cur| cur.version > version)
    }

    /// The entry an insert stores, of the current epoch, and now; `None` when `deadline` has
    /// passed.
    #[allow(clippy::too_many_arguments)]
    fn new_entry<V: Send + Sync + 'static>(
        &self,
        key: &Arc<str>,
        value: Arc<V>,
        version: u64,
        deadline: Instant,
        written_at: Instant,
        encoded_bytes: usize,
        own: bool,
    ) -> Option<(Entry, Instant)> {
        let now = self.clock.now();
        (deadline > now).then(|| {
            let entry = Entry {
                value,
                version,
                deadline,
                stored_at: written_at,
                weight: self.weight_of(key, encoded_bytes),
                epoch: self.current_epoch(),
                own,
            };
            (entry, now)
        })
    }

    /// [`insert_versioned`](Self::insert_versioned) of an update another instance published
    /// (the backplane): a fresh entry of a higher version is kept, and so is one of the same
    /// version that is trusted (nothing to learn from it; a distrusted one is replaced, which
    /// trusts it again). Decided under the key's lock, so the receiver looks nothing up first.
    pub(crate) fn insert_received<V: Send + Sync + 'static>(
        &self,
        key: &Arc<str>,
        value: Arc<V>,
        version: u64,
        deadline: Instant,
        written_at: Instant,
        encoded_bytes: usize,
    ) -> InsertOutcome {
        let Some((new, now)) = self.new_entry(
            key,
            value,
            version,
            deadline,
            written_at,
            encoded_bytes,
            false,
        ) else {
            return InsertOutcome::NotStored;
        };
        let epoch = new.epoch;
        self.put(key, new, now, |cur| {
            cur.version > version || (cur.version == version && cur.trusted(epoch))
        })
    }

    /// Sets a version floor at `key` (DESIGN §4 rule 9): until `hold_until`, no value, fill or
    /// negative entry with a version below `version` can land, and reads of the key miss L1
    /// (the floor holds no value). A fresh entry at `version` or above stays: it already
    /// satisfies the floor.
    pub(crate) fn set_floor(&self, key: &Arc<str>, version: u64, hold_until: Instant) {
        let now = self.clock.now();
        if hold_until <= now {
            return;
        }
        let floor = Entry {
            value: Arc::new(Floor),
            version,
            deadline: hold_until,
            stored_at: now,
            weight: self.weight_of(key, 0),
            epoch: self.current_epoch(),
            own: true,
        };
        if self.put(key, floor, now, |cur| cur.version >= version) == InsertOutcome::NotStored {
            // Could not order against a concurrent insert: whatever is there may be older.
            self.map.remove(key.as_ref());
        }
    }

    /// Stores `new` at `key` unless a fresh current entry satisfies `keep`. The version check
    /// and the replacement happen under the map's per-key lock. A replacement that does not
    /// grow the entry is made in place (the common case: the same kind of value again, and
    /// no placeholder for concurrent inserts of the key to wait on); one that grows it goes
    /// through a placeholder guard's insert, so the byte bound is enforced as for a new key
    /// (growing an entry in place changes its weight without evicting anything).
    fn put(
        &self,
        key: &Arc<str>,
        new: Entry,
        now: Instant,
        keep: impl FnOnce(&Entry) -> bool,
    ) -> InsertOutcome {
        let mut slot = Some(new);
        let result = self.map.entry(key, Some(INSERT_WAIT), |_, cur| {
            if cur.deadline > now && keep(cur) {
                return EntryAction::Retain(false);
            }
            match slot.take() {
                Some(new) if new.weight <= cur.weight => {
                    *cur = new;
                    EntryAction::Retain(true)
                }
                other => {
                    slot = other;
                    EntryAction::ReplaceWithGuard
                }
            }
        });
        let guard = match result {
            EntryResult::Retained(true) => return InsertOutcome::Stored,
            EntryResult::Retained(false) => return InsertOutcome::HigherVersionHeld,
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => guard,
            // Not produced by this callback.
            EntryResult::Removed(_, _) => return InsertOutcome::NotStored,
            EntryResult::Timeout => {
                // Someone else is mid-insert; we cannot order against it, so make sure no
                // possibly-older value stays behind: the next read goes to L2.
                self.map.remove(key.as_ref());
                return InsertOutcome::NotStored;
            }
        };
        match slot.take().map(|new| guard.insert(new)) {
            Some(Ok(())) => InsertOutcome::Stored,
            _ => InsertOutcome::NotStored,
        }
    }

    /// The version of the entry at `key` (a value, a negative entry or a floor) if it is
    /// still before its deadline.
    pub(crate) fn live_version(&self, key: &str) -> Option<u64> {
        let e = self.map.peek(key)?;
        (self.clock.now() < e.deadline).then_some(e.version)
    }

    /// What the entry at `key` is, live or not, for a diagnostic line (never for a decision).
    pub(crate) fn held(&self, key: &str) -> Option<Held> {
        let e = self.map.peek(key)?;
        let now = self.clock.now();
        let left = e.deadline.saturating_duration_since(now);
        let past = now.saturating_duration_since(e.deadline);
        Some(Held {
            version: e.version,
            left_us: i64::try_from(left.as_micros()).unwrap_or(i64::MAX)
                - i64::try_from(past.as_micros()).unwrap_or(i64::MAX),
            trusted: e.trusted(self.current_epoch()),
            floor: e.value.is::<Floor>(),
        })
    }

    /// The deadline of the entry at `key`, whatever its type.
    pub(crate) fn deadline(&self, key: &str) -> Option<Instant> {
        self.map.peek(key).map(|e| e.deadline)
    }

    /// Removes `key`.
    pub(crate) fn remove(&self, key: &str) {
        self.map.remove(key);
    }

    /// Removes `key` if it holds a version lower than `version` (after a write of `version`
    /// was superseded in L2: an older L1 copy must go, a newer or equal one may stay).
    pub(crate) fn remove_older_than(&self, key: &str, version: u64) {
        self.map.remove_if(key, |e| e.version < version);
    }

    /// Removes every entry.
    pub(crate) fn clear(&self) {
        self.map.clear();
    }

    /// Entries held (expired ones count until evicted or overwritten).
    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Weighted bytes held.
    pub(crate) fn weight(&self) -> u64 {
        self.map.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l1(entries: usize, bytes: usize) -> (L1, crate::clock::MockClock) {
        let (clock, mock) = Clock::mock();
        let l1 = L1::new(
            NonZeroUsize::new(entries).unwrap(),
            NonZeroUsize::new(bytes).unwrap(),
            clock,
        );
        (l1, mock)
    }

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn never_served_after_its_deadline() {
        let (l1, mock) = l1(100, 1 << 20);
        let now = l1.clock.now();
        assert!(l1.insert(
            &key("k"),
            Arc::new(5u32),
            1,
            now + Duration::from_millis(10),
            l1.clock.now(),
            8
        ));
        assert_eq!(*l1.get::<u32>("k").unwrap().value, 5);
        mock.advance(Duration::from_millis(9));
        assert!(l1.get::<u32>("k").is_some());
        mock.advance(Duration::from_millis(1));
        assert!(l1.get::<u32>("k").is_none(), "served at its deadline");
    }

    #[test]
    fn lower_versions_never_replace_higher_ones() {
        let (l1, _mock) = l1(100, 1 << 20);
        let d = l1.clock.now() + Duration::from_secs(1);
        assert!(l1.insert(&key("k"), Arc::new(5u32), 5, d, l1.clock.now(), 8));
        assert!(!l1.insert(&key("k"), Arc::new(3u32), 3, d, l1.clock.now(), 8));
        assert_eq!(l1.get::<u32>("k").unwrap().version, 5);
        assert!(l1.insert(&key("k"), Arc::new(6u32), 6, d, l1.clock.now(), 8));
        assert_eq!(*l1.get::<u32>("k").unwrap().value, 6);
    }

    #[test]
    fn insert_versioned_tells_a_higher_version_from_an_expired_write() {
        let (l1, _mock) = l1(100, 1 << 20);
        let now = l1.clock.now();
        let d = now + Duration::from_secs(1);
        let k = key("k");
        assert_eq!(
            l1.insert_versioned(&k, Arc::new(5u32), 5, d, now, 8),
            InsertOutcome::Stored
        );
        assert_eq!(
            l1.insert_versioned(&k, Arc::new(3u32), 3, d, now, 8),
            InsertOutcome::HigherVersionHeld
        );
        assert_eq!(
            l1.insert_versioned(&k, Arc::new(7u32), 7, now, now, 8),
            InsertOutcome::NotStored,
            "a deadline already reached is never stored"
        );
        assert_eq!(l1.get::<u32>("k").unwrap().version, 5);
    }

    #[test]
    fn an_expired_higher_version_does_not_block_a_new_value() {
        let (l1, mock) = l1(100, 1 << 20);
        let now = l1.clock.now();
        assert!(l1.insert(
            &key("k"),
            Arc::new(5u32),
            5,
            now + Duration::from_millis(1),
            l1.clock.now(),
            8
        ));
        mock.advance(Duration::from_millis(2));
        let later = l1.clock.now() + Duration::from_secs(1);
        assert!(l1.insert(&key("k"), Arc::new(1u32), 1, later, l1.clock.now(), 8));
        assert_eq!(l1.get::<u32>("k").unwrap().version, 1);
    }

    #[test]
    fn a_wrong_type_is_a_miss_not_a_panic() {
        let (l1, _mock) = l1(100, 1 << 20);
        let d = l1.clock.now() + Duration::from_secs(1);
        l1.insert(&key("k"), Arc::new(5u32), 1, d, l1.clock.now(), 8);
        assert!(l1.get::<String>("k").is_none());
    }

    #[test]
    fn bounded_by_entries_and_by_bytes() {
        // 100 entries, 100 KiB: small values are bounded by count...
        let (l1, _mock) = l1(100, 100 * 1024);
        let d = l1.clock.now() + Duration::from_secs(60);
        for i in 0..1_000 {
            l1.insert(
                &key(&format!("k{i}")),
                Arc::new(i),
                i as u64,
                d,
                l1.clock.now(),
                8,
            );
        }
        assert!(l1.len() <= 100, "{} entries", l1.len());
        assert!(l1.weight() <= 100 * 1024);
        // ...and large values by bytes.
        let (l1, _mock) = self::l1(10_000, 100 * 1024);
        let d = l1.clock.now() + Duration::from_secs(60);
        for i in 0..1_000 {
            l1.insert(
                &key(&format!("k{i}")),
                Arc::new(i),
                i as u64,
                d,
                l1.clock.now(),
                10 * 1024,
            );
        }
        assert!(l1.weight() <= 100 * 1024, "{} bytes", l1.weight());
        assert!(l1.len() <= 10, "{} entries", l1.len());
    }

    #[test]
    fn the_byte_bound_holds_when_values_grow_in_place() {
        // Item 4 of issue 9: 500 keys written small, then rewritten 10 KiB each in place.
        let bound = 1 << 20;
        let (l1, _mock) = l1(100_000, bound);
        let d = l1.clock.now() + Duration::from_secs(60);
        let keys: Vec<Arc<str>> = (0..500).map(|i| key(&format!("k{i}"))).collect();
        for (i, k) in keys.iter().enumerate() {
            l1.insert(k, Arc::new(i), 1, d, l1.clock.now(), 8);
        }
        for (i, k) in keys.iter().enumerate() {
            l1.insert(k, Arc::new(i), 2, d, l1.clock.now(), 32 * 1024);
        }
        assert!(
            l1.weight() <= bound as u64,
            "{} weighted bytes against a {bound}-byte bound",
            l1.weight()
        );
    }

    #[test]
    fn a_floor_blocks_older_inserts_and_serves_nothing() {
        let (l1, mock) = l1(100, 1 << 20);
        let now = l1.clock.now();
        let k = key("k");
        assert!(l1.insert(&k, Arc::new(1u32), 1, now + Duration::from_secs(1), now, 8));
        l1.set_floor(&k, 2, now + Duration::from_secs(10));
        assert!(l1.get::<u32>("k").is_none(), "a floor holds no value");
        assert_eq!(l1.live_version("k"), Some(2));
        assert_eq!(
            l1.insert_versioned(&k, Arc::new(1u32), 1, now + Duration::from_secs(1), now, 8),
            InsertOutcome::HigherVersionHeld,
            "an older fill cannot land under the floor"
        );
        assert_eq!(
            l1.insert_versioned(&k, Arc::new(2u32), 2, now + Duration::from_secs(1), now, 8),
            InsertOutcome::Stored,
            "a value at the floor's version replaces it"
        );
        assert_eq!(l1.get::<u32>("k").unwrap().version, 2);
        // A floor below what is held changes nothing.
        l1.set_floor(&k, 1, now + Duration::from_secs(10));
        assert_eq!(*l1.get::<u32>("k").unwrap().value, 2);
        // A floor holds until its own deadline, then older values may land again.
        let k2 = key("k2");
        l1.set_floor(&k2, 5, now + Duration::from_secs(10));
        mock.advance(Duration::from_secs(10));
        let later = l1.clock.now();
        assert!(l1.insert(
            &k2,
            Arc::new(1u32),
            1,
            later + Duration::from_secs(1),
            later,
            8
        ));
    }
}
