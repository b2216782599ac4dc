//! Cache-aside and write-through against a throwaway redis-server and PostgreSQL, each next to its floor.
//!
//! - `aside/hit`: `CacheAside::get` of a warm key (an L1 hit through the pattern) vs
//!   `Cache::get` of the same key (the floor: the bare L1 hit).
//! - `aside/miss`: `CacheAside::get` of a key absent from both tiers (PostgreSQL load + fill of
//!   L2 and L1) vs the raw pair it replaces: a `SELECT` on a tokio-postgres client plus a
//!   `SET PX` on a shared multiplexed Redis connection. The key is deleted from both tiers
//!   before each timed read, outside the timing.
//! - `write_through`: `WriteThrough::write` vs the raw pair: the same upsert statement on a
//!   tokio-postgres client plus `SET PX` on the multiplexed connection.
//!
//! The hit pair includes one `Runtime::block_on` per iteration on both sides.
//!
//! Run: `cargo bench --bench patterns`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use mdcache::{Backend, Cache, CacheAside, Position, PostgresSource, WriteThrough};
use redis::AsyncCommands;
use tokio::runtime::Runtime;

fn position(qty: f64) -> Position {
    Position {
        qty,
        avg_price: 189.4,
        realized_pnl: 12.5,
        seq: 7,
    }
}

const UPSERT: &str = "INSERT INTO mdc_pos AS t (id, value, version) \
     VALUES ($1, $2, nextval('mdc_version_seq')) \
     ON CONFLICT (id) DO UPDATE SET value = excluded.value, \
       version = GREATEST(t.version + 1, excluded.version), updated_at = now() \
     RETURNING version";

fn patterns(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let redis = support::RedisServer::start();
    let pg = support::pg::PgServer::start();
    let (cache, aside, writer, raw_pg, mut raw_redis) = rt.block_on(async {
        let cache = Cache::builder()
            .redis_url(redis.url())
            .backend(Backend::Layered)
            .op_timeout(Duration::from_secs(1))
            // Long enough that the warm key stays warm for the whole group (pos is 1 s).
            .ttl_kind("pos", Duration::from_secs(3600))
            .build()
            .expect("cache");
        let src = Arc::new(PostgresSource::connect(&pg.url()).await.expect("postgres"));
        let aside = CacheAside::builder(cache.clone(), src.clone())
            .build()
            .expect("default options are valid");
        let writer = WriteThrough::new(cache.clone(), src);
        let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .expect("raw postgres");
        tokio::spawn(conn);
        (cache, aside, writer, client, redis.multiplexed().await)
    });
    let key = cache.key::<Position>("AAPL").expect("key");
    rt.block_on(writer.write(&key, position(1.0)))
        .expect("seed");

    let mut g = c.benchmark_group("aside");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    rt.block_on(aside.get(&key)).expect("warm");
    g.bench_function("hit/aside_get", |b| {
        b.iter(|| rt.block_on(async { black_box(aside.get(&key).await.expect("hit")) }))
    });
    g.bench_function("hit/cache_get_floor", |b| {
        b.iter(|| rt.block_on(async { black_box(cache.get(&key).await.expect("hit")) }))
    });
    g.sample_size(30);
    g.bench_function("miss/aside_get_pg_load_and_fill", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    cache.delete(&key).await.expect("delete");
                    let t = Instant::now();
                    let r = aside.get(&key).await.expect("load");
                    total += t.elapsed();
                    black_box(r);
                }
                total
            })
        })
    });
    let json = serde_json::to_value(position(1.0)).expect("json");
    g.bench_function("miss/raw_select_plus_set_floor", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let row = raw_pg
                        .query_typed_one(
                            "SELECT value, version FROM mdc_pos WHERE id = $1",
                            &[(&"AAPL", tokio_postgres::types::Type::TEXT)],
                        )
                        .await
                        .expect("select");
                    let bytes = mdcache::codec::encode(
                        row.get::<_, i64>(1) as u64,
                        &position(1.0),
                        1 << 20,
                    )
                    .expect("encode");
                    let _: () = raw_redis
                        .pset_ex("raw:pos:AAPL", bytes, 1000)
                        .await
                        .expect("set");
                }
                t.elapsed()
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("write_through");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.sample_size(30);
    let mut qty = 0.0;
    g.bench_function("write_through", |b| {
        b.iter(|| {
            qty += 1.0;
            rt.block_on(async {
                black_box(writer.write(&key, position(qty)).await.expect("write"))
            })
        })
    });
    g.bench_function("raw_upsert_plus_set_floor", |b| {
        b.iter(|| {
            qty += 1.0;
            rt.block_on(async {
                let row = raw_pg
                    .query_typed_one(
                        UPSERT,
                        &[
                            (&"RAW", tokio_postgres::types::Type::TEXT),
                            (
                                &tokio_postgres::types::Json(&json),
                                tokio_postgres::types::Type::JSONB,
                            ),
                        ],
                    )
                    .await
                    .expect("upsert");
                let bytes =
                    mdcache::codec::encode(row.get::<_, i64>(0) as u64, &position(qty), 1 << 20)
                        .expect("encode");
                let _: () = raw_redis
                    .pset_ex("raw:pos:RAW", bytes, 1000)
                    .await
                    .expect("set");
            })
        })
    });
    g.finish();
}

criterion_group!(benches, patterns);
criterion_main!(benches);
