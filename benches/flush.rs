//! The conflating market-data writer's flush (DESIGN §4 rule 8): the latest envelope of N keys written to Redis in one go, by the two candidate protocols and their floors, on a throwaway redis-server.
//!
//! One iteration is one flush of N distinct keys (`Throughput::Elements(N)`, so criterion
//! reports keys/s), awaited before the next, from one task on one multiplexed connection —
//! the shape of a single per-cache writer flushing back to back, i.e. its capacity.
//!
//! - `a_pipelined_evalsha`: a pipeline of N `EVALSHA set_versioned` (one key each) — what
//!   `RedisTier::set_many` sends today. [`SET_VERSIONED`] is a verbatim copy of the script in
//!   `src/l2/values.rs`; setup panics if the two drift apart.
//! - `b_multikey_script`: ONE `EVALSHA` of [`SET_VERSIONED_MANY`] per flush, KEYS = the N keys,
//!   ARGV = N (envelope, TTL ms) pairs, one reply code per key. Setup checks, case by case
//!   (absent, older, newer, equal, format 1, unknown format, short header, garbage, wrong type,
//!   a new value too short to compare), that it answers and leaves Redis exactly as N
//!   `set_versioned` calls do.
//! - `b2_multikey_mget_script`: (b) with [`SET_VERSIONED_MANY_MGET`], which reads the batch
//!   with `MGET` instead of a `TYPE` and a `GET` per key; the same checks at setup.
//! - `b2_chunks_of_64` (N > 64 only): (b2) in slices of 64 keys, the slices' `EVALSHA`s
//!   pipelined in one round trip — the per-key savings of one script per batch with a bound on
//!   how long one call holds Redis.
//! - `c_pipelined_set`: a pipeline of N `SET key envelope PX ttl` — the floor: no compare-and-set.
//! - `d_evalsha_per_round_trip` (group `flush_unpipelined`): one `EVALSHA set_versioned`
//!   awaited at a time — the reference rate without conflation or pipelining.
//!
//! `*_half_superseded`: the same flush where every other key carries a version below the stored
//! one, so half the writes take the reject path; every reply is checked (N or N/2 stored).
//!
//! Values are real `Price` envelopes from `mdcache::codec` (18-byte header + MessagePack with
//! field names); keys `mdc:price:{SYM0000}`..`{SYM2047}`. 2048 symbols so that a flush of 1024
//! never names a key twice (a conflating writer never does); flushes walk the symbols in turn.
//! The version is patched into each envelope's header per flush, from one counter, so every
//! write is newer than anything stored. The TTL is 60 s, not the price kind's 100 ms, so no key
//! expires mid-run and the superseded half is rejected every time; `SET PX` costs the same
//! whatever the TTL.
//!
//! After the criterion groups, three reports (skipped by a filter, shortened under
//! `cargo test --benches`):
//! - `flush/redis_side`: each contender back to back, 8 rounds of 150 ms taken in turns with
//!   the other contenders of its N; keys/s (median round; and over the same round's (a), so a
//!   disturbance on the machine cancels out), Redis CPU per key (`INFO cpu`
//!   `used_cpu_user + used_cpu_sys` deltas), the server's own time per key and per call
//!   (`INFO commandstats` after `CONFIG RESETSTAT`) and the flush's p50/p99 as the writer saw it.
//! - `flush/blocking`: the duration of each script call from `SLOWLOG` (threshold 0): for (b)
//!   that is one whole batch, during which Redis serves no other client.
//! - `flush/bystander`: while a writer flushes back to back, another connection `GET`s a key in
//!   a loop; its latency is what the flush protocol costs every other client.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{latency_samples, micros, percentile, price, two_worker_runtime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mdcache::codec;
use redis::aio::MultiplexedConnection;
use redis::{Script, Value};
use tokio::runtime::Runtime;

/// Versioned write, one key. MUST stay byte-for-byte the `SET_VERSIONED` of
/// `src/l2/values.rs` (setup checks it against that file).
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

/// [`SET_VERSIONED`] over a batch: KEYS[k] is written with ARGV[2k-1] (envelope) and ARGV[2k]
/// (TTL in ms), in order, with the same per-key logic. Returns one code per key:
///
/// - `1` stored, `0` superseded (the stored envelope's version is higher) — as `SET_VERSIONED`;
/// - `-1` the key holds another type, where `SET_VERSIONED` answers a `WRONGTYPE` error;
/// - `-2` the new value is too short to carry a version and the stored one has one, where
///   `SET_VERSIONED` fails with a Lua error (comparing a number with nil). mdcache never sends
///   such a value; the code exists so that one bad key cannot stop the others.
///
/// Neither `-1` nor `-2` stops the batch, so every key ends as N separate calls would leave it.
/// What still aborts the whole batch (keys before it written, keys after it not): ARGV not
/// holding one pair per key, and a TTL that `SET PX` refuses (mdcache clamps TTLs to ≥ 1 ms) —
/// both caller bugs, both an error for that key alone with `SET_VERSIONED`. On a cluster every
/// key of one call must hash to one slot; with a hash tag per symbol that is one symbol.
const SET_VERSIONED_MANY: &str = r#"
if #ARGV ~= 2 * #KEYS then
  return redis.error_reply('ERR set_versioned_many wants one (envelope, ttl_ms) pair per key')
