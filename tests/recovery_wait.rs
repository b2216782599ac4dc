//! Waiting for recovery instead of polling: `Cache::recovered()` resolves once the breaker is closed and the dirty log replayed, against a real redis-server killed and restarted.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::num::NonZeroU32;
use std::time::Duration;

use fixtures::price;
use mdcache::{Backend, BreakerState, Cache, Price, WriteOutcome};
use support::RedisServer;

/// Generous: recovery takes one open period (200 ms) and a probe on a healthy machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);

fn layered(server: &RedisServer) -> Cache {
    Cache::builder()
        .redis_url(server.url())
        .backend(Backend::Layered)
        .op_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(500))
        .breaker_failures(NonZeroU32::MIN)
        .breaker_open(Duration::from_millis(200))
        .probe_timeout(Duration::from_secs(1))
        .build()
        .expect("layered cache")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_resolves_once_the_breaker_closes_and_the_dirty_log_is_replayed() {
    let mut server = RedisServer::start();
    let cache = layered(&server);
    let key = cache.key::<Price>("RECOVER").unwrap();
    cache
        .set(&key, price(1), 1)
        .await
        .expect("set while healthy");
    tokio::time::timeout(RECOVERY_BOUND, cache.recovered())
        .await
        .expect("a healthy cache has nothing to recover");

    // Redis dies: one failed read opens the breaker, and a write stays local and dirty.
    server.kill();
    let absent = cache.key::<Price>("NOT-IN-L1").unwrap();
    assert!(
        cache.read(&absent).await.is_err(),
        "a read of a dead redis fails"
    );
    assert_ne!(cache.breaker().unwrap().state, BreakerState::Closed);
    let outcome = cache.set(&key, price(2), 2).await.expect("kept locally");
    assert_eq!(outcome, WriteOutcome::LocalOnly);
    assert!(cache.dirty_log().contains(key.as_str()));

    // A waiter started during the outage does not resolve while Redis stays down...
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move { cache.recovered().await }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !waiter.is_finished(),
        "recovered() resolved while Redis was down"
    );
    assert_ne!(cache.breaker().unwrap().state, BreakerState::Closed);

    // ...and resolves once Redis is back, the probe succeeded and the dirty log is replayed.
    // Kept: dropping the handle would kill the restarted server.
    let _server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restart");
    tokio::time::timeout(RECOVERY_BOUND, waiter)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "not recovered within {RECOVERY_BOUND:?}: {:?}, dirty {}",
                cache.breaker(),
                cache.dirty_log().len()
            )
        })
        .expect("waiter task");
    let b = cache.breaker().unwrap();
    assert_eq!(b.state, BreakerState::Closed);
    assert_eq!((b.opened, b.closed), (1, 1));
    assert!(cache.dirty_log().is_empty(), "recovered before the replay");
    cache.ping().await.expect("Redis is used again");

    // Already recovered: resolves at once.
    tokio::time::timeout(Duration::from_secs(1), cache.recovered())
        .await
        .expect("no outage, no wait");
}

#[tokio::test]
async fn a_memory_only_cache_is_always_recovered() {
    let cache = Cache::builder().build().unwrap();
    tokio::time::timeout(Duration::from_secs(1), cache.recovered())
        .await
        .expect("nothing to recover");
}
