//! Per-task measurement: one HDR histogram and a few counters per operation, owned by the task (no locks, no atomics) and merged at the end.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use mdcache::Tier;

/// Largest latency a histogram tracks exactly (10 s, in nanoseconds); slower calls are
/// recorded as 10 s. No call in the workload has a deadline anywhere near that.
const HIGHEST_NS: u64 = 10_000_000_000;

/// The operations the workload times, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `CacheAside::get` of a price.
    ReadPrice,
    /// `CacheAside::read_book` of one book side, top 5 levels.
    ReadBook,
    /// `CacheAside::get` of a position.
    ReadPos,
    /// `CacheAside::get` of the risk account.
    ReadRisk,
    /// `Cache::set` of a price by the feed (cache only).
    WritePrice,
    /// `Cache::set_book` of one book side by the feed (cache only).
    WriteBook,
    /// `WriteThrough::write` of an order (source, then cache).
    WriteOrder,
    /// `WriteThrough::write` of a position (source, then cache).
    WritePos,
}

impl Op {
    /// Every operation, in report order.
    pub(crate) const ALL: [Op; 8] = [
        Op::ReadPrice,
        Op::ReadBook,
        Op::ReadPos,
        Op::ReadRisk,
        Op::WritePrice,
        Op::WriteBook,
        Op::WriteOrder,
        Op::WritePos,
    ];

    /// The name in the report and the summary.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::ReadPrice => "read_price",
            Op::ReadBook => "read_book",
            Op::ReadPos => "read_pos",
            Op::ReadRisk => "read_risk",
            Op::WritePrice => "write_price",
            Op::WriteBook => "write_book",
            Op::WriteOrder => "write_order",
            Op::WritePos => "write_pos",
        }
    }

    /// True for the reads.
    pub(crate) fn is_read(self) -> bool {
        matches!(
            self,
            Op::ReadPrice | Op::ReadBook | Op::ReadPos | Op::ReadRisk
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How one read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// A value, from this tier.
    Value(Tier),
    /// A value from this tier that was past its TTL without being marked stale: a defect,
    /// counted in `past_ttl` (and in the tier's count).
    Expired(Tier),
    /// The source has no such key (never expected: every key is seeded).
    NotFound,
    /// The read returned an error, of this kind.
    Error(ReadFailure),
}

/// Why a read returned an error (the [`mdcache::LoadError`] variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFailure {
    /// The source failed (`LoadError::Source`).
    Source,
    /// The source missed its deadline (`LoadError::SourceTimeout`).
    SourceTimeout,
    /// No source-load slot within the bound (`LoadError::Overloaded`).
    Overloaded,
    /// The cache failed in a way the source could not make up for (`LoadError::Cache`, and
    /// any variant a later library version adds).
    Cache,
}

impl ReadFailure {
    /// Every kind, in report order.
    pub(crate) const ALL: [ReadFailure; 4] = [
        ReadFailure::Source,
        ReadFailure::SourceTimeout,
        ReadFailure::Overloaded,
        ReadFailure::Cache,
    ];

    /// The name in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ReadFailure::Source => "source",
            ReadFailure::SourceTimeout => "source_timeout",
            ReadFailure::Overloaded => "overloaded",
            ReadFailure::Cache => "cache",
        }
    }
}

/// How one write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// The value is cached.
    Applied,
    /// Market data: in this process's L1 now and queued for Redis by the conflating writer
    /// (`mdcache::WriteOutcome::Queued`).
    Queued,
    /// A higher version was cached; nothing changed.
    Superseded,
    /// Write-through only: the source took it but the cache write failed (dirty log).
    CacheFailed,
    /// Cache-only (feed) writes: Redis failed, the value went to this process's L1 only
    /// (`mdcache::WriteOutcome::LocalOnly`, key in the dirty log).
    LocalOnly,
    /// The write returned an error.
    Error,
}

