//! Operating a cache at 3 a.m.: namespace-bound key patterns, cursor-paged `SCAN` (every primary of a cluster, never `KEYS`), bulk clear in batches announced on the backplane, key counts per kind and a health report — what `mdcache keys | clear | stats | health` run.
//!
//! Everything here reaches Redis outside the callers' circuit breaker (like recovery: an
//! operator must be able to look while the breaker is open), each step under the probe
//! deadline (`CACHE_PROBE_TIMEOUT_MS`), one `SCAN` step of at most [`SCAN_STEP`] keys at a
//! time, so no call holds Redis or this process's memory for long.
//!
//! ```no_run
//! # async fn demo() -> mdcache::Result<()> {
//! use mdcache::admin::{self, KeyPattern};
//! let cache = mdcache::Cache::builder().redis_url("redis://127.0.0.1:6379").build()?;
//! // `price:*` means `mdc:price:*`: a pattern never reaches outside the namespace.
//! let pattern = KeyPattern::new(&cache, "price:*")?;
//! let page = admin::keys(&cache, &pattern, None, 100).await?;
//! println!("{} keys, more: {}", page.keys.len(), page.next.is_some());
//! let dry = admin::clear(&cache, &pattern, true).await?;
//! println!("would remove {}", dry.matched);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::l2::ScanPos;
use crate::resilience::{BreakerSnapshot, ShardBreaker};

#[cfg(feature = "admin-http")]
pub mod http;
use crate::key::KeySchema;
use crate::outcome::KeyTtl;
use crate::schema::{BookAsk, BookBid, Kind, Order, Position, Price, Risk, StrategyState};

/// Keys one `SCAN` step looks at (`COUNT`), and one `UNLINK` batch of [`clear`] at most.
pub const SCAN_STEP: u32 = 500;

/// Longest pattern accepted, in bytes (relative to the namespace).
pub const MAX_PATTERN_LEN: usize = 256;

/// A `SCAN` pattern bound to the cache's namespace: `price:*` stands for `mdc:price:*`. The
/// namespace is a literal prefix (it has no glob characters), and a glob pattern matches from
/// the first byte, so nothing after it can widen the match beyond the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    full: String,
    prefix_len: usize,
}

impl KeyPattern {
    /// `relative` under `cache`'s namespace. Refused ([`Error::InvalidValue`]) when empty,
    /// longer than [`MAX_PATTERN_LEN`], or holding anything but printable ASCII without
    /// spaces.
    pub fn new(cache: &Cache, relative: &str) -> Result<Self> {
        Self::under(&cache.engine().config().namespace, relative)
    }

    /// Every key of `kind` (a book side's stamp included).
    pub fn for_kind(cache: &Cache, kind: Kind) -> Self {
        let ns = &cache.engine().config().namespace;
        let relative = match kind {
            Kind::BookBid => "book:{*}:bid*".to_owned(),
            Kind::BookAsk => "book:{*}:ask*".to_owned(),
            other => format!("{}:*", other.name()),
        };
        KeyPattern {
            prefix_len: ns.len() + 1,
            full: format!("{ns}:{relative}"),
        }
    }

    /// Every key of the namespace.
    pub fn all(cache: &Cache) -> Self {
        let ns = &cache.engine().config().namespace;
        KeyPattern {
            prefix_len: ns.len() + 1,
            full: format!("{ns}:*"),
        }
    }

    fn under(namespace: &str, relative: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidValue {
            reason: format!(
                "key pattern {:?}: {why}",
                relative.chars().take(64).collect::<String>()
            ),
        };
        if relative.is_empty() {
            return Err(bad("empty"));
        }
        if relative.len() > MAX_PATTERN_LEN {
            return Err(bad(&format!("longer than {MAX_PATTERN_LEN} bytes")));
        }
        if !relative.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("only printable ASCII without spaces is allowed"));
        }
        Ok(KeyPattern {
            prefix_len: namespace.len() + 1,
            full: format!("{namespace}:{relative}"),
        })
    }

    /// The pattern sent to Redis, namespace included.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The pattern as given, without the namespace.
    pub fn relative(&self) -> &str {
        &self.full[self.prefix_len..]
    }
}

