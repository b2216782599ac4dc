//! The run's results: the JSON report (`--report`) and the summary table printed at the end; every figure is defined in docs/simulate.md.

use std::time::Duration;

use hdrhistogram::Histogram;
use mdcache::{BreakerSnapshot, BreakerState, FallbackSnapshot, KindSnapshot, WriterSnapshot};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::args::Window;
use super::fault::Timeline;
use super::freshness;
use super::instance::InstanceEnd;
use super::record::{Acked, Op, OpStats, ReadFailure, Recorder};
use super::verify::Verification;
use crate::output::{fmt_nanos, ratio, thousands};

/// How the run was set up (for the report; see [`Report::workload`]).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Workload {
    /// Symbols.
    pub(crate) symbols: u32,
    /// Zipf exponent of symbol popularity.
    pub(crate) zipf: f64,
    /// Reader tasks.
    pub(crate) readers: usize,
    /// Feed tasks sharing `updates_per_s`.
    pub(crate) feed_tasks: usize,
    /// Order tasks sharing `orders_per_s`.
    pub(crate) order_tasks: usize,
    /// Target feed updates per second (each: price + both book sides).
    pub(crate) updates_per_s: u32,
    /// Target order events per second (each: order + position, write-through).
    pub(crate) orders_per_s: u32,
    /// The `--duration` asked for.
    pub(crate) duration_requested_s: f64,
    /// Levels per book read.
    pub(crate) book_depth: usize,
    /// Symbols counted as hot (the top 1 %, at least one).
    pub(crate) hot_symbols: usize,
    /// Probability that a reader's symbol is a hot one (from the Zipf distribution).
    pub(crate) hot_read_share: f64,
    /// Engine instances in this process (`--engines`; 0: one instance for everything).
    pub(crate) engines: u32,
    /// `--role`: `feed` or `engine` (absent when the whole workload runs here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
}

/// Where the run ran (for the report).
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    /// `memory`, `layered` or `redis`.
    pub(crate) backend: &'static str,
    /// True when the source of record is PostgreSQL (else the in-process `MemorySource`).
    pub(crate) postgres: bool,
    /// The Redis URL with credentials removed (or `cluster <seeds>`), if Redis was used.
    pub(crate) redis_url: Option<String>,
    /// The workload.
    pub(crate) workload: Workload,
}

/// What the tasks measured, by group.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    /// Every reader's figures, merged.
    pub(crate) readers: Recorder,
    /// Every feed task's figures, merged.
    pub(crate) feed: Recorder,
    /// Every order task's figures, merged.
    pub(crate) orders: Recorder,
    /// Every task's calls that started inside the fault window, merged.
    pub(crate) window: Recorder,
    /// Every order task's acknowledged writes (with `--verify`).
    pub(crate) acked: Acked,
    /// The engines' readers' freshness figures, merged.
    pub(crate) fresh: freshness::Recorder,
}

/// The JSON report. Field order is the output order.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// `memory` (L1 only), `layered` (L1 + Redis) or `redis` (Redis only).
    pub(crate) backend: &'static str,
    /// True when the source of record is PostgreSQL.
    pub(crate) postgres: bool,
    /// `memory` or `postgres`.
    pub(crate) source: &'static str,
    /// The Redis URL, credentials removed, or `cluster <seeds>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) redis_url: Option<String>,
    /// True when Ctrl-C ended the run before `--duration`.
    pub(crate) interrupted: bool,
    /// The workload's settings.
    pub(crate) workload: Workload,
    /// Wall time from starting the tasks until the last one returned.
    pub(crate) duration_s: f64,
    /// Read calls: the sum of the four read operations' counts.
    pub(crate) reads: u64,
    /// Write calls: the sum of the four write operations' counts.
    pub(crate) writes: u64,
    /// `reads / duration_s`.
    pub(crate) reads_per_s: f64,
    /// `writes / duration_s`.
    pub(crate) writes_per_s: f64,
    /// `(l1_hits + l2_hits) / (l1_hits + l2_hits + source_loads)`, from the cache's counters.
    pub(crate) hit_rate: f64,
    /// Share of the hot symbols' price, book and position reads served by L1 or L2.
    pub(crate) hot_hit_rate: f64,
    /// Read errors of the whole run, by kind.
    pub(crate) read_errors: ReadErrors,
    /// Reads served past their TTL without being marked stale (a defect: must be 0).
    pub(crate) reads_past_ttl: u64,
    /// Per operation.
    pub(crate) ops: Ops,
    /// The cache's own counters (`Cache::stats().total`).
    pub(crate) tiers: Tiers,
    /// The circuit breaker.
    pub(crate) breaker: Breaker,
    /// Cache-aside's fallback path (`CacheAside::fallback_stats()`).
    pub(crate) fallbacks: Fallbacks,
    /// The conflating market-data writer of the instance that writes (`feed` or `single`; an
    /// engine process's own). `null` without Redis.
    pub(crate) writer: Option<WriterReport>,
    /// The market-data feed.
    pub(crate) feed: Flow,
    /// The order flow.
    pub(crate) orders: Flow,
    /// Per instance (cache): one for a single-instance run, the feed then the engines with
    /// `--engines`, this process's with `--role`. The top-level figures are their sums.
    pub(crate) instances: Vec<InstanceReport>,
    /// The engines' market-data reads against the feed's writes (`--engines`, `--role
    /// engine`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) freshness: Option<freshness::Report>,
    /// The engines' coherence with the feed (`--engines` only; see docs/simulate.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) coherence: Option<freshness::Coherence>,
    /// The calls inside `--fault-window`, and the recovery after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fault_window: Option<WindowReport>,
    /// The `--verify` checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) verify: Option<Verification>,
    /// The tokio runtime's tasks around the run, for leak checks (a soak).
    pub(crate) runtime: RuntimeTasks,
}

