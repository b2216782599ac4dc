//! Counters kept in private atomics behind the public `StatsSnapshot`, and recorded through `metrics`.
//!
//! Each kind gets one [`KindStats`], resolved when a key is built, so the hot path increments
//! a counter it already holds (one relaxed atomic add plus the `metrics` handle, a no-op when no
//! recorder is installed) and never looks anything up. The L1 hit counter, the only one on the
//! L1 hit path, is striped per thread instead ([`HitCount`]): the exported
//! `mdcache_hits_total{tier="l1"}` is brought up to date every 64 hits of a thread and on every
//! `Cache::stats()`. Install a `metrics` recorder *before*
//! building the cache: handles are registered when a kind is first used.
//!
//! Metric names (label `kind` on all of them):
//!
//! | metric | meaning |
//! |---|---|
//! | `mdcache_hits_total{tier="l1"\|"l2"}` | reads served by that tier |
//! | `mdcache_misses_total{tier="l1"\|"l2"}` | reads that tier could not serve |
//! | `mdcache_writes_total{outcome="applied"\|"superseded"\|"local_only"}` | writes; those refused because a higher version was cached; those whose Redis write failed and that went to this process's L1 only |
//! | `mdcache_deletes_total` | deletes |
//! | `mdcache_errors_total` | operations that returned an error (timeouts and decode errors included), and the failed Redis writes behind local-only writes |
//! | `mdcache_timeouts_total` | L2 operations that missed their deadline |
//! | `mdcache_decode_errors_total` | stored values that did not decode (served as misses) |
//! | `mdcache_source_loads_total` | source loads (cache-aside misses and refreshes) |
//! | `mdcache_source_errors_total` | source loads or writes that failed or timed out |
//! | `mdcache_source_writes_total` | write-through writes sent to the source |
//! | `mdcache_refreshes_total` | background refresh-ahead reloads started |
//! | `mdcache_negative_hits_total` | reads answered "not found" from the negative cache |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use metrics::Counter;

/// One counter: our own atomic for the snapshot, and the `metrics` handle for exporters.
#[derive(Debug)]
pub(crate) struct Count {
    value: AtomicU64,
    handle: Counter,
}

