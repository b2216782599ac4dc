//! The L2 tier on Redis: the boundary the engine uses, its implementation on one server (a bb8 pool), and the value and book-side layouts every implementation shares.
//!
//! | file | job |
//! |---|---|
//! | `boundary.rs` | the `L2` trait (every command, script and batch the engine and recovery need) and its replies |
//! | `tier.rs` | `L2Tier`, the L2 the engine holds: an enum over the implementations, and why an enum |
//! | `redis.rs` | `RedisTier`, the implementation on one server: pool checkout, the guard around every operation |
//! | `pool.rs` | the bb8 connection manager: multiplexed connections, broken flags, generations, last connect error |
//! | `connect.rs` | how to reach Redis: the URL, the ACL credentials and the TLS roots as one `ConnectionInfo` |
//! | `values.rs` | string values: the versioned-write and compare-and-delete scripts, `GET`+`PTTL` replies |
//! | `book.rs` | book sides: sorted set + stamp layout, their scripts and replies, size and validity checks |
//!
//! Resilience (breaker, retries, deadline) is [`crate::resilience`]'s; the probe loop is recovery's.

pub(crate) mod book;
mod boundary;
mod connect;
mod pool;
mod redis;
mod tier;
mod values;

pub(crate) use boundary::{Fetched, Put, PutReply, ttl_ms};
pub(crate) use connect::{check_settings, connection_info};
pub(crate) use redis::RedisOptions;
pub(crate) use tier::L2Tier;
