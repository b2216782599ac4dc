//! The conflating market-data writer (DESIGN §4 rule 8): pending writes of conflating kinds, latest version per key, flushed to Redis as one pipeline per batch by a task the cache owns.
//!
//! A `set` or `set_book` of a conflating kind (by default `price`, `book:bid`, `book:ask`)
//! lands in L1 at once and is [`enqueue`](Writer::enqueue)d here; the caller gets
//! [`WriteOutcome::Queued`](crate::WriteOutcome::Queued) without waiting for Redis. Per key
//! only the highest pending version is kept. The flush task wakes when the first key is
//! pending, gathers for the flush interval (or until `flush_max_keys` are pending, or a
//! caller asked for a flush), then writes everything pending in batches of at most
//! `flush_max_keys`, each one pipeline of versioned compare-and-sets — one breaker outcome per
//! batch. Between batches it rests in proportion to how long the last one took
//! (`max_busy_pct`, default: Redis busy with the writer at most half the time), so a feed
//! faster than Redis conflates more instead of queueing the synchronous operations of this
//! and every other instance behind back-to-back batches. While the breaker is not closed, or when a batch fails, the keys go to the dirty
//! log (their values stay in L1), exactly like a failed synchronous `set`.
//!
//! Memory is bounded: one entry per key, at most `max_pending` keys; a write of a new key
//! beyond that is not queued and goes to L1 alone with the key recorded dirty
//! ([`WriteOutcome::LocalOnly`](crate::WriteOutcome::LocalOnly)), counted as `overflow`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::config::WriterOptions;
use crate::error::{Error, Result};
use crate::l2::{L2Tier, Put, PutReply};
use crate::schema::BookSide;
use crate::stats::{Count, LatencyHistogram, WriterSnapshot};

/// What a pending write sends to Redis.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    /// A value's envelope (version and TTL inside).
    Value(Vec<u8>),
    /// A whole book side, sorted best first.
    Book(Arc<BookSide>),
}

/// One key's latest pending write.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) payload: Payload,
    pub(crate) version: u64,
    pub(crate) ttl: Duration,
    /// The key prefix, for the dirty log.
    prefix: &'static str,
    /// When the key became pending (its first write since the last flush), for the
    /// enqueue → acknowledged lag.
    enqueued: std::time::Instant,
    /// When this version was written: its TTL runs from here, not from the flush.
    written: std::time::Instant,
    /// The same moment as a Unix time in ms plus the TTL: when Redis must drop it.
    expire_at_ms: u64,
    /// Its place in the queue's order, for [`Engine::flush`].
    seq: u64,
    /// A cache-aside fill (the source's value after a miss), not a write: a failed flush
    /// does not record it dirty, since Redis holds nothing the source does not.
    fill: bool,
}

/// What [`Writer::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued (replacing an older pending version of the key, if there was one).
    Queued,
    /// A higher version of the key is already pending: this one is dropped.
    Older,
    /// The pending map is full: not queued.
    Full,
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<Arc<str>, Pending>,
    /// Keys in the order they became pending, so batches go oldest first and no key waits
    /// behind newer ones under load. A key forgotten (deleted) stays here until drained,
    /// skipped then; so this holds at most the pending keys plus those forgotten since.
    order: VecDeque<Arc<str>>,
    /// Batches drained so far (a batch drained is flushed before the next is drained).
    drained: u64,
}

/// The writer's counters (see [`WriterSnapshot`]), each also a `metrics` counter.
#[derive(Debug)]
struct Counters {
    enqueued: Count,
    fills: Count,
    fills_skipped: Count,
    conflated: Count,
    dropped_older: Count,
    overflow: Count,
    expired: Count,
    flushed: Count,
    superseded: Count,
    failed: Count,
    batches: Count,
    batch_max: AtomicU64,
    batch_keys: metrics::Histogram,
    flush_seconds: metrics::Histogram,
    lag_seconds: metrics::Histogram,
    pending: metrics::Gauge,
}

