//! `ClusterTier`: the L2 on a Redis Cluster (Valkey cluster, ElastiCache in cluster mode) through one redis-rs cluster connection, its retries and timeouts inside mdcache's deadline, batches split by hash slot.
//!
//! **The connection.** One `cluster_async::ClusterConnection`: a multiplexed connection per
//! node, commands routed by their key's slot, `MOVED`/`ASK` followed. No pool: the cluster
//! connection already spreads the load over the nodes. It is opened in the background on
//! first use (a cache starts while the cluster is down) under the connect deadline —
//! redis-rs's own `get_async_connection` has no deadline of its own — and dropped by
//! [`reset_connections`](L2::reset_connections), so the next one learns the cluster's
//! topology afresh from the seeds (after a failover, say).
//!
//! **Retries and timeouts.** redis-rs's cluster defaults (16 retries, a 1.28 s minimum wait
//! between them, no response timeout) would hold a caller for seconds. Here redis-rs makes
//! at most [`REDIRECTS`] more tries — enough to follow a redirect after a failover or a
//! slot migration — with waits of 1 to [`MAX_RETRY_WAIT_MS`] ms, and gives up on an answer
//! after the longest deadline of any operation (a writer batch's). Above it, the same
//! [`Guard`] as on one server applies each operation's deadline, the retry policy and the
//! breaker: a caller never waits past its own deadline.
//!
//! **Slots.** Multi-key commands and scripts only work within one hash slot on a cluster,
//! so every batch (`get_many`, `set_many`, the writer's `put_many`, `UNLINK`) is split by
//! slot ([`Key::slot`](crate::Key::slot)'s CRC16), the groups sent concurrently over the
//! one connection (redis-rs pipelines them per node) within one guarded operation. A book
//! side and its stamp share their symbol's `{SYM}` hash tag, so the book scripts run as on
//! one server. A read is one script (`GET` and `PTTL` of a slot's keys, atomically),
//! because a `MULTI` block is not followed across a redirect.
//!
//! **A breaker per shard.** Every key's operation goes through its shard's guard
//! ([`Shards`]): a primary that stops answering opens its own shard's breaker, so its keys
//! fail fast while the other shards serve. Batches run one guarded part per shard. No
//! cluster-wide breaker opens: a `PING` of every primary is not counted on one.
//!
//! **Failover.** redis-rs follows a `MOVED` from a demoted primary, but a primary that hangs
//! answers nothing: the tier notices a slot failing [`STALE_AFTER`] times in a row (see
//! `Staleness`), or a shard's breaker opening, and opens a new connection, with the topology
//! asked afresh, beside the old (at most once per [`REFRESH_EVERY`], and again each round
//! while a shard stays open). When the answer names a new primary for an open shard, its
//! probe runs at once instead of after the open period.
//!
//! **Nothing waits on a hung node but its own keys.** redis-rs sends `SCRIPT LOAD` to every
//! node and waits for all: [`SlotConn`] sends it to the slot's primary only. And a command
//! for a node the connection cannot reach makes redis-rs reconnect while every other command
//! waits: shard probes go on a connection of their own. `SCAN` (recovery) visits every
//! primary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::{join_all, try_join_all};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{ConnectionAddr, ConnectionInfo, RedisError, RedisResult, Value};
use tokio::sync::watch;

use super::book;
use super::boundary::{Fetched, L2, Put, PutReply, ScanPos, TopReply};
use super::commands::{self, Scripts};
use super::shards::{SLOTS, Shard, Shards, SlotMap};
use super::values;
use crate::error::{Error, Result};
use crate::key::key_slot;
use crate::resilience::{
    BreakerConfig, BreakerState, CircuitBreaker, Guard, RetryConfig, ShardBreaker,
};
use crate::schema::{BookSide, BookSideKind};

/// Further tries redis-rs makes of one command inside an operation (following `MOVED`,
/// `ASK`, `TRYAGAIN`, or reconnecting a node), all within the operation deadline.
const REDIRECTS: u32 = 2;

/// Longest wait redis-rs takes between two of those tries, in ms.
const MAX_RETRY_WAIT_MS: u64 = 10;

/// Failures in a row of one slot's operations (while the breaker stays closed, the other
/// primaries answering) after which the cluster's topology is asked again (see
/// [`Staleness`]).
const STALE_AFTER: u8 = 3;

/// Least time between two of those topology refreshes.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Least time a node's connection gets to open (see [`node_connect_timeout`]).
const MIN_NODE_CONNECT: Duration = Duration::from_millis(20);

/// How long redis-rs gives one node's connection to open: 4 operation deadlines, at least
/// [`MIN_NODE_CONNECT`], at most half the connect deadline (so one hung seed leaves the rest
/// of it to the others and the topology query).
///
/// Short on purpose. While redis-rs reconnects a node or refreshes its slots (after a
/// command found no connection to its node, say), the cluster connection sends nothing
/// else: every shard's commands wait, up to this long, for a node that may be hung. Measured
/// in `make faults` (cluster: primary hung): with half the 1 s default, the hung primary's
/// return stalled every shard for ~500 ms and opened all three breakers.
fn node_connect_timeout(op_timeout: Duration, connect_timeout: Duration) -> Duration {
    (op_timeout * 4)
        .max(MIN_NODE_CONNECT)
        .min(connect_timeout / 2)
        .max(Duration::from_millis(1))
}

