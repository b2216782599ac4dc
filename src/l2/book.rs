//! Order-book sides on Redis: the layout (a sorted set scored by price beside its stamp: version, written TTL, level count), the replace, top-N and repair scripts, and their replies.
//!
//! A side `mdc:book:{SYM}:bid` is a sorted set whose members are `"<price>:<qty>"` (Rust's
//! shortest round-trip float formatting) scored by price. Its *stamp* lives beside it in
//! `mdc:book:{SYM}:bid:v`, in the same hash slot thanks to the `{SYM}` tag, and both expire
//! together. The stamp is 24 bytes, three big-endian `u64`s:
//!
//! | bytes | content |
//! |---|---|
//! | 0..8 | the side's version |
//! | 8..16 | the TTL the writer gave the side, in ms: a read's age is written TTL − remaining TTL, both by Redis's clock |
//! | 16..24 | the side's number of levels |
//!
//! The level count tells an empty side (count 0: a stamp, no sorted set) from a side whose
//! sorted set is gone (evicted, or deleted by another program) or was changed while its stamp
//! lives: when the count differs from `ZCARD` the side is a miss, and the replace script
//! treats that stamp as absent, so it cannot refuse the reload. Earlier builds wrote an 8-byte
//! stamp (the version alone): it is still read, with the kind's TTL standing in for the
//! written one, and a missing sorted set under it is a miss (an empty side then costs one
//! reload). No stamp: not cached.

use std::time::Duration;

use redis::{Script, Value};

use super::boundary::FetchedBook;
// Re-exported: the engine matches on the read's reply as `book::TopReply`.
pub(crate) use super::boundary::TopReply;
use crate::book::validate;
use crate::book::{BookSide, BookSideKind, Level};
use crate::error::{Error, Result};

/// Length of a stamp written by this build.
const STAMP_LEN: usize = 24;
/// Length of a stamp written by earlier builds (the version alone).
const STAMP_LEN_V1: usize = 8;

/// What Redis keeps per level beyond the member's bytes and its 8-byte score, measured with
/// `MEMORY USAGE key SAMPLES 0` on Redis 7.0 (jemalloc): a side of more than 128 levels
/// (`zset-max-listpack-entries`) is a skiplist plus a dict, 83–102 bytes a level beyond
/// members and scores for 1,000–10,000 levels, 104–113 just past 128. The size limit uses this
/// upper end, so it bounds what Redis really holds (a listpack, up to 128 levels, costs less).
const LEVEL_OVERHEAD: usize = 112;

/// A sorted set holds at most 2^32 − 1 members: a deeper read is a read of every level.
const MAX_LEVELS: usize = u32::MAX as usize;

/// Replace a side atomically unless a higher version is stored. KEYS: set, stamp key.
/// ARGV: the stamp (24 bytes), the expiry (TTL ms, or `@` and a Unix time in ms for an
/// absolute one), then score/member pairs. Returns 1 stored, 0 superseded.
/// A stored stamp counts only when it decodes and its side is whole (its level count equals
/// `ZCARD`; for an 8-byte stamp, the set exists): an orphan or garbage stamp is absent.
const REPLACE: &str = r#"
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'zset' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
local cur = redis.call('GET', KEYS[2])
if cur then
  local card = redis.call('ZCARD', KEYS[1])
  local len = string.len(cur)
  local whole = false
  if len == 8 then
    whole = card > 0
  elseif len == 24 then
    local count = 0
    for i = 17, 24 do count = count * 256 + string.byte(cur, i) end
    whole = count == card
  end
  if whole then
    for i = 1, 8 do
      local a, b = string.byte(cur, i), string.byte(ARGV[1], i)
      if a > b then return 0 end
      if a < b then break end
    end
  end
