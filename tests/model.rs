//! Model-based property test (issue 16, item 1): random sequences of writes, deletes, reads, TTL expiry, Redis hangs, kills and restarts and source failures across two `Cache` instances on one real redis-server, checked against a reference model.
//!
//! Two instances (two caches, each with its own L1, connections, breaker and backplane
//! subscriber, as two processes would have) share one redis-server and one source of record.
//! The model remembers, per instance and key, the highest version that instance has read and
//! the highest it has written itself, and per key the highest version any write-through
//! acknowledged. Checked after every step:
//!
//! - no read returns a version lower than one the same instance already read, or than one
//!   it wrote and had acknowledged (DESIGN §4 rules 2 and 9);
//! - no read is past its TTL unless marked `Stale` (rule 1, the same test as `simulate`'s
//!   `reads_past_ttl`);
//! - a position read that returns nothing while a write-through was acknowledged is an error
//!   (the source had it); errors are allowed only while Redis or the source is faulted;
//!
//! and at the end, every fault healed and both caches recovered: every acknowledged position
//! write is what both instances read (nothing lost from the source, nothing older served).
//!
//! TTLs are real (300 ms: the sequences sleep past them) since Redis's clock cannot be
//! mocked. Shrunk failures are kept by proptest in `tests/model.proptest-regressions`.
//! `make test` runs a few sequences; `MDCACHE_MODEL_CASES` runs more.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mdcache::{
    BreakerState, Cache, CacheAside, Key, MemorySource, Position, Price, Read, Tier, WriteThrough,
};
use proptest::prelude::*;
use support::{RedisServer, shared_runtime};

/// Instances, and keys per kind.
const INSTANCES: usize = 2;
const KEYS: usize = 3;
/// Both kinds' TTL: short, so sequences cross it.
const TTL: Duration = Duration::from_millis(300);

