//! Book rules in one place: `BookSide`, `Level`, `BookSideKind`, what a valid side is and what "best first" means — used by the cache, the patterns and the Redis tier alike.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One price level of a book side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// Price of the level (the sorted-set score).
    pub price: f64,
    /// Quantity resting at that price.
    pub qty: f64,
}

/// One side of an order book: price levels, best first once read back.
/// Keys `mdc:book:{SYMBOL}:bid` / `:ask`, TTL 50 ms, stored as a Redis sorted set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BookSide {
    /// The levels. On write, any order; on read, best first (highest bid, lowest ask).
    pub levels: Vec<Level>,
}

/// Which side a [`BookSchema`](crate::BookSchema) is, deciding what "best" means in a top-N read.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookSideKind {
    /// Best = highest price.
    Bid,
    /// Best = lowest price.
    Ask,
}

/// Finite prices, finite non-negative quantities, no price twice.
pub(crate) fn validate(side: &BookSide) -> Result<()> {
    for (i, l) in side.levels.iter().enumerate() {
        if !l.price.is_finite() || !l.qty.is_finite() || l.qty < 0.0 {
            return Err(Error::InvalidValue {
                reason: format!("level {i}: price and qty must be finite and qty >= 0"),
            });
        }
    }
    // Sorted, equal prices are neighbours. No NaN is left to break the order, and
    // `total_cmp` puts -0.0 right before 0.0, which `==` then finds equal (one Redis score).
    let mut prices: Vec<f64> = side.levels.iter().map(|l| l.price).collect();
    prices.sort_unstable_by(f64::total_cmp);
    if let Some(w) = prices.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidValue {
            reason: format!("price {} appears twice", w[0]),
        });
    }
    Ok(())
}

/// Sorts levels best first for `side`.
pub(crate) fn sort_best_first(levels: &mut [Level], side: BookSideKind) {
    match side {
        BookSideKind::Bid => levels.sort_by(|a, b| b.price.total_cmp(&a.price)),
        BookSideKind::Ask => levels.sort_by(|a, b| a.price.total_cmp(&b.price)),
    }
}

/// True when `levels` are already best first for `side` (so sorting would change nothing).
pub(crate) fn is_best_first(levels: &[Level], side: BookSideKind) -> bool {
    match side {
        BookSideKind::Bid => levels.is_sorted_by(|a, b| b.price.total_cmp(&a.price).is_le()),
        BookSideKind::Ask => levels.is_sorted_by(|a, b| a.price.total_cmp(&b.price).is_le()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_first() {
        let mut l = vec![
            Level {
                price: 1.0,
                qty: 1.0,
            },
            Level {
                price: 3.0,
                qty: 1.0,
            },
            Level {
                price: 2.0,
                qty: 1.0,
            },
        ];
        sort_best_first(&mut l, BookSideKind::Bid);
        assert_eq!(l[0].price, 3.0);
        assert!(is_best_first(&l, BookSideKind::Bid) && !is_best_first(&l, BookSideKind::Ask));
        sort_best_first(&mut l, BookSideKind::Ask);
        assert_eq!(l[0].price, 1.0);
        assert!(is_best_first(&l, BookSideKind::Ask) && !is_best_first(&l, BookSideKind::Bid));
    }
}
