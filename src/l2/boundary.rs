//! The L2 boundary: the trait every L2 implementation (one server through a pool today, a cluster next) provides to the engine, and the replies it returns.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::resilience::{CircuitBreaker, ShardBreaker};
use crate::schema::{BookSide, BookSideKind};

/// What the engine and recovery need from an L2, in the engine's terms: keys, envelopes,
/// book sides. Nothing here names a connection, a pool or a script object, so an
/// implementation is free in how it reaches Redis:
///
/// - **Batches are per call** (`get_many`, `set_many`, `unlink`): the implementation sends
///   them as it can — one pipeline on one server, split by hash slot on a cluster.
/// - **Scripts are operations** (`set_versioned`, `unlink_if_equals`, `book_*`): each names
///   what it does; loading, `EVALSHA` and `NOSCRIPT` are the implementation's business.
/// - **Resilience is inside**: every caller's operation is guarded (admission, deadline,
///   retries, breaker bookkeeping — see [`Guard`](crate::resilience::Guard)) and fails fast
///   with [`Error::BreakerOpen`] while the breaker is not closed. The `recovery_*` and
///   `probe_ping` operations bypass the breaker: recovery uses them while callers are kept
///   out.
///
/// Every operation is idempotent (reads, `UNLINK`, versioned writes), so an implementation
/// may retry any of them. TTLs are whole milliseconds, at least 1 ([`ttl_ms`]).
///
/// The engine does not hold a `dyn L2` (see [`L2Tier`](super::L2Tier) for why): the trait is
/// the contract each implementation is checked against.
pub(crate) trait L2: Send + Sync + std::fmt::Debug {
    /// A string key's envelope and remaining TTL, read atomically together.
    async fn get(&self, key: &str) -> Result<Option<Fetched>>;

    /// [`get`](Self::get) of many keys, in their order.
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Fetched>>>;

    /// Stores `envelope` at `key` for `ttl` unless the stored envelope carries a higher
    /// version (DESIGN §4 rule 2). True when stored, false when superseded.
    async fn set_versioned(&self, key: &str, envelope: &[u8], ttl: Duration) -> Result<bool>;

    /// [`set_versioned`](Self::set_versioned) of many keys (key, envelope, TTL), in their
    /// order.
    async fn set_many(&self, items: &[(&str, Vec<u8>, Duration)]) -> Result<Vec<bool>>;

