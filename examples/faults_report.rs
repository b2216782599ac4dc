//! Writes `docs/faults.md` and `docs/faults.json` from the fault runs' reports: the last step of `make faults`.
//!
//! Reads every `*.json` in `$MDCACHE_FAULTS_OUT`, where each `simulate_*` scenario of
//! `tests/faults_simulate.rs` saved `{"scenario": NAME, "report": SIMULATE_REPORT}`, and
//! tabulates them, one row a scenario in name order. The two files go to the directory given
//! as the only argument, else to the crate's `docs/`.
//!
//! ```text
//! MDCACHE_FAULTS_OUT=target/faults cargo run --release --example faults_report [DIR]
//! ```

// The settings the runs used, from the harness itself, so the text cannot drift from them.
#[path = "../tests/support/faults/settings.rs"]
mod settings;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;
use settings::{OP_TIMEOUT, SIM_DURATION, SIM_WINDOW};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faults_report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let dir = std::env::var("MDCACHE_FAULTS_OUT")
        .map_err(|_| "set MDCACHE_FAULTS_OUT to the scenarios' report directory".to_owned())?;
    let out = std::env::args_os().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"),
        PathBuf::from,
    );
    let rows = read_rows(Path::new(&dir))?;
    let md_path = out.join("faults.md");
    std::fs::write(&md_path, markdown(&rows))
        .map_err(|e| format!("write {}: {e}", md_path.display()))?;
    let json = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
    let json_path = out.join("faults.json");
    std::fs::write(&json_path, json + "\n")
        .map_err(|e| format!("write {}: {e}", json_path.display()))?;
    println!(
        "faults_report: {} scenarios into {} and {}",
        rows.len(),
        md_path.display(),
        json_path.display()
    );
    Ok(())
}

/// Every scenario's row in `dir`, sorted by scenario name.
fn read_rows(dir: &Path) -> Result<Vec<Value>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    let mut rows = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let row: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(format!("no scenario reports in {}", dir.display()));
    }
    rows.sort_by_key(|r| r["scenario"].as_str().unwrap_or_default().to_owned());
    Ok(rows)
}

/// `docs/faults.md`: how the runs were made, what the figures mean, and one row a scenario.
fn markdown(rows: &[Value]) -> String {
    let u = |v: &Value| v.as_u64().unwrap_or_default();
    let f = |v: &Value| v.as_f64().unwrap_or_default();
    let mut md = format!(
        "# Fault-injection results\n\n\
         Produced by `make faults`: each scenario runs `mdcache simulate` (release build) \
         against a throwaway redis-server (through a TCP proxy for the latency and reset \
         scenarios; the `cluster:` scenarios against a local cluster of 3 primaries and 3 \
         replicas, `--redis-cluster NODES`, with `cluster-node-timeout` 1000 ms) and a \
         throwaway PostgreSQL, with\n\n\
         ```\n\
         mdcache simulate --duration {SIM_DURATION} --fault-window {}ms..{}ms --verify \\\n    \
         --symbols 50 --readers 4 \\\n    \
         --redis URL --database URL --report FILE\n\
         CACHE_OP_TIMEOUT_MS={} CACHE_BREAKER_FAILURES=5 CACHE_BREAKER_OPEN_MS=300 CACHE_PROBE_TIMEOUT_MS=100\n\
         ```\n\n\
         The harness (`tests/faults_simulate.rs`, `simulate_*`) injects the fault when the window opens \
         and heals it when it closes; simulate measures everything below itself (its report's \
         `fault_window` and `verify` objects, defined in `docs/simulate.md`). Reads: cache-aside \
         `price`, `book` top-5 (both may be served stale up to 1 s), `pos` and `risk` (fail \
         closed); the feed writes prices and books to the cache only; the order flow writes \
         orders and positions through write-through. Source deadline 500 ms (reads), 1 s \
         (writes).\n\n\
         Correctness figures (all must be 0; `--verify` exits 4 and the test fails otherwise): \
         reads served past their TTL without being marked stale, acknowledged writes missing \
         from the database, Redis values of positions, orders and risk that differ from the \
         database after recovery. Read errors may only be the source's own, and only while \
         the database is down.\n\n\
         | scenario | reads during fault | read errors during fault | p99.9 read during fault (µs) | max read during fault (µs) | stale served | past TTL | write-through acked / failed | lost acked writes | stale L2 after recovery (compared) | breaker opened | fault end → breaker closed, dirty log empty (ms) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        SIM_WINDOW.0.as_millis(),
        SIM_WINDOW.1.as_millis(),
        OP_TIMEOUT.as_millis(),
    );
    for row in rows {
        let r = &row["report"];
        let w = &r["fault_window"];
        let v = &r["verify"];
        let through = ["write_order", "write_pos"];
        let calls: u64 = through.iter().map(|op| u(&r["ops"][op]["count"])).sum();
        let failed: u64 = through.iter().map(|op| u(&r["ops"][op]["errors"])).sum();
        let errors: Vec<String> = ["source", "source_timeout", "overloaded", "cache"]
            .iter()
            .filter(|k| u(&w["read_errors"][**k]) > 0)
            .map(|k| format!("{k} {}", u(&w["read_errors"][*k])))
            .collect();
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} / {} | {} | {} ({}) | {} | {} |\n",
            row["scenario"].as_str().unwrap_or_default(),
            u(&w["reads"]),
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(", ")
            },
            f(&w["read_p999_us"]),
            f(&w["read_max_us"]),
            u(&w["stale_served"]),
            u(&r["reads_past_ttl"]),
            calls - failed,
            failed,
            u(&v["lost_acked_writes"]),
            u(&v["l2_differs_from_source"]),
            u(&v["l2_compared"]),
            breaker_cell(&w["breaker_opened"], &r["breaker"]["shards"]),
            w["recovered_after_ms"]
                .as_f64()
                .map_or_else(|| "not within 30 s".to_owned(), |ms| format!("{ms:.0}")),
        ));
    }
    md.push_str(
        "\nOn a cluster every shard has its own breaker: \"breaker opened\" adds them up, \
         and names the shards (by lowest hash slot) that opened over the whole run.\n",
    );
    md.push_str(
        "\nRead errors while PostgreSQL is down are fail-closed `pos` and `risk` reads whose \
         L1 entry had expired (`source`: the database refused; `source_timeout`: no answer \
         within 500 ms): the design's intended outcome, not a defect. The same reports, whole, \
         are in `docs/faults.json`.\n",
    );
    md
}

/// The "breaker opened" cell: the count, and on a cluster which shards opened (by lowest
/// slot) over the run.
fn breaker_cell(opened: &Value, shards: &Value) -> String {
    let u = |v: &Value| v.as_u64().unwrap_or_default();
    let named: Vec<String> = shards
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|s| u(&s["opened"]) > 0)
                .map(|s| format!("{} × shard {}", u(&s["opened"]), u(&s["first_slot"])))
                .collect()
        })
        .unwrap_or_default();
    if named.is_empty() {
        u(opened).to_string()
    } else {
        format!("{} ({})", u(opened), named.join(", "))
    }
}
