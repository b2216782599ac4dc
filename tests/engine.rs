//! The engine behind `Cache`: what every handle over one cache shares.

mod support;

use std::sync::Arc;
use std::time::Duration;

use mdcache::{Cache, CacheAside, Counted, MemorySource, Position, Store, Tier};

/// Two `CacheAside` handles over one cache share their loads: concurrent misses of one key
/// through both call the source once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cache_aside_handles_over_one_cache_share_one_load() {
    let cache = Cache::builder().build().unwrap();
    let src = Arc::new(Counted::new(MemorySource::default()));
    let key = cache.key::<Position>("SHARED").unwrap();
    let position = Position {
        qty: 1.0,
        avg_price: 2.0,
        realized_pnl: 0.0,
        seq: 1,
    };
    src.inner().write(&key, &position).await.unwrap();
    // Long enough that every reader below joins the first load while it runs.
    src.inner().set_latency(Duration::from_millis(300));
    let a = CacheAside::builder(cache.clone(), Arc::clone(&src))
        .build()
        .unwrap();
    let b = CacheAside::builder(cache.clone(), Arc::clone(&src))
        .build()
        .unwrap();
    let mut readers = Vec::new();
    for i in 0..50 {
        let (aside, key) = (if i % 2 == 0 { a.clone() } else { b.clone() }, key.clone());
        readers.push(tokio::spawn(async move { aside.read(&key).await }));
    }
    for r in readers {
        let read = r.await.unwrap().unwrap().unwrap();
        assert!(matches!(read.tier, Tier::Source | Tier::L1));
    }
    assert_eq!(src.loads(), 1, "both handles' readers waited on one load");
}

/// The load limit that protects the database is the cache's: with room for one load, a
/// second handle's miss waits behind the first handle's load (and gives up after its wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_load_limit_is_shared_by_every_handle() {
    let cache = Cache::builder()
        .max_concurrent_loads(1)
        .overload_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let src = Arc::new(Counted::new(MemorySource::default()));
    let (k1, k2) = (
        cache.key::<Position>("ONE").unwrap(),
        cache.key::<Position>("TWO").unwrap(),
    );
    let p = Position {
        qty: 1.0,
        avg_price: 2.0,
        realized_pnl: 0.0,
        seq: 1,
    };
    src.inner().write(&k1, &p).await.unwrap();
    src.inner().write(&k2, &p).await.unwrap();
    src.inner().set_latency(Duration::from_secs(2));
    let a = CacheAside::builder(cache.clone(), Arc::clone(&src))
        .source_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let b = CacheAside::builder(cache.clone(), Arc::clone(&src))
        .build()
        .unwrap();
    let first = {
        let (a, k1) = (a.clone(), k1.clone());
        tokio::spawn(async move { a.get(&k1).await })
    };
    support::wait_for("the first load to hold the one slot", || src.loads() >= 1).await;
    let err = b
        .get(&k2)
        .await
        .expect_err("no slot left for the second handle");
    assert!(matches!(err, mdcache::LoadError::Overloaded(_)), "{err}");
    assert!(first.await.unwrap().unwrap().is_some());
    assert_eq!(cache.fallback_stats().overloaded, 1);
}