    /// Many versioned writes of values and book sides, mixed, sent together (one pipeline on
    /// one server): the market-data writer's flush. One reply per item, in order; an item
    /// Redis refuses (a key holding another type) is [`PutReply::Refused`] without failing
    /// the others. Expiries are absolute (a write queued for a while expires when it would
    /// have, had it been written at once; it relies on this host's clock and Redis's agreeing,
    /// as NTP or PTP keeps them). One guarded operation: one breaker outcome for the whole batch, under
    /// the deadline `within` (a batch's duration grows with its size; no caller waits on it).
    async fn put_many(&self, items: &[Put<'_>], within: Duration) -> Result<Vec<PutReply>>;

    /// Deletes the keys (non-blocking on the server); how many existed.
    async fn unlink(&self, keys: &[&str]) -> Result<u64>;

    /// Deletes `key` only while it holds exactly `bytes` (a string key; any other type is
    /// left alone). True when deleted.
    async fn unlink_if_equals(&self, key: &str, bytes: &[u8]) -> Result<bool>;

    /// Remaining TTL: `None` when the key does not exist, `Some(None)` when it has no expiry.
    async fn pttl(&self, key: &str) -> Result<Option<Option<Duration>>>;

    /// `PING`, guarded like a caller's operation.
    async fn ping(&self) -> Result<()>;

    /// Replaces a book side with `side`'s levels at `version`, expiring after `ttl`, unless
    /// a higher version is stored. True when stored.
    async fn book_replace(
        &self,
        key: &str,
        side: &BookSide,
        version: u64,
        ttl: Duration,
    ) -> Result<bool>;

    /// The best `depth` levels of a side (all when 0, or more than any side holds).
    async fn book_top(&self, key: &str, side: BookSideKind, depth: usize) -> Result<TopReply>;

    /// Deletes a side (and its stamp) unless its stamp changed since it was read as `stamp`.
    /// True when deleted.
    async fn book_unlink_if_stamp(&self, key: &str, stamp: &[u8]) -> Result<bool>;

    /// The breaker guarding the callers' operations (on a cluster, those that span it; each
    /// shard has its own).
    fn breaker(&self) -> &CircuitBreaker;

    /// Probes the shards whose breaker is open (a cluster's; nothing on one server), each
    /// once its open period is over — or at once when the cluster names a new primary for
    /// it. Recovery calls it every round. True when a shard's breaker closed.
    async fn probe_shards(&self) -> bool;

    /// Every shard's breaker: a cluster's, by lowest slot; empty on one server.
    fn shard_breakers(&self) -> Vec<ShardBreaker>;

    /// Which group a dirty key is replayed with (its shard; one group on one server), or
    /// `None` while its shard's breaker is not closed: its replay waits, and the other
    /// shards' keys are not held up by it.
    fn replay_group(&self, key: &str) -> Option<u16>;

    /// The breaker's probe: one `PING`, bypassing the breaker. Getting a connection may take
    /// the probe deadline; the answer must come within the callers' operation deadline (a
    /// Redis too slow for callers is not healthy yet). Retries are the caller's decision.
    async fn probe_ping(&self) -> Result<()>;

    /// Forgets every connection open now, so the next operations use fresh ones (after an
    /// outage, pooled sockets are only found dead when used).
    fn reset_connections(&self);

    /// `UNLINK` for recovery, bypassing the breaker, under the probe deadline.
    async fn recovery_unlink(&self, keys: &[&str]) -> Result<u64>;

    /// Deletes every key matching `pattern` (`SCAN` + `UNLINK`, never `KEYS`; on every
    /// primary of a cluster), bypassing the breaker, each step under the probe deadline.
    async fn recovery_unlink_matching(&self, pattern: &str) -> Result<()> {
        let mut at = ScanPos::default();
        loop {
            let (keys, next) = self.scan_step(at, pattern, SCAN_COUNT).await?;
            if !keys.is_empty() {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                self.recovery_unlink(&keys).await?;
            }
            match next {
                Some(n) => at = n,
                None => return Ok(()),
            }
        }
    }

    /// One `SCAN … MATCH pattern COUNT count` step from `at` for an operator (admin),
    /// bypassing the breaker, under the probe deadline: the keys found and where the next
    /// step starts (`None` when the scan is over). On a cluster the position walks the
    /// primaries in turn.
    async fn scan_step(
        &self,
        at: ScanPos,
        pattern: &str,
        count: u32,
    ) -> Result<(Vec<String>, Option<ScanPos>)>;

    /// `INFO section` of every primary (on one server, of it), bypassing the breaker, each
    /// under the probe deadline: each node (`host:port`, or `server`) and its reply.
    async fn info(&self, section: &str) -> Result<Vec<(String, String)>>;
}

/// Where a paged `SCAN` stands ([`L2::scan_step`]): the node (an index into a cluster's
/// primaries, by lowest slot; 0 on one server) and that node's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ScanPos {
    pub(crate) node: u16,
    pub(crate) cursor: u64,
}

/// Keys per `SCAN` step of recovery (a hint to Redis, not a bound).
pub(crate) const SCAN_COUNT: u32 = 1000;

/// One write of a batch ([`L2::put_many`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Put<'a> {
    /// [`L2::set_versioned`] of an envelope, expiring at `expire_at_ms` (Unix time in ms;
    /// the envelope carries the TTL it was written with).
    Value {
        key: &'a str,
        envelope: &'a [u8],
        expire_at_ms: u64,
    },
    /// [`L2::book_replace`] of a whole side, sorted best first: the stamp carries
    /// `written_ttl` (readers age the side by it), the keys expire at `expire_at_ms`.
    Book {
        key: &'a str,
        side: &'a BookSide,
        version: u64,
        written_ttl: Duration,
        expire_at_ms: u64,
    },
}

/// What became of one write of a batch.
#[derive(Debug)]
pub(crate) enum PutReply {
    /// Stored.
    Stored,
    /// Refused: Redis holds a higher version.
    Superseded,
    /// Refused by Redis for this key alone (e.g. [`Error::WrongType`]).
    Refused(Error),
    /// Not confirmed: the part of the batch it went to failed (a cluster's primary that did
    /// not answer while the others did). It may or may not have landed, like every write of
    /// a failed batch.
    Failed(Error),
}

/// What a successful L2 read of a string key returns: the envelope and its remaining TTL.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) bytes: Vec<u8>,
    /// Remaining TTL reported by `PTTL`; `None` when the key has no expiry.
    pub(crate) remaining: Option<Duration>,
}

/// A side read back from L2.
#[derive(Debug)]
pub(crate) struct FetchedBook {
    pub(crate) version: u64,
    /// The TTL its writer gave it; `None` for a stamp of an earlier build.
    pub(crate) written_ttl: Option<Duration>,
    pub(crate) remaining: Option<Duration>,
    pub(crate) side: BookSide,
    /// [`stored_bytes`](super::book::stored_bytes) of `side`, from the members' lengths as
    /// read (no formatting again).
    pub(crate) bytes: usize,
}

/// What a top-N read found.
#[derive(Debug)]
pub(crate) enum TopReply {
    /// No stamp, or a stamp whose sorted set is gone or incomplete: not cached.
    Missing,
    /// A whole side (cut to the depth asked).
    Found(FetchedBook),
    /// The stamp or a member did not decode. `stamp` is the stamp read with them, for
    /// [`L2::book_unlink_if_stamp`].
    Undecodable { stamp: Vec<u8>, error: Error },
}

/// A Redis TTL argument in whole milliseconds, at least 1 (`PX 0` is an error).
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