fn cases() -> u32 {
    std::env::var("MDCACHE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// The server every sequence runs on; sequences fault it and leave it healed.
fn server() -> &'static Mutex<RedisServer> {
    static SERVER: OnceLock<Mutex<RedisServer>> = OnceLock::new();
    SERVER.get_or_init(|| Mutex::new(RedisServer::start()))
}

#[derive(Debug, Clone)]
enum Op {
    /// A write-through of a position from instance `inst`.
    Write {
        inst: usize,
        key: usize,
        qty: i8,
    },
    /// A cache-only price write from `inst`, at the next version.
    SetPrice {
        inst: usize,
        key: usize,
    },
    /// `Cache::delete` from `inst`.
    Delete {
        inst: usize,
        key: usize,
        price: bool,
    },
    /// A cache-aside read from `inst`.
    Read {
        inst: usize,
        key: usize,
        price: bool,
    },
    Sleep {
        ms: u64,
    },
    /// SIGSTOP the server (if it runs and is not stopped).
    Hang,
    /// SIGCONT it.
    Resume,
    /// SIGKILL it (its data is gone).
    Kill,
    /// Start it again, empty, on the same port.
    Restart,
    /// The source fails loads and writes, or stops failing.
    SourceDown(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let inst = 0..INSTANCES;
    let key = 0..KEYS;
    prop_oneof![
        6 => (inst.clone(), key.clone(), any::<i8>()).prop_map(|(inst, key, qty)| Op::Write { inst, key, qty }),
        4 => (inst.clone(), key.clone()).prop_map(|(inst, key)| Op::SetPrice { inst, key }),
        2 => (inst.clone(), key.clone(), any::<bool>()).prop_map(|(inst, key, price)| Op::Delete { inst, key, price }),
        10 => (inst, key, any::<bool>()).prop_map(|(inst, key, price)| Op::Read { inst, key, price }),
        3 => prop_oneof![Just(1u64), Just(20), Just(350)].prop_map(|ms| Op::Sleep { ms }),
        1 => Just(Op::Hang),
        1 => Just(Op::Resume),
        1 => Just(Op::Kill),
        1 => Just(Op::Restart),
        1 => any::<bool>().prop_map(Op::SourceDown),
    ]
}

/// One instance: its cache, cache-aside and write-through over the shared source.
struct Instance {
    cache: Cache,
    aside: CacheAside<MemorySource>,
    writer: WriteThrough<MemorySource>,
    pos: Vec<Key<Position>>,
    price: Vec<Key<Price>>,
}

/// What the model knows, per instance and key (positions `[0]`, prices `[1]`).
#[derive(Default)]
struct Model {
    /// The highest version each instance has read.
    seen: [[[u64; KEYS]; 2]; INSTANCES],
    /// The highest version each instance wrote and had acknowledged (rule 9's floor).
    floor: [[[u64; KEYS]; 2]; INSTANCES],
    /// The highest acknowledged write-through version per position key.
    acked: [u64; KEYS],
    next_price_version: u64,
    redis_hung: bool,
    redis_dead: bool,
    source_down: bool,
}

impl Model {
    fn faulted(&self) -> bool {
        self.redis_hung || self.redis_dead || self.source_down
    }
}

/// Rule 1 as `simulate` counts it: past the TTL, or an L1 hit with no time left; `Stale`
/// reads (the marked fail-safe) excepted.
fn past_ttl<V>(read: &Read<V>) -> bool {
    read.tier != Tier::Stale
        && (read.age > TTL || (read.tier == Tier::L1 && read.ttl_remaining == Some(Duration::ZERO)))
}

/// Checks one read against the model and records it.
fn check_read(
    model: &mut Model,
    inst: usize,
    kind: usize,
    key: usize,
    version: Option<u64>,
    past: bool,
    what: &str,
) -> Result<(), TestCaseError> {
    let Some(v) = version else {
        return Ok(());
    };
    let seen = model.seen[inst][kind][key];
    let floor = model.floor[inst][kind][key];
    prop_assert!(
        v >= seen,
        "{what}: instance {inst} read version {v} after reading {seen}"
    );
    prop_assert!(
        v >= floor,
        "{what}: instance {inst} read version {v} after its own acknowledged write of {floor}"
    );
    prop_assert!(
        !past,
        "{what}: instance {inst} read version {v} past its TTL"
    );
    model.seen[inst][kind][key] = v;
    Ok(())
}

async fn step(
    op: &Op,
    model: &mut Model,
    insts: &[Instance],
    source: &MemorySource,
    server: &Mutex<RedisServer>,
) -> Result<(), TestCaseError> {
    let lock = || server.lock().unwrap_or_else(|p| p.into_inner());
    match *op {
        Op::Write { inst, key, qty } => {
            let i = &insts[inst];
            let value = Position {
                qty: f64::from(qty),
                avg_price: 1.0,
                realized_pnl: 0.0,
                seq: 0,
            };
            match i.writer.write(&i.pos[key], value).await {
                Ok(ack) => {
                    model.acked[key] = model.acked[key].max(ack.version);
                    let floor = &mut model.floor[inst][0][key];
                    *floor = (*floor).max(ack.version);
                }
                Err(e) => prop_assert!(
                    model.source_down,
                    "write-through failed with the source up: {e}"
                ),
            }
        }
        Op::SetPrice { inst, key } => {
            model.next_price_version += 1;
            let v = model.next_price_version;
            let i = &insts[inst];
            match i.cache.set(&i.price[key], fixtures::price(v), v).await {
                // In L1 at once (applied, queued or local-only): this instance's floor.
                Ok(_) => {
                    let floor = &mut model.floor[inst][1][key];
                    *floor = (*floor).max(v);
                }
                Err(e) => prop_assert!(model.faulted(), "price write failed: {e}"),
            }
        }
        Op::Delete { inst, key, price } => {
            let i = &insts[inst];
            let r = if price {
                i.cache.delete(&i.price[key]).await
            } else {
                i.cache.delete(&i.pos[key]).await
            };
            if r.is_ok() && price {
                // A deleted price may come back at any version a writer still had queued:
                // its history starts over, for every instance. (Positions come back from the
                // source, which holds the newest.)
                for m in 0..INSTANCES {
                    model.seen[m][1][key] = 0;
                    model.floor[m][1][key] = 0;
                }
            }
        }
        Op::Read { inst, key, price } => {
            let i = &insts[inst];
            if price {
                match i.aside.read(&i.price[key]).await {
                    Ok(r) => {
                        let (v, past) = r
                            .as_ref()
                            .map_or((None, false), |r| (Some(r.version), past_ttl(r)));
                        check_read(model, inst, 1, key, v, past, "price")?;
                    }
                    // The source holds no prices: a miss everywhere is a load of nothing,
                    // and a failure only while something is faulted.
                    Err(e) => prop_assert!(model.faulted(), "price read failed: {e}"),
                }
            } else {
                match i.aside.read(&i.pos[key]).await {
                    Ok(Some(r)) => {
                        let past = past_ttl(&r);
                        check_read(model, inst, 0, key, Some(r.version), past, "position")?;
                    }
                    Ok(None) => prop_assert!(
                        model.acked[key] == 0,
                        "position {key} not found after write-through acknowledged version {}",
                        model.acked[key]
                    ),
                    Err(e) => prop_assert!(
                        model.faulted(),
                        "position read failed with nothing faulted: {e}"
                    ),
                }
            }
        }
        Op::Sleep { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
        Op::Hang => {
            if !model.redis_dead && !model.redis_hung {
                lock().pause();
                model.redis_hung = true;
            }
        }
        Op::Resume => {
            if model.redis_hung {
                lock().resume();
                model.redis_hung = false;
            }
        }
        Op::Kill => {
            if !model.redis_dead {
                let mut s = lock();
                if model.redis_hung {
                    s.resume();
                    model.redis_hung = false;
                }
                s.kill();
                model.redis_dead = true;
            }
        }
        Op::Restart => {
            if model.redis_dead {
                tokio::task::block_in_place(|| lock().restart());
                model.redis_dead = false;
            }
        }
        Op::SourceDown(down) => {
            source.fail_loads(down);
            source.fail_writes(down);
            model.source_down = down;
        }
    }
    Ok(())
}

/// Heals everything, waits until both caches trust Redis again with empty dirty logs, and
/// lets every TTL run out.
async fn heal(model: &mut Model, insts: &[Instance], source: &MemorySource) {
    let server = server();
    let lock = || server.lock().unwrap_or_else(|p| p.into_inner());
    if model.redis_hung {
        lock().resume();
    }
    if model.redis_dead {
        tokio::task::block_in_place(|| lock().restart());
    }
    (model.redis_hung, model.redis_dead) = (false, false);
    source.fail_loads(false);
    source.fail_writes(false);
    model.source_down = false;
    let give_up = Instant::now() + Duration::from_secs(30);
    for i in insts {
        let _ = i.cache.flush().await;
        loop {
            // Reads drive recovery as they would in production.
            let _ = i.aside.read(&i.pos[0]).await;
            let closed = i
                .cache
                .breaker()
                .is_some_and(|b| b.state == BreakerState::Closed);
            if closed && i.cache.dirty_log().is_empty() {
                break;
            }
            assert!(Instant::now() < give_up, "a cache did not recover in 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let server = server();
    let url = server.lock().unwrap_or_else(|p| p.into_inner()).url();
    shared_runtime().block_on(async {
        let source = Arc::new(MemorySource::default());
        let mut insts = Vec::new();
        for _ in 0..INSTANCES {
            let cache = Cache::builder()
                .redis_url(url.clone())
                .namespace(format!("model{case}"))
                .ttl_kind("pos", TTL)
                .ttl_kind("price", TTL)
                .op_timeout(Duration::from_millis(50))
                .breaker_failures(std::num::NonZeroU32::new(3).expect("nonzero"))
                .breaker_open(Duration::from_millis(200))
                .probe_timeout(Duration::from_millis(100))
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let aside = CacheAside::builder(cache.clone(), Arc::clone(&source))
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let writer = WriteThrough::new(cache.clone(), Arc::clone(&source));
            let pos = (0..KEYS)
                .map(|k| cache.key::<Position>(&format!("P{k}")))
                .collect::<mdcache::Result<Vec<_>>>()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let price = (0..KEYS)
                .map(|k| cache.key::<Price>(&format!("S{k}")))
                .collect::<mdcache::Result<Vec<_>>>()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            insts.push(Instance {
                cache,
                aside,
                writer,
                pos,
                price,
            });
        }
        let mut model = Model::default();
        let mut outcome = Ok(());
        for op in ops {
            outcome = step(op, &mut model, &insts, &source, server).await;
            if outcome.is_err() {
                break;
            }
        }
        heal(&mut model, &insts, &source).await;
        outcome?;
        // Every acknowledged write is what both instances now read.
        for (n, i) in insts.iter().enumerate() {
            for key in 0..KEYS {
                let got = i
                    .aside
                    .read(&i.pos[key])
                    .await
                    .map_err(|e| TestCaseError::fail(format!("final read failed: {e}")))?;
                let want = model.acked[key];
                let v = got.map(|r| r.version);
                if want == 0 {
                    prop_assert_eq!(v, None);
                } else {
                    prop_assert_eq!(v, Some(want), "instance {}, position {}", n, key);
                }
            }
        }
        for i in &insts {
            i.aside.shutdown().await;
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Each case runs against real processes; shrinking re-runs it many times.
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn two_instances_never_go_backwards_never_serve_past_ttl_never_lose_a_write(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        run(&ops)?;
    }
}
