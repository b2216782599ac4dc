//! `PostgresSource`: the source of record on PostgreSQL (tokio-postgres, bb8 pool), one table per kind with a commit-ordered version.
//!
//! Schema (created idempotently by [`PostgresSource::connect`] for the built-in kinds, and by
//! [`PostgresSource::ensure_kind`] for user kinds):
//!
//! ```sql
//! CREATE SEQUENCE IF NOT EXISTS mdc_version_seq;
//! CREATE TABLE IF NOT EXISTS "mdc_price" (        -- "mdc_" + kind, ':' → '_' (mdc_book_bid)
//!     id         text PRIMARY KEY,
//!     value      jsonb NOT NULL,
//!     version    bigint NOT NULL,
//!     updated_at timestamptz NOT NULL DEFAULT now()
//! );
//! ```
//!
//! A write is one statement: `INSERT … ON CONFLICT (id) DO UPDATE SET version =
//! GREATEST(t.version + 1, nextval)`. The row lock orders concurrent writers of one key, and
//! the `t.version + 1` term is evaluated on the row as the previous writer committed it, so
//! versions increase in commit order; the sequence term keeps a key that was deleted and written
//! again above every version it had before.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::Config;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{Json, Type};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Load, Loaded, Source, Store};
use crate::key::{Key, KeySchema, validate_kind};
use crate::schema::Kind;

/// Serializes schema creation across processes starting at once (`CREATE … IF NOT EXISTS`
/// alone can still race on the catalog).
const SCHEMA_LOCK: i64 = 0x006d_6463_6163_6865; // "mdcache"

/// Why a [`PostgresSource`] operation failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PostgresSourceError {
    /// The database refused the statement or the connection failed.
    #[error("postgres: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had in time (the database is down or overloaded).
    #[error("postgres: no connection within {0:?}")]
    NoConnection(Duration),
    /// Every connection was busy or dead, and opening a new one failed (the database is down,
    /// refusing connections or unreachable): the checkout fails at once with the reason.
    #[error("postgres: cannot connect: {0}")]
    Unreachable(String),
    /// A stored value did not match the kind's type.
    #[error("postgres: stored value for {key} does not decode: {reason}")]
    Decode {
        /// The key.
        key: String,
        /// The decoder's message.
        reason: String,
    },
    /// The value could not be turned into JSON.
    #[error("postgres: value does not encode: {0}")]
    Encode(String),
    /// The URL or kind name was invalid.
    #[error("postgres: {0}")]
    Config(String),
}

/// tokio-postgres prints a server refusal as just "db error", and a failed connect as just
/// "error connecting to server": say what the server said, or why the connect failed.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.constraint() {
            Some(c) => format!("{} ({}, constraint {c})", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

impl PostgresSourceError {
    /// True when the database could not be reached (as opposed to refusing a statement).
    pub fn is_unavailable(&self) -> bool {
        match self {
            PostgresSourceError::NoConnection(_) | PostgresSourceError::Unreachable(_) => true,
            PostgresSourceError::Db(e) => e.is_closed() || e.code().is_none(),
            _ => false,
        }
    }

    /// True when the database refused a write for breaking a constraint (SQLSTATE class 23).
    pub fn is_constraint_violation(&self) -> bool {
        match self {
            PostgresSourceError::Db(e) => e.code().is_some_and(|c| c.code().starts_with("23")),
            _ => false,
        }
    }
}

/// Options for [`PostgresSource::connect_with`].
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections in the pool.
    pub pool_size: u32,
    /// How long to wait for a connection (including opening one).
    pub connect_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 8,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// The source of record on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresSource {
    pool: bb8::Pool<PostgresConnectionManager<MakeRustlsConnect>>,
    connect_timeout: Duration,
    failures: ConnectFailures,
}

/// Failed attempts to open a connection, as bb8 reports them (its error sink). bb8's checkout
/// does not return a failed connect: it waits, retrying, for its whole connection timeout
/// even with `retry_connection(false)`. A checkout that has no idle connection therefore also
/// watches this, and fails as soon as an attempt made after it started fails.
#[derive(Debug, Clone, Default)]
struct ConnectFailures(Arc<FailuresInner>);

