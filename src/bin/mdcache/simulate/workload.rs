//! The workload's tasks: the source seeding, the market-data feed, the scalp readers and the order flow.
//!
//! - **Feed** (cache-only writes): each update picks a Zipf-popular symbol, takes its next
//!   sequence number and writes its price and both book sides with that number as version.
//!   The feed is the source of truth for market data, so nothing goes to the source.
//! - **Readers**: a loop of price, book top-5 (a random side), position and risk reads through
//!   [`CacheAside`], so a miss loads the seeded snapshot from the source. The only awaits are
//!   the cache calls and a cooperative yield every [`READ_ROUNDS_PER_YIELD`] rounds.
//! - **Orders**: each event writes an order and the symbol's new position through
//!   [`WriteThrough`] (source first, then the cache), both at once.
//!
//! Every task measures into its own [`TaskRecord`] and returns it when the run stops: the
//! whole run, the share that started inside the fault window (`--fault-window`), and the
//! write-through acknowledgements `--verify` checks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mdcache::{
    BookAsk, BookBid, BookSide, Cache, CacheAside, Key, Level, LoadError, Order, OrderStatus,
    Position, Price, Read, Risk, Side, SourceReader, SourceWriter, Tier, WriteAck, WriteThrough,
};
use tokio::time::MissedTickBehavior;

use crate::output::{Failure, print_line};

use super::freshness::{self, Mode};
use super::live::LiveRecorder;
use super::record::{Op, ReadFailure, ReadOutcome, TaskRecord, WriteOutcome};
use super::zipf::{Rng, Zipf};

/// Levels per book side written by the feed and the seed.
const BOOK_LEVELS: usize = 10;
/// Levels a reader asks for (top of book).
pub(crate) const BOOK_DEPTH: usize = 5;
/// The risk account every reader checks.
pub(crate) const RISK_ACCOUNT: &str = "account";
/// Reader rounds (4 reads each) between cooperative yields. An L1 hit never suspends, so
/// without yielding a reader would keep its worker thread from the feed, the order flow, the
/// Redis connections' tasks and the timer that ends the run. 8 rounds is 1–3 µs of L1 hits,
/// so a task woken by Redis waits at most a few microseconds per reader ahead of it; yielding
/// this often costs no measurable throughput (4, 8 and 32 rounds measured the same).
pub(crate) const READ_ROUNDS_PER_YIELD: u32 = 8;
/// The feed and order tasks wake every millisecond and catch up with their rate.
const PACE_TICK: Duration = Duration::from_millis(1);
/// A paced task more than this far behind skips the backlog (counted as `dropped`) rather
/// than bursting to catch up.
const MAX_LAG: Duration = Duration::from_millis(100);
/// Order ids cycle through this many per order task, so a long run keeps the source and L1
/// bounded; a reused id is a new version of that order row.
const ORDER_IDS_PER_TASK: u64 = 65_536;
/// Concurrent writers while seeding (the PostgreSQL pool holds 8 connections).
const SEED_TASKS: usize = 8;

/// The keys of one symbol, built once so that no read formats a key.
#[derive(Debug)]
pub(crate) struct SymbolKeys {
    /// The symbol, e.g. `SYM0007`.
    pub(crate) id: String,
    /// The symbol's price (written by the feed; `--verify` compares Redis's with it).
    pub(crate) price: Key<Price>,
    bid: Key<BookBid>,
    ask: Key<BookAsk>,
    /// The symbol's position (write-through).
    pub(crate) pos: Key<Position>,
}

/// Every key the workload touches, most popular symbol first.
#[derive(Debug)]
pub(crate) struct Keys {
    /// Per symbol, most popular first.
    pub(crate) symbols: Vec<SymbolKeys>,
    /// The risk account (seeded, read-only).
    pub(crate) risk: Key<Risk>,
    /// Symbols counted as hot: the top 1 % (at least one).
    pub(crate) hot: usize,
}

