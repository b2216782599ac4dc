//! Fuzzing of every parser of a Redis or Lua reply (issue 16): replies of any type and shape give an error or a well-formed result, never a panic.
//!
//! A server, a proxy or a script of another version can answer with anything RESP can carry.
//! Each harness feeds arbitrary `redis::Value` trees (nested arrays, maps, every scalar type,
//! huge and negative integers) to one parser. `make test` runs a short budget; `make fuzz`
//! a long one (`MDCACHE_FUZZ_CASES`).

use proptest::prelude::*;
use redis::Value;

use super::book::parse_top;
use super::boundary::TopReply;
use super::shards::SlotMap;
use super::test_support::fuzz_cases;
use super::values::{parse_get_many, parse_pairs};

/// Any RESP scalar, biased towards the values the parsers look for (small and sentinel
/// integers, short byte strings that may be numbers).
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        Just(Value::Okay),
        prop_oneof![Just(-2i64), Just(-1), Just(0), Just(1), any::<i64>()].prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Value::BulkString),
        "[0-9.:-]{0,12}".prop_map(|s| Value::BulkString(s.into_bytes())),
        ".{0,12}".prop_map(Value::SimpleString),
        any::<f64>().prop_map(Value::Double),
        any::<bool>().prop_map(Value::Boolean),
    ]
}

/// Any reply: scalars, and arrays, sets and maps of replies, up to 4 levels deep.
fn reply() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Set),
            proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases(512)))]

    /// `get_many`'s reply: a result per key when the shape is right (one `MGET` array, then a
    /// `PTTL` per key), else an error.
    #[test]
    fn get_many_replies_of_any_shape(replies in proptest::collection::vec(reply(), 0..6)) {
        if let Ok(results) = parse_get_many("k", replies.clone()) {
            // One result per element of the first reply, each a `PTTL` consumed after it.
            prop_assert!(results.len() < replies.len());
        }
    }

    /// The cluster's `GET_WITH_TTL` script reply: pairs or an error.
    #[test]
    fn get_with_ttl_replies_of_any_shape(replies in proptest::collection::vec(reply(), 0..8)) {
        if let Ok(results) = parse_pairs("k", replies.clone()) {
            prop_assert_eq!(results.len() * 2, replies.len());
        }
    }

    /// The book read script's reply: a side that passes the same checks as a written one
    /// (finite prices, finite non-negative quantities, no price twice), or an error or miss.
    #[test]
    fn book_replies_of_any_shape(reply in reply(), members in proptest::collection::vec(
        "(-?[0-9]{1,3}(\\.[0-9])?|NaN|inf|-inf|1e999|x)?:?(-?[0-9]{1,2}|nan|inf)?", 0..6)) {
        let _ = parse_top("k", reply);
        // The one shape that gets past the shape checks (an 8-byte stamp), with arbitrary
        // members another program may have put in the set.
        let shaped = Value::Array(vec![
            Value::BulkString(7u64.to_be_bytes().to_vec()),
            Value::Int(5_000),
            Value::Int(members.len() as i64),
            Value::Array(members.iter().map(|m| Value::BulkString(m.clone().into_bytes())).collect()),
        ]);
        if let Ok(TopReply::Found(found)) = parse_top("k", shaped) {
            prop_assert!(crate::book::validate(&found.side).is_ok(), "served {:?}", found.side);
        }
    }

    /// `CLUSTER SLOTS`: malformed ranges are skipped, never a panic, never a slot pointing at
    /// a node that is not in the list.
    #[test]
    fn cluster_slots_replies_of_any_shape(reply in reply()) {
        let map = SlotMap::of(reply);
        for &owner in &map.owner {
            prop_assert!(owner == super::shards::NO_NODE || usize::from(owner) < map.nodes.len());
        }
    }
}
