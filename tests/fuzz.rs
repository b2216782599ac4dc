//! Fuzz harnesses on stable Rust (issue 16, item 2): every input mdcache parses, fed what nobody thought of, gives an answer or a clear error, never a panic or garbage.
//!
//! - the envelope decoder: arbitrary bytes, mutated valid envelopes of every kind, length
//!   bombs; a value that decodes re-encodes to itself;
//! - identifiers, namespaces and admin patterns: the validation round trip, and nothing that
//!   widens a `SCAN` beyond the namespace or breaks a key's hash tag;
//! - every `CACHE_*` variable with hostile values: an error naming the variable;
//! - book sides (NaN, infinities, duplicates, a million levels): refused with nothing written,
//!   or stored and read back as given;
//! - bytes another program wrote into a key of a real redis-server (any Redis type): a miss
//!   counted as a decode error, or the value those bytes encode;
//! - the `mdcache` binary's JSON values and flags: exit 0, 2 or 3, never a panic.
//!
//! `make test` runs the short budgets below; `make fuzz` runs every harness with
//! `MDCACHE_FUZZ_CASES` cases (see the Makefile). Shrunk failures are kept by proptest in
//! `tests/fuzz.proptest-regressions` and replayed first on every run.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::sync::OnceLock;
use std::time::Duration;

use mdcache::admin::KeyPattern;
use mdcache::codec::{self, DEFAULT_MAX_VALUE_BYTES};
use mdcache::{
    Backend, BookAsk, BookBid, BookSide, Cache, CacheConfig, ErrorKind, Level, Order, Position,
    Price, Risk, StrategyState,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use support::RedisServer;
use support::cli::mdcache;
use support::{fuzz_cases, shared_runtime};

/// A memory-backed cache (no I/O), shared by the cases of a harness.
fn memory() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| {
        Cache::builder()
            .backend(Backend::Memory)
            .ttl_kind("book", Duration::from_secs(3600))
            .build()
            .expect("memory cache")
    })
}

// ---------------------------------------------------------------------------------------------
// The envelope decoder.

fn any_price() -> impl Strategy<Value = Price> {
    (
        any::<f64>(),
        any::<f64>(),
        any::<f64>(),
        any::<f64>(),
        any::<f64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(bid, ask, bid_size, ask_size, last, seq, exchange_ts_ns)| Price {
                bid,
                ask,
                bid_size,
                ask_size,
                last,
                seq,
                exchange_ts_ns,
            },
        )
}

/// How a valid envelope is damaged.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Truncate { to: usize },
    Insert { at: usize, byte: u8 },
    Append(Vec<u8>),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
            any::<usize>().prop_map(|to| Mutation::Truncate { to }),
            (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
            proptest::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
        ],
        1..4,
    )
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match *m {
            Mutation::Flip { at, bits } if !bytes.is_empty() => {
                let i = at % bytes.len();
                bytes[i] ^= bits;
            }
            Mutation::Truncate { to } => bytes.truncate(to % (bytes.len() + 1)),
            Mutation::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), byte),
            Mutation::Append(ref tail) => bytes.extend_from_slice(tail),
            Mutation::Flip { .. } => {}
        }
    }
    bytes
}

/// What "never serves garbage" can mean for bytes nobody can vouch for: whatever decodes is a
/// well-formed envelope, i.e. its header's version is the one `peek_version` reads, and the
/// value encodes back to bytes that decode to the same version and value.
fn decodes_consistently<V>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    V: Serialize + DeserializeOwned + std::fmt::Debug + PartialEq,
{
    let Ok(env) = codec::decode_envelope::<V>(bytes) else {
        return Ok(());
    };
    prop_assert_eq!(codec::peek_version(bytes), Ok(env.version));
    let again = codec::encode_with_ttl(env.version, env.ttl, &env.value, usize::MAX)
        .map_err(|e| TestCaseError::fail(format!("a decoded value does not encode: {e}")))?;
    let back = codec::decode_envelope::<V>(&again)
        .map_err(|e| TestCaseError::fail(format!("re-encoded bytes do not decode: {e}")))?;
    prop_assert_eq!(back.version, env.version);
    prop_assert_eq!(back.ttl, env.ttl);
    // NaN != NaN: compare what was encoded, which is exact for floats.
    let (a, b) = (
        rmp_serde::to_vec_named(&back.value).map_err(|e| TestCaseError::fail(e.to_string()))?,
        rmp_serde::to_vec_named(&env.value).map_err(|e| TestCaseError::fail(e.to_string()))?,
    );
    prop_assert_eq!(a, b);
    Ok(())
}