#[derive(Debug, Default)]
struct FailuresInner {
    count: AtomicU64,
    last: Mutex<String>,
    notify: tokio::sync::Notify,
}

impl ConnectFailures {
    fn count(&self) -> u64 {
        self.0.count.load(Ordering::Acquire)
    }

    /// Resolves, with the reason, once a connect attempt fails after `seen` failures.
    async fn after(&self, seen: u64) -> String {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() > seen {
                return self
                    .0
                    .last
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
            }
            notified.await;
        }
    }
}

impl bb8::ErrorSink<tokio_postgres::Error> for ConnectFailures {
    fn sink(&self, error: tokio_postgres::Error) {
        tracing::debug!(%error, "postgres connection attempt failed");
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = describe(&error);
        self.0.count.fetch_add(1, Ordering::AcqRel);
        self.0.notify.notify_waiters();
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}

fn table(kind: &str) -> String {
    format!("\"mdc_{}\"", kind.replace(':', "_"))
}

impl PostgresSource {
    /// Connects to `url` (e.g. `postgres://user@host:5432/db`) and creates the schema for the
    /// built-in kinds if it is missing. Errors and `Debug` output never show the URL's password.
    ///
    /// **TLS**: `sslmode=require` (or `verify-ca`, `verify-full`) connects over TLS (rustls)
    /// and verifies the server's certificate and name against `sslrootcert=PATH` (a PEM
    /// file) or the system's roots: `postgres://u@db/x?sslmode=verify-full&sslrootcert=/etc/ca.pem`.
    /// Without it (or with `disable`, `allow`, `prefer`) the connection is plain TCP: mdcache
    /// never negotiates a TLS it does not verify.
    pub async fn connect(url: &str) -> Result<Self, PostgresSourceError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// [`connect`](Self::connect) with options.
    pub async fn connect_with(
        url: &str,
        opts: PostgresOptions,
    ) -> Result<Self, PostgresSourceError> {
        // TLS only for `sslmode=require` (or `verify-*`), verified: see `pg_tls`.
        let wanted = super::pg_tls::wanted(url);
        // The parser's message may quote the part of the URL it choked on: never a password.
        let mut config = Config::from_str(&wanted.url).map_err(|e| {
            let reason = crate::config::redact_in(&e.to_string(), url);
            PostgresSourceError::Config(format!("DATABASE_URL: {reason}"))
        })?;
        config.connect_timeout(opts.connect_timeout);
        config.ssl_mode(if wanted.tls {
            SslMode::Require
        } else {
            SslMode::Disable
        });
        let tls = super::pg_tls::connector(&wanted)
            .map_err(|e| PostgresSourceError::Config(format!("DATABASE_URL: {e}")))?;
        let manager = PostgresConnectionManager::new(config, tls);
        let failures = ConnectFailures::default();
        let pool = bb8::Pool::builder()
            .max_size(opts.pool_size.max(1))
            // has_broken (is_closed) already drops dead connections; a checkout test would
            // add a round trip to every load.
            .test_on_check_out(false)
            .connection_timeout(opts.connect_timeout)
            // A failed connect is not retried in the background until connect_timeout; with
            // the error sink below, a checkout waiting for it fails at once: a database that
            // is down should cost a caller milliseconds.
            .retry_connection(false)
            .error_sink(Box::new(failures.clone()))
            .build_unchecked(manager);
        let source = PostgresSource {
            pool,
            connect_timeout: opts.connect_timeout,
            failures,
        };
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        source.create_tables(&kinds).await?;
        Ok(source)
    }

    /// Creates the table of a user-defined kind if it is missing.
    pub async fn ensure_kind<S: KeySchema>(&self) -> Result<(), PostgresSourceError> {
        validate_kind(S::KIND).map_err(|e| PostgresSourceError::Config(e.to_string()))?;
        self.create_tables(&[S::KIND]).await
    }

