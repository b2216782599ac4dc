//! A throwaway Redis Cluster for the tests: 3 primaries and 3 replicas on free ports, created with `redis-cli --cluster create`, stopped on drop.

use std::process::Command;
use std::time::{Duration, Instant};

use super::RedisServer;

/// How long the cluster gets to agree that every slot is served (it takes about 2 s here).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Six `redis-server` processes in cluster mode: 3 primaries, each with one replica. Every
/// node is a [`RedisServer`] (killed on drop, its log printed if a test panics).
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the six nodes, joins them (`redis-cli --cluster create … --cluster-replicas
    /// 1`), and waits until every node reports `cluster_state:ok` and knows 3 primaries and 3
    /// replicas. Panics (with the command's output) if it cannot.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                    "--cluster-node-timeout".into(),
                    "1000".into(),
                    "--cluster-require-full-coverage".into(),
                    "no".into(),
                    "--repl-diskless-sync-delay".into(),
                    "0".into(),
                ])
            })
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_converged();
        cluster
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,…`: every node, as `CACHE_REDIS_CLUSTER` takes them.
    pub fn nodes_arg(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `redis://127.0.0.1:P/` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes that are primaries now.
    pub fn primaries(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| role(n).as_deref() == Some("master"))
            .collect()
    }

    /// A primary (the first node that is one now) and its replica, as indices into `nodes`.
    /// Panics if the primary reports no replica it knows among the nodes.
    pub fn primary_and_replica(&self) -> (usize, usize) {
        let primary = (0..self.nodes.len())
            .find(|&i| role(&self.nodes[i]).as_deref() == Some("master"))
            .expect("a primary");
        let mut con = self.nodes[primary]
            .client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the primary");
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut con)
            .expect("INFO replication");
        // slave0:ip=127.0.0.1,port=40105,state=online,offset=…,lag=0
        let port: u16 = info
            .lines()
            .find(|l| l.starts_with("slave0:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("port=")))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the primary names no replica: {info}"));
        let replica = (0..self.nodes.len())
            .find(|&i| self.nodes[i].port() == port)
            .expect("the replica is one of the nodes");
        (primary, replica)
    }

    /// `CLUSTER FAILOVER` on replica `i`: it takes over its primary's slots (the primary
    /// agreeing), which here takes tens of milliseconds.
    pub fn failover(&self, i: usize) {
        let mut con = self.nodes[i]
            .client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the replica");
        let () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut con)
            .expect("CLUSTER FAILOVER");
    }

    /// Polls until every node answers `cluster_state:ok` with 3 primaries and 3 replicas.
    pub fn wait_until_converged(&self) {
        let give_up = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let ok = self.nodes.iter().all(|n| {
                cluster_info(n)
                    .is_some_and(|i| i.contains("cluster_state:ok") && i.contains("cluster_size:3"))
            });
            let roles: Vec<Option<String>> = self.nodes.iter().map(role).collect();
            let primaries = roles
                .iter()
                .filter(|r| r.as_deref() == Some("master"))
                .count();
            let replicas = roles
                .iter()
                .filter(|r| r.as_deref() == Some("slave"))
                .count();
            if ok && primaries == 3 && replicas == 3 {
                return;
            }
            assert!(
                Instant::now() < give_up,
                "the cluster did not converge within {CONVERGE_TIMEOUT:?}: roles {roles:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A node's `CLUSTER INFO`, if it answers.
fn cluster_info(node: &RedisServer) -> Option<String> {
    let mut con = node
        .client()
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    redis::cmd("CLUSTER").arg("INFO").query(&mut con).ok()
}

/// A node's replication role (`master` or `slave`), if it answers.
fn role(node: &RedisServer) -> Option<String> {
    let mut con = node
        .client()
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    let info: String = redis::cmd("INFO").arg("replication").query(&mut con).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("role:"))
        .map(|r| r.trim().to_owned())
}