/// Options for building a [`ClusterTier`].
#[derive(Clone)]
pub(crate) struct ClusterOptions {
    /// The seed nodes, credentials and TLS settings applied
    /// ([`endpoint`](super::connect::endpoint)); may hold a password, so `Debug` shows the
    /// addresses only.
    pub(crate) seeds: Vec<ConnectionInfo>,
    /// PEM roots a `rediss://` cluster's certificates must chain to.
    pub(crate) ca: Option<Vec<u8>>,
    pub(crate) op_timeout: Duration,
    /// The longest deadline of any operation (the writer's batches', `CACHE_FLUSH_TIMEOUT_MS`,
    /// is longer than a caller's): how long redis-rs waits for any one answer. Each
    /// operation's own deadline still cuts it short.
    pub(crate) longest_op: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker: BreakerConfig,
    pub(crate) retry: RetryConfig,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field(
                "seeds",
                &self
                    .seeds
                    .iter()
                    .map(|s| s.addr().to_string())
                    .collect::<Vec<_>>(),
            )
            .field("op_timeout", &self.op_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The cluster connection, opened in the background and replaced after an outage.
struct Link {
    client: ClusterClient,
    connect_timeout: Duration,
    conn: RwLock<Option<ClusterConnection>>,
    /// True while a connect task runs (one at a time).
    connecting: AtomicBool,
    /// Bumped when a connect attempt ends, successful or not.
    attempts: watch::Sender<u64>,
    /// Why the last attempt failed, cleared by a success.
    last_error: Mutex<Option<Error>>,
    /// The shards (which primary serves each slot, a breaker per shard), from the last
    /// `CLUSTER SLOTS`; shared by both connections.
    shards: Arc<Shards>,
    /// False when the shards' view of the cluster may be out of date (a batch failed or
    /// found a key moved): the next writer batch asks again.
    map_fresh: AtomicBool,
    /// When the last topology refresh started (see [`refresh_topology`](Link::refresh_topology)).
    last_refresh: Mutex<Option<std::time::Instant>>,
    /// False once the cluster refused the cross-slot script (a server older than Redis
    /// 7.0): batches then go per slot.
    node_batches: AtomicBool,
}

impl Link {
    fn new(client: ClusterClient, connect_timeout: Duration, shards: &Arc<Shards>) -> Arc<Self> {
        let (attempts, _) = watch::channel(0);
        Arc::new(Link {
            client,
            connect_timeout,
            conn: RwLock::new(None),
            connecting: AtomicBool::new(false),
            attempts,
            last_error: Mutex::new(None),
            shards: Arc::clone(shards),
            map_fresh: AtomicBool::new(false),
            last_refresh: Mutex::new(None),
            node_batches: AtomicBool::new(true),
        })
    }

    fn current(&self) -> Option<ClusterConnection> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn last_error(&self) -> Option<Error> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts a connect task unless one runs: it outlives the operation that started it, so
    /// an operation deadline shorter than a cluster's connect time still ends connected.
    fn start_connect(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = Arc::clone(self);
        tokio::spawn(async move {
            let outcome =
                tokio::time::timeout(link.connect_timeout, link.client.get_async_connection())
                    .await;
            let error = match outcome {
                Ok(Ok(conn)) => {
                    // Swapped in: operations that hold the old one finish on it.
                    *link.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
                    link.forget_slots();
                    // The shards as the new connection sees the cluster: a failover shows
                    // here as a shard's new primary, which its probe then tries at once.
                    let mut conn = conn;
                    let _ = tokio::time::timeout(link.connect_timeout, link.refresh_map(&mut conn))
                        .await;
                    None
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "redis cluster connect failed");
                    Some(Error::redis(e))
                }
                Err(_) => Some(Error::Timeout {
                    op: "connect",
                    after: link.connect_timeout,
                }),
            };
            *link.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
            link.connecting.store(false, Ordering::Release);
            link.attempts.send_modify(|n| *n = n.wrapping_add(1));
        });
    }

    /// The connection, opening one if there is none (waiting for the attempt, unbounded
    /// here: callers run under a deadline).
    async fn get(self: &Arc<Self>) -> Result<ClusterConnection> {
        let mut attempts = self.attempts.subscribe();
        if let Some(c) = self.current() {
            return Ok(c);
        }
        self.start_connect();
        // The sender lives in `self`: `changed` cannot fail while we hold it.
        let _ = attempts.changed().await;
        match self.current() {
            Some(c) => Ok(c),
            None => Err(self.last_error().unwrap_or(Error::Timeout {
                op: "connect",
                after: self.connect_timeout,
            })),
        }
    }

    fn forget(&self) {
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.forget_slots();
    }

    fn forget_slots(&self) {
        self.map_fresh.store(false, Ordering::Release);
    }

    /// Asks the cluster which primary serves each slot (`CLUSTER SLOTS`) and updates the
    /// shards.
    async fn refresh_map(&self, c: &mut ClusterConnection) -> RedisResult<()> {
        let reply = c
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        self.shards.update(&SlotMap::of(reply));
        self.map_fresh.store(true, Ordering::Release);
        Ok(())
    }

    /// Opens a new connection beside the current one — which asks the seeds for the
    /// topology — and swaps it in when ready, at most once per [`REFRESH_EVERY`]: for a
    /// primary that stopped answering while its replica may be taking over.
    fn refresh_topology(self: &Arc<Self>) -> bool {
        let now = std::time::Instant::now();
        {
            let mut last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| now.duration_since(at) < REFRESH_EVERY) {
                return false;
            }
            *last = Some(now);
        }
        self.start_connect();
        true
    }
}

/// The L2 on a Redis Cluster.
pub(crate) struct ClusterTier {
    /// The callers' connection: answers due within the op deadline.
    link: Arc<Link>,
    /// The writer's batches and recovery's commands, on a connection of their own (answers
    /// due within the longest deadline, a batch's).
    batches: Arc<Link>,
    /// The operation deadline, retries, and a cluster-wide breaker that nothing records on
    /// (see [`L2::breaker`]); a key's operations go through its shard's guard ([`Shards`]).
    guard: Guard,
    scripts: Scripts,
    /// Which slots keep failing: a primary replaced while the connection still routes to it.
    staleness: Staleness,
    /// The seeds (credentials, TLS settings): a shard's probe reaches its primary with them.
    seeds: Vec<ConnectionInfo>,
}

/// A primary that hangs for good while its replica takes over is not noticed by redis-rs:
/// it refreshes its slot map on a `MOVED`, and a hung node answers nothing. So the tier
/// counts failures in a row per slot (a symbol's keys share one), and when a slot reaches
/// [`STALE_AFTER`] — before its shard's breaker opens — it asks for the topology again
/// ([`Link::refresh_topology`]). Bounded: one byte per slot.
struct Staleness {
    failures: Box<[AtomicU8]>,
}

impl Staleness {
    fn new() -> Self {
        Staleness {
            failures: (0..SLOTS).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// An operation on `slot` answered.
    #[inline]
    fn answered(&self, slot: u16) {
        if let Some(f) = self.failures.get(usize::from(slot))
            && f.load(Ordering::Relaxed) != 0
        {
            f.store(0, Ordering::Relaxed);
        }
    }

    /// An operation on `slot` failed; true when the topology should be asked again.
    fn failed(&self, slot: u16) -> bool {
        let Some(f) = self.failures.get(usize::from(slot)) else {
            return false;
        };
        let n = f.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n < STALE_AFTER {
            return false;
        }
        f.store(0, Ordering::Relaxed);
        true
    }
}

impl std::fmt::Debug for ClusterTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTier")
            .field("connected", &self.link.current().is_some())
            .field("op_timeout", &self.guard.deadline())
            .finish()
    }
}

