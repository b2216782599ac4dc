//! The breaker's probe: a `PING` that bypasses the breaker, asked once more on fresh connections when the socket it used turned out dead.

use crate::error::{ErrorKind, Result};
use crate::l2::L2Tier;

/// Whether Redis answers: a `PING` bypassing the breaker (its connection within the probe
/// deadline, its answer within the callers' operation deadline — a Redis too slow for callers
/// is not healthy yet). If the socket used turns out dead (pooled sockets are only found dead
/// when used), every connection is reset and the probe asks once more on a fresh one, rather
/// than finding the dead ones one probe period at a time.
pub(crate) async fn probe(l2: &L2Tier) -> Result<()> {
    match l2.probe_ping().await {
        Err(e) if e.kind() == ErrorKind::Unavailable => {
            tracing::debug!(error = %e, "probe socket dead; asking again on a fresh one");
            l2.reset_connections();
            l2.probe_ping().await
        }
        other => other,
    }
}
