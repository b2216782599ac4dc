//! `mdcache stats [--max-keys N]`: the namespace's keys per kind (by bounded `SCAN`, every primary of a cluster) and Redis's round trip.

use std::collections::BTreeMap;

use mdcache::admin;
use serde::Serialize;

use super::context::Ctx;
use crate::output::{Failure, print_json, print_line};

/// `stats` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    /// Stop counting after this many keys (the counts are then a lower bound).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_keys: u64,
}

/// `--json` output. Field order is the order printed.
#[derive(Serialize)]
struct StatsOutput<'a> {
    keys: &'a BTreeMap<&'static str, u64>,
    book_stamps: u64,
    other_keys: u64,
    /// False when counting stopped at --max-keys.
    complete: bool,
    ping_us: Option<u64>,
}

/// `stats`: exit 3 when Redis cannot be scanned.
pub(crate) async fn run(ctx: &Ctx, args: StatsArgs, json: bool) -> Result<(), Failure> {
    let cache = ctx.cache(false)?;
    let counts = admin::count_keys(&cache, args.max_keys).await?;
    let health = admin::health(&cache).await;
    let ping_us = health
        .ping
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    if json {
        return print_json(&StatsOutput {
            keys: &counts.by_kind,
            book_stamps: counts.book_stamps,
            other_keys: counts.other,
            complete: counts.complete,
            ping_us,
        });
    }
    for (kind, n) in &counts.by_kind {
        print_line(&format!("{kind:<10} {n}"))?;
    }
    print_line(&format!("{:<10} {}", "other", counts.other))?;
    if !counts.complete {
        print_line(&format!(
            "# stopped after {} keys: counts are a lower bound",
            args.max_keys
        ))?;
    }
    match ping_us {
        Some(us) => print_line(&format!("# redis round trip {us} µs")),
        None => Ok(()),
    }
}
