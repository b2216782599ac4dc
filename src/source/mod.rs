//! The source of record: the `Source` trait (its error), `Load`/`Store` per kind, and a load-counting wrapper.
//!
//! A source holds the authoritative value of every key and a version per key that increases on
//! every write, in commit order; the cache stores values with that version, so concurrent
//! writers can never leave an older value cached. Two implementations ship:
//! [`PostgresSource`] (tokio-postgres, one table per kind; the `postgres` feature, on by
//! default) and [`MemorySource`] (in-process, the embedded default, with the same semantics
//! plus fault injection for tests).

mod memory;
#[cfg(feature = "postgres")]
mod pg_tls;
#[cfg(feature = "postgres")]
mod postgres;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use memory::{MemorySource, MemorySourceError};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresSource, PostgresSourceError};

use crate::key::{Key, KeySchema};
use crate::schema::{BookAsk, BookBid, Order, Position, Price, Risk, StrategyState};

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

/// What [`Load::load_many`] returns: one entry per key, in order.
pub type LoadedMany<V, E> = Result<Vec<Option<Loaded<V>>>, E>;

/// A source of record as a whole: what its operations fail with.
///
/// What it can load and write is said kind by kind, with [`Load<S>`] and [`Store<S>`]: a
/// source may serve every kind through one generic implementation (as [`MemorySource`] and
/// [`PostgresSource`] do, through the kind name), or only the kinds it has typed tables for,
/// with no serde and no kind string. [`SourceReader`] and [`SourceWriter`] name a source of
/// every built-in kind.
///
/// Errors keep the source's own type (`Self::Error`); the patterns wrap them in
/// [`LoadError`](crate::LoadError) and [`WriteError`](crate::WriteError) without erasing them.
///
/// A source of one typed table, used through [`CacheAside`](crate::CacheAside) and
/// [`WriteThrough`](crate::WriteThrough):
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
///
/// use mdcache::source::{Load, Loaded, Source, Store};
/// use mdcache::{Cache, CacheAside, Key, Price, Tier, WriteThrough};
///
/// /// Prices only, typed: no serde, no kind string.
/// #[derive(Default)]
/// struct Prices {
///     rows: Mutex<HashMap<String, (Price, u64)>>,
/// }
///
/// impl Source for Prices {
///     type Error = std::convert::Infallible;
/// }
///
/// impl Load<Price> for Prices {
///     async fn load(&self, key: &Key<Price>) -> Result<Option<Loaded<Price>>, Self::Error> {
///         let rows = self.rows.lock().unwrap();
///         Ok(rows.get(key.id()).map(|(p, v)| Loaded::new(p.clone(), *v)))
///     }
/// }
///
/// impl Store<Price> for Prices {
///     async fn write(&self, key: &Key<Price>, value: &Price) -> Result<u64, Self::Error> {
///         let mut rows = self.rows.lock().unwrap();
///         let version = rows.get(key.id()).map_or(1, |(_, v)| v + 1);
///         rows.insert(key.id().to_owned(), (value.clone(), version));
///         Ok(version)
///     }
/// }
///
/// let cache = Cache::builder().build()?;
/// let db = Arc::new(Prices::default());
/// let key = cache.key::<Price>("AAPL")?;
/// let px = Price { bid: 1.0, ask: 1.1, bid_size: 5.0, ask_size: 5.0, last: 1.05, seq: 1, exchange_ts_ns: 0 };
///
/// let ack = WriteThrough::new(cache.clone(), Arc::clone(&db)).write(&key, px).await?;
/// assert_eq!(db.rows.lock().unwrap()["AAPL"].1, ack.version);
///
/// cache.delete(&key).await?;
/// let aside = CacheAside::builder(cache, db).build()?;
/// let read = aside.read(&key).await?.unwrap();
/// assert_eq!((read.tier, read.version), (Tier::Source, ack.version));
/// # Ok(()) }
/// ```
pub trait Source: Send + Sync + 'static {
    /// The source's own error type.
    type Error: std::error::Error + Send + Sync + 'static;
}

/// Reads values of the kind `S` from the source of record.
pub trait Load<S: KeySchema>: Source {
    /// The value of one key, or `None` when the source has no such key.
    fn load(
        &self,
        key: &Key<S>,
    ) -> impl Future<Output = Result<Option<Loaded<S::Value>>, Self::Error>> + Send;

    /// The values of many keys, in order. The default loads one at a time; implementations
    /// override it with one round trip.
    fn load_many(
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

/// Writes values of the kind `S` to the source of record.
pub trait Store<S: KeySchema>: Load<S> {
    /// Stores `value` at `key` and returns its new version, greater than every version the
    /// key had before (in commit order).
    fn write(
        &self,
        key: &Key<S>,
        value: &S::Value,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;
}

/// A source of every built-in kind, for reading: [`Load`] of each of them. Implemented for
/// every such source; code that reads all the built-in kinds takes `Src: SourceReader`
/// instead of seven bounds.
pub trait SourceReader:
    Load<Price>
    + Load<Position>
    + Load<BookBid>
    + Load<BookAsk>
    + Load<Risk>
    + Load<Order>
    + Load<StrategyState>
{
}

impl<T> SourceReader for T where
    T: Load<Price>
        + Load<Position>
        + Load<BookBid>
        + Load<BookAsk>
        + Load<Risk>
        + Load<Order>
        + Load<StrategyState>
{
}

/// A source of every built-in kind, for reading and writing: [`Store`] of each of them.
/// Implemented for every such source; code that writes all the built-in kinds takes
/// `Src: SourceWriter` instead of seven bounds.
pub trait SourceWriter:
    SourceReader
    + Store<Price>
    + Store<Position>
    + Store<BookBid>
    + Store<BookAsk>
    + Store<Risk>
    + Store<Order>
    + Store<StrategyState>
{
}

impl<T> SourceWriter for T where
    T: Store<Price>
        + Store<Position>
        + Store<BookBid>
        + Store<BookAsk>
        + Store<Risk>
        + Store<Order>
        + Store<StrategyState>
{
}

/// Wraps a source and counts its loads, for tests and reports ("how many times did we hit
/// the database?").
#[derive(Debug, Clone)]
pub struct Counted<Src> {
    inner: Arc<Src>,
    loads: Arc<AtomicU64>,
    load_calls: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

impl<Src> Counted<Src> {
    /// Wraps `inner`.
    pub fn new(inner: Src) -> Self {
        Counted {
            inner: Arc::new(inner),
            loads: Arc::default(),
            load_calls: Arc::default(),
            writes: Arc::default(),
        }
    }

    /// Keys loaded so far (a `load_many` of n keys counts n).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Calls of `load` and `load_many` so far: the queries the source was asked.
    pub fn load_calls(&self) -> u64 {
        self.load_calls.load(Ordering::Relaxed)
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
}

impl<S: KeySchema, Src: Load<S>> Load<S> for Counted<Src> {
    async fn load(&self, key: &Key<S>) -> Result<Option<Loaded<S::Value>>, Self::Error> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.load_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.load(key).await
    }

    async fn load_many(&self, keys: &[Key<S>]) -> LoadedMany<S::Value, Self::Error> {
        self.loads.fetch_add(keys.len() as u64, Ordering::Relaxed);
        self.load_calls.fetch_add(1, Ordering::Relaxed);
        self.inner.load_many(keys).await
    }
}

impl<S: KeySchema, Src: Store<S>> Store<S> for Counted<Src> {
    async fn write(&self, key: &Key<S>, value: &S::Value) -> Result<u64, Self::Error> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write(key, value).await
    }
}
