//! The value envelope: a 10-byte header (magic, format version, value version) and a MessagePack payload.
//!
//! Layout of every stored value:
//!
//! | bytes | content |
//! |---|---|
//! | 0 | magic `0x4D` (`M`) |
//! | 1 | envelope format version (currently `1`) |
//! | 2..10 | the value's `version`, unsigned 64-bit big-endian |
//! | 10.. | the value, MessagePack with field names (`rmp_serde::to_vec_named`) |
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
pub const FORMAT: u8 = 1;
/// Length of the fixed header before the MessagePack payload.
pub const HEADER_LEN: usize = 10;
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
    // 128: a `Price` envelope is ~116 bytes; starting smaller costs a reallocation per write.
    let mut buf = Vec::with_capacity(128);
    buf.push(MAGIC);
    buf.push(FORMAT);
    buf.extend_from_slice(&version.to_be_bytes());
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
    if bytes.len() < HEADER_LEN {
        return Err("shorter than the envelope header");
    }
    if bytes[0] != MAGIC {
        return Err("bad magic byte (not an mdcache envelope)");
    }
    if bytes[1] != FORMAT {
        return Err("unknown envelope format version");
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&bytes[2..HEADER_LEN]);
    Ok(u64::from_be_bytes(v))
}

/// Decodes an envelope into its version and value. Never panics on any input; the error
/// says what was wrong with the bytes.
pub fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<(u64, V), String> {
    let version = peek_version(bytes).map_err(str::to_owned)?;
    let value = rmp_serde::from_slice(&bytes[HEADER_LEN..]).map_err(|e| e.to_string())?;
    Ok((version, value))
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
            let mut bytes = vec![MAGIC, FORMAT, 0, 0, 0, 0, 0, 0, 0, 1];
            bytes.extend(tail);
            let _ = decode::<Price>(&bytes);
        }
    }
}
