//! `mdcache ttl KIND ID`: prints a key's remaining TTL in Redis (never the database), `{"key", "ttl_ms"}`.

use mdcache::{BookSchema, KeySchema, KeyTtl, ValueSchema, validate_id};
use serde::Serialize;

use super::context::Ctx;
use super::key::{KeyArgs, KindOp, dispatch, not_found};
use crate::output::{Failure, millis, print_json};

/// One line of `ttl` output. Field order is the order printed.
#[derive(Serialize)]
struct TtlOutput<'a> {
    key: &'a str,
    /// Remaining TTL; `None` (null) when the Redis key has no expiry.
    ttl_ms: Option<u64>,
}

/// `ttl`: exit 1 when the key is not cached.
pub(crate) async fn run(ctx: &Ctx, key: KeyArgs) -> Result<(), Failure> {
    dispatch(key.kind, Ttl { ctx, id: &key.id }).await
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