end
redis.call('DEL', KEYS[1])
local n = #ARGV
local i = 3
while i <= n do
  local j = math.min(i + 999, n)
  redis.call('ZADD', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
if string.sub(ARGV[2], 1, 1) == '@' then
  local at = string.sub(ARGV[2], 2)
  if n >= 3 then redis.call('PEXPIREAT', KEYS[1], at) end
  redis.call('SET', KEYS[2], ARGV[1], 'PXAT', at)
else
  if n >= 3 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
return 1
"#;

/// Read the best `ARGV[2]` levels (0 = all; at most 2^32 − 1) of a side. KEYS: set, stamp key.
/// ARGV[1]: `bid` (highest first) or `ask` (lowest first). Returns nil, or
/// {stamp, pttl, zcard, members}.
const TOP: &str = r#"
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'zset' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
local ver = redis.call('GET', KEYS[2])
if not ver then return false end
local pttl = redis.call('PTTL', KEYS[2])
local card = redis.call('ZCARD', KEYS[1])
local stop = tonumber(ARGV[2]) - 1
local levels
if ARGV[1] == 'bid' then
  levels = redis.call('ZREVRANGE', KEYS[1], 0, stop)
else
  levels = redis.call('ZRANGE', KEYS[1], 0, stop)
end
return {ver, pttl, card, levels}
"#;

/// Delete a side that did not decode, unless it was replaced since it was read. KEYS: set,
/// stamp key. ARGV[1]: the stamp read with it. Returns 1 deleted, 0 left alone.
const UNLINK_IF_STAMP: &str = r#"
if redis.call('TYPE', KEYS[2]).ok ~= 'string' then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'zset' and t ~= 'none' then return 0 end
redis.call('UNLINK', KEYS[1], KEYS[2])
return 1
"#;

/// The book scripts, hashed once.
#[derive(Debug)]
pub(crate) struct BookScripts {
    pub(crate) replace: Script,
    pub(crate) top: Script,
    pub(crate) unlink_if_stamp: Script,
}

impl BookScripts {
    pub(crate) fn new() -> Self {
        BookScripts {
            replace: Script::new(REPLACE),
            top: Script::new(TOP),
            unlink_if_stamp: Script::new(UNLINK_IF_STAMP),
        }
    }
}

/// The key holding a side's stamp.
pub(crate) fn version_key(key: &str) -> String {
    format!("{key}:v")
}

/// What storing `side` costs Redis, in bytes: each member as [`member`] formats it, its
/// 8-byte score, and [`LEVEL_OVERHEAD`] (a bound measured with `MEMORY USAGE`, not an
/// estimate of the members). The value-size limit checks this, and L1 weighs a side by it.
pub(crate) fn stored_bytes(side: &BookSide) -> usize {
    side.levels
        .iter()
        .map(|l| member_len(l) + 8 + LEVEL_OVERHEAD)
        .fold(0, usize::saturating_add)
}

/// A member's length as [`estimated_bytes`] counts it: `"100.25:17"` and its like, without
/// formatting anything.
const ESTIMATED_MEMBER: usize = 16;

/// [`stored_bytes`] estimated from the level count alone (each member taken as
/// [`ESTIMATED_MEMBER`] bytes): what L1 weighs a side it did not format by. Formatting every
/// price and quantity just to weigh the entry cost a quarter of a 4-engine `simulate`'s
/// worker thread when each engine applied the feed's sides from the backplane.
pub(crate) fn estimated_bytes(side: &BookSide) -> usize {
    side.levels
        .len()
        .saturating_mul(ESTIMATED_MEMBER + 8 + LEVEL_OVERHEAD)
}

/// Checks a side before any I/O and returns its [`stored_bytes`]: first its size against
/// `limit` (cheap, and it bounds the rest), then finite prices, finite non-negative
/// quantities and no price twice (O(n log n)). Used by every write of a side, so the cache
/// and write-through refuse the same sides.
pub(crate) fn check(side: &BookSide, limit: usize) -> Result<usize> {
    let size = stored_bytes(side);
    if size > limit {
        return Err(Error::ValueTooLarge { size, limit });
    }
    validate(side)?;
    Ok(size)
}

/// The depth argument for the read script: `depth` levels, 0 (all) for any depth no sorted
/// set can reach, so caller input never becomes an argument Redis refuses.
pub(crate) fn redis_depth(depth: usize) -> usize {
    if depth >= MAX_LEVELS { 0 } else { depth }
}

/// The read script's direction argument: `bid` reads highest first, `ask` lowest first.
pub(crate) fn direction(side: BookSideKind) -> &'static str {
    match side {
        BookSideKind::Bid => "bid",
        BookSideKind::Ask => "ask",
    }
}

/// A side's stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    version: u64,
    /// `None` for an earlier build's stamp (or a zero TTL, which no write uses).
    written_ttl_ms: Option<u64>,
    /// `None` for an earlier build's stamp.
    levels: Option<u64>,
}

/// A side's stamp as this build writes it: version, written TTL in ms, level count.
pub(crate) fn encode_stamp(version: u64, ttl_ms: u64, levels: usize) -> [u8; STAMP_LEN] {
    let mut b = [0u8; STAMP_LEN];
    b[..8].copy_from_slice(&version.to_be_bytes());
    b[8..16].copy_from_slice(&ttl_ms.to_be_bytes());
    b[16..].copy_from_slice(&(levels as u64).to_be_bytes());
    b
}

