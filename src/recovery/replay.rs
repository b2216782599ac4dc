//! The dirty-log replay: every key written while L2 was untrusted is deleted from it (or, after an overflow, every key of the affected kinds) before L2 is trusted again.

use crate::backplane::Backplane;
use crate::backplane::wire::Item;
use crate::engine::dirty::{DirtyLog, DirtySnapshot};
use crate::error::Result;
use crate::l2::L2Tier;

/// Keys per `UNLINK` during a replay.
const UNLINK_BATCH: usize = 512;

/// Deletes from L2 every key the dirty log holds; if the log overflowed, every key of the
/// affected kinds in the namespace (`SCAN` + `UNLINK`, never `KEYS`). The log keeps every key
/// until it is deleted, so a failed replay loses nothing and reads distrust the keys meanwhile;
/// and a successful one forgets only what is unchanged since its snapshot, so a key recorded
/// again (or an overflow) while it ran waits for the next replay.
///
/// Each key deleted is published on the backplane (when there is one), so other instances
/// evict their copies too.
pub(crate) async fn replay(
    l2: &L2Tier,
    dirty: &DirtyLog,
    namespace: &str,
    backplane: Option<&Backplane>,
) -> Result<()> {
    let snap = dirty.peek();
    if snap.keys.is_empty() && !snap.overflowed {
        return Ok(());
    }
    let result = replay_snapshot(l2, &snap, namespace).await;
    match &result {
        Ok(()) => {
            dirty.forget(&snap);
            if let Some(bp) = backplane {
                for key in &snap.keys {
                    bp.publish(
                        key,
                        Item::Evict {
                            key: key.to_string(),
                        },
                    );
                }
            }
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

async fn replay_snapshot(l2: &L2Tier, snap: &DirtySnapshot, namespace: &str) -> Result<()> {
    for chunk in snap.keys.chunks(UNLINK_BATCH) {
        let keys: Vec<&str> = chunk.iter().map(|k| k.as_ref()).collect();
        l2.recovery_unlink(&keys).await?;
    }
    if snap.overflowed {
        for kind in &snap.kinds {
            l2.recovery_unlink_matching(&format!("{namespace}:{kind}:*"))
                .await?;
        }
    }
    Ok(())
}
