//! L2 hits from 64 concurrent tasks: `Cache::get` on the Redis backend (pools of 16, 4 and 1
//! multiplexed connections) against raw `GET` on one shared multiplexed connection.
//!
//! DESIGN §9 target: 64-task L2 throughput at least 0.9× one shared multiplexed connection.
//! One iteration is one read by each of 64 tasks (`Throughput::Elements(64)`): a sample of
//! `n` iterations spawns 64 tasks on a 2-worker runtime, each doing `n` sequential reads of
//! the same key, and times them all to the last one.
//!
//! - `mdcache_pool16` / `mdcache_pool4` / `mdcache_pool1`: `Cache::get`, `Backend::Redis`
//!   (no L1), 1 s deadline; 16 is the default `CACHE_POOL_SIZE`.
//! - `raw_get_shared_mux`: `GET` on clones of one `MultiplexedConnection` — the floor.
//! - `raw_multi_get_pttl_shared_mux`: `MULTI GET PTTL EXEC` on that connection, what
//!   `Cache::get` sends — separates the protocol's cost from the pool's.
//! - References for where the difference goes: `raw_evalsha_get_pttl_shared_mux` (the same
//!   two reads, atomic, as one Lua script call), `raw_pipe_get_pttl_shared_mux` (the same two
//!   reads as a plain, non-atomic pipeline) and `raw_get_16_mux` (raw `GET`, the 64 tasks
//!   spread over 16 multiplexed connections, as over a pool of 16).
//!
//! After the criterion group, `l2_concurrent/latency` prints throughput and per-read
//! p50/p99/p99.9 for each contender, contenders interleaved in rounds.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mdcache::{Backend, Cache, Key, Price};
use redis::aio::MultiplexedConnection;
use tokio::runtime::Runtime;

/// Concurrent tasks, as in DESIGN §9.
const TASKS: usize = 64;

/// Reads the key and its remaining TTL in one script call.
const GET_PTTL_SCRIPT: &str = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}";

fn price() -> Price {
    Price {
        bid: 189.51,
        ask: 189.53,
        bid_size: 300.0,
        ask_size: 200.0,
        last: 189.52,
        seq: 42,
        exchange_ts_ns: 1_763_700_000_000_000_000,
    }
}

/// One way of reading the key; each task holds its own clone.
#[derive(Clone)]
enum Contender {
    Ours(&'static str, Cache, Key<Price>),
    RawGet(MultiplexedConnection, String),
    RawMulti(MultiplexedConnection, String),
    RawPipe(MultiplexedConnection, String),
    RawScript(MultiplexedConnection, String, redis::Script),
    /// Task `i` reads with `GET` on connection `i % len`.
    RawGetSpread(Vec<MultiplexedConnection>, String),
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Contender::Ours(name, ..) => name,
            Contender::RawGet(..) => "raw_get_shared_mux",
            Contender::RawMulti(..) => "raw_multi_get_pttl_shared_mux",
            Contender::RawPipe(..) => "raw_pipe_get_pttl_shared_mux",
            Contender::RawScript(..) => "raw_evalsha_get_pttl_shared_mux",
            Contender::RawGetSpread(..) => "raw_get_16_mux",
        }
    }

    /// One read; panics unless it is a hit.
    async fn read(&mut self) {
        let hit = match self {
            Contender::Ours(_, cache, key) => cache.get(key).await.expect("mdcache get").is_some(),
            Contender::RawGet(c, key) => {
                let v: Option<Vec<u8>> = redis::cmd("GET").arg(&*key).query_async(c).await.unwrap();
                black_box(v).is_some()
            }
            Contender::RawMulti(c, key) => {
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
            Contender::RawPipe(c, key) => {
                let (v, ttl): (Option<Vec<u8>>, i64) = redis::pipe()
                    .get(&*key)
                    .pttl(&*key)
                    .query_async(c)
                    .await
                    .unwrap();
                black_box(ttl);
                black_box(v).is_some()
            }
            Contender::RawScript(c, key, script) => {
                let (v, ttl): (Option<Vec<u8>>, i64) =
                    script.key(&*key).invoke_async(c).await.unwrap();
                black_box(ttl);
                black_box(v).is_some()
            }
            Contender::RawGetSpread(..) => unreachable!("replaced by `for_task`"),
        };
        assert!(hit, "{} missed", self.name());
    }

    /// The contender as task `i` runs it.
    fn for_task(&self, i: usize) -> Contender {
        match self {
            Contender::RawGetSpread(conns, key) => {
                Contender::RawGet(conns[i % conns.len()].clone(), key.clone())
            }
            other => other.clone(),
        }
    }
}

