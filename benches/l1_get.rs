//! L1 hit: `Cache::get` on the memory backend against its floors, bare quick_cache and moka.
//!
//! DESIGN §9 target: an L1 hit costs at most 1.5× a bare quick_cache `get`; issue 15's: at
//! most 1.3× quick_cache `get` plus one read of the same clock (`quick_cache_get_plus_clock`),
//! the floor of any hit that checks a deadline. Every contender
//! returns an `Arc<Price>` (one refcount increment, and the drop of it) for the same key
//! string, so the difference is what `Cache::get` adds: the deadline check (one clock read),
//! the type check (`Arc<dyn Any>` downcast), the hit counter, and the future around it.
//!
//! `Cache::get` is async, but an L1 hit completes on its first poll, so it is polled once with
//! a no-op waker instead of going through a runtime (whose `block_on` alone costs more than
//! the lookup).
//!
//! - `l1_get/*`: one thread, one key.
//! - `l1_get_2threads/*`: two threads, each hammering its own key in the same map; the time
//!   reported is per operation per thread (the slower thread's total / iterations).

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::price;
use criterion::{Criterion, criterion_group, criterion_main};
use mdcache::{Cache, Key, Price};

/// Symbols read by the benches; thread `t` of the two-thread variant reads `SYMBOLS[t]`.
const SYMBOLS: [&str; 2] = ["AAPL", "MSFT"];
/// Other entries in every map, so lookups do not run against a near-empty table.
const FILLER: usize = 1_000;
/// Capacity of every map (mdcache's default `CACHE_L1_MAX_ENTRIES`).
const CAPACITY: usize = 100_000;

/// Polls the future `$fut` once, pinned where it is built (as `.await` does, so the bench
/// does not time a move of the future), and returns its output: every L1 path completes on
/// its first poll.
macro_rules! poll_once {
    ($fut:expr) => {{
        let mut cx = Context::from_waker(Waker::noop());
        match pin!($fut).poll(&mut cx) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("the L1 path should complete on its first poll"),
        }
    }};
}

/// The three contenders, holding the same entries under the same key strings.
struct Maps {
    cache: Cache,
    keys: Vec<Key<Price>>,
    /// `mdc:price:{SYMBOL}` for each of `SYMBOLS`, as the bare maps are keyed.
    names: Vec<Arc<str>>,
    quick: quick_cache::sync::Cache<Arc<str>, Arc<Price>>,
    moka: moka::sync::Cache<Arc<str>, Arc<Price>>,
    hashmap: HashMap<Arc<str>, Arc<Price>>,
    /// The clock `Cache` reads deadlines from, for the "lookup plus one clock read" floor.
    clock: mdcache::Clock,
}

impl Maps {
    fn new() -> Maps {
        // Price's TTL is 100 ms; an hour keeps the entry a hit for the whole run.
        let cache = Cache::builder()
            .ttl_kind("price", Duration::from_secs(3600))
            .build()
            .expect("memory cache");
        let quick = quick_cache::sync::Cache::new(CAPACITY);
        let moka = moka::sync::Cache::new(CAPACITY as u64);
        let mut hashmap = HashMap::new();
        let filler = (0..FILLER).map(|i| format!("SYM{i}"));
        for (seq, id) in SYMBOLS
            .iter()
            .map(|s| s.to_string())
            .chain(filler)
            .enumerate()
        {
            let key = cache.key::<Price>(&id).expect("valid key");
            let seq = seq as u64 + 1;
            poll_once!(cache.set(&key, price(seq), seq)).expect("memory set");
            let name: Arc<str> = Arc::from(key.as_str());
            let value = Arc::new(price(seq));
            quick.insert(Arc::clone(&name), Arc::clone(&value));
            moka.insert(Arc::clone(&name), Arc::clone(&value));
            hashmap.insert(name, value);
        }
        let keys: Vec<Key<Price>> = SYMBOLS
            .iter()
            .map(|s| cache.key::<Price>(s).expect("valid key"))
            .collect();
        let names: Vec<Arc<str>> = keys.iter().map(|k| Arc::from(k.as_str())).collect();
        for (key, name) in keys.iter().zip(&names) {
            let ours = poll_once!(cache.get(key)).expect("memory get");
            assert!(ours.is_some(), "{key} should be an L1 hit");
            assert!(quick.get(&**name).is_some() && moka.get(&**name).is_some());
        }
        Maps {
            cache,
            keys,
            names,
            quick,
            moka,
            hashmap,
            clock: mdcache::Clock::system(),
        }
    }
}

fn one_thread(c: &mut Criterion, m: &Maps) {
    let mut group = c.benchmark_group("l1_get");
    let (key, name) = (&m.keys[0], &*m.names[0]);
    group.bench_function("mdcache_get", |b| {
        b.iter(|| poll_once!(m.cache.get(black_box(key))))
    });
    group.bench_function("quick_cache_get", |b| {
        b.iter(|| m.quick.get(black_box(name)))
    });
    // The honest floor of a TTL'd hit (issue 15): the bare lookup plus the one monotonic clock
    // read a deadline check needs, on the clock mdcache uses.
    group.bench_function("quick_cache_get_plus_clock", |b| {
        b.iter(|| (m.quick.get(black_box(name)), m.clock.now()))
    });
    group.bench_function("moka_sync_get", |b| b.iter(|| m.moka.get(black_box(name))));
    // DESIGN §9's "unlocked HashMap" reference: a lookup with no lock and no eviction policy.
    group.bench_function("hashmap_unlocked_get", |b| {
        b.iter(|| m.hashmap.get(black_box(name)).cloned())
    });
    group.finish();
}

/// Runs `op(t)` `iters` times on each of two threads `t = 0, 1` started together, and returns
/// the slower thread's time: `iters` operations per thread under two-thread contention.
fn on_two_threads(iters: u64, op: impl Fn(usize) + Sync) -> Duration {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (op, start) = (&op, &start);
                s.spawn(move || {
                    start.wait();
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        op(t);
                    }
                    t0.elapsed()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

fn two_threads(c: &mut Criterion, m: &Maps) {
    let mut group = c.benchmark_group("l1_get_2threads");
    group.bench_function("mdcache_get", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, |t| {
                black_box(poll_once!(m.cache.get(black_box(&m.keys[t]))).ok());
            })
        })
    });
    group.bench_function("quick_cache_get", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, |t| {
                black_box(m.quick.get(black_box(&*m.names[t])));
            })
        })
    });
    group.bench_function("quick_cache_get_plus_clock", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, |t| {
                black_box((m.quick.get(black_box(&*m.names[t])), m.clock.now()));
            })
        })
    });
    group.bench_function("moka_sync_get", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, |t| {
                black_box(m.moka.get(black_box(&*m.names[t])));
            })
        })
    });
    group.finish();
}

fn l1_get(c: &mut Criterion) {
    let maps = Maps::new();
    one_thread(c, &maps);
    two_threads(c, &maps);
}

criterion_group! {
    name = benches;
    config = common::criterion(Duration::from_secs(3), 50);
    targets = l1_get
}
criterion_main!(benches);
