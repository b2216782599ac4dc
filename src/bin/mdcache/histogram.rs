//! A fixed-size log-linear latency histogram: every sample counted, bounded memory, at most 1/32 (~3 %) relative error.
//!
//! Values below 64 get a bucket each; above that every power of two is split into 32 equal
//! buckets, so a bucket is never wider than 1/32 of its lower bound. 1,920 `u64` counters
//! (15 KiB) cover the whole `u64` range of nanoseconds, however many samples are recorded:
//! unlike a sample vector there is nothing to cap and nothing to drop.

/// Sub-buckets per power of two, as a bit count (2^5 = 32).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this are counted exactly, one bucket each.
const LINEAR: u64 = 2 * SUB;
const BUCKETS: usize = LINEAR as usize + (63 - SUB_BITS as usize) * SUB as usize;

/// Counts of values (nanoseconds, here) in log-linear buckets, plus the exact maximum.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    /// Kept exactly: the worst case is the number a reader of the summary trusts most.
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// Counts one value.
    pub(crate) fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    /// Adds every count of `other` to this histogram.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (exact), 0 when empty.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.0..=1.0): the upper bound of the bucket holding the
    /// `ceil(q·n)`-th smallest value, never above the exact maximum. Errs high, never low.
    /// `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper_bound(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// The bucket holding `v`.
fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    // v >= 64, so its highest set bit `e` is at least 6 and the shift below is at least 1.
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
    LINEAR as usize + (e - SUB_BITS - 1) as usize * SUB as usize + sub as usize
}

/// The largest value that falls in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let j = i - LINEAR;
    let shift = j / SUB + 1;
    let low = (SUB + j % SUB) << shift;
    low.saturating_add((1 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_hold_their_values() {
        let mut prev = 0;
        for i in 0..BUCKETS {
            let hi = upper_bound(i);
            assert!(i == 0 || hi > prev, "bucket {i}");
            assert_eq!(index(hi), i, "upper bound of bucket {i}");
            if i > 0 {
                assert_eq!(index(prev + 1), i, "lower bound of bucket {i}");
            }
            prev = hi;
        }
        assert_eq!(prev, u64::MAX);
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn relative_error_is_at_most_one_in_32() {
        for v in [
            64u64,
            100,
            1_000,
            12_345,
            1 << 20,
            987_654_321,
            u64::MAX / 3,
        ] {
            let hi = upper_bound(index(v));
            assert!(hi >= v);
            assert!((hi - v) as f64 <= v as f64 / 32.0, "{v} -> {hi}");
        }
    }

    #[test]
    fn quantiles_of_known_data() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        // Below 64 values are exact.
        assert_eq!(h.quantile(0.5), Some(50));
        // 99 lands in [98, 99]: the upper bound.
        assert_eq!(h.quantile(0.99), Some(99));
        assert_eq!(h.quantile(1.0), Some(100));
        assert_eq!(h.max(), 100);

        let mut other = Histogram::default();
        other.record(1_000_000);
        h.merge(&other);
        assert_eq!(h.count(), 101);
        assert_eq!(h.quantile(1.0), Some(1_000_000));
        assert_eq!(h.quantile(0.5), Some(51));
    }
}
