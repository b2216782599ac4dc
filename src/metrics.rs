//! One-call Prometheus export of mdcache's metrics, for engines that link the library.
//!
//! The metric names and [`describe`] work with any `metrics` recorder; the exporter,
//! [`install_prometheus`], needs the `prometheus` feature (on by default).

#[cfg(feature = "prometheus")]
use std::net::SocketAddr;

#[cfg(feature = "prometheus")]
use ::metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

#[cfg(feature = "prometheus")]
use crate::error::{Error, Result};

/// Every metric mdcache records, with its description (also in `docs/metrics.md`).
pub const METRICS: &[(&str, &str)] = &[
    (
        "mdcache_hits_total",
        "Reads served by a tier (labels: kind, tier = l1|l2).",
    ),
    (
        "mdcache_misses_total",
        "Reads a tier could not serve (labels: kind, tier = l1|l2).",
    ),
    (
        "mdcache_writes_total",
        "Cache writes (labels: kind, outcome = applied|superseded|local_only|queued).",
    ),
    ("mdcache_deletes_total", "Deletes (label: kind)."),
    (
        "mdcache_errors_total",
        "Operations that returned an error, timeouts and decode errors included, and the failed Redis writes behind local-only writes (label: kind).",
    ),
    (
        "mdcache_timeouts_total",
        "L2 operations that missed their deadline (label: kind).",
    ),
    (
        "mdcache_decode_errors_total",
        "Stored values that did not decode and were served as misses (label: kind).",
    ),
    (
        "mdcache_source_loads_total",
        "Source loads: cache-aside misses and refreshes (label: kind).",
    ),
    (
        "mdcache_source_errors_total",
        "Source loads or writes that failed or timed out (label: kind).",
    ),
    (
        "mdcache_source_writes_total",
        "Write-through writes sent to the source (label: kind).",
    ),
    (
        "mdcache_refreshes_total",
        "Background refresh-ahead reloads started (label: kind).",
    ),
    (
        "mdcache_negative_hits_total",
        "Reads answered \"not found\" from the negative cache (label: kind).",
    ),
    (
        "mdcache_dirty_recorded_total",
        "Keys recorded in the dirty log (label: kind).",
    ),
    (
        "mdcache_stale_served_total",
        "Values served past their TTL, marked stale, because Redis and the source both failed (label: kind).",
    ),
    (
        "mdcache_breaker_transitions_total",
        "Circuit breaker transitions (labels: to = open|half_open|closed; shard = all for one server, or a cluster shard's lowest hash slot).",
    ),
    (
        "mdcache_breaker_overlapping_failures_total",
        "Failures not counted toward opening the breaker because their operation started before the last counted failure (one stall seen by many operations at once counts once).",
    ),
    (
        "mdcache_breaker_state",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open (gauge; label: shard = all for one server, or a cluster shard's lowest hash slot).",
    ),
    (
        "mdcache_l2_read_seconds",
        "Reads served from Redis: request to answer, in seconds (histogram; label: kind).",
    ),
    (
        "mdcache_fallbacks_total",
        "Reads that fell back past Redis to the source (label: reason = breaker_open|timeout|error).",
    ),
    (
        "mdcache_fallback_seconds",
        "Latency of fallback reads (histogram; label: reason).",
    ),
    (
        "mdcache_fallback_overloaded_total",
        "Source loads refused because the concurrency limit stayed full.",
    ),
    (
        "mdcache_recovery_replayed_keys_total",
        "Dirty-log keys deleted from Redis by recovery.",
    ),
    (
        "mdcache_writer_writes_total",
        "Market-data writes offered to the conflating writer (label: outcome = enqueued|conflated|dropped_older|overflow|fill|fill_skipped; conflated: replaced a pending lower version; dropped_older: a higher version was pending; overflow: the pending bound was reached, kept in L1 and recorded dirty; fill: a cache-aside fill queued besides the writes; fill_skipped: a fill not queued because a full batch was waiting).",
    ),
    (
        "mdcache_writer_keys_total",
        "Keys the writer settled (label: outcome = flushed|superseded|failed|expired; failed keys are recorded dirty; expired ones ran out of TTL while queued and were not sent).",
    ),
    (
        "mdcache_writer_batches_total",
        "Batches (pipelines) the writer sent to Redis.",
    ),
    (
        "mdcache_writer_batch_keys",
        "Keys per batch the writer sent (histogram).",
    ),
    (
        "mdcache_writer_flush_seconds",
        "Round trip of one writer batch (histogram).",
    ),
    (
        "mdcache_writer_lag_seconds",
        "Enqueue to acknowledged by Redis, per key flushed (histogram).",
    ),
    (
        "mdcache_writer_pending",
        "Keys pending in the writer (gauge, updated by Cache::stats).",
    ),
    (
        "mdcache_backplane_published_total",
        "Backplane messages this instance published.",
    ),
    (
        "mdcache_backplane_items_total",
        "Backplane key updates (label: outcome = published|dropped|applied|ignored_older; dropped: the outbox was full, and the next message skips a sequence number; applied: a received update changed L1; ignored_older: L1 held the same or a newer version).",
    ),
    (
        "mdcache_backplane_publish_failures_total",
        "Backplane messages whose PUBLISH failed (receivers see the skipped sequence number as a gap).",
    ),
    (
        "mdcache_backplane_received_total",
        "Backplane messages received from other instances.",
    ),
    (
        "mdcache_backplane_duplicates_total",
        "Backplane messages ignored because their sequence number was already seen.",
    ),
    (
        "mdcache_backplane_malformed_total",
        "Backplane messages that did not decode (another build's format, or damage); each bumps the L1 epoch.",
    ),
    (
        "mdcache_backplane_gaps_total",
        "Gaps in a publisher's sequence (each bumps the L1 epoch).",
    ),
    (
        "mdcache_backplane_epoch_bumps_total",
        "L1 epoch bumps: everything cached before is no longer served (gaps, unreadable messages, lost and re-established subscriptions).",
    ),
    (
        "mdcache_backplane_subscription_losses_total",
        "Times the backplane subscription was lost.",
    ),
    (
        "mdcache_backplane_canaries_missed_total",
        "Own backplane canaries published and not received within 3 s (each treated as a lost subscription).",
    ),
    (
        "mdcache_backplane_canary_lag_seconds",
        "Backplane lag measured by the instance's own canary, publish to receipt (histogram).",
    ),
    (
        "mdcache_l1_entries",
        "Entries held by L1 (gauge, updated by Cache::stats).",
    ),
    (
        "mdcache_l1_bytes",
        "Weighted bytes held by L1 (gauge, updated by Cache::stats).",
    ),
];

/// Describes every mdcache metric to the installed `metrics` recorder (so exporters print
/// `# HELP` lines). [`install_prometheus`] calls it; call it yourself with another recorder.
pub fn describe() {
    for (name, help) in METRICS {
        if name.ends_with("_total") {
            ::metrics::describe_counter!(*name, *help);
        } else if name.ends_with("_seconds") {
            ::metrics::describe_histogram!(*name, ::metrics::Unit::Seconds, *help);
        } else if name.ends_with("_keys") {
            ::metrics::describe_histogram!(*name, ::metrics::Unit::Count, *help);
        } else {
            ::metrics::describe_gauge!(*name, *help);
        }
    }
}

/// Installs a Prometheus recorder as the global `metrics` recorder without serving it: the
/// handle renders the exposition text (what the admin router's `GET /metrics` serves). Call
/// it before building the cache, as [`install_prometheus`].
#[cfg(feature = "prometheus")]
pub fn install_prometheus_recorder() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::config("metrics recorder", e.to_string()))?;
    describe();
    Ok(handle)
}

/// Installs a Prometheus recorder as the global `metrics` recorder and serves it over HTTP at
/// `addr` (`GET /metrics`, or any path). Call it inside a Tokio runtime and **before** building
/// the cache: counters are registered when a kind is first used, against the recorder
/// installed at that moment.
///
/// Returns the handle, which can also render the exposition text directly.
#[cfg(feature = "prometheus")]
pub fn install_prometheus(addr: SocketAddr) -> Result<PrometheusHandle> {
    let fail = |e: &dyn std::fmt::Display| Error::config("metrics address", e.to_string());
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| fail(&"install_prometheus must be called inside a Tokio runtime"))?;
    let (recorder, exporter) = {
        let _guard = rt.enter();
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .build()
            .map_err(|e| fail(&e))?
    };
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).map_err(|e| fail(&e))?;
    // The exporter serves until the runtime shuts down; it owns nothing of the cache.
    rt.spawn(exporter);
    describe();
    Ok(handle)
}
