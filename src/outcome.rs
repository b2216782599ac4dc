//! What reads and writes return and take: `Tier`, `Read` (a value with its provenance), `WriteOutcome`, `KeyTtl`, `SetOptions`.

use std::sync::Arc;
use std::time::Duration;

/// Where a read was served from (DESIGN §4 rule 6).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The in-process tier.
    L1,
    /// Redis.
    L2,
    /// The source of record (database), after a miss in every tier.
    Source,
    /// A value past its TTL, served only by the fail-safe path and always marked so.
    Stale,
}

impl Tier {
    /// `l1`, `l2`, `source` or `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
            Tier::Source => "source",
            Tier::Stale => "stale",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value with its provenance: where it came from, its version and how old it is.
#[non_exhaustive]
#[derive(Debug)]
pub struct Read<V> {
    /// The value, shared with the tier it came from.
    pub value: Arc<V>,
    /// The version it was written with.
    pub version: u64,
    /// The tier that served it.
    pub tier: Tier,
    /// Time since it was written, as far as this process can tell: exact for values written
    /// here; for values from Redis, the TTL the writer recorded in the envelope minus the
    /// remaining TTL, both on Redis's clock (for envelopes of format 1, which record no TTL,
    /// the kind's TTL stands in).
    pub age: Duration,
    /// Time left before it expires; `None` when the Redis key has no expiry.
    pub ttl_remaining: Option<Duration>,
}

impl<V> Clone for Read<V> {
    fn clone(&self) -> Self {
        Read {
            value: Arc::clone(&self.value),
            version: self.version,
            tier: self.tier,
            age: self.age,
            ttl_remaining: self.ttl_remaining,
        }
    }
}

/// What a write did.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The value is now cached.
    Applied,
    /// A higher version was already cached; nothing changed (DESIGN §4 rule 2).
    Superseded,
    /// The Redis write failed (an error, a timeout, or the circuit breaker open, in which case
    /// Redis was not contacted at all). The value is in this process's L1 only (under the
    /// version rule, with the deadline a successful write would have had) and the key is in
    /// the [dirty log](crate::Cache::dirty_log), so Redis's copy is distrusted by this cache until
    /// recovery deletes it. Other processes do not see the value, and it dies with this one.
    ///
    /// Returned only by the cache-only writes ([`Cache::set`](crate::Cache::set), [`Cache::set_book`](crate::Cache::set_book) and their
    /// `_with` forms) of a cache with an L1 (the layered backend); see [`Cache::set`](crate::Cache::set).
    LocalOnly,
    /// A market-data write (a kind the conflating writer handles, DESIGN §4 rule 8): the
    /// value is in this process's L1 now and queued for Redis, where the writer puts it (or a
    /// higher version of the key) within about the flush interval, through the same versioned
    /// compare-and-set. Other processes see it once it is there.
    /// [`Cache::flush`](crate::Cache::flush) waits until it is.
    Queued,
}

/// A key's remaining lifetime.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTtl {
    /// The key is not cached.
    Missing,
    /// The key exists without an expiry (written by something other than mdcache).
    Persistent,
    /// The key expires after this long.
    Expires(Duration),
}

/// Options for one write.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// TTL for this write instead of the key's (kind's) TTL.
    pub ttl: Option<Duration>,
}

impl SetOptions {
    /// Options with a TTL override.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}
