//! The backplane (DESIGN §4 rule 5): publishes this instance's authoritative writes and invalidations on the namespace's Redis pub/sub channel, batched, and applies other instances' to L1 without reading Redis.
//!
//! **Publishing.** Writes go into an outbox that keeps one item per key (the highest version;
//! a delete replaces whatever was there) and holds at most `max_pending` keys. A publisher task
//! sends what the outbox holds at most once per flush interval (at once when the last round
//! is that old already: what gathered during a slow `PUBLISH` does not wait again), one message per
//! [`MAX_ITEMS_PER_MESSAGE`] items: `PUBLISH` on `<namespace>:backplane` over its own
//! connection (not the pool, not the breaker), under the writer's batch deadline. Each message carries the
//! //! instance's random id and its next sequence number. Market data (a conflating kind's
//! `set`/`set_book`) carries the value itself; a write-through or other synchronous write
//! carries `(key, version)` (copies older than it go); a delete carries the key. Cache-aside
//! fills are not published. If the outbox overflows, or a publish fails, the sequence skips a
//! number, so every receiver sees the gap.
//!
//! **Receiving.** A subscriber task holds its own pub/sub connection. It reads each
//! message's header first: it skips the instance's own messages (apart from timing its
//! canary) and ignores a sequence number it has already seen, without decoding their items.
//! A gap in a publisher's sequence bumps the L1 epoch; so does a message it cannot read
//! (another build's format: whatever it updated is unknown), and so does the loss of
//! the subscription, both when it is lost and once it is re-established, since updates
//! published in between are gone. A bumped epoch means nothing cached before it is served
//! again (see [`L1::bump_epoch`](crate::l1::L1::bump_epoch)). Items are applied to L1 under
//! the version rule: a value newer than what L1 holds replaces it, and an invalidation drops
//! older copies and negative entries. Receiving never reads Redis.
//!
//! **Its own thread.** Publisher and subscriber run on a thread of their own (see
//! [`Backplane::spawn`]), so an engine runtime kept busy by readers that hit L1 delays
//! neither: in a 4-engine `simulate` on 2 cores, moving them off the runtime took the
//! coherence lag's p99 from 9.4 ms to 6.0 ms and the reads out of date past 10 ms from 4,063
//! to 167 (docs/benchmarks.md).
//!
//! **Canary.** Every [`CANARY_EVERY`] the publisher sends a message with no items and its
//! send time. Its own subscriber times it (the backplane's lag) and so proves the path works:
//! a canary published and not received within [`CANARY_GIVE_UP`] counts as a lost
//! subscription (resubscribe, epoch bump).

pub(crate) mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::stats::{BackplaneSnapshot, Count, LatencyHistogram};
use wire::{Header, Item, Message};

/// Most items in one message (a bigger batch goes out as several messages).
pub(crate) const MAX_ITEMS_PER_MESSAGE: usize = 512;

/// How often an instance sends its canary.
pub(crate) const CANARY_EVERY: Duration = Duration::from_secs(1);

/// A canary published this long ago and still not received means the subscription is dead
/// though its connection looks alive: the subscriber resubscribes (and bumps the epoch).
const CANARY_GIVE_UP: Duration = Duration::from_secs(3);

/// Most publishers whose sequence a receiver tracks; beyond it the table starts afresh (a
/// publisher's next message then sets its baseline without a gap check).
const MAX_PEERS: usize = 4_096;

/// First and longest wait between attempts to (re)subscribe.
const RESUBSCRIBE_FIRST: Duration = Duration::from_millis(20);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(1);

/// Settings of one instance's backplane.
#[derive(Clone)]
pub(crate) struct BackplaneOptions {
    /// Where and how the publisher and the subscriber connect (the L2's settings): one
    /// server, or a cluster's seeds, tried in turn (classic pub/sub reaches every node of a
    /// cluster, so any node will do).
    pub(crate) servers: Vec<redis::ConnectionInfo>,
    /// `<namespace>:backplane`.
    pub(crate) channel: String,
    /// Deadline of connecting and subscribing.
    pub(crate) connect_timeout: Duration,
    /// How long the publisher gathers before it sends (the writer's flush interval).
    pub(crate) interval: Duration,
    /// Deadline of one `PUBLISH`: the writer's batch deadline, or the operation deadline if
    /// that is longer (no caller waits on it, and a publish given up is a gap that makes
    /// every receiver distrust its L1).
    pub(crate) publish_timeout: Duration,
    /// Most keys the outbox holds.
    pub(crate) max_pending: usize,
}