impl Count {
    pub(crate) fn new(handle: Counter) -> Self {
        Count {
            value: AtomicU64::new(0),
            handle,
        }
    }

    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.handle.increment(n);
    }

    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Stripes of a [`HitCount`]: threads beyond this many share stripes (still correct, just
/// contended again).
const STRIPES: usize = 16;

/// Hits a stripe counts between two publications to the `metrics` handle (a power of two).
const PUBLISH_EVERY: u64 = 64;

/// One stripe, alone on its cache line pair so that two threads' stripes never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// The L1 hit counter: the one counter on the L1 hit path, where every reader thread bumps it.
///
/// A plain [`Count`] there is one cache line (two with the exporter's atomic) that every
/// reading thread writes, so two threads hitting L1 slow each other down. Here each thread
/// adds to its own stripe (threads are spread over [`STRIPES`] stripes in the order they first
/// count), the snapshot sums the stripes, and the `metrics` handle is brought up to date every
/// [`PUBLISH_EVERY`] hits of a stripe and on every [`Stats::snapshot`] (so on every
/// `Cache::stats()` and every scrape of the admin API's `/metrics`). Between those an exporter
/// can lag the true count by at most `PUBLISH_EVERY - 1` hits per stripe.
#[derive(Debug)]
pub(crate) struct HitCount {
    stripes: Box<[Stripe; STRIPES]>,
    /// How much of the stripes' sum the handle has been given.
    published: AtomicU64,
    handle: Counter,
}

impl HitCount {
    pub(crate) fn new(handle: Counter) -> Self {
        HitCount {
            stripes: Box::default(),
            published: AtomicU64::new(0),
            handle,
        }
    }

    #[inline]
    pub(crate) fn inc(&self) {
        let stripe = &self.stripes[stripe_of_this_thread()];
        let n = stripe.0.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(PUBLISH_EVERY) {
            self.publish();
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Gives the handle what it has not been given yet; concurrent publishers never give the
    /// same hits twice (`fetch_max` hands each increment to exactly one of them).
    fn publish(&self) -> u64 {
        let total = self.get();
        let before = self.published.fetch_max(total, Ordering::Relaxed);
        if total > before {
            self.handle.increment(total - before);
        }
        total
    }
}

/// This thread's stripe of every [`HitCount`], given out round-robin on the thread's first hit.
#[inline]
fn stripe_of_this_thread() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static STRIPE: usize = (NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES as u64) as usize;
    }
    STRIPE.with(|s| *s)
}

/// The counters of one kind.
#[derive(Debug)]
pub(crate) struct KindStats {
    /// The [`Stats`] registry these belong to, so a cache can tell its own keys' counters
    /// from those of a key built by another cache instance.
    pub(crate) owner: u64,
    pub(crate) kind: &'static str,
    pub(crate) l1_hits: HitCount,
    pub(crate) l1_misses: Count,
    pub(crate) l2_hits: Count,
    pub(crate) l2_misses: Count,
    pub(crate) writes: Count,
    pub(crate) writes_superseded: Count,
    /// Cache-only writes whose Redis write failed and that went to L1 alone
    /// ([`WriteOutcome::LocalOnly`](crate::WriteOutcome::LocalOnly)).
    pub(crate) writes_local_only: Count,
    /// Market-data writes queued for the conflating writer
    /// ([`WriteOutcome::Queued`](crate::WriteOutcome::Queued)).
    pub(crate) writes_queued: Count,
    pub(crate) deletes: Count,
    pub(crate) errors: Count,
    pub(crate) timeouts: Count,
    pub(crate) decode_errors: Count,
    pub(crate) source_loads: Count,
    pub(crate) source_errors: Count,
    pub(crate) source_writes: Count,
    pub(crate) refreshes: Count,
    pub(crate) negative_hits: Count,
    pub(crate) stale_served: Count,
}

impl KindStats {
    pub(crate) fn new(owner: u64, kind: &'static str) -> Self {
        let tier = |name: &'static str, tier: &'static str| {
            Count::new(metrics::counter!(name, "kind" => kind, "tier" => tier))
        };
        let plain = |name: &'static str| Count::new(metrics::counter!(name, "kind" => kind));
        KindStats {
            owner,
            kind,
            l1_hits: HitCount::new(metrics::counter!(
                "mdcache_hits_total", "kind" => kind, "tier" => "l1"
            )),
            l1_misses: tier("mdcache_misses_total", "l1"),
            l2_hits: tier("mdcache_hits_total", "l2"),
            l2_misses: tier("mdcache_misses_total", "l2"),
            writes: Count::new(
                metrics::counter!("mdcache_writes_total", "kind" => kind, "outcome" => "applied"),
            ),
            writes_superseded: Count::new(
                metrics::counter!("mdcache_writes_total", "kind" => kind, "outcome" => "superseded"),
            ),
            writes_local_only: Count::new(
                metrics::counter!("mdcache_writes_total", "kind" => kind, "outcome" => "local_only"),
            ),
            writes_queued: Count::new(
                metrics::counter!("mdcache_writes_total", "kind" => kind, "outcome" => "queued"),
            ),
            deletes: plain("mdcache_deletes_total"),
            errors: plain("mdcache_errors_total"),
            timeouts: plain("mdcache_timeouts_total"),
            decode_errors: plain("mdcache_decode_errors_total"),
            source_loads: plain("mdcache_source_loads_total"),
            source_errors: plain("mdcache_source_errors_total"),
            source_writes: plain("mdcache_source_writes_total"),
            refreshes: plain("mdcache_refreshes_total"),
            negative_hits: plain("mdcache_negative_hits_total"),
            stale_served: plain("mdcache_stale_served_total"),
        }
    }

    /// Counts an error, and a timeout when it is one.
    pub(crate) fn error(&self, e: &crate::Error) {
        self.errors.inc();
        if e.is_timeout() {
            self.timeouts.inc();
        }
    }

    fn snapshot(&self) -> KindSnapshot {
        KindSnapshot {
            kind: self.kind,
            l1_hits: self.l1_hits.publish(),
            l1_misses: self.l1_misses.get(),
            l2_hits: self.l2_hits.get(),
            l2_misses: self.l2_misses.get(),
            writes: self.writes.get(),
            writes_superseded: self.writes_superseded.get(),
            writes_local_only: self.writes_local_only.get(),
            writes_queued: self.writes_queued.get(),
            deletes: self.deletes.get(),
            errors: self.errors.get(),
            timeouts: self.timeouts.get(),
            decode_errors: self.decode_errors.get(),
            source_loads: self.source_loads.get(),
            source_errors: self.source_errors.get(),
            source_writes: self.source_writes.get(),
            refreshes: self.refreshes.get(),
            negative_hits: self.negative_hits.get(),
            stale_served: self.stale_served.get(),
        }
    }
}

/// The per-kind registry. Bounded: one entry per `KeySchema` type the program uses.
#[derive(Debug)]
pub(crate) struct Stats {
    /// Unique per registry (per cache instance).
    pub(crate) id: u64,
    /// The first kinds registered, each slot set once: a key built by another cache finds
    /// this cache's counters with atomic loads, no lock ([`Stats::find`]).
    fast: [OnceLock<Arc<KindStats>>; FAST_KINDS],
    // A std Mutex: taken only to register a kind (when a key is built, not per read), never
    // across an await.
    kinds: Mutex<Vec<Arc<KindStats>>>,
}

/// Kinds whose counters are found without a lock; the built-in kinds are 7.
const FAST_KINDS: usize = 16;

impl Default for Stats {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Stats {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            fast: std::array::from_fn(|_| OnceLock::new()),
            kinds: Mutex::default(),
        }
    }
}

