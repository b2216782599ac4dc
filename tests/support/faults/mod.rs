//! The fault scenarios' machinery: the faults, the servers they hit, and how each is injected, kept up and healed.
//!
//! Both kinds of scenario use it: the in-process load of `tests/faults.rs` and the
//! `mdcache simulate` runs of `tests/faults_simulate.rs`, so a fault means the same in both.

// Every test binary includes this module through `mod support;`, and none uses all of it.
#![allow(dead_code)]

pub mod settings;

use std::time::Duration;

use super::RedisServer;
use super::pg::PgServer;
use super::proxy::FaultProxy;

/// No call may take longer than this (generous: the point is "bounded", not "fast").
pub const NO_HANG: Duration = Duration::from_secs(1);

/// What a fault scenario expects.
#[derive(Clone, Copy)]
pub struct Expect {
    /// Redis is faulted: the breaker must open during the fault.
    pub breaker_opens: bool,
    /// The database is faulted: reads it would have served may fail (closed), writes fail.
    pub source_down: bool,
}

/// The faults, each injected, kept up and healed the same way by both kinds of scenario.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    RedisKilled,
    RedisHung,
    RedisSlow,
    ConnectionResets,
    PostgresStopped,
    BothDown,
    /// `CLIENT KILL TYPE pubsub` every 50 ms: every backplane subscriber loses its
    /// subscription again and again while Redis itself stays healthy.
    SubscriberKilled,
    /// On a 3+3 cluster: `CLUSTER FAILOVER` on a replica, which takes over its primary's
    /// slots (in ~30 ms here) while the old primary becomes its replica.
    ClusterFailover,
    /// On a 3+3 cluster: a primary SIGSTOPped; the cluster promotes its replica (in ~2 s,
    /// `cluster-node-timeout` 1000 ms) and the old primary, resumed, rejoins as a replica.
    ClusterPrimaryHung,
}

impl Fault {
    /// The scenario's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::RedisKilled => "redis killed",
            Fault::RedisHung => "redis hung",
            Fault::RedisSlow => "+20 ms latency",
            Fault::ConnectionResets => "connection resets",
            Fault::PostgresStopped => "postgres stopped",
            Fault::BothDown => "both down",
            Fault::SubscriberKilled => "backplane subscriber killed",
            Fault::ClusterFailover => "cluster: manual failover",
            Fault::ClusterPrimaryHung => "cluster: primary hung",
        }
    }

    /// The scenario runs on a cluster ([`Env::cluster`]).
    pub fn on_cluster(self) -> bool {
        matches!(self, Fault::ClusterFailover | Fault::ClusterPrimaryHung)
    }

    /// The client talks to Redis through the fault proxy.
    pub fn through_proxy(self) -> bool {
        matches!(self, Fault::RedisSlow | Fault::ConnectionResets)
    }

    pub fn expect(self) -> Expect {
        Expect {
            // Resets are absorbed by per-operation retries as often as not.
            // A manual failover is over in tens of milliseconds. A hung primary opens its own
            // shard's breaker (its keys then fail fast to the source) while the other shards
            // keep serving; the shard closes when its promoted replica answers.
            breaker_opens: !matches!(
                self,
                Fault::ConnectionResets
                    | Fault::PostgresStopped
                    | Fault::SubscriberKilled
                    | Fault::ClusterFailover
            ),
            source_down: matches!(self, Fault::PostgresStopped | Fault::BothDown),
        }
    }

    fn proxy(env: &Env) -> &FaultProxy {
        env.proxy.as_ref().expect("a proxy scenario has a proxy")
    }

    pub fn inject(self, env: &mut Env) {
        match self {
            Fault::RedisKilled => env.redis.kill(),
            Fault::RedisHung => env.redis.pause(),
            Fault::RedisSlow => Self::proxy(env).set_latency(Duration::from_millis(20)),
            Fault::ConnectionResets => Self::proxy(env).reset_all(),
            Fault::PostgresStopped => env.pg.stop(),
            Fault::BothDown => {
                env.redis.kill();
                env.pg.stop();
            }
            Fault::SubscriberKilled => kill_subscribers(env),
            Fault::ClusterFailover => {
                let cluster = Self::cluster(env);
                let (_, replica) = cluster.primary_and_replica();
                cluster.failover(replica);
            }
            Fault::ClusterPrimaryHung => {
                let cluster = Self::cluster(env);
                let (primary, _) = cluster.primary_and_replica();
                cluster.nodes[primary].pause();
                env.paused = Some(primary);
            }
        }
    }

    fn cluster(env: &Env) -> &super::cluster::RedisCluster {
        env.cluster
            .as_ref()
            .expect("a cluster scenario has a cluster")
    }

    /// Called every 50 ms while the fault is on.
    pub fn during(self, env: &Env) {
        match self {
            Fault::ConnectionResets => Self::proxy(env).reset_all(),
            Fault::SubscriberKilled => kill_subscribers(env),
            _ => {}
        }
    }

    pub fn heal(self, env: &mut Env) {
        match self {
            Fault::RedisKilled => env.redis.restart(),
            Fault::RedisHung => env.redis.resume(),
            Fault::RedisSlow => Self::proxy(env).set_latency(Duration::ZERO),
            Fault::ConnectionResets => {}
            Fault::PostgresStopped => env.pg.start_again(),
            Fault::BothDown => {
                env.pg.start_again();
                env.redis.restart();
            }
            Fault::SubscriberKilled | Fault::ClusterFailover => {}
            Fault::ClusterPrimaryHung => {
                if let (Some(cluster), Some(i)) = (&env.cluster, env.paused.take()) {
                    cluster.nodes[i].resume();
                }
            }
        }
    }
}