impl Keys {
    /// Keys for `n` symbols `SYM0000`, `SYM0001`, … and the risk account.
    pub(crate) fn new(cache: &Cache, n: usize) -> mdcache::Result<Keys> {
        let symbols = (0..n)
            .map(|i| {
                let id = format!("SYM{i:04}");
                Ok(SymbolKeys {
                    price: cache.key(&id)?,
                    bid: cache.key(&id)?,
                    ask: cache.key(&id)?,
                    pos: cache.key(&id)?,
                    id,
                })
            })
            .collect::<mdcache::Result<Vec<_>>>()?;
        Ok(Keys {
            hot: n.div_ceil(100),
            symbols,
            risk: cache.key(RISK_ACCOUNT)?,
        })
    }

    /// Number of symbols.
    pub(crate) fn len(&self) -> usize {
        self.symbols.len()
    }
}

/// What every task shares (read-only, apart from the atomics).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cache: Cache,
    pub(crate) keys: Arc<Keys>,
    pub(crate) zipf: Zipf,
    /// Set once when the run ends; every loop checks it per round.
    pub(crate) stop: AtomicBool,
    /// True while the fault window is on (`--fault-window`): calls that start then are also
    /// recorded in the window's figures.
    pub(crate) window: AtomicBool,
    /// Keep the write-through acknowledgements (`--verify`).
    pub(crate) track_acks: bool,
    /// TSC-based clock: `raw()` costs a few nanoseconds, a quarter of `Instant::now()`.
    pub(crate) clock: quanta::Clock,
    /// `clock`'s raw reading when the state was made, and the wall-clock time then (ns since
    /// the Unix epoch): the feed's write times and price stamps, and the engines' "now", are
    /// `clock` deltas from it, so neither side pays for a system call.
    epoch_raw: u64,
    epoch_wall_ns: u64,
    /// How the readers measure their freshness against the feed (`--engines`, `--role`).
    pub(crate) freshness: Mode,
    /// Per symbol: feed updates so far. An update's version is `version_base` plus this.
    seqs: Vec<AtomicU64>,
    /// Above every version the source gave the seeded snapshot, so a reader's miss that loads
    /// the snapshot can never outrank (and freeze out) a live feed update (DESIGN §4 rule 2).
    version_base: u64,
    /// Per symbol: net position in lots, shared by the order tasks.
    positions: Vec<AtomicI64>,
}