impl BackplaneOptions {
    /// The server for connection attempt `n`: the servers in turn.
    fn server(&self, n: usize) -> redis::RedisResult<redis::ConnectionInfo> {
        match self.servers.len() {
            0 => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "the backplane has no server to connect to",
            ))),
            len => Ok(self.servers[n % len].clone()),
        }
    }
}

/// By hand: the connection settings may hold a password.
impl std::fmt::Debug for BackplaneOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackplaneOptions")
            .field(
                "addrs",
                &self
                    .servers
                    .iter()
                    .map(|i| i.addr().to_string())
                    .collect::<Vec<_>>(),
            )
            .field("channel", &self.channel)
            .field("connect_timeout", &self.connect_timeout)
            .field("interval", &self.interval)
            .field("publish_timeout", &self.publish_timeout)
            .field("max_pending", &self.max_pending)
            .finish()
    }
}

#[derive(Debug, Default)]
struct Outbox {
    items: HashMap<Arc<str>, Item>,
    /// An item was dropped for room: the next message skips a sequence number.
    overflowed: bool,
    /// Rounds that took items (or found none) so far; [`Backplane::drained`] waits for the
    /// round that took its items to finish.
    rounds: u64,
}

/// The backplane's counters (see [`BackplaneSnapshot`]), each also a `metrics` counter.
#[derive(Debug)]
struct Counters {
    published: Count,
    published_items: Count,
    publish_failed: Count,
    dropped: Count,
    received: Count,
    applied: Count,
    ignored_older: Count,
    duplicates: Count,
    malformed: Count,
    gaps: Count,
    epoch_bumps: Count,
    subscription_losses: Count,
    canaries_missed: Count,
}

impl Default for Counters {
    fn default() -> Self {
        let c = |name: &'static str| Count::new(metrics::counter!(name));
        let item = |outcome: &'static str| {
            Count::new(metrics::counter!("mdcache_backplane_items_total", "outcome" => outcome))
        };
        Counters {
            published: c("mdcache_backplane_published_total"),
            published_items: item("published"),
            publish_failed: c("mdcache_backplane_publish_failures_total"),
            dropped: item("dropped"),
            received: c("mdcache_backplane_received_total"),
            applied: item("applied"),
            ignored_older: item("ignored_older"),
            duplicates: c("mdcache_backplane_duplicates_total"),
            malformed: c("mdcache_backplane_malformed_total"),
            gaps: c("mdcache_backplane_gaps_total"),
            epoch_bumps: c("mdcache_backplane_epoch_bumps_total"),
            subscription_losses: c("mdcache_backplane_subscription_losses_total"),
            canaries_missed: c("mdcache_backplane_canaries_missed_total"),
        }
    }
}

/// What the subscriber applies received updates to: the engine's L1, held weakly (the
/// engine implements it; the backplane does not know the engine).
pub(crate) trait Receiver: Send + Sync {
    /// Applies one update; true when L1 changed.
    fn apply(&self, item: Item) -> bool;
    /// Distrusts everything L1 holds now.
    fn bump_epoch(&self);
}

/// One instance's backplane: the outbox, the counters and the two tasks' shared state.
#[derive(Debug)]
pub(crate) struct Backplane {
    id: u64,
    opts: BackplaneOptions,
    outbox: Mutex<Outbox>,
    wake: Notify,
    /// A caller waits in [`Backplane::drained`]: publish without waiting out the interval.
    hurry: Notify,
    counters: Counters,
    canary_lag: LatencyHistogram,
    canary_lag_seconds: metrics::Histogram,
    subscribed: AtomicBool,
    /// Rounds finished (published, or failed), for [`Backplane::drained`].
    done: tokio::sync::watch::Sender<u64>,
    /// Send time (Unix ns) of the last canary published, and of the last one received.
    canary_sent: AtomicU64,
    canary_seen: AtomicU64,
    /// Each publisher's last sequence seen.
    peers: Mutex<HashMap<u64, u64>>,
    stop: CancellationToken,
}