impl Default for Counters {
    fn default() -> Self {
        let write = |outcome: &'static str| {
            Count::new(metrics::counter!("mdcache_writer_writes_total", "outcome" => outcome))
        };
        let key = |outcome: &'static str| {
            Count::new(metrics::counter!("mdcache_writer_keys_total", "outcome" => outcome))
        };
        Counters {
            enqueued: write("enqueued"),
            fills: write("fill"),
            fills_skipped: write("fill_skipped"),
            conflated: write("conflated"),
            dropped_older: write("dropped_older"),
            overflow: write("overflow"),
            expired: key("expired"),
            flushed: key("flushed"),
            superseded: key("superseded"),
            failed: key("failed"),
            batches: Count::new(metrics::counter!("mdcache_writer_batches_total")),
            batch_max: AtomicU64::new(0),
            batch_keys: metrics::histogram!("mdcache_writer_batch_keys"),
            flush_seconds: metrics::histogram!("mdcache_writer_flush_seconds"),
            lag_seconds: metrics::histogram!("mdcache_writer_lag_seconds"),
            pending: metrics::gauge!("mdcache_writer_pending"),
        }
    }
}

/// The writer's state shared by the cache and its flush task.
#[derive(Debug)]
pub(crate) struct Writer {
    opts: WriterOptions,
    state: Mutex<State>,
    /// The first key became pending.
    wake: Notify,
    /// Flush now: `flush_max_keys` are pending, or a caller is waiting in [`Engine::flush`].
    urgent: Notify,
    urgent_flag: AtomicBool,
    /// A caller awaits [`Engine::flush`]: cuts the pacing rest short too.
    asked: Notify,
    asked_flag: AtomicBool,
    /// True while anything is pending: lets a read that missed L1 skip the lock when the
    /// writer is idle (always, on an instance that reads market data but does not write it).
    any: AtomicBool,
    /// Completed drains (batch count), for [`Engine::flush`].
    done: watch::Sender<u64>,
    seq: AtomicU64,
    counters: Counters,
    lag: LatencyHistogram,
    flush_time: LatencyHistogram,
    last_error: Mutex<Option<Error>>,
    stop: CancellationToken,
}

impl Writer {
    pub(crate) fn new(opts: WriterOptions) -> Self {
        Writer {
            opts,
            state: Mutex::default(),
            wake: Notify::new(),
            urgent: Notify::new(),
            urgent_flag: AtomicBool::new(false),
            asked: Notify::new(),
            asked_flag: AtomicBool::new(false),
            any: AtomicBool::new(false),
            done: watch::Sender::new(0),
            seq: AtomicU64::new(0),
            counters: Counters::default(),
            lag: LatencyHistogram::default(),
            flush_time: LatencyHistogram::default(),
            last_error: Mutex::new(None),
            stop: CancellationToken::new(),
        }
    }

    /// True when writes of `kind` are conflated.
    #[inline]
    pub(crate) fn conflates(&self, kind: &str) -> bool {
        self.opts.conflate.iter().any(|k| k == kind)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the latest write of `key` (see [`Enqueued`]); `fill` for a cache-aside fill.
    pub(crate) fn enqueue(
        &self,
        key: &Arc<str>,
        prefix: &'static str,
        payload: Payload,
        version: u64,
        ttl: Duration,
        fill: bool,
    ) -> Enqueued {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let now = std::time::Instant::now();
        let entry = Pending {
            payload,
            version,
            ttl,
            prefix,
            enqueued: now,
            written: now,
            expire_at_ms: unix_ms_after(ttl),
            seq,
            fill,
        };
        let (outcome, len) = {
            let mut st = self.lock();
            let len = st.pending.len();
            match st.pending.get_mut(key) {
                Some(held) if held.version > version => (Enqueued::Older, len),
                Some(held) => {
                    // Latest wins; the wait is counted from the first of the conflated writes,
                    // so the lag reported is how old the key's Redis copy got (a pending fill
                    // does not start it). A fill over a pending write stays a write: that
                    // write was promised to Redis or to the dirty log.
                    let first = if held.fill { now } else { held.enqueued };
                    let was_fill = held.fill;
                    *held = entry;
                    held.enqueued = first;
                    held.fill = was_fill && fill;
                    self.counters.conflated.inc();
                    (Enqueued::Queued, len)
                }
                None if len >= self.opts.max_pending.get() => (Enqueued::Full, len),
                // A fill rides a batch only when it has room: with a full batch already
                // waiting, ticks would queue behind it, and the fill owes Redis nothing.
                None if fill && len >= self.opts.flush_max_keys.get() => (Enqueued::Full, len),
                None => {
                    st.pending.insert(Arc::clone(key), entry);
                    st.order.push_back(Arc::clone(key));
                    self.any.store(true, Ordering::Release);
                    (Enqueued::Queued, len + 1)
                }
            }
        };
        match outcome {
            Enqueued::Queued => {
                if fill {
                    self.counters.fills.inc();
                } else {
                    self.counters.enqueued.inc();
                }
                if len == 1 {
                    self.wake.notify_one();
                }
                if len >= self.opts.flush_max_keys.get() {
                    self.hurry();
                }
            }
            Enqueued::Older => {
                self.counters.dropped_older.inc();
            }
            Enqueued::Full if fill => {
                self.counters.fills_skipped.inc();
            }
            Enqueued::Full => {
                self.counters.overflow.inc();
            }
        }
        outcome
    }

    /// Asks the flush task to flush now (`flush_max_keys` are pending), though not before
    /// the rest its pacing owes.
    fn hurry(&self) {
        self.urgent_flag.store(true, Ordering::Release);
        self.urgent.notify_waiters();
        self.wake.notify_one();
    }

    /// A caller awaits the flush: flush now, without the pacing rest.
    fn ask(&self) {
        self.asked_flag.store(true, Ordering::Release);
        self.asked.notify_waiters();
        self.hurry();
    }

    /// The rest the pacing owes after batches that kept Redis busy for `busy`
    /// ([`WriterOptions::max_busy_pct`]).
    fn rest_after(&self, busy: Duration) -> Duration {
        let pct = u32::from(self.opts.max_busy_pct.clamp(1, 100));
        busy.saturating_mul(100 - pct) / pct
    }

    /// Waits until `until` unless a caller asks for a flush; false when the writer stops.
    async fn rest(&self, until: tokio::time::Instant) -> bool {
        // Registered before the flag is read, as in `run`.
        let asked = self.asked.notified();
        tokio::pin!(asked);
        asked.as_mut().enable();
        if self.asked_flag.load(Ordering::Acquire) {
            return !self.stop.is_cancelled();
        }
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep_until(until) => true,
            _ = &mut asked => true,
        }
    }

