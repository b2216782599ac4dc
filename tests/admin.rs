//! The operator's calls (`mdcache::admin`, issue 14) against real Redis, on one server and on a cluster: namespace-bound patterns, paged `SCAN` of every primary, `clear` (dry run, backplane eviction, 100 k keys while other requests go on), key counts and health.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fixtures::{OnTarget, book, pos, price};
use mdcache::admin::{self, KeyPattern};
use mdcache::{Backend, BookBid, Cache, ErrorKind, Kind, Position, Price};
use support::target::{Reach, Target, on_both};
use support::{RedisServer, TEST_OP_TIMEOUT, wait_for};

on_both!(
    keys_pages_through_every_primary_and_stays_in_the_namespace,
    clear_dry_runs_then_removes_and_other_instances_evict,
    keys_are_counted_per_kind,
);

fn cache(target: &impl Reach, backend: Backend) -> Cache {
    Cache::builder()
        .on(target)
        .backend(backend)
        .no_conflation()
        .op_timeout(TEST_OP_TIMEOUT)
        .ttl_kind("price", Duration::from_secs(120))
        .ttl_kind("pos", Duration::from_secs(120))
        .ttl_kind("book", Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn keys_pages_through_every_primary_and_stays_in_the_namespace(target: Target) {
    let c = cache(&target, Backend::Redis);
    for i in 0..120u64 {
        let k = c.key::<Price>(&format!("P{i}")).unwrap();
        c.set(&k, price(1), 1).await.unwrap();
    }
    for i in 0..5u64 {
        let k = c.key::<Position>(&format!("P{i}")).unwrap();
        c.set(&k, pos(1.0), 1).await.unwrap();
    }
    // A key of another namespace, and one that merely looks like ours.
    let mut raw = target.raw().await;
    let () = redis::cmd("SET")
        .arg("other:price:{P1}")
        .arg("x")
        .query_async(&mut raw)
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg("mdcx:price:{P1}")
        .arg("x")
        .query_async(&mut raw)
        .await
        .unwrap();
    // Pages of ~10 until the end: every price once, nothing else.
    let pattern = KeyPattern::new(&c, "price:*").unwrap();
    let (mut seen, mut from, mut pages) = (HashSet::new(), None, 0);
    loop {
        let page = admin::keys(&c, &pattern, from, 10).await.unwrap();
        pages += 1;
        for key in page.keys {
            assert!(key.starts_with("mdc:price:{P"), "{key}");
            seen.insert(key);
        }
        match page.next {
            Some(next) => from = Some(next),
            None => break,
        }
        assert!(pages < 1000, "the scan never ended");
    }
    assert_eq!(seen.len(), 120);
    assert!(pages > 1, "paged: {pages}");
    // `*` is the namespace, not the whole server.
    let all = KeyPattern::new(&c, "*").unwrap();
    let everything = admin::keys(&c, &all, None, 1_000_000).await.unwrap();
    assert_eq!(everything.keys.len(), 125);
    assert!(everything.next.is_none());
    assert!(everything.keys.iter().all(|k| k.starts_with("mdc:")));
    // A bad pattern is refused before any I/O.
    assert!(
        KeyPattern::new(&c, "price *")
            .unwrap_err()
            .is_invalid_input()
    );
}

async fn clear_dry_runs_then_removes_and_other_instances_evict(target: Target) {
    let feed = cache(&target, Backend::Redis);
    // An engine with an L1 and the backplane: it holds a price in L1.
    let engine = cache(&target, Backend::Layered);
    for i in 0..50u64 {
        let k = feed.key::<Price>(&format!("C{i}")).unwrap();
        feed.set(&k, price(7), 7).await.unwrap();
        let b = feed.key::<BookBid>(&format!("C{i}")).unwrap();
        feed.set_book(&b, book([(1.0, 1.0)]), 7).await.unwrap();
    }
    let held = engine.key::<Price>("C3").unwrap();
    assert_eq!(engine.get(&held).await.unwrap().unwrap().seq, 7);
    assert!(engine.stats().l1_entries > 0);
    let pattern = KeyPattern::for_kind(&feed, Kind::Price);
    let dry = admin::clear(&feed, &pattern, true).await.unwrap();
    assert_eq!((dry.matched, dry.removed, dry.dry_run), (50, 0, true));
    assert_eq!(target.dbsize(), 150, "a dry run removes nothing");
    let done = admin::clear(&feed, &pattern, false).await.unwrap();
    assert_eq!((done.matched, done.removed), (50, 50));
    // Only prices went: the book sides and their stamps stay.
    assert_eq!(target.dbsize(), 100);
    // The engine evicts its L1 copy on the backplane message (no TTL could explain it:
    // 120 s). Generous bound; it takes milliseconds.
    feed.flush().await.unwrap();
    wait_for("the engine's L1 eviction", || {
        engine.stats().l1_entries == 0
    })
    .await;
    assert!(engine.get(&held).await.unwrap().is_none());
    // A book side's kind takes its stamps along.
    let books = admin::clear(&feed, &KeyPattern::for_kind(&feed, Kind::BookBid), false)
        .await
        .unwrap();
    assert_eq!(books.removed, 100);
    assert_eq!(target.dbsize(), 0);
}

async fn keys_are_counted_per_kind(target: Target) {
    let c = cache(&target, Backend::Redis);
    for i in 0..7u64 {
        let k = c.key::<Price>(&format!("K{i}")).unwrap();
        c.set(&k, price(1), 1).await.unwrap();
    }
    for i in 0..3u64 {
        let b = c.key::<BookBid>(&format!("K{i}")).unwrap();
        c.set_book(&b, book([(1.0, 1.0)]), 1).await.unwrap();
    }
    let counts = admin::count_keys(&c, 1_000_000).await.unwrap();
    assert!(counts.complete);
    assert_eq!(counts.by_kind.get("price"), Some(&7));
    assert_eq!(counts.by_kind.get("book:bid"), Some(&3));
    assert_eq!((counts.book_stamps, counts.other), (3, 0));
    // A bound stops the scan and says so.
    let bounded = admin::count_keys(&c, 1).await.unwrap();
    let total: u64 = bounded.by_kind.values().sum::<u64>() + bounded.book_stamps;
    assert!(total >= 1);
}

/// A `PING` series: as many samples as asked, percentiles in order; a count out of range is
/// refused before any I/O; a cache without Redis says so.
#[tokio::test]
async fn ping_series_reports_percentiles() {
    let server = RedisServer::start();
    let c = cache(&server, Backend::Redis);
    let s = admin::ping_series(&c, 50).await.unwrap();
    assert_eq!(s.samples, 50);
    assert!(s.min <= s.p50 && s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.max);
    for bad in [0, admin::MAX_PINGS + 1] {
        let e = admin::ping_series(&c, bad).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue, "{e}");
    }
    let memory_only = Cache::builder().build().unwrap();
    let e = admin::ping_series(&memory_only, 1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}

/// `clear` of 100,000 keys: every one removed, in `SCAN` steps and `UNLINK` batches, while
/// another task keeps reading. The other reads' latency is measured and printed (speed is not
/// asserted here): Redis is never blocked for the whole clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_of_100k_keys_lets_other_requests_through() {
    let server = RedisServer::start();
    let c = cache(&server, Backend::Redis);
    support::fill_keys(&server, 100_000, |i| format!("mdc:price:{{Z{i}}}")).await;
    let other = c.key::<Position>("OTHER").unwrap();
    c.set(&other, pos(1.0), 1).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (c, other, stop) = (c.clone(), other.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let got = c.get(&other).await;
                worst = worst.max(t.elapsed());
                reads += 1;
                if let Err(e) = got {
                    return (reads, worst, Some(e));
                }
            }
            (reads, worst, None)
        })
    };
    let report = admin::clear(&c, &KeyPattern::for_kind(&c, Kind::Price), false)
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (reads, worst, err) = reader.await.unwrap();
    assert!(reads > 0, "the reader ran during the clear");
    assert!(err.is_none(), "a read failed during the clear: {err:?}");
    assert_eq!((report.matched, report.removed), (100_000, 100_000));
    assert_eq!(server.dbsize(), 1, "only the position is left");
    println!(
        "clear of 100k keys: {:?} ({:.0} keys/s); another reader's slowest read meanwhile {worst:?} over {reads} reads",
        report.elapsed,
        100_000.0 / report.elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn health_reports_a_dead_server_without_failing() {
    let mut server = RedisServer::start();
    let c = Cache::builder()
        .redis_url(server.url())
        .backend(Backend::Redis)
        .op_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let h = admin::health(&c).await;
    assert!(
        h.redis_ok && h.ping.is_some() && h.ping_error.is_none(),
        "{h:?}"
    );
    assert!(h.shards.is_empty());
    server.kill();
    let h = admin::health(&c).await;
    assert!(!h.redis_ok && h.ping_error.is_some(), "{h:?}");
    // Admin calls on a memory-only cache are refused, not attempted.
    let memory = Cache::builder().build().unwrap();
    let err = admin::keys(&memory, &KeyPattern::all(&memory), None, 10)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), mdcache::ErrorKind::Unsupported);
}
