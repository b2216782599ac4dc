//! The value envelope: an 18-byte header (magic, format version, value version, written TTL) and a MessagePack payload.
//!
//! Layout of every value this build stores (format 2):
//!
//! | bytes | content |
//! |---|---|
//! | 0 | magic `0x4D` (`M`) |
//! | 1 | envelope format version: `2` |
//! | 2..10 | the value's `version`, unsigned 64-bit big-endian |
//! | 10..18 | the TTL the writer gave the value, in milliseconds, unsigned 64-bit big-endian; `0` when not recorded |
//! | 18.. | the value, MessagePack with field names (`rmp_serde::to_vec_named`) |
//!
//! Format 1 (written by earlier builds) is the same without bytes 10..18: a 10-byte header,
//! then the payload. Both are read; the version sits at bytes 2..10 in both, so the versioned
//! compare-and-set in Redis treats them alike. The written TTL makes a read's age exact for
//! values written with a per-write TTL: age = written TTL − remaining TTL, both measured by
//! Redis's clock, so no clock skew enters (for format 1 the kind's TTL stands in).
//!
//! Why a fixed binary header rather than a MessagePack array around the payload: the versioned
//! write runs as a Lua script inside Redis and must compare versions without decoding the
//! payload. Lua numbers are doubles, so a MessagePack-decoded `u64` above 2^53 would compare
//! wrongly; eight big-endian bytes compare exactly, byte by byte. Field names in the payload
//! make the envelope readable by other languages and tolerant of field reordering.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// First byte of every envelope.
pub const MAGIC: u8 = 0x4D;
/// Envelope format version written by this build.
pub const FORMAT: u8 = 2;
/// The earlier envelope format (no written TTL), still read.
pub const FORMAT_V1: u8 = 1;
/// Length of the fixed header before the MessagePack payload (format 2).
pub const HEADER_LEN: usize = 18;
/// Length of the format-1 header.
pub const HEADER_LEN_V1: usize = 10;

/// A decoded envelope.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<V> {
    /// The value's version.
    pub version: u64,
    /// The TTL the writer gave the value; `None` for format 1 or when not recorded.
    pub ttl: Option<std::time::Duration>,
    /// The value.
    pub value: V,
}
/// Default limit on an encoded value, in bytes (1 MiB).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// Encodes `value` with `version` into an envelope, refusing it if the result exceeds `limit`
/// bytes (nothing is written anywhere in that case).
///
/// ```
/// use mdcache::codec;
/// let bytes = codec::encode(7, &vec![1u32, 2, 3], 1024).unwrap();
/// let (version, back): (u64, Vec<u32>) = codec::decode(&bytes).unwrap();
/// assert_eq!((version, back), (7, vec![1, 2, 3]));
/// ```
pub fn encode<V: Serialize + ?Sized>(version: u64, value: &V, limit: usize) -> Result<Vec<u8>> {
    encode_with_ttl(version, None, value, limit)
}

/// [`encode`], recording the TTL the value is written with (whole milliseconds), so a reader
/// can tell the value's age exactly.
///
/// ```
/// use std::time::Duration;
/// use mdcache::codec;
/// let bytes = codec::encode_with_ttl(7, Some(Duration::from_secs(10)), &"v", 1024).unwrap();
/// let env = codec::decode_envelope::<String>(&bytes).unwrap();
/// assert_eq!((env.version, env.ttl), (7, Some(Duration::from_secs(10))));
/// ```
pub fn encode_with_ttl<V: Serialize + ?Sized>(
    version: u64,
    ttl: Option<std::time::Duration>,
    value: &V,
    limit: usize,
) -> Result<Vec<u8>> {
    let ttl_ms = ttl.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    // 136: a `Price` envelope is ~124 bytes; starting smaller costs a reallocation per write.
    let mut buf = Vec::with_capacity(136);
    buf.push(MAGIC);
    buf.push(FORMAT);
    buf.extend_from_slice(&version.to_be_bytes());
    buf.extend_from_slice(&ttl_ms.to_be_bytes());
    rmp_serde::encode::write_named(&mut buf, value).map_err(|e| Error::Encode(e.to_string()))?;
    if buf.len() > limit {
        return Err(Error::ValueTooLarge {
            size: buf.len(),
            limit,
        });
    }
    Ok(buf)
}

/// Reads the version from an envelope's header without decoding the payload.
pub fn peek_version(bytes: &[u8]) -> Result<u64, &'static str> {
    header(bytes).map(|h| h.0)
}

