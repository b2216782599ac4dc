//! Integration tests of cache-aside and write-through against a real PostgreSQL and a real redis-server.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fixtures::OnTarget;
use fixtures::{price, uid};
use mdcache::{
    Backend, BookBid, BookSide, Cache, CacheAside, Counted, Level, Load, MemorySource, Order,
    OrderStatus, PostgresSource, Price, Side, Tier, WriteError, WriteOutcome, WriteThrough,
};
use redis::AsyncCommands;
use support::pg::{self, PgServer};
use support::target::{Reach, Target, on_both};
use support::{RedisServer, TEST_OP_TIMEOUT};

// Cache-aside and write-through on one server and on a cluster.
on_both!(
    a_thousand_concurrent_readers_of_a_cold_key_load_it_once,
    a_constraint_violation_returns_the_error_and_clears_both_tiers,
    concurrent_writers_leave_the_databases_latest_version_cached,
    books_go_through_both_patterns,
);

fn layered(server: &impl Reach) -> Cache {
    Cache::builder()
        .on(server)
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
        .build()
        .expect("cache builds")
}

async fn postgres(url: &str) -> Counted<PostgresSource> {
    Counted::new(
        PostgresSource::connect(url)
            .await
            .expect("connect to test postgres"),
    )
}

fn order(id: &str, qty: f64) -> Order {
    Order {
        id: id.to_owned(),
        symbol: "ES".into(),
        side: Side::Buy,
        px: 5000.0,
        qty,
        filled: 0.0,
        status: OrderStatus::New,
        seq: 1,
    }
}

async fn in_redis(server: &impl Reach, key: &str) -> bool {
    let mut c = server.raw().await;
    c.exists(key).await.expect("EXISTS")
}

async fn a_thousand_concurrent_readers_of_a_cold_key_load_it_once(redis: Target) {
    let src = postgres(&pg::database_url()).await;
    let cache = layered(&redis);
    let id = uid("cold");
    let key = cache.key::<Order>(&id).unwrap();
    src.inner()
        .write_through_test_seed(&key, &order(&id, 3.0))
        .await;
    let aside = CacheAside::builder(cache.clone(), Arc::new(src.clone()))
        .build()
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (aside, key, barrier) = (aside.clone(), key.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                aside.read(&key).await
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap().unwrap().expect("found");
        assert_eq!(r.value.qty, 3.0);
    }
    assert_eq!(src.loads(), 1, "the source was called more than once");
    assert_eq!(cache.stats().total.source_loads, 1);
    assert!(in_redis(&redis, key.as_str()).await, "L2 was not filled");
}

/// Calls of `command` the server has answered (`INFO commandstats`).
async fn calls(server: &RedisServer, command: &str) -> u64 {
    let mut c = server.multiplexed().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Single-flight covers the whole miss: 1,000 readers that miss L1 together make one Redis
/// read between them (not one each), and, when Redis misses too, one source load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_l1_misses_make_one_redis_read() {
    let server = RedisServer::start();
    let writer = layered(&server);
    let src = Arc::new(Counted::new(MemorySource::default()));
    // Slow enough that every reader arrives while the flight is still running.
    src.inner().set_latency(Duration::from_millis(300));
    for (id, in_redis) in [("WARM", true), ("COLD", false)] {
        let key = writer.key::<mdcache::Position>(id).unwrap();
        let p = mdcache::Position {
            avg_price: 1.0,
            qty: 2.0,
            realized_pnl: 0.0,
            seq: 1,
        };
        src.inner().write_through_test_seed(&key, &p).await;
        if in_redis {
            writer.set(&key, p.clone(), 1).await.unwrap();
        }
        // A fresh instance: its L1 is empty. Redis delayed by a proxy would make the window
        // wider; instead the barrier releases every reader at once.
        let cache = layered(&server);
        let aside = CacheAside::builder(cache.clone(), Arc::clone(&src))
            .build()
            .unwrap();
        // A read is `PTTL` + `GET`; the fill's versioned-write script calls `GET` too, so the
        // reads are counted by their `PTTL`.
        let (reads, loads) = (calls(&server, "pttl").await, src.loads());
        let barrier = Arc::new(tokio::sync::Barrier::new(1000));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let (aside, key, barrier) = (aside.clone(), key.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    aside.read(&key).await
                })
            })
            .collect();
        for t in tasks {
            let r = t.await.unwrap().unwrap().expect("found");
            assert_eq!(r.value.qty, 2.0);
        }
        let redis_reads = calls(&server, "pttl").await - reads;
        let source_loads = src.loads() - loads;
        if in_redis {
            assert_eq!((redis_reads, source_loads), (1, 0), "{id}");
        } else {
            assert_eq!((redis_reads, source_loads), (1, 1), "{id}");
        }
        let s = cache.stats().total;
        assert_eq!(s.l1_misses + s.l1_hits, 1000, "{id}: {s:?}");
    }
}

