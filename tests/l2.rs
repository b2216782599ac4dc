//! Integration tests of the core data path against a real, throwaway redis-server.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fixtures::OnTarget;
use fixtures::{book, price, uid};
use mdcache::{
    Backend, BookAsk, BookBid, BookSide, BreakerState, Cache, ErrorKind, KeySchema, KeyTtl, Order,
    OrderStatus, Position, Price, Risk, SetOptions, Side, StrategyState, Tier, WriteOutcome, codec,
};
use proptest::prelude::*;
use redis::AsyncCommands;
use support::target::{Reach, Target, on_both};
use support::{RedisServer, TEST_OP_TIMEOUT};

// The core data path (keys, TTLs, versions, books, batches) on one server and on a cluster.
on_both!(
    every_kind_gets_its_ttl_in_milliseconds_and_expires,
    l1_promotion_uses_the_remaining_ttl_and_never_outlives_l2,
    a_lower_version_never_replaces_a_higher_one_in_either_tier,
    garbage_bytes_are_a_miss_and_a_decode_error_never_a_value,
    a_key_of_the_wrong_redis_type_is_a_typed_error,
    an_oversize_value_is_refused_before_any_io,
    batches_mix_hits_and_misses_in_one_round_trip,
    books_are_sorted_sets_read_top_n_best_first,
    delete_unlinks_and_evicts_and_ttl_reports,
    scripts_are_reloaded_after_the_server_forgets_them,
    l1_never_keeps_a_value_past_the_ttl_it_was_written_with,
);

/// These tests hold the synchronous write path (each `set` in Redis before it returns), so
/// conflation is off; the conflating market-data writer has `tests/writer.rs`.
fn cache(server: &impl Reach, backend: Backend) -> Cache {
    Cache::builder()
        .on(server)
        .no_conflation()
        .backend(backend)
        .op_timeout(TEST_OP_TIMEOUT)
        .build()
        .expect("cache builds")
}

async fn pttl(server: &impl Reach, key: &str) -> i64 {
    let mut c = server.raw().await;
    c.pttl(key).await.expect("PTTL")
}

async fn exists(server: &impl Reach, key: &str) -> bool {
    let mut c = server.raw().await;
    c.exists(key).await.expect("EXISTS")
}