    /// The pending write of `key`, if any (the newest value this process wrote, not yet in
    /// Redis: a read that misses L1 serves it rather than Redis's older copy).
    /// Returns it with its TTL and when it was written (its TTL runs from there).
    pub(crate) fn peek(&self, key: &str) -> Option<(Payload, u64, Duration, std::time::Instant)> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let st = self.lock();
        st.pending
            .get(key)
            .map(|p| (p.payload.clone(), p.version, p.ttl, p.written))
    }

    /// Drops `key`'s pending write (it was deleted).
    pub(crate) fn forget(&self, key: &str) {
        let mut st = self.lock();
        st.pending.remove(key);
        self.any.store(!st.pending.is_empty(), Ordering::Release);
    }

    /// Takes up to `flush_max_keys` pending writes, oldest first.
    fn drain(&self) -> Vec<(Arc<str>, Pending)> {
        let max = self.opts.flush_max_keys.get();
        let mut st = self.lock();
        st.drained += 1;
        let mut batch = Vec::with_capacity(max.min(st.pending.len()));
        while batch.len() < max {
            let Some(key) = st.order.pop_front() else {
                break;
            };
            if let Some(entry) = st.pending.remove_entry(&key) {
                batch.push(entry);
            }
        }
        self.any.store(!st.pending.is_empty(), Ordering::Release);
        batch
    }

    /// Everything pending, for the final flush when the cache is dropped.
    fn drain_all(&self) -> Vec<(Arc<str>, Pending)> {
        let mut st = self.lock();
        st.order.clear();
        self.any.store(false, Ordering::Release);
        st.pending.drain().collect()
    }

    pub(crate) fn snapshot(&self) -> WriterSnapshot {
        let c = &self.counters;
        let pending = self.lock().pending.len() as u64;
        c.pending.set(pending as f64);
        let lag = self.lag.summary();
        let flush = self.flush_time.summary();
        WriterSnapshot {
            enqueued: c.enqueued.get(),
            fills: c.fills.get(),
            fills_skipped: c.fills_skipped.get(),
            conflated: c.conflated.get(),
            dropped_older: c.dropped_older.get(),
            overflow: c.overflow.get(),
            expired: c.expired.get(),
            flushed: c.flushed.get(),
            superseded: c.superseded.get(),
            failed: c.failed.get(),
            batches: c.batches.get(),
            batch_max: c.batch_max.load(Ordering::Relaxed),
            pending,
            lag_p50_us: lag.p50,
            lag_p99_us: lag.p99,
            lag_max_us: lag.max,
            flush_p50_us: flush.p50,
            flush_p99_us: flush.p99,
            flush_max_us: flush.max,
        }
    }
}

