//! The test support's Redis Cluster and the cache on it (issue 13): 3 primaries and 3 replicas converge, `Key::slot` agrees with the cluster's own `CLUSTER KEYSLOT`, and the conflating writer's batches split by slot reach every primary and read back across slots.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::time::Duration;

use support::RedisServer;
use support::cluster::RedisCluster;

/// For each key (all written), whether `primary` holds it: a primary counts only the keys of
/// its own slots (`CLUSTER COUNTKEYSINSLOT`).
async fn held_by<S: mdcache::KeySchema>(
    primary: &RedisServer,
    keys: &[mdcache::Key<S>],
) -> Vec<bool> {
    let mut c = primary.multiplexed().await;
    let mut held = Vec::new();
    for k in keys {
        let here: i64 = redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(k.slot())
            .query_async(&mut c)
            .await
            .unwrap();
        held.push(here > 0);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_converges_and_serves_every_slot() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.primaries().len(), 3);
    // redis-rs's cluster defaults (16 retries, no response timeout) are not what mdcache
    // will run with: bounded here as there.
    let client = redis::cluster::ClusterClientBuilder::new(cluster.urls())
        .retries(2)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut con = tokio::time::timeout(Duration::from_secs(10), client.get_async_connection())
        .await
        .expect("connected within 10 s")
        .unwrap();
    // Keys of 200 symbols land on slots of all three primaries (each symbol's hash tag
    // picks one).
    let cache = mdcache::Cache::builder().build().unwrap();
    let mut slots = std::collections::HashSet::new();
    for i in 0..200 {
        let typed = cache.key::<mdcache::Price>(&format!("SYM{i:04}")).unwrap();
        let key = typed.as_str().to_owned();
        let slot: u32 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(u32::from(typed.slot()), slot, "{key}");
        slots.insert(slot * 3 / 16_384);
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .query_async(&mut con)
            .await
            .unwrap();
        let got: u32 = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(got, i);
    }
    assert_eq!(slots.len(), 3, "the symbols' slots span the key space");
}