impl Stats {
    /// The counters of `kind`, registering them on first use.
    pub(crate) fn kind(&self, kind: &'static str) -> Arc<KindStats> {
        if let Some(k) = self.find(kind) {
            return Arc::clone(k);
        }
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = kinds.iter().find(|k| k.kind == kind) {
            return Arc::clone(k);
        }
        let k = Arc::new(KindStats::new(self.id, kind));
        kinds.push(Arc::clone(&k));
        // Published under the lock, in registration order, so `find` stops at the first
        // empty slot without missing a kind.
        if let Some(slot) = self.fast.get(kinds.len() - 1) {
            let _ = slot.set(Arc::clone(&k));
        }
        k
    }

    /// The counters of `kind` if registered among the first [`FAST_KINDS`], without a lock:
    /// a few atomic loads and pointer (or short string) comparisons.
    #[inline]
    pub(crate) fn find(&self, kind: &str) -> Option<&Arc<KindStats>> {
        for slot in &self.fast {
            let k = slot.get()?;
            if std::ptr::eq(k.kind, kind) || k.kind == kind {
                return Some(k);
            }
        }
        None
    }

    pub(crate) fn snapshot(
        &self,
        l1_entries: u64,
        l1_bytes: u64,
        writer: Option<WriterSnapshot>,
        backplane: Option<BackplaneSnapshot>,
    ) -> StatsSnapshot {
        let kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let per_kind: Vec<KindSnapshot> = kinds.iter().map(|k| k.snapshot()).collect();
        let mut total = KindSnapshot {
            kind: "all",
            ..KindSnapshot::default()
        };
        for k in &per_kind {
            total.l1_hits += k.l1_hits;
            total.l1_misses += k.l1_misses;
            total.l2_hits += k.l2_hits;
            total.l2_misses += k.l2_misses;
            total.writes += k.writes;
            total.writes_superseded += k.writes_superseded;
            total.writes_local_only += k.writes_local_only;
            total.writes_queued += k.writes_queued;
            total.deletes += k.deletes;
            total.errors += k.errors;
            total.timeouts += k.timeouts;
            total.decode_errors += k.decode_errors;
            total.source_loads += k.source_loads;
            total.source_errors += k.source_errors;
            total.source_writes += k.source_writes;
            total.refreshes += k.refreshes;
            total.negative_hits += k.negative_hits;
            total.stale_served += k.stale_served;
        }
        metrics::gauge!("mdcache_l1_entries").set(l1_entries as f64);
        metrics::gauge!("mdcache_l1_bytes").set(l1_bytes as f64);
        StatsSnapshot {
            total,
            kinds: per_kind,
            l1_entries,
            l1_bytes,
            writer,
            backplane,
        }
    }
}

