//! L2 hit, one task: `Cache::get` on the Redis backend against raw redis-rs on one multiplexed
//! connection, on a throwaway redis-server.
//!
//! DESIGN §9 target: an L2 hit costs at most 1.15× a raw `GET` (p50). Contenders, all reading
//! the same key (a `Price` envelope written by `Cache::set`):
//!
//! - `mdcache_get`: `Cache::get`, `Backend::Redis` (no L1), default pool of 16, 1 s deadline
//!   (so a slow moment on a busy machine is measured, not turned into an error). It sends
//!   `PTTL` + `GET` as one plain pipeline on the callers' shared connection and decodes the
//!   value. `mdcache_get_pool1`: the same with a pool of one connection (since operations no
//!   longer check a connection out, the pool size should not matter; this row checks it).
//! - `raw_get`: `GET` on one shared `MultiplexedConnection` — the floor.
//! - `raw_pipe_get_pttl`: the two reads as a plain pipeline on that connection — what
//!   `mdcache_get` sends, so `mdcache_get / raw_pipe_get_pttl` is our own overhead and
//!   `raw_pipe_get_pttl / raw_get` the protocol's.
//! - `raw_multi_get_pttl` and `raw_evalsha_get_pttl`: the same two reads as `MULTI GET PTTL
//!   EXEC` (what `mdcache_get` sent before issue 15) and as one Lua script — references.
//!
//! The loops run inside a task spawned on a 2-worker runtime, like an engine task: the reply
//! then wakes the task on the worker that read it, instead of crossing to criterion's
//! `block_on` thread on every operation.
//!
//! After the criterion group, `l2_get/latency` prints p50/p90/p99/p99.9 per contender from
//! per-operation `Instant` timings, taken in one task that reads with each contender in turn
//! (one read each, round after round), so a disturbance on the machine hits all of them alike.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use common::{
    Contender, GET_PTTL_SCRIPT, Via, latency_samples, micros, percentile, price, redis_reader,
    two_worker_runtime,
};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;

struct Setup {
    rt: Runtime,
    contenders: Vec<Contender>,
    /// Last: dropped after the connections that use it.
    _server: support::RedisServer,
}

fn setup() -> Setup {
    let server = support::RedisServer::start();
    let rt = two_worker_runtime();
    let contenders = rt.block_on(async {
        let (cache, key) = redis_reader(server.url(), None);
        let (cache1, key1) = redis_reader(server.url(), NonZeroU32::new(1));
        cache.set(&key, price(42), 42).await.expect("set");
        // Prices conflate: in Redis once flushed.
        cache.flush().await.expect("flush");
        let conn = server.multiplexed().await;
        let name = key.as_str().to_owned();
        let bytes: Vec<u8> = redis::cmd("GET")
            .arg(&name)
            .query_async(&mut conn.clone())
            .await
            .expect("GET");
        println!(
            "l2_get: value `{name}` is {} bytes (18-byte envelope header + MessagePack Price)",
            bytes.len()
        );
        let mut contenders = vec![
            Contender::new("mdcache_get", Via::Cache(cache, key)),
            Contender::new("mdcache_get_pool1", Via::Cache(cache1, key1)),
            Contender::new("raw_get", Via::RawGet(conn.clone(), name.clone())),
            Contender::new(
                "raw_multi_get_pttl",
                Via::RawMulti(conn.clone(), name.clone()),
            ),
            Contender::new(
                "raw_pipe_get_pttl",
                Via::RawPipe(conn.clone(), name.clone()),
            ),
            Contender::new(
                "raw_evalsha_get_pttl",
                Via::RawScript(conn, name, redis::Script::new(GET_PTTL_SCRIPT)),
            ),
        ];
        // Opens the pool's connections and loads the script before anything is timed.
        for c in &mut contenders {
            for _ in 0..200 {
                c.read().await;
            }
        }
        contenders
    });
    Setup {
        rt,
        contenders,
        _server: server,
    }
}

/// `iters` sequential reads in one task on a worker thread; the time they took.
async fn timed_loop(rt: &Runtime, contender: &Contender, iters: u64) -> Duration {
    let mut c = contender.clone();
    rt.spawn(async move {
        let start = Instant::now();
        for _ in 0..iters {
            c.read().await;
        }
        start.elapsed()
    })
    .await
    .expect("bench task")
}

fn throughput(c: &mut Criterion, s: &Setup) {
    let mut group = c.benchmark_group("l2_get");
    for contender in &s.contenders {
        group.bench_function(contender.name, |b| {
            b.to_async(&s.rt)
                .iter_custom(|iters| timed_loop(&s.rt, contender, iters))
        });
    }
    group.finish();
}

fn latency(_: &mut Criterion, s: &Setup) {
    // Reads per contender.
    let reads = latency_samples("l2_get", 40_000, 100);
    if reads == 0 {
        return;
    }
    let mut contenders = s.contenders.clone();
    let mut samples =
        s.rt.block_on(s.rt.spawn(async move {
            let mut samples = vec![Vec::with_capacity(reads); contenders.len()];
            for _ in 0..reads {
                for (c, out) in contenders.iter_mut().zip(&mut samples) {
                    let t0 = Instant::now();
                    c.read().await;
                    out.push(t0.elapsed());
                }
            }
            samples
        }))
        .expect("latency task");
    println!(
        "\nl2_get/latency: one task, {reads} reads per contender, contenders taking turns (µs)"
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>8}  {:>14}",
        "contender", "p50", "p90", "p99", "p99.9", "mean", "p50 / raw_get"
    );
    for t in &mut samples {
        t.sort_unstable();
    }
    let raw_p50 = s
        .contenders
        .iter()
        .position(|c| matches!(c.via, Via::RawGet(..)))
        .map(|i| percentile(&samples[i], 0.50));
    for (contender, t) in s.contenders.iter().zip(samples) {
        let p50 = percentile(&t, 0.50);
        let mean = t.iter().sum::<Duration>() / t.len() as u32;
        let ratio = raw_p50.map_or(String::from("-"), |r| {
            format!("{:.3}", p50.as_secs_f64() / r.as_secs_f64())
        });
        println!(
            "{:<22} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}  {:>14}",
            contender.name,
            micros(p50),
            micros(percentile(&t, 0.90)),
            micros(percentile(&t, 0.99)),
            micros(percentile(&t, 0.999)),
            micros(mean),
            ratio
        );
    }
    println!();
}

fn l2_get(c: &mut Criterion) {
    let s = setup();
    throughput(c, &s);
    latency(c, &s);
}

criterion_group! {
    name = benches;
    config = common::criterion(Duration::from_secs(4), 30);
    targets = l2_get
}
criterion_main!(benches);