impl Backplane {
    pub(crate) fn new(opts: BackplaneOptions) -> Self {
        Backplane {
            id: random_id(),
            opts,
            outbox: Mutex::default(),
            wake: Notify::new(),
            hurry: Notify::new(),
            counters: Counters::default(),
            canary_lag: LatencyHistogram::default(),
            canary_lag_seconds: metrics::histogram!("mdcache_backplane_canary_lag_seconds"),
            subscribed: AtomicBool::new(false),
            done: tokio::sync::watch::Sender::new(0),
            canary_sent: AtomicU64::new(0),
            canary_seen: AtomicU64::new(0),
            peers: Mutex::default(),
            stop: CancellationToken::new(),
        }
    }

    /// Starts the publisher, and the subscriber when there is an L1 to apply updates to (an
    /// instance without one only publishes). They stop when [`stop`](Self::stop) is called.
    ///
    /// Both run on a thread of their own (`mdcache-backplane`, a current-thread runtime),
    /// each with its own connection: an engine's runtime busy with its own work — readers
    /// that hit L1 never wait — does not delay coherence, since the operating system wakes
    /// that thread when there is something to publish or a message arrives. If the thread
    /// cannot be started, they run on the current runtime instead.
    pub(crate) fn spawn(self: &Arc<Self>, receiver: Option<Weak<dyn Receiver>>) {
        let (bp, engine) = (Arc::clone(self), receiver.clone());
        let thread = std::thread::Builder::new()
            .name("mdcache-backplane".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(run(bp, engine)),
                    Err(e) => {
                        tracing::error!(error = %e, "backplane: no runtime for its thread; the backplane is off");
                        bp.done.send_replace(u64::MAX);
                    }
                }
            });
        if let Err(e) = thread {
            tracing::warn!(error = %e, "backplane: no thread of its own; running on the runtime");
            tokio::spawn(run(Arc::clone(self), receiver));
        }
    }

    /// Resolves once everything queued before the call has been published (or its publish
    /// failed): what `Cache::flush` waits for, so a process that writes and exits (a one-shot
    /// command) still tells the other instances. At once when the backplane stops or its
    /// publisher task is gone.
    pub(crate) async fn drained(&self) {
        let mut done = self.done.subscribe();
        loop {
            done.borrow_and_update();
            let waiting_for = {
                let out = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
                // Items still queued need one more round; items taken need that round's end.
                out.rounds + u64::from(!out.items.is_empty())
            };
            if *done.borrow() >= waiting_for || self.stop.is_cancelled() {
                return;
            }
            // A stored permit at most makes one later round go early: harmless.
            self.hurry.notify_one();
            self.wake.notify_one();
            tokio::select! {
                _ = self.stop.cancelled() => return,
                changed = done.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Stops both tasks.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Queues `item` for the next message: one item per key, the highest version (a delete
    /// replaces anything; anything replaces a delete).
    pub(crate) fn publish(&self, key: &Arc<str>, item: Item) {
        let first = {
            let mut out = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            let was_empty = out.items.is_empty();
            let full = out.items.len() >= self.opts.max_pending;
            match out.items.get_mut(key) {
                Some(held) => {
                    let older = matches!(
                        (held.version(), item.version()),
                        (Some(h), Some(v)) if v < h
                    );
                    if !older {
                        *held = item;
                    }
                }
                None if full => {
                    out.overflowed = true;
                    self.counters.dropped.inc();
                }
                None => {
                    out.items.insert(Arc::clone(key), item);
                }
            }
            was_empty
        };
        if first {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> (Vec<Item>, bool) {
        let mut out = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        out.rounds += 1;
        let overflowed = std::mem::take(&mut out.overflowed);
        (
            out.items.drain().map(|(_, item)| item).collect(),
            overflowed,
        )
    }

    /// The figures for `Cache::stats()`.
    pub(crate) fn snapshot(&self) -> BackplaneSnapshot {
        let c = &self.counters;
        let lag = self.canary_lag.summary();
        BackplaneSnapshot {
            subscribed: self.subscribed.load(Ordering::Acquire),
            published: c.published.get(),
            published_items: c.published_items.get(),
            publish_failed: c.publish_failed.get(),
            dropped: c.dropped.get(),
            received: c.received.get(),
            applied: c.applied.get(),
            ignored_older: c.ignored_older.get(),
            duplicates: c.duplicates.get(),
            malformed: c.malformed.get(),
            gaps: c.gaps.get(),
            epoch_bumps: c.epoch_bumps.get(),
            subscription_losses: c.subscription_losses.get(),
            canaries_missed: c.canaries_missed.get(),
            canary_lag_p50_us: lag.p50,
            canary_lag_p99_us: lag.p99,
            canary_lag_max_us: lag.max,
        }
    }

    /// A canary published more than [`CANARY_GIVE_UP`] ago has not come back.
    fn canary_overdue(&self) -> bool {
        let sent = self.canary_sent.load(Ordering::Acquire);
        let seen = self.canary_seen.load(Ordering::Acquire);
        sent > seen
            && unix_ns().saturating_sub(sent)
                > u64::try_from(CANARY_GIVE_UP.as_nanos()).unwrap_or(u64::MAX)
    }

    /// A message that cannot be read (another build's format, or damage): whatever it
    /// updated is unknown, so L1 is distrusted as for a gap.
    fn malformed(&self, engine: &Weak<dyn Receiver>, e: &crate::error::Error) {
        self.counters.malformed.inc();
        tracing::debug!(error = %e, "backplane: unreadable message");
        self.bump(engine, "an unreadable message");
    }

    /// Distrusts L1 (see [`L1::bump_epoch`](crate::l1::L1::bump_epoch)).
    fn bump(&self, engine: &Weak<dyn Receiver>, why: &'static str) {
        if let Some(engine) = engine.upgrade() {
            engine.bump_epoch();
        }
        self.counters.epoch_bumps.inc();
        tracing::info!(
            reason = why,
            "backplane: L1 epoch bumped; earlier entries distrusted"
        );
    }

    /// Handles one received message: the header first, so the instance's own messages (and
    /// duplicates) are skipped without decoding their batch.
    fn receive(&self, bytes: &[u8], engine: &Weak<dyn Receiver>) {
        let m = match wire::decode_header(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.malformed(engine, &e);
                return;
            }
        };
        if m.publisher == self.id {
            if m.canary_unix_ns > 0 {
                self.canary_seen
                    .fetch_max(m.canary_unix_ns, Ordering::AcqRel);
                let lag = Duration::from_nanos(unix_ns().saturating_sub(m.canary_unix_ns));
                self.canary_lag.record(lag);
                self.canary_lag_seconds.record(lag.as_secs_f64());
            }
            return;
        }
        self.counters.received.inc();
        let gap = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            match peers.get(&m.publisher).copied() {
                Some(last) if m.seq <= last => {
                    self.counters.duplicates.inc();
                    return;
                }
                Some(last) => {
                    peers.insert(m.publisher, m.seq);
                    m.seq != last + 1
                }
                None => {
                    if peers.len() >= MAX_PEERS {
                        peers.clear();
                    }
                    peers.insert(m.publisher, m.seq);
                    false
                }
            }
        };
        if gap {
            self.counters.gaps.inc();
            self.bump(engine, "a gap in a publisher's sequence");
        }
        let items = match wire::decode_items(bytes) {
            Ok(items) => items,
            Err(e) => {
                self.malformed(engine, &e);
                return;
            }
        };
        let Some(engine) = engine.upgrade() else {
            return;
        };
        for item in items {
            if engine.apply(item) {
                self.counters.applied.inc();
            } else {
                self.counters.ignored_older.inc();
            }
        }
    }
}

/// A random 64-bit id, from the standard library's randomly seeded hasher (no extra crate).
fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(unix_ns().into());
    h.finish() | 1
}

/// Now as Unix time in ns (0 if the clock is before 1970).
pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The backplane's two loops, until it stops.
async fn run(bp: Arc<Backplane>, receiver: Option<Weak<dyn Receiver>>) {
    match receiver {
        Some(engine) => {
            tokio::join!(publish_loop(Arc::clone(&bp)), subscribe_loop(bp, engine));
        }
        None => publish_loop(bp).await,
    }
}

/// The publisher's own connection: opened on first use, dropped after an error, and not
/// reopened before a back-off (20 ms doubling to 1 s) while Redis refuses it. Outside the
/// pool and the breaker: publishing does not compete with the engine's reads for a
/// connection, and a slow publish does not count against Redis for the callers.
#[derive(Default)]
struct Publisher {
    conn: Option<redis::aio::MultiplexedConnection>,
    /// No connection attempt before this.
    retry_at: Option<tokio::time::Instant>,
    wait: Option<Duration>,
    /// Connection attempts so far: picks the server to try ([`BackplaneOptions::server`]).
    attempts: usize,
}

impl Publisher {
    /// `PUBLISH` of `message`, within the options' deadlines.
    async fn publish(&mut self, opts: &BackplaneOptions, message: &[u8]) -> Result<(), String> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                if self
                    .retry_at
                    .is_some_and(|at| tokio::time::Instant::now() < at)
                {
                    return Err("not connected (waiting to reconnect)".to_owned());
                }
                let server = opts.server(self.attempts);
                self.attempts = self.attempts.wrapping_add(1);
                let opened = tokio::time::timeout(opts.connect_timeout, async {
                    redis::Client::open(server?)?
                        .get_multiplexed_async_connection()
                        .await
                })
                .await;
                match opened {
                    Ok(Ok(c)) => {
                        (self.retry_at, self.wait) = (None, None);
                        self.conn.insert(c)
                    }
                    failed => {
                        let wait = self
                            .wait
                            .map_or(RESUBSCRIBE_FIRST, |w| (w * 2).min(RESUBSCRIBE_MAX));
                        self.wait = Some(wait);
                        self.retry_at = Some(tokio::time::Instant::now() + wait);
                        return Err(match failed {
                            Ok(Err(e)) => format!("connecting: {e}"),
                            _ => "connecting timed out".to_owned(),
                        });
                    }
                }
            }
        };
        let sent = tokio::time::timeout(
            opts.publish_timeout,
            redis::cmd("PUBLISH")
                .arg(&opts.channel)
                .arg(message)
                .query_async::<i64>(conn),
        )
        .await;
        match sent {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                // The connection may be broken: open a new one next time.
                self.conn = None;
                Err(e.to_string())
            }
            // Late, not necessarily lost (a multiplexed connection matches the late reply
            // and discards it); the sequence number is spent either way.
            Err(_) => Err(format!(
                "no reply within {} ms",
                opts.publish_timeout.as_millis()
            )),
        }
    }
}