/// One operation's figures in one task (or, after [`OpStats::merge`], in all of them).
#[derive(Debug, Clone)]
pub(crate) struct OpStats {
    /// Latency of every call, errors included, in nanoseconds.
    pub(crate) latency: Histogram<u64>,
    /// Calls that returned an error.
    pub(crate) errors: u64,
    /// Reads: errors by [`ReadFailure`] (in `ReadFailure::ALL` order).
    pub(crate) read_failures: [u64; 4],
    /// Reads: values served past their TTL without being marked stale (must stay 0).
    pub(crate) past_ttl: u64,
    /// Reads: the source had no value.
    pub(crate) not_found: u64,
    /// Reads: values by the tier that served them (`l1`, `l2`, `source`, `stale`).
    pub(crate) tiers: [u64; 4],
    /// Writes: refused because a higher version was cached.
    pub(crate) superseded: u64,
    /// Write-through: acknowledged by the source, but the cache write failed.
    pub(crate) cache_failed: u64,
    /// Cache-only writes: Redis failed; held by this process's L1 only.
    pub(crate) local_only: u64,
    /// Market-data writes queued for the conflating writer.
    pub(crate) queued: u64,
}

impl OpStats {
    fn new() -> Self {
        OpStats {
            latency: latency_histogram(3),
            errors: 0,
            read_failures: [0; 4],
            past_ttl: 0,
            not_found: 0,
            tiers: [0; 4],
            superseded: 0,
            cache_failed: 0,
            local_only: 0,
            queued: 0,
        }
    }

    /// Calls made, errors included.
    pub(crate) fn count(&self) -> u64 {
        self.latency.len()
    }

    /// Adds `other`'s figures to these.
    pub(crate) fn merge(&mut self, other: &OpStats) {
        // Same bounds and precision on both sides, so adding cannot fail; if it somehow did,
        // the counts below would still be right and only this histogram would be short.
        let _ = self.latency.add(&other.latency);
        self.errors += other.errors;
        for (a, b) in self.read_failures.iter_mut().zip(other.read_failures) {
            *a += b;
        }
        self.past_ttl += other.past_ttl;
        self.not_found += other.not_found;
        for (a, b) in self.tiers.iter_mut().zip(other.tiers) {
            *a += b;
        }
        self.superseded += other.superseded;
        self.cache_failed += other.cache_failed;
        self.local_only += other.local_only;
        self.queued += other.queued;
    }
}

/// A latency histogram in nanoseconds, 1 ns to 10 s, with `sigfig` significant digits.
pub(crate) fn latency_histogram(sigfig: u8) -> Histogram<u64> {
    // Constant, valid bounds (low ≥ 1, high ≥ 2·low) and sigfig ≤ 5: creation cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_NS, sigfig)
        .expect("1 ns..10 s with at most 5 significant digits is a valid histogram")
}

fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::L1 => 0,
        Tier::L2 => 1,
        Tier::Source => 2,
        // Stale, and any tier a later library version adds.
        _ => 3,
    }
}

/// What one task measured: a slot per operation, filled on first use (a reader never
/// allocates the write histograms).
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    ops: [Option<OpStats>; 8],
    /// Reads of the hot symbols (price, book and position of the top 1 %).
    pub(crate) hot_reads: u64,
    /// Of those, served from L1 or L2.
    pub(crate) hot_hits: u64,
    /// Feed updates or order events done.
    pub(crate) events: u64,
    /// Feed updates or order events skipped because the task fell more than 100 ms behind.
    pub(crate) dropped: u64,
}

impl Recorder {
    fn slot(&mut self, op: Op) -> &mut OpStats {
        self.ops[op.index()].get_or_insert_with(OpStats::new)
    }

