//! Cross-instance freshness (`--engines`, `--role engine`): how far an engine's market-data read is behind the feed's latest write of the key, in versions and in microseconds, and how old its value is.
//!
//! **In one process** (`--engines N`) the feed records, per symbol, its latest sequence number
//! and when it wrote each recent one ([`FeedHistory`]); an engine reader that gets version
//! `v` from L1 or L2 looks up, with two or three atomic loads:
//!
//! - `versions_behind`: the feed's latest sequence number of the symbol minus `v`'s;
//! - `behind_us`: for how long `v` has been out of date: now minus when the feed wrote `v + 1`
//!   (0 when `v` is the latest);
//! - `age_us`: now minus when the feed wrote `v`. Older than the kind's TTL is a defect
//!   (DESIGN §4 rule 1): counted in `reads_past_ttl`.
//!
//! A price, `book:bid` and `book:ask` write of one update carry the same sequence number, so
//! one history per symbol serves the three kinds. "When the feed wrote" is the moment its
//! `set` calls returned (the value was in the feed's L1 and queued for Redis by then), and
//! "now" is when the engine issued the read (the value it got was alive at some moment of the
//! call, so a slow round trip never makes it look older): both err on the young side, so
//! `reads_past_ttl` counts only reads that certainly were past their TTL.
//!
//! **Across processes** (`--role engine`) an engine knows only what a value carries: the feed
//! stamps each price's `exchange_ts_ns` with its wall-clock time just before `set`, so an
//! engine measures the age of the prices it reads (`mode: value_age`), against its own wall
//! clock (the same host's, or NTP-close); it cannot know the feed's latest version, and books
//! carry no stamp.
//!
//! Reads of the seeded snapshot (the source's pre-run value, which the feed never wrote) are
//! counted apart (`snapshot`), as are reads the source or the fail-safe path served.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use mdcache::Tier;
use serde::Serialize;

use super::zipf::Zipf;

/// How much of a symbol's expected update rate its history covers: versions written within
/// about this long are looked up exactly. Ten times the longest market-data TTL (100 ms), so
/// a read within its TTL is (barring bursts) always exact.
const HISTORY_COVER_S: f64 = 1.0;
/// Fewest and most slots per symbol (powers of two).
const MIN_SLOTS: usize = 8;
const MAX_SLOTS: usize = 8_192;
/// Most slots over all symbols (32 MiB of atomics): past it, the cover shrinks.
const SLOT_BUDGET: usize = 1 << 22;
/// A slot packs the write time (µs since the run's epoch, 40 bits: 12 days) above the
/// sequence number's low 24 bits, so a lookup can tell its version from a later or an earlier
/// lap of the ring in one load.
const TAG_BITS: u32 = 24;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// Per symbol: the feed's latest sequence number and when it wrote each of its recent ones.
/// Bounded: a ring per symbol, sized by the symbol's share of the feed.
#[derive(Debug)]
pub(crate) struct FeedHistory {
    /// Versions up to this are the seeded snapshot's; the feed's are `base + sequence`.
    base: u64,
    /// Per symbol: the highest sequence number written so far (0: none).
    latest: Vec<AtomicU64>,
    /// Per symbol: its ring's offset in `slots` and its index mask.
    rings: Vec<(usize, u64)>,
    slots: Vec<AtomicU64>,
}

/// When the feed wrote a sequence number, as far as the history can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WrittenAt {
    /// At this time (µs).
    Exact(u64),
    /// Out of the ring: no later than this time (a later version's), so a duration since it
    /// is a lower bound.
    NoLaterThan(u64),
    /// Not recorded yet: being written right now.
    NotYet,
}