impl fmt::Display for KeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Where a paged scan continues ([`KeysPage::next`]): opaque to callers, printed and parsed
/// as `NODE-CURSOR` so it survives a command line or a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanCursor(ScanPos);

impl fmt::Display for ScanCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.node, self.0.cursor)
    }
}

impl FromStr for ScanCursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidValue {
            reason: format!("scan cursor {s:?}: expected NODE-CURSOR"),
        };
        let (node, cursor) = s.split_once('-').ok_or_else(bad)?;
        Ok(ScanCursor(ScanPos {
            node: node.parse().map_err(|_| bad())?,
            cursor: cursor.parse().map_err(|_| bad())?,
        }))
    }
}

/// One page of [`keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeysPage {
    /// Full key names (namespace included), in `SCAN` order; a key may appear on two pages
    /// if it moved while the scan ran, as `SCAN` allows.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` when the scan is over.
    pub next: Option<ScanCursor>,
}

/// What [`clear`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClearReport {
    /// Keys the pattern matched.
    pub matched: u64,
    /// Keys deleted (0 on a dry run; fewer than matched when some expired meanwhile).
    pub removed: u64,
    /// Nothing was deleted.
    pub dry_run: bool,
    /// How long it took.
    pub elapsed: Duration,
}

/// What [`count_keys`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct KeyCounts {
    /// Keys per built-in kind name (`price`, `book:bid`, …), book stamps not counted.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Book-side stamps (`…:bid:v`), one per cached side.
    pub book_stamps: u64,
    /// Keys of the namespace that no built-in kind names (user schemas).
    pub other: u64,
    /// False when the scan stopped at its bound before the end: the counts are a lower bound.
    pub complete: bool,
}

/// What [`health`] found.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Health {
    /// A `PING` of Redis (every primary of a cluster) answered within the op deadline.
    pub redis_ok: bool,
    /// Its round trip.
    pub ping: Option<Duration>,
    /// Why it failed.
    pub ping_error: Option<String>,
    /// The breaker ([`Cache::breaker`]); `None` without Redis.
    pub breaker: Option<BreakerSnapshot>,
    /// A cluster's shards ([`Cache::shard_breakers`]); empty on one server.
    pub shards: Vec<ShardBreaker>,
    /// Keys the dirty log distrusts until recovery deletes them.
    pub dirty_keys: usize,
    /// The backplane canary's lag p99 (publish to receipt by this instance), when there is
    /// a backplane and it measured one.
    pub backplane_lag_p99: Option<Duration>,
}

/// Walks `pattern` from `from` (the start when `None`) until at least `limit` keys are found
/// or the scan ends: one `SCAN` step at a time (`COUNT` of `limit`, between 10 and
/// [`SCAN_STEP`]), every primary of a cluster in turn. A step's keys are returned whole, so a
/// page may hold a few more than `limit`.
pub async fn keys(
    cache: &Cache,
    pattern: &KeyPattern,
    from: Option<ScanCursor>,
    limit: usize,
) -> Result<KeysPage> {
    let l2 = redis_of(cache)?;
    let mut at = from.map(|c| c.0).unwrap_or_default();
    let count = u32::try_from(limit)
        .unwrap_or(SCAN_STEP)
        .clamp(10, SCAN_STEP);
    let mut keys = Vec::new();
    loop {
        let (found, next) = l2.scan_step(at, pattern.as_str(), count).await?;
        keys.extend(found);
        match next {
            Some(n) if keys.len() < limit.max(1) => at = n,
            next => {
                return Ok(KeysPage {
                    keys,
                    next: next.map(ScanCursor),
                });
            }
        }
    }
}

