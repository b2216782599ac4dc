//! mdcache against its peers (issue 15): multi-tier-cache 0.6.9 and a hand-rolled moka + redis-rs cache, side by side on one throwaway redis-server.
//!
//! The contenders, each reading and writing the same `Price` under its own keys:
//!
//! - `mdcache`: `Cache` — layered (quick_cache L1 + Redis) for the L1 hit, the stampede (through
//!   `CacheAside` over a `MemorySource` that takes 5 ms per load) and the writes;
//!   `Backend::Redis` (no L1, default configuration, a 1 s deadline as in `l2_get`) for the L2
//!   reads; its defaults (5 ms deadline, breaker) for the hung server.
//! - `multi-tier-cache`: as its README recommends, `CacheSystem::with_redis_url` (Moka L1,
//!   Redis L2 on a `ConnectionManager`, JSON values), `get_typed` / `set_with_strategy` /
//!   `get_or_compute_typed`. For the L2 reads the L1 is bypassed with its builder's own
//!   switches: tiers `TierConfig::as_l1()` + `TierConfig::as_l2().with_promotion(false)`, so
//!   every read takes its full L1-miss path (L1 lookup, in-flight map, `GET`+`PTTL` pipeline)
//!   and nothing lands in L1.
//! - `moka+redis-rs`: `moka::future::Cache<String, Arc<Price>>` + one `MultiplexedConnection`;
//!   get = L1, else `GET` and decode (MessagePack); set = `SET PX` then L1 insert. Its L2 keys
//!   are written to Redis only, so they are never in its L1.
//!
//! Two criterion groups (`peers/l1_hit`, `peers/l2_hit`) time the single-task reads; then
//! `peers/latency` measures every row of the issue with the contenders taking turns (per
//! batch, per read or per round, the first mover rotating), so a disturbance on the shared
//! machine hits all of them alike, and prints one markdown table. Under
//! `cargo test --benches` every size is smoke-sized.
//!
//! Run: `cargo bench --bench peers`.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{latency_samples, micros, percentile, price, redis_reader, two_worker_runtime};
use criterion::{Criterion, criterion_group, criterion_main};
use mdcache::{Backend, Cache, CacheAside, Counted, Key, MemorySource, Price, Store, WriteOutcome};
use multi_tier_cache::{
    Bytes, CacheManager, CacheStrategy, CacheSystem, CacheSystemBuilder, L1Cache, L2Cache,
    MokaCacheConfig, TierConfig,
};
use redis::aio::MultiplexedConnection;
use tokio::runtime::Runtime;
use tokio::sync::Barrier;

/// The contenders, in the table's column order.
const NAMES: [&str; 3] = ["mdcache", "multi-tier-cache", "moka+redis-rs"];
const MD: usize = 0;
const MTC: usize = 1;
const HAND: usize = 2;

/// Concurrent readers of the L2 rows, as in `l2_concurrent`.
const TASKS: usize = 64;
/// Concurrent misses of one key in the stampede.
const STAMPEDE: usize = 1000;
/// What one source load takes in the stampede.
const LOAD_TIME: Duration = Duration::from_millis(5);
/// The TTL of the writes row.
const WRITE_TTL: Duration = Duration::from_millis(100);
/// The TTL of everything read: an hour keeps every key a hit for the whole run.
const READ_TTL: Duration = Duration::from_secs(3600);

/// The hand-rolled peer: what a team writes in an afternoon.
struct HandRolled {
    l1: moka::future::Cache<String, Arc<Price>>,
    conn: MultiplexedConnection,
    ttl: Duration,
}

impl HandRolled {
    async fn new(server: &support::RedisServer, ttl: Duration) -> HandRolled {
        HandRolled {
            l1: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            conn: server.multiplexed().await,
            ttl,
        }
    }

    async fn get(&self, key: &str) -> redis::RedisResult<Option<Arc<Price>>> {
        if let Some(v) = self.l1.get(key).await {
            return Ok(Some(v));
        }
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(bytes.map(|b| Arc::new(rmp_serde::from_slice(&b).expect("decode Price"))))
    }

