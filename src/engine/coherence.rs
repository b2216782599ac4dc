//! The engine's side of the backplane (DESIGN §4 rule 5): the updates its writes publish, and how another instance's update lands in L1.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::writer::{Payload, unix_ms_after};
use super::{Books, Engine, Layout, Values};
use crate::backplane::Receiver;
use crate::backplane::wire::Item;
use crate::book::BookSide;
use crate::clock::{Instant, deadline_after};
use crate::codec;
use crate::key::{BookSchema, KeySchema, ValueSchema};
use crate::l1::InsertOutcome;
use crate::l2::ttl_ms;
use crate::schema::{BookAsk, BookBid, Price};

impl Engine {
    /// Distrusts everything L1 holds now (the backplane may have missed updates).
    pub(crate) fn bump_l1_epoch(&self) {
        if let Some(l1) = &self.l1 {
            l1.bump_epoch();
        }
    }

    /// The update a queued market-data write publishes (the value itself), if the backplane
    /// runs; built before the payload goes to the writer.
    pub(super) fn value_update(
        &self,
        key: &Arc<str>,
        payload: &Payload,
        version: u64,
        ttl: Duration,
    ) -> Option<Item> {
        self.backplane.as_ref()?;
        let expire_at_ms = unix_ms_after(ttl);
        Some(match payload {
            Payload::Value(bytes) => Item::Value {
                key: key.to_string(),
                version,
                envelope: bytes.clone(),
                expire_at_ms,
            },
            Payload::Book(side) => Item::Book {
                key: key.to_string(),
                version,
                levels: side.levels.clone(),
                ttl_ms: ttl_ms(ttl),
                expire_at_ms,
            },
        })
    }

    /// Publishes `item` about `key`, if the backplane runs.
    pub(super) fn publish(&self, key: &Arc<str>, item: Option<Item>) {
        if let (Some(bp), Some(item)) = (&self.backplane, item) {
            bp.publish(key, item);
        }
    }

    /// Publishes that `version` of `key` was written synchronously: other instances drop
    /// older copies.
    pub(super) fn publish_written(&self, key: &Arc<str>, version: u64) {
        if let Some(bp) = &self.backplane {
            bp.publish(
                key,
                Item::Invalidate {
                    key: key.to_string(),
                    version,
                },
            );
        }
    }

    /// Publishes that `key` was deleted: other instances drop any copy.
    pub(crate) fn publish_deleted(&self, key: &Arc<str>) {
        if let Some(bp) = &self.backplane {
            bp.publish(
                key,
                Item::Evict {
                    key: key.to_string(),
                },
            );
        }
    }

    /// Applies another instance's update to L1, never reading Redis. A value lands under the
    /// version rule with its remaining life (from its absolute expiry); a value of a kind this
    /// build cannot decode, or one already expired, acts as an invalidation. Returns whether
    /// L1 changed.
    pub(crate) fn apply_backplane(&self, item: Item) -> bool {
        let Some(l1) = &self.l1 else {
            return false;
        };
        match item {
            Item::Evict { key } => {
                let held = l1.deadline(&key).is_some();
                l1.remove(&key);
                held
            }
            Item::Invalidate { key, version } => self.invalidate(&key, version),
            Item::Value {
                key,
                version,
                envelope,
                expire_at_ms,
            } => self.apply_value(&key, version, Payload::Value(envelope), expire_at_ms, None),
            Item::Book {
                key,
                version,
                levels,
                ttl_ms,
                expire_at_ms,
            } => {
                let payload = Payload::Book(Arc::new(BookSide { levels }));
                let ttl = Some(Duration::from_millis(ttl_ms)).filter(|t| !t.is_zero());
                self.apply_value(&key, version, payload, expire_at_ms, ttl)
            }
        }
    }

    /// Drops L1 copies of `key` older than `version` (values, negative entries, floors).
    fn invalidate(&self, key: &str, version: u64) -> bool {
        let Some(l1) = &self.l1 else {
            return false;
        };
        let older = l1.live_version(key).is_some_and(|held| held < version);
        l1.remove_older_than(key, version);
        older
    }

