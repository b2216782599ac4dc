//! A source of record for one kind only — typed rows, no serde, no kind string — used through cache-aside and write-through.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fixtures::price;
use mdcache::{
    Cache, CacheAside, Key, Load, LoadError, Loaded, Price, Source, Store, Tier, WriteError,
    WriteThrough,
};

/// What [`Prices`] fails with: the user's own type, which the patterns must hand back as is.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the prices table is down")]
struct PricesDown;

/// A database with one typed table, prices by symbol. It implements `Load<Price>` and
/// `Store<Price>` and nothing else: the cache never asks it for another kind.
#[derive(Debug, Default)]
struct Prices {
    // A std Mutex: held for one map operation, never across an await.
    rows: Mutex<HashMap<String, (Price, u64)>>,
    /// The table's version sequence: every write gets the next one, across symbols.
    last_version: AtomicU64,
    loads: AtomicU64,
    writes: AtomicU64,
    down: AtomicBool,
}

impl Prices {
    /// Puts a row straight into the table (another writer of the database).
    fn insert(&self, symbol: &str, value: Price, version: u64) {
        self.rows
            .lock()
            .unwrap()
            .insert(symbol.to_owned(), (value, version));
    }

    fn row(&self, symbol: &str) -> Option<(Price, u64)> {
        self.rows.lock().unwrap().get(symbol).cloned()
    }

    fn check_up(&self) -> Result<(), PricesDown> {
        match self.down.load(Ordering::Relaxed) {
            true => Err(PricesDown),
            false => Ok(()),
        }
    }
}

impl Source for Prices {
    type Error = PricesDown;
}

impl Load<Price> for Prices {
    async fn load(&self, key: &Key<Price>) -> Result<Option<Loaded<Price>>, PricesDown> {
        self.check_up()?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .row(key.id())
            .map(|(value, version)| Loaded::new(value, version)))
    }
}

impl Store<Price> for Prices {
    async fn write(&self, key: &Key<Price>, value: &Price) -> Result<u64, PricesDown> {
        self.check_up()?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut rows = self.rows.lock().unwrap();
        // Taken under the lock, so versions follow the order writes are applied in.
        let version = self.last_version.fetch_add(1, Ordering::Relaxed) + 1;
        rows.insert(key.id().to_owned(), (value.clone(), version));
        Ok(version)
    }
}

#[tokio::test]
async fn a_miss_loads_from_the_typed_table_with_its_version() {
    let cache = Cache::builder().build().unwrap();
    let db = Arc::new(Prices::default());
    db.insert("AAPL", price(7), 41);
    let aside = CacheAside::builder(cache.clone(), Arc::clone(&db))
        .build()
        .unwrap();
    let key = cache.key::<Price>("AAPL").unwrap();

    let first = aside.read(&key).await.unwrap().expect("in the table");
    assert_eq!(
        (first.tier, first.version, first.value.seq),
        (Tier::Source, 41, 7)
    );
    assert_eq!(db.loads.load(Ordering::Relaxed), 1);

    // The load filled the cache with the table's version: the next read does not load.
    let again = aside.read(&key).await.unwrap().unwrap();
    assert_eq!((again.tier, again.version), (Tier::L1, 41));
    assert_eq!(cache.read(&key).await.unwrap().unwrap().version, 41);
    assert_eq!(db.loads.load(Ordering::Relaxed), 1);
    assert_eq!(cache.stats().total.source_loads, 1);

    // A symbol the table does not have is "not found", not an error.
    let absent = cache.key::<Price>("MSFT").unwrap();
    assert!(aside.get(&absent).await.unwrap().is_none());
    assert_eq!(db.loads.load(Ordering::Relaxed), 2);

    // The default `load_many` loads one key at a time, in order.
    let many = db.load_many(&[absent, key]).await.unwrap();
    assert_eq!(many, vec![None, Some(Loaded::new(price(7), 41))]);
}

#[tokio::test]
async fn a_write_through_goes_to_the_typed_table_first() {
    let cache = Cache::builder().build().unwrap();
    let db = Arc::new(Prices::default());
    let writer = WriteThrough::new(cache.clone(), Arc::clone(&db));
    let aside = CacheAside::builder(cache.clone(), Arc::clone(&db))
        .build()
        .unwrap();
    let key = cache.key::<Price>("ES").unwrap();

    let v1 = writer.write(&key, price(1)).await.unwrap().version;
    let v2 = writer.write(&key, price(2)).await.unwrap().version;
    assert!(v1 < v2, "the table's versions increase: {v1} then {v2}");
    assert_eq!(db.writes.load(Ordering::Relaxed), 2);
    assert_eq!(
        db.row("ES"),
        Some((price(2), v2)),
        "the table holds the write"
    );

    // The cache holds the value under the table's version, so reads do not load.
    let r = aside.read(&key).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version, r.value.seq), (Tier::L1, v2, 2));
    assert_eq!(db.loads.load(Ordering::Relaxed), 0);

    // With the cache emptied, the value comes back from the table, same version.
    cache.clear_l1();
    let r = aside.read(&key).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version, r.value.seq), (Tier::Source, v2, 2));
    assert_eq!(db.loads.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_tables_own_error_comes_back_and_a_refused_write_is_not_cached() {
    let cache = Cache::builder().build().unwrap();
    let db = Arc::new(Prices::default());
    let writer = WriteThrough::new(cache.clone(), Arc::clone(&db));
    let aside = CacheAside::builder(cache.clone(), Arc::clone(&db))
        .build()
        .unwrap();
    let key = cache.key::<Price>("NQ").unwrap();
    let v1 = writer.write(&key, price(1)).await.unwrap().version;

    db.down.store(true, Ordering::Relaxed);
    let err = writer.write(&key, price(2)).await.unwrap_err();
    assert!(matches!(err, WriteError::Source(PricesDown)), "{err:?}");
    assert_eq!(db.row("NQ"), Some((price(1), v1)), "the table is unchanged");
    // The refused write invalidated the key, and the table cannot be read either.
    assert!(cache.read(&key).await.unwrap().is_none());
    let err = aside.read(&key).await.unwrap_err();
    assert!(matches!(err, LoadError::Source(_)), "{err:?}");
    assert_eq!(err.source_error(), Some(&PricesDown));

    db.down.store(false, Ordering::Relaxed);
    let r = aside.read(&key).await.unwrap().unwrap();
    assert_eq!((r.tier, r.version, r.value.seq), (Tier::Source, v1, 1));
}
