//! `mdcache simulate` end to end: embedded and against real redis-server and PostgreSQL processes, the JSON report's fields and arithmetic, the Prometheus endpoint during a run, and the exit statuses of bad input and unreachable backends. No timing asserts.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use support::RedisServer;
use support::cli::mdcache;
use support::http::{free_addr, scrape};

const READ_OPS: [&str; 4] = ["read_price", "read_book", "read_pos", "read_risk"];
const WRITE_OPS: [&str; 4] = ["write_price", "write_book", "write_order", "write_pos"];

/// A short, small run: 2 s, 20 symbols, 2 readers, a gentle feed and order flow.
const SMALL: [&str; 10] = [
    "--duration",
    "2s",
    "--symbols",
    "20",
    "--readers",
    "2",
    "--updates-per-s",
    "2000",
    "--orders-per-s",
    "100",
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `simulate` with `args` and returns its output; panics (with the output) unless it
/// exits 0.
#[track_caller]
fn simulate_ok(args: &[&str]) -> Output {
    let out = mdcache()
        .arg("simulate")
        .args(args)
        .output()
        .expect("run mdcache");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn read_report(path: &Path) -> Value {
    let body = std::fs::read_to_string(path).expect("report written");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a count in {v}"))
}

fn f(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v}"))
}

/// Every field the issue names is there, and the figures agree with each other.
#[track_caller]
fn check_report(r: &Value) {
    assert!(
        ["memory", "layered", "redis"].contains(&r["backend"].as_str().unwrap_or("")),
        "{r}"
    );
    assert!(r["postgres"].is_boolean(), "{r}");
    let duration = f(r, "duration_s");
    assert!(duration > 0.0);

    let mut sums = [0u64; 2];
    for (i, ops) in [READ_OPS, WRITE_OPS].iter().enumerate() {
        for name in ops {
            let op = &r["ops"][name];
            let count = u(op, "count");
            assert!(u(op, "errors") <= count, "{name}: {op}");
            let q = ["p50_us", "p99_us", "p999_us", "max_us"].map(|k| f(op, k));
            assert!(q.windows(2).all(|w| w[0] <= w[1]), "{name}: {q:?}");
            assert!(q[0] >= 0.0);
            if i == 0 {
                let served = &op["served"];
                let total = ["l1", "l2", "source", "stale"]
                    .iter()
                    .map(|t| u(served, t))
                    .sum::<u64>()
                    + u(op, "not_found")
                    + u(op, "errors");
                assert_eq!(total, count, "{name}: every read ends one way: {op}");
            }
            sums[i] += count;
        }
    }
    assert_eq!(sums[0], u(r, "reads"), "reads = sum of read op counts");
    assert_eq!(sums[1], u(r, "writes"), "writes = sum of write op counts");
    assert!(u(r, "reads") > 0);
    for (total, rate) in [("reads", "reads_per_s"), ("writes", "writes_per_s")] {
        let expect = u(r, total) as f64;
        let got = f(r, rate) * duration;
        assert!(
            (got - expect).abs() <= 1e-6 * expect.max(1.0),
            "{rate} × duration_s = {got}, {total} = {expect}"
        );
    }

    let t = &r["tiers"];
    let hits = u(t, "l1_hits") + u(t, "l2_hits");
    let loads = u(t, "source_loads");
    let _ = u(t, "stale_served");
    let hit_rate = f(r, "hit_rate");
    assert!((0.0..=1.0).contains(&hit_rate), "{hit_rate}");
    if hits + loads > 0 {
        assert!((hit_rate - hits as f64 / (hits + loads) as f64).abs() < 1e-12);
    }
    assert!((0.0..=1.0).contains(&f(r, "hot_hit_rate")));

    let b = &r["breaker"];
    assert!(
        ["closed", "open", "half_open", "n/a"].contains(&b["state"].as_str().unwrap_or("")),
        "{b}"
    );
    let _ = (u(b, "opened"), u(b, "closed"));

    let fb = &r["fallbacks"];
    assert_eq!(
        u(fb, "total"),
        u(fb, "breaker_open") + u(fb, "timeout") + u(fb, "error"),
        "{fb}"
    );
    let _ = (u(fb, "overloaded"), u(fb, "stale_served"));

    // Read errors by kind add up to the read operations' errors; nothing past its TTL.
    let errors: u64 = READ_OPS.iter().map(|op| u(&r["ops"][op], "errors")).sum();
    let by_kind: u64 = ["source", "source_timeout", "overloaded", "cache"]
        .iter()
        .map(|k| u(&r["read_errors"], k))
        .sum();
    assert_eq!(errors, by_kind, "{}", r["read_errors"]);
    let past_ttl: u64 = READ_OPS.iter().map(|op| u(&r["ops"][op], "past_ttl")).sum();
    assert_eq!(past_ttl, u(r, "reads_past_ttl"));
    assert_eq!(past_ttl, 0, "reads served past their TTL");
}

#[test]
fn embedded_run_prints_a_summary_and_writes_a_consistent_report_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let plot = dir.path().join("latency.svg");
    let mut args = SMALL.to_vec();
    let (report_s, plot_s) = (report.to_str().unwrap(), plot.to_str().unwrap());
    args.extend(["--report", report_s, "--plot", plot_s]);
    let out = simulate_ok(&args);

    let stdout = text(&out.stdout);
    for needle in [
        "embedded",
        "read_price",
        "write_pos",
        "hit rate",
        "breaker n/a",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
    // Not a terminal: no progress line, and nothing else on stderr either.
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    let r = read_report(&report);
    check_report(&r);
    assert_eq!(r["backend"], "memory");
    assert_eq!(r["postgres"], false);
    assert_eq!(r["breaker"]["state"], "n/a");
    assert_eq!(u(&r["tiers"], "l2_hits"), 0, "no Redis, no L2 hits");
    assert_eq!(r["workload"]["symbols"], 20);
    assert_eq!(r["workload"]["readers"], 2);
    // Every key was seeded: nothing is ever "not found", and the risk account's first read
    // loads it from the source.
    for op in READ_OPS {
        assert_eq!(u(&r["ops"][op], "not_found"), 0, "{op}");
    }
    assert!(u(&r["ops"]["read_risk"]["served"], "source") >= 1);
    assert!(u(&r["ops"]["write_order"], "count") > 0);

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
    for op in READ_OPS {
        assert!(svg.contains(op), "{op} missing from the plot");
    }
}

#[test]
fn embedded_run_with_a_fault_window_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut args = SMALL.to_vec();
    args.extend([
        "--fault-window",
        "500ms..1500ms",
        "--verify",
        "--report",
        report.to_str().unwrap(),
    ]);
    let out = simulate_ok(&args);
    let stdout = text(&out.stdout);
    for needle in [
        "fault window: 0.500 s to 1.500 s from now",
        "fault window 0.5-1.5 s:",
        "verify: passed",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
    let r = read_report(&report);
    check_report(&r);
    let w = &r["fault_window"];
    assert_eq!((f(w, "start_s"), f(w, "end_s")), (0.5, 1.5));
    // A share of the run's calls, and no Redis: no breaker, recovered at once.
    assert!(u(w, "reads") > 0 && u(w, "reads") < u(&r, "reads"), "{w}");
    assert!(
        u(w, "writes") > 0 && u(w, "writes") < u(&r, "writes"),
        "{w}"
    );
    assert!(f(w, "read_p999_us") <= f(w, "read_max_us"));
    assert_eq!(u(w, "breaker_opened"), 0);
    assert_eq!(w["breaker_open_seen"], false);
    assert!(w["recovered_after_ms"].is_number(), "{w}");
    let v = &r["verify"];
    assert_eq!(v["passed"], true, "{v}");
    assert_eq!(v["recovered"], true, "{v}");
    // Every acknowledged order and position is checked against the source; without Redis
    // there is nothing to compare.
    let acked_orders = u(&r["ops"]["write_order"], "count") - u(&r["ops"]["write_order"], "errors");
    assert!(
        u(v, "acked_keys") > 0 && u(v, "acked_keys") <= acked_orders + 20,
        "{v}"
    );
    assert_eq!(u(v, "lost_acked_writes"), 0);
    assert_eq!(u(v, "l2_compared"), 0);
}

#[test]
fn layered_run_against_redis_and_postgres() {
    let redis = RedisServer::start();
    let database = support::pg::database_url();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut args = SMALL.to_vec();
    let (redis_url, report_s) = (redis.url(), report.to_str().unwrap());
    args.extend([
        "--redis",
        &redis_url,
        "--database",
        &database,
        "--report",
        report_s,
    ]);
    let out = simulate_ok(&args);
    assert!(
        text(&out.stdout).contains("layered"),
        "{}",
        text(&out.stdout)
    );

    let r = read_report(&report);
    check_report(&r);
    assert_eq!(r["backend"], "layered");
    assert_eq!(r["postgres"], true);
    assert_eq!(r["source"], "postgres");
    assert!(
        r["redis_url"]
            .as_str()
            .is_some_and(|u| u.contains("127.0.0.1"))
    );
    // The order flow went through the database.
    assert!(u(&r["tiers"], "source_writes") > 0, "{}", r["tiers"]);
    assert!(u(&r["ops"]["write_pos"], "count") > 0);
    // The seeded risk account was loaded from PostgreSQL at least once.
    assert!(
        u(&r["ops"]["read_risk"]["served"], "source") >= 1,
        "{}",
        r["ops"]["read_risk"]
    );
    // Unless a loaded machine made Redis miss its deadlines (then the breaker opened and the
    // run went on without it, which the report shows), the order rows reached Redis and are
    // still there (60 s TTL; market data may have expired since: 50–100 ms).
    if u(&r["breaker"], "opened") == 0 {
        assert!(redis.dbsize() > 0);
    }
}

/// Kills the child if the test fails half-way, so no 60 s run outlives it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_endpoint_answers_during_a_run_and_ctrl_c_ends_it_with_a_report() {
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let (addr_s, report_s) = (addr.to_string(), report.to_str().unwrap().to_owned());
    let mut args = SMALL.to_vec();
    // Long enough never to end by itself during the test: Ctrl-C (SIGINT) ends it.
    args[1] = "120s";
    args.extend(["--metrics-addr", &addr_s, "--report", &report_s]);
    let child = mdcache()
        .arg("simulate")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mdcache");
    let mut child = KillOnDrop(child);

    // Poll until the endpoint serves our counters; give up (and fail) after a minute.
    let give_up = Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Some(body) = scrape(addr).filter(|b| b.contains("mdcache_hits_total")) {
            break body;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("simulate exited early ({status})");
        }
        assert!(Instant::now() < give_up, "no metrics at {addr}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for name in [
        "mdcache_hits_total",
        "mdcache_misses_total",
        "mdcache_writes_total",
        "mdcache_source_loads_total",
        "mdcache_source_writes_total",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    for line in body.lines().filter(|l| l.starts_with("mdcache_")) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        // Histograms render as summaries with _sum and _count series.
        let base = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        assert!(
            mdcache::metrics::METRICS
                .iter()
                .any(|(n, _)| *n == name || *n == base),
            "undocumented metric {name}"
        );
    }

    let pid = Pid::from_raw(i32::try_from(child.0.id()).unwrap());
    signal::kill(pid, Signal::SIGINT).expect("send SIGINT");
    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("(interrupted)"), "{stdout}");
    let r = read_report(&report);
    check_report(&r);
    assert_eq!(r["interrupted"], true);
    assert_eq!(r["workload"]["duration_requested_s"], 120.0);
}