    async fn set(&self, key: &str, value: Price) -> redis::RedisResult<()> {
        let bytes = rmp_serde::to_vec_named(&value).expect("encode Price");
        let () = redis::cmd("SET")
            .arg(key)
            .arg(bytes)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut self.conn.clone())
            .await?;
        self.l1.insert(key.to_owned(), Arc::new(value)).await;
        Ok(())
    }
}

/// Everything the rows read and write, shared by the tasks.
struct Peers {
    /// Layered, price TTL 1 h: the L1 row and the stampede.
    md: Cache,
    md_l1: Key<Price>,
    /// `Backend::Redis`: the L2 rows; key `i` is task `i`'s.
    md_l2: Cache,
    md_l2_keys: Vec<Key<Price>>,
    /// Layered, price TTL 100 ms, no conflation: every `set` writes Redis before it returns.
    md_writes: Cache,
    /// Layered, price TTL 100 ms, prices conflating (mdcache's default).
    md_conflated: Cache,
    md_write_key: Key<Price>,
    md_conflated_key: Key<Price>,
    /// The stampede's source: 5 ms per load, counted.
    md_source: Arc<Counted<MemorySource>>,
    md_aside: CacheAside<Counted<MemorySource>>,
    /// `CacheSystem::with_redis_url`: the L1 row, the stampede, the writes.
    mtc: Arc<CacheManager>,
    /// L1 + L2 tiers, no promotion: the L2 rows.
    mtc_l2: Arc<CacheManager>,
    /// L1 TTL 1 h: the L1 and L2 rows and the stampede.
    hand: HandRolled,
    /// L1 TTL 100 ms: the writes.
    hand_writes: HandRolled,
    /// The hand-rolled stampede's loader calls.
    hand_loads: AtomicU64,
    /// Peer key names per L2 task, `[MTC]` and `[HAND]`.
    l2_keys: [Vec<String>; 3],
    /// Versions for mdcache's writes (the peers ignore them).
    seq: AtomicU64,
}

fn mtc_key(what: &str) -> String {
    format!("mtc:price:{what}")
}

fn hand_key(what: &str) -> String {
    format!("hand:price:{what}")
}

/// Price as multi-tier-cache stores it: its default serializer is JSON.
fn json(p: &Price) -> Bytes {
    Bytes::from(serde_json::to_vec(p).expect("encode Price"))
}

impl Peers {
    async fn new(server: &support::RedisServer) -> Peers {
        let layered = |ttl: Duration| {
            Cache::builder()
                .backend(Backend::Layered)
                .redis_url(server.url())
                .op_timeout(Duration::from_secs(1))
                .ttl_kind("price", ttl)
        };
        let md = layered(READ_TTL).build().expect("mdcache layered");
        let md_l1 = md.key::<Price>("L1").expect("key");
        let (md_l2, _) = redis_reader(server.url(), None);
        let md_l2_keys: Vec<_> = (0..TASKS)
            .map(|i| md_l2.key::<Price>(&format!("P{i}")).expect("key"))
            .collect();
        // Price's default TTL is 100 ms.
        let md_writes = layered(Duration::from_millis(100))
            .no_conflation()
            .build()
            .expect("mdcache writer");
        let md_conflated = layered(Duration::from_millis(100))
            .build()
            .expect("mdcache conflated writer");
        let md_write_key = md_writes.key::<Price>("W").expect("key");
        let md_conflated_key = md_conflated.key::<Price>("WC").expect("key");
        let md_source = Arc::new(Counted::new(MemorySource::default()));
        let md_aside = CacheAside::builder(md.clone(), md_source.clone())
            .build()
            .expect("default options are valid");

        let mtc = CacheSystem::with_redis_url(&server.url())
            .await
            .expect("multi-tier-cache")
            .cache_manager
            .clone();
        let mtc_l2 = CacheSystemBuilder::new()
            .with_tier(
                Arc::new(L1Cache::new(MokaCacheConfig::default()).expect("moka tier")),
                TierConfig::as_l1(),
            )
            .with_tier(
                Arc::new(L2Cache::with_url(&server.url()).await.expect("redis tier")),
                TierConfig::as_l2().with_promotion(false),
            )
            .build()
            .await
            .expect("multi-tier-cache, L2 reads")
            .cache_manager
            .clone();

        let hand = HandRolled::new(server, READ_TTL).await;
        let hand_writes = HandRolled::new(server, WRITE_TTL).await;
        let l2_keys = [
            Vec::new(),
            (0..TASKS).map(|i| mtc_key(&format!("P{i}"))).collect(),
            (0..TASKS).map(|i| hand_key(&format!("P{i}"))).collect(),
        ];

        let p = Peers {
            md,
            md_l1,
            md_l2,
            md_l2_keys,
            md_writes,
            md_conflated,
            md_write_key,
            md_conflated_key,
            md_source,
            md_aside,
            mtc,
            mtc_l2,
            hand,
            hand_writes,
            hand_loads: AtomicU64::new(0),
            l2_keys,
            seq: AtomicU64::new(1),
        };
        p.seed(server).await;
        p
    }

