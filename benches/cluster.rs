//! The L2 on a Redis Cluster against the L2 on one server (issue 13's targets), on throwaway servers: one redis-server and a local 3-primary + 3-replica cluster, side by side in one run.
//!
//! - `cluster/latency`: an L2 hit, one task. Contenders take turns read by read, so a
//!   disturbance on the machine hits all alike: `mdcache_server` (`Cache::get`, Redis backend,
//!   no L1, one server), `mdcache_cluster` (the same on the cluster: one `EVALSHA` of the
//!   `GET`+`PTTL` script on the key's primary), and the floors `raw_get_server` (`GET` on one
//!   multiplexed connection) and `raw_get_cluster` (`GET` on a redis-rs cluster connection).
//!   Target: `mdcache_cluster` p50 ≤ 1.2× `mdcache_server` p50.
//! - `cluster/flush`: the market-data writer's capacity: one task writes N distinct prices
//!   (`Cache::set`, queued) then `Cache::flush()`, round after round; keys flushed per
//!   second, median of alternating rounds on the server and on the cluster. Target: the
//!   cluster (3 primaries) ≥ 1.5× the server.
//!
//! Both reports print plain tables (no criterion groups: the comparison is the point, and it
//! must be taken in one run). Shortened under `cargo test --benches`.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{latency_samples, micros, percentile, price, two_worker_runtime};
use mdcache::{Backend, Cache, Key, Price};

/// A cache on `target` for the reports: Redis backend (no L1) for reads, layered with the
/// conflating writer for flushes; generous deadlines, prices that live an hour.
fn cache(target: &support::target::Target, backend: Backend, flush_keys: usize) -> Cache {
    let builder = Cache::builder()
        .backend(backend)
        .op_timeout(Duration::from_secs(1))
        .ttl_kind("price", Duration::from_secs(3600))
        .flush_max_keys(std::num::NonZeroUsize::new(flush_keys).expect("n > 0"));
    let builder = match target {
        support::target::Target::Server(s) => builder.redis_url(s.url()),
        support::target::Target::Cluster(c) => builder.redis_cluster(c.urls()),
    };
    builder.build().expect("cache")
}

/// One read by each way, timed.
enum Reader {
    Cache(Cache, Key<Price>),
    Raw(support::target::RawConn, String),
}

impl Reader {
    async fn read(&mut self) -> Duration {
        let t0 = Instant::now();
        let hit = match self {
            Reader::Cache(c, k) => c.get(k).await.expect("get").is_some(),
            Reader::Raw(c, k) => {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&*k)
                    .query_async(c)
                    .await
                    .expect("GET");
                std::hint::black_box(v).is_some()
            }
        };
        let took = t0.elapsed();
        assert!(hit, "a miss");
        took
    }
}

