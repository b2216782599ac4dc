//! Value reads and writes: L1 → L2 on the way in, the write policy and its failure handling on the way out, batches.

use std::sync::Arc;
use std::time::Duration;

use super::*;

impl Engine {
    /// See [`Cache::get`](crate::Cache::get).
    #[inline]
    pub(crate) async fn get<S: ValueSchema>(&self, key: &Key<S>) -> Result<Option<Arc<S::Value>>> {
        if let Some(l1) = &self.l1
            && let Some(hit) = l1.get::<S::Value>(key.as_str())
        {
            self.ks(key).l1_hits.inc();
            return Ok(Some(hit.value));
        }
        // Boxed: the L2 path's future is large (deadline, retries, repair), and kept inline it
        // would make every L1 hit's future that large too — moved and initialised per call.
        // One allocation per L1 miss is noise next to a Redis round trip.
        Ok(Box::pin(self.read_below_l1(key)).await?.map(|r| r.value))
    }

    /// See [`Cache::read`](crate::Cache::read).
    pub(crate) async fn read<S: ValueSchema>(
        &self,
        key: &Key<S>,
    ) -> Result<Option<Read<S::Value>>> {
        if let Some(l1) = &self.l1
            && let Some(hit) = l1.get::<S::Value>(key.as_str())
        {
            self.ks(key).l1_hits.inc();
            return Ok(Some(self.l1_read(hit)));
        }
        // Boxed for the same reason as in `get`.
        Box::pin(self.read_below_l1(key)).await
    }

    pub(super) async fn read_below_l1<S: ValueSchema>(
        &self,
        key: &Key<S>,
    ) -> Result<Option<Read<S::Value>>> {
        if self.l1.is_some() {
            self.ks(key).l1_misses.inc();
        }
        let Some(l2) = &self.l2 else {
            return Ok(None);
        };
        if self.dirty.distrusts(key.as_str(), S::KEY_PREFIX) {
            self.ks(key).l2_misses.inc();
            return Ok(None);
        }
        // Taken before the request: the server measures the remaining TTL later, so
        // `t0 + remaining` is never after the real expiry (L1 never outlives L2).
        let t0 = self.clock.now();
        let fetched = l2
            .get(key.as_str())
            .await
            .inspect_err(|e| self.ks(key).error(e))?;
        match fetched {
            None => {
                self.ks(key).l2_misses.inc();
                Ok(None)
            }
            Some(f) => Ok(self.settle_fetched(l2, key, f, t0).await),
        }
    }

    /// [`accept_fetched`](Self::accept_fetched), repairing undecodable bytes: they are deleted
    /// from Redis if nobody replaced them meanwhile, so the next fill can land (a garbage
    /// header version would otherwise win every compare-and-set and pin the key).
    pub(super) async fn settle_fetched<S: ValueSchema>(
        &self,
        l2: &L2Tier,
        key: &Key<S>,
        f: Fetched,
        t0: Instant,
    ) -> Option<Read<S::Value>> {
        match self.accept_fetched(key, f, t0) {
            Fetch::Hit(r) => Some(r),
            Fetch::Miss => None,
            Fetch::Undecodable(bytes) => {
                if let Err(e) = l2.unlink_if_equals(key.as_str(), &bytes).await {
                    tracing::debug!(key = key.as_str(), error = %e, "removing an undecodable value failed");
                }
                None
            }
        }
    }

    /// Decodes a value fetched from L2 and promotes it to L1 with the remaining TTL. A value
    /// older than what L1 holds (a version floor, or a newer value written meanwhile) is not
    /// served: the fresher L1 value is, or the read misses.
    pub(super) fn accept_fetched<S: ValueSchema>(
        &self,
        key: &Key<S>,
        f: Fetched,
        t0: Instant,
    ) -> Fetch<S::Value> {
        let env = match codec::decode_envelope::<S::Value>(&f.bytes) {
            Ok(env) => env,
            Err(reason) => {
                self.ks(key).decode_errors.inc();
                self.ks(key).l2_misses.inc();
                tracing::warn!(key = key.as_str(), %reason, "undecodable value treated as a miss");
                return Fetch::Undecodable(f.bytes);
            }
        };
        let value = Arc::new(env.value);
        let version = env.version;
        let remaining = f.remaining.unwrap_or(key.ttl());
        let age = env.ttl.unwrap_or(key.ttl()).saturating_sub(remaining);
        if let Some(l1) = &self.l1 {
            let written = t0.checked_sub(age).unwrap_or(t0);
            let outcome = l1.insert_versioned(
                key.shared(),
                Arc::clone(&value),
                version,
                deadline_after(t0, remaining),
                written,
                f.bytes.len(),
            );
            if outcome == InsertOutcome::HigherVersionHeld {
                return match l1.get::<S::Value>(key.as_str()) {
                    Some(hit) if hit.version >= version => {
                        self.ks(key).l1_hits.inc();
                        Fetch::Hit(self.l1_read(hit))
                    }
                    _ => {
                        self.ks(key).l2_misses.inc();
                        Fetch::Miss
                    }
                };
            }
        }
        self.ks(key).l2_hits.inc();
        Fetch::Hit(Read {
            value,
            version,
            tier: Tier::L2,
            age,
            ttl_remaining: f.remaining,
        })
    }

