//! The backplane's message on the wire: one MessagePack document per publish, carrying the publisher's id and sequence and a batch of key updates.
//!
//! Field names are one letter: a message carries dozens of keys a millisecond to every
//! instance, and the names are repeated per item.

use serde::{Deserialize, Serialize};

use crate::book::Level;
use crate::error::{Error, Result};

/// Largest message a receiver decodes (a publisher splits its batches well below it).
pub(crate) const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// One publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Message {
    /// The publisher's id (random per cache instance).
    #[serde(rename = "p")]
    pub(crate) publisher: u64,
    /// The publisher's sequence: 1, 2, 3, … with no gaps unless messages were lost.
    #[serde(rename = "s")]
    pub(crate) seq: u64,
    /// A canary's send time (Unix ns), on the messages an instance sends itself to measure
    /// the backplane's lag; 0 otherwise.
    #[serde(rename = "c", default)]
    pub(crate) canary_unix_ns: u64,
    /// The updates, at most one per key.
    #[serde(rename = "i")]
    pub(crate) items: Vec<Item>,
}

/// One key's update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Item {
    /// A market-data value: its envelope (version and TTL inside), and when it expires
    /// (Unix ms, as the writer sends it to Redis).
    #[serde(rename = "v")]
    Value {
        #[serde(rename = "k")]
        key: String,
        #[serde(rename = "v")]
        version: u64,
        #[serde(rename = "e", with = "serde_bytes")]
        envelope: Vec<u8>,
        #[serde(rename = "x")]
        expire_at_ms: u64,
    },
    /// A whole book side, best first, with the TTL it was written with and its expiry.
    #[serde(rename = "b")]
    Book {
        #[serde(rename = "k")]
        key: String,
        #[serde(rename = "v")]
        version: u64,
        #[serde(rename = "l")]
        levels: Vec<Level>,
        #[serde(rename = "t")]
        ttl_ms: u64,
        #[serde(rename = "x")]
        expire_at_ms: u64,
    },
    /// `version` of the key was written (write-through, a synchronous `set`): copies older
    /// than it must go.
    #[serde(rename = "i")]
    Invalidate {
        #[serde(rename = "k")]
        key: String,
        #[serde(rename = "v")]
        version: u64,
    },
    /// The key was deleted (a `delete`, a clear, recovery's replay): any copy must go.
    #[serde(rename = "d")]
    Evict {
        #[serde(rename = "k")]
        key: String,
    },
}

impl Item {
    /// Its version; `None` for an eviction, which orders by arrival only.
    pub(crate) fn version(&self) -> Option<u64> {
        match self {
            Item::Value { version, .. }
            | Item::Book { version, .. }
            | Item::Invalidate { version, .. } => Some(*version),
            Item::Evict { .. } => None,
        }
    }
}

/// Encodes a message.
pub(crate) fn encode(m: &Message) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(m).map_err(|e| Error::InvalidValue {
        reason: format!("backplane message: {e}"),
    })
}

/// Decodes a message, refusing one larger than [`MAX_MESSAGE_BYTES`].
pub(crate) fn decode(bytes: &[u8]) -> Result<Message> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Error::Decode {
            key: "backplane".to_owned(),
            reason: format!("a message of {} bytes", bytes.len()),
        });
    }
    rmp_serde::from_slice(bytes).map_err(|e| Error::Decode {
        key: "backplane".to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips() {
        let m = Message {
            publisher: 7,
            seq: 3,
            canary_unix_ns: 0,
            items: vec![
                Item::Value {
                    key: "mdc:price:{A}".into(),
                    version: 9,
                    envelope: vec![77, 1, 2, 3],
                    expire_at_ms: 1_800_000_000_000,
                },
                Item::Book {
                    key: "mdc:book:{A}:bid".into(),
                    version: 4,
                    levels: vec![Level {
                        price: 100.5,
                        qty: 2.0,
                    }],
                    ttl_ms: 50,
                    expire_at_ms: 1_800_000_000_050,
                },
                Item::Invalidate {
                    key: "mdc:ord:{O1}".into(),
                    version: 2,
                },
                Item::Evict {
                    key: "mdc:pos:{A}".into(),
                },
            ],
        };
        let bytes = encode(&m).unwrap();
        assert_eq!(decode(&bytes).unwrap(), m);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\xff\xff", b"\x93\x01", &[0x80; 64]] {
            assert!(decode(bytes).is_err(), "{bytes:?}");
        }
        assert!(decode(&vec![0u8; MAX_MESSAGE_BYTES + 1]).is_err());
    }
}
