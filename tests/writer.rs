//! The conflating market-data writer (issue 11, DESIGN §4 rule 8) against a real redis-server: latest version wins, nothing goes backwards, failed flushes end in the dirty log, the writer stops with its cache, pending memory stays bounded, and a second instance sees the ticks through Redis.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use fixtures::{book, price};
use mdcache::{Backend, BookBid, BreakerState, Cache, Position, Price, Tier, WriteOutcome, codec};
use redis::AsyncCommands;
use support::{RedisServer, TEST_OP_TIMEOUT, wait_for};

/// A layered cache on `server` with prices and books kept for a minute (the tests are not
/// about expiry) and the default writer.
fn on(server: &RedisServer) -> mdcache::CacheBuilder {
    Cache::builder()
        .redis_url(server.url())
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("price", Duration::from_secs(60))
        .ttl_kind("book", Duration::from_secs(60))
}

/// The version of the envelope Redis holds at `key`, if any.
async fn redis_version(server: &RedisServer, key: &str) -> Option<u64> {
    let mut c = server.multiplexed().await;
    let bytes: Option<Vec<u8>> = c.get(key).await.expect("GET");
    bytes.map(|b| codec::peek_version(&b).expect("an envelope"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_data_writes_are_queued_and_reach_redis_with_the_flush() {
    let server = RedisServer::start();
    // A long interval: nothing reaches Redis until `flush` asks.
    let cache = on(&server)
        .flush_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let key = cache.key::<Price>("ESZ6").unwrap();
    assert_eq!(
        cache.set(&key, price(7), 7).await.unwrap(),
        WriteOutcome::Queued
    );
    // This process reads it at once, from L1.
    let r = cache.read(&key).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::L1, 7));
    cache.flush().await.expect("flushed");
    assert_eq!(redis_version(&server, key.as_str()).await, Some(7));
    let w = cache.stats().writer.expect("a writer with a redis tier");
    assert_eq!((w.enqueued, w.flushed, w.failed, w.pending), (1, 1, 0, 0));
    assert!(w.batches >= 1 && w.lag_max_us > 0, "{w:?}");
    // Positions never conflate: in Redis before `set` returns.
    let pos = cache.key::<Position>("ESZ6").unwrap();
    assert_eq!(
        cache.set(&pos, fixtures::pos(1.0), 1).await.unwrap(),
        WriteOutcome::Applied
    );
    assert_eq!(redis_version(&server, pos.as_str()).await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_version_wins_in_redis_after_a_burst_of_out_of_order_writes() {
    let server = RedisServer::start();
    let cache = on(&server).build().unwrap();
    let keys: Vec<_> = (0..50)
        .map(|i| cache.key::<Price>(&format!("S{i:03}")).unwrap())
        .collect();
    // Each key gets versions 1..=40 in a scrambled order, the highest somewhere in the middle.
    let order: Vec<u64> = (0..40u64).map(|i| (i * 17) % 40 + 1).collect();
    let mut queued = 0;
    for v in &order {
        for key in &keys {
            match cache.set(key, price(*v), *v).await.unwrap() {
                WriteOutcome::Queued => queued += 1,
                WriteOutcome::Superseded => {}
                other => panic!("unexpected outcome {other:?}"),
            }
        }
    }
    cache.flush().await.expect("flushed");
    for key in &keys {
        assert_eq!(redis_version(&server, key.as_str()).await, Some(40));
        assert_eq!(cache.read(key).await.unwrap().unwrap().version, 40);
    }
    let w = cache.stats().writer.unwrap();
    assert_eq!(w.enqueued, queued);
    // Every write is accounted for: queued (then flushed or conflated away) or superseded.
    let written = w.flushed + w.superseded + w.conflated;
    assert_eq!(written, w.enqueued, "{w:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflated_writes_never_lower_a_version() {
    let server = RedisServer::start();
    let cache = on(&server)
        .flush_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let key = cache.key::<Price>("NQZ6").unwrap();
    let bid = cache.key::<BookBid>("NQZ6").unwrap();
    assert_eq!(
        cache.set(&key, price(10), 10).await.unwrap(),
        WriteOutcome::Queued
    );
    // Lower versions after it: refused by L1's version rule, never queued over it.
    for v in [9, 3, 1] {
        assert_eq!(
            cache.set(&key, price(v), v).await.unwrap(),
            WriteOutcome::Superseded
        );
    }
    cache
        .set_book(&bid, book([(1.0, 1.0), (2.0, 2.0)]), 5)
        .await
        .unwrap();
    assert_eq!(
        cache.set_book(&bid, book([(3.0, 1.0)]), 4).await.unwrap(),
        WriteOutcome::Superseded
    );
    // Even with L1 dropped, the queued write (not Redis's nothing) is what reads see.
    cache.clear_l1();
    assert_eq!(cache.read(&key).await.unwrap().unwrap().version, 10);
    let side = cache.read_book(&bid, 0).await.unwrap().unwrap();
    assert_eq!(side.version, 5);
    assert_eq!(side.value.levels[0].price, 2.0, "best bid first");
    cache.flush().await.unwrap();
    assert_eq!(redis_version(&server, key.as_str()).await, Some(10));
    // A second instance writing an older version through Redis cannot lower it either.
    let other = on(&server).build().unwrap();
    let okey = other.key::<Price>("NQZ6").unwrap();
    other.set(&okey, price(8), 8).await.unwrap();
    other.flush().await.unwrap();
    assert_eq!(redis_version(&server, key.as_str()).await, Some(10));
    assert_eq!(other.stats().writer.unwrap().superseded, 1);
    let fresh = on(&server).build().unwrap();
    let r = fresh
        .read(&fresh.key::<Price>("NQZ6").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.tier, r.version), (Tier::L2, 10));
    let side = fresh
        .read_book(&fresh.key::<BookBid>("NQZ6").unwrap(), 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((side.tier, side.version), (Tier::L2, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_during_a_redis_hang_ends_in_the_dirty_log_and_recovery_deletes_the_keys() {
    let server = RedisServer::start();
    let cache = on(&server)
        .op_timeout(Duration::from_millis(200))
        .breaker_failures(NonZeroU32::new(1).unwrap())
        .breaker_open(Duration::from_millis(300))
        .flush_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let key = cache.key::<Price>("HANG").unwrap();
    cache.set(&key, price(1), 1).await.unwrap();
    cache.flush().await.unwrap();
    // Queued while Redis is healthy, flushed while it hangs.
    assert_eq!(
        cache.set(&key, price(2), 2).await.unwrap(),
        WriteOutcome::Queued
    );
    server.pause();
    let err = cache
        .flush()
        .await
        .expect_err("the flush cannot reach a hung redis");
    assert!(err.is_timeout() || err.is_breaker_open(), "{err}");
    assert!(cache.dirty_log().contains(key.as_str()));
    let w = cache.stats().writer.unwrap();
    assert_eq!((w.failed, w.pending), (1, 0), "{w:?}");
    // This process keeps serving its newest value from L1, never Redis's older copy.
    assert_eq!(cache.read(&key).await.unwrap().unwrap().version, 2);
    server.resume();
    tokio::time::timeout(Duration::from_secs(30), cache.recovered())
        .await
        .expect("recovers");
    // Recovery deleted Redis's older copy (v1) rather than leave it to be read.
    assert_eq!(redis_version(&server, key.as_str()).await, None);
    assert_eq!(cache.breaker().unwrap().state, BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_breaker_is_open_market_data_writes_stay_local_and_dirty() {
    let mut server = RedisServer::start();
    let cache = on(&server)
        .op_timeout(Duration::from_millis(200))
        .breaker_failures(NonZeroU32::new(1).unwrap())
        .breaker_open(Duration::from_secs(600))
        .build()
        .unwrap();
    let key = cache.key::<Price>("DOWN").unwrap();
    server.kill();
    assert!(cache.read(&key).await.is_err());
    assert_eq!(cache.breaker().unwrap().state, BreakerState::Open);
    assert_eq!(
        cache.set(&key, price(3), 3).await.unwrap(),
        WriteOutcome::LocalOnly
    );
    assert!(cache.dirty_log().contains(key.as_str()));
    assert_eq!(cache.stats().writer.unwrap().enqueued, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_writes_stay_within_their_cap_under_a_sustained_overload() {
    let server = RedisServer::start();
    let cap = 64;
    let cache = on(&server)
        .op_timeout(Duration::from_secs(5))
        .flush_max_keys(NonZeroUsize::new(16).unwrap())
        .max_pending_writes(NonZeroUsize::new(cap).unwrap())
        .build()
        .unwrap();
    let keys: Vec<_> = (0..2_000)
        .map(|i| cache.key::<Price>(&format!("OVR{i:05}")).unwrap())
        .collect();
    // Redis hangs: the batch in flight cannot finish, and writes keep coming.
    server.pause();
    let (mut queued, mut local) = (0u64, 0u64);
    for (i, key) in keys.iter().enumerate() {
        match cache.set(key, price(1), 1).await.unwrap() {
            WriteOutcome::Queued => queued += 1,
            WriteOutcome::LocalOnly => local += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
        if i % 100 == 0 {
            let w = cache.stats().writer.unwrap();
            assert!(
                w.pending <= cap as u64,
                "{} pending over a cap of {cap}",
                w.pending
            );
        }
    }
    let w = cache.stats().writer.unwrap();
    assert!(w.pending <= cap as u64, "{w:?}");
    assert_eq!(w.overflow, local, "{w:?}");
    assert!(
        local > 0,
        "2,000 keys against a cap of {cap} with redis hung must overflow"
    );
    assert_eq!(queued + local, keys.len() as u64);
    // Overflowed keys are held by L1 and distrusted in Redis, like a failed `set`.
    assert!(cache.dirty_log().contains(keys[keys.len() - 1].as_str()));
    assert_eq!(
        cache
            .read(&keys[keys.len() - 1])
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    server.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_stops_with_its_cache() {
    let server = RedisServer::start();
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let cache = on(&server).build().unwrap();
    let key = cache.key::<Price>("GONE").unwrap();
    cache.set(&key, price(1), 1).await.unwrap();
    cache.flush().await.unwrap();
    assert!(
        metrics.num_alive_tasks() > before,
        "the writer and recovery tasks run"
    );
    // A write still pending when the last handle goes is flushed once, in the background.
    cache.set(&key, price(2), 2).await.unwrap();
    drop(cache);
    wait_for("the cache's tasks to end", || {
        metrics.num_alive_tasks() <= before
    })
    .await;
    assert_eq!(redis_version(&server, key.as_str()).await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_sees_the_ticks_through_redis_within_the_flush_interval() {
    let server = RedisServer::start();
    let feed = on(&server).build().unwrap();
    // Without the backplane, which would hand the engine the ticks before Redis has them:
    // this test is about the path through Redis.
    let engine = on(&server)
        .no_conflation()
        .backplane(false)
        .build()
        .unwrap();
    let fkey = feed.key::<Price>("CLZ6").unwrap();
    let ekey = engine.key::<Price>("CLZ6").unwrap();
    for v in 1..=200u64 {
        feed.set(&fkey, price(v), v).await.unwrap();
    }
    // No flush asked for: the writer's own interval brings the last tick to Redis. The
    // engine reads Redis (its L1 is cleared each time) until it sees version 200; the bound
    // is generous, the interval is 1 ms.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        engine.clear_l1();
        let seen = engine.read(&ekey).await.unwrap().map(|r| r.version);
        if seen == Some(200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the engine still reads {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The batch that carried version 200 may still be settling its counters.
    feed.flush().await.unwrap();
    let w = feed.stats().writer.unwrap();
    assert_eq!(w.enqueued, 200);
    assert!(w.flushed + w.conflated >= 200, "{w:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_drops_the_pending_write() {
    let server = RedisServer::start();
    let cache = on(&server)
        .flush_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let key = cache.key::<Price>("DEL").unwrap();
    cache.set(&key, price(1), 1).await.unwrap();
    cache.delete(&key).await.unwrap();
    cache.flush().await.unwrap();
    assert_eq!(redis_version(&server, key.as_str()).await, None);
    assert!(cache.read(&key).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_fails_alone_and_the_rest_of_the_batch_lands() {
    let server = RedisServer::start();
    let cache = on(&server)
        .flush_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let keys: Vec<_> = (0..100)
        .map(|i| cache.key::<Price>(&format!("WT{i:03}")).unwrap())
        .collect();
    // Another program's hash sits at one of the keys, in the middle of a 64-key chunk.
    let mut c = server.multiplexed().await;
    let () = c.hset(keys[40].as_str(), "f", "v").await.unwrap();
    for key in &keys {
        assert_eq!(
            cache.set(key, price(3), 3).await.unwrap(),
            WriteOutcome::Queued
        );
    }
    let err = cache.flush().await.expect_err("one key was refused");
    assert_eq!(err.kind(), mdcache::ErrorKind::WrongType, "{err}");
    for (i, key) in keys.iter().enumerate() {
        if i == 40 {
            let t: String = redis::cmd("TYPE")
                .arg(key.as_str())
                .query_async(&mut c)
                .await
                .unwrap();
            assert_eq!(t, "hash", "the other program's key is left alone");
            // Not ours to delete, and nothing local may claim the version Redis refused.
            assert!(!cache.dirty_log().contains(key.as_str()));
            let read = cache
                .read(key)
                .await
                .expect_err("L1 dropped the refused version");
            assert_eq!(read.kind(), mdcache::ErrorKind::WrongType, "{read}");
        } else {
            assert_eq!(redis_version(&server, key.as_str()).await, Some(3), "{i}");
        }
    }
    let w = cache.stats().writer.unwrap();
    assert_eq!((w.flushed, w.failed), (99, 1), "{w:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_expires_in_redis_counting_from_when_it_was_written_not_flushed() {
    let server = RedisServer::start();
    let cache = on(&server)
        .ttl_kind("price", Duration::from_secs(10))
        .flush_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let key = cache.key::<Price>("LATE").unwrap();
    cache.set(&key, price(1), 1).await.unwrap();
    // It waits in the queue for at least 400 ms of its 10 s TTL (a TTL long enough that a
    // stalled machine cannot let it run out: the sleep only bounds the wait from below).
    tokio::time::sleep(Duration::from_millis(400)).await;
    cache.flush().await.unwrap();
    let mut c = server.multiplexed().await;
    let left: i64 = c.pttl(key.as_str()).await.unwrap();
    assert!(
        (1..=9_600).contains(&left),
        "Redis keeps it {left} ms, past the 10 s it had when written"
    );
    // A reader elsewhere ages it from the write, not from the flush.
    let other = on(&server)
        .ttl_kind("price", Duration::from_secs(10))
        .build()
        .unwrap();
    let r = other
        .read(&other.key::<Price>("LATE").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(r.age >= Duration::from_millis(400), "age {:?}", r.age);
    // One that waits out its whole TTL is never sent.
    let gone = cache.key::<Price>("GONE").unwrap();
    let short = on(&server)
        .ttl_kind("price", Duration::from_millis(50))
        .flush_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let skey = short.key::<Price>("GONE").unwrap();
    short.set(&skey, price(1), 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    short.flush().await.unwrap();
    assert_eq!(redis_version(&server, gone.as_str()).await, None);
    assert_eq!(short.stats().writer.unwrap().expired, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_write_is_never_served_past_its_ttl() {
    let server = RedisServer::start();
    // Far longer than the TTL: the write is still queued (or dropped as expired by the
    // flush) when it is read again.
    let cache = Cache::builder()
        .redis_url(server.url())
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("price", Duration::from_millis(200))
        .flush_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let key = cache.key::<Price>("OLD").unwrap();
    assert_eq!(
        cache.set(&key, price(1), 1).await.unwrap(),
        WriteOutcome::Queued
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // L1's copy expired; the writer's pending copy is as old and must not stand in for it.
    assert!(cache.read(&key).await.unwrap().is_none());
    cache.flush().await.unwrap();
    let w = cache.stats().writer.unwrap();
    assert_eq!((w.flushed, w.expired), (0, 1), "{w:?}");
    assert_eq!(redis_version(&server, key.as_str()).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_of_market_data_rides_the_writer_and_never_lowers_redis() {
    use mdcache::{CacheAside, MemorySource, Store};
    use std::sync::Arc;

    let server = RedisServer::start();
    let cache = on(&server)
        .flush_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let source = Arc::new(MemorySource::default());
    let aside = CacheAside::builder(cache.clone(), Arc::clone(&source))
        .build()
        .unwrap();
    let key = cache.key::<Price>("FILL").unwrap();
    let v = source.write(&key, &price(1)).await.unwrap();
    let r = aside.read(&key).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::Source, v));
    // The fill went to the writer, not to Redis from the reader's task; it is a fill, not a
    // write.
    let w = cache.stats().writer.unwrap();
    assert_eq!((w.enqueued, w.fills), (0, 1), "{w:?}");
    cache.flush().await.unwrap();
    assert_eq!(redis_version(&server, key.as_str()).await, Some(v));

    // A fill queued while another process writes a higher version: the flush's compare-and-set
    // refuses the fill, and Redis keeps the higher version.
    let other = on(&server).no_conflation().build().unwrap();
    let key2 = cache.key::<Price>("FILL2").unwrap();
    let v2 = source.write(&key2, &price(2)).await.unwrap();
    let r = aside.read(&key2).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::Source, v2));
    let okey2 = other.key::<Price>("FILL2").unwrap();
    other.set(&okey2, price(99), 99).await.unwrap();
    cache.flush().await.unwrap();
    assert_eq!(redis_version(&server, key2.as_str()).await, Some(99));
}