end
local out = {}
for k = 1, #KEYS do
  local key, new = KEYS[k], ARGV[2 * k - 1]
  local code = 1
  local t = redis.call('TYPE', key).ok
  if t ~= 'string' and t ~= 'none' then
    code = -1
  else
    local cur = redis.call('GET', key)
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
      redis.call('SET', key, new, 'PX', ARGV[2 * k])
    end
  end
  out[k] = code
end
return out
"#;

/// [`SET_VERSIONED_MANY`] with the batch's reads done by `MGET` (1000 keys per call, under Lua's
/// `unpack` limit) instead of a `TYPE` and a `GET` per key: N + N/1000 `redis.call`s instead of
/// 3N. `MGET` answers nil for a missing key and for a key of another type, so `TYPE` runs only
/// for those (never, in steady state) and tells them apart: same codes, same effect — provided
/// the KEYS are distinct (a conflating writer's always are). With a key twice in one batch the
/// second write would be compared with the value from before the batch, not with the first
/// write, which [`SET_VERSIONED_MANY`] and N separate calls would see.
///
/// The library adopted this script (`SET_VERSIONED_MANY` in `src/l2/values.rs`) with one
/// change: its expiry is absolute (`PXAT`), so a queued write's TTL counts from the write.
/// The copy here keeps `PX` so that every contender sets expiries the same way.
const SET_VERSIONED_MANY_MGET: &str = r#"
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
      redis.call('SET', key, new, 'PX', ARGV[2 * k])
    end
  end
  out[k] = code
end
return out
"#;

/// The file [`SET_VERSIONED`] is copied from.
const VALUES_RS: &str = include_str!("../src/l2/values.rs");

/// Batch sizes: from a quiet millisecond to a burst across the whole book.
const BATCHES: [usize; 4] = [16, 64, 256, 1024];
/// The most keys one script call of [`Protocol::ChunkedMget`] carries: what bounds the time
/// one flush holds Redis.
const CHUNK: usize = 64;
/// Distinct symbols: twice the largest batch, so no flush names a key twice. A multiple of
/// every batch size, so flushes stay aligned and a key's parity in the batch is its symbol's.
const SYMBOLS: usize = 2048;
/// Long enough that nothing expires during the run (see the module docs).
const TTL_MS: u64 = 60_000;
/// The version every key starts at: an exchange-sequence-sized number, so the Lua byte
/// comparison runs as deep into the header as it does in production.
const BASE_VERSION: u64 = 1_700_000_000_000;
/// The version of a superseded write: below every stored one.
const STALE_VERSION: u64 = BASE_VERSION - 1;

#[derive(Clone, Copy, Debug)]
enum Protocol {
    /// (a) N × `EVALSHA set_versioned`, pipelined.
    PipelinedEvalsha,
    /// (b) one `EVALSHA set_versioned_many`.
    MultiKeyScript,
    /// (b2) one `EVALSHA set_versioned_many_mget`.
    MultiKeyMget,
    /// (b2) in slices of [`CHUNK`] keys, the slices' `EVALSHA`s pipelined.
    ChunkedMget,
    /// (c) N × `SET PX`, pipelined.
    PipelinedSet,
    /// (d) `EVALSHA set_versioned`, one round trip each.
    UnpipelinedEvalsha,
}

impl Protocol {
    /// Whether it runs at batch size `n`: in chunks only above one chunk, where it differs from
    /// [`Protocol::MultiKeyMget`].
    fn runs_at(self, n: usize) -> bool {
        !matches!(self, Protocol::ChunkedMget) || n > CHUNK
    }

