//! Book sides keep the cache's promises (issue 9, items 6 and 10): sizes bound what Redis really holds, caller input never trips the breaker, and a side Redis lost or garbled is a miss that the next load repairs.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use fixtures::book;
use mdcache::{
    Backend, BookBid, BookSide, BreakerState, Cache, CacheAside, Error, ErrorKind, MemorySource,
    SetOptions, Tier, WriteError, WriteThrough,
};
use redis::AsyncCommands;
use support::{RedisServer, TEST_OP_TIMEOUT};

/// Books default to a 50 ms TTL; the tests that are not about expiry need them to stay put.
const LONG_TTL: Duration = Duration::from_secs(60);

fn builder(server: &RedisServer, backend: Backend) -> mdcache::CacheBuilder {
    Cache::builder()
        .redis_url(server.url())
        // The book layout in Redis is under test: each write is there before it returns.
        .no_conflation()
        .backend(backend)
        .op_timeout(TEST_OP_TIMEOUT)
}

fn cache(server: &RedisServer, backend: Backend) -> Cache {
    builder(server, backend)
        .ttl_kind("book", LONG_TTL)
        .build()
        .expect("cache builds")
}

/// A side whose members are as long as real prices and sizes print (~25 bytes).
fn wide_book(levels: usize) -> BookSide {
    book((0..levels).map(|i| (4000.0 + i as f64 * 0.0123456789, 12345.678 + i as f64)))
}

fn prices(side: &BookSide) -> Vec<f64> {
    side.levels.iter().map(|l| l.price).collect()
}

async fn members(server: &RedisServer, key: &str) -> Vec<String> {
    let mut c = server.multiplexed().await;
    c.zrange(key, 0, -1).await.expect("ZRANGE")
}

#[tokio::test]
async fn write_book_refuses_an_oversize_side_before_the_database_sees_it() {
    let server = RedisServer::start();
    let cache = builder(&server, Backend::Layered)
        .max_value_bytes(NonZeroUsize::new(4096).unwrap())
        .build()
        .unwrap();
    let src = Arc::new(MemorySource::default());
    let writer = WriteThrough::new(cache.clone(), Arc::clone(&src));
    let key = cache.key::<BookBid>("BIG").unwrap();
    let err = writer.write_book(&key, wide_book(100)).await.unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::Invalid(Error::ValueTooLarge { limit: 4096, .. })
        ),
        "{err}"
    );
    assert!(
        src.is_empty(),
        "the database must not hold a side the cache refuses"
    );
    assert_eq!(server.dbsize(), 0);
}

#[tokio::test]
async fn the_size_limit_bounds_what_redis_really_stores() {
    let server = RedisServer::start();
    let limit = 256 * 1024;
    let cache = builder(&server, Backend::Redis)
        .ttl_kind("book", LONG_TTL)
        .max_value_bytes(NonZeroUsize::new(limit).unwrap())
        .build()
        .unwrap();
    let key = cache.key::<BookBid>("WIDE").unwrap();
    // The largest side of this shape the cache accepts...
    let (mut ok, mut refused) = (1, 20_000);
    while refused - ok > 1 {
        let n = (ok + refused) / 2;
        match cache.set_book(&key, wide_book(n), n as u64).await {
            Ok(_) => ok = n,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidValue, "{e}");
                refused = n;
            }
        }
    }
    cache.set_book(&key, wide_book(ok), u64::MAX).await.unwrap();
    // ...costs Redis no more than the limit.
    let mut c = server.multiplexed().await;
    let used: usize = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key.as_str())
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        used <= limit,
        "{ok} levels accepted; Redis holds {used} bytes against a {limit}-byte limit"
    );
}

#[tokio::test]
async fn an_oversize_side_is_refused_for_its_size_before_its_levels_are_checked() {
    let server = RedisServer::start();
    let cache = builder(&server, Backend::Layered)
        .max_value_bytes(NonZeroUsize::new(4096).unwrap())
        .build()
        .unwrap();
    let key = cache.key::<BookBid>("DUP").unwrap();
    // Every level at one price: the size check, linear and first, refuses it.
    let err = cache
        .set_book(&key, book((0..10_000).map(|_| (1.0, 1.0))), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ValueTooLarge { limit: 4096, .. }),
        "{err}"
    );
    assert_eq!(server.dbsize(), 0);
}

#[tokio::test]
async fn a_depth_no_side_can_reach_reads_every_level_and_never_trips_the_breaker() {
    let server = RedisServer::start();
    // No L1: every read goes to Redis.
    let cache = cache(&server, Backend::Redis);
    let key = cache.key::<BookBid>("ES").unwrap();
    cache
        .set_book(&key, book([(1.0, 1.0), (3.0, 1.0), (2.0, 1.0)]), 1)
        .await
        .unwrap();
    for _ in 0..10 {
        let r = cache.read_book(&key, usize::MAX).await.unwrap().unwrap();
        assert_eq!(prices(&r.value), vec![3.0, 2.0, 1.0]);
    }
    let b = cache.breaker().unwrap();
    assert_eq!((b.state, b.opened), (BreakerState::Closed, 0));
    assert_eq!(cache.stats().total.errors, 0);
}

