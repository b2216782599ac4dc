//! `mdcache health [--admin URL]`: Redis's round trip (`PING`, every primary of a cluster), the breaker and shards, and the dirty log — this process's, or with `--admin` a running instance's from its admin API; exit 3 when Redis does not answer.

use mdcache::admin;
use serde::Serialize;

use super::context::Ctx;
use crate::output::{Failure, print_json, print_line};

/// `health` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    /// Ask a running instance instead: the base URL of its HTTP admin API (mdcache serve, or
    /// an engine that mounts it), e.g. http://10.0.0.5:9464. Its breaker, shards, dirty log
    /// and backplane lag are its own.
    #[arg(long, value_name = "URL")]
    pub(crate) admin: Option<String>,
}

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
pub(crate) async fn run(ctx: &Ctx, args: HealthArgs, json: bool) -> Result<(), Failure> {
    if let Some(base) = &args.admin {
        return remote(base, ctx, json).await;
    }
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

/// `health --admin URL`: the instance's `/api/cache/health`, printed; exit 3 when it says
/// Redis is not ok.
async fn remote(base: &str, ctx: &Ctx, json: bool) -> Result<(), Failure> {
    let (ok, body) =
        super::remote::fetch(base, "/api/cache/health", false, ctx.op_timeout()).await?;
    if json {
        print_json(&body)?;
    } else {
        print_line(&format!(
            "{base}: redis {}, breaker {}, dirty keys {}, backplane lag p99 {} µs",
            if body["redis_ok"] == true {
                "ok"
            } else {
                "NOT ok"
            },
            body["breaker"].as_str().unwrap_or("n/a"),
            body["dirty_keys"],
            body["backplane_lag_p99_us"]
        ))?;
        for s in body["shards"].as_array().into_iter().flatten() {
            print_line(&format!(
                "shard {:>5} {:<22} {}",
                s["first_slot"],
                s["primary"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?")
            ))?;
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::unavailable(format!(
            "{base}: redis unavailable: {}",
            body["error"].as_str().unwrap_or("unknown")
        )))
    }
}