/// Tasks alive on the runtime (`RuntimeMetrics::num_alive_tasks`) when only the caches' own
/// background tasks (writers, backplanes, recovery) should be running: equal when the run
/// leaked none.
#[derive(Debug, Default, Serialize)]
pub(crate) struct RuntimeTasks {
    /// After the caches were built and warmed, before the workload's tasks started.
    pub(crate) alive_tasks_before: usize,
    /// After the workload's tasks ended, the caches flushed and recovered, and the checks ran.
    pub(crate) alive_tasks_after: usize,
}

/// Read errors by kind (the `LoadError` variant).
#[derive(Debug, Default, Serialize)]
pub(crate) struct ReadErrors {
    /// The source failed.
    pub(crate) source: u64,
    /// The source missed its deadline.
    pub(crate) source_timeout: u64,
    /// No source-load slot within the bound.
    pub(crate) overloaded: u64,
    /// The cache failed where the source could not make up for it.
    pub(crate) cache: u64,
}

impl ReadErrors {
    fn of(r: &Recorder) -> Self {
        let n = r.read_failures();
        let at = |k: ReadFailure| n[k as usize];
        ReadErrors {
            source: at(ReadFailure::Source),
            source_timeout: at(ReadFailure::SourceTimeout),
            overloaded: at(ReadFailure::Overloaded),
            cache: at(ReadFailure::Cache),
        }
    }

    /// All kinds together.
    pub(crate) fn total(&self) -> u64 {
        self.source + self.source_timeout + self.overloaded + self.cache
    }

