//! Recovery: the supervisor task that probes Redis while the breaker is open and replays the dirty log before L2 is trusted again, owned by a handle that stops it on drop.
//!
//! `probe.rs` is the breaker's probe (`PING`, once more on fresh sockets), `replay.rs` the
//! dirty-log replay; this file runs them ([`Supervisor`]) and lets callers wait for the end
//! of an outage ([`Supervisor::recovered`]).

mod probe;
mod replay;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::backplane::Backplane;
use crate::engine::dirty::DirtyLog;
use crate::l2::L2Tier;
use crate::resilience::BreakerState;

/// How often a dirty log recorded while the breaker stayed closed is replayed.
const CLOSED_REPLAY_EVERY: Duration = Duration::from_millis(100);

/// The recovery supervisor of one L2: the task runs as long as this handle lives.
#[derive(Debug)]
pub(crate) struct Supervisor {
    l2: Arc<L2Tier>,
    dirty: Arc<DirtyLog>,
    /// Bumped by the task after every replay attempt, so [`recovered`](Self::recovered)
    /// looks at the dirty log again then instead of polling it.
    replays: watch::Receiver<u64>,
    /// Cancels the task when the engine (the last clone of the cache) is dropped.
    _stop: DropGuard,
}

impl Supervisor {
    /// Spawns the supervisor on the current Tokio runtime.
    pub(crate) fn start(
        l2: Arc<L2Tier>,
        dirty: Arc<DirtyLog>,
        namespace: String,
        backplane: Option<Arc<Backplane>>,
    ) -> Self {
        let stop = CancellationToken::new();
        let (replayed, replays) = watch::channel(0);
        tokio::spawn(supervise(
            Arc::clone(&l2),
            Arc::clone(&dirty),
            namespace,
            backplane,
            stop.clone(),
            replayed,
        ));
        Supervisor {
            l2,
            dirty,
            replays,
            _stop: stop.drop_guard(),
        }
    }

    /// Resolves once L2 is trusted again: the breaker closed (on a cluster, every shard's
    /// too) and the dirty log empty (every key written during the outage deleted from
    /// Redis). At once if it already is.
    ///
    /// Wakes on the breaker's transitions and after each replay, never on a timer. If the
    /// supervisor task is gone (its runtime shut down), an open breaker can never close and
    /// this never resolves: callers bound it with a timeout.
    pub(crate) async fn recovered(&self) {
        let breaker = self.l2.breaker();
        let mut state = breaker.watch();
        let mut replays = self.replays.clone();
        loop {
            // Marked seen before the check: a change after it wakes the wait below.
            state.borrow_and_update();
            replays.borrow_and_update();
            if breaker.state() == BreakerState::Closed
                && self.dirty.is_empty()
                && self.l2.shards_closed()
            {
                return;
            }
            tokio::select! {
                // The sender lives in the breaker, which `self` keeps alive: never an error.
                _ = state.changed() => {}
                changed = replays.changed() => {
                    if changed.is_err() {
                        // The task is gone: nothing will replay or close the breaker again.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

/// The supervisor: while the breaker is closed it probes a cluster's open shards and replays
/// a non-empty dirty log now and then;
/// when the breaker opens it waits out the open period, then probes (`PING`), replays the
/// dirty log and only then closes the breaker. Stops when `stop` is cancelled.
async fn supervise(
    l2: Arc<L2Tier>,
    dirty: Arc<DirtyLog>,
    namespace: String,
    backplane: Option<Arc<Backplane>>,
    stop: CancellationToken,
    replayed: watch::Sender<u64>,
) {
    let breaker = l2.breaker();
    let step = breaker
        .open_for()
        .min(Duration::from_millis(20))
        .max(Duration::from_millis(1));
    // Every replay, whatever its outcome, is announced to `Supervisor::recovered`.
    let (tier, log, ns, replayed) = (&*l2, &*dirty, namespace.as_str(), &replayed);
    let bp = backplane.as_deref();
    let replay = move || async move {
        let result = replay::replay(tier, log, ns, bp).await;
        replayed.send_modify(|n| *n = n.wrapping_add(1));
        result
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = breaker.opened() => {}
            // Unconditional: a key can be recorded while we wait (a failed cache write
            // that did not open the breaker), and it must still be replayed.
            _ = tokio::time::sleep(CLOSED_REPLAY_EVERY) => {}
        }
        if breaker.state() == BreakerState::Closed {
            // A cluster's open shards, probed every round (a shard that closed wakes
            // `Supervisor::recovered`).
            if l2.probe_shards().await {
                replayed.send_modify(|n| *n = n.wrapping_add(1));
            }
            if dirty.is_empty() {
                continue;
            }
            // Replay failures while closed are retried on the next round (and the keys stay
            // distrusted by reads until then).
            let _ = replay().await;
            continue;
        }
        // The outage may have killed every pooled socket: start the probes on fresh ones.
        l2.reset_connections();
        while breaker.state() != BreakerState::Closed {
            if stop.is_cancelled() {
                return;
            }
            if breaker.begin_probe() {
                let healthy = match probe::probe(&l2).await {
                    Ok(()) => replay().await,
                    Err(e) => Err(e),
                };
                match healthy {
                    Ok(()) => breaker.probe_succeeded(),
                    Err(e) => {
                        tracing::debug!(error = %e, "breaker probe failed");
                        breaker.probe_failed();
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(step) => {}
            }
        }
    }
}