/// Stops the flush task when the engine goes; hands what is still pending to one last
/// flush, in the background, when a runtime is there to run it.
#[derive(Debug)]
pub(crate) struct WriterHandle {
    pub(crate) writer: Arc<Writer>,
    l2: Arc<L2Tier>,
}

impl WriterHandle {
    pub(crate) fn new(opts: WriterOptions, l2: Arc<L2Tier>) -> Self {
        WriterHandle {
            writer: Arc::new(Writer::new(opts)),
            l2,
        }
    }

    /// Starts the flush task for `engine` on the current runtime.
    pub(crate) fn spawn(&self, engine: Weak<Engine>) {
        tokio::spawn(run(Arc::clone(&self.writer), engine));
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.writer.stop.cancel();
        let last = self.writer.drain_all();
        if last.is_empty() || self.l2.breaker().state() != crate::resilience::BreakerState::Closed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let l2 = Arc::clone(&self.l2);
            let within = self.writer.opts.flush_timeout;
            rt.spawn(async move {
                let now = std::time::Instant::now();
                let puts: Vec<Put<'_>> =
                    last.iter().filter_map(|(k, p)| put_of(k, p, now)).collect();
                if let Err(e) = l2.put_many(&puts, within).await {
                    tracing::debug!(error = %e, keys = puts.len(), "final flush of the market-data writer failed");
                }
            });
        }
    }
}

/// A pending write as sent: Redis keeps it for what is left of its TTL, counted from when it
/// was written (the envelope or stamp still carries the whole TTL, so readers age it from the
/// write). `None` when less than a millisecond is left: it has expired waiting, and is not sent.
fn put_of<'a>(key: &'a str, p: &'a Pending, now: std::time::Instant) -> Option<Put<'a>> {
    let left = p
        .ttl
        .saturating_sub(now.saturating_duration_since(p.written));
    (left >= Duration::from_millis(1))
        .then(|| put(key, &p.payload, p.version, p.ttl, p.expire_at_ms))
}

fn put<'a>(
    key: &'a str,
    payload: &'a Payload,
    version: u64,
    written_ttl: Duration,
    expire_at_ms: u64,
) -> Put<'a> {
    match payload {
        Payload::Value(bytes) => Put::Value {
            key,
            envelope: bytes,
            expire_at_ms,
        },
        Payload::Book(side) => Put::Book {
            key,
            side,
            version,
            written_ttl,
            expire_at_ms,
        },
    }
}

/// This host's Unix time in ms, `ttl` from now, less the millisecond in which Redis still
/// serves a key whose expiry has come (it compares whole milliseconds), so Redis never
/// serves the value past its TTL; at least 1 ms from now.
pub(crate) fn unix_ms_after(ttl: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    now.saturating_add(crate::l2::ttl_ms(ttl).saturating_sub(1).max(1))
}

/// One write of `payload`, now (when the writer is full and there is no L1 to hold it):
/// `Ok(true)` stored, `Ok(false)` superseded.
pub(crate) async fn put_one(
    l2: &L2Tier,
    key: &str,
    payload: &Payload,
    version: u64,
    ttl: Duration,
    within: Duration,
) -> Result<bool> {
    let replies = l2
        .put_many(
            &[put(key, payload, version, ttl, unix_ms_after(ttl))],
            within,
        )
        .await?;
    match replies.into_iter().next() {
        Some(PutReply::Stored) => Ok(true),
        Some(PutReply::Superseded) => Ok(false),
        Some(PutReply::Refused(e) | PutReply::Failed(e)) => Err(e),
        None => Err(Error::Unsupported("internal: a write without a reply")),
    }
}