fn decode_stamp(b: &[u8]) -> Option<Stamp> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    match b.len() {
        STAMP_LEN => Some(Stamp {
            version: word(0)?,
            written_ttl_ms: Some(word(8)?).filter(|&t| t > 0),
            levels: Some(word(16)?),
        }),
        STAMP_LEN_V1 => Some(Stamp {
            version: word(0)?,
            written_ttl_ms: None,
            levels: None,
        }),
        _ => None,
    }
}

/// The levels in the order a replace sends them to `ZADD`: highest price first, whatever the
/// side. Into a fresh sorted set of up to 128 levels (a listpack) each insert then lands at
/// the head after one score comparison, where ascending order scans (and re-parses the score
/// of) every level already inserted: on Redis 7.0, a 10-level `ZADD` took 4.2 µs instead of
/// 5.9 µs (`redis-benchmark`, `DEL` + `ZADD` in one `EVAL`, 80 k calls).
pub(crate) fn zadd_order(side: &BookSide) -> Vec<&Level> {
    let mut levels: Vec<&Level> = side.levels.iter().collect();
    // Prices are finite (checked before any write); sides arrive sorted one way or the
    // other, which the sort sees in linear time.
    levels.sort_unstable_by(|a, b| b.price.total_cmp(&a.price));
    levels
}

/// A level as a sorted-set member: `"<price>:<qty>"`, each number in its shortest form that
/// parses back to the same `f64` (`ryu`, as the score itself goes out: `100.0`, `1e21`).
/// `core::fmt` took a quarter of the feed's book writes and of every flush in a 4-engine
/// `simulate`; `ryu` formats the same number several times faster.
pub(crate) fn member(l: &Level) -> String {
    let (mut p, mut q) = (ryu::Buffer::new(), ryu::Buffer::new());
    let (p, q) = (p.format(l.price), q.format(l.qty));
    let mut m = String::with_capacity(p.len() + 1 + q.len());
    m.push_str(p);
    m.push(':');
    m.push_str(q);
    m
}

/// `member(l).len()`, without allocating.
fn member_len(l: &Level) -> usize {
    let (mut p, mut q) = (ryu::Buffer::new(), ryu::Buffer::new());
    p.format(l.price).len() + 1 + q.format(l.qty).len()
}

fn parse_member(key: &str, m: &[u8]) -> Result<Level> {
    let bad = || Error::Decode {
        key: key.to_owned(),
        reason: format!(
            "book member {:?} is not <price>:<qty>",
            String::from_utf8_lossy(m)
        ),
    };
    let s = std::str::from_utf8(m).map_err(|_| bad())?;
    let (p, q) = s.split_once(':').ok_or_else(bad)?;
    Ok(Level {
        price: p.parse().map_err(|_| bad())?,
        qty: q.parse().map_err(|_| bad())?,
    })
}