/// Counters of one kind (or of all kinds, in [`StatsSnapshot::total`]).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindSnapshot {
    /// The kind's name, or `all` for the total.
    pub kind: &'static str,
    /// Reads served by L1.
    pub l1_hits: u64,
    /// Reads L1 could not serve (absent, expired, or evicted).
    pub l1_misses: u64,
    /// Reads served by L2.
    pub l2_hits: u64,
    /// Reads L2 could not serve (absent or undecodable).
    pub l2_misses: u64,
    /// Writes applied.
    pub writes: u64,
    /// Writes refused because a higher version was already cached.
    pub writes_superseded: u64,
    /// Cache-only writes ([`Cache::set`](crate::Cache::set), [`Cache::set_book`](crate::Cache::set_book))
    /// whose Redis write failed and that are held by this process's L1 alone
    /// ([`WriteOutcome::LocalOnly`](crate::WriteOutcome::LocalOnly)). Not in `writes`.
    pub writes_local_only: u64,
    /// Market-data writes queued for the conflating writer
    /// ([`WriteOutcome::Queued`](crate::WriteOutcome::Queued)); not in `writes` (the writer's
    /// own figures, in [`StatsSnapshot::writer`], say what became of them).
    pub writes_queued: u64,
    /// Deletes.
    pub deletes: u64,
    /// Operations that returned an error, and the failed Redis writes behind local-only
    /// writes (which return `Ok`).
    pub errors: u64,
    /// L2 operations that missed their deadline.
    pub timeouts: u64,
    /// Stored values that did not decode (served as misses, never as values).
    pub decode_errors: u64,
    /// Source loads (cache-aside misses and refreshes).
    pub source_loads: u64,
    /// Source loads or writes that failed or timed out.
    pub source_errors: u64,
    /// Write-through writes sent to the source.
    pub source_writes: u64,
    /// Background refresh-ahead reloads started.
    pub refreshes: u64,
    /// Reads answered "not found" from the negative cache.
    pub negative_hits: u64,
    /// Values served past their TTL, marked `Stale`, because Redis and the source both failed.
    pub stale_served: u64,
}

/// A point-in-time copy of the cache's counters, from [`Cache::stats`](crate::Cache::stats).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Sums over every kind.
    pub total: KindSnapshot,
    /// One entry per kind used so far.
    pub kinds: Vec<KindSnapshot>,
    /// Entries currently held by L1 (expired ones count until evicted).
    pub l1_entries: u64,
    /// Weighted bytes currently held by L1.
    pub l1_bytes: u64,
    /// The conflating market-data writer's figures (`None` without a Redis tier).
    pub writer: Option<WriterSnapshot>,
    /// The backplane's figures (`None` without Redis, or with `CACHE_BACKPLANE=off`; an
    /// instance without L1 publishes only).
    pub backplane: Option<BackplaneSnapshot>,
}

