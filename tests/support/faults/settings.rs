//! The fault runs' settings that their report quotes: one place for the harness and for `examples/faults_report.rs`, which includes this file.

use std::time::Duration;

/// The L2 deadline: a few milliseconds, as in production.
pub const OP_TIMEOUT: Duration = Duration::from_millis(10);

/// How long each `mdcache simulate` fault run lasts (its `--duration`).
pub const SIM_DURATION: &str = "6s";

/// The window inside simulate's run: healthy load before, the fault inside, recovery after.
pub const SIM_WINDOW: (Duration, Duration) =
    (Duration::from_millis(1500), Duration::from_millis(3500));
