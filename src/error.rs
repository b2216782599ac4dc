//! The one public error type, with a `kind()` and the decision methods callers branch on.

use std::time::Duration;

/// Shorthand for `Result<T, mdcache::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely: callers (and later the breaker and fallback) decide with this,
/// never by matching message strings.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A key identifier broke the rules of DESIGN §2; nothing was sent anywhere.
    InvalidKey,
    /// A value was refused before any I/O (too large, or it could not be encoded), or Redis
    /// refused an argument as malformed (e.g. "value is not an integer or out of range"):
    /// caller input either way, never a sign of an unhealthy Redis.
    InvalidValue,
    /// Bytes stored at a key did not decode as the expected envelope or type.
    Decode,
    /// An L2 operation (or acquiring its connection) missed its deadline.
    Timeout,
    /// The backend could not be reached or the connection broke.
    Unavailable,
    /// The key holds a Redis type the schema does not use (e.g. a string where a book is expected).
    WrongType,
    /// Redis answered with an error that is not one of the above.
    Backend,
    /// Configuration was invalid; the message names the variable or setting.
    Config,
    /// The operation needs a tier this cache was not built with.
    Unsupported,
    /// The circuit breaker is open: Redis was not contacted.
    BreakerOpen,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::InvalidKey => "invalid key",
            ErrorKind::InvalidValue => "invalid value",
            ErrorKind::Decode => "decode error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "backend unavailable",
            ErrorKind::WrongType => "wrong type",
            ErrorKind::Backend => "backend error",
            ErrorKind::Config => "configuration error",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::BreakerOpen => "circuit breaker open",
        })
    }
}

/// Every error mdcache returns.
///
/// Match on [`Error::kind`] or use the decision methods ([`is_timeout`](Error::is_timeout),
/// [`is_retryable`](Error::is_retryable), [`trips_breaker`](Error::trips_breaker)).
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A key identifier was rejected (DESIGN §2); nothing was sent to any tier.
    #[error("invalid key id {id:?}: {reason}")]
    InvalidKey {
        /// The identifier as given.
        id: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// An encoded value exceeds the configured limit; nothing was written.
    #[error("value of {size} bytes exceeds the {limit}-byte limit")]
    ValueTooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// A value broke a rule of its kind (e.g. a book with a price twice); nothing was written.
    #[error("invalid value: {reason}")]
    InvalidValue {
        /// Which rule it broke.
        reason: String,
    },
    /// A value could not be encoded as MessagePack; nothing was written.
    #[error("value could not be encoded: {0}")]
    Encode(String),
    /// Stored bytes did not decode.
    #[error("value at {key} could not be decoded: {reason}")]
    Decode {
        /// The full Redis key.
        key: String,
        /// What was wrong with the bytes.
        reason: String,
    },
    /// An operation missed its deadline.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out (`get`, `set`, `connect`, ...).
        op: &'static str,
        /// The deadline it was given.
        after: Duration,
    },
    /// The key holds a Redis type this schema does not use.
    #[error("key {key} holds the wrong Redis type for this schema")]
    WrongType {
        /// The full Redis key.
        key: String,
    },
    /// An error from Redis or the connection to it. [`Error::kind`] says which kind
    /// ([`Timeout`](ErrorKind::Timeout), [`Unavailable`](ErrorKind::Unavailable),
    /// [`InvalidValue`](ErrorKind::InvalidValue), [`Backend`](ErrorKind::Backend), ...).
    #[error("redis: {0}")]
    Redis(#[source] BackendError),
    /// Invalid configuration; `name` is the environment variable or builder setting.
    #[error("invalid configuration {name}: {reason}")]
    Config {
        /// The variable or setting, e.g. `CACHE_OP_TIMEOUT_MS`.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The operation needs a tier this cache does not have (e.g. `ttl` on a memory-only cache).
    #[error("{0}")]
    Unsupported(&'static str),
    /// The circuit breaker is open: Redis was not contacted (it failed recently, and a probe
    /// has not yet shown it healthy and cleaned).
    #[error("circuit breaker open: redis not contacted")]
    BreakerOpen,
}

impl Error {
    /// The coarse category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidKey { .. } => ErrorKind::InvalidKey,
            Error::ValueTooLarge { .. } | Error::InvalidValue { .. } | Error::Encode(_) => {
                ErrorKind::InvalidValue
            }
            Error::Decode { .. } => ErrorKind::Decode,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::WrongType { .. } => ErrorKind::WrongType,
            Error::Config { .. } => ErrorKind::Config,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::BreakerOpen => ErrorKind::BreakerOpen,
            Error::Redis(e) => e.kind(),
        }
    }

    /// True when an operation missed its deadline (the server may be hung or slow).
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// True when trying the same idempotent operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Timeout | ErrorKind::Unavailable)
    }

    /// True when this error says something about the backend's health and should count
    /// toward opening a circuit breaker; caller mistakes (bad key, oversize value) never do.
    pub fn trips_breaker(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Timeout | ErrorKind::Unavailable | ErrorKind::Backend
        )
    }

    /// True when the circuit breaker is open: Redis was not contacted. Reads can go to the
    /// source (as [`CacheAside`](crate::CacheAside) does); waiting for recovery
    /// ([`Cache::breaker`](crate::Cache::breaker)) is the other choice.
    pub fn is_breaker_open(&self) -> bool {
        self.kind() == ErrorKind::BreakerOpen
    }

    /// True when the caller's input was refused: a bad key or value, before any I/O, or an
    /// argument Redis replied was malformed.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self.kind(), ErrorKind::InvalidKey | ErrorKind::InvalidValue)
    }

    pub(crate) fn config(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Wraps a Redis error as [`Error::Redis`], keeping the client's type out of the API.
    pub(crate) fn redis(e: redis::RedisError) -> Self {
        Error::Redis(BackendError(e))
    }

    /// True when Redis Cluster redirected the command (`MOVED`, `ASK`, `TRYAGAIN`,
    /// `CROSSSLOT`): the slot it was sent for is served elsewhere now.
    pub(crate) fn is_redirect(&self) -> bool {
        use redis::{ErrorKind as K, ServerErrorKind as S};
        match self {
            Error::Redis(BackendError(e)) => matches!(
                e.kind(),
                K::Server(S::Moved | S::Ask | S::TryAgain | S::CrossSlot)
            ),
            _ => false,
        }
    }

    /// Maps a Redis error for `key`, turning `WRONGTYPE` replies into [`Error::WrongType`].
    pub(crate) fn from_redis(e: redis::RedisError, key: &str) -> Self {
        if is_wrongtype(&e) {
            Error::WrongType {
                key: key.to_owned(),
            }
        } else {
            Error::redis(e)
        }
    }
}