/// Every kind's decoder on the same bytes.
fn every_kind(bytes: &[u8]) -> Result<(), TestCaseError> {
    decodes_consistently::<Price>(bytes)?;
    decodes_consistently::<Position>(bytes)?;
    decodes_consistently::<Risk>(bytes)?;
    decodes_consistently::<Order>(bytes)?;
    decodes_consistently::<StrategyState>(bytes)?;
    decodes_consistently::<BookSide>(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(1024)))]

    #[test]
    fn envelope_decoder_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        every_kind(&bytes)?;
    }

    /// Arbitrary bytes behind a valid header of either format, where the decoder gets furthest.
    #[test]
    fn envelope_decoder_behind_a_valid_header(
        v2 in any::<bool>(),
        version in any::<u64>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![codec::MAGIC];
        if v2 {
            bytes.push(codec::FORMAT);
            bytes.extend_from_slice(&version.to_be_bytes());
            bytes.extend_from_slice(&100u64.to_be_bytes());
        } else {
            bytes.push(codec::FORMAT_V1);
            bytes.extend_from_slice(&version.to_be_bytes());
        }
        bytes.extend(body);
        every_kind(&bytes)?;
    }

    #[test]
    fn mutated_envelopes_decode_consistently_or_not_at_all(
        price in any_price(),
        version in any::<u64>(),
        ttl_ms in 1..10_000u64,
        damage in mutations(),
    ) {
        let ttl = Some(Duration::from_millis(ttl_ms));
        let good = codec::encode_with_ttl(version, ttl, &price, DEFAULT_MAX_VALUE_BYTES)
            .expect("a Price encodes");
        let env = codec::decode_envelope::<Price>(&good).expect("round trip");
        prop_assert_eq!(env.version, version);
        prop_assert_eq!(env.ttl, ttl);
        prop_assert_eq!(
            rmp_serde::to_vec_named(&env.value).ok(),
            rmp_serde::to_vec_named(&price).ok()
        );
        every_kind(&mutate(good, &damage))?;
    }
}

/// MessagePack headers that claim billions of elements or bytes, and nesting a million deep:
/// each is an error, without allocating what the header claims or recursing per level (the
/// test would abort on either).
#[test]
fn length_bombs_and_deep_nesting_are_errors() {
    let header = |v2: bool| {
        let mut h = vec![
            codec::MAGIC,
            if v2 { codec::FORMAT } else { codec::FORMAT_V1 },
        ];
        h.extend_from_slice(&1u64.to_be_bytes());
        if v2 {
            h.extend_from_slice(&100u64.to_be_bytes());
        }
        h
    };
    let bombs: [&[u8]; 6] = [
        &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01], // array32 of 4 G elements
        &[0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 0x61], // map32 of 4 G entries
        &[0xdb, 0xff, 0xff, 0xff, 0xff, 0x61], // str32 of 4 GiB
        &[0xc6, 0xff, 0xff, 0xff, 0xff, 0x00], // bin32 of 4 GiB
        &[
            0xde, 0xff, 0xff, 0xa4, 0x6c, 0x61, 0x73, 0x74, 0xdd, 0xff, 0xff, 0xff, 0xff,
        ],
        &[0x87, 0xa3, 0x62, 0x69, 0x64, 0xdd, 0x7f, 0xff, 0xff, 0xff], // a field as a bomb
    ];
    let deep = vec![0x91u8; 1_000_000]; // [[[[…]]]] a million deep
    for v2 in [true, false] {
        for body in bombs.iter().copied().chain([&deep[..]]) {
            let mut bytes = header(v2);
            bytes.extend_from_slice(body);
            assert!(codec::decode::<Price>(&bytes).is_err());
            assert!(codec::decode::<BookSide>(&bytes).is_err());
            assert!(codec::decode::<StrategyState>(&bytes).is_err());
            assert!(codec::decode::<Order>(&bytes).is_err());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Identifiers, namespaces and admin patterns.

/// The characters DESIGN §2 forbids in an identifier.
fn forbidden(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c, '{' | '}' | ':' | '*' | '?' | '[' | ']' | '\\')
}

/// Glob metacharacters of a Redis `SCAN MATCH` pattern.
fn glob(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '\\')
}

