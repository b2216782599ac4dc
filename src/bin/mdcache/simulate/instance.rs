//! The instances of a run — one cache for everything (`single`), a feed handler's and N engines' (`--engines N`), or this process's part of a multi-process run (`--role`) — each a `Cache` of its own, and what each did.
//!
//! An instance stands for one process of a trading deployment: its own L1, Redis connections,
//! breaker, conflating writer and counters; instances share only Redis and the source of
//! record. The feed handler writes the market data and the order flow; an engine reads.

use mdcache::{BreakerSnapshot, Cache, FallbackSnapshot, ShardBreaker, StatsSnapshot};

use super::args::RoleArg;

/// What an instance does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The only instance: feed, orders and readers on one cache (no `--engines`, no `--role`).
    Single,
    /// The feed handler: market-data feed and order flow.
    Feed,
    /// An engine: readers (cache-aside).
    Engine,
}

impl Role {
    /// `single`, `feed` or `engine`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Feed => "feed",
            Role::Engine => "engine",
        }
    }

    /// True when it runs the feed and the order flow.
    pub(crate) fn writes(self) -> bool {
        matches!(self, Role::Single | Role::Feed)
    }

    /// True when it runs readers.
    pub(crate) fn reads(self) -> bool {
        matches!(self, Role::Single | Role::Engine)
    }
}

/// The roles and names of a run's instances, the writing one (if any) first: `single`; or
/// `feed`, `engine-1` … `engine-N`; or the one role of `--role`.
pub(crate) fn layout(engines: u32, role: Option<RoleArg>) -> Vec<(Role, String)> {
    match (role, engines) {
        (Some(RoleArg::Feed), _) => vec![(Role::Feed, "feed".to_owned())],
        (Some(RoleArg::Engine), _) => vec![(Role::Engine, "engine".to_owned())],
        (None, 0) => vec![(Role::Single, "single".to_owned())],
        (None, n) => std::iter::once((Role::Feed, "feed".to_owned()))
            .chain((1..=n).map(|i| (Role::Engine, format!("engine-{i}"))))
            .collect(),
    }
}

/// One instance: its cache, role and name.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    /// `single`, `feed`, `engine-1`, …
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) cache: Cache,
}

impl Instance {
    /// The name in the live line: `feed`, `e1`, `e2`, … (the single instance has none).
    pub(crate) fn label(&self) -> String {
        match self.name.strip_prefix("engine-") {
            Some(n) => format!("e{n}"),
            None => self.name.clone(),
        }
    }

    /// What it did, at the end: its counters now, and the reads and writes its tasks made.
    pub(crate) fn end(&self, readers: usize, reads: u64, writes: u64) -> InstanceEnd {
        InstanceEnd {
            name: self.name.clone(),
            role: self.role,
            readers,
            reads,
            writes,
            stats: self.cache.stats(),
            breaker: self.cache.breaker(),
            shard_breakers: self.cache.shard_breakers(),
            fallbacks: self.cache.fallback_stats(),
        }
    }
}

/// An instance's figures at the end of the run (what the report is built from).
#[derive(Debug, Clone)]
pub(crate) struct InstanceEnd {
    pub(crate) name: String,
    pub(crate) role: Role,
    /// Reader tasks on it.
    pub(crate) readers: usize,
    /// Read calls its readers made.
    pub(crate) reads: u64,
    /// Write calls made on it (feed and order flow).
    pub(crate) writes: u64,
    /// `Cache::stats()`.
    pub(crate) stats: StatsSnapshot,
    /// `Cache::breaker()` (`None` without Redis).
    pub(crate) breaker: Option<BreakerSnapshot>,
    /// `Cache::shard_breakers()` (empty on one server).
    pub(crate) shard_breakers: Vec<ShardBreaker>,
    /// `Cache::fallback_stats()`.
    pub(crate) fallbacks: FallbackSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_put_the_writer_first() {
        let names = |l: Vec<(Role, String)>| -> Vec<(&'static str, String)> {
            l.into_iter().map(|(r, n)| (r.name(), n)).collect()
        };
        assert_eq!(names(layout(0, None)), [("single", "single".to_owned())]);
        assert_eq!(
            names(layout(2, None)),
            [
                ("feed", "feed".to_owned()),
                ("engine", "engine-1".to_owned()),
                ("engine", "engine-2".to_owned())
            ]
        );
        assert_eq!(
            names(layout(0, Some(RoleArg::Engine))),
            [("engine", "engine".to_owned())]
        );
        assert!(Role::Single.writes() && Role::Single.reads());
        assert!(Role::Feed.writes() && !Role::Feed.reads());
        assert!(!Role::Engine.writes() && Role::Engine.reads());
    }
}
