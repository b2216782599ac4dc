//! The key commands (`put`, `get`, `del`, `ttl`) and `example`, one file each, sharing the configuration, the database and the kind dispatch.
//!
//! Every key command runs against Redis alone ([`Backend::Redis`](mdcache::Backend::Redis)): a
//! one-shot process gains nothing from an in-process L1, and `get`'s `tier` then truthfully
//! says `l2`.
//!
//! With a database (`--database` or `DATABASE_URL`), `get` reads through
//! [`CacheAside`](mdcache::CacheAside) and `put` writes through
//! [`WriteThrough`](mdcache::WriteThrough) over PostgreSQL, and Redis becomes optional (without
//! it the cache is a throwaway in-process one, so `get` always reports `source`). `del` and
//! `ttl` still act on Redis alone.
//!
//! Input is checked (identifier, JSON, value type, and for a database write the value's size
//! and book rules) before any connection is opened: the database is connected on first use,
//! after `WriteThrough` has checked the value.
//!
//! | module | job |
//! |---|---|
//! | `context` | the configuration the key commands share, and building their cache |
//! | `database` | the PostgreSQL source, connected on first use, and its errors as failures |
//! | `key` | a kind and an identifier from the command line, dispatched to the kind's schema |
//! | `put`, `get`, `del`, `ttl`, `example` | one command each: its arguments, its work, its output |
//! | `keys`, `clear`, `stats`, `health` | the operator's commands over [`mdcache::admin`], one file each; text by default, `--json` for one JSON object |
//! | `serve` | the HTTP admin API standalone (`mdcache::admin::http`) |
//! | `remote` | `--admin URL`: a running instance's figures from its admin API |
//! | `warm` | preloading keys from the database (`CacheAside::warm`) |

mod clear;
mod context;
mod database;
mod del;
pub(crate) mod example;
mod get;
mod health;
mod key;
mod keys;
mod put;
mod remote;
mod serve;
mod stats;
mod ttl;
mod warm;

pub(crate) use context::Ctx;

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
    Put(put::PutArgs),
    /// Read a value: prints {"key", "kind", "value", "version", "tier", "ttl_ms", "age_ms"};
    /// exit 1 if not cached.
    ///
    /// With a database: a key the cache does not hold is loaded from the database ("tier":
    /// "source") and cached; exit 1 only if the database does not have it either.
    Get(key::KeyArgs),
    /// Delete a key from the cache: prints {"key", "deleted": true|false} (exit 0 either way).
    /// Never touches the database.
    Del(key::KeyArgs),
    /// Remaining TTL: prints {"key", "ttl_ms"} (null when the key has no expiry); exit 1 if
    /// not cached. Never touches the database.
    Ttl(key::KeyArgs),
}

/// Runs one key command: each prints its result or fails with exit 1 (not cached: `get`,
/// `ttl`), 2 or 3.
pub(crate) async fn run(ctx: &Ctx, command: KeyCommand) -> Result<(), crate::output::Failure> {
    match command {
        KeyCommand::Put(args) => put::run(ctx, args).await,
        KeyCommand::Get(k) => get::run(ctx, k).await,
        KeyCommand::Del(k) => del::run(ctx, k).await,
        KeyCommand::Ttl(k) => ttl::run(ctx, k).await,
    }
}

/// The operator's commands: Redis required; human-readable lines by default, one JSON object
/// with `--json`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AdminCommand {
    /// List keys of the namespace matching PATTERN (`price:*` means `mdc:price:*`), by
    /// cursor-paged SCAN on every primary; never KEYS.
    Keys(keys::KeysArgs),
    /// Delete every key of a kind (--kind) or a pattern (--pattern): SCAN + UNLINK in
    /// batches, announced on the backplane so other instances evict; needs --yes unless
    /// --dry-run.
    Clear(clear::ClearArgs),
    /// Count the namespace's keys per kind (bounded SCAN) and time a round trip to Redis.
    Stats(stats::StatsArgs),
    /// PING Redis (every primary of a cluster) and show the breaker, shards and dirty log;
    /// exit 3 when Redis does not answer. With --admin URL, a running instance's own view.
    Health(health::HealthArgs),
    /// Run the HTTP admin API (stats, health, keys, ttl, clear, metrics) until Ctrl-C. Needs
    /// CACHE_ADMIN_TOKEN or CACHE_ADMIN_TOKEN_FILE (at least 32 bytes); every endpoint but
    /// /api/cache/health and /metrics requires it as a bearer token.
    Serve(serve::ServeArgs),
    /// Preload keys from the database (--database or DATABASE_URL) into the cache: one query
    /// per 1,000 ids, through the versioned fill (a newer cached version is kept).
    Warm(warm::WarmArgs),
}

/// Runs one operator command.
pub(crate) async fn run_admin(
    ctx: &Ctx,
    command: AdminCommand,
    json: bool,
) -> Result<(), crate::output::Failure> {
    match command {
        AdminCommand::Keys(args) => keys::run(ctx, args, json).await,
        AdminCommand::Clear(args) => clear::run(ctx, args, json).await,
        AdminCommand::Stats(args) => stats::run(ctx, args, json).await,
        AdminCommand::Health(args) => health::run(ctx, args, json).await,
        AdminCommand::Serve(args) => serve::run(ctx, args).await,
        AdminCommand::Warm(args) => warm::run(ctx, args, json).await,
    }
}
