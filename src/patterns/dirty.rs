//! The dirty log: keys written while Redis could not be updated (write-through, or cache-only writes kept in L1), to be deleted from L2 before it is trusted again.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Keys whose L2 copy may be stale because a database write succeeded (or failed) while the
/// cache write or invalidation did not reach Redis (DESIGN §4 rule 3), or because a cache-only
/// write ([`Cache::set`](crate::Cache::set), [`Cache::set_book`](crate::Cache::set_book)) failed in
/// Redis and went to L1 alone ([`WriteOutcome::LocalOnly`](crate::WriteOutcome::LocalOnly)).
///
/// Bounded: past `capacity` keys it stops recording keys and sets an overflow flag; the key
/// prefixes (kinds) of every recorded key are kept separately, so recovery can fall back to
/// invalidating whole kinds (`SCAN` + `UNLINK` in the namespace) when the list is incomplete.
///
/// While a key is recorded, reads do not trust its L2 copy (they treat it as a miss).
#[derive(Debug)]
pub struct DirtyLog {
    // A std Mutex: record/take are short map operations, never held across an await.
    inner: Mutex<DirtyInner>,
    /// True while anything is recorded: lets the read path skip the lock in the common case.
    any: AtomicBool,
    capacity: usize,
}

#[derive(Debug, Default)]
struct DirtyInner {
    keys: HashSet<Arc<str>>,
    kinds: BTreeSet<&'static str>,
    overflowed: bool,
}

/// What [`DirtyLog::take`] hands to recovery.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtySnapshot {
    /// Keys to delete from L2 (complete unless `overflowed`).
    pub keys: Vec<Arc<str>>,
    /// True when keys were dropped for lack of room: invalidate `kinds` wholesale.
    pub overflowed: bool,
    /// The key prefix (`price`, `book`, ...) of every recorded (or dropped) key.
    pub kinds: Vec<&'static str>,
}

impl DirtyLog {
    /// An empty log holding at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        DirtyLog {
            inner: Mutex::default(),
            any: AtomicBool::new(false),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DirtyInner> {
        // Every mutation is a single insert; a poisoned log is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `key` (whose kind has the key prefix `kind`, e.g. `book`) as possibly stale in L2.
    pub fn record(&self, key: &Arc<str>, kind: &'static str) {
        let mut inner = self.lock();
        self.any.store(true, Ordering::Release);
        inner.kinds.insert(kind);
        if inner.keys.contains(key) {
            return;
        }
        if inner.keys.len() >= self.capacity {
            if !inner.overflowed {
                tracing::warn!(
                    capacity = self.capacity,
                    "dirty log overflowed; recovery will invalidate whole kinds"
                );
            }
            inner.overflowed = true;
            return;
        }
        inner.keys.insert(Arc::clone(key));
        metrics::counter!("mdcache_dirty_recorded_total", "kind" => kind).increment(1);
    }

    /// True when `key` is recorded.
    pub fn contains(&self, key: &str) -> bool {
        self.lock().keys.contains(key)
    }

    /// True when L2's copy of `key` (key prefix `kind`) must not be trusted: the key is
    /// recorded, or the log overflowed with a key of its kind.
    #[inline]
    pub(crate) fn distrusts(&self, key: &str, kind: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let inner = self.lock();
        inner.keys.contains(key) || (inner.overflowed && inner.kinds.contains(kind))
    }

    /// A copy of what the log holds, left in place (recovery forgets it only once the keys
    /// are gone from Redis, so reads keep distrusting them meanwhile).
    pub(crate) fn peek(&self) -> DirtySnapshot {
        let inner = self.lock();
        DirtySnapshot {
            keys: inner.keys.iter().cloned().collect(),
            overflowed: inner.overflowed,
            kinds: inner.kinds.iter().copied().collect(),
        }
    }

    /// Forgets what `snap` (from [`peek`](Self::peek)) held, after recovery deleted it; keys
    /// recorded since stay.
    pub(crate) fn forget(&self, snap: &DirtySnapshot) {
        let mut inner = self.lock();
        for k in &snap.keys {
            inner.keys.remove(k);
        }
        if snap.overflowed {
            // Every key of these kinds was invalidated, including any dropped for lack of room.
            inner.overflowed = false;
        }
        if inner.keys.is_empty() && !inner.overflowed {
            inner.kinds.clear();
            self.any.store(false, Ordering::Release);
        }
    }

    /// Keys recorded.
    pub fn len(&self) -> usize {
        self.lock().keys.len()
    }

    /// True when nothing is recorded and nothing overflowed.
    pub fn is_empty(&self) -> bool {
        let inner = self.lock();
        inner.keys.is_empty() && !inner.overflowed
    }

    /// True when keys were dropped for lack of room.
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Empties the log and returns what it held.
    pub fn take(&self) -> DirtySnapshot {
        let mut inner = self.lock();
        let taken = std::mem::take(&mut *inner);
        self.any.store(false, Ordering::Release);
        DirtySnapshot {
            keys: taken.keys.into_iter().collect(),
            overflowed: taken.overflowed,
            kinds: taken.kinds.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_an_overflow_flag() {
        let log = DirtyLog::new(2);
        for k in ["a", "b", "b", "c"] {
            log.record(&Arc::from(k), "price");
        }
        assert_eq!(log.len(), 2);
        assert!(log.overflowed());
        assert!(log.contains("a") && !log.contains("c"));
        let snap = log.take();
        assert!(snap.overflowed);
        assert_eq!(snap.kinds, vec!["price"]);
        assert_eq!(snap.keys.len(), 2);
        assert!(log.is_empty());
    }

    #[test]
    fn forget_keeps_keys_recorded_during_a_replay() {
        let log = DirtyLog::new(10);
        log.record(&Arc::from("a"), "pos");
        let snap = log.peek();
        assert!(
            log.distrusts("a", "pos"),
            "still distrusted while replaying"
        );
        log.record(&Arc::from("b"), "pos");
        log.forget(&snap);
        assert!(!log.contains("a") && log.contains("b"));
        assert!(log.distrusts("b", "pos") && !log.distrusts("a", "pos"));
    }
}
