//! `--verify`: after the run, checks the correctness figures against the source of record — acknowledged writes present, Redis values equal to the source's, nothing served past its TTL.
//!
//! Which keys: every symbol's position and every order the run acknowledged (write-through:
//! the source is their record), and the seeded risk account. Prices and books are not
//! compared with the source: the feed writes them to the cache only, so the source holds just
//! the seeded snapshot and a cached tick is *meant* to differ from it. Instead, every price
//! Redis holds at a version the feed wrote is compared with the feed's last write of it: the
//! conflating writer keeps the latest version per key, so once the run's queued writes are
//! flushed (the caller flushes before verifying) Redis holds that version or none of the
//! feed's (expired; a reader's miss may since have filled in the seeded snapshot from the
//! source), never an older one (DESIGN §4 rule 8). Books go through the same writer and are
//! not read again.
//!
//! How: once the cache has recovered (breaker closed, dirty log empty), L1 is cleared so each
//! read comes from Redis, and each key's cached version is compared with the source's (or
//! the feed's).

use std::sync::Arc;
use std::time::Duration;

use mdcache::{Cache, Key, Load, Loaded, Order, SourceReader, ValueSchema};
use serde::Serialize;

use super::record::Acked;
use super::workload::Keys;
use crate::output::Failure;

/// Tries per Redis read (a deadline missed on a busy machine is not a finding).
const READ_TRIES: u32 = 3;
/// Keys per source round trip.
const BATCH: usize = 256;

/// The checks' figures (the `verify` object of the report).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Verification {
    /// The breaker closed and the dirty log emptied within the 30 s limit.
    pub(crate) recovered: bool,
    /// How long that took after the tasks stopped.
    pub(crate) recovery_ms: Option<f64>,
    /// Write-through keys with an acknowledged write (positions and orders).
    pub(crate) acked_keys: u64,
    /// Of those, keys whose source version is below the highest acknowledged one (or that
    /// the source does not have). Must be 0.
    pub(crate) lost_acked_writes: u64,
    /// Keys found in Redis and compared with the source (positions, orders, risk).
    pub(crate) l2_compared: u64,
    /// Of those, keys whose Redis version differs from the source's. Must be 0.
    pub(crate) l2_differs_from_source: u64,
    /// Keys that could not be read from Redis in 3 tries (not compared). Must be 0.
    pub(crate) l2_unreadable: u64,
    /// Prices found in Redis at a version the feed wrote (not expired, not a source fill of
    /// the seeded snapshot) and compared with the feed's last write of them.
    pub(crate) prices_compared: u64,
    /// Of those, prices Redis held at an older version than the feed's last write: a write
    /// the conflating writer lost. Must be 0.
    pub(crate) prices_behind_feed: u64,
    /// Reads served past their TTL without being marked stale, whole run. Must be 0.
    pub(crate) reads_past_ttl: u64,
    /// Every check passed.
    pub(crate) passed: bool,
}

impl Verification {
    /// The failed checks, one phrase each (empty when every check passed).
    pub(crate) fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.recovered {
            out.push(
                "the breaker did not close (or the dirty log did not empty) within 30 s".into(),
            );
        }
        if self.lost_acked_writes > 0 {
            out.push(format!(
                "{} acknowledged writes missing from the source",
                self.lost_acked_writes
            ));
        }
        if self.l2_differs_from_source > 0 {
            out.push(format!(
                "{} Redis values differ from the source",
                self.l2_differs_from_source
            ));
        }
        if self.prices_behind_feed > 0 {
            out.push(format!(
                "{} prices in Redis older than the feed's last write",
                self.prices_behind_feed
            ));
        }
        if self.l2_unreadable > 0 {
            out.push(format!(
                "{} keys could not be read from Redis",
                self.l2_unreadable
            ));
        }
        if self.reads_past_ttl > 0 {
            out.push(format!(
                "{} reads served past their TTL",
                self.reads_past_ttl
            ));
        }
        out
    }
}