/// Waits (generously) until Redis itself reports `key` gone.
async fn wait_gone(server: &impl Reach, key: &str, ttl: Duration) {
    let give_up = Instant::now() + ttl + Duration::from_secs(10);
    while exists(server, key).await {
        assert!(
            Instant::now() < give_up,
            "{key} still exists long after its TTL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn every_kind_gets_its_ttl_in_milliseconds_and_expires(server: Target) {
    // Long kinds get shortened TTLs so the test can watch them expire; the short kinds keep
    // their design defaults (price 100 ms, book 50 ms).
    let cache = Cache::builder()
        .on(&server)
        .no_conflation()
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("pos", Duration::from_millis(300))
        .ttl_kind("risk", Duration::from_millis(400))
        .ttl_kind("ord", Duration::from_millis(500))
        .ttl_kind("strat", Duration::from_millis(600))
        .build()
        .unwrap();

    let p = cache.key::<Price>("AAPL").unwrap();
    cache.set(&p, price(1), 1).await.unwrap();
    let pos = cache.key::<Position>("AAPL").unwrap();
    let position = Position {
        qty: 1.0,
        avg_price: 2.0,
        realized_pnl: 0.0,
        seq: 1,
    };
    cache.set(&pos, position, 1).await.unwrap();
    let risk = cache.key::<Risk>("acct1").unwrap();
    let r = Risk {
        equity: 1.0,
        margin_used: 0.0,
        exposure: 0.0,
        max_exposure: 1.0,
        max_daily_loss: 1.0,
        seq: 1,
    };
    cache.set(&risk, r, 1).await.unwrap();
    let ord = cache.key::<Order>("o-1").unwrap();
    let o = Order {
        id: "o-1".into(),
        symbol: "AAPL".into(),
        side: Side::Sell,
        px: 1.0,
        qty: 1.0,
        filled: 0.0,
        status: OrderStatus::New,
        seq: 1,
    };
    cache.set(&ord, o, 1).await.unwrap();
    let strat = cache.key::<StrategyState>("mm").unwrap();
    let s = StrategyState {
        id: "mm".into(),
        params: Default::default(),
        status: "running".into(),
        seq: 1,
    };
    cache.set(&strat, s, 1).await.unwrap();
    let bid = cache.key::<BookBid>("AAPL").unwrap();
    cache.set_book(&bid, book([(1.0, 1.0)]), 1).await.unwrap();
    let ask = cache.key::<BookAsk>("AAPL").unwrap();
    cache.set_book(&ask, book([(2.0, 1.0)]), 1).await.unwrap();

    let expected = [
        (p.as_str().to_owned(), Price::DEFAULT_TTL),
        (pos.as_str().to_owned(), Duration::from_millis(300)),
        (risk.as_str().to_owned(), Duration::from_millis(400)),
        (ord.as_str().to_owned(), Duration::from_millis(500)),
        (strat.as_str().to_owned(), Duration::from_millis(600)),
        (bid.as_str().to_owned(), BookBid::DEFAULT_TTL),
        (ask.as_str().to_owned(), BookAsk::DEFAULT_TTL),
        (format!("{}:v", bid.as_str()), BookBid::DEFAULT_TTL),
    ];
    for (key, ttl) in &expected {
        let ms = pttl(&server, key).await;
        // Present (-2 would mean it already expired; on a slow machine a 50 ms book may
        // legitimately be gone already, which the expiry check below covers).
        assert!(ms == -2 || ms > 0, "{key}: PTTL {ms}");
        assert!(
            ms <= ttl.as_millis() as i64,
            "{key}: PTTL {ms} > TTL {ttl:?}"
        );
    }
    for (key, ttl) in &expected {
        wait_gone(&server, key, *ttl).await;
    }
    // Gone from Redis means gone from the cache too: L1 never outlives L2.
    assert!(cache.get(&p).await.unwrap().is_none());
    assert!(cache.get(&pos).await.unwrap().is_none());
    assert!(cache.get(&risk).await.unwrap().is_none());
    assert!(cache.get(&ord).await.unwrap().is_none());
    assert!(cache.get(&strat).await.unwrap().is_none());
    assert!(cache.read_book(&bid, 0).await.unwrap().is_none());
    assert!(cache.read_book(&ask, 0).await.unwrap().is_none());
}

async fn l1_promotion_uses_the_remaining_ttl_and_never_outlives_l2(server: Target) {
    let writer = cache(&server, Backend::Redis);
    let key = writer.key::<Order>("o-42").unwrap();
    let o = Order {
        id: "o-42".into(),
        symbol: "ES".into(),
        side: Side::Buy,
        px: 5000.0,
        qty: 1.0,
        filled: 0.0,
        status: OrderStatus::New,
        seq: 1,
    };
    writer
        .set_with(
            &key,
            o,
            1,
            mdcache::SetOptions::default().ttl(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A second instance with an empty L1 promotes the value from Redis.
    let reader = cache(&server, Backend::Layered);
    let r = reader.read(&key).await.unwrap().expect("in redis");
    assert_eq!(r.tier, Tier::L2);
    let left_in_redis = pttl(&server, key.as_str()).await;
    let promoted = r.ttl_remaining.expect("has a TTL");
    assert!(
        promoted.as_millis() as i64 <= 1500 - 400,
        "promotion used the full TTL: {promoted:?}"
    );
    let again = reader.read(&key).await.unwrap().expect("in L1");
    assert_eq!(again.tier, Tier::L1);
    let l1_left = again.ttl_remaining.expect("L1 deadline");
    assert!(
        l1_left.as_millis() as i64 <= left_in_redis,
        "L1 deadline {l1_left:?} is later than Redis' {left_in_redis} ms"
    );
    // Once Redis has expired the key, L1 must not serve it.
    wait_gone(&server, key.as_str(), Duration::from_millis(1500)).await;
    assert!(reader.get(&key).await.unwrap().is_none());
    let s = reader.stats();
    assert_eq!(s.total.l2_hits, 1);
    assert_eq!(s.total.l1_hits, 1);
}

async fn a_lower_version_never_replaces_a_higher_one_in_either_tier(server: Target) {
    let cache = cache(&server, Backend::Layered);
    let key = cache.key::<Price>("MSFT").unwrap();
    assert_eq!(
        cache.set(&key, price(5), 5).await.unwrap(),
        WriteOutcome::Applied
    );
    assert_eq!(
        cache.set(&key, price(3), 3).await.unwrap(),
        WriteOutcome::Superseded
    );
    // L1
    let r = cache.read(&key).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version, r.value.seq), (Tier::L1, 5, 5));
    // L2, raw
    let mut c = server.raw().await;
    let raw: Vec<u8> = c.get(key.as_str()).await.unwrap();
    assert_eq!(codec::peek_version(&raw), Ok(5));
    // L2, through a fresh instance
    let other = self::cache(&server, Backend::Redis);
    let r = other.read(&key).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::L2, 5));
    // Equal and higher versions apply.
    assert_eq!(
        cache.set(&key, price(5), 5).await.unwrap(),
        WriteOutcome::Applied
    );
    assert_eq!(
        cache.set(&key, price(9), 9).await.unwrap(),
        WriteOutcome::Applied
    );
    assert_eq!(other.read(&key).await.unwrap().unwrap().version, 9);

    // Versions above 2^53 compare exactly (Lua numbers are doubles; we compare bytes).
    let big = (1u64 << 53) + 1;
    assert_eq!(
        cache.set(&key, price(1), big).await.unwrap(),
        WriteOutcome::Applied
    );
    assert_eq!(
        cache.set(&key, price(1), big - 1).await.unwrap(),
        WriteOutcome::Superseded
    );

    // Books follow the same rule.
    let bk = cache.key::<BookBid>("MSFT").unwrap();
    let long = Cache::builder()
        .on(&server)
        .no_conflation()
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("book", Duration::from_secs(30))
        .build()
        .unwrap();
    let bk2 = long.key::<BookBid>("MSFT").unwrap();
    assert_eq!(bk.as_str(), bk2.as_str());
    long.set_book(&bk2, book([(10.0, 1.0)]), 5).await.unwrap();
    assert_eq!(
        long.set_book(&bk2, book([(9.0, 1.0)]), 3).await.unwrap(),
        WriteOutcome::Superseded
    );
    let fresh = self::cache(&server, Backend::Redis);
    let r = fresh.read_book(&bk2, 0).await.unwrap().unwrap();
    assert_eq!((r.version, r.value.levels[0].price), (5, 10.0));
}

