//! The Prometheus export: every documented metric name appears on the HTTP endpoint after use.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use mdcache::{BookBid, BookSide, Cache, CacheAside, Level, MemorySource, Position, WriteThrough};
use support::http::{free_addr, scrape};

/// The endpoint's answer; the listener starts on the runtime, so it gets generous time to
/// come up.
fn scrape_when_up(addr: SocketAddr) -> String {
    for _ in 0..100 {
        if let Some(body) = scrape(addr) {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("metrics endpoint at {addr} never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_metrics_are_exported() {
    let addr = free_addr();
    let handle = mdcache::metrics::install_prometheus(addr).expect("install");
    // A 10 s TTL and a refresh below 99 % of it left: a hit 150 ms after the write refreshes.
    let cache = Cache::builder()
        .ttl_kind("pos", Duration::from_secs(10))
        .build()
        .unwrap();
    let db = std::sync::Arc::new(MemorySource::default());
    let writer = WriteThrough::new(cache.clone(), db.clone());
    let aside = CacheAside::builder(cache.clone(), db)
        .negative_ttl(Duration::from_secs(1))
        .refresh_ahead_kind("pos", 0.99)
        .build()
        .unwrap();
    let key = cache.key::<Position>("AAPL").unwrap();
    let pos = Position {
        qty: 1.0,
        avg_price: 1.0,
        realized_pnl: 0.0,
        seq: 1,
    };
    writer.write(&key, pos.clone()).await.unwrap();
    cache.set(&key, pos, 0).await.unwrap(); // superseded
    tokio::time::sleep(Duration::from_millis(150)).await;
    aside.get(&key).await.unwrap(); // l1 hit, starts a refresh (under 99 % of the TTL left)
    let ghost = cache.key::<Position>("GHOST").unwrap();
    aside.get(&ghost).await.unwrap();
    aside.get(&ghost).await.unwrap(); // negative hit
    let bk = cache.key::<BookBid>("AAPL").unwrap();
    let side = BookSide {
        levels: vec![Level {
            price: 1.0,
            qty: 1.0,
        }],
    };
    cache.set_book(&bk, side, 1).await.unwrap();
    cache.delete(&bk).await.unwrap();
    let _ = cache
        .set_book(
            &bk,
            BookSide {
                levels: vec![Level {
                    price: f64::NAN,
                    qty: 1.0,
                }],
            },
            2,
        )
        .await;
    aside.shutdown().await;
    let stats = cache.stats();
    assert!(stats.total.l1_hits >= 1 && stats.total.negative_hits == 1);

    let body = scrape_when_up(addr);
    for name in [
        "mdcache_hits_total",
        "mdcache_misses_total",
        "mdcache_writes_total",
        "mdcache_deletes_total",
        "mdcache_errors_total",
        "mdcache_source_loads_total",
        "mdcache_source_writes_total",
        "mdcache_refreshes_total",
        "mdcache_negative_hits_total",
        "mdcache_l1_entries",
        "mdcache_l1_bytes",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    assert!(body.contains(r#"kind="pos""#), "{body}");
    assert!(handle.render().contains("mdcache_hits_total"));
    // Every exported mdcache metric is one the docs list.
    for line in body.lines().filter(|l| l.starts_with("mdcache_")) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        assert!(
            mdcache::metrics::METRICS.iter().any(|(n, _)| *n == name),
            "undocumented metric {name}"
        );
    }
}