struct Setup {
    rt: Runtime,
    contenders: Vec<Contender>,
    /// Last: dropped after the connections that use it.
    _server: support::RedisServer,
}

fn setup() -> Setup {
    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let contenders = rt.block_on(async {
        let ours = |name: &'static str, pool: u32| {
            let cache = Cache::builder()
                .backend(Backend::Redis)
                .redis_url(server.url())
                .pool_size(NonZeroU32::new(pool).expect("non-zero pool"))
                .op_timeout(Duration::from_secs(1))
                // Price's TTL is 100 ms; an hour keeps the key a hit for the whole run.
                .ttl("price", Duration::from_secs(3600))
                .build()
                .expect("redis cache");
            let key = cache.key::<Price>("AAPL").expect("valid key");
            Contender::Ours(name, cache, key)
        };
        let mut contenders = vec![
            ours("mdcache_pool16", 16),
            ours("mdcache_pool4", 4),
            ours("mdcache_pool1", 1),
        ];
        if let Contender::Ours(_, cache, key) = &contenders[0] {
            cache.set(key, price(), 42).await.expect("set");
        }
        let conn = server.multiplexed().await;
        let name = contenders[0].key_name();
        contenders.push(Contender::RawGet(conn.clone(), name.clone()));
        contenders.push(Contender::RawMulti(conn.clone(), name.clone()));
        contenders.push(Contender::RawScript(
            conn.clone(),
            name.clone(),
            redis::Script::new(GET_PTTL_SCRIPT),
        ));
        contenders.push(Contender::RawPipe(conn, name.clone()));
        let mut spread = Vec::new();
        for _ in 0..16 {
            spread.push(server.multiplexed().await);
        }
        contenders.push(Contender::RawGetSpread(spread, name));
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

impl Contender {
    fn key_name(&self) -> String {
        match self {
            Contender::Ours(_, _, key) => key.as_str().to_owned(),
            Contender::RawGet(_, key)
            | Contender::RawMulti(_, key)
            | Contender::RawPipe(_, key)
            | Contender::RawScript(_, key, _)
            | Contender::RawGetSpread(_, key) => key.clone(),
        }
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
        group.bench_function(contender.name(), |b| {
            b.to_async(&s.rt)
                .iter_custom(|iters| async move { run_tasks(contender, iters, false).await.0 })
        });
    }
    group.finish();
}

/// How many rounds the latency report takes: full under `cargo bench`, a smoke run under
/// `cargo test --benches`, none for `--list` or a filter that excludes it.
fn latency_rounds() -> usize {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filtered_out = args
        .iter()
        .any(|a| !a.starts_with('-') && !"l2_concurrent/latency".contains(a.as_str()));
    if filtered_out || args.iter().any(|a| a == "--list") {
        0
    } else if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test") {
        12
    } else {
        1
    }
}

/// Reads per task per round of the latency report.
const ROUND: u64 = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn latency(_: &mut Criterion, s: &Setup) {
    let rounds = latency_rounds();
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
        .position(|c| matches!(c, Contender::RawGet(..)))
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
            contender.name(),
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
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20);
    targets = l2_concurrent
}
criterion_main!(benches);