#[tokio::test]
async fn every_forbidden_identifier_is_refused_and_nothing_is_sent() {
    let server = RedisServer::start();
    let cache = cache(&server, Backend::Layered);
    let before = server.dbsize();
    let long = "x".repeat(129);
    for bad in [
        "",
        "a b",
        "a\tb",
        "a\nb",
        "a\rb",
        "a\u{0}b",
        "a\u{1b}b",
        "a{b",
        "a}b",
        "a:b",
        "a*b",
        "a?b",
        "a[b",
        "a]b",
        "a\\b",
        long.as_str(),
    ] {
        let err = cache.key::<Price>(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey, "{bad:?}");
        let err = cache.key::<BookAsk>(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey, "{bad:?}");
    }
    assert_eq!(server.dbsize(), before);
}

/// A read's `PTTL` may belong to the value a concurrent write replaced (the single-server read
/// pipelines `PTTL` then `GET`, not atomically). Staged here: bytes whose envelope records a
/// 300 ms TTL under a key Redis keeps for 60 s. L1 keeps the value at most its written TTL, and
/// its age is counted from it; after it, the next read goes back to Redis.
async fn l1_never_keeps_a_value_past_the_ttl_it_was_written_with(server: Target) {
    let cache = cache(&server, Backend::Layered);
    let key = cache.key::<Price>("CAPPED").unwrap();
    let written = Duration::from_millis(300);
    let bytes = codec::encode_with_ttl(4, Some(written), &price(4), 1024).unwrap();
    let mut c = server.raw().await;
    let _: () = c.set_ex(key.as_str(), bytes, 60).await.unwrap();

    let r = cache.read(&key).await.unwrap().expect("in redis");
    assert_eq!((r.tier, r.version), (Tier::L2, 4));
    let left = r.ttl_remaining.expect("a TTL");
    assert!(left > Duration::from_secs(50), "Redis's own: {left:?}");
    let again = cache.read(&key).await.unwrap().expect("in L1");
    assert_eq!(again.tier, Tier::L1);
    let l1_left = again.ttl_remaining.expect("L1 deadline");
    assert!(
        l1_left <= written,
        "L1 keeps it {l1_left:?}, written for {written:?}"
    );
    tokio::time::sleep(written + Duration::from_millis(200)).await;
    let after = cache.read(&key).await.unwrap().expect("still in redis");
    assert_eq!(after.tier, Tier::L2, "L1 served it past its written TTL");
}

async fn garbage_bytes_are_a_miss_and_a_decode_error_never_a_value(server: Target) {
    let cache = cache(&server, Backend::Layered);
    let key = cache.key::<Price>("JUNK").unwrap();
    let mut c = server.raw().await;
    for garbage in [
        b"hello world".to_vec(),
        vec![0x4D, 1, 0, 0],
        vec![0x4D, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0xc1, 0xff],
        codec::encode(1, &"a string, not a Price", 1024).unwrap(),
    ] {
        let _: () = c.set_ex(key.as_str(), garbage, 60).await.unwrap();
        assert!(cache.get(&key).await.unwrap().is_none());
    }
    let s = cache.stats();
    let k = s.kind("price").unwrap();
    assert_eq!(k.decode_errors, 4);
    assert_eq!(k.l2_hits, 0);
    assert_eq!(k.errors, 0);
    // A real write replaces the garbage (an unreadable header never blocks a versioned write).
    assert_eq!(
        cache.set(&key, price(1), 1).await.unwrap(),
        WriteOutcome::Applied
    );
    assert_eq!(cache.get(&key).await.unwrap().unwrap().seq, 1);
}

async fn a_key_of_the_wrong_redis_type_is_a_typed_error(server: Target) {
    let cache = cache(&server, Backend::Layered);
    let mut c = server.raw().await;
    let key = cache.key::<Price>("LIST").unwrap();
    let _: () = c.lpush(key.as_str(), "x").await.unwrap();
    let err = cache.get(&key).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType, "{err}");
    let err = cache.set(&key, price(1), 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType, "{err}");
    assert!(!err.trips_breaker());
    // Redis is healthy and the key is not ours: not kept locally, not recorded for deletion.
    assert!(cache.dirty_log().is_empty());

    let bk = cache.key::<BookBid>("STR").unwrap();
    let _: () = c.set(bk.as_str(), "not a zset").await.unwrap();
    let err = cache.read_book(&bk, 5).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType, "{err}");
    let err = cache
        .set_book(&bk, book([(1.0, 1.0)]), 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType, "{err}");
    assert!(cache.dirty_log().is_empty());
    assert_eq!(cache.stats().total.writes_local_only, 0);
}

