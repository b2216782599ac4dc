//! `mdcache demo`, a preset of `simulate`: a short run with a few of simulate's flags set, no database, and the demo's own first line.
//!
//! The demo is the simulate workload (feed, cache-aside readers, order flow, summary table)
//! run for 2 s over 50 symbols with 4 readers and no live line, against an in-memory source
//! of record: embedded (in-process L1) unless a Redis address is given, then layered.

use clap::Parser;
use mdcache::{Backend, Cache};

use super::args::{Preset, SimulateArgs};
use crate::output::Failure;
use crate::redis_flags::place;

/// `demo`'s options; every other setting is `simulate`'s default.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How long the workload runs, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    duration_ms: u64,
    /// Number of symbols written and read.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    symbols: u64,
    /// Number of reader tasks.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    readers: u64,
}

/// `simulate`'s options alone, so that the preset's flags are parsed with simulate's own
/// defaults and checks.
#[derive(Debug, Parser)]
struct SimulateFlags {
    #[command(flatten)]
    args: SimulateArgs,
}

impl DemoArgs {
    /// The `simulate` options this demo stands for: the same as
    /// `simulate --duration MSms --symbols N --readers N --quiet`.
    pub(crate) fn simulate_args(&self) -> Result<SimulateArgs, Failure> {
        let flags = [
            "demo".to_owned(),
            format!("--duration={}ms", self.duration_ms),
            format!("--symbols={}", self.symbols),
            format!("--readers={}", self.readers),
            "--quiet".to_owned(),
        ];
        // Every value demo accepts is one simulate accepts (a unit test checks the bounds).
        let mut args = SimulateFlags::try_parse_from(flags)
            .map_err(|e| Failure::invalid(format!("demo: {}", e.kind())))?
            .args;
        args.preset = Preset::Demo;
        Ok(args)
    }
}

/// The demo's first line: `mdcache demo (embedded: in-process L1 only)`, or the Redis it uses.
pub(crate) fn title(cache: &Cache) -> String {
    let tiers = match (cache.backend(), place(cache.config())) {
        (Backend::Memory, _) => "embedded: in-process L1 only".to_owned(),
        (Backend::Layered, Some(at)) => format!("layered: L1 + Redis at {at}"),
        (Backend::Redis, Some(at)) => format!("Redis only: L2 at {at}"),
        (other, _) => other.name().to_owned(),
    };
    format!("mdcache demo ({tiers})")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Debug, Parser)]
    struct DemoFlags {
        #[command(flatten)]
        args: DemoArgs,
    }

    fn demo(flags: &[&str]) -> SimulateArgs {
        let demo = DemoFlags::try_parse_from(std::iter::once("demo").chain(flags.iter().copied()))
            .unwrap()
            .args;
        demo.simulate_args().unwrap()
    }

    #[test]
    fn the_demo_is_a_short_quiet_simulate() {
        let args = demo(&[]);
        assert_eq!(args.duration, Duration::from_secs(2));
        assert_eq!((args.symbols, args.readers), (50, Some(4)));
        assert!(args.quiet && !args.verify && args.report.is_none());
        assert_eq!(args.preset, Preset::Demo);
    }

    #[test]
    fn every_demo_value_is_a_simulate_value() {
        for flags in [
            ["--duration-ms=1", "--symbols=1", "--readers=1"],
            ["--duration-ms=600000", "--symbols=100000", "--readers=256"],
        ] {
            let args = demo(&flags);
            assert!(!args.duration.is_zero(), "{flags:?}");
        }
        let args = demo(&["--duration-ms=300", "--symbols=5"]);
        assert_eq!(args.duration, Duration::from_millis(300));
        assert_eq!(args.symbols, 5);
    }
}