#[tokio::test]
async fn a_side_whose_sorted_set_is_gone_is_a_miss_not_an_empty_book() {
    let server = RedisServer::start();
    let writer = cache(&server, Backend::Redis);
    let key = writer.key::<BookBid>("GONE").unwrap();
    writer
        .set_book(&key, book([(1.0, 1.0), (2.0, 1.0)]), 5)
        .await
        .unwrap();
    // Evicted, or deleted by another program: the version key outlives the set.
    let mut c = server.multiplexed().await;
    let () = c.del(key.as_str()).await.unwrap();
    let reader = cache(&server, Backend::Layered);
    let rkey = reader.key::<BookBid>("GONE").unwrap();
    let r = reader.read_book(&rkey, 0).await.unwrap();
    assert!(r.is_none(), "served {:?}", r.map(|r| (r.version, r.value)));
    // The same under a version key of an earlier build (8 bytes, the version alone).
    let old = reader.key::<BookBid>("OLD").unwrap();
    let () = c
        .set(format!("{}:v", old.as_str()), &7u64.to_be_bytes()[..])
        .await
        .unwrap();
    assert!(reader.read_book(&old, 0).await.unwrap().is_none());
    let s = reader.stats().total;
    assert_eq!((s.l2_misses, s.l2_hits), (2, 0));
}

#[tokio::test]
async fn an_orphan_version_key_cannot_refuse_the_reload() {
    let server = RedisServer::start();
    let cache = cache(&server, Backend::Layered);
    let src = Arc::new(MemorySource::default());
    let writer = WriteThrough::new(cache.clone(), Arc::clone(&src));
    let key = cache.key::<BookBid>("ORPHAN").unwrap();
    let ack = writer
        .write_book(&key, book([(10.0, 1.0), (11.0, 2.0)]))
        .await
        .unwrap();
    // A feed writes the side at a far higher version; then Redis loses the set, not its version.
    cache
        .set_book(&key, book([(12.0, 1.0)]), 1_000)
        .await
        .unwrap();
    let mut c = server.multiplexed().await;
    let () = c.del(key.as_str()).await.unwrap();

    let reader = self::cache(&server, Backend::Layered);
    let rkey = reader.key::<BookBid>("ORPHAN").unwrap();
    let aside = CacheAside::builder(reader.clone(), Arc::clone(&src))
        .build()
        .unwrap();
    let r = aside.read_book(&rkey, 0).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::Source, ack.version));
    assert_eq!(prices(&r.value), vec![11.0, 10.0]);
    // The reload reached Redis: another instance reads the source's side, not an empty one.
    let other = self::cache(&server, Backend::Redis);
    let okey = other.key::<BookBid>("ORPHAN").unwrap();
    let r = other.read_book(&okey, 0).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::L2, ack.version));
    assert_eq!(prices(&r.value), vec![11.0, 10.0]);
}

#[tokio::test]
async fn an_undecodable_side_is_a_counted_miss_reloaded_and_repaired() {
    let server = RedisServer::start();
    let cache = cache(&server, Backend::Layered);
    let src = Arc::new(MemorySource::default());
    let writer = WriteThrough::new(cache.clone(), Arc::clone(&src));
    let key = cache.key::<BookBid>("BAD").unwrap();
    let ack = writer
        .write_book(&key, book([(10.0, 1.0), (11.0, 2.0)]))
        .await
        .unwrap();
    // Another program adds a member that is not "<price>:<qty>", at the top of the side.
    let mut c = server.multiplexed().await;
    let () = c.zadd(key.as_str(), "garbage", 1e9).await.unwrap();

    let reader = self::cache(&server, Backend::Layered);
    let rkey = reader.key::<BookBid>("BAD").unwrap();
    let aside = CacheAside::builder(reader.clone(), Arc::clone(&src))
        .build()
        .unwrap();
    let r = aside.read_book(&rkey, 0).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::Source, ack.version));
    assert_eq!(prices(&r.value), vec![11.0, 10.0]);
    let s = reader.stats().total;
    assert_eq!((s.decode_errors, s.source_loads), (1, 1));
    let r = aside.read_book(&rkey, 0).await.unwrap().unwrap();
    assert!(matches!(r.tier, Tier::L1 | Tier::L2), "{:?}", r.tier);
    assert_eq!(reader.stats().total.source_loads, 1);
    // Repaired in Redis: the garbage is gone and the side reads back whole elsewhere.
    assert!(
        !members(&server, key.as_str())
            .await
            .contains(&"garbage".to_owned())
    );
    let other = self::cache(&server, Backend::Redis);
    let okey = other.key::<BookBid>("BAD").unwrap();
    let r = other.read_book(&okey, 0).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::L2, ack.version));
    assert_eq!(prices(&r.value), vec![11.0, 10.0]);
}

#[tokio::test]
async fn a_side_written_with_its_own_ttl_reports_its_true_age_from_l2() {
    let server = RedisServer::start();
    // The kind's TTL stays at its 50 ms default; this write asks for 10 s.
    let writer = builder(&server, Backend::Layered).build().unwrap();
    let key = writer.key::<BookBid>("AGE").unwrap();
    writer
        .set_book_with(
            &key,
            book([(1.0, 1.0)]),
            1,
            SetOptions::default().ttl(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reader = builder(&server, Backend::Layered).build().unwrap();
    let rkey = reader.key::<BookBid>("AGE").unwrap();
    let r = reader.read_book(&rkey, 0).await.unwrap().unwrap();
    assert_eq!(r.tier, Tier::L2);
    assert!(
        r.age >= Duration::from_secs(1) && r.age < Duration::from_secs(10),
        "age {:?}",
        r.age
    );
}
