//! Spawns throwaway `redis-server` processes on free ports so integration tests run against a real server.
//!
//! Each [`RedisServer`] owns one process, listening only on 127.0.0.1 with
//! persistence off, logging into its own temporary directory. Dropping it kills
//! the process; if the test is panicking, the server log is printed first so a
//! failure shows what the server saw. Tests can also pause (SIGSTOP), resume,
//! kill and restart the server to exercise the cache's failure handling.
//!
//! The binary is `$MDCACHE_REDIS_SERVER` if set, else `redis-server` from
//! `PATH`. There is deliberately no "skip if missing": a test run without a
//! server should fail loudly (`make deps` installs one).
//!
//! The submodules hold the rest of what more than one test file needs: [`pg`]
//! (PostgreSQL), [`proxy`] (the fault-injecting TCP proxy), [`faults`] (the
//! fault scenarios' machinery), [`http`] (the Prometheus endpoint from outside),
//! [`cli`] (the `mdcache` binary with a clean environment), [`cluster`] (a local Redis
//! Cluster) and [`target`] (a server or a cluster, for tests that run on both).
//!
//! The library's own unit tests include this file too (`src/l2/redis.rs`), so
//! nothing declared here may name `mdcache::`: the typed test values live in
//! `fixtures.rs` next to it, which each test file includes with `#[path]`.

// Every test binary includes this module with `mod support;`, and none uses all of it.
#![allow(dead_code)]

pub mod cli;
pub mod cluster;
pub mod faults;
pub mod http;
pub mod pg;
pub mod proxy;
pub mod target;

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long a freshly spawned server gets to answer PING. Generous because CI
/// machines can be slow; a healthy server answers in a few milliseconds.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The L2 deadline of the tests' caches where a deadline is not what they test. Generous: a
/// loaded 2-core CI machine must never turn a healthy call into a timeout.
pub const TEST_OP_TIMEOUT: Duration = Duration::from_secs(2);

/// How many fresh ports [`RedisServer::start`] tries. Another process can grab
/// the port between our probe listener closing and redis binding it.
const START_ATTEMPTS: usize = 5;

/// A `redis-server` child process on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    /// `None` once [`RedisServer::kill`] has reaped it, so we never signal a
    /// pid that the kernel may have handed to another process.
    child: Option<Child>,
    port: u16,
    /// Holds `redis.log` and the process's stdout/stderr; removed on drop.
    dir: TempDir,
    /// Extra arguments it was started with, kept for a restart.
    extra: Vec<String>,
    /// See [`RedisServer::stop_with_process`].
    watchdog: Option<Child>,
}

