//! The source of record: the `Source` (load) and `SourceWriter` (write) traits, and a load-counting wrapper.
//!
//! A source holds the authoritative value of every key and a version per key that increases on
//! every write, in commit order; the cache stores values with that version, so concurrent
//! writers can never leave an older value cached. Two implementations ship:
//! [`PostgresSource`] (tokio-postgres, one table per kind; the `postgres` feature, on by
//! default) and [`MemorySource`] (in-process, the embedded default, with the same semantics
//! plus fault injection for tests).

mod memory;
#[cfg(feature = "postgres")]
mod postgres;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use memory::{MemorySource, MemorySourceError};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresSource, PostgresSourceError};

use crate::key::{Key, KeySchema};

/// A value loaded from the source, with the version the source gave it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<V> {
    /// The value.
    pub value: V,
    /// Its version: increases on every write of the key.
    pub version: u64,
}

impl<V> Loaded<V> {
    /// A loaded value.
    pub fn new(value: V, version: u64) -> Self {
        Loaded { value, version }
    }
}

/// What [`Source::load_many`] returns: one entry per key, in order.
pub type LoadedMany<V, E> = Result<Vec<Option<Loaded<V>>>, E>;

/// Reads values from the source of record.
///
/// Errors keep the source's own type (`Self::Error`); the patterns wrap them in
/// [`LoadError`](crate::LoadError) without erasing them.
pub trait Source: Send + Sync + 'static {
    /// The source's own error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The value of one key, or `None` when the source has no such key.
    fn load<S: KeySchema>(
        &self,
        key: &Key<S>,
    ) -> impl Future<Output = Result<Option<Loaded<S::Value>>, Self::Error>> + Send;

    /// The values of many keys of one kind, in order. The default loads one at a time;
    /// implementations override it with one round trip.
    fn load_many<S: KeySchema>(
        &self,
        keys: &[Key<S>],
    ) -> impl Future<Output = LoadedMany<S::Value, Self::Error>> + Send {
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                out.push(self.load(k).await?);
            }
            Ok(out)
        }
    }
}

/// Writes values to the source of record.
pub trait SourceWriter: Source {
    /// Stores `value` at `key` and returns its new version, greater than every version the
    /// key had before (in commit order).
    fn write<S: KeySchema>(
        &self,
        key: &Key<S>,
        value: &S::Value,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;
}

/// Wraps a source and counts its loads, for tests and reports ("how many times did we hit
/// the database?").
#[derive(Debug, Clone)]
pub struct Counted<Src> {
    inner: Arc<Src>,
    loads: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

impl<Src> Counted<Src> {
    /// Wraps `inner`.
    pub fn new(inner: Src) -> Self {
        Counted {
            inner: Arc::new(inner),
            loads: Arc::default(),
            writes: Arc::default(),
        }
    }

    /// Keys loaded so far (a `load_many` of n keys counts n).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Writes so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// The wrapped source.
    pub fn inner(&self) -> &Src {
        &self.inner
    }
}

impl<Src: Source> Source for Counted<Src> {
    type Error = Src::Error;

    async fn load<S: KeySchema>(
        &self,
        key: &Key<S>,
    ) -> Result<Option<Loaded<S::Value>>, Self::Error> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.inner.load(key).await
    }

    async fn load_many<S: KeySchema>(
        &self,
        keys: &[Key<S>],
    ) -> Result<Vec<Option<Loaded<S::Value>>>, Self::Error> {
        self.loads.fetch_add(keys.len() as u64, Ordering::Relaxed);
        self.inner.load_many(keys).await
    }
}

impl<Src: SourceWriter> SourceWriter for Counted<Src> {
    async fn write<S: KeySchema>(
        &self,
        key: &Key<S>,
        value: &S::Value,
    ) -> Result<u64, Self::Error> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write(key, value).await
    }
}