impl FeedHistory {
    /// A history for `symbols` symbols drawn by `zipf` at `updates_per_s` in total, for
    /// versions above `base`.
    pub(crate) fn new(base: u64, zipf: &Zipf, symbols: usize, updates_per_s: u32) -> Self {
        let mut cover = HISTORY_COVER_S;
        let sizes = loop {
            let sizes: Vec<usize> = (0..symbols)
                .map(|s| {
                    let expected = f64::from(updates_per_s) * zipf.prob(s) * cover;
                    (expected.ceil() as usize)
                        .clamp(MIN_SLOTS, MAX_SLOTS)
                        .next_power_of_two()
                })
                .collect();
            if sizes.iter().sum::<usize>() <= SLOT_BUDGET || cover < 1e-3 {
                break sizes;
            }
            cover /= 2.0;
        };
        let mut rings = Vec::with_capacity(symbols);
        let mut offset = 0;
        for n in &sizes {
            rings.push((offset, *n as u64 - 1));
            offset += n;
        }
        FeedHistory {
            base,
            latest: (0..symbols).map(|_| AtomicU64::new(0)).collect(),
            rings,
            slots: (0..offset).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The feed wrote `symbol`'s sequence number `seq` (≥ 1) at `at_us`.
    pub(crate) fn record(&self, symbol: usize, seq: u64, at_us: u64) {
        let (offset, mask) = self.rings[symbol];
        let word = (at_us << TAG_BITS) | (seq & TAG_MASK);
        self.slots[offset + (seq & mask) as usize].store(word, Ordering::Relaxed);
        // Release: a reader that sees this sequence number as the latest sees its slot too.
        self.latest[symbol].fetch_max(seq, Ordering::Release);
    }

    /// `symbol`'s latest sequence number (0: none yet).
    #[inline]
    pub(crate) fn latest(&self, symbol: usize) -> u64 {
        self.latest[symbol].load(Ordering::Acquire)
    }

    /// The feed's sequence number of `version`, or `None` for the seeded snapshot's.
    #[inline]
    pub(crate) fn seq_of(&self, version: u64) -> Option<u64> {
        version.checked_sub(self.base).filter(|&s| s > 0)
    }

    /// When `symbol`'s sequence number `seq` was written.
    #[inline]
    pub(crate) fn written_at(&self, symbol: usize, seq: u64) -> WrittenAt {
        let (offset, mask) = self.rings[symbol];
        let word = self.slots[offset + (seq & mask) as usize].load(Ordering::Relaxed);
        if word == 0 {
            return WrittenAt::NotYet;
        }
        let at = word >> TAG_BITS;
        // How far the slot's sequence number is past `seq` (mod 2^24): 0 is `seq` itself,
        // a small positive step a later lap, anything else an earlier lap (not yet overwritten
        // by `seq`).
        let ahead = (word & TAG_MASK).wrapping_sub(seq) & TAG_MASK;
        if ahead == 0 {
            WrittenAt::Exact(at)
        } else if ahead < 1 << (TAG_BITS - 1) {
            WrittenAt::NoLaterThan(at)
        } else {
            WrittenAt::NotYet
        }
    }
}

/// How the readers of this run measure freshness.
#[derive(Debug)]
pub(crate) enum Mode {
    /// Not at all (one instance, or `--role feed`).
    Off,
    /// Against the feed's history in this process (`--engines N`).
    InProcess(FeedHistory),
    /// From the feed's stamp in each price (`--role engine`).
    ValueAge,
}

impl Mode {
    /// The report's name of the mode (`None` when off).
    pub(crate) fn name(&self) -> Option<&'static str> {
        match self {
            Mode::Off => None,
            Mode::InProcess(_) => Some("in_process"),
            Mode::ValueAge => Some("value_age"),
        }
    }
}

/// A histogram of counts or microseconds (1 to ~12 days, 3 significant digits).
fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: creation cannot fail.
    Histogram::new_with_bounds(1, 1 << 40, 3).expect("1..2^40 with 3 significant digits")
}

