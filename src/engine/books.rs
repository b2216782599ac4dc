//! Book sides: replace a whole side at a version, read the top N levels, fill and stale reads of sides.

use std::sync::Arc;
use std::time::Duration;

use super::*;

impl Engine {
    /// [`set_book_with`](Self::set_book_with), with what to do when the Redis write fails.
    pub(crate) async fn set_book_with_policy<S: BookSchema>(
        &self,
        key: &Key<S>,
        side: BookSide,
        version: u64,
        opts: SetOptions,
        on_failure: OnL2Failure,
    ) -> Result<WriteOutcome> {
        let mut side = side;
        let ttl = write_ttl(key, opts).inspect_err(|e| self.ks(key).error(e))?;
        // What Redis will hold, against the value limit; then the book rules.
        let bytes = book::check(&side, self.config.max_value_bytes.get())
            .inspect_err(|e| self.ks(key).error(e))?;
        book::sort_best_first(&mut side.levels, S::SIDE);
        let side = Arc::new(side);
        let t0 = self.clock.now();
        let result = match &self.l2 {
            None => None,
            Some(l2) => Some(l2.book_replace(key.as_str(), &side, version, ttl).await),
        };
        let local = LocalWrite {
            value: Arc::new(BookEntry {
                side,
                complete: true,
            }),
            version,
            t0,
            ttl,
            bytes,
        };
        match result {
            None => Ok(self.finish_write(key, local, None)),
            Some(Ok(stored)) => Ok(self.finish_write(key, local, Some(stored))),
            Some(Err(e)) => self.after_failed_write(key, e, on_failure, local),
        }
    }

    /// See [`Cache::get_book`](crate::Cache::get_book).
    pub(crate) async fn get_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        depth: usize,
    ) -> Result<Option<Read<BookSide>>> {
        if let Some(l1) = &self.l1 {
            if let Some(read) = self.l1_book(l1, key, depth) {
                return Ok(Some(read));
            }
            self.ks(key).l1_misses.inc();
        }
        let Some(l2) = &self.l2 else {
            return Ok(None);
        };
        if self.dirty.distrusts(key.as_str(), S::KEY_PREFIX) {
            self.ks(key).l2_misses.inc();
            return Ok(None);
        }
        let t0 = self.clock.now();
        let fetched = l2
            .book_top(key.as_str(), S::SIDE, depth)
            .await
            .inspect_err(|e| {
                if e.kind() == crate::ErrorKind::Decode {
                    self.ks(key).decode_errors.inc();
                }
                self.ks(key).error(e)
            })?;
        let f = match fetched {
            book::TopReply::Found(f) => f,
            book::TopReply::Missing => {
                self.ks(key).l2_misses.inc();
                return Ok(None);
            }
            book::TopReply::Undecodable { stamp, error } => {
                // A miss, like an undecodable value; and removed (unless a writer replaced
                // it meanwhile), so the reload that follows can fill it again.
                self.ks(key).decode_errors.inc();
                self.ks(key).l2_misses.inc();
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
        let remaining = f.remaining.unwrap_or(written_ttl);
        let age = written_ttl.saturating_sub(remaining);
        let complete = depth == 0 || f.side.levels.len() < depth;
        let bytes = f.bytes;
        let side = Arc::new(f.side);
        if let Some(l1) = &self.l1 {
            let entry = Arc::new(BookEntry {
                side: Arc::clone(&side),
                complete,
            });
            let written = t0.checked_sub(age).unwrap_or(t0);
            let outcome = l1.insert_versioned(
                key.shared(),
                entry,
                f.version,
                deadline_after(t0, remaining),
                written,
                bytes,
            );
            if outcome == InsertOutcome::HigherVersionHeld {
                // L1 holds a newer side or a version floor: Redis's older side is not served.
                return Ok(match self.l1_book(l1, key, depth) {
                    Some(r) if r.version >= f.version => Some(r),
                    _ => {
                        self.ks(key).l2_misses.inc();
                        None
                    }
                });
            }
        }
        self.ks(key).l2_hits.inc();
        Ok(Some(Read {
            value: side,
            version: f.version,
            tier: Tier::L2,
            age,
            ttl_remaining: f.remaining,
        }))
    }

    /// The top `depth` levels of a book side from L1, if it holds them fresh (counted as an
    /// L1 hit; a miss is not counted here).
    #[inline]
    pub(super) fn l1_book<S: BookSchema>(
        &self,
        l1: &L1,
        key: &Key<S>,
        depth: usize,
    ) -> Option<Read<BookSide>> {
        let hit = l1.get::<BookEntry>(key.as_str())?;
        let have = hit.value.side.levels.len();
        if !(hit.value.complete || (depth != 0 && have >= depth)) {
            return None;
        }
        self.ks(key).l1_hits.inc();
        let side = top(&hit.value.side, depth);
        let read = self.l1_read(hit);
        Some(Read {
            value: side,
            version: read.version,
            tier: read.tier,
            age: read.age,
            ttl_remaining: read.ttl_remaining,
        })
    }

    /// [`recheck`](Self::recheck) for a book side.
    pub(crate) async fn recheck_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        depth: usize,
    ) -> Result<Option<Read<BookSide>>> {
        match &self.l1 {
            Some(l1) => Ok(self.l1_book(l1, key, depth)),
            None => self.get_book(key, depth).await,
        }
    }

    /// Puts a book side loaded from the source into L1 only (sorted best first by the caller).
    pub(crate) fn fill_l1_book<S: BookSchema>(
        &self,
        key: &Key<S>,
        side: BookSide,
        version: u64,
    ) -> InsertOutcome {
        let bytes = book::stored_bytes(&side);
        let entry = Arc::new(BookEntry {
            side: Arc::new(side),
            complete: true,
        });
        self.fill_l1(key, entry, version, bytes)
    }

    /// A stale book side (see [`l1_stale`](Self::l1_stale)), cut to `depth`.
    pub(crate) fn l1_stale_book(
        &self,
        key: &str,
        bound: Duration,
        depth: usize,
    ) -> Option<Read<BookSide>> {
        let r = self.l1_stale::<BookEntry>(key, bound)?;
        Some(Read {
            value: top(&r.value.side, depth),
            version: r.version,
            tier: r.tier,
            age: r.age,
            ttl_remaining: r.ttl_remaining,
        })
    }
}
