//! The commands and scripts every Redis implementation of the L2 sends, written once over any redis-rs connection: one server's pooled connection and a cluster connection run the same bodies.
//!
//! Each function is one try, on a connection it is lent: the implementations wrap them in
//! their guard (admission, deadline, retries, breaker) and map the errors. A batch function
//! sends what it is given as one pipeline; on a cluster the caller gives it the items of one
//! hash slot at a time.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script, Value};

use super::book::{self, BookScripts};
use super::boundary::{Put, PutReply, ttl_ms};
use super::values::{self, ValueScripts};
use crate::error::Error;
use crate::schema::BookSide;

/// The scripts of values and book sides, hashed once per L2.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) values: ValueScripts,
    pub(crate) books: BookScripts,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            values: ValueScripts::new(),
            books: BookScripts::new(),
        }
    }
}

/// True when `e` is `NOSCRIPT`: the server lost its script cache (a restart, a failover to
/// a replica that never ran the script).
pub(crate) fn is_no_script(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// The key a batch item writes.
pub(crate) fn put_key<'a>(p: &Put<'a>) -> &'a str {
    match *p {
        Put::Value { key, .. } | Put::Book { key, .. } => key,
    }
}

/// [`SET_VERSIONED`](super::values) of one key: 1 stored, 0 superseded.
pub(crate) async fn set_versioned<C: ConnectionLike>(
    c: &mut C,
    scripts: &Scripts,
    key: &str,
    envelope: &[u8],
    ttl: Duration,
) -> RedisResult<i64> {
    scripts
        .values
        .set_versioned
        .key(key)
        .arg(envelope)
        .arg(ttl_ms(ttl))
        .invoke_async(c)
        .await
}

/// Sends `build()`'s pipeline; on `NOSCRIPT`, loads `scripts` and sends it once more (every
/// write it holds is idempotent, so a partial first attempt is harmless).
async fn pipeline_with_scripts<C, T>(
    c: &mut C,
    scripts: &[&Script],
    build: impl Fn() -> redis::Pipeline,
) -> RedisResult<T>
where
    C: ConnectionLike,
    T: redis::FromRedisValue,
{
    match build().query_async(c).await {
        Err(e) if is_no_script(&e) => {
            for s in scripts {
                s.load_async(c).await?;
            }
            build().query_async(c).await
        }
        other => other,
    }
}

/// [`set_versioned`] of many keys in one pipeline; one code per item, in order.
pub(crate) async fn set_many<C: ConnectionLike>(
    c: &mut C,
    scripts: &Scripts,
    items: &[(&str, &[u8], Duration)],
) -> RedisResult<Vec<i64>> {
    let script = &scripts.values.set_versioned;
    let build = || {
        let mut p = redis::pipe();
        for &(key, bytes, ttl) in items {
            p.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(1)
                .arg(key)
                .arg(bytes)
                .arg(ttl_ms(ttl));
        }
        p
    };
    pipeline_with_scripts(c, &[script], build).await
}

/// The market-data writer's batch as one pipeline, not a transaction: the values in calls
/// of the multi-key versioned script (at most [`values::MANY_CHUNK`] keys each), then one
/// book-side script per side; each script is atomic on its own, and the batch needs no more.
/// Errors are per call (`ignore_errors`) and per key inside the multi-key script, so one key
/// of another type does not fail the batch; a `NOSCRIPT` loads the scripts and sends the
/// batch once more. One reply per item, in order.
pub(crate) async fn put_many<C: ConnectionLike>(
    c: &mut C,
    scripts: &Scripts,
    items: &[Put<'_>],
) -> RedisResult<Vec<PutReply>> {
    let batch = PutBatch::new(items);
    let (vmany, breplace) = (&scripts.values.set_versioned_many, &scripts.books.replace);
    let mut replies: Vec<RedisResult<Value>> = batch
        .pipeline(vmany, breplace, false)
        .query_async(c)
        .await?;
    if replies.iter().any(|r| r.as_ref().is_err_and(is_no_script)) {
        vmany.load_async(c).await?;
        breplace.load_async(c).await?;
        replies = batch
            .pipeline(vmany, breplace, false)
            .query_async(c)
            .await?;
    }
    Ok(batch.replies(replies))
}

/// A writer batch laid out for one pipeline: which items are values (sent by the multi-key
/// script, in chunks) and which are book sides (one script each), and how to read the
/// replies back in the items' order.
pub(crate) struct PutBatch<'b, 'a> {
    items: &'b [Put<'a>],
    values: Vec<usize>,
    books: Vec<usize>,
}

