//! `Shards`: a Redis Cluster's shards as the cache sees them — which primary serves each hash slot (`SlotMap`), and one guard, with its own breaker, per shard, so a failed primary opens the breaker for its own keys only (DESIGN §5 "Cluster").
//!
//! A shard is named by the lowest slot it serves. That name survives a failover (the
//! promoted replica serves the same slots), so a shard's breaker, counts and metrics carry
//! over; a resharding that changes a shard's lowest slot makes a new one. Until the cluster
//! has been asked (`CLUSTER SLOTS`), every slot belongs to one shard named `0`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::Value;

use crate::key::key_slot;
use crate::resilience::{BreakerConfig, Guard, RetryConfig, ShardBreaker};

/// Hash slots of a Redis Cluster.
pub(crate) const SLOTS: usize = 16_384;

/// No primary serves the slot (as far as `CLUSTER SLOTS` said).
pub(crate) const NO_NODE: u16 = u16::MAX;

/// Which primary serves each of the 16384 slots: an index into `nodes`, or [`NO_NODE`].
#[derive(Debug)]
pub(crate) struct SlotMap {
    pub(crate) owner: Vec<u16>,
    pub(crate) nodes: Vec<(String, u16)>,
}

impl SlotMap {
    /// From a `CLUSTER SLOTS` reply: each range is `[start, end, [host, port, id, …],
    /// replicas…]`. Malformed ranges are skipped (their slots have no node).
    pub(crate) fn of(reply: Value) -> SlotMap {
        let mut map = SlotMap {
            owner: vec![NO_NODE; SLOTS],
            nodes: Vec::new(),
        };
        let Value::Array(ranges) = reply else {
            return map;
        };
        for range in ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let host = match node.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let Some(Ok(port)) = node.get(1).map(|p| match p {
                Value::Int(p) => u16::try_from(*p).map_err(|_| ()),
                _ => Err(()),
            }) else {
                continue;
            };
            let (Ok(start), Ok(end)) = (usize::try_from(*start), usize::try_from(*end)) else {
                continue;
            };
            if start > end || end >= SLOTS {
                continue;
            }
            let index = match map.nodes.iter().position(|(h, p)| *h == host && *p == port) {
                Some(i) => i,
                None => {
                    map.nodes.push((host, port));
                    map.nodes.len() - 1
                }
            };
            let Ok(index) = u16::try_from(index) else {
                continue;
            };
            map.owner[start..=end].fill(index);
        }
        map
    }
}

/// One shard: the slots one primary serves (or, together, the slots no primary serves).
#[derive(Debug)]
pub(crate) struct Shard {
    /// The lowest slot it serves: its name.
    pub(crate) first_slot: u16,
    /// Admission, deadline, retries and the breaker of the callers' operations on its keys.
    pub(crate) guard: Guard,
    /// Its primary as the cluster last named it.
    primary: Mutex<Option<(String, u16)>>,
    /// Set when the cluster names another primary for it (a failover); taken by the next
    /// probe, which then need not wait out the open period.
    moved: AtomicBool,
}

impl Shard {
    /// Its primary (`host`, `port`), if the cluster was asked.
    pub(crate) fn primary(&self) -> Option<(String, u16)> {
        self.primary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// True (once) when the cluster named a new primary for it since the last call.
    pub(crate) fn take_moved(&self) -> bool {
        self.moved.swap(false, Ordering::AcqRel)
    }

    /// Marks it moved again (a probe of the new primary came too early).
    pub(crate) fn mark_moved(&self) {
        self.moved.store(true, Ordering::Release);
    }

    /// Its figures for reports.
    pub(crate) fn report(&self) -> ShardBreaker {
        ShardBreaker {
            first_slot: self.first_slot,
            primary: self.primary().map(|(h, p)| format!("{h}:{p}")),
            breaker: self.guard.breaker().snapshot(),
        }
    }
}

/// The shards and the slot → shard table, replaced whole when the cluster is asked again.
#[derive(Debug)]
struct Table {
    /// Slot → index into `shards`.
    of_slot: Vec<u16>,
    shards: Vec<Arc<Shard>>,
}

/// A cluster's shards (see the module documentation). Bounded: one entry per slot, one
/// shard per primary named by the cluster (plus one for slots no primary serves).
#[derive(Debug)]
pub(crate) struct Shards {
    breaker: BreakerConfig,
    retry: RetryConfig,
    deadline: Duration,
    table: RwLock<Arc<Table>>,
}

impl Shards {
    /// One shard, `0`, for every slot until [`update`](Self::update).
    pub(crate) fn new(breaker: &BreakerConfig, retry: RetryConfig, deadline: Duration) -> Self {
        let shards = Shards {
            breaker: breaker.clone(),
            retry,
            deadline,
            table: RwLock::new(Arc::new(Table {
                of_slot: Vec::new(),
                shards: Vec::new(),
            })),
        };
        *shards.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Table {
            of_slot: vec![0; SLOTS],
            shards: vec![shards.shard(0, None)],
        });
        shards
    }