    /// The command whose `INFO commandstats` line is this protocol's server time.
    fn command(self) -> &'static str {
        match self {
            Protocol::PipelinedSet => "set",
            _ => "evalsha",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mix {
    /// Every write is newer than what is stored.
    AllApply,
    /// Every other write carries [`STALE_VERSION`].
    HalfSuperseded,
}

/// The pipelined contenders, in the order they run at each batch size (a and b alternate,
/// so a drift on the machine hits both).
const CONTENDERS: [(&str, Protocol, Mix); 8] = [
    (
        "a_pipelined_evalsha",
        Protocol::PipelinedEvalsha,
        Mix::AllApply,
    ),
    ("b_multikey_script", Protocol::MultiKeyScript, Mix::AllApply),
    (
        "a_pipelined_evalsha_half_superseded",
        Protocol::PipelinedEvalsha,
        Mix::HalfSuperseded,
    ),
    (
        "b_multikey_script_half_superseded",
        Protocol::MultiKeyScript,
        Mix::HalfSuperseded,
    ),
    (
        "b2_multikey_mget_script",
        Protocol::MultiKeyMget,
        Mix::AllApply,
    ),
    (
        "b2_multikey_mget_script_half_superseded",
        Protocol::MultiKeyMget,
        Mix::HalfSuperseded,
    ),
    ("b2_chunks_of_64", Protocol::ChunkedMget, Mix::AllApply),
    ("c_pipelined_set", Protocol::PipelinedSet, Mix::AllApply),
];

const UNPIPELINED: (&str, Protocol, Mix) = (
    "d_evalsha_per_round_trip",
    Protocol::UnpipelinedEvalsha,
    Mix::AllApply,
);

/// A flushing writer. Each timed loop runs on its own clone.
#[derive(Clone)]
struct Writer {
    conn: MultiplexedConnection,
    keys: Arc<[String]>,
    /// One envelope per symbol; the version bytes are patched per flush.
    envelopes: Vec<Vec<u8>>,
    /// The next symbol to flush.
    cursor: usize,
    /// Shared by every clone, so versions only ever grow across the whole run.
    versions: Arc<AtomicU64>,
    one_sha: Arc<str>,
    many_sha: Arc<str>,
    mget_sha: Arc<str>,
}

impl Writer {
    /// One flush of `n` keys; panics unless exactly the expected writes were stored.
    async fn flush(&mut self, protocol: Protocol, mix: Mix, n: usize) {
        let version = self.versions.fetch_add(1, Ordering::Relaxed);
        let first = self.cursor;
        self.cursor = (first + n) % SYMBOLS;
        let batch = first..first + n;
        for (i, env) in self.envelopes[batch.clone()].iter_mut().enumerate() {
            let v = if mix == Mix::HalfSuperseded && i % 2 == 1 {
                STALE_VERSION
            } else {
                version
            };
            env[2..10].copy_from_slice(&v.to_be_bytes());
        }
        let keys = &self.keys[batch.clone()];
        let envs = &self.envelopes[batch];
        let stored = match protocol {
            Protocol::PipelinedEvalsha => {
                let mut p = redis::pipe();
                for (key, env) in keys.iter().zip(envs) {
                    p.cmd("EVALSHA")
                        .arg(&*self.one_sha)
                        .arg(1)
                        .arg(key)
                        .arg(env.as_slice())
                        .arg(TTL_MS);
                }
                let codes: Vec<i64> = p.query_async(&mut self.conn).await.expect("pipeline");
                codes.iter().filter(|&&c| c == 1).count()
            }
            Protocol::MultiKeyScript | Protocol::MultiKeyMget => {
                let sha = match protocol {
                    Protocol::MultiKeyScript => &*self.many_sha,
                    _ => &*self.mget_sha,
                };
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(sha).arg(n).arg(keys);
                for env in envs {
                    cmd.arg(env.as_slice()).arg(TTL_MS);
                }
                let codes: Vec<i64> = cmd.query_async(&mut self.conn).await.expect("script");
                codes.iter().filter(|&&c| c == 1).count()
            }
            Protocol::ChunkedMget => {
                let mut p = redis::pipe();
                for (keys, envs) in keys.chunks(CHUNK).zip(envs.chunks(CHUNK)) {
                    let cmd = p
                        .cmd("EVALSHA")
                        .arg(&*self.mget_sha)
                        .arg(keys.len())
                        .arg(keys);
                    for env in envs {
                        cmd.arg(env.as_slice()).arg(TTL_MS);
                    }
                }
                let codes: Vec<Vec<i64>> = p.query_async(&mut self.conn).await.expect("pipeline");
                codes.iter().flatten().filter(|&&c| c == 1).count()
            }
            Protocol::PipelinedSet => {
                let mut p = redis::pipe();
                for (key, env) in keys.iter().zip(envs) {
                    p.cmd("SET")
                        .arg(key)
                        .arg(env.as_slice())
                        .arg("PX")
                        .arg(TTL_MS)
                        .ignore();
                }
                let () = p.query_async(&mut self.conn).await.expect("pipeline");
                n
            }
            Protocol::UnpipelinedEvalsha => {
                let mut stored = 0;
                for (key, env) in keys.iter().zip(envs) {
                    let code: i64 = redis::cmd("EVALSHA")
                        .arg(&*self.one_sha)
                        .arg(1)
                        .arg(key)
                        .arg(env.as_slice())
                        .arg(TTL_MS)
                        .query_async(&mut self.conn)
                        .await
                        .expect("EVALSHA");
                    stored += usize::from(code == 1);
                }
                stored
            }
        };
        let expected = match mix {
            Mix::AllApply => n,
            Mix::HalfSuperseded => n / 2,
        };
        assert_eq!(
            stored, expected,
            "{protocol:?} {mix:?} n={n}: writes stored"
        );
    }
}

struct Setup {
    rt: Runtime,
    writer: Writer,
    /// A second connection: INFO, CONFIG, SLOWLOG and the bystander's reads.
    admin: MultiplexedConnection,
    /// Last: dropped after the connections that use it.
    _server: support::RedisServer,
}

/// A connection whose response timeout (redis-rs's default is 500 ms) never turns a slow
/// moment on a busy 2-core machine into a failed flush.
async fn connect(server: &support::RedisServer) -> MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    server
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to redis-server")
}

fn setup() -> Setup {
    assert!(
        VALUES_RS.contains(&format!(
            "const SET_VERSIONED: &str = r#\"{SET_VERSIONED}\"#;"
        )),
        "SET_VERSIONED in benches/flush.rs no longer matches src/l2/values.rs: copy it again \
         (and bring SET_VERSIONED_MANY along)"
    );
    let server = support::RedisServer::start();
    let rt = two_worker_runtime();
    let (writer, admin) = rt.block_on(async {
        let mut conn = connect(&server).await;
        let admin = connect(&server).await;
        let one = Script::new(SET_VERSIONED);
        let many = Script::new(SET_VERSIONED_MANY);
        let mget = Script::new(SET_VERSIONED_MANY_MGET);
        for script in [&one, &many, &mget] {
            script.load_async(&mut conn).await.expect("SCRIPT LOAD");
        }
        check_equivalence(&mut conn, &one, &many, "SET_VERSIONED_MANY").await;
        check_equivalence(&mut conn, &one, &mget, "SET_VERSIONED_MANY_MGET").await;

        let keys: Arc<[String]> = (0..SYMBOLS)
            .map(|i| format!("mdc:price:{{SYM{i:04}}}"))
            .collect();
        let envelopes: Vec<Vec<u8>> = (0..SYMBOLS)
            .map(|i| {
                codec::encode_with_ttl(
                    BASE_VERSION,
                    Some(Duration::from_millis(TTL_MS)),
                    &price(i as u64),
                    codec::DEFAULT_MAX_VALUE_BYTES,
                )
                .expect("encode")
            })
            .collect();
        let mut p = redis::pipe();
        for (key, env) in keys.iter().zip(&envelopes) {
            p.cmd("SET")
                .arg(key)
                .arg(env.as_slice())
                .arg("PX")
                .arg(TTL_MS)
                .ignore();
        }
        let () = p.query_async(&mut conn).await.expect("populate");
        let sizes: Vec<usize> = envelopes.iter().map(Vec::len).collect();
        println!(
            "flush: {SYMBOLS} keys `{}`..`{}`, values {}..{} bytes (18-byte header + MessagePack Price)",
            keys[0],
            keys[SYMBOLS - 1],
            sizes.iter().min().expect("keys"),
            sizes.iter().max().expect("keys"),
        );
        let writer = Writer {
            conn,
            keys,
            envelopes,
            cursor: 0,
            versions: Arc::new(AtomicU64::new(BASE_VERSION + 1)),
            one_sha: one.get_hash().into(),
            many_sha: many.get_hash().into(),
            mget_sha: mget.get_hash().into(),
        };
        (writer, admin)
    });
    Setup {
        rt,
        writer,
        admin,
        _server: server,
    }
}

/// What a key holds before the write.
enum Init {
    Absent,
    String(Vec<u8>),
    List,
}

/// A format-1 or format-2 envelope at `version` with a one-byte payload.
fn envelope(format: u8, version: u64, payload: u8) -> Vec<u8> {
    let mut b = vec![codec::MAGIC, format];
    b.extend_from_slice(&version.to_be_bytes());
    if format == codec::FORMAT {
        b.extend_from_slice(&TTL_MS.to_be_bytes());
    }
    b.push(payload);
    b
}

/// Panics unless `many` (named `many_name`) answers every case as [`SET_VERSIONED`] does (with
/// the codes [`SET_VERSIONED_MANY`] documents for its errors) and leaves every key as it does,
/// including keys after a wrong-type one in the same batch.
async fn check_equivalence(
    conn: &mut MultiplexedConnection,
    one: &Script,
    many: &Script,
    many_name: &str,
) {
    let (f1, f2) = (codec::FORMAT_V1, codec::FORMAT);
    let mut unknown = vec![codec::MAGIC, 3];
    unknown.extend_from_slice(&[0xff; 8]);
    let mut short_f2 = vec![codec::MAGIC, f2];
    short_f2.extend_from_slice(&[0xff; 8]);
    // (name, before, new value, code)
    let cases: Vec<(&str, Init, Vec<u8>, i64)> = vec![
        ("absent", Init::Absent, envelope(f2, 5, 1), 1),
        (
            "older",
            Init::String(envelope(f2, 9, 0)),
            envelope(f2, 5, 1),
            0,
        ),
        (
            "newer",
            Init::String(envelope(f2, 5, 0)),
            envelope(f2, 9, 1),
            1,
        ),
        (
            "equal",
            Init::String(envelope(f2, 7, 0)),
            envelope(f2, 7, 1),
            1,
        ),
        (
            "older_f1",
            Init::String(envelope(f1, 9, 0)),
            envelope(f2, 5, 1),
            0,
        ),
        (
            "newer_f1",
            Init::String(envelope(f1, 5, 0)),
            envelope(f2, 9, 1),
            1,
        ),
        (
            "high_byte",
            Init::String(envelope(f2, 1 << 56, 0)),
            envelope(f2, (1 << 56) - 1, 1),
            0,
        ),
        ("wrong_type", Init::List, envelope(f2, 5, 1), -1),
        ("after_wrong_type", Init::Absent, envelope(f2, 5, 1), 1),
        (
            "unknown_format",
            Init::String(unknown),
            envelope(f2, 5, 1),
            1,
        ),
        (
            "short_header",
            Init::String(short_f2),
            envelope(f2, 5, 1),
            1,
        ),
        (
            "garbage",
            Init::String(b"hello world".to_vec()),
            envelope(f2, 5, 1),
            1,
        ),
        ("empty", Init::String(Vec::new()), envelope(f2, 5, 1), 1),
        (
            "short_new",
            Init::String(envelope(f2, 9, 0)),
            vec![codec::MAGIC, f2, 0],
            -2,
        ),
        ("short_new_absent", Init::Absent, vec![codec::MAGIC], 1),
    ];
    let key = |side: &str, name: &str| format!("mdc:eq:{side}:{name}");
    for (name, init, _, _) in &cases {
        for side in ["one", "many"] {
            let k = key(side, name);
            let mut p = redis::pipe();
            p.cmd("DEL").arg(&k).ignore();
            match init {
                Init::Absent => {}
                Init::String(b) => {
                    p.cmd("SET").arg(&k).arg(b.as_slice()).ignore();
                }
                Init::List => {
                    p.cmd("RPUSH").arg(&k).arg("x").ignore();
                }
            }
            let () = p.query_async(conn).await.expect("prepare case");
        }
    }

    let mut one_codes = Vec::new();
    for (name, _, new, _) in &cases {
        let reply: redis::RedisResult<i64> = one
            .key(key("one", name))
            .arg(new.as_slice())
            .arg(TTL_MS)
            .invoke_async(conn)
            .await;
        one_codes.push(match reply {
            Ok(code) => code,
            Err(e) if e.code() == Some("WRONGTYPE") => -1,
            Err(e) => {
                assert!(e.to_string().contains("attempt to compare"), "{name}: {e}");
                -2
            }
        });
    }
    let mut call = many.prepare_invoke();
    for (name, _, new, _) in &cases {
        call.key(key("many", name)).arg(new.as_slice()).arg(TTL_MS);
    }
    let many_codes: Vec<i64> = call.invoke_async(conn).await.expect("set_versioned_many");
    let expected: Vec<i64> = cases.iter().map(|c| c.3).collect();
    assert_eq!(one_codes, expected, "SET_VERSIONED codes");
    assert_eq!(many_codes, expected, "{many_name} codes");

    for (name, _, _, _) in &cases {
        let mut states = Vec::new();
        for side in ["one", "many"] {
            let k = key(side, name);
            let (kind, pttl): (String, i64) = redis::pipe()
                .cmd("TYPE")
                .arg(&k)
                .cmd("PTTL")
                .arg(&k)
                .query_async(conn)
                .await
                .expect("TYPE PTTL");
            let value: Option<Vec<u8>> = if kind == "string" {
                redis::cmd("GET")
                    .arg(&k)
                    .query_async(conn)
                    .await
                    .expect("GET")
            } else {
                None
            };
            // Whether it has an expiry, not the milliseconds left, which differ by timing.
            states.push((kind, value, pttl > 0));
        }
        assert_eq!(
            states[0], states[1],
            "{many_name}, {name}: key after the write"
        );
        let () = redis::cmd("DEL")
            .arg(key("one", name))
            .arg(key("many", name))
            .query_async(conn)
            .await
            .expect("DEL");
    }
    println!(
        "flush: {many_name} matches SET_VERSIONED on {} cases (codes {many_codes:?})",
        cases.len()
    );
}

/// `iters` flushes in one task on a worker thread; the time they took.
async fn timed_flushes(
    rt: &Runtime,
    writer: &Writer,
    protocol: Protocol,
    mix: Mix,
    n: usize,
    iters: u64,
) -> Duration {
    let mut w = writer.clone();
    rt.spawn(async move {
        let start = Instant::now();
        for _ in 0..iters {
            w.flush(protocol, mix, n).await;
        }
        start.elapsed()
    })
    .await
    .expect("bench task")
}

fn throughput(c: &mut Criterion, s: &Setup) {
    for n in BATCHES {
        let mut group = c.benchmark_group(format!("flush_n{n}"));
        group.throughput(Throughput::Elements(n as u64));
        for (name, protocol, mix) in CONTENDERS {
            if !protocol.runs_at(n) {
                continue;
            }
            group.bench_function(name, |b| {
                b.to_async(&s.rt)
                    .iter_custom(|iters| timed_flushes(&s.rt, &s.writer, protocol, mix, n, iters))
            });
        }
        group.finish();
    }
    let mut group = c.benchmark_group("flush_unpipelined");
    group.throughput(Throughput::Elements(1));
    let (name, protocol, mix) = UNPIPELINED;
    group.bench_function(name, |b| {
        b.to_async(&s.rt)
            .iter_custom(|iters| timed_flushes(&s.rt, &s.writer, protocol, mix, 1, iters))
    });
    group.finish();
}

/// The `INFO` section `section`.
async fn info(conn: &mut MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO")
}

/// Redis's CPU time so far, user + system, in seconds.
fn cpu_seconds(info: &str) -> f64 {
    let field = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO cpu has no {name}"))
    };
    field("used_cpu_user") + field("used_cpu_sys")
}