async fn an_oversize_value_is_refused_before_any_io(server: Target) {
    let cache = Cache::builder()
        .on(&server)
        .no_conflation()
        .op_timeout(TEST_OP_TIMEOUT)
        .max_value_bytes(NonZeroUsize::new(4096).unwrap())
        .build()
        .unwrap();
    let key = cache.key::<StrategyState>("big").unwrap();
    let params = (0..1000)
        .map(|i| (format!("param_{i}"), i as f64))
        .collect();
    let s = StrategyState {
        id: "big".into(),
        params,
        status: "running".into(),
        seq: 1,
    };
    let err = cache.set(&key, s, 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidValue);
    assert!(matches!(
        err,
        mdcache::Error::ValueTooLarge { limit: 4096, .. }
    ));
    let bk = cache.key::<BookAsk>("big").unwrap();
    let levels: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, 1.0)).collect();
    let err = cache.set_book(&bk, book(levels), 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidValue);
    let err = cache
        .set_book(&bk, book([(1.0, 1.0), (1.0, 2.0)]), 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidValue);
    assert_eq!(server.dbsize(), 0);
}

async fn batches_mix_hits_and_misses_in_one_round_trip(server: Target) {
    let writer = cache(&server, Backend::Redis);
    let keys: Vec<_> = (0..8)
        .map(|i| writer.key::<Price>(&format!("S{i}")).unwrap())
        .collect();
    // Write the even ones in one batch.
    let outcomes = writer
        .set_many(
            keys.iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 0)
                .map(|(i, k)| (k, price(i as u64), 10 + i as u64)),
        )
        .await
        .unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Applied; 4]);
    // A batch with one older version: only that one is superseded.
    let outcomes = writer
        .set_many([(&keys[0], price(0), 1), (&keys[2], price(2), 99)])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![WriteOutcome::Superseded, WriteOutcome::Applied]
    );

    let reader = cache(&server, Backend::Layered);
    let rkeys: Vec<_> = (0..8)
        .map(|i| reader.key::<Price>(&format!("S{i}")).unwrap())
        .collect();
    // Warm one key into L1 so the batch mixes L1 hits, L2 hits and misses.
    assert!(reader.get(&rkeys[4]).await.unwrap().is_some());
    let got = reader.get_many(&rkeys).await.unwrap();
    assert_eq!(got.len(), 8);
    for (i, r) in got.iter().enumerate() {
        if i % 2 == 0 {
            let r = r.as_ref().unwrap_or_else(|| panic!("S{i} missing"));
            assert_eq!(r.value.seq, i as u64);
            let want = if i == 2 { 99 } else { 10 + i as u64 };
            assert_eq!(r.version, want);
            assert_eq!(r.tier, if i == 4 { Tier::L1 } else { Tier::L2 });
        } else {
            assert!(r.is_none(), "S{i} should miss");
        }
    }
    // An invalid value anywhere in a batch writes nothing.
    let small = Cache::builder()
        .on(&server)
        .no_conflation()
        .op_timeout(TEST_OP_TIMEOUT)
        .max_value_bytes(NonZeroUsize::new(128).unwrap())
        .build()
        .unwrap();
    let a = small.key::<Position>("A").unwrap();
    let b = small.key::<StrategyState>("B").unwrap();
    let before = server.dbsize();
    let ok = Position {
        qty: 1.0,
        avg_price: 1.0,
        realized_pnl: 0.0,
        seq: 1,
    };
    small.set_many([(&a, ok, 1)]).await.unwrap();
    assert_eq!(server.dbsize(), before + 1);
    let huge = StrategyState {
        id: "B".into(),
        params: (0..50).map(|i| (format!("p{i}"), 1.0)).collect(),
        status: "x".into(),
        seq: 1,
    };
    let fine = StrategyState {
        id: "B".into(),
        params: Default::default(),
        status: "x".into(),
        seq: 1,
    };
    assert!(
        small
            .set_many([(&b, fine, 1), (&b, huge, 2)])
            .await
            .is_err()
    );
    assert_eq!(server.dbsize(), before + 1);
}