/// Runs the checks. `recovery` is what [`settle`](super::fault::settle) measured; `fed` is,
/// per symbol, the version of the feed's last price write (`None`: never written). The
/// source failing is an error (the checks cannot be made), a finding is not.
pub(crate) async fn verify<Src: SourceReader>(
    cache: &Cache,
    source: &Arc<Src>,
    keys: &Keys,
    checks: Checks<'_>,
    recovery: Option<Duration>,
) -> Result<Verification, Failure> {
    let Checks {
        acked,
        fed,
        seeded_up_to,
        reads_past_ttl,
    } = checks;
    let mut v = Verification {
        recovered: recovery.is_some(),
        recovery_ms: recovery.map(|d| d.as_secs_f64() * 1_000.0),
        acked_keys: acked.len() as u64,
        reads_past_ttl,
        ..Verification::default()
    };
    cache.clear_l1();
    // Prices first: they expire within 100 ms of the feed's last write.
    check_prices(cache, keys, fed, seeded_up_to, &mut v).await;

    let positions: Vec<(Key<mdcache::Position>, Option<u64>)> = keys
        .symbols
        .iter()
        .enumerate()
        .map(|(i, k)| (k.pos.clone(), acked.positions.get(&i).copied()))
        .collect();
    check(cache, source.as_ref(), &positions, &mut v).await?;

    let mut orders = Vec::with_capacity(acked.orders.len());
    for (id, &version) in &acked.orders {
        let key = cache
            .key::<Order>(id)
            .map_err(|e| Failure::unavailable(format!("order id {id:?}: {e}")))?;
        orders.push((key, Some(version)));
    }
    check(cache, source.as_ref(), &orders, &mut v).await?;

    check(cache, source.as_ref(), &[(keys.risk.clone(), None)], &mut v).await?;
    v.passed = v.failures().is_empty();
    Ok(v)
}

/// What the run hands over to check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checks<'a> {
    /// The write-through writes the source acknowledged.
    pub(crate) acked: &'a Acked,
    /// Per symbol, the version of the feed's last price write (`None`: never written).
    pub(crate) fed: &'a [Option<u64>],
    /// The highest version of the seeded snapshot: the feed's versions are above it.
    pub(crate) seeded_up_to: u64,
    /// Reads served past their TTL without being marked stale, whole run.
    pub(crate) reads_past_ttl: u64,
}

/// Compares every price Redis holds at a version the feed wrote (above `seeded_up_to`) with
/// the feed's last write of it, in batches of one round trip.
async fn check_prices(
    cache: &Cache,
    keys: &Keys,
    fed: &[Option<u64>],
    seeded_up_to: u64,
    v: &mut Verification,
) {
    let written: Vec<(&mdcache::Key<mdcache::Price>, u64)> = keys
        .symbols
        .iter()
        .zip(fed)
        .filter_map(|(k, f)| f.map(|version| (&k.price, version)))
        .collect();
    for chunk in written.chunks(BATCH) {
        let batch: Vec<mdcache::Key<mdcache::Price>> =
            chunk.iter().map(|(k, _)| (*k).clone()).collect();
        let mut tries = 0;
        let reads = loop {
            tries += 1;
            match cache.get_many(&batch).await {
                Ok(reads) => break Some(reads),
                Err(_) if tries < READ_TRIES => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read prices from Redis");
                    break None;
                }
            }
        };
        let Some(reads) = reads else {
            v.l2_unreadable += chunk.len() as u64;
            continue;
        };
        for ((key, last), read) in chunk.iter().zip(reads) {
            // Absent (expired), or the seeded snapshot a reader's miss filled in since.
            let Some(read) = read.filter(|r| r.version > seeded_up_to) else {
                continue;
            };
            v.prices_compared += 1;
            if read.version < *last {
                v.prices_behind_feed += 1;
                tracing::warn!(
                    key = key.as_str(),
                    cached = read.version,
                    fed = last,
                    "Redis holds an older price than the feed's last write"
                );
            }
        }
    }
}

