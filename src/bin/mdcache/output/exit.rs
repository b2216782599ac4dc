//! Exit statuses and the one-line error report (`mdcache: <message>` on stderr).
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done / found |
//! | 1 | not found (`get`, `ttl` of a missing key) |
//! | 2 | invalid input: usage, kind, identifier, JSON, value, configuration |
//! | 3 | backend unavailable: Redis or the database timed out, refused, broke the connection or said no |
//! | 4 | `simulate --verify`: a correctness check failed (the report says which) |

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use mdcache::ErrorKind;

/// Why a command did not succeed, deciding the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// The key is not cached (exit 1).
    NotFound = 1,
    /// The input or configuration was refused before any Redis command (exit 2).
    Invalid = 2,
    /// Redis or the database could not serve the request, or refused it (exit 3).
    Unavailable = 3,
    /// `simulate --verify` found a correctness violation (exit 4).
    VerifyFailed = 4,
}

/// A failed command: its exit status and the one line that explains it.
#[derive(Debug)]
pub(crate) struct Failure {
    status: Status,
    message: String,
}

impl Failure {
    /// A failure with status `status`.
    pub(crate) fn new(status: Status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// Exit 1: the key is not cached.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Failure::new(Status::NotFound, message)
    }

    /// Exit 2: refused input or configuration.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Failure::new(Status::Invalid, message)
    }

    /// Exit 3: Redis, the database (or the process's own I/O) failed us.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Failure::new(Status::Unavailable, message)
    }

    /// The same failure with `; <context>` added to its message.
    pub(crate) fn with_context(mut self, context: &str) -> Self {
        self.message.push_str("; ");
        self.message.push_str(context);
        self
    }

    /// The exit status this failure ends the process with.
    pub(crate) fn status(&self) -> Status {
        self.status
    }

    /// Writes `mdcache: <message>` to stderr as exactly one line and returns the exit code.
    pub(crate) fn report(self) -> ExitCode {
        eprint_line(&format!("mdcache: {}", one_line(&self.message)));
        ExitCode::from(self.status() as u8)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The library's error kinds map to exit statuses by what the user can do about them: fix the
/// input (2), or wait for / fix Redis (3).
impl From<mdcache::Error> for Failure {
    fn from(e: mdcache::Error) -> Self {
        let status = if e.is_invalid_input() || e.kind() == ErrorKind::Config {
            Status::Invalid
        } else {
            // Timeout, Unavailable, Backend, WrongType, Decode (the server holds something
            // that is not ours), and any kind added later: the server could not give us an
            // answer we can use.
            Status::Unavailable
        };
        Failure::new(status, e.to_string())
    }
}

/// Writes one line to stderr. `eprintln!` would panic if stderr is closed; we never panic over
/// where our diagnostics go.
fn eprint_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Reports a command-line parsing error. `--help` and `--version` print to stdout and exit 0;
/// a bare `mdcache` prints the help to stderr and exits 2 (clap's behaviour, kept because the
/// help is the useful answer there); every other usage error becomes one `mdcache:` line,
/// exit 2.
pub(crate) fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    match e.kind() {
        K::DisplayHelp | K::DisplayVersion => {
            // Fails only if stdout is closed, and then there is nobody to tell.
            let _ = e.print();
            ExitCode::SUCCESS
        }
        K::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(Status::Invalid as u8)
        }
        _ => {
            // clap renders "error: …", possibly detail lines ("[possible values: …]", a tip),
            // then "Usage: …" and "For more information, try '--help'."; keep the substance.
            let rendered = e.render().to_string();
            let detail: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("Usage:")
                        && !l.starts_with("For more information")
                })
                .collect();
            let message = detail.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            Failure::invalid(format!("{message} (see mdcache --help)")).report()
        }
    }
}

/// Folds a message onto one line: the report must be exactly one line whatever a library or
/// server put in its error text.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_fold_onto_one_line() {
        assert_eq!(one_line("a\n  b\r\n\nc"), "a b c");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn library_errors_map_to_statuses() {
        let bad_id = mdcache::validate_id("a b").unwrap_err();
        assert_eq!(Failure::from(bad_id).status(), Status::Invalid);
        let config = mdcache::CacheConfig::from_vars([("CACHE_POOL_SIZE", "x")]).unwrap_err();
        assert_eq!(Failure::from(config).status(), Status::Invalid);
        let timeout = mdcache::Error::Timeout {
            op: "get",
            after: std::time::Duration::from_millis(1),
        };
        assert_eq!(Failure::from(timeout).status(), Status::Unavailable);
    }
}