/// One reader's freshness figures (merged over the engines' readers at the end).
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    /// Market-data reads looked at that returned a value.
    pub(crate) reads: u64,
    /// Of those, served by L1 or L2 with a version the feed wrote: the histograms' reads.
    pub(crate) measured: u64,
    /// Of `measured`, at the feed's latest version.
    pub(crate) current: u64,
    /// Served by L1 or L2 with the seeded snapshot's version (filled from the source).
    pub(crate) snapshot: u64,
    /// Loaded from the source (the seeded snapshot).
    pub(crate) source: u64,
    /// Served stale by the fail-safe path (marked so).
    pub(crate) stale: u64,
    /// Measured reads whose version was out of the feed's history: their µs figures are
    /// lower bounds.
    pub(crate) lower_bounds: u64,
    /// Measured reads whose value was older than its kind's TTL (a defect).
    pub(crate) past_ttl: u64,
    /// The most any of those was past its TTL, µs.
    pub(crate) past_ttl_max_us: u64,
    pub(crate) versions_behind: Histogram<u64>,
    pub(crate) behind_us: Histogram<u64>,
    pub(crate) age_us: Histogram<u64>,
    /// `behind_us` of the reads L1 served: the coherence lag (see [`COHERENCE_BOUND_US`]).
    pub(crate) l1_behind_us: Histogram<u64>,
    /// Measured reads (L1 or L2) whose version had been out of date for longer than
    /// [`COHERENCE_BOUND_US`].
    pub(crate) violations: u64,
    /// Of `violations`, those L1 served (the rest Redis served).
    pub(crate) violations_l1: u64,
}

/// The coherence bound: an engine read may return a version the feed has replaced for at
/// most this long (the feed's flush interval, the backplane's hop and the receiver's apply
/// all fit in it many times over on loopback); longer is a violation.
pub(crate) const COHERENCE_BOUND_US: u64 = 10_000;

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            reads: 0,
            measured: 0,
            current: 0,
            snapshot: 0,
            source: 0,
            stale: 0,
            lower_bounds: 0,
            past_ttl: 0,
            past_ttl_max_us: 0,
            versions_behind: histogram(),
            behind_us: histogram(),
            age_us: histogram(),
            l1_behind_us: histogram(),
            violations: 0,
            violations_l1: 0,
        }
    }
}

impl Recorder {
    /// Counts the read by tier; true when L1 or L2 served it (then it may be measured).
    #[inline]
    fn count_tier(&mut self, tier: Tier) -> bool {
        self.reads += 1;
        match tier {
            Tier::L1 | Tier::L2 => true,
            Tier::Source => {
                self.source += 1;
                false
            }
            _ => {
                self.stale += 1;
                false
            }
        }
    }

    #[inline]
    fn age(&mut self, age_us: u64, ttl_us: u64) {
        self.age_us.saturating_record(age_us);
        if age_us > ttl_us {
            self.past_ttl += 1;
            self.past_ttl_max_us = self.past_ttl_max_us.max(age_us - ttl_us);
        }
    }

    /// An engine read of `symbol` at `version` from `tier`, issued at `now_us` on the
    /// history's clock, of a kind whose TTL is `ttl_us`.
    #[inline]
    pub(crate) fn in_process(
        &mut self,
        history: &FeedHistory,
        symbol: usize,
        version: u64,
        tier: Tier,
        ttl_us: u64,
        now_us: u64,
    ) {
        if !self.count_tier(tier) {
            return;
        }
        let Some(seq) = history.seq_of(version) else {
            self.snapshot += 1;
            return;
        };
        self.measured += 1;
        let mut bounded = false;
        let mut since = |at: WrittenAt| match at {
            WrittenAt::Exact(t) => now_us.saturating_sub(t),
            WrittenAt::NoLaterThan(t) => {
                bounded = true;
                now_us.saturating_sub(t)
            }
            WrittenAt::NotYet => 0,
        };
        let behind = history.latest(symbol).saturating_sub(seq);
        let behind_us = if behind == 0 {
            0
        } else {
            since(history.written_at(symbol, seq + 1))
        };
        let age_us = since(history.written_at(symbol, seq));
        self.versions_behind.saturating_record(behind);
        self.behind_us.saturating_record(behind_us);
        if tier == Tier::L1 {
            self.l1_behind_us.saturating_record(behind_us);
        }
        let violation = u64::from(behind_us > COHERENCE_BOUND_US);
        self.violations += violation;
        if tier == Tier::L1 {
            self.violations_l1 += violation;
        }
        self.current += u64::from(behind == 0);
        self.lower_bounds += u64::from(bounded);
        self.age(age_us, ttl_us);
    }