/// An error from Redis (or Valkey) or the connection to it, as carried by [`Error::Redis`].
///
/// Opaque on purpose: the Redis client library is an implementation detail, so upgrading or
/// replacing it is not a breaking change for callers. Decide with [`Error::kind`] and the
/// decision methods; [`code`](Self::code) and [`detail`](Self::detail) are for logs and for
/// the rare caller that must tell one Redis reply from another. `Display` is the client's
/// full message and [`source`](std::error::Error::source) continues the chain below it (an
/// I/O error, a server reply).
// No `#[non_exhaustive]` (house rule 5): the private field already keeps callers from
// constructing or destructuring it.
#[derive(Debug, Clone)]
pub struct BackendError(redis::RedisError);

impl BackendError {
    /// The code Redis put first in its error reply, such as `ERR`, `WRONGTYPE`, `READONLY`,
    /// `MOVED`, `NOSCRIPT` or `BUSY` (for a pipeline, the first failed command's, when the
    /// client knows that code); `None` when Redis did not reply with an error: the connection
    /// failed or timed out, or the reply could not be parsed.
    pub fn code(&self) -> Option<&str> {
        self.0.code()
    }

    /// The message after the code in Redis's error reply (e.g. `value is not an integer or
    /// out of range`), or what the client found wrong with a reply it could not use; `None`
    /// when there is no such text (a connection failure, a pipeline failure), in which case
    /// `Display` carries the whole story.
    pub fn detail(&self) -> Option<&str> {
        self.0.detail()
    }

