//! A fault-injecting TCP proxy that sits between a test's client and a real server.
//!
//! [`FaultProxy::start`] listens on an ephemeral 127.0.0.1 port and relays
//! every accepted connection to the upstream address, byte for byte, in both
//! directions. While it runs, a test can make the network between client and
//! server misbehave, for existing and new connections alike:
//!
//! - [`FaultProxy::set_latency`] delays every forwarded chunk;
//! - [`FaultProxy::blackhole`] swallows all traffic, like a partition;
//! - [`FaultProxy::reset_all`] kills every open connection with a TCP RST;
//! - [`FaultProxy::refuse`] resets new connections as soon as they arrive.
//!
//! The proxy runs on its own thread with its own current-thread tokio
//! runtime, so it works the same from a sync `#[test]` and from a
//! `#[tokio::test]` (whose runtime it never touches). Dropping it stops the
//! thread and resets every connection it still holds.

// Every test binary includes this module through `mod support;`, and none uses all of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most client connections relayed at once; further ones are reset on
/// arrival. Keeps a runaway test (a reconnect loop, a pool without a cap)
/// from exhausting file descriptors: each relayed connection costs two.
pub const MAX_CONNECTIONS: usize = 256;

/// Size of each direction's relay buffer, so a connection costs at most
/// 2 × 16 KiB however much it sends.
const BUF_SIZE: usize = 16 * 1024;