    /// [`set_with`](Self::set_with), with what to do when the Redis write fails.
    pub(crate) async fn set_with_policy<S: ValueSchema>(
        &self,
        key: &Key<S>,
        value: Arc<S::Value>,
        version: u64,
        opts: SetOptions,
        on_failure: OnL2Failure,
    ) -> Result<WriteOutcome> {
        let ttl = write_ttl(key, opts).inspect_err(|e| self.ks(key).error(e))?;
        let bytes = codec::encode_with_ttl(
            version,
            Some(ttl),
            &*value,
            self.config.max_value_bytes.get(),
        )
        .inspect_err(|e| self.ks(key).error(e))?;
        let t0 = self.clock.now();
        let local = LocalWrite {
            value,
            version,
            t0,
            ttl,
            bytes: bytes.len(),
        };
        let l2_stored = match &self.l2 {
            None => None,
            Some(l2) => match l2.set_versioned(key.as_str(), &bytes, ttl).await {
                Ok(stored) => Some(stored),
                Err(e) => return self.after_failed_write(key, e, on_failure, local),
            },
        };
        Ok(self.finish_write(key, local, l2_stored))
    }

    /// Applies a write's outcome to L1 and the counters.
    pub(super) fn finish_write<S: KeySchema, V: Send + Sync + 'static>(
        &self,
        key: &Key<S>,
        local: LocalWrite<V>,
        l2_stored: Option<bool>,
    ) -> WriteOutcome {
        let applied = match (l2_stored, &self.l1) {
            // L2 refused: a higher version is there; drop an older L1 copy so reads fetch it.
            (Some(false), Some(l1)) => {
                l1.remove_older_than(key.as_str(), local.version);
                false
            }
            (Some(false), None) => false,
            (Some(true), Some(l1)) => {
                local.insert_into(l1, key);
                true
            }
            (Some(true), None) => true,
            (None, Some(l1)) => local.insert_into(l1, key) == InsertOutcome::Stored,
            (None, None) => false,
        };
        if applied {
            self.ks(key).writes.inc();
            WriteOutcome::Applied
        } else {
            self.ks(key).writes_superseded.inc();
            WriteOutcome::Superseded
        }
    }

    /// After an L2 write failed we cannot know what Redis holds. The error is counted; then,
    /// by policy: a fill drops only an older L1 copy; a write-through floors L1 at its version;
    /// a cache-only write, when Redis was unhealthy ([`is_l2_outage`]), is recorded dirty and
    /// kept in L1 ([`WriteOutcome::LocalOnly`]). No policy ever removes a newer L1 entry
    /// (DESIGN §4 rule 9).
    pub(super) fn after_failed_write<S: KeySchema, V: Send + Sync + 'static>(
        &self,
        key: &Key<S>,
        e: Error,
        on_failure: OnL2Failure,
        local: LocalWrite<V>,
    ) -> Result<WriteOutcome> {
        self.ks(key).error(&e);
        let version = local.version;
        match on_failure {
            OnL2Failure::Floor => {
                self.floor(key, version);
                return Err(e);
            }
            OnL2Failure::Fill => {
                if let Some(l1) = &self.l1 {
                    l1.remove_older_than(key.as_str(), version);
                }
                return Err(e);
            }
            OnL2Failure::KeepLocal if !is_l2_outage(&e) => {
                // Redis is healthy and refused the key (another type): nothing local may
                // claim this version, but a newer L1 value stays.
                if let Some(l1) = &self.l1 {
                    l1.remove_older_than(key.as_str(), version.saturating_add(1));
                }
                return Err(e);
            }
            OnL2Failure::KeepLocal => {}
        }
        // Recorded before the L1 insert: from here on, a reader that misses L1 (the entry
        // evicted for room, say) gets a miss, never Redis's older copy.
        self.record_dirty(key);
        let Some(l1) = &self.l1 else {
            return Err(e);
        };
        match local.insert_into(l1, key) {
            InsertOutcome::Stored => {
                self.ks(key).writes_local_only.inc();
                Ok(WriteOutcome::LocalOnly)
            }
            InsertOutcome::HigherVersionHeld => {
                self.ks(key).writes_superseded.inc();
                Ok(WriteOutcome::Superseded)
            }
            InsertOutcome::NotStored => {
                // The value is nowhere we can vouch for: no older copy may stay in its place.
                l1.remove_older_than(key.as_str(), version);
                Err(e)
            }
        }
    }

    /// See [`Cache::get_many`](crate::Cache::get_many).
    pub(crate) async fn get_many<S: ValueSchema>(
        &self,
        keys: &[Key<S>],
    ) -> Result<Vec<Option<Read<S::Value>>>> {
        let mut out: Vec<Option<Read<S::Value>>> = Vec::with_capacity(keys.len());
        let mut missing: Vec<usize> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = self
                .l1
                .as_ref()
                .and_then(|l1| l1.get::<S::Value>(key.as_str()));
            match hit {
                Some(hit) => {
                    self.ks(key).l1_hits.inc();
                    out.push(Some(self.l1_read(hit)));
                }
                None => {
                    if self.l1.is_some() {
                        self.ks(key).l1_misses.inc();
                    }
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        let Some(l2) = &self.l2 else {
            return Ok(out);
        };
        if missing.is_empty() {
            return Ok(out);
        }
        // Keys the dirty log distrusts stay misses; the rest go to Redis.
        missing.retain(|&i| {
            let distrusted = self.dirty.distrusts(keys[i].as_str(), S::KEY_PREFIX);
            if distrusted {
                self.ks(&keys[i]).l2_misses.inc();
            }
            !distrusted
        });
        if missing.is_empty() {
            return Ok(out);
        }
        let names: Vec<&str> = missing.iter().map(|&i| keys[i].as_str()).collect();
        let t0 = self.clock.now();
        let fetched = l2.get_many(&names).await.inspect_err(|e| {
            for &i in &missing {
                self.ks(&keys[i]).error(e);
            }
        })?;
        for (&i, f) in missing.iter().zip(fetched) {
            let key = &keys[i];
            out[i] = match f {
                None => {
                    self.ks(key).l2_misses.inc();
                    None
                }
                Some(f) => self.settle_fetched(l2, key, f, t0).await,
            };
        }
        Ok(out)
    }

    /// See [`Cache::set_many`](crate::Cache::set_many).
    pub(crate) async fn set_many<'k, S: ValueSchema>(
        &self,
        items: impl IntoIterator<Item = (&'k Key<S>, S::Value, u64)>,
    ) -> Result<Vec<WriteOutcome>> {
        let limit = self.config.max_value_bytes.get();
        let mut prepared = Vec::new();
        for (key, value, version) in items {
            let ttl =
                write_ttl(key, SetOptions::default()).inspect_err(|e| self.ks(key).error(e))?;
            let bytes = codec::encode_with_ttl(version, Some(ttl), &value, limit)
                .inspect_err(|e| self.ks(key).error(e))?;
            prepared.push((key, Arc::new(value), version, bytes, ttl));
        }
        let t0 = self.clock.now();
        let stored: Vec<Option<bool>> = match &self.l2 {
            None => vec![None; prepared.len()],
            Some(l2) => {
                let batch: Vec<(&str, Vec<u8>, Duration)> = prepared
                    .iter()
                    .map(|(k, _, _, b, ttl)| (k.as_str(), b.clone(), *ttl))
                    .collect();
                match l2.set_many(&batch).await {
                    Ok(s) => s.into_iter().map(Some).collect(),
                    Err(e) => {
                        let outage = is_l2_outage(&e);
                        for (key, _, version, ..) in &prepared {
                            if outage {
                                self.record_dirty(*key);
                            }
                            // An older L1 copy goes; a newer one stays (rule 9).
                            if let Some(l1) = &self.l1 {
                                l1.remove_older_than(key.as_str(), version.saturating_add(1));
                            }
                            self.ks(*key).error(&e);
                        }
                        return Err(e);
                    }
                }
            }
        };
        Ok(prepared
            .into_iter()
            .zip(stored)
            .map(|((key, value, version, bytes, ttl), s)| {
                let local = LocalWrite {
                    value,
                    version,
                    t0,
                    ttl,
                    bytes: bytes.len(),
                };
                self.finish_write(key, local, s)
            })
            .collect())
    }

    /// Cache-aside's re-check inside a single flight: has a flight that just finished filled
    /// the key? That flight filled L1 (in this process) as well as Redis, so with an L1 only
    /// L1 is asked — no second Redis round trip before the source; without one, Redis is.
    pub(crate) async fn recheck<S: ValueSchema>(
        &self,
        key: &Key<S>,
    ) -> Result<Option<Read<S::Value>>> {
        match &self.l1 {
            Some(l1) => Ok(l1.get::<S::Value>(key.as_str()).map(|hit| {
                self.ks(key).l1_hits.inc();
                self.l1_read(hit)
            })),
            None => self.read(key).await,
        }
    }
}
