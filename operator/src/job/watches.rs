//! Job watches: one per cluster (tracker address) and submit group (`lts-operator` unless a
//! Job names its own), started on the first Job reconciled for it. Each change of an operator-submitted job is kept for the next reconcile (which then
//! needs no `Get`) and triggers a reconcile of its resource. On a resync (the stream
//! (re)connected and may have missed changes) one paginated `List` by the operator's submit
//! group re-reads them all. Status follows the trackers by subscription, not by polling each
//! job.
//!
//! [`Watches`] also remembers when each resource's job was last read from the trackers (a
//! change from the watch, or an answer to a call), so a reconcile knows whether its safety-net
//! re-read is due; a resource whose changes may have been missed is marked stale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::convert;
use crate::crd::Job;
use crate::tracker::{JobWatchFilter, TrackerApi, TrackerEvent};
use lts_worker_sdk::ListQuery;

type Trigger = mpsc::UnboundedSender<ObjectRef<Job>>;

fn key(address: &str, submit_group: &str) -> String {
    format!("{address} {submit_group}")
}

/// At most this many job states wait for their reconcile.
const MAX_OBSERVED: usize = 10_000;

/// The job watches of every cluster the operator has submitted to.
pub struct Watches {
    tx: Trigger,
    rx: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<Job>>>>,
    live: Mutex<HashMap<String, Arc<AtomicBool>>>,
    observed: Mutex<HashMap<String, lts_core::Job>>,
    instances: Mutex<HashMap<(String, String), lts_core::Job>>,
    nodes: Mutex<HashMap<(String, String), HashMap<String, lts_core::Job>>>,
    read: Mutex<HashMap<String, Instant>>,
    jobs: OnceLock<Store<DeserializeGuard<Job>>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches").finish_non_exhaustive()
    }
}

impl Default for Watches {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Watches {
            tx,
            rx: Mutex::new(Some(rx)),
            live: Mutex::default(),
            observed: Mutex::default(),
            instances: Mutex::default(),
            nodes: Mutex::default(),
            read: Mutex::default(),
            jobs: OnceLock::new(),
            stop: CancellationToken::new(),
        }
    }
}