/// Seeds a row directly through the writer side (no cache involved).
trait Seed<S: mdcache::KeySchema> {
    async fn write_through_test_seed(&self, key: &mdcache::Key<S>, value: &S::Value) -> u64;
}

impl<S: mdcache::KeySchema, T: mdcache::Store<S>> Seed<S> for T {
    async fn write_through_test_seed(&self, key: &mdcache::Key<S>, value: &S::Value) -> u64 {
        self.write(key, value).await.expect("seed write")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_keeps_a_hot_key_from_missing_for_twenty_ttls() {
    let redis = RedisServer::start();
    let src = postgres(&pg::database_url()).await;
    // TTL 1 s, refresh when less than half is left: a refresh has 500 ms to land before the
    // value would expire, which a healthy machine beats by two orders of magnitude.
    let ttl = Duration::from_secs(1);
    let cache = Cache::builder()
        .redis_url(redis.url())
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("price", ttl)
        .build()
        .unwrap();
    let id = uid("HOT");
    let key = cache.key::<Price>(&id).unwrap();
    src.inner().write_through_test_seed(&key, &price(1)).await;
    let aside = CacheAside::builder(cache.clone(), Arc::new(src.clone()))
        .refresh_ahead_kind("price", 0.5)
        .build()
        .unwrap();
    let first = aside.read(&key).await.unwrap().unwrap();
    assert_eq!(first.tier, Tier::Source);
    let until = Instant::now() + ttl * 20;
    let mut reads = 0u64;
    while Instant::now() < until {
        let r = aside.read(&key).await.unwrap().expect("hot key vanished");
        assert_ne!(r.tier, Tier::Source, "hot key missed after {reads} reads");
        reads += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = cache.stats();
    assert!(
        s.total.refreshes >= 19,
        "only {} refreshes",
        s.total.refreshes
    );
    // One load for the first miss, one per refresh; none from misses.
    assert_eq!(src.loads(), 1 + s.total.refreshes);
    aside.shutdown().await;
}

#[tokio::test]
async fn negative_caching_remembers_not_found_only_when_enabled() {
    let redis = RedisServer::start();
    let src = postgres(&pg::database_url()).await;
    let cache = layered(&redis);
    let id = uid("ghost");
    let key = cache.key::<Order>(&id).unwrap();

    let plain = CacheAside::builder(cache.clone(), Arc::new(src.clone()))
        .build()
        .unwrap();
    assert!(plain.get(&key).await.unwrap().is_none());
    assert!(plain.get(&key).await.unwrap().is_none());
    assert_eq!(src.loads(), 2, "without negative caching every miss loads");

    let neg = CacheAside::builder(cache.clone(), Arc::new(src.clone()))
        .negative_ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    assert!(neg.get(&key).await.unwrap().is_none());
    assert!(neg.get(&key).await.unwrap().is_none());
    assert!(neg.get(&key).await.unwrap().is_none());
    assert_eq!(
        src.loads(),
        3,
        "with negative caching only the first miss loads"
    );
    assert_eq!(cache.stats().total.negative_hits, 2);

    // A write replaces the remembered "not found".
    let writer = WriteThrough::new(cache.clone(), Arc::new(src.clone()));
    writer.write(&key, order(&id, 1.0)).await.unwrap();
    let r = neg.read(&key).await.unwrap().expect("written");
    assert_eq!(r.value.qty, 1.0);
}

async fn a_constraint_violation_returns_the_error_and_clears_both_tiers(redis: Target) {
    let url = pg::database_url();
    let src = postgres(&url).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // IF NOT EXISTS is not available for constraints; tolerate a shared DATABASE_URL.
    let _ = client
        .batch_execute(
            "ALTER TABLE mdc_ord ADD CONSTRAINT qty_positive CHECK ((value->>'qty')::float8 > 0)",
        )
        .await;
    let cache = layered(&redis);
    let id = uid("chk");
    let key = cache.key::<Order>(&id).unwrap();
    let writer = WriteThrough::new(cache.clone(), Arc::new(src.clone()));
    let ack = writer.write(&key, order(&id, 5.0)).await.unwrap();
    assert!(in_redis(&redis, key.as_str()).await);

    let err = writer.write(&key, order(&id, -1.0)).await.unwrap_err();
    match &err {
        WriteError::Source(e) => assert!(e.is_constraint_violation(), "{e}"),
        other => panic!("unexpected {other}"),
    }
    // No reader sees the refused value, and the previous one is gone from both tiers.
    assert!(cache.get(&key).await.unwrap().is_none());
    assert!(!in_redis(&redis, key.as_str()).await);
    // The next read loads what the database holds: the previous value.
    let aside = CacheAside::builder(cache.clone(), Arc::new(src.clone()))
        .build()
        .unwrap();
    let r = aside.read(&key).await.unwrap().unwrap();
    assert_eq!(
        (r.tier, r.version, r.value.qty),
        (Tier::Source, ack.version, 5.0)
    );
}

/// bb8 alone would keep a checkout waiting (and retrying) for its whole connection timeout
/// while the database refuses connections; the source fails it at the first refused attempt,
/// with the reason.
#[tokio::test]
async fn a_stopped_database_fails_loads_with_the_reason_not_a_pool_timeout() {
    let mut db = PgServer::start();
    let src = postgres(&db.url()).await;
    let cache = Cache::builder().build().unwrap();
    let key = cache.key::<Order>(&uid("refused")).unwrap();
    assert!(src.load(&key).await.unwrap().is_none());
    db.stop();
    let mut refused = 0;
    // The pool's idle connections die with the server: each fails once ("connection
    // closed") and is dropped; then every checkout must open a connection, and is refused.
    for _ in 0..20 {
        let err = src.load(&key).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(
            !matches!(err, mdcache::PostgresSourceError::NoConnection(_)),
            "a checkout waited for the pool's timeout: {err}"
        );
        if matches!(err, mdcache::PostgresSourceError::Unreachable(_)) {
            assert!(err.to_string().contains("refused"), "{err}");
            refused += 1;
        }
    }
    assert!(refused >= 10, "{refused} refused");
    db.start_again();
    let give_up = Instant::now() + Duration::from_secs(20);
    while let Err(e) = src.load(&key).await {
        assert!(Instant::now() < give_up, "database never came back: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stopped_database_fails_the_write_and_leaves_nothing_cached() {
    let redis = RedisServer::start();
    let mut db = PgServer::start();
    let src = postgres(&db.url()).await;
    let cache = layered(&redis);
    let id = uid("pgdown");
    let key = cache.key::<Order>(&id).unwrap();
    let writer = WriteThrough::new(cache.clone(), Arc::new(src.clone()))
        .with_source_timeout(Duration::from_secs(5));
    let first = writer.write(&key, order(&id, 5.0)).await.unwrap();

    db.stop();
    let started = Instant::now();
    let err = writer.write(&key, order(&id, 7.0)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "write hung");
    assert!(
        matches!(err, WriteError::Source(_) | WriteError::SourceTimeout(_)),
        "{err}"
    );
    assert!(cache.get(&key).await.unwrap().is_none());
    assert!(!in_redis(&redis, key.as_str()).await);

    db.start_again();
    let aside = CacheAside::builder(cache.clone(), Arc::new(src.clone()))
        .build()
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(20);
    let r = loop {
        match aside.read(&key).await {
            Ok(r) => break r.unwrap(),
            Err(e) => {
                assert!(Instant::now() < give_up, "database never came back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!((r.version, r.value.qty), (first.version, 5.0));
}

#[tokio::test]
async fn redis_killed_during_write_through_acknowledges_and_logs_the_key_dirty() {
    let mut redis = RedisServer::start();
    let src = postgres(&pg::database_url()).await;
    let cache = Cache::builder()
        .redis_url(redis.url())
        .backend(Backend::Layered)
        .op_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let id = uid("dirty");
    let key = cache.key::<Order>(&id).unwrap();
    let writer = WriteThrough::new(cache.clone(), Arc::new(src.clone()));
    writer.write(&key, order(&id, 1.0)).await.unwrap();
    redis.kill();
    let ack = writer
        .write(&key, order(&id, 2.0))
        .await
        .expect("acknowledged");
    assert_eq!(ack.cached, None, "the cache write cannot have succeeded");
    assert!(writer.dirty_log().contains(key.as_str()));
    // The database has it.
    let row = src.inner().load(&key).await.unwrap().unwrap();
    assert_eq!((row.version, row.value.qty), (ack.version, 2.0));
    // And nothing serves the old value: L1 was evicted, and Redis's copy is distrusted while
    // the key is in the dirty log (a miss, or an error if Redis is asked).
    assert!(
        !matches!(cache.get(&key).await, Ok(Some(_))),
        "a value was served after a failed cache write"
    );
}

async fn concurrent_writers_leave_the_databases_latest_version_cached(redis: Target) {
    let src = postgres(&pg::database_url()).await;
    let cache = layered(&redis);
    let id = uid("race");
    let key = cache.key::<Order>(&id).unwrap();
    let writer = WriteThrough::new(cache.clone(), Arc::new(src.clone()));
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let (writer, key, id) = (writer.clone(), key.clone(), id.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    writer
                        .write(&key, order(&id, (w * 100 + i + 1) as f64))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let db = src.inner().load(&key).await.unwrap().unwrap();
    // This instance's L1, and Redis as a fresh instance sees it.
    let here = cache.read(&key).await.unwrap().unwrap();
    assert_eq!((here.version, here.value.qty), (db.version, db.value.qty));
    let fresh = layered(&redis);
    let k2 = fresh.key::<Order>(&id).unwrap();
    let there = fresh.read(&k2).await.unwrap().unwrap();
    assert_eq!(there.tier, Tier::L2);
    assert_eq!((there.version, there.value.qty), (db.version, db.value.qty));
}

async fn books_go_through_both_patterns(redis: Target) {
    let src = postgres(&pg::database_url()).await;
    let cache = Cache::builder()
        .on(&redis)
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("book", Duration::from_secs(30))
        .build()
        .unwrap();
    let id = uid("BK");
    let key = cache.key::<BookBid>(&id).unwrap();
    let writer = WriteThrough::new(cache.clone(), Arc::new(src.clone()));
    let side = BookSide {
        levels: vec![
            Level {
                price: 10.0,
                qty: 1.0,
            },
            Level {
                price: 11.0,
                qty: 2.0,
            },
        ],
    };
    let ack = writer.write_book(&key, side).await.unwrap();
    cache.clear_l1();
    let _: () = redis.raw().await.del(key.as_str()).await.unwrap();
    let _: () = redis
        .raw()
        .await
        .del(format!("{}:v", key.as_str()))
        .await
        .unwrap();
    let aside = CacheAside::builder(cache.clone(), Arc::new(src.clone()))
        .build()
        .unwrap();
    let r = aside.read_book(&key, 1).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::Source, ack.version));
    assert_eq!(
        r.value.levels,
        vec![Level {
            price: 11.0,
            qty: 2.0
        }]
    );
    let r = aside.read_book(&key, 0).await.unwrap().unwrap();
    assert_eq!((r.tier, r.value.levels.len()), (Tier::L1, 2));
}

/// A small deterministic generator (xorshift64*), so the workload is the same on every run.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zipf_workload_over_a_thousand_symbols_hits_at_least_90_percent() {
    let redis = RedisServer::start();
    let src = postgres(&pg::database_url()).await;
    // TTL long against the run, so the hit rate measures the cache, not the clock.
    let cache = Cache::builder()
        .redis_url(redis.url())
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("price", Duration::from_secs(300))
        .build()
        .unwrap();
    let run = uid("z");
    let keys: Vec<_> = (0..1000)
        .map(|i| cache.key::<Price>(&format!("{run}-S{i}")).unwrap())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        src.inner()
            .write_through_test_seed(k, &price(i as u64))
            .await;
    }
    // Zipf(s = 1.1) by inverse CDF over the 1,000 ranks.
    let weights: Vec<f64> = (1..=1000).map(|r| 1.0 / (r as f64).powf(1.1)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(1000);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let aside = CacheAside::builder(cache.clone(), Arc::new(src.clone()))
        .build()
        .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let u = rng.next_f64();
        let rank = cdf.partition_point(|&c| c < u).min(999);
        aside.get(&keys[rank]).await.unwrap().expect("seeded");
    }
    let s = cache.stats().total;
    let hits = s.l1_hits + s.l2_hits;
    let reads = hits + s.source_loads;
    assert_eq!(reads, 20_000, "{s:?}");
    let hit_rate = hits as f64 / reads as f64;
    assert!(hit_rate >= 0.90, "hit rate {hit_rate:.3} ({s:?})");
    assert_eq!(s.source_loads, src.loads());
}

#[tokio::test]
async fn a_write_through_whose_cache_write_fails_keeps_nothing_in_l1() {
    // Unlike `Cache::set_book` (which keeps the side in L1: `LocalOnly`), write-through evicts
    // L1 and acknowledges with `cached: None` (DESIGN §4 rule 3).
    let mut redis = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(redis.url())
        .backend(Backend::Layered)
        .op_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let writer = WriteThrough::new(cache.clone(), Arc::new(MemorySource::default()));
    let key = cache.key::<BookBid>(&uid("wtbook")).unwrap();
    let side = |price: f64| BookSide {
        levels: vec![Level { price, qty: 1.0 }],
    };
    let first = writer.write_book(&key, side(1.0)).await.unwrap();
    assert_eq!(first.cached, Some(WriteOutcome::Applied));
    redis.kill();
    let ack = writer
        .write_book(&key, side(2.0))
        .await
        .expect("acknowledged: the source has it");
    assert_eq!(ack.cached, None, "the cache write cannot have succeeded");
    assert!(writer.dirty_log().contains(key.as_str()));
    assert!(
        !matches!(cache.read_book(&key, 0).await, Ok(Some(_))),
        "a value was served after a failed write-through cache write"
    );
    assert_eq!(cache.stats().total.writes_local_only, 0);
}
