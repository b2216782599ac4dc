//! `L2Tier`: the L2 the engine holds — one implementation of the `L2` boundary, chosen at build time, dispatched by a match.

use std::time::Duration;

use super::boundary::{Fetched, L2, Put, PutReply, ScanPos, TopReply};
use super::cluster::{ClusterOptions, ClusterTier};
use super::redis::{RedisOptions, RedisTier};
use crate::error::Result;
use crate::resilience::{BreakerSnapshot, BreakerState, CircuitBreaker, ShardBreaker};
use crate::schema::{BookSide, BookSideKind};

/// The engine's L2: an enum over the implementations of [`L2`], not a `dyn L2` nor a type
/// parameter, because:
///
/// - `dyn L2` cannot hold `async fn`s without boxing every future: an allocation and a
///   virtual call on every L2 read, the hot path `benches/l2_get.rs` holds to ~1.08× raw
///   redis-rs;
/// - `Engine<L: L2>` would put a type parameter on the engine, the `Cache` facade, the
///   patterns and the public API, for a choice made once from configuration;
/// - a match on a one-byte tag is free while there is one variant and a predictable branch
///   with two, and each arm's future stays inline in the caller's (the enum of futures is as
///   large as the largest, no larger).
///
/// An implementation is one variant, its `impl L2`, and one arm per method here.
#[derive(Debug)]
pub(crate) enum L2Tier {
    /// One Redis (or Valkey) server through a bb8 pool of multiplexed connections.
    Redis(RedisTier),
    /// A Redis Cluster through one redis-rs cluster connection.
    Cluster(ClusterTier),
}

impl L2Tier {
    /// The L2 on one server; see [`RedisTier::new`].
    pub(crate) fn redis(opts: RedisOptions) -> Result<Self> {
        RedisTier::new(opts).map(L2Tier::Redis)
    }

    /// The L2 on a cluster; see [`ClusterTier::new`].
    pub(crate) fn cluster(opts: ClusterOptions) -> Result<Self> {
        ClusterTier::new(opts).map(L2Tier::Cluster)
    }

    /// See [`L2::get`].
    #[inline]
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Fetched>> {
        match self {
            L2Tier::Redis(t) => t.get(key).await,
            L2Tier::Cluster(t) => t.get(key).await,
        }
    }

    /// See [`L2::get_many`].
    pub(crate) async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Fetched>>> {
        match self {
            L2Tier::Redis(t) => t.get_many(keys).await,
            L2Tier::Cluster(t) => t.get_many(keys).await,
        }
    }

    /// See [`L2::set_versioned`].
    #[inline]
    pub(crate) async fn set_versioned(
        &self,
        key: &str,
        envelope: &[u8],
        ttl: Duration,
    ) -> Result<bool> {
        match self {
            L2Tier::Redis(t) => t.set_versioned(key, envelope, ttl).await,
            L2Tier::Cluster(t) => t.set_versioned(key, envelope, ttl).await,
        }
    }

    /// See [`L2::set_many`].
    pub(crate) async fn set_many(&self, items: &[(&str, Vec<u8>, Duration)]) -> Result<Vec<bool>> {
        match self {
            L2Tier::Redis(t) => t.set_many(items).await,
            L2Tier::Cluster(t) => t.set_many(items).await,
        }
    }

