//! `mdcache del KIND ID`: deletes a key from Redis (never the database) and prints `{"key", "deleted"}`.

use mdcache::{BookSchema, KeySchema, ValueSchema, validate_id};
use serde::Serialize;

use super::context::Ctx;
use super::key::{KeyArgs, KindOp, dispatch};
use crate::output::{Failure, print_json};

/// One line of `del` output. Field order is the order printed.
#[derive(Serialize)]
struct DelOutput<'a> {
    key: &'a str,
    /// Whether the key existed.
    deleted: bool,
}

/// `del`: exit 0 whether or not the key existed.
pub(crate) async fn run(ctx: &Ctx, key: KeyArgs) -> Result<(), Failure> {
    dispatch(key.kind, Del { ctx, id: &key.id }).await
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
        super::put::published(&cache).await;
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
