//! Model-based property test (issue 16, item 1): random sequences of writes, book writes, deletes, reads, concurrent bursts, TTL expiry, Redis hangs, kills and restarts and source failures across two `Cache` instances on one real redis-server, checked against a reference model.
//!
//! Two instances (two caches, each with its own L1, connections, breaker and backplane
//! subscriber, as two processes would have) share one redis-server and one source of record.
//! Three kinds: positions (write-through), prices and bid sides of books (cache-only
//! market data, read whole or cut to a depth). The model remembers, per instance and key, the
//! highest version that instance has read and the highest it has written itself, per key the
//! highest version any write-through acknowledged, and what each acknowledged position
//! version holds. Checked after every step:
//!
//! - no read returns a version lower than one the same instance already read, or than one
//!   it wrote and had acknowledged (DESIGN §4 rules 2 and 9);
//! - no read is past its TTL unless marked `Stale` (rule 1, the same test as `simulate`'s
//!   `reads_past_ttl`);
//! - a read's value is the one written with its version (a position's quantity, a price's
//!   sequence, a book's best level), and a book cut to a depth holds at most that many
//!   levels, best first;
//! - a position read that returns nothing while a write-through was acknowledged is an error
//!   (the source had it); errors are allowed only while Redis or the source is faulted;
//! - in a burst (a write racing four reads of the key on one instance, as parallel tasks),
//!   no read is below what the instance had read or written before the burst began, and
//!   each is checked as above; the instance has then seen the highest of them;
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mdcache::{
    BookBid, BookSide, BreakerState, Cache, CacheAside, Key, MemorySource, Position, Price, Read,
    Tier, WriteThrough,
};
use proptest::prelude::*;
use support::{RedisServer, shared_runtime};

/// Instances, and keys per kind.
const INSTANCES: usize = 2;
const KEYS: usize = 3;
/// The kinds, as the model indexes them.
const POS: usize = 0;
const PRICE: usize = 1;
const BOOK: usize = 2;
const KINDS: usize = 3;
/// Every kind's TTL: short, so sequences cross it.
const TTL: Duration = Duration::from_millis(300);
/// Reads racing the write in a burst.
const BURST_READS: usize = 4;

