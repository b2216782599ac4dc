//! Fault injection under load: Redis killed, hung, slowed, reset; PostgreSQL stopped; both down — against the real servers.
//!
//! Each scenario runs a concurrent read/write load (cache-aside reads of `pos` and `price`,
//! write-through writes of `pos`), injects a fault for a while, heals it, waits for the breaker
//! to close, and then checks the correctness figures: caller errors only where neither L1 nor
//! the source could serve, no read past its TTL unless marked stale, no acknowledged write
//! missing from the database, no Redis value that differs from the database after recovery,
//! and no call slower than a generous bound while the deadline is a few milliseconds.

mod support;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mdcache::source::PostgresOptions;
use mdcache::{
    Backend, BreakerState, Cache, CacheAside, Counted, Key, KeySchema, LoadError, Position,
    PostgresSource, Price, Source, Tier, WriteThrough, codec,
};
use redis::AsyncCommands;
use support::RedisServer;
use support::pg::PgServer;
use support::proxy::FaultProxy;

/// The L2 deadline: a few milliseconds, as in production.
const OP_TIMEOUT: Duration = Duration::from_millis(10);
/// No call may take longer than this (generous: the point is "bounded", not "fast").
const NO_HANG: Duration = Duration::from_secs(1);
const SYMBOLS: usize = 20;

type Src = Counted<PostgresSource>;

/// What a fault scenario expects.
#[derive(Clone, Copy)]
struct Expect {
    /// Redis is faulted: the breaker must open during the fault.
    breaker_opens: bool,
    /// The database is faulted: reads it would have served may fail (closed), writes fail.
    source_down: bool,
}

/// Figures gathered by the load.
#[derive(Debug, Default)]
struct Figures {
    reads: u64,
    /// Errors by a short label (`source`, `cache: <kind>`, `overloaded`, ...).
    read_errors: HashMap<String, u64>,
    stale_served: u64,
    past_ttl: u64,
    slowest: Duration,
    writes_acked: u64,
    write_errors: u64,
    /// Acknowledged (id, version) pairs.
    acked: Vec<(String, u64)>,
}

struct Env {
    redis: RedisServer,
    pg: PgServer,
    proxy: Option<FaultProxy>,
}

struct Load {
    cache: Cache,
    aside: CacheAside<Src>,
    writer: WriteThrough<Src>,
    src: Src,
    pos: Vec<Key<Position>>,
    px: Vec<Key<Price>>,
}

async fn setup(through_proxy: bool) -> (Env, Load) {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = through_proxy.then(|| {
        let addr = format!("127.0.0.1:{}", redis.port())
            .parse()
            .expect("socket address");
        FaultProxy::start(addr)
    });
    let url = proxy
        .as_ref()
        .map_or_else(|| redis.url(), |p| p.url_for_redis());
    let cache = Cache::builder()
        .redis_url(url)
        .backend(Backend::Layered)
        .op_timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_millis(200))
        .breaker_failures(NonZeroU32::new(5).unwrap())
        .breaker_open(Duration::from_millis(300))
        .probe_timeout(Duration::from_millis(100))
        .build()
        .expect("cache");
    let mut opts = PostgresOptions::default();
    opts.connect_timeout = Duration::from_millis(300);
    let src = Counted::new(
        PostgresSource::connect_with(&pg.url(), opts)
            .await
            .expect("postgres"),
    );
    let aside = CacheAside::builder(cache.clone(), Arc::new(src.clone()))
        .source_timeout(Duration::from_millis(300))
        .build();
    let writer = WriteThrough::new(cache.clone(), Arc::new(src.clone()))
        .with_source_timeout(Duration::from_millis(300));
    let pos: Vec<_> = (0..SYMBOLS)
        .map(|i| cache.key::<Position>(&format!("S{i}")).unwrap())
        .collect();
    let px: Vec<_> = (0..SYMBOLS)
        .map(|i| cache.key::<Price>(&format!("S{i}")).unwrap())
        .collect();
    let load = Load {
        cache,
        aside,
        writer,
        src,
        pos,
        px,
    };
    // Seed every key through write-through (database first, then the cache).
    for (i, k) in load.pos.iter().enumerate() {
        load.writer
            .write(k, position(i as f64))
            .await
            .expect("seed pos");
    }
    for (i, k) in load.px.iter().enumerate() {
        load.writer
            .write(k, price(i as u64))
            .await
            .expect("seed price");
    }
    (Env { redis, pg, proxy }, load)
}

fn position(qty: f64) -> Position {
    Position {
        qty,
        avg_price: 100.0,
        realized_pnl: 0.0,
        seq: qty as u64,
    }
}