impl<'b, 'a> PutBatch<'b, 'a> {
    pub(crate) fn new(items: &'b [Put<'a>]) -> Self {
        PutBatch {
            items,
            values: (0..items.len())
                .filter(|&i| matches!(items[i], Put::Value { .. }))
                .collect(),
            books: (0..items.len())
                .filter(|&i| matches!(items[i], Put::Book { .. }))
                .collect(),
        }
    }

    /// The pipeline: `vmany` per chunk of values, `breplace` per side; errors kept per
    /// call. `vmany` is the multi-key versioned script, with the keys declared, or with
    /// `any_slot` its cross-slot variant, with one key declared and all of them in ARGV.
    pub(crate) fn pipeline(
        &self,
        vmany: &Script,
        breplace: &Script,
        any_slot: bool,
    ) -> redis::Pipeline {
        let items = self.items;
        let mut p = redis::pipe();
        p.ignore_errors();
        for chunk in self.values.chunks(values::MANY_CHUNK) {
            let c = p.cmd("EVALSHA").arg(vmany.get_hash());
            if any_slot {
                c.arg(1).arg(put_key(&items[chunk[0]])).arg(chunk.len());
            } else {
                c.arg(chunk.len());
            }
            for &i in chunk {
                c.arg(put_key(&items[i]));
            }
            for &i in chunk {
                if let Put::Value {
                    envelope,
                    expire_at_ms,
                    ..
                } = items[i]
                {
                    c.arg(envelope).arg(expire_at_ms);
                }
            }
        }
        for &i in &self.books {
            if let Put::Book {
                key,
                side,
                version,
                written_ttl,
                expire_at_ms,
            } = items[i]
            {
                let stamp = book::encode_stamp(version, ttl_ms(written_ttl), side.levels.len());
                let c = p
                    .cmd("EVALSHA")
                    .arg(breplace.get_hash())
                    .arg(2)
                    .arg(key)
                    .arg(book::version_key(key))
                    .arg(&stamp[..])
                    .arg(format!("@{expire_at_ms}"));
                for l in book::zadd_order(side) {
                    c.arg(l.price).arg(book::member(l));
                }
            }
        }
        p
    }

    /// One reply per item, in order, from the pipeline's replies.
    pub(crate) fn replies(&self, replies: Vec<RedisResult<Value>>) -> Vec<PutReply> {
        let items = self.items;
        let mut out: Vec<Option<PutReply>> = items.iter().map(|_| None).collect();
        let mut replies = replies.into_iter();
        for chunk in self.values.chunks(values::MANY_CHUNK) {
            let codes = match replies.next() {
                Some(Ok(Value::Array(codes))) if codes.len() == chunk.len() => Ok(codes),
                Some(Ok(_)) | None => Err(None),
                Some(Err(e)) => Err(Some(e)),
            };
            for (n, &i) in chunk.iter().enumerate() {
                let key = put_key(&items[i]);
                out[i] = Some(match &codes {
                    Ok(codes) => match codes[n] {
                        Value::Int(1) => PutReply::Stored,
                        Value::Int(0) => PutReply::Superseded,
                        Value::Int(-1) => PutReply::Refused(Error::WrongType {
                            key: key.to_owned(),
                        }),
                        _ => PutReply::Refused(Error::InvalidValue {
                            reason: format!("{key}: the stored envelope could not be compared"),
                        }),
                    },
                    Err(Some(e)) => PutReply::Refused(Error::from_redis(e.clone(), key)),
                    Err(None) => PutReply::Refused(Error::Decode {
                        key: key.to_owned(),
                        reason: "unexpected reply from the versioned batch script".to_owned(),
                    }),
                });
            }
        }
        for &i in &self.books {
            let key = put_key(&items[i]);
            out[i] = Some(match replies.next() {
                Some(Ok(Value::Int(1))) => PutReply::Stored,
                Some(Ok(Value::Int(_))) => PutReply::Superseded,
                Some(Err(e)) => PutReply::Refused(Error::from_redis(e, key)),
                Some(Ok(_)) | None => PutReply::Refused(Error::Decode {
                    key: key.to_owned(),
                    reason: "unexpected reply from the book script".to_owned(),
                }),
            });
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or(PutReply::Refused(Error::Unsupported(
                    "internal: a batch item without a reply",
                )))
            })
            .collect()
    }
}

/// `UNLINK` of `keys`: how many existed.
pub(crate) async fn unlink<C: ConnectionLike>(c: &mut C, keys: &[&str]) -> RedisResult<u64> {
    redis::cmd("UNLINK").arg(keys).query_async(c).await
}

/// Deletes `key` while it holds exactly `bytes`: 1 deleted, 0 left alone.
pub(crate) async fn unlink_if_equals<C: ConnectionLike>(
    c: &mut C,
    scripts: &Scripts,
    key: &str,
    bytes: &[u8],
) -> RedisResult<i64> {
    scripts
        .values
        .unlink_if_equals
        .key(key)
        .arg(bytes)
        .invoke_async(c)
        .await
}

/// `PTTL` of `key`.
pub(crate) async fn pttl<C: ConnectionLike>(c: &mut C, key: &str) -> RedisResult<i64> {
    redis::cmd("PTTL").arg(key).query_async(c).await
}

