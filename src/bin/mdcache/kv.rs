//! The key commands (`put`, `get`, `del`, `ttl`, `example`): one generic function per storage type, dispatched on the kind named at run time.
//!
//! Every key command runs against Redis alone ([`Backend::Redis`]): a one-shot process gains
//! nothing from an in-process L1, and `get`'s `tier` then truthfully says `l2`. Input is checked
//! (identifier, JSON, value type) before the cache is built, so refused input never opens a
//! connection.

use std::io::Read as _;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mdcache::{
    Backend, BookAsk, BookBid, BookSchema, BookSide, Cache, CacheConfig, Key, KeySchema, KeyTtl,
    Kind, Order, Position, Price, Read, Risk, SetOptions, StrategyState, ValueSchema, WriteOutcome,
    validate_id,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::exit::{Failure, print_line};

/// Operation deadline of the key commands unless `--timeout-ms` or `CACHE_OP_TIMEOUT_MS` says
/// otherwise. The library's default (5 ms) suits an engine on the same rack as Redis; a person
/// at a terminal, possibly over a VPN, needs more, and still wants an answer within a second.
const INTERACTIVE_OP_TIMEOUT: Duration = Duration::from_millis(1000);

/// Largest JSON document `put KIND ID -` reads from stdin. Well above the library's default
/// value limit (1 MiB encoded), so the library, not this cap, decides what is too large.
const MAX_STDIN_BYTES: u64 = 16 << 20;

/// What the key commands share: the configuration, and where its Redis URL came from.
#[derive(Debug)]
pub(crate) struct Ctx {
    config: CacheConfig,
    /// True when the URL came from `--redis`, so a bad URL is reported as the flag's fault,
    /// not as `CACHE_REDIS_URL`'s.
    url_from_flag: bool,
}

impl Ctx {
    /// Reads `CACHE_*` from the environment, then applies the command-line overrides.
    pub(crate) fn new(redis: Option<String>, timeout_ms: Option<u64>) -> Result<Ctx, Failure> {
        let mut config = CacheConfig::from_env()?;
        let url_from_flag = redis.is_some();
        if let Some(url) = redis {
            config.redis_url = Some(url);
        }
        if let Some(ms) = timeout_ms {
            config.op_timeout = Duration::from_millis(ms);
        } else if std::env::var_os("CACHE_OP_TIMEOUT_MS").is_none() {
            config.op_timeout = INTERACTIVE_OP_TIMEOUT;
        }
        config.backend = Some(Backend::Redis);
        // One request per process: one connection, not the pool's default 16 opened eagerly.
        config.pool_size = NonZeroU32::MIN;
        Ok(Ctx {
            config,
            url_from_flag,
        })
    }

    /// Builds the Redis-only cache. Must run inside the Tokio runtime.
    fn cache(&self) -> Result<Cache, Failure> {
        if self.config.redis_url.is_none() {
            return Err(Failure::invalid(
                "no Redis address: pass --redis URL or set CACHE_REDIS_URL",
            ));
        }
        Cache::builder()
            .config(self.config.clone())
            .build()
            .map_err(|e| match e {
                mdcache::Error::Config { name, reason, .. }
                    if self.url_from_flag && name == "CACHE_REDIS_URL" =>
                {
                    Failure::invalid(format!("invalid --redis URL: {reason}"))
                }
                other => other.into(),
            })
    }
}

/// The key commands, each against Redis.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeyCommand {
    /// Write a value: prints {"key", "version", "outcome": "applied"|"superseded"}.
    ///
    /// A write with a lower version than the cached one changes nothing ("superseded").
    Put(PutArgs),
    /// Read a value: prints {"key", "kind", "value", "version", "tier", "ttl_ms", "age_ms"};
    /// exit 1 if not cached.
    Get(KeyArgs),
    /// Delete a key (exit 0 whether or not it existed).
    Del(KeyArgs),
    /// Remaining TTL: prints {"key", "ttl_ms"} (null when the key has no expiry); exit 1 if
    /// not cached.
    Ttl(KeyArgs),
}

