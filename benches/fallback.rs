//! A read while the breaker is open (fallback to an in-memory source) vs calling that source directly.
//!
//! DESIGN §9 target: the breaker-open fallback adds at most 1 µs over the source's own latency.
//!
//! - `fallback/breaker_open_aside_get`: `CacheAside::get` on a layered cache whose Redis address
//!   is a closed port, after the breaker has opened; L1 is cleared before each timed read
//!   (outside the timing), so every read takes the fallback path: breaker check, single-flight,
//!   load slot, `MemorySource` load, L1 fill.
//! - `fallback/source_load_floor`: `MemorySource::load` of the same key.
//!
//! Run: `cargo bench --bench fallback`.

use std::hint::black_box;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use mdcache::{Backend, BreakerState, Cache, CacheAside, Load, MemorySource, Position, Store};
use tokio::runtime::Runtime;

fn fallback(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    // A port nothing listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (cache, aside, src, key) = rt.block_on(async {
        let cache = Cache::builder()
            .redis_url(format!("redis://127.0.0.1:{port}/"))
            .backend(Backend::Layered)
            .breaker_open(Duration::from_secs(3600))
            .build()
            .expect("cache");
        let src = Arc::new(MemorySource::default());
        let key = cache.key::<Position>("AAPL").expect("key");
        let pos = Position {
            qty: 1.0,
            avg_price: 2.0,
            realized_pnl: 0.0,
            seq: 1,
        };
        src.write(&key, &pos).await.expect("seed");
        let aside = CacheAside::builder(cache.clone(), src.clone())
            .build()
            .expect("default options are valid");
        // Open the breaker: reads fail against the closed port until it opens.
        for _ in 0..100 {
            cache.clear_l1();
            let _ = aside.get(&key).await;
            if cache
                .breaker()
                .is_some_and(|b| b.state == BreakerState::Open)
            {
                break;
            }
        }
        assert_eq!(cache.breaker().map(|b| b.state), Some(BreakerState::Open));
        (cache, aside, src, key)
    });

    let mut g = c.benchmark_group("fallback");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("breaker_open_aside_get", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    cache.clear_l1();
                    let t = Instant::now();
                    let r = aside.get(&key).await.expect("fallback read");
                    total += t.elapsed();
                    black_box(r);
                }
                total
            })
        })
    });
    g.bench_function("source_load_floor", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    cache.clear_l1(); // same untimed step as above, for the same cache effects
                    let t = Instant::now();
                    let r = src.load(&key).await.expect("load");
                    total += t.elapsed();
                    black_box(r);
                }
                total
            })
        })
    });
    g.finish();
}

criterion_group!(benches, fallback);
criterion_main!(benches);
