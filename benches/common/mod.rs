//! What the benches share: the `Price` they read and write, the ways of reading it from Redis that the L2 benches race, and the latency report's arithmetic.
//!
//! Each bench includes it with `mod common;` and uses what it needs.

// Every bench includes this module, and none uses all of it.
#![allow(dead_code)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::Criterion;
use mdcache::{Backend, Cache, Key, Price};
use redis::aio::MultiplexedConnection;
use tokio::runtime::Runtime;

/// A realistic quote (its size is the size every bench reports and moves), with `seq`.
pub fn price(seq: u64) -> Price {
    Price {
        bid: 189.51,
        ask: 189.53,
        bid_size: 300.0,
        ask_size: 200.0,
        last: 189.52,
        seq,
        exchange_ts_ns: 1_763_700_000_000_000_000,
    }
}

/// Criterion with a one-second warm-up and the given measurement time and sample count.
pub fn criterion(measurement: Duration, sample_size: usize) -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(measurement)
        .sample_size(sample_size)
}

/// The runtime the L2 benches read on: two workers, like an engine's, so a reply wakes its
/// task on the worker that read it instead of crossing to criterion's `block_on` thread.
pub fn two_worker_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A cache on the Redis backend alone (no L1) at `url`, with a 1 s deadline (so a slow moment
/// on a busy machine is measured, not turned into an error), and the key the L2 benches read.
/// `pool`: the pool size, else the default.
pub fn redis_reader(url: String, pool: Option<NonZeroU32>) -> (Cache, Key<Price>) {
    let mut builder = Cache::builder()
        .backend(Backend::Redis)
        .redis_url(url)
        .op_timeout(Duration::from_secs(1))
        // Price's TTL is 100 ms; an hour keeps the key a hit for the whole run.
        .ttl_kind("price", Duration::from_secs(3600));
    if let Some(n) = pool {
        builder = builder.pool_size(n);
    }
    let cache = builder.build().expect("redis cache");
    let key = cache.key::<Price>("AAPL").expect("valid key");
    (cache, key)
}

/// Reads the key and its remaining TTL in one script call.
pub const GET_PTTL_SCRIPT: &str =
    "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}";

/// One contender of an L2 bench: a name in the results and a way of reading the key. Each
/// task holds its own clone.
#[derive(Clone)]
pub struct Contender {
    pub name: &'static str,
    pub via: Via,
}

/// The ways of reading the key.
#[derive(Clone)]
pub enum Via {
    /// `Cache::get`.
    Cache(Cache, Key<Price>),
    /// `GET` on a multiplexed connection: the floor.
    RawGet(MultiplexedConnection, String),
    /// `MULTI GET PTTL EXEC`: what `Cache::get` sends.
    RawMulti(MultiplexedConnection, String),
    /// `GET` and `PTTL` as a plain, non-atomic pipeline.
    RawPipe(MultiplexedConnection, String),
    /// `GET` and `PTTL` in one Lua script call ([`GET_PTTL_SCRIPT`]).
    RawScript(MultiplexedConnection, String, redis::Script),
    /// `GET` spread over connections: task `i` reads on connection `i % len` (see
    /// [`Contender::for_task`]).
    RawGetSpread(Vec<MultiplexedConnection>, String),
}

impl Contender {
    pub fn new(name: &'static str, via: Via) -> Contender {
        Contender { name, via }
    }

    /// The Redis key it reads.
    pub fn key_name(&self) -> String {
        match &self.via {
            Via::Cache(_, key) => key.as_str().to_owned(),
            Via::RawGet(_, key)
            | Via::RawMulti(_, key)
            | Via::RawPipe(_, key)
            | Via::RawScript(_, key, _)
            | Via::RawGetSpread(_, key) => key.clone(),
        }
    }

    /// The contender as task `i` runs it.
    pub fn for_task(&self, i: usize) -> Contender {
        match &self.via {
            Via::RawGetSpread(conns, key) => Contender::new(
                self.name,
                Via::RawGet(conns[i % conns.len()].clone(), key.clone()),
            ),
            _ => self.clone(),
        }
    }

    /// One read; panics unless it is a hit.
    pub async fn read(&mut self) {
        let hit = match &mut self.via {
            Via::Cache(cache, key) => cache.get(key).await.expect("mdcache get").is_some(),
            Via::RawGet(c, key) => {
                let v: Option<Vec<u8>> = redis::cmd("GET").arg(&*key).query_async(c).await.unwrap();
                black_box(v).is_some()
            }
            Via::RawMulti(c, key) => {
                let (v, ttl): (Option<Vec<u8>>, i64) = redis::pipe()
                    .atomic()
                    .get(&*key)
                    .pttl(&*key)
                    .query_async(c)
                    .await
                    .unwrap();
                black_box(ttl);
                black_box(v).is_some()
            }
            Via::RawPipe(c, key) => {
                let (v, ttl): (Option<Vec<u8>>, i64) = redis::pipe()
                    .get(&*key)
                    .pttl(&*key)
                    .query_async(c)
                    .await
                    .unwrap();
                black_box(ttl);
                black_box(v).is_some()
            }
            Via::RawScript(c, key, script) => {
                let (v, ttl): (Option<Vec<u8>>, i64) =
                    script.key(&*key).invoke_async(c).await.unwrap();
                black_box(ttl);
                black_box(v).is_some()
            }
            Via::RawGetSpread(..) => unreachable!("replaced by `for_task`"),
        };
        assert!(hit, "{} missed", self.name);
    }
}

/// How many samples a bench's latency report (`{group}/latency`) takes: `full` under
/// `cargo bench`, `smoke` under `cargo test --benches`, none for `--list` or a filter that
/// excludes the report.
pub fn latency_samples(group: &str, full: usize, smoke: usize) -> usize {
    let report = format!("{group}/latency");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filtered_out = args
        .iter()
        .any(|a| !a.starts_with('-') && !report.contains(a.as_str()));
    if filtered_out || args.iter().any(|a| a == "--list") {
        0
    } else if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test") {
        full
    } else {
        smoke
    }
}

/// The `p` quantile of `sorted` (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