fn cases() -> u32 {
    std::env::var("MDCACHE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
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
    /// A cache-only bid side of `levels` levels from `inst`, at the next version.
    SetBook {
        inst: usize,
        key: usize,
        levels: usize,
    },
    /// `Cache::delete` from `inst`.
    Delete {
        inst: usize,
        key: usize,
        kind: usize,
    },
    /// A cache-aside read from `inst` (a book cut to `depth` levels).
    Read {
        inst: usize,
        key: usize,
        kind: usize,
        depth: usize,
    },
    /// A write of `kind` from `writer` racing [`BURST_READS`] reads of the key on `inst`,
    /// each its own task.
    Burst {
        inst: usize,
        writer: usize,
        key: usize,
        kind: usize,
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
    let kind = 0..KINDS;
    prop_oneof![
        6 => (inst.clone(), key.clone(), any::<i8>()).prop_map(|(inst, key, qty)| Op::Write { inst, key, qty }),
        4 => (inst.clone(), key.clone()).prop_map(|(inst, key)| Op::SetPrice { inst, key }),
        3 => (inst.clone(), key.clone(), 1..8usize).prop_map(|(inst, key, levels)| Op::SetBook { inst, key, levels }),
        2 => (inst.clone(), key.clone(), kind.clone()).prop_map(|(inst, key, kind)| Op::Delete { inst, key, kind }),
        10 => (inst.clone(), key.clone(), kind.clone(), 1..10usize).prop_map(|(inst, key, kind, depth)| Op::Read { inst, key, kind, depth }),
        2 => (inst.clone(), inst, key, kind).prop_map(|(inst, writer, key, kind)| Op::Burst { inst, writer, key, kind }),
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
    source: Arc<MemorySource>,
    pos: Vec<Key<Position>>,
    price: Vec<Key<Price>>,
    book: Vec<Key<BookBid>>,
}

impl Instance {
    fn writer(&self) -> WriteThrough<MemorySource> {
        WriteThrough::new(self.cache.clone(), Arc::clone(&self.source))
    }
}

/// What the model knows, per instance, kind ([`POS`], [`PRICE`], [`BOOK`]) and key.
#[derive(Default)]
struct Model {
    /// The highest version each instance has read.
    seen: [[[u64; KEYS]; KINDS]; INSTANCES],
    /// The highest version each instance wrote and had acknowledged (rule 9's floor).
    floor: [[[u64; KEYS]; KINDS]; INSTANCES],
    /// The highest acknowledged write-through version per position key.
    acked: [u64; KEYS],
    /// The quantity each acknowledged position version holds, by key and version.
    qty: HashMap<(usize, u64), f64>,
    /// The last market-data version handed out (prices and books share the counter).
    next_md_version: u64,
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

/// The bid side written at version `v`: `levels` levels from 100 down, the best one's
/// quantity the version, so a read shows which write it came from.
fn side(v: u64, levels: usize) -> BookSide {
    fixtures::book((0..levels).map(|i| {
        let qty = if i == 0 { v as f64 } else { 1.0 };
        (100.0 - i as f64, qty)
    }))
}

/// What one read returned, reduced to what the model checks.
#[derive(Debug, Clone, Copy)]
struct Seen {
    version: u64,
    past_ttl: bool,
    /// The read's value is the one written with its version.
    matches: bool,
}

/// A position read: its quantity is the one the acknowledged write of its version carried
/// (unknown versions, from writes whose acknowledgement was lost to a fault, pass).
fn seen_pos(qty: &HashMap<(usize, u64), f64>, key: usize, r: &Read<Position>) -> Seen {
    Seen {
        version: r.version,
        past_ttl: past_ttl(r),
        matches: qty.get(&(key, r.version)).is_none_or(|&q| q == r.value.qty),
    }
}

fn seen_price(r: &Read<Price>) -> Seen {
    Seen {
        version: r.version,
        past_ttl: past_ttl(r),
        matches: r.value.seq == r.version,
    }
}

/// A book read cut to `depth`: at most that many levels, best (highest) price first, the
/// best level's quantity the version.
fn seen_book(r: &Read<BookSide>, depth: usize) -> Seen {
    let levels = &r.value.levels;
    let sorted = levels.windows(2).all(|w| w[0].price > w[1].price);
    Seen {
        version: r.version,
        past_ttl: past_ttl(r),
        matches: !levels.is_empty()
            && levels.len() <= depth
            && sorted
            && levels[0].price == 100.0
            && levels[0].qty == r.version as f64,
    }
}

/// A cache-aside read of `kind` and `key` on `inst`: what it saw, or the error's text.
async fn read(
    qty: &HashMap<(usize, u64), f64>,
    i: &Instance,
    kind: usize,
    key: usize,
    depth: usize,
) -> Result<Option<Seen>, String> {
    match kind {
        POS => i
            .aside
            .read(&i.pos[key])
            .await
            .map(|r| r.map(|r| seen_pos(qty, key, &r))),
        PRICE => i
            .aside
            .read(&i.price[key])
            .await
            .map(|r| r.map(|r| seen_price(&r))),
        _ => i
            .aside
            .read_book(&i.book[key], depth)
            .await
            .map(|r| r.map(|r| seen_book(&r, depth))),
    }
    .map_err(|e| e.to_string())
}

/// Checks a read's outcome that is not a value: nothing found, or an error.
fn check_absent(
    model: &Model,
    kind: usize,
    key: usize,
    outcome: &Result<Option<Seen>, String>,
) -> Result<(), TestCaseError> {
    match outcome {
        // The source holds no market data: a miss everywhere loads nothing. A position was
        // in the source since its first acknowledged write.
        Ok(None) => prop_assert!(
            kind != POS || model.acked[key] == 0,
            "position {key} not found after write-through acknowledged version {}",
            model.acked[key]
        ),
        Err(e) => prop_assert!(
            model.faulted(),
            "read of kind {kind} failed with nothing faulted: {e}"
        ),
        Ok(Some(_)) => {}
    }
    Ok(())
}

/// Checks one read against the model and records it.
fn check_read(
    model: &mut Model,
    inst: usize,
    kind: usize,
    key: usize,
    read: Seen,
    what: &str,
) -> Result<(), TestCaseError> {
    let (v, past) = (read.version, read.past_ttl);
    prop_assert!(
        read.matches,
        "{what}: instance {inst} read version {v} holding another write's value: {read:?}"
    );
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

/// A write's outcome, recorded in the model once the write is done.
#[derive(Debug)]
enum Wrote {
    /// A position write-through acknowledged at `version`.
    Pos { version: u64, qty: f64 },
    /// A market-data write of `kind` in this instance's L1 (applied, queued or local-only).
    Md { kind: usize, version: u64 },
    /// The write failed.
    Failed { kind: usize, error: String },
}

/// Writes `key` of `kind` on `i`: a position of `qty` through write-through, or market data
/// at `version` (a book side of `levels` levels).
async fn write(
    i: &Instance,
    kind: usize,
    key: usize,
    qty: i8,
    version: u64,
    levels: usize,
) -> Wrote {
    let failed = |error: String| Wrote::Failed { kind, error };
    match kind {
        POS => {
            let qty = f64::from(qty);
            let value = Position {
                qty,
                avg_price: 1.0,
                realized_pnl: 0.0,
                seq: 0,
            };
            match i.writer().write(&i.pos[key], value).await {
                Ok(ack) => Wrote::Pos {
                    version: ack.version,
                    qty,
                },
                Err(e) => failed(e.to_string()),
            }
        }
        PRICE => match i
            .cache
            .set(&i.price[key], fixtures::price(version), version)
            .await
        {
            Ok(_) => Wrote::Md { kind, version },
            Err(e) => failed(e.to_string()),
        },
        _ => match i
            .cache
            .set_book(&i.book[key], side(version, levels), version)
            .await
        {
            Ok(_) => Wrote::Md { kind, version },
            Err(e) => failed(e.to_string()),
        },
    }
}

/// Records a write's outcome: an acknowledged one raises the writer's floor.
fn record(model: &mut Model, inst: usize, key: usize, wrote: Wrote) -> Result<(), TestCaseError> {
    match wrote {
        Wrote::Pos { version, qty } => {
            model.acked[key] = model.acked[key].max(version);
            model.qty.insert((key, version), qty);
            let floor = &mut model.floor[inst][POS][key];
            *floor = (*floor).max(version);
        }
        Wrote::Md { kind, version } => {
            let floor = &mut model.floor[inst][kind][key];
            *floor = (*floor).max(version);
        }
        // A write-through fails only with the source down (Redis failing is not the
        // caller's problem: the database has it); market data only with something faulted.
        Wrote::Failed { kind: POS, error } => prop_assert!(
            model.source_down,
            "write-through failed with the source up: {error}"
        ),
        Wrote::Failed { kind, error } => prop_assert!(
            model.faulted(),
            "market-data write of kind {kind} failed with nothing faulted: {error}"
        ),
    }
    Ok(())
}

/// Checks a read (or its absence) against the model and records what the instance saw.
fn check(
    model: &mut Model,
    inst: usize,
    kind: usize,
    key: usize,
    outcome: &Result<Option<Seen>, String>,
) -> Result<(), TestCaseError> {
    match outcome {
        Ok(Some(seen)) => check_read(model, inst, kind, key, *seen, KIND_NAMES[kind]),
        other => check_absent(model, kind, key, other),
    }
}

const KIND_NAMES: [&str; KINDS] = ["position", "price", "book"];

async fn step(
    op: &Op,
    model: &mut Model,
    insts: &[Arc<Instance>],
    source: &MemorySource,
    server: &Mutex<RedisServer>,
) -> Result<(), TestCaseError> {
    let lock = || server.lock().unwrap_or_else(|p| p.into_inner());
    match *op {
        Op::Write { inst, key, qty } => {
            let wrote = write(&insts[inst], POS, key, qty, 0, 0).await;
            record(model, inst, key, wrote)?;
        }
        Op::SetPrice { inst, key } => {
            model.next_md_version += 1;
            let v = model.next_md_version;
            let wrote = write(&insts[inst], PRICE, key, 0, v, 0).await;
            record(model, inst, key, wrote)?;
        }
        Op::SetBook { inst, key, levels } => {
            model.next_md_version += 1;
            let v = model.next_md_version;
            let wrote = write(&insts[inst], BOOK, key, 0, v, levels).await;
            record(model, inst, key, wrote)?;
        }
        Op::Delete { inst, key, kind } => {
            let i = &insts[inst];
            let r = match kind {
                POS => i.cache.delete(&i.pos[key]).await,
                PRICE => i.cache.delete(&i.price[key]).await,
                _ => i.cache.delete(&i.book[key]).await,
            };
            if r.is_ok() && kind != POS {
                // Deleted market data may come back at any version a writer still had
                // queued: its history starts over, for every instance. (Positions come back
                // from the source, which holds the newest.)
                for m in 0..INSTANCES {
                    model.seen[m][kind][key] = 0;
                    model.floor[m][kind][key] = 0;
                }
            }
        }
        Op::Read {
            inst,
            key,
            kind,
            depth,
        } => {
            let outcome = read(&model.qty, &insts[inst], kind, key, depth).await;
            check(model, inst, kind, key, &outcome)?;
        }
        Op::Burst {
            inst,
            writer,
            key,
            kind,
        } => {
            let version = if kind == POS {
                0
            } else {
                model.next_md_version += 1;
                model.next_md_version
            };
            let qty = Arc::new(model.qty.clone());
            let w = Arc::clone(&insts[writer]);
            let write_task = tokio::spawn(async move { write(&w, kind, key, 7, version, 3).await });
            let reads: Vec<_> = (0..BURST_READS)
                .map(|n| {
                    let (r, qty) = (Arc::clone(&insts[inst]), Arc::clone(&qty));
                    tokio::spawn(async move { read(&qty, &r, kind, key, 1 + n * 3).await })
                })
                .collect();
            let mut outcomes = Vec::new();
            for r in reads {
                outcomes.push(r.await.map_err(|e| TestCaseError::fail(e.to_string()))?);
            }
            let wrote = write_task
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            // Every read against what the instance had seen before the burst began; then
            // it has seen the highest of them.
            let before = model.seen[inst][kind][key];
            let mut highest = before;
            for outcome in &outcomes {
                model.seen[inst][kind][key] = before;
                check(model, inst, kind, key, outcome)?;
                highest = highest.max(model.seen[inst][kind][key]);
            }
            model.seen[inst][kind][key] = highest;
            record(model, writer, key, wrote)?;
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
async fn heal(
    model: &mut Model,
    insts: &[Arc<Instance>],
    source: &MemorySource,
    server: &Mutex<RedisServer>,
) {
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

fn run(server: &Mutex<RedisServer>, ops: &[Op]) -> Result<(), TestCaseError> {
    static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                .ttl_kind("book", TTL)
                .op_timeout(Duration::from_millis(50))
                .breaker_failures(std::num::NonZeroU32::new(3).expect("nonzero"))
                .breaker_open(Duration::from_millis(200))
                .probe_timeout(Duration::from_millis(100))
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let aside = CacheAside::builder(cache.clone(), Arc::clone(&source))
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let pos = (0..KEYS)
                .map(|k| cache.key::<Position>(&format!("P{k}")))
                .collect::<mdcache::Result<Vec<_>>>()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let price = (0..KEYS)
                .map(|k| cache.key::<Price>(&format!("S{k}")))
                .collect::<mdcache::Result<Vec<_>>>()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let book = (0..KEYS)
                .map(|k| cache.key::<BookBid>(&format!("B{k}")))
                .collect::<mdcache::Result<Vec<_>>>()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            insts.push(Arc::new(Instance {
                cache,
                aside,
                source: Arc::clone(&source),
                pos,
                price,
                book,
            }));
        }
        let mut model = Model::default();
        let mut outcome = Ok(());
        for op in ops {
            outcome = step(op, &mut model, &insts, &source, server).await;
            if outcome.is_err() {
                break;
            }
        }
        heal(&mut model, &insts, &source, server).await;
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

/// Runs the sequences on one redis-server owned by the test, so the server stops when the
/// test ends, passed or failed (a server in a `static` outlived the test process). Failures
/// are kept in `tests/model.proptest-regressions` and replayed first, as `proptest!` does.
#[test]
fn two_instances_never_go_backwards_never_serve_past_ttl_never_lose_a_write() {
    let server = Mutex::new(RedisServer::start());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        // Each case runs against real processes; shrinking re-runs it many times.
        max_shrink_iters: 200,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    });
    let ops = proptest::collection::vec(op(), 1..40);
    if let Err(e) = runner.run(&ops, |ops| run(&server, &ops)) {
        panic!("{e}");
    }
}