/// Strings that are mostly plausible identifiers, with hostile characters mixed in.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,140}",
        "[A-Za-z0-9._{}:*?\\[\\]\\\\ \t\n\u{0}\u{7f}\u{85}\u{a0}\u{2028}é世-]{0,140}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(1024)))]

    /// An identifier is accepted exactly when DESIGN §2 allows it; an accepted one makes a key
    /// with one intact hash tag and round-trips; a refused one is `InvalidKey`.
    #[test]
    fn identifiers_round_trip_or_are_refused(id in id_like()) {
        let allowed = !id.is_empty() && id.len() <= mdcache::MAX_ID_LEN && !id.chars().any(forbidden);
        let cache = memory();
        match cache.key::<Price>(&id) {
            Ok(key) => {
                prop_assert!(allowed, "{id:?} was accepted");
                prop_assert_eq!(key.id(), id.as_str());
                prop_assert_eq!(key.as_str(), format!("mdc:price:{{{id}}}"));
                prop_assert_eq!(key.as_str().matches('{').count(), 1);
                prop_assert_eq!(key.as_str().matches('}').count(), 1);
                prop_assert!(!key.as_str().chars().any(glob));
                let book = cache.key::<BookBid>(&id).expect("the same id for a book");
                prop_assert_eq!(book.slot(), key.slot(), "one hash tag, one slot");
            }
            Err(e) => {
                prop_assert!(!allowed, "{id:?} was refused: {e}");
                prop_assert_eq!(e.kind(), ErrorKind::InvalidKey);
            }
        }
        prop_assert_eq!(mdcache::validate_id(&id).is_ok(), allowed);
    }

    /// A namespace is held to the identifier rules, so it is a literal prefix of every key and
    /// of every admin pattern; a refused one names `CACHE_NAMESPACE` and no cache is built.
    #[test]
    fn namespaces_are_literal_or_refused(ns in id_like()) {
        let allowed = !ns.is_empty() && ns.len() <= mdcache::MAX_ID_LEN && !ns.chars().any(forbidden);
        let built = Cache::builder().backend(Backend::Memory).namespace(ns.clone()).build();
        match built {
            Ok(cache) => {
                prop_assert!(allowed, "{ns:?} was accepted");
                let all = KeyPattern::all(&cache);
                prop_assert_eq!(all.as_str(), format!("{ns}:*"));
                prop_assert!(!ns.chars().any(glob));
                let key = cache.key::<Position>("AAPL").expect("valid id");
                let prefix = format!("{ns}:");
                prop_assert!(key.as_str().starts_with(&prefix), "{}", key.as_str());
            }
            Err(e) => {
                prop_assert!(!allowed, "{ns:?} was refused: {e}");
                prop_assert_eq!(e.kind(), ErrorKind::Config);
                prop_assert!(e.to_string().contains("CACHE_NAMESPACE"), "{e}");
            }
        }
    }

    /// An admin pattern is the namespace, a colon, then the pattern: whatever the pattern
    /// holds, a key it matches starts with `mdc:`. Refused patterns are `InvalidValue`.
    #[test]
    fn admin_patterns_stay_inside_the_namespace(p in prop_oneof![".{0,300}", "[a-z:*?\\[\\]\\\\{}^!-]{0,40}"]) {
        match KeyPattern::new(memory(), &p) {
            Ok(pattern) => {
                prop_assert_eq!(pattern.as_str(), format!("mdc:{p}"));
                prop_assert_eq!(pattern.relative(), p.as_str());
                prop_assert!(!p.is_empty() && p.len() <= mdcache::admin::MAX_PATTERN_LEN);
                prop_assert!(p.bytes().all(|b| b.is_ascii_graphic()), "{p:?}");
            }
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::InvalidValue, "{}", e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `CACHE_*` variables.

/// Every variable `CacheConfig::from_vars` reads, and a TTL override of each built-in kind.
const VARIABLES: &[&str] = &[
    "CACHE_BACKEND",
    "CACHE_REDIS_URL",
    "CACHE_REDIS_CLUSTER",
    "CACHE_ADDRESS",
    "CACHE_PORT",
    "CACHE_USERNAME",
    "CACHE_PASSWORD",
    "CACHE_TLS_CA_FILE",
    "CACHE_NAMESPACE",
    "CACHE_POOL_SIZE",
    "CACHE_OP_TIMEOUT_MS",
    "CACHE_CONNECT_TIMEOUT_MS",
    "CACHE_L1_MAX_ENTRIES",
    "CACHE_L1_MAX_MEMORY_MB",
    "CACHE_BREAKER_FAILURES",
    "CACHE_BREAKER_OPEN_MS",
    "CACHE_BREAKER_FAILURE_RATE",
    "CACHE_BREAKER_WINDOW_MS",
    "CACHE_PROBE_TIMEOUT_MS",
    "CACHE_RETRY_MAX_TRIES",
    "CACHE_RETRY_BACKOFF_US",
    "CACHE_RETRY_BACKOFF_CAP_US",
    "CACHE_CONFLATE_KINDS",
    "CACHE_FLUSH_INTERVAL_US",
    "CACHE_FLUSH_TIMEOUT_MS",
    "CACHE_FLUSH_MAX_KEYS",
    "CACHE_FLUSH_MAX_PENDING",
    "CACHE_FLUSH_MAX_BUSY_PCT",
    "CACHE_BACKPLANE",
    "CACHE_TTL_PRICE_MS",
    "CACHE_TTL_POS_MS",
    "CACHE_TTL_BOOK_MS",
    "CACHE_TTL_BOOK_BID_MS",
    "CACHE_TTL_RISK_MS",
    "CACHE_TTL_ORD_MS",
    "CACHE_TTL_STRAT_MS",
];

/// Values an operator under pressure (or a broken template) might set.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".to_owned()),
        "-?[0-9]{1,25}",
        "[0-9]{1,3}\\.[0-9]{1,3}",
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        Just("NaN".to_owned()),
        Just("inf".to_owned()),
        Just("1e400".to_owned()),
        Just("0x10".to_owned()),
        Just("on".to_owned()),
        Just("redis://".to_owned()),
        Just("redis://:@:0/".to_owned()),
        "[a-z:/@.,0-9{}*?]{0,40}",
        ".{0,64}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(2048)))]

    /// A hostile value is accepted, or refused with an error that names its variable — by
    /// `from_vars`, or by `validate` or `build` after it; never a panic. Building is done for
    /// the variables that cannot make the cache connect anywhere.
    #[test]
    fn every_cache_variable_names_itself_when_refused(
        which in 0..VARIABLES.len(),
        value in hostile_value(),
    ) {
        let name = VARIABLES[which];
        let named = |e: &mdcache::Error| e.kind() == ErrorKind::Config && e.to_string().contains(name);
        let cfg = match CacheConfig::from_vars([(name, value.as_str())]) {
            Ok(cfg) => cfg,
            Err(e) => {
                prop_assert!(named(&e), "{name}={value:?}: {e}");
                return Ok(());
            }
        };
        if let Err(e) = cfg.validate() {
            prop_assert!(named(&e), "{name}={value:?}: validate said {e}");
            return Ok(());
        }
        let connects = matches!(
            name,
            "CACHE_BACKEND" | "CACHE_REDIS_URL" | "CACHE_REDIS_CLUSTER" | "CACHE_ADDRESS" | "CACHE_PORT"
        );
        if !connects {
            let built = shared_runtime().block_on(async {
                Cache::builder().config(cfg).backend(Backend::Memory).build()
            });
            if let Err(e) = built {
                prop_assert!(named(&e), "{name}={value:?}: build said {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Book sides.

fn level() -> impl Strategy<Value = Level> {
    let num = prop_oneof![
        8 => -1_000.0..1_000.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(-0.0),
        1 => Just(f64::MAX),
        1 => Just(f64::MIN_POSITIVE),
    ];
    (num.clone(), num).prop_map(|(price, qty)| Level { price, qty })
}

/// The rules a side is held to (`BookSide` docs).
fn valid(levels: &[Level]) -> bool {
    let finite = levels
        .iter()
        .all(|l| l.price.is_finite() && l.qty.is_finite() && l.qty >= 0.0);
    let mut prices: Vec<f64> = levels.iter().map(|l| l.price).collect();
    prices.sort_by(f64::total_cmp);
    finite && prices.windows(2).all(|w| w[0] != w[1])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(512)))]

    /// A side that breaks the rules is `InvalidValue` and leaves the stored side as it was; a
    /// valid one reads back as written, best price first.
    #[test]
    fn book_sides_are_stored_as_given_or_refused_with_nothing_written(
        mut levels in proptest::collection::vec(level(), 0..24),
        dup in any::<Option<usize>>(),
    ) {
        if let (Some(i), false) = (dup, levels.is_empty()) {
            let copy = levels[i % levels.len()];
            levels.push(copy);
        }
        let cache = memory();
        let key = cache.key::<BookAsk>("FUZZ").expect("valid id");
        shared_runtime().block_on(async {
            let before = cache.get_book(&key, usize::MAX).await.expect("memory read");
            let version = next_version();
            let outcome = cache.set_book(&key, BookSide { levels: levels.clone() }, version).await;
            let after = cache.get_book(&key, usize::MAX).await.expect("memory read");
            if valid(&levels) {
                prop_assert!(outcome.is_ok(), "{levels:?}: {outcome:?}");
                let mut want = levels.clone();
                want.sort_by(|a, b| a.price.total_cmp(&b.price));
                let got = after.map(|s| s.levels.clone()).unwrap_or_default();
                prop_assert_eq!(got, want);
            } else {
                let e = outcome.expect_err("an invalid side must be refused");
                prop_assert_eq!(e.kind(), ErrorKind::InvalidValue, "{}", e);
                prop_assert_eq!(after, before, "a refused side changed what is stored");
            }
            Ok(())
        })?;
    }
}

/// Versions for the book harness: each case writes a higher one than the last.
fn next_version() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A million levels: over the value size limit, refused before anything is stored; the same
/// million with one NaN: refused for the NaN.
#[test]
fn a_million_levels_are_refused_whole() {
    let cache = memory();
    let key = cache.key::<BookBid>("MILLION").expect("valid id");
    let mut levels: Vec<Level> = (0..1_000_000)
        .map(|i| Level {
            price: f64::from(i) / 100.0,
            qty: 1.0,
        })
        .collect();
    shared_runtime().block_on(async {
        let e = cache
            .set_book(
                &key,
                BookSide {
                    levels: levels.clone(),
                },
                1,
            )
            .await
            .expect_err("16 MB of levels is over the 1 MiB value limit");
        assert_eq!(e.kind(), ErrorKind::InvalidValue, "{e}");
        levels[500_000].price = f64::NAN;
        let e = cache
            .set_book(&key, BookSide { levels }, 2)
            .await
            .expect_err("a NaN price");
        assert_eq!(e.kind(), ErrorKind::InvalidValue, "{e}");
        assert_eq!(cache.get_book(&key, 10).await.expect("read"), None);
    });
}

// ---------------------------------------------------------------------------------------------
// Bytes another program wrote into Redis.

/// What ends up at a price key, written by something that is not mdcache.
#[derive(Debug, Clone)]
enum Foreign {
    /// A string of these bytes.
    Bytes(Vec<u8>),
    /// A valid envelope, damaged.
    Damaged(Vec<Mutation>),
    /// Another Redis type at the key.
    Hash,
    List,
    Set,
    SortedSet,
}

fn foreign() -> impl Strategy<Value = Foreign> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Foreign::Bytes),
        3 => mutations().prop_map(Foreign::Damaged),
        1 => Just(Foreign::Hash),
        1 => Just(Foreign::List),
        1 => Just(Foreign::Set),
        1 => Just(Foreign::SortedSet),
    ]
}

