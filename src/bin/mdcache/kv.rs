//! The key commands (`put`, `get`, `del`, `ttl`, `example`): one generic function per storage type, dispatched on the kind named at run time.
//!
//! Every key command runs against Redis alone ([`Backend::Redis`]): a one-shot process gains
//! nothing from an in-process L1, and `get`'s `tier` then truthfully says `l2`.
//!
//! With a database (`--database` or `DATABASE_URL`), `get` reads through [`CacheAside`] and
//! `put` writes through [`WriteThrough`] over PostgreSQL, and Redis becomes optional (without
//! it the cache is a throwaway in-process one, so `get` always reports `source`). `del` and
//! `ttl` still act on Redis alone.
//!
//! Input is checked (identifier, JSON, value type, and for a database write the value's size
//! and book rules) before any connection is opened: the database is connected on first use
//! ([`LazyPostgres`]), after `WriteThrough` has checked the value.

use std::io::Read as _;
use std::num::NonZeroU32;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mdcache::{
    Backend, BookAsk, BookBid, BookSchema, BookSide, Cache, CacheAside, CacheConfig, Key,
    KeySchema, KeyTtl, Kind, LoadError, Loaded, Order, Position, PostgresSource,
    PostgresSourceError, Price, Read, Risk, SetOptions, Source, SourceWriter, StrategyState,
    ValueSchema, WriteAck, WriteError, WriteOutcome, WriteThrough, validate_id,
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

/// What the key commands share: the configuration, where its Redis URL came from, and the
/// database if one is configured.
#[derive(Debug)]
pub(crate) struct Ctx {
    config: CacheConfig,
    /// True when the URL came from `--redis`, so a bad URL is reported as the flag's fault,
    /// not as `CACHE_REDIS_URL`'s.
    url_from_flag: bool,
    /// The source of record for `get` and `put`, when `--database` or `DATABASE_URL` names one.
    database: Option<Database>,
}

/// The configured database: not connected yet (see [`LazyPostgres`]).
#[derive(Debug)]
struct Database {
    source: Arc<LazyPostgres>,
    /// Deadline of one database operation (the pattern's source timeout): connecting, then
    /// one statement, each within `--timeout-ms`.
    op_timeout: Duration,
}

impl Ctx {
    /// Reads `CACHE_*` and `DATABASE_URL` from the environment, then applies the command-line
    /// overrides. A database URL that does not parse is refused here, before any I/O.
    pub(crate) fn new(
        redis: Option<String>,
        database: Option<String>,
        timeout_ms: Option<u64>,
    ) -> Result<Ctx, Failure> {
        let mut config = CacheConfig::from_env()?;
        let url_from_flag = redis.is_some();
        if let Some(url) = redis {
            config.redis_url = Some(url);
        }
        let db_timeout = timeout_ms.map_or(INTERACTIVE_OP_TIMEOUT, Duration::from_millis);
        if let Some(ms) = timeout_ms {
            config.op_timeout = Duration::from_millis(ms);
        } else if std::env::var_os("CACHE_OP_TIMEOUT_MS").is_none() {
            config.op_timeout = INTERACTIVE_OP_TIMEOUT;
        }
        // One request per process: one connection, not the pool's default 16 opened eagerly.
        config.pool_size = NonZeroU32::MIN;
        let database_from_flag = database.is_some();
        let database = match database.or_else(|| config.database_url.take()) {
            None => None,
            Some(url) => {
                if let Err(e) = tokio_postgres::Config::from_str(&url) {
                    let origin = if database_from_flag {
                        "--database URL"
                    } else {
                        "DATABASE_URL"
                    };
                    return Err(Failure::invalid(format!("invalid {origin}: {e}")));
                }
                Some(Database {
                    source: Arc::new(LazyPostgres::new(url, db_timeout)),
                    // Connecting (within `db_timeout`), then the statement (likewise).
                    op_timeout: db_timeout.saturating_mul(2),
                })
            }
        };
        Ok(Ctx {
            config,
            url_from_flag,
            database,
        })
    }

    /// Builds the cache. Must run inside the Tokio runtime.
    ///
    /// Redis alone when a Redis address is configured; with `for_database` and no Redis
    /// address, an in-process cache (L1 only) in front of the database; otherwise an error.
    fn cache(&self, for_database: bool) -> Result<Cache, Failure> {
        let mut config = self.config.clone();
        config.backend = Some(match (&config.redis_url, for_database) {
            (Some(_), _) => Backend::Redis,
            (None, true) => Backend::Memory,
            (None, false) => {
                return Err(Failure::invalid(
                    "no Redis address: pass --redis URL or set CACHE_REDIS_URL",
                ));
            }
        });
        Cache::builder()
            .config(config)
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

/// The database, connected on first use: after `WriteThrough` has checked the value (so
/// refused input never opens a connection), and under the pattern's source deadline (so a
/// refused connection is a failed write, with the invalidation that follows, exactly as for a
/// long-running process whose database went away).
pub(crate) struct LazyPostgres {
    /// May hold a password: `Debug` shows it redacted.
    url: String,
    /// Budget for connecting and creating the schema; past it, `NoConnection`.
    connect_timeout: Duration,
    source: tokio::sync::OnceCell<PostgresSource>,
}

impl std::fmt::Debug for LazyPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPostgres")
            .field("url", &crate::demo::redact(&self.url))
            .field("connect_timeout", &self.connect_timeout)
            .field("connected", &self.source.initialized())
            .finish()
    }
}

impl LazyPostgres {
    fn new(url: String, connect_timeout: Duration) -> Self {
        LazyPostgres {
            url,
            connect_timeout,
            source: tokio::sync::OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<&PostgresSource, PostgresSourceError> {
        self.source
            .get_or_try_init(|| async {
                // `connect` waits for a connection up to its own 2 s default, then runs the
                // schema statements with no deadline at all: bound the whole of it.
                tokio::time::timeout(self.connect_timeout, PostgresSource::connect(&self.url))
                    .await
                    .unwrap_or(Err(PostgresSourceError::NoConnection(self.connect_timeout)))
            })
            .await
    }
}

impl Source for LazyPostgres {
    type Error = PostgresSourceError;

    async fn load<S: KeySchema>(
        &self,
        key: &Key<S>,
    ) -> Result<Option<Loaded<S::Value>>, PostgresSourceError> {
        self.get().await?.load(key).await
    }
}

impl SourceWriter for LazyPostgres {
    async fn write<S: KeySchema>(
        &self,
        key: &Key<S>,
        value: &S::Value,
    ) -> Result<u64, PostgresSourceError> {
        self.get().await?.write(key, value).await
    }
}

/// The key commands, each against Redis (and the database for `put` and `get`, if configured).
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeyCommand {
    /// Write a value: prints {"key", "version", "outcome": "applied"|"superseded"}.
    ///
    /// A write with a lower version than the cached one changes nothing ("superseded").
    /// Without a database, a write Redis does not take is not cached at all: exit 3.
    ///
    /// With a database: written to the database first (which assigns the version), then to
    /// the cache; "outcome" is "cache_failed" when only the database took it (still exit 0).
    /// If the database fails or refuses the write (exit 3), the key is invalidated in the cache.
    Put(PutArgs),
    /// Read a value: prints {"key", "kind", "value", "version", "tier", "ttl_ms", "age_ms"};
    /// exit 1 if not cached.
    ///
    /// With a database: a key the cache does not hold is loaded from the database ("tier":
    /// "source") and cached; exit 1 only if the database does not have it either.
    Get(KeyArgs),
    /// Delete a key from the cache: prints {"key", "deleted": true|false} (exit 0 either way).
    /// Never touches the database.
    Del(KeyArgs),
    /// Remaining TTL: prints {"key", "ttl_ms"} (null when the key has no expiry); exit 1 if
    /// not cached. Never touches the database.
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
    /// any earlier put from this tool (and older than any explicit larger version). Not with
    /// a database, which assigns the version.
    #[arg(long, value_name = "N")]
    version: Option<u64>,
    /// TTL of this write in milliseconds instead of the kind's. Not with a database
    /// (write-through caches with the kind's TTL).
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
    let mode = match &ctx.database {
        Some(db) => {
            if args.version.is_some() {
                return Err(Failure::invalid(
                    "--version cannot be used with a database (--database or DATABASE_URL): \
                     the database assigns versions",
                ));
            }
            if args.ttl_ms.is_some() {
                return Err(Failure::invalid(
                    "--ttl-ms cannot be used with a database (--database or DATABASE_URL): \
                     a write-through is cached with the kind's TTL",
                ));
            }
            PutMode::Through(db)
        }
        None => PutMode::CacheOnly {
            version: match args.version {
                Some(v) => v,
                None => now_micros()?,
            },
            ttl: args.ttl_ms.map(Duration::from_millis),
        },
    };
    let json = if args.json == "-" {
        read_stdin()?
    } else {
        args.json
    };
    let op = Put {
        ctx,
        id: &args.id,
        json: &json,
        mode,
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
    mode: PutMode<'a>,
}

/// Where a `put` goes.
enum PutMode<'a> {
    /// The cache alone, with the user's (or the clock's) version.
    CacheOnly { version: u64, ttl: Option<Duration> },
    /// The database first, then the cache, with the database's version.
    Through(&'a Database),
}

impl KindOp for Put<'_> {
    async fn value<S: ValueSchema>(self) -> Result<(), Failure> {
        validate_id(self.id)?;
        let value: S::Value = parse_json::<S>(self.json)?;
        match self.mode {
            PutMode::CacheOnly { version, ttl } => {
                let cache = self.ctx.cache(false)?;
                let key = cache.key::<S>(self.id)?;
                let outcome = cache.set_with(&key, value, version, opts(ttl)).await;
                print_put(&key, version, cache_only_outcome(outcome)?)
            }
            PutMode::Through(db) => {
                let cache = self.ctx.cache(true)?;
                let key = cache.key::<S>(self.id)?;
                let writer = writer(&cache, db);
                let result = writer.write(&key, value).await;
                finish_through(&cache, &writer, &key, result).await
            }
        }
    }

    async fn book<S: BookSchema>(self) -> Result<(), Failure> {
        validate_id(self.id)?;
        let side: BookSide = parse_json::<S>(self.json)?;
        match self.mode {
            PutMode::CacheOnly { version, ttl } => {
                let cache = self.ctx.cache(false)?;
                let key = cache.key::<S>(self.id)?;
                let outcome = cache.set_book_with(&key, side, version, opts(ttl)).await;
                print_put(&key, version, cache_only_outcome(outcome)?)
            }
            PutMode::Through(db) => {
                let cache = self.ctx.cache(true)?;
                let key = cache.key::<S>(self.id)?;
                let writer = writer(&cache, db);
                let result = writer.write_book(&key, side).await;
                finish_through(&cache, &writer, &key, result).await
            }
        }
    }
}

fn opts(ttl: Option<Duration>) -> SetOptions {
    match ttl {
        Some(ttl) => SetOptions::default().ttl(ttl),
        None => SetOptions::default(),
    }
}

fn writer(cache: &Cache, db: &Database) -> WriteThrough<LazyPostgres> {
    WriteThrough::new(cache.clone(), Arc::clone(&db.source)).with_source_timeout(db.op_timeout)
}

/// Reports a write-through: `{"key", "version", "outcome"}` on success (outcome
/// `cache_failed` when only the database took it), else the failure, saying what became of
/// the cached key.
async fn finish_through<S: KeySchema>(
    cache: &Cache,
    writer: &WriteThrough<LazyPostgres>,
    key: &Key<S>,
    result: Result<WriteAck, WriteError<PostgresSourceError>>,
) -> Result<(), Failure> {
    match result {
        Ok(ack) => {
            let outcome = match ack.cached {
                Some(outcome) => outcome_name(outcome),
                None => {
                    // The library recorded the key in its dirty log, to be deleted from Redis
                    // before Redis is trusted again; that log dies with this process, so try
                    // the delete now. Best effort: Redis just failed us, and the answer is the
                    // same either way (the database has the value).
                    let _ = cache.delete(key).await;
                    "cache_failed"
                }
            };
            print_put(key, ack.version, outcome)
        }
        Err(e) => {
            let cached = if writer.dirty_log().contains(key.as_str()) {
                format!("{key} could not be invalidated in the cache")
            } else {
                format!("{key} was invalidated in the cache")
            };
            Err(match e {
                WriteError::Invalid(e) => e.into(),
                WriteError::Source(e) => {
                    source_failure(&e, "the database refused the write").with_context(&cached)
                }
                WriteError::SourceTimeout(d) => Failure::unavailable(format!(
                    "the database did not answer within {d:?} (the write may still commit); \
                     {cached}"
                )),
                other => Failure::unavailable(format!("{other}; {cached}")),
            })
        }
    }
}

/// A database error as a failure: a bad URL is invalid configuration (exit 2); everything else
/// is the backend failing or saying no (exit 3), worded by which.
fn source_failure(e: &PostgresSourceError, refused: &str) -> Failure {
    let text = with_causes(e);
    match e {
        PostgresSourceError::Config(_) => Failure::invalid(format!("invalid database URL: {text}")),
        _ if e.is_unavailable() => Failure::unavailable(format!("database unavailable: {text}")),
        _ => Failure::unavailable(format!("{refused}: {text}")),
    }
}

/// `e` and what caused it: tokio-postgres shows a server's refusal only as "db error", with
/// the server's message (the violated constraint, …) in its `source()`.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// A failed cache-aside read as a failure.
fn load_failure<S: KeySchema>(key: &Key<S>, e: LoadError<PostgresSourceError>) -> Failure {
    match e {
        LoadError::Source(e) => source_failure(&e, &format!("the database could not load {key}")),
        LoadError::SourceTimeout(d) => {
            Failure::unavailable(format!("the database did not answer within {d:?}"))
        }
        LoadError::Cache(e) => e.into(),
        other => Failure::unavailable(other.to_string()),
    }
}

struct Get<'a> {
    ctx: &'a Ctx,
    id: &'a str,
}

impl KindOp for Get<'_> {
    async fn value<S: ValueSchema>(self) -> Result<(), Failure> {
        validate_id(self.id)?;
        if let Some(db) = &self.ctx.database {
            let cache = self.ctx.cache(true)?;
            let key = cache.key::<S>(self.id)?;
            return match aside(cache, db)?.get(&key).await {
                Ok(Some(read)) => print_read(&key, &read),
                Ok(None) => Err(not_found_anywhere(&key)),
                Err(e) => Err(load_failure(&key, e)),
            };
        }
        let cache = self.ctx.cache(false)?;
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
        if let Some(db) = &self.ctx.database {
            let cache = self.ctx.cache(true)?;
            let key = cache.key::<S>(self.id)?;
            return match aside(cache, db)?.get_book(&key, 0).await {
                Ok(Some(read)) => print_read(&key, &read),
                Ok(None) => Err(not_found_anywhere(&key)),
                Err(e) => Err(load_failure(&key, e)),
            };
        }
        let cache = self.ctx.cache(false)?;
        let key = cache.key::<S>(self.id)?;
        match cache.get_book(&key, 0).await? {
            Some(read) => print_read(&key, &read),
            None => Err(not_found(&key)),
        }
    }
}

fn aside(cache: Cache, db: &Database) -> Result<CacheAside<LazyPostgres>, Failure> {
    let aside = CacheAside::builder(cache, Arc::clone(&db.source))
        .source_timeout(db.op_timeout)
        .build()?;
    Ok(aside)
}

struct Del<'a> {
    ctx: &'a Ctx,
    id: &'a str,
}

