//! `mdcache warm [--kinds K,…] [--symbols FILE] [--limit N]`: preloads keys from the database into the cache (`CacheAside::warm`: one query per 1,000 ids, the versioned fill, never over a newer version), kind by kind, and reports what it did.

use std::path::PathBuf;

use mdcache::{
    BookAsk, BookBid, CacheAside, Kind, LoadError, Order, Position, PostgresSourceError, Price,
    Risk, StrategyState, WarmProgress, WarmReport,
};
use serde::Serialize;

use super::context::Ctx;
use super::database::{LazyPostgres, source_failure};
use super::key::kind_parser;
use crate::output::{Failure, millis, print_json, print_line};

/// `warm` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct WarmArgs {
    /// Kinds to warm, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = kind_parser(), default_value = "price,pos")]
    pub(crate) kinds: Vec<Kind>,
    /// A file of identifiers, one per line (blank lines and `#` comments skipped); without
    /// it, the ids the database holds for each kind.
    #[arg(long, value_name = "FILE")]
    pub(crate) symbols: Option<PathBuf>,
    /// Most ids per kind taken from the database (without --symbols).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) limit: u64,
}

/// One kind's line of `--json` output. Field order is the order printed.
#[derive(Serialize)]
struct KindOutput {
    kind: &'static str,
    requested: usize,
    filled: usize,
    kept_newer: usize,
    l1_only: usize,
    missing: usize,
    queries: usize,
    elapsed_ms: u64,
}

/// `warm`: exit 2 without a database or Redis, or for a bad id file; 3 when either fails.
pub(crate) async fn run(ctx: &Ctx, args: WarmArgs, json: bool) -> Result<(), Failure> {
    let Some(db) = ctx.database() else {
        return Err(Failure::invalid(
            "warm loads from the database: pass --database URL or set DATABASE_URL",
        ));
    };
    let listed = match &args.symbols {
        Some(path) => Some(read_ids(path)?),
        None => None,
    };
    let cache = ctx.cache(false)?;
    let aside = db.aside(cache.clone())?;
    let mut out = Vec::new();
    for kind in &args.kinds {
        let ids = match &listed {
            Some(ids) => ids.clone(),
            None => ids_of(db, *kind, args.limit).await?,
        };
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let report = warm_kind(&aside, *kind, &ids).await?;
        out.push(KindOutput {
            kind: kind.name(),
            requested: report.requested,
            filled: report.filled,
            kept_newer: report.kept_newer,
            l1_only: report.l1_only,
            missing: report.missing,
            queries: report.queries,
            elapsed_ms: millis(report.elapsed),
        });
    }
    if json {
        return print_json(&serde_json::json!({ "kinds": out }));
    }
    for k in &out {
        print_line(&format!(
            "{:<9} {} ids: {} filled, {} kept a newer cached version, {} L1 only, {} not in the database; {} queries, {} ms",
            k.kind,
            k.requested,
            k.filled,
            k.kept_newer,
            k.l1_only,
            k.missing,
            k.queries,
            k.elapsed_ms
        ))?;
    }
    Ok(())
}

/// Warms one kind, printing progress to stderr.
async fn warm_kind(
    aside: &CacheAside<LazyPostgres>,
    kind: Kind,
    ids: &[&str],
) -> Result<WarmReport, Failure> {
    let progress = |p: WarmProgress| {
        tracing::info!(
            kind = kind.name(),
            done = p.done,
            total = p.total,
            "warming"
        );
    };
    let result = match kind {
        Kind::Price => aside.warm::<Price>(ids, progress).await,
        Kind::Pos => aside.warm::<Position>(ids, progress).await,
        Kind::BookBid => aside.warm_books::<BookBid>(ids, progress).await,
        Kind::BookAsk => aside.warm_books::<BookAsk>(ids, progress).await,
        Kind::Risk => aside.warm::<Risk>(ids, progress).await,
        Kind::Ord => aside.warm::<Order>(ids, progress).await,
        Kind::Strat => aside.warm::<StrategyState>(ids, progress).await,
        other => {
            return Err(Failure::invalid(format!(
                "kind {other} is not supported by this build of the tool"
            )));
        }
    };
    result.map_err(warm_failure)
}

/// The ids the database holds for `kind`.
async fn ids_of(
    db: &super::database::Database,
    kind: Kind,
    limit: u64,
) -> Result<Vec<String>, Failure> {
    match kind {
        Kind::Price => db.ids::<Price>(limit).await,
        Kind::Pos => db.ids::<Position>(limit).await,
        Kind::BookBid => db.ids::<BookBid>(limit).await,
        Kind::BookAsk => db.ids::<BookAsk>(limit).await,
        Kind::Risk => db.ids::<Risk>(limit).await,
        Kind::Ord => db.ids::<Order>(limit).await,
        Kind::Strat => db.ids::<StrategyState>(limit).await,
        other => Err(Failure::invalid(format!(
            "kind {other} is not supported by this build of the tool"
        ))),
    }
}

/// Identifiers from a file: one per line, blank lines and `#` comments skipped.
fn read_ids(path: &PathBuf) -> Result<Vec<String>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::invalid(format!("cannot read --symbols {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

fn warm_failure(e: LoadError<PostgresSourceError>) -> Failure {
    match e {
        LoadError::Source(e) => source_failure(&e, "the database could not load the ids"),
        LoadError::Cache(e) => e.into(),
        other => Failure::unavailable(other.to_string()),
    }
}