    /// See [`L2::put_many`].
    pub(crate) async fn put_many(
        &self,
        items: &[Put<'_>],
        within: Duration,
    ) -> Result<Vec<PutReply>> {
        match self {
            L2Tier::Redis(t) => t.put_many(items, within).await,
            L2Tier::Cluster(t) => t.put_many(items, within).await,
        }
    }

    /// See [`L2::unlink`].
    pub(crate) async fn unlink(&self, keys: &[&str]) -> Result<u64> {
        match self {
            L2Tier::Redis(t) => t.unlink(keys).await,
            L2Tier::Cluster(t) => t.unlink(keys).await,
        }
    }

    /// See [`L2::unlink_if_equals`].
    pub(crate) async fn unlink_if_equals(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        match self {
            L2Tier::Redis(t) => t.unlink_if_equals(key, bytes).await,
            L2Tier::Cluster(t) => t.unlink_if_equals(key, bytes).await,
        }
    }

    /// See [`L2::pttl`].
    pub(crate) async fn pttl(&self, key: &str) -> Result<Option<Option<Duration>>> {
        match self {
            L2Tier::Redis(t) => t.pttl(key).await,
            L2Tier::Cluster(t) => t.pttl(key).await,
        }
    }

    /// See [`L2::ping`].
    pub(crate) async fn ping(&self) -> Result<()> {
        match self {
            L2Tier::Redis(t) => t.ping().await,
            L2Tier::Cluster(t) => t.ping().await,
        }
    }

    /// See [`L2::book_replace`].
    pub(crate) async fn book_replace(
        &self,
        key: &str,
        side: &BookSide,
        version: u64,
        ttl: Duration,
    ) -> Result<bool> {
        match self {
            L2Tier::Redis(t) => t.book_replace(key, side, version, ttl).await,
            L2Tier::Cluster(t) => t.book_replace(key, side, version, ttl).await,
        }
    }

    /// See [`L2::book_top`].
    pub(crate) async fn book_top(
        &self,
        key: &str,
        side: BookSideKind,
        depth: usize,
    ) -> Result<TopReply> {
        match self {
            L2Tier::Redis(t) => t.book_top(key, side, depth).await,
            L2Tier::Cluster(t) => t.book_top(key, side, depth).await,
        }
    }

    /// See [`L2::book_unlink_if_stamp`].
    pub(crate) async fn book_unlink_if_stamp(&self, key: &str, stamp: &[u8]) -> Result<bool> {
        match self {
            L2Tier::Redis(t) => t.book_unlink_if_stamp(key, stamp).await,
            L2Tier::Cluster(t) => t.book_unlink_if_stamp(key, stamp).await,
        }
    }

    /// See [`L2::breaker`].
    #[inline]
    pub(crate) fn breaker(&self) -> &CircuitBreaker {
        match self {
            L2Tier::Redis(t) => t.breaker(),
            L2Tier::Cluster(t) => t.breaker(),
        }
    }

    /// The breaker figures callers see: one server's breaker; on a cluster its own and every
    /// shard's together ([`BreakerSnapshot::merge`]: counts summed, the least healthy state).
    pub(crate) fn breaker_snapshot(&self) -> BreakerSnapshot {
        let own = self.breaker().snapshot();
        self.shard_breakers()
            .into_iter()
            .fold(own, |all, s| all.merge(s.breaker))
    }

    /// True when every shard's breaker is closed (on one server: always).
    pub(crate) fn shards_closed(&self) -> bool {
        self.shard_breakers()
            .iter()
            .all(|s| s.breaker.state == BreakerState::Closed)
    }

    /// See [`L2::probe_shards`].
    pub(crate) async fn probe_shards(&self) -> bool {
        match self {
            L2Tier::Redis(t) => t.probe_shards().await,
            L2Tier::Cluster(t) => t.probe_shards().await,
        }
    }

    /// See [`L2::shard_breakers`].
    pub(crate) fn shard_breakers(&self) -> Vec<ShardBreaker> {
        match self {
            L2Tier::Redis(t) => t.shard_breakers(),
            L2Tier::Cluster(t) => t.shard_breakers(),
        }
    }

    /// See [`L2::replay_group`].
    pub(crate) fn replay_group(&self, key: &str) -> Option<u16> {
        match self {
            L2Tier::Redis(t) => t.replay_group(key),
            L2Tier::Cluster(t) => t.replay_group(key),
        }
    }

    /// See [`L2::probe_ping`].
    pub(crate) async fn probe_ping(&self) -> Result<()> {
        match self {
            L2Tier::Redis(t) => t.probe_ping().await,
            L2Tier::Cluster(t) => t.probe_ping().await,
        }
    }

    /// See [`L2::reset_connections`].
    pub(crate) fn reset_connections(&self) {
        match self {
            L2Tier::Redis(t) => t.reset_connections(),
            L2Tier::Cluster(t) => t.reset_connections(),
        }
    }

    /// See [`L2::recovery_unlink`].
    pub(crate) async fn recovery_unlink(&self, keys: &[&str]) -> Result<u64> {
        match self {
            L2Tier::Redis(t) => t.recovery_unlink(keys).await,
            L2Tier::Cluster(t) => t.recovery_unlink(keys).await,
        }
    }

    /// See [`L2::recovery_unlink_matching`].
    pub(crate) async fn recovery_unlink_matching(&self, pattern: &str) -> Result<()> {
        match self {
            L2Tier::Redis(t) => t.recovery_unlink_matching(pattern).await,
            L2Tier::Cluster(t) => t.recovery_unlink_matching(pattern).await,
        }
    }

    /// See [`L2::scan_step`].
    pub(crate) async fn scan_step(
        &self,
        at: ScanPos,
        pattern: &str,
        count: u32,
    ) -> Result<(Vec<String>, Option<ScanPos>)> {
        match self {
            L2Tier::Redis(t) => t.scan_step(at, pattern, count).await,
            L2Tier::Cluster(t) => t.scan_step(at, pattern, count).await,
        }
    }

    /// See [`L2::info`].
    pub(crate) async fn info(&self, section: &str) -> Result<Vec<(String, String)>> {
        match self {
            L2Tier::Redis(t) => t.info(section).await,
            L2Tier::Cluster(t) => t.info(section).await,
        }
    }
}
