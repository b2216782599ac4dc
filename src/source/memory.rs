//! `MemorySource`: an in-process source of record with database semantics (versions, copies, a row bound) and fault injection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::{Load, Loaded, Source, Store};
use crate::codec;
use crate::key::{Key, KeySchema};

/// Why a [`MemorySource`] operation failed.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum MemorySourceError {
    /// The row bound is reached; the write was refused.
    #[error("memory source is full ({0} rows)")]
    Full(usize),
    /// A stored value did not decode as the requested type.
    #[error("memory source: stored value for {0} does not decode: {1}")]
    Decode(String, String),
    /// The value could not be encoded.
    #[error("memory source: {0}")]
    Encode(String),
    /// A failure injected by a test ([`MemorySource::fail_loads`], [`MemorySource::fail_writes`]).
    #[error("memory source: injected failure")]
    Injected,
}

/// One stored row: its version and the value, encoded so every load returns a fresh copy
/// (as a database would) and the source holds no references into the cache.
#[derive(Debug)]
struct Row {
    version: u64,
    bytes: Vec<u8>,
}

/// An in-process source of record: the embedded default.
///
/// Same semantics as [`PostgresSource`](super::PostgresSource): every write gets a version
/// greater than any before it, loads return copies, and the number of rows is bounded (a write
/// of a new key beyond the bound is refused). For tests it can inject failures and latency.
#[derive(Debug)]
pub struct MemorySource {
    // A std Mutex: held for a map operation only, never across an await.
    rows: Mutex<HashMap<(&'static str, Box<str>), Row>>,
    /// Global version sequence: versions increase across keys and deletions.
    next_version: AtomicU64,
    max_rows: usize,
    fail_loads: AtomicBool,
    fail_writes: AtomicBool,
    /// Added latency per operation, in microseconds (0 = none).
    latency_us: AtomicU64,
}

impl Default for MemorySource {
    fn default() -> Self {
        MemorySource::new(1_000_000)
    }
}

impl MemorySource {
    /// An empty source holding at most `max_rows` keys.
    pub fn new(max_rows: usize) -> Self {
        MemorySource {
            rows: Mutex::new(HashMap::new()),
            next_version: AtomicU64::new(1),
            max_rows,
            fail_loads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            latency_us: AtomicU64::new(0),
        }
    }

    /// Makes every load fail (`true`) or work again (`false`).
    pub fn fail_loads(&self, fail: bool) {
        self.fail_loads.store(fail, Ordering::Relaxed);
    }

    /// Makes every write fail (`true`) or work again (`false`).
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::Relaxed);
    }

    /// Adds `latency` to every load and write (simulating a database round trip).
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.store(us, Ordering::Relaxed);
    }

    /// Rows stored.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no rows are stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes a key; returns whether it existed.
    pub fn remove<S: KeySchema>(&self, key: &Key<S>) -> bool {
        self.lock()
            .remove(&(S::KIND, Box::from(key.id())))
            .is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(&'static str, Box<str>), Row>> {
        // A panic while holding this lock cannot leave a row half-written (inserts are
        // single map operations), so a poisoned lock is still consistent.
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn delay(&self) {
        let us = self.latency_us.load(Ordering::Relaxed);
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }

    fn load_now<S: KeySchema>(
        &self,
        key: &Key<S>,
    ) -> Result<Option<Loaded<S::Value>>, MemorySourceError> {
        if self.fail_loads.load(Ordering::Relaxed) {
            return Err(MemorySourceError::Injected);
        }
        let rows = self.lock();
        let Some(row) = rows.get(&(S::KIND, Box::from(key.id()))) else {
            return Ok(None);
        };
        let (_, value) = codec::decode::<S::Value>(&row.bytes)
            .map_err(|e| MemorySourceError::Decode(key.as_str().to_owned(), e))?;
        Ok(Some(Loaded::new(value, row.version)))
    }
}

impl Source for MemorySource {
    type Error = MemorySourceError;
}

impl<S: KeySchema> Load<S> for MemorySource {
    async fn load(&self, key: &Key<S>) -> Result<Option<Loaded<S::Value>>, MemorySourceError> {
        self.delay().await;
        self.load_now(key)
    }

    async fn load_many(
        &self,
        keys: &[Key<S>],
    ) -> Result<Vec<Option<Loaded<S::Value>>>, MemorySourceError> {
        self.delay().await;
        keys.iter().map(|k| self.load_now(k)).collect()
    }
}

impl<S: KeySchema> Store<S> for MemorySource {
    async fn write(&self, key: &Key<S>, value: &S::Value) -> Result<u64, MemorySourceError> {
        self.delay().await;
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(MemorySourceError::Injected);
        }
        let bytes = codec::encode(0, value, usize::MAX)
            .map_err(|e| MemorySourceError::Encode(e.to_string()))?;
        let mut rows = self.lock();
        let id = (S::KIND, Box::from(key.id()));
        if !rows.contains_key(&id) && rows.len() >= self.max_rows {
            return Err(MemorySourceError::Full(self.max_rows));
        }
        // Taken under the lock, so versions follow the order writes are applied in.
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        rows.insert(id, Row { version, bytes });
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cache, Position};

    fn pos(qty: f64) -> Position {
        Position {
            qty,
            avg_price: 1.0,
            realized_pnl: 0.0,
            seq: 1,
        }
    }

    #[tokio::test]
    async fn versions_increase_and_loads_are_copies() {
        let cache = Cache::builder().build().unwrap();
        let src = MemorySource::new(10);
        let a = cache.key::<Position>("A").unwrap();
        let b = cache.key::<Position>("B").unwrap();
        assert_eq!(src.load(&a).await.unwrap(), None);
        let v1 = src.write(&a, &pos(1.0)).await.unwrap();
        let v2 = src.write(&b, &pos(2.0)).await.unwrap();
        let v3 = src.write(&a, &pos(3.0)).await.unwrap();
        assert!(v1 < v2 && v2 < v3);
        let got = src.load(&a).await.unwrap().unwrap();
        assert_eq!((got.value.qty, got.version), (3.0, v3));
        let many = src
            .load_many(&[a.clone(), cache.key("C").unwrap()])
            .await
            .unwrap();
        assert_eq!(many.len(), 2);
        assert!(many[1].is_none());
    }

    #[tokio::test]
    async fn the_row_bound_and_injected_failures_are_errors() {
        let cache = Cache::builder().build().unwrap();
        let src = MemorySource::new(1);
        let a = cache.key::<Position>("A").unwrap();
        let b = cache.key::<Position>("B").unwrap();
        src.write(&a, &pos(1.0)).await.unwrap();
        assert!(matches!(
            src.write(&b, &pos(1.0)).await,
            Err(MemorySourceError::Full(1))
        ));
        src.write(&a, &pos(2.0)).await.unwrap(); // an existing key still updates
        src.fail_writes(true);
        assert!(src.write(&a, &pos(3.0)).await.is_err());
        src.fail_loads(true);
        assert!(src.load(&a).await.is_err());
        src.fail_loads(false);
        assert_eq!(src.load(&a).await.unwrap().unwrap().value.qty, 2.0);
    }
}
