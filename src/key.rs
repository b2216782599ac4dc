//! Typed keys: the `KeySchema` trait, identifier validation, namespace and `{ID}` hash tags.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::book::{BookSide, BookSideKind};
use crate::error::{Error, Result};
use crate::stats::KindStats;

/// Longest identifier accepted, in bytes (DESIGN §2).
pub const MAX_ID_LEN: usize = 128;

/// Describes one kind of cached value: its name, its value type and its default TTL.
///
/// The built-in kinds are [`Price`](crate::Price), [`Position`](crate::Position),
/// [`BookBid`](crate::BookBid), [`BookAsk`](crate::BookAsk), [`Risk`](crate::Risk),
/// [`Order`](crate::Order) and [`StrategyState`](crate::StrategyState). A user-defined kind is
/// one more implementation:
///
/// ```
/// use std::time::Duration;
/// use mdcache::{KeySchema, ValueSchema};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ticker { last: f64 }
///
/// impl KeySchema for Ticker {
///     type Value = Ticker;
///     const KIND: &'static str = "ticker";
///     const DEFAULT_TTL: Duration = Duration::from_millis(250);
/// }
/// impl ValueSchema for Ticker {}
/// ```
pub trait KeySchema: Send + Sync + 'static {
    /// The type a key of this kind holds; reading the key can only yield this type.
    type Value: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The kind's name as used on the command line and in metrics labels (`price`, `book:bid`).
    /// Lower-case ASCII letters, digits, `_`, `-` and `:` only.
    const KIND: &'static str;
    /// TTL used unless configuration overrides it (`CACHE_TTL_<KIND>_MS`).
    const DEFAULT_TTL: Duration;
    /// The part of the Redis key before the `{ID}` hash tag (`book` for `mdc:book:{ID}:bid`).
    const KEY_PREFIX: &'static str = Self::KIND;
    /// The part of the Redis key after the `{ID}` hash tag (`:bid` for `mdc:book:{ID}:bid`).
    const KEY_SUFFIX: &'static str = "";
    /// How the kind is stored in Redis. Set by [`ValueSchema`] / [`BookSchema`] kinds; user
    /// kinds keep the default.
    const STORAGE: Storage = Storage::Value;
}

/// How a kind is stored in Redis.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// One MessagePack envelope in a Redis string.
    Value,
    /// A sorted set of price levels plus a version key beside it.
    Book,
}

/// A kind whose value is stored as one MessagePack envelope (a Redis string).
pub trait ValueSchema: KeySchema {}

/// A kind stored as a Redis sorted set of price levels (score = price).
pub trait BookSchema: KeySchema<Value = BookSide> {
    /// Which side of the book, deciding the order of a top-N read.
    const SIDE: BookSideKind;
}

/// A validated key of kind `S`: the full Redis key string, the kind's TTL and its counters.
///
/// Build keys once with [`Cache::key`](crate::Cache::key) and reuse them: the key string is
/// formatted and validated at construction, so reads do no formatting or allocation for it.
pub struct Key<S: KeySchema> {
    /// The full Redis key, e.g. `mdc:price:{AAPL}`; an `Arc` so L1 inserts share it.
    full: Arc<str>,
    /// Byte range of the identifier inside `full`.
    id_start: u32,
    id_end: u32,
    /// The kind's TTL after configuration overrides, resolved once at construction.
    ttl: Duration,
    /// The kind's counters, resolved once so hot paths need no lookup.
    pub(crate) stats: Arc<KindStats>,
    _schema: PhantomData<fn() -> S>,
}

impl<S: KeySchema> Clone for Key<S> {
    fn clone(&self) -> Self {
        Key {
            full: Arc::clone(&self.full),
            id_start: self.id_start,
            id_end: self.id_end,
            ttl: self.ttl,
            stats: Arc::clone(&self.stats),
            _schema: PhantomData,
        }
    }
}

impl<S: KeySchema> fmt::Debug for Key<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("key", &self.full)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl<S: KeySchema> fmt::Display for Key<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl<S: KeySchema> Key<S> {
    pub(crate) fn new(
        namespace: &str,
        id: &str,
        ttl: Duration,
        stats: Arc<KindStats>,
    ) -> Result<Self> {
        validate_id(id)?;
        let full = format!("{namespace}:{}:{{{id}}}{}", S::KEY_PREFIX, S::KEY_SUFFIX);
        let id_start = namespace.len() + 1 + S::KEY_PREFIX.len() + 2;
        Ok(Key {
            id_start: id_start as u32,
            id_end: (id_start + id.len()) as u32,
            full: full.into(),
            ttl,
            stats,
            _schema: PhantomData,
        })
    }

    /// The full Redis key, e.g. `mdc:price:{AAPL}`.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The identifier this key was built from, e.g. `AAPL`.
    pub fn id(&self) -> &str {
        &self.full[self.id_start as usize..self.id_end as usize]
    }