/// How long [`FaultProxy::reset_all`] waits for the relay tasks to close their
/// sockets. They only have to notice a cancellation, which takes microseconds;
/// the margin is for slow CI machines.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP proxy on 127.0.0.1 in front of one upstream address, with switches
/// for latency, partitions, resets and refusals. Stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    /// The switches and the connection registry, shared with the proxy thread.
    shared: Arc<Shared>,
    /// Parent of every connection's token: cancelling it stops the accept
    /// loop and resets every connection.
    stop: CancellationToken,
    /// `None` once [`FaultProxy::stop`] has joined the thread. A `Mutex` so
    /// that `stop` can take `&self` like every other control.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl FaultProxy {
    /// Starts a proxy for `upstream` on a free 127.0.0.1 port. Returns once
    /// the port is listening, so clients can connect straight away. Needs no
    /// tokio runtime from the caller. Panics if it cannot bind or spawn.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = bind_ephemeral();
        let addr = listener.local_addr().expect("proxy local addr");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build the proxy's tokio runtime");
        // Register the listener with the proxy's own runtime, not the caller's.
        let listener = {
            let _enter = runtime.enter();
            TcpListener::from_std(listener).expect("register proxy listener")
        };
        let shared = Arc::new(Shared {
            latency_nanos: AtomicU64::new(0),
            blackhole: watch::Sender::new(false),
            refuse: AtomicBool::new(false),
            registry: Mutex::new(Registry::default()),
            closed: Condvar::new(),
        });
        let stop = CancellationToken::new();
        let thread = thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn({
                let shared = Arc::clone(&shared);
                let stop = stop.clone();
                move || runtime.block_on(accept_loop(listener, upstream, shared, stop))
            })
            .expect("spawn the proxy thread");
        FaultProxy {
            addr,
            upstream,
            shared,
            stop,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// The address clients should connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address every connection is relayed to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// A Redis URL pointing at the proxy, `redis://127.0.0.1:PORT/`.
    pub fn url_for_redis(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.addr.port())
    }

    /// The number of client connections currently relayed. A connection the
    /// client has just closed may be counted for a moment longer, until the
    /// proxy thread notices; after [`FaultProxy::reset_all`] returns, the
    /// connections it reset are no longer counted.
    pub fn connections(&self) -> usize {
        self.shared.registry().open.len()
    }

    /// Delays every chunk forwarded in either direction by `latency` (zero
    /// turns it off). Order is kept: each direction forwards one chunk at a
    /// time. Applies from the next chunk on, on existing connections too; a
    /// chunk already waiting keeps the latency it started with.
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.shared.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    /// While on, the proxy keeps accepting connections and reading from them
    /// but forwards nothing in either direction, like a network partition:
    /// writes succeed and no reply ever comes. New connections do not even
    /// reach the upstream until it is switched off. Data read while
    /// black-holed is dropped, not replayed, so a client's protocol state is
    /// usually broken afterwards (a request lost, its reply awaited forever):
    /// use fresh connections once traffic flows again.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.send_replace(on);
    }

    /// Closes every open connection abruptly (SO_LINGER 0, so both the client
    /// and the upstream see a TCP RST, not a clean close). Returns once they
    /// are closed; new connections are relayed as usual. Panics if the proxy
    /// thread fails to close them within a few seconds.
    pub fn reset_all(&self) {
        let registry = self.shared.registry();
        let Some(&newest) = registry.open.keys().max() else {
            return;
        };
        for token in registry.open.values() {
            token.cancel();
        }
        // Ids only grow, so an open id up to `newest` is one we just cancelled.
        let (registry, wait) = self
            .shared
            .closed
            .wait_timeout_while(registry, RESET_TIMEOUT, |registry| {
                registry.open.keys().any(|&id| id <= newest)
            })
            .unwrap_or_else(PoisonError::into_inner);
        drop(registry);
        assert!(
            !wait.timed_out(),
            "fault proxy did not close its connections within {RESET_TIMEOUT:?}"
        );
    }

    /// While on, new connections are accepted and immediately reset.
    /// Existing connections are not affected. The client's connect succeeds
    /// and its first read or write fails with a reset; it is not a
    /// connection refusal (`ECONNREFUSED`, redis-rs `is_connection_refusal()`),
    /// which would need the port closed and could lose it to another process.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::Relaxed);
    }

    /// Stops accepting, resets every open connection and joins the proxy
    /// thread. The port then refuses connections. Idempotent; drop calls it.
    pub fn stop(&self) {
        self.stop.cancel();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            // Do not turn an unwinding test into an abort with a second panic.
            if thread.join().is_err() && !thread::panicking() {
                panic!("fault proxy thread for {} panicked", self.upstream);
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// State shared by the test's handle and the proxy thread. Switches are read
/// per chunk, which is how they reach connections that are already open.
#[derive(Debug)]
struct Shared {
    /// [`FaultProxy::set_latency`], in nanoseconds.
    latency_nanos: AtomicU64,
    /// A `watch` rather than an `AtomicBool` so that a connection waiting for
    /// the partition to heal (before dialling upstream) wakes when it does.
    blackhole: watch::Sender<bool>,
    refuse: AtomicBool,
    /// A std `Mutex`: held only for a few map operations, never across an
    /// `.await`, and locked from sync test code too.
    registry: Mutex<Registry>,
    /// Signalled whenever a connection leaves the registry, for `reset_all`.
    closed: Condvar,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Nothing panics while holding the lock, but a poisoned registry is
        // still consistent: never let it hide the original failure.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    fn blackholed(&self) -> bool {
        *self.blackhole.borrow()
    }

    /// Admits a new connection, or `None` if refusing or at the cap.
    fn admit(&self, stop: &CancellationToken) -> Option<(u64, CancellationToken)> {
        if self.refuse.load(Ordering::Relaxed) {
            return None;
        }
        let mut registry = self.registry();
        if registry.open.len() >= MAX_CONNECTIONS {
            return None;
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let token = stop.child_token();
        registry.open.insert(id, token.clone());
        Some((id, token))
    }

    fn release(&self, id: u64) {
        self.registry().open.remove(&id);
        self.closed.notify_all();
    }
}

/// The connections being relayed, each with the token that resets it.
#[derive(Debug, Default)]
struct Registry {
    /// Ids are never reused, so `reset_all` can tell its victims from
    /// connections that arrived while it waited.
    next_id: u64,
    open: HashMap<u64, CancellationToken>,
}

/// Binds 127.0.0.1 on a kernel-chosen port, non-blocking for tokio.
fn bind_ephemeral() -> std::net::TcpListener {
    loop {
        let listener =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy's port");
        let port = listener.local_addr().expect("proxy local addr").port();
        // 6379 is a real service on developer machines; never touch it.
        if port != 6379 {
            listener
                .set_nonblocking(true)
                .expect("make proxy listener non-blocking");
            return listener;
        }
    }
}

/// Accepts until `stop` is cancelled, then waits for every connection task.
async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(_) => {
                // Usually out of file descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some((id, token)) = shared.admit(&stop) else {
            reset(&client);
            continue;
        };
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            serve(client, upstream, &shared, &token).await;
            shared.release(id);
        });
    }
    // Refuse new connections at once, rather than leave them in the backlog
    // while the open ones close.
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

