//! Resilience around L2 operations, tower-style: a circuit breaker, full-jitter backoff, a retry policy and the guard that applies them.
//!
//! Each piece is a small type in its own file; configuration ([`BreakerConfig`],
//! [`RetryConfig`]) is plain data stored once in [`CacheConfig`](crate::CacheConfig), and the
//! state (the breaker's machine and counters) lives in the [`Guard`] each L2 implementation
//! owns.
//!
//! | file | job |
//! |---|---|
//! | `breaker.rs` | [`CircuitBreaker`] over failsafe: state, admission, probe bookkeeping, snapshot, a watch of the state |
//! | `backoff.rs` | `FullJitter`: the waits between tries, exponential with full jitter |
//! | `retry.rs` | [`RetryConfig`]: how many tries, which errors are retried, the backoff |
//! | `guard.rs` | [`Guard`]: admission + deadline + retry around one operation, outcome recorded by the breaker |

mod backoff;
mod breaker;
mod guard;
mod retry;

pub(crate) use breaker::CircuitBreaker;
pub use breaker::{BreakerConfig, BreakerPolicy, BreakerSnapshot, BreakerState, ShardBreaker};
pub(crate) use guard::Guard;
pub use retry::RetryConfig;