/// The backplane's figures (DESIGN §4 rule 5), also exported as `mdcache_backplane_*`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackplaneSnapshot {
    /// The subscriber holds a live subscription now.
    pub subscribed: bool,
    /// Messages this instance published.
    pub published: u64,
    /// Items (key updates) in them.
    pub published_items: u64,
    /// Messages whose `PUBLISH` failed (their sequence numbers show as gaps to receivers).
    pub publish_failed: u64,
    /// Items dropped because the outbox was full (the next message skips a sequence number).
    pub dropped: u64,
    /// Messages received from other instances.
    pub received: u64,
    /// Items applied to L1 (a newer value stored, older copies dropped).
    pub applied: u64,
    /// Items ignored: L1 held the same or a newer version, or could not take the value.
    pub ignored_older: u64,
    /// Messages ignored because their sequence number was already seen.
    pub duplicates: u64,
    /// Messages that did not decode (another build's format, or damage); each bumps the L1
    /// epoch.
    pub malformed: u64,
    /// Gaps seen in a publisher's sequence (each bumps the L1 epoch).
    pub gaps: u64,
    /// L1 epoch bumps: gaps, unreadable messages, and the loss and recovery of the
    /// subscription.
    pub epoch_bumps: u64,
    /// Times the subscription was lost (including canaries that never came back).
    pub subscription_losses: u64,
    /// Own canaries that never came back, each treated as a lost subscription.
    pub canaries_missed: u64,
    /// The canary's lag, publish to receipt by this instance (µs): p50, p99, max.
    pub canary_lag_p50_us: u64,
    /// See `canary_lag_p50_us`.
    pub canary_lag_p99_us: u64,
    /// See `canary_lag_p50_us`.
    pub canary_lag_max_us: u64,
}

impl StatsSnapshot {
    /// The counters of one kind, if it has been used.
    pub fn kind(&self, kind: &str) -> Option<&KindSnapshot> {
        self.kinds.iter().find(|k| k.kind == kind)
    }
}

/// What the writer has done so far, in [`StatsSnapshot::writer`](crate::StatsSnapshot::writer).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterSnapshot {
    /// Writes queued (each `set`/`set_book` of a conflating kind that was not refused).
    pub enqueued: u64,
    /// Cache-aside fills queued besides (a source value loaded after a miss of a conflating
    /// kind, sent to Redis with the next flush instead of by the reader; never recorded dirty
    /// when the flush fails). `flushed`, `conflated` and the other key counts include them.
    pub fills: u64,
    /// Cache-aside fills not queued because a full batch was already pending (kept in L1
    /// only: fills never delay the writes).
    pub fills_skipped: u64,
    /// Pending writes replaced by a higher version of the same key before they were flushed
    /// (latest wins: conflated, not lost).
    pub conflated: u64,
    /// Writes dropped because a higher version of the key was already pending.
    pub dropped_older: u64,
    /// Writes not queued because `max_pending` keys were pending: kept in L1 alone and the key
    /// recorded dirty ([`WriteOutcome::LocalOnly`](crate::WriteOutcome::LocalOnly)).
    pub overflow: u64,
    /// Pending writes whose TTL ran out before the writer could send them (not sent: Redis
    /// must not keep a value past its TTL, counted from the write).
    pub expired: u64,
    /// Keys Redis took.
    pub flushed: u64,
    /// Keys Redis refused because it held a higher version.
    pub superseded: u64,
    /// Keys whose flush failed (or met an open breaker): recorded dirty, kept in L1.
    pub failed: u64,
    /// Batches sent (one pipeline each).
    pub batches: u64,
    /// Largest batch sent, in keys.
    pub batch_max: u64,
    /// Keys pending now.
    pub pending: u64,
    /// Enqueue → acknowledged by Redis, per written key flushed (fills not included; µs):
    /// p50, p99, max.
    pub lag_p50_us: u64,
    /// See `lag_p50_us`.
    pub lag_p99_us: u64,
    /// See `lag_p50_us`.
    pub lag_max_us: u64,
    /// One batch's round trip (µs): p50, p99, max.
    pub flush_p50_us: u64,
    /// See `flush_p50_us`.
    pub flush_p99_us: u64,
    /// See `flush_p50_us`.
    pub flush_max_us: u64,
}

/// A latency histogram in atomics, for figures recorded off the hot path (the writer's lag
/// and batch times): log-linear buckets (16 per power of two, so within 6.25 %) from 1 µs to
/// about 2^40 µs, fixed size, lock-free. Percentiles come out as a bucket's upper bound.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

