//! `mdcache simulate`: a synthetic trading workload (market-data feed, scalp readers, order flow) against the configured cache, with a live line, a summary, a JSON report, a plot and Prometheus metrics.
//!
//! Embedded by default: an in-process cache (L1 only) in front of a [`MemorySource`], no
//! servers needed. `--redis URL` (or `CACHE_REDIS_URL`; a cluster: `--redis-cluster NODES`) puts Redis behind L1 (`layered`;
//! `CACHE_BACKEND=redis` for Redis alone); `--database URL` (or `DATABASE_URL`) makes
//! PostgreSQL the source of record.
//!
//! A run: build the caches (after installing the Prometheus recorder, if asked) — one, or a
//! feed handler's and N engines' with `--engines N`, or this process's part with `--role`
//! ([`instance`]) — seed the source with every symbol's price, book sides and position and the
//! risk account, start the feed, reader and order tasks ([`workload`]), wait `--duration` (or
//! Ctrl-C), stop them, flush the queued market data, merge what each measured ([`record`],
//! [`freshness`]) and report ([`report`], [`plot`]). The report's figures are defined in
//! `docs/simulate.md`.
//!
//! | module | job |
//! |---|---|
//! | `args` | the options and their parsers |
//! | `preset` | `mdcache demo`: a short run with a few flags set, and its first line |
//! | `fault` | the fault window (`--fault-window`) and the recovery wait |
//! | `verify` | the post-run checks against the source (`--verify`) |
//! | `instance` | the run's caches (single, feed, engines), their roles and end figures |
//! | `workload` | seeding, the feed, the readers, the order flow |
//! | `freshness` | how far the engines' reads are behind the feed (`--engines`, `--role engine`) |
//! | `record` | per-task HDR histograms and counters, merged at the end |
//! | `live` | the progress line |
//! | `report` | the JSON report and the summary table |
//! | `plot` | the SVG percentile plot |
//! | `zipf` | symbol popularity |

mod args;
mod fault;
mod freshness;
mod instance;
mod live;
mod plot;
mod preset;
mod record;
mod report;
mod verify;
mod workload;
mod zipf;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) use args::SimulateArgs;
use args::{Preset, RoleArg};
use mdcache::{
    Backend, Cache, CacheAside, CacheConfig, MemorySource, PostgresSource, PostgresSourceError,
    SourceWriter, WriteThrough,
};
use tokio::task::JoinHandle;

use crate::output::{Failure, Status, print_line};
use crate::redis_flags::{RedisFlags, place};
use freshness::{FeedHistory, Mode};
use instance::{Instance, Role};
use live::Progress;
pub(crate) use preset::DemoArgs;
use record::TaskRecord;
use report::{Measured, Report, Setup, Workload};
use tokio_util::sync::CancellationToken;
use workload::{Keys, Shared};
use zipf::Zipf;

/// Feed updates per second one task is asked to carry. An embedded update costs about a
/// microsecond. One against Redis waits a round trip (its three writes go together), and on a
/// loaded two-vCPU machine a round trip to an otherwise idle Redis measured 200–400 µs (the
/// server's wake-up dominates), so each task keeps well under half its capacity.
const FEED_RATE_PER_TASK_EMBEDDED: u32 = 50_000;
const FEED_RATE_PER_TASK_REDIS: u32 = 1_000;
/// Order events per second one task is asked to carry: each waits for a source write and then
/// a cache write (order and position together), ~1 ms with PostgreSQL and Redis.
const ORDER_RATE_PER_TASK: u32 = 250;
/// Most feed or order tasks.
const MAX_PACED_TASKS: u32 = 32;
/// Budget for connecting to PostgreSQL and creating the schema.
const DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `--role engine` with a database: how long to wait for the feed process to seed it.
const SEED_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for the queued market data to reach Redis after the run.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// The output files, created before the run so that a bad path fails in a millisecond, not
/// after `--duration`.
struct Outputs {
    report: Option<(PathBuf, File)>,
    plot: Option<(PathBuf, File)>,
}