    /// `written_ttl`: the TTL the writer gave the value, when the payload does not carry it
    /// (a value's envelope does), so a receiver reports the value's real age.
    fn apply_value(
        &self,
        key: &str,
        version: u64,
        payload: Payload,
        expire_at_ms: u64,
        written_ttl: Option<Duration>,
    ) -> bool {
        // A newer version held, or the same one trusted, is kept: the insert decides under
        // the key's lock (`L1::insert_received`), with no look-up before it.
        // The monotonic clock is read before the wall clock: time that passes between the two
        // reads (a preempted thread) then shortens the value's life in L1 instead of
        // stretching it past its expiry, as reading it after did (DESIGN §4 rule 1; the
        // soak under CPU contention caught an engine serving a tick 370 µs past its TTL).
        let now = self.clock.now();
        let remaining = Duration::from_millis(expire_at_ms.saturating_sub(unix_ms()));
        let life = Life { now, remaining };
        let apply = if remaining.is_zero() {
            None
        } else {
            self.applier(key)
        };
        match apply {
            Some(apply) => {
                apply(self, key, payload, version, life, written_ttl) == InsertOutcome::Stored
            }
            None => self.invalidate(key, version),
        }
    }

    /// The typed L1 insert for the kind of `key`: the built-in market-data kinds.
    fn applier(&self, key: &str) -> Option<ApplyFn> {
        let rest = key
            .strip_prefix(self.config.namespace.as_str())?
            .strip_prefix(':')?;
        if rest.starts_with("price:{") {
            Some(apply_value::<Price>)
        } else if rest.starts_with("book:{") && rest.ends_with("}:bid") {
            Some(apply_book::<BookBid>)
        } else if rest.starts_with("book:{") && rest.ends_with("}:ask") {
            Some(apply_book::<BookAsk>)
        } else {
            None
        }
    }
}

impl Receiver for Engine {
    fn apply(&self, item: Item) -> bool {
        self.apply_backplane(item)
    }

    fn bump_epoch(&self) {
        self.bump_l1_epoch();
    }
}

/// Stores a received value in L1 (see [`Engine::apply_backplane`]).
type ApplyFn = fn(&Engine, &str, Payload, u64, Life, Option<Duration>) -> InsertOutcome;

/// A received value's remaining life, and the instant it counts from (read before the wall
/// clock that measured it).
#[derive(Debug, Clone, Copy)]
struct Life {
    now: Instant,
    remaining: Duration,
}

fn apply_value<S: ValueSchema>(
    engine: &Engine,
    key: &str,
    payload: Payload,
    version: u64,
    life: Life,
    _written_ttl: Option<Duration>,
) -> InsertOutcome {
    let Payload::Value(bytes) = payload else {
        return InsertOutcome::NotStored;
    };
    if bytes.len() > engine.config.max_value_bytes.get() {
        return InsertOutcome::NotStored;
    }
    let Ok(env) = codec::decode_envelope::<S::Value>(&bytes) else {
        return InsertOutcome::NotStored;
    };
    if env.version != version {
        return InsertOutcome::NotStored;
    }
    insert::<S, Values>(engine, key, Arc::new(env.value), version, life, env.ttl)
}

fn apply_book<S: BookSchema>(
    engine: &Engine,
    key: &str,
    payload: Payload,
    version: u64,
    life: Life,
    written_ttl: Option<Duration>,
) -> InsertOutcome {
    let Payload::Book(side) = payload else {
        return InsertOutcome::NotStored;
    };
    // A side from the wire is checked (finite prices and quantities, no price twice, its
    // estimated size within the value limit) and sorted like one from a caller.
    if crate::l2::book::estimated_bytes(&side) > engine.config.max_value_bytes.get()
        || crate::book::validate(&side).is_err()
    {
        return InsertOutcome::NotStored;
    }
    let side = <Books as Layout<S>>::normalise(Arc::unwrap_or_clone(side));
    insert::<S, Books>(engine, key, Arc::new(side), version, life, written_ttl)
}

fn insert<S: KeySchema, L: Layout<S>>(
    engine: &Engine,
    key: &str,
    value: Arc<S::Value>,
    version: u64,
    life: Life,
    written_ttl: Option<Duration>,
) -> InsertOutcome {
    let Life { now, remaining } = life;
    let Some(l1) = &engine.l1 else {
        return InsertOutcome::NotStored;
    };
    // Age counts from the write: the TTL the writer gave it, else the kind's here.
    let ttl = written_ttl
        .unwrap_or_else(|| {
            engine
                .config
                .ttl_for(S::KIND, S::KEY_PREFIX, S::DEFAULT_TTL)
        })
        .max(remaining);
    let written = now.checked_sub(ttl - remaining).unwrap_or(now);
    let (entry, bytes) = L::entry(value);
    l1.insert_received(
        &Arc::from(key),
        entry,
        version,
        deadline_after(now, remaining),
        written,
        bytes,
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