/// The conflating writer on a cluster: prices and book sides of 200 symbols (every primary
/// holds some) queued, flushed in one batch split by slot, and read back by another instance
/// in one `get_many` across slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_flushes_across_slots_and_another_instance_reads_them() {
    let cluster = RedisCluster::start();
    let build = || {
        mdcache::Cache::builder()
            .redis_cluster(cluster.urls())
            .op_timeout(Duration::from_secs(2))
            .ttl_kind("price", Duration::from_secs(60))
            .ttl_kind("book", Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let (feed, engine) = (build(), build());
    for i in 0..200u64 {
        let k = feed.key::<mdcache::Price>(&format!("S{i}")).unwrap();
        assert_eq!(
            feed.set(&k, fixtures::price(i + 1), i + 1).await.unwrap(),
            mdcache::WriteOutcome::Queued
        );
        let b = feed.key::<mdcache::BookBid>(&format!("S{i}")).unwrap();
        feed.set_book(&b, fixtures::book([(i as f64, 1.0)]), i + 1)
            .await
            .unwrap();
    }
    feed.flush().await.unwrap();
    let w = feed.stats().writer.unwrap();
    assert_eq!((w.flushed, w.failed), (400, 0), "{w:?}");
    for node in cluster.primaries() {
        assert!(node.dbsize() > 0, "a primary holds none of the keys");
    }
    let keys: Vec<_> = (0..210u64)
        .map(|i| engine.key::<mdcache::Price>(&format!("S{i}")).unwrap())
        .collect();
    let got = engine.get_many(&keys).await.unwrap();
    for (i, r) in got.iter().enumerate() {
        match r {
            Some(r) => assert_eq!((i < 200, r.version), (true, i as u64 + 1)),
            None => assert!(i >= 200, "S{i} missing"),
        }
    }
    let b = engine.key::<mdcache::BookBid>("S7").unwrap();
    let side = engine.read_book(&b, 0).await.unwrap().unwrap();
    assert_eq!((side.version, side.value.levels[0].price), (8, 7.0));
}

/// A hung primary fails only its own keys of a writer flush: the other primaries' keys land,
/// the hung one's are counted failed and recorded dirty (distrusted until recovery deletes
/// them from Redis), and nothing else is. Once the primary answers again, recovery empties
/// the dirty log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_fails_only_its_keys_of_a_flush() {
    let cluster = RedisCluster::start();
    let feed = mdcache::Cache::builder()
        .redis_cluster(cluster.urls())
        .op_timeout(Duration::from_millis(200))
        .flush_timeout(Duration::from_millis(400))
        .ttl_kind("price", Duration::from_secs(60))
        .build()
        .unwrap();
    let keys: Vec<_> = (0..90u64)
        .map(|i| feed.key::<mdcache::Price>(&format!("H{i}")).unwrap())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        feed.set(k, fixtures::price(1), 1 + i as u64).await.unwrap();
    }
    feed.flush().await.unwrap();
    let hung = cluster.primaries()[0];
    let mine = held_by(hung, &keys).await;
    let on_hung = mine.iter().filter(|&&m| m).count();
    assert!(
        on_hung > 0 && on_hung < keys.len(),
        "{on_hung} of 90 on one primary"
    );
    hung.pause();
    for (i, k) in keys.iter().enumerate() {
        feed.set(k, fixtures::price(2), 100 + i as u64)
            .await
            .unwrap();
    }
    let flushed = feed.flush().await;
    let w = feed.stats().writer.unwrap();
    let dirty: Vec<bool> = keys
        .iter()
        .map(|k| feed.dirty_log().contains(k.as_str()))
        .collect();
    hung.resume();
    assert!(flushed.is_err(), "a flush with failed keys reports it");
    assert_eq!(w.failed as usize, on_hung, "{w:?}");
    assert_eq!(dirty, mine, "exactly the hung primary's keys are dirty");
    // The breaker stayed closed: two primaries of three answered.
    assert_eq!(feed.breaker().unwrap().opened, 0);
    // Recovery deletes them from Redis once the primary answers.
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    while !feed.dirty_log().is_empty() {
        assert!(
            std::time::Instant::now() < give_up,
            "dirty keys never replayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A primary hung for good: the cluster promotes its replica, and the cache must find it —
/// reads of that primary's keys come back from L2 (not the source) without the old primary
/// ever answering again, although the other primaries' successes keep the breaker closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_hung_for_good_is_replaced_by_its_replica_for_the_cache_too() {
    let cluster = RedisCluster::start();
    let cache = mdcache::Cache::builder()
        .redis_cluster(cluster.urls())
        .backend(mdcache::Backend::Redis)
        .op_timeout(Duration::from_millis(100))
        .no_conflation()
        .ttl_kind("pos", Duration::from_secs(120))
        .build()
        .unwrap();
    let keys: Vec<_> = (0..30u64)
        .map(|i| cache.key::<mdcache::Position>(&format!("G{i}")).unwrap())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        cache.set(k, fixtures::pos(i as f64), 1).await.unwrap();
    }
    // Replicated before the primary hangs (WAIT on every primary would be stricter; the
    // replicas are local and diskless).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hung = cluster.primaries()[0];
    hung.pause();
    // Keep reading every key until each one is served by Redis again (its replica, promoted).
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for k in &keys {
            match cache.get(k).await {
                Ok(Some(_)) => {}
                _ => all = false,
            }
        }
        if all {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "the hung primary's keys never came back: {:?}",
            cache.breaker()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hung.resume();
}

/// A shard with no replica left to promote (its primary and replica both hung): its own
/// breaker opens, so its keys fail fast (`BreakerOpen`, no deadline spent) while the other
/// shards keep serving from Redis; a write to it is recorded dirty. Once the shard answers
/// again, its breaker closes, the dirty key is deleted from Redis, and every key reads again.
///
/// The other shards' first reads load the read script there (`NOSCRIPT`, then `SCRIPT
/// LOAD`), which redis-rs alone would send to every node, the hung ones too, failing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shard_opens_its_own_breaker_and_the_other_shards_serve() {
    let cluster = RedisCluster::start();
    let cache = mdcache::Cache::builder()
        .redis_cluster(cluster.urls())
        .backend(mdcache::Backend::Redis)
        .op_timeout(Duration::from_millis(100))
        .breaker_open(Duration::from_millis(300))
        .no_conflation()
        .ttl_kind("pos", Duration::from_secs(120))
        .build()
        .unwrap();
    let keys: Vec<_> = (0..30u64)
        .map(|i| cache.key::<mdcache::Position>(&format!("D{i}")).unwrap())
        .collect();
    for k in &keys {
        cache.set(k, fixtures::pos(1.0), 1).await.unwrap();
    }
    let (p, r) = cluster.primary_and_replica();
    let dead = held_by(&cluster.nodes[p], &keys).await;
    let on_dead = dead.iter().filter(|&&d| d).count();
    assert!(on_dead > 0 && on_dead < keys.len(), "{on_dead} of 30");
    // Every shard known before the fault (the cache asked the cluster when it connected).
    assert_eq!(
        cache.shard_breakers().len(),
        3,
        "{:?}",
        cache.shard_breakers()
    );
    cluster.nodes[r].pause();
    cluster.nodes[p].pause();
    // Reads of the dead shard's keys time out until its breaker opens.
    let first_dead = keys.iter().zip(&dead).find(|(_, d)| **d).unwrap().0;
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let err = cache.get(first_dead).await.unwrap_err();
        if err.kind() == mdcache::ErrorKind::BreakerOpen {
            break;
        }
        assert!(err.trips_breaker(), "{err}");
        assert!(
            std::time::Instant::now() < give_up,
            "the shard never opened"
        );
    }
    let open: Vec<_> = cache
        .shard_breakers()
        .into_iter()
        .filter(|s| s.breaker.state != mdcache::BreakerState::Closed)
        .collect();
    assert_eq!(
        open.len(),
        1,
        "only the dead shard's breaker opened: {open:?}"
    );
    assert_eq!(
        open[0].primary.as_deref(),
        Some(format!("127.0.0.1:{}", cluster.nodes[p].port()).as_str())
    );
    assert_eq!(
        cache.breaker().unwrap().state,
        mdcache::BreakerState::Open,
        "the summary shows the open shard"
    );
    // The open period (300 ms) may end and a probe fail in between: an open shard's keys
    // fail fast or (while half-open) are refused too, never served, and the others serve.
    for (k, &d) in keys.iter().zip(&dead) {
        match cache.get(k).await {
            Ok(Some(v)) => assert!(!d, "a dead shard's key was served: {v:?}"),
            Ok(None) => panic!("{} missing", k.as_str()),
            Err(e) => assert!(d, "a live shard's key failed: {e}"),
        }
    }
    // A write to the dead shard: not in Redis, recorded dirty.
    assert!(cache.set(first_dead, fixtures::pos(2.0), 2).await.is_err());
    assert!(cache.dirty_log().contains(first_dead.as_str()));
    cluster.nodes[p].resume();
    cluster.nodes[r].resume();
    tokio::time::timeout(Duration::from_secs(30), cache.recovered())
        .await
        .expect("recovered within 30 s");
    assert!(cache.dirty_log().is_empty());
    assert!(
        cache
            .shard_breakers()
            .iter()
            .all(|s| s.breaker.state == mdcache::BreakerState::Closed
                && s.breaker.opened <= s.breaker.closed),
        "{:?}",
        cache.shard_breakers()
    );
    // The dirty key was deleted from Redis (a reader would otherwise see version 1 after
    // the source's 2); every other key reads from Redis again.
    for (k, _) in keys.iter().zip(&dead) {
        let got = cache.get(k).await.unwrap();
        if k.as_str() == first_dead.as_str() {
            assert!(got.is_none(), "the dirty key is gone from Redis");
        } else {
            assert_eq!(got.unwrap().qty, 1.0);
        }
    }
}
