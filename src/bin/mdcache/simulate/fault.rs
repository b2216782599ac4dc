//! `--fault-window`: turns the tasks' window flag on at START and off at END, watches the breaker meanwhile, and times the recovery after END.
//!
//! simulate does not inject the fault itself: whoever runs it (a person, a script, `make
//! faults`) kills, pauses or slows Redis or the database at START and heals it at END. The
//! line `fault window: …` on stdout marks the moment the tasks start, from which both are
//! measured.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mdcache::{BreakerState, Cache};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::args::Window;
use super::workload::Shared;

/// How often the breaker is looked at.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// Longest wait, after the run, for the breaker to close and the dirty log to empty.
pub(crate) const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// What the watch saw.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timeline {
    /// Times the breaker opened between START and END.
    pub(crate) opened: u64,
    /// The breaker was seen open or half-open (sampled every 5 ms) between START and END.
    pub(crate) open_seen: bool,
    /// From END until the breaker was seen closed with an empty dirty log; `None` when that
    /// did not happen before the watch was stopped.
    pub(crate) recovered_after: Option<Duration>,
}

/// True when every cache trusts Redis again: its breaker is closed (or there is no Redis) and
/// its dirty log is empty.
pub(crate) fn recovered(caches: &[Cache]) -> bool {
    caches.iter().all(|cache| {
        cache
            .breaker()
            .is_none_or(|b| b.state == BreakerState::Closed)
            && cache.dirty_log().is_empty()
    })
}

/// Waits until [`recovered`], at most `limit`; returns how long it took, or `None`.
pub(crate) async fn settle(caches: &[Cache], limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if recovered(caches) {
            return Some(t0.elapsed());
        }
        if t0.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Runs the window from `start` (when the tasks started): flag on at START, off at END, then
/// watches every instance's cache (`caches`) for the recovery until it happens or `stop` is
/// cancelled. The breaker figures are the instances' together: openings summed, "seen open"
/// when any was.
pub(crate) async fn watch(
    shared: Arc<Shared>,
    caches: Vec<Cache>,
    start: Instant,
    window: Window,
    stop: CancellationToken,
) -> Timeline {
    let mut timeline = Timeline::default();
    let opened = |caches: &[Cache]| -> u64 {
        caches
            .iter()
            .map(|c| c.breaker().map_or(0, |b| b.opened))
            .sum()
    };
    tokio::select! {
        () = stop.cancelled() => return timeline,
        () = tokio::time::sleep_until(start + window.start) => {}
    }
    let opened_before = opened(&caches);
    shared.window.store(true, Ordering::Relaxed);
    let end = start + window.end;
    loop {
        timeline.open_seen |= caches
            .iter()
            .any(|c| c.breaker().is_some_and(|b| b.state != BreakerState::Closed));
        let now = Instant::now();
        if now >= end || stop.is_cancelled() {
            break;
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(SAMPLE_EVERY.min(end - now)) => {}
        }
    }
    shared.window.store(false, Ordering::Relaxed);
    timeline.opened = opened(&caches).saturating_sub(opened_before);
    let ended = Instant::now();
    loop {
        if recovered(&caches) {
            timeline.recovered_after = Some(ended.elapsed());
            return timeline;
        }
        if stop.is_cancelled() {
            // Stopped (after the post-run wait), and checked once more just above.
            return timeline;
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::workload::Keys;
    use crate::simulate::zipf::Zipf;

    fn shared() -> Arc<Shared> {
        let cache = Cache::builder().build().unwrap();
        let keys = Arc::new(Keys::new(&cache, 2).unwrap());
        Arc::new(Shared::new(
            cache,
            keys,
            Zipf::new(2, 1.0),
            0,
            false,
            crate::simulate::freshness::Mode::Off,
        ))
    }

    #[tokio::test]
    async fn the_window_flag_is_on_inside_the_window_and_off_after() {
        let shared = shared();
        let stop = CancellationToken::new();
        let window = Window {
            start: Duration::ZERO,
            end: Duration::from_secs(3600),
        };
        let caches = vec![shared.cache.clone()];
        let watch = tokio::spawn(watch(
            Arc::clone(&shared),
            caches,
            Instant::now(),
            window,
            stop.clone(),
        ));
        let give_up = Instant::now() + Duration::from_secs(30);
        while !shared.window.load(Ordering::Relaxed) {
            assert!(Instant::now() < give_up, "the window never started");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop.cancel();
        let timeline = watch.await.unwrap();
        assert!(!shared.window.load(Ordering::Relaxed));
        // No Redis: never open, and recovered as soon as the window ends.
        assert_eq!(timeline.opened, 0);
        assert!(!timeline.open_seen);
        assert!(timeline.recovered_after.is_some());
    }

    #[tokio::test]
    async fn a_window_that_never_starts_leaves_the_flag_off() {
        let shared = shared();
        let stop = CancellationToken::new();
        let window = Window {
            start: Duration::from_secs(3600),
            end: Duration::from_secs(7200),
        };
        stop.cancel();
        let caches = vec![shared.cache.clone()];
        let timeline = watch(Arc::clone(&shared), caches, Instant::now(), window, stop).await;
        assert!(!shared.window.load(Ordering::Relaxed));
        assert_eq!(timeline.recovered_after, None);
    }
}