/// Deletes every key matching `pattern` (`SCAN` + `UNLINK`, one step at a time, never
/// blocking Redis), or on a `dry_run` only counts them. Each batch deleted is also forgotten
/// by this instance (queued writes, L1) and announced on the backplane, so the other
/// instances evict their copies. Logged with what it removed.
pub async fn clear(cache: &Cache, pattern: &KeyPattern, dry_run: bool) -> Result<ClearReport> {
    let l2 = redis_of(cache)?;
    let started = Instant::now();
    let (mut matched, mut removed) = (0u64, 0u64);
    let mut at = ScanPos::default();
    loop {
        let (found, next) = l2.scan_step(at, pattern.as_str(), SCAN_STEP).await?;
        matched += found.len() as u64;
        if !dry_run && !found.is_empty() {
            let names: Vec<&str> = found.iter().map(String::as_str).collect();
            removed += l2.recovery_unlink(&names).await?;
            cache.engine().forget_keys(&found);
        }
        match next {
            Some(n) => at = n,
            None => break,
        }
    }
    let report = ClearReport {
        matched,
        removed,
        dry_run,
        elapsed: started.elapsed(),
    };
    if dry_run {
        tracing::info!(pattern = %pattern, matched, "clear (dry run): nothing removed");
    } else {
        tracing::warn!(pattern = %pattern, matched, removed, "clear: keys removed from Redis");
    }
    Ok(report)
}

/// Counts the namespace's keys per kind by `SCAN`, stopping after `max_keys` keys
/// ([`KeyCounts::complete`] says whether it got to the end).
pub async fn count_keys(cache: &Cache, max_keys: u64) -> Result<KeyCounts> {
    let l2 = redis_of(cache)?;
    let ns = &cache.engine().config().namespace;
    let pattern = KeyPattern::all(cache);
    let mut counts = KeyCounts::default();
    let mut seen = 0u64;
    let mut at = ScanPos::default();
    loop {
        let (found, next) = l2.scan_step(at, pattern.as_str(), SCAN_STEP).await?;
        seen += found.len() as u64;
        for key in &found {
            let rest = key
                .strip_prefix(ns.as_str())
                .and_then(|r| r.strip_prefix(':'));
            match rest.map(classify) {
                Some(Class::Kind(name)) => *counts.by_kind.entry(name).or_default() += 1,
                Some(Class::Stamp) => counts.book_stamps += 1,
                _ => counts.other += 1,
            }
        }
        match next {
            Some(_) if seen >= max_keys => return Ok(counts),
            Some(n) => at = n,
            None => {
                counts.complete = true;
                return Ok(counts);
            }
        }
    }
}

/// The remaining TTL of `kind`'s key `id` (the identifier is checked first), for callers that
/// have the kind as data (a URL, a command line) rather than as a type.
pub async fn ttl(cache: &Cache, kind: Kind, id: &str) -> Result<(String, KeyTtl)> {
    async fn of<S: KeySchema>(cache: &Cache, id: &str) -> Result<(String, KeyTtl)> {
        let key = cache.key::<S>(id)?;
        let ttl = cache.ttl(&key).await?;
        Ok((key.as_str().to_owned(), ttl))
    }
    match kind {
        Kind::Price => of::<Price>(cache, id).await,
        Kind::Pos => of::<Position>(cache, id).await,
        Kind::BookBid => of::<BookBid>(cache, id).await,
        Kind::BookAsk => of::<BookAsk>(cache, id).await,
        Kind::Risk => of::<Risk>(cache, id).await,
        Kind::Ord => of::<Order>(cache, id).await,
        Kind::Strat => of::<StrategyState>(cache, id).await,
    }
}

/// One Redis node's memory (`INFO memory`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeMemory {
    /// The node (`host:port`; `server` on one server).
    pub node: String,
    /// `used_memory`, bytes.
    pub used_bytes: u64,
    /// `maxmemory`, bytes (0: no limit).
    pub max_bytes: u64,
}

