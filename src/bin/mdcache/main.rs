//! The `mdcache` command-line tool: the `simulate` workload (and `demo`, its short preset), key commands against Redis and optionally PostgreSQL (`put`, `get`, `del`, `ttl`), the operator's commands (`keys`, `clear`, `stats`, `health`), and `example` values.
//!
//! Built with the `cli` feature (`cargo build --features cli`), which brings in the tool's
//! own dependencies (clap, indicatif, plotters, hdrhistogram, tracing-subscriber); the library
//! alone compiles none of them.
//!
//! # Layout
//!
//! | module | job |
//! |---|---|
//! | `main` | the command line (clap), logging, the runtime, dispatch to a command |
//! | `cmd` | the key commands and `example`, one file each (`cmd/put.rs`, `cmd/get.rs`, …) |
//! | `simulate` | the synthetic trading workload: live line, summary, JSON report, plot, Prometheus; `demo` is its preset |
//! | `redis_flags` | `--redis` / `--redis-cluster` over the environment's configuration |
//! | `output` | what every command shares to show results and end: printing, formatting, exit statuses |

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod cmd;
mod output;
mod redis_flags;
mod simulate;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::output::Failure;

/// Inspect and write mdcache keys in Redis (through PostgreSQL with --database), or run the
/// simulate workload or the demo.
///
/// Configuration comes from the CACHE_* environment variables (CACHE_REDIS_URL,
/// CACHE_ADDRESS/CACHE_PORT, CACHE_REDIS_CLUSTER for a cluster, CACHE_USERNAME/CACHE_PASSWORD for an ACL user, CACHE_TLS_CA_FILE
/// for rediss://, CACHE_NAMESPACE, CACHE_TTL_<KIND>_MS, ...) and DATABASE_URL (TLS with
/// sslmode=verify-full&sslrootcert=PATH); --redis overrides the Redis address, --database the
/// database.
///
/// Exit status: 0 done or found; 1 not found; 2 invalid input or configuration;
/// 3 Redis or the database unavailable (timed out, unreachable, or it refused the command).
#[derive(Debug, Parser)]
#[command(name = "mdcache", version)]
struct Cli {
    /// Redis URL (redis:// or rediss:// for TLS, optionally redis://USER:PASSWORD@HOST:PORT/),
    /// overriding CACHE_REDIS_URL and CACHE_ADDRESS.
    #[arg(long, global = true, value_name = "URL")]
    redis: Option<String>,

    /// Seed nodes of a Redis Cluster (Valkey cluster, ElastiCache in cluster mode), as
    /// HOST:PORT,HOST:PORT,… (or redis:// / rediss:// URLs), instead of --redis; overrides
    /// CACHE_REDIS_CLUSTER. Credentials from CACHE_USERNAME/CACHE_PASSWORD.
    #[arg(long, global = true, value_name = "NODES", conflicts_with = "redis")]
    redis_cluster: Option<String>,

    /// PostgreSQL URL of the source of record, overriding DATABASE_URL: `get` then loads what
    /// the cache misses, `put` writes the database first. Redis becomes optional for both.
    /// `simulate` seeds it, loads its misses from it and writes its order flow to it.
    #[arg(long, global = true, value_name = "URL")]
    database: Option<String>,

    /// Deadline of one Redis operation, in milliseconds. Default for the key commands: 1000,
    /// or CACHE_OP_TIMEOUT_MS if set; the demo and simulate use CACHE_OP_TIMEOUT_MS or the
    /// library's 5 ms.
    /// With a database, also the deadline of connecting to it and of one statement (default
    /// 1000, whatever CACHE_OP_TIMEOUT_MS says).
    #[arg(long, global = true, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,