/// `calls` and `usec` of `command` from `INFO commandstats`; zeros if it never ran.
fn command_stats(info: &str, command: &str) -> (u64, u64) {
    let prefix = format!("cmdstat_{command}:");
    let Some(line) = info.lines().find_map(|l| l.strip_prefix(prefix.as_str())) else {
        return (0, 0);
    };
    let field = |name: &str| -> u64 {
        line.trim()
            .split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("calls"), field("usec"))
}

/// What back-to-back windows of flushes cost.
#[derive(Default)]
struct Window {
    flushes: u64,
    keys: u64,
    wall: Duration,
    /// Redis CPU, user + system, seconds.
    cpu: f64,
    /// `INFO commandstats` of the protocol's command.
    calls: u64,
    usec: u64,
    /// Each flush's duration as the writer saw it.
    latencies: Vec<Duration>,
    /// keys/s of each window added.
    rates: Vec<f64>,
}

impl Window {
    fn add(&mut self, other: Window) {
        self.flushes += other.flushes;
        self.keys += other.keys;
        self.wall += other.wall;
        self.cpu += other.cpu;
        self.calls += other.calls;
        self.usec += other.usec;
        self.latencies.extend(other.latencies);
        self.rates.extend(other.rates);
    }
}

/// Flushes back to back for `window` on a clone of the writer, with Redis's counters around it.
fn run_window(s: &Setup, protocol: Protocol, mix: Mix, n: usize, window: Duration) -> Window {
    let mut admin = s.admin.clone();
    let mut w = s.writer.clone();
    s.rt.block_on(async {
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut admin)
            .await
            .expect("CONFIG RESETSTAT");
        let cpu0 = cpu_seconds(&info(&mut admin, "cpu").await);
        let (latencies, wall) =
            s.rt.spawn(async move {
                let start = Instant::now();
                let mut latencies = Vec::new();
                while start.elapsed() < window {
                    let t0 = Instant::now();
                    w.flush(protocol, mix, n).await;
                    latencies.push(t0.elapsed());
                }
                (latencies, start.elapsed())
            })
            .await
            .expect("window task");
        let cpu1 = cpu_seconds(&info(&mut admin, "cpu").await);
        let (calls, usec) =
            command_stats(&info(&mut admin, "commandstats").await, protocol.command());
        let flushes = latencies.len() as u64;
        let keys = flushes * n as u64;
        Window {
            flushes,
            keys,
            wall,
            cpu: cpu1 - cpu0,
            calls,
            usec,
            latencies,
            rates: vec![keys as f64 / wall.as_secs_f64()],
        }
    })
}

