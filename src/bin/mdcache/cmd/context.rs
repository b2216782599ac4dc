//! What the key commands share: the configuration (environment, then flags), where the Redis URL came from, the database if any, and building the cache.

use std::num::NonZeroU32;
use std::str::FromStr as _;
use std::time::Duration;

use mdcache::{Backend, Cache, CacheConfig};

use super::database::Database;
use crate::output::Failure;
use crate::redis_flags::RedisFlags;

/// Operation deadline of the key commands unless `--timeout-ms` or `CACHE_OP_TIMEOUT_MS` says
/// otherwise. The library's default (5 ms) suits an engine on the same rack as Redis; a person
/// at a terminal, possibly over a VPN, needs more, and still wants an answer within a second.
const INTERACTIVE_OP_TIMEOUT: Duration = Duration::from_millis(1000);

/// What the key commands share: the configuration, where its Redis URL came from, and the
/// database if one is configured.
#[derive(Debug)]
pub(crate) struct Ctx {
    config: CacheConfig,
    /// `--redis` / `--redis-cluster`, so a bad address is reported as the flag's fault, not
    /// as the variable's.
    redis: RedisFlags,
    /// The source of record for `get` and `put`, when `--database` or `DATABASE_URL` names one.
    database: Option<Database>,
}

impl Ctx {
    /// Reads `CACHE_*` and `DATABASE_URL` from the environment, then applies the command-line
    /// overrides. A database URL that does not parse is refused here, before any I/O.
    pub(crate) fn new(
        redis: RedisFlags,
        database: Option<String>,
        timeout_ms: Option<u64>,
    ) -> Result<Ctx, Failure> {
        let mut config = CacheConfig::from_env()?;
        redis.apply(&mut config);
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
                Some(Database::new(url, db_timeout))
            }
        };
        Ok(Ctx {
            config,
            redis,
            database,
        })
    }

    /// The deadline of one operation (`--timeout-ms`, `CACHE_OP_TIMEOUT_MS`, or the
    /// interactive default).
    pub(crate) fn op_timeout(&self) -> Duration {
        self.config.op_timeout
    }

    /// The database, if `--database` or `DATABASE_URL` names one.
    pub(crate) fn database(&self) -> Option<&Database> {
        self.database.as_ref()
    }

    /// Builds the cache. Must run inside the Tokio runtime.
    ///
    /// Redis alone when a Redis address is configured; with `for_database` and no Redis
    /// address, an in-process cache (L1 only) in front of the database; otherwise an error.
    /// Writes are synchronous (no conflation).
    pub(crate) fn cache(&self, for_database: bool) -> Result<Cache, Failure> {
        let mut config = self.config.clone();
        config.backend = Some(match (config.has_redis(), for_database) {
            (true, _) => Backend::Redis,
            (false, true) => Backend::Memory,
            (false, false) => {
                return Err(Failure::invalid(
                    "no Redis address: pass --redis URL (or --redis-cluster NODES) or set CACHE_REDIS_URL (or CACHE_REDIS_CLUSTER)",
                ));
            }
        });
        // A one-shot command has nothing to conflate: each write reaches Redis (or fails,
        // exit 3) before the command reports it.
        Cache::builder()
            .config(config)
            .no_conflation()
            .build()
            .map_err(|e| self.redis.blame(e))
    }
}