/// Exit `code`, nothing on stdout, one `mdcache: …` line on stderr containing `needle`.
#[track_caller]
fn assert_fails(args: &[&str], code: i32, needle: &str) {
    let out = mdcache()
        .arg("simulate")
        .args(args)
        .output()
        .expect("run mdcache");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stdout} {stderr}");
    assert!(stdout.is_empty(), "{args:?}: nothing on stdout: {stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line on stderr: {stderr}");
    assert!(lines[0].starts_with("mdcache: "), "{args:?}: {stderr}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: expected {needle:?}: {stderr}"
    );
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("r.json");
    let missing = missing.to_str().unwrap();
    for (args, needle) in [
        (vec!["--duration", "0"], "--duration"),
        (vec!["--duration", "10x"], "not a duration"),
        (vec!["--duration=-5s"], "--duration"),
        (vec!["--zipf", "-1"], "--zipf"),
        (vec!["--zipf", "abc"], "--zipf"),
        (vec!["--symbols", "0"], "--symbols"),
        (vec!["--readers", "0"], "--readers"),
        (vec!["--updates-per-s", "x"], "--updates-per-s"),
        (vec!["--metrics-addr", "not-an-address"], "--metrics-addr"),
        (vec!["--bogus"], "--bogus"),
        (vec!["--report", missing], "--report"),
        (vec!["--plot", missing], "--plot"),
        (vec!["--redis", "ftp://nope"], "--redis"),
        (vec!["--database", "postgres://h:notaport/db"], "--database"),
        (vec!["--fault-window", "3s"], "--fault-window"),
        (vec!["--fault-window", "3s..1s"], "--fault-window"),
        (
            vec!["--duration", "2s", "--fault-window", "1s..5s"],
            "--fault-window",
        ),
    ] {
        assert_fails(&args, 2, needle);
    }
}

#[test]
fn unreachable_backends_exit_3_with_one_line() {
    // Port 1: nothing listens there, connections are refused at once.
    assert_fails(
        &["--duration", "1s", "--redis", "redis://127.0.0.1:1/"],
        3,
        "Redis",
    );
    assert_fails(
        &[
            "--duration",
            "1s",
            "--database",
            "postgres://postgres@127.0.0.1:1/x",
        ],
        3,
        "database",
    );
}
