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
//! **Failover.** redis-rs follows a `MOVED` from a demoted primary, but a primary that hangs
//! answers nothing: the tier notices a slot failing [`STALE_AFTER`] times in a row (see
//! `Staleness`) and opens a new connection, with the topology asked afresh, beside the old.
//!
//! **One breaker.** The whole cluster has one breaker here, not one per shard: a hung
//! primary's failures are interleaved with the other primaries' successes, so it rarely
//! opens (README "Redis Cluster"; `make faults`). `SCAN` (recovery) visits every primary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::{join_all, try_join_all};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use redis::{ConnectionInfo, RedisError, RedisResult, Value};
use tokio::sync::watch;

use super::book;
use super::boundary::{Fetched, L2, Put, PutReply, TopReply};
use super::commands::{self, Scripts};
use super::values;
use crate::error::{Error, Result};
use crate::key::key_slot;
use crate::resilience::{BreakerConfig, CircuitBreaker, Guard, RetryConfig};
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
    /// Which primary serves each slot, for the writer's batches per node; fetched when
    /// first needed, dropped when a batch finds it out of date.
    slots: RwLock<Option<Arc<SlotMap>>>,
    /// False once the cluster refused the cross-slot script (a server older than Redis
    /// 7.0): batches then go per slot.
    node_batches: AtomicBool,
}

impl Link {
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
                    *link.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                    link.forget_slots();
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
        *self.slots.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The slot map, asking the cluster (`CLUSTER SLOTS`) when there is none.
    async fn slot_map(&self, c: &mut ClusterConnection) -> RedisResult<Arc<SlotMap>> {
        if let Some(map) = self.slots.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(map);
        }
        let reply = c
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let map = Arc::new(SlotMap::of(reply));
        *self.slots.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&map));
        Ok(map)
    }
}

/// No primary serves the slot (as far as `CLUSTER SLOTS` said).
const NO_NODE: u16 = u16::MAX;

/// Which primary serves each of the 16384 slots: an index into `nodes`, or [`NO_NODE`].
#[derive(Debug)]
struct SlotMap {
    owner: Vec<u16>,
    nodes: Vec<(String, u16)>,
}

impl SlotMap {
    /// From a `CLUSTER SLOTS` reply: each range is `[start, end, [host, port, id, …],
    /// replicas…]`. Malformed ranges are skipped (their slots have no node).
    fn of(reply: Value) -> SlotMap {
        let mut map = SlotMap {
            owner: vec![NO_NODE; 16_384],
            nodes: Vec::new(),
        };
        let Value::Array(ranges) = reply else {
            return map;
        };
        for range in ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let host = match node.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => continue,
            };
            let Some(Ok(port)) = node.get(1).map(|p| match p {
                Value::Int(p) => u16::try_from(*p).map_err(|_| ()),
                _ => Err(()),
            }) else {
                continue;
            };
            let (Ok(start), Ok(end)) = (usize::try_from(*start), usize::try_from(*end)) else {
                continue;
            };
            if start > end || end >= 16_384 {
                continue;
            }
            let index = match map.nodes.iter().position(|(h, p)| *h == host && *p == port) {
                Some(i) => i,
                None => {
                    map.nodes.push((host, port));
                    map.nodes.len() - 1
                }
            };
            let Ok(index) = u16::try_from(index) else {
                continue;
            };
            map.owner[start..=end].fill(index);
        }
        map
    }
}

/// The L2 on a Redis Cluster.
pub(crate) struct ClusterTier {
    link: Arc<Link>,
    /// Admission, deadline, retries and the breaker of every caller's operation.
    guard: Guard,
    scripts: Scripts,
    /// Which slots keep failing: a primary replaced while the connection still routes to it.
    staleness: Staleness,
}

/// A primary that hangs for good while its replica takes over is not noticed by redis-rs:
/// it refreshes its slot map on a `MOVED`, and a hung node answers nothing. Nor by the
/// breaker, which the other primaries' successes keep closed. So the tier counts failures
/// in a row per slot (a symbol's keys share one), and when a slot reaches [`STALE_AFTER`]
/// it opens a new connection in the background — which asks the seeds for the topology —
/// and swaps it in when ready, the old one serving meanwhile. At most one refresh per
/// [`REFRESH_EVERY`]. Bounded: one byte per slot.
struct Staleness {
    failures: Box<[AtomicU8]>,
    last_refresh: Mutex<Option<std::time::Instant>>,
}