/// The flush task: waits for a first pending key, gathers for the interval (unless hurried),
/// then flushes everything pending, resting between batches so that it keeps Redis busy at
/// most [`WriterOptions::max_busy_pct`] of the time. Holds the engine only while flushing.
async fn run(writer: Arc<Writer>, engine: Weak<Engine>) {
    let stop = writer.stop.clone();
    // When the rest owed by the last batches ends.
    let mut rest_until: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = writer.wake.notified() => {}
        }
        // Registered before the flag is read, and woken only while waiting (no stored
        // permit): a hurry between the two is not lost, and an old one cannot cut a later
        // interval short.
        let urgent = writer.urgent.notified();
        tokio::pin!(urgent);
        urgent.as_mut().enable();
        if !writer.urgent_flag.swap(false, Ordering::AcqRel) {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(writer.opts.flush_interval) => {}
                _ = &mut urgent => {}
            }
            writer.urgent_flag.store(false, Ordering::Release);
        }
        loop {
            if let Some(until) = rest_until.take()
                && !writer.rest(until).await
            {
                return;
            }
            let Some(engine) = engine.upgrade() else {
                return;
            };
            // A caller's ask made before this drain is answered by it (or it asks again).
            writer.asked_flag.store(false, Ordering::Release);
            let batch = writer.drain();
            let n = batch.len();
            if n > 0 {
                let started = tokio::time::Instant::now();
                engine.flush_batch(&writer, batch).await;
                let ended = tokio::time::Instant::now();
                rest_until = Some(ended + writer.rest_after(ended - started));
            }
            drop(engine);
            writer.done.send_modify(|d| *d += 1);
            if n < writer.opts.flush_max_keys.get() {
                break;
            }
        }
    }
}

