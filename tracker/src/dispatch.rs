//! The dispatcher: pushes due jobs to connected TaskTrackers that have free threads (credits).
//!
//! One task per node group. It sleeps until there may be work (a submit, a retry or fire time
//! coming due, a requeue) *and* a TaskTracker has credits, then claims jobs atomically in the
//! store — one claim per TaskTracker, most idle first, all in the same grouped commit — and
//! pushes each down that TaskTracker's stream. Nothing polls: wake-ups are notifications and
//! one timer for the earliest future trigger time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_core::proto::{self, TrackerMessage, tracker_message};
use lts_core::route::Assignment;
use lts_core::{ConcurrencyPolicy, convert, now_ms};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::conn::WorkerConn;
use crate::store::{ClaimRequest, HeldLease, JobStore, Lease, LeaseRef};

/// Largest claim for one TaskTracker in one round.
const MAX_CLAIM: u32 = 512;

/// Most claim rounds of one node group out at once, whatever the store allows
/// ([`JobStore::claim_rounds`]). While one round waits for its commit, the threads freed
/// meanwhile can start the next (see [`Dispatcher::second_round_due`]).
const MAX_ROUNDS: usize = 2;

/// What one claim round came to.
#[derive(Debug, Clone, Copy)]
struct RoundEnd {
    /// Jobs asked for, over all its claims.
    requested: u32,
    /// Jobs leased.
    got: u32,
    /// Whether a claim failed (its credits were given back).
    failed: bool,
    /// The group's work epoch when the round was planned.
    epoch: u64,
}

/// The outbound half of a TaskTracker stream: bounded. A TaskTracker that stops reading its
/// stream while the tracker has more to say (assignments, acknowledgements, pongs) overflows
/// it, and the stream is closed ([`WorkerTx::overflowed`]) instead of growing without end.
#[derive(Debug, Clone)]
pub struct WorkerTx {
    tx: mpsc::Sender<Result<TrackerMessage, Status>>,
    overflow: CancellationToken,
}

/// The message could not be queued: the stream is gone, or it overflowed and is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl WorkerTx {
    /// A stream's outbox of `capacity` messages, and the stream that drains it (it ends when
    /// the outbox overflows).
    pub fn channel(
        capacity: usize,
    ) -> (
        WorkerTx,
        impl tokio_stream::Stream<Item = Result<TrackerMessage, Status>> + Send + 'static,
    ) {
        use futures::StreamExt;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let overflow = CancellationToken::new();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .take_until(overflow.clone().cancelled_owned());
        (WorkerTx { tx, overflow }, stream)
    }

    /// Queues a message without waiting.
    pub fn send(&self, msg: Result<TrackerMessage, Status>) -> Result<(), Closed> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.overflow.is_cancelled() {
                    metrics::counter!("lts_worker_streams_overflowed_total").increment(1);
                    tracing::warn!(
                        capacity = self.tx.max_capacity(),
                        "a TaskTracker does not read its stream; closing it"
                    );
                    self.overflow.cancel();
                }
                Err(Closed)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }

    /// Cancelled when the outbox overflowed (the stream is closing).
    pub fn overflowed(&self) -> &CancellationToken {
        &self.overflow
    }
}

/// A connected TaskTracker as the dispatcher sees it.
#[derive(Debug)]
struct Slot {
    conn_id: u64,
    identity: String,
    threads: u32,
    credits: u32,
    tx: WorkerTx,
    conn: Arc<WorkerConn>,
}

/// A free thread of one TaskTracker, reserved for a job handed over at submit
/// ([`Dispatcher::reserve_idle`]).
/// Dropped unused (the submit's call was cancelled, say), it gives the thread back.
pub struct Reserved {
    group: Arc<Group>,
    planned: Option<Planned>,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(p) = self.planned.take() {
            Dispatcher::refund(&self.group, p.conn_id, p.n);
            self.group.signal_work();
        }
    }
}

impl Reserved {
    /// The claim that leases the job to the reserved TaskTracker. Nothing else is asked: a
    /// reservation is never made in a capped group (see `Dispatcher::reserve_idle`), and a
    /// broadcast job, a job with affinity or with a route key is never leased at its submit
    /// (see `JobService::store_specs`).
    pub fn claim(&self, lease_ms: i64, now_ms: i64) -> ClaimRequest {
        let owner = self
            .planned
            .as_ref()
            .map(|p| p.identity.clone())
            .unwrap_or_default();
        ClaimRequest::plain(self.group.name.clone(), owner, 1, lease_ms, now_ms)
    }
}

/// Credits reserved on one TaskTracker stream for one claim round.
struct Planned {
    conn_id: u64,
    identity: String,
    n: u32,
    tx: WorkerTx,
    conn: Arc<WorkerConn>,
}