impl ClusterTier {
    /// Builds the client without connecting: the first operation opens the connection in
    /// the background.
    pub(crate) fn new(opts: ClusterOptions) -> Result<Self> {
        let wait = u64::try_from(opts.op_timeout.as_millis() / 4)
            .unwrap_or(MAX_RETRY_WAIT_MS)
            .clamp(2, MAX_RETRY_WAIT_MS);
        let client = |response_timeout: Duration| {
            let mut builder = ClusterClientBuilder::new(opts.seeds.clone())
                .retries(REDIRECTS)
                .min_retry_wait(1)
                .max_retry_wait(wait)
                .retry_wait_formula(1, 2)
                .connection_timeout(node_connect_timeout(opts.op_timeout, opts.connect_timeout))
                .response_timeout(response_timeout);
            if let Some(pem) = &opts.ca {
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                });
            }
            builder
                .build()
                .map_err(|e| Error::config("CACHE_REDIS_CLUSTER", e.to_string()))
        };
        let shards = Arc::new(Shards::new(
            &opts.breaker,
            opts.retry.clone(),
            opts.op_timeout,
        ));
        Ok(ClusterTier {
            // Callers wait at most the op deadline, so redis-rs need not wait longer: and
            // while it refreshes its slots it sends nothing else, each node it asks bounded
            // by this.
            link: Link::new(client(opts.op_timeout)?, opts.connect_timeout, &shards),
            // A writer batch may take longer than a read; redis-rs would time it out and
            // retry it. On a connection of its own, its waits hold up no caller.
            batches: Link::new(
                client(opts.longest_op.max(opts.op_timeout))?,
                opts.connect_timeout,
                &shards,
            ),
            guard: Guard::new(&opts.breaker, opts.retry, opts.op_timeout),
            scripts: Scripts::new(),
            staleness: Staleness::new(),
            seeds: opts.seeds,
        })
    }

    /// Runs `f` for a caller through the guard of `key`'s shard (of the whole cluster for
    /// no key), as [`RedisTier`](super::redis) does through its one guard.
    #[inline]
    async fn run<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T>
    where
        F: Fn(SlotConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_within(op, key, self.guard.deadline(), f).await
    }

    async fn run_within<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        deadline: Duration,
        f: F,
    ) -> Result<T>
    where
        F: Fn(SlotConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let shard = (!key.is_empty()).then(|| self.link.shards.of_key(key));
        let guard = shard.as_ref().map_or(&self.guard, |s| &s.guard);
        self.run_guarded(&self.link, guard, op, key, deadline, f)
            .await
    }

    /// Runs `f` through `guard` (a shard's, or the cluster's for `key` empty): admission,
    /// deadline, retries, breaker bookkeeping; a slot that keeps failing, or a shard whose
    /// breaker just opened, asks for the topology again.
    async fn run_guarded<T, F, Fut>(
        &self,
        link: &Arc<Link>,
        guard: &Guard,
        op: &'static str,
        key: &str,
        deadline: Duration,
        f: F,
    ) -> Result<T>
    where
        F: Fn(SlotConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let result = guard
            .run_within(
                op,
                deadline,
                || self.attempt(link, key, &f),
                || link.last_error().filter(|e| !e.is_timeout()),
            )
            .await;
        if !key.is_empty() {
            let slot = key_slot(key.as_bytes());
            match &result {
                Err(e) if e.trips_breaker() => {
                    let opened = guard.breaker().state() != BreakerState::Closed;
                    if (self.staleness.failed(slot) || opened) && link.refresh_topology() {
                        tracing::info!(
                            slot,
                            opened,
                            "a slot's primary keeps failing: asking the cluster for its topology again"
                        );
                    }
                }
                Err(_) => {}
                Ok(_) => self.staleness.answered(slot),
            }
        }
        result
    }

    /// Asks for the topology again on both connections (each at most once a second).
    fn refresh_topology(&self) {
        self.link.refresh_topology();
        self.batches.refresh_topology();
    }

    /// Probes every shard whose breaker is open (see [`L2::probe_shards`]); true when one
    /// of them closed or moved.
    async fn probe_open_shards(&self) -> bool {
        let mut open = Vec::new();
        for shard in self.link.shards.all() {
            if shard.guard.breaker().state() == BreakerState::Closed {
                // A failover seen while closed is no reason to skip a future open period.
                shard.take_moved();
            } else {
                open.push(shard);
            }
        }
        if open.is_empty() {
            return false;
        }
        join_all(open.iter().map(|s| self.probe_shard(s)))
            .await
            .into_iter()
            .any(|changed| changed)
    }

    /// One open shard: probed once its open period is over, or at once when the cluster
    /// named a new primary for it (a failover: the outage is over when the new primary
    /// answers). Otherwise the topology is asked again (at most once a second), so a
    /// promotion is seen. True when the shard closed.
    async fn probe_shard(&self, shard: &Shard) -> bool {
        let breaker = shard.guard.breaker();
        let moved = shard.take_moved();
        let due = breaker.begin_probe();
        if !moved && !due {
            self.refresh_topology();
            return false;
        }
        match self.ping_shard(shard).await {
            Ok(()) => {
                if breaker.state() == BreakerState::HalfOpen {
                    breaker.probe_succeeded();
                } else {
                    breaker.close_now();
                }
                // The node that answered may have been demoted meanwhile (a hung primary
                // resumed after its replica took over): the next batch asks the cluster.
                self.link.forget_slots();
                self.batches.forget_slots();
                tracing::info!(
                    shard = shard.first_slot,
                    failover = moved,
                    "a cluster shard answers again: its breaker closed"
                );
                true
            }
            Err(e) => {
                tracing::debug!(shard = shard.first_slot, error = %e, "shard probe failed");
                if breaker.state() == BreakerState::HalfOpen {
                    breaker.probe_failed();
                } else if moved {
                    // The new connection that knows the new primary may not be in yet:
                    // try again on the next round rather than after the open period.
                    shard.mark_moved();
                }
                self.refresh_topology();
                false
            }
        }
    }

    /// `PING` of `shard`'s primary: the connection within the probe deadline, the answer
    /// within the operation deadline (a node too slow for callers is not healthy).
    ///
    /// On a connection of its own, to the address the cluster last named, not through the
    /// cluster connection: there, a command for a node it has no connection to makes
    /// redis-rs refresh its slots and reconnect, and while it does (up to a node's
    /// connection deadline) every other shard's commands wait too.
    async fn ping_shard(&self, shard: &Shard) -> Result<()> {
        let Some((host, port)) = shard.primary() else {
            return self.ping_slot(shard.first_slot).await;
        };
        let Some(info) = self.node_info(&host, port) else {
            return self.ping_slot(shard.first_slot).await;
        };
        let client = redis::Client::open(info).map_err(|e| Error::from_redis(e, ""))?;
        let connect = async {
            client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| Error::from_redis(e, ""))
        };
        self.probe_with(connect, |mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
    }

    /// How to reach the node at `host:port`: the first seed's settings (credentials, TLS and
    /// its roots) with that address.
    fn node_info(&self, host: &str, port: u16) -> Option<ConnectionInfo> {
        let seed = self.seeds.first()?;
        let addr = match seed.addr() {
            ConnectionAddr::Tcp(..) => ConnectionAddr::Tcp(host.to_owned(), port),
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => return None,
        };
        Some(seed.clone().set_addr(addr))
    }

    /// `PING` of the primary serving `slot` through the cluster connection (for a shard
    /// whose primary the cluster has not named).
    async fn ping_slot(&self, slot: u16) -> Result<()> {
        self.probe_with(self.link.get(), |mut conn| async move {
            conn.route_command(
                redis::cmd("PING"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                    slot,
                    SlotAddr::Master,
                ))),
            )
            .await
        })
        .await
    }

    /// A probe: `connect` within the probe deadline, then `ask` on the connection within the
    /// callers' operation deadline (a node too slow for callers is not healthy yet).
    async fn probe_with<C, T, Fut>(
        &self,
        connect: impl Future<Output = Result<C>>,
        ask: impl FnOnce(C) -> Fut,
    ) -> Result<()>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        let within = self.guard.breaker().probe_timeout();
        let conn = match tokio::time::timeout(within, connect).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(Error::Timeout {
                    op: "probe_connect",
                    after: within,
                });
            }
        };
        let answer_within = self.guard.deadline();
        match tokio::time::timeout(answer_within, ask(conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::from_redis(e, "")),
            Err(_) => Err(Error::Timeout {
                op: "probe",
                after: answer_within,
            }),
        }
    }

    /// The primaries by lowest slot, as the shard table last saw them; the cluster is asked
    /// when the table names none.
    async fn known_primaries(&self) -> Result<Vec<(String, u16)>> {
        let mut primaries: Vec<(String, u16)> = Vec::new();
        for shard in self.link.shards.all() {
            if let Some(p) = shard.primary()
                && !primaries.contains(&p)
            {
                primaries.push(p);
            }
        }
        if primaries.is_empty() {
            primaries = self
                .run_for_recovery("admin_nodes", ClusterTier::primaries)
                .await?;
        }
        Ok(primaries)
    }

    /// Runs `f` once under the probe deadline, bypassing the breaker.
    async fn run_for_recovery<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: Fn(SlotConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = self.guard.breaker().probe_timeout();
        let result = Guard::run_unguarded(op, deadline, self.attempt(&self.batches, "", &f)).await;
        if result.as_ref().is_err_and(Error::trips_breaker) {
            // The connection may be stuck (redis-rs can wedge in a slot refresh after a node
            // came back): a fresh one replaces it, at most once a second.
            self.batches.refresh_topology();
        }
        result
    }

    async fn attempt<T, F, Fut>(&self, link: &Arc<Link>, key: &str, f: &F) -> Result<T>
    where
        F: Fn(SlotConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = link.get().await?;
        f(SlotConn::new(conn, key))
            .await
            .map_err(|e| Error::from_redis(e, key))
    }

    /// The primaries' addresses, from `CLUSTER SLOTS` (each slot range's first node).
    async fn primaries(mut c: SlotConn) -> RedisResult<Vec<(String, u16)>> {
        let reply = c
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        Ok(SlotMap::of(reply).nodes)
    }
}

