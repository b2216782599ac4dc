//! Regression tests of issue 9 (values): no read goes backwards, bounds hold, nothing panics — each against a real redis-server.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fixtures::{pos, price};
use mdcache::{
    Backend, BreakerState, Cache, CacheAside, Counted, Key, KeySchema, Load, Loaded, MemorySource,
    Position, Price, SetOptions, Source, Store, StrategyState, Tier, WriteOutcome, WriteThrough,
    codec,
};
use redis::AsyncCommands;
use support::{RedisServer, TEST_OP_TIMEOUT};
use tokio::sync::{Notify, Semaphore};

/// A layered cache whose breaker opens on the first failure and stays open for the test.
fn layered(server: &RedisServer) -> Cache {
    layered_on(server, mdcache::Clock::system())
}

/// [`layered`] with TTL deadlines read from `clock` (a mock makes refresh-ahead deterministic).
fn layered_on(server: &RedisServer, clock: mdcache::Clock) -> Cache {
    Cache::builder()
        .clock(clock)
        .redis_url(server.url())
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
        .breaker_failures(NonZeroU32::new(1).unwrap())
        .breaker_open(Duration::from_secs(600))
        .ttl_kind("price", Duration::from_secs(30))
        .ttl_kind("pos", Duration::from_secs(30))
        .build()
        .expect("cache builds")
}

/// A builder for a layered cache on `server` with the default breaker; tests add the rest.
fn on(server: &RedisServer) -> mdcache::CacheBuilder {
    Cache::builder()
        .redis_url(server.url())
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
}

/// Kills Redis and makes one failing call, so the breaker is open.
async fn open_breaker(cache: &Cache, server: &mut RedisServer) {
    server.kill();
    let probe = cache.key::<Price>("BREAKER-PROBE").unwrap();
    assert!(
        cache.read(&probe).await.is_err(),
        "a read of a dead redis fails"
    );
    assert_eq!(cache.breaker().unwrap().state, BreakerState::Open);
}

/// A source whose loads can be held after they read the row: the way a database read that
/// started before a write commits returns the older row after the write was acknowledged.
#[derive(Debug)]
struct GatedSource {
    inner: MemorySource,
    hold: AtomicBool,
    /// Notified when a held load has read its row.
    loaded: Notify,
    gate: Semaphore,
}

impl Default for GatedSource {
    fn default() -> Self {
        GatedSource {
            inner: MemorySource::default(),
            hold: AtomicBool::new(false),
            loaded: Notify::new(),
            gate: Semaphore::new(0),
        }
    }
}

impl GatedSource {
    fn hold_next_load(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
        self.gate.add_permits(1_000);
    }
}

impl Source for GatedSource {
    type Error = mdcache::MemorySourceError;
}

impl<S: KeySchema> Load<S> for GatedSource {
    async fn load(&self, key: &Key<S>) -> Result<Option<Loaded<S::Value>>, Self::Error> {
        let row = self.inner.load(key).await;
        if self.hold.swap(false, Ordering::SeqCst) {
            self.loaded.notify_one();
            let _ = self.gate.acquire().await.map(|p| p.forget());
        }
        row
    }
}

impl<S: KeySchema> Store<S> for GatedSource {
    async fn write(&self, key: &Key<S>, value: &S::Value) -> Result<u64, Self::Error> {
        self.inner.write(key, value).await
    }
}

/// Item 1: with the breaker open, a write-through of v2 is acknowledged with `cached: None`
/// while a load that read v1 is in flight. That load must not put v1 back in L1: every read
/// after the acknowledgement sees v2 or newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_through_is_never_read_back_older() {
    let mut redis = RedisServer::start();
    let cache = layered(&redis);
    let src = Arc::new(GatedSource::default());
    let key = cache.key::<Position>("AAPL").unwrap();
    let v1 = src.inner.write(&key, &pos(1.0)).await.unwrap();
    let aside = CacheAside::builder(cache.clone(), Arc::clone(&src))
        .build()
        .expect("aside");
    let writes = WriteThrough::new(cache.clone(), Arc::clone(&src));
    open_breaker(&cache, &mut redis).await;

    src.hold_next_load();
    let reader = {
        let (aside, key) = (aside.clone(), key.clone());
        tokio::spawn(async move { aside.get(&key).await })
    };
    src.loaded.notified().await; // the load has read v1 and is held
    let ack = writes.write(&key, pos(2.0)).await.expect("acknowledged");
    assert_eq!(
        ack.cached, None,
        "the breaker is open: the cache write fails"
    );
    assert!(ack.version > v1);
    src.release();
    let in_flight = reader.await.unwrap().expect("the in-flight read");
    assert!(in_flight.is_some());

    for _ in 0..3 {
        let r = aside.read(&key).await.expect("read").expect("found");
        assert!(
            r.version >= ack.version,
            "read version {} from {:?} after version {} was acknowledged",
            r.version,
            r.tier,
            ack.version
        );
        if let Some(r) = cache.read(&key).await.unwrap_or(None) {
            assert!(
                r.version >= ack.version,
                "cache read {} from {:?}",
                r.version,
                r.tier
            );
        }
    }
}

