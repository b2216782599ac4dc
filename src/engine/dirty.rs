//! The dirty log: keys written while Redis could not be updated (write-through, or cache-only writes kept in L1), to be deleted from L2 before it is trusted again.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Default bound of the dirty log (keys).
pub const DEFAULT_DIRTY_CAPACITY: usize = 100_000;

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
///
/// Every record (of a new key, of a key already present, or one dropped for lack of room)
/// takes the next sequence number, so recovery forgets only what it deleted: a key recorded
/// again, or an overflow, while a replay runs stays for the next replay.
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
    /// Each key with the sequence number of its latest record: [`DirtyLog::forget`] drops a
    /// key only when nothing recorded it again after the snapshot it was given.
    keys: HashMap<Arc<str>, u64>,
    kinds: BTreeSet<&'static str>,
    overflowed: bool,
    /// The latest sequence number handed out (0 before any record).
    seq: u64,
    /// The sequence number of the latest record dropped for lack of room: an overflow after a
    /// snapshot keeps `overflowed` set when that snapshot is forgotten.
    overflow_seq: u64,
}

/// What the dirty log hands to recovery: a copy of the keys to delete, and what to invalidate wholesale.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtySnapshot {
    /// Keys to delete from L2 (complete unless `overflowed`).
    pub keys: Vec<Arc<str>>,
    /// True when keys were dropped for lack of room: invalidate `kinds` wholesale.
    pub overflowed: bool,
    /// The key prefix (`price`, `book`, ...) of every recorded (or dropped) key.
    pub kinds: Vec<&'static str>,
    /// The sequence number of each key's latest record, index for index with `keys`.
    seqs: Vec<u64>,
    /// The log's sequence number when the snapshot was taken.
    seq: u64,
}

impl DirtySnapshot {
    /// The part of this snapshot a partial replay cleaned: the keys at `done` (indices into
    /// `keys`), and the overflow when `overflow_cleaned`. [`DirtyLog::forget`] of it forgets
    /// those alone.
    pub(crate) fn only(&self, done: &[usize], overflow_cleaned: bool) -> DirtySnapshot {
        DirtySnapshot {
            keys: done.iter().map(|&i| Arc::clone(&self.keys[i])).collect(),
            overflowed: self.overflowed && overflow_cleaned,
            kinds: self.kinds.clone(),
            seqs: done.iter().map(|&i| self.seqs[i]).collect(),
            seq: self.seq,
        }
    }
}

impl DirtyLog {
    /// An empty log holding at most `capacity` keys.
    pub(crate) fn new(capacity: usize) -> Self {
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
    pub(crate) fn record(&self, key: &Arc<str>, kind: &'static str) {
        let mut inner = self.lock();
        self.any.store(true, Ordering::Release);
        inner.kinds.insert(kind);
        inner.seq += 1;
        let seq = inner.seq;
        if let Some(s) = inner.keys.get_mut(key) {
            // Recorded again (perhaps while a replay deletes it): the replay must not forget it.
            *s = seq;
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
            inner.overflow_seq = seq;
            return;
        }
        inner.keys.insert(Arc::clone(key), seq);
        metrics::counter!("mdcache_dirty_recorded_total", "kind" => kind).increment(1);
    }

    /// Where the log stands before a Redis write starts: `None` when nothing is recorded
    /// (the common case, no lock), else the latest sequence number, for
    /// [`settled`](Self::settled).
    #[inline]
    pub(crate) fn mark(&self) -> Option<u64> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        Some(self.lock().seq)
    }

    /// A write of `key` reached Redis (stored, or refused for a higher version there): the
    /// older copy the log distrusted is gone, so the key is forgotten — if it was recorded
    /// before the write started (`mark`, from [`mark`](Self::mark)). A key recorded since (a
    /// newer value kept local while this write was in flight) stays.
    pub(crate) fn settled(&self, key: &str, mark: Option<u64>) {
        let Some(mark) = mark else { return };
        let mut inner = self.lock();
        if inner.keys.get(key).is_some_and(|s| *s <= mark) {
            inner.keys.remove(key);
            if inner.keys.is_empty() && !inner.overflowed {
                inner.kinds.clear();
                self.any.store(false, Ordering::Release);
            }
        }
    }

    /// True when `key` is recorded.
    pub fn contains(&self, key: &str) -> bool {
        self.lock().keys.contains_key(key)
    }

    /// True when L2's copy of `key` (key prefix `kind`) must not be trusted: the key is
    /// recorded, or the log overflowed with a key of its kind.
    #[inline]
    pub(crate) fn distrusts(&self, key: &str, kind: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let inner = self.lock();
        inner.keys.contains_key(key) || (inner.overflowed && inner.kinds.contains(kind))
    }

