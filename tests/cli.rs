//! The `mdcache` binary end to end against real redis-server and PostgreSQL processes: output, exit statuses (0 found, 1 not found, 2 invalid input, 3 backend unavailable) and one-line errors.

mod support;

#[path = "support/fixtures.rs"]
mod fixtures;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fixtures::uid;
use serde_json::Value;
use support::RedisServer;
use support::cli::mdcache;
use support::pg::{self, PgServer};

const KINDS: [&str; 7] = [
    "price", "pos", "book:bid", "book:ask", "risk", "ord", "strat",
];

/// Upper bound for "fails fast" against a dead or hung server. Generous on purpose: it only
/// has to tell "bounded by the deadline" from "hangs on a 5 s socket timeout or forever".
const QUICK: Duration = Duration::from_secs(5);

/// Long TTLs for every kind, so a value written by one process is still there when the next
/// one reads it, however slow the machine (the defaults are 50–100 ms for market data).
const LONG_TTLS: [(&str, &str); 5] = [
    ("CACHE_TTL_PRICE_MS", "60000"),
    ("CACHE_TTL_POS_MS", "60000"),
    ("CACHE_TTL_BOOK_MS", "60000"),
    ("CACHE_TTL_RISK_MS", "60000"),
    ("CACHE_TTL_STRAT_MS", "60000"),
];

/// What one run of the binary did.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Out {
    /// Stdout as JSON (one object on one line).
    #[track_caller]
    fn json(&self) -> Value {
        assert_eq!(self.stdout.lines().count(), 1, "one line of JSON: {self:?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// Exit 0, and stdout as JSON.
    #[track_caller]
    fn ok_json(&self) -> Value {
        assert_eq!(self.code, Some(0), "{self:?}");
        self.json()
    }

    /// Exit `code`, whatever was printed.
    #[track_caller]
    fn assert_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{self:?}");
    }

    /// Exit `code`, nothing on stdout, and exactly one `mdcache: …` line on stderr that
    /// contains `needle`.
    #[track_caller]
    fn assert_error(&self, code: i32, needle: &str) {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert!(self.stdout.is_empty(), "nothing on stdout: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr must be exactly one line: {self:?}");
        assert!(lines[0].starts_with("mdcache: "), "{self:?}");
        assert!(lines[0].contains(needle), "expected {needle:?}: {self:?}");
    }
}

#[track_caller]
fn run(cmd: &mut Command) -> Out {
    let start = Instant::now();
    let out = cmd.output().expect("run the mdcache binary");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
        elapsed: start.elapsed(),
    }
}

/// `mdcache --redis URL ARGS…`.
#[track_caller]
fn cli(server: &RedisServer, args: &[&str]) -> Out {
    run(mdcache().arg("--redis").arg(server.url()).args(args))
}

/// `mdcache ARGS…` with no Redis address anywhere.
#[track_caller]
fn bare(args: &[&str]) -> Out {
    run(mdcache().args(args))
}

/// `mdcache example KIND`, as the string to pass to `put`.
#[track_caller]
fn example(kind: &str) -> String {
    let out = bare(&["example", kind]);
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout.trim().to_owned()
}

/// A raw command on the server, outside mdcache.
fn redis_cmd<T: redis::FromRedisValue>(server: &RedisServer, cmd: &mut redis::Cmd) -> T {
    let mut con = server
        .client()
        .get_connection_with_timeout(QUICK)
        .expect("connect to test redis-server");
    cmd.query(&mut con).expect("raw redis command")
}

#[test]
fn put_then_get_round_trips_every_kind() {
    let server = RedisServer::start();
    for (i, kind) in KINDS.into_iter().enumerate() {
        let value = example(kind);
        let version = 1_000 + i as u64;
        let v = version.to_string();
        let put = run(mdcache().envs(LONG_TTLS).args([
            "--redis",
            &server.url(),
            "put",
            kind,
            "AAPL",
            &value,
            "--version",
            &v,
        ]));
        let put = put.ok_json();
        let key = put["key"].as_str().expect("key").to_owned();
        assert!(key.starts_with("mdc:") && key.contains("{AAPL}"), "{put}");
        assert_eq!(put["version"], version, "{put}");
        assert_eq!(put["outcome"], "applied", "{put}");

        let got =
            run(mdcache()
                .envs(LONG_TTLS)
                .args(["--redis", &server.url(), "get", kind, "AAPL"]))
            .ok_json();
        assert_eq!(got["key"], key.as_str(), "{got}");
        assert_eq!(got["kind"], kind, "{got}");
        assert_eq!(got["version"], version, "{got}");
        assert_eq!(got["tier"], "l2", "{got}");
        let expected: Value = serde_json::from_str(&value).unwrap();
        assert_eq!(got["value"], expected, "{kind}: value changed on the way");
        let ttl_ms = got["ttl_ms"].as_u64().expect("ttl_ms is a number");
        assert!(ttl_ms > 0 && ttl_ms <= 60_000, "{got}");
        assert!(got["age_ms"].is_u64(), "{got}");
    }
    for kind in KINDS {
        let del = cli(&server, &["del", kind, "AAPL"]).ok_json();
        assert_eq!(
            del["key"].as_str().map(|k| k.contains("{AAPL}")),
            Some(true),
            "{del}"
        );
        assert_eq!(del["deleted"], true, "{del}");
        cli(&server, &["get", kind, "AAPL"]).assert_error(1, "not found");
    }
    // A book's version key goes with it: nothing is left behind.
    assert_eq!(server.dbsize(), 0);
    // Deleting what is not there is not an error, and says so.
    for kind in ["price", "book:ask"] {
        let del = cli(&server, &["del", kind, "NOPE"]).ok_json();
        assert_eq!(del["deleted"], false, "{del}");
    }
}

