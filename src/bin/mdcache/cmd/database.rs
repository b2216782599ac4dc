//! The PostgreSQL source of the key commands: connected on first use under the command's deadline, the patterns over it, and its errors as failures.

use std::sync::Arc;
use std::time::Duration;

use mdcache::{
    Cache, CacheAside, Key, KeySchema, Load, LoadError, Loaded, PostgresSource,
    PostgresSourceError, Source, Store, WriteThrough,
};

use crate::output::{Failure, redact};

/// The configured database: not connected yet (see [`LazyPostgres`]).
#[derive(Debug)]
pub(crate) struct Database {
    source: Arc<LazyPostgres>,
    /// Deadline of one database operation (the pattern's source timeout): connecting, then
    /// one statement, each within `--timeout-ms`.
    op_timeout: Duration,
}

impl Database {
    /// The database at `url` (already checked to parse), each step within `timeout`.
    pub(crate) fn new(url: String, timeout: Duration) -> Self {
        Database {
            source: Arc::new(LazyPostgres::new(url, timeout)),
            // Connecting (within `timeout`), then the statement (likewise).
            op_timeout: timeout.saturating_mul(2),
        }
    }

    /// Write-through over `cache`: the database first, then the cache.
    pub(crate) fn writer(&self, cache: &Cache) -> WriteThrough<LazyPostgres> {
        WriteThrough::new(cache.clone(), Arc::clone(&self.source))
            .with_source_timeout(self.op_timeout)
    }

    /// The identifiers of `S` the database holds, at most `limit`, in id order.
    pub(crate) async fn ids<S: KeySchema>(&self, limit: u64) -> Result<Vec<String>, Failure> {
        let source = self
            .source
            .get()
            .await
            .map_err(|e| source_failure(&e, "the database refused the connection"))?;
        tokio::time::timeout(self.op_timeout, source.ids::<S>(limit))
            .await
            .map_err(|_| {
                Failure::unavailable(format!(
                    "the database did not answer within {:?}",
                    self.op_timeout
                ))
            })?
            .map_err(|e| source_failure(&e, "the database could not list ids"))
    }

    /// Cache-aside over `cache`: what the cache misses is loaded from the database.
    pub(crate) fn aside(&self, cache: Cache) -> Result<CacheAside<LazyPostgres>, Failure> {
        let aside = CacheAside::builder(cache, Arc::clone(&self.source))
            .source_timeout(self.op_timeout)
            .build()?;
        Ok(aside)
    }
}

/// The database, connected on first use: after `WriteThrough` has checked the value (so
/// refused input never opens a connection), and under the pattern's source deadline (so a
/// refused connection is a failed write, with the invalidation that follows, exactly as for a
/// long-running process whose database went away).
pub(crate) struct LazyPostgres {
    /// May hold a password: `Debug` shows it redacted.
    url: String,
    /// Budget for connecting and creating the schema; past it, `NoConnection`.
    connect_timeout: Duration,
    source: tokio::sync::OnceCell<PostgresSource>,
}

impl std::fmt::Debug for LazyPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPostgres")
            .field("url", &redact(&self.url))
            .field("connect_timeout", &self.connect_timeout)
            .field("connected", &self.source.initialized())
            .finish()
    }
}

impl LazyPostgres {
    fn new(url: String, connect_timeout: Duration) -> Self {
        LazyPostgres {
            url,
            connect_timeout,
            source: tokio::sync::OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<&PostgresSource, PostgresSourceError> {
        self.source
            .get_or_try_init(|| async {
                // `connect` waits for a connection up to its own 2 s default, then runs the
                // schema statements with no deadline at all: bound the whole of it.
                tokio::time::timeout(self.connect_timeout, PostgresSource::connect(&self.url))
                    .await
                    .unwrap_or(Err(PostgresSourceError::NoConnection(self.connect_timeout)))
            })
            .await
    }
}

impl Source for LazyPostgres {
    type Error = PostgresSourceError;
}

impl<S: KeySchema> Load<S> for LazyPostgres {
    async fn load(&self, key: &Key<S>) -> Result<Option<Loaded<S::Value>>, PostgresSourceError> {
        self.get().await?.load(key).await
    }

    /// One query (the default would load key by key).
    async fn load_many(
        &self,
        keys: &[Key<S>],
    ) -> Result<Vec<Option<Loaded<S::Value>>>, PostgresSourceError> {
        self.get().await?.load_many(keys).await
    }
}

impl<S: KeySchema> Store<S> for LazyPostgres {
    async fn write(&self, key: &Key<S>, value: &S::Value) -> Result<u64, PostgresSourceError> {
        self.get().await?.write(key, value).await
    }
}

/// A database error as a failure: a bad URL is invalid configuration (exit 2); everything else
/// is the backend failing or saying no (exit 3), worded by which.
pub(crate) fn source_failure(e: &PostgresSourceError, refused: &str) -> Failure {
    let text = with_causes(e);
    match e {
        PostgresSourceError::Config(_) => Failure::invalid(format!("invalid database URL: {text}")),
        _ if e.is_unavailable() => Failure::unavailable(format!("database unavailable: {text}")),
        _ => Failure::unavailable(format!("{refused}: {text}")),
    }
}

/// A failed cache-aside read as a failure.
pub(crate) fn load_failure<S: KeySchema>(
    key: &Key<S>,
    e: LoadError<PostgresSourceError>,
) -> Failure {
    match e {
        LoadError::Source(e) => source_failure(&e, &format!("the database could not load {key}")),
        LoadError::SourceTimeout(d) => {
            Failure::unavailable(format!("the database did not answer within {d:?}"))
        }
        LoadError::Cache(e) => e.into(),
        other => Failure::unavailable(other.to_string()),
    }
}

/// `e` and what caused it: tokio-postgres shows a server's refusal only as "db error", with
/// the server's message (the violated constraint, …) in its `source()`.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}
