//! The read and write patterns over the cache and the source of record: cache-aside and write-through.

pub(crate) mod aside;
pub(crate) mod write;

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// Why a cache-aside read failed. The source's error keeps its own type `E` (shared in an
/// `Arc`, because one failed load answers every caller waiting on it).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LoadError<E: std::error::Error + 'static> {
    /// The source failed.
    #[error("source: {0}")]
    Source(#[source] Arc<E>),
    /// The source did not answer within its deadline.
    #[error("source did not answer within {0:?}")]
    SourceTimeout(Duration),
    /// The cache refused the request (an invalid key or value) or failed in a way the
    /// source cannot make up for.
    #[error(transparent)]
    Cache(#[from] Error),
    /// Too many source loads were running; this one waited its bound and gave up, so a dead
    /// cache does not stampede the database.
    #[error("source overloaded: no load slot within {0:?}")]
    Overloaded(Duration),
    /// The source returned an older version (or no value) than one this process holds for
    /// the key, twice, and no copy within the kind's stale bound was left to serve marked
    /// `Stale`. What this process holds is a version floor an acknowledged write left (a
    /// write-through whose cache write failed, DESIGN §4 rule 9), or a value it cached and no
    /// longer trusts (its backplane subscription was lost, say). The older value is not
    /// served: that would take the reader backwards. A replica lagging behind the primary, or
    /// a source that never sees the feed's market data, is the usual cause. Retrying later
    /// may succeed.
    #[error("source is behind a version this process holds: loaded {loaded:?}, held {floor}")]
    BehindFloor {
        /// The version this process holds (acknowledged, or cached).
        floor: u64,
        /// The version the source returned (`None`: not found).
        loaded: Option<u64>,
    },
}

impl<E: std::error::Error + 'static> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            LoadError::Source(e) => LoadError::Source(Arc::clone(e)),
            LoadError::SourceTimeout(d) => LoadError::SourceTimeout(*d),
            LoadError::Cache(e) => LoadError::Cache(e.clone()),
            LoadError::Overloaded(d) => LoadError::Overloaded(*d),
            LoadError::BehindFloor { floor, loaded } => LoadError::BehindFloor {
                floor: *floor,
                loaded: *loaded,
            },
        }
    }
}

impl<E: std::error::Error + 'static> LoadError<E> {
    /// True when a deadline was missed (the source's, or the cache's).
    pub fn is_timeout(&self) -> bool {
        match self {
            LoadError::SourceTimeout(_) => true,
            LoadError::Cache(e) => e.is_timeout(),
            LoadError::Source(_) | LoadError::Overloaded(_) | LoadError::BehindFloor { .. } => {
                false
            }
        }
    }

    /// The source's own error, if that is what failed.
    pub fn source_error(&self) -> Option<&E> {
        match self {
            LoadError::Source(e) => Some(e),
            _ => None,
        }
    }

    /// True when trying the same read again may succeed: a missed deadline, an overloaded
    /// source, a source behind a version this process holds, or a retryable cache error.
    pub fn is_retryable(&self) -> bool {
        match self {
            LoadError::SourceTimeout(_)
            | LoadError::Overloaded(_)
            | LoadError::BehindFloor { .. } => true,
            LoadError::Cache(e) => e.is_retryable(),
            LoadError::Source(_) => false,
        }
    }

    /// True when the caller's input (key or value) was refused before any I/O.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, LoadError::Cache(e) if e.is_invalid_input())
    }

    /// True when the cache refused because its circuit breaker is open (Redis not contacted).
    pub fn is_breaker_open(&self) -> bool {
        matches!(self, LoadError::Cache(e) if e.is_breaker_open())
    }
}

/// Why a write-through write failed. Whatever the variant, no cache tier holds the value.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum WriteError<E: std::error::Error + 'static> {
    /// The value (or key) was refused before anything was written anywhere.
    #[error(transparent)]
    Invalid(Error),
    /// The database refused the write; the key was invalidated in both tiers.
    #[error("source refused the write: {0}")]
    Source(#[source] E),
    /// The database did not answer in time. It may still commit the write; the key was
    /// invalidated in both tiers, so the next read loads whatever the database decided.
    #[error("source did not answer within {0:?}; the outcome is unknown")]
    SourceTimeout(Duration),
}

impl<E: std::error::Error + 'static> WriteError<E> {
    /// The source's own error, if that is what failed.
    pub fn source_error(&self) -> Option<&E> {
        match self {
            WriteError::Source(e) => Some(e),
            _ => None,
        }
    }

    /// True when the input was refused before any I/O.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, WriteError::Invalid(e) if e.is_invalid_input())
    }

    /// True when the database missed its deadline (the write may still commit).
    pub fn is_timeout(&self) -> bool {
        matches!(self, WriteError::SourceTimeout(_))
    }

    /// True when trying the same write again may succeed: the database timed out. A refused
    /// write or refused input will be refused again.
    pub fn is_retryable(&self) -> bool {
        self.is_timeout()
    }

    /// Always false: a write-through never fails because the circuit breaker is open (the
    /// database comes first, and a cache write that cannot happen still acknowledges). Here
    /// so every mdcache error answers the same questions.
    pub fn is_breaker_open(&self) -> bool {
        false
    }
}

/// Cache errors a source load cannot make up for: the caller's own mistakes.
pub(crate) fn is_caller_error(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::InvalidKey | ErrorKind::InvalidValue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("db")]
    struct Db;

    #[test]
    fn every_error_type_answers_the_same_questions() {
        let open: LoadError<Db> = LoadError::Cache(Error::BreakerOpen);
        assert!(open.is_breaker_open() && !open.is_invalid_input() && !open.is_timeout());
        let behind: LoadError<Db> = LoadError::BehindFloor {
            floor: 2,
            loaded: Some(1),
        };
        assert!(behind.is_retryable() && !behind.is_breaker_open());
        let refused: LoadError<Db> = LoadError::Source(Arc::new(Db));
        assert!(!refused.is_retryable());
        let timed_out: WriteError<Db> = WriteError::SourceTimeout(Duration::from_secs(1));
        assert!(timed_out.is_timeout() && timed_out.is_retryable() && !timed_out.is_breaker_open());
        let invalid: WriteError<Db> =
            WriteError::Invalid(Error::InvalidValue { reason: "x".into() });
        assert!(invalid.is_invalid_input() && !invalid.is_retryable());
        assert!(Error::BreakerOpen.is_breaker_open());
        assert!(!Error::BreakerOpen.trips_breaker());
    }
}
