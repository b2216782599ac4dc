//! The fault scenarios under the `mdcache simulate` workload: one in `make test`, all of them, one at a time, in `make faults`.
//!
//! The binary runs as a child process against a throwaway Redis (or the proxy in front of it)
//! and PostgreSQL, with `--fault-window` and `--verify`; this side injects the fault (from
//! `support::faults`, as `tests/faults.rs` does) when the window opens and heals it when it
//! closes, then reads simulate's JSON report and checks its correctness figures. With
//! `MDCACHE_FAULTS_OUT` set, each scenario also saves its report there, from which
//! `examples/faults_report.rs` writes `docs/faults.md` and `docs/faults.json`.

mod support;

use std::time::{Duration, Instant};

use support::cli::mdcache;
use support::faults::settings::{OP_TIMEOUT, SIM_DURATION, SIM_WINDOW};
use support::faults::{Env, Fault, NO_HANG, SimChild};

/// Runs `mdcache simulate` under one fault (with `engines` engine instances beside the feed,
/// or one instance for 0) and returns its report; see `sim_scenario`.
fn run_simulate(
    fault: Fault,
    engines: u32,
    env: &mut Env,
) -> (serde_json::Value, std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let report_path = dir.path().join("report.json");
    let name = fault.name();
    let redis_args = env.redis_args();
    // `mdcache()` takes nothing from the host's environment: only the settings below.
    let mut cmd = mdcache();
    cmd.args(["simulate", "--quiet", "--verify"])
        .args(["--duration", SIM_DURATION])
        .arg("--fault-window")
        .arg(format!(
            "{}ms..{}ms",
            SIM_WINDOW.0.as_millis(),
            SIM_WINDOW.1.as_millis()
        ))
        // The feed and the order flow at simulate's defaults (20,000 updates/s, 500 orders/s):
        // the market-data writer must keep a healthy Redis from tripping the breaker at that
        // rate, and every fault is judged under it.
        .args(["--symbols", "50", "--readers", "4"])
        .args(if engines > 0 {
            vec!["--engines".to_owned(), engines.to_string()]
        } else {
            Vec::new()
        })
        .args(&redis_args)
        .arg("--database")
        .arg(env.pg.url())
        .arg("--report")
        .arg(&report_path)
        // The same settings as the in-process scenarios of tests/faults.rs.
        .env("CACHE_OP_TIMEOUT_MS", OP_TIMEOUT.as_millis().to_string())
        .env("CACHE_CONNECT_TIMEOUT_MS", "500")
        .env("CACHE_BREAKER_FAILURES", "5")
        .env("CACHE_BREAKER_OPEN_MS", "300")
        .env("CACHE_PROBE_TIMEOUT_MS", "100")
        .env(
            "RUST_LOG",
            std::env::var("MDCACHE_FAULTS_LOG").unwrap_or_else(|_| "mdcache=warn".into()),
        );
    let mut sim = SimChild::spawn(cmd);
    // The line that marks the start of the tasks (after seeding, which may take a while).
    let started = sim.wait_for_line("fault window:", Duration::from_secs(60), name);
    std::thread::sleep((started + SIM_WINDOW.0).saturating_duration_since(Instant::now()));
    fault.inject(env);
    while Instant::now() < started + SIM_WINDOW.1 {
        fault.during(env);
        std::thread::sleep(Duration::from_millis(50));
    }
    fault.heal(env);

    // simulate ends after its duration plus its bounded recovery wait and the checks.
    let (status, stdout, stderr) = sim.finish(Duration::from_secs(120), name);
    let text = std::fs::read_to_string(&report_path).unwrap_or_else(|e| {
        panic!("{name}: no report ({e}); exit {status}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
    let report: serde_json::Value = serde_json::from_str(&text).expect("report JSON");
    (
        report,
        status,
        format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
    )
}

/// One scenario under the simulate workload: runs it, saves the report for `make faults`
/// (when `MDCACHE_FAULTS_OUT` is set) and checks the correctness figures.
fn sim_scenario(fault: Fault) {
    sim_scenario_with(fault, 0);
}

/// [`sim_scenario`] with `engines` engine instances reading what one feed instance writes
/// (`simulate --engines`), each with its own L1, connections and breaker.
fn sim_scenario_with(fault: Fault, engines: u32) {
    let expect = fault.expect();
    let name = if engines > 0 {
        format!("{}, --engines {engines}", fault.name())
    } else {
        fault.name().to_owned()
    };
    let mut env = Env::start_for(fault);
    let (report, status, output) = run_simulate(fault, engines, &mut env);
    if let Ok(dir) = std::env::var("MDCACHE_FAULTS_OUT") {
        let file = format!(
            "{dir}/{}.json",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let row = serde_json::json!({ "scenario": name, "report": report });
        std::fs::write(&file, serde_json::to_string_pretty(&row).expect("json"))
            .unwrap_or_else(|e| panic!("write {file}: {e}"));
        let log = file.replace(".json", ".log");
        std::fs::write(&log, &output).unwrap_or_else(|e| panic!("write {log}: {e}"));
    }
    let ctx = || {
        format!(
            "{name}\n{}\n{output}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        )
    };
    let n = |v: &serde_json::Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("not a count: {v}; {}", ctx()))
    };

    // The correctness figures (simulate's --verify: exit 0 only when all are 0).
    let v = &report["verify"];
    assert_eq!(v["recovered"], true, "never recovered: {}", ctx());
    assert_eq!(
        n(&v["lost_acked_writes"]),
        0,
        "lost acknowledged writes: {}",
        ctx()
    );
    assert_eq!(
        n(&v["l2_differs_from_source"]),
        0,
        "stale Redis values: {}",
        ctx()
    );
    assert_eq!(n(&v["l2_unreadable"]), 0, "unreadable keys: {}", ctx());
    assert_eq!(n(&report["reads_past_ttl"]), 0, "reads past TTL: {}", ctx());
    assert!(
        n(&v["acked_keys"]) > 10,
        "the order flow barely ran: {}",
        ctx()
    );
    assert!(n(&v["l2_compared"]) > 0, "nothing compared: {}", ctx());
    assert!(status.success(), "simulate exited with {status}: {}", ctx());
    // Caller errors only where neither L1 nor the source could serve.
    let errors = &report["read_errors"];
    let unexplained = n(&errors["cache"])
        + n(&errors["overloaded"])
        + if expect.source_down {
            0
        } else {
            n(&errors["source"]) + n(&errors["source_timeout"])
        };
    assert_eq!(unexplained, 0, "caller-visible read errors: {}", ctx());
    if !expect.source_down {
        let write_errors =
            n(&report["ops"]["write_order"]["errors"]) + n(&report["ops"]["write_pos"]["errors"]);
        assert_eq!(
            write_errors,
            0,
            "writes failed while the database was up: {}",
            ctx()
        );
    }
    // No read hung (the source deadline is 500 ms; the L2 deadline 10 ms).
    for op in ["read_price", "read_book", "read_pos", "read_risk"] {
        let max = report["ops"][op]["max_us"].as_f64().unwrap_or(f64::MAX);
        assert!(
            max < NO_HANG.as_micros() as f64 * 2.0,
            "{op} took {max} µs: {}",
            ctx()
        );
    }
    let w = &report["fault_window"];
    assert!(n(&w["reads"]) > 100, "no load during the fault: {}", ctx());
    if expect.breaker_opens {
        assert!(
            w["breaker_open_seen"] == true || n(&w["breaker_opened"]) >= 1,
            "breaker never opened: {}",
            ctx()
        );
    }
    assert_eq!(report["breaker"]["state"], "closed", "{}", ctx());
    drop(env);
}

#[test]
fn simulate_redis_killed_then_restarted_empty() {
    sim_scenario(Fault::RedisKilled);
}

#[test]
#[ignore = "run by `make faults`"]
fn simulate_redis_hung_then_resumed() {
    sim_scenario(Fault::RedisHung);
}

#[test]
#[ignore = "run by `make faults`"]
fn simulate_redis_20ms_slower_than_the_deadline() {
    sim_scenario(Fault::RedisSlow);
}

#[test]
#[ignore = "run by `make faults`"]
fn simulate_redis_connections_reset() {
    sim_scenario(Fault::ConnectionResets);
}

#[test]
#[ignore = "run by `make faults`"]
fn simulate_postgres_stopped() {
    sim_scenario(Fault::PostgresStopped);
}

#[test]
#[ignore = "run by `make faults`"]
fn simulate_redis_and_postgres_both_down() {
    sim_scenario(Fault::BothDown);
}

#[test]
#[ignore = "run by `make faults`"]
fn simulate_redis_killed_then_restarted_empty_with_two_engines() {
    sim_scenario_with(Fault::RedisKilled, 2);
}

#[test]
#[ignore = "run by `make faults`"]
fn simulate_backplane_subscriber_killed_with_two_engines() {
    sim_scenario_with(Fault::SubscriberKilled, 2);
}

#[test]
#[ignore = "run by `make faults`"]
fn simulate_cluster_manual_failover() {
    sim_scenario(Fault::ClusterFailover);
}

#[test]
#[ignore = "run by `make faults`"]
fn simulate_cluster_primary_hung() {
    sim_scenario(Fault::ClusterPrimaryHung);
}