    /// Records one read of `ns` nanoseconds; `hot` when its symbol is one of the hot ones.
    #[inline]
    pub(crate) fn read(&mut self, op: Op, ns: u64, outcome: ReadOutcome, hot: bool) {
        let s = self.slot(op);
        s.latency.saturating_record(ns);
        match outcome {
            ReadOutcome::Value(tier) => s.tiers[tier_index(tier)] += 1,
            ReadOutcome::Expired(tier) => {
                s.tiers[tier_index(tier)] += 1;
                s.past_ttl += 1;
            }
            ReadOutcome::NotFound => s.not_found += 1,
            ReadOutcome::Error(why) => {
                s.errors += 1;
                s.read_failures[why as usize] += 1;
            }
        }
        if hot {
            self.hot_reads += 1;
            self.hot_hits += u64::from(matches!(
                outcome,
                ReadOutcome::Value(Tier::L1 | Tier::L2) | ReadOutcome::Expired(Tier::L1 | Tier::L2)
            ));
        }
    }

    /// Records one write of `ns` nanoseconds.
    #[inline]
    pub(crate) fn write(&mut self, op: Op, ns: u64, outcome: WriteOutcome) {
        let s = self.slot(op);
        s.latency.saturating_record(ns);
        match outcome {
            WriteOutcome::Applied => {}
            WriteOutcome::Queued => s.queued += 1,
            WriteOutcome::Superseded => s.superseded += 1,
            WriteOutcome::CacheFailed => s.cache_failed += 1,
            WriteOutcome::LocalOnly => s.local_only += 1,
            WriteOutcome::Error => s.errors += 1,
        }
    }

    /// Adds `other`'s figures to these.
    pub(crate) fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self.ops.iter_mut().zip(&other.ops) {
            if let Some(theirs) = theirs {
                mine.get_or_insert_with(OpStats::new).merge(theirs);
            }
        }
        self.hot_reads += other.hot_reads;
        self.hot_hits += other.hot_hits;
        self.events += other.events;
        self.dropped += other.dropped;
    }

    /// The figures of `op` (empty when it never ran).
    pub(crate) fn op(&self, op: Op) -> OpStats {
        self.ops[op.index()].clone().unwrap_or_else(OpStats::new)
    }

    /// Read errors of every read operation, by kind (in `ReadFailure::ALL` order).
    pub(crate) fn read_failures(&self) -> [u64; 4] {
        let mut out = [0; 4];
        for s in self.ops.iter().flatten() {
            for (a, b) in out.iter_mut().zip(s.read_failures) {
                *a += b;
            }
        }
        out
    }

    /// Reads served past their TTL without being marked stale, every read operation.
    pub(crate) fn past_ttl(&self) -> u64 {
        self.ops.iter().flatten().map(|s| s.past_ttl).sum()
    }

    /// Reads served stale (marked so), every read operation.
    pub(crate) fn stale(&self) -> u64 {
        self.ops.iter().flatten().map(|s| s.tiers[3]).sum()
    }

    /// Calls of every read operation.
    pub(crate) fn reads(&self) -> u64 {
        self.sum(true)
    }

    /// Calls of every write operation.
    pub(crate) fn writes(&self) -> u64 {
        self.sum(false)
    }

    fn sum(&self, reads: bool) -> u64 {
        Op::ALL
            .iter()
            .filter(|op| op.is_read() == reads)
            .filter_map(|op| self.ops[op.index()].as_ref())
            .map(OpStats::count)
            .sum()
    }
}

/// What one task hands back: its figures for the whole run, the fault window's share of
/// them (empty without `--fault-window`), and its acknowledged writes (with `--verify`).
#[derive(Debug, Default)]
pub(crate) struct TaskRecord {
    /// Every call of the run.
    pub(crate) run: Recorder,
    /// The calls that started inside the fault window.
    pub(crate) window: Recorder,
    /// Write-through writes the source acknowledged.
    pub(crate) acked: Acked,
    /// Engine readers: how far their market-data reads were behind the feed.
    pub(crate) fresh: Option<super::freshness::Recorder>,
}

impl TaskRecord {
    /// Records one read in the run, and in the window when `in_window`.
    #[inline]
    pub(crate) fn read(
        &mut self,
        in_window: bool,
        op: Op,
        ns: u64,
        outcome: ReadOutcome,
        hot: bool,
    ) {
        self.run.read(op, ns, outcome, hot);
        if in_window {
            self.window.read(op, ns, outcome, hot);
        }
    }