    /// `source 3, source_timeout 1` (non-zero kinds only), or `none`.
    pub(crate) fn describe(&self) -> String {
        let parts: Vec<String> = ReadFailure::ALL
            .iter()
            .zip([
                self.source,
                self.source_timeout,
                self.overloaded,
                self.cache,
            ])
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{} {n}", k.name()))
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// `--fault-window`: the calls that started inside it, and the breaker around it.
#[derive(Debug, Serialize)]
pub(crate) struct WindowReport {
    /// START, seconds after the tasks started.
    pub(crate) start_s: f64,
    /// END.
    pub(crate) end_s: f64,
    /// Reads that started inside the window.
    pub(crate) reads: u64,
    /// Of those, errors by kind.
    pub(crate) read_errors: ReadErrors,
    /// Read latency inside the window, every read operation together.
    pub(crate) read_p99_us: f64,
    /// 99.9th percentile.
    pub(crate) read_p999_us: f64,
    /// Slowest read.
    pub(crate) read_max_us: f64,
    /// Reads served stale (marked so) inside the window.
    pub(crate) stale_served: u64,
    /// Reads served past their TTL without being marked stale (must be 0).
    pub(crate) reads_past_ttl: u64,
    /// Writes that started inside the window.
    pub(crate) writes: u64,
    /// Of those, errors (write-through: the source refused or timed out; feed: the cache
    /// write failed).
    pub(crate) write_errors: u64,
    /// Write-through writes the source took but the cache did not (dirty log).
    pub(crate) writes_cache_failed: u64,
    /// Feed writes Redis did not take, held by this process's L1 only (dirty log).
    pub(crate) writes_local_only: u64,
    /// Times the breaker opened inside the window.
    pub(crate) breaker_opened: u64,
    /// The breaker was seen open or half-open inside the window.
    pub(crate) breaker_open_seen: bool,
    /// From END until the breaker was closed and the dirty log empty (`null`: not within
    /// the 30 s wait after the run).
    pub(crate) recovered_after_ms: Option<f64>,
}

/// The window's figures from what its calls recorded and what the watch saw.
pub(crate) fn window_report(w: Window, rec: &Recorder, t: Timeline) -> WindowReport {
    let mut reads = super::record::latency_histogram(3);
    for op in Op::ALL.iter().filter(|op| op.is_read()) {
        // Same bounds: adding cannot fail.
        let _ = reads.add(&rec.op(*op).latency);
    }
    let q = |q: f64| {
        if reads.is_empty() {
            0.0
        } else {
            us(reads.value_at_quantile(q))
        }
    };
    let writes: Vec<OpStats> = Op::ALL
        .iter()
        .filter(|op| !op.is_read())
        .map(|op| rec.op(*op))
        .collect();
    WindowReport {
        start_s: w.start.as_secs_f64(),
        end_s: w.end.as_secs_f64(),
        reads: rec.reads(),
        read_errors: ReadErrors::of(rec),
        read_p99_us: q(0.99),
        read_p999_us: q(0.999),
        read_max_us: if reads.is_empty() {
            0.0
        } else {
            us(reads.max())
        },
        stale_served: rec.stale(),
        reads_past_ttl: rec.past_ttl(),
        writes: rec.writes(),
        write_errors: writes.iter().map(|s| s.errors).sum(),
        writes_cache_failed: writes.iter().map(|s| s.cache_failed).sum(),
        writes_local_only: writes.iter().map(|s| s.local_only).sum(),
        breaker_opened: t.opened,
        breaker_open_seen: t.open_seen,
        recovered_after_ms: t.recovered_after.map(|d| d.as_secs_f64() * 1_000.0),
    }
}

/// Operations in report order, serialized as one JSON object.
#[derive(Debug)]
pub(crate) struct Ops(pub(crate) Vec<(Op, OpReport)>);

impl Serialize for Ops {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (op, report) in &self.0 {
            map.serialize_entry(op.name(), report)?;
        }
        map.end()
    }
}

#[cfg(test)]
impl Ops {
    /// The figures of `op`.
    pub(crate) fn get(&self, op: Op) -> Option<&OpReport> {
        self.0.iter().find(|(o, _)| *o == op).map(|(_, r)| r)
    }
}

/// One operation's figures. Latencies cover every call, errors included, in microseconds
/// (HDR histogram, 3 significant digits).
#[derive(Debug, Serialize)]
pub(crate) struct OpReport {
    /// Calls, errors included.
    pub(crate) count: u64,
    /// Calls that returned an error.
    pub(crate) errors: u64,
    /// Median latency.
    pub(crate) p50_us: f64,
    /// 90th percentile.
    pub(crate) p90_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Slowest call.
    pub(crate) max_us: f64,
    /// Mean.
    pub(crate) mean_us: f64,
    /// Reads only: values by the tier that served them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) served: Option<Served>,
    /// Reads only: the source had no value (every key is seeded, so normally 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) not_found: Option<u64>,
    /// Reads only: values served past their TTL without being marked stale (must be 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) past_ttl: Option<u64>,
    /// Writes only: refused because a higher version was cached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) superseded: Option<u64>,
    /// Write-through only: the source took the write, the cache write failed (dirty log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cache_failed: Option<u64>,
    /// Cache-only (feed) writes only: Redis failed, the value went to this process's L1 only
    /// (dirty log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) local_only: Option<u64>,
    /// Cache-only (feed) writes only: in L1 and queued for Redis by the conflating writer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) queued: Option<u64>,
}

/// Reads by provenance (`Read::tier`).
#[derive(Debug, Serialize)]
pub(crate) struct Served {
    /// From L1.
    pub(crate) l1: u64,
    /// From Redis.
    pub(crate) l2: u64,
    /// Loaded from the source (a miss in every tier).
    pub(crate) source: u64,
    /// Past its TTL, because Redis and the source both failed.
    pub(crate) stale: u64,
}

/// The cache's counters, summed over kinds.
#[derive(Debug, Serialize)]
pub(crate) struct Tiers {
    /// Lookups served by L1.
    pub(crate) l1_hits: u64,
    /// Lookups served by Redis.
    pub(crate) l2_hits: u64,
    /// Source loads (cache-aside misses).
    pub(crate) source_loads: u64,
    /// Values served past their TTL.
    pub(crate) stale_served: u64,
    /// Lookups L1 could not serve.
    pub(crate) l1_misses: u64,
    /// Lookups Redis could not serve.
    pub(crate) l2_misses: u64,
    /// Source loads or writes that failed.
    pub(crate) source_errors: u64,
    /// Write-through writes sent to the source.
    pub(crate) source_writes: u64,
    /// Cache writes applied.
    pub(crate) writes_applied: u64,
    /// Cache writes refused because a higher version was cached.
    pub(crate) writes_superseded: u64,
    /// Cache-only writes whose Redis write failed, held by this process's L1 only.
    pub(crate) writes_local_only: u64,
    /// Market-data writes queued for the conflating writer (not in `writes_applied`).
    pub(crate) writes_queued: u64,
    /// Cache operations that returned an error.
    pub(crate) errors: u64,
    /// Redis operations that missed their deadline.
    pub(crate) timeouts: u64,
}

/// The circuit breaker (`n/a` and zeros without Redis).
#[derive(Debug, Serialize)]
pub(crate) struct Breaker {
    /// `closed`, `open`, `half_open` or `n/a`.
    pub(crate) state: &'static str,
    /// Times it opened.
    pub(crate) opened: u64,
    /// Times it closed again.
    pub(crate) closed: u64,
    /// Operations refused while open.
    pub(crate) rejected: u64,
    /// Failures not counted toward opening: their operation started before the last counted
    /// failure (one stall seen by several operations at once).
    pub(crate) overlapping_failures: u64,
    /// On a cluster, each shard's breaker (by lowest hash slot); the figures above add them
    /// up. Absent on one server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) shards: Vec<ShardFigures>,
}

/// One cluster shard's breaker (the instances' together).
#[derive(Debug, Serialize)]
pub(crate) struct ShardFigures {
    /// The lowest hash slot it serves.
    pub(crate) first_slot: u16,
    /// Its primary at the end of the run (`host:port`).
    pub(crate) primary: Option<String>,
    /// The least healthy state among the instances.
    pub(crate) state: &'static str,
    /// Times it opened.
    pub(crate) opened: u64,
    /// Times it closed again.
    pub(crate) closed: u64,
    /// Operations refused while open.
    pub(crate) rejected: u64,
}

/// Cache-aside's fallback figures.
#[derive(Debug, Serialize)]
pub(crate) struct Fallbacks {
    /// Reads that went past Redis to the source, all reasons.
    pub(crate) total: u64,
    /// ... because the breaker was open.
    pub(crate) breaker_open: u64,
    /// ... because Redis missed its deadline.
    pub(crate) timeout: u64,
    /// ... because Redis failed otherwise.
    pub(crate) error: u64,
    /// Source loads refused because the load limit stayed full.
    pub(crate) overloaded: u64,
    /// Values served stale by the fail-safe path.
    pub(crate) stale_served: u64,
    /// Slowest fallback read.
    pub(crate) latency_max_us: f64,
}

/// A paced task group's rate.
#[derive(Debug, Serialize)]
pub(crate) struct Flow {
    /// Events per second asked for.
    pub(crate) target_per_s: u32,
    /// Events done.
    pub(crate) events: u64,
    /// `events / duration_s`.
    pub(crate) per_s: f64,
    /// Events skipped because a task fell more than 100 ms behind its pace.
    pub(crate) dropped: u64,
}

/// The conflating writer's figures (`Cache::stats().writer`); see docs/simulate.md.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WriterReport {
    /// Writes queued.
    pub(crate) enqueued: u64,
    /// Pending writes replaced by a higher version of the key before the flush.
    pub(crate) conflated: u64,
    /// Writes dropped because a higher version of the key was already pending.
    pub(crate) dropped_older: u64,
    /// Writes not queued (too many keys pending): L1 only, key recorded dirty.
    pub(crate) overflow: u64,
    /// Queued writes whose TTL ran out before the writer could send them (not sent).
    pub(crate) expired: u64,
    /// Cache-aside fills queued for Redis besides the writes.
    pub(crate) fills: u64,
    /// Fills not queued because a full batch was already pending (L1 only).
    pub(crate) fills_skipped: u64,
    /// Keys Redis took (writes and fills).
    pub(crate) flushed: u64,
    /// Keys Redis refused because it held a higher version.
    pub(crate) superseded: u64,
    /// Keys whose flush failed (or met an open breaker): L1 only, key recorded dirty.
    pub(crate) failed: u64,
    /// Batches sent (one pipeline each).
    pub(crate) batches: u64,
    /// Largest batch, keys.
    pub(crate) batch_max: u64,
    /// Keys pending at the end (after the final flush: normally 0).
    pub(crate) pending: u64,
    /// From a key's first queued write to Redis's acknowledgement, per key flushed, µs.
    pub(crate) lag_p50_us: u64,
    /// See `lag_p50_us`.
    pub(crate) lag_p99_us: u64,
    /// See `lag_p50_us`.
    pub(crate) lag_max_us: u64,
    /// One batch's round trip, µs.
    pub(crate) flush_p50_us: u64,
    /// See `flush_p50_us`.
    pub(crate) flush_p99_us: u64,
    /// See `flush_p50_us`.
    pub(crate) flush_max_us: u64,
}

