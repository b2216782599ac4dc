//! `simulate`'s command-line options and their parsers (durations like `10s`, `500ms`, `2m`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Longest run accepted: a day. Longer is almost certainly a typo (`10h` for `10s`).
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `simulate`'s options.
#[derive(Debug, clap::Args)]
pub(crate) struct SimulateArgs {
    /// How long the workload runs: `10s`, `500ms`, `2m`, `1.5s`, `1h`, or plain seconds (`10`).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,

    /// Number of symbols; symbol `SYM0000` is the most popular.
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) symbols: u32,

    /// Zipf exponent of symbol popularity, for the feed and the readers alike (0 = uniform).
    #[arg(long, value_name = "S", default_value_t = 1.1, value_parser = parse_zipf,
          allow_negative_numbers = true)]
    pub(crate) zipf: f64,

    /// Market-data updates per second, all symbols together. One update writes a symbol's
    /// price and both book sides (three cache writes) with the symbol's next sequence number.
    #[arg(long, value_name = "N", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub(crate) updates_per_s: u32,

    /// Order events per second. One event writes an order and the symbol's position through
    /// write-through (database first, then the cache).
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub(crate) orders_per_s: u32,

    /// Reader tasks, each reading price, book top-5, position and risk of Zipf-popular
    /// symbols in a loop through cache-aside. Default: 4 per CPU core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) readers: Option<u32>,

    /// Tokio worker threads. Default: one per core, but one fewer (at least one) when Redis
    /// is on this host (a loopback address), so that redis-server keeps a core: readers that
    /// hit L1 never wait, and would otherwise take every core from it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) threads: Option<u32>,

    /// Write the JSON report to FILE (see docs/simulate.md for every field).
    #[arg(long, value_name = "FILE")]
    pub(crate) report: Option<PathBuf>,

    /// Draw each read operation's latency by percentile (log-scale latency axis) as SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,

    /// Serve Prometheus metrics at IP:PORT (any path, e.g. /metrics) during the run.
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) metrics_addr: Option<SocketAddr>,

    /// Report the calls that start between START and END (after the tasks start) separately,
    /// and how long after END the breaker takes to close and the dirty log to empty: inject
    /// a fault yourself (kill, pause or slow Redis or the database) at START and heal it at
    /// END. A line `fault window: …` marks the start of the run on stdout. END must be
    /// within --duration. After --duration the run waits (at most 30 s) for the recovery.
    #[arg(long, value_name = "START..END", value_parser = parse_window)]
    pub(crate) fault_window: Option<Window>,

    /// After the run, wait (at most 30 s) for the breaker to close and the dirty log to
    /// empty, then check: no acknowledged write missing from the source, no Redis value of
    /// a write-through or seeded key (position, order, risk) that differs from the source,
    /// no read served past its TTL unless marked stale. Exit 4 when a check fails.
    #[arg(long)]
    pub(crate) verify: bool,

    /// Before the run, warm every reading instance's cache from the source (prices, book
    /// sides and positions of every symbol: `CacheAside::warm`, one query per 1,000 ids)
    /// and print how long it took.
    #[arg(long)]
    pub(crate) warm: bool,

    /// Run N engine instances besides the feed handler, in this process: the feed and the
    /// order flow write through one cache, the readers are spread over N more caches (each its
    /// own L1, Redis connections, breaker, writer and counters, as separate processes would
    /// have) that share only Redis and the source of record. The report adds per-instance
    /// figures and the engines' freshness against the feed. Needs Redis (--redis or --redis-cluster). 0: one
    /// cache for everything (the default).
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "role",
          value_parser = clap::value_parser!(u32).range(0..=64))]
    pub(crate) engines: u32,

    /// Run one part of a multi-process deployment against a shared Redis (--redis or --redis-cluster): `feed`
    /// runs the market-data feed and the order flow, `engine` the readers (no feed, no
    /// orders). Start one feed and any number of engines, each with its own --report; see
    /// docs/simulate.md and `make multi`.
    #[arg(long, value_name = "ROLE", value_enum)]
    pub(crate) role: Option<RoleArg>,

    /// No live progress line (it is also off when stderr is not a terminal).
    #[arg(long, short)]
    pub(crate) quiet: bool,

    /// Which command asked for the run (not a flag: `mdcache demo` sets it).
    #[arg(skip)]
    pub(crate) preset: Preset,
}