/// Windows per contender in `flush/redis_side`, taken in rounds across the contenders of one
/// batch size, so a disturbance on the machine (a build on the other core) hits all of them.
const ROUNDS: usize = 8;

/// Every contender at every batch size, with the server's view of it.
fn redis_side(window: Duration, s: &Setup) {
    println!(
        "\nflush/redis_side: flushes back to back (one task, one connection), {ROUNDS} rounds of \
         {window:?} per contender, contenders of one N taking turns"
    );
    println!(
        "{:<40} {:>5} {:>9} {:>15} {:>7} {:>9} {:>10} {:>11} {:>11} {:>10} {:>10} {:>9}",
        "contender",
        "N",
        "keys/s",
        "(min..max)",
        "vs_a",
        "redis_cpu",
        "cpu_us/key",
        "cmd_us/key",
        "cmd_us/call",
        "flush_p50",
        "flush_p99",
        "N/p50"
    );
    let mut sets: Vec<Vec<(&str, Protocol, Mix, usize)>> = BATCHES
        .iter()
        .map(|&n| {
            CONTENDERS
                .iter()
                .filter(|c| c.1.runs_at(n))
                .map(|&(name, protocol, mix)| (name, protocol, mix, n))
                .collect()
        })
        .collect();
    let (name, protocol, mix) = UNPIPELINED;
    sets.push(vec![(name, protocol, mix, 1)]);
    for set in sets {
        let mut totals: Vec<Window> = set.iter().map(|_| Window::default()).collect();
        for _ in 0..ROUNDS {
            for (&(_, protocol, mix, n), total) in set.iter().zip(&mut totals) {
                total.add(run_window(s, protocol, mix, n, window));
            }
        }
        // Each round's rate over the same round's `a_pipelined_evalsha` (the set's first):
        // the two ran a moment apart, so a disturbance cancels out of the ratio.
        let a_rates = totals[0].rates.clone();
        for ((name, _, _, n), mut w) in set.into_iter().zip(totals) {
            let keys = w.keys as f64;
            let mut vs_a: Vec<f64> = w.rates.iter().zip(&a_rates).map(|(r, a)| r / a).collect();
            vs_a.sort_by(f64::total_cmp);
            w.rates.sort_by(f64::total_cmp);
            w.latencies.sort_unstable();
            println!(
                "{:<40} {:>5} {:>9.0} {:>15} {:>7.2} {:>8.0}% {:>10.2} {:>11.2} {:>11.1} {:>10.0} {:>10.0} {:>9.0}",
                name,
                n,
                w.rates[w.rates.len() / 2],
                format!(
                    "({:.0}..{:.0})",
                    w.rates[0] / 1e3,
                    w.rates[w.rates.len() - 1] / 1e3
                ),
                vs_a[vs_a.len() / 2],
                100.0 * w.cpu / w.wall.as_secs_f64(),
                w.cpu * 1e6 / keys,
                w.usec as f64 / keys,
                w.usec as f64 / w.calls.max(1) as f64,
                micros(percentile(&w.latencies, 0.50)),
                micros(percentile(&w.latencies, 0.99)),
                n as f64 / percentile(&w.latencies, 0.50).as_secs_f64(),
            );
        }
    }
    println!(
        "(keys/s: median of the rounds, range in thousands; vs_a: median over rounds of keys/s \
         over the same round's a_pipelined_evalsha; redis_cpu: Redis process CPU, user + \
         sys, over wall time; cmd_*: `INFO commandstats` usec of `evalsha` (a, b, b2, d) or \
         `set` (c), the time inside the command without I/O; flush_*: one flush as the writer \
         saw it, µs; N/p50: keys/s at the median flush time, steadier than keys/s when other \
         work shares the machine)"
    );
}

