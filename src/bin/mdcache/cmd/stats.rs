//! `mdcache stats [--max-keys N]`: the namespace's keys per kind (by bounded `SCAN`, every primary of a cluster), Redis's memory per node (`INFO memory`) and round-trip percentiles (a `PING` series).

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
    /// Measure Redis's round trip with this many `PING`s in a row (percentiles printed).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(admin::MAX_PINGS)))]
    pub(crate) pings: u32,
    /// Ask a running instance instead: the base URL of its HTTP admin API; the token comes
    /// from CACHE_ADMIN_TOKEN or CACHE_ADMIN_TOKEN_FILE. Prints its /api/cache/stats.
    #[arg(long, value_name = "URL")]
    pub(crate) admin: Option<String>,
}

/// `--json` output. Field order is the order printed.
#[derive(Serialize)]
struct StatsOutput<'a> {
    keys: &'a BTreeMap<&'static str, u64>,
    book_stamps: u64,
    other_keys: u64,
    /// False when counting stopped at --max-keys.
    complete: bool,
    /// `--pings` round trips: `samples`, `min_us` ... `max_us`.
    ping: admin::PingSeries,
    /// Per node: `used_memory` and `maxmemory` (0: no limit), bytes.
    memory: Vec<Memory>,
}

/// One node's memory.
#[derive(Serialize)]
struct Memory {
    node: String,
    used_bytes: u64,
    max_bytes: u64,
}

/// `stats`: exit 3 when Redis cannot be scanned.
pub(crate) async fn run(ctx: &Ctx, args: StatsArgs, json: bool) -> Result<(), Failure> {
    if let Some(base) = &args.admin {
        let (ok, body) =
            super::remote::fetch(base, "/api/cache/stats", true, ctx.op_timeout()).await?;
        if !ok {
            return Err(Failure::unavailable(format!(
                "{base}: {}",
                body["error"].as_str().unwrap_or("stats unavailable")
            )));
        }
        return if json {
            print_json(&body)
        } else {
            print_line(&serde_json::to_string_pretty(&body).unwrap_or_default())
        };
    }
    let cache = ctx.cache(false)?;
    let counts = admin::count_keys(&cache, args.max_keys).await?;
    let memory: Vec<Memory> = admin::redis_memory(&cache)
        .await?
        .into_iter()
        .map(|m| Memory {
            node: m.node,
            used_bytes: m.used_bytes,
            max_bytes: m.max_bytes,
        })
        .collect();
    let ping = admin::ping_series(&cache, args.pings).await?;
    let us = |d: std::time::Duration| d.as_micros();
    if json {
        return print_json(&StatsOutput {
            keys: &counts.by_kind,
            book_stamps: counts.book_stamps,
            other_keys: counts.other,
            complete: counts.complete,
            ping,
            memory,
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
    for m in &memory {
        let max = if m.max_bytes == 0 {
            "no limit".to_owned()
        } else {
            format!("of {} MiB", m.max_bytes / (1024 * 1024))
        };
        print_line(&format!(
            "# memory {}: {:.1} MiB used, {max}",
            m.node,
            m.used_bytes as f64 / (1024.0 * 1024.0)
        ))?;
    }
    print_line(&format!(
        "# redis round trip over {} pings: min {} µs, p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
        ping.samples,
        us(ping.min),
        us(ping.p50),
        us(ping.p90),
        us(ping.p99),
        us(ping.max)
    ))
}
