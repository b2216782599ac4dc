//! `mdcache clear --kind K | --pattern P [--dry-run] [--yes]`: deletes the namespace's keys of a kind or a pattern (`SCAN` + `UNLINK` in batches, announced on the backplane so other instances evict), and reports how many.

use mdcache::Kind;
use mdcache::admin::{self, KeyPattern};
use serde::Serialize;

use super::context::Ctx;
use super::key::kind_parser;
use crate::output::{Failure, millis, print_json, print_line};

/// `clear` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ClearArgs {
    /// Every key of this kind (a book side's stamps included).
    #[arg(long, value_parser = kind_parser(), conflicts_with = "pattern", required_unless_present = "pattern")]
    pub(crate) kind: Option<Kind>,
    /// Every key matching this pattern, relative to the namespace (as for `keys`).
    #[arg(long)]
    pub(crate) pattern: Option<String>,
    /// Count what would be deleted; delete nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Really delete (required unless --dry-run).
    #[arg(long)]
    pub(crate) yes: bool,
}

/// `--json` output. Field order is the order printed.
#[derive(Serialize)]
struct ClearOutput<'a> {
    pattern: &'a str,
    matched: u64,
    removed: u64,
    dry_run: bool,
    elapsed_ms: u64,
}

/// `clear`: exit 2 without `--yes` (unless `--dry-run`), before anything is scanned.
pub(crate) async fn run(ctx: &Ctx, args: ClearArgs, json: bool) -> Result<(), Failure> {
    if !args.dry_run && !args.yes {
        return Err(Failure::invalid(
            "clear deletes keys: pass --yes to do it, or --dry-run to count them first",
        ));
    }
    let cache = ctx.cache(false)?;
    let pattern = match (&args.kind, &args.pattern) {
        (Some(kind), _) => KeyPattern::for_kind(&cache, *kind),
        (None, Some(p)) => KeyPattern::new(&cache, p)?,
        (None, None) => return Err(Failure::invalid("pass --kind KIND or --pattern PATTERN")),
    };
    let report = admin::clear(&cache, &pattern, args.dry_run).await?;
    super::put::published(&cache).await;
    if json {
        return print_json(&ClearOutput {
            pattern: pattern.as_str(),
            matched: report.matched,
            removed: report.removed,
            dry_run: report.dry_run,
            elapsed_ms: millis(report.elapsed),
        });
    }
    if report.dry_run {
        print_line(&format!(
            "{}: {} keys match; nothing removed (dry run)",
            pattern, report.matched
        ))
    } else {
        print_line(&format!(
            "{}: {} keys matched, {} removed in {} ms",
            pattern,
            report.matched,
            report.removed,
            millis(report.elapsed)
        ))
    }
}