/// The cluster connection, for the commands of one hash slot: everything goes through
/// redis-rs's routing as usual except `SCRIPT LOAD` (sent after a `NOSCRIPT`), which redis-rs
/// would send to every node and wait on all — a hung one included, so one hung node would
/// fail every other shard's first script call. Here it goes to the slot's primary, the node
/// that said `NOSCRIPT`.
#[derive(Clone)]
struct SlotConn {
    conn: ClusterConnection,
    /// Where a `SCRIPT LOAD` goes.
    load_to: SingleNodeRoutingInfo,
}

impl SlotConn {
    fn new(conn: ClusterConnection, key: &str) -> Self {
        SlotConn {
            conn,
            load_to: SingleNodeRoutingInfo::SpecificNode(Route::new(
                key_slot(key.as_bytes()),
                SlotAddr::Master,
            )),
        }
    }

    /// The same connection for `key`'s slot.
    fn for_key(&self, key: &str) -> Self {
        SlotConn::new(self.conn.clone(), key)
    }

    /// The same connection for commands sent to the node at `host:port` (a batch routed by
    /// address): its `SCRIPT LOAD` goes there too, whatever redis-rs's slot map says (after
    /// a failover it may still name the old primary).
    fn for_node(self, host: &str, port: u16) -> Self {
        SlotConn {
            conn: self.conn,
            load_to: SingleNodeRoutingInfo::ByAddress {
                host: host.to_owned(),
                port,
            },
        }
    }
}