/// Sub-buckets per power of two.
const SUB: u64 = 16;
/// Powers of two covered above the linear range.
const POWERS: u64 = 40;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..(SUB + POWERS * SUB))
                .map(|_| AtomicU64::new(0))
                .collect(),
            max: AtomicU64::new(0),
        }
    }
}

/// Percentiles of a [`LatencyHistogram`], in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LatencySummary {
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
}

impl LatencyHistogram {
    fn index(us: u64) -> usize {
        if us < SUB {
            return us as usize;
        }
        let power = 63 - u64::from(us.leading_zeros()); // >= 4
        let sub = (us >> (power - 4)) & (SUB - 1);
        let i = SUB + (power - 4) * SUB + sub;
        i.min(SUB + POWERS * SUB - 1) as usize
    }

    /// The largest value bucket `i` holds.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let power = (i - SUB) / SUB + 4;
        let sub = (i - SUB) % SUB;
        ((SUB + sub + 1) << (power - 4)) - 1
    }

    pub(crate) fn record(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::index(us)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let at = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Self::upper(i).min(max);
                }
            }
            max
        };
        LatencySummary {
            p50: at(0.50),
            p99: at(0.99),
            max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_hits_add_up_exactly_and_reach_the_exporter_once_each() {
        let exported = Arc::new(AtomicU64::new(0));
        let hits = HitCount::new(Counter::from_arc(Arc::clone(&exported)));
        // One thread alone: the handle hears of whole batches only, until a publication.
        std::thread::scope(|s| {
            s.spawn(|| (0..100).for_each(|_| hits.inc()));
        });
        assert_eq!(hits.get(), 100);
        assert_eq!(exported.load(Ordering::Relaxed), PUBLISH_EVERY);
        // Eight threads (some sharing stripes) while another publishes over and over.
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| (0..10_000).for_each(|_| hits.inc()));
            }
            s.spawn(|| {
                for _ in 0..1_000 {
                    hits.publish();
                }
            });
        });
        assert_eq!(hits.publish(), 80_100);
        assert_eq!(exported.load(Ordering::Relaxed), 80_100);
        assert_eq!(hits.publish(), 80_100);
        assert_eq!(exported.load(Ordering::Relaxed), 80_100, "published twice");
    }

    #[test]
    fn latency_buckets_cover_every_value_within_their_precision() {
        for us in [
            0u64,
            1,
            15,
            16,
            17,
            31,
            32,
            100,
            999,
            1000,
            1_000_000,
            123_456_789,
        ] {
            let i = LatencyHistogram::index(us);
            let hi = LatencyHistogram::upper(i);
            assert!(hi >= us, "{us} above its bucket's upper bound {hi}");
            assert!(
                hi - us <= us / 16,
                "{us}: bucket upper bound {hi} too loose"
            );
            if i > 0 {
                assert!(
                    LatencyHistogram::upper(i - 1) < us,
                    "{us} belongs to an earlier bucket"
                );
            }
        }
        let h = LatencyHistogram::default();
        for us in 1..=100u64 {
            h.record(std::time::Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.max, 100);
        assert!((50..=53).contains(&s.p50), "{s:?}");
        assert!((99..=100).contains(&s.p99), "{s:?}");
    }

    #[test]
    fn kinds_are_found_without_a_lock_and_registered_once() {
        let stats = Stats::default();
        let names: Vec<&'static str> = (0..20)
            .map(|i| &*Box::leak(format!("kind{i}").into_boxed_str()))
            .collect();
        for n in &names {
            let a = stats.kind(n);
            assert!(Arc::ptr_eq(&a, &stats.kind(n)), "registered once");
        }
        for (i, n) in names.iter().enumerate() {
            // Found by content too, not only by the same `&'static str`.
            let copy = String::from(*n);
            let found = stats.find(copy.as_str()).map(Arc::clone);
            assert_eq!(found.is_some(), i < FAST_KINDS, "{n}");
            if let Some(f) = found {
                assert!(Arc::ptr_eq(&f, &stats.kind(n)));
            }
        }
        assert_eq!(stats.snapshot(0, 0, None, None).kinds.len(), 20);
    }
}