fn price(seq: u64) -> Price {
    Price {
        bid: 100.0,
        ask: 100.5,
        bid_size: 1.0,
        ask_size: 1.0,
        last: 100.25,
        seq,
        exchange_ts_ns: seq,
    }
}

fn label<E: std::error::Error>(e: &LoadError<E>) -> String {
    match e {
        LoadError::Source(_) => "source".into(),
        LoadError::SourceTimeout(_) => "source_timeout".into(),
        LoadError::Overloaded(_) => "overloaded".into(),
        LoadError::Cache(c) => format!("cache: {}", c.kind()),
        _ => "other".into(),
    }
}

/// Records one read's outcome.
fn note_read<V, E: std::error::Error, S: KeySchema>(
    f: &Mutex<Figures>,
    key: &Key<S>,
    took: Duration,
    r: &Result<Option<mdcache::Read<V>>, LoadError<E>>,
) {
    let mut f = f.lock().unwrap();
    f.reads += 1;
    f.slowest = f.slowest.max(took);
    match r {
        Ok(Some(read)) if read.tier == Tier::Stale => f.stale_served += 1,
        Ok(Some(read)) => {
            // Never past its TTL unless marked stale: an L1 hit has time left, and no fresh
            // read is older than the kind's TTL. (An L2 read may report 0 ms left: PTTL is
            // in whole milliseconds.)
            let l1_expired = read.tier == Tier::L1 && read.ttl_remaining == Some(Duration::ZERO);
            if read.age > key.ttl() || l1_expired {
                f.past_ttl += 1;
            }
        }
        Ok(None) => *f.read_errors.entry("missing".into()).or_default() += 1,
        Err(e) => *f.read_errors.entry(label(e)).or_default() += 1,
    }
}

/// Runs the load until `stop`: 3 readers, 1 writer.
fn spawn_load(
    load: &Arc<Load>,
    figures: &Arc<Mutex<Figures>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for r in 0..3usize {
        let (load, figures, stop) = (load.clone(), figures.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let k = &load.pos[i % SYMBOLS];
                let t = Instant::now();
                let res = load.aside.get(k).await;
                note_read(&figures, k, t.elapsed(), &res);
                let k = &load.px[i % SYMBOLS];
                let t = Instant::now();
                let res = load.aside.get(k).await;
                note_read(&figures, k, t.elapsed(), &res);
                i += 7;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }
    let (load, figures, stop) = (load.clone(), figures.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        let mut n = 1000.0;
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let k = &load.pos[i % SYMBOLS];
            n += 1.0;
            let t = Instant::now();
            let res = load.writer.write(k, position(n)).await;
            let took = t.elapsed();
            {
                let mut f = figures.lock().unwrap();
                f.slowest = f.slowest.max(took);
                match res {
                    Ok(ack) => {
                        f.writes_acked += 1;
                        f.acked.push((k.id().to_owned(), ack.version));
                    }
                    Err(_) => f.write_errors += 1,
                }
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }));
    tasks
}

