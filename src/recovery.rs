//! Recovery: the background task that probes Redis while the breaker is open and replays the dirty log before L2 is trusted again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::l2::guard::BreakerState;
use crate::l2::redis::RedisTier;
use crate::patterns::dirty::{DirtyLog, DirtySnapshot};

/// Keys per `UNLINK` during a replay.
const UNLINK_BATCH: usize = 512;

/// How often a dirty log recorded while the breaker stayed closed is replayed.
const CLOSED_REPLAY_EVERY: Duration = Duration::from_millis(100);

/// Deletes from L2 every key the dirty log holds; if the log overflowed, every key of the
/// affected kinds in the namespace (`SCAN` + `UNLINK`, never `KEYS`). The log keeps every key
/// until it is deleted, so a failed replay loses nothing and reads distrust the keys meanwhile;
/// and a successful one forgets only what is unchanged since its snapshot, so a key recorded
/// again (or an overflow) while it ran waits for the next replay.
pub(crate) async fn replay(l2: &RedisTier, dirty: &DirtyLog, namespace: &str) -> Result<()> {
    let snap = dirty.peek();
    if snap.keys.is_empty() && !snap.overflowed {
        return Ok(());
    }
    let result = replay_snapshot(l2, &snap, namespace).await;
    match &result {
        Ok(()) => {
            dirty.forget(&snap);
            metrics::counter!("mdcache_recovery_replayed_keys_total")
                .increment(snap.keys.len() as u64);
            tracing::info!(
                keys = snap.keys.len(),
                overflowed = snap.overflowed,
                "dirty log replayed"
            );
        }
        // Debug, not warn: while Redis is down this retries every 100 ms.
        Err(e) => tracing::debug!(error = %e, "dirty log replay failed; will retry"),
    }
    result
}

async fn replay_snapshot(l2: &RedisTier, snap: &DirtySnapshot, namespace: &str) -> Result<()> {
    for chunk in snap.keys.chunks(UNLINK_BATCH) {
        let keys: Vec<&str> = chunk.iter().map(|k| k.as_ref()).collect();
        l2.unlink_unguarded(&keys).await?;
    }
    if snap.overflowed {
        for kind in &snap.kinds {
            let pattern = format!("{namespace}:{kind}:*");
            let mut cursor = 0;
            loop {
                let (next, keys) = l2.scan_unguarded(cursor, &pattern).await?;
                if !keys.is_empty() {
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    l2.unlink_unguarded(&keys).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
    }
    Ok(())
}

/// The supervisor: while the breaker is closed it replays a non-empty dirty log now and then;
/// when the breaker opens it waits out the open period, then probes (`PING`), replays the
/// dirty log and only then closes the breaker. Stops when `stop` is cancelled (the cache is
/// dropped).
pub(crate) async fn supervise(
    l2: Arc<RedisTier>,
    dirty: Arc<DirtyLog>,
    namespace: String,
    stop: CancellationToken,
) {
    let step = l2
        .breaker
        .config
        .open_for
        .min(Duration::from_millis(20))
        .max(Duration::from_millis(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = l2.breaker.opened() => {}
            // Unconditional: a key can be recorded while we wait (a failed cache write
            // that did not open the breaker), and it must still be replayed.
            _ = tokio::time::sleep(CLOSED_REPLAY_EVERY) => {}
        }
        if l2.breaker.state() == BreakerState::Closed {
            if dirty.is_empty() {
                continue;
            }
            // Replay failures while closed are retried on the next round (and the keys stay
            // distrusted by reads until then).
            let _ = replay(&l2, &dirty, &namespace).await;
            continue;
        }
        // The outage may have killed every pooled socket: start the probes on fresh ones.
        l2.retire_connections();
        while l2.breaker.state() != BreakerState::Closed {
            if stop.is_cancelled() {
                return;
            }
            if l2.breaker.begin_probe() {
                let healthy = match l2.probe().await {
                    Ok(()) => replay(&l2, &dirty, &namespace).await,
                    Err(e) => Err(e),
                };
                match healthy {
                    Ok(()) => l2.breaker.probe_succeeded(),
                    Err(e) => {
                        tracing::debug!(error = %e, "breaker probe failed");
                        l2.breaker.probe_failed();
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(step) => {}
            }
        }
    }
}