/// Checks `keys` (each with its highest acknowledged version, if any) in batches.
async fn check<S: ValueSchema, Src: Load<S>>(
    cache: &Cache,
    source: &Src,
    keys: &[(Key<S>, Option<u64>)],
    v: &mut Verification,
) -> Result<(), Failure> {
    for chunk in keys.chunks(BATCH) {
        let just_keys: Vec<Key<S>> = chunk.iter().map(|(k, _)| k.clone()).collect();
        let loaded: Vec<Option<Loaded<S::Value>>> = source
            .load_many(&just_keys)
            .await
            .map_err(|e| Failure::unavailable(format!("--verify: the source failed: {e}")))?;
        for ((key, acked), row) in chunk.iter().zip(loaded) {
            let source_version = row.map(|r| r.version);
            if let Some(acked) = acked
                && source_version.is_none_or(|s| s < *acked)
            {
                v.lost_acked_writes += 1;
            }
            match cached_version(cache, key).await {
                Ok(None) => {}
                Ok(Some(cached)) => {
                    v.l2_compared += 1;
                    if Some(cached) != source_version {
                        v.l2_differs_from_source += 1;
                        tracing::warn!(
                            key = key.as_str(),
                            cached,
                            ?source_version,
                            "Redis holds a version the source does not"
                        );
                    }
                }
                Err(e) => {
                    v.l2_unreadable += 1;
                    tracing::warn!(key = key.as_str(), error = %e, "cannot read the key from Redis");
                }
            }
        }
    }
    Ok(())
}

/// The version Redis holds for `key` (L1 was cleared, and a read never fills it from
/// anywhere but Redis), retrying a failed read.
async fn cached_version<S: ValueSchema>(
    cache: &Cache,
    key: &Key<S>,
) -> mdcache::Result<Option<u64>> {
    let mut tries = 0;
    loop {
        tries += 1;
        match cache.read(key).await {
            Ok(r) => return Ok(r.map(|r| r.version)),
            Err(e) if tries >= READ_TRIES => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdcache::{MemorySource, Position, Store};

    fn position(qty: f64) -> Position {
        Position {
            qty,
            avg_price: 1.0,
            realized_pnl: 0.0,
            seq: 1,
        }
    }

    #[tokio::test]
    async fn a_lost_acknowledged_write_is_found() {
        let cache = Cache::builder().build().unwrap();
        let keys = Keys::new(&cache, 2).unwrap();
        let source = Arc::new(MemorySource::default());
        let v1 = source
            .write(&keys.symbols[0].pos, &position(1.0))
            .await
            .unwrap();
        source.write(&keys.risk, &risk()).await.unwrap();
        let mut acked = Acked::default();
        acked.position(0, v1);
        let ok = verify(&cache, &source, &keys, checks(&acked), Some(Duration::ZERO))
            .await
            .unwrap();
        assert!(ok.passed, "{ok:?}");
        assert_eq!((ok.acked_keys, ok.lost_acked_writes), (1, 0));

        // Acknowledged a version the source never got, and an order it does not have.
        acked.position(0, v1 + 5);
        acked.order("O1-0-1", 3);
        let bad = verify(
            &cache,
            &source,
            &keys,
            Checks {
                reads_past_ttl: 2,
                ..checks(&acked)
            },
            None,
        )
        .await
        .unwrap();
        assert_eq!(bad.lost_acked_writes, 2);
        assert!(!bad.passed);
        assert_eq!(bad.failures().len(), 3, "{:?}", bad.failures());
    }

    fn checks(acked: &Acked) -> Checks<'_> {
        Checks {
            acked,
            fed: &[],
            seeded_up_to: 0,
            reads_past_ttl: 0,
        }
    }

    fn risk() -> mdcache::Risk {
        mdcache::Risk {
            equity: 1.0,
            margin_used: 0.0,
            exposure: 0.0,
            max_exposure: 1.0,
            max_daily_loss: 1.0,
            seq: 1,
        }
    }
}