    /// Writes every key the reads expect, each contender through its own write path (the
    /// hand-rolled L2 keys straight to Redis, so they stay out of its L1).
    async fn seed(&self, server: &support::RedisServer) {
        let v = price(42);
        self.md.set(&self.md_l1, v.clone(), 42).await.expect("set");
        for key in &self.md_l2_keys {
            self.md_l2.set(key, v.clone(), 42).await.expect("set");
        }
        // Prices conflate: in Redis once flushed.
        self.md.flush().await.expect("flush");
        self.md_l2.flush().await.expect("flush");
        let strategy = CacheStrategy::Custom(READ_TTL);
        self.mtc
            .set_with_strategy(&mtc_key("L1"), json(&v), strategy.clone())
            .await
            .expect("mtc set");
        for key in &self.l2_keys[MTC] {
            // Through the default system: its L1 is not the one the L2 reads use.
            self.mtc
                .set_with_strategy(key, json(&v), strategy.clone())
                .await
                .expect("mtc set");
        }
        self.hand
            .set(&hand_key("L1"), v.clone())
            .await
            .expect("set");
        let mut conn = server.multiplexed().await;
        let bytes = rmp_serde::to_vec_named(&v).expect("encode");
        for key in &self.l2_keys[HAND] {
            let () = redis::cmd("SET")
                .arg(key)
                .arg(&bytes)
                .arg("PX")
                .arg(READ_TTL.as_millis() as u64)
                .query_async(&mut conn)
                .await
                .expect("SET");
        }
        self.md_source.inner().set_latency(LOAD_TIME);
    }

    /// One L1 hit; the typed value in hand.
    async fn l1_get(&self, who: usize) {
        let hit = match who {
            MD => black_box(self.md.get(&self.md_l1).await.expect("mdcache get")).is_some(),
            MTC => black_box(
                self.mtc
                    .get_typed::<Price>("mtc:price:L1")
                    .await
                    .expect("mtc get"),
            )
            .is_some(),
            _ => black_box(self.hand.get("hand:price:L1").await.expect("hand get")).is_some(),
        };
        assert!(hit, "{} missed L1", NAMES[who]);
    }

    /// One L2 hit of task `i`'s key.
    async fn l2_get(&self, who: usize, i: usize) {
        let hit = match who {
            MD => black_box(self.md_l2.get(&self.md_l2_keys[i]).await.expect("mdcache")).is_some(),
            MTC => black_box(
                self.mtc_l2
                    .get_typed::<Price>(&self.l2_keys[MTC][i])
                    .await
                    .expect("mtc get"),
            )
            .is_some(),
            _ => black_box(self.hand.get(&self.l2_keys[HAND][i]).await.expect("hand")).is_some(),
        };
        assert!(hit, "{} missed L2", NAMES[who]);
    }

