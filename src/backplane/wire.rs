//! The backplane's message on the wire: a fixed header (format, publisher id, sequence, canary time) and a MessagePack batch of key updates.
//!
//! The header is 25 bytes read without a decoder, so a receiver skips its own messages (and
//! sees a gap) without decoding the batch. The batch is compact MessagePack (structs as
//! arrays, a book level as `[price, qty]`): a message carries dozens of keys a millisecond to
//! every instance, and field names repeated per item and per level were most of the
//! receivers' decoding time.

use serde::{Deserialize, Serialize};

use crate::book::Level;
use crate::error::{Error, Result};

/// Largest message a receiver decodes (a publisher splits its batches well below it).
pub(crate) const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The first byte of every message: the format. A receiver refuses any other (an instance
/// of an incompatible build), and treats the message as lost.
pub(crate) const FORMAT: u8 = 2;

/// The header's length: the format byte and three big-endian `u64`s.
const HEADER_LEN: usize = 1 + 3 * 8;

/// One publish.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    /// The header.
    pub(crate) header: Header,
    /// The updates, at most one per key.
    pub(crate) items: Vec<Item>,
}

/// A message's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The publisher's id (random per cache instance).
    pub(crate) publisher: u64,
    /// The publisher's sequence: 1, 2, 3, … with no gaps unless messages were lost.
    pub(crate) seq: u64,
    /// A canary's send time (Unix ns), on the messages an instance sends itself to measure
    /// the backplane's lag; 0 otherwise.
    pub(crate) canary_unix_ns: u64,
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
    let mut bytes = Vec::with_capacity(HEADER_LEN + 64 * m.items.len());
    bytes.push(FORMAT);
    let h = &m.header;
    for word in [h.publisher, h.seq, h.canary_unix_ns] {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    rmp_serde::encode::write(&mut bytes, &m.items).map_err(|e| Error::InvalidValue {
        reason: format!("backplane message: {e}"),
    })?;
    Ok(bytes)
}

fn malformed(reason: String) -> Error {
    Error::Decode {
        key: "backplane".to_owned(),
        reason,
    }
}

/// Reads a message's header, refusing another format or a message larger than
/// [`MAX_MESSAGE_BYTES`].
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(malformed(format!("a message of {} bytes", bytes.len())));
    }
    let Some((&format, rest)) = bytes.split_first() else {
        return Err(malformed("an empty message".to_owned()));
    };
    if format != FORMAT {
        return Err(malformed(format!(
            "format {format}, this build reads {FORMAT}"
        )));
    }
    let word = |at: usize| -> Result<u64> {
        rest.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| malformed(format!("a header of {} bytes", bytes.len())))
    };
    Ok(Header {
        publisher: word(0)?,
        seq: word(8)?,
        canary_unix_ns: word(16)?,
    })
}

/// Decodes the updates of a message whose header [`decode_header`] accepted.
pub(crate) fn decode_items(bytes: &[u8]) -> Result<Vec<Item>> {
    let batch = bytes
        .get(HEADER_LEN..)
        .ok_or_else(|| malformed("no batch after the header".to_owned()))?;
    rmp_serde::from_slice(batch).map_err(|e| malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<Message> {
        Ok(Message {
            header: decode_header(bytes)?,
            items: decode_items(bytes)?,
        })
    }

    #[test]
    fn a_message_round_trips() {
        let m = Message {
            header: Header {
                publisher: 7,
                seq: 3,
                canary_unix_ns: 11,
            },
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
        assert_eq!(decode_header(&bytes).unwrap(), m.header);
        // Levels go as bare pairs: no field names on the wire.
        assert!(!bytes.windows(3).any(|w| w == b"qty"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\xff\xff",
            b"\x93\x01",
            &[0x80; 64],
            &[FORMAT; 3],
        ] {
            assert!(decode(bytes).is_err(), "{bytes:?}");
        }
        // A whole header over garbage: the header reads, the batch does not.
        let mut bytes = vec![FORMAT];
        bytes.extend_from_slice(&[0; 24]);
        bytes.extend_from_slice(b"\xc1\xc1");
        assert!(decode_header(&bytes).is_ok());
        assert!(decode_items(&bytes).is_err());
        assert!(decode(&vec![FORMAT; MAX_MESSAGE_BYTES + 1]).is_err());
    }
}