/// The publisher: waits for a first item (or the canary's time), then publishes everything
/// in messages of at most [`MAX_ITEMS_PER_MESSAGE`] items, at most once per interval: a
/// round that follows the last one by less than the interval waits out the rest (gathering
/// meanwhile); one that follows it by more — the last `PUBLISH` took that long, and items
/// gathered while it ran — goes at once.
async fn publish_loop(bp: Arc<Backplane>) {
    // However the task ends (stopped, or dropped with its runtime), nobody waits for a round
    // that will not come.
    struct Ended(Arc<Backplane>);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.done.send_replace(u64::MAX);
        }
    }
    let _ended = Ended(Arc::clone(&bp));
    let mut seq = 0u64;
    let mut conn = Publisher::default();
    let mut next_canary = tokio::time::Instant::now() + CANARY_EVERY;
    let mut last_round = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = bp.stop.cancelled() => return,
            _ = bp.wake.notified() => {
                tokio::select! {
                    _ = bp.stop.cancelled() => return,
                    _ = tokio::time::sleep_until(last_round + bp.opts.interval) => {}
                    _ = bp.hurry.notified() => {}
                }
            }
            _ = tokio::time::sleep_until(next_canary) => {}
        }
        last_round = tokio::time::Instant::now();
        let (items, overflowed) = bp.take();
        let now = tokio::time::Instant::now();
        let canary = now >= next_canary;
        if canary {
            next_canary = now + CANARY_EVERY;
        }
        if overflowed {
            // A deliberate gap: receivers cannot trust what they hold of the dropped keys.
            seq += 1;
        }
        let mut chunks: Vec<Vec<Item>> = Vec::new();
        let mut items = items;
        while items.len() > MAX_ITEMS_PER_MESSAGE {
            let rest = items.split_off(MAX_ITEMS_PER_MESSAGE);
            chunks.push(std::mem::replace(&mut items, rest));
        }
        if !items.is_empty() || canary {
            chunks.push(items);
        }
        let last = chunks.len().saturating_sub(1);
        for (n, chunk) in chunks.into_iter().enumerate() {
            seq += 1;
            let count = chunk.len() as u64;
            let canary_ns = if canary && n == last { unix_ns() } else { 0 };
            let m = Message {
                header: Header {
                    publisher: bp.id,
                    seq,
                    canary_unix_ns: canary_ns,
                },
                items: chunk,
            };
            let sent = match wire::encode(&m) {
                Ok(bytes) => conn.publish(&bp.opts, &bytes).await,
                Err(e) => Err(e.to_string()),
            };
            match sent {
                Ok(()) => {
                    bp.counters.published.inc();
                    bp.counters.published_items.add(count);
                    if canary_ns > 0 {
                        bp.canary_sent.fetch_max(canary_ns, Ordering::AcqRel);
                    }
                }
                // The sequence number is spent: receivers see the gap.
                Err(e) => {
                    bp.counters.publish_failed.inc();
                    tracing::debug!(error = %e, "backplane: publish failed");
                }
            }
        }
        bp.done.send_modify(|d| *d = d.saturating_add(1));
    }
}