    /// A copy of what the log holds, left in place (recovery forgets it only once the keys
    /// are gone from Redis, so reads keep distrusting them meanwhile).
    pub(crate) fn peek(&self) -> DirtySnapshot {
        let inner = self.lock();
        let (keys, seqs) = inner.keys.iter().map(|(k, s)| (Arc::clone(k), *s)).unzip();
        DirtySnapshot {
            keys,
            overflowed: inner.overflowed,
            kinds: inner.kinds.iter().copied().collect(),
            seqs,
            seq: inner.seq,
        }
    }

    /// Forgets what `snap` (from [`peek`](Self::peek)) held, after recovery deleted it. Only
    /// what is unchanged since the snapshot goes: a key recorded again since (its sequence
    /// number moved) stays, and so does an overflow that happened since, because the replay
    /// may have deleted the key (or scanned the kind) before that record.
    pub(crate) fn forget(&self, snap: &DirtySnapshot) {
        let mut inner = self.lock();
        for (k, s) in snap.keys.iter().zip(&snap.seqs) {
            if inner.keys.get(k) == Some(s) {
                inner.keys.remove(k);
            }
        }
        if snap.overflowed && inner.overflow_seq <= snap.seq {
            // Every key of these kinds was invalidated, including any dropped for lack of
            // room up to the snapshot; none was dropped since.
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
    #[cfg(test)]
    pub(crate) fn take(&self) -> DirtySnapshot {
        let mut inner = self.lock();
        // The sequence keeps counting across a take, so an older snapshot never matches a
        // record made after it.
        let seq = inner.seq;
        let taken = std::mem::replace(
            &mut *inner,
            DirtyInner {
                seq,
                ..DirtyInner::default()
            },
        );
        self.any.store(false, Ordering::Release);
        let (keys, seqs) = taken.keys.into_iter().unzip();
        DirtySnapshot {
            keys,
            overflowed: taken.overflowed,
            kinds: taken.kinds.into_iter().collect(),
            seqs,
            seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_reached_redis_settles_only_what_was_recorded_before_it() {
        let log = DirtyLog::new(8);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert_eq!(log.mark(), None, "an empty log needs no mark");
        log.record(&a, "price");
        let mark = log.mark();
        log.record(&b, "price"); // recorded while the write was in flight
        log.settled("a", mark);
        log.settled("b", mark);
        assert!(!log.contains("a") && log.contains("b"));
        log.settled("b", log.mark());
        assert!(log.is_empty() && !log.distrusts("b", "price"));
    }

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

    #[test]
    fn a_key_recorded_again_during_a_replay_is_not_forgotten() {
        let log = DirtyLog::new(10);
        let k: Arc<str> = Arc::from("k");
        log.record(&k, "pos");
        let snap = log.peek();
        // The replay deletes k from Redis; meanwhile another failed write records it again.
        log.record(&k, "pos");
        log.forget(&snap);
        assert!(
            log.contains("k"),
            "the second record must survive the first replay"
        );
        assert!(log.distrusts("k", "pos"));
        // The next replay, with nothing recorded meanwhile, forgets it.
        let snap = log.peek();
        log.forget(&snap);
        assert!(log.is_empty() && !log.distrusts("k", "pos"));
    }

    #[test]
    fn an_overflow_during_a_replay_is_not_forgotten() {
        let log = DirtyLog::new(1);
        log.record(&Arc::from("a"), "pos");
        log.record(&Arc::from("b"), "pos");
        let snap = log.peek();
        assert!(snap.overflowed);
        // The replay scans the kind; meanwhile a key of another kind is dropped for lack of room.
        log.record(&Arc::from("c"), "ord");
        log.forget(&snap);
        assert!(
            log.overflowed(),
            "the overflow after the snapshot must survive"
        );
        assert!(log.distrusts("c", "ord"));
        let snap = log.peek();
        assert!(snap.kinds.contains(&"ord"));
        log.forget(&snap);
        assert!(!log.overflowed() && log.is_empty());
    }

    #[test]
    fn a_snapshot_taken_before_a_take_forgets_nothing_recorded_after_it() {
        let log = DirtyLog::new(10);
        let k: Arc<str> = Arc::from("k");
        log.record(&k, "pos");
        let old = log.peek();
        let _ = log.take();
        log.record(&k, "pos");
        log.forget(&old);
        assert!(log.contains("k"));
    }
}