impl Watches {
    /// The reconcile requests the watches produce (once; for `Controller::reconcile_on`).
    pub fn take_trigger(&self) -> Option<impl Stream<Item = ObjectRef<Job>> + Send + 'static> {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        Some(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
    }

    /// The Job store used to find what to re-read on a resync.
    pub fn set_store(&self, jobs: Store<DeserializeGuard<Job>>) {
        let _ = self.jobs.set(jobs);
    }

    /// Stops every watch.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether the watch of `submit_group`'s jobs at `address` is streaming (if not, the
    /// controller re-reads unfinished Jobs on a timer instead).
    pub fn is_live(&self, address: &str, submit_group: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key(address, submit_group))
            .is_some_and(|l| l.load(Ordering::Relaxed))
    }

    /// The newest fire (instance job) of the resource `namespace/name` a watch delivered
    /// since the last call, if any.
    pub fn take_instance(&self, namespace: &str, name: &str) -> Option<lts_core::Job> {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_string(), name.to_string()))
    }

    /// The workflow nodes of the resource `namespace/name` a watch delivered since the last
    /// call (the newest state of each).
    pub fn take_nodes(&self, namespace: &str, name: &str) -> Vec<lts_core::Job> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_string(), name.to_string()))
            .map(|m| m.into_values().collect())
            .unwrap_or_default()
    }

    /// The newest state of `job_id` a watch delivered since the last call, if any.
    pub fn take_observed(&self, job_id: &str) -> Option<lts_core::Job> {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job_id)
    }

    /// How long ago the job of the resource `key` (`namespace/name`) was last read from the
    /// trackers; `None` when this process has not read it yet or its changes may have been
    /// missed since ([`Watches::mark_stale`]).
    pub fn since_read(&self, key: &str) -> Option<Duration> {
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map(Instant::elapsed)
    }

    /// Records that the job of the resource `key` was just read from the trackers.
    pub fn mark_read(&self, key: &str) {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if read.len() >= MAX_OBSERVED && !read.contains_key(key) {
            // Entries of resources that are gone: keep the map bounded (the others are read
            // once more).
            read.clear();
        }
        read.insert(key.to_string(), Instant::now());
    }

    /// Records that the job of the resource `key` may have changed unseen: its next reconcile
    /// reads it.
    pub fn mark_stale(&self, key: &str) {
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Pretends the job of the resource `key` was last read `ago` (tests of the refresh timer).
    #[cfg(test)]
    pub fn backdate(&self, key: &str, ago: Duration) {
        let at = Instant::now()
            .checked_sub(ago)
            .expect("a representable instant");
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), at);
    }

    /// Starts the watch of `submit_group`'s jobs at `address` unless it runs already.
    pub fn ensure(
        self: &Arc<Self>,
        address: &str,
        submit_group: &str,
        tracker: Arc<dyn TrackerApi>,
    ) {
        let live = {
            let mut map = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let k = key(address, submit_group);
            if map.contains_key(&k) {
                return;
            }
            let live = Arc::new(AtomicBool::new(false));
            map.insert(k, live.clone());
            live
        };
        let this = self.clone();
        let address = address.to_string();
        let group = submit_group.to_string();
        tokio::spawn(async move { this.watch_loop(address, group, tracker, live).await });
    }

    async fn watch_loop(
        self: Arc<Self>,
        address: String,
        group: String,
        tracker: Arc<dyn TrackerApi>,
        live: Arc<AtomicBool>,
    ) {
        let filter = JobWatchFilter {
            submit_node_group: Some(group.clone()),
            ..JobWatchFilter::default()
        };
        // Reconnects wait 1 s, doubling up to 30 s; a stream that opened starts over at 1 s.
        let retry = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times();
        let mut delays = backon::BackoffBuilder::build(retry);
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let failed = match tracker.watch(filter.clone()).await {
                Ok(None) => {
                    tracing::info!(tracker = %address, "trackers cannot stream job changes; unfinished Jobs are re-read on a timer");
                    return;
                }
                Ok(Some(mut events)) => {
                    live.store(true, Ordering::Relaxed);
                    delays = backon::BackoffBuilder::build(retry);
                    loop {
                        let ev = tokio::select! {
                            _ = self.stop.cancelled() => return,
                            ev = events.next() => ev,
                        };
                        match ev {
                            Some(TrackerEvent::Changed(job)) => self.route(*job),
                            Some(TrackerEvent::Resync) => {
                                self.resync(&address, &group, &*tracker).await
                            }
                            None => break,
                        }
                    }
                    live.store(false, Ordering::Relaxed);
                    // Changes may be missed until the next stream: re-reconcile what we track.
                    self.requeue_namespace(&address);
                    None
                }
                Err(e) => Some(e),
            };
            let delay = delays.next().unwrap_or(Duration::from_secs(30));
            if let Some(e) = failed {
                tracing::warn!(tracker = %address, error = %e, retry_in = ?delay, "job watch failed");
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Keeps `job` for the next reconcile of its resource and triggers that reconcile.
    pub fn route(&self, job: lts_core::Job) {
        let Some((ns, name)) = convert::resource_of(&job) else {
            return;
        };
        if convert::is_node(&job) {
            // A workflow's node: kept per resource and node job, bounded like the others.
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let total: usize = nodes.values().map(HashMap::len).sum();
            if total >= MAX_OBSERVED {
                nodes.clear();
            }
            let of = nodes.entry((ns.clone(), name.clone())).or_default();
            let newer = of
                .get(&job.job_id)
                .is_none_or(|known| job.updated_at_ms >= known.updated_at_ms);
            if newer {
                of.insert(job.job_id.clone(), job);
            }
        } else if convert::is_instance(&job) {
            // Maybe one fire of a recurring Job: kept per resource, newest fire first.
            let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
            if instances.len() >= MAX_OBSERVED {
                instances.clear();
            }
            let key = (ns.clone(), name.clone());
            let newer = instances
                .get(&key)
                .is_none_or(|known| job.scheduled_fire_ms >= known.scheduled_fire_ms);
            if newer {
                instances.insert(key, job);
            }
        } else {
            let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            // Entries of resources that are gone are never taken: keep the cache bounded.
            if observed.len() >= MAX_OBSERVED {
                observed.clear();
            }
            observed.insert(job.job_id.clone(), job);
        }
        let _ = self.tx.send(ObjectRef::new(&name).within(&ns));
    }

    /// Re-reads every job of `group` at the cluster at `address` (one paginated `List` by
    /// submit group) and routes each, so changes missed while the stream was away reach their
    /// resources. Falls back to re-reconciling the namespace's unfinished Jobs when the list
    /// fails.
    async fn resync(&self, address: &str, group: &str, tracker: &dyn TrackerApi) {
        let mut token = None;
        let mut routed = 0usize;
        loop {
            let page = tracker
                .list(ListQuery {
                    submit_node_group: Some(group.to_string()),
                    page_size: 500,
                    page_token: token.take(),
                    ..ListQuery::default()
                })
                .await;
            match page {
                Ok((jobs, next)) => {
                    routed += jobs.len();
                    for job in jobs {
                        self.route(job);
                    }
                    match next {
                        Some(t) => token = Some(t),
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(tracker = %address, error = %e, "resync list failed; re-reconciling the namespace's Jobs");
                    self.requeue_namespace(address);
                    return;
                }
            }
        }
        tracing::debug!(tracker = %address, jobs = routed, "resynced");
    }

    /// Triggers a reconcile of every unfinished Job in the namespace of the cluster at
    /// `address` (`name.namespace.svc:port`), each marked stale so that it reads its job.
    fn requeue_namespace(&self, address: &str) {
        let Some(store) = self.jobs.get() else {
            return;
        };
        let ns = address.split('.').nth(1).unwrap_or_default();
        for guarded in store.state() {
            let Ok(job) = &guarded.0 else { continue };
            let status = job.status.as_ref();
            if job.namespace().as_deref() == Some(ns)
                && !convert::is_final(status.and_then(|s| s.phase))
            {
                self.mark_stale(&crate::reconcile::key(job));
                let _ = self.tx.send(ObjectRef::from_obj(job));
            }
        }
    }
}
