//! `mdcache put KIND ID JSON`: writes a value to Redis with a version (or through the database, which assigns it) and prints `{"key", "version", "outcome"}`.

use std::io::Read as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mdcache::{
    BookSchema, BookSide, Cache, Key, KeySchema, Kind, PostgresSourceError, SetOptions,
    ValueSchema, WriteAck, WriteError, WriteOutcome, WriteThrough, validate_id,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::Ctx;
use super::database::{Database, LazyPostgres, source_failure};
use super::key::{KindOp, dispatch, kind_parser};
use crate::output::{Failure, print_json};

/// Largest JSON document `put KIND ID -` reads from stdin. Well above the library's default
/// value limit (1 MiB encoded), so the library, not this cap, decides what is too large.
const MAX_STDIN_BYTES: u64 = 16 << 20;

/// `put`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct PutArgs {
    /// The kind of value.
    #[arg(value_parser = kind_parser())]
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

/// One line of `put` output. Field order is the order printed.
#[derive(Serialize)]
struct PutOutput<'a> {
    key: &'a str,
    version: u64,
    /// `applied`, `superseded`, or (write-through) `cache_failed`.
    outcome: &'static str,
}

/// `put`: writes a value and prints `{"key", "version", "outcome"}`.
pub(crate) async fn run(ctx: &Ctx, args: PutArgs) -> Result<(), Failure> {
    let mode = match ctx.database() {
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
                let outcome = cache_only_outcome(outcome)?;
                published(&cache).await;
                print_put(&key, version, outcome)
            }
            PutMode::Through(db) => {
                let cache = self.ctx.cache(true)?;
                let key = cache.key::<S>(self.id)?;
                let writer = db.writer(&cache);
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
                let outcome = cache_only_outcome(outcome)?;
                published(&cache).await;
                print_put(&key, version, outcome)
            }
            PutMode::Through(db) => {
                let cache = self.ctx.cache(true)?;
                let key = cache.key::<S>(self.id)?;
                let writer = db.writer(&cache);
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
                Some(outcome) => {
                    published(cache).await;
                    outcome_name(outcome)
                }
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

/// After a write Redis took: waits (one backplane round, and never more than
/// [`PUBLISH_WAIT`]) until it has been published, so running instances drop their older
/// copies before this process exits. Nothing here changes what the command reports.
pub(crate) async fn published(cache: &Cache) {
    let _ = tokio::time::timeout(PUBLISH_WAIT, cache.flush()).await;
}

/// The most a key command waits for its backplane message to go out.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

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
