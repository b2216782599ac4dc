//! `--redis URL` and `--redis-cluster NODES`: where the command line says Redis is, applied over the environment's configuration, and how a configuration's Redis is named in messages.

use mdcache::CacheConfig;

use crate::output::{Failure, redact};

/// The Redis flags as given (clap keeps them exclusive).
#[derive(Debug, Clone, Default)]
pub(crate) struct RedisFlags {
    /// `--redis URL`.
    pub(crate) url: Option<String>,
    /// `--redis-cluster NODES`: comma-separated seed nodes.
    pub(crate) cluster: Option<String>,
}

impl RedisFlags {
    /// True when either flag was given.
    pub(crate) fn given(&self) -> bool {
        self.url.is_some() || self.cluster.is_some()
    }

    /// Applies the flag over `config`: a server URL replaces any cluster from the
    /// environment, and a cluster any URL (`CACHE_REDIS_URL`, `CACHE_ADDRESS`).
    pub(crate) fn apply(&self, config: &mut CacheConfig) {
        if let Some(url) = &self.url {
            config.redis_url = Some(url.clone());
            config.redis_cluster.clear();
        }
        if let Some(nodes) = &self.cluster {
            config.redis_url = None;
            config.redis_cluster = nodes.split(',').map(|n| n.trim().to_owned()).collect();
        }
    }

    /// A failure for `e`, blaming the flag rather than the variable it stands in for when
    /// the flag caused it.
    pub(crate) fn blame(&self, e: mdcache::Error) -> Failure {
        match e {
            mdcache::Error::Config { name, reason, .. }
                if self.url.is_some() && name == "CACHE_REDIS_URL" =>
            {
                Failure::invalid(format!("invalid --redis URL: {reason}"))
            }
            mdcache::Error::Config { name, reason, .. }
                if self.cluster.is_some() && name == "CACHE_REDIS_CLUSTER" =>
            {
                Failure::invalid(format!("invalid --redis-cluster NODES: {reason}"))
            }
            other => other.into(),
        }
    }

    /// The first address the flags name (the first seed of a cluster), as a URL.
    pub(crate) fn first_url(&self) -> Option<String> {
        self.url.clone().or_else(|| {
            let first = self.cluster.as_deref()?.split(',').next()?.trim();
            Some(if first.contains("://") {
                first.to_owned()
            } else {
                format!("redis://{first}")
            })
        })
    }
}

/// Where `config`'s Redis is, for messages and reports: its URL with the password hidden, or
/// `cluster <seeds>`; `None` without Redis.
pub(crate) fn place(config: &CacheConfig) -> Option<String> {
    match (&config.redis_url, config.redis_cluster.as_slice()) {
        (Some(url), _) => Some(redact(url)),
        (None, []) => None,
        (None, seeds) => Some(format!(
            "cluster {}",
            seeds
                .iter()
                .map(|s| redact(s))
                .collect::<Vec<_>>()
                .join(",")
        )),
    }
}
