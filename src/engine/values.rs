//! Plain values: the `Values` layout (one envelope string in Redis), the L1-hit fast paths of `get` and `read`, and the batches `get_many` and `set_many`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::layout::{Layout, Promoted};
use super::writer::Payload;
use super::*;

/// The layout of plain values: one envelope string in Redis (version, written TTL,
/// MessagePack), the value itself in L1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Values;

impl<S: ValueSchema> Layout<S> for Values {
    type Entry = S::Value;
    type Payload = Vec<u8>;

    #[inline]
    fn whole() -> Self {
        Values
    }

    fn is_whole(self) -> bool {
        true
    }

    fn check(value: &S::Value, limit: usize) -> Result<()> {
        codec::encode(0, value, limit).map(|_| ())
    }

    #[inline]
    fn normalise(value: S::Value) -> S::Value {
        value
    }

    fn prepare(
        value: Arc<S::Value>,
        version: u64,
        ttl: Duration,
        limit: usize,
    ) -> Result<(Arc<S::Value>, usize, Vec<u8>)> {
        let bytes = codec::encode_with_ttl(version, Some(ttl), &*value, limit)?;
        Ok((value, bytes.len(), bytes))
    }

    fn entry(value: Arc<S::Value>) -> (Arc<S::Value>, usize) {
        // Weighed as Redis would hold it; a value that does not encode weighs nothing (it
        // could not have been written to either tier, and L1's entry count still bounds it).
        let bytes = codec::encode(0, &*value, usize::MAX).map_or(0, |b| b.len());
        (value, bytes)
    }

    #[inline]
    fn view(self, entry: Arc<S::Value>) -> Option<Arc<S::Value>> {
        Some(entry)
    }

    #[inline]
    fn view_stale(self, entry: Arc<S::Value>) -> Arc<S::Value> {
        entry
    }

    #[inline]
    fn cut(self, whole: Arc<S::Value>) -> Arc<S::Value> {
        whole
    }

    fn into_pending(payload: Vec<u8>) -> Payload {
        Payload::Value(payload)
    }

    fn read_pending(self, payload: &Payload) -> Option<Arc<S::Value>> {
        match payload {
            Payload::Value(bytes) => codec::decode_envelope::<S::Value>(bytes)
                .ok()
                .map(|env| Arc::new(env.value)),
            Payload::Book(_) => None,
        }
    }

    fn l2_write<'a>(
        l2: &'a L2Tier,
        key: &'a str,
        payload: &'a Vec<u8>,
        _version: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        l2.set_versioned(key, payload, ttl)
    }

    async fn l2_read(
        self,
        engine: &Engine,
        l2: &L2Tier,
        key: &Key<S>,
        t0: Instant,
    ) -> Result<Option<Read<S::Value>>> {
        let fetched = l2
            .get(key.as_str())
            .await
            .inspect_err(|e| engine.ks(key).error(e))?;
        match fetched {
            None => {
                engine.ks(key).l2_misses.inc();
                Ok(None)
            }
            Some(f) => Ok(engine.settle_fetched(l2, key, f, t0).await),
        }
    }
}

impl Engine {
    /// See [`Cache::get`](crate::Cache::get).
    #[inline]
    pub(crate) async fn get<S: ValueSchema>(&self, key: &Key<S>) -> Result<Option<Arc<S::Value>>> {
        // The value alone: no `Read` built (its age and remaining TTL cost two clock
        // subtractions a plain `get` does not need).
        if let Some(l1) = &self.l1
            && let Some(hit) = l1.get::<S::Value>(key.as_str())
        {
            self.ks(key).l1_hits.inc();
            return Ok(Some(hit.value));
        }
        // Boxed: the L2 path's future is large (deadline, retries, repair), and kept inline it
        // would make every L1 hit's future that large too — moved and initialised per call.
        // One allocation per L1 miss is noise next to a Redis round trip.
        Ok(Box::pin(self.read_below_l1(key, Values))
            .await?
            .map(|r| r.value))
    }

    /// See [`Cache::read`](crate::Cache::read).
    pub(crate) async fn read<S: ValueSchema>(
        &self,
        key: &Key<S>,
    ) -> Result<Option<Read<S::Value>>> {
        if let Some(l1) = &self.l1
            && let Some(hit) = self.l1_get(l1, key, Values)
        {
            return Ok(Some(hit));
        }
        // Boxed for the same reason as in `get`.
        Box::pin(self.read_below_l1(key, Values)).await
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
            Ok(read) => read,
            Err(bytes) => {
                if let Err(e) = l2.unlink_if_equals(key.as_str(), &bytes).await {
                    tracing::debug!(key = key.as_str(), error = %e, "removing an undecodable value failed");
                }
                None
            }
        }
    }

    /// Decodes a value fetched from L2 and [promotes](Self::promote) it; `Err` gives back
    /// bytes that did not decode (counted as a decode error and a miss).
    fn accept_fetched<S: ValueSchema>(
        &self,
        key: &Key<S>,
        f: Fetched,
        t0: Instant,
    ) -> std::result::Result<Option<Read<S::Value>>, Vec<u8>> {
        let env = match codec::decode_envelope::<S::Value>(&f.bytes) {
            Ok(env) => env,
            Err(reason) => {
                self.ks(key).decode_errors.inc();
                self.ks(key).l2_misses.inc();
                tracing::warn!(key = key.as_str(), %reason, "undecodable value treated as a miss");
                return Err(f.bytes);
            }
        };
        let value = Arc::new(env.value);
        // Capped at the TTL the value was written with: a read whose `PTTL` ran before another
        // client's write of a newer value then never keeps that value past its own TTL (see
        // `values::fetched_pttl_first`); without an interleaving the cap changes nothing.
        let written_ttl = env.ttl.unwrap_or(key.ttl());
        let remaining = f
            .remaining
            .map_or(key.ttl(), below_redis_precision)
            .min(written_ttl);
        let promoted = Promoted {
            entry: Arc::clone(&value),
            value,
            version: env.version,
            t0,
            ttl_remaining: f.remaining,
            remaining,
            age: written_ttl.saturating_sub(remaining),
            bytes: f.bytes.len(),
        };
        Ok(self.promote(key, Values, promoted))
    }

    /// See [`Cache::get_many`](crate::Cache::get_many).
    pub(crate) async fn get_many<S: ValueSchema>(
        &self,
        keys: &[Key<S>],
    ) -> Result<Vec<Option<Read<S::Value>>>> {
        let mut out: Vec<Option<Read<S::Value>>> = Vec::with_capacity(keys.len());
        let mut missing: Vec<usize> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = self.l1.as_ref().and_then(|l1| self.l1_get(l1, key, Values));
            match hit {
                Some(hit) => out.push(Some(hit)),
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
        // Keys with a write still queued for Redis are served from it (newer than Redis's);
        // keys the dirty log distrusts stay misses; the rest go to Redis.
        missing.retain(|&i| match self.queued(&keys[i], Values) {
            Some(read) => {
                out[i] = Some(read);
                false
            }
            None => true,
        });
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
                    own: true,
                };
                if s == Some(true) {
                    self.publish_written(key.shared(), version);
                }
                self.finish_write(key, local, s)
            })
            .collect())
    }
}
