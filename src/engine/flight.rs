//! Single-flight: concurrent loads of one key share one call to the loader.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

type Cell = Arc<OnceCell<Arc<dyn Any + Send + Sync>>>;

/// The in-flight loads, by result type and key.
///
/// Each key in flight has a `OnceCell`; the first caller runs the loader inside
/// `get_or_init`, the rest wait on the cell. If the running caller is cancelled, tokio's
/// `OnceCell` hands the initialization to a waiting caller, so a dropped request never strands
/// the others. The entry is removed as soon as the load finishes (or every caller gives up),
/// so the map holds only keys being loaded right now; it is also capped, and past the cap a
/// load simply runs without sharing.
#[derive(Debug)]
pub(crate) struct Flights {
    // A std Mutex: held only to look up or remove an entry, never across an await.
    map: Mutex<HashMap<(TypeId, Arc<str>), Cell>>,
    cap: usize,
}

/// Removes a flight's entry when the caller is done with it (finished or cancelled), unless
/// the entry has since been replaced by a newer flight for the same key.
struct Leave<'a> {
    flights: &'a Flights,
    id: (TypeId, Arc<str>),
    cell: Cell,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        if map
            .get(&self.id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            map.remove(&self.id);
        }
    }
}

impl Flights {
    pub(crate) fn new(cap: usize) -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TypeId, Arc<str>), Cell>> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads in flight right now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Runs `load` for `key`, or waits for the run already in flight and returns its result.
    /// `None` only if a cell held another type, which the `TypeId` in the map key rules out.
    pub(crate) async fn run<T, F, Fut>(&self, key: &Arc<str>, load: F) -> Option<T>
    where
        T: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let id = (TypeId::of::<T>(), Arc::clone(key));
        let cell: Option<Cell> = {
            let mut map = self.lock();
            match map.get(&id) {
                Some(c) => Some(Arc::clone(c)),
                None if map.len() >= self.cap => None,
                None => {
                    let c: Cell = Arc::default();
                    map.insert(id.clone(), Arc::clone(&c));
                    Some(c)
                }
            }
        };
        let Some(cell) = cell else {
            return Some(load().await);
        };
        let leave = Leave {
            flights: self,
            id,
            cell: Arc::clone(&cell),
        };
        let shared = cell
            .get_or_init(|| async { Arc::new(load().await) as Arc<dyn Any + Send + Sync> })
            .await;
        let out = shared.downcast_ref::<T>().cloned();
        drop(leave);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_load() {
        let flights = Arc::new(Flights::new(1024));
        let calls = Arc::new(AtomicUsize::new(0));
        let key: Arc<str> = Arc::from("k");
        let barrier = Arc::new(tokio::sync::Barrier::new(100));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (flights, calls, key, barrier) =
                    (flights.clone(), calls.clone(), key.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    flights
                        .run(&key, || async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            7u32
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(7));
        }
        // 200 ms of loader time against callers that all arrive together: one load. Should
        // a caller be descheduled for longer than that, it would start a second flight; the
        // assert allows none, so a failure here means a real sharing bug or a stalled machine.
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0, "finished flights must be removed");
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over() {
        let flights = Arc::new(Flights::new(1024));
        let key: Arc<str> = Arc::from("k");
        let f2 = flights.clone();
        let k2 = key.clone();
        let leader = tokio::spawn(async move {
            f2.run(&k2, || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                1u32
            })
            .await
        });
        tokio::task::yield_now().await;
        leader.abort();
        let _ = leader.await;
        let v = flights.run(&key, || async { 2u32 }).await;
        assert_eq!(v, Some(2));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn past_the_cap_loads_run_unshared() {
        let flights = Flights::new(0);
        let key: Arc<str> = Arc::from("k");
        assert_eq!(flights.run(&key, || async { 3u8 }).await, Some(3));
        assert_eq!(flights.len(), 0);
    }
}
