//! `mdcache demo`: one writer task updates prices, positions and books while reader tasks read them; prints reads/s, hit rate and read latency.
//!
//! Embedded (memory backend, L1 only) unless a Redis address is given (`--redis URL`, or
//! `CACHE_REDIS_URL` / `CACHE_ADDRESS`), which makes it layered: L1 in front of Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mdcache::{
    Backend, BookAsk, BookBid, BookSide, Cache, CacheConfig, Key, Level, Position, Price,
};
use tokio::time::MissedTickBehavior;

use crate::exit::{Failure, print_line};
use crate::histogram::Histogram;

/// How many levels the writer puts on each book side (readers read the top 5).
const BOOK_LEVELS: usize = 10;
/// Reads between voluntary yields. The memory backend never awaits anything, so a reader
/// that did not yield would keep its worker thread from the writer.
const READS_PER_YIELD: u32 = 64;
/// The writer's pace: one round (every symbol's price, position and both book sides) per tick,
/// a market-data-like update rate rather than a write benchmark competing with the readers.
const WRITE_TICK: Duration = Duration::from_millis(1);

/// `demo`'s options.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How long the writer and readers run, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    duration_ms: u64,
    /// Number of symbols written and read.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    symbols: u64,
    /// Number of reader tasks.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    readers: u64,
}

/// The keys of one symbol, built once: reads then do no formatting.
struct SymbolKeys {
    price: Key<Price>,
    pos: Key<Position>,
    bid: Key<BookBid>,
    ask: Key<BookAsk>,
}

/// What one reader measured.
#[derive(Default)]
struct ReaderReport {
    price: Histogram,
    book: Histogram,
    errors: u64,
}

/// Runs the demo. Needs a multi-threaded runtime so readers and the writer run in parallel.
pub(crate) async fn run(
    args: DemoArgs,
    redis: Option<String>,
    timeout_ms: Option<u64>,
) -> Result<(), Failure> {
    let mut config = CacheConfig::from_env()?;
    if let Some(url) = redis {
        config.redis_url = Some(url);
        config.backend = Some(Backend::Layered);
    }
    if let Some(ms) = timeout_ms {
        config.op_timeout = Duration::from_millis(ms);
    }
    let cache = Cache::builder().config(config).build()?;
    let header = match (cache.backend(), cache.config().redis_url.as_deref()) {
        (Backend::Memory, _) => "embedded: in-process L1 only".to_owned(),
        (Backend::Layered, Some(url)) => format!("layered: L1 + Redis at {}", redact(url)),
        (Backend::Redis, Some(url)) => format!("Redis only: L2 at {}", redact(url)),
        (other, _) => other.name().to_owned(),
    };
    print_line(&format!("mdcache demo ({header})"))?;
    if cache.backend() != Backend::Memory {
        wait_for_redis(&cache).await?;
    }

    let keys: Vec<SymbolKeys> = (0..args.symbols)
        .map(|i| {
            let id = format!("SYM{i:03}");
            Ok(SymbolKeys {
                price: cache.key(&id)?,
                pos: cache.key(&id)?,
                bid: cache.key(&id)?,
                ask: cache.key(&id)?,
            })
        })
        .collect::<mdcache::Result<_>>()?;
    let keys = Arc::new(keys);

    let duration = Duration::from_millis(args.duration_ms);
    let start = Instant::now();
    let deadline = start + duration;
    let writer = tokio::spawn(write_loop(cache.clone(), Arc::clone(&keys), deadline));
    let readers: Vec<_> = (0..args.readers)
        .map(|n| tokio::spawn(read_loop(cache.clone(), Arc::clone(&keys), deadline, n)))
        .collect();

    let mut report = ReaderReport::default();
    for r in readers {
        let r = r
            .await
            .map_err(|e| Failure::unavailable(format!("a reader task failed: {e}")))?;
        report.price.merge(&r.price);
        report.book.merge(&r.book);
        report.errors += r.errors;
    }
    let write_errors = writer
        .await
        .map_err(|e| Failure::unavailable(format!("the writer task failed: {e}")))?;
    let elapsed = start.elapsed().as_secs_f64().max(f64::EPSILON);

    let stats = cache.stats().total;
    // A read is one lookup: counted once as an L1 hit or miss when there is an L1, else once
    // as an L2 hit or miss.
    let (lookups, hits) = if cache.backend() == Backend::Redis {
        (stats.l2_hits + stats.l2_misses, stats.l2_hits)
    } else {
        (
            stats.l1_hits + stats.l1_misses,
            stats.l1_hits + stats.l2_hits,
        )
    };
    let reads = report.price.count() + report.book.count();
    let writes = stats.writes + stats.writes_superseded + stats.writes_local_only;
    let lines = [
        format!(
            "{} symbols, 1 writer (price, position, book sides), {} readers (price get + book top-5), {elapsed:.2} s",
            args.symbols, args.readers
        ),
        format!(
            "writes  {writes} ({:.0}/s), {} superseded, {} local-only (Redis failed), {write_errors} errors",
            writes as f64 / elapsed,
            stats.writes_superseded,
            stats.writes_local_only
        ),
        format!(
            "reads   {reads} ({:.0}/s), hit rate {:.2} % (l1 hits {}, l2 hits {}, misses {}), {} errors, {} timeouts",
            reads as f64 / elapsed,
            percent(hits, lookups),
            stats.l1_hits,
            stats.l2_hits,
            lookups.saturating_sub(hits),
            report.errors,
            stats.timeouts
        ),
        format!(
            "latency {:>12} {:>10} {:>10} {:>10}   (every read; bucket error <= 3 %)",
            "reads", "p50", "p99", "max"
        ),
        latency_row("price get", &report.price),
        latency_row("book top-5", &report.book),
    ];
    for line in lines {
        print_line(&line)?;
    }
    Ok(())
}