impl std::ops::Deref for SlotConn {
    type Target = ClusterConnection;
    fn deref(&self) -> &ClusterConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for SlotConn {
    fn deref_mut(&mut self) -> &mut ClusterConnection {
        &mut self.conn
    }
}

/// True for `SCRIPT LOAD …`.
fn is_script_load(cmd: &redis::Cmd) -> bool {
    let mut args = cmd.args_iter();
    let word = |a: Option<redis::Arg<&[u8]>>, w: &[u8]| matches!(a, Some(redis::Arg::Simple(b)) if b.eq_ignore_ascii_case(w));
    word(args.next(), b"SCRIPT") && word(args.next(), b"LOAD")
}

impl redis::aio::ConnectionLike for SlotConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        if is_script_load(cmd) {
            let route = RoutingInfo::SingleNode(self.load_to.clone());
            Box::pin(async move { self.conn.route_command(cmd.clone(), route).await })
        } else {
            self.conn.req_packed_command(cmd)
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        self.conn.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// Indices of `keys` grouped by hash slot, in first-seen order (bounded by the batch).
fn by_slot<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut slots: HashMap<u16, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, key) in keys.enumerate() {
        let g = *slots.entry(key_slot(key.as_bytes())).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

/// `UNLINK` of `keys` on a cluster: one command per slot, concurrently; how many existed.
async fn unlink_by_slot(c: SlotConn, keys: &[&str]) -> RedisResult<u64> {
    let groups = by_slot(keys.iter().copied());
    let counts = try_join_all(groups.iter().map(|g| {
        let mut c = c.clone();
        let slot_keys: Vec<&str> = g.iter().map(|&i| keys[i]).collect();
        async move { commands::unlink(&mut c, &slot_keys).await }
    }))
    .await?;
    Ok(counts.into_iter().sum())
}

/// [`commands::put_many`] of `items`, one pipeline per slot, the slots concurrently; the
/// replies in the items' order.
async fn put_per_slot(
    c: SlotConn,
    scripts: &Scripts,
    items: &[Put<'_>],
) -> RedisResult<Vec<PutReply>> {
    let groups = by_slot(items.iter().map(commands::put_key));
    let parts = try_join_all(groups.iter().map(|g| {
        let mut c = c.for_key(commands::put_key(&items[g[0]]));
        let slot_items: Vec<Put<'_>> = g.iter().map(|&i| items[i]).collect();
        async move { commands::put_many(&mut c, scripts, &slot_items).await }
    }))
    .await?;
    let mut out: Vec<Option<PutReply>> = items.iter().map(|_| None).collect();
    for (g, replies) in groups.iter().zip(parts) {
        for (&i, reply) in g.iter().zip(replies) {
            out[i] = Some(reply);
        }
    }
    Ok(out
        .into_iter()
        .map(|r| {
            r.unwrap_or(PutReply::Refused(Error::Unsupported(
                "internal: a batch item without a reply",
            )))
        })
        .collect())
}

/// [`commands::put_many`] of one node's items, sent to that node (`host:port`) whatever
/// their slots, with the cross-slot variant of the multi-key script.
async fn put_on_node(
    c: SlotConn,
    scripts: &Scripts,
    items: &[Put<'_>],
    host: &str,
    port: u16,
) -> RedisResult<Vec<PutReply>> {
    let batch = commands::PutBatch::new(items);
    // A `SCRIPT LOAD` goes to this node.
    let mut c = c.for_node(host, port);
    let (vmany, breplace) = (
        &scripts.values.set_versioned_many_any_slot,
        &scripts.books.replace,
    );
    let route = || SingleNodeRoutingInfo::ByAddress {
        host: host.to_owned(),
        port,
    };
    let pipeline = batch.pipeline(vmany, breplace, true);
    let n = pipeline.len();
    let mut replies: Vec<RedisResult<Value>> = c
        .route_pipeline(pipeline, 0, n, route())
        .await?
        .into_iter()
        .map(Value::extract_error)
        .collect();
    if replies
        .iter()
        .any(|r| r.as_ref().is_err_and(commands::is_no_script))
    {
        vmany.load_async(&mut c).await?;
        breplace.load_async(&mut c).await?;
        let pipeline = batch.pipeline(vmany, breplace, true);
        replies = c
            .route_pipeline(pipeline, 0, n, route())
            .await?
            .into_iter()
            .map(Value::extract_error)
            .collect();
        // Loaded on that node and still unknown there: the batch did not run on the node
        // it was sent to (a `MOVED` followed to a promoted replica that never loaded it),
        // so the shard map is out of date. The part fails; the next batch asks again.
        if let Some(Err(e)) = replies
            .iter()
            .find(|r| r.as_ref().is_err_and(commands::is_no_script))
        {
            return Err(e.clone());
        }
    }
    Ok(batch.replies(replies))
}

/// True when `e` says the server cannot run a script with flags (its shebang line): Redis
/// before 7.0.
fn cross_slot_unsupported(e: &Error) -> bool {
    let text = e.to_string();
    text.contains("shebang") || text.contains("Unexpected flag")
}

impl L2 for ClusterTier {
    commands::keyed_operations!();

    /// One script: `GET` and `PTTL` together, atomically, on the key's primary.
    async fn get(&self, key: &str) -> Result<Option<Fetched>> {
        let script = &self.scripts.values.get_with_ttl;
        let reply: Vec<Value> = self
            .run("get", key, |mut c| async move {
                script.key(key).invoke_async(&mut c).await
            })
            .await?;
        values::parse_pairs(key, reply)?
            .pop()
            .ok_or_else(|| values::malformed(key))
    }

    /// One script per slot (`GET` and `PTTL` of its keys), the slots concurrently, each
    /// shard's slots under that shard's guard: one open shard fails the whole read (the
    /// caller falls back for every key), fast.
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Fetched>>> {
        let Some(&first) = keys.first() else {
            return Ok(Vec::new());
        };
        let script = &self.scripts.values.get_with_ttl;
        let shards = self.link.shards.group(keys.iter().copied());
        let parts = try_join_all(shards.iter().map(|(shard, g)| async move {
            let shard_keys: Vec<&str> = g.iter().map(|&i| keys[i]).collect();
            let groups = by_slot(shard_keys.iter().copied());
            let (shard_keys, groups_ref) = (&shard_keys, &groups);
            let replies: Vec<Vec<Value>> = self
                .run_guarded(
                    &self.link,
                    &shard.guard,
                    "get_many",
                    shard_keys[0],
                    self.guard.deadline(),
                    |c| async move {
                        try_join_all(groups_ref.iter().map(|g| {
                            let mut c = c.for_key(shard_keys[g[0]]);
                            let mut inv = script.prepare_invoke();
                            for &i in g {
                                inv.key(shard_keys[i]);
                            }
                            async move { inv.invoke_async(&mut c).await }
                        }))
                        .await
                    },
                )
                .await?;
            Ok::<_, Error>((groups, replies))
        }))
        .await?;
        let mut out: Vec<Option<Fetched>> = keys.iter().map(|_| None).collect();
        for ((_, shard_indices), (groups, replies)) in shards.iter().zip(parts) {
            for (g, reply) in groups.iter().zip(replies) {
                let found = values::parse_pairs(first, reply)?;
                if found.len() != g.len() {
                    return Err(values::malformed(first));
                }
                for (&i, f) in g.iter().zip(found) {
                    out[shard_indices[i]] = f;
                }
            }
        }
        Ok(out)
    }

    /// One pipeline per slot, the slots concurrently, each shard's under its guard.
    async fn set_many(&self, items: &[(&str, Vec<u8>, Duration)]) -> Result<Vec<bool>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let scripts = &self.scripts;
        let shards = self.link.shards.group(items.iter().map(|i| i.0));
        let parts = try_join_all(shards.iter().map(|(shard, g)| async move {
            let shard_items: Vec<(&str, &[u8], Duration)> = g
                .iter()
                .map(|&i| (items[i].0, items[i].1.as_slice(), items[i].2))
                .collect();
            let groups = by_slot(shard_items.iter().map(|i| i.0));
            let (shard_items, groups_ref) = (&shard_items, &groups);
            let replies: Vec<Vec<i64>> = self
                .run_guarded(
                    &self.link,
                    &shard.guard,
                    "set_many",
                    shard_items[0].0,
                    self.guard.deadline(),
                    |c| async move {
                        try_join_all(groups_ref.iter().map(|g| {
                            let mut c = c.for_key(shard_items[g[0]].0);
                            let slot_items: Vec<(&str, &[u8], Duration)> =
                                g.iter().map(|&i| shard_items[i]).collect();
                            async move { commands::set_many(&mut c, scripts, &slot_items).await }
                        }))
                        .await
                    },
                )
                .await?;
            Ok::<_, Error>((groups, replies))
        }))
        .await?;
        let mut out = vec![false; items.len()];
        for ((_, shard_indices), (groups, replies)) in shards.iter().zip(parts) {
            for (g, codes) in groups.iter().zip(replies) {
                for (&i, code) in g.iter().zip(codes) {
                    out[shard_indices[i]] = code == 1;
                }
            }
        }
        Ok(out)
    }

    /// One part per shard, the shards concurrently, each under its shard's guard and the
    /// deadline `within`: a part goes to the shard's primary as one pipeline, its values in
    /// calls of the cross-slot variant of the multi-key script, as on one server (per slot
    /// when the primary is not known, or on a server without cross-slot scripts). A part
    /// that fails (its primary hung, its breaker open) makes its items
    /// [`PutReply::Failed`] while the others land; only a batch of which no part landed is
    /// an error. A part that fails, or finds a key moved, has the next batch ask the cluster
    /// which primary serves each slot.
    async fn put_many(&self, items: &[Put<'_>], within: Duration) -> Result<Vec<PutReply>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (link, scripts) = (&self.batches, &self.scripts);
        let by_node = link.node_batches.load(Ordering::Acquire);
        if by_node && !link.map_fresh.load(Ordering::Acquire) {
            // Bounded: a cluster that does not answer leaves the shards as they were.
            let ask = async {
                let mut c = link.get().await?;
                link.refresh_map(&mut c)
                    .await
                    .map_err(|e| Error::from_redis(e, ""))
            };
            if let Ok(Err(e)) = tokio::time::timeout(within / 4, ask).await {
                tracing::debug!(error = %e, "CLUSTER SLOTS failed; the batch goes by the last answer");
            }
        }
        let shards = link.shards.group(items.iter().map(commands::put_key));
        let parts = join_all(shards.iter().map(|(shard, g)| async move {
            let shard_items: Vec<Put<'_>> = g.iter().map(|&i| items[i]).collect();
            let node = if by_node { shard.primary() } else { None };
            let (shard_items, node) = (&shard_items, &node);
            self.run_guarded(
                link,
                &shard.guard,
                "put_many",
                commands::put_key(&shard_items[0]),
                within,
                |c| async move {
                    match node {
                        Some((host, port)) => {
                            put_on_node(c, scripts, shard_items, host, *port).await
                        }
                        None => put_per_slot(c, scripts, shard_items).await,
                    }
                },
            )
            .await
        }))
        .await;
        if by_node
            && parts
                .iter()
                .any(|r| r.as_ref().is_err_and(cross_slot_unsupported))
        {
            tracing::warn!(
                "the cluster refuses cross-slot scripts (Redis < 7.0?): batches go per slot"
            );
            link.node_batches.store(false, Ordering::Release);
        }
        // Nothing landed: the batch failed.
        if let Some(Err(e)) = parts.iter().find(|r| r.is_err())
            && parts.iter().all(Result::is_err)
        {
            link.forget_slots();
            return Err(e.clone());
        }
        let mut out: Vec<Option<PutReply>> = items.iter().map(|_| None).collect();
        for ((_, g), part) in shards.iter().zip(parts) {
            match part {
                Ok(got) => {
                    for (&i, reply) in g.iter().zip(got) {
                        if let PutReply::Refused(e) = &reply
                            && e.is_redirect()
                        {
                            link.forget_slots();
                        }
                        out[i] = Some(reply);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, keys = g.len(), "part of a cluster batch failed");
                    if !e.is_breaker_open() {
                        link.forget_slots();
                    }
                    for &i in g {
                        out[i] = Some(PutReply::Failed(e.clone()));
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or(PutReply::Refused(Error::Unsupported(
                    "internal: a batch item without a reply",
                )))
            })
            .collect())
    }

    /// One `UNLINK` per slot, the slots concurrently, each shard's under its guard.
    async fn unlink(&self, keys: &[&str]) -> Result<u64> {
        let shards = self.link.shards.group(keys.iter().copied());
        let counts = try_join_all(shards.iter().map(|(shard, g)| async move {
            let shard_keys: Vec<&str> = g.iter().map(|&i| keys[i]).collect();
            let shard_keys = &shard_keys;
            self.run_guarded(
                &self.link,
                &shard.guard,
                "delete",
                shard_keys[0],
                self.guard.deadline(),
                |c| unlink_by_slot(c, shard_keys),
            )
            .await
        }))
        .await?;
        Ok(counts.into_iter().sum())
    }

    /// `PING` of every primary, under the operation deadline. Its outcome is no breaker's:
    /// a failure says some shard is down, and each shard's own breaker already judges that
    /// (counted on a cluster-wide breaker, callers' pings during one shard's outage would
    /// turn L2 off for every shard).
    async fn ping(&self) -> Result<()> {
        Guard::run_unguarded(
            "ping",
            self.guard.deadline(),
            self.attempt(&self.link, "", &ping_primaries),
        )
        .await
    }

    /// The cluster-wide breaker: no caller's operation counts on it (each key's goes to its
    /// shard's, [`shard_breakers`](L2::shard_breakers)), so it stays closed and recovery's
    /// whole-L2 outage path never runs on a cluster; each shard recovers on its own
    /// ([`probe_shards`](L2::probe_shards)).
    #[inline]
    fn breaker(&self) -> &CircuitBreaker {
        self.guard.breaker()
    }

    async fn probe_shards(&self) -> bool {
        self.probe_open_shards().await
    }

    fn shard_breakers(&self) -> Vec<ShardBreaker> {
        self.link.shards.reports()
    }

    fn replay_group(&self, key: &str) -> Option<u16> {
        let shard = self.link.shards.of_key(key);
        (shard.guard.breaker().state() == BreakerState::Closed).then_some(shard.first_slot)
    }

    /// `PING` of every primary: the connection within the probe deadline, the answers within
    /// the operation deadline. The cluster's breaker closes only when the whole cluster
    /// answers.
    /// A failed probe drops the connection, so the next one learns the topology again.
    async fn probe_ping(&self) -> Result<()> {
        let answer = self
            .probe_with(self.link.get(), |conn| {
                ping_primaries(SlotConn::new(conn, ""))
            })
            .await;
        if answer.is_err() {
            // The connection's view of the cluster may predate a failover (a hung primary
            // it still pings while its replica took over): the next probe asks the seeds
            // for the topology afresh.
            self.link.forget();
        }
        answer
    }

    /// Drops the cluster connection: the next operation opens a new one, which asks the
    /// seeds for the cluster's topology again.
    fn reset_connections(&self) {
        self.link.forget();
        self.batches.forget();
    }

    async fn recovery_unlink(&self, keys: &[&str]) -> Result<u64> {
        self.run_for_recovery("recovery_unlink", |c| unlink_by_slot(c, keys))
            .await
    }

    async fn info(&self, section: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (host, port) in self.known_primaries().await? {
            let host = host.as_str();
            let text = self
                .run_for_recovery("admin_info", |mut c| async move {
                    let reply = c
                        .route_command(
                            redis::cmd("INFO").arg(section).clone(),
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                host: host.to_owned(),
                                port,
                            }),
                        )
                        .await?;
                    redis::from_redis_value::<String>(reply).map_err(RedisError::from)
                })
                .await?;
            out.push((format!("{host}:{port}"), text));
        }
        Ok(out)
    }

    /// The primaries in the order of their lowest slot (as the shard table last saw them);
    /// `at.node` indexes them. A topology change between two steps may skip or repeat part
    /// of a node's keys, as `SCAN` itself may.
    async fn scan_step(
        &self,
        at: ScanPos,
        pattern: &str,
        count: u32,
    ) -> Result<(Vec<String>, Option<ScanPos>)> {
        if at == ScanPos::default() {
            // A scan starts from the cluster's current primaries (bounded; on failure, the
            // last answer).
            let ask = async {
                let mut c = self.batches.get().await?;
                self.batches
                    .refresh_map(&mut c)
                    .await
                    .map_err(|e| Error::from_redis(e, ""))
            };
            let within = self.guard.breaker().probe_timeout();
            if let Ok(Err(e)) = tokio::time::timeout(within, ask).await {
                tracing::debug!(error = %e, "CLUSTER SLOTS failed; scanning the last known primaries");
            }
        }
        let primaries = self.known_primaries().await?;
        let Some((host, port)) = primaries.get(usize::from(at.node)).cloned() else {
            return Ok((Vec::new(), None));
        };
        let host = host.as_str();
        let (next, keys) = self
            .run_for_recovery("admin_scan", |mut c| async move {
                let reply = c
                    .route_command(
                        redis::cmd("SCAN")
                            .arg(at.cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(count)
                            .clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.to_owned(),
                            port,
                        }),
                    )
                    .await?;
                redis::from_redis_value::<(u64, Vec<String>)>(reply).map_err(RedisError::from)
            })
            .await?;
        let after = if next != 0 {
            Some(ScanPos {
                node: at.node,
                cursor: next,
            })
        } else if usize::from(at.node) + 1 < primaries.len() {
            Some(ScanPos {
                node: at.node + 1,
                cursor: 0,
            })
        } else {
            None
        };
        Ok((keys, after))
    }
}

/// `PING` of every primary; an error if any does not answer.
async fn ping_primaries(mut c: SlotConn) -> RedisResult<()> {
    c.route_command(
        redis::cmd("PING"),
        RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::AllSucceeded),
        )),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::l2::test_support::cluster::RedisCluster;