/// A kind and an identifier.
#[derive(Debug, clap::Args)]
pub(crate) struct KeyArgs {
    /// The kind of value.
    #[arg(value_parser = crate::kind_parser())]
    kind: Kind,
    /// The identifier (symbol, account, order or strategy id).
    id: String,
}

/// `put`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct PutArgs {
    /// The kind of value.
    #[arg(value_parser = crate::kind_parser())]
    kind: Kind,
    /// The identifier (symbol, account, order or strategy id).
    id: String,
    /// The value as JSON (see `mdcache example KIND`), or - to read it from stdin.
    json: String,
    /// Version of this write. Default: the current Unix time in microseconds, so newer than
    /// any earlier put from this tool (and older than any explicit larger version).
    #[arg(long, value_name = "N")]
    version: Option<u64>,
    /// TTL of this write in milliseconds instead of the kind's (not for book sides).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    ttl_ms: Option<u64>,
}

/// Runs one key command: `get`, `del` and `ttl` print their result or fail with exit 1 (not
/// cached: `get`, `ttl`), 2 or 3.
pub(crate) async fn run(ctx: &Ctx, command: KeyCommand) -> Result<(), Failure> {
    match command {
        KeyCommand::Put(args) => put(ctx, args).await,
        KeyCommand::Get(k) => dispatch(k.kind, Get { ctx, id: &k.id }).await,
        KeyCommand::Del(k) => dispatch(k.kind, Del { ctx, id: &k.id }).await,
        KeyCommand::Ttl(k) => dispatch(k.kind, Ttl { ctx, id: &k.id }).await,
    }
}

/// `put`: writes a value and prints `{"key", "version", "outcome"}`.
async fn put(ctx: &Ctx, args: PutArgs) -> Result<(), Failure> {
    let json = if args.json == "-" {
        read_stdin()?
    } else {
        args.json
    };
    let version = match args.version {
        Some(v) => v,
        None => now_micros()?,
    };
    let op = Put {
        ctx,
        id: &args.id,
        json: &json,
        version,
        ttl: args.ttl_ms.map(Duration::from_millis),
    };
    dispatch(args.kind, op).await
}

/// `example`: prints a valid example value of `kind` as one line of JSON.
pub(crate) fn example(kind: Kind) -> Result<(), Failure> {
    print_line(&kind.example_json().to_string())
}

/// A command generic over the kind's schema; [`dispatch`] picks the schema for a run-time
/// [`Kind`]. Two methods because the two storage types have different cache calls
/// (`set_with`/`read` versus `set_book`/`get_book`).
trait KindOp {
    /// Runs the command for a kind stored as one value (a Redis string).
    async fn value<S: ValueSchema>(self) -> Result<(), Failure>;
    /// Runs the command for a book side (a Redis sorted set).
    async fn book<S: BookSchema>(self) -> Result<(), Failure>;
}

/// The one place that maps a run-time kind to its schema type.
async fn dispatch<O: KindOp>(kind: Kind, op: O) -> Result<(), Failure> {
    match kind {
        Kind::Price => op.value::<Price>().await,
        Kind::Pos => op.value::<Position>().await,
        Kind::BookBid => op.book::<BookBid>().await,
        Kind::BookAsk => op.book::<BookAsk>().await,
        Kind::Risk => op.value::<Risk>().await,
        Kind::Ord => op.value::<Order>().await,
        Kind::Strat => op.value::<StrategyState>().await,
        // `Kind` is non-exhaustive: a kind added to the library needs a line above.
        other => Err(Failure::invalid(format!(
            "kind {other} is not supported by this build of the tool"
        ))),
    }
}

struct Put<'a> {
    ctx: &'a Ctx,
    id: &'a str,
    json: &'a str,
    version: u64,
    ttl: Option<Duration>,
}