/// The subscriber: (re)connects, subscribes, and applies messages until the connection is
/// lost or the backplane stops.
async fn subscribe_loop(bp: Arc<Backplane>, engine: Weak<dyn Receiver>) {
    let mut wait = RESUBSCRIBE_FIRST;
    let mut lost_before = false;
    let mut attempts = 0usize;
    loop {
        if bp.stop.is_cancelled() {
            return;
        }
        let server = bp.opts.server(attempts);
        attempts = attempts.wrapping_add(1);
        let stream = tokio::time::timeout(bp.opts.connect_timeout, async {
            let client = redis::Client::open(server?)?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&bp.opts.channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        })
        .await;
        let mut stream = match stream {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "backplane: subscribe failed; retrying");
                if !pause(&bp, &mut wait).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                tracing::debug!("backplane: subscribe timed out; retrying");
                if !pause(&bp, &mut wait).await {
                    return;
                }
                continue;
            }
        };
        wait = RESUBSCRIBE_FIRST;
        bp.peers.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if lost_before {
            // Updates published while nobody listened are gone.
            bp.bump(&engine, "resubscribed after a lost subscription");
        }
        bp.subscribed.store(true, Ordering::Release);
        // Canaries sent before this subscription cannot arrive on it.
        bp.canary_seen
            .fetch_max(bp.canary_sent.load(Ordering::Acquire), Ordering::AcqRel);
        let mut check = tokio::time::interval(CANARY_EVERY);
        loop {
            use futures_util::StreamExt;
            tokio::select! {
                _ = bp.stop.cancelled() => return,
                msg = stream.next() => match msg {
                    Some(msg) => bp.receive(msg.get_payload_bytes(), &engine),
                    None => break,
                },
                _ = check.tick() => {
                    if bp.canary_overdue() {
                        bp.counters.canaries_missed.inc();
                        tracing::warn!("backplane: own canary never arrived; resubscribing");
                        break;
                    }
                }
            }
        }
        bp.subscribed.store(false, Ordering::Release);
        bp.counters.subscription_losses.inc();
        lost_before = true;
        tracing::warn!("backplane: subscription lost; resubscribing");
        bp.bump(&engine, "the subscription was lost");
    }
}

/// Waits before the next subscribe attempt (doubling, capped); false when stopped.
async fn pause(bp: &Backplane, wait: &mut Duration) -> bool {
    let w = *wait;
    *wait = (*wait * 2).min(RESUBSCRIBE_MAX);
    tokio::select! {
        _ = bp.stop.cancelled() => false,
        _ = tokio::time::sleep(w) => true,
    }
}