struct Layered {
    _server: RedisServer,
    cache: Cache,
    raw: redis::aio::MultiplexedConnection,
}

fn layered() -> &'static Layered {
    static L: OnceLock<Layered> = OnceLock::new();
    L.get_or_init(|| {
        shared_runtime().block_on(async {
            let mut server = RedisServer::start();
            // In a static: never dropped, so stopped by a watchdog when the tests end.
            server.stop_with_process();
            let cache = Cache::builder()
                .redis_url(server.url())
                .op_timeout(Duration::from_secs(2))
                .build()
                .expect("layered cache");
            let raw = redis::Client::open(server.url())
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("raw connection");
            Layered {
                _server: server,
                cache,
                raw,
            }
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(64)))]

    /// Whatever sits at the key, `get` answers with the value those bytes encode (exactly what
    /// the decoder makes of them), or a miss counted in `decode_errors`, or `WrongType` for
    /// another Redis type; never a panic, and never garbage in L1.
    #[test]
    fn whatever_another_program_wrote_is_a_value_a_miss_or_wrong_type(thing in foreign()) {
        let l = layered();
        let id = format!("F{}", next_version());
        let key = l.cache.key::<Price>(&id).expect("valid id");
        let name = key.as_str().to_owned();
        let good = codec::encode_with_ttl(
            3,
            Some(Duration::from_secs(60)),
            &fixtures::price(3),
            DEFAULT_MAX_VALUE_BYTES,
        )
        .expect("encode");
        let mut raw = l.raw.clone();
        shared_runtime().block_on(async {
            let stored: Option<Vec<u8>> = match &thing {
                Foreign::Bytes(b) => Some(b.clone()),
                Foreign::Damaged(m) => Some(mutate(good.clone(), m)),
                _ => None,
            };
            let cmd = match &thing {
                Foreign::Bytes(_) | Foreign::Damaged(_) => {
                    let mut c = redis::cmd("SET");
                    c.arg(&name).arg(stored.as_deref().unwrap_or_default()).arg("PX").arg(60_000);
                    c
                }
                Foreign::Hash => redis::cmd("HSET").arg(&name).arg("f").arg("v").clone(),
                Foreign::List => redis::cmd("RPUSH").arg(&name).arg("v").clone(),
                Foreign::Set => redis::cmd("SADD").arg(&name).arg("v").clone(),
                Foreign::SortedSet => redis::cmd("ZADD").arg(&name).arg(1).arg("v").clone(),
            };
            let _: redis::Value = cmd.query_async(&mut raw).await.expect("raw write");
            let errors_before = decode_errors(&l.cache);
            let got = l.cache.get(&key).await;
            match (&stored, got) {
                (Some(bytes), Ok(Some(value))) => {
                    let expect = codec::decode::<Price>(bytes)
                        .map_err(|e| TestCaseError::fail(format!("served bytes that do not decode: {e}")))?;
                    prop_assert_eq!(
                        rmp_serde::to_vec_named(&*value).ok(),
                        rmp_serde::to_vec_named(&expect.1).ok()
                    );
                }
                (Some(bytes), Ok(None)) => {
                    prop_assert!(codec::decode::<Price>(bytes).is_err(), "a decodable value was a miss");
                    prop_assert!(decode_errors(&l.cache) > errors_before, "the miss was not counted");
                    // And the same again: nothing undecodable was kept in L1.
                    prop_assert!(l.cache.get(&key).await.map_err(|e| TestCaseError::fail(e.to_string()))?.is_none());
                }
                (None, Err(e)) => prop_assert_eq!(e.kind(), ErrorKind::WrongType, "{}", e),
                (stored, got) => prop_assert!(false, "{thing:?} ({stored:?}) gave {got:?}"),
            }
            Ok(())
        })?;
    }
}