/// Item 1, a create: the in-flight load found nothing (a negative entry is on its way), the
/// write-through of the first version is acknowledged; no read may then say "not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_create_is_never_read_back_as_not_found() {
    let mut redis = RedisServer::start();
    let cache = layered(&redis);
    let src = Arc::new(GatedSource::default());
    let key = cache.key::<Position>("NEW").unwrap();
    let aside = CacheAside::builder(cache.clone(), Arc::clone(&src))
        .negative_ttl(Duration::from_secs(30))
        .build()
        .expect("aside");
    let writes = WriteThrough::new(cache.clone(), Arc::clone(&src));
    open_breaker(&cache, &mut redis).await;

    src.hold_next_load();
    let reader = {
        let (aside, key) = (aside.clone(), key.clone());
        tokio::spawn(async move { aside.get(&key).await })
    };
    src.loaded.notified().await;
    let ack = writes.write(&key, pos(7.0)).await.expect("acknowledged");
    src.release();
    let _ = reader.await.unwrap();
    let r = aside.read(&key).await.expect("read");
    let r = r.expect("an acknowledged create is found");
    assert!(r.version >= ack.version);
}

/// Item 2: `set(v100)` is kept in L1 only (Redis down); a refresh-ahead loads the source's
/// older v1. L1 must keep v100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_never_moves_l1_backwards_while_redis_fails() {
    let mut redis = RedisServer::start();
    let (clock, mock) = mdcache::Clock::mock();
    let cache = layered_on(&redis, clock);
    let src = Arc::new(Counted::new(MemorySource::default()));
    let key = cache.key::<Price>("ES").unwrap();
    src.inner().write(&key, &price(1)).await.unwrap();
    let aside = CacheAside::builder(cache.clone(), Arc::clone(&src))
        .refresh_ahead_kind("price", 0.5)
        .build()
        .expect("aside");
    open_breaker(&cache, &mut redis).await;
    assert_eq!(
        cache.set(&key, price(100), 100).await.unwrap(),
        WriteOutcome::LocalOnly
    );
    // 20 s of the 30 s TTL gone: under half left, so the next read starts a refresh.
    mock.advance(Duration::from_secs(20));
    let r = aside.read(&key).await.unwrap().unwrap();
    assert_eq!((r.version, r.tier), (100, Tier::L1));
    support::wait_for("the refresh to load", || src.loads() >= 1).await;
    // The refresh's fill runs right after its load; give it ample time to land (or not).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = cache.read(&key).await.unwrap().expect("still cached");
    assert_eq!((r.version, r.tier), (100, Tier::L1), "L1 went backwards");
}

/// Item 3: a write-through dropped by the caller's timeout after the database commit, while
/// its cache write hangs, must not leave the older value readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_through_never_leaves_the_older_value_cached() {
    let redis = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(redis.url())
        .backend(Backend::Layered)
        .op_timeout(Duration::from_secs(5))
        .ttl_kind("pos", Duration::from_secs(30))
        .build()
        .unwrap();
    let src = Arc::new(MemorySource::default());
    let key = cache.key::<Position>("MSFT").unwrap();
    let writes = WriteThrough::new(cache.clone(), Arc::clone(&src));
    let v1 = writes.write(&key, pos(1.0)).await.unwrap();
    assert_eq!(cache.read(&key).await.unwrap().unwrap().version, v1.version);

    redis.pause(); // the cache write after the database commit hangs
    let dropped =
        tokio::time::timeout(Duration::from_millis(300), writes.write(&key, pos(2.0))).await;
    // Checked while Redis is still hung: once it answers, the supervisor's replay (every
    // 100 ms while the breaker is closed) deletes the key and empties the log, so checking
    // after the resume raced it (it failed once in `make test`).
    assert!(
        cache.dirty_log().contains(key.as_str()),
        "the key is distrusted"
    );
    redis.resume();
    assert!(dropped.is_err(), "the caller's timeout dropped the write");
    let in_db = src.load(&key).await.unwrap().unwrap().version;
    assert!(
        in_db > v1.version,
        "the database committed the second write"
    );

    if let Some(r) = cache.read(&key).await.unwrap() {
        assert!(
            r.version >= in_db,
            "read version {} from {:?}; the database has {in_db}",
            r.version,
            r.tier
        );
    }
    let aside = CacheAside::builder(cache.clone(), src).build().unwrap();
    assert!(aside.read(&key).await.unwrap().unwrap().version >= in_db);
}

