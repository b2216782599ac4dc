//! The live progress line (indicatif, on stderr): readers hand over their recent latencies without ever blocking, and a progress task shows reads/s, hit rate, p99, the fallback count, and per instance the breaker state and the writer's lag.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mdcache::Cache;

use super::record::latency_histogram;
use crate::output::{fmt_nanos, ratio, thousands};

/// How often a reader offers its recent latencies to the progress task (checked at its
/// yields only, so never on the read path itself).
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// How often the progress line is recomputed.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// Where one reader's recent read latencies wait for the progress task.
///
/// A std `Mutex`, but readers only ever `try_lock` it (a busy slot means "publish next
/// time"), and only once per [`PUBLISH_EVERY`]: the read loop never waits on it.
#[derive(Debug)]
pub(crate) struct LiveSlot(Mutex<Histogram<u64>>);

/// A reader's side of the live figures: a low-precision histogram of every read since the
/// last hand-over.
#[derive(Debug)]
pub(crate) struct LiveRecorder {
    local: Histogram<u64>,
    slot: Arc<LiveSlot>,
    /// `quanta` raw time of the last hand-over.
    last: u64,
}

impl LiveRecorder {
    /// Records one round's four read latencies (nanoseconds).
    #[inline]
    pub(crate) fn record(&mut self, a: u64, b: u64, c: u64, d: u64) {
        for ns in [a, b, c, d] {
            self.local.saturating_record(ns);
        }
    }

    /// Hands the recent latencies over if [`PUBLISH_EVERY`] has passed since the last time
    /// and the slot is free; `now` is a `quanta` raw time.
    pub(crate) fn maybe_publish(&mut self, clock: &quanta::Clock, now: u64) {
        if clock.delta_as_nanos(self.last, now) < PUBLISH_EVERY.as_nanos() as u64 {
            return;
        }
        if let Ok(mut shared) = self.slot.0.try_lock() {
            // Same bounds on both sides: adding cannot fail.
            let _ = shared.add(&self.local);
            self.local.reset();
            self.last = now;
        }
    }
}

/// One instance's part of the line: its breaker state, and its writer's p99 lag so far once
/// it has queued something: `feed closed lag 1.10 ms`, `e1 closed`; for the single instance
/// `breaker closed  lag 1.10 ms`.
fn instance_figures(
    label: &str,
    stats: &mdcache::StatsSnapshot,
    breaker: Option<mdcache::BreakerSnapshot>,
) -> String {
    let state = breaker.map_or("n/a", |b| b.state.as_str());
    let lag = stats
        .writer
        .as_ref()
        .filter(|w| w.enqueued > 0)
        .map(|w| fmt_nanos(w.lag_p99_us.saturating_mul(1_000)));
    match (label, lag) {
        ("single", Some(lag)) => format!("breaker {state}  lag {lag}"),
        ("single", None) => format!("breaker {state}"),
        (label, Some(lag)) => format!("{label} {state} lag {lag}"),
        (label, None) => format!("{label} {state}"),
    }
}

/// The progress line and the slots it reads.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
    slots: Vec<Arc<LiveSlot>>,
}

impl Progress {
    /// A progress line for a run of `duration`; hidden with `quiet` or when stderr is not a
    /// terminal (then readers skip the live figures altogether).
    pub(crate) fn new(duration: Duration, quiet: bool) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            let bar = ProgressBar::with_draw_target(Some(millis), ProgressDrawTarget::stderr());
            // A constant, valid template: the fallback is never used.
            let style = ProgressStyle::with_template("{elapsed:>3} {bar:12.cyan/blue} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar.set_message("starting");
            bar
        };
        Progress {
            bar,
            slots: Vec::new(),
        }
    }

    /// A recorder for one more reader, or `None` when the line is hidden.
    pub(crate) fn recorder(&mut self, clock: &quanta::Clock) -> Option<LiveRecorder> {
        if self.bar.is_hidden() {
            return None;
        }
        let slot = Arc::new(LiveSlot(Mutex::new(latency_histogram(2))));
        self.slots.push(Arc::clone(&slot));
        Some(LiveRecorder {
            local: latency_histogram(2),
            slot,
            last: clock.raw(),
        })
    }

    /// Redraws the line every [`REFRESH_EVERY`] until `done` resolves, then clears it.
    /// `instances` are the run's caches with their labels (`feed`, `e1`, …; the writing one
    /// first).
    pub(crate) async fn run(
        self,
        instances: Vec<(String, Cache)>,
        start: Instant,
        done: impl Future<Output = ()>,
    ) {
        if self.bar.is_hidden() {
            done.await;
            return;
        }
        // The first line after one period: before that, readers have handed nothing over.
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + REFRESH_EVERY, REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(done);
        let mut window = latency_histogram(2);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                () = &mut done => break,
                _ = tick.tick() => {}
            }
            window.reset();
            for slot in &self.slots {
                let mut h = slot.0.lock().unwrap_or_else(|p| p.into_inner());
                let _ = window.add(&*h);
                h.reset();
            }
            let now = Instant::now();
            let secs = now.duration_since(last).as_secs_f64().max(1e-3);
            last = now;
            let reads_per_s = window.len() as f64 / secs;
            let p99 = if window.is_empty() {
                "-".to_owned()
            } else {
                fmt_nanos(window.value_at_quantile(0.99))
            };
            let (mut hits, mut loads, mut fallbacks) = (0, 0, 0);
            let mut each = Vec::with_capacity(instances.len());
            for (label, cache) in &instances {
                let stats = cache.stats();
                hits += stats.total.l1_hits + stats.total.l2_hits;
                loads += stats.total.source_loads;
                fallbacks += cache.fallback_stats().total;
                each.push(instance_figures(label, &stats, cache.breaker()));
            }
            let hit_rate = ratio(hits, hits + loads) * 100.0;
            self.bar.set_position(
                u64::try_from(now.duration_since(start).as_millis()).unwrap_or(u64::MAX),
            );
            self.bar.set_message(format!(
                "{} reads/s  hit {hit_rate:.2}%  p99 {p99}  fallbacks {}  {}",
                thousands(reads_per_s.round() as u64),
                thousands(fallbacks),
                each.join(" | ")
            ));
        }
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_shows_its_breaker_and_its_lag_once_it_writes() {
        let mut stats = mdcache::StatsSnapshot::default();
        assert_eq!(instance_figures("single", &stats, None), "breaker n/a");
        assert_eq!(instance_figures("e1", &stats, None), "e1 n/a");
        let mut writer = mdcache::WriterSnapshot::default();
        stats.writer = Some(writer.clone());
        assert_eq!(
            instance_figures("e2", &stats, None),
            "e2 n/a",
            "nothing queued"
        );
        writer.enqueued = 3;
        writer.lag_p99_us = 1_100;
        stats.writer = Some(writer);
        assert_eq!(
            instance_figures("feed", &stats, None),
            "feed n/a lag 1.10 ms"
        );
        assert_eq!(
            instance_figures("single", &stats, None),
            "breaker n/a  lag 1.10 ms"
        );
    }
}
