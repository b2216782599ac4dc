//! `mdcache keys PATTERN [--limit N] [--cursor C]`: lists keys of the namespace matching PATTERN (`price:*` scans `mdc:price:*`), cursor-paged `SCAN`, every primary of a cluster, never `KEYS`.

use mdcache::admin::{self, KeyPattern, ScanCursor};
use serde::Serialize;

use super::context::Ctx;
use crate::output::{Failure, print_json, print_line};

/// `keys` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct KeysArgs {
    /// Pattern relative to the namespace (CACHE_NAMESPACE, default mdc): `price:*`,
    /// `book:{AAPL}:*`, `*`. Redis glob syntax; it can never match outside the namespace.
    pub(crate) pattern: String,
    /// Stop after about this many keys (a SCAN step is never cut, so a few more may come).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) limit: u64,
    /// Continue a scan where a previous page stopped (the `next` it printed).
    #[arg(long, value_name = "CURSOR")]
    pub(crate) cursor: Option<String>,
}

/// `--json` output. Field order is the order printed.
#[derive(Serialize)]
struct KeysOutput<'a> {
    pattern: &'a str,
    keys: &'a [String],
    /// Where the next page starts (`--cursor`); null when the scan is over.
    next: Option<String>,
}

/// `keys`: exit 0 with or without matches.
pub(crate) async fn run(ctx: &Ctx, args: KeysArgs, json: bool) -> Result<(), Failure> {
    let from = args
        .cursor
        .as_deref()
        .map(str::parse::<ScanCursor>)
        .transpose()?;
    let cache = ctx.cache(false)?;
    let pattern = KeyPattern::new(&cache, &args.pattern)?;
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let page = admin::keys(&cache, &pattern, from, limit).await?;
    let next = page.next.map(|c| c.to_string());
    if json {
        return print_json(&KeysOutput {
            pattern: pattern.as_str(),
            keys: &page.keys,
            next,
        });
    }
    for key in &page.keys {
        print_line(key)?;
    }
    match next {
        Some(c) => print_line(&format!(
            "# {} keys; more with --cursor {c}",
            page.keys.len()
        )),
        None => print_line(&format!("# {} keys; end of scan", page.keys.len())),
    }
}
