//! Everything a command shows and how it ends: lines on stdout and stderr, the formatting of numbers and URLs, and the exit status.
//!
//! | module | job |
//! |---|---|
//! | `print` | the answer on stdout: one line, or one JSON object |
//! | `format` | durations, thousands separators, ratios, milliseconds, redacted URLs |
//! | `exit` | exit statuses and the one-line `mdcache: …` error report on stderr |

mod exit;
mod format;
mod print;

pub(crate) use exit::{Failure, Status, clap_error};
pub(crate) use format::{fmt_nanos, millis, ratio, redact, thousands};
pub(crate) use print::{print_json, print_line};