fn latency(
    rt: &tokio::runtime::Runtime,
    server: &support::target::Target,
    cluster: &support::target::Target,
) {
    use support::target::Reach;
    let reads = latency_samples("cluster", 40_000, 200);
    if reads == 0 {
        return;
    }
    let mut readers: Vec<(&str, Reader)> = rt.block_on(async {
        let mut out = Vec::new();
        for (name, target) in [("server", server), ("cluster", cluster)] {
            let c = cache(target, Backend::Redis, 256);
            let k = c.key::<Price>("AAPL").expect("key");
            c.set(&k, price(1), 1).await.expect("set");
            c.flush().await.expect("flush");
            let raw = target.raw().await;
            out.push((
                if name == "server" {
                    "mdcache_server"
                } else {
                    "mdcache_cluster"
                },
                Reader::Cache(c, k.clone()),
            ));
            out.push((
                if name == "server" {
                    "raw_get_server"
                } else {
                    "raw_get_cluster"
                },
                Reader::Raw(raw, k.as_str().to_owned()),
            ));
        }
        out
    });
    let samples = rt.block_on(async {
        // Warm-up: connections open, scripts loaded.
        for _ in 0..200 {
            for (_, r) in readers.iter_mut() {
                r.read().await;
            }
        }
        let mut samples = vec![Vec::with_capacity(reads); readers.len()];
        for _ in 0..reads {
            for ((_, r), out) in readers.iter_mut().zip(&mut samples) {
                out.push(r.read().await);
            }
        }
        samples
    });
    println!("\ncluster/latency: one task, {reads} reads per contender, taking turns (µs)");
    println!(
        "{:<18} {:>8} {:>8} {:>8} {:>8}  {:>20}",
        "contender", "p50", "p90", "p99", "p99.9", "p50 / mdcache_server"
    );
    let mut sorted: Vec<Vec<Duration>> = samples;
    for t in &mut sorted {
        t.sort_unstable();
    }
    let base = percentile(&sorted[0], 0.5);
    for ((name, _), t) in readers.iter().zip(&sorted) {
        let p50 = percentile(t, 0.5);
        println!(
            "{:<18} {:>8.1} {:>8.1} {:>8.1} {:>8.1}  {:>20.3}",
            name,
            micros(p50),
            micros(percentile(t, 0.9)),
            micros(percentile(t, 0.99)),
            micros(percentile(t, 0.999)),
            p50.as_secs_f64() / base.as_secs_f64()
        );
    }
}

/// One round on `cache`: N queued writes then a flush, `for_` long; keys flushed per second.
async fn flush_round(
    cache: &Cache,
    keys: &[Key<Price>],
    version: &AtomicU64,
    for_: Duration,
) -> f64 {
    let before = cache.stats().writer.expect("writer").flushed;
    let start = Instant::now();
    while start.elapsed() < for_ {
        let v = version.fetch_add(1, Ordering::Relaxed);
        for k in keys {
            cache.set(k, price(v), v).await.expect("set");
        }
        cache.flush().await.expect("flush");
    }
    let flushed = cache.stats().writer.expect("writer").flushed - before;
    flushed as f64 / start.elapsed().as_secs_f64()
}

fn flush(
    rt: &tokio::runtime::Runtime,
    server: &support::target::Target,
    cluster: &support::target::Target,
) {
    let rounds = latency_samples("cluster", 7, 1);
    if rounds == 0 {
        return;
    }
    println!(
        "\ncluster/flush: N queued prices then Cache::flush(), back to back; keys flushed/s, median of {rounds} alternating 1 s rounds"
    );
    println!(
        "{:>6} {:>14} {:>14} {:>18}",
        "N", "server", "cluster", "cluster / server"
    );
    for n in [256usize, 1024] {
        let (s, c) = rt.block_on(async {
            let on_server = cache(server, Backend::Layered, n);
            let on_cluster = cache(cluster, Backend::Layered, n);
            let keys = |c: &Cache| -> Vec<Key<Price>> {
                (0..n)
                    .map(|i| c.key::<Price>(&format!("F{i:05}")).expect("key"))
                    .collect()
            };
            let (ks, kc) = (keys(&on_server), keys(&on_cluster));
            let version = AtomicU64::new(1);
            let round = Duration::from_secs(1);
            // Warm-up.
            flush_round(&on_server, &ks, &version, round / 4).await;
            flush_round(&on_cluster, &kc, &version, round / 4).await;
            let (mut s, mut c) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                s.push(flush_round(&on_server, &ks, &version, round).await);
                c.push(flush_round(&on_cluster, &kc, &version, round).await);
            }
            for cache in [&on_server, &on_cluster] {
                let w = cache.stats().writer.expect("writer");
                assert_eq!(w.failed, 0, "{w:?}");
            }
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            (median(s), median(c))
        });
        println!("{n:>6} {s:>14.0} {c:>14.0} {:>18.2}", c / s);
    }
    println!();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = two_worker_runtime();
    let server = support::target::Target::server();
    let cluster = support::target::Target::cluster();
    latency(&rt, &server, &cluster);
    flush(&rt, &server, &cluster);
}