impl Outputs {
    fn create(args: &SimulateArgs) -> Result<Outputs, Failure> {
        let open =
            |flag: &str, path: &Option<PathBuf>| -> Result<Option<(PathBuf, File)>, Failure> {
                let Some(path) = path else { return Ok(None) };
                let file = File::create(path).map_err(|e| {
                    Failure::invalid(format!("{flag}: cannot create {}: {e}", path.display()))
                })?;
                Ok(Some((path.clone(), file)))
            };
        Ok(Outputs {
            report: open("--report", &args.report)?,
            plot: open("--plot", &args.plot)?,
        })
    }
}

fn write_output(path: &Path, mut file: File, text: &str) -> Result<(), Failure> {
    file.write_all(text.as_bytes())
        .and_then(|()| file.flush())
        .map_err(|e| Failure::unavailable(format!("cannot write {}: {e}", path.display())))
}

/// The runtime for `simulate`: multi-threaded, with `--threads` workers (see its help for the
/// default). `redis` is the `--redis` flag; without it, `CACHE_REDIS_URL` (or
/// `CACHE_ADDRESS`) decides whether Redis is on this host.
pub(crate) fn runtime(args: &SimulateArgs, redis: &RedisFlags) -> tokio::runtime::Builder {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = args.threads.map_or_else(
        || {
            // A configuration error is reported by `run`; here it just means "no Redis".
            let from_env = || {
                CacheConfig::from_env()
                    .ok()
                    .filter(|c| c.effective_backend() != Backend::Memory)
                    .and_then(|c| {
                        RedisFlags {
                            url: c.redis_url,
                            cluster: (!c.redis_cluster.is_empty())
                                .then(|| c.redis_cluster.join(",")),
                        }
                        .first_url()
                    })
            };
            let local = redis
                .first_url()
                .or_else(from_env)
                .is_some_and(|url| args::is_loopback(&url));
            if local {
                cores.saturating_sub(1).max(1)
            } else {
                cores
            }
        },
        |n| n as usize,
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads);
    builder
}