    /// One write with the 100 ms TTL; `who == 3` is mdcache with conflation.
    async fn write(&self, who: usize) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        match who {
            MD => {
                let out = self
                    .md_writes
                    .set(&self.md_write_key, price(seq), seq)
                    .await;
                assert_eq!(out.expect("mdcache set"), WriteOutcome::Applied);
            }
            MTC => self
                .mtc
                .set_with_strategy(
                    "mtc:price:W",
                    json(&price(seq)),
                    CacheStrategy::Custom(WRITE_TTL),
                )
                .await
                .expect("mtc set"),
            HAND => self
                .hand_writes
                .set("hand:price:W", price(seq))
                .await
                .expect("hand set"),
            _ => {
                let out = self
                    .md_conflated
                    .set(&self.md_conflated_key, price(seq), seq);
                out.await.expect("mdcache conflated set");
            }
        }
    }
}

struct Setup {
    rt: Runtime,
    peers: Arc<Peers>,
    /// For `INFO cpu`.
    info: MultiplexedConnection,
    /// Last: dropped after the connections that use it.
    server: support::RedisServer,
}

fn setup() -> Setup {
    let server = support::RedisServer::start();
    let rt = two_worker_runtime();
    let (peers, info) = rt.block_on(async {
        let peers = Arc::new(Peers::new(&server).await);
        // Opens every connection and pool before anything is timed.
        for who in 0..3 {
            for _ in 0..200 {
                peers.l1_get(who).await;
            }
            run_l2_tasks(&peers, who, 20).await;
        }
        (peers, server.multiplexed().await)
    });
    Setup {
        rt,
        peers,
        info,
        server,
    }
}

fn criterion_groups(c: &mut Criterion, s: &Setup) {
    let mut group = c.benchmark_group("peers/l1_hit");
    for (who, name) in NAMES.iter().enumerate() {
        group.bench_function(*name, |b| {
            b.to_async(&s.rt).iter_custom(|iters| {
                let p = s.peers.clone();
                async move {
                    tokio::spawn(async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            p.l1_get(who).await;
                        }
                        start.elapsed()
                    })
                    .await
                    .expect("bench task")
                }
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("peers/l2_hit");
    for (who, name) in NAMES.iter().enumerate() {
        group.bench_function(*name, |b| {
            b.to_async(&s.rt).iter_custom(|iters| {
                let p = s.peers.clone();
                async move {
                    tokio::spawn(async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            p.l2_get(who, 0).await;
                        }
                        start.elapsed()
                    })
                    .await
                    .expect("bench task")
                }
            })
        });
    }
    group.finish();
}

/// `TASKS` tasks of `reads` L2 hits each (task `i` on key `i`): the wall time until the last
/// finished, and every read's latency.
async fn run_l2_tasks(p: &Arc<Peers>, who: usize, reads: usize) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                let mut t = Vec::with_capacity(reads);
                for _ in 0..reads {
                    let t0 = Instant::now();
                    p.l2_get(who, i).await;
                    t.push(t0.elapsed());
                }
                t
            })
        })
        .collect();
    let mut all = Vec::with_capacity(TASKS * reads);
    for t in tasks {
        all.extend(t.await.expect("reader task"));
    }
    (start.elapsed(), all)
}

/// Redis's CPU time so far (`used_cpu_sys` + `used_cpu_user` of `INFO cpu`), in seconds.
async fn redis_cpu(conn: &mut MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .expect("INFO cpu");
    info.lines()
        .filter_map(|l| match l.trim().split_once(':') {
            Some(("used_cpu_sys" | "used_cpu_user", value)) => value.parse::<f64>().ok(),
            _ => None,
        })
        .sum()
}