    /// The TTL writes of this key get (the kind's default unless configuration overrides it).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The kind's name, e.g. `price`.
    pub fn kind(&self) -> &'static str {
        S::KIND
    }

    /// The Redis Cluster hash slot (0..16384) this key lives in: every key of one identifier
    /// (`{AAPL}`: its price, both book sides, its position) shares it, whatever the kind.
    /// For grouping work by shard, e.g. giving each engine the symbols of some slots.
    ///
    /// ```
    /// # fn main() -> mdcache::Result<()> {
    /// use mdcache::{BookBid, Cache, Price};
    /// let cache = Cache::builder().build()?;
    /// let price = cache.key::<Price>("AAPL")?;
    /// assert_eq!(price.slot(), cache.key::<BookBid>("AAPL")?.slot());
    /// assert!(price.slot() < 16_384);
    /// # Ok(()) }
    /// ```
    pub fn slot(&self) -> u16 {
        key_slot(self.full.as_bytes())
    }

    pub(crate) fn shared(&self) -> &Arc<str> {
        &self.full
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the bytes between
/// the first `{` and the next `}`, when there are any) or of the whole key, modulo 16384.
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16_xmodem(tagged.unwrap_or(key)) % 16_384
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster hashes keys.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Checks an identifier against DESIGN §2: non-empty, at most [`MAX_ID_LEN`] bytes, and no
/// whitespace, control characters, `{`, `}`, `:`, `*`, `?`, `[`, `]` or `\`.
///
/// ```
/// assert!(mdcache::validate_id("AAPL").is_ok());
/// assert!(mdcache::validate_id("BTC-USD.P").is_ok());
/// assert!(mdcache::validate_id("a:b").is_err());
/// ```
pub fn validate_id(id: &str) -> Result<()> {
    let fail = |reason| {
        Err(Error::InvalidKey {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return fail("identifier is empty");
    }
    if id.len() > MAX_ID_LEN {
        return fail("identifier is longer than 128 bytes");
    }
    for c in id.chars() {
        if c.is_whitespace() {
            return fail("identifier contains whitespace");
        }
        if c.is_control() {
            return fail("identifier contains a control character");
        }
        if matches!(c, '{' | '}' | ':' | '*' | '?' | '[' | ']' | '\\') {
            return fail("identifier contains one of { } : * ? [ ] \\");
        }
    }
    Ok(())
}

/// Checks a namespace: the same rules as an identifier (it is a plain prefix segment).
pub(crate) fn validate_namespace(ns: &str) -> Result<()> {
    validate_id(ns).map_err(|e| match e {
        Error::InvalidKey { reason, .. } => Error::config("CACHE_NAMESPACE", reason),
        other => other,
    })
}

/// Checks a kind name (`KeySchema::KIND`): lower-case ASCII letters, digits, `_`, `-`, `:`.
pub(crate) fn validate_kind(kind: &str) -> Result<()> {
    let ok = !kind.is_empty()
        && kind.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b':')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidKey {
            id: kind.to_owned(),
            reason: "kind names are lower-case ASCII letters, digits, '_', '-' and ':'",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{BookBid, Price};

    #[test]
    fn slots_are_redis_clusters() {
        // The examples of the Redis Cluster specification and of CLUSTER KEYSLOT's docs.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"somekey"), 11_058);
        assert_eq!(key_slot(b"foo{hash_tag}"), key_slot(b"hash_tag"));
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        // An empty tag hashes the whole key; only the first `{` counts.
        assert_eq!(
            key_slot(b"foo{}{bar}"),
            crc16_xmodem(b"foo{}{bar}") % 16_384
        );
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"no tag}{"), crc16_xmodem(b"no tag}{") % 16_384);
    }

    fn stats(kind: &'static str) -> Arc<KindStats> {
        Arc::new(KindStats::new(0, kind))
    }

    #[test]
    fn keys_carry_hash_tags_and_suffixes() {
        let k = Key::<Price>::new("mdc", "AAPL", Price::DEFAULT_TTL, stats("price")).unwrap();
        assert_eq!(k.as_str(), "mdc:price:{AAPL}");
        assert_eq!(k.id(), "AAPL");
        let b = Key::<BookBid>::new("ns", "ES", BookBid::DEFAULT_TTL, stats("book:bid")).unwrap();
        assert_eq!(b.as_str(), "ns:book:{ES}:bid");
        assert_eq!(b.id(), "ES");
    }

    #[test]
    fn every_forbidden_character_is_refused() {
        for bad in [
            "", "a b", "a\tb", "a\nb", "a\u{7}b", "a{b", "a}b", "a:b", "a*b", "a?b", "a[b", "a]b",
            "a\\b", "\u{a0}",
        ] {
            let err = validate_id(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidKey, "{bad:?}");
        }
        assert!(validate_id(&"x".repeat(128)).is_ok());
        assert!(validate_id(&"x".repeat(129)).is_err());
        assert!(validate_id("ÄPFEL-2025.X_y").is_ok());
    }

    #[test]
    fn kind_names_are_checked() {
        assert!(validate_kind("book:bid").is_ok());
        assert!(validate_kind("Price").is_err());
        assert!(validate_kind("a b").is_err());
    }
}