/// Runs `simulate`. Needs a multi-threaded runtime: readers, feed and orders run in parallel.
pub(crate) async fn run(
    args: SimulateArgs,
    redis: RedisFlags,
    database: Option<String>,
    timeout_ms: Option<u64>,
) -> Result<(), Failure> {
    if args.preset == Preset::Demo && database.is_some() {
        return Err(Failure::invalid(
            "--database is not supported by the demo (it runs without a database)",
        ));
    }
    if let Some(w) = args.fault_window
        && w.end > args.duration
    {
        return Err(Failure::invalid(format!(
            "--fault-window ends at {:?}, after --duration {:?}",
            w.end, args.duration
        )));
    }
    if args.role == Some(RoleArg::Engine) && args.verify {
        return Err(Failure::invalid(
            "--verify checks the writes this process acknowledged: give it to the feed process (--role feed); an engine writes nothing",
        ));
    }
    let outputs = Outputs::create(&args)?;
    let mut config = CacheConfig::from_env()?;
    if redis.given() {
        redis.apply(&mut config);
        if config.backend != Some(Backend::Redis) {
            config.backend = Some(Backend::Layered);
        }
    }
    if let Some(ms) = timeout_ms {
        config.op_timeout = Duration::from_millis(ms);
    }
    let database_from_flag = database.is_some();
    let database = database.or_else(|| config.database_url.take());
    // The demo is a sketch that needs no servers: `DATABASE_URL` does not apply to it.
    let database = database.filter(|_| args.preset != Preset::Demo);
    if let Some(url) = &database
        && let Err(e) = tokio_postgres::Config::from_str(url)
    {
        let origin = if database_from_flag {
            "--database URL"
        } else {
            "DATABASE_URL"
        };
        return Err(Failure::invalid(format!("invalid {origin}: {e}")));
    }

    if (args.engines > 0 || args.role.is_some()) && config.effective_backend() == Backend::Memory {
        let flag = if args.engines > 0 {
            "--engines"
        } else {
            "--role"
        };
        return Err(Failure::invalid(format!(
            "{flag} needs Redis (--redis URL or --redis-cluster NODES): instances share nothing else"
        )));
    }

    // Before the caches: their counters register with the recorder installed when they are
    // built (every instance's into the same series).
    let _prometheus = match args.metrics_addr {
        None => None,
        Some(addr) => Some(
            mdcache::metrics::install_prometheus(addr)
                .map_err(|e| Failure::invalid(format!("--metrics-addr {addr}: {e}")))?,
        ),
    };
    // One cache per instance, each with its own L1, connections, breaker, writer and counters.
    let mut instances = Vec::new();
    for (role, name) in instance::layout(args.engines, args.role) {
        let cache = Cache::builder()
            .config(config.clone())
            .build()
            .map_err(|e| redis.blame(e))?;
        instances.push(Instance { name, role, cache });
    }
    for i in &instances {
        if i.cache.backend() != Backend::Memory {
            wait_for_redis(&i.cache).await?;
        }
    }

    match database {
        None => {
            simulate(
                args,
                outputs,
                instances,
                Arc::new(MemorySource::default()),
                false,
            )
            .await
        }
        Some(url) => {
            let source = tokio::time::timeout(DB_CONNECT_TIMEOUT, PostgresSource::connect(&url))
                .await
                .unwrap_or(Err(PostgresSourceError::NoConnection(DB_CONNECT_TIMEOUT)))
                .map_err(|e| match e {
                    PostgresSourceError::Config(_) => {
                        Failure::invalid(format!("invalid database URL: {e}"))
                    }
                    _ => Failure::unavailable(format!("database unavailable: {e}")),
                })?;
            simulate(args, outputs, instances, Arc::new(source), true).await
        }
    }
}

