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
/// On a cluster the keys go shard by shard ([`L2Tier::replay_group`]): a shard that fails, or
/// whose breaker is open, keeps its keys for a later replay without holding up the others'.
/// The overflow's `SCAN` (every primary) waits until every shard can be reached. The result
/// is the first failure; keys merely waiting for their shard are not one.
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
    // Keys by group (shard), in first-seen order; shards are few.
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    let mut waiting = 0usize;
    for (i, key) in snap.keys.iter().enumerate() {
        match l2.replay_group(key) {
            Some(g) => match groups.iter_mut().find(|(id, _)| *id == g) {
                Some((_, members)) => members.push(i),
                None => groups.push((g, vec![i])),
            },
            None => waiting += 1,
        }
    }
    let mut done: Vec<usize> = Vec::new();
    let mut failure = None;
    for (_, members) in &groups {
        match unlink_all(l2, &snap, members).await {
            Ok(()) => done.extend_from_slice(members),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let mut overflow_cleaned = false;
    if snap.overflowed && waiting == 0 && failure.is_none() {
        match unlink_kinds(l2, &snap, namespace).await {
            Ok(()) => overflow_cleaned = true,
            Err(e) => failure = Some(e),
        }
    }
    let cleaned = snap.only(&done, overflow_cleaned);
    dirty.forget(&cleaned);
    if let Some(bp) = backplane {
        for key in &cleaned.keys {
            bp.publish(
                key,
                Item::Evict {
                    key: key.to_string(),
                },
            );
        }
    }
    if !cleaned.keys.is_empty() || overflow_cleaned {
        metrics::counter!("mdcache_recovery_replayed_keys_total")
            .increment(cleaned.keys.len() as u64);
        tracing::info!(
            keys = cleaned.keys.len(),
            waiting,
            overflowed = overflow_cleaned,
            "dirty log replayed"
        );
    }
    match failure {
        // Debug, not warn: while Redis is down this retries every 100 ms.
        Some(e) => {
            tracing::debug!(error = %e, "dirty log replay failed; will retry");
            Err(e)
        }
        None => Ok(()),
    }
}

/// `UNLINK` of the snapshot's keys at `members`, in batches.
async fn unlink_all(l2: &L2Tier, snap: &DirtySnapshot, members: &[usize]) -> Result<()> {
    for chunk in members.chunks(UNLINK_BATCH) {
        let keys: Vec<&str> = chunk.iter().map(|&i| snap.keys[i].as_ref()).collect();
        l2.recovery_unlink(&keys).await?;
    }
    Ok(())
}

/// Every key of the snapshot's kinds, after an overflow.
async fn unlink_kinds(l2: &L2Tier, snap: &DirtySnapshot, namespace: &str) -> Result<()> {
    for kind in &snap.kinds {
        l2.recovery_unlink_matching(&format!("{namespace}:{kind}:*"))
            .await?;
    }
    Ok(())
}