impl Engine {
    /// Writes one drained batch to Redis and settles each key: L1 loses an older copy of a
    /// key Redis refused; failed keys go to the dirty log.
    async fn flush_batch(&self, writer: &Writer, batch: Vec<(Arc<str>, Pending)>) {
        let c = &writer.counters;
        let Some(l2) = self.l2.as_ref() else {
            return;
        };
        if !self.l2_writable() {
            self.fail_batch(writer, &batch, Error::BreakerOpen);
            return;
        }
        // Writes that expired while they waited are not sent (nor counted as flushed); the
        // rest expire in Redis when they would have had they been written at once.
        let at = std::time::Instant::now();
        let (batch, expired): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|(k, p)| put_of(k, p, at).is_some());
        c.expired.add(expired.len() as u64);
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        c.batches.inc();
        c.batch_max.fetch_max(n, Ordering::Relaxed);
        c.batch_keys.record(n as f64);
        let puts: Vec<Put<'_>> = batch.iter().filter_map(|(k, p)| put_of(k, p, at)).collect();
        let mark = self.dirty.mark();
        let started = std::time::Instant::now();
        let result = l2.put_many(&puts, writer.opts.flush_timeout).await;
        let now = std::time::Instant::now();
        writer.flush_time.record(now - started);
        c.flush_seconds.record((now - started).as_secs_f64());
        match result {
            Err(e) => self.fail_batch(writer, &batch, e),
            Ok(replies) => {
                for ((key, p), reply) in batch.iter().zip(replies) {
                    let book = matches!(p.payload, Payload::Book(_));
                    if !matches!(reply, PutReply::Refused(_) | PutReply::Failed(_)) {
                        // Redis now holds this version or a higher one: a dirty entry from an
                        // earlier failed flush of the key no longer stands for anything.
                        self.settle_dirty(key, book, mark);
                    }
                    match reply {
                        PutReply::Stored => {
                            c.flushed.inc();
                            // The lag is the writes' (a fill is not a tick anyone waits for).
                            if !p.fill {
                                let lag = now.saturating_duration_since(p.enqueued);
                                writer.lag.record(lag);
                                c.lag_seconds.record(lag.as_secs_f64());
                            }
                        }
                        PutReply::Superseded => {
                            c.superseded.inc();
                            if let Some(l1) = &self.l1 {
                                l1.remove_older_than(key, p.version);
                            }
                        }
                        PutReply::Failed(e) => {
                            // Its shard failed while the rest of the batch landed: as a
                            // write of a failed batch, it may or may not be in Redis.
                            self.fail_one(writer, key, p, e);
                        }
                        PutReply::Refused(e) => {
                            // Redis is healthy and the key holds another type: not ours to
                            // delete; nothing local may claim this version.
                            c.failed.inc();
                            tracing::warn!(key = &**key, error = %e, "market-data flush refused by redis");
                            if let Some(l1) = &self.l1 {
                                l1.remove_older_than(key, p.version.saturating_add(1));
                            }
                            *writer.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        }
                    }
                }
            }
        }
    }

    /// One write of a batch not confirmed while the rest was (its shard failed): counted
    /// failed and its key recorded dirty, as a write of a failed batch.
    fn fail_one(&self, writer: &Writer, key: &Arc<str>, p: &Pending, e: Error) {
        writer.counters.failed.inc();
        if !p.fill {
            self.record_dirty_key(key, p.prefix, matches!(p.payload, Payload::Book(_)));
        }
        tracing::debug!(key = &**key, error = %e, "market-data write not confirmed; key recorded dirty");
        *writer.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn fail_batch(&self, writer: &Writer, batch: &[(Arc<str>, Pending)], e: Error) {
        writer.counters.failed.add(batch.len() as u64);
        for (key, p) in batch.iter().filter(|(_, p)| !p.fill) {
            self.record_dirty_key(key, p.prefix, matches!(p.payload, Payload::Book(_)));
        }
        tracing::debug!(keys = batch.len(), error = %e, "market-data flush failed; keys recorded dirty");
        *writer.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    /// See [`Cache::flush`](crate::Cache::flush).
    pub(crate) async fn flush(&self) -> Result<()> {
        let result = self.flush_writer().await;
        // What the writes published goes out too (the writer's flush published nothing
        // itself: market data was queued for the backplane when it was written).
        if let Some(bp) = &self.backplane {
            bp.drained().await;
        }
        result
    }

    async fn flush_writer(&self) -> Result<()> {
        let Some(handle) = &self.writer else {
            return Ok(());
        };
        let w = &handle.writer;
        let target = w.seq.load(Ordering::Acquire);
        let failed_before = w.counters.failed.get();
        let mut done = w.done.subscribe();
        loop {
            done.borrow_and_update();
            let waiting_for = {
                let st = w.lock();
                let behind = st.pending.values().any(|p| p.seq <= target);
                // A batch drained before now may still be in flight: wait for its end.
                (behind, st.drained)
            };
            let completed = *done.borrow();
            if !waiting_for.0 && completed >= waiting_for.1 {
                break;
            }
            if w.stop.is_cancelled() {
                return Err(Error::Unsupported("the market-data writer has stopped"));
            }
            w.ask();
            if done.changed().await.is_err() {
                return Err(Error::Unsupported("the market-data writer has stopped"));
            }
        }
        if w.counters.failed.get() > failed_before {
            let e = w
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or(Error::BreakerOpen);
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    fn writer(max_busy_pct: u8) -> Writer {
        Writer::new(WriterOptions {
            max_busy_pct,
            ..WriterOptions::default()
        })
    }

    #[test]
    fn the_rest_keeps_the_writer_within_its_share_of_redis() {
        let busy = Duration::from_millis(4);
        // Half the time by default: rest as long as the batch took.
        assert_eq!(writer(50).rest_after(busy), busy);
        assert_eq!(writer(80).rest_after(busy), Duration::from_millis(1));
        assert_eq!(writer(100).rest_after(busy), Duration::ZERO);
        assert_eq!(writer(1).rest_after(busy), busy * 99);
        // Out of range (validation refuses it first) is still safe.
        assert_eq!(writer(0).rest_after(busy), busy * 99);
    }

    #[test]
    fn a_fill_waits_for_room_and_never_stops_being_a_write() {
        let w = Writer::new(WriterOptions {
            flush_max_keys: NonZeroUsize::new(2).unwrap(),
            ..WriterOptions::default()
        });
        let key = |i: u32| -> Arc<str> { Arc::from(format!("mdc:price:{{S{i}}}")) };
        let payload = || Payload::Value(vec![1]);
        let ttl = Duration::from_secs(1);
        assert_eq!(
            w.enqueue(&key(1), "price", payload(), 1, ttl, false),
            Enqueued::Queued
        );
        assert_eq!(
            w.enqueue(&key(2), "price", payload(), 1, ttl, true),
            Enqueued::Queued
        );
        // A full batch is pending: a new fill is not queued, a new write is.
        assert_eq!(
            w.enqueue(&key(3), "price", payload(), 1, ttl, true),
            Enqueued::Full
        );
        assert_eq!(
            w.enqueue(&key(4), "price", payload(), 1, ttl, false),
            Enqueued::Queued
        );
        // A fill over a pending write keeps it a write (its failure must reach the dirty log).
        assert_eq!(
            w.enqueue(&key(1), "price", payload(), 2, ttl, true),
            Enqueued::Queued
        );
        let snap = w.snapshot();
        assert_eq!((snap.enqueued, snap.fills, snap.fills_skipped), (2, 2, 1));
        let batch = w.drain();
        let fill_of = |k: &Arc<str>| batch.iter().find(|(b, _)| b == k).map(|(_, p)| p.fill);
        assert_eq!(fill_of(&key(1)), Some(false));
        assert_eq!(fill_of(&key(2)), Some(true));
    }
}