/// The `EVALSHA` durations (µs) in the slow log.
async fn slowlog_evalsha(conn: &mut MultiplexedConnection) -> Vec<Duration> {
    let entries: Vec<Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await
        .expect("SLOWLOG GET");
    let mut out = Vec::new();
    for entry in entries {
        let Value::Array(fields) = entry else {
            panic!("slowlog entry {entry:?}")
        };
        let is_evalsha = match fields.get(3) {
            Some(Value::Array(args)) => matches!(
                args.first(),
                Some(Value::BulkString(a)) if a.eq_ignore_ascii_case(b"evalsha")
            ),
            _ => false,
        };
        if let (true, Some(Value::Int(us))) = (is_evalsha, fields.get(2)) {
            out.push(Duration::from_micros(*us as u64));
        }
    }
    out.sort_unstable();
    out
}

/// How long one script call holds Redis: for (b) the whole batch, for (a) one key.
fn blocking(window: Duration, s: &Setup) {
    println!(
        "\nflush/blocking: SLOWLOG (threshold 0) durations of each EVALSHA, {window:?} of back-to-back flushes per row (µs)"
    );
    println!(
        "{:<26} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "contender", "N", "calls", "p50", "p99", "max", "mean"
    );
    let mut admin = s.admin.clone();
    let config = |admin: &mut MultiplexedConnection, name: &'static str, value: &'static str| {
        let mut admin = admin.clone();
        s.rt.block_on(async move {
            let () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query_async(&mut admin)
                .await
                .expect("CONFIG SET");
        })
    };
    config(&mut admin, "slowlog-max-len", "1000000");
    config(&mut admin, "slowlog-log-slower-than", "0");
    for n in BATCHES {
        for (name, protocol) in [
            ("a_pipelined_evalsha", Protocol::PipelinedEvalsha),
            ("b_multikey_script", Protocol::MultiKeyScript),
            ("b2_multikey_mget_script", Protocol::MultiKeyMget),
            ("b2_chunks_of_64", Protocol::ChunkedMget),
        ] {
            if !protocol.runs_at(n) {
                continue;
            }
            s.rt.block_on(async {
                let () = redis::cmd("SLOWLOG")
                    .arg("RESET")
                    .query_async(&mut admin.clone())
                    .await
                    .expect("SLOWLOG RESET");
            });
            run_window(s, protocol, Mix::AllApply, n, window);
            let d = s.rt.block_on(slowlog_evalsha(&mut admin.clone()));
            let label = match protocol {
                Protocol::PipelinedEvalsha => "one key",
                Protocol::ChunkedMget => "one chunk",
                _ => "whole batch",
            };
            let mean = d.iter().sum::<Duration>() / (d.len().max(1)) as u32;
            println!(
                "{:<26} {:>5} {:>7} {:>9.0} {:>9.0} {:>9.0} {:>9.1}  per call = {label}",
                name,
                n,
                d.len(),
                micros(percentile(&d, 0.50)),
                micros(percentile(&d, 0.99)),
                micros(*d.last().expect("slowlog entries")),
                micros(mean),
            );
        }
    }
    config(&mut admin, "slowlog-log-slower-than", "10000");
    config(&mut admin, "slowlog-max-len", "128");
    s.rt.block_on(async {
        let () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async(&mut admin)
            .await
            .expect("SLOWLOG RESET");
    });
}