async fn books_are_sorted_sets_read_top_n_best_first(server: Target) {
    let cache = Cache::builder()
        .on(&server)
        .no_conflation()
        .backend(Backend::Layered)
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("book", Duration::from_secs(30))
        .build()
        .unwrap();
    let bid = cache.key::<BookBid>("ES").unwrap();
    let ask = cache.key::<BookAsk>("ES").unwrap();
    let levels = [(5000.25, 3.0), (5000.75, 1.0), (5000.5, 2.0), (4999.0, 9.0)];
    cache.set_book(&bid, book(levels), 1).await.unwrap();
    cache.set_book(&ask, book(levels), 1).await.unwrap();
    let mut c = server.raw().await;
    let t: String = redis::cmd("TYPE")
        .arg(bid.as_str())
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(t, "zset");
    let best: Vec<(String, f64)> = c.zrevrange_withscores(bid.as_str(), 0, 0).await.unwrap();
    assert_eq!(best[0].1, 5000.75);

    let fresh = self::cache(&server, Backend::Layered);
    let fb = fresh.key::<BookBid>("ES").unwrap();
    let fa = fresh.key::<BookAsk>("ES").unwrap();
    let top2 = fresh.read_book(&fb, 2).await.unwrap().unwrap();
    assert_eq!(top2.tier, Tier::L2);
    let prices: Vec<f64> = top2.value.levels.iter().map(|l| l.price).collect();
    assert_eq!(prices, vec![5000.75, 5000.5]);
    // Top 1 is served from the promoted top 2; the full side needs Redis again.
    assert_eq!(
        fresh.read_book(&fb, 1).await.unwrap().unwrap().tier,
        Tier::L1
    );
    let all = fresh.read_book(&fb, 0).await.unwrap().unwrap();
    assert_eq!(all.tier, Tier::L2);
    assert_eq!(all.value.levels.len(), 4);
    let asks = fresh.read_book(&fa, 3).await.unwrap().unwrap();
    let prices: Vec<f64> = asks.value.levels.iter().map(|l| l.price).collect();
    assert_eq!(prices, vec![4999.0, 5000.25, 5000.5]);
    assert_eq!(asks.value.levels[0].qty, 9.0);

    // A replace is total: old levels do not linger.
    cache.set_book(&bid, book([(1.0, 1.0)]), 2).await.unwrap();
    let other = self::cache(&server, Backend::Redis);
    let ob = other.key::<BookBid>("ES").unwrap();
    let r = other.read_book(&ob, 0).await.unwrap().unwrap();
    assert_eq!((r.version, r.value.levels.len()), (2, 1));
    // An empty side is cached as empty, not as missing.
    cache.set_book(&bid, BookSide::default(), 3).await.unwrap();
    let r = other.read_book(&ob, 0).await.unwrap().unwrap();
    assert_eq!((r.version, r.value.levels.len()), (3, 0));
    // Delete removes the side and its version key.
    cache.delete(&bid).await.unwrap();
    assert!(other.read_book(&ob, 0).await.unwrap().is_none());
    assert!(!exists(&server, &format!("{}:v", bid.as_str())).await);
}

async fn delete_unlinks_and_evicts_and_ttl_reports(server: Target) {
    let cache = cache(&server, Backend::Layered);
    let key = cache.key::<Order>("o-9").unwrap();
    assert_eq!(cache.ttl(&key).await.unwrap(), KeyTtl::Missing);
    let o = Order {
        id: "o-9".into(),
        symbol: "NQ".into(),
        side: Side::Buy,
        px: 1.0,
        qty: 1.0,
        filled: 1.0,
        status: OrderStatus::Filled,
        seq: 3,
    };
    cache.set(&key, o, 3).await.unwrap();
    match cache.ttl(&key).await.unwrap() {
        KeyTtl::Expires(d) => assert!(d <= Order::DEFAULT_TTL && d > Duration::ZERO),
        other => panic!("unexpected {other:?}"),
    }
    cache.delete(&key).await.unwrap();
    assert!(
        cache.get(&key).await.unwrap().is_none(),
        "L1 kept a deleted key"
    );
    assert!(!exists(&server, key.as_str()).await);
    let mut c = server.raw().await;
    let _: () = c.set(key.as_str(), "persistent").await.unwrap();
    assert_eq!(cache.ttl(&key).await.unwrap(), KeyTtl::Persistent);
}