/// Item 4, through the public API: values growing in place never push L1 past its byte bound.
#[tokio::test]
async fn the_l1_byte_bound_holds_when_values_grow_in_place() {
    let bound = 1 << 20;
    let cache = Cache::builder()
        .l1_max_bytes(NonZeroUsize::new(bound).unwrap())
        .ttl_kind("strat", Duration::from_secs(60))
        .build()
        .unwrap();
    let strat = |n: usize| StrategyState {
        id: "s".into(),
        params: (0..n).map(|i| (format!("p{i:05}"), i as f64)).collect(),
        status: "running".into(),
        seq: 1,
    };
    let keys: Vec<_> = (0..500)
        .map(|i| cache.key::<StrategyState>(&format!("s{i}")).unwrap())
        .collect();
    for k in &keys {
        cache.set(k, strat(1), 1).await.unwrap();
    }
    let big = strat(2_000); // ~32 KiB encoded
    for k in &keys {
        cache.set(k, big.clone(), 2).await.unwrap();
    }
    let s = cache.stats();
    assert!(
        s.l1_bytes <= bound as u64,
        "{} weighted bytes against a {bound}-byte bound",
        s.l1_bytes
    );
}

/// Item 5: a valid envelope another program stored with an absurd expiry is read, never a
/// panic; a per-write TTL beyond the maximum is refused before any I/O.
#[tokio::test]
async fn a_huge_ttl_never_panics() {
    let redis = RedisServer::start();
    let cache = on(&redis).build().unwrap();
    let key = cache.key::<Price>("HUGE").unwrap();
    let bytes = codec::encode(3, &price(3), 1 << 20).unwrap();
    let mut c = redis.multiplexed().await;
    let _: () = redis::cmd("SET")
        .arg(key.as_str())
        .arg(bytes)
        .arg("PX")
        .arg(100_000_000_000_000_000u64)
        .query_async(&mut c)
        .await
        .unwrap();
    let r = cache.read(&key).await.unwrap().expect("served");
    assert_eq!((r.version, r.tier), (3, Tier::L2));
    assert_eq!(cache.read(&key).await.unwrap().unwrap().tier, Tier::L1);

    let err = cache
        .set_with(
            &key,
            price(4),
            4,
            SetOptions::default().ttl(Duration::from_millis(u64::MAX)),
        )
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    assert_eq!(
        cache.read(&key).await.unwrap().unwrap().version,
        3,
        "nothing written"
    );
}

/// Item 7: bytes whose header claims a high version but whose payload does not decode are
/// counted and replaced by the first fill, not refused by every compare-and-set.
#[tokio::test]
async fn undecodable_bytes_never_pin_a_key() {
    let redis = RedisServer::start();
    let cache = on(&redis)
        .ttl_kind("pos", Duration::from_secs(30))
        .build()
        .unwrap();
    let key = cache.key::<Position>("PINNED").unwrap();
    let mut garbage = vec![codec::MAGIC, codec::FORMAT];
    garbage.extend_from_slice(&u64::MAX.to_be_bytes());
    garbage.extend_from_slice(&0u64.to_be_bytes());
    garbage.extend_from_slice(b"\xc1 not messagepack");
    let mut c = redis.multiplexed().await;
    let _: () = c.set_ex(key.as_str(), garbage, 60).await.unwrap();

    let src = Arc::new(Counted::new(MemorySource::default()));
    let v = src.inner().write(&key, &pos(3.0)).await.unwrap();
    let aside = CacheAside::builder(cache.clone(), Arc::clone(&src))
        .build()
        .unwrap();
    for _ in 0..5 {
        assert_eq!(aside.read(&key).await.unwrap().unwrap().version, v);
    }
    assert_eq!(src.loads(), 1, "one load, then the repaired cache serves");
    let k = cache.stats();
    assert_eq!(k.kind("pos").unwrap().decode_errors, 1);
    // Another instance (no L1 of ours) now reads the repaired value from Redis.
    let other = on(&redis).build().unwrap();
    let r = other.read(&key).await.unwrap().expect("repaired");
    assert_eq!((r.version, r.tier), (v, Tier::L2));
}