impl Shared {
    /// The shared state; `version_base` is the highest version seeding got back.
    pub(crate) fn new(
        cache: Cache,
        keys: Arc<Keys>,
        zipf: Zipf,
        version_base: u64,
        track_acks: bool,
        freshness: Mode,
    ) -> Self {
        let n = keys.len();
        let clock = quanta::Clock::new();
        let epoch_wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Shared {
            cache,
            keys,
            zipf,
            stop: AtomicBool::new(false),
            window: AtomicBool::new(false),
            track_acks,
            epoch_raw: clock.raw(),
            epoch_wall_ns,
            clock,
            freshness,
            seqs: (0..n).map(|_| AtomicU64::new(0)).collect(),
            version_base,
            positions: (0..n).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// Per symbol, the version of the feed's last update (`None`: never updated), for
    /// `--verify` once the feed has stopped.
    pub(crate) fn fed_versions(&self) -> Vec<Option<u64>> {
        self.seqs
            .iter()
            .map(|n| match n.load(Ordering::Acquire) {
                0 => None,
                n => Some(self.version_base + n),
            })
            .collect()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// True while the fault window is on.
    #[inline]
    fn in_window(&self) -> bool {
        self.window.load(Ordering::Relaxed)
    }

    /// Microseconds from the epoch to the raw reading `raw`.
    #[inline]
    fn micros_at(&self, raw: u64) -> u64 {
        self.clock.delta_as_nanos(self.epoch_raw, raw) / 1_000
    }

    /// The wall-clock time (ns since the Unix epoch) of the raw reading `raw`.
    #[inline]
    fn wall_ns_at(&self, raw: u64) -> u64 {
        self.epoch_wall_ns
            .saturating_add(self.clock.delta_as_nanos(self.epoch_raw, raw))
    }
}

/// A slowly drifting mid price per symbol.
fn mid_price(symbol: usize, seq: u64) -> f64 {
    100.0 + symbol as f64 + (seq % 200) as f64 * 0.01
}

/// `symbol`'s price at `seq`, stamped `written_ns` (the feed's wall-clock time; 0 for the seed).
fn price(symbol: usize, seq: u64, written_ns: u64) -> Price {
    let mid = mid_price(symbol, seq);
    Price {
        bid: mid - 0.01,
        ask: mid + 0.01,
        bid_size: 100.0,
        ask_size: 100.0,
        last: mid,
        seq,
        exchange_ts_ns: written_ns,
    }
}

/// One book side around the mid: `sign` -1 for bids (below), +1 for asks (above).
fn book_side(symbol: usize, seq: u64, sign: f64) -> BookSide {
    let mid = mid_price(symbol, seq);
    BookSide {
        levels: (1..=BOOK_LEVELS)
            .map(|l| Level {
                price: mid + sign * 0.01 * l as f64,
                qty: 100.0 * l as f64,
            })
            .collect(),
    }
}

fn position(qty: i64, symbol: usize, seq: u64) -> Position {
    Position {
        qty: qty as f64,
        avg_price: mid_price(symbol, 0),
        realized_pnl: 0.0,
        seq,
    }
}

fn risk() -> Risk {
    Risk {
        equity: 10_000_000.0,
        margin_used: 1_250_000.0,
        exposure: 4_000_000.0,
        max_exposure: 20_000_000.0,
        max_daily_loss: 250_000.0,
        seq: 1,
    }
}

/// Writes every symbol's price, book sides and (flat) position, and then the risk account, to
/// the source, so every read finds data. Returns the highest version the source gave, or the
/// first error as text. The risk account comes last: an engine process sharing the database
/// waits for it ([`wait_for_seed`]).
pub(crate) async fn seed<Src: SourceWriter>(
    source: Arc<Src>,
    keys: Arc<Keys>,
) -> Result<u64, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..SEED_TASKS {
        let (source, keys) = (Arc::clone(&source), Arc::clone(&keys));
        tasks.spawn(async move {
            let mut highest = 0;
            for (i, k) in keys.symbols.iter().enumerate().skip(t).step_by(SEED_TASKS) {
                let fail = |what: &str, e: Src::Error| format!("seeding {what} {}: {e}", k.id);
                let versions = [
                    source
                        .write(&k.price, &price(i, 0, 0))
                        .await
                        .map_err(|e| fail("price", e))?,
                    source
                        .write(&k.bid, &book_side(i, 0, -1.0))
                        .await
                        .map_err(|e| fail("book:bid", e))?,
                    source
                        .write(&k.ask, &book_side(i, 0, 1.0))
                        .await
                        .map_err(|e| fail("book:ask", e))?,
                    source
                        .write(&k.pos, &position(0, i, 0))
                        .await
                        .map_err(|e| fail("pos", e))?,
                ];
                highest = versions.into_iter().fold(highest, u64::max);
            }
            Ok::<u64, String>(highest)
        });
    }
    let mut highest = 0;
    while let Some(joined) = tasks.join_next().await {
        let v = joined.map_err(|e| format!("a seeding task failed: {e}"))??;
        highest = highest.max(v);
    }
    let risk = source
        .write(&keys.risk, &risk())
        .await
        .map_err(|e| format!("seeding risk {RISK_ACCOUNT}: {e}"))?;
    Ok(highest.max(risk))
}

/// `--role engine` with a database: waits (polling every 50 ms, at most `within`) until the
/// feed process has seeded it, which it does last with the risk account. Err: not in time,
/// or the source failed.
pub(crate) async fn wait_for_seed<Src: SourceReader>(
    source: &Src,
    keys: &Keys,
    within: Duration,
) -> Result<(), String> {
    let give_up = Instant::now() + within;
    loop {
        match mdcache::Load::load(source, &keys.risk).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(None) => {
                return Err(format!(
                    "the database was not seeded within {within:?}: start the feed process (--role feed) too"
                ));
            }
            Err(e) => return Err(format!("the source failed: {e}")),
        }
    }
}

/// Paces a task at `per_s` events per second from `start`.
#[derive(Debug)]
struct Pace {
    per_s: f64,
    start: Instant,
    /// Events accounted for so far (done or dropped).
    accounted: u64,
}

impl Pace {
    fn new(per_s: f64) -> Self {
        Pace {
            per_s,
            start: Instant::now(),
            accounted: 0,
        }
    }