impl RedisServer {
    /// Starts a new empty server on a free ephemeral port and waits until it
    /// answers PING. Panics (with the server log) if it cannot.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with `extra` arguments for redis-server (a TLS port and its
    /// certificates, say). The plain port stays on: readiness and the helpers use it.
    pub fn start_with(extra: &[String]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("mdcache-redis-")
            .tempdir()
            .expect("create temp dir for redis-server");
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn_ready(&dir, port, extra) {
                Ok(child) => {
                    return RedisServer {
                        child: Some(child),
                        port,
                        dir,
                        extra: extra.to_vec(),
                        watchdog: None,
                    };
                }
                Err(failure) => last_failure = failure,
            }
        }
        panic!(
            "redis-server did not start after {START_ATTEMPTS} attempts: {last_failure}\n--- server log ---\n{}",
            read_log(&dir)
        );
    }

    /// The connection URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port the server listens on (stable across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address, `127.0.0.1:PORT`: what a [`proxy::FaultProxy`] relays to.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A client for this server (connecting is lazy, so this never fails).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid redis URL")
    }

    /// A fresh multiplexed async connection. Panics if the server does not answer.
    pub async fn multiplexed(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis-server")
    }

    /// The number of keys in database 0, over a fresh sync connection.
    /// Panics if the server does not answer within 5 s (e.g. it is paused).
    pub fn dbsize(&self) -> i64 {
        let mut con = self
            .client()
            .get_connection_with_timeout(READY_TIMEOUT)
            .expect("connect to test redis-server");
        con.set_read_timeout(Some(READY_TIMEOUT))
            .expect("set read timeout");
        redis::cmd("DBSIZE")
            .query(&mut con)
            .expect("DBSIZE on test redis-server")
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is
    /// answered, like a hung or partitioned server.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Undoes [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// Kills the server (SIGKILL) and waits for it to exit; connections are
    /// then refused until [`RedisServer::restart`].
    pub fn kill(&mut self) {
        // The watchdog must not outlive the process it watches and later kill whatever
        // process gets its pid.
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if let Some(mut child) = self.child.take() {
            // SIGKILL works on a stopped process too; no SIGCONT needed here.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts a new empty one on the same
    /// port and waits for PING. Panics (with the server log) if it cannot.
    pub fn restart(&mut self) {
        let watched = self.watchdog.is_some();
        self.kill();
        let mut last_failure = String::new();
        // The port can briefly be unavailable; unlike `start` we must keep it,
        // so retry it a few times with a short pause instead of picking another.
        for _ in 0..START_ATTEMPTS {
            match spawn_ready(&self.dir, self.port, &self.extra) {
                Ok(child) => {
                    self.child = Some(child);
                    if watched {
                        self.stop_with_process();
                    }
                    return;
                }
                Err(failure) => last_failure = failure,
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "redis-server did not restart on port {}: {last_failure}\n--- server log ---\n{}",
            self.port,
            self.log()
        );
    }

    /// The running server's process id (`None` while killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server (and every restart of it) wrote to its log file,
    /// followed by anything it printed to stdout/stderr.
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    fn signal(&self, sig: Signal) {
        let child = self
            .child
            .as_ref()
            .expect("redis-server is not running (killed?)");
        signal::kill(pid(child), sig).unwrap_or_else(|e| panic!("send {sig} to redis-server: {e}"));
    }
}

impl RedisServer {
    /// For a server kept in a `static`, which is never dropped: a watchdog shell process
    /// waits for this test process to exit, then kills the server and removes its
    /// directory. Without it the server outlives the test run. When the server is killed
    /// the watchdog goes with it (a restart brings it back), so it never kills a pid the
    /// kernel has handed to another process.
    pub fn stop_with_process(&mut self) {
        use std::os::unix::process::CommandExt;
        /// `$1`: this process; `$2`: the server; `$3`: its directory.
        const SCRIPT: &str = r#"
while kill -0 "$1" 2>/dev/null; do sleep 1; done
kill -CONT "$2" 2>/dev/null
kill -KILL "$2" 2>/dev/null
rm -rf "$3"
"#;
        let Some(child) = &self.child else { return };
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("mdcache-redis-watchdog")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(self.dir.path())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C meant for the tests does not kill it too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the redis-server watchdog (sh): {e}"));
        self.watchdog = Some(watchdog);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A stopped process still dies on SIGKILL, but resume it first so
            // nothing is left frozen if the kill below were to fail.
            let _ = signal::kill(pid(child), Signal::SIGCONT);
        }
        self.kill();
        if thread::panicking() {
            eprintln!(
                "--- redis-server log (port {}) ---\n{}--- end of redis-server log ---",
                self.port,
                self.log()
            );
        }
    }
}

fn pid(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"))
}

/// The `redis-server` binary to run.
fn server_binary() -> PathBuf {
    std::env::var_os("MDCACHE_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// A 2-worker runtime shared by a test binary's property tests, built on first use (each
/// case blocks on it; a runtime per case would cost more than most cases).
pub fn shared_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// How many cases a fuzz harness runs: `MDCACHE_FUZZ_CASES` when set (`make fuzz` sets a long
/// budget), else `short`, the budget `make test` affords.
pub fn fuzz_cases(short: u32) -> u32 {
    std::env::var("MDCACHE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(short)
}

/// A port the kernel just considered free. Racy by nature (see `START_ATTEMPTS`).
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        // 6379 is a real service on developer machines; never touch it.
        if port != 6379 {
            return port;
        }
    }
}

/// Spawns redis-server on `port` and waits until *that* process answers.
/// On failure the process is reaped and the reason returned.
fn spawn_ready(dir: &TempDir, port: u16, extra: &[String]) -> Result<Child, String> {
    let output = File::options()
        .create(true)
        .append(true)
        .open(dir.path().join("output.log"))
        .expect("open redis-server output file");
    let mut child = Command::new(server_binary())
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--protected-mode")
        .arg("no")
        .arg("--save")
        .arg("")
        .arg("--appendonly")
        .arg("no")
        .arg("--dir")
        .arg(dir.path())
        .arg("--logfile")
        .arg(dir.path().join("redis.log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("clone output file"))
        .stderr(output)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {:?} ({e}); install it with `make deps` or set MDCACHE_REDIS_SERVER",
                server_binary()
            )
        });

    let deadline = Instant::now() + READY_TIMEOUT;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("valid URL");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server on port {port} exited early ({status})"
            ));
        }
        // Check the pid, not just PING: if another test's server won the race
        // for this port, it would answer PING while ours fails to bind.
        if answering_pid(&client) == Some(child.id()) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of the server answering at `client`, if it answers PING.
fn answering_pid(client: &redis::Client) -> Option<u32> {
    let mut con = client
        .get_connection_with_timeout(Duration::from_millis(250))
        .ok()?;
    con.set_read_timeout(Some(Duration::from_millis(250)))
        .ok()?;
    redis::cmd("PING").query::<String>(&mut con).ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut con).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// `redis.log` followed by captured stdout/stderr (where bad-argument errors go).
fn read_log(dir: &TempDir) -> String {
    let mut log = fs::read_to_string(dir.path().join("redis.log")).unwrap_or_default();
    let output = fs::read_to_string(dir.path().join("output.log")).unwrap_or_default();
    if !output.trim().is_empty() {
        log.push_str("--- stdout/stderr ---\n");
        log.push_str(&output);
    }
    log
}

/// Polls `cond` every 10 ms until it holds; panics after 30 s (a generous bound: the
/// conditions waited for take milliseconds on a healthy machine).
pub async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sets `n` string keys named by `name(i)` to `"x"` on `server`, 1,000 to a pipeline: bulk
/// data for the scan and clear tests, written outside mdcache.
pub async fn fill_keys(server: &RedisServer, n: u64, name: impl Fn(u64) -> String) {
    let mut raw = server.multiplexed().await;
    let mut i = 0;
    while i < n {
        let mut pipe = redis::pipe();
        for j in i..(i + 1000).min(n) {
            pipe.cmd("SET").arg(name(j)).arg("x").ignore();
        }
        let () = pipe.query_async(&mut raw).await.expect("bulk SET");
        i += 1000;
    }
}