/// `--role`: which part of a multi-process deployment this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RoleArg {
    /// The market-data feed and the order flow (no readers).
    Feed,
    /// The readers (no feed, no orders).
    Engine,
}

/// The command a run stands for: `simulate` itself, or a preset of it with its own first line
/// and rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Preset {
    /// `mdcache simulate`, with the flags given.
    #[default]
    Simulate,
    /// `mdcache demo` (see `preset.rs`): no database, not even `DATABASE_URL`'s.
    Demo,
}

impl SimulateArgs {
    /// Reader tasks: the flag, else 4 per core (`available_parallelism`, 1 if unknown).
    pub(crate) fn reader_tasks(&self) -> usize {
        self.readers.map_or_else(
            || std::thread::available_parallelism().map_or(1, usize::from) * 4,
            |n| n as usize,
        )
    }
}

/// `--fault-window`: a span of the run, measured from the start of the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// When the fault starts.
    pub(crate) start: Duration,
    /// When it is healed.
    pub(crate) end: Duration,
}

/// `START..END`, two durations (see [`parse_duration`]; START may be 0), START before END.
fn parse_window(s: &str) -> Result<Window, String> {
    let Some((a, b)) = s.split_once("..") else {
        return Err(format!(
            "{s:?} is not a window: use START..END, e.g. 2s..5s"
        ));
    };
    let start = match a.trim() {
        "0" | "0s" | "0ms" => Duration::ZERO,
        other => parse_duration(other)?,
    };
    let end = parse_duration(b)?;
    if end <= start {
        return Err(format!("{s:?}: the window must end after it starts"));
    }
    Ok(Window { start, end })
}

/// True when the Redis URL's host is this machine (`localhost`, `127.x.x.x`, `::1`).
pub(crate) fn is_loopback(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `10s`, `500ms`, `2m`, `1h`, `1.5s` or plain seconds; more than zero and at most a day.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "{s:?} is not a duration: use e.g. 10s, 500ms, 2m or plain seconds"
            ));
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("{s:?} is not a duration: use e.g. 10s, 500ms, 2m or plain seconds")
    })?;
    let d = Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("{s:?} is not a valid duration"))?;
    if d.is_zero() {
        return Err("the duration must be more than zero".to_owned());
    }
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than the 24 h limit"));
    }
    Ok(d)
}

/// A finite exponent in `0..=10` (beyond 10 every draw is the top symbol anyway).
fn parse_zipf(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=10.0).contains(&v) {
        return Err(format!("{s} is outside 0..=10"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("7"), Duration::from_secs(7));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        for bad in [
            "", "0", "0s", "-1s", "10x", "s", "1.2.3s", "25h", "nan", "1e3",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn loopback_urls_are_recognized() {
        for url in [
            "redis://127.0.0.1:6400/",
            "redis://localhost",
            "rediss://user:pw@127.0.0.2:7000/0",
            "redis://[::1]:6379",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "redis://10.0.0.5:6379/",
            "redis://cache.internal/",
            "garbage",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn fault_windows_parse() {
        assert_eq!(
            parse_window("2s..5s"),
            Ok(Window {
                start: Duration::from_secs(2),
                end: Duration::from_secs(5)
            })
        );
        assert_eq!(
            parse_window("0..500ms").map(|w| (w.start, w.end)),
            Ok((Duration::ZERO, Duration::from_millis(500)))
        );
        for bad in ["2s", "5s..2s", "2s..2s", "..3s", "1s..", "a..b", "1s...3s"] {
            assert!(parse_window(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn zipf_exponents_are_bounded() {
        assert_eq!(parse_zipf("1.1"), Ok(1.1));
        assert_eq!(parse_zipf("0"), Ok(0.0));
        for bad in ["-0.5", "11", "NaN", "inf", "x"] {
            assert!(parse_zipf(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