/// The read script's reply for the side at `key`.
pub(crate) fn parse_top(key: &str, reply: Value) -> Result<TopReply> {
    let bad = |what: &str| Error::Decode {
        key: key.to_owned(),
        reason: what.to_owned(),
    };
    let parts = match reply {
        Value::Nil => return Ok(TopReply::Missing),
        Value::Array(parts) if parts.len() == 4 => parts,
        _ => return Err(bad("unexpected reply shape from the book script")),
    };
    let mut parts = parts.into_iter();
    let (Some(Value::BulkString(raw)), Some(pttl), Some(Value::Int(card)), Some(members)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("unexpected reply shape from the book script"));
    };
    let Some(stamp) = decode_stamp(&raw) else {
        let error = bad("book version key holds neither 8 nor 24 bytes");
        return Ok(TopReply::Undecodable { stamp: raw, error });
    };
    let remaining = match pttl {
        Value::Int(-2) => return Ok(TopReply::Missing),
        Value::Int(-1) => None,
        Value::Int(ms) => Some(Duration::from_millis(ms.max(0) as u64)),
        _ => return Err(bad("unexpected PTTL reply")),
    };
    let Value::Array(members) = members else {
        return Err(bad("book members are not an array"));
    };
    let mut bytes = 0usize;
    let levels = members
        .into_iter()
        .map(|m| match m {
            Value::BulkString(b) => {
                bytes = bytes.saturating_add(b.len() + 8 + LEVEL_OVERHEAD);
                parse_member(key, &b)
            }
            _ => Err(bad("book member is not a string")),
        })
        .collect::<Result<Vec<_>>>();
    // Members another program put in the set are held to the rules a write is: a NaN price or
    // a negative quantity is not served.
    let side = match levels.and_then(|levels| {
        let side = BookSide { levels };
        crate::book::validate(&side)
            .map(|()| side)
            .map_err(|e| bad(&format!("book members break the side's rules: {e}")))
    }) {
        Ok(side) => side,
        Err(error) => return Ok(TopReply::Undecodable { stamp: raw, error }),
    };
    // A side whose set is gone or changed under its stamp is not the side that was written.
    let whole = match stamp.levels {
        Some(n) => u64::try_from(card).is_ok_and(|c| c == n),
        None => card > 0,
    };
    if !whole {
        return Ok(TopReply::Missing);
    }
    Ok(TopReply::Found(FetchedBook {
        version: stamp.version,
        written_ttl: stamp.written_ttl_ms.map(Duration::from_millis),
        remaining,
        side,
        bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip() {
        let l = Level {
            price: 189.51,
            qty: 300.25,
        };
        assert_eq!(parse_member("k", member(&l).as_bytes()).unwrap(), l);
        assert!(parse_member("k", b"garbage").is_err());
        for (price, qty) in [(189.51, 300.25), (1e300, 0.0), (-0.0, 1e-300), (0.1, 7.0)] {
            let l = Level { price, qty };
            assert_eq!(member_len(&l), member(&l).len(), "{l:?}");
        }
    }

    #[test]
    fn the_size_is_what_redis_stores() {
        // "1.0:2.0" is 7 bytes, plus the score and Redis's per-level overhead.
        let one = BookSide {
            levels: vec![Level {
                price: 1.0,
                qty: 2.0,
            }],
        };
        assert_eq!(stored_bytes(&one), 7 + 8 + LEVEL_OVERHEAD);
        // "1e300:1.0": the shortest form, not 301 digits.
        let wide = BookSide {
            levels: vec![Level {
                price: 1e300,
                qty: 1.0,
            }],
        };
        assert_eq!(stored_bytes(&wide), 9 + 8 + LEVEL_OVERHEAD);
        assert_eq!(member(&wide.levels[0]), "1e300:1.0");
        let big = BookSide {
            levels: (1..=20)
                .map(|i| Level {
                    price: f64::from(i) * 1e300,
                    qty: 1.0,
                })
                .collect(),
        };
        let size = stored_bytes(&big);
        assert!(check(&big, size - 1).is_err());
        assert_eq!(check(&big, size).unwrap(), size);
    }

    #[test]
    fn the_duplicate_price_check_is_not_quadratic() {
        // 200,000 levels: about 2·10^10 comparisons for a pairwise check (minutes in a debug
        // build), a few hundred milliseconds sorted.
        let n = 200_000;
        let mut levels: Vec<Level> = (0..n)
            .map(|i| Level {
                price: i as f64 * 0.25,
                qty: 1.0,
            })
            .collect();
        let started = std::time::Instant::now();
        assert!(
            check(
                &BookSide {
                    levels: levels.clone()
                },
                usize::MAX
            )
            .is_ok()
        );
        levels[n - 1].price = levels[0].price;
        assert!(check(&BookSide { levels }, usize::MAX).is_err());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn stamps_round_trip_and_earlier_stamps_are_read() {
        let b = encode_stamp(7, 10_000, 3);
        assert_eq!(
            decode_stamp(&b),
            Some(Stamp {
                version: 7,
                written_ttl_ms: Some(10_000),
                levels: Some(3),
            })
        );
        assert_eq!(
            decode_stamp(&7u64.to_be_bytes()),
            Some(Stamp {
                version: 7,
                written_ttl_ms: None,
                levels: None,
            })
        );
        assert_eq!(decode_stamp(b"garbage"), None);
    }

    fn reply(stamp: &[u8], card: i64, members: &[&str]) -> Value {
        Value::Array(vec![
            Value::BulkString(stamp.to_vec()),
            Value::Int(5_000),
            Value::Int(card),
            Value::Array(
                members
                    .iter()
                    .map(|m| Value::BulkString(m.as_bytes().to_vec()))
                    .collect(),
            ),
        ])
    }

    /// Found by `replies_fuzz::book_replies_of_any_shape`: members another program wrote were
    /// served as they parsed, a negative quantity or a NaN price included.
    #[test]
    fn members_that_break_a_sides_rules_are_undecodable_not_served() {
        let stamp = 7u64.to_be_bytes();
        for members in [
            &["0:-1"][..],
            &["NaN:1"],
            &["inf:1"],
            &["1:nan"],
            &["1:2", "1.0:3"],
        ] {
            let got = parse_top("k", reply(&stamp, members.len() as i64, members)).unwrap();
            assert!(
                matches!(got, TopReply::Undecodable { .. }),
                "{members:?} gave {got:?}"
            );
        }
        let good = parse_top("k", reply(&stamp, 2, &["1:2", "1.5:0"])).unwrap();
        assert!(matches!(good, TopReply::Found(_)));
    }

    #[test]
    fn a_side_whose_set_is_gone_under_its_stamp_is_missing() {
        let parse = |v| parse_top("k", v).unwrap();
        // Written with two levels, set gone (or one member removed): missing.
        assert!(matches!(
            parse(reply(&encode_stamp(3, 50, 2), 0, &[])),
            TopReply::Missing
        ));
        assert!(matches!(
            parse(reply(&encode_stamp(3, 50, 2), 1, &["1:1"])),
            TopReply::Missing
        ));
        // An earlier build's stamp over no set: missing too (it cannot say it was empty).
        assert!(matches!(
            parse(reply(&3u64.to_be_bytes(), 0, &[])),
            TopReply::Missing
        ));
        // Written empty: an empty side.
        let TopReply::Found(f) = parse(reply(&encode_stamp(3, 50, 0), 0, &[])) else {
            panic!("an empty side is cached");
        };
        assert_eq!((f.version, f.side.levels.len()), (3, 0));
        // Whole: found, with the TTL its writer gave it.
        // (Members as this build writes them, so the size read back is the size written.)
        let TopReply::Found(f) = parse(reply(&encode_stamp(4, 10_000, 2), 2, &["2.0:1.0"])) else {
            panic!("a whole side is found");
        };
        assert_eq!(f.written_ttl, Some(Duration::from_secs(10)));
        assert_eq!(f.bytes, stored_bytes(&f.side));
        assert_eq!(f.remaining, Some(Duration::from_secs(5)));
        let TopReply::Found(f) = parse(reply(&4u64.to_be_bytes(), 1, &["2:1"])) else {
            panic!("an earlier build's side is found");
        };
        assert_eq!((f.version, f.written_ttl), (4, None));
    }

    #[test]
    fn an_undecodable_side_comes_back_with_its_stamp_for_the_repair() {
        let stamp = encode_stamp(9, 50, 2);
        let TopReply::Undecodable { stamp: s, error } =
            parse_top("k", reply(&stamp, 2, &["2:1", "garbage"])).unwrap()
        else {
            panic!("a member that does not parse is undecodable");
        };
        assert_eq!(
            (s.as_slice(), error.kind()),
            (&stamp[..], crate::ErrorKind::Decode)
        );
        let TopReply::Undecodable { stamp: s, .. } = parse_top("k", reply(b"xyz", 0, &[])).unwrap()
        else {
            panic!("a stamp that does not parse is undecodable");
        };
        assert_eq!(s, b"xyz");
    }

    #[test]
    fn a_depth_no_side_can_reach_reads_every_level() {
        assert_eq!(redis_depth(usize::MAX), 0);
        assert_eq!(redis_depth(MAX_LEVELS), 0);
        assert_eq!(redis_depth(10), 10);
    }

    #[test]
    fn invalid_sides_are_refused() {
        let side = |levels: Vec<(f64, f64)>| BookSide {
            levels: levels
                .into_iter()
                .map(|(price, qty)| Level { price, qty })
                .collect(),
        };
        let check = |s| check(&s, usize::MAX);
        assert!(check(side(vec![(1.0, 1.0), (2.0, 0.0)])).is_ok());
        assert!(check(side(vec![(1.0, 1.0), (1.0, 2.0)])).is_err());
        assert!(check(side(vec![(0.0, 1.0), (-0.0, 2.0)])).is_err());
        assert!(check(side(vec![(f64::NAN, 1.0)])).is_err());
        assert!(check(side(vec![(2.0, 1.0), (f64::NAN, 1.0), (2.0, 1.0)])).is_err());
        assert!(check(side(vec![(1.0, -1.0)])).is_err());
        assert!(check(side(vec![(f64::INFINITY, 1.0)])).is_err());
    }
}