/// Another client's `GET` latency while the writer flushes back to back (or idles).
fn bystander(window: Duration, s: &Setup) {
    println!(
        "\nflush/bystander: another connection GETs a price key in a loop for {window:?} while the writer flushes back to back (µs)"
    );
    println!(
        "{:<26} {:>5} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "writer", "N", "writer k/s", "reads", "p50", "p99", "p99.9", "max"
    );
    let mut rows: Vec<(&str, Option<Protocol>, usize)> = vec![("idle", None, 0)];
    for n in BATCHES {
        rows.push(("a_pipelined_evalsha", Some(Protocol::PipelinedEvalsha), n));
        rows.push(("b_multikey_script", Some(Protocol::MultiKeyScript), n));
        rows.push(("b2_multikey_mget_script", Some(Protocol::MultiKeyMget), n));
        if Protocol::ChunkedMget.runs_at(n) {
            rows.push(("b2_chunks_of_64", Some(Protocol::ChunkedMget), n));
        }
        rows.push(("c_pipelined_set", Some(Protocol::PipelinedSet), n));
    }
    let probe_key = s.writer.keys[SYMBOLS - 1].clone();
    for (name, protocol, n) in rows {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = protocol.map(|protocol| {
            let mut w = s.writer.clone();
            let stop = stop.clone();
            s.rt.spawn(async move {
                let start = Instant::now();
                let mut keys = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    w.flush(protocol, Mix::AllApply, n).await;
                    keys += n as u64;
                }
                keys as f64 / start.elapsed().as_secs_f64()
            })
        });
        let mut conn = s.admin.clone();
        let key = probe_key.clone();
        let mut reads =
            s.rt.block_on(s.rt.spawn(async move {
                // Let the writer reach its pace first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut reads = Vec::with_capacity(100_000);
                let start = Instant::now();
                while start.elapsed() < window {
                    let t0 = Instant::now();
                    let v: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .expect("GET");
                    reads.push(t0.elapsed());
                    assert!(v.is_some(), "probe key missing");
                }
                reads
            }))
            .expect("probe task");
        stop.store(true, Ordering::Relaxed);
        let rate = writer.map_or(0.0, |h| s.rt.block_on(h).expect("writer task"));
        reads.sort_unstable();
        println!(
            "{:<26} {:>5} {:>11.0} {:>8} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
            name,
            n,
            rate / 1e3,
            reads.len(),
            micros(percentile(&reads, 0.50)),
            micros(percentile(&reads, 0.99)),
            micros(percentile(&reads, 0.999)),
            micros(*reads.last().expect("reads")),
        );
    }
    println!();
}