    fn options(cluster: &RedisCluster) -> ClusterOptions {
        ClusterOptions {
            seeds: cluster
                .urls()
                .iter()
                .map(|u| redis::IntoConnectionInfo::into_connection_info(u.as_str()).unwrap())
                .collect(),
            ca: None,
            op_timeout: Duration::from_secs(2),
            longest_op: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
        }
    }

    fn tier(cluster: &RedisCluster) -> ClusterTier {
        ClusterTier::new(options(cluster)).unwrap()
    }

    fn dbsize(cluster: &RedisCluster) -> i64 {
        cluster.primaries().iter().map(|n| n.dbsize()).sum()
    }

    /// Batches whose keys span every primary, then a recovery `SCAN` that must find keys on
    /// all three: the cross-slot paths of the tier, on a real cluster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_and_scans_cover_every_slot_and_every_primary() {
        let cluster = RedisCluster::start();
        let l2 = tier(&cluster);
        let keys: Vec<String> = (0..300).map(|i| format!("mdc:price:{{S{i}}}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let ttl = Duration::from_secs(60);
        let items: Vec<(&str, Vec<u8>, Duration)> = keys
            .iter()
            .map(|k| (*k, codec::encode(7, &1u32, 1024).unwrap(), ttl))
            .collect();
        assert_eq!(l2.set_many(&items).await.unwrap(), vec![true; 300]);
        // The writer's batch: values and a book side across slots, one key of another type.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let newer = codec::encode(8, &2u32, 1024).unwrap();
        let older = codec::encode(6, &3u32, 1024).unwrap();
        let side = BookSide {
            levels: vec![crate::book::Level {
                price: 10.0,
                qty: 1.0,
            }],
        };
        let mut conn = l2.link.get().await.unwrap();
        let () = redis::cmd("RPUSH")
            .arg("mdc:price:{LIST}")
            .arg("x")
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .unwrap();
        let puts = [
            Put::Value {
                key: keys[0],
                envelope: &newer,
                expire_at_ms: now_ms + 60_000,
            },
            Put::Value {
                key: keys[1],
                envelope: &older,
                expire_at_ms: now_ms + 60_000,
            },
            Put::Value {
                key: "mdc:price:{LIST}",
                envelope: &newer,
                expire_at_ms: now_ms + 60_000,
            },
            // Same slot (so same node and same script call) as the list: written anyway.
            Put::Value {
                key: "mdc:pos:{LIST}",
                envelope: &newer,
                expire_at_ms: now_ms + 60_000,
            },
            Put::Book {
                key: "mdc:book:{S0}:bid",
                side: &side,
                version: 1,
                written_ttl: ttl,
                expire_at_ms: now_ms + 60_000,
            },
        ];
        let replies = l2.put_many(&puts, Duration::from_secs(2)).await.unwrap();
        assert!(matches!(replies[0], PutReply::Stored), "{replies:?}");
        assert!(matches!(replies[1], PutReply::Superseded), "{replies:?}");
        assert!(
            matches!(&replies[2], PutReply::Refused(Error::WrongType { .. })),
            "{replies:?}"
        );
        assert!(matches!(replies[3], PutReply::Stored), "{replies:?}");
        assert!(matches!(replies[4], PutReply::Stored), "{replies:?}");
        let top = l2
            .book_top("mdc:book:{S0}:bid", BookSideKind::Bid, 0)
            .await
            .unwrap();
        assert!(
            matches!(top, TopReply::Found(ref b) if b.version == 1),
            "{top:?}"
        );
        // Reads in one batch across slots, in order, misses included.
        let mut asked = keys.clone();
        asked.push("mdc:price:{ABSENT}");
        let got = l2.get_many(&asked).await.unwrap();
        assert_eq!(got.len(), 301);
        assert!(got[..300].iter().all(Option::is_some));
        assert!(got[300].is_none());
        assert_eq!(codec::peek_version(&got[0].as_ref().unwrap().bytes), Ok(8));
        assert_eq!(codec::peek_version(&got[1].as_ref().unwrap().bytes), Ok(7));
        // Every primary holds some of them.
        for node in cluster.primaries() {
            assert!(node.dbsize() > 0, "a primary holds none of 300 keys");
        }
        // UNLINK across slots.
        assert_eq!(l2.unlink(&keys[..10]).await.unwrap(), 10);
        // Recovery's SCAN visits every primary: every price key goes, the rest stays.
        let () = redis::cmd("SET")
            .arg("other:{x}")
            .arg("1")
            .query_async(&mut conn)
            .await
            .unwrap();
        l2.recovery_unlink_matching("mdc:price:*").await.unwrap();
        assert_eq!(
            dbsize(&cluster),
            4,
            "the book side, its stamp, mdc:pos:{{LIST}} and other:{{x}} remain"
        );
        l2.ping().await.unwrap();
        l2.probe_ping().await.unwrap();
    }

    /// A hung primary fails its own part of a writer batch: the keys the other primaries
    /// serve land, its keys come back `Failed` (not `Refused`), within the batch deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_primary_fails_its_part_of_a_batch_only() {
        let cluster = RedisCluster::start();
        let l2 = ClusterTier::new(ClusterOptions {
            op_timeout: Duration::from_millis(100),
            ..options(&cluster)
        })
        .unwrap();
        let keys: Vec<String> = (0..60).map(|i| format!("mdc:price:{{H{i}}}")).collect();
        let envelope = codec::encode(1, &1u32, 1024).unwrap();
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 60_000;
        let puts: Vec<Put<'_>> = keys
            .iter()
            .map(|key| Put::Value {
                key,
                envelope: &envelope,
                expire_at_ms: at,
            })
            .collect();
        // Connected, with the slot map, before the fault.
        let healthy = l2.put_many(&puts, Duration::from_secs(2)).await.unwrap();
        assert!(healthy.iter().all(|r| matches!(r, PutReply::Stored)));
        let hung = cluster.primaries()[0];
        hung.pause();
        let started = std::time::Instant::now();
        let replies = l2.put_many(&puts, Duration::from_millis(400)).await;
        let took = started.elapsed();
        hung.resume();
        let replies = replies.unwrap();
        let (mut stored, mut failed) = (0, 0);
        for r in &replies {
            match r {
                PutReply::Stored | PutReply::Superseded => stored += 1,
                PutReply::Failed(_) => failed += 1,
                PutReply::Refused(e) => panic!("refused: {e}"),
            }
        }
        assert!(stored > 0 && failed > 0, "{stored} landed, {failed} failed");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // The breaker saw a batch that (in part) landed: no failure counted.
        assert_eq!(l2.breaker().snapshot().opened, 0);
    }

