//! Fault injection under an in-process load: Redis killed, hung, slowed, reset; PostgreSQL stopped; both down; the backplane subscriber killed — against the real servers.
//!
//! Each scenario runs a concurrent read/write load (cache-aside reads of `pos` and `price`,
//! write-through writes of `pos`), injects a fault for a while, heals it, waits for the breaker
//! to close, and then checks the correctness figures: caller errors only where neither L1 nor
//! the source could serve, no read past its TTL unless marked stale, no acknowledged write
//! missing from the database, no Redis value that differs from the database after recovery,
//! and no call slower than a generous bound while the deadline is a few milliseconds.
//!
//! The faults themselves live in `support::faults`; `tests/faults_simulate.rs` runs the same
//! faults under the `mdcache simulate` workload.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fixtures::{pos, price};
use mdcache::source::{Load as _, PostgresOptions};
use mdcache::{
    Backend, BreakerState, Cache, CacheAside, Counted, Key, KeySchema, LoadError, Position,
    PostgresSource, Price, Tier, WriteThrough, codec,
};
use redis::AsyncCommands;
use support::faults::settings::OP_TIMEOUT;
use support::faults::{Env, Fault, NO_HANG};

const SYMBOLS: usize = 20;

type Src = Counted<PostgresSource>;

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
    /// Read latency while the fault is on, in microseconds.
    during_fault: Option<hdrhistogram::Histogram<u64>>,
}

struct Load {
    cache: Cache,
    aside: CacheAside<Src>,
    writer: WriteThrough<Src>,
    src: Src,
    pos: Vec<Key<Position>>,
    px: Vec<Key<Price>>,
}

/// Starts the servers and a layered cache with the production deadline over them, and seeds
/// every key through write-through.
async fn setup(through_proxy: bool) -> (Env, Load) {
    let env = Env::start(through_proxy);
    let url = env.redis_url();
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
        PostgresSource::connect_with(&env.pg.url(), opts)
            .await
            .expect("postgres"),
    );
    let aside = CacheAside::builder(cache.clone(), Arc::new(src.clone()))
        .source_timeout(Duration::from_millis(300))
        .build()
        .expect("valid options");
    let writer = WriteThrough::new(cache.clone(), Arc::new(src.clone()))
        .with_source_timeout(Duration::from_millis(300));
    let pos_keys: Vec<_> = (0..SYMBOLS)
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
        pos: pos_keys,
        px,
    };
    // Seed every key through write-through (database first, then the cache).
    for (i, k) in load.pos.iter().enumerate() {
        load.writer.write(k, pos(i as f64)).await.expect("seed pos");
    }
    for (i, k) in load.px.iter().enumerate() {
        load.writer
            .write(k, price(i as u64))
            .await
            .expect("seed price");
    }
    (env, load)
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
    if let Some(h) = f.during_fault.as_mut() {
        h.saturating_record(took.as_micros().max(1) as u64);
    }
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
                let res = load.aside.read(k).await;
                note_read(&figures, k, t.elapsed(), &res);
                let k = &load.px[i % SYMBOLS];
                let t = Instant::now();
                let res = load.aside.read(k).await;
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
            let res = load.writer.write(k, pos(n)).await;
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

/// Runs one scenario: healthy load, the fault for 2 s, healing, recovery, checks.
async fn scenario(fault: Fault) {
    let (name, expect) = (fault.name(), fault.expect());
    let (mut env, load) = setup(fault.through_proxy()).await;
    let load = Arc::new(load);
    let figures = Arc::new(Mutex::new(Figures::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = spawn_load(&load, &figures, &stop);

    tokio::time::sleep(Duration::from_millis(500)).await;
    figures.lock().unwrap().during_fault =
        Some(hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"));
    fault.inject(&mut env);
    let mut saw_open = false;
    let fault_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < fault_until {
        fault.during(&env);
        saw_open |= load
            .cache
            .breaker()
            .is_some_and(|b| b.state != BreakerState::Closed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fault_hist = figures.lock().unwrap().during_fault.take();
    fault.heal(&mut env);
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
    let fallbacks = load.aside.fallback_stats();

    // Acknowledged writes missing from the database.
    let mut latest: HashMap<String, u64> = HashMap::new();
    for (id, v) in &f.acked {
        let e = latest.entry(id.clone()).or_default();
        *e = (*e).max(*v);
    }
    let mut lost_writes = 0u64;
    for k in &load.pos {
        let db = load
            .src
            .inner()
            .load(k)
            .await
            .expect("db load")
            .expect("row");
        if latest.get(k.id()).is_some_and(|v| db.version < *v) {
            lost_writes += 1;
        }
    }
    // Redis values that differ from the database after recovery.
    let mut c = env.redis.multiplexed().await;
    let (mut compared, mut stale_l2) = (0u64, 0u64);
    for key in load
        .pos
        .iter()
        .map(|k| (k.as_str(), k.id()))
        .chain(load.px.iter().map(|k| (k.as_str(), k.id())))
    {
        let raw: Option<Vec<u8>> = c.get(key.0).await.expect("GET");
        let Some(raw) = raw else { continue };
        let db_version = if key.0.contains(":pos:") {
            let k = load.cache.key::<Position>(key.1).expect("key");
            load.src
                .inner()
                .load(&k)
                .await
                .expect("db")
                .expect("row")
                .version
        } else {
            let k = load.cache.key::<Price>(key.1).expect("key");
            load.src
                .inner()
                .load(&k)
                .await
                .expect("db")
                .expect("row")
                .version
        };
        compared += 1;
        if codec::peek_version(&raw) != Ok(db_version) {
            stale_l2 += 1;
        }
    }
    let (p999, max) = fault_hist
        .as_ref()
        .map_or((0, 0), |h| (h.value_at_quantile(0.999), h.max()));
    let report = serde_json::json!({
        "scenario": name,
        "reads": f.reads,
        "read_errors": f.read_errors,
        "read_p999_us_during_fault": p999,
        "read_max_us_during_fault": max,
        "slowest_call_us": f.slowest.as_micros() as u64,
        "stale_served": f.stale_served,
        "reads_past_ttl": f.past_ttl,
        "writes_acked": f.writes_acked,
        "write_errors": f.write_errors,
        "lost_acked_writes": lost_writes,
        "l2_values_compared": compared,
        "stale_l2_after_recovery": stale_l2,
        "breaker_opened": breaker.opened,
        "breaker_closed": breaker.closed,
        "breaker_open_during_fault": saw_open,
        "ms_from_fault_end_to_breaker_closed": recovered_after.as_secs_f64() * 1000.0,
        "fallbacks": {
            "total": fallbacks.total,
            "breaker_open": fallbacks.breaker_open,
            "timeout": fallbacks.timeout,
            "error": fallbacks.error,
            "overloaded": fallbacks.overloaded,
        },
    });
    // Shown on failure (`make faults` tabulates the runs of `tests/faults_simulate.rs` instead).
    eprintln!("{report}");

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
    assert_eq!(
        lost_writes, 0,
        "{name}: acknowledged writes missing from the database"
    );
    assert_eq!(
        stale_l2, 0,
        "{name}: Redis values differ from the database after recovery"
    );
    drop(env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_empty() {
    scenario(Fault::RedisKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_then_resumed() {
    scenario(Fault::RedisHung).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_20ms_slower_than_the_deadline() {
    scenario(Fault::RedisSlow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connections_reset() {
    scenario(Fault::ConnectionResets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped() {
    scenario(Fault::PostgresStopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_postgres_both_down() {
    scenario(Fault::BothDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backplane_subscriber_killed() {
    scenario(Fault::SubscriberKilled).await;
}