impl From<&WriterSnapshot> for WriterReport {
    fn from(w: &WriterSnapshot) -> Self {
        WriterReport {
            enqueued: w.enqueued,
            conflated: w.conflated,
            dropped_older: w.dropped_older,
            overflow: w.overflow,
            expired: w.expired,
            fills: w.fills,
            fills_skipped: w.fills_skipped,
            flushed: w.flushed,
            superseded: w.superseded,
            failed: w.failed,
            batches: w.batches,
            batch_max: w.batch_max,
            pending: w.pending,
            lag_p50_us: w.lag_p50_us,
            lag_p99_us: w.lag_p99_us,
            lag_max_us: w.lag_max_us,
            flush_p50_us: w.flush_p50_us,
            flush_p99_us: w.flush_p99_us,
            flush_max_us: w.flush_max_us,
        }
    }
}

/// One instance's figures (an element of `instances`).
#[derive(Debug, Serialize)]
pub(crate) struct InstanceReport {
    /// `single`, `feed`, `engine-1`, …, or `engine` (`--role engine`).
    pub(crate) name: String,
    /// `single`, `feed` or `engine`.
    pub(crate) role: &'static str,
    /// Reader tasks on it.
    pub(crate) readers: usize,
    /// Read calls its readers made.
    pub(crate) reads: u64,
    /// Write calls made on it (feed and order flow).
    pub(crate) writes: u64,
    /// Its cache's lookups served by L1 (as `tiers.l1_hits`).
    pub(crate) l1_hits: u64,
    /// ... by Redis.
    pub(crate) l2_hits: u64,
    /// ... loaded from the source.
    pub(crate) source_loads: u64,
    /// `(l1_hits + l2_hits) / (l1_hits + l2_hits + source_loads)`.
    pub(crate) hit_rate: f64,
    /// Its circuit breaker.
    pub(crate) breaker: Breaker,
    /// Its reads that fell back past Redis to the source.
    pub(crate) fallbacks: u64,
    /// Its conflating writer (`null` without Redis).
    pub(crate) writer: Option<WriterReport>,
    /// Its backplane (`null` when it has none).
    pub(crate) backplane: Option<BackplaneReport>,
}

/// One instance's backplane figures (`Cache::stats().backplane`); see docs/metrics.md.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BackplaneReport {
    /// Messages it published, and the key updates in them.
    pub(crate) published: u64,
    /// See `published`.
    pub(crate) published_items: u64,
    /// Messages received from other instances, updates applied to L1 and ignored as older.
    pub(crate) received: u64,
    /// See `received`.
    pub(crate) applied: u64,
    /// See `received`.
    pub(crate) ignored_older: u64,
    /// Sequence gaps, L1 epoch bumps, lost subscriptions.
    pub(crate) gaps: u64,
    /// See `gaps`.
    pub(crate) epoch_bumps: u64,
    /// See `gaps`.
    pub(crate) subscription_losses: u64,
    /// Its own canary, publish to receipt, µs.
    pub(crate) canary_lag_p50_us: u64,
    /// See `canary_lag_p50_us`.
    pub(crate) canary_lag_p99_us: u64,
    /// See `canary_lag_p50_us`.
    pub(crate) canary_lag_max_us: u64,
}

