//! `mdcache example KIND`: prints a valid example value of a kind as one line of JSON (what `put` accepts).

use mdcache::Kind;

use super::key::kind_parser;
use crate::output::{Failure, print_line};

/// `example`'s argument.
#[derive(Debug, clap::Args)]
pub(crate) struct ExampleArgs {
    /// The kind of value.
    #[arg(value_parser = kind_parser())]
    kind: Kind,
}

/// `example`: prints the library's example value of the kind.
pub(crate) fn run(args: ExampleArgs) -> Result<(), Failure> {
    print_line(&args.kind.example_json().to_string())
}