/// `CLIENT KILL TYPE pubsub` on the scenario's Redis (directly, not through a proxy).
fn kill_subscribers(env: &Env) {
    let client = redis::Client::open(env.redis.url()).expect("redis url");
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("a connection to kill the subscribers");
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut con)
        .expect("CLIENT KILL TYPE pubsub");
}

/// The servers a scenario faults.
pub struct Env {
    pub redis: RedisServer,
    pub pg: PgServer,
    pub proxy: Option<FaultProxy>,
    /// A 3+3 cluster, for the cluster scenarios (which use it instead of `redis`).
    pub cluster: Option<super::cluster::RedisCluster>,
    /// The cluster node a scenario SIGSTOPped, to resume when it heals.
    pub paused: Option<usize>,
}

impl Env {
    /// Starts the servers (and the proxy in front of Redis).
    pub fn start(through_proxy: bool) -> Env {
        let redis = RedisServer::start();
        let pg = PgServer::start();
        let proxy = through_proxy.then(|| FaultProxy::start(redis.addr()));
        Env {
            redis,
            pg,
            proxy,
            cluster: None,
            paused: None,
        }
    }

    /// The servers `fault` needs: [`start`](Self::start), and a cluster for a cluster fault.
    pub fn start_for(fault: Fault) -> Env {
        let mut env = Env::start(fault.through_proxy());
        if fault.on_cluster() {
            env.cluster = Some(super::cluster::RedisCluster::start());
        }
        env
    }

    /// How `mdcache` is told where Redis is: `--redis-cluster NODES` on a cluster, else
    /// `--redis URL` (the proxy's, if there is one).
    pub fn redis_args(&self) -> [String; 2] {
        match &self.cluster {
            Some(c) => ["--redis-cluster".to_owned(), c.nodes_arg()],
            None => ["--redis".to_owned(), self.redis_url()],
        }
    }

    /// The Redis URL clients use: the proxy's, if there is one.
    pub fn redis_url(&self) -> String {
        self.proxy
            .as_ref()
            .map_or_else(|| self.redis.url(), |p| p.url_for_redis())
    }
}

/// A running `mdcache simulate` child: its stdout lines as they come, and both streams whole
/// once it has exited. Both fault runs (`tests/faults_simulate.rs`) and the soak use it.
pub struct SimChild {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

impl SimChild {
    /// Spawns `cmd` with piped stdout and stderr, read on two threads.
    pub fn spawn(mut cmd: std::process::Command) -> SimChild {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mdcache simulate");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let out = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        SimChild {
            child,
            lines,
            out: Some(out),
            err: Some(err),
        }
    }

    /// Waits for a stdout line starting with `prefix` (no line for `within`: panics, after
    /// killing the child, with what it printed) and returns when it came.
    pub fn wait_for_line(
        &mut self,
        prefix: &str,
        within: Duration,
        what: &str,
    ) -> std::time::Instant {
        loop {
            match self.lines.recv_timeout(within) {
                Ok(line) if line.starts_with(prefix) => return std::time::Instant::now(),
                Ok(_) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let (out, err) = self.streams();
                    panic!(
                        "{what}: simulate never printed {prefix:?}\nstdout:\n{out}\nstderr:\n{err}"
                    );
                }
            }
        }
    }

    /// Waits for the child to exit (for at most `within`: then kills it and panics), and
    /// returns its status, stdout and stderr.
    pub fn finish(
        mut self,
        within: Duration,
        what: &str,
    ) -> (std::process::ExitStatus, String, String) {
        let give_up = std::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for simulate") {
                break status;
            }
            if std::time::Instant::now() > give_up {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{what}: simulate did not finish");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (out, err) = self.streams();
        (status, out, err)
    }

    /// Both streams whole (empty once taken); the child must have exited.
    fn streams(&mut self) -> (String, String) {
        let whole = |h: Option<std::thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        (whole(self.out.take()), whole(self.err.take()))
    }
}
