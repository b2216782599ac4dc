//! What a test of the data path runs against: one [`RedisServer`] or a [`RedisCluster`], with a raw connection and a key count that work on either, so the same test body checks both.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::RedisServer;
use super::cluster::RedisCluster;

/// One server or a 3+3 cluster, stopped on drop.
#[derive(Debug)]
pub enum Target {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl Target {
    /// A fresh server.
    pub fn server() -> Target {
        Target::Server(RedisServer::start())
    }

    /// A fresh, converged cluster.
    pub fn cluster() -> Target {
        Target::Cluster(RedisCluster::start())
    }

    /// `server` or `cluster`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Server(_) => "server",
            Target::Cluster(_) => "cluster",
        }
    }

    /// Keys stored: `DBSIZE`, summed over the primaries of a cluster.
    pub fn dbsize(&self) -> i64 {
        match self {
            Target::Server(s) => s.dbsize(),
            Target::Cluster(c) => c.primaries().iter().map(|n| n.dbsize()).sum(),
        }
    }
}

/// What a cache and a test's own commands need to reach Redis: a [`RedisServer`] or a
/// [`Target`], so helpers serve tests of either.
pub trait Reach {
    /// The server's URL (`CACHE_REDIS_URL`), or `None` on a cluster.
    fn server_url(&self) -> Option<String>;
    /// The cluster's nodes as seeds (`CACHE_REDIS_CLUSTER`), or none on a server.
    fn seeds(&self) -> Vec<String>;
    /// A connection for the test's own commands: routed by key on a cluster.
    fn raw(&self) -> impl Future<Output = RawConn> + Send;
}

impl Reach for RedisServer {
    fn server_url(&self) -> Option<String> {
        Some(self.url())
    }

    fn seeds(&self) -> Vec<String> {
        Vec::new()
    }

    async fn raw(&self) -> RawConn {
        RawConn::Server(self.multiplexed().await)
    }
}

impl Reach for Target {
    fn server_url(&self) -> Option<String> {
        match self {
            Target::Server(s) => Some(s.url()),
            Target::Cluster(_) => None,
        }
    }

    fn seeds(&self) -> Vec<String> {
        match self {
            Target::Server(_) => Vec::new(),
            Target::Cluster(c) => c.urls(),
        }
    }

    async fn raw(&self) -> RawConn {
        match self {
            Target::Server(s) => RawConn::Server(s.multiplexed().await),
            Target::Cluster(c) => {
                let client = redis::cluster::ClusterClientBuilder::new(c.urls())
                    .retries(3)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(5))
                    .build()
                    .expect("cluster client");
                let conn =
                    tokio::time::timeout(Duration::from_secs(10), client.get_async_connection())
                        .await
                        .expect("cluster connection within 10 s")
                        .expect("cluster connection");
                RawConn::Cluster(conn)
            }
        }
    }
}

/// A raw connection to a [`Target`].
#[derive(Clone)]
pub enum RawConn {
    Server(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for RawConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RawConn::Server(c) => c.req_packed_command(cmd),
            RawConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RawConn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            RawConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Runs each named `async fn NAME(target: Target)` of the calling file twice: as
/// `on_server::NAME` against a fresh server and as `on_cluster::NAME` against a fresh cluster.
#[allow(unused_macros)]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_server {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::target::Target::server()).await
                }
            )*
        }
        mod on_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::target::Target::cluster()).await
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both;
