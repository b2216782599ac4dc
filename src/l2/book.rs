//! Order-book sides on Redis: a sorted set (score = price) replaced atomically with its version and expiry, read top-N.
//!
//! A side `mdc:book:{SYM}:bid` is a sorted set whose members are `"<price>:<qty>"` (Rust's
//! shortest round-trip float formatting) scored by price. Its version lives beside it in
//! `mdc:book:{SYM}:bid:v` (8 bytes, big-endian), in the same hash slot thanks to the `{SYM}`
//! tag, and both expire together. A side with a version key and no members is an empty side;
//! no version key means the side is not cached.

use std::time::Duration;

use redis::{Script, Value};

use super::redis::{RedisTier, ttl_ms};
use crate::error::{Error, Result};
use crate::schema::{BookSide, BookSideKind, Level};

/// Replace a side atomically unless a higher version is stored. KEYS: set, version key.
/// ARGV: version (8 bytes BE), ttl ms, then score/member pairs. Returns 1 stored, 0 superseded.
const REPLACE: &str = r#"
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'zset' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
local cur = redis.call('GET', KEYS[2])
if cur and string.len(cur) == 8 then
  for i = 1, 8 do
    local a, b = string.byte(cur, i), string.byte(ARGV[1], i)
    if a > b then return 0 end
    if a < b then break end
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
if n >= 3 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Read the best `ARGV[2]` levels (0 = all) of a side. KEYS: set, version key. ARGV[1]: `bid`
/// (highest first) or `ask` (lowest first). Returns nil, or {version, pttl, members}.
const TOP: &str = r#"
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'zset' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
local ver = redis.call('GET', KEYS[2])
if not ver then return false end
local pttl = redis.call('PTTL', KEYS[2])
local stop = tonumber(ARGV[2]) - 1
local levels
if ARGV[1] == 'bid' then
  levels = redis.call('ZREVRANGE', KEYS[1], 0, stop)
else
  levels = redis.call('ZRANGE', KEYS[1], 0, stop)
end
return {ver, pttl, levels}
"#;

/// The two book scripts, hashed once.
#[derive(Debug)]
pub(crate) struct BookScripts {
    replace: Script,
    top: Script,
}

impl BookScripts {
    pub(crate) fn new() -> Self {
        BookScripts {
            replace: Script::new(REPLACE),
            top: Script::new(TOP),
        }
    }
}

/// A side read back from Redis.
#[derive(Debug)]
pub(crate) struct FetchedBook {
    pub(crate) version: u64,
    pub(crate) remaining: Option<Duration>,
    pub(crate) side: BookSide,
}

/// The key holding a side's version.
pub(crate) fn version_key(key: &str) -> String {
    format!("{key}:v")
}

/// Checks a side before any I/O: finite prices, finite non-negative quantities, no price twice.
pub(crate) fn validate(side: &BookSide) -> Result<()> {
    for (i, l) in side.levels.iter().enumerate() {
        if !l.price.is_finite() || !l.qty.is_finite() || l.qty < 0.0 {
            return Err(Error::InvalidValue {
                reason: format!("level {i}: price and qty must be finite and qty >= 0"),
            });
        }
        if side.levels[..i].iter().any(|o| o.price == l.price) {
            return Err(Error::InvalidValue {
                reason: format!("level {i}: price {} appears twice", l.price),
            });
        }
    }
    Ok(())
}

/// Sorts levels best first for `side`.
pub(crate) fn sort_best_first(levels: &mut [Level], side: BookSideKind) {
    match side {
        BookSideKind::Bid => levels.sort_by(|a, b| b.price.total_cmp(&a.price)),
        BookSideKind::Ask => levels.sort_by(|a, b| a.price.total_cmp(&b.price)),
    }
}