    /// Print one JSON object instead of text (keys, clear, stats, health; the key commands
    /// always print JSON).
    #[arg(long = "json", id = "json_output", global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Key(cmd::KeyCommand),
    #[command(flatten)]
    Admin(cmd::AdminCommand),
    /// Print a valid example value of KIND as JSON.
    Example(cmd::example::ExampleArgs),
    /// A short demo: the simulate workload for 2 s over 50 symbols with 4 readers and no
    /// database, then its summary (reads/s, hit rate, read latency). Embedded (in-process L1
    /// only) unless a Redis address is given (layered).
    Demo(simulate::DemoArgs),
    /// Run a synthetic trading workload: a Zipf market-data feed, scalp readers (cache-aside)
    /// and an order flow (write-through), with a live line, a summary and an optional JSON
    /// report, SVG plot and Prometheus endpoint. Embedded unless --redis / --database.
    Simulate(simulate::SimulateArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return output::clap_error(e),
    };
    let quiet_library = matches!(cli.command, Command::Simulate(_) | Command::Demo(_));
    init_tracing(quiet_library);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let Cli {
        redis,
        redis_cluster,
        database,
        timeout_ms,
        json,
        command,
    } = cli;
    let redis = redis_flags::RedisFlags {
        url: redis,
        cluster: redis_cluster,
    };
    let args = match command {
        Command::Example(args) => return cmd::example::run(args),
        Command::Key(command) => {
            let ctx = cmd::Ctx::new(redis, database, timeout_ms)?;
            // One request at a time: a single-threaded runtime is all a key command needs.
            return block_on(
                tokio::runtime::Builder::new_current_thread(),
                cmd::run(&ctx, command),
            )?;
        }
        Command::Admin(command) => {
            let ctx = cmd::Ctx::new(redis, database, timeout_ms)?;
            return block_on(
                tokio::runtime::Builder::new_current_thread(),
                cmd::run_admin(&ctx, command, json),
            )?;
        }
        Command::Demo(demo) => demo.simulate_args()?,
        Command::Simulate(args) => args,
    };
    block_on(
        simulate::runtime(&args, &redis),
        simulate::run(args, redis, database, timeout_ms),
    )?
}

/// Runs `fut` to completion on a runtime from `builder`, then abandons whatever is left.
///
/// Why `shutdown_background` rather than dropping the runtime: dropping waits for blocking
/// tasks, and a DNS lookup stuck in the resolver (or the pool's background connects) must not
/// keep a finished command from exiting; the op deadline already bounded the answer.
fn block_on<F: Future>(mut builder: tokio::runtime::Builder, fut: F) -> Result<F::Output, Failure> {
    let rt = builder
        .enable_all()
        .build()
        .map_err(|e| Failure::unavailable(format!("cannot start the async runtime: {e}")))?;
    let out = rt.block_on(fut);
    rt.shutdown_background();
    Ok(out)
}

/// Logs to stderr, filtered by `RUST_LOG` (invalid directives are ignored).
///
/// Default: `warn`, except write-through's warnings (a failed cache write or invalidation
/// after a database write), which `put` reports itself: in its JSON (`cache_failed`, exit 0,
/// stderr empty) or in its one error line. With `quiet_library` (`simulate`), only errors:
/// the run reports breaker transitions, fallbacks and failed writes in its live line, summary
/// and report, and a log line would tear the live line apart.
fn init_tracing(quiet_library: bool) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder()
            .with_default_directive(LevelFilter::WARN.into())
            .parse_lossy(directives),
        _ if quiet_library => EnvFilter::new("warn,mdcache=error"),
        _ => EnvFilter::new("warn,mdcache::patterns::write=error"),
    };
    // Fails only if a subscriber is already installed, which would be fine too.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let a =
            Cli::try_parse_from(["mdcache", "--redis", "redis://h/", "get", "price", "X"]).unwrap();
        let b =
            Cli::try_parse_from(["mdcache", "get", "price", "X", "--redis", "redis://h/"]).unwrap();
        assert_eq!(a.redis, b.redis);
        assert!(Cli::try_parse_from(["mdcache", "get", "bogus", "X"]).is_err());
        assert!(
            Cli::try_parse_from(["mdcache", "put", "pos", "X", "{}", "--ttl-ms", "0"]).is_err()
        );
    }
}