/// Memory of every primary (of the server): `INFO memory`, bypassing the breaker.
pub async fn redis_memory(cache: &Cache) -> Result<Vec<NodeMemory>> {
    let l2 = redis_of(cache)?;
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(l2
        .info("memory")
        .await?
        .into_iter()
        .map(|(node, text)| NodeMemory {
            used_bytes: field(&text, "used_memory"),
            max_bytes: field(&text, "maxmemory"),
            node,
        })
        .collect())
}

/// Most `PING`s one [`ping_series`] sends.
pub const MAX_PINGS: u32 = 10_000;

/// Round-trip percentiles of a [`ping_series`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PingSeries {
    /// `PING`s answered.
    pub samples: u32,
    /// Fastest.
    pub min: Duration,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

/// As JSON: `samples` and `min_us`, `p50_us`, `p90_us`, `p99_us`, `max_us` (microseconds),
/// the shape of `mdcache stats --json` and `GET /api/cache/stats`.
impl serde::Serialize for PingSeries {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let mut st = s.serialize_struct("PingSeries", 6)?;
        st.serialize_field("samples", &self.samples)?;
        st.serialize_field("min_us", &us(self.min))?;
        st.serialize_field("p50_us", &us(self.p50))?;
        st.serialize_field("p90_us", &us(self.p90))?;
        st.serialize_field("p99_us", &us(self.p99))?;
        st.serialize_field("max_us", &us(self.max))?;
        st.end()
    }
}

impl PingSeries {
    /// Nearest-rank percentiles of `rtts` (sorted here); `None` when empty.
    fn of(mut rtts: Vec<Duration>) -> Option<Self> {
        rtts.sort_unstable();
        let n = rtts.len();
        let at = |q: usize| rtts[(n * q).div_ceil(100).clamp(1, n) - 1];
        Some(Self {
            samples: u32::try_from(n).unwrap_or(u32::MAX),
            min: *rtts.first()?,
            p50: at(50),
            p90: at(90),
            p99: at(99),
            max: *rtts.last()?,
        })
    }
}

/// Redis's round trip as `count` `PING`s one after another (every primary of a cluster, each
/// `PING` under the op deadline, bypassing the breaker), with percentiles. `count` must be
/// 1..=[`MAX_PINGS`]; the first failed `PING` ends the series with its error.
///
/// ```no_run
/// # async fn f(cache: &mdcache::Cache) -> mdcache::Result<()> {
/// let rtt = mdcache::admin::ping_series(cache, 100).await?;
/// println!("redis p50 {:?} p99 {:?}", rtt.p50, rtt.p99);
/// # Ok(()) }
/// ```
pub async fn ping_series(cache: &Cache, count: u32) -> Result<PingSeries> {
    if count == 0 || count > MAX_PINGS {
        return Err(Error::InvalidValue {
            reason: format!("ping count {count}: must be 1..={MAX_PINGS}"),
        });
    }
    let l2 = redis_of(cache)?;
    let mut rtts = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let started = Instant::now();
        l2.probe_ping().await?;
        rtts.push(started.elapsed());
    }
    PingSeries::of(rtts).ok_or(Error::Unsupported("no ping answered"))
}

/// Redis's round trip (`PING` under the op deadline, bypassing the breaker), the breaker and
/// shards, the dirty log and the backplane lag. Never an error: what failed is in the report.
pub async fn health(cache: &Cache) -> Health {
    let started = Instant::now();
    let (redis_ok, ping, ping_error) = match cache.engine().l2() {
        None => (false, None, Some("no Redis configured".to_owned())),
        Some(l2) => match l2.probe_ping().await {
            Ok(()) => (true, Some(started.elapsed()), None),
            Err(e) => (false, None, Some(e.to_string())),
        },
    };
    Health {
        redis_ok,
        ping,
        ping_error,
        breaker: cache.breaker(),
        shards: cache.shard_breakers(),
        dirty_keys: cache.dirty_log().len(),
        backplane_lag_p99: cache
            .stats()
            .backplane
            .map(|b| b.canary_lag_p99_us)
            .filter(|&us| us > 0)
            .map(Duration::from_micros),
    }
}