fn decode_errors(cache: &Cache) -> u64 {
    cache.stats().total.decode_errors
}

// ---------------------------------------------------------------------------------------------
// The binary's JSON values and flags.

/// JSON-ish text: valid values of the wrong shape, and broken JSON.
fn json_like() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[\\[\\]{}\":,0-9a-z.eE+-]{0,60}",
        Just(r#"{"bid":1e999,"ask":1,"bid_size":1,"ask_size":1,"last":1,"seq":1,"exchange_ts_ns":1}"#.to_owned()),
        Just(r#"{"bid":1,"ask":1,"bid_size":1,"ask_size":1,"last":1,"seq":-1,"exchange_ts_ns":1}"#.to_owned()),
        Just(r#"{"levels":[{"price":1,"qty":1},{"price":1,"qty":2}]}"#.to_owned()),
        Just(r#"{"levels":[{"price":"NaN","qty":1}]}"#.to_owned()),
        Just("[".repeat(10_000)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(24)))]

    /// `mdcache put KIND ID JSON` with hostile JSON, ids, versions and kinds: exit 0 (written),
    /// 2 (refused input, with a message) or 3 (Redis unavailable); never a panic (101).
    #[test]
    fn the_binary_refuses_hostile_input_without_panicking(
        kind in prop_oneof![
            Just("price".to_owned()),
            Just("book:bid".to_owned()),
            Just("strat".to_owned()),
            Just("ord".to_owned()),
            "[a-z:]{0,8}",
        ],
        id in prop_oneof![Just("AAPL".to_owned()), id_like()],
        json in json_like(),
        version in prop_oneof![Just("1".to_owned()), "-?[0-9]{0,22}", ".{0,8}"],
    ) {
        // An argument cannot hold a NUL byte (the OS's limit, not ours).
        let [kind, id, json, version] = [kind, id, json, version].map(|a| a.replace('\0', ""));
        let l = layered();
        let url = format!("redis://127.0.0.1:{}/", l._server.port());
        let out = mdcache()
            .args(["--redis", &url, "put", &kind, &id, &json, "--version", &version])
            .output()
            .expect("run mdcache");
        let code = out.status.code();
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert!(
            matches!(code, Some(0 | 2 | 3)),
            "exit {code:?} for put {kind:?} {id:?} {json:?} --version {version:?}: {stderr}"
        );
        prop_assert!(!stderr.contains("panicked"), "{stderr}");
        if code == Some(2) {
            prop_assert!(!stderr.trim().is_empty(), "refused without saying why");
        }
    }

    /// A hostile `CACHE_*` value in the binary's environment: exit 2 naming the variable, or
    /// the command runs (a `get`: found or not, exit 0 or 1); never a panic.
    #[test]
    fn the_binary_names_a_hostile_variable(which in 0..VARIABLES.len(), value in hostile_value()) {
        let name = VARIABLES[which];
        if matches!(name, "CACHE_REDIS_URL" | "CACHE_REDIS_CLUSTER" | "CACHE_ADDRESS" | "CACHE_PORT" | "CACHE_BACKEND") {
            // These decide where it connects, and `--redis` below overrides them.
            return Ok(());
        }
        // An environment value cannot hold a NUL byte (the OS's limit, not ours).
        let value = value.replace('\0', "");
        let url = format!("redis://127.0.0.1:{}/", layered()._server.port());
        let out = mdcache()
            .env(name, &value)
            .args(["--redis", &url, "get", "price", "FUZZ"])
            .output()
            .expect("run mdcache");
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert!(!stderr.contains("panicked"), "{stderr}");
        match out.status.code() {
            Some(0 | 1) => {}
            // Credentials this server does not know: refused by Redis, which is the answer.
            Some(3) if matches!(name, "CACHE_USERNAME" | "CACHE_PASSWORD") => {
                let said = stderr.to_lowercase();
                prop_assert!(said.contains("auth") || said.contains("pass"), "{name}={value:?}: {stderr}");
            }
            Some(2) => prop_assert!(stderr.contains(name), "{name}={value:?}: {stderr}"),
            other => prop_assert!(false, "{name}={value:?}: exit {other:?}: {stderr}"),
        }
    }
}