    /// The identifiers of kind `S` the database holds, at most `limit`, in id order: what
    /// `mdcache warm` preloads when it is given no list.
    pub async fn ids<S: KeySchema>(&self, limit: u64) -> Result<Vec<String>, PostgresSourceError> {
        let sql = format!("SELECT id FROM {} ORDER BY id LIMIT $1", table(S::KIND));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.conn().await?;
        let rows = conn.query_typed(&sql, &[(&limit, Type::INT8)]).await?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0).map_err(PostgresSourceError::from))
            .collect()
    }

    async fn create_tables(&self, kinds: &[&str]) -> Result<(), PostgresSourceError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        tx.batch_execute("CREATE SEQUENCE IF NOT EXISTS mdc_version_seq")
            .await?;
        for kind in kinds {
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                   id text PRIMARY KEY, \
                   value jsonb NOT NULL, \
                   version bigint NOT NULL, \
                   updated_at timestamptz NOT NULL DEFAULT now())",
                table(kind)
            ))
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn conn(
        &self,
    ) -> Result<
        bb8::PooledConnection<'_, PostgresConnectionManager<MakeRustlsConnect>>,
        PostgresSourceError,
    > {
        let seen = self.failures.count();
        tokio::select! {
            // An idle connection first, even if connects are failing meanwhile.
            biased;
            got = self.pool.get() => got.map_err(|e| match e {
                bb8::RunError::User(e) => PostgresSourceError::Db(e),
                bb8::RunError::TimedOut => PostgresSourceError::NoConnection(self.connect_timeout),
            }),
            why = self.failures.after(seen) => Err(PostgresSourceError::Unreachable(why)),
        }
    }

    fn decode<S: KeySchema>(
        key: &str,
        value: serde_json::Value,
        version: i64,
    ) -> Result<Loaded<S::Value>, PostgresSourceError> {
        let value = serde_json::from_value(value).map_err(|e| PostgresSourceError::Decode {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Loaded::new(value, u64::try_from(version).unwrap_or(0)))
    }
}

impl Source for PostgresSource {
    type Error = PostgresSourceError;
}

impl<S: KeySchema> Load<S> for PostgresSource {
    async fn load(&self, key: &Key<S>) -> Result<Option<Loaded<S::Value>>, PostgresSourceError> {
        let sql = format!(
            "SELECT value, version FROM {} WHERE id = $1",
            table(S::KIND)
        );
        let conn = self.conn().await?;
        // query_typed: parameter types given, so no separate prepare round trip.
        let row = conn
            .query_typed_opt(&sql, &[(&key.id(), Type::TEXT)])
            .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let Json(value): Json<serde_json::Value> = row.try_get(0)?;
                let version: i64 = row.try_get(1)?;
                Self::decode::<S>(key.as_str(), value, version).map(Some)
            }
        }
    }

    async fn load_many(
        &self,
        keys: &[Key<S>],
    ) -> Result<Vec<Option<Loaded<S::Value>>>, PostgresSourceError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, value, version FROM {} WHERE id = ANY($1)",
            table(S::KIND)
        );
        let ids: Vec<&str> = keys.iter().map(|k| k.id()).collect();
        let conn = self.conn().await?;
        let rows = conn.query_typed(&sql, &[(&ids, Type::TEXT_ARRAY)]).await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            let Json(value): Json<serde_json::Value> = row.try_get(1)?;
            let version: i64 = row.try_get(2)?;
            found.insert(id, (value, version));
        }
        keys.iter()
            .map(|k| match found.remove(k.id()) {
                None => Ok(None),
                Some((value, version)) => Self::decode::<S>(k.as_str(), value, version).map(Some),
            })
            .collect()
    }
}

impl<S: KeySchema> Store<S> for PostgresSource {
    async fn write(&self, key: &Key<S>, value: &S::Value) -> Result<u64, PostgresSourceError> {
        let json =
            serde_json::to_value(value).map_err(|e| PostgresSourceError::Encode(e.to_string()))?;
        let t = table(S::KIND);
        let sql = format!(
            "INSERT INTO {t} AS t (id, value, version) \
             VALUES ($1, $2, nextval('mdc_version_seq')) \
             ON CONFLICT (id) DO UPDATE SET value = excluded.value, \
               version = GREATEST(t.version + 1, excluded.version), updated_at = now() \
             RETURNING version"
        );
        let conn = self.conn().await?;
        let row = conn
            .query_typed_one(
                &sql,
                &[(&key.id(), Type::TEXT), (&Json(&json), Type::JSONB)],
            )
            .await?;
        let version: i64 = row.try_get(0)?;
        Ok(u64::try_from(version).unwrap_or(0))
    }
}