    /// Events to do now, and events to drop because the task is more than [`MAX_LAG`] behind.
    fn due(&mut self) -> (u64, u64) {
        let target = (self.start.elapsed().as_secs_f64() * self.per_s) as u64;
        let backlog = target.saturating_sub(self.accounted);
        self.accounted = self.accounted.max(target);
        let most = ((self.per_s * MAX_LAG.as_secs_f64()).ceil() as u64).max(1);
        if backlog > most {
            (most, backlog - most)
        } else {
            (backlog, 0)
        }
    }
}

/// Awaits `fut` and measures it in nanoseconds.
async fn timed<F: Future>(clock: &quanta::Clock, fut: F) -> (F::Output, u64) {
    let t0 = clock.raw();
    let out = fut.await;
    (out, clock.delta_as_nanos(t0, clock.raw()))
}

fn cache_write(r: &mdcache::Result<mdcache::WriteOutcome>) -> WriteOutcome {
    match r {
        Ok(mdcache::WriteOutcome::Superseded) => WriteOutcome::Superseded,
        Ok(mdcache::WriteOutcome::LocalOnly) => WriteOutcome::LocalOnly,
        Ok(mdcache::WriteOutcome::Queued) => WriteOutcome::Queued,
        Ok(_) => WriteOutcome::Applied,
        Err(_) => WriteOutcome::Error,
    }
}

fn through_write<E>(r: &Result<WriteAck, E>) -> WriteOutcome {
    match r {
        Ok(WriteAck { cached: None, .. }) => WriteOutcome::CacheFailed,
        Ok(WriteAck {
            cached: Some(mdcache::WriteOutcome::Superseded),
            ..
        }) => WriteOutcome::Superseded,
        Ok(_) => WriteOutcome::Applied,
        Err(_) => WriteOutcome::Error,
    }
}

/// How a read ended. A value not marked stale must be within its TTL: no older than `ttl`,
/// and, from L1, with time left (an L2 read may report 0 ms left: `PTTL` counts whole
/// milliseconds).
fn read_outcome<V, E: std::error::Error>(
    r: &Result<Option<Read<V>>, LoadError<E>>,
    ttl: Duration,
) -> ReadOutcome {
    match r {
        Ok(Some(read)) => {
            let expired = read.tier != Tier::Stale
                && (read.age > ttl
                    || (read.tier == Tier::L1 && read.ttl_remaining == Some(Duration::ZERO)));
            if expired {
                ReadOutcome::Expired(read.tier)
            } else {
                ReadOutcome::Value(read.tier)
            }
        }
        Ok(None) => ReadOutcome::NotFound,
        Err(e) => ReadOutcome::Error(match e {
            LoadError::Source(_) => ReadFailure::Source,
            LoadError::SourceTimeout(_) => ReadFailure::SourceTimeout,
            LoadError::Overloaded(_) => ReadFailure::Overloaded,
            other => {
                // Counted as a caller-visible error the source could not make up for: rare by
                // design, so each one is worth its line (the soak and fault runs look for 0).
                tracing::warn!(error = %other, "a read failed in the cache");
                ReadFailure::Cache
            }
        }),
    }
}

/// One feed task at `per_s` updates per second: price and both book sides of a Zipf-popular
/// symbol, written together with the symbol's next sequence number as version.
pub(crate) async fn feed(shared: Arc<Shared>, task: u64, per_s: f64) -> TaskRecord {
    let mut rec = TaskRecord::default();
    let mut rng = Rng::new(2_000 + task);
    let mut pace = Pace::new(per_s);
    let mut tick = tokio::time::interval(PACE_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let (cache, clock) = (&shared.cache, &shared.clock);
    'run: while !shared.stopped() {
        tick.tick().await;
        let (due, dropped) = pace.due();
        rec.run.dropped += dropped;
        for _ in 0..due {
            if shared.stopped() {
                break 'run;
            }
            let w = shared.in_window();
            let s = shared.zipf.sample(&mut rng);
            let k = &shared.keys.symbols[s];
            let n = shared.seqs[s].fetch_add(1, Ordering::Relaxed) + 1;
            let seq = shared.version_base + n;
            let (bids, asks) = (book_side(s, seq, -1.0), book_side(s, seq, 1.0));
            let stamp = shared.wall_ns_at(clock.raw());
            // Together: with Redis the three writes share one round trip's wait.
            let ((p, p_ns), (b, b_ns), (a, a_ns)) = tokio::join!(
                timed(clock, cache.set(&k.price, price(s, seq, stamp), seq)),
                timed(clock, cache.set_book(&k.bid, bids, seq)),
                timed(clock, cache.set_book(&k.ask, asks, seq)),
            );
            if let Mode::InProcess(history) = &shared.freshness {
                // After the calls: the value is in L1 and queued by now, so engines' ages
                // are never overstated by the feed's own call.
                history.record(s, n, shared.micros_at(clock.raw()));
            }
            rec.write(w, Op::WritePrice, p_ns, cache_write(&p));
            rec.write(w, Op::WriteBook, b_ns, cache_write(&b));
            rec.write(w, Op::WriteBook, a_ns, cache_write(&a));
            rec.run.events += 1;
        }
    }
    rec
}

/// One order task at `per_s` events per second: an order (filled at once) and the symbol's
/// new position, both through write-through.
pub(crate) async fn orders<Src: SourceWriter>(
    shared: Arc<Shared>,
    writer: WriteThrough<Src>,
    task: u64,
    per_s: f64,
    run_id: u64,
) -> TaskRecord {
    let mut rec = TaskRecord::default();
    let mut rng = Rng::new(3_000 + task);
    let mut pace = Pace::new(per_s);
    let mut tick = tokio::time::interval(PACE_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let clock = &shared.clock;
    let mut n = 0u64;
    'run: while !shared.stopped() {
        tick.tick().await;
        let (due, dropped) = pace.due();
        rec.run.dropped += dropped;
        for _ in 0..due {
            if shared.stopped() {
                break 'run;
            }
            let w = shared.in_window();
            n += 1;
            let s = shared.zipf.sample(&mut rng);
            let k = &shared.keys.symbols[s];
            let lots = 1 + rng.below(10) as i64;
            let (side, signed) = if rng.coin() {
                (Side::Buy, lots)
            } else {
                (Side::Sell, -lots)
            };
            let qty = shared.positions[s].fetch_add(signed, Ordering::Relaxed) + signed;
            // Letters, digits and '-' only: always a valid identifier.
            let id = format!("O{run_id:x}-{task}-{}", n % ORDER_IDS_PER_TASK);
            let order = Order {
                id: id.clone(),
                symbol: k.id.clone(),
                side,
                px: mid_price(s, n),
                qty: lots as f64,
                filled: lots as f64,
                status: OrderStatus::Filled,
                seq: n,
            };
            let order_key = match shared.cache.key::<Order>(&id) {
                Ok(key) => key,
                Err(_) => {
                    rec.write(w, Op::WriteOrder, 0, WriteOutcome::Error);
                    continue;
                }
            };
            let ((o, o_ns), (p, p_ns)) = tokio::join!(
                timed(clock, writer.write(&order_key, order)),
                timed(clock, writer.write(&k.pos, position(qty, s, n))),
            );
            rec.write(w, Op::WriteOrder, o_ns, through_write(&o));
            rec.write(w, Op::WritePos, p_ns, through_write(&p));
            if shared.track_acks {
                if let Ok(ack) = &o {
                    rec.acked.order(&id, ack.version);
                }
                if let Ok(ack) = &p {
                    rec.acked.position(s, ack.version);
                }
            }
            rec.run.events += 1;
        }
    }
    rec
}

/// One scalp reader: rounds of price, book top-5 (a random side), position and risk reads of
/// Zipf-popular symbols through cache-aside, each timed, until the run stops. An engine's
/// reader (`--engines`, `--role engine`) also measures how far its market-data reads are
/// behind the feed ([`freshness`]): a few atomic loads and histogram records per read.
pub(crate) async fn reader<Src: SourceReader>(
    shared: Arc<Shared>,
    aside: CacheAside<Src>,
    n: u64,
    mut live: Option<LiveRecorder>,
) -> TaskRecord {
    let mut rec = TaskRecord::default();
    let mut fresh = match shared.freshness {
        Mode::Off => None,
        _ => Some(freshness::Recorder::default()),
    };
    let mut rng = Rng::new(1_000 + n);
    let (keys, clock) = (&shared.keys, &shared.clock);
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut rounds = 0u32;
    while !shared.stopped() {
        let s = shared.zipf.sample(&mut rng);
        let k = &keys.symbols[s];
        let hot = s < keys.hot;
        let w = shared.in_window();

        let t0 = clock.raw();
        let r = aside.read(&k.price).await;
        let t1 = clock.raw();
        let price_ns = clock.delta_as_nanos(t0, t1);
        rec.read(
            w,
            Op::ReadPrice,
            price_ns,
            read_outcome(&r, k.price.ttl()),
            hot,
        );
        if let (Some(f), Ok(Some(read))) = (&mut fresh, &r) {
            let ttl = micros(k.price.ttl());
            match &shared.freshness {
                Mode::InProcess(h) => {
                    f.in_process(h, s, read.version, read.tier, ttl, shared.micros_at(t0));
                }
                Mode::ValueAge => f.value_age(
                    read.value.exchange_ts_ns,
                    read.tier,
                    ttl,
                    shared.wall_ns_at(t0),
                ),
                Mode::Off => {}
            }
        }
        drop(r);

        let bid_side = rng.coin();
        let t0 = clock.raw();
        let (outcome, got, ttl) = if bid_side {
            let r = aside.read_book(&k.bid, BOOK_DEPTH).await;
            let got = r
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .map(|b| (b.version, b.tier));
            (read_outcome(&r, k.bid.ttl()), got, k.bid.ttl())
        } else {
            let r = aside.read_book(&k.ask, BOOK_DEPTH).await;
            let got = r
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .map(|b| (b.version, b.tier));
            (read_outcome(&r, k.ask.ttl()), got, k.ask.ttl())
        };
        let t1 = clock.raw();
        let book_ns = clock.delta_as_nanos(t0, t1);
        rec.read(w, Op::ReadBook, book_ns, outcome, hot);
        // Books carry no stamp: across processes only prices are measured.
        if let (Some(f), Mode::InProcess(h), Some((version, tier))) =
            (&mut fresh, &shared.freshness, got)
        {
            f.in_process(h, s, version, tier, micros(ttl), shared.micros_at(t0));
        }

        let t0 = clock.raw();
        let r = aside.read(&k.pos).await;
        let t1 = clock.raw();
        let pos_ns = clock.delta_as_nanos(t0, t1);
        rec.read(w, Op::ReadPos, pos_ns, read_outcome(&r, k.pos.ttl()), hot);
        drop(r);

        let t0 = clock.raw();
        let r = aside.read(&keys.risk).await;
        let t1 = clock.raw();
        let risk_ns = clock.delta_as_nanos(t0, t1);
        rec.read(
            w,
            Op::ReadRisk,
            risk_ns,
            read_outcome(&r, keys.risk.ttl()),
            false,
        );
        drop(r);

        if let Some(live) = &mut live {
            live.record(price_ns, book_ns, pos_ns, risk_ns);
        }
        rounds += 1;
        if rounds == READ_ROUNDS_PER_YIELD {
            rounds = 0;
            if let Some(live) = &mut live {
                live.maybe_publish(clock, t1);
            }
            tokio::task::yield_now().await;
        }
    }
    rec.fresh = fresh;
    rec
}

/// `--warm`: every reading instance's prices, book sides and positions of every symbol,
/// loaded from the source before the run (`CacheAside::warm`), and how long it took.
pub(crate) async fn warm<Src: mdcache::SourceReader>(
    asides: &[(usize, CacheAside<Src>)],
    keys: &Keys,
) -> Result<(), Failure> {
    let started = Instant::now();
    let ids: Vec<&str> = keys.symbols.iter().map(|s| s.id.as_str()).collect();
    let fail =
        |e: mdcache::LoadError<Src::Error>| Failure::unavailable(format!("warming failed: {e}"));
    let (mut filled, mut queries) = (0usize, 0usize);
    for (_, aside) in asides {
        for report in [
            aside
                .warm::<mdcache::Price>(&ids, |_| {})
                .await
                .map_err(fail)?,
            aside
                .warm::<mdcache::Position>(&ids, |_| {})
                .await
                .map_err(fail)?,
            aside
                .warm_books::<mdcache::BookBid>(&ids, |_| {})
                .await
                .map_err(fail)?,
            aside
                .warm_books::<mdcache::BookAsk>(&ids, |_| {})
                .await
                .map_err(fail)?,
        ] {
            filled += report.filled + report.l1_only + report.kept_newer;
            queries += report.queries;
        }
    }
    print_line(&format!(
        "warmed {filled} keys into {} instance(s) in {} ms ({queries} source queries)",
        asides.len(),
        started.elapsed().as_millis()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_catches_up_and_drops_what_is_too_late() {
        let mut pace = Pace {
            per_s: 1_000.0,
            start: Instant::now() - Duration::from_millis(50),
            accounted: 0,
        };
        let (due, dropped) = pace.due();
        assert!((50..60).contains(&due), "{due}");
        assert_eq!(dropped, 0);
        // Half a second behind: 100 ms worth is done, the rest dropped.
        pace.start -= Duration::from_millis(500);
        let (due, dropped) = pace.due();
        assert_eq!(due, 100);
        assert!((400..420).contains(&dropped), "{dropped}");
    }

    #[test]
    fn books_are_valid_and_on_the_right_side() {
        let bids = book_side(3, 7, -1.0);
        let asks = book_side(3, 7, 1.0);
        let mid = mid_price(3, 7);
        assert_eq!(bids.levels.len(), BOOK_LEVELS);
        assert!(bids.levels.iter().all(|l| l.price < mid && l.qty > 0.0));
        assert!(asks.levels.iter().all(|l| l.price > mid));
    }

    #[tokio::test]
    async fn seeding_fills_the_source_and_returns_the_highest_version() {
        let cache = Cache::builder().build().unwrap();
        let keys = Keys::new(&cache, 3).unwrap();
        assert_eq!(keys.hot, 1);
        let source = Arc::new(mdcache::MemorySource::default());
        let highest = seed(Arc::clone(&source), Arc::new(keys)).await.unwrap();
        // 3 symbols × 4 keys + the risk account, versions 1..=13.
        assert_eq!(source.len(), 13);
        assert_eq!(highest, 13);
    }
}
