//! `mdcache get KIND ID`: reads a value from Redis (or through the database on a miss) and prints it with its version, tier, TTL and age.

use mdcache::{BookSchema, Key, KeySchema, Read, ValueSchema, validate_id};
use serde::Serialize;

use super::context::Ctx;
use super::database::load_failure;
use super::key::{KeyArgs, KindOp, dispatch, not_found};
use crate::output::{Failure, millis, print_json};

/// One line of `get` output. Field order is the order printed.
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

/// `get`: prints the value, or fails with exit 1 when neither the cache nor the database (if
/// any) has it.
pub(crate) async fn run(ctx: &Ctx, key: KeyArgs) -> Result<(), Failure> {
    dispatch(key.kind, Get { ctx, id: &key.id }).await
}

struct Get<'a> {
    ctx: &'a Ctx,
    id: &'a str,
}

impl KindOp for Get<'_> {
    async fn value<S: ValueSchema>(self) -> Result<(), Failure> {
        validate_id(self.id)?;
        if let Some(db) = self.ctx.database() {
            let cache = self.ctx.cache(true)?;
            let key = cache.key::<S>(self.id)?;
            return match db.aside(cache)?.read(&key).await {
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
        if let Some(db) = self.ctx.database() {
            let cache = self.ctx.cache(true)?;
            let key = cache.key::<S>(self.id)?;
            return match db.aside(cache)?.read_book(&key, 0).await {
                Ok(Some(read)) => print_read(&key, &read),
                Ok(None) => Err(not_found_anywhere(&key)),
                Err(e) => Err(load_failure(&key, e)),
            };
        }
        let cache = self.ctx.cache(false)?;
        let key = cache.key::<S>(self.id)?;
        match cache.read_book(&key, 0).await? {
            Some(read) => print_read(&key, &read),
            None => Err(not_found(&key)),
        }
    }
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

fn not_found_anywhere<S: KeySchema>(key: &Key<S>) -> Failure {
    Failure::not_found(format!("{key} not found (in the cache or the database)"))
}