#[test]
fn get_and_ttl_of_a_missing_key_exit_1() {
    let server = RedisServer::start();
    cli(&server, &["get", "price", "NOPE"]).assert_error(1, "mdc:price:{NOPE} not found");
    cli(&server, &["get", "book:ask", "NOPE"]).assert_error(1, "not found");
    cli(&server, &["ttl", "ord", "NOPE"]).assert_error(1, "not found");
    cli(&server, &["ttl", "book:bid", "NOPE"]).assert_error(1, "not found");
}

#[test]
fn ttl_reports_the_remaining_lifetime() {
    let server = RedisServer::start();
    // The kind's TTL (ord: 60 s).
    cli(&server, &["put", "ord", "O1", &example("ord")]).ok_json();
    let ttl = cli(&server, &["ttl", "ord", "O1"]).ok_json();
    assert_eq!(ttl["key"], "mdc:ord:{O1}");
    let ms = ttl["ttl_ms"].as_u64().expect("a number");
    assert!(ms > 0 && ms <= 60_000, "{ttl}");

    // A per-write override, here longer than the kind's (pos: 1 s).
    let put = cli(
        &server,
        &["put", "pos", "P1", &example("pos"), "--ttl-ms", "1500"],
    );
    assert_eq!(put.ok_json()["outcome"], "applied");
    let ms = cli(&server, &["ttl", "pos", "P1"]).ok_json()["ttl_ms"]
        .as_u64()
        .expect("a number");
    assert!(ms > 0 && ms <= 1500, "{ms}");

    // A book's TTL is its version key's.
    run(mdcache()
        .envs(LONG_TTLS)
        .args(["--redis", &server.url(), "put", "book:bid", "B1", "[]"]))
    .ok_json();
    let ms = cli(&server, &["ttl", "book:bid", "B1"]).ok_json()["ttl_ms"]
        .as_u64()
        .expect("a number");
    assert!(ms > 0 && ms <= 60_000, "{ms}");

    // A key someone wrote without an expiry.
    let () = redis_cmd(&server, redis::cmd("SET").arg("mdc:ord:{P}").arg("x"));
    let ttl = cli(&server, &["ttl", "ord", "P"]).ok_json();
    assert_eq!(ttl["ttl_ms"], Value::Null, "{ttl}");
}

#[test]
fn get_shows_a_ttl_override() {
    let server = RedisServer::start();
    cli(
        &server,
        &["put", "price", "X", &example("price"), "--ttl-ms", "1500"],
    )
    .ok_json();
    let got = cli(&server, &["get", "price", "X"]).ok_json();
    let ms = got["ttl_ms"].as_u64().expect("a number");
    assert!(ms > 0 && ms <= 1500, "{got}");
}

#[test]
fn a_lower_version_is_superseded() {
    let server = RedisServer::start();
    let env = LONG_TTLS;
    let url = server.url();
    for kind in ["price", "book:bid"] {
        let value = example(kind);
        let put = |v: &str| {
            run(mdcache().envs(env).args([
                "--redis",
                &url,
                "put",
                kind,
                "S",
                &value,
                "--version",
                v,
            ]))
            .ok_json()
        };
        assert_eq!(put("5")["outcome"], "applied");
        let second = put("3");
        assert_eq!(second["outcome"], "superseded", "{kind}");
        assert_eq!(second["version"], 3);
        let got = run(mdcache()
            .envs(env)
            .args(["--redis", &url, "get", kind, "S"]))
        .ok_json();
        assert_eq!(got["version"], 5, "{kind}");
    }
}

#[test]
fn the_default_version_increases_from_put_to_put() {
    let server = RedisServer::start();
    let value = example("ord");
    let first = cli(&server, &["put", "ord", "V", &value]).ok_json();
    let second = cli(&server, &["put", "ord", "V", &value]).ok_json();
    assert_eq!(second["outcome"], "applied");
    let (a, b) = (first["version"].as_u64(), second["version"].as_u64());
    assert!(a.is_some() && b > a, "{first} then {second}");
    assert_eq!(
        cli(&server, &["get", "ord", "V"]).ok_json()["version"],
        second["version"]
    );
}

