//! A key named on the command line: its kind (parsed by the library) and identifier, and the one place that maps a run-time kind to its schema type.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use mdcache::{
    BookAsk, BookBid, BookSchema, Key, KeySchema, Kind, Order, Position, Price, Risk,
    StrategyState, ValueSchema,
};

use crate::output::Failure;

/// A kind and an identifier.
#[derive(Debug, clap::Args)]
pub(crate) struct KeyArgs {
    /// The kind of value.
    #[arg(value_parser = kind_parser())]
    pub(crate) kind: Kind,
    /// The identifier (symbol, account, order or strategy id).
    pub(crate) id: String,
}

/// Accepts exactly the kind names (listed in `--help` and in the error), parsed by the library.
pub(crate) fn kind_parser() -> impl TypedValueParser<Value = Kind> {
    PossibleValuesParser::new(Kind::ALL.map(Kind::name)).try_map(|s| s.parse::<Kind>())
}

/// A command generic over the kind's schema; [`dispatch`] picks the schema for a run-time
/// [`Kind`]. Two methods because the two storage types have different cache calls
/// (`set_with`/`read` versus `set_book`/`read_book`).
pub(crate) trait KindOp {
    /// Runs the command for a kind stored as one value (a Redis string).
    async fn value<S: ValueSchema>(self) -> Result<(), Failure>;
    /// Runs the command for a book side (a Redis sorted set).
    async fn book<S: BookSchema>(self) -> Result<(), Failure>;
}

/// The one place that maps a run-time kind to its schema type.
pub(crate) async fn dispatch<O: KindOp>(kind: Kind, op: O) -> Result<(), Failure> {
    match kind {
        Kind::Price => op.value::<Price>().await,
        Kind::Pos => op.value::<Position>().await,
        Kind::BookBid => op.book::<BookBid>().await,
        Kind::BookAsk => op.book::<BookAsk>().await,
        Kind::Risk => op.value::<Risk>().await,
        Kind::Ord => op.value::<Order>().await,
        Kind::Strat => op.value::<StrategyState>().await,
        // `Kind` is non-exhaustive: a kind added to the library needs a line above.
        other => Err(Failure::invalid(format!(
            "kind {other} is not supported by this build of the tool"
        ))),
    }
}

/// Exit 1: `key` is not cached.
pub(crate) fn not_found<S: KeySchema>(key: &Key<S>) -> Failure {
    Failure::not_found(format!("{key} not found"))
}