    /// Records one write in the run, and in the window when `in_window`.
    #[inline]
    pub(crate) fn write(&mut self, in_window: bool, op: Op, ns: u64, outcome: WriteOutcome) {
        self.run.write(op, ns, outcome);
        if in_window {
            self.window.write(op, ns, outcome);
        }
    }
}

/// The highest version the source acknowledged per write-through key, for `--verify`.
/// Bounded: one entry per symbol's position and per order id (ids cycle per task).
#[derive(Debug, Default, Clone)]
pub(crate) struct Acked {
    /// Symbol index → highest acknowledged position version.
    pub(crate) positions: HashMap<usize, u64>,
    /// Order id → highest acknowledged order version.
    pub(crate) orders: HashMap<String, u64>,
}

impl Acked {
    /// Notes an acknowledged position write.
    pub(crate) fn position(&mut self, symbol: usize, version: u64) {
        let v = self.positions.entry(symbol).or_default();
        *v = (*v).max(version);
    }

    /// Notes an acknowledged order write.
    pub(crate) fn order(&mut self, id: &str, version: u64) {
        match self.orders.get_mut(id) {
            Some(v) => *v = (*v).max(version),
            None => {
                self.orders.insert(id.to_owned(), version);
            }
        }
    }

    /// Adds `other`'s acknowledgements (keeping the highest version per key).
    pub(crate) fn merge(&mut self, other: &Acked) {
        for (&s, &v) in &other.positions {
            self.position(s, v);
        }
        for (id, &v) in &other.orders {
            self.order(id, v);
        }
    }

    /// Keys acknowledged.
    pub(crate) fn len(&self) -> usize {
        self.positions.len() + self.orders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_and_split_into_reads_and_writes() {
        let mut a = Recorder::default();
        a.read(Op::ReadPrice, 100, ReadOutcome::Value(Tier::L1), true);
        a.read(Op::ReadPrice, 5_000, ReadOutcome::Value(Tier::Source), true);
        a.read(
            Op::ReadRisk,
            80,
            ReadOutcome::Error(ReadFailure::SourceTimeout),
            false,
        );
        a.read(Op::ReadPos, 90, ReadOutcome::Expired(Tier::L1), true);
        let mut b = Recorder::default();
        b.write(Op::WritePrice, 300, WriteOutcome::Superseded);
        b.write(Op::WritePos, 9_000, WriteOutcome::CacheFailed);
        b.write(Op::WriteBook, 400, WriteOutcome::LocalOnly);
        b.write(Op::WriteBook, 300, WriteOutcome::Queued);
        b.read(Op::ReadPrice, 120, ReadOutcome::NotFound, false);
        a.merge(&b);

        assert_eq!((a.reads(), a.writes()), (5, 4));
        assert_eq!(a.read_failures(), [0, 1, 0, 0]);
        assert_eq!(a.past_ttl(), 1);
        assert_eq!(a.op(Op::ReadPos).tiers, [1, 0, 0, 0]);
        let price = a.op(Op::ReadPrice);
        assert_eq!(price.count(), 3);
        assert_eq!(price.tiers, [1, 0, 1, 0]);
        assert_eq!(price.not_found, 1);
        assert_eq!(a.op(Op::ReadRisk).errors, 1);
        assert_eq!(a.op(Op::WritePrice).superseded, 1);
        assert_eq!(a.op(Op::WritePos).cache_failed, 1);
        assert_eq!(a.op(Op::WriteBook).local_only, 1);
        assert_eq!(a.op(Op::WriteBook).queued, 1);
        assert_eq!(a.op(Op::WriteOrder).count(), 0);
        assert_eq!((a.hot_reads, a.hot_hits), (3, 2));
        assert!(price.latency.max() >= 5_000);
    }

    #[test]
    fn names_are_unique_and_reads_come_first() {
        let names: std::collections::HashSet<_> = Op::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names.len(), Op::ALL.len());
        assert!(Op::ALL[..4].iter().all(|o| o.is_read()));
        assert!(Op::ALL[4..].iter().all(|o| !o.is_read()));
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
        }
    }
}
