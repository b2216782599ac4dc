//! The read and write patterns over the cache and the source of record: cache-aside and write-through.

pub(crate) mod aside;
pub(crate) mod dirty;
pub(crate) mod flight;
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
    /// The source returned an older version (or no value) than one this process acknowledged
    /// for the key (a write-through whose cache write failed left a version floor, DESIGN §4
    /// rule 9), twice. The older value is not served; a replica lagging behind the primary is
    /// the usual cause. Retrying later may succeed.
    #[error(
        "source is behind an acknowledged write: loaded {loaded:?}, acknowledged version {floor}"
    )]
    BehindFloor {
        /// The version this process acknowledged.
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
}

/// Cache errors a source load cannot make up for: the caller's own mistakes.
pub(crate) fn is_caller_error(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::InvalidKey | ErrorKind::InvalidValue)
}