/// Item 9: Redis keeps whole milliseconds; L1 must never hold a value past Redis's expiry.
/// With a mock clock (frozen for L1), the L1 deadline of a 10.9 ms write is read exactly.
#[tokio::test]
async fn l1_never_outlives_redis_with_sub_millisecond_ttls() {
    let redis = RedisServer::start();
    let (clock, _mock) = mdcache::Clock::mock();
    let cache = on(&redis).clock(clock).build().unwrap();
    let key = cache.key::<Price>("SUBMS").unwrap();
    let ttl = Duration::from_micros(10_900);
    cache
        .set_with(&key, price(1), 1, SetOptions::default().ttl(ttl))
        .await
        .unwrap();
    let r = cache.read(&key).await.unwrap().expect("in L1");
    assert_eq!(r.tier, Tier::L1);
    // Redis got `PX 10`: the L1 deadline is at most 10 ms after the write began.
    assert!(
        r.ttl_remaining.unwrap() <= Duration::from_millis(10),
        "L1 holds {:?} left against Redis's 10 ms",
        r.ttl_remaining
    );
}

/// Item 10: a value written with a per-write TTL reports its real age when read from Redis.
#[tokio::test]
async fn read_age_counts_from_the_ttl_the_writer_used() {
    let redis = RedisServer::start();
    // The reader must read Redis: without the backplane, which would hand it the value.
    let build = || on(&redis).backplane(false).build().unwrap();
    let (writer, reader) = (build(), build());
    let key = writer.key::<Price>("AGED").unwrap();
    writer
        .set_with(
            &key,
            price(1),
            1,
            SetOptions::default().ttl(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = reader.read(&key).await.unwrap().expect("within its 10 s");
    assert_eq!(r.tier, Tier::L2);
    assert!(
        r.age >= Duration::from_secs(1) && r.age < Duration::from_secs(10),
        "age {:?} of a value written 1.5 s ago",
        r.age
    );
}

/// Item 12: a write-through refused by Redis because the key holds another type is not
/// recorded dirty (recovery must not delete a key that is not ours); a delete Redis did not
/// take is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dirty_records_only_keys_redis_may_hold_wrongly() {
    let mut redis = RedisServer::start();
    let cache = layered(&redis);
    let src = Arc::new(MemorySource::default());
    let writes = WriteThrough::new(cache.clone(), Arc::clone(&src));
    let foreign = cache.key::<Position>("FOREIGN").unwrap();
    let mut c = redis.multiplexed().await;
    let _: () = c.hset(foreign.as_str(), "f", "v").await.unwrap();
    let ack = writes.write(&foreign, pos(1.0)).await.unwrap();
    assert_eq!(ack.cached, None);
    assert!(
        !cache.dirty_log().contains(foreign.as_str()),
        "a key holding another Redis type is not ours to delete"
    );

    let gone = cache.key::<Position>("GONE").unwrap();
    redis.kill();
    assert!(cache.delete(&gone).await.is_err());
    assert!(
        cache.dirty_log().contains(gone.as_str()),
        "a failed delete leaves the key distrusted until recovery deletes it"
    );
}

/// Item 12: background refreshes never take the load slots foreground misses need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_never_starve_foreground_loads() {
    let (clock, mock) = mdcache::Clock::mock();
    let cache = Cache::builder()
        .clock(clock)
        .ttl_kind("price", Duration::from_secs(30))
        .max_concurrent_loads(1)
        .overload_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let src = Arc::new(Counted::new(MemorySource::default()));
    let hot = cache.key::<Price>("HOT").unwrap();
    let cold = cache.key::<Price>("COLD").unwrap();
    src.inner().write(&hot, &price(1)).await.unwrap();
    src.inner().write(&cold, &price(2)).await.unwrap();
    let aside = CacheAside::builder(cache.clone(), Arc::clone(&src))
        .refresh_ahead_kind("price", 0.5)
        .source_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    aside.get(&hot).await.unwrap().unwrap(); // loaded: 1
    src.inner().set_latency(Duration::from_secs(2));
    mock.advance(Duration::from_secs(20)); // under half the TTL left
    aside.get(&hot).await.unwrap().unwrap(); // an L1 hit that starts a 2 s refresh
    support::wait_for("the refresh to start loading", || src.loads() >= 2).await;
    let r = aside.get(&cold).await;
    assert!(r.is_ok(), "a miss waited behind a refresh: {:?}", r.err());
}
