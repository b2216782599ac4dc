//! L2 hits from 64 concurrent tasks: `Cache::get` on the Redis backend (pools of 16, 4 and 1
//! multiplexed connections; callers share one of them either way) against raw `GET` on one
//! shared multiplexed connection.
//!
//! DESIGN §9 target: 64-task L2 throughput at least 0.9× one shared multiplexed connection.
//! One iteration is one read by each of 64 tasks (`Throughput::Elements(64)`): a sample of
//! `n` iterations spawns 64 tasks on a 2-worker runtime, each doing `n` sequential reads of
//! the same key, and times them all to the last one.
//!
//! - `mdcache_pool16` / `mdcache_pool4` / `mdcache_pool1`: `Cache::get`, `Backend::Redis`
//!   (no L1), 1 s deadline; 16 is the default `CACHE_POOL_SIZE`.
//! - `raw_get_shared_mux`: `GET` on clones of one `MultiplexedConnection` — the floor.
//! - `raw_pipe_get_pttl_shared_mux`: `PTTL` + `GET` as a plain pipeline on that connection,
//!   what `Cache::get` sends — separates the protocol's cost from ours.
//! - References: `raw_multi_get_pttl_shared_mux` (`MULTI GET PTTL EXEC`, what `Cache::get`
//!   sent before issue 15, and issue 15's 0.9× reference), `raw_evalsha_get_pttl_shared_mux`
//!   (the same two reads, atomic, as one Lua script call) and `raw_get_16_mux` (raw `GET`, the
//!   64 tasks spread over 16 multiplexed connections, as the old pool-per-operation did).
//!
//! After the criterion group, `l2_concurrent/latency` prints throughput and per-read
//! p50/p99/p99.9 for each contender, contenders interleaved in rounds.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use common::{
    Contender, GET_PTTL_SCRIPT, Via, latency_samples, micros, percentile, price, redis_reader,
    two_worker_runtime,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

/// Concurrent tasks, as in DESIGN §9.
const TASKS: usize = 64;

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
        let ours = |name: &'static str, pool: u32| {
            let pool = NonZeroU32::new(pool).expect("non-zero pool");
            let (cache, key) = redis_reader(server.url(), Some(pool));
            Contender::new(name, Via::Cache(cache, key))
        };
        let mut contenders = vec![
            ours("mdcache_pool16", 16),
            ours("mdcache_pool4", 4),
            ours("mdcache_pool1", 1),
        ];
        if let Via::Cache(cache, key) = &contenders[0].via {
            cache.set(key, price(42), 42).await.expect("set");
            // Prices conflate: in Redis once flushed.
            cache.flush().await.expect("flush");
        }
        let conn = server.multiplexed().await;
        let name = contenders[0].key_name();
        contenders.push(Contender::new(
            "raw_get_shared_mux",
            Via::RawGet(conn.clone(), name.clone()),
        ));
        contenders.push(Contender::new(
            "raw_multi_get_pttl_shared_mux",
            Via::RawMulti(conn.clone(), name.clone()),
        ));
        contenders.push(Contender::new(
            "raw_evalsha_get_pttl_shared_mux",
            Via::RawScript(
                conn.clone(),
                name.clone(),
                redis::Script::new(GET_PTTL_SCRIPT),
            ),
        ));
        contenders.push(Contender::new(
            "raw_pipe_get_pttl_shared_mux",
            Via::RawPipe(conn, name.clone()),
        ));
        let mut spread = Vec::new();
        for _ in 0..16 {
            spread.push(server.multiplexed().await);
        }
        contenders.push(Contender::new(
            "raw_get_16_mux",
            Via::RawGetSpread(spread, name),
        ));
        // Opens every pool's connections before anything is timed.
        for c in &contenders {
            run_tasks(c, 50, false).await;
        }
        contenders
    });
    Setup {
        rt,
        contenders,
        _server: server,
    }
}

/// Runs `TASKS` tasks of `reads` sequential reads each; returns the wall time until the last
/// finished and, when `timed`, every read's latency.
async fn run_tasks(contender: &Contender, reads: u64, timed: bool) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let mut c = contender.for_task(i);
            tokio::spawn(async move {
                let mut timings = Vec::with_capacity(if timed { reads as usize } else { 0 });
                for _ in 0..reads {
                    let t0 = timed.then(Instant::now);
                    c.read().await;
                    if let Some(t0) = t0 {
                        timings.push(t0.elapsed());
                    }
                }
                timings
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("bench task"));
    }
    (start.elapsed(), all)
}

fn throughput(c: &mut Criterion, s: &Setup) {
    let mut group = c.benchmark_group("l2_concurrent");
    group.throughput(Throughput::Elements(TASKS as u64));
    for contender in &s.contenders {
        group.bench_function(contender.name, |b| {
            b.to_async(&s.rt)
                .iter_custom(|iters| async move { run_tasks(contender, iters, false).await.0 })
        });
    }
    group.finish();
}

/// Reads per task per round of the latency report.
const ROUND: u64 = 100;

fn latency(_: &mut Criterion, s: &Setup) {
    let rounds = latency_samples("l2_concurrent", 12, 1);
    if rounds == 0 {
        return;
    }
    let n = s.contenders.len();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut wall = vec![Duration::ZERO; n];
    for _ in 0..rounds {
        for (i, contender) in s.contenders.iter().enumerate() {
            let (elapsed, timings) = s.rt.block_on(run_tasks(contender, ROUND, true));
            wall[i] += elapsed;
            samples[i].extend(timings);
        }
    }
    let ops_per_s: Vec<f64> = samples
        .iter()
        .zip(&wall)
        .map(|(t, w)| t.len() as f64 / w.as_secs_f64())
        .collect();
    let raw = s
        .contenders
        .iter()
        .position(|c| matches!(c.via, Via::RawGet(..)))
        .map(|i| ops_per_s[i]);
    println!(
        "\nl2_concurrent/latency: {TASKS} tasks × {} reads per contender in {rounds} interleaved rounds",
        ROUND * rounds as u64
    );
    println!(
        "{:<30} {:>10} {:>11} {:>9} {:>9} {:>9}",
        "contender", "k ops/s", "÷ raw_get", "p50 µs", "p99 µs", "p99.9 µs"
    );
    for (i, contender) in s.contenders.iter().enumerate() {
        let t = &mut samples[i];
        t.sort_unstable();
        let ratio = raw.map_or(String::from("-"), |r| format!("{:.3}", ops_per_s[i] / r));
        println!(
            "{:<30} {:>10.1} {:>11} {:>9.1} {:>9.1} {:>9.1}",
            contender.name,
            ops_per_s[i] / 1e3,
            ratio,
            micros(percentile(t, 0.50)),
            micros(percentile(t, 0.99)),
            micros(percentile(t, 0.999)),
        );
    }
    println!();
}

fn l2_concurrent(c: &mut Criterion) {
    let s = setup();
    throughput(c, &s);
    latency(c, &s);
}

criterion_group! {
    name = benches;
    config = common::criterion(Duration::from_secs(4), 20);
    targets = l2_concurrent
}
criterion_main!(benches);