/// `STAMPEDE` concurrent reads of one cold key, started together, each loading it through
/// the contender's own miss path with a 5 ms loader: (loader calls, time until the last read
/// returned).
async fn stampede(p: &Arc<Peers>, who: usize, round: usize) -> (u64, Duration) {
    let id = format!("S{round}");
    let md_key = p.md.key::<Price>(&id).expect("key");
    if who == MD {
        p.md_source
            .inner()
            .write(&md_key, &price(1))
            .await
            .expect("seed source");
    }
    let (mtc_loads, before) = (Arc::new(AtomicU64::new(0)), p.md_source.loads());
    let hand_before = p.hand_loads.load(Ordering::Relaxed);
    let barrier = Arc::new(Barrier::new(STAMPEDE));
    let start = Instant::now();
    let tasks: Vec<_> = (0..STAMPEDE)
        .map(|_| {
            let (p, key, barrier) = (p.clone(), md_key.clone(), barrier.clone());
            let (mtc_loads, id) = (mtc_loads.clone(), id.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let found = match who {
                    MD => p.md_aside.get(&key).await.expect("mdcache aside").is_some(),
                    MTC => {
                        let v: Price = p
                            .mtc
                            .get_or_compute_typed(
                                &mtc_key(&id),
                                CacheStrategy::Custom(READ_TTL),
                                || async move {
                                    mtc_loads.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(LOAD_TIME).await;
                                    Ok(price(1))
                                },
                            )
                            .await
                            .expect("mtc get_or_compute");
                        black_box(v);
                        true
                    }
                    _ => {
                        let key = hand_key(&id);
                        if p.hand.get(&key).await.expect("hand get").is_none() {
                            p.hand_loads.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(LOAD_TIME).await;
                            p.hand.set(&key, price(1)).await.expect("hand set");
                        }
                        true
                    }
                };
                assert!(found);
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("stampede task");
    }
    let elapsed = start.elapsed();
    let loads = match who {
        MD => p.md_source.loads() - before,
        MTC => mtc_loads.load(Ordering::Relaxed),
        _ => p.hand_loads.load(Ordering::Relaxed) - hand_before,
    };
    (loads, elapsed)
}

/// Each contender's one L1-missing read of a key that is in Redis while the server is
/// SIGSTOPped, on fresh instances with their default deadlines: (time until it returned,
/// what it returned, whether the next read after SIGCONT was a hit).
fn hung(s: &Setup) -> Vec<(Duration, String, bool)> {
    s.rt.block_on(async {
        let url = s.server.url();
        let md = Cache::builder()
            .backend(Backend::Layered)
            .redis_url(url.clone())
            .ttl_kind("price", READ_TTL)
            .build()
            .expect("mdcache, defaults");
        let (md_warm, md_key) = (
            md.key::<Price>("P0").unwrap(),
            md.key::<Price>("P1").unwrap(),
        );
        let mtc = CacheSystem::with_redis_url(&url)
            .await
            .expect("multi-tier-cache")
            .cache_manager
            .clone();
        let hand = HandRolled::new(&s.server, READ_TTL).await;
        // Opens mdcache's pool (the key read stays in its L1; P1 is not read).
        assert!(md.get(&md_warm).await.expect("warm").is_some());
        let mtc_k = mtc_key("P1");
        let hand_k = hand_key("P1");
        s.server.pause();
        let mut out = Vec::new();
        for who in 0..3 {
            let t0 = Instant::now();
            let what = match who {
                MD => describe(md.get(&md_key).await.map(|v| v.is_some())),
                MTC => describe(mtc.get_typed::<Price>(&mtc_k).await.map(|v| v.is_some())),
                _ => describe(hand.get(&hand_k).await.map(|v| v.is_some())),
            };
            out.push((t0.elapsed(), what));
        }
        s.server.resume();
        let mut after = Vec::new();
        // The breaker has seen one failure (it opens after 5), so mdcache reads Redis again.
        after.push(matches!(md.get(&md_key).await, Ok(Some(_))));
        after.push(matches!(mtc.get_typed::<Price>(&mtc_k).await, Ok(Some(_))));
        after.push(matches!(hand.get(&hand_k).await, Ok(Some(_))));
        out.into_iter()
            .zip(after)
            .map(|((t, what), ok)| (t, what, ok))
            .collect()
    })
}

fn describe<E: std::fmt::Display>(r: Result<bool, E>) -> String {
    match r {
        Ok(true) => "hit".into(),
        Ok(false) => "miss (`Ok(None)`)".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// One measured row: each contender's figure (`None`: not measured).
struct Row {
    name: String,
    unit: &'static str,
    values: [Option<f64>; 3],
    /// Extra text per contender (the hung read's outcome).
    notes: [String; 3],
}

impl Row {
    fn new(name: impl Into<String>, unit: &'static str, values: [f64; 3]) -> Row {
        Row {
            name: name.into(),
            unit,
            values: values.map(Some),
            notes: Default::default(),
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn latency(_: &mut Criterion, s: &Setup) {
    // L1 rounds of `L1_BATCH` reads per contender; the rest scale with it.
    let l1_rounds = latency_samples("peers", 3000, 5);
    if l1_rounds == 0 {
        return;
    }
    let smoke = l1_rounds < 3000;
    let pick = |full: usize, small: usize| if smoke { small } else { full };
    let p = &s.peers;
    let mut rows = Vec::new();

    // 1. L1 hit: the mean of a batch of reads, batches taking turns.
    const L1_BATCH: u32 = 100;
    let l1 = s.rt.block_on({
        let p = p.clone();
        async move {
            tokio::spawn(async move {
                let mut t: [Vec<Duration>; 3] = [(); 3].map(|_| Vec::with_capacity(l1_rounds));
                for round in 0..l1_rounds {
                    for k in 0..3 {
                        let who = (round + k) % 3;
                        let t0 = Instant::now();
                        for _ in 0..L1_BATCH {
                            p.l1_get(who).await;
                        }
                        t[who].push(t0.elapsed() / L1_BATCH);
                    }
                }
                t
            })
            .await
            .expect("L1 task")
        }
    });
    let p50 = |mut t: Vec<Duration>, q: f64| {
        t.sort_unstable();
        percentile(&t, q)
    };
    rows.push(Row::new(
        format!("1. L1 hit, p50 of {L1_BATCH}-read batch means"),
        "ns",
        [0, 1, 2].map(|w| p50(l1[w].clone(), 0.5).as_nanos() as f64),
    ));

    // 2. L2 hit, one task: reads taking turns.
    let reads = pick(20_000, 100);
    let l2 = s.rt.block_on({
        let p = p.clone();
        async move {
            tokio::spawn(async move {
                let mut t: [Vec<Duration>; 3] = [(); 3].map(|_| Vec::with_capacity(reads));
                for round in 0..reads {
                    for k in 0..3 {
                        let who = (round + k) % 3;
                        let t0 = Instant::now();
                        p.l2_get(who, 0).await;
                        t[who].push(t0.elapsed());
                    }
                }
                t
            })
            .await
            .expect("L2 task")
        }
    });
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        rows.push(Row::new(
            format!("2. L2 hit, 1 task, {label}"),
            "µs",
            [0, 1, 2].map(|w| micros(p50(l2[w].clone(), q))),
        ));
    }

    // 3 and 4. L2 hits, 64 tasks, in rounds taking turns; Redis's CPU around each round.
    let (rounds, per_task) = (pick(12, 1), pick(100, 10));
    let mut samples = vec![Vec::new(); 3];
    let mut wall = [Duration::ZERO; 3];
    let mut cpu = [0.0; 3];
    let mut info = s.info.clone();
    for round in 0..rounds {
        for k in 0..3 {
            let who = (round + k) % 3;
            let (elapsed, t, used) = s.rt.block_on(async {
                let before = redis_cpu(&mut info).await;
                let (elapsed, t) = run_l2_tasks(p, who, per_task).await;
                (elapsed, t, redis_cpu(&mut info).await - before)
            });
            wall[who] += elapsed;
            cpu[who] += used;
            samples[who].extend(t);
        }
    }
    let n = (rounds * TASKS * per_task) as f64;
    rows.push(Row::new(
        format!("3. L2 hit, {TASKS} tasks, throughput"),
        "k reads/s",
        [0, 1, 2].map(|w| n / wall[w].as_secs_f64() / 1e3),
    ));
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        rows.push(Row::new(
            format!("3. L2 hit, {TASKS} tasks, {label}"),
            "µs",
            [0, 1, 2].map(|w| micros(p50(samples[w].clone(), q))),
        ));
    }
    rows.push(Row::new(
        format!("4. Redis CPU per read, {TASKS} tasks"),
        "µs",
        cpu.map(|c| c / n * 1e6),
    ));

    // 5. Stampede: rounds taking turns, a fresh key each.
    let rounds = pick(5, 1);
    let mut loads = vec![Vec::new(); 3];
    let mut times = vec![Vec::new(); 3];
    for round in 0..rounds {
        for k in 0..3 {
            let who = (round + k) % 3;
            let (l, t) = s.rt.block_on(stampede(p, who, round));
            loads[who].push(l as f64);
            times[who].push(t.as_secs_f64() * 1e3);
        }
    }
    rows.push(Row::new(
        format!("5. stampede, {STAMPEDE} misses of one key: loader calls (median)"),
        "calls",
        [0, 1, 2].map(|w| median(&mut loads[w])),
    ));
    rows.push(Row::new(
        "5. stampede: time until the last read returned (median)",
        "ms",
        [0, 1, 2].map(|w| median(&mut times[w])),
    ));

    // 7. Writes, one task, 100 ms TTL, in rounds taking turns; mdcache conflating last.
    let (rounds, batch) = (pick(20, 1), pick(500, 20));
    let wall = s.rt.block_on({
        let p = p.clone();
        async move {
            tokio::spawn(async move {
                let mut wall = [Duration::ZERO; 4];
                for round in 0..rounds {
                    for k in 0..4 {
                        let who = (round + k) % 4;
                        let t0 = Instant::now();
                        for _ in 0..batch {
                            p.write(who).await;
                        }
                        if who == 3 {
                            // Its writes are in Redis once flushed: that is timed too.
                            p.md_conflated.flush().await.expect("flush");
                        }
                        wall[who] += t0.elapsed();
                    }
                }
                wall
            })
            .await
            .expect("writes task")
        }
    });
    let n = (rounds * batch) as f64;
    rows.push(Row::new(
        "7. writes, 1 task, 100 ms TTL",
        "k ops/s",
        [0, 1, 2].map(|w| n / wall[w].as_secs_f64() / 1e3),
    ));
    rows.push(Row {
        name: "7. writes, mdcache conflating (its default for prices; flush timed)".into(),
        unit: "k ops/s",
        values: [Some(n / wall[3].as_secs_f64() / 1e3), None, None],
        notes: Default::default(),
    });

    // 6. Hung Redis, measured last (the server is stopped meanwhile), printed before 7.
    let h = hung(s);
    let at = rows.len() - 2;
    rows.insert(
        at,
        Row {
            name: "6. hung Redis (SIGSTOP): one L1-missing get returns after".into(),
            unit: "ms",
            values: [0, 1, 2].map(|w| Some(h[w].0.as_secs_f64() * 1e3)),
            notes: [0, 1, 2].map(|w| {
                let after = if h[w].2 { "hit" } else { "not a hit" };
                format!("{}; after SIGCONT: {after}", h[w].1)
            }),
        },
    );

    print_table(&rows);
}

fn print_table(rows: &[Row]) {
    // The machine is shared: the load says how quiet the run was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!("\npeers/latency: contenders taking turns; ratio = mdcache / peer; load {load}\n");
    println!(
        "| row | unit | {} | {} | {} | mdcache / {} | mdcache / {} |",
        NAMES[MD], NAMES[MTC], NAMES[HAND], NAMES[MTC], NAMES[HAND]
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let fmt = |v: Option<f64>| match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "—".into(),
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a / b < 0.1 => format!("{:.3}", a / b),
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    };
    for r in rows {
        let cells: Vec<String> = (0..3)
            .map(|w| {
                if r.notes[w].is_empty() {
                    fmt(r.values[w])
                } else {
                    format!("{} ({})", fmt(r.values[w]), r.notes[w])
                }
            })
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.unit,
            cells[0],
            cells[1],
            cells[2],
            ratio(r.values[MD], r.values[MTC]),
            ratio(r.values[MD], r.values[HAND]),
        );
    }
    println!();
}

fn peers(c: &mut Criterion) {
    let s = setup();
    criterion_groups(c, &s);
    latency(c, &s);
}

criterion_group! {
    name = benches;
    config = common::criterion(Duration::from_secs(2), 20);
    targets = peers
}
criterion_main!(benches);
