//! L1-only operations: the raw fill under the version rule, and negative entries ("the source has no such key").

use std::sync::Arc;
use std::time::Duration;

use super::*;

impl Engine {
    /// Puts a value loaded from the source into L1 only (used while Redis is unavailable),
    /// under the version rule: refused when L1 holds a newer version or a floor above it.
    pub(super) fn fill_l1<S: KeySchema, V: Send + Sync + 'static>(
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