impl From<&mdcache::BackplaneSnapshot> for BackplaneReport {
    fn from(b: &mdcache::BackplaneSnapshot) -> Self {
        BackplaneReport {
            published: b.published,
            published_items: b.published_items,
            received: b.received,
            applied: b.applied,
            ignored_older: b.ignored_older,
            gaps: b.gaps,
            epoch_bumps: b.epoch_bumps,
            subscription_losses: b.subscription_losses,
            canary_lag_p50_us: b.canary_lag_p50_us,
            canary_lag_p99_us: b.canary_lag_p99_us,
            canary_lag_max_us: b.canary_lag_max_us,
        }
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

fn breaker(b: Option<&BreakerSnapshot>) -> Breaker {
    match b {
        Some(b) => Breaker {
            state: b.state.as_str(),
            opened: b.opened,
            closed: b.closed,
            rejected: b.rejected,
            overlapping_failures: b.overlapping_failures,
            shards: Vec::new(),
        },
        None => Breaker {
            state: "n/a",
            opened: 0,
            closed: 0,
            rejected: 0,
            overlapping_failures: 0,
            shards: Vec::new(),
        },
    }
}

/// The shards' breakers of `instances` together, by lowest slot: counts summed, the least
/// healthy state.
fn shard_figures<'a>(instances: impl Iterator<Item = &'a InstanceEnd>) -> Vec<ShardFigures> {
    let mut out: Vec<ShardFigures> = Vec::new();
    let mut worst: Vec<BreakerState> = Vec::new();
    for s in instances.flat_map(|i| &i.shard_breakers) {
        let b = &s.breaker;
        match out.iter().position(|f| f.first_slot == s.first_slot) {
            Some(at) => {
                let f = &mut out[at];
                f.opened += b.opened;
                f.closed += b.closed;
                f.rejected += b.rejected;
                if state_rank(b.state) > state_rank(worst[at]) {
                    worst[at] = b.state;
                    f.state = b.state.as_str();
                }
            }
            None => {
                worst.push(b.state);
                out.push(ShardFigures {
                    first_slot: s.first_slot,
                    primary: s.primary.clone(),
                    state: b.state.as_str(),
                    opened: b.opened,
                    closed: b.closed,
                    rejected: b.rejected,
                });
            }
        }
    }
    out.sort_by_key(|f| f.first_slot);
    out
}

/// Open, then half-open, then closed.
fn state_rank(s: BreakerState) -> u8 {
    match s {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        _ => 2,
    }
}

/// The instances' breakers together: the least healthy state (open, then half-open, then
/// closed; `n/a` without Redis) and the summed counts.
fn breakers(instances: &[InstanceEnd]) -> Breaker {
    let rank = state_rank;
    let all: Vec<&BreakerSnapshot> = instances
        .iter()
        .filter_map(|i| i.breaker.as_ref())
        .collect();
    let mut out = breaker(all.iter().copied().max_by_key(|b| rank(b.state)));
    out.opened = all.iter().map(|b| b.opened).sum();
    out.closed = all.iter().map(|b| b.closed).sum();
    out.rejected = all.iter().map(|b| b.rejected).sum();
    out.overlapping_failures = all.iter().map(|b| b.overlapping_failures).sum();
    out.shards = shard_figures(instances.iter());
    out
}

fn tiers(stats: &[&KindSnapshot]) -> Tiers {
    let sum = |f: fn(&KindSnapshot) -> u64| stats.iter().map(|s| f(s)).sum();
    Tiers {
        l1_hits: sum(|s| s.l1_hits),
        l2_hits: sum(|s| s.l2_hits),
        source_loads: sum(|s| s.source_loads),
        stale_served: sum(|s| s.stale_served),
        l1_misses: sum(|s| s.l1_misses),
        l2_misses: sum(|s| s.l2_misses),
        source_errors: sum(|s| s.source_errors),
        source_writes: sum(|s| s.source_writes),
        writes_applied: sum(|s| s.writes),
        writes_superseded: sum(|s| s.writes_superseded),
        writes_local_only: sum(|s| s.writes_local_only),
        writes_queued: sum(|s| s.writes_queued),
        errors: sum(|s| s.errors),
        timeouts: sum(|s| s.timeouts),
    }
}

fn fallbacks(all: &[&FallbackSnapshot]) -> Fallbacks {
    let sum = |f: fn(&FallbackSnapshot) -> u64| all.iter().map(|s| f(s)).sum();
    Fallbacks {
        total: sum(|f| f.total),
        breaker_open: sum(|f| f.breaker_open),
        timeout: sum(|f| f.timeout),
        error: sum(|f| f.error),
        overloaded: sum(|f| f.overloaded),
        stale_served: sum(|f| f.stale_served),
        latency_max_us: all
            .iter()
            .map(|f| f.latency_max.as_nanos() as f64 / 1_000.0)
            .fold(0.0, f64::max),
    }
}

fn instance_report(i: &InstanceEnd) -> InstanceReport {
    let t = &i.stats.total;
    let hits = t.l1_hits + t.l2_hits;
    InstanceReport {
        name: i.name.clone(),
        role: i.role.name(),
        readers: i.readers,
        reads: i.reads,
        writes: i.writes,
        l1_hits: t.l1_hits,
        l2_hits: t.l2_hits,
        source_loads: t.source_loads,
        hit_rate: ratio(hits, hits + t.source_loads),
        breaker: Breaker {
            shards: shard_figures(std::iter::once(i)),
            ..breaker(i.breaker.as_ref())
        },
        fallbacks: i.fallbacks.total,
        backplane: i.stats.backplane.as_ref().map(BackplaneReport::from),
        writer: i.stats.writer.as_ref().map(WriterReport::from),
    }
}

/// Of the reads in `r` that returned a value, the share Redis served.
fn l2_share(r: &Recorder) -> f64 {
    let (mut l2, mut all) = (0, 0);
    for op in Op::ALL.iter().filter(|op| op.is_read()) {
        let t = r.op(*op).tiers;
        l2 += t[1];
        all += t.iter().sum::<u64>();
    }
    ratio(l2, all)
}

fn op_report(op: Op, s: &OpStats) -> OpReport {
    let h = &s.latency;
    let q = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            us(h.value_at_quantile(q))
        }
    };
    OpReport {
        count: s.count(),
        errors: s.errors,
        p50_us: q(0.50),
        p90_us: q(0.90),
        p99_us: q(0.99),
        p999_us: q(0.999),
        // Like the quantiles, the highest value equivalent to the true maximum (within the
        // histogram's precision), so p50 <= p99 <= p999 <= max always holds.
        max_us: if h.is_empty() { 0.0 } else { us(h.max()) },
        mean_us: if h.is_empty() {
            0.0
        } else {
            h.mean() / 1_000.0
        },
        served: op.is_read().then(|| Served {
            l1: s.tiers[0],
            l2: s.tiers[1],
            source: s.tiers[2],
            stale: s.tiers[3],
        }),
        not_found: op.is_read().then_some(s.not_found),
        past_ttl: op.is_read().then_some(s.past_ttl),
        superseded: (!op.is_read()).then_some(s.superseded),
        cache_failed: matches!(op, Op::WriteOrder | Op::WritePos).then_some(s.cache_failed),
        local_only: matches!(op, Op::WritePrice | Op::WriteBook).then_some(s.local_only),
        queued: matches!(op, Op::WritePrice | Op::WriteBook).then_some(s.queued),
    }
}