    /// An engine read of a price stamped `written_ns` (wall clock; 0 for the seeded snapshot)
    /// from `tier`, issued at wall-clock `now_ns`, TTL `ttl_us`.
    #[inline]
    pub(crate) fn value_age(&mut self, written_ns: u64, tier: Tier, ttl_us: u64, now_ns: u64) {
        if !self.count_tier(tier) {
            return;
        }
        if written_ns == 0 {
            self.snapshot += 1;
            return;
        }
        self.measured += 1;
        self.age(now_ns.saturating_sub(written_ns) / 1_000, ttl_us);
    }

    /// Adds `other`'s figures to these.
    pub(crate) fn merge(&mut self, other: &Recorder) {
        self.reads += other.reads;
        self.measured += other.measured;
        self.current += other.current;
        self.snapshot += other.snapshot;
        self.source += other.source;
        self.stale += other.stale;
        self.lower_bounds += other.lower_bounds;
        self.past_ttl += other.past_ttl;
        self.past_ttl_max_us = self.past_ttl_max_us.max(other.past_ttl_max_us);
        // Same bounds on both sides: adding cannot fail.
        let _ = self.versions_behind.add(&other.versions_behind);
        let _ = self.behind_us.add(&other.behind_us);
        let _ = self.age_us.add(&other.age_us);
        let _ = self.l1_behind_us.add(&other.l1_behind_us);
        self.violations += other.violations;
        self.violations_l1 += other.violations_l1;
    }
}

/// A distribution's median, 99th percentile, maximum and mean.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Quantiles {
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
    pub(crate) mean: f64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Quantiles {
                p50: 0,
                p99: 0,
                max: 0,
                mean: 0.0,
            };
        }
        Quantiles {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// The report's `coherence` object (`--engines`): how long after the feed wrote a version the
/// engines' L1 still served the one before it, over the engines' market-data reads L1
/// served (0 for a read of the latest version), and the reads past the bound.
#[derive(Debug, Serialize)]
pub(crate) struct Coherence {
    /// Reads L1 served that the figures cover.
    pub(crate) l1_reads: u64,
    /// Coherence lag, µs: median.
    pub(crate) lag_p50_us: u64,
    /// 99th percentile.
    pub(crate) lag_p99_us: u64,
    /// 99.9th percentile.
    pub(crate) lag_p999_us: u64,
    /// Maximum.
    pub(crate) lag_max_us: u64,
    /// Measured reads (L1 or L2) out of date for longer than `bound_us`.
    pub(crate) violations: u64,
    /// Of `violations`, those L1 served (the rest Redis served: its writer was behind).
    pub(crate) violations_l1: u64,
    /// The bound, µs.
    pub(crate) bound_us: u64,
}

impl Coherence {
    /// From the engines' merged recorder (`in_process` mode only).
    pub(crate) fn new(rec: &Recorder) -> Self {
        let h = &rec.l1_behind_us;
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        Coherence {
            l1_reads: h.len(),
            lag_p50_us: q(0.5),
            lag_p99_us: q(0.99),
            lag_p999_us: q(0.999),
            lag_max_us: if h.is_empty() { 0 } else { h.max() },
            violations: rec.violations,
            violations_l1: rec.violations_l1,
            bound_us: COHERENCE_BOUND_US,
        }
    }

    /// The summary's line.
    pub(crate) fn summary(&self) -> String {
        use crate::output::{fmt_nanos, thousands};
        let us = |v: u64| fmt_nanos(v.saturating_mul(1_000));
        format!(
            "coherence: engines' L1 reads behind the feed by p50 {} / p99 {} / p99.9 {} / max {} ({} reads); {} reads out of date past {} ({} from L1)",
            us(self.lag_p50_us),
            us(self.lag_p99_us),
            us(self.lag_p999_us),
            us(self.lag_max_us),
            thousands(self.l1_reads),
            thousands(self.violations),
            us(self.bound_us),
            thousands(self.violations_l1),
        )
    }
}

/// The report's `freshness` object: the engines' market-data reads (see the module docs and
/// docs/simulate.md).
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// `in_process` (`--engines`: against the feed's history) or `value_age` (`--role
    /// engine`: prices only, from the feed's stamp).
    pub(crate) mode: &'static str,
    /// Market-data reads looked at that returned a value: price and book (`in_process`),
    /// price (`value_age`).
    pub(crate) reads: u64,
    /// Of those, served by L1 or L2 with a version the feed wrote: what the figures below
    /// describe.
    pub(crate) measured: u64,
    /// Of `measured`, at the feed's latest version (`in_process` only).
    pub(crate) current: Option<u64>,
    /// Of `measured`, behind it (`in_process` only).
    pub(crate) behind: Option<u64>,
    /// Versions behind the feed's latest write of the key (`in_process` only).
    pub(crate) versions_behind: Option<Quantiles>,
    /// How long the version read had been out of date: now minus the feed's write of the
    /// next version (0 when current), µs (`in_process` only).
    pub(crate) behind_us: Option<Quantiles>,
    /// Now minus the feed's write of the version read, µs.
    pub(crate) age_us: Quantiles,
    /// Measured reads older than their kind's TTL. Must be 0.
    pub(crate) reads_past_ttl: u64,
    /// The most one of those was past its TTL, µs.
    pub(crate) past_ttl_max_us: u64,
    /// Measured reads whose version was out of the feed's history: their µs figures are
    /// lower bounds (`in_process` only).
    pub(crate) lower_bounds: Option<u64>,
    /// Reads served by L1 or L2 holding the seeded snapshot (a source fill), not measured.
    pub(crate) snapshot: u64,
    /// Reads loaded from the source, not measured.
    pub(crate) source: u64,
    /// Reads served stale by the fail-safe path, not measured.
    pub(crate) stale: u64,
    /// The engines' reads (every kind) served by L2, of all their reads that returned a value.
    pub(crate) l2_hit_rate: f64,
}