    fn shard(&self, first_slot: u16, primary: Option<(String, u16)>) -> Arc<Shard> {
        Arc::new(Shard {
            first_slot,
            guard: Guard::for_shard(
                &self.breaker,
                self.retry.clone(),
                self.deadline,
                first_slot.to_string(),
            ),
            primary: Mutex::new(primary),
            moved: AtomicBool::new(false),
        })
    }

    fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The shard serving `slot`.
    #[inline]
    pub(crate) fn of_slot(&self, slot: u16) -> Arc<Shard> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let i = table.of_slot.get(usize::from(slot)).copied().unwrap_or(0);
        Arc::clone(&table.shards[usize::from(i).min(table.shards.len() - 1)])
    }

    /// The shard serving `key`'s slot.
    #[inline]
    pub(crate) fn of_key(&self, key: &str) -> Arc<Shard> {
        self.of_slot(key_slot(key.as_bytes()))
    }

    /// Every shard.
    pub(crate) fn all(&self) -> Vec<Arc<Shard>> {
        self.table().shards.clone()
    }

    /// Indices of `keys` grouped by shard, each with its shard, in first-seen order.
    pub(crate) fn group<'a>(
        &self,
        keys: impl Iterator<Item = &'a str>,
    ) -> Vec<(Arc<Shard>, Vec<usize>)> {
        let table = self.table();
        let mut groups: Vec<(Arc<Shard>, Vec<usize>)> = Vec::new();
        // Shard index → group index; shards are few.
        let mut at: Vec<Option<usize>> = vec![None; table.shards.len()];
        for (i, key) in keys.enumerate() {
            let s = usize::from(
                table
                    .of_slot
                    .get(usize::from(key_slot(key.as_bytes())))
                    .copied()
                    .unwrap_or(0),
            )
            .min(table.shards.len() - 1);
            let g = *at[s].get_or_insert_with(|| {
                groups.push((Arc::clone(&table.shards[s]), Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        groups
    }

    /// Takes in the cluster's answer: a shard per primary, the existing shards (their
    /// breakers) kept where their lowest slot is unchanged, and a shard whose primary
    /// changed (or was named for the first time) marked moved.
    pub(crate) fn update(&self, map: &SlotMap) {
        if map.nodes.is_empty() {
            // A malformed or empty answer: keep what we knew.
            return;
        }
        let old = self.table();
        // Owner (node index, or NO_NODE) → (lowest slot, new shard index).
        let mut first_of: Vec<(u16, u16)> = Vec::new();
        let mut of_slot = vec![0u16; SLOTS];
        let mut shards: Vec<Arc<Shard>> = Vec::new();
        for (slot, &owner) in map.owner.iter().enumerate().take(SLOTS) {
            let index = match first_of.iter().find(|(o, _)| *o == owner) {
                Some(&(_, i)) => i,
                None => {
                    // Slots are < 16384: they fit a u16.
                    let first = u16::try_from(slot).unwrap_or(u16::MAX);
                    let primary = map.nodes.get(usize::from(owner)).cloned();
                    let shard = match old.shards.iter().find(|s| s.first_slot == first) {
                        Some(s) => {
                            let mut p = s.primary.lock().unwrap_or_else(|p| p.into_inner());
                            // A new primary, or the first one named (the cluster was down
                            // when the cache started): its probe need not wait.
                            if primary.is_some() && *p != primary {
                                s.moved.store(true, Ordering::Release);
                            }
                            *p = primary;
                            Arc::clone(s)
                        }
                        None => self.shard(first, primary),
                    };
                    shards.push(shard);
                    let i = u16::try_from(shards.len() - 1).unwrap_or(u16::MAX);
                    first_of.push((owner, i));
                    i
                }
            };
            of_slot[slot] = index;
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Table { of_slot, shards });
    }

    /// Every shard's figures, by lowest slot.
    pub(crate) fn reports(&self) -> Vec<ShardBreaker> {
        self.table().shards.iter().map(|s| s.report()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::BreakerState;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
        ])
    }

    fn map(ranges: &[(i64, i64, i64)]) -> SlotMap {
        SlotMap::of(Value::Array(
            ranges
                .iter()
                .map(|&(a, b, port)| {
                    Value::Array(vec![Value::Int(a), Value::Int(b), node("127.0.0.1", port)])
                })
                .collect(),
        ))
    }

    fn shards() -> Shards {
        Shards::new(
            &BreakerConfig::default(),
            RetryConfig::default(),
            Duration::from_millis(5),
        )
    }

    #[test]
    fn before_the_cluster_is_asked_every_slot_is_shard_zero() {
        let s = shards();
        assert_eq!(s.all().len(), 1);
        assert_eq!(s.of_slot(16_383).first_slot, 0);
        assert_eq!(s.reports()[0].primary, None);
    }

    #[test]
    fn a_shard_per_primary_named_by_its_lowest_slot() {
        let s = shards();
        // The second primary serves two ranges; slots 12000.. have no primary.
        s.update(&map(&[
            (0, 5460, 7001),
            (5461, 9999, 7002),
            (10000, 11999, 7002),
        ]));
        let names: Vec<u16> = s.all().iter().map(|x| x.first_slot).collect();
        assert_eq!(names, [0, 5461, 12_000]);
        assert_eq!(s.of_slot(11_000).first_slot, 5461);
        assert_eq!(s.of_slot(12_500).first_slot, 12_000);
        assert_eq!(s.of_slot(12_500).primary(), None);
        assert_eq!(s.of_slot(0).primary(), Some(("127.0.0.1".to_owned(), 7001)));
        // Grouping keeps first-seen order and every index.
        let keys = ["a", "b", "c", "d", "e"];
        let groups = s.group(keys.iter().copied());
        let mut seen: Vec<usize> = groups.iter().flat_map(|(_, g)| g.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        for (shard, g) in &groups {
            for &i in g {
                assert_eq!(s.of_key(keys[i]).first_slot, shard.first_slot);
            }
        }
    }

    #[test]
    fn a_failover_keeps_the_shard_and_its_breaker_and_marks_it_moved() {
        let s = shards();
        s.update(&map(&[(0, 8191, 7001), (8192, 16_383, 7002)]));
        // Shard 0 existed before the cluster was asked: its first primary counts as a move.
        assert!(s.of_slot(0).take_moved() && !s.of_slot(9000).take_moved());
        let before = s.of_slot(9000);
        // Open its breaker.
        let b = before.guard.breaker();
        for _ in 0..10 {
            b.failure(std::time::Instant::now());
        }
        assert_eq!(b.state(), BreakerState::Open);
        // The replica on 7005 takes over the second shard's slots.
        s.update(&map(&[(0, 8191, 7001), (8192, 16_383, 7005)]));
        let after = s.of_slot(9000);
        assert!(
            Arc::ptr_eq(&before, &after),
            "the same shard, breaker and all"
        );
        assert_eq!(after.guard.breaker().state(), BreakerState::Open);
        assert!(after.take_moved() && !after.take_moved());
        assert!(!s.of_slot(0).take_moved(), "the other shard did not move");
        // A resharding that changes a lowest slot makes a new shard.
        s.update(&map(&[(0, 4095, 7001), (4096, 16_383, 7005)]));
        assert_eq!(s.of_slot(9000).first_slot, 4096);
        assert_eq!(
            s.of_slot(9000).guard.breaker().state(),
            BreakerState::Closed
        );
    }

    #[test]
    fn a_malformed_answer_changes_nothing() {
        let s = shards();
        s.update(&map(&[(0, 16_383, 7001)]));
        s.update(&SlotMap::of(Value::Nil));
        assert_eq!(s.all().len(), 1);
        assert_eq!(s.all()[0].primary(), Some(("127.0.0.1".to_owned(), 7001)));
    }

    #[test]
    fn the_slot_map_is_read_from_cluster_slots() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"10.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |a: i64, b: i64, primary: i64, replica: i64| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                node(primary),
                node(replica),
            ])
        };
        let reply = Value::Array(vec![
            range(0, 5460, 7000, 7003),
            range(5461, 10922, 7001, 7004),
            range(10923, 12000, 7002, 7005),
            // A primary owning two ranges is one primary.
            range(12001, 16000, 7002, 7005),
            // Garbage is skipped, not fatal: slots 16001.. have no node.
            Value::Int(3),
            Value::Array(vec![Value::Int(16001), Value::Int(16383), node(70_000)]),
            range(16001, 99_999, 7000, 7003),
        ]);
        let map = SlotMap::of(reply);
        let ports: Vec<u16> = map.nodes.iter().map(|(_, p)| *p).collect();
        assert_eq!(ports, vec![7000, 7001, 7002]);
        assert_eq!(
            (
                map.owner[0],
                map.owner[5461],
                map.owner[12001],
                map.owner[16001]
            ),
            (0, 1, 2, NO_NODE)
        );
        let empty = SlotMap::of(Value::Nil);
        assert!(empty.nodes.is_empty() && empty.owner.iter().all(|&o| o == NO_NODE));
    }
}
