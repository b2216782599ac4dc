//! The built-in trading kinds (`price`, `pos`, `book:<side>`, `risk`, `ord`, `strat`): value types and TTLs.
//!
//! The value records are plain data the engine constructs with struct literals, so unlike the
//! library's other public types they are *not* `#[non_exhaustive]`: adding a field is a schema
//! change anyway (old envelopes then fail to decode, count as `decode_errors` and reload).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::book::{BookSide, BookSideKind, Level};
use crate::error::{Error, Result};
use crate::key::{BookSchema, KeySchema, Storage, ValueSchema};

/// Top of book for one symbol. Key `mdc:price:{SYMBOL}`, TTL 100 ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Best bid price.
    pub bid: f64,
    /// Best ask price.
    pub ask: f64,
    /// Quantity at the best bid.
    pub bid_size: f64,
    /// Quantity at the best ask.
    pub ask_size: f64,
    /// Last traded price.
    pub last: f64,
    /// Exchange sequence number of this update.
    pub seq: u64,
    /// Exchange timestamp, nanoseconds since the Unix epoch.
    pub exchange_ts_ns: u64,
}

/// A position in one symbol. Key `mdc:pos:{SYMBOL}`, TTL 1 s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// Signed quantity (negative = short).
    pub qty: f64,
    /// Average entry price.
    pub avg_price: f64,
    /// Realized profit and loss.
    pub realized_pnl: f64,
    /// Sequence number of the last fill applied.
    pub seq: u64,
}

/// Account risk. Key `mdc:risk:{ACCOUNT}`, TTL 5 s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Risk {
    /// Account equity.
    pub equity: f64,
    /// Margin in use.
    pub margin_used: f64,
    /// Gross exposure.
    pub exposure: f64,
    /// Exposure limit.
    pub max_exposure: f64,
    /// Loss limit for the day.
    pub max_daily_loss: f64,
    /// Sequence number of the last update.
    pub seq: u64,
}

/// Order side.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Buy.
    Buy,
    /// Sell.
    Sell,
}

/// Order status.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Accepted, nothing filled.
    New,
    /// Partly filled.
    PartiallyFilled,
    /// Completely filled.
    Filled,
    /// Cancelled.
    Cancelled,
    /// Rejected.
    Rejected,
}

/// An order. Key `mdc:ord:{ORDER_ID}`, TTL 60 s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// Order identifier.
    pub id: String,
    /// Instrument.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Limit price.
    pub px: f64,
    /// Ordered quantity.
    pub qty: f64,
    /// Filled quantity.
    pub filled: f64,
    /// Current status.
    pub status: OrderStatus,
    /// Sequence number of the last change.
    pub seq: u64,
}

/// A strategy's state. Key `mdc:strat:{STRATEGY_ID}`, TTL 60 s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyState {
    /// Strategy identifier.
    pub id: String,
    /// Numeric parameters by name.
    pub params: BTreeMap<String, f64>,
    /// Free-form status (`running`, `paused`, ...).
    pub status: String,
    /// Sequence number of the last change.
    pub seq: u64,
}

/// Marker for the bid side of a book (`book:bid`).
#[derive(Debug, Clone, Copy)]
pub struct BookBid;

/// Marker for the ask side of a book (`book:ask`).
#[derive(Debug, Clone, Copy)]
pub struct BookAsk;

macro_rules! value_kind {
    ($ty:ty, $kind:literal, $ttl_ms:literal) => {
        impl KeySchema for $ty {
            type Value = $ty;
            const KIND: &'static str = $kind;
            const DEFAULT_TTL: Duration = Duration::from_millis($ttl_ms);
        }
        impl ValueSchema for $ty {}
    };
}

value_kind!(Price, "price", 100);
value_kind!(Position, "pos", 1_000);
value_kind!(Risk, "risk", 5_000);
value_kind!(Order, "ord", 60_000);
value_kind!(StrategyState, "strat", 60_000);

impl KeySchema for BookBid {
    type Value = BookSide;
    const KIND: &'static str = "book:bid";
    const DEFAULT_TTL: Duration = Duration::from_millis(50);
    const KEY_PREFIX: &'static str = "book";
    const KEY_SUFFIX: &'static str = ":bid";
    const STORAGE: Storage = Storage::Book;
}
impl BookSchema for BookBid {
    const SIDE: BookSideKind = BookSideKind::Bid;
}

impl KeySchema for BookAsk {
    type Value = BookSide;
    const KIND: &'static str = "book:ask";
    const DEFAULT_TTL: Duration = Duration::from_millis(50);
    const KEY_PREFIX: &'static str = "book";
    const KEY_SUFFIX: &'static str = ":ask";
    const STORAGE: Storage = Storage::Book;
}
impl BookSchema for BookAsk {
    const SIDE: BookSideKind = BookSideKind::Ask;
}

/// The built-in kinds by name, for code that picks a kind at run time (the CLI).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `price`
    Price,
    /// `pos`
    Pos,
    /// `book:bid`
    BookBid,
    /// `book:ask`
    BookAsk,
    /// `risk`
    Risk,
    /// `ord`
    Ord,
    /// `strat`
    Strat,
}