#[test]
fn json_from_stdin() {
    let server = RedisServer::start();
    let mut child = mdcache()
        .args(["--redis", &server.url(), "put", "strat", "S1", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(example("strat").as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        cli(&server, &["get", "strat", "S1"]).ok_json()["kind"],
        "strat"
    );
}

#[test]
fn unknown_kind_exits_2() {
    let server = RedisServer::start();
    for cmd in ["get", "del", "ttl"] {
        cli(&server, &[cmd, "bogus", "X"]).assert_error(2, "bogus");
    }
    cli(&server, &["put", "book", "X", "[]"]).assert_error(2, "possible values");
    bare(&["example", "prices"]).assert_error(2, "prices");
    assert_eq!(server.dbsize(), 0);
}

#[test]
fn invalid_ids_exit_2_and_send_nothing() {
    let server = RedisServer::start();
    cli(&server, &["put", "ord", "KEEP", &example("ord")]).ok_json();
    let too_long = "x".repeat(129);
    let bad_ids = [
        "a b", "a:b", "", "{x}", "a*b", "a?b", "a[b]", "a\\b", "a\tb", &too_long,
    ];
    for id in bad_ids {
        for kind in ["ord", "book:ask"] {
            let value = example(kind);
            cli(&server, &["put", kind, id, &value]).assert_error(2, "invalid key id");
            cli(&server, &["get", kind, id]).assert_error(2, "invalid key id");
            cli(&server, &["del", kind, id]).assert_error(2, "invalid key id");
            cli(&server, &["ttl", kind, id]).assert_error(2, "invalid key id");
        }
    }
    assert_eq!(server.dbsize(), 1, "a refused id must not write anything");
}

#[test]
fn invalid_ids_are_refused_even_without_redis() {
    // Validation comes before any I/O: a dead address does not turn exit 2 into exit 3.
    let out = run(mdcache().args(["--redis", "redis://127.0.0.1:1/", "get", "price", "a b"]));
    out.assert_error(2, "whitespace");
    assert!(out.elapsed < QUICK, "{out:?}");
}

#[test]
fn bad_values_exit_2_and_write_nothing() {
    let server = RedisServer::start();
    let cases: [(&str, &str, &str); 9] = [
        ("price", "{not json", "invalid JSON for price"),
        ("price", "", "invalid JSON for price"),
        ("price", r#"{"bid": 1.0}"#, "missing field"),
        (
            "pos",
            r#"{"qty":1,"avg_price":1,"realized_pnl":0,"seq":1,"extra":2}"#,
            "unknown field",
        ),
        (
            "ord",
            r#"{"id":"o","symbol":"A","side":"up","px":1,"qty":1,"filled":0,"status":"new","seq":1}"#,
            "invalid JSON for ord",
        ),
        ("risk", "[1, 2]", "invalid JSON for risk"),
        (
            "book:bid",
            r#"{"price": 1, "qty": 1}"#,
            "invalid JSON for book:bid",
        ),
        (
            "book:bid",
            r#"[{"price": 1, "qty": 1}, {"price": 1, "qty": 2}]"#,
            "appears twice",
        ),
        ("book:ask", r#"[{"price": 1, "qty": -1}]"#, "invalid value"),
    ];
    for (kind, json, needle) in cases {
        cli(&server, &["put", kind, "X", json]).assert_error(2, needle);
    }
    // A price example is not an order.
    cli(&server, &["put", "ord", "X", &example("price")]).assert_error(2, "invalid JSON for ord");
    assert_eq!(server.dbsize(), 0);
}

#[test]
fn an_oversize_value_exits_2() {
    let server = RedisServer::start();
    // Above the 1 MiB envelope limit; through stdin since one argument may not exceed 128 KiB.
    let json = format!(
        r#"{{"id":"s","params":{{}},"status":"{}","seq":1}}"#,
        "x".repeat(1_100_000)
    );
    let mut child = mdcache()
        .args(["--redis", &server.url(), "put", "strat", "BIG", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(json.as_bytes()).expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    let out = Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: Duration::ZERO,
    };
    out.assert_error(2, "exceeds");
    assert_eq!(server.dbsize(), 0);
}

#[test]
fn ttl_override_on_a_book() {
    let server = RedisServer::start();
    let url = server.url();
    for kind in ["book:bid", "book:ask"] {
        let value = example(kind);
        // The kind's TTL is a minute; the override, shorter, must win.
        let put = run(mdcache().envs(LONG_TTLS).args([
            "--redis", &url, "put", kind, "X", &value, "--ttl-ms", "1500",
        ]));
        assert_eq!(put.ok_json()["outcome"], "applied");
        let ms = cli(&server, &["ttl", kind, "X"]).ok_json()["ttl_ms"]
            .as_u64()
            .expect("a number");
        assert!(ms > 0 && ms <= 1500, "{kind}: {ms}");
        let got = run(mdcache()
            .envs(LONG_TTLS)
            .args(["--redis", &url, "get", kind, "X"]))
        .ok_json();
        let ms = got["ttl_ms"].as_u64().expect("a number");
        assert!(ms > 0 && ms <= 1500, "{got}");
    }
}

#[test]
fn no_redis_address_exits_2() {
    let value = example("pos");
    for args in [
        &["get", "price", "X"][..],
        &["put", "pos", "X", &value],
        &["ttl", "ord", "X"],
    ] {
        let out = bare(args);
        out.assert_error(2, "no Redis address");
        assert_eq!(
            out.stderr,
            "mdcache: no Redis address: pass --redis URL (or --redis-cluster NODES) or set CACHE_REDIS_URL (or CACHE_REDIS_CLUSTER)\n"
        );
    }
}

#[test]
fn invalid_configuration_exits_2_naming_the_variable() {
    let out = run(mdcache().env("CACHE_OP_TIMEOUT_MS", "abc").args([
        "--redis",
        "redis://127.0.0.1:1/",
        "get",
        "price",
        "X",
    ]));
    out.assert_error(2, "CACHE_OP_TIMEOUT_MS");
    let out = run(mdcache().env("CACHE_NAMESPACE", "a:b").args([
        "--redis",
        "redis://127.0.0.1:1/",
        "get",
        "price",
        "X",
    ]));
    out.assert_error(2, "CACHE_NAMESPACE");
    let out = run(mdcache()
        .env("CACHE_NAMESPACE", OsStr::from_bytes(b"\xff"))
        .args(["--redis", "redis://127.0.0.1:1/", "get", "price", "X"]));
    out.assert_error(2, "CACHE_NAMESPACE");
    bare(&["--redis", "http://example.com/", "get", "price", "X"]).assert_error(2, "--redis");
    let out = run(mdcache()
        .env("CACHE_REDIS_URL", "http://example.com/")
        .args(["get", "price", "X"]));
    out.assert_error(2, "CACHE_REDIS_URL");
}

#[test]
fn the_environment_configures_the_tool() {
    let server = RedisServer::start();
    let value = example("ord");
    // CACHE_REDIS_URL instead of --redis, and a namespace.
    let put = run(mdcache()
        .env("CACHE_REDIS_URL", server.url())
        .env("CACHE_NAMESPACE", "test")
        .args(["put", "ord", "E", &value]));
    assert_eq!(put.ok_json()["key"], "test:ord:{E}");
    // CACHE_ADDRESS / CACHE_PORT.
    let got = run(mdcache()
        .env("CACHE_ADDRESS", "127.0.0.1")
        .env("CACHE_PORT", server.port().to_string())
        .env("CACHE_NAMESPACE", "test")
        .args(["get", "ord", "E"]));
    assert_eq!(got.ok_json()["key"], "test:ord:{E}");
    // --redis wins over the environment.
    let got = run(mdcache()
        .env("CACHE_REDIS_URL", "redis://127.0.0.1:1/")
        .env("CACHE_NAMESPACE", "test")
        .args(["--redis", &server.url(), "get", "ord", "E"]));
    assert_eq!(got.ok_json()["tier"], "l2");
    // CACHE_BACKEND does not matter: the key commands always talk to Redis alone.
    let got = run(mdcache()
        .env("CACHE_BACKEND", "memory")
        .env("CACHE_NAMESPACE", "test")
        .args(["--redis", &server.url(), "get", "ord", "E"]));
    assert_eq!(got.ok_json()["tier"], "l2");
    // An unrelated variable that is not UTF-8 must not break anything.
    let got = run(mdcache()
        .env("MDCACHE_TEST_BINARY_VAR", OsStr::from_bytes(b"\xff\xfe"))
        .env("CACHE_NAMESPACE", "test")
        .args(["--redis", &server.url(), "get", "ord", "E"]));
    assert_eq!(got.ok_json()["version"], put.json()["version"]);
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    bare(&["--bogus"]).assert_error(2, "--bogus");
    bare(&["get", "price"]).assert_error(2, "<ID>");
    bare(&["get", "price", "X", "extra"]).assert_error(2, "extra");
    bare(&["put", "pos", "X", "{}", "--ttl-ms", "0"]).assert_error(2, "--ttl-ms");
    bare(&["put", "pos", "X", "{}", "--version=-1"]).assert_error(2, "--version");
    bare(&["--timeout-ms", "0", "get", "price", "X"]).assert_error(2, "--timeout-ms");
    bare(&["frobnicate"]).assert_error(2, "frobnicate");
    // No command at all: clap's help on stderr, exit 2.
    let out = bare(&[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("Usage"), "{out:?}");

    for args in [
        &["--help"][..],
        &["put", "--help"],
        &["demo", "--help"],
        &["--version"],
    ] {
        let out = bare(args);
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(!out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    }
    assert!(bare(&["put", "--help"]).stdout.contains("microseconds"));
}

#[test]
fn example_prints_a_value_for_every_kind() {
    for kind in KINDS {
        let out = bare(&["example", kind]);
        let v = out.ok_json();
        if kind.starts_with("book:") {
            assert!(v.is_array(), "{kind}: {v}");
        } else {
            assert!(v.is_object(), "{kind}: {v}");
        }
    }
}

#[test]
fn a_killed_server_exits_3_quickly() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let value = example("price");
    for args in [
        &["get", "price", "X"][..],
        &["put", "price", "X", &value],
        &["del", "book:bid", "X"],
        &["ttl", "ord", "X"],
    ] {
        let out = run(mdcache().arg("--redis").arg(&url).args(args));
        out.assert_error(3, "");
        assert!(out.elapsed < QUICK, "{args:?} took {:?}", out.elapsed);
        if args[0] == "put" {
            // Nothing was cached: a value only this (exiting) process held does not count.
            assert!(
                out.stderr
                    .contains("Redis unavailable: the value was not cached"),
                "{out:?}"
            );
        }
    }
}

#[test]
fn a_closed_port_exits_3_quickly() {
    let out = run(mdcache().args(["--redis", "redis://127.0.0.1:1/", "get", "price", "X"]));
    out.assert_error(3, "");
    // Reported as the refusal itself, or (when retries use up the deadline) as a timeout.
    assert!(
        out.stderr.contains("refused") || out.stderr.contains("timed out"),
        "{out:?}"
    );
    assert!(out.elapsed < QUICK, "took {:?}", out.elapsed);
}

#[test]
fn a_paused_server_exits_3_within_the_timeout() {
    let server = RedisServer::start();
    cli(&server, &["put", "ord", "H", &example("ord")]).ok_json();
    server.pause();
    let value = example("ord");
    for args in [
        &["get", "ord", "H"][..],
        &["put", "ord", "H", &value],
        &["ttl", "ord", "H"],
    ] {
        let out = run(mdcache()
            .args(["--redis", &server.url(), "--timeout-ms", "200"])
            .args(args));
        out.assert_error(3, "timed out");
        assert!(out.elapsed < QUICK, "{args:?} took {:?}", out.elapsed);
    }
    server.resume();
    assert_eq!(cli(&server, &["get", "ord", "H"]).ok_json()["tier"], "l2");
}

#[test]
fn undecodable_and_wrong_type_keys() {
    let server = RedisServer::start();
    // Another program's bytes at a value key: never served, reported as not found.
    let () = redis_cmd(
        &server,
        redis::cmd("SET").arg("mdc:price:{G}").arg("garbage"),
    );
    let out = cli(&server, &["get", "price", "G"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("does not decode as price"), "{out:?}");
    // A string where a book's sorted set belongs: Redis refuses (exit 3).
    let () = redis_cmd(
        &server,
        redis::cmd("SET").arg("mdc:book:{G}:bid").arg("garbage"),
    );
    cli(&server, &["get", "book:bid", "G"]).assert_error(3, "wrong Redis type");
    cli(&server, &["put", "book:bid", "G", "[]"]).assert_error(3, "wrong Redis type");
}

#[test]
fn demo_runs_embedded_and_layered() {
    let out = bare(&["demo", "--duration-ms", "300", "--symbols", "5"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut lines = out.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("mdcache demo (embedded: in-process L1 only)")
    );
    assert!(out.stdout.contains("hit rate"), "{out:?}");
    assert!(out.stdout.contains("p99"), "{out:?}");

    let server = RedisServer::start();
    let out = cli(&server, &["demo", "--duration-ms", "300", "--symbols", "5"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let header = format!("mdcache demo (layered: L1 + Redis at {})", server.url());
    assert_eq!(out.stdout.lines().next(), Some(header.as_str()), "{out:?}");
    assert!(
        server.dbsize() > 0,
        "the layered demo writes through to Redis"
    );

    let out = run(mdcache().args([
        "--redis",
        "redis://127.0.0.1:1/",
        "demo",
        "--duration-ms",
        "100",
    ]));
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.elapsed < QUICK, "{out:?}");
}

// ---- With a database (--database / DATABASE_URL): read-through and write-through ----

/// Deadline for healthy-path database tests: generous, so a loaded machine never turns a
/// healthy call into a failure (it only bounds how long a broken run hangs).
const HEALTHY_TIMEOUT_MS: &str = "10000";

/// `mdcache --database DB [--redis URL] --timeout-ms 10000 ARGS…` with long TTLs.
#[track_caller]
fn db_cli(redis: Option<&RedisServer>, db: &str, args: &[&str]) -> Out {
    let mut cmd = mdcache();
    cmd.envs(LONG_TTLS)
        .args(["--database", db, "--timeout-ms", HEALTHY_TIMEOUT_MS]);
    if let Some(server) = redis {
        cmd.arg("--redis").arg(server.url());
    }
    run(cmd.args(args))
}

/// `mdcache --redis URL ARGS…` with long TTLs: the cache alone, no database.
#[track_caller]
fn cache_cli(server: &RedisServer, args: &[&str]) -> Out {
    run(mdcache()
        .envs(LONG_TTLS)
        .arg("--redis")
        .arg(server.url())
        .args(args))
}

/// Runs SQL on the database at `url`, outside mdcache.
fn sql(url: &str, statements: &str) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
        .block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect to test postgres");
            tokio::spawn(connection);
            client.batch_execute(statements).await.expect("run SQL");
        });
}

#[test]
fn database_get_reads_through_and_put_writes_through() {
    let server = RedisServer::start();
    let db = pg::database_url();
    for kind in KINDS {
        let id = uid("RT");
        let value = example(kind);
        let expected: Value = serde_json::from_str(&value).unwrap();

        // put: the database assigns the version, and the cache is filled with it.
        let put = db_cli(Some(&server), &db, &["put", kind, &id, &value]).ok_json();
        assert_eq!(put["outcome"], "applied", "{kind}: {put}");
        let version = put["version"].as_u64().expect("a version");
        assert!(version > 0, "{put}");
        let key = put["key"].as_str().expect("key").to_owned();

        let got = db_cli(Some(&server), &db, &["get", kind, &id]).ok_json();
        assert_eq!(
            (&got["tier"], &got["version"]),
            (&"l2".into(), &version.into()),
            "{got}"
        );
        assert_eq!(got["key"], key.as_str(), "{got}");
        assert_eq!(got["value"], expected, "{kind}: value changed on the way");

        // Gone from the cache: loaded from the database, and the cache filled again.
        assert_eq!(
            cache_cli(&server, &["del", kind, &id]).ok_json()["deleted"],
            true
        );
        cache_cli(&server, &["get", kind, &id]).assert_error(1, "not found");
        let got = db_cli(Some(&server), &db, &["get", kind, &id]).ok_json();
        assert_eq!(got["tier"], "source", "{kind}: {got}");
        assert_eq!(got["version"], version, "{got}");
        assert_eq!(
            got["value"], expected,
            "{kind}: value changed in the database"
        );
        let ttl_ms = got["ttl_ms"].as_u64().expect("ttl_ms is a number");
        assert!(ttl_ms > 0 && ttl_ms <= 60_000, "{got}");
        let got = db_cli(Some(&server), &db, &["get", kind, &id]).ok_json();
        assert_eq!(got["tier"], "l2", "{kind}: {got}");
        assert_eq!(got["version"], version, "{got}");
        // ... where the cache alone sees it too.
        let got = cache_cli(&server, &["get", kind, &id]).ok_json();
        assert_eq!(got["version"], version, "{got}");

        // A second put gets a higher version from the database.
        let again = db_cli(Some(&server), &db, &["put", kind, &id, &value]).ok_json();
        assert_eq!(again["outcome"], "applied", "{again}");
        assert!(
            again["version"].as_u64() > Some(version),
            "{put} then {again}"
        );
    }
}

#[test]
fn database_without_redis_always_reads_from_the_source() {
    let db = pg::database_url();
    for kind in ["pos", "book:ask"] {
        let id = uid("NR");
        let value = example(kind);
        let put = run(mdcache()
            .args(["--database", &db, "--timeout-ms", HEALTHY_TIMEOUT_MS])
            .args(["put", kind, &id, &value]))
        .ok_json();
        assert_eq!(put["outcome"], "applied", "{put}");
        for _ in 0..2 {
            // DATABASE_URL works as well as --database.
            let got = run(mdcache().env("DATABASE_URL", &db).args([
                "--timeout-ms",
                HEALTHY_TIMEOUT_MS,
                "get",
                kind,
                &id,
            ]))
            .ok_json();
            assert_eq!(got["tier"], "source", "{got}");
            assert_eq!(got["version"], put["version"], "{got}");
            assert_eq!(got["value"], serde_json::from_str::<Value>(&value).unwrap());
        }
    }
    // del and ttl act on the cache alone, so they still need Redis.
    for cmd in ["del", "ttl"] {
        let out = run(mdcache().args(["--database", &db, cmd, "pos", "X"]));
        out.assert_error(2, "no Redis address");
    }
}

#[test]
fn database_get_of_a_key_in_neither_exits_1() {
    let server = RedisServer::start();
    let db = pg::database_url();
    let id = uid("NONE");
    for kind in ["price", "book:bid", "strat"] {
        db_cli(Some(&server), &db, &["get", kind, &id])
            .assert_error(1, "not found (in the cache or the database)");
        db_cli(None, &db, &["get", kind, &id]).assert_error(1, "not found");
    }
    assert_eq!(server.dbsize(), 0, "a miss caches nothing");
}

#[test]
fn database_put_refuses_version_ttl_and_bad_input_before_any_io() {
    let server = RedisServer::start();
    // Nothing listens here: any connection attempt would be exit 3, not 2.
    let dead = "postgres://postgres@127.0.0.1:1/postgres";
    let value = example("ord");
    let put = |extra: &[&str]| {
        run(mdcache()
            .args(["--redis", &server.url(), "--database", dead])
            .args(extra))
    };
    put(&["put", "ord", "X", &value, "--version", "5"]).assert_error(2, "--version");
    put(&["put", "ord", "X", &value, "--ttl-ms", "5000"]).assert_error(2, "--ttl-ms");
    put(&["put", "ord", "a b", &value]).assert_error(2, "invalid key id");
    put(&["put", "ord", "X", "{"]).assert_error(2, "invalid JSON for ord");
    put(&[
        "put",
        "book:bid",
        "X",
        r#"[{"price": 1, "qty": 1}, {"price": 1, "qty": 2}]"#,
    ])
    .assert_error(2, "appears twice");
    put(&["get", "ord", "a b"]).assert_error(2, "invalid key id");
    // The environment's DATABASE_URL counts as a database too.
    let out = run(mdcache().env("DATABASE_URL", dead).args([
        "--redis",
        &server.url(),
        "put",
        "ord",
        "X",
        &value,
        "--version",
        "5",
    ]));
    out.assert_error(2, "the database assigns versions");
    // An unparseable URL is a configuration error, named by where it came from.
    run(mdcache().args(["--database", "postgres://h:notaport/db", "get", "ord", "X"]))
        .assert_error(2, "invalid --database URL");
    run(mdcache()
        .env("DATABASE_URL", "postgres://h:notaport/db")
        .args(["get", "ord", "X"]))
    .assert_error(2, "invalid DATABASE_URL");
    assert_eq!(server.dbsize(), 0);
}

#[test]
fn database_put_to_a_stopped_server_exits_3_and_invalidates_the_key() {
    let redis = RedisServer::start();
    let mut pg_server = PgServer::start();
    let db = pg_server.url();
    let value = example("ord");
    // Cached values, written through the cache alone.
    for id in ["K", "K2"] {
        cache_cli(&redis, &["put", "ord", id, &value, "--version", "7"]).ok_json();
    }
    pg_server.stop();

    // Default deadline: the failure is bounded by it, nowhere near `QUICK`.
    let out = run(mdcache().envs(LONG_TTLS).args([
        "--redis",
        &redis.url(),
        "--database",
        &db,
        "put",
        "ord",
        "K",
        &value,
    ]));
    out.assert_error(3, "database unavailable");
    assert!(
        out.stderr.contains("mdc:ord:{K} was invalidated"),
        "{out:?}"
    );
    assert!(out.elapsed < QUICK, "took {:?}", out.elapsed);
    // Write-through invalidates on a failed write: the old value is gone, the new one never
    // arrived.
    cache_cli(&redis, &["get", "ord", "K"]).assert_error(1, "not found");

    // A read the cache can answer needs no database (DESIGN §5); a miss fails fast.
    let got = run(mdcache().envs(LONG_TTLS).args([
        "--redis",
        &redis.url(),
        "--database",
        &db,
        "get",
        "ord",
        "K2",
    ]))
    .ok_json();
    assert_eq!(
        (&got["tier"], &got["version"]),
        (&"l2".into(), &7.into()),
        "{got}"
    );
    let out = run(mdcache().envs(LONG_TTLS).args([
        "--redis",
        &redis.url(),
        "--database",
        &db,
        "get",
        "ord",
        "K",
    ]));
    out.assert_error(3, "database unavailable");
    assert!(out.elapsed < QUICK, "took {:?}", out.elapsed);

    // The database never saw the refused write.
    pg_server.start_again();
    db_cli(Some(&redis), &db, &["get", "ord", "K"]).assert_error(1, "not found");
    let put = db_cli(Some(&redis), &db, &["put", "ord", "K", &value]).ok_json();
    assert_eq!(put["outcome"], "applied", "{put}");
}

#[test]
fn a_write_the_database_refuses_exits_3_and_invalidates_the_key() {
    let redis = RedisServer::start();
    let db = pg::database_url();
    let id = uid("REFUSED");
    // Creates the schema (and finds nothing).
    db_cli(None, &db, &["get", "ord", &id]).assert_error(1, "not found");
    let constraint = format!("refuse_{}", id.replace('-', "_").to_lowercase());
    sql(
        &db,
        &format!("ALTER TABLE mdc_ord ADD CONSTRAINT {constraint} CHECK (id <> '{id}')"),
    );
    let value = example("ord");
    cache_cli(&redis, &["put", "ord", &id, &value, "--version", "7"]).ok_json();

    let out = db_cli(Some(&redis), &db, &["put", "ord", &id, &value]);
    out.assert_error(3, "the database refused the write");
    assert!(out.stderr.contains(&constraint), "{out:?}");
    assert!(
        out.stderr.contains("was invalidated in the cache"),
        "{out:?}"
    );
    cache_cli(&redis, &["get", "ord", &id]).assert_error(1, "not found");
    db_cli(Some(&redis), &db, &["get", "ord", &id]).assert_error(1, "not found");
    assert_eq!(redis.dbsize(), 0);
}

#[test]
fn database_put_with_redis_down_reports_cache_failed() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let db = pg::database_url();
    let id = uid("CF");
    let value = example("risk");
    let out = run(mdcache().envs(LONG_TTLS).args([
        "--redis",
        &url,
        "--database",
        &db,
        "--timeout-ms",
        "3000",
        "put",
        "risk",
        &id,
        &value,
    ]));
    let put = out.ok_json();
    assert_eq!(put["outcome"], "cache_failed", "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    // The database has it.
    let got = db_cli(None, &db, &["get", "risk", &id]).ok_json();
    assert_eq!(
        (&got["tier"], &got["version"]),
        (&"source".into(), &put["version"]),
        "{got}"
    );
}

#[test]
fn demo_refuses_a_database() {
    bare(&[
        "--database",
        "postgres://h/db",
        "demo",
        "--duration-ms",
        "100",
    ])
    .assert_error(2, "--database");
}

/// Every key command on a Redis Cluster, from `--redis-cluster` or `CACHE_REDIS_CLUSTER`;
/// a cluster and a server together, or a seed that does not parse, are refused (exit 2) and
/// the message names the flag.
#[test]
fn the_key_commands_take_a_cluster() {
    let cluster = support::cluster::RedisCluster::start();
    let nodes = cluster.nodes_arg();
    let on = |args: &[&str]| run(mdcache().arg("--redis-cluster").arg(&nodes).args(args));
    on(&["put", "pos", "P1", &example("pos")]).ok_json();
    let got = on(&["get", "pos", "P1"]).ok_json();
    assert_eq!(got["tier"], "l2", "{got}");
    assert!(
        on(&["ttl", "pos", "P1"]).ok_json()["ttl_ms"]
            .as_u64()
            .is_some()
    );
    on(&[
        "put",
        "book:bid",
        "B1",
        "[[10.5, 2.0]]",
        "--ttl-ms",
        "60000",
    ])
    .ok_json();
    on(&["del", "pos", "P1"]).ok_json();
    assert_eq!(on(&["get", "pos", "P1"]).code, Some(1));
    let via_env = run(mdcache()
        .env("CACHE_REDIS_CLUSTER", &nodes)
        .args(["get", "book:bid", "B1"]));
    let book = via_env.ok_json();
    assert!(book["value"].to_string().contains("10.5"), "{book}");
    // The operator's commands scan every primary.
    let all = on(&["keys", "*", "--json"]).ok_json();
    assert_eq!(all["keys"].as_array().map(Vec::len), Some(2), "{all}");
    let health = on(&["health", "--json"]).ok_json();
    assert_eq!(
        health["shards"].as_array().map(Vec::len),
        Some(3),
        "{health}"
    );
    let stats = on(&["stats", "--json"]).ok_json();
    assert_eq!(stats["memory"].as_array().map(Vec::len), Some(3), "{stats}");

    run(mdcache()
        .args(["--redis", "redis://127.0.0.1:1/", "--redis-cluster", &nodes])
        .args(["get", "pos", "P1"]))
    .assert_code(2);
    run(mdcache().args(["--redis-cluster", "127.0.0.1:notaport", "get", "pos", "P1"]))
        .assert_error(2, "--redis-cluster");
    run(mdcache()
        .env("CACHE_REDIS_URL", "redis://127.0.0.1:1/")
        .env("CACHE_REDIS_CLUSTER", &nodes)
        .args(["get", "pos", "P1"]))
    .assert_error(2, "CACHE_REDIS_CLUSTER");
}

/// The operator's commands (issue 14): `keys`, `clear` (refused without `--yes`, a dry run
/// removes nothing), `stats` and `health`, text and `--json`, and their exit statuses.
#[test]
fn keys_clear_stats_and_health() {
    let mut server = RedisServer::start();
    for id in ["A", "B", "C"] {
        let () = redis_cmd(
            &server,
            redis::cmd("SET")
                .arg(format!("mdc:price:{{{id}}}"))
                .arg("x"),
        );
    }
    let () = redis_cmd(&server, redis::cmd("SET").arg("mdc:pos:{A}").arg("x"));
    let () = redis_cmd(
        &server,
        redis::cmd("SET").arg("elsewhere:price:{A}").arg("x"),
    );
    let dbsize = |s: &RedisServer| s.dbsize();

    let page = cli(&server, &["keys", "price:*", "--json"]).ok_json();
    let mut keys: Vec<&str> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["mdc:price:{A}", "mdc:price:{B}", "mdc:price:{C}"]);
    assert_eq!(page["next"], Value::Null);
    // Text: one key per line, then a summary line.
    let text = cli(&server, &["keys", "*"]);
    text.assert_code(0);
    assert_eq!(text.stdout.lines().count(), 5, "{text:?}");
    cli(&server, &["keys", "price *"]).assert_error(2, "key pattern");
    cli(&server, &["keys", "*", "--cursor", "nope"]).assert_error(2, "cursor");

    let stats = cli(&server, &["stats", "--json"]).ok_json();
    assert_eq!(stats["keys"]["price"], 3);
    assert_eq!(stats["keys"]["pos"], 1);
    assert_eq!(stats["complete"], true);
    let memory = stats["memory"].as_array().unwrap();
    assert_eq!(memory.len(), 1, "{stats}");
    assert!(memory[0]["used_bytes"].as_u64().unwrap() > 0, "{stats}");
    // The round trip is a series of 100 PINGs by default, its percentiles in order.
    let ping = &stats["ping"];
    assert_eq!(ping["samples"], 100, "{stats}");
    let series: Vec<u64> = ["min_us", "p50_us", "p90_us", "p99_us", "max_us"]
        .iter()
        .map(|f| ping[f].as_u64().unwrap())
        .collect();
    assert!(series.windows(2).all(|w| w[0] <= w[1]), "{stats}");
    let few = cli(&server, &["stats", "--pings", "3"]);
    few.assert_code(0);
    assert!(few.stdout.contains("over 3 pings"), "{few:?}");
    cli(&server, &["stats", "--pings", "0"]).assert_code(2);
    cli(&server, &["stats", "--pings", "10001"]).assert_code(2);

    // Deleting needs --yes; nothing is scanned or removed without it.
    cli(&server, &["clear", "--kind", "price"]).assert_error(2, "--yes");
    cli(&server, &["clear", "--yes"]).assert_code(2);
    let dry = cli(
        &server,
        &["clear", "--kind", "price", "--dry-run", "--json"],
    )
    .ok_json();
    assert_eq!(
        (dry["matched"].as_u64(), dry["removed"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(dbsize(&server), 5);
    let done = cli(
        &server,
        &["clear", "--pattern", "price:*", "--yes", "--json"],
    )
    .ok_json();
    assert_eq!(done["removed"], 3);
    assert_eq!(
        dbsize(&server),
        2,
        "the position and the other namespace's key stay"
    );

    let health = cli(&server, &["health", "--json"]).ok_json();
    assert_eq!(health["redis_ok"], true);
    assert!(health["ping_us"].as_u64().is_some());
    server.kill();
    let down = cli(&server, &["health", "--timeout-ms", "300"]);
    down.assert_code(3);
    assert!(down.stdout.contains("NOT ok"), "{down:?}");
}

/// `mdcache serve`: refuses to start without a token (exit 2, naming the variable, never
/// printing a token), serves the admin API with one, and exits 0 on Ctrl-C.
#[test]
fn serve_needs_a_token_and_serves_the_admin_api() {
    let server = RedisServer::start();
    let no_token = run(mdcache()
        .env_remove("CACHE_ADMIN_TOKEN")
        .env_remove("CACHE_ADMIN_TOKEN_FILE")
        .args([
            "--redis",
            &server.url(),
            "serve",
            "--admin-addr",
            "127.0.0.1:0",
        ]));
    no_token.assert_error(2, "CACHE_ADMIN_TOKEN");
    let short = run(mdcache().env("CACHE_ADMIN_TOKEN", "hunter2").args([
        "--redis",
        &server.url(),
        "serve",
        "--admin-addr",
        "127.0.0.1:0",
    ]));
    short.assert_error(2, "at least 32 bytes");
    assert!(!short.stderr.contains("hunter2"), "{short:?}");

    let token = "serve-test-token-0123456789abcdef0123";
    let mut child = mdcache()
        .env("CACHE_ADMIN_TOKEN", token)
        .args([
            "--redis",
            &server.url(),
            "serve",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mdcache serve");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut out, &mut line).expect("the listening line");
    let addr = line
        .trim()
        .strip_prefix("mdcache admin API on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let ask = |path: &str, auth: Option<&str>| -> String {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to the admin API");
        s.set_read_timeout(Some(QUICK)).unwrap();
        let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut s, &mut answer).expect("an answer");
        answer
    };
    assert!(ask("/api/cache/health", None).starts_with("HTTP/1.1 200"));
    assert!(ask("/metrics", None).starts_with("HTTP/1.1 200"));
    assert!(ask("/api/cache/stats", None).starts_with("HTTP/1.1 401"));
    assert!(ask("/api/cache/stats", Some(token)).starts_with("HTTP/1.1 200"));
    // The CLI asks the running instance through --admin.
    let base = format!("http://{addr}");
    let remote = |args: &[&str], token: Option<&str>| {
        let mut cmd = mdcache();
        cmd.env_remove("CACHE_ADMIN_TOKEN")
            .env_remove("CACHE_ADMIN_TOKEN_FILE");
        if let Some(t) = token {
            cmd.env("CACHE_ADMIN_TOKEN", t);
        }
        run(cmd.args(args))
    };
    let h = remote(&["health", "--admin", &base, "--json"], None).ok_json();
    assert_eq!(h["redis_ok"], true, "{h}");
    let st = remote(&["stats", "--admin", &base, "--json"], Some(token)).ok_json();
    assert!(st["l1_entries"].is_u64(), "{st}");
    remote(&["stats", "--admin", &base], None).assert_error(2, "CACHE_ADMIN_TOKEN");
    remote(
        &["stats", "--admin", &base],
        Some("wrong-token-0123456789abcdef012345678"),
    )
    .assert_error(2, "refused the token");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = child.wait().expect("serve exits");
    assert!(status.success(), "{status}");
}

/// `mdcache warm`: keys the database holds go into Redis (ids from the database, or from a
/// file), a key missing from the database is counted, and warming needs a database.
#[test]
fn warm_preloads_from_the_database() {
    let redis = RedisServer::start();
    let db = pg::database_url();
    for sym in ["WA", "WB", "WC"] {
        db_cli(Some(&redis), &db, &["put", "price", sym, &example("price")]).ok_json();
        cache_cli(&redis, &["del", "price", sym]).ok_json();
    }
    assert_eq!(redis.dbsize(), 0);
    let all = db_cli(Some(&redis), &db, &["warm", "--kinds", "price", "--json"]).ok_json();
    let price = &all["kinds"][0];
    assert_eq!(
        (price["kind"].as_str(), price["filled"].as_u64()),
        (Some("price"), Some(3)),
        "{all}"
    );
    assert_eq!(price["queries"], 1);
    let got = cache_cli(&redis, &["get", "price", "WB"]).ok_json();
    assert_eq!(got["tier"], "l2");

    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("ids.txt");
    std::fs::write(&list, "# two of ours and one nobody has\nWA\n\nWC\nNOPE\n").unwrap();
    let listed = db_cli(
        Some(&redis),
        &db,
        &[
            "warm",
            "--kinds",
            "price",
            "--symbols",
            list.to_str().unwrap(),
            "--json",
        ],
    )
    .ok_json();
    let price = &listed["kinds"][0];
    assert_eq!(price["requested"], 3, "{listed}");
    assert_eq!(price["missing"], 1, "{listed}");
    // Already cached at the same version: nothing newer to write, nothing lowered.
    assert_eq!(
        price["filled"].as_u64().unwrap() + price["kept_newer"].as_u64().unwrap(),
        2,
        "{listed}"
    );

    cache_cli(&redis, &["warm"]).assert_error(2, "--database");
}