impl Report {
    /// Builds the report from what the tasks measured and the instances' counters at the end
    /// (the writing instance first); `freshness` is the engines' measuring mode, if any.
    pub(crate) fn build(
        setup: Setup,
        elapsed: Duration,
        interrupted: bool,
        measured: &Measured,
        instances: &[InstanceEnd],
        freshness: Option<&'static str>,
    ) -> (Report, Recorder) {
        let mut all = Recorder::default();
        all.merge(&measured.readers);
        all.merge(&measured.feed);
        all.merge(&measured.orders);
        let secs = elapsed.as_secs_f64().max(f64::EPSILON);
        let (reads, writes) = (all.reads(), all.writes());
        let totals: Vec<&KindSnapshot> = instances.iter().map(|i| &i.stats.total).collect();
        let tiers = tiers(&totals);
        let hits = tiers.l1_hits + tiers.l2_hits;
        let flow = |target: u32, r: &Recorder| Flow {
            target_per_s: target,
            events: r.events,
            per_s: r.events as f64 / secs,
            dropped: r.dropped,
        };
        let report = Report {
            backend: setup.backend,
            postgres: setup.postgres,
            source: if setup.postgres { "postgres" } else { "memory" },
            redis_url: setup.redis_url,
            interrupted,
            feed: flow(setup.workload.updates_per_s, &measured.feed),
            orders: flow(setup.workload.orders_per_s, &measured.orders),
            workload: setup.workload,
            duration_s: secs,
            reads,
            writes,
            reads_per_s: reads as f64 / secs,
            writes_per_s: writes as f64 / secs,
            hit_rate: ratio(hits, hits + tiers.source_loads),
            hot_hit_rate: ratio(measured.readers.hot_hits, measured.readers.hot_reads),
            read_errors: ReadErrors::of(&all),
            reads_past_ttl: all.past_ttl(),
            ops: Ops(Op::ALL
                .iter()
                .map(|&op| (op, op_report(op, &all.op(op))))
                .collect()),
            tiers,
            breaker: breakers(instances),
            fallbacks: fallbacks(&instances.iter().map(|i| &i.fallbacks).collect::<Vec<_>>()),
            writer: instances
                .first()
                .and_then(|i| i.stats.writer.as_ref())
                .map(WriterReport::from),
            instances: instances.iter().map(instance_report).collect(),
            coherence: freshness
                .filter(|mode| *mode == "in_process")
                .map(|_| freshness::Coherence::new(&measured.fresh)),
            freshness: freshness.map(|mode| {
                freshness::Report::new(mode, &measured.fresh, l2_share(&measured.readers))
            }),
            fault_window: None,
            verify: None,
            runtime: RuntimeTasks::default(),
        };
        (report, all)
    }