/// Per-node-group dispatch state.
#[derive(Debug)]
pub struct Group {
    name: String,
    slots: Mutex<Vec<Slot>>,
    wake: Notify,
    /// Set when there may be due work; cleared when a claim comes back short.
    maybe_work: AtomicBool,
    /// Whether the last claim round came back short: the group's queue had no more due work
    /// then, so a job submitted now may go straight to a free thread (see
    /// [`Dispatcher::reserve_idle`]) without passing anything queued before it.
    drained: AtomicBool,
    /// Bumped on every work signal, so a signal during a claim is never lost.
    work_epoch: AtomicU64,
    /// When the pending wake-up timer fires (`i64::MAX`: none).
    timer_at: AtomicI64,
    /// Cancelled when its last TaskTracker leaves: the group's task ends and its state goes
    /// (a group exists only while a TaskTracker of it is connected, so node-group names sent
    /// by clients or workers cannot pile up tasks).
    closed: CancellationToken,
    /// The newest run sent of each recurring job with concurrency policy `Replace`: when the
    /// next fire's run is sent, the store has cancelled this one, and its TaskTracker is told
    /// at once ([`Dispatcher::lease_gone`]). At most [`MAX_REPLACING`] jobs are remembered.
    replacing: Mutex<HashMap<String, String>>,
    /// The route buckets dealt to the group's connected TaskTrackers, kept while they stay
    /// the same (dealing costs a hash per bucket and TaskTracker).
    route: Mutex<Option<Arc<Assignment>>>,
}

/// Recurring jobs with concurrency policy `Replace` whose newest run a group remembers.
const MAX_REPLACING: usize = 10_000;

impl Group {
    fn signal_work(&self) {
        self.work_epoch.fetch_add(1, Ordering::SeqCst);
        self.maybe_work.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The route buckets dealt to `targets` (see [`lts_core::route`]).
    fn assignment(&self, targets: &[String]) -> Arc<Assignment> {
        let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        match route.as_ref() {
            Some(a) if a.targets() == targets => a.clone(),
            _ => {
                let a = Arc::new(Assignment::new(targets));
                *route = Some(a.clone());
                a
            }
        }
    }

    /// Free threads across the group's TaskTrackers, and how many they have in all.
    fn free_and_window(&self) -> (u32, u32) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .fold((0, 0), |(f, w), s| (f + s.credits, w + s.threads))
    }

    /// Free threads across the group's TaskTrackers.
    pub fn free_threads(&self) -> u32 {
        self.free_and_window().0
    }
}

/// Free threads of one connected TaskTracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLoad {
    /// Identity.
    pub identity: String,
    /// Node group.
    pub node_group: String,
    /// Threads it announced.
    pub threads: u32,
    /// Threads free right now.
    pub free: u32,
}

/// Dispatch for all node groups of this tracker.
pub struct Dispatcher {
    store: Arc<dyn JobStore>,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    lease_ms: i64,
    idle_poll: Duration,
    /// How long before their trigger time jobs are claimed for a TaskTracker that holds them
    /// until then.
    claim_ahead_ms: i64,
    /// Caps on the running jobs of node groups, across every tracker of the cluster.
    max_running: HashMap<String, u32>,
    /// The cluster's TaskTrackers as the registry knows them (those connected to other
    /// trackers too), for broadcast jobs.
    peers: std::sync::OnceLock<tokio::sync::watch::Receiver<Vec<lts_registry::NodeInfo>>>,
    next_conn: AtomicU64,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("lease_ms", &self.lease_ms)
            .finish()
    }
}

