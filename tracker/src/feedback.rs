//! Feedback delivery: results of jobs with `need_feedback` go to a subscribed JobClient of the
//! submitting node group, which acknowledges them. Unacknowledged feedback stays in the store
//! and is offered again when a subscriber of that group is (back) connected.
//!
//! One pump per submit node group hands each stored item to one subscriber at a time (round
//! robin); an item in flight is not offered to another subscriber unless its holder
//! disconnects.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_core::convert;
use lts_core::proto::Feedback;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::store::JobStore;

/// Most unacknowledged items held by one subscriber.
const MAX_IN_FLIGHT: usize = 1024;
/// How often a pump re-reads the store even without a signal (catches feedback written by
/// other trackers and items released by a disconnect).
const RESCAN: Duration = Duration::from_secs(2);

/// The outbound half of a feedback stream.
pub type FeedbackTx = mpsc::UnboundedSender<Result<Feedback, Status>>;

#[derive(Debug)]
struct Subscriber {
    id: u64,
    tx: FeedbackTx,
    in_flight: HashSet<String>,
}

#[derive(Debug, Default)]
struct GroupState {
    subscribers: Vec<Subscriber>,
    next: usize,
}

#[derive(Debug)]
struct Pump {
    state: Mutex<GroupState>,
    wake: Notify,
    /// Cancelled when its last subscriber leaves: the pump's task ends and its state goes.
    closed: CancellationToken,
}

/// All feedback pumps of this tracker.
pub struct FeedbackHub {
    store: Arc<dyn JobStore>,
    pumps: Mutex<HashMap<String, Arc<Pump>>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for FeedbackHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackHub").finish_non_exhaustive()
    }
}

impl FeedbackHub {
    /// A hub over `store`.
    pub fn new(store: Arc<dyn JobStore>, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(FeedbackHub {
            store,
            pumps: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutdown,
        })
    }

    /// The pump of `group` while it has subscribers.
    fn existing(&self, group: &str) -> Option<Arc<Pump>> {
        self.pumps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(group)
            .cloned()
    }

    /// How many submit node groups have subscribers here.
    pub fn groups(&self) -> usize {
        self.pumps.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// New feedback was stored for `group`.
    pub fn signal(&self, group: &str) {
        if let Some(p) = self.existing(group) {
            p.wake.notify_one();
        }
    }

    /// Adds a subscriber; returns its id.
    pub fn subscribe(self: &Arc<Self>, group: &str, tx: FeedbackTx) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Under the map's lock, so that the last unsubscribe cannot close the pump in between.
        let mut pumps = self.pumps.lock().unwrap_or_else(|e| e.into_inner());
        let p = pumps
            .entry(group.to_string())
            .or_insert_with(|| {
                let p = Arc::new(Pump {
                    state: Mutex::new(GroupState::default()),
                    wake: Notify::new(),
                    closed: CancellationToken::new(),
                });
                let me = self.clone();
                let (g, pump) = (group.to_string(), p.clone());
                tokio::spawn(async move { me.run(g, pump).await });
                p
            })
            .clone();
        p.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .subscribers
            .push(Subscriber {
                id,
                tx,
                in_flight: HashSet::new(),
            });
        drop(pumps);
        p.wake.notify_one();
        id
    }

    /// Removes a subscriber; what it held unacknowledged is offered again.
    pub fn unsubscribe(self: &Arc<Self>, group: &str, id: u64) {
        let mut pumps = self.pumps.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = pumps.get(group).cloned() else {
            return;
        };
        let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
        st.subscribers.retain(|s| s.id != id);
        if st.subscribers.is_empty() {
            // Nothing it held is lost: unacknowledged feedback stays in the store.
            p.closed.cancel();
            pumps.remove(group);
        }
        drop(st);
        p.wake.notify_one();
    }

    /// A subscriber acknowledged items: delete them from the store.
    pub async fn ack(self: &Arc<Self>, group: &str, id: u64, ids: Vec<String>) {
        if let Err(e) = self.store.ack_feedback(group, ids.clone()).await {
            tracing::warn!(error = %e, "feedback ack failed; items will be offered again");
        }
        metrics::counter!("lts_feedback_acked_total").increment(ids.len() as u64);
        let Some(p) = self.existing(group) else {
            return;
        };
        let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = st.subscribers.iter_mut().find(|s| s.id == id) {
            for f in &ids {
                s.in_flight.remove(f);
            }
        }
        drop(st);
        p.wake.notify_one();
    }

    async fn run(self: Arc<Self>, group: String, pump: Arc<Pump>) {
        loop {
            let has_room = {
                let st = pump.state.lock().unwrap_or_else(|e| e.into_inner());
                st.subscribers
                    .iter()
                    .any(|s| s.in_flight.len() < MAX_IN_FLIGHT)
            };
            if has_room && let Err(e) = self.deliver(&group, &pump).await {
                tracing::warn!(submit_node_group = %group, error = %e, "feedback read failed");
            }
            tokio::select! {
                _ = pump.wake.notified() => {}
                _ = tokio::time::sleep(RESCAN) => {}
                _ = self.shutdown.cancelled() => return,
                _ = pump.closed.cancelled() => return,
            }
        }
    }

    async fn deliver(&self, group: &str, pump: &Pump) -> Result<(), crate::store::StoreError> {
        let mut after: Option<String> = None;
        loop {
            let items = self
                .store
                .pending_feedback(group, after.as_deref(), 256)
                .await?;
            let Some(last) = items.last() else {
                return Ok(());
            };
            after = Some(last.feedback_id.clone());
            let mut st = pump.state.lock().unwrap_or_else(|e| e.into_inner());
            let held: HashSet<String> = st
                .subscribers
                .iter()
                .flat_map(|s| s.in_flight.iter().cloned())
                .collect();
            for item in items {
                if held.contains(&item.feedback_id) {
                    continue;
                }
                let n = st.subscribers.len();
                if n == 0 {
                    return Ok(());
                }
                // Round robin over subscribers with room.
                let mut chosen = None;
                for k in 0..n {
                    let i = (st.next + k) % n;
                    if st.subscribers[i].in_flight.len() < MAX_IN_FLIGHT {
                        chosen = Some(i);
                        break;
                    }
                }
                let Some(i) = chosen else {
                    return Ok(());
                };
                st.next = i + 1;
                let sub = &mut st.subscribers[i];
                if sub.tx.send(Ok(convert::feedback_to_proto(&item))).is_ok() {
                    sub.in_flight.insert(item.feedback_id);
                    metrics::counter!("lts_feedback_sent_total").increment(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};

    #[tokio::test]
    async fn a_pump_lives_only_while_its_group_has_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("lts.db"), SqliteOptions::default()).unwrap();
        let hub = FeedbackHub::new(Arc::new(store), CancellationToken::new());
        // Signals and acks for a group nobody subscribes to make no pump.
        hub.signal("nobody");
        hub.ack("nobody", 1, Vec::new()).await;
        hub.unsubscribe("nobody", 1);
        assert_eq!(hub.groups(), 0);
        let (tx, _rx) = mpsc::unbounded_channel();
        let a = hub.subscribe("clients", tx.clone());
        let b = hub.subscribe("clients", tx);
        assert_eq!(hub.groups(), 1);
        let pump = hub.existing("clients").unwrap();
        hub.unsubscribe("clients", a);
        assert_eq!(hub.groups(), 1);
        hub.unsubscribe("clients", b);
        assert_eq!(hub.groups(), 0);
        assert!(pump.closed.is_cancelled(), "its task ends");
    }
}
