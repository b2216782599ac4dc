//! Test values of the cache's kinds, and identifiers no other test (or run) uses.
//!
//! Plain, valid values: tests tell them apart by `seq` (prices) or `qty` (positions), never by
//! their other fields.
//!
//! Not declared in `support/mod.rs`, which the library's unit tests include too and where
//! `mdcache::` does not resolve; a test file includes this file itself:
//!
//! ```text
//! #[path = "support/fixtures.rs"]
//! mod fixtures;
//! ```

// Test files include this module, and none uses all of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use mdcache::{BookSide, Level, Position, Price};

/// A price whose `seq` (and exchange timestamp) is `seq`.
pub fn price(seq: u64) -> Price {
    Price {
        bid: 100.0,
        ask: 100.5,
        bid_size: 1.0,
        ask_size: 1.0,
        last: 100.25,
        seq,
        exchange_ts_ns: seq,
    }
}

/// A position of `qty` (its `seq` is `qty` too).
pub fn pos(qty: f64) -> Position {
    Position {
        qty,
        avg_price: 100.0,
        realized_pnl: 0.0,
        seq: qty as u64,
    }
}

/// A book side of `(price, qty)` levels, in the order given.
pub fn book(levels: impl IntoIterator<Item = (f64, f64)>) -> BookSide {
    BookSide {
        levels: levels
            .into_iter()
            .map(|(price, qty)| Level { price, qty })
            .collect(),
    }
}

/// `PREFIX-PID-N`: unique across the tests of a run and across runs, so tests sharing a
/// database (`DATABASE_URL`) or a Redis never collide.
pub fn uid(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits (at most 30 s) until every cache's backplane subscriber is listening.
pub async fn subscribed(caches: &[&mdcache::Cache]) {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !caches
        .iter()
        .all(|c| c.stats().backplane.is_some_and(|b| b.subscribed))
    {
        assert!(
            std::time::Instant::now() < give_up,
            "timed out waiting for the subscribers"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Points a cache builder at a test server or cluster (`crate::support::target::Reach`): the
/// server's URL, or the cluster's seeds.
pub trait OnTarget {
    /// The builder, aimed at `target`.
    fn on(self, target: &impl crate::support::target::Reach) -> Self;
}

impl OnTarget for mdcache::CacheBuilder {
    fn on(self, target: &impl crate::support::target::Reach) -> Self {
        match target.server_url() {
            Some(url) => self.redis_url(url),
            None => self.redis_cluster(target.seeds()),
        }
    }
}