    /// The summary table printed at the end of a run.
    pub(crate) fn summary(&self, all: &Recorder) -> Vec<String> {
        let w = &self.workload;
        let secs = self.duration_s;
        let mut lines = vec![
            format!(
                "{} symbols (zipf {}), {} readers, feed {} updates/s (target {}), orders {}/s (target {}), {secs:.2} s{}",
                w.symbols,
                w.zipf,
                w.readers,
                thousands(self.feed.per_s.round() as u64),
                thousands(u64::from(w.updates_per_s)),
                thousands(self.orders.per_s.round() as u64),
                thousands(u64::from(w.orders_per_s)),
                if self.interrupted {
                    " (interrupted)"
                } else {
                    ""
                },
            ),
            String::new(),
            format!(
                "{:<12} {:>12} {:>11} {:>7} {:>9} {:>9} {:>9} {:>9}",
                "operation", "calls", "per s", "errors", "p50", "p99", "p99.9", "max"
            ),
        ];
        for &op in &Op::ALL {
            let s = all.op(op);
            let h = &s.latency;
            let q = |q: f64| {
                if h.is_empty() {
                    "-".to_owned()
                } else {
                    fmt_nanos(h.value_at_quantile(q))
                }
            };
            lines.push(format!(
                "{:<12} {:>12} {:>11} {:>7} {:>9} {:>9} {:>9} {:>9}",
                op.name(),
                thousands(s.count()),
                thousands((s.count() as f64 / secs).round() as u64),
                thousands(s.errors),
                q(0.5),
                q(0.99),
                q(0.999),
                if h.is_empty() {
                    "-".to_owned()
                } else {
                    fmt_nanos(h.max())
                },
            ));
        }
        let t = &self.tiers;
        let f = &self.fallbacks;
        let b = &self.breaker;
        lines.extend([
            String::new(),
            format!(
                "reads  {:>12} = {:>11}/s  (read_price + read_book + read_pos + read_risk)",
                thousands(self.reads),
                thousands(self.reads_per_s.round() as u64)
            ),
            format!(
                "writes {:>12} = {:>11}/s  (write_price + write_book + write_order + write_pos)",
                thousands(self.writes),
                thousands(self.writes_per_s.round() as u64)
            ),
            format!(
                "hit rate {:.2} %  (l1 hits {}, l2 hits {}, source loads {}, stale served {}); hot symbols (top {}) {:.3} %",
                self.hit_rate * 100.0,
                thousands(t.l1_hits),
                thousands(t.l2_hits),
                thousands(t.source_loads),
                thousands(t.stale_served),
                w.hot_symbols,
                self.hot_hit_rate * 100.0,
            ),
            format!(
                "breaker {} (opened {}, closed {}); fallbacks {} (breaker_open {}, timeout {}, error {}), overloaded {}, stale served {}",
                b.state, b.opened, b.closed, f.total, f.breaker_open, f.timeout, f.error, f.overloaded, f.stale_served
            ),
        ]);
        // An engine process writes nothing: no writer line for it.
        if let Some(w) = &self.writer
            && (w.enqueued > 0 || w.overflow > 0 || self.workload.updates_per_s > 0)
        {
            lines.push(writer_line("writer", w));
        }
        if self.instances.len() > 1 {
            for i in &self.instances {
                lines.push(format!(
                    "  {:<10} {:>12} reads, {:>11} writes; hit rate {:.2} % (l1 hits {}, l2 hits {}, source loads {}); breaker {} (opened {}); fallbacks {}",
                    i.name,
                    thousands(i.reads),
                    thousands(i.writes),
                    i.hit_rate * 100.0,
                    thousands(i.l1_hits),
                    thousands(i.l2_hits),
                    thousands(i.source_loads),
                    i.breaker.state,
                    i.breaker.opened,
                    thousands(i.fallbacks),
                ));
            }
        }
        if let Some(f) = &self.freshness {
            lines.extend(f.summary());
        }
        if let Some(c) = &self.coherence {
            lines.push(c.summary());
        }
        if self.read_errors.total() > 0 || self.reads_past_ttl > 0 {
            lines.push(format!(
                "read errors: {}; served past their TTL: {}",
                self.read_errors.describe(),
                self.reads_past_ttl
            ));
        }
        if let Some(w) = &self.fault_window {
            lines.push(format!(
                "fault window {:.1}-{:.1} s: {} reads (errors: {}), p99.9 {}, max {}, stale {}; {} writes ({} errors, {} cache failed, {} local only); breaker opened {}; recovered {}",
                w.start_s,
                w.end_s,
                thousands(w.reads),
                w.read_errors.describe(),
                fmt_nanos((w.read_p999_us * 1_000.0) as u64),
                fmt_nanos((w.read_max_us * 1_000.0) as u64),
                w.stale_served,
                thousands(w.writes),
                w.write_errors,
                w.writes_cache_failed,
                w.writes_local_only,
                w.breaker_opened,
                w.recovered_after_ms
                    .map_or_else(|| "not within 30 s".to_owned(), |ms| format!("{ms:.0} ms after the window")),
            ));
        }
        if let Some(v) = &self.verify {
            let failures = v.failures();
            lines.push(format!(
                "verify: {}: {} acknowledged keys, {} lost; {} Redis values compared, {} differ; {} prices compared with the feed's last write, {} older; {} reads past TTL",
                if failures.is_empty() { "passed" } else { "FAILED" },
                v.acked_keys,
                v.lost_acked_writes,
                v.l2_compared,
                v.l2_differs_from_source,
                v.prices_compared,
                v.prices_behind_feed,
                v.reads_past_ttl,
            ));
        }
        if self.feed.dropped + self.orders.dropped > 0 {
            lines.push(format!(
                "behind pace: {} feed updates and {} order events skipped (tasks more than 100 ms late)",
                thousands(self.feed.dropped),
                thousands(self.orders.dropped)
            ));
        }
        lines
    }
}

/// `writer: 1,234 queued, …` for the summary.
fn writer_line(name: &str, w: &WriterReport) -> String {
    let us = |v: u64| fmt_nanos(v.saturating_mul(1_000));
    format!(
        "{name}: {} queued, {} conflated, {} dropped older, {} overflow, {} expired, {} fills; {} flushed, {} superseded, {} failed, in {} batches (max {} keys); lag p50 {} / p99 {} / max {}",
        thousands(w.enqueued),
        thousands(w.conflated),
        thousands(w.dropped_older),
        thousands(w.overflow),
        thousands(w.expired),
        thousands(w.fills),
        thousands(w.flushed),
        thousands(w.superseded),
        thousands(w.failed),
        thousands(w.batches),
        w.batch_max,
        us(w.lag_p50_us),
        us(w.lag_p99_us),
        us(w.lag_max_us),
    )
}

