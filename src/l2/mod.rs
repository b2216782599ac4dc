//! The L2 tier on Redis: string values with versioned writes, and order-book sides as sorted sets.

pub(crate) mod book;
pub(crate) mod guard;
pub(crate) mod redis;