/// The L2, or the error an admin call gets on a cache without Redis.
fn redis_of(cache: &Cache) -> Result<&std::sync::Arc<crate::l2::L2Tier>> {
    cache
        .engine()
        .l2()
        .ok_or(Error::Unsupported("no Redis configured: nothing to scan"))
}

/// What a key (without the namespace) is.
enum Class {
    Kind(&'static str),
    Stamp,
    Other,
}

fn classify(rest: &str) -> Class {
    let Some((prefix, tail)) = rest.split_once(':') else {
        return Class::Other;
    };
    if prefix == "book" {
        // `{ID}:bid`, `{ID}:bid:v`; the identifier has no `}`.
        let after = tail.rsplit_once('}').map_or("", |(_, a)| a);
        return match after {
            ":bid" => Class::Kind(Kind::BookBid.name()),
            ":ask" => Class::Kind(Kind::BookAsk.name()),
            ":bid:v" | ":ask:v" => Class::Stamp,
            _ => Class::Other,
        };
    }
    Kind::ALL
        .iter()
        .find(|k| !k.is_book() && k.name() == prefix)
        .map_or(Class::Other, |k| Class::Kind(k.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_percentiles_are_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        // 1..=100 ms shuffled: nearest rank gives the value itself.
        let rtts: Vec<Duration> = (1..=100).rev().map(ms).collect();
        let s = PingSeries::of(rtts).unwrap();
        assert_eq!(s.samples, 100);
        assert_eq!(
            (s.min, s.p50, s.p90, s.p99, s.max),
            (ms(1), ms(50), ms(90), ms(99), ms(100))
        );
        let one = PingSeries::of(vec![ms(7)]).unwrap();
        assert_eq!(
            (one.min, one.p50, one.p99, one.max),
            (ms(7), ms(7), ms(7), ms(7))
        );
        assert!(PingSeries::of(Vec::new()).is_none());
    }

    #[test]
    fn a_pattern_is_bound_to_the_namespace_and_checked() {
        let p = KeyPattern::under("mdc", "price:*").unwrap();
        assert_eq!((p.as_str(), p.relative()), ("mdc:price:*", "price:*"));
        // Globs cannot reach outside: the namespace is a literal prefix of the pattern.
        assert_eq!(KeyPattern::under("mdc", "*").unwrap().as_str(), "mdc:*");
        for bad in [
            "",
            "price *",
            "pri\nce",
            "é",
            &"x".repeat(MAX_PATTERN_LEN + 1),
        ] {
            let err = KeyPattern::under("mdc", bad).unwrap_err();
            assert!(err.is_invalid_input(), "{bad:?}: {err}");
        }
    }

    #[test]
    fn cursors_print_and_parse_and_refuse_garbage() {
        let c = ScanCursor(ScanPos {
            node: 2,
            cursor: 1234,
        });
        assert_eq!(c.to_string(), "2-1234");
        assert_eq!("2-1234".parse::<ScanCursor>().unwrap(), c);
        for bad in ["", "1234", "a-1", "1-", "-1", "70000-1", "1-2-3"] {
            assert!(bad.parse::<ScanCursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_classified_by_kind_and_book_stamps_apart() {
        let name = |r: &str| match classify(r) {
            Class::Kind(k) => k.to_owned(),
            Class::Stamp => "stamp".to_owned(),
            Class::Other => "other".to_owned(),
        };
        assert_eq!(name("price:{AAPL}"), "price");
        assert_eq!(name("pos:{AAPL}"), "pos");
        assert_eq!(name("book:{AAPL}:bid"), "book:bid");
        assert_eq!(name("book:{AAPL}:ask"), "book:ask");
        assert_eq!(name("book:{AAPL}:ask:v"), "stamp");
        assert_eq!(name("ticker:{X}"), "other");
        assert_eq!(name("junk"), "other");
    }
}
