//! The L2 tier on Redis: the boundary the engine uses, its implementations on one server (a bb8 pool) and on a cluster, and the value and book-side layouts every implementation shares.
//!
//! | file | job |
//! |---|---|
//! | `boundary.rs` | the `L2` trait (every command, script and batch the engine and recovery need) and its replies |
//! | `tier.rs` | `L2Tier`, the L2 the engine holds: an enum over the implementations, and why an enum |
//! | `redis.rs` | `RedisTier`, the implementation on one server: pool checkout, the guard around every operation |
//! | `cluster.rs` | `ClusterTier`, the implementation on a Redis Cluster: one cluster connection, batches split by slot, `SCAN` of every primary |
//! | `shards.rs` | a cluster's shards: which primary serves each slot, one guard (breaker) per shard |
//! | `commands.rs` | the commands and scripts both implementations send, over any redis-rs connection |
//! | `pool.rs` | the bb8 connection manager: multiplexed connections, broken flags, generations, last connect error |
//! | `connect.rs` | how to reach Redis: the URL, the ACL credentials and the TLS roots as one `ConnectionInfo` |
//! | `values.rs` | string values: the versioned-write and compare-and-delete scripts, `GET`+`PTTL` replies |
//! | `book.rs` | book sides: sorted set + stamp layout, their scripts and replies, size and validity checks |
//!
//! Resilience (breaker, retries, deadline) is [`crate::resilience`]'s; the probe loop is recovery's.

pub(crate) mod book;
mod boundary;
mod cluster;
mod commands;
mod connect;
mod pool;
mod redis;
#[cfg(test)]
mod replies_fuzz;
mod shards;
mod tier;
mod values;

pub(crate) use boundary::{Fetched, Put, PutReply, ScanPos, ttl_ms};
// The integration tests' harness (real redis-server processes and a local cluster on free
// ports, killed on drop), shared rather than copied. A `#[path]` inside a `mod tests` would
// resolve through a directory that does not exist, hence here.
#[cfg(test)]
#[allow(unreachable_pub, missing_docs, missing_debug_implementations)]
#[path = "../../tests/support/mod.rs"]
pub(crate) mod test_support;

pub(crate) use cluster::ClusterOptions;
pub(crate) use connect::{Endpoint, check_settings, endpoint};
pub(crate) use redis::RedisOptions;
pub(crate) use tier::L2Tier;