/// Replaces a side unless a higher version is stored: 1 stored, 0 superseded.
pub(crate) async fn book_replace<C: ConnectionLike>(
    c: &mut C,
    scripts: &Scripts,
    key: &str,
    side: &BookSide,
    version: u64,
    ttl: Duration,
) -> RedisResult<i64> {
    let vkey = book::version_key(key);
    let ttl_ms = ttl_ms(ttl);
    let stamp = book::encode_stamp(version, ttl_ms, side.levels.len());
    let mut inv = scripts.books.replace.key(key);
    inv.key(vkey.as_str()).arg(&stamp[..]).arg(ttl_ms);
    for l in book::zadd_order(side) {
        inv.arg(l.price).arg(book::member(l));
    }
    inv.invoke_async(c).await
}

/// The top-`depth` read script's raw reply (see [`book::parse_top`]).
pub(crate) async fn book_top<C: ConnectionLike>(
    c: &mut C,
    scripts: &Scripts,
    key: &str,
    dir: &str,
    depth: usize,
) -> RedisResult<Value> {
    let vkey = book::version_key(key);
    scripts
        .books
        .top
        .key(key)
        .key(vkey.as_str())
        .arg(dir)
        .arg(depth)
        .invoke_async(c)
        .await
}

/// Deletes a side unless its stamp changed since it was read: 1 deleted, 0 left alone.
pub(crate) async fn book_unlink_if_stamp<C: ConnectionLike>(
    c: &mut C,
    scripts: &Scripts,
    key: &str,
    stamp: &[u8],
) -> RedisResult<i64> {
    let vkey = book::version_key(key);
    scripts
        .books
        .unlink_if_stamp
        .key(key)
        .key(vkey.as_str())
        .arg(stamp)
        .invoke_async(c)
        .await
}

/// One `SCAN` step over `pattern` with `COUNT count` (how much of the keyspace one step looks
/// at; a hint): the next cursor (0 at the end) and the keys found.
pub(crate) async fn scan_counting<C: ConnectionLike>(
    c: &mut C,
    cursor: u64,
    pattern: &str,
    count: u32,
) -> RedisResult<(u64, Vec<String>)> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(count)
        .query_async(c)
        .await
}

/// The six keyed operations of the [`L2`](super::boundary::L2) boundary that are the same on
/// every implementation, written once: each is one guarded try (`self.run`, the
/// implementation's own) of the shared command body above, its reply read the same way.
/// Expanded inside each `impl L2`: a macro rather than generic functions over a trait with
/// the guard as an `impl Future` method, which rustc rejects at the engine's call sites
/// ("one type is more general than the other": the guard's closure returns a future that
/// borrows its arguments). Needs `self.run`, `self.scripts` and this module's imports
/// (`commands`, `values`, `book`, the boundary types) in scope.
macro_rules! keyed_operations {
    () => {
        async fn set_versioned(&self, key: &str, envelope: &[u8], ttl: Duration) -> Result<bool> {
            let scripts = &self.scripts;
            let stored = self
                .run("set", key, |mut c| async move {
                    commands::set_versioned(&mut c, scripts, key, envelope, ttl).await
                })
                .await?;
            Ok(stored == 1)
        }

        /// For a value that failed to decode: it goes, so a fill can replace it, unless
        /// someone wrote the key since it was read.
        async fn unlink_if_equals(&self, key: &str, bytes: &[u8]) -> Result<bool> {
            let scripts = &self.scripts;
            let deleted = self
                .run("unlink_if_equals", key, |mut c| async move {
                    commands::unlink_if_equals(&mut c, scripts, key, bytes).await
                })
                .await?;
            Ok(deleted == 1)
        }

        async fn pttl(&self, key: &str) -> Result<Option<Option<Duration>>> {
            let pttl = self
                .run("ttl", key, |mut c| async move {
                    commands::pttl(&mut c, key).await
                })
                .await?;
            Ok(values::remaining(pttl))
        }

        async fn book_replace(
            &self,
            key: &str,
            side: &BookSide,
            version: u64,
            ttl: Duration,
        ) -> Result<bool> {
            let scripts = &self.scripts;
            let stored = self
                .run("book_set", key, |mut c| async move {
                    commands::book_replace(&mut c, scripts, key, side, version, ttl).await
                })
                .await?;
            Ok(stored == 1)
        }

        async fn book_top(&self, key: &str, side: BookSideKind, depth: usize) -> Result<TopReply> {
            let (scripts, dir, depth) = (
                &self.scripts,
                book::direction(side),
                book::redis_depth(depth),
            );
            let reply = self
                .run("book_get", key, |mut c| async move {
                    commands::book_top(&mut c, scripts, key, dir, depth).await
                })
                .await?;
            book::parse_top(key, reply)
        }

        async fn book_unlink_if_stamp(&self, key: &str, stamp: &[u8]) -> Result<bool> {
            let scripts = &self.scripts;
            let deleted = self
                .run("book_repair", key, |mut c| async move {
                    commands::book_unlink_if_stamp(&mut c, scripts, key, stamp).await
                })
                .await?;
            Ok(deleted == 1)
        }
    };
}
pub(crate) use keyed_operations;