/// mdcache's own writer (`Cache::set` of N distinct prices, then `Cache::flush`) against the
/// raw protocols at the same N, in the same group: keys/s. A layered cache with the writer's
/// defaults (except a batch as large as N, so one flush is one batch, as for the raw rows).
fn writer(c: &mut Criterion, s: &Setup) {
    let url = s._server.url();
    for n in [64usize, 256] {
        let cache = s.rt.block_on(async {
            mdcache::Cache::builder()
                .redis_url(url.clone())
                .backend(mdcache::Backend::Layered)
                .op_timeout(Duration::from_secs(1))
                .ttl_kind("price", Duration::from_secs(60))
                .flush_max_keys(std::num::NonZeroUsize::new(n).expect("n > 0"))
                .build()
                .expect("cache")
        });
        let keys: Arc<Vec<_>> = Arc::new(
            (0..n)
                .map(|i| {
                    cache
                        .key::<mdcache::Price>(&format!("W{i:04}"))
                        .expect("key")
                })
                .collect(),
        );
        let version = Arc::new(AtomicU64::new(1));
        let mut group = c.benchmark_group(format!("writer_n{n}"));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function("mdcache_set_then_flush", |b| {
            b.to_async(&s.rt).iter_custom(|iters| {
                let (cache, keys, version) =
                    (cache.clone(), Arc::clone(&keys), Arc::clone(&version));
                async move {
                    s.rt.spawn(async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let v = version.fetch_add(1, Ordering::Relaxed);
                            for key in keys.iter() {
                                let out = cache.set(key, price(v), v).await.expect("set");
                                assert_eq!(out, mdcache::WriteOutcome::Queued);
                            }
                            cache.flush().await.expect("flush");
                        }
                        start.elapsed()
                    })
                    .await
                    .expect("bench task")
                }
            })
        });
        for (name, protocol, mix) in [
            (
                "raw_pipelined_evalsha",
                Protocol::PipelinedEvalsha,
                Mix::AllApply,
            ),
            ("raw_chunks_of_64", Protocol::ChunkedMget, Mix::AllApply),
            ("raw_pipelined_set", Protocol::PipelinedSet, Mix::AllApply),
        ] {
            if !protocol.runs_at(n) {
                continue;
            }
            group.bench_function(name, |b| {
                b.to_async(&s.rt)
                    .iter_custom(|iters| timed_flushes(&s.rt, &s.writer, protocol, mix, n, iters))
            });
        }
        group.finish();
        let w = cache.stats().writer.expect("writer");
        assert_eq!(w.failed, 0, "{w:?}");
    }
    // The write call itself: what the feed handler's thread pays per tick (L1 insert and
    // enqueue; the flush runs on the writer's task).
    let cache = s.rt.block_on(async {
        mdcache::Cache::builder()
            .redis_url(url.clone())
            .backend(mdcache::Backend::Layered)
            .ttl_kind("price", Duration::from_secs(60))
            .build()
            .expect("cache")
    });
    let keys: Vec<_> = (0..500)
        .map(|i| {
            cache
                .key::<mdcache::Price>(&format!("T{i:03}"))
                .expect("key")
        })
        .collect();
    let version = AtomicU64::new(1);
    let mut group = c.benchmark_group("writer_call");
    group.bench_function("set_price_queued", |b| {
        let mut i = 0usize;
        b.to_async(&s.rt).iter(|| {
            i = (i + 1) % keys.len();
            let v = version.fetch_add(1, Ordering::Relaxed);
            let (cache, key) = (&cache, &keys[i]);
            async move { cache.set(key, price(v), v).await.expect("set") }
        })
    });
    group.finish();
}

fn flush(c: &mut Criterion) {
    let s = setup();
    throughput(c, &s);
    writer(c, &s);
    // Milliseconds per report row.
    let ms = latency_samples("flush", 1000, 20) as u64;
    if ms > 0 {
        redis_side(Duration::from_millis(ms * 3 / 20), &s);
        blocking(Duration::from_millis(ms / 2), &s);
        bystander(Duration::from_millis(ms), &s);
    }
}

criterion_group! {
    name = benches;
    // No plots: on a 2-core machine they cost more time than the measurements.
    config = common::criterion(Duration::from_secs(2), 20).without_plots();
    targets = flush
}
criterion_main!(benches);
