//! Zipf-distributed symbol popularity: a fast per-task random generator and an O(1) alias-table sampler.
//!
//! Rank 0 (symbol `SYM0000`) is the most popular; rank `k` is drawn with probability
//! proportional to `1 / (k + 1)^s`. `s = 0` is uniform. The feed and the readers draw from
//! the same distribution, so the symbols that update most are also the ones read most, as in a
//! real market.

/// wyrand: a 64-bit generator costing about a nanosecond. Each task owns one (no sharing, no
/// locks); statistical quality is ample for choosing symbols.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for stream `stream`: different streams give unrelated sequences.
    pub(crate) fn new(stream: u64) -> Self {
        Rng(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    /// The next 64 random bits.
    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xA076_1D64_78BD_642F);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xE703_7ED1_A0B4_28DB);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A uniform integer in `0..n` (`n > 0`), by multiply-shift (no division, negligible bias).
    #[inline]
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// True with probability 1/2.
    #[inline]
    pub(crate) fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }
}

/// Walker's alias table for the Zipf distribution over `n` ranks: two random numbers and two
/// table reads per sample, whatever `n` (a binary search over the CDF would be ~9 unpredictable
/// branches, as much as an L1 cache hit).
#[derive(Debug)]
pub(crate) struct Zipf {
    /// Per column: keep the column when the second draw is below this threshold (`p · 2^64`).
    keep: Vec<u64>,
    /// Per column: the rank to return otherwise.
    alias: Vec<u32>,
    /// Normalized probability of each rank, for reporting and tests.
    probs: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` ranks (`n ≥ 1`) with exponent `s` (finite, `≥ 0`).
    pub(crate) fn new(n: usize, s: f64) -> Self {
        let n = n.max(1);
        let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-s)).collect();
        let total: f64 = weights.iter().sum();
        let probs: Vec<f64> = weights.iter().map(|w| w / total).collect();

        // Vose's construction: scale to mean 1, pair each short column with a long one.
        let mut scaled: Vec<f64> = probs.iter().map(|p| p * n as f64).collect();
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // What is left is 1 up to rounding: always keep those columns.
        for i in small.into_iter().chain(large) {
            scaled[i] = 1.0;
        }
        let keep = scaled
            .iter()
            .map(|&p| {
                if p >= 1.0 {
                    u64::MAX
                } else {
                    // p in [0, 1): the float-to-int cast saturates, so this cannot overflow.
                    (p * 18_446_744_073_709_551_616.0) as u64
                }
            })
            .collect();
        Zipf { keep, alias, probs }
    }

    /// One rank, most popular first.
    #[inline]
    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        let column = rng.below(self.keep.len());
        if rng.next_u64() < self.keep[column] {
            column
        } else {
            self.alias[column] as usize
        }
    }

    /// The probability of drawing `rank` (0 outside the distribution).
    pub(crate) fn prob(&self, rank: usize) -> f64 {
        self.probs.get(rank).copied().unwrap_or(0.0)
    }

    /// The probability of drawing one of the `top` most popular ranks.
    pub(crate) fn mass_of_top(&self, top: usize) -> f64 {
        self.probs.iter().take(top).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(z: &Zipf, n: usize, draws: usize) -> Vec<f64> {
        let mut rng = Rng::new(7);
        let mut counts = vec![0u64; n];
        for _ in 0..draws {
            counts[z.sample(&mut rng)] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn samples_follow_the_distribution() {
        let n = 50;
        let z = Zipf::new(n, 1.1);
        let freq = frequencies(&z, n, 2_000_000);
        for (rank, f) in freq.iter().enumerate() {
            let p = z.probs[rank];
            // 2 M draws: the standard error of p = 0.25 is ~3e-4; allow 5 sigma plus slack.
            let tolerance = 5.0 * (p * (1.0 - p) / 2e6).sqrt() + 1e-4;
            assert!((f - p).abs() < tolerance, "rank {rank}: {f} vs {p}");
        }
        // Most popular first, and strictly more popular than the tail.
        assert!(freq[0] > freq[1] && freq[1] > freq[n - 1]);
    }

    #[test]
    fn exponent_zero_is_uniform_and_one_rank_is_fine() {
        let z = Zipf::new(4, 0.0);
        for f in frequencies(&z, 4, 400_000) {
            assert!((f - 0.25).abs() < 0.01, "{f}");
        }
        let one = Zipf::new(1, 1.1);
        let mut rng = Rng::new(1);
        assert!((0..100).all(|_| one.sample(&mut rng) == 0));
        assert!((one.mass_of_top(1) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn steep_exponents_concentrate_on_the_top() {
        let z = Zipf::new(500, 3.0);
        assert!(z.mass_of_top(1) > 0.8);
        assert!((z.mass_of_top(500) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new(3);
        assert!((0..10_000).all(|_| rng.below(7) < 7));
    }
}
