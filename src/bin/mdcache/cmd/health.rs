//! `mdcache health`: Redis's round trip (`PING`, every primary of a cluster), what this process's breaker and shards say, and the dirty log; exit 3 when Redis does not answer.

use mdcache::admin;
use serde::Serialize;

use super::context::Ctx;
use crate::output::{Failure, print_json, print_line};

/// `--json` output. Field order is the order printed.
#[derive(Serialize)]
struct HealthOutput {
    redis_ok: bool,
    ping_us: Option<u64>,
    error: Option<String>,
    breaker: &'static str,
    shards: Vec<Shard>,
    dirty_keys: usize,
}

/// One cluster shard's breaker.
#[derive(Serialize)]
struct Shard {
    first_slot: u16,
    primary: Option<String>,
    state: &'static str,
}

/// `health`: exit 0 when Redis answers, 3 when it does not.
pub(crate) async fn run(ctx: &Ctx, json: bool) -> Result<(), Failure> {
    let cache = ctx.cache(false)?;
    let h = admin::health(&cache).await;
    let out = HealthOutput {
        redis_ok: h.redis_ok,
        ping_us: h
            .ping
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        error: h.ping_error.clone(),
        breaker: h.breaker.map_or("n/a", |b| b.state.as_str()),
        shards: h
            .shards
            .iter()
            .map(|s| Shard {
                first_slot: s.first_slot,
                primary: s.primary.clone(),
                state: s.breaker.state.as_str(),
            })
            .collect(),
        dirty_keys: h.dirty_keys,
    };
    if json {
        print_json(&out)?;
    } else {
        match (out.ping_us, &out.error) {
            (Some(us), _) => print_line(&format!("redis ok, round trip {us} µs"))?,
            (None, Some(e)) => print_line(&format!("redis NOT ok: {e}"))?,
            (None, None) => print_line("redis NOT ok")?,
        }
        for s in &out.shards {
            print_line(&format!(
                "shard {:>5} {:<22} {}",
                s.first_slot,
                s.primary.as_deref().unwrap_or("?"),
                s.state
            ))?;
        }
    }
    if h.redis_ok {
        Ok(())
    } else {
        Err(Failure::unavailable(format!(
            "redis unavailable: {}",
            h.ping_error.unwrap_or_default()
        )))
    }
}