/// The read operations' merged histograms, for the plot.
pub(crate) fn read_histograms(all: &Recorder) -> Vec<(&'static str, Histogram<u64>)> {
    Op::ALL
        .iter()
        .filter(|op| op.is_read())
        .map(|&op| (op.name(), all.op(op).latency))
        .filter(|(_, h)| !h.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::instance::Role;
    use crate::simulate::record::{ReadOutcome, WriteOutcome};
    use mdcache::{StatsSnapshot, Tier};

    #[test]
    fn the_report_adds_up() {
        let mut m = Measured::default();
        for i in 0..1_000u64 {
            let tier = if i % 100 == 0 { Tier::Source } else { Tier::L1 };
            m.readers
                .read(Op::ReadPrice, 100 + i, ReadOutcome::Value(tier), i % 2 == 0);
            m.readers.read(
                Op::ReadRisk,
                50,
                ReadOutcome::Error(ReadFailure::Source),
                false,
            );
        }
        m.feed.write(Op::WriteBook, 400, WriteOutcome::Applied);
        m.orders
            .write(Op::WritePos, 90_000, WriteOutcome::Superseded);
        m.feed.events = 1;
        let stats = StatsSnapshot::default();
        let setup = Setup {
            backend: "memory",
            postgres: false,
            redis_url: None,
            workload: Workload {
                symbols: 10,
                zipf: 1.1,
                readers: 1,
                feed_tasks: 1,
                order_tasks: 1,
                updates_per_s: 1,
                orders_per_s: 1,
                duration_requested_s: 2.0,
                book_depth: 5,
                hot_symbols: 1,
                hot_read_share: 0.3,
                engines: 0,
                role: None,
            },
        };
        let single = InstanceEnd {
            name: "single".into(),
            role: Role::Single,
            readers: 1,
            reads: 2_000,
            writes: 2,
            stats,
            breaker: None,
            shard_breakers: Vec::new(),
            fallbacks: FallbackSnapshot::default(),
        };
        let (r, all) = Report::build(setup, Duration::from_secs(2), false, &m, &[single], None);
        assert_eq!((r.reads, r.writes), (2_000, 2));
        assert_eq!(r.reads_per_s, 1_000.0);
        assert_eq!(r.hit_rate, 0.0); // no cache counters: defined as 0
        assert_eq!(r.breaker.state, "n/a");
        let price = r.ops.get(Op::ReadPrice).unwrap();
        assert!(price.p50_us <= price.p99_us && price.p99_us <= price.p999_us);
        assert!(price.p999_us <= price.max_us);
        assert_eq!(
            price.served.as_ref().map(|s| (s.l1, s.source)),
            Some((990, 10))
        );
        assert_eq!(r.ops.get(Op::ReadRisk).unwrap().errors, 1_000);
        assert_eq!(r.read_errors.source, 1_000);
        assert_eq!(r.read_errors.describe(), "source 1000");
        assert_eq!(r.reads_past_ttl, 0);
        assert_eq!(r.hot_hit_rate, 490.0 / 500.0);
        let json = serde_json::to_value(&r).unwrap();
        let names: Vec<&str> = json["ops"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(names.len(), 8);
        assert_eq!(json["ops"]["write_pos"]["superseded"], 1);
        assert!(json["ops"]["write_book"].get("cache_failed").is_none());
        assert_eq!(json["ops"]["write_book"]["local_only"], 0);
        assert!(json["ops"]["write_pos"].get("local_only").is_none());
        assert!(r.summary(&all).iter().any(|l| l.starts_with("read_price")));
        // One instance, no Redis: no writer, no freshness.
        assert!(json["writer"].is_null());
        assert!(json.get("freshness").is_none());
        assert_eq!(json["instances"].as_array().map(Vec::len), Some(1));
        assert_eq!(json["instances"][0]["role"], "single");
        assert_eq!(json["instances"][0]["reads"], 2_000);
        assert_eq!(json["instances"][0]["breaker"]["state"], "n/a");
    }

    #[test]
    fn instances_add_up_to_the_top_level_figures() {
        let mut m = Measured::default();
        for tier in [Tier::L1, Tier::L2, Tier::L2, Tier::Source] {
            m.readers
                .read(Op::ReadPrice, 100, ReadOutcome::Value(tier), false);
        }
        let instance = |name: &str, role, l1, l2, loads, reads| {
            let mut stats = StatsSnapshot::default();
            stats.total.l1_hits = l1;
            stats.total.l2_hits = l2;
            stats.total.source_loads = loads;
            InstanceEnd {
                name: name.into(),
                role,
                readers: 1,
                reads,
                writes: 0,
                stats,
                breaker: None,
                shard_breakers: Vec::new(),
                fallbacks: FallbackSnapshot::default(),
            }
        };
        let instances = [
            instance("feed", Role::Feed, 0, 0, 0, 0),
            instance("engine-1", Role::Engine, 10, 3, 1, 2),
            instance("engine-2", Role::Engine, 20, 5, 1, 2),
        ];
        let setup = Setup {
            backend: "layered",
            postgres: false,
            redis_url: None,
            workload: Workload {
                symbols: 1,
                zipf: 1.0,
                readers: 2,
                feed_tasks: 1,
                order_tasks: 0,
                updates_per_s: 1,
                orders_per_s: 0,
                duration_requested_s: 1.0,
                book_depth: 5,
                hot_symbols: 1,
                hot_read_share: 1.0,
                engines: 2,
                role: None,
            },
        };
        let (r, all) = Report::build(
            setup,
            Duration::from_secs(1),
            false,
            &m,
            &instances,
            Some("in_process"),
        );
        assert_eq!(
            (r.tiers.l1_hits, r.tiers.l2_hits, r.tiers.source_loads),
            (30, 8, 2)
        );
        assert_eq!(r.hit_rate, 38.0 / 40.0);
        let roles: Vec<&str> = r.instances.iter().map(|i| i.role).collect();
        assert_eq!(roles, ["feed", "engine", "engine"]);
        assert_eq!(r.instances.iter().map(|i| i.reads).sum::<u64>(), r.reads);
        let f = r.freshness.as_ref().unwrap();
        assert_eq!(f.mode, "in_process");
        assert_eq!(f.l2_hit_rate, 0.5);
        let summary = r.summary(&all);
        assert!(
            summary
                .iter()
                .any(|l| l.trim_start().starts_with("engine-2")),
            "{summary:?}"
        );
        assert!(
            summary.iter().any(|l| l.starts_with("freshness")),
            "{summary:?}"
        );
    }
}
