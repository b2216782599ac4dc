//! Writing a command's answer to stdout: one line, or one JSON object on one line; a closed pipe is not an error.

use std::io::Write;

use serde::Serialize;

use super::exit::Failure;

/// Writes one line to stdout. A closed pipe (`mdcache get … | head -c0`) means the reader wants
/// nothing more, which is not an error; any other write failure is.
pub(crate) fn print_line(line: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::unavailable(format!("cannot write to stdout: {e}"))),
    }
}

/// Writes `value` to stdout as one line of JSON, its fields in declaration order.
pub(crate) fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let line = serde_json::to_string(value)
        .map_err(|e| Failure::unavailable(format!("cannot format the output as JSON: {e}")))?;
    print_line(&line)
}