/// Pings until Redis answers, for at most the connect timeout: the pool opens its connections
/// in the background, and a demo against an unreachable Redis should say so, not run for two
/// seconds of errors.
async fn wait_for_redis(cache: &Cache) -> Result<(), Failure> {
    let give_up = Instant::now() + cache.config().connect_timeout;
    loop {
        match cache.ping().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= give_up => {
                return Err(Failure::unavailable(format!(
                    "Redis did not answer within {:?}: {e}",
                    cache.config().connect_timeout
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// The writer: every tick, one version higher, every symbol's price and position (one batch
/// each) and both book sides. Returns the number of failed writes.
async fn write_loop(cache: Cache, keys: Arc<Vec<SymbolKeys>>, deadline: Instant) -> u64 {
    let mut tick = tokio::time::interval(WRITE_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut errors = 0;
    let mut version = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        version += 1;
        let prices = keys.iter().enumerate().map(|(i, k)| {
            let mid = mid_price(i, version);
            let px = Price {
                bid: mid - 0.01,
                ask: mid + 0.01,
                bid_size: 100.0,
                ask_size: 100.0,
                last: mid,
                seq: version,
                exchange_ts_ns: 0,
            };
            (&k.price, px, version)
        });
        if cache.set_many(prices).await.is_err() {
            errors += 1;
        }
        let positions = keys.iter().map(|k| {
            let pos = Position {
                qty: (version % 1000) as f64,
                avg_price: 100.0,
                realized_pnl: 0.0,
                seq: version,
            };
            (&k.pos, pos, version)
        });
        if cache.set_many(positions).await.is_err() {
            errors += 1;
        }
        for (i, k) in keys.iter().enumerate() {
            let mid = mid_price(i, version);
            let side = |sign: f64| BookSide {
                levels: (1..=BOOK_LEVELS)
                    .map(|l| Level {
                        price: mid + sign * 0.01 * l as f64,
                        qty: 100.0 * l as f64,
                    })
                    .collect(),
            };
            if cache.set_book(&k.bid, side(-1.0), version).await.is_err() {
                errors += 1;
            }
            if cache.set_book(&k.ask, side(1.0), version).await.is_err() {
                errors += 1;
            }
        }
    }
    errors
}

/// A reader: a price get and a book top-5 read of a pseudo-random symbol, each timed.
async fn read_loop(
    cache: Cache,
    keys: Arc<Vec<SymbolKeys>>,
    deadline: Instant,
    n: u64,
) -> ReaderReport {
    let mut report = ReaderReport::default();
    // xorshift64: cheap, and different per reader; statistical quality does not matter here.
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (n + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut since_yield = 0;
    loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let k = &keys[(rng % keys.len() as u64) as usize];

        let t = Instant::now();
        let price = cache.get(&k.price).await;
        let mid = Instant::now();
        report.price.record(nanos(mid - t));
        let book = cache.get_book(&k.bid, 5).await;
        let end = Instant::now();
        report.book.record(nanos(end - mid));
        report.errors += u64::from(price.is_err()) + u64::from(book.is_err());

        if end >= deadline {
            return report;
        }
        since_yield += 1;
        if since_yield == READS_PER_YIELD {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// A slowly drifting mid price per symbol.
fn mid_price(symbol: usize, version: u64) -> f64 {
    100.0 + symbol as f64 + (version % 200) as f64 * 0.01
}

fn latency_row(name: &str, h: &Histogram) -> String {
    let q = |q: f64| h.quantile(q).map_or_else(|| "-".to_owned(), fmt_nanos);
    format!(
        "{name:<10} {:>10} {:>10} {:>10} {:>10}",
        h.count(),
        q(0.50),
        q(0.99),
        if h.count() == 0 {
            "-".to_owned()
        } else {
            fmt_nanos(h.max())
        }
    )
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// `850 ns`, `12.3 µs`, `4.56 ms`, `1.20 s`.
pub(crate) fn fmt_nanos(ns: u64) -> String {
    let ns_f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns_f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns_f / 1e6)
    } else {
        format!("{:.2} s", ns_f / 1e9)
    }
}

/// The URL with any user and password replaced by `***`, for printing. The user info runs to
/// the last `@` (a password may hold an unencoded `@` or `/`); a query that may carry a
/// password (`?pass=`, `?password=`) is hidden whole; in a libpq `key=value` string,
/// everything from `password=` on is hidden.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return match find_ignore_case(url, "password") {
            Some(at) => format!("{}password=***", &url[..at]),
            None => url.to_owned(),
        };
    };
    let (userinfo, host) = match rest.rfind('@') {
        Some(at) => ("***@", &rest[at + 1..]),
        None => ("", rest),
    };
    let host = match host.split_once('?') {
        Some((path, query)) if find_ignore_case(query, "pass").is_some() => format!("{path}?***"),
        _ => host.to_owned(),
    };
    format!("{scheme}://{userinfo}{host}")
}

/// Where `needle` (ASCII) first occurs in `s`, ignoring ASCII case.
fn find_ignore_case(s: &str, needle: &str) -> Option<usize> {
    s.to_ascii_lowercase().find(needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(
            redact("rediss://user:p%40ss@cache:6380/0"),
            "rediss://***@cache:6380/0"
        );
        assert_eq!(redact("redis://:secret@h/"), "redis://***@h/");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(redact("redis://u:pa/ss@h:1/0"), "redis://***@h:1/0");
        assert_eq!(
            redact("redis+unix:///r.sock?db=1&pass=pw"),
            "redis+unix:///r.sock?***"
        );
        assert_eq!(
            redact("redis://h/0?protocol=resp3"),
            "redis://h/0?protocol=resp3"
        );
        assert_eq!(
            redact("host=db user=u password='p w' dbname=x"),
            "host=db user=u password=***"
        );
    }

    #[test]
    fn durations_format_with_units() {
        assert_eq!(fmt_nanos(850), "850 ns");
        assert_eq!(fmt_nanos(12_345), "12.3 µs");
        assert_eq!(fmt_nanos(4_560_000), "4.56 ms");
        assert_eq!(fmt_nanos(1_200_000_000), "1.20 s");
    }
}
