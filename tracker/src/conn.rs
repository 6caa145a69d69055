//! One TaskTracker's `Work` stream as the tracker sees it: whether the TaskTracker still
//! answers (its [`Heartbeat`]) and which leases this stream holds.
//!
//! The leases are what the stream last wrote for each job (token and expiry). When the stream
//! ends, exactly those are queued again — and only if nobody renewed them since, which is
//! what happens when the TaskTracker re-announces them through another stream (to another
//! tracker, or to this one after a reconnect). A stream that a frozen tracker wakes up to
//! therefore cannot take jobs away from the stream that replaced it.

use std::collections::HashMap;
use std::sync::Mutex;

use lts_core::heartbeat::Heartbeat;

use crate::store::HeldLease;

/// A TaskTracker counts as silent once this many ping intervals pass without an answer.
pub const SILENT_AFTER_PINGS: u32 = 4;

/// A TaskTracker stream's liveness and held leases.
#[derive(Debug)]
pub struct WorkerConn {
    heartbeat: Option<Heartbeat>,
    held: Mutex<HashMap<String, HeldLease>>,
    waits_for_start: bool,
    labels: std::collections::BTreeMap<String, String>,
}

impl WorkerConn {
    /// A stream whose peer answers pings (`Some`), or an older TaskTracker that does not
    /// (`None`: always counted as alive; its stream ends only with the connection).
    pub fn new(heartbeat: Option<Heartbeat>) -> WorkerConn {
        WorkerConn {
            heartbeat,
            held: Mutex::new(HashMap::new()),
            waits_for_start: false,
            labels: std::collections::BTreeMap::new(),
        }
    }

    /// The same stream, of a TaskTracker with these labels (its Hello's): it is sent the jobs
    /// whose affinity they satisfy.
    pub fn labelled(mut self, labels: std::collections::BTreeMap<String, String>) -> WorkerConn {
        self.labels = labels;
        self
    }

    /// The TaskTracker's labels.
    pub fn labels(&self) -> &std::collections::BTreeMap<String, String> {
        &self.labels
    }

    /// The same stream, of a TaskTracker that holds a job sent ahead of its trigger time until
    /// then (its Hello's `waits_for_start`).
    pub fn waiting_for_start(mut self, waits: bool) -> WorkerConn {
        self.waits_for_start = waits;
        self
    }

    /// Whether jobs may be claimed for this TaskTracker ahead of their trigger time.
    pub fn waits_for_start(&self) -> bool {
        self.waits_for_start
    }

    /// The heartbeat, if the TaskTracker takes part.
    pub fn heartbeat(&self) -> Option<&Heartbeat> {
        self.heartbeat.as_ref()
    }

    /// Whether the TaskTracker answered a recent ping. A silent one gets no new jobs and its
    /// renewals are not recorded through this stream.
    pub fn is_alive(&self) -> bool {
        self.heartbeat.as_ref().is_none_or(Heartbeat::is_alive)
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldLease>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This stream wrote this lease (a claim or an adopted lease).
    pub fn hold(&self, lease: HeldLease) {
        self.leases().insert(lease.job_id.clone(), lease);
    }

    /// This stream renewed these jobs' leases to `expiry_ms`; `lost` ones are gone.
    pub fn renewed<'a>(
        &self,
        kept: impl IntoIterator<Item = &'a String>,
        lost: &[String],
        expiry_ms: i64,
    ) {
        let mut held = self.leases();
        for id in kept {
            if let Some(l) = held.get_mut(id) {
                l.expiry_ms = expiry_ms;
            }
        }
        for id in lost {
            held.remove(id);
        }
    }

    /// The job's run ended (a result, a release): the stream no longer holds it.
    pub fn forget(&self, job_id: &str) {
        self.leases().remove(job_id);
    }

    /// Forgets the job's lease if this stream held it; whether it did.
    pub fn take(&self, job_id: &str) -> bool {
        self.leases().remove(job_id).is_some()
    }

    /// The leases held now.
    pub fn held(&self) -> Vec<HeldLease> {
        self.leases().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, expiry_ms: i64) -> HeldLease {
        HeldLease {
            job_id: id.into(),
            token: format!("t-{id}"),
            expiry_ms,
        }
    }

    #[test]
    fn tracks_what_the_stream_last_wrote() {
        let c = WorkerConn::new(None);
        assert!(
            c.is_alive(),
            "an older TaskTracker without pings counts as alive"
        );
        c.hold(lease("a", 10));
        c.hold(lease("b", 10));
        c.hold(lease("c", 10));
        c.renewed(&["a".to_string()], &["b".to_string()], 20);
        c.forget("c");
        assert_eq!(c.held(), vec![lease("a", 20)]);
    }
}