impl Kind {
    /// Every built-in kind.
    pub const ALL: [Kind; 7] = [
        Kind::Price,
        Kind::Pos,
        Kind::BookBid,
        Kind::BookAsk,
        Kind::Risk,
        Kind::Ord,
        Kind::Strat,
    ];

    /// The kind's name, e.g. `book:bid`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Price => Price::KIND,
            Kind::Pos => Position::KIND,
            Kind::BookBid => BookBid::KIND,
            Kind::BookAsk => BookAsk::KIND,
            Kind::Risk => Risk::KIND,
            Kind::Ord => Order::KIND,
            Kind::Strat => StrategyState::KIND,
        }
    }

    /// The kind's default TTL.
    pub fn default_ttl(self) -> Duration {
        match self {
            Kind::Price => Price::DEFAULT_TTL,
            Kind::Pos => Position::DEFAULT_TTL,
            Kind::BookBid => BookBid::DEFAULT_TTL,
            Kind::BookAsk => BookAsk::DEFAULT_TTL,
            Kind::Risk => Risk::DEFAULT_TTL,
            Kind::Ord => Order::DEFAULT_TTL,
            Kind::Strat => StrategyState::DEFAULT_TTL,
        }
    }

    /// True for the two book sides (sorted sets).
    pub fn is_book(self) -> bool {
        matches!(self, Kind::BookBid | Kind::BookAsk)
    }

    /// A valid example value of this kind as JSON (what `mdcache example KIND` prints).
    pub fn example_json(self) -> serde_json::Value {
        let v = match self {
            Kind::Price => serde_json::to_value(Price {
                bid: 189.51,
                ask: 189.53,
                bid_size: 300.0,
                ask_size: 200.0,
                last: 189.52,
                seq: 1,
                exchange_ts_ns: 1_763_700_000_000_000_000,
            }),
            Kind::Pos => serde_json::to_value(Position {
                qty: 100.0,
                avg_price: 189.40,
                realized_pnl: 0.0,
                seq: 1,
            }),
            Kind::BookBid => serde_json::to_value(BookSide {
                levels: vec![
                    Level {
                        price: 189.51,
                        qty: 300.0,
                    },
                    Level {
                        price: 189.50,
                        qty: 500.0,
                    },
                ],
            }),
            Kind::BookAsk => serde_json::to_value(BookSide {
                levels: vec![
                    Level {
                        price: 189.53,
                        qty: 200.0,
                    },
                    Level {
                        price: 189.54,
                        qty: 400.0,
                    },
                ],
            }),
            Kind::Risk => serde_json::to_value(Risk {
                equity: 1_000_000.0,
                margin_used: 250_000.0,
                exposure: 500_000.0,
                max_exposure: 2_000_000.0,
                max_daily_loss: 50_000.0,
                seq: 1,
            }),
            Kind::Ord => serde_json::to_value(Order {
                id: "ord-1".into(),
                symbol: "AAPL".into(),
                side: Side::Buy,
                px: 189.50,
                qty: 100.0,
                filled: 0.0,
                status: OrderStatus::New,
                seq: 1,
            }),
            Kind::Strat => serde_json::to_value(StrategyState {
                id: "mm-1".into(),
                params: BTreeMap::from([("spread_bps".to_owned(), 2.0)]),
                status: "running".into(),
                seq: 1,
            }),
        };
        // Serializing these plain structs to a JSON value cannot fail (no maps with
        // non-string keys, no non-finite floats); Null would only show a bug in this table.
        v.unwrap_or(serde_json::Value::Null)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::InvalidKey {
                id: s.to_owned(),
                reason: "unknown kind (expected one of price pos book:bid book:ask risk ord strat)",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_names() {
        for k in Kind::ALL {
            assert_eq!(k.name().parse::<Kind>().unwrap(), k);
        }
        assert!("bogus".parse::<Kind>().is_err());
    }

    #[test]
    fn examples_parse_back_into_their_types() {
        let j = |k: Kind| k.example_json();
        serde_json::from_value::<Price>(j(Kind::Price)).unwrap();
        serde_json::from_value::<Position>(j(Kind::Pos)).unwrap();
        serde_json::from_value::<BookSide>(j(Kind::BookBid)).unwrap();
        serde_json::from_value::<BookSide>(j(Kind::BookAsk)).unwrap();
        serde_json::from_value::<Risk>(j(Kind::Risk)).unwrap();
        serde_json::from_value::<Order>(j(Kind::Ord)).unwrap();
        serde_json::from_value::<StrategyState>(j(Kind::Strat)).unwrap();
    }

    #[test]
    fn default_ttls_match_the_design() {
        assert_eq!(Kind::Price.default_ttl(), Duration::from_millis(100));
        assert_eq!(Kind::Pos.default_ttl(), Duration::from_secs(1));
        assert_eq!(Kind::BookBid.default_ttl(), Duration::from_millis(50));
        assert_eq!(Kind::Risk.default_ttl(), Duration::from_secs(5));
        assert_eq!(Kind::Ord.default_ttl(), Duration::from_secs(60));
        assert_eq!(Kind::Strat.default_ttl(), Duration::from_secs(60));
    }
}