/// Runs one scenario: healthy load, `inject`, fault for `fault_for`, `heal`, recovery, checks.
async fn scenario(
    name: &str,
    through_proxy: bool,
    expect: Expect,
    inject: impl FnOnce(&mut Env),
    during: impl Fn(&Env),
    heal: impl FnOnce(&mut Env),
) {
    let (mut env, load) = setup(through_proxy).await;
    let load = Arc::new(load);
    let figures = Arc::new(Mutex::new(Figures::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = spawn_load(&load, &figures, &stop);

    tokio::time::sleep(Duration::from_millis(500)).await;
    inject(&mut env);
    let mut saw_open = false;
    let fault_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < fault_until {
        during(&env);
        saw_open |= load
            .cache
            .breaker()
            .is_some_and(|b| b.state != BreakerState::Closed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fault_stats = load.cache.breaker().expect("redis configured");
    heal(&mut env);
    let healed = Instant::now();
    // Recovery: the breaker closes (after the probe and the dirty-log replay).
    let give_up = healed + Duration::from_secs(20);
    loop {
        let b = load.cache.breaker().expect("breaker");
        if b.state == BreakerState::Closed && load.cache.dirty_log().is_empty() {
            break;
        }
        assert!(Instant::now() < give_up, "{name}: never recovered: {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered_after = healed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
    let f = std::mem::take(&mut *figures.lock().unwrap());
    let breaker = load.cache.breaker().expect("breaker");
    eprintln!(
        "{name}: reads {} errors {:?} stale {} slowest {:?} acked {} write errors {} breaker {:?} (during fault {:?}) recovered after {:?} fallbacks {:?}",
        f.reads,
        f.read_errors,
        f.stale_served,
        f.slowest,
        f.writes_acked,
        f.write_errors,
        breaker,
        fault_stats,
        recovered_after,
        load.aside.fallback_stats()
    );

    // No call hung.
    assert!(f.slowest < NO_HANG, "{name}: a call took {:?}", f.slowest);
    // Never past its TTL unless marked stale.
    assert_eq!(f.past_ttl, 0, "{name}: reads past their TTL");
    // Caller errors only where neither L1 nor the source could serve.
    let unexplained: u64 = f
        .read_errors
        .iter()
        .filter(|(k, _)| !(expect.source_down && matches!(k.as_str(), "source" | "source_timeout")))
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(
        unexplained, 0,
        "{name}: caller-visible read errors {:?}",
        f.read_errors
    );
    if !expect.source_down {
        assert_eq!(
            f.write_errors, 0,
            "{name}: writes failed while the database was up"
        );
    }
    assert!(
        f.reads > 100 && f.writes_acked > 10,
        "{name}: the load barely ran: {f:?}"
    );
    // The breaker opened during a Redis fault, and is closed now.
    if expect.breaker_opens {
        assert!(
            saw_open && breaker.opened >= 1,
            "{name}: breaker never opened: {breaker:?}"
        );
    }
    assert_eq!(breaker.state, BreakerState::Closed);

    // Zero acknowledged writes missing from the database.
    let mut latest: HashMap<String, u64> = HashMap::new();
    for (id, v) in &f.acked {
        let e = latest.entry(id.clone()).or_default();
        *e = (*e).max(*v);
    }
    for k in &load.pos {
        let db = load
            .src
            .inner()
            .load(k)
            .await
            .expect("db load")
            .expect("row");
        if let Some(v) = latest.get(k.id()) {
            assert!(
                db.version >= *v,
                "{name}: acked version {v} of {} missing (db has {})",
                k.id(),
                db.version
            );
        }
    }
    // After recovery, no Redis value differs from the database.
    let mut c = env.redis.multiplexed().await;
    let mut compared = 0;
    for k in &load.pos {
        let raw: Option<Vec<u8>> = c.get(k.as_str()).await.expect("GET");
        if let Some(raw) = raw {
            let db = load.src.inner().load(k).await.expect("db").expect("row");
            assert_eq!(
                codec::peek_version(&raw),
                Ok(db.version),
                "{name}: stale L2 value at {}",
                k.as_str()
            );
            compared += 1;
        }
    }
    for k in &load.px {
        let raw: Option<Vec<u8>> = c.get(k.as_str()).await.expect("GET");
        if let Some(raw) = raw {
            let db = load.src.inner().load(k).await.expect("db").expect("row");
            assert_eq!(
                codec::peek_version(&raw),
                Ok(db.version),
                "{name}: stale L2 value at {}",
                k.as_str()
            );
            compared += 1;
        }
    }
    eprintln!("{name}: compared {compared} L2 values with the database");
    drop(env);
}

const REDIS_FAULT: Expect = Expect {
    breaker_opens: true,
    source_down: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_empty() {
    scenario(
        "redis killed",
        false,
        REDIS_FAULT,
        |env| env.redis.kill(),
        |_| {},
        |env| env.redis.restart(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_then_resumed() {
    scenario(
        "redis hung",
        false,
        REDIS_FAULT,
        |env| env.redis.pause(),
        |_| {},
        |env| env.redis.resume(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_20ms_slower_than_the_deadline() {
    scenario(
        "+20 ms latency",
        true,
        REDIS_FAULT,
        |env| {
            env.proxy
                .as_ref()
                .expect("proxy")
                .set_latency(Duration::from_millis(20))
        },
        |_| {},
        |env| {
            env.proxy
                .as_ref()
                .expect("proxy")
                .set_latency(Duration::ZERO)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connections_reset() {
    scenario(
        "connection resets",
        true,
        Expect {
            breaker_opens: false,
            source_down: false,
        },
        |env| env.proxy.as_ref().expect("proxy").reset_all(),
        |env| env.proxy.as_ref().expect("proxy").reset_all(),
        |_| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped() {
    scenario(
        "postgres stopped",
        false,
        Expect {
            breaker_opens: false,
            source_down: true,
        },
        |env| env.pg.stop(),
        |_| {},
        |env| env.pg.start_again(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_postgres_both_down() {
    scenario(
        "both down",
        false,
        Expect {
            breaker_opens: true,
            source_down: true,
        },
        |env| {
            env.redis.kill();
            env.pg.stop();
        },
        |_| {},
        |env| {
            env.pg.start_again();
            env.redis.restart();
        },
    )
    .await;
}
