//! Recovery after Redis comes back: the breaker's probe and the pool it probes through, against a real server behind the fault proxy.

mod support;

use std::num::NonZeroU32;
use std::time::Duration;

use mdcache::{Backend, BreakerState, Cache, Price};
use support::proxy::FaultProxy;
use support::{RedisServer, wait_for};

/// Every pooled socket died while the breaker was open (connections reset during the
/// outage): recovery must not find the dead sockets one probe period at a time. The first
/// probe that meets a dead socket retires the pool and asks again on a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_probe_recovers_a_pool_whose_sockets_died_during_the_outage() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr());
    let pool = 8;
    let cache = Cache::builder()
        .redis_url(proxy.url_for_redis())
        .backend(Backend::Layered)
        .pool_size(NonZeroU32::new(pool).unwrap())
        .op_timeout(Duration::from_millis(50))
        .connect_timeout(Duration::from_secs(5))
        .breaker_failures(NonZeroU32::new(1).unwrap())
        .breaker_open(Duration::from_millis(200))
        .probe_timeout(Duration::from_secs(5))
        // The proxy counts the pool's sockets: no backplane subscriber beside them.
        .backplane(false)
        .build()
        .expect("cache");
    wait_for("the pool to fill", || proxy.connections() >= pool as usize).await;
    cache.ping().await.expect("ping");

    // Redis too slow: the breaker opens, and the probes (which time out) replace the pool's
    // sockets with fresh ones.
    proxy.set_latency(Duration::from_millis(100));
    let key = cache.key::<Price>("SLOW").unwrap();
    let _ = cache.get(&key).await;
    let probes = || cache.breaker().expect("breaker").probes;
    wait_for("three failed probes", || probes() >= 3).await;
    wait_for("a full pool of fresh sockets", || {
        proxy.connections() == pool as usize
    })
    .await;
    assert_ne!(cache.breaker().unwrap().state, BreakerState::Closed);

    // Now every one of those sockets dies, and Redis is fast again.
    proxy.reset_all();
    proxy.set_latency(Duration::ZERO);
    let before = probes();
    wait_for("the breaker to close", || {
        cache.breaker().expect("breaker").state == BreakerState::Closed
    })
    .await;
    let used = probes() - before;
    assert!(used <= 2, "{used} probes to recover");
    cache.get(&key).await.expect("reads work again");
}
