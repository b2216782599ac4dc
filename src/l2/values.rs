//! String values on Redis: the versioned-write and compare-and-delete scripts, and the `GET`+`PTTL` replies, shared by every Redis implementation.

use std::time::Duration;

use redis::{Script, Value};

use super::boundary::Fetched;
use crate::error::{Error, Result};

/// Versioned write (DESIGN §4 rule 2): store the envelope unless the stored one carries a higher
/// version. Versions are compared byte by byte on the envelope header (bytes 3..10 in Lua's
/// 1-based indexing), exactly, without Lua's doubles. Only an envelope this build reads has a
/// version: magic `M` and format 1 (header 10 bytes) or 2 (header 18 bytes). Anything else
/// (garbage, an unknown format) counts as absent and is replaced, so bytes that happen to
/// carry a high "version" cannot pin the key. Returns 1 when stored, 0 when superseded.
const SET_VERSIONED: &str = r#"
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'string' and t ~= 'none' then
  return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
end
local cur = redis.call('GET', KEYS[1])
local new = ARGV[1]
local versioned = false
if cur and string.byte(cur, 1) == 77 then
  local f, n = string.byte(cur, 2), string.len(cur)
  versioned = (f == 1 and n >= 10) or (f == 2 and n >= 18)
end
if versioned then
  for i = 3, 10 do
    local a, b = string.byte(cur, i), string.byte(new, i)
    if a > b then return 0 end
    if a < b then break end
  end
end
redis.call('SET', KEYS[1], new, 'PX', ARGV[2])
return 1
"#;

/// [`SET_VERSIONED`] of many keys in one call (the market-data writer's batches), ARGV one
/// (envelope, expiry as a Unix time in ms) pair per key: the same per-key rule, with the batch's current values read by one `MGET` and `TYPE` asked only of
/// keys that came back nil. One code per key, in order: 1 stored, 0 superseded, -1 the key
/// holds another type (where the single script replies `WRONGTYPE`), -2 a new value too short
/// to compare; neither stops the batch. Keys must be distinct. Measured by
/// `benches/flush.rs` (`b2`) at 1.2–2× the keys/s of one `EVALSHA` per key in a pipeline, with
/// about 30 % less Redis CPU per key; calls are kept to [`MANY_CHUNK`] keys, so one call holds
/// Redis for about 0.25 ms, not the whole batch's time.
const SET_VERSIONED_MANY: &str = r#"
if #ARGV ~= 2 * #KEYS then
  return redis.error_reply('ERR set_versioned_many wants one (envelope, ttl_ms) pair per key')
