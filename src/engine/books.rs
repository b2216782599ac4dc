//! Book sides: the `Books` layout — a side replaced whole at a version (a sorted set and its stamp in Redis), read as its best `depth` levels.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::layout::{Layout, Promoted};
use super::writer::Payload;
use super::*;
use crate::book::BookSideKind;

/// The layout of book sides. A read asks for the best `depth` levels (0: every level).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Books {
    depth: usize,
}

impl Books {
    /// A read of the best `depth` levels (0: all).
    #[inline]
    pub(crate) fn depth(depth: usize) -> Self {
        Books { depth }
    }
}

/// A book side as held in L1: sorted best first, and whether it holds every level or only
/// the top levels a depth-limited read fetched.
#[derive(Debug)]
pub(crate) struct BookEntry {
    side: Arc<BookSide>,
    complete: bool,
}

impl<S: BookSchema> Layout<S> for Books {
    type Entry = BookEntry;
    type Payload = Arc<BookSide>;

    #[inline]
    fn whole() -> Self {
        Books { depth: 0 }
    }

    fn is_whole(self) -> bool {
        self.depth == 0
    }

    fn check(side: &BookSide, limit: usize) -> Result<()> {
        book::check(side, limit).map(|_| ())
    }

    fn normalise(mut side: BookSide) -> BookSide {
        crate::book::sort_best_first(&mut side.levels, S::SIDE);
        side
    }

    fn prepare(
        side: Arc<BookSide>,
        _version: u64,
        _ttl: Duration,
        limit: usize,
    ) -> Result<(Arc<BookEntry>, usize, Arc<BookSide>)> {
        // What Redis will hold, against the value limit; then the book rules.
        let bytes = book::check(&side, limit)?;
        let side = best_first(side, S::SIDE);
        let entry = Arc::new(BookEntry {
            side: Arc::clone(&side),
            complete: true,
        });
        Ok((entry, bytes, side))
    }

    fn entry(side: Arc<BookSide>) -> (Arc<BookEntry>, usize) {
        // A fill's or a received side's weight: estimated, not formatted (see the function).
        let bytes = book::estimated_bytes(&side);
        let entry = Arc::new(BookEntry {
            side,
            complete: true,
        });
        (entry, bytes)
    }

    #[inline]
    fn view(self, entry: Arc<BookEntry>) -> Option<Arc<BookSide>> {
        let have = entry.side.levels.len();
        if !(entry.complete || (self.depth != 0 && have >= self.depth)) {
            return None;
        }
        Some(top(&entry.side, self.depth))
    }

    fn view_stale(self, entry: Arc<BookEntry>) -> Arc<BookSide> {
        top(&entry.side, self.depth)
    }

    fn cut(self, whole: Arc<BookSide>) -> Arc<BookSide> {
        top(&whole, self.depth)
    }

    fn into_pending(side: Arc<BookSide>) -> Payload {
        Payload::Book(side)
    }

    fn read_pending(self, payload: &Payload) -> Option<Arc<BookSide>> {
        match payload {
            Payload::Book(side) => Some(top(side, self.depth)),
            Payload::Value(_) => None,
        }
    }

    fn l2_write<'a>(
        l2: &'a L2Tier,
        key: &'a str,
        side: &'a Arc<BookSide>,
        version: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        l2.book_replace(key, side, version, ttl)
    }

    async fn l2_read(
        self,
        engine: &Engine,
        l2: &L2Tier,
        key: &Key<S>,
        t0: Instant,
    ) -> Result<Option<Read<BookSide>>> {
        let fetched = l2
            .book_top(key.as_str(), S::SIDE, self.depth)
            .await
            .inspect_err(|e| {
                if e.kind() == crate::ErrorKind::Decode {
                    engine.ks(key).decode_errors.inc();
                }
                engine.ks(key).error(e)
            })?;
        let f = match fetched {
            book::TopReply::Found(f) => f,
            book::TopReply::Missing => {
                engine.ks(key).l2_misses.inc();
                return Ok(None);
            }
            book::TopReply::Undecodable { stamp, error } => {
                // A miss, like an undecodable value; and removed (unless a writer
                // replaced it meanwhile), so the reload that follows can fill it again.
                engine.ks(key).decode_errors.inc();
                engine.ks(key).l2_misses.inc();
                tracing::warn!(key = key.as_str(), %error, "undecodable book side treated as a miss");
                if let Err(e) = l2.book_unlink_if_stamp(key.as_str(), &stamp).await {
                    tracing::debug!(key = key.as_str(), error = %e, "removing an undecodable book side failed");
                }
                return Ok(None);
            }
        };
        // Age by the TTL its writer gave it (a per-write TTL included), both figures from
        // Redis's clock; the kind's TTL stands in for a side written by an earlier build.
        let written_ttl = f.written_ttl.unwrap_or(key.ttl());
        let remaining = f.remaining.map_or(written_ttl, below_redis_precision);
        let side = Arc::new(f.side);
        let promoted = Promoted {
            entry: Arc::new(BookEntry {
                side: Arc::clone(&side),
                complete: self.depth == 0 || side.levels.len() < self.depth,
            }),
            value: side,
            version: f.version,
            t0,
            ttl_remaining: f.remaining,
            remaining,
            age: written_ttl.saturating_sub(remaining),
            bytes: f.bytes,
        };
        Ok(engine.promote(key, self, promoted))
    }
}

/// `side` sorted best first, sorting (and copying, when shared) only when it is not already.
fn best_first(mut side: Arc<BookSide>, kind: BookSideKind) -> Arc<BookSide> {
    if !crate::book::is_best_first(&side.levels, kind) {
        crate::book::sort_best_first(&mut Arc::make_mut(&mut side).levels, kind);
    }
    side
}

/// The first `depth` levels (all when 0), sharing the `Arc` when nothing is cut.
fn top(side: &Arc<BookSide>, depth: usize) -> Arc<BookSide> {
    if depth == 0 || side.levels.len() <= depth {
        Arc::clone(side)
    } else {
        Arc::new(BookSide {
            levels: side.levels[..depth].to_vec(),
        })
    }
}
