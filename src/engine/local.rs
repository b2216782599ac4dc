//! L1-only operations for the patterns: fills from the source, stale reads (DESIGN §4 rule 7), negative entries.

use std::sync::Arc;
use std::time::Duration;

use super::*;

impl Engine {
    /// Puts a value loaded from the source into L1 only (used while Redis is unavailable),
    /// under the version rule: refused when L1 holds a newer version or a floor above it.
    pub(crate) fn fill_l1<S: KeySchema, V: Send + Sync + 'static>(
        &self,
        key: &Key<S>,
        value: Arc<V>,
        version: u64,
        bytes: usize,
    ) -> InsertOutcome {
        match &self.l1 {
            Some(l1) => {
                let now = self.clock.now();
                let ttl = Duration::from_millis(ttl_ms(key.ttl()));
                l1.insert_versioned(
                    key.shared(),
                    value,
                    version,
                    deadline_after(now, ttl),
                    now,
                    bytes,
                )
            }
            None => InsertOutcome::NotStored,
        }
    }

    /// A value past its deadline by at most `bound`, for the fail-safe read of DESIGN §4
    /// rule 7 (always reported as [`Tier::Stale`]).
    pub(crate) fn l1_stale<V: Send + Sync + 'static>(
        &self,
        key: &str,
        bound: Duration,
    ) -> Option<Read<V>> {
        let l1 = self.l1.as_ref()?;
        let hit = l1.get_stale::<V>(key, bound)?;
        let now = hit.now;
        Some(Read {
            value: hit.value,
            version: hit.version,
            tier: Tier::Stale,
            age: now.saturating_duration_since(hit.stored_at),
            ttl_remaining: Some(Duration::ZERO),
        })
    }

    /// True when L1 remembers that the source has no value at `key` (negative caching).
    pub(crate) fn negative_hit(&self, key: &str) -> bool {
        self.l1
            .as_ref()
            .is_some_and(|l1| l1.get::<NotFound>(key).is_some())
    }

    /// Remembers in L1, for `ttl`, that the source has no value at `key`. Stored with version
    /// 0, so any real write replaces it. A no-op without an L1.
    pub(crate) fn put_negative(&self, key: &Arc<str>, ttl: Duration) {
        if let Some(l1) = &self.l1 {
            let now = self.clock.now();
            l1.insert(key, Arc::new(NotFound), 0, deadline_after(now, ttl), now, 0);
        }
    }
}