end
local curs = {}
for i = 1, #KEYS, 1000 do
  local got = redis.call('MGET', unpack(KEYS, i, math.min(i + 999, #KEYS)))
  for j = 1, #got do curs[i + j - 1] = got[j] end
end
local out = {}
for k = 1, #KEYS do
  local key, new, cur = KEYS[k], ARGV[2 * k - 1], curs[k]
  local code = 1
  if not cur and redis.call('TYPE', key).ok ~= 'none' then
    code = -1
  else
    local versioned = false
    if cur and string.byte(cur, 1) == 77 then
      local f, n = string.byte(cur, 2), string.len(cur)
      versioned = (f == 1 and n >= 10) or (f == 2 and n >= 18)
    end
    if versioned then
      for i = 3, 10 do
        local a, b = string.byte(cur, i), string.byte(new, i)
        if b == nil then code = -2 break end
        if a > b then code = 0 break end
        if a < b then break end
      end
    end
    if code == 1 then
      redis.call('SET', key, new, 'PXAT', ARGV[2 * k])
    end
  end
  out[k] = code
end
return out
"#;

/// [`SET_VERSIONED_MANY`] for one cluster node's keys of any slots (Redis 7.0+, Valkey):
/// flagged `allow-cross-slot-keys`, which lets a script touch keys of other slots the node
/// serves, but not *declare* them — so KEYS[1] is one of the keys (it routes the call) and
/// ARGV holds n, the n keys, then the (envelope, expiry) pairs. Keys are read one `GET` at a
/// time (a command of the script may not span slots either), a `GET` refused for the key's
/// type being the -1 code. Same codes as [`SET_VERSIONED_MANY`].
const SET_VERSIONED_MANY_ANY_SLOT: &str = r#"#!lua flags=allow-cross-slot-keys
local n = tonumber(ARGV[1])
if not n or #ARGV ~= 1 + 3 * n then
  return redis.error_reply('ERR set_versioned_many_any_slot wants n, n keys, n (envelope, expiry) pairs')
end
local out = {}
for k = 1, n do
  local key, new = ARGV[1 + k], ARGV[n + 2 * k]
  local cur = redis.pcall('GET', key)
  local code = 1
  if type(cur) == 'table' then
    code = -1
  else
    local versioned = false
    if cur and string.byte(cur, 1) == 77 then
      local f, len = string.byte(cur, 2), string.len(cur)
      versioned = (f == 1 and len >= 10) or (f == 2 and len >= 18)
    end
    if versioned then
      for i = 3, 10 do
        local a, b = string.byte(cur, i), string.byte(new, i)
        if b == nil then code = -2 break end
        if a > b then code = 0 break end
        if a < b then break end
      end
    end
    if code == 1 then
      redis.call('SET', key, new, 'PXAT', ARGV[n + 2 * k + 1])
    end
  end
  out[k] = code
end
return out
"#;

/// Most keys per [`SET_VERSIONED_MANY`] call.
pub(crate) const MANY_CHUNK: usize = 64;

/// Delete KEYS[1] only while it still holds ARGV[1] (a string key; any other type is left
/// alone). Returns 1 when deleted, 0 otherwise.
const UNLINK_IF_EQUALS: &str = r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('UNLINK', KEYS[1])
return 1
"#;

/// `GET` and `PTTL` of every key (all of one hash slot), atomically: the cluster's read,
/// where a `MULTI` block is not followed across a redirect. Returns a flat array, value then
/// PTTL per key (a missing value is nil).
const GET_WITH_TTL: &str = r#"
local out = {}
for i = 1, #KEYS do
  out[2 * i - 1] = redis.call('GET', KEYS[i])
  out[2 * i] = redis.call('PTTL', KEYS[i])
end
return out
"#;

/// The value scripts, hashed once.
#[derive(Debug)]
pub(crate) struct ValueScripts {
    pub(crate) set_versioned: Script,
    pub(crate) set_versioned_many: Script,
    pub(crate) unlink_if_equals: Script,
    pub(crate) get_with_ttl: Script,
    /// [`SET_VERSIONED_MANY_ANY_SLOT`]: on a cluster, the keys of every slot one node serves
    /// in one call.
    pub(crate) set_versioned_many_any_slot: Script,
}

impl ValueScripts {
    pub(crate) fn new() -> Self {
        ValueScripts {
            set_versioned: Script::new(SET_VERSIONED),
            set_versioned_many: Script::new(SET_VERSIONED_MANY),
            unlink_if_equals: Script::new(UNLINK_IF_EQUALS),
            get_with_ttl: Script::new(GET_WITH_TTL),
            set_versioned_many_any_slot: Script::new(SET_VERSIONED_MANY_ANY_SLOT),
        }
    }
}

/// A `GET` reply and its key's `PTTL` as a read result.
pub(crate) fn fetched(bytes: Vec<u8>, pttl: i64) -> Option<Fetched> {
    match pttl {
        // Gone between GET and PTTL cannot happen inside MULTI, but never serve it if it does.
        -2 => None,
        -1 => Some(Fetched {
            bytes,
            remaining: None,
        }),
        ms => Some(Fetched {
            bytes,
            remaining: Some(Duration::from_millis(ms.max(0) as u64)),
        }),
    }
}

/// A `GET` reply and the `PTTL` sent just *before* it in the same pipeline, not atomically.
///
/// Another client's command can run between the two. Reading the TTL first makes every such
/// interleaving safe for DESIGN §4 rule 1, given that the reader anchors the L1 deadline at a
/// time taken before sending (`t0`) and caps the remaining TTL at the TTL the value's envelope
/// records (the engine does both):
///
/// - nothing in between: `remaining` is the value's own, measured by Redis after `t0`, so
///   `t0 + remaining` is no later than its expiry in Redis (as with `MULTI`);
/// - a newer value written in between, at `w` (after `t0`) with TTL `T`: the `GET` returns it,
///   and its L1 deadline is at most `t0 + T < w + T`, within its TTL counted from its write,
///   whatever `PTTL` said about the value it replaced;
/// - the key deleted or expired in between: the `GET` finds nothing, a miss;
/// - the key absent at `PTTL` (`-2`) and written before the `GET`: the value is served with
///   no remaining TTL known (`None`), so the cap (its written TTL) sets its life.
///
/// The reverse order (`GET` then `PTTL`) would be unsafe: a newer value's longer remaining
/// TTL could be applied to the older bytes. For format-1 envelopes (no written TTL, from
/// builds before it was recorded) the kind's TTL is the cap.
pub(crate) fn fetched_pttl_first(bytes: Vec<u8>, pttl: i64) -> Fetched {
    Fetched {
        bytes,
        remaining: u64::try_from(pttl).ok().map(Duration::from_millis),
    }
}

/// The reply of `MULTI`, `MGET keys`, a `PTTL` per key, `EXEC`: one read result per key.
/// `first` names the batch in errors.
pub(crate) fn parse_get_many(first: &str, values: Vec<Value>) -> Result<Vec<Option<Fetched>>> {
    let mut it = values.into_iter();
    let blobs: Vec<Option<Vec<u8>>> = match it.next() {
        Some(v) => redis::from_redis_value(v).map_err(|e| Error::from_redis(e.into(), first))?,
        None => return Err(malformed(first)),
    };
    let mut out = Vec::with_capacity(blobs.len());
    for blob in blobs {
        let pttl: i64 = match it.next() {
            Some(v) => {
                redis::from_redis_value(v).map_err(|e| Error::from_redis(e.into(), first))?
            }
            None => return Err(malformed(first)),
        };
        out.push(blob.and_then(|b| fetched(b, pttl)));
    }
    Ok(out)
}

/// The reply of [`GET_WITH_TTL`]: one read result per key. `first` names the keys in errors.
pub(crate) fn parse_pairs(first: &str, values: Vec<Value>) -> Result<Vec<Option<Fetched>>> {
    if !values.len().is_multiple_of(2) {
        return Err(malformed(first));
    }
    let mut out = Vec::with_capacity(values.len() / 2);
    let mut it = values.into_iter();
    while let (Some(blob), Some(pttl)) = (it.next(), it.next()) {
        let blob: Option<Vec<u8>> =
            redis::from_redis_value(blob).map_err(|e| Error::from_redis(e.into(), first))?;
        let pttl: i64 =
            redis::from_redis_value(pttl).map_err(|e| Error::from_redis(e.into(), first))?;
        out.push(blob.and_then(|b| fetched(b, pttl)));
    }
    Ok(out)
}

/// A `PTTL` reply: `None` when the key does not exist, `Some(None)` when it has no expiry.
pub(crate) fn remaining(pttl: i64) -> Option<Option<Duration>> {
    match pttl {
        -2 => None,
        -1 => Some(None),
        ms => Some(Some(Duration::from_millis(ms.max(0) as u64))),
    }
}

/// A reply of an unexpected shape, for `key`.
pub(crate) fn malformed(key: &str) -> Error {
    Error::Decode {
        key: key.to_owned(),
        reason: "unexpected reply shape from redis".to_owned(),
    }
}
