//! Cache warming (`CacheAside::warm`, issue 14) from a real PostgreSQL into a real redis-server: 10,000 keys in a bounded number of source queries (counted), through the versioned fill (a newer cached version is never lowered), progress after each batch, bad ids refused before any query.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::time::Duration;

use fixtures::price;
use mdcache::{Backend, Cache, CacheAside, Counted, Position, PostgresSource, Price, WARM_BATCH};
use support::RedisServer;
use support::pg;

/// `n` rows of `mdc_price` (ids `W0`…) at version 5, in one statement.
async fn seed_prices(url: &str, n: u64) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to test postgres");
    tokio::spawn(conn);
    let value = serde_json::to_string(&price(5)).unwrap();
    client
        .execute(
            "INSERT INTO \"mdc_price\" (id, value, version) \
             SELECT 'W' || i, $1::text::jsonb, 5 FROM generate_series(0, $2::bigint - 1) AS i",
            &[&value, &i64::try_from(n).unwrap()],
        )
        .await
        .expect("seed prices");
}

fn cache_on(redis: &RedisServer, backend: Backend) -> Cache {
    Cache::builder()
        .redis_url(redis.url())
        .backend(backend)
        .ttl_kind("price", Duration::from_secs(300))
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_10k_keys_takes_a_query_per_batch_and_never_lowers_a_version() {
    let redis = RedisServer::start();
    let url = pg::database_url();
    let source = std::sync::Arc::new(Counted::new(PostgresSource::connect(&url).await.unwrap()));
    seed_prices(&url, 10_000).await;
    let cache = cache_on(&redis, Backend::Layered);
    // A newer version already cached for one key: warming must not lower it.
    let newer = cache.key::<Price>("W7").unwrap();
    cache.set(&newer, price(9), 9).await.unwrap();
    cache.flush().await.unwrap();
    let aside = CacheAside::builder(cache.clone(), std::sync::Arc::clone(&source))
        .build()
        .unwrap();
    let ids: Vec<String> = (0..10_000).map(|i| format!("W{i}")).collect();
    let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    ids.push("NOT-THERE");
    let mut calls = Vec::new();
    let report = aside
        .warm::<Price>(&ids, |p| calls.push((p.done, p.queries)))
        .await
        .unwrap();
    cache.flush().await.unwrap();
    let batches = ids.len().div_ceil(WARM_BATCH);
    assert_eq!(report.queries, batches, "{report:?}");
    assert_eq!(
        source.load_calls(),
        batches as u64,
        "one source query per batch"
    );
    assert_eq!(calls.len(), batches);
    assert_eq!(calls.last(), Some(&(ids.len(), batches)));
    assert_eq!(
        (report.requested, report.done, report.missing),
        (10_001, 10_001, 1)
    );
    assert_eq!(
        report.filled + report.kept_newer + report.l1_only,
        10_000,
        "{report:?}"
    );
    // The newer version stays, in L1 and in Redis.
    assert_eq!(cache.get(&newer).await.unwrap().unwrap().seq, 9);
    let fresh = cache_on(&redis, Backend::Redis);
    assert_eq!(fresh.read(&newer).await.unwrap().unwrap().version, 9);
    // Every other key is in Redis at the source's version.
    let k = fresh.key::<Price>("W9999").unwrap();
    assert_eq!(fresh.read(&k).await.unwrap().unwrap().version, 5);
    assert_eq!(redis.dbsize(), 10_000);
    println!(
        "warm of 10k prices: {:?} in {} queries",
        report.elapsed, report.queries
    );

    // A bad id anywhere: nothing is loaded.
    let before = source.load_calls();
    let err = aside
        .warm::<Position>(&["OK", "bad id"], |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, mdcache::LoadError::Cache(ref e) if e.is_invalid_input()),
        "{err}"
    );
    assert_eq!(source.load_calls(), before);
}