impl Dispatcher {
    /// A dispatcher leasing jobs for `lease_ms` at a time. With idle TaskTrackers it also
    /// looks for work every `idle_poll`, which catches jobs submitted through *other*
    /// trackers of the cluster (this tracker is woken directly only by its own submits).
    /// It claims jobs up to `claim_ahead_ms` before their trigger time for the TaskTrackers
    /// that hold a job until then ([`WorkerConn::waits_for_start`]); the others get only due
    /// jobs. A node group named in `max_running` never runs more jobs at once than its cap,
    /// counted in the store across every tracker.
    pub fn new(
        store: Arc<dyn JobStore>,
        lease_ms: i64,
        idle_poll: Duration,
        claim_ahead_ms: i64,
        max_running: HashMap<String, u32>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Dispatcher {
            store,
            groups: Mutex::new(HashMap::new()),
            lease_ms,
            idle_poll,
            claim_ahead_ms: claim_ahead_ms.max(0),
            max_running,
            peers: std::sync::OnceLock::new(),
            next_conn: AtomicU64::new(1),
            shutdown,
        })
    }

    /// The lease duration handed to TaskTrackers.
    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    /// Follows the cluster's TaskTrackers (the registry's members), whose identities a
    /// broadcast job's claim runs a shard on. Without it, the ones connected here.
    pub fn watch_peers(&self, members: tokio::sync::watch::Receiver<Vec<lts_registry::NodeInfo>>) {
        let _ = self.peers.set(members);
    }

    /// The TaskTrackers of the node group connected now: here, or (as the registry knows
    /// them) to another tracker.
    pub fn targets(&self, group: &Group) -> Vec<String> {
        let mut out: Vec<String> = group
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.identity.clone())
            .collect();
        if let Some(peers) = self.peers.get() {
            out.extend(
                peers
                    .borrow()
                    .iter()
                    .filter(|n| n.node_group == group.name)
                    .map(|n| n.identity.clone()),
            );
        }
        out.sort();
        out.dedup();
        out
    }

    /// The node group's cap on running jobs, if it has one.
    fn cap(&self, node_group: &str) -> Option<u32> {
        self.max_running.get(node_group).copied()
    }

    /// A run of the node group ended (a result was recorded, a user cancelled it): under a cap
    /// on its running jobs, the group may claim again.
    pub fn run_ended(self: &Arc<Self>, node_group: &str) {
        if self.cap(node_group).is_some() {
            self.signal_work(node_group);
        }
    }

    /// The group `name` while a TaskTracker of it is connected.
    fn existing(&self, name: &str) -> Option<Arc<Group>> {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// There may be due work in `node_group` (a submit, requeue or release).
    pub fn signal_work(self: &Arc<Self>, node_group: &str) {
        if let Some(g) = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_group)
        {
            g.signal_work();
        }
    }

    /// Work in `node_group` comes due at `at_ms` (a retry or next fire): the group looks for
    /// it in time to claim it ahead.
    pub fn signal_work_at(self: &Arc<Self>, node_group: &str, at_ms: i64) {
        self.wake_at(node_group, at_ms.saturating_sub(self.claim_ahead_ms));
    }

    /// Wakes the group at `at_ms`. Keeps one timer per group, for the earliest time asked for.
    fn wake_at(self: &Arc<Self>, node_group: &str, at_ms: i64) {
        let delay = at_ms - now_ms();
        if delay <= 0 {
            self.signal_work(node_group);
            return;
        }
        // Without a TaskTracker there is no group to wake: one that connects looks for due
        // work at once, and sets its timer from the store.
        let Some(g) = self.existing(node_group) else {
            return;
        };
        let current = g.timer_at.load(Ordering::SeqCst);
        if current <= at_ms && current > now_ms() {
            return;
        }
        g.timer_at.store(at_ms, Ordering::SeqCst);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(delay as u64)) => {}
                _ = shutdown.cancelled() => return,
                _ = g.closed.cancelled() => return,
            }
            let _ =
                g.timer_at
                    .compare_exchange(at_ms, i64::MAX, Ordering::SeqCst, Ordering::SeqCst);
            g.signal_work();
        });
    }

    /// The job's lease is gone (a user cancelled the job): the TaskTracker that holds it
    /// through a stream of this tracker is told at once, as a renewal would tell it later, and
    /// stops the run (or drops it before it starts). A stream of another tracker learns at its
    /// next renewal.
    pub fn lease_gone(&self, node_group: &str, job_id: &str) {
        let Some(g) = self.existing(node_group) else {
            return;
        };
        let slots = g.slots.lock().unwrap_or_else(|e| e.into_inner());
        for s in slots.iter().filter(|s| s.conn.take(job_id)) {
            let gone = proto::RenewAck {
                lease_deadline_ms: 0,
                lost_job_ids: vec![job_id.to_string()],
            };
            let msg = TrackerMessage {
                msg: Some(tracker_message::Msg::RenewAck(gone)),
            };
            // A stream that cannot take it learns at its next renewal.
            let _ = s.tx.send(Ok(msg));
        }
    }

    /// Runs of `Replace` jobs just sent: the run each one replaced (cancelled in the store by
    /// the claim) is stopped at once.
    fn replaced(&self, group: &Group, sent: &[(String, String)]) {
        for (definition, job_id) in sent {
            let previous = {
                let mut runs = group.replacing.lock().unwrap_or_else(|e| e.into_inner());
                if runs.len() >= MAX_REPLACING && !runs.contains_key(definition) {
                    runs.clear();
                }
                runs.insert(definition.clone(), job_id.clone())
            };
            if let Some(previous) = previous.filter(|p| p != job_id) {
                self.lease_gone(&group.name, &previous);
            }
        }
    }

    /// Adds a TaskTracker stream; returns its connection id.
    pub fn connect(
        self: &Arc<Self>,
        node_group: &str,
        identity: &str,
        threads: u32,
        tx: WorkerTx,
        conn: Arc<WorkerConn>,
    ) -> u64 {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        // Under the map's lock, so that a disconnect cannot close the group in between.
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let g = groups
            .entry(node_group.to_string())
            .or_insert_with(|| {
                let g = Arc::new(Group {
                    name: node_group.to_string(),
                    slots: Mutex::new(Vec::new()),
                    wake: Notify::new(),
                    maybe_work: AtomicBool::new(true),
                    drained: AtomicBool::new(false),
                    work_epoch: AtomicU64::new(0),
                    timer_at: AtomicI64::new(i64::MAX),
                    closed: CancellationToken::new(),
                    replacing: Mutex::new(HashMap::new()),
                    route: Mutex::new(None),
                });
                let me = self.clone();
                let group = g.clone();
                tokio::spawn(async move { me.run_group(group).await });
                g
            })
            .clone();
        g.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Slot {
                conn_id,
                identity: identity.to_string(),
                threads: threads.max(1),
                credits: 0,
                tx,
                conn,
            });
        drop(groups);
        metrics::gauge!("lts_task_trackers_connected", "node_group" => node_group.to_string())
            .increment(1.0);
        conn_id
    }

    /// Removes a TaskTracker stream.
    pub fn disconnect(self: &Arc<Self>, node_group: &str, conn_id: u64) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = groups.get(node_group) {
            let mut slots = g.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.retain(|s| s.conn_id != conn_id);
            if slots.is_empty() {
                drop(slots);
                g.closed.cancel();
                groups.remove(node_group);
            }
        }
        drop(groups);
        metrics::gauge!("lts_task_trackers_connected", "node_group" => node_group.to_string())
            .decrement(1.0);
    }

    /// Whether a TaskTracker with this identity is connected (in any group).
    pub fn is_connected(&self, identity: &str) -> bool {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|g| {
                g.slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .any(|s| s.identity == identity)
            })
    }

    /// More free threads on one stream.
    pub fn add_credits(self: &Arc<Self>, node_group: &str, conn_id: u64, n: u32) {
        if n == 0 {
            return;
        }
        let Some(g) = self.existing(node_group) else {
            return;
        };
        {
            let mut slots = g.slots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = slots.iter_mut().find(|s| s.conn_id == conn_id) {
                s.credits = (s.credits + n).min(s.threads);
            }
        }
        if g.maybe_work.load(Ordering::SeqCst) {
            g.wake.notify_one();
        }
    }

    /// The load of every connected TaskTracker.
    pub fn loads(&self) -> Vec<WorkerLoad> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for g in groups.values() {
            for s in g.slots.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                out.push(WorkerLoad {
                    identity: s.identity.clone(),
                    node_group: g.name.clone(),
                    threads: s.threads,
                    free: s.credits,
                });
            }
        }
        out
    }

    /// Reserves credits: most idle TaskTracker (largest free share) first, each one's free
    /// credits (half of them while the group is drained). TaskTrackers that stopped answering
    /// pings get nothing (their credits wait until they answer again).
    fn plan(group: &Group) -> Vec<Planned> {
        let drained = group.drained.load(Ordering::SeqCst);
        let mut slots = group.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut order: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].credits > 0 && slots[i].conn.is_alive())
            .collect();
        order.sort_by(|&a, &b| {
            let (sa, sb) = (&slots[a], &slots[b]);
            // credits_a / threads_a > credits_b / threads_b, compared without division.
            (u64::from(sb.credits) * u64::from(sa.threads))
                .cmp(&(u64::from(sa.credits) * u64::from(sb.threads)))
                .then(sb.credits.cmp(&sa.credits))
        });
        order
            .into_iter()
            .map(|i| {
                let s = &mut slots[i];
                // A drained group's submits go straight to free threads (`reserve_idle`); a
                // round that held every credit while it claimed the few jobs queued meanwhile
                // sent the submits of those milliseconds to the queue, and their signals made
                // the next round, and so on. Half the credits keep that path open; a round that
                // fills its half finds the group not drained, and the next takes them all.
                let n = if drained {
                    s.credits.div_ceil(2)
                } else {
                    s.credits
                }
                .min(MAX_CLAIM);
                s.credits -= n;
                Planned {
                    conn_id: s.conn_id,
                    identity: s.identity.clone(),
                    n,
                    tx: s.tx.clone(),
                    conn: s.conn.clone(),
                }
            })
            .collect()
    }

    fn refund(group: &Group, conn_id: u64, n: u32) {
        if n == 0 {
            return;
        }
        let mut slots = group.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.iter_mut().find(|s| s.conn_id == conn_id) {
            s.credits = (s.credits + n).min(s.threads);
        }
    }

    /// Sends the leases claimed for one reservation down its TaskTracker's stream, gives
    /// back the credits they did not use, and releases what the stream could not take.
    async fn deliver(&self, group: &Group, p: Planned, leases: Vec<Lease>) {
        let count = leases.len() as u32;
        Self::refund(group, p.conn_id, p.n.saturating_sub(count));
        let sent_at = now_ms();
        let mut undelivered = Vec::new();
        let replacing: Vec<(String, String)> = leases
            .iter()
            .filter(|l| l.job.spec.concurrency_policy == ConcurrencyPolicy::Replace)
            .filter_map(|l| Some((l.job.instance_of.clone()?, l.job.job_id.clone())))
            .collect();
        for lease in leases {
            // A job claimed ahead of its trigger time (only for a TaskTracker that waits).
            let start_in_ms = lease.job.trigger_time_ms.saturating_sub(sent_at).max(0);
            let msg = TrackerMessage {
                msg: Some(tracker_message::Msg::Assign(proto::Assignment {
                    job: Some(convert::job_to_proto(&lease.job)),
                    lease_token: lease.token.clone(),
                    lease_deadline_ms: lease.expiry_ms,
                    sent_at_ms: sent_at,
                    start_in_ms,
                })),
            };
            // Held before it is sent, so that its result can never arrive before the stream
            // knows it holds it.
            p.conn.hold(HeldLease {
                job_id: lease.job.job_id.clone(),
                token: lease.token.clone(),
                expiry_ms: lease.expiry_ms,
            });
            if p.tx.send(Ok(msg)).is_err() {
                p.conn.forget(&lease.job.job_id);
                undelivered.push(LeaseRef {
                    job_id: lease.job.job_id,
                    token: lease.token,
                });
            }
        }
        self.replaced(group, &replacing);
        metrics::counter!("lts_jobs_dispatched_total", "node_group" => group.name.clone())
            .increment(u64::from(count) - undelivered.len() as u64);
        if !undelivered.is_empty() {
            tracing::debug!(node_group = %group.name, n = undelivered.len(), "stream closed; releasing");
            if let Err(e) = self.store.release(undelivered, now_ms()).await {
                tracing::warn!(error = %e, "release of undelivered jobs failed; their leases will expire");
            }
            group.signal_work();
        }
    }

    /// Reserves one free thread of the node group for a job about to be submitted, when the
    /// group has no queue to serve first (its last claim round came back short): the submit then stores the job already leased to that TaskTracker
    /// ([`JobStore::submit_leased`]) and [`Dispatcher::hand_over`] sends it, one durable write
    /// instead of an insert and a claim. `None` while the group may have a queue (its last
    /// round took every thread it could) or no free thread. Jobs submitted at about the same
    /// moment through the ordinary path may start a few milliseconds after a job handed over.
    pub fn reserve_idle(&self, node_group: &str) -> Option<Reserved> {
        let group = self.existing(node_group)?;
        // A capped group's jobs go through its claims, which count its running jobs.
        if !group.drained.load(Ordering::SeqCst)
            || group.closed.is_cancelled()
            || self.cap(node_group).is_some()
        {
            return None;
        }
        let planned = {
            let mut slots = group.slots.lock().unwrap_or_else(|e| e.into_inner());
            let best = slots
                .iter_mut()
                .filter(|s| s.credits > 0 && s.conn.is_alive())
                .max_by(|a, b| {
                    (u64::from(a.credits) * u64::from(b.threads))
                        .cmp(&(u64::from(b.credits) * u64::from(a.threads)))
                })?;
            best.credits -= 1;
            Planned {
                conn_id: best.conn_id,
                identity: best.identity.clone(),
                n: 1,
                tx: best.tx.clone(),
                conn: best.conn.clone(),
            }
        };
        Some(Reserved {
            group,
            planned: Some(planned),
        })
    }

    /// Sends the job a reservation's submit leased, or gives the thread back when the submit
    /// did not lease one (a duplicate, a job not due yet) and looks for work again.
    pub async fn hand_over(&self, reserved: Reserved, lease: Option<Lease>) {
        let mut reserved = reserved;
        // Without a lease, dropping `reserved` gives the thread back.
        let Some(lease) = lease else { return };
        let Some(planned) = reserved.planned.take() else {
            return;
        };
        self.deliver(&reserved.group, planned, vec![lease]).await;
    }

    /// Whether the group has a cap on its running jobs and runs that many now.
    async fn at_cap(&self, group: &Group) -> bool {
        let Some(cap) = self.cap(&group.name) else {
            return false;
        };
        match self.store.running_count(&group.name, cap).await {
            Ok(running) => running >= cap,
            Err(e) => {
                tracing::warn!(node_group = %group.name, error = %e, "counting running jobs failed");
                true
            }
        }
    }

    /// Waits for a work signal or the idle poll; `false` when the dispatcher or the group ends.
    async fn rest(&self, group: &Group) -> bool {
        tokio::select! {
            _ = group.wake.notified() => true,
            _ = tokio::time::sleep(self.idle_poll) => true,
            _ = self.shutdown.cancelled() => false,
            _ = group.closed.cancelled() => false,
        }
    }

    /// Whether a second claim round may start while one is out: only where the store allows
    /// it, while the queue is deep (the last round came back full and work is signalled), the
    /// group has no cap on its running jobs (a cap is counted per round), and a quarter of the
    /// group's window of threads came back free since — enough jobs for a round to be worth
    /// its claim.
    fn second_round_due(&self, group: &Group, out: usize) -> bool {
        if out >= self.store.claim_rounds().clamp(1, MAX_ROUNDS)
            || group.drained.load(Ordering::SeqCst)
            || !group.maybe_work.load(Ordering::SeqCst)
            || self.cap(&group.name).is_some()
        {
            return false;
        }
        let (free, window) = group.free_and_window();
        free > 0 && free >= window / 4
    }

    /// Claims the jobs of one plan (one claim per TaskTracker, all at `now`) and sends them.
    async fn round(self: Arc<Self>, group: Arc<Group>, plan: Vec<Planned>, epoch: u64) -> RoundEnd {
        let now = now_ms();
        let requested: u32 = plan.iter().map(|p| p.n).sum();
        let targets = self.targets(&group);
        let route = group.assignment(&targets);
        let claims = plan.iter().map(|p| {
            self.store.claim(ClaimRequest {
                node_group: group.name.clone(),
                owner: p.identity.clone(),
                max: p.n as usize,
                lease_ms: self.lease_ms,
                now_ms: now,
                ahead_ms: if p.conn.waits_for_start() {
                    self.claim_ahead_ms
                } else {
                    0
                },
                max_running: self.cap(&group.name),
                targets: targets.clone(),
                labels: p.conn.labels().clone(),
                route_buckets: route.buckets_of(&p.identity),
            })
        });
        let results = futures::future::join_all(claims).await;
        let mut end = RoundEnd {
            requested,
            got: 0,
            failed: false,
            epoch,
        };
        for (p, result) in plan.into_iter().zip(results) {
            let (conn_id, n) = (p.conn_id, p.n);
            match result {
                Ok(leases) => {
                    end.got += leases.len() as u32;
                    self.deliver(&group, p, leases).await;
                }
                Err(e) => {
                    end.failed = true;
                    Self::refund(&group, conn_id, n);
                    tracing::warn!(node_group = %group.name, error = %e, "claim failed");
                }
            }
        }
        end
    }

    /// What the group's task does when a round ended: backs off after a failed claim, and
    /// after a short one (the queue has no more due work) sleeps until the earliest trigger
    /// time or a signal.
    async fn round_ended(self: &Arc<Self>, group: &Group, end: RoundEnd, backoff_ms: &mut u64) {
        if end.failed {
            *backoff_ms = (*backoff_ms * 2).clamp(50, 5_000);
            return;
        }
        *backoff_ms = 0;
        let short = end.got < end.requested;
        group.drained.store(short, Ordering::SeqCst);
        if !short {
            return;
        }
        if self.at_cap(group).await {
            // Due work may wait, but the group runs as many jobs as its cap allows: look
            // again when a run ends here (`run_ended`), or after a while for runs that end
            // through other trackers.
            self.rest(group).await;
            return;
        }
        // The queue has no more due work right now. Sleep until the earliest future trigger
        // time, or until signalled.
        if group
            .maybe_work
            .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            && group.work_epoch.load(Ordering::SeqCst) != end.epoch
        {
            group.maybe_work.store(true, Ordering::SeqCst);
        }
        match self.store.next_due(&group.name).await {
            Ok(Some(at)) => {
                // Wake in time to claim it ahead, unless it is within reach already and was
                // not taken (no TaskTracker that waits for a start had a free thread): then at
                // its trigger time.
                let now = now_ms();
                let ahead = at.saturating_sub(self.claim_ahead_ms);
                let wake = if ahead > now { ahead } else { at };
                self.wake_at(&group.name, wake.max(now + 1))
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(node_group = %group.name, error = %e, "next_due failed");
                group.maybe_work.store(true, Ordering::SeqCst);
                *backoff_ms = 500;
            }
        }
    }

    /// [`Dispatcher::round_ended`] for a round task that ended (one that panicked is logged).
    async fn round_joined(
        self: &Arc<Self>,
        group: &Group,
        ended: Result<RoundEnd, tokio::task::JoinError>,
        backoff_ms: &mut u64,
    ) {
        match ended {
            Ok(end) => self.round_ended(group, end, backoff_ms).await,
            Err(e) => tracing::error!(node_group = %group.name, error = %e, "a claim round failed"),
        }
    }

    async fn run_group(self: Arc<Self>, group: Arc<Group>) {
        let mut backoff_ms = 0u64;
        // Rounds run as tasks of their own, so that a round's jobs are sent as soon as they
        // are claimed whatever this task waits for (see `second_round_due` for how many).
        let mut rounds: JoinSet<RoundEnd> = JoinSet::new();
        loop {
            if self.shutdown.is_cancelled() || group.closed.is_cancelled() {
                // What the rounds out claimed is sent (or handed back) before the task ends.
                while rounds.join_next().await.is_some() {}
                return;
            }
            if let Some(ended) = rounds.try_join_next() {
                self.round_joined(&group, ended, &mut backoff_ms).await;
                continue;
            }
            if !rounds.is_empty() && !self.second_round_due(&group, rounds.len()) {
                tokio::select! {
                    Some(ended) = rounds.join_next() => {
                        self.round_joined(&group, ended, &mut backoff_ms).await;
                    }
                    _ = group.wake.notified() => {}
                    _ = self.shutdown.cancelled() => {}
                    _ = group.closed.cancelled() => {}
                }
                continue;
            }
            if backoff_ms > 0 && rounds.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
                    _ = self.shutdown.cancelled() => continue,
                    _ = group.closed.cancelled() => continue,
                }
            }
            if !group.maybe_work.load(Ordering::SeqCst) {
                tokio::select! {
                    _ = group.wake.notified() => {}
                    _ = tokio::time::sleep(self.idle_poll) => {
                        if group.free_threads() > 0 {
                            group.maybe_work.store(true, Ordering::SeqCst);
                        }
                    }
                    _ = self.shutdown.cancelled() => {}
                    _ = group.closed.cancelled() => {}
                }
                continue;
            }
            let epoch = group.work_epoch.load(Ordering::SeqCst);
            let plan = Self::plan(&group);
            if plan.is_empty() {
                // Work may be waiting, but no TaskTracker has a free thread (or the ones with
                // free threads are silent: look again after a while).
                self.rest(&group).await;
                continue;
            }
            let round = self.clone().round(group.clone(), plan, epoch);
            if self.store.claim_rounds() > 1 && !group.drained.load(Ordering::SeqCst) {
                rounds.spawn(round);
            } else {
                // One round at a time (the store's rule, or no queue to pipeline): run it
                // here, without the hand-offs between tasks that cost a busy machine a
                // scheduling delay each.
                let end = round.await;
                self.round_ended(&group, end, &mut backoff_ms).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};

    fn dispatcher(dir: &std::path::Path) -> Arc<Dispatcher> {
        let store = SqliteStore::open(dir.join("lts.db"), SqliteOptions::default()).unwrap();
        Dispatcher::new(
            Arc::new(store),
            15_000,
            Duration::from_millis(500),
            200,
            HashMap::new(),
            CancellationToken::new(),
        )
    }

    fn groups(d: &Dispatcher) -> usize {
        d.groups.lock().unwrap().len()
    }

    #[tokio::test]
    async fn an_outbox_nobody_reads_overflows_and_ends_its_stream() {
        use futures::StreamExt;
        let (tx, stream) = WorkerTx::channel(2);
        let ping = || Ok(TrackerMessage { msg: None });
        assert_eq!((tx.send(ping()), tx.send(ping())), (Ok(()), Ok(())));
        assert_eq!(tx.send(ping()), Err(Closed), "the third does not fit");
        assert!(tx.overflowed().is_cancelled());
        let drained: Vec<_> = stream.collect().await;
        assert!(drained.is_empty(), "the stream ends at once: {drained:?}");
    }

    #[tokio::test]
    async fn a_group_lives_only_while_a_task_tracker_of_it_is_connected() {
        let dir = tempfile::tempdir().unwrap();
        let d = dispatcher(dir.path());
        // Names that only clients mention make no group (and no task).
        d.signal_work("nobody");
        d.signal_work_at("nobody", now_ms() + 60_000);
        d.add_credits("nobody", 7, 10);
        assert_eq!(groups(&d), 0);

        let (tx, _rx) = WorkerTx::channel(16);
        let conn = Arc::new(WorkerConn::new(None));
        let a = d.connect("g", "w1", 4, tx.clone(), conn.clone());
        let b = d.connect("g", "w2", 4, tx, conn);
        assert_eq!(groups(&d), 1);
        let group = d.existing("g").unwrap();
        d.disconnect("g", a);
        assert_eq!(groups(&d), 1, "w2 is still there");
        d.disconnect("g", b);
        assert_eq!(groups(&d), 0);
        assert!(group.closed.is_cancelled(), "its task ends");
    }

    #[tokio::test]
    async fn a_submit_goes_straight_to_a_free_thread_only_once_the_queue_is_drained() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dispatcher(dir.path());
        let (tx, stream) = WorkerTx::channel(16);
        let mut stream = Box::pin(stream);
        let conn = Arc::new(WorkerConn::new(None));
        let id = d.connect("g", "w1", 2, tx, conn.clone());
        let group = d.existing("g").unwrap();
        // No thread is free yet: nothing to reserve.
        assert!(d.reserve_idle("g").is_none());
        assert!(d.reserve_idle("nobody").is_none(), "no such group");
        d.add_credits("g", id, 2);
        // The group's task claims on the empty store and comes back short: drained. (Its
        // rounds take the credits for a moment, so wait for a reservation rather than look.)
        let reserve = || async {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(r) = d.reserve_idle("g") {
                    return r;
                }
                assert!(std::time::Instant::now() < deadline, "nothing to reserve");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let settled = |want: u32| {
            let group = group.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while group.free_threads() != want {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "credits never settled"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };

        // A reservation dropped unused (a cancelled call) gives its thread back.
        let r = reserve().await;
        assert!(group.drained.load(Ordering::SeqCst));
        assert_eq!(r.claim(15_000, 1).owner, "w1");
        drop(r);
        settled(2).await;
        // So does one whose submit leased nothing (a duplicate, a job not due yet).
        let r = reserve().await;
        d.hand_over(r, None).await;
        settled(2).await;

        // A leased job is held by the stream and sent down it; its thread stays taken.
        let r = reserve().await;
        let job = lts_core::Job::new("j1", lts_core::JobSpec::new("t1", "g"));
        let lease = Lease {
            job,
            token: "tok".into(),
            expiry_ms: now_ms() + 15_000,
        };
        d.hand_over(r, Some(lease)).await;
        settled(1).await;
        let sent = stream.next().await.unwrap().unwrap();
        match sent.msg {
            Some(tracker_message::Msg::Assign(a)) => {
                assert_eq!(a.job.unwrap().job_id, "j1");
                assert_eq!(a.lease_token, "tok");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            conn.held().iter().any(|l| l.job_id == "j1"),
            "held before it was sent"
        );
    }

    /// Two TaskTrackers of group `g` with windows of `a` and `b` threads: their connection
    /// ids and the group.
    fn two_task_trackers(d: &Arc<Dispatcher>, a: u32, b: u32) -> (u64, u64, Arc<Group>) {
        let (tx, _rx) = WorkerTx::channel(16);
        let conn = Arc::new(WorkerConn::new(None));
        let a = d.connect("g", "w1", a, tx.clone(), conn.clone());
        let b = d.connect("g", "w2", b, tx, conn);
        (a, b, d.existing("g").unwrap())
    }

    #[tokio::test]
    async fn a_round_of_a_drained_group_leaves_half_the_free_threads_to_submits() {
        let dir = tempfile::tempdir().unwrap();
        let d = dispatcher(dir.path());
        let (a, b, group) = two_task_trackers(&d, 8, 3);
        let credits = |group: &Group| -> Vec<u32> {
            group
                .slots
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.credits)
                .collect()
        };
        let refund = |group: &Group, plan: Vec<Planned>| {
            for p in plan {
                Dispatcher::refund(group, p.conn_id, p.n);
            }
        };
        // The group's own task takes credits while it claims: stop it, and wait until its
        // last round gave them back.
        let settle = || async {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while group.free_threads() != 11 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "credits never settled"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        d.add_credits("g", a, 8);
        d.add_credits("g", b, 3);
        d.shutdown.cancel();
        settle().await;

        group.drained.store(true, Ordering::SeqCst);
        let plan = Dispatcher::plan(&group);
        let mut asked: Vec<(u64, u32)> = plan.iter().map(|p| (p.conn_id, p.n)).collect();
        asked.sort_unstable();
        assert_eq!(asked, vec![(a, 4), (b, 2)], "half of each, rounded up");
        assert_eq!(
            credits(&group).iter().sum::<u32>(),
            5,
            "the rest stays free"
        );
        assert!(
            d.reserve_idle("g").is_some(),
            "a submit still finds a thread"
        );
        refund(&group, plan);
        settle().await;

        group.drained.store(false, Ordering::SeqCst);
        let plan = Dispatcher::plan(&group);
        assert_eq!(
            plan.iter().map(|p| p.n).sum::<u32>(),
            11,
            "a queue takes them all"
        );
        assert_eq!(credits(&group).iter().sum::<u32>(), 0);
        refund(&group, plan);
    }

    #[tokio::test]
    async fn a_second_round_needs_a_deep_queue_and_a_quarter_of_the_threads_free() {
        let dir = tempfile::tempdir().unwrap();
        let d = dispatcher(dir.path());
        let (a, b, group) = two_task_trackers(&d, 12, 4);
        // The group's own task must not take the credits this test hands out.
        d.shutdown.cancel();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !group.slots.lock().unwrap().iter().all(|s| s.credits == 0) {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        group.drained.store(false, Ordering::SeqCst);
        group.maybe_work.store(true, Ordering::SeqCst);
        // A window of 16 threads: a second round needs 4 of them free.
        Dispatcher::refund(&group, a, 2);
        Dispatcher::refund(&group, b, 1);
        assert!(!d.second_round_due(&group, 1), "3 free threads are too few");
        Dispatcher::refund(&group, b, 1);
        assert!(
            d.second_round_due(&group, 1),
            "4 of 16 free, the queue deep"
        );
        assert!(
            !d.second_round_due(&group, MAX_ROUNDS),
            "never more rounds out"
        );
        group.drained.store(true, Ordering::SeqCst);
        assert!(
            !d.second_round_due(&group, 1),
            "the last round came back short: no queue to pipeline"
        );
        group.drained.store(false, Ordering::SeqCst);
        group.maybe_work.store(false, Ordering::SeqCst);
        assert!(!d.second_round_due(&group, 1), "no work signalled");
    }
}