impl Del<'_> {
    async fn run<S: KeySchema>(self) -> Result<(), Failure> {
        validate_id(self.id)?;
        let cache = self.ctx.cache(false)?;
        let key = cache.key::<S>(self.id)?;
        let deleted = cache.delete(&key).await?;
        print_json(&DelOutput {
            key: key.as_str(),
            deleted,
        })
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
        let cache = self.ctx.cache(false)?;
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
    /// `applied`, `superseded`, or (write-through) `cache_failed`.
    outcome: &'static str,
}

/// One line of `del` output.
#[derive(Serialize)]
struct DelOutput<'a> {
    key: &'a str,
    /// Whether the key existed.
    deleted: bool,
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

/// A cache-only `put`'s result as its `outcome`, or the failure (exit 3 when Redis failed).
///
/// The value must be in Redis for the put to count: this process exits at once, so a value
/// only it holds was not cached at all. A [`WriteOutcome::LocalOnly`] is therefore a failure.
/// (The key commands use the Redis backend, which has no L1 and returns the error itself; the
/// `LocalOnly` arm guards against that changing.)
fn cache_only_outcome(outcome: mdcache::Result<WriteOutcome>) -> Result<&'static str, Failure> {
    const NOT_CACHED: &str = "Redis unavailable: the value was not cached";
    match outcome {
        Ok(WriteOutcome::LocalOnly) => Err(Failure::unavailable(format!(
            "{NOT_CACHED} (only this process held it)"
        ))),
        Ok(outcome) => Ok(outcome_name(outcome)),
        Err(e) if e.trips_breaker() || e.kind() == mdcache::ErrorKind::BreakerOpen => {
            Err(Failure::unavailable(format!("{NOT_CACHED}: {e}")))
        }
        Err(e) => Err(e.into()),
    }
}

fn outcome_name(outcome: WriteOutcome) -> &'static str {
    match outcome {
        WriteOutcome::Applied => "applied",
        WriteOutcome::Superseded => "superseded",
        WriteOutcome::LocalOnly => "local_only",
        // Non-exhaustive; an outcome this build does not know is still reported, not hidden.
        _ => "unknown",
    }
}

fn print_put<S: KeySchema>(
    key: &Key<S>,
    version: u64,
    outcome: &'static str,
) -> Result<(), Failure> {
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

fn not_found_anywhere<S: KeySchema>(key: &Key<S>) -> Failure {
    Failure::not_found(format!("{key} not found (in the cache or the database)"))
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