impl Staleness {
    fn new() -> Self {
        Staleness {
            failures: (0..16_384).map(|_| AtomicU8::new(0)).collect(),
            last_refresh: Mutex::new(None),
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

    /// An operation on `slot` failed; true when the topology should be asked again now.
    fn failed(&self, slot: u16) -> bool {
        let Some(f) = self.failures.get(usize::from(slot)) else {
            return false;
        };
        let n = f.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n < STALE_AFTER {
            return false;
        }
        f.store(0, Ordering::Relaxed);
        let mut last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < REFRESH_EVERY) {
            return false;
        }
        *last = Some(now);
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
        let mut builder = ClusterClientBuilder::new(opts.seeds.clone())
            .retries(REDIRECTS)
            .min_retry_wait(1)
            .max_retry_wait(wait)
            .retry_wait_formula(1, 2)
            // Each node's connection within half the connect deadline, so one hung seed
            // leaves the rest of the deadline to the others and the topology query.
            .connection_timeout((opts.connect_timeout / 2).max(Duration::from_millis(1)))
            // Not the op deadline: a writer batch may take longer than a read, and redis-rs
            // would time it out and retry it. Every operation's own deadline (the guard's)
            // ends the wait for its caller; this bounds what redis-rs keeps pending.
            .response_timeout(opts.longest_op.max(opts.op_timeout));
        if let Some(pem) = &opts.ca {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        }
        let client = builder
            .build()
            .map_err(|e| Error::config("CACHE_REDIS_CLUSTER", e.to_string()))?;
        let (attempts, _) = watch::channel(0);
        Ok(ClusterTier {
            link: Arc::new(Link {
                client,
                connect_timeout: opts.connect_timeout,
                conn: RwLock::new(None),
                connecting: AtomicBool::new(false),
                attempts,
                last_error: Mutex::new(None),
                slots: RwLock::new(None),
                node_batches: AtomicBool::new(true),
            }),
            guard: Guard::new(&opts.breaker, opts.retry, opts.op_timeout),
            scripts: Scripts::new(),
            staleness: Staleness::new(),
        })
    }

    /// Runs `f` for a caller through the [`Guard`], as [`RedisTier`](super::redis) does.
    #[inline]
    async fn run<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T>
    where
        F: Fn(ClusterConnection) -> Fut,
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
        F: Fn(ClusterConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let result = self
            .guard
            .run_within(
                op,
                deadline,
                || self.attempt(key, &f),
                || self.link.last_error().filter(|e| !e.is_timeout()),
            )
            .await;
        if !key.is_empty() {
            let slot = key_slot(key.as_bytes());
            match &result {
                Err(e) if e.trips_breaker() => {
                    if self.staleness.failed(slot) {
                        tracing::info!(
                            slot,
                            "a slot's primary keeps failing while others answer: asking the cluster for its topology again"
                        );
                        self.link.start_connect();
                    }
                }
                Err(_) => {}
                Ok(_) => self.staleness.answered(slot),
            }
        }
        result
    }

    /// Runs `f` once under the probe deadline, bypassing the breaker.
    async fn run_for_recovery<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: Fn(ClusterConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = self.guard.breaker().probe_timeout();
        Guard::run_unguarded(op, deadline, self.attempt("", &f)).await
    }

    async fn attempt<T, F, Fut>(&self, key: &str, f: &F) -> Result<T>
    where
        F: Fn(ClusterConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self.link.get().await?;
        f(conn).await.map_err(|e| Error::from_redis(e, key))
    }

    /// The primaries' addresses, from `CLUSTER SLOTS` (each slot range's first node).
    async fn primaries(mut c: ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
        let reply = c
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        Ok(SlotMap::of(reply).nodes)
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
async fn unlink_by_slot(c: ClusterConnection, keys: &[&str]) -> RedisResult<u64> {
    let groups = by_slot(keys.iter().copied());
    let counts = try_join_all(groups.iter().map(|g| {
        let mut c = c.clone();
        let slot_keys: Vec<&str> = g.iter().map(|&i| keys[i]).collect();
        async move { commands::unlink(&mut c, &slot_keys).await }
    }))
    .await?;
    Ok(counts.into_iter().sum())
}

/// A node's address (`host`, `port`), or none for a group sent per slot, and the group's
/// item indices.
type NodeGroup = (Option<(String, u16)>, Vec<usize>);

/// A batch's items grouped by the primary that serves their slot (per `map`); items of a
/// slot with no known primary grouped per slot, without a node.
fn by_node_then_slot(map: &SlotMap, items: &[Put<'_>]) -> Vec<NodeGroup> {
    let mut per_node: Vec<Vec<usize>> = vec![Vec::new(); map.nodes.len()];
    let mut orphans: Vec<usize> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let slot = usize::from(key_slot(commands::put_key(item).as_bytes()));
        match map.owner.get(slot).copied() {
            Some(n) if n != NO_NODE => per_node[usize::from(n)].push(i),
            _ => orphans.push(i),
        }
    }
    let mut groups: Vec<NodeGroup> = per_node
        .into_iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .map(|(n, g)| (Some(map.nodes[n].clone()), g))
        .collect();
    for g in by_slot(orphans.iter().map(|&i| commands::put_key(&items[i]))) {
        groups.push((None, g.into_iter().map(|j| orphans[j]).collect()));
    }
    groups
}

/// [`commands::put_many`] of one node's items, sent to that node (`host:port`) whatever
/// their slots, with the cross-slot variant of the multi-key script.
async fn put_on_node(
    mut c: ClusterConnection,
    scripts: &Scripts,
    items: &[Put<'_>],
    host: &str,
    port: u16,
) -> RedisResult<Vec<PutReply>> {
    let batch = commands::PutBatch::new(items);
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
        // `SCRIPT LOAD` goes to every node of the cluster.
        vmany.load_async(&mut c).await?;
        breplace.load_async(&mut c).await?;
        let pipeline = batch.pipeline(vmany, breplace, true);
        replies = c
            .route_pipeline(pipeline, 0, n, route())
            .await?
            .into_iter()
            .map(Value::extract_error)
            .collect();
    }
    Ok(batch.replies(replies))
}

/// The error of a part of a batch that did not answer within `after`.
fn part_timed_out(after: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("a cluster node did not answer its part of the batch within {after:?}"),
    ))
}

/// True when `e` says the server cannot run a script with flags (its shebang line): Redis
/// before 7.0.
fn cross_slot_unsupported(e: &RedisError) -> bool {
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

    /// One script per slot (`GET` and `PTTL` of its keys), the slots concurrently.
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Fetched>>> {
        let Some(&first) = keys.first() else {
            return Ok(Vec::new());
        };
        let groups = by_slot(keys.iter().copied());
        let (script, groups) = (&self.scripts.values.get_with_ttl, &groups);
        let replies: Vec<Vec<Value>> = self
            .run("get_many", first, |c| async move {
                try_join_all(groups.iter().map(|g| {
                    let mut c = c.clone();
                    let mut inv = script.prepare_invoke();
                    for &i in g {
                        inv.key(keys[i]);
                    }
                    async move { inv.invoke_async(&mut c).await }
                }))
                .await
            })
            .await?;
        let mut out: Vec<Option<Fetched>> = keys.iter().map(|_| None).collect();
        for (g, reply) in groups.iter().zip(replies) {
            let found = values::parse_pairs(first, reply)?;
            if found.len() != g.len() {
                return Err(values::malformed(first));
            }
            for (&i, f) in g.iter().zip(found) {
                out[i] = f;
            }
        }
        Ok(out)
    }

    /// One pipeline per slot, the slots concurrently.
    async fn set_many(&self, items: &[(&str, Vec<u8>, Duration)]) -> Result<Vec<bool>> {
        let Some(first) = items.first().map(|i| i.0) else {
            return Ok(Vec::new());
        };
        let groups = by_slot(items.iter().map(|i| i.0));
        let (scripts, groups_ref) = (&self.scripts, &groups);
        let replies: Vec<Vec<i64>> = self
            .run("set_many", first, |c| async move {
                try_join_all(groups_ref.iter().map(|g| {
                    let mut c = c.clone();
                    let slot_items: Vec<(&str, &[u8], Duration)> = g
                        .iter()
                        .map(|&i| (items[i].0, items[i].1.as_slice(), items[i].2))
                        .collect();
                    async move { commands::set_many(&mut c, scripts, &slot_items).await }
                }))
                .await
            })
            .await?;
        let mut out = vec![false; items.len()];
        for (g, codes) in groups.iter().zip(replies) {
            for (&i, code) in g.iter().zip(codes) {
                out[i] = code == 1;
            }
        }
        Ok(out)
    }

    /// One pipeline per primary, the primaries concurrently: the batch cut by the node that
    /// serves each key's slot ([`SlotMap`]), the values of all of a node's slots in calls of
    /// the cross-slot variant of the multi-key script, as on one server. Keys of a slot the
    /// map knows no node for (or every key, on a server without cross-slot scripts) go one
    /// pipeline per slot. One guarded operation under `within`: a part that fails (its
    /// primary hung, say) makes its items [`PutReply::Failed`] while the others land, and
    /// only a batch of which no part landed is an error (one breaker failure). A batch that
    /// fails, or finds a key moved, drops the map: the next asks the cluster.
    async fn put_many(&self, items: &[Put<'_>], within: Duration) -> Result<Vec<PutReply>> {
        let Some(first) = items.first() else {
            return Ok(Vec::new());
        };
        let (link, scripts) = (&self.link, &self.scripts);
        // A primary that does not answer fails its own part of the batch, not the others':
        // each part has most of the batch's deadline (the rest is for the guard's retry).
        let part_within = within * 3 / 4;
        let result = self
            .run_within(
                "put_many",
                commands::put_key(first),
                within,
                |mut c| async move {
                    let by_node = link.node_batches.load(Ordering::Acquire);
                    let groups = if by_node {
                        let map = link.slot_map(&mut c).await?;
                        by_node_then_slot(&map, items)
                    } else {
                        by_slot(items.iter().map(commands::put_key))
                            .into_iter()
                            .map(|g| (None, g))
                            .collect()
                    };
                    let parts = join_all(groups.iter().map(|(node, g)| {
                        let c = c.clone();
                        let slot_items: Vec<Put<'_>> = g.iter().map(|&i| items[i]).collect();
                        async move {
                            let part = async {
                                match node {
                                    Some((host, port)) => {
                                        put_on_node(c, scripts, &slot_items, host, *port).await
                                    }
                                    None => {
                                        let mut c = c;
                                        commands::put_many(&mut c, scripts, &slot_items).await
                                    }
                                }
                            };
                            tokio::time::timeout(part_within, part)
                                .await
                                .unwrap_or_else(|_| Err(part_timed_out(part_within)))
                        }
                    }))
                    .await;
                    if by_node
                        && parts
                            .iter()
                            .any(|r| r.as_ref().is_err_and(cross_slot_unsupported))
                    {
                        tracing::warn!("the cluster refuses cross-slot scripts (Redis < 7.0?): batches go per slot");
                        link.node_batches.store(false, Ordering::Release);
                    }
                    // Nothing landed: the batch failed, for the breaker and the retry.
                    if let Some(Err(e)) = parts.iter().find(|r| r.is_err())
                        && parts.iter().all(Result::is_err)
                    {
                        return Err(e.clone());
                    }
                    Ok::<_, RedisError>((groups, parts))
                },
            )
            .await;
        let (groups, parts) = match result {
            Ok(r) => r,
            Err(e) => {
                self.link.forget_slots();
                return Err(e);
            }
        };
        let mut out: Vec<Option<PutReply>> = items.iter().map(|_| None).collect();
        for ((_, g), part) in groups.iter().zip(parts) {
            match part {
                Ok(got) => {
                    for (&i, reply) in g.iter().zip(got) {
                        if let PutReply::Refused(e) = &reply
                            && e.is_redirect()
                        {
                            self.link.forget_slots();
                        }
                        out[i] = Some(reply);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, keys = g.len(), "part of a cluster batch failed");
                    self.link.forget_slots();
                    for &i in g {
                        let key = commands::put_key(&items[i]);
                        out[i] = Some(PutReply::Failed(Error::from_redis(e.clone(), key)));
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

    async fn unlink(&self, keys: &[&str]) -> Result<u64> {
        let first = keys.first().copied().unwrap_or_default();
        self.run("delete", first, |c| unlink_by_slot(c, keys)).await
    }

    /// `PING` of every primary.
    async fn ping(&self) -> Result<()> {
        self.run("ping", "", ping_primaries).await
    }

    #[inline]
    fn breaker(&self) -> &CircuitBreaker {
        self.guard.breaker()
    }

    /// `PING` of every primary: the connection within the probe deadline, the answers within
    /// the operation deadline. The one breaker closes only when the whole cluster answers.
    /// A failed probe drops the connection, so the next one learns the topology again.
    async fn probe_ping(&self) -> Result<()> {
        let within = self.guard.breaker().probe_timeout();
        let conn = match tokio::time::timeout(within, self.link.get()).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(Error::Timeout {
                    op: "probe_connect",
                    after: within,
                });
            }
        };
        let answer_within = self.guard.deadline();
        let answer = match tokio::time::timeout(answer_within, ping_primaries(conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::from_redis(e, "")),
            Err(_) => Err(Error::Timeout {
                op: "probe",
                after: answer_within,
            }),
        };
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
    }

    async fn recovery_unlink(&self, keys: &[&str]) -> Result<u64> {
        self.run_for_recovery("recovery_unlink", |c| unlink_by_slot(c, keys))
            .await
    }

    /// `SCAN` of every primary in turn, each step under the probe deadline.
    async fn recovery_unlink_matching(&self, pattern: &str) -> Result<()> {
        let primaries = self
            .run_for_recovery("recovery_nodes", ClusterTier::primaries)
            .await?;
        for (host, port) in primaries {
            let mut cursor = 0u64;
            loop {
                let host = host.as_str();
                let (next, keys) = self
                    .run_for_recovery("recovery_scan", |mut c| async move {
                        let reply = c
                            .route_command(
                                redis::cmd("SCAN")
                                    .arg(cursor)
                                    .arg("MATCH")
                                    .arg(pattern)
                                    .arg("COUNT")
                                    .arg(commands::SCAN_COUNT)
                                    .clone(),
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                    host: host.to_owned(),
                                    port,
                                }),
                            )
                            .await?;
                        redis::from_redis_value::<(u64, Vec<String>)>(reply)
                            .map_err(RedisError::from)
                    })
                    .await?;
                if !keys.is_empty() {
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    self.recovery_unlink(&keys).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }
}

/// `PING` of every primary; an error if any does not answer.
async fn ping_primaries(mut c: ClusterConnection) -> RedisResult<()> {
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
    fn a_slot_failing_three_times_in_a_row_asks_for_the_topology_once_a_second() {
        let s = Staleness::new();
        assert!(!s.failed(7) && !s.failed(7));
        s.answered(7);
        assert!(!s.failed(7) && !s.failed(7));
        assert!(s.failed(7), "the third failure in a row");
        // Counted afresh, and within the second no second refresh, whichever slot asks.
        assert!(!s.failed(7) && !s.failed(7) && !s.failed(7));
        assert!(!s.failed(9) && !s.failed(9) && !s.failed(9));
        // Out of range is ignored, not a panic.
        assert!(!s.failed(u16::MAX));
        s.answered(u16::MAX);
    }

    #[test]
    fn the_slot_map_is_read_from_cluster_slots() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"10.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |a: i64, b: i64, primary: i64, replica: i64| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                node(primary),
                node(replica),
            ])
        };
        let reply = Value::Array(vec![
            range(0, 5460, 7000, 7003),
            range(5461, 10922, 7001, 7004),
            range(10923, 12000, 7002, 7005),
            // A primary owning two ranges is one primary.
            range(12001, 16000, 7002, 7005),
            // Garbage is skipped, not fatal: slots 16001.. have no node.
            Value::Int(3),
            Value::Array(vec![Value::Int(16001), Value::Int(16383), node(70_000)]),
            range(16001, 99_999, 7000, 7003),
        ]);
        let map = SlotMap::of(reply);
        let ports: Vec<u16> = map.nodes.iter().map(|(_, p)| *p).collect();
        assert_eq!(ports, vec![7000, 7001, 7002]);
        assert_eq!(
            (
                map.owner[0],
                map.owner[5461],
                map.owner[12001],
                map.owner[16001]
            ),
            (0, 1, 2, NO_NODE)
        );
        let empty = SlotMap::of(Value::Nil);
        assert!(empty.nodes.is_empty() && empty.owner.iter().all(|&o| o == NO_NODE));
    }

    #[test]
    fn a_batch_goes_per_node_and_unknown_slots_per_slot() {
        let mut map = SlotMap {
            owner: vec![NO_NODE; 16_384],
            nodes: vec![("h".to_owned(), 1), ("h".to_owned(), 2)],
        };
        let keys = [
            "mdc:price:{A}",
            "mdc:price:{B}",
            "mdc:price:{C}",
            "mdc:pos:{A}",
        ];
        let slot = |k: &str| usize::from(key_slot(k.as_bytes()));
        map.owner[slot(keys[0])] = 0;
        map.owner[slot(keys[1])] = 0;
        map.owner[slot(keys[2])] = NO_NODE;
        let envelope = [0u8; 1];
        let items: Vec<Put<'_>> = keys
            .iter()
            .map(|&key| Put::Value {
                key,
                envelope: &envelope,
                expire_at_ms: 1,
            })
            .collect();
        let groups = by_node_then_slot(&map, &items);
        assert_eq!(
            groups,
            vec![(Some(("h".to_owned(), 1)), vec![0, 1, 3]), (None, vec![2]),]
        );
    }
}