#[tokio::test]
async fn a_hung_server_costs_at_most_the_deadline() {
    let server = RedisServer::start();
    let deadline = Duration::from_millis(50);
    let cache = Cache::builder()
        .redis_url(server.url())
        .no_conflation()
        .backend(Backend::Layered)
        .op_timeout(deadline)
        .build()
        .unwrap();
    let key = cache.key::<Position>("HUNG").unwrap();
    // Make sure the pool is connected before the server hangs.
    let mut tries = 0;
    while cache.ping().await.is_err() {
        tries += 1;
        assert!(tries < 100, "server never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.pause();
    let started = Instant::now();
    let err = cache.get(&key).await.unwrap_err();
    let took = started.elapsed();
    server.resume();
    assert!(err.is_timeout(), "{err}");
    assert!(err.trips_breaker());
    // Generous: the point is "bounded", not "fast".
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let pos = Position {
        qty: 1.0,
        avg_price: 1.0,
        realized_pnl: 0.0,
        seq: 1,
    };
    server.pause();
    let started = Instant::now();
    let outcome = cache.set(&key, pos, 1).await;
    let took = started.elapsed();
    // Checked before the resume: once Redis answers, recovery's replay may empty the log.
    assert!(cache.dirty_log().contains(key.as_str()));
    server.resume();
    // The write timed out in Redis: kept in this process's L1, the key recorded dirty.
    assert_eq!(outcome.unwrap(), WriteOutcome::LocalOnly);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let s = cache.stats().total;
    assert_eq!((s.timeouts, s.writes_local_only), (2, 1));
}

#[tokio::test]
async fn a_restarted_server_is_reconnected_to() {
    let mut server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(server.url())
        .no_conflation()
        .backend(Backend::Redis)
        .op_timeout(TEST_OP_TIMEOUT)
        .breaker_open(Duration::from_millis(200))
        .build()
        .unwrap();
    let key = cache.key::<Price>("RST").unwrap();
    cache.set(&key, price(1), 1).await.unwrap();
    server.kill();
    let err = cache.get(&key).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{err}"
    );
    server.restart();
    // The dead connections are replaced; within a generous bound the cache works again. A
    // write that met a dead connection recorded its key dirty, and reads distrust the key
    // until recovery has deleted it from Redis, so wait for that too.
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut seq = 1;
    loop {
        seq += 1;
        let written = cache.set(&key, price(seq), seq).await;
        if written.is_ok()
            && cache.dirty_log().is_empty()
            && let Ok(Some(read)) = cache.get(&key).await
        {
            assert_eq!(read.seq, seq);
            break;
        }
        assert!(Instant::now() < give_up, "never reconnected: {written:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = cache.breaker().unwrap();
    assert_eq!(b.state, mdcache::BreakerState::Closed);
    assert_eq!(b.opened, b.closed, "{b:?}");
}

#[tokio::test]
async fn a_cache_starts_while_redis_is_down_and_errors_quickly() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let cache = Cache::builder()
        .redis_url(url)
        .no_conflation()
        .backend(Backend::Layered)
        .op_timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(100))
        .build()
        .expect("builds without Redis");
    let key = cache.key::<Price>("DOWN").unwrap();
    let started = Instant::now();
    let err = cache.get(&key).await.unwrap_err();
    assert!(err.trips_breaker(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn configuration_errors_name_the_variable() {
    let err = Cache::builder()
        .redis_url("http://not-redis")
        .no_conflation()
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("CACHE_REDIS_URL"), "{err}");
    let err = Cache::builder()
        .op_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("CACHE_OP_TIMEOUT_MS"), "{err}");
    let err = Cache::builder().namespace("bad ns").build().unwrap_err();
    assert!(err.to_string().contains("CACHE_NAMESPACE"), "{err}");
}

/// For any sequence of versioned writes, the cached version is the highest one written,
/// in L1, in Redis, and as seen by a second instance. (A plain test driving proptest's runner,
/// so the one server all cases share is dropped — and stopped — when the test ends.)
#[test]
fn the_cached_version_is_the_highest_written() {
    let server = RedisServer::start();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    });
    let strategy = (proptest::collection::vec(0u64..50, 1..20), any::<bool>());
    let result = runner.run(&strategy, |(versions, concurrent)| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = &server;
        rt.block_on(async {
            let cache = cache(server, Backend::Layered);
            let id = uid("P");
            let key = cache.key::<Order>(&id).unwrap();
            let write = |v: u64| {
                let cache = cache.clone();
                let key = key.clone();
                async move {
                    let o = Order {
                        id: "x".into(),
                        symbol: "y".into(),
                        side: Side::Buy,
                        px: 1.0,
                        qty: 1.0,
                        filled: 0.0,
                        status: OrderStatus::New,
                        seq: v,
                    };
                    cache.set(&key, o, v).await.unwrap();
                }
            };
            if concurrent {
                let tasks: Vec<_> = versions.iter().map(|&v| tokio::spawn(write(v))).collect();
                for t in tasks {
                    t.await.unwrap();
                }
            } else {
                for &v in &versions {
                    write(v).await;
                }
            }
            let max = *versions.iter().max().unwrap();
            let r = cache.read(&key).await.unwrap().unwrap();
            prop_assert_eq!(r.version, max);
            prop_assert_eq!(r.value.seq, max);
            let other = self::cache(server, Backend::Redis);
            let k2 = other.key::<Order>(&id).unwrap();
            prop_assert_eq!(other.read(&k2).await.unwrap().unwrap().version, max);
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Cache>();
    is::<Arc<Price>>();
}

async fn scripts_are_reloaded_after_the_server_forgets_them(server: Target) {
    let cache = cache(&server, Backend::Redis);
    let key = cache.key::<Price>("NOSCRIPT").unwrap();
    let bk = cache.key::<BookAsk>("NOSCRIPT").unwrap();
    cache.set(&key, price(1), 1).await.unwrap();
    cache.set_book(&bk, book([(1.0, 1.0)]), 1).await.unwrap();
    let mut c = server.raw().await;
    for round in 2..4u64 {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut c)
            .await
            .unwrap();
        let out = if round == 2 {
            cache.set(&key, price(round), round).await.unwrap()
        } else {
            cache.set_many([(&key, price(round), round)]).await.unwrap()[0]
        };
        assert_eq!(out, WriteOutcome::Applied);
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(cache.read_book(&bk, 1).await.unwrap().is_some());
    }
    assert_eq!(cache.read(&key).await.unwrap().unwrap().version, 3);
}

#[tokio::test]
async fn a_key_recorded_dirty_while_the_breaker_is_closed_is_deleted_from_redis() {
    let server = RedisServer::start();
    let cache = cache(&server, Backend::Layered);
    let key = cache.key::<Price>("DIRTY").unwrap();
    cache.set(&key, price(1), 1).await.unwrap();
    assert!(exists(&server, key.as_str()).await);
    // A write Redis does not confirm in time (one timeout does not open the breaker): the
    // key is recorded dirty, as WriteThrough records a cache write it could not confirm.
    server.pause();
    // The write's outcome depends on how long the deadline took (the value may have expired
    // for L1 meanwhile); either way the key must be recorded.
    let _ = cache.set(&key, price(2), 2).await;
    // Checked before the resume: once Redis answers, the replay (every 100 ms while the
    // breaker is closed) empties the log.
    assert!(cache.dirty_log().contains(key.as_str()));
    server.resume();
    // Distrusted at once: reads do not serve Redis's copy...
    cache.clear_l1();
    assert!(cache.get(&key).await.unwrap().is_none());
    // ...and recovery deletes it although the breaker never opened (generous bound).
    let give_up = Instant::now() + Duration::from_secs(10);
    while !cache.dirty_log().is_empty() || exists(&server, key.as_str()).await {
        assert!(Instant::now() < give_up, "dirty key never replayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache.breaker().unwrap().opened, 0);
}

/// Long enough that nothing a test writes expires while it runs.
const LONG_TTL: Duration = Duration::from_secs(300);

/// Waits (generously) until the breaker is closed and the dirty log replayed: Redis is
/// trusted again.
async fn wait_recovered(cache: &Cache) {
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let b = cache.breaker().expect("the cache has Redis");
        if b.state == BreakerState::Closed && cache.dirty_log().is_empty() {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "never recovered: {b:?}, {} dirty keys",
            cache.dirty_log().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_set_redis_fails_is_served_from_l1_and_deleted_from_redis_on_recovery() {
    let mut server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(server.url())
        .no_conflation()
        .backend(Backend::Layered)
        .op_timeout(Duration::from_millis(500))
        .probe_timeout(Duration::from_secs(1))
        .breaker_open(Duration::from_millis(200))
        .ttl_kind("price", LONG_TTL)
        .build()
        .unwrap();
    let key = cache.key::<Price>("OUTAGE").unwrap();
    assert_eq!(
        cache.set(&key, price(1), 1).await.unwrap(),
        WriteOutcome::Applied
    );
    server.kill();

    // Redis refuses connections: the tick still reaches this process's readers.
    assert_eq!(
        cache.set(&key, price(2), 2).await.unwrap(),
        WriteOutcome::LocalOnly
    );
    let r = cache.read(&key).await.unwrap().expect("served from L1");
    assert_eq!((r.tier, r.version, r.value.seq), (Tier::L1, 2, 2));
    assert!(cache.dirty_log().contains(key.as_str()));
    // The version rule holds for local-only writes too.
    assert_eq!(
        cache.set(&key, price(1), 1).await.unwrap(),
        WriteOutcome::Superseded
    );
    assert_eq!(cache.read(&key).await.unwrap().unwrap().version, 2);
    // Refused input stays an error before any I/O: nothing kept, nothing recorded.
    let bad = cache.key::<Price>("BAD").unwrap();
    let err = cache
        .set_with(&bad, price(9), 9, SetOptions::default().ttl(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    assert!(!cache.dirty_log().contains(bad.as_str()));
    assert!(!matches!(cache.get(&bad).await, Ok(Some(_))));
    let s = cache.stats();
    let s = s.kind("price").unwrap();
    assert_eq!(
        (s.writes, s.writes_local_only, s.writes_superseded),
        (1, 1, 1)
    );
    assert!(s.errors >= 3, "{s:?}");

    server.restart();
    wait_recovered(&cache).await;
    // Redis holds no pre-outage copy; this process still reads its own write.
    assert!(!exists(&server, key.as_str()).await);
    let r = cache.read(&key).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version), (Tier::L1, 2));
    // Redis is written again. (Retried: the first write after a restart may meet a pooled
    // connection that died with the old server.)
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        match cache.set(&key, price(3), 3).await {
            Ok(WriteOutcome::Applied) => break,
            other => assert!(
                Instant::now() < give_up,
                "Redis never written again: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = server.multiplexed().await;
    let raw: Vec<u8> = c.get(key.as_str()).await.unwrap();
    assert_eq!(codec::peek_version(&raw), Ok(3));
}

#[tokio::test]
async fn writes_while_the_breaker_is_open_stay_local_and_recovery_deletes_redis_older_copies() {
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(server.url())
        .no_conflation()
        .backend(Backend::Layered)
        .op_timeout(Duration::from_millis(200))
        .probe_timeout(Duration::from_secs(1))
        .breaker_failures(NonZeroU32::MIN)
        .breaker_open(Duration::from_millis(100))
        .ttl_kind("price", LONG_TTL)
        .ttl_kind("book", LONG_TTL)
        .build()
        .unwrap();
    let px = cache.key::<Price>("OPEN").unwrap();
    let bid = cache.key::<BookBid>("OPEN").unwrap();
    let bid_version = format!("{}:v", bid.as_str());
    assert_eq!(
        cache.set(&px, price(1), 1).await.unwrap(),
        WriteOutcome::Applied
    );
    assert_eq!(
        cache.set_book(&bid, book([(10.0, 1.0)]), 1).await.unwrap(),
        WriteOutcome::Applied
    );
    for k in [px.as_str(), bid.as_str(), bid_version.as_str()] {
        assert!(exists(&server, k).await, "{k}");
    }

    // A hung server: one timed-out read opens the breaker (one failure is enough here), and
    // while it is not closed no caller's operation reaches Redis, so the writes below cannot.
    // Redis keeps version 1 of both keys all along (a paused server loses nothing).
    server.pause();
    let other = cache.key::<Price>("PROBE").unwrap();
    let err = cache.get(&other).await.unwrap_err();
    assert!(err.trips_breaker(), "{err}");
    assert_ne!(cache.breaker().unwrap().state, BreakerState::Closed);

    assert_eq!(
        cache.set(&px, price(2), 2).await.unwrap(),
        WriteOutcome::LocalOnly
    );
    assert_eq!(
        cache
            .set_book(&bid, book([(10.5, 1.0), (11.0, 2.0)]), 2)
            .await
            .unwrap(),
        WriteOutcome::LocalOnly
    );
    let r = cache.read(&px).await.unwrap().expect("served from L1");
    assert_eq!((r.tier, r.version, r.value.seq), (Tier::L1, 2, 2));
    let b = cache
        .read_book(&bid, 0)
        .await
        .unwrap()
        .expect("served from L1");
    let prices: Vec<f64> = b.value.levels.iter().map(|l| l.price).collect();
    assert_eq!((b.tier, b.version, prices), (Tier::L1, 2, vec![11.0, 10.5]));
    assert_eq!(
        cache.set_book(&bid, book([(9.0, 1.0)]), 1).await.unwrap(),
        WriteOutcome::Superseded
    );
    assert_eq!(cache.read_book(&bid, 0).await.unwrap().unwrap().version, 2);
    assert!(cache.dirty_log().contains(px.as_str()));
    assert!(cache.dirty_log().contains(bid.as_str()));
    assert_eq!(cache.stats().total.writes_local_only, 2);

    server.resume();
    wait_recovered(&cache).await;
    // Recovery deleted the pre-outage copies (the book's version key too) before the breaker
    // closed; the TTLs are long, so nothing merely expired.
    for k in [px.as_str(), bid.as_str(), bid_version.as_str()] {
        assert!(!exists(&server, k).await, "{k} survived recovery");
    }
    // Until L1 lets them go, this process keeps reading its own writes.
    assert_eq!(cache.read(&px).await.unwrap().unwrap().version, 2);
    assert_eq!(cache.read_book(&bid, 0).await.unwrap().unwrap().version, 2);
}

#[tokio::test]
async fn without_an_l1_a_failed_set_is_an_error_and_its_key_is_recorded_dirty() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let cache = Cache::builder()
        .redis_url(url)
        .no_conflation()
        .backend(Backend::Redis)
        .op_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let key = cache.key::<Price>("NOL1").unwrap();
    let err = cache.set(&key, price(1), 1).await.unwrap_err();
    assert!(
        err.trips_breaker() || err.kind() == ErrorKind::BreakerOpen,
        "{err}"
    );
    assert!(cache.dirty_log().contains(key.as_str()));
    let ask = cache.key::<BookAsk>("NOL1").unwrap();
    let err = cache
        .set_book(&ask, book([(1.0, 1.0)]), 1)
        .await
        .unwrap_err();
    assert!(
        err.trips_breaker() || err.kind() == ErrorKind::BreakerOpen,
        "{err}"
    );
    assert!(cache.dirty_log().contains(ask.as_str()));
    // An invalid book is refused before any I/O, and nothing is recorded.
    let bad = cache.key::<BookAsk>("BAD").unwrap();
    let err = cache
        .set_book(&bad, book([(f64::NAN, 1.0)]), 1)
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    assert!(!cache.dirty_log().contains(bad.as_str()));
    assert_eq!(cache.stats().total.writes_local_only, 0);
}