impl KindOp for Put<'_> {
    async fn value<S: ValueSchema>(self) -> Result<(), Failure> {
        validate_id(self.id)?;
        let value: S::Value = parse_json::<S>(self.json)?;
        let cache = self.ctx.cache()?;
        let key = cache.key::<S>(self.id)?;
        let opts = match self.ttl {
            Some(ttl) => SetOptions::default().ttl(ttl),
            None => SetOptions::default(),
        };
        let outcome = cache.set_with(&key, value, self.version, opts).await?;
        print_put(&key, self.version, outcome)
    }

    async fn book<S: BookSchema>(self) -> Result<(), Failure> {
        if self.ttl.is_some() {
            // `Cache::set_book` has no options: a side always gets its kind's TTL. Refusing
            // beats writing with a TTL the user did not ask for.
            return Err(Failure::invalid(format!(
                "--ttl-ms is not supported for {}: a book side always gets its kind's TTL \
                 (set CACHE_TTL_BOOK_MS to change it)",
                S::KIND
            )));
        }
        validate_id(self.id)?;
        let side: BookSide = parse_json::<S>(self.json)?;
        let cache = self.ctx.cache()?;
        let key = cache.key::<S>(self.id)?;
        let outcome = cache.set_book(&key, side, self.version).await?;
        print_put(&key, self.version, outcome)
    }
}

struct Get<'a> {
    ctx: &'a Ctx,
    id: &'a str,
}

impl KindOp for Get<'_> {
    async fn value<S: ValueSchema>(self) -> Result<(), Failure> {
        validate_id(self.id)?;
        let cache = self.ctx.cache()?;
        let key = cache.key::<S>(self.id)?;
        match cache.read(&key).await? {
            Some(read) => print_read(&key, &read),
            // The library serves a value that does not decode as a miss (and logs it); say
            // so, since "not found" alone would hide another writer's bytes at our key.
            None if cache.stats().total.decode_errors > 0 => Err(Failure::not_found(format!(
                "{key} holds a value that does not decode as {} (treated as not found)",
                S::KIND
            ))),
            None => Err(not_found(&key)),
        }
    }

    async fn book<S: BookSchema>(self) -> Result<(), Failure> {
        validate_id(self.id)?;
        let cache = self.ctx.cache()?;
        let key = cache.key::<S>(self.id)?;
        match cache.get_book(&key, 0).await? {
            Some(read) => print_read(&key, &read),
            None => Err(not_found(&key)),
        }
    }
}

struct Del<'a> {
    ctx: &'a Ctx,
    id: &'a str,
}

impl Del<'_> {
    async fn run<S: KeySchema>(self) -> Result<(), Failure> {
        validate_id(self.id)?;
        let cache = self.ctx.cache()?;
        let key = cache.key::<S>(self.id)?;
        cache.delete(&key).await?;
        // `Cache::delete` does not say whether the key existed, so neither can we.
        print_json(&DelOutput { key: key.as_str() })
    }
}

impl KindOp for Del<'_> {
    async fn value<S: ValueSchema>(self) -> Result<(), Failure> {
        self.run::<S>().await
    }

    async fn book<S: BookSchema>(self) -> Result<(), Failure> {
        self.run::<S>().await
    }
}

struct Ttl<'a> {
    ctx: &'a Ctx,
    id: &'a str,
}

impl Ttl<'_> {
    async fn run<S: KeySchema>(self) -> Result<(), Failure> {
        validate_id(self.id)?;
        let cache = self.ctx.cache()?;
        let key = cache.key::<S>(self.id)?;
        let ttl_ms = match cache.ttl(&key).await? {
            KeyTtl::Missing => return Err(not_found(&key)),
            KeyTtl::Persistent => None,
            KeyTtl::Expires(d) => Some(millis(d)),
            other => {
                return Err(Failure::unavailable(format!(
                    "{key}: TTL state {other:?} is not understood by this build of the tool"
                )));
            }
        };
        print_json(&TtlOutput {
            key: key.as_str(),
            ttl_ms,
        })
    }
}