impl Report {
    /// The report of `rec` in `mode` (`in_process` or `value_age`), with the engines' L2
    /// hit rate.
    pub(crate) fn new(mode: &'static str, rec: &Recorder, l2_hit_rate: f64) -> Self {
        let in_process = mode == "in_process";
        let only = |v: u64| in_process.then_some(v);
        let quantiles = |h: &Histogram<u64>| in_process.then(|| Quantiles::of(h));
        Report {
            mode,
            reads: rec.reads,
            measured: rec.measured,
            current: only(rec.current),
            behind: only(rec.measured - rec.current),
            versions_behind: quantiles(&rec.versions_behind),
            behind_us: quantiles(&rec.behind_us),
            age_us: Quantiles::of(&rec.age_us),
            reads_past_ttl: rec.past_ttl,
            past_ttl_max_us: rec.past_ttl_max_us,
            lower_bounds: only(rec.lower_bounds),
            snapshot: rec.snapshot,
            source: rec.source,
            stale: rec.stale,
            l2_hit_rate,
        }
    }

    /// The summary's lines.
    pub(crate) fn summary(&self) -> Vec<String> {
        use crate::output::{fmt_nanos, thousands};
        let us = |v: u64| fmt_nanos(v.saturating_mul(1_000));
        let mut lines = vec![format!(
            "freshness ({}): {} market-data reads from L1/L2 measured ({} of the seeded snapshot, {} from the source, {} stale not measured); engines' L2 hit rate {:.2} %",
            self.mode,
            thousands(self.measured),
            thousands(self.snapshot),
            thousands(self.source),
            thousands(self.stale),
            self.l2_hit_rate * 100.0,
        )];
        if let (Some(current), Some(v), Some(b)) =
            (self.current, &self.versions_behind, &self.behind_us)
        {
            lines.push(format!(
                "  current {:.2} %; behind p50 {} / p99 {} / max {} versions, out of date p50 {} / p99 {} / max {}",
                crate::output::ratio(current, self.measured) * 100.0,
                v.p50,
                v.p99,
                v.max,
                us(b.p50),
                us(b.p99),
                us(b.max),
            ));
        }
        lines.push(format!(
            "  age p50 {} / p99 {} / max {}; older than their TTL: {}{}",
            us(self.age_us.p50),
            us(self.age_us.p99),
            us(self.age_us.max),
            self.reads_past_ttl,
            if self.reads_past_ttl > 0 {
                format!(" (up to {} past it)", us(self.past_ttl_max_us))
            } else {
                String::new()
            },
        ));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(symbols: usize, rate: u32) -> FeedHistory {
        FeedHistory::new(100, &Zipf::new(symbols, 1.0), symbols, rate)
    }

    #[test]
    fn rings_follow_popularity_within_bounds() {
        let h = history(100, 20_000);
        let size = |s: usize| h.rings[s].1 + 1;
        assert!(size(0) > size(99), "{} {}", size(0), size(99));
        for s in 0..100 {
            assert!(size(s).is_power_of_two());
            assert!((MIN_SLOTS as u64..=MAX_SLOTS as u64).contains(&size(s)));
        }
        // A feed far too fast for the budget shrinks the cover rather than the bound.
        let big = history(100_000, 10_000_000);
        assert!(big.slots.len() <= SLOT_BUDGET + MIN_SLOTS * 100_000);
    }

    #[test]
    fn lookups_are_exact_bounded_or_not_yet() {
        let h = history(1, 0); // 8 slots
        assert_eq!(h.seq_of(100), None, "the seeded snapshot");
        assert_eq!(h.seq_of(103), Some(3));
        assert_eq!(h.written_at(0, 1), WrittenAt::NotYet);
        for seq in 1..=10 {
            h.record(0, seq, seq * 1_000);
        }
        assert_eq!(h.latest(0), 10);
        assert_eq!(h.written_at(0, 9), WrittenAt::Exact(9_000));
        // 1 and 2 were overwritten by 9 and 10: no later than those.
        assert_eq!(h.written_at(0, 2), WrittenAt::NoLaterThan(10_000));
        // 11 is not written; its slot holds 3.
        assert_eq!(h.written_at(0, 11), WrittenAt::NotYet);
    }

    #[test]
    fn an_engine_read_is_measured_against_the_feed() {
        let h = history(1, 0);
        for seq in 1..=5 {
            h.record(0, seq, seq * 10_000);
        }
        let mut r = Recorder::default();
        // Version 3 (base 100) read at 60 ms: 2 behind, out of date since 4 (40 ms), 30 ms old.
        r.in_process(&h, 0, 103, Tier::L2, 50_000, 60_000);
        assert_eq!((r.measured, r.current, r.past_ttl), (1, 0, 0));
        assert_eq!(r.versions_behind.max(), 2);
        assert_eq!(r.behind_us.max(), bucket(20_000));
        assert_eq!(r.age_us.max(), bucket(30_000));
        // The latest, older than a 20 ms TTL: current, and past its TTL.
        r.in_process(&h, 0, 105, Tier::L1, 20_000, 100_000);
        assert_eq!((r.measured, r.current, r.past_ttl), (2, 1, 1));
        assert!(r.past_ttl_max_us >= 30_000);
        // Not measured: the snapshot, the source, stale.
        r.in_process(&h, 0, 99, Tier::L1, 20_000, 100_000);
        r.in_process(&h, 0, 104, Tier::Source, 20_000, 100_000);
        r.in_process(&h, 0, 104, Tier::Stale, 20_000, 100_000);
        assert_eq!(
            (r.reads, r.measured, r.snapshot, r.source, r.stale),
            (5, 2, 1, 1, 1)
        );

        let mut v = Recorder::default();
        v.value_age(1_000_000, Tier::L1, 100_000, 51_000_000);
        v.value_age(0, Tier::L2, 100_000, 51_000_000);
        v.value_age(1_000_000, Tier::L1, 100_000, 201_000_000);
        assert_eq!((v.reads, v.measured, v.snapshot, v.past_ttl), (3, 2, 1, 1));
        r.merge(&v);
        assert_eq!((r.reads, r.measured, r.past_ttl), (8, 4, 2));

        let report = Report::new("in_process", &r, 0.25);
        assert_eq!((report.current, report.behind), (Some(1), Some(3)));
        assert_eq!(report.reads_past_ttl, 2);
        assert!(report.summary().len() == 3);
        let value_age = Report::new("value_age", &v, 0.0);
        assert!(value_age.versions_behind.is_none() && value_age.current.is_none());
        assert_eq!(value_age.summary().len(), 2);
    }

    /// The value a histogram reports for `v` (its bucket's highest equivalent value).
    fn bucket(v: u64) -> u64 {
        histogram().highest_equivalent(v)
    }
}