/// Relays one connection until both sides have closed, an error occurs, or
/// `token` is cancelled. Errors and cancellation reset both sockets.
async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    shared: &Shared,
    token: &CancellationToken,
) {
    let mut upstream_stream = None;
    let clean = tokio::select! {
        () = token.cancelled() => false,
        relayed = relay(&mut client, &mut upstream_stream, upstream, shared) => relayed.is_ok(),
    };
    if !clean {
        reset(&client);
        if let Some(upstream_stream) = &upstream_stream {
            reset(upstream_stream);
        }
    }
}

/// Dials `upstream` (into `upstream_slot`, so that `serve` can reset it) once
/// no partition is in the way, then pumps both directions until both end.
async fn relay(
    client: &mut TcpStream,
    upstream_slot: &mut Option<TcpStream>,
    upstream: SocketAddr,
    shared: &Shared,
) -> io::Result<()> {
    // Allocated per connection and bounded by `MAX_CONNECTIONS`; boxed so the
    // task's future stays small.
    let mut to_upstream = vec![0; BUF_SIZE].into_boxed_slice();
    let mut to_client = vec![0; BUF_SIZE].into_boxed_slice();
    let Some(pending) = wait_out_blackhole(client, shared, &mut to_upstream).await? else {
        return Ok(());
    };
    client.set_nodelay(true)?;
    let upstream = upstream_slot.insert(TcpStream::connect(upstream).await?);
    upstream.set_nodelay(true)?;
    forward(&to_upstream[..pending], upstream, shared).await?;
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    tokio::try_join!(
        pump(
            &mut client_read,
            &mut upstream_write,
            shared,
            &mut to_upstream
        ),
        pump(
            &mut upstream_read,
            &mut client_write,
            shared,
            &mut to_client
        ),
    )?;
    Ok(())
}

/// While black-holed, reads and drops whatever the client sends. Returns
/// `None` if the client closed meanwhile, else, once traffic may flow, how
/// many bytes at the start of `buf` were read after the switch went off and
/// must still be forwarded (usually none).
async fn wait_out_blackhole(
    client: &mut TcpStream,
    shared: &Shared,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    let mut blackhole = shared.blackhole.subscribe();
    while *blackhole.borrow_and_update() {
        tokio::select! {
            // Cannot fail: `shared` owns the sender and outlives this task.
            _ = blackhole.changed() => {}
            read = client.read(buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(None);
                }
                // Both branches can be ready at once when the switch goes off
                // just as data arrives: data read after that is not dropped.
                if !shared.blackholed() {
                    return Ok(Some(n));
                }
            }
        }
    }
    Ok(Some(0))
}

/// Forwards one direction chunk by chunk. At end of stream, passes the
/// half-close on and returns.
async fn pump(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    shared: &Shared,
    buf: &mut [u8],
) -> io::Result<()> {
    loop {
        let n = from.read(buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        forward(&buf[..n], to, shared).await?;
    }
}

/// Writes one chunk after the current latency, unless black-holed before or
/// after the wait, in which case the chunk is dropped.
async fn forward(
    chunk: &[u8],
    to: &mut (impl AsyncWrite + Unpin),
    shared: &Shared,
) -> io::Result<()> {
    if chunk.is_empty() || shared.blackholed() {
        return Ok(());
    }
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
        // The partition may have started while this chunk waited.
        if shared.blackholed() {
            return Ok(());
        }
    }
    to.write_all(chunk).await
}

/// Makes dropping `stream` send a TCP RST instead of a FIN. Best effort: if
/// SO_LINGER cannot be set, the peer sees a clean close instead.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}
