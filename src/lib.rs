//! mdcache: a two-tier cache runtime for a low-latency trading engine's hot state.
//!
//! Prices, positions, order books, risk, orders and strategy state live under typed keys
//! with millisecond TTLs, served from an in-process L1 and a Redis/Valkey L2.
//!
//! # Layout
//!
//! A read flows L1 → L2 → source and fills the tiers on the way back; a write goes to the
//! source of record first (write-through), then L2, then L1. The public [`Cache`] is a facade:
//! each method is a one-line delegation to a crate-internal engine, which the patterns
//! ([`CacheAside`], [`WriteThrough`]) use directly. `docs/architecture.md` draws the flows.
//!
//! | module | job |
//! |---|---|
//! | [`admin`] | operating a cache: namespace-bound patterns, paged `SCAN`, bulk clear, key counts, health |
//! | [`cache`](Cache) | the facade: typed `get`/`read`/`set`/`delete`/`ttl`, batches, books — delegations to the engine |
//! | `builder` | [`CacheBuilder`]: every setting as a by-value setter, `build()` validates and starts the engine |
//! | `outcome` | what reads and writes return and take: [`Tier`], [`Read`], [`WriteOutcome`], [`KeyTtl`], [`SetOptions`] |
//! | `engine` | the engine: L1, L2, dirty log, stats, clock, the market-data writer; version floors (rule 9), delete, ttl |
//! | `engine::layout` | the one storage path values and book sides share (the `Layout` trait): reads L1 → L2 with promotion, writes and the write-failure policy, fills, re-checks, stale reads |
//! | `engine::values`, `engine::books` | the two layouts: an envelope string per value (and the value-only batches); a sorted set and stamp per book side |
//! | `engine::writer` | the conflating market-data writer (rule 8): latest version per key, one pipeline per batch, [`Cache::flush`] |
//! | `engine::local` | the raw L1 fill and negative entries |
//! | `engine::dirty` | [`DirtyLog`]: keys whose Redis copy is distrusted until recovery deletes them |
//! | `engine::flight` | single-flight loads, shared by every [`CacheAside`] over one cache |
//! | `book` | book rules: [`BookSide`], [`Level`], [`BookSideKind`], validation, best-first order |
//! | `l1` | in-process tier (quick_cache): entry and byte bounds, per-entry deadlines, version rule, floors |
//! | `l2` | the L2 boundary (`L2` trait, `L2Tier` the engine holds) and its implementation on one Redis server (bb8 pool); the value and book-side scripts and replies |
//! | `resilience` | [`CircuitBreaker`](BreakerConfig), full-jitter backoff, [`RetryConfig`], and the guard applying admission + deadline + retries to every L2 operation |
//! | `patterns` | [`CacheAside`] (single-flight, refresh-ahead, negative caching, floor checks) and [`WriteThrough`] (database first, cancel-safe) |
//! | `fallback` | [`FallbackHandler`]: source-load limit, per-kind stale policy, fallback counts — one per cache, shared by every [`CacheAside`] over it |
//! | `recovery` | the supervisor: probe (`PING`) while open, replay the dirty log, then close; [`Cache::recovered`] waits for it |
//! | [`source`] | the source of record: [`Source`] (its error), [`Load`]/[`Store`] per kind, [`SourceReader`]/[`SourceWriter`] (every built-in kind), [`PostgresSource`], [`MemorySource`] |
//! | [`key`](KeySchema) | typed keys, identifier validation, namespace and `{ID}` hash tags |
//! | [`schema`](Kind) | the built-in kinds and their value types and TTLs |
//! | [`codec`] | the value envelope: header with the version and written TTL, MessagePack payload |
//! | [`config`](CacheConfig) | every setting, `from_env()`, secrets redacted in `Debug` |
//! | [`stats`](StatsSnapshot) | counters behind a snapshot, mirrored to the `metrics` facade |
//! | [`metrics`] | the metric names, and a one-call Prometheus exporter |
//! | [`clock`](Clock) | the injected clock (system or mock), overflow-safe deadlines |
//! | [`error`](Error) | the error type and its decision methods |
//!
//! # Consistency and failure
//!
//! - **Freshness.** A read never returns a value past its TTL. A value promoted from Redis to
//!   L1 gets the deadline `t0 + PTTL`, where `t0` is taken *before* the request, so L1 never
//!   outlives the Redis key. Writes use whole-millisecond TTLs in both tiers (Redis's `PX`
//!   truncates), so a sub-millisecond TTL cannot leave L1 serving after Redis expired the key.
//!   TTLs, negative-cache TTLs and stale bounds are at most [`MAX_TTL`] (7 days).
//! - **No going backwards.** Every write carries a version; a Lua script in Redis and the same
//!   check in L1 keep a lower version from replacing a higher one. A value fetched from Redis
//!   or loaded from the source that is older than what L1 holds is not served.
//! - **Failed cache writes never roll a reader back.** When a write-through's cache write
//!   fails, times out, is skipped (breaker open) or is cancelled by the caller after the
//!   database commit, L1 keeps a *version floor* at the acknowledged version for the longer of
//!   the key's TTL and [`FLOOR_HOLD`]: no in-flight fill, refresh or negative entry older than
//!   it can land, reads of the key go to the source, and a source that still returns an older
//!   version is retried once and then reported as [`LoadError::BehindFloor`], never served.
//!   A failed fill removes only older L1 entries, and fills and refreshes do not write to
//!   Redis while the breaker is not closed.
//! - **Undecodable bytes** (another program's key, an old schema) are counted in
//!   `decode_errors` and treated as a miss; they are never served and never panic, and they
//!   are deleted from Redis (if unchanged) so the next fill replaces them.
//! - **Redis down or hung.** Every L2 operation has a deadline (5 ms by default), including
//!   getting its connection, and is retried (full jitter, at most 3 tries) only inside it; a
//!   hung server costs a caller at most the deadline, and the error says
//!   [`is_timeout()`](Error::is_timeout). After 5 consecutive failures the circuit breaker
//!   (failsafe) opens: no Redis I/O for 30 s, callers get [`Error::BreakerOpen`] at once and
//!   [`CacheAside`] serves fresh L1 entries, then the source, behind a concurrency limit. A
//!   background probe (`PING`) runs while open; when it succeeds, the dirty log is replayed
//!   (`UNLINK` of every key written while Redis was unavailable, or `SCAN` + `UNLINK` of the
//!   affected kinds if the log overflowed) and only then does the breaker close. On a Redis
//!   Cluster each shard has its own breaker ([`Cache::shard_breakers`]): one failed primary
//!   sends its own keys to the fallback, not the others'.
//! - **Cache-only writes while Redis fails.** A [`Cache::set`] or [`Cache::set_book`] whose
//!   Redis write fails (a timeout, a dead connection, an error reply, or the breaker open)
//!   records the key in the dirty log and, with an L1, keeps the value there under the version
//!   rule: it returns [`WriteOutcome::LocalOnly`], and this process's readers see the new
//!   value while other processes do not. Redis's older copy is distrusted by this cache and
//!   deleted by recovery before Redis is trusted again. Without an L1 the error is returned.
//! - **Write-through is database-first.** A value the database refused never reaches a tier,
//!   and the key is invalidated; a value it accepted but the cache could not take is
//!   acknowledged, floored in L1 (above) and recorded in the dirty log — and reads distrust
//!   Redis's copy of that key until recovery deletes it. A key Redis refused because it holds
//!   another Redis type is floored but not recorded: it is not ours to delete.
//! - **Recovery runs on the runtime that built the cache.** The supervisor task is spawned
//!   on the Tokio runtime current at [`CacheBuilder::build`]; if that runtime shuts down
//!   while the cache lives on, an open breaker never closes again (Redis stays bypassed and
//!   reads go to the source). Build the cache on the runtime that outlives it.
//! - **Database down.** Reads are served from the tiers while within TTL; misses fail with the
//!   source's error, except `price` and `book`, which may be served up to 1 s past their TTL
//!   marked [`Tier::Stale`]. Writes fail; nothing is acknowledged that the database did not
//!   accept. The cache starts even while Redis is down.
//! - **Bad input** (an identifier with a forbidden character, an oversize value) is refused
//!   before any I/O with a typed error.
//!
//! # Quick start
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mdcache::Result<()> {
//! use mdcache::{Cache, Position};
//!
//! let cache = Cache::builder().from_env().build()?;
//! let pos = cache.key::<Position>("AAPL")?;
//! cache.set(&pos, Position { qty: 100.0, avg_price: 189.4, realized_pnl: 0.0, seq: 7 }, 7).await?;
//! assert_eq!(cache.get(&pos).await?.map(|p| p.qty), Some(100.0));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod admin;
mod backplane;
mod book;
mod builder;
mod cache;
pub mod clock;
pub mod codec;
mod config;
mod engine;
mod error;
mod fallback;
mod key;
mod l1;
mod l2;
pub mod metrics;
mod outcome;
mod patterns;
mod recovery;
mod resilience;
mod schema;
pub mod source;
mod stats;

pub use builder::CacheBuilder;
pub use cache::Cache;
pub use clock::{Clock, MockClock};
pub use config::{
    Backend, CacheConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_OP_TIMEOUT, MAX_TTL, Password,
    WriterOptions,
};
pub use engine::FLOOR_HOLD;
pub use engine::dirty::{DEFAULT_DIRTY_CAPACITY, DirtyLog, DirtySnapshot};
pub use error::{BackendError, Error, ErrorKind, Result};
pub use fallback::{FallbackHandler, FallbackOptions, FallbackReason, FallbackSnapshot};
pub use key::{BookSchema, Key, KeySchema, MAX_ID_LEN, Storage, ValueSchema, validate_id};
pub use outcome::{KeyTtl, Read, SetOptions, Tier, WriteOutcome};
pub use patterns::aside::{
    AsideOptions, CacheAside, CacheAsideBuilder, DEFAULT_SOURCE_TIMEOUT, WARM_BATCH, WarmProgress,
    WarmReport,
};
pub use patterns::write::{DEFAULT_WRITE_TIMEOUT, WriteAck, WriteThrough, WriteThroughBuilder};
pub use patterns::{LoadError, WriteError};
pub use resilience::{
    BreakerConfig, BreakerPolicy, BreakerSnapshot, BreakerState, RetryConfig, ShardBreaker,
};
pub use schema::{
    BookAsk, BookBid, BookSide, BookSideKind, Kind, Level, Order, OrderStatus, Position, Price,
    Risk, Side, StrategyState,
};
pub use source::{
    Counted, Load, Loaded, MemorySource, MemorySourceError, Source, SourceReader, SourceWriter,
    Store,
};
#[cfg(feature = "postgres")]
pub use source::{PostgresOptions, PostgresSource, PostgresSourceError};
pub use stats::{BackplaneSnapshot, KindSnapshot, StatsSnapshot, WriterSnapshot};

/// The README's code blocks, compiled and run as doctests so the quick start stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