    /// The category [`Error::kind`] reports for this error.
    fn kind(&self) -> ErrorKind {
        let e = &self.0;
        if e.is_timeout() {
            ErrorKind::Timeout
        } else if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            ErrorKind::Unavailable
        } else if is_wrongtype(e) {
            ErrorKind::WrongType
        } else if is_argument_error(e) {
            ErrorKind::InvalidValue
        } else {
            ErrorKind::Backend
        }
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for BackendError {
    // The client's own source, not the client's error: this type already shows the client's
    // message, so returning the client's error would print it twice. The chain reads as it
    // did before the wrapper: `Error` → this → the cause (an I/O error, a server reply).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// True for a `WRONGTYPE` reply, alone or inside a pipeline/transaction failure (where
/// redis-rs reports the code only through `into_server_errors`).
fn is_wrongtype(e: &redis::RedisError) -> bool {
    e.code() == Some("WRONGTYPE")
        || e.clone()
            .into_server_errors()
            .is_some_and(|errs| errs.iter().any(|(_, s)| s.code() == "WRONGTYPE"))
}

/// Redis's replies to a malformed argument (its shared error strings, `server.c`), which
/// Redis sends as a plain `ERR`. Matching the text here, once, is the only way to tell them
/// from `ERR`s about the server; everything downstream decides by [`ErrorKind`].
const ARGUMENT_ERRORS: &[&str] = &[
    "value is not an integer or out of range",
    "value is not a valid float",
    "value is out of range",
    "syntax error",
    "wrong number of arguments",
    "invalid expire time",
    "min or max is not a float",
    "min or max not valid string range item",
    "increment or decrement would overflow",
    "resulting score is not a number",
];

/// True for an `ERR` reply saying an argument was malformed: the caller's input (e.g. a
/// depth no sorted set can have), which says nothing about Redis's health, so it must never
/// count toward opening the breaker.
fn is_argument_error(e: &redis::RedisError) -> bool {
    e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| ARGUMENT_ERRORS.iter().any(|a| d.starts_with(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_mistakes_never_trip_the_breaker() {
        let e = Error::InvalidKey {
            id: "a b".into(),
            reason: "whitespace",
        };
        assert_eq!(e.kind(), ErrorKind::InvalidKey);
        assert!(!e.trips_breaker());
        assert!(!e.is_retryable());
        assert!(e.is_invalid_input());
        let t = Error::Timeout {
            op: "get",
            after: Duration::from_millis(5),
        };
        assert!(t.is_timeout() && t.is_retryable() && t.trips_breaker());
    }

    #[test]
    fn redis_argument_errors_are_invalid_input_and_never_trip_the_breaker() {
        let reply = |detail: &str| {
            Error::redis(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                "An error was signalled by the server",
                detail.to_owned(),
            )))
        };
        // What a script's `ZRANGE key 0 1.8e19` gets back from Redis 7.
        let e = reply("value is not an integer or out of range script: 7004, on @user_script:12.");
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        assert!(e.is_invalid_input() && !e.trips_breaker() && !e.is_retryable());
        // Other `ERR`s still count as the backend's.
        let other = reply("Error running script (call to f_1234): @user_script:1: boom");
        assert_eq!(other.kind(), ErrorKind::Backend);
        assert!(other.trips_breaker());
    }

    #[test]
    fn io_errors_are_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::redis(redis::RedisError::from(io));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.trips_breaker());
    }

    #[test]
    fn backend_errors_show_the_reply_code_and_detail_and_keep_the_chain() {
        let reply = Error::redis(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "An error was signalled by the server",
            "You can't write against a read only replica.".to_owned(),
        )));
        let Error::Redis(b) = &reply else {
            panic!("not a redis error: {reply:?}");
        };
        assert_eq!(b.code(), Some("READONLY"));
        assert_eq!(
            b.detail(),
            Some("You can't write against a read only replica.")
        );
        assert_eq!(reply.kind(), ErrorKind::Backend);
        assert!(reply.to_string().starts_with("redis: "));
        assert!(reply.to_string().contains("read only replica"));

        // A connection failure has no reply: no code, and the I/O error is the next link.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let down = Error::redis(redis::RedisError::from(io));
        let Error::Redis(b) = &down else {
            panic!("not a redis error: {down:?}");
        };
        assert_eq!(b.code(), None);
        let link = std::error::Error::source(&down).expect("the backend error");
        assert!(link.downcast_ref::<BackendError>().is_some());
        let below = link.source().expect("the I/O error below it");
        assert_eq!(below.to_string(), "refused");
    }
}