impl RedisTier {
    /// Replaces a side with `side`'s levels at `version`, expiring after `ttl`.
    pub(crate) async fn book_replace(
        &self,
        key: &str,
        side: &BookSide,
        version: u64,
        ttl: Duration,
    ) -> Result<bool> {
        let vkey = version_key(key);
        let vkey = vkey.as_str();
        let script = &self.book.replace;
        let stored: i64 = self
            .run("book_set", key, |mut c| async move {
                let mut inv = script.key(key);
                inv.key(vkey)
                    .arg(&version.to_be_bytes()[..])
                    .arg(ttl_ms(ttl));
                for l in &side.levels {
                    inv.arg(l.price).arg(member(l));
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(stored == 1)
    }

    /// The best `depth` levels of a side (all when `depth` is 0), or `None` when not cached.
    pub(crate) async fn book_top(
        &self,
        key: &str,
        side: BookSideKind,
        depth: usize,
    ) -> Result<Option<FetchedBook>> {
        let vkey = version_key(key);
        let vkey = vkey.as_str();
        let script = &self.book.top;
        let dir = match side {
            BookSideKind::Bid => "bid",
            BookSideKind::Ask => "ask",
        };
        let reply: Value = self
            .run("book_get", key, |mut c| async move {
                script
                    .key(key)
                    .key(vkey)
                    .arg(dir)
                    .arg(depth)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        parse_top(key, reply)
    }
}

fn member(l: &Level) -> String {
    format!("{}:{}", l.price, l.qty)
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

fn parse_top(key: &str, reply: Value) -> Result<Option<FetchedBook>> {
    let bad = |what: &str| Error::Decode {
        key: key.to_owned(),
        reason: what.to_owned(),
    };
    let parts = match reply {
        Value::Nil => return Ok(None),
        Value::Array(parts) if parts.len() == 3 => parts,
        _ => return Err(bad("unexpected reply shape from the book script")),
    };
    let mut parts = parts.into_iter();
    let (Some(ver), Some(pttl), Some(members)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("unexpected reply shape from the book script"));
    };
    let version = match ver {
        Value::BulkString(b) if b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b);
            u64::from_be_bytes(a)
        }
        _ => return Err(bad("book version key does not hold 8 bytes")),
    };
    let remaining = match pttl {
        Value::Int(-2) => return Ok(None),
        Value::Int(-1) => None,
        Value::Int(ms) => Some(Duration::from_millis(ms.max(0) as u64)),
        _ => return Err(bad("unexpected PTTL reply")),
    };
    let levels = match members {
        Value::Array(ms) => ms
            .into_iter()
            .map(|m| match m {
                Value::BulkString(b) => parse_member(key, &b),
                _ => Err(bad("book member is not a string")),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(bad("book members are not an array")),
    };
    Ok(Some(FetchedBook {
        version,
        remaining,
        side: BookSide { levels },
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
    }

    #[test]
    fn invalid_sides_are_refused() {
        let side = |levels: Vec<(f64, f64)>| BookSide {
            levels: levels
                .into_iter()
                .map(|(price, qty)| Level { price, qty })
                .collect(),
        };
        assert!(validate(&side(vec![(1.0, 1.0), (2.0, 0.0)])).is_ok());
        assert!(validate(&side(vec![(1.0, 1.0), (1.0, 2.0)])).is_err());
        assert!(validate(&side(vec![(f64::NAN, 1.0)])).is_err());
        assert!(validate(&side(vec![(1.0, -1.0)])).is_err());
    }

    #[test]
    fn best_first() {
        let mut l = vec![
            Level {
                price: 1.0,
                qty: 1.0,
            },
            Level {
                price: 3.0,
                qty: 1.0,
            },
            Level {
                price: 2.0,
                qty: 1.0,
            },
        ];
        sort_best_first(&mut l, BookSideKind::Bid);
        assert_eq!(l[0].price, 3.0);
        sort_best_first(&mut l, BookSideKind::Ask);
        assert_eq!(l[0].price, 1.0);
    }
}