/// Pings until Redis answers, for at most the connect timeout (the pool opens its connections
/// in the background). On failure, the message names the last real error rather than the
/// open breaker that repeated failures lead to.
async fn wait_for_redis(cache: &Cache) -> Result<(), Failure> {
    let within = cache.config().connect_timeout;
    let give_up = Instant::now() + within;
    let mut last: Option<mdcache::Error> = None;
    loop {
        match cache.ping().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                if e.kind() != mdcache::ErrorKind::BreakerOpen {
                    last = Some(e);
                }
                if Instant::now() >= give_up {
                    let url = place(cache.config()).unwrap_or_default();
                    let why = last.map_or_else(|| "no answer".to_owned(), |e| e.to_string());
                    return Err(Failure::unavailable(format!(
                        "Redis at {url} did not answer within {within:?}: {why}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How many paced tasks carry `rate` events per second at `per_task` each.
fn paced_tasks(rate: u32, per_task: u32) -> usize {
    rate.div_ceil(per_task).clamp(1, MAX_PACED_TASKS) as usize
}

/// The instances for the first line: `, feed + 2 engines` (`--engines`), `, role feed`
/// (`--role`), or nothing.
fn describe_instances(args: &SimulateArgs) -> String {
    match (args.role, args.engines) {
        (Some(RoleArg::Feed), _) => ", role feed".to_owned(),
        (Some(RoleArg::Engine), _) => ", role engine".to_owned(),
        (None, 0) => String::new(),
        (None, 1) => ", feed + 1 engine".to_owned(),
        (None, n) => format!(", feed + {n} engines"),
    }
}

/// The backend's description for the first line.
fn describe(cache: &Cache, postgres: bool) -> String {
    let tiers = match (cache.backend(), place(cache.config())) {
        (Backend::Memory, _) => "embedded (in-process L1)".to_owned(),
        (Backend::Layered, Some(url)) => format!("layered (L1 + Redis at {url})"),
        (Backend::Redis, Some(url)) => format!("Redis only (at {url})"),
        (other, _) => other.name().to_owned(),
    };
    let source = if postgres { "PostgreSQL" } else { "in-memory" };
    format!("{tiers}, {source} source")
}

async fn simulate<Src: SourceWriter>(
    args: SimulateArgs,
    outputs: Outputs,
    instances: Vec<Instance>,
    source: Arc<Src>,
    postgres: bool,
) -> Result<(), Failure> {
    // The writing instance (`single` or `feed`) is first; with `--role engine`, the engine.
    let cache = instances[0].cache.clone();
    let writes = instances[0].role.writes();
    let homes: Vec<usize> = (0..instances.len())
        .filter(|&i| instances[i].role.reads())
        .collect();
    let readers = if homes.is_empty() {
        0
    } else {
        args.reader_tasks()
    };
    let (updates_per_s, orders_per_s) = if writes {
        (args.updates_per_s, args.orders_per_s)
    } else {
        (0, 0)
    };
    let symbols = args.symbols as usize;
    let feed_tasks = if updates_per_s == 0 {
        0
    } else if cache.backend() == Backend::Memory {
        paced_tasks(updates_per_s, FEED_RATE_PER_TASK_EMBEDDED)
    } else {
        paced_tasks(updates_per_s, FEED_RATE_PER_TASK_REDIS)
    };
    let order_tasks = if orders_per_s == 0 {
        0
    } else {
        paced_tasks(orders_per_s, ORDER_RATE_PER_TASK)
    };
    let zipf = Zipf::new(symbols, args.zipf);
    let keys = Keys::new(&cache, symbols)?;
    let setup = Setup {
        backend: cache.backend().name(),
        postgres,
        redis_url: place(cache.config()),
        workload: Workload {
            symbols: args.symbols,
            zipf: args.zipf,
            readers,
            feed_tasks,
            order_tasks,
            updates_per_s,
            orders_per_s,
            duration_requested_s: args.duration.as_secs_f64(),
            book_depth: workload::BOOK_DEPTH,
            hot_symbols: keys.hot,
            hot_read_share: zipf.mass_of_top(keys.hot),
            engines: args.engines,
            role: args.role.map(|r| match r {
                RoleArg::Feed => Role::Feed.name(),
                RoleArg::Engine => Role::Engine.name(),
            }),
        },
    };
    print_line(&match args.preset {
        Preset::Demo => preset::title(&cache),
        Preset::Simulate => format!(
            "mdcache simulate: {}, {} s{}",
            describe(&cache, postgres),
            args.duration.as_secs_f64(),
            describe_instances(&args),
        ),
    })?;

    let keys = Arc::new(keys);
    let version_base = if writes || !postgres {
        workload::seed(Arc::clone(&source), Arc::clone(&keys))
            .await
            .map_err(|e| Failure::unavailable(format!("cannot seed the source: {e}")))?
    } else {
        // An engine sharing the database with a feed process: the feed seeds it. The
        // engine measures freshness from the prices' stamps, so it needs no version base.
        workload::wait_for_seed(source.as_ref(), &keys, SEED_WAIT)
            .await
            .map_err(Failure::unavailable)?;
        0
    };
    let freshness = match (args.engines, args.role) {
        (_, Some(RoleArg::Engine)) => Mode::ValueAge,
        (0, _) => Mode::Off,
        _ => Mode::InProcess(FeedHistory::new(
            version_base,
            &zipf,
            symbols,
            updates_per_s,
        )),
    };
    let shared = Arc::new(Shared::new(
        cache.clone(),
        Arc::clone(&keys),
        zipf,
        version_base,
        args.verify,
        freshness,
    ));

    // One cache-aside per reading instance, over its own cache and the shared source.
    let mut asides = Vec::with_capacity(homes.len());
    for &i in &homes {
        asides.push((
            i,
            CacheAside::builder(instances[i].cache.clone(), Arc::clone(&source)).build()?,
        ));
    }
    if args.warm {
        workload::warm(&asides, &keys).await?;
    }
    let writer = WriteThrough::new(cache.clone(), Arc::clone(&source));
    let caches: Vec<Cache> = instances.iter().map(|i| i.cache.clone()).collect();
    let mut progress = Progress::new(args.duration, args.quiet);
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() & 0xFF_FFFF);

    let alive_tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let alive_tasks_before = alive_tasks();
    let start = Instant::now();
    let stop_watch = CancellationToken::new();
    let watch = args.fault_window.map(|w| {
        tokio::spawn(fault::watch(
            Arc::clone(&shared),
            caches.clone(),
            tokio::time::Instant::from_std(start),
            w,
            stop_watch.clone(),
        ))
    });
    if let Some(w) = args.fault_window {
        print_line(&format!(
            "fault window: {:.3} s to {:.3} s from now",
            w.start.as_secs_f64(),
            w.end.as_secs_f64()
        ))?;
    }
    // Readers round-robin over the reading instances.
    let mut readers_on = vec![0usize; instances.len()];
    let reader_handles: Vec<(usize, JoinHandle<TaskRecord>)> = (0..readers as u64)
        .map(|n| {
            let (home, aside) = &asides[n as usize % asides.len()];
            readers_on[*home] += 1;
            let live = progress.recorder(&shared.clock);
            let task = tokio::spawn(workload::reader(
                Arc::clone(&shared),
                aside.clone(),
                n,
                live,
            ));
            (*home, task)
        })
        .collect();
    let feed_handles: Vec<(usize, JoinHandle<TaskRecord>)> = (0..feed_tasks as u64)
        .map(|t| {
            let per_s = f64::from(updates_per_s) / feed_tasks as f64;
            (
                0,
                tokio::spawn(workload::feed(Arc::clone(&shared), t, per_s)),
            )
        })
        .collect();
    let order_handles: Vec<(usize, JoinHandle<TaskRecord>)> = (0..order_tasks as u64)
        .map(|t| {
            let per_s = f64::from(orders_per_s) / order_tasks as f64;
            let task = tokio::spawn(workload::orders(
                Arc::clone(&shared),
                writer.clone(),
                t,
                per_s,
                run_id,
            ));
            (0, task)
        })
        .collect();

    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let progress_task = tokio::spawn(
        progress.run(
            instances
                .iter()
                .map(|i| (i.label(), i.cache.clone()))
                .collect(),
            start,
            async {
                let _ = done_rx.await;
            },
        ),
    );

    let interrupted = tokio::select! {
        () = tokio::time::sleep(args.duration) => false,
        () = ctrl_c() => true,
    };
    shared.stop.store(true, Ordering::Relaxed);
    let mut measured = Measured::default();
    let mut calls = vec![Calls::default(); instances.len()];
    join_into(
        &mut measured,
        &mut calls,
        |m| &mut m.readers,
        reader_handles,
        "reader",
    )
    .await?;
    join_into(
        &mut measured,
        &mut calls,
        |m| &mut m.feed,
        feed_handles,
        "feed",
    )
    .await?;
    join_into(
        &mut measured,
        &mut calls,
        |m| &mut m.orders,
        order_handles,
        "order",
    )
    .await?;
    let elapsed = start.elapsed();
    let _ = done_tx.send(());
    let _ = progress_task.await;
    for (_, aside) in &asides {
        aside.shutdown().await;
    }

    // The queued market data goes to Redis before anything is checked or counted. A failed
    // flush leaves its keys dirty, which the recovery wait below covers.
    for c in &caches {
        let _ = tokio::time::timeout(FLUSH_LIMIT, c.flush()).await;
    }
    // The recovery after a fault: wait for it, bounded, so that it can be timed and checked.
    let recovery = if watch.is_some() || args.verify {
        fault::settle(&caches, fault::SETTLE_LIMIT).await
    } else {
        None
    };
    stop_watch.cancel();
    let timeline = match watch {
        Some(handle) => Some(
            handle
                .await
                .map_err(|e| Failure::unavailable(format!("the fault window task failed: {e}")))?,
        ),
        None => None,
    };
    let verification = if args.verify {
        let fed = shared.fed_versions();
        let checks = verify::Checks {
            acked: &measured.acked,
            fed: &fed,
            seeded_up_to: version_base,
            reads_past_ttl: measured.readers.past_ttl(),
        };
        Some(verify::verify(&cache, &source, &keys, checks, recovery).await?)
    } else {
        None
    };

    let ends: Vec<instance::InstanceEnd> = instances
        .iter()
        .zip(&calls)
        .zip(&readers_on)
        .map(|((i, c), &n)| i.end(n, c.reads, c.writes))
        .collect();
    let (mut report, all) = Report::build(
        setup,
        elapsed,
        interrupted,
        &measured,
        &ends,
        shared.freshness.name(),
    );
    report.fault_window = args
        .fault_window
        .zip(timeline)
        .map(|(w, t)| report::window_report(w, &measured.window, t));
    report.verify = verification;
    report.runtime = report::RuntimeTasks {
        alive_tasks_before,
        alive_tasks_after: alive_tasks(),
    };
    for line in report.summary(&all) {
        print_line(&line)?;
    }
    if let Some((path, file)) = outputs.report {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::unavailable(format!("cannot format the report: {e}")))?;
        write_output(&path, file, &(json + "\n"))?;
    }
    if let Some((path, file)) = outputs.plot {
        let title = format!(
            "mdcache simulate: read latency by percentile ({}{})",
            report.backend,
            if postgres { " + postgres" } else { "" }
        );
        let svg =
            plot::svg(&title, &report::read_histograms(&all)).map_err(Failure::unavailable)?;
        write_output(&path, file, &svg)?;
    }
    match &report.verify {
        Some(v) if !v.passed => Err(Failure::new(
            Status::VerifyFailed,
            format!("--verify failed: {}", v.failures().join("; ")),
        )),
        _ => Ok(()),
    }
}

/// The calls one instance's tasks made.
#[derive(Debug, Clone, Copy, Default)]
struct Calls {
    reads: u64,
    writes: u64,
}

/// Waits for the tasks of one group and merges what they measured: the run into `group`'s
/// recorder, the fault window, the acknowledgements and the freshness figures into the
/// shared ones, and each task's calls into its instance's (`calls`, by instance index).
async fn join_into(
    measured: &mut Measured,
    calls: &mut [Calls],
    group: fn(&mut Measured) -> &mut record::Recorder,
    handles: Vec<(usize, JoinHandle<TaskRecord>)>,
    what: &str,
) -> Result<(), Failure> {
    for (instance, h) in handles {
        let rec = h
            .await
            .map_err(|e| Failure::unavailable(format!("a {what} task failed: {e}")))?;
        calls[instance].reads += rec.run.reads();
        calls[instance].writes += rec.run.writes();
        group(measured).merge(&rec.run);
        measured.window.merge(&rec.window);
        measured.acked.merge(&rec.acked);
        if let Some(fresh) = &rec.fresh {
            measured.fresh.merge(fresh);
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C; never, if the signal handler cannot be installed.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_tasks_scale_with_the_rate() {
        assert_eq!(paced_tasks(1, 1_000), 1);
        assert_eq!(paced_tasks(20_000, 1_000), 20);
        assert_eq!(paced_tasks(20_001, 1_000), 21);
        assert_eq!(paced_tasks(10_000_000, 1_000), 32);
    }
}