/// The version, the written TTL in ms (0 = not recorded) and the header length.
fn header(bytes: &[u8]) -> Result<(u64, u64, usize), &'static str> {
    let len = match (bytes.first(), bytes.get(1)) {
        (Some(&MAGIC), Some(&FORMAT)) => HEADER_LEN,
        (Some(&MAGIC), Some(&FORMAT_V1)) => HEADER_LEN_V1,
        (Some(&MAGIC), Some(_)) => return Err("unknown envelope format version"),
        (Some(_), _) => return Err("bad magic byte (not an mdcache envelope)"),
        (None, _) => return Err("shorter than the envelope header"),
    };
    let word = |at: usize| -> Option<u64> {
        let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_be_bytes(b))
    };
    let version = word(2).ok_or("shorter than the envelope header")?;
    let ttl_ms = if len == HEADER_LEN {
        word(10).ok_or("shorter than the envelope header")?
    } else {
        0
    };
    Ok((version, ttl_ms, len))
}

/// Decodes an envelope into its version and value. Never panics on any input; the error
/// says what was wrong with the bytes.
pub fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<(u64, V), String> {
    decode_envelope(bytes).map(|e| (e.version, e.value))
}

/// Decodes an envelope of either format, with the TTL its writer recorded. Never panics.
pub fn decode_envelope<V: DeserializeOwned>(bytes: &[u8]) -> Result<Envelope<V>, String> {
    let (version, ttl_ms, len) = header(bytes).map_err(str::to_owned)?;
    let value = rmp_serde::from_slice(&bytes[len..]).map_err(|e| e.to_string())?;
    Ok(Envelope {
        version,
        ttl: (ttl_ms > 0).then(|| std::time::Duration::from_millis(ttl_ms)),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Price;
    use proptest::prelude::*;

    fn price() -> Price {
        Price {
            bid: 1.0,
            ask: 2.0,
            bid_size: 3.0,
            ask_size: 4.0,
            last: 1.5,
            seq: 9,
            exchange_ts_ns: 10,
        }
    }

    #[test]
    fn round_trips_and_keeps_the_version() {
        let bytes = encode(u64::MAX - 1, &price(), DEFAULT_MAX_VALUE_BYTES).unwrap();
        assert_eq!(peek_version(&bytes), Ok(u64::MAX - 1));
        let (v, p): (u64, Price) = decode(&bytes).unwrap();
        assert_eq!(v, u64::MAX - 1);
        assert_eq!(p, price());
    }

    #[test]
    fn format_1_envelopes_still_decode_without_a_ttl() {
        let mut v1 = vec![MAGIC, FORMAT_V1];
        v1.extend_from_slice(&5u64.to_be_bytes());
        v1.extend(rmp_serde::to_vec_named(&price()).unwrap());
        let env = decode_envelope::<Price>(&v1).unwrap();
        assert_eq!((env.version, env.ttl, env.value), (5, None, price()));
        assert_eq!(peek_version(&v1), Ok(5));
    }

    #[test]
    fn the_written_ttl_round_trips() {
        let ttl = std::time::Duration::from_millis(10_900);
        let bytes = encode_with_ttl(3, Some(ttl), &price(), 1024).unwrap();
        assert_eq!(bytes[1], FORMAT);
        let env = decode_envelope::<Price>(&bytes).unwrap();
        assert_eq!(env.ttl, Some(std::time::Duration::from_millis(10_900)));
        assert_eq!(
            decode_envelope::<Price>(&encode(3, &price(), 1024).unwrap())
                .unwrap()
                .ttl,
            None
        );
    }

    #[test]
    fn oversize_values_are_refused() {
        let big = vec![0u8; 2048];
        let err = encode(1, &big, 1024).unwrap_err();
        assert!(matches!(err, Error::ValueTooLarge { limit: 1024, .. }));
    }

    #[test]
    fn wrong_type_payload_is_a_decode_error() {
        let bytes = encode(1, &"just a string", 1024).unwrap();
        assert!(decode::<Price>(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<Price>(&bytes);
        }

        #[test]
        fn garbage_after_a_valid_header_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = vec![MAGIC, FORMAT, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
            bytes.extend(tail.iter().copied());
            let _ = decode::<Price>(&bytes);
            let mut v1 = vec![MAGIC, FORMAT_V1, 0, 0, 0, 0, 0, 0, 0, 1];
            v1.extend(tail);
            let _ = decode::<Price>(&v1);
        }
    }
}
