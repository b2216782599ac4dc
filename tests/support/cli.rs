//! The `mdcache` binary as tests run it: a child process with a clean environment.

// Every test binary includes this module through `mod support;`, and none uses all of it.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// The binary, built by Cargo for the test files that run it (`required-features = ["cli"]`).
/// Without it this panics when called instead of failing to compile, because every crate
/// that includes `tests/support` (the library's unit tests and the benches too) compiles this
/// module, and only those test files have the binary.
#[allow(
    clippy::option_env_unwrap,
    reason = "`env!` would not compile where the binary is not built"
)]
fn binary() -> &'static str {
    option_env!("CARGO_BIN_EXE_mdcache")
        .expect("no mdcache binary: give this test `required-features = [\"cli\"]` in Cargo.toml")
}

/// The binary with a clean environment: no `CACHE_*`, `DATABASE_URL` or `RUST_LOG` from the
/// host can leak in, and stdin is empty.
pub fn mdcache() -> Command {
    let mut cmd = Command::new(binary());
    for (name, _) in std::env::vars_os() {
        let ours = name
            .to_str()
            .is_some_and(|n| n.starts_with("CACHE_") || n == "DATABASE_URL" || n == "RUST_LOG");
        if ours {
            cmd.env_remove(name);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}