    /// A cluster that is not there: the tier builds, and an operation fails within its
    /// deadline with the cause, not a hang.
    #[tokio::test]
    async fn an_unreachable_cluster_fails_within_the_deadline() {
        let port = crate::l2::test_support::free_port();
        let l2 = ClusterTier::new(ClusterOptions {
            seeds: vec![
                redis::IntoConnectionInfo::into_connection_info(
                    format!("redis://127.0.0.1:{port}").as_str(),
                )
                .unwrap(),
            ],
            ca: None,
            op_timeout: Duration::from_millis(200),
            longest_op: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(500),
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
        })
        .unwrap();
        let started = std::time::Instant::now();
        let err = l2.get("mdc:price:{X}").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{err}");
        assert!(err.trips_breaker(), "{err}");
    }

    #[test]
    fn only_script_load_is_routed_to_the_slot() {
        assert!(is_script_load(
            redis::cmd("SCRIPT").arg("LOAD").arg("return 1")
        ));
        assert!(is_script_load(redis::cmd("script").arg("load").arg("x")));
        assert!(!is_script_load(redis::cmd("SCRIPT").arg("EXISTS").arg("x")));
        assert!(!is_script_load(&redis::cmd("EVALSHA")));
        assert!(!is_script_load(&redis::cmd("SCRIPT")));
    }

    #[test]
    fn batches_split_by_slot_keep_a_symbols_keys_together() {
        let keys = [
            "mdc:price:{AAPL}",
            "mdc:price:{MSFT}",
            "mdc:pos:{AAPL}",
            "mdc:book:{AAPL}:bid",
        ];
        let groups = by_slot(keys.iter().copied());
        assert_eq!(groups, vec![vec![0, 2, 3], vec![1]]);
        assert!(by_slot(std::iter::empty()).is_empty());
    }

    #[test]
    fn a_slot_failing_three_times_in_a_row_asks_for_the_topology() {
        let s = Staleness::new();
        assert!(!s.failed(7) && !s.failed(7));
        s.answered(7);
        assert!(!s.failed(7) && !s.failed(7));
        assert!(s.failed(7), "the third failure in a row");
        // Counted afresh, per slot.
        assert!(!s.failed(7) && !s.failed(9) && !s.failed(9));
        assert!(s.failed(9));
        // Out of range is ignored, not a panic.
        assert!(!s.failed(u16::MAX));
        s.answered(u16::MAX);
    }
}