impl KindOp for Ttl<'_> {
    async fn value<S: ValueSchema>(self) -> Result<(), Failure> {
        self.run::<S>().await
    }

    async fn book<S: BookSchema>(self) -> Result<(), Failure> {
        self.run::<S>().await
    }
}

/// One line of `put` output. Field order is the order printed (as for every output below).
#[derive(Serialize)]
struct PutOutput<'a> {
    key: &'a str,
    version: u64,
    /// `applied` or `superseded`.
    outcome: &'static str,
}

/// One line of `del` output.
#[derive(Serialize)]
struct DelOutput<'a> {
    key: &'a str,
}

/// One line of `ttl` output.
#[derive(Serialize)]
struct TtlOutput<'a> {
    key: &'a str,
    /// Remaining TTL; `None` (null) when the Redis key has no expiry.
    ttl_ms: Option<u64>,
}

/// One line of `get` output.
#[derive(Serialize)]
struct GetOutput<'a, V> {
    key: &'a str,
    kind: &'static str,
    value: &'a V,
    version: u64,
    tier: &'static str,
    /// Remaining TTL; `None` (null) when the Redis key has no expiry.
    ttl_ms: Option<u64>,
    /// As the library estimates it: exact only when the writer used the kind's TTL.
    age_ms: u64,
}

fn print_read<S: KeySchema>(key: &Key<S>, read: &Read<S::Value>) -> Result<(), Failure> {
    print_json(&GetOutput {
        key: key.as_str(),
        kind: S::KIND,
        value: &*read.value,
        version: read.version,
        tier: read.tier.as_str(),
        ttl_ms: read.ttl_remaining.map(millis),
        age_ms: millis(read.age),
    })
}

fn print_put<S: KeySchema>(
    key: &Key<S>,
    version: u64,
    outcome: WriteOutcome,
) -> Result<(), Failure> {
    let outcome = match outcome {
        WriteOutcome::Applied => "applied",
        WriteOutcome::Superseded => "superseded",
        // Non-exhaustive; an outcome this build does not know is still reported, not hidden.
        _ => "unknown",
    };
    print_json(&PutOutput {
        key: key.as_str(),
        version,
        outcome,
    })
}

fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let line = serde_json::to_string(value)
        .map_err(|e| Failure::unavailable(format!("cannot format the output as JSON: {e}")))?;
    print_line(&line)
}

fn not_found<S: KeySchema>(key: &Key<S>) -> Failure {
    Failure::not_found(format!("{key} not found"))
}

/// Parses `json` as the value type of kind `S`; a syntax error or a shape that does not match
/// the type (missing or unknown field, wrong type) is invalid input.
fn parse_json<S: KeySchema>(json: &str) -> Result<S::Value, Failure>
where
    S::Value: DeserializeOwned,
{
    serde_json::from_str(json)
        .map_err(|e| Failure::invalid(format!("invalid JSON for {}: {e}", S::KIND)))
}

fn read_stdin() -> Result<String, Failure> {
    let mut buf = String::new();
    std::io::stdin()
        .lock()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_string(&mut buf)
        .map_err(|e| Failure::invalid(format!("cannot read the value from stdin: {e}")))?;
    if buf.len() as u64 > MAX_STDIN_BYTES {
        return Err(Failure::invalid(format!(
            "the value on stdin is larger than {MAX_STDIN_BYTES} bytes"
        )));
    }
    Ok(buf)
}

/// The default version: microseconds since the Unix epoch, so each put from this tool is newer
/// than any earlier one (microsecond resolution; u64 lasts ~584,000 years).
fn now_micros() -> Result<u64, Failure> {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|_| {
        Failure::invalid("the system clock is before 1970; pass --version explicitly")
    })?;
    Ok(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
