//! The TaskTracker runtime: holds one `WorkerService.Work` stream to a JobTracker, runs up to
//! `threads` jobs at once with the user's [`JobRunner`], renews their leases while they run
//! and reports each outcome.
//!
//! * **Flow control**: the TaskTracker grants credits (free threads, plus its `prefetch`); the
//!   tracker never sends more jobs than that. Prefetched jobs wait in line (in the order they
//!   came) for a free thread, so that for short jobs a thread never waits for the next claim.
//! * **Reconnects**: when the stream breaks it reconnects with backoff (to any tracker in the
//!   list), tells the tracker which leases it still holds, and resends results the old stream
//!   did not acknowledge. Jobs keep running meanwhile.
//! * **Graceful shutdown**: stop taking work, let running jobs finish within the grace period,
//!   then cancel the rest and hand them back to the tracker (they run again elsewhere without
//!   using up a retry).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use lts_core::heartbeat::Heartbeat;
use lts_core::proto::{
    self, tracker_message, worker_message, worker_service_client::WorkerServiceClient,
};
use lts_core::{convert, now_ms};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, reconnect_backoff};
use crate::connect::{self, Trackers};
use crate::credentials::{AuthChannel, Credentials};
use crate::outbox::Outbox;
use crate::runner::{BizLogger, JobContext, JobRunner, RunResult};
use lts_core::limits::ReportLimits;
use lts_registry::{NodeInfo, Registry, Role};

/// Builds a [`TaskTracker`].
pub struct TaskTrackerBuilder {
    cluster: String,
    node_group: Option<String>,
    trackers: Vec<String>,
    registry: Option<Arc<dyn Registry>>,
    creds: Credentials,
    threads: u32,
    prefetch: u32,
    identity: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
    grace: Duration,
    heartbeat: Duration,
    silence: Duration,
    report_limits: ReportLimits,
    max_message_bytes: usize,
    outbox: Option<std::path::PathBuf>,
    runner: Option<Arc<dyn JobRunner>>,
}

impl std::fmt::Debug for TaskTrackerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskTrackerBuilder")
            .field("cluster", &self.cluster)
            .field("node_group", &self.node_group)
            .field("trackers", &self.trackers)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl TaskTrackerBuilder {
    /// The cluster name (default `default`); a tracker of another cluster refuses the stream.
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = cluster.into();
        self
    }

    /// The TaskTracker node group whose jobs this worker runs (required).
    pub fn node_group(mut self, node_group: impl Into<String>) -> Self {
        self.node_group = Some(node_group.into());
        self
    }

    /// One tracker address (`host:port` or `http://host:port`); may be called repeatedly.
    pub fn tracker(mut self, addr: impl Into<String>) -> Self {
        self.trackers.push(addr.into());
        self
    }

    /// Tracker addresses; one is picked at random and kept until it fails.
    pub fn trackers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, addrs: I) -> Self {
        self.trackers.extend(addrs.into_iter().map(Into::into));
        self
    }

    /// Find trackers in a registry (ZooKeeper) instead of a fixed list; the TaskTracker also
    /// registers itself there, so the master re-queues its jobs at once if it dies.
    pub fn registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The credentials to connect with: the tracker's CA, a client certificate, a token.
    pub fn credentials(mut self, creds: Credentials) -> Self {
        self.creds = creds;
        self
    }

    /// How many jobs run at once (default 8).
    pub fn threads(mut self, threads: u32) -> Self {
        self.threads = threads;
        self
    }

    /// How many jobs it takes beyond its threads (default 0), queued here in the order they came
    /// and started as threads free up: the next job is at hand the moment a thread is free
    /// instead of one claim round trip later, which multiplies the rate of short jobs. A
    /// prefetched job is leased (its lease renewed) while it waits; keep this 0 for long jobs,
    /// which would otherwise wait behind this TaskTracker's runs while another is idle.
    /// At most [`lts_core::validate::MAX_PREFETCH`].
    pub fn prefetch(mut self, jobs: u32) -> Self {
        self.prefetch = jobs;
        self
    }

    /// A stable identity (default: host name and a random suffix).
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// A label of this TaskTracker: it is sent the jobs whose affinity its labels satisfy (and
    /// the jobs without affinity). At most [`lts_core::model::MAX_LABELS`].
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// How long running jobs may take to finish on shutdown (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How often to ping the tracker on the work stream (default 500 ms).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// How long the tracker may leave pings unanswered before this TaskTracker gives up on it
    /// and moves to another tracker, re-announcing its running jobs there (default 2 s). Also
    /// bounds how long opening the work stream may take.
    pub fn tracker_silence(mut self, timeout: Duration) -> Self {
        self.silence = timeout;
        self
    }

    /// Bounds on what one run may report (default [`ReportLimits::default`]): its message and
    /// business-log lines are cut to them, with markers, as the run logs.
    pub fn report_limits(mut self, limits: ReportLimits) -> Self {
        self.report_limits = limits;
        self
    }

    /// The largest gRPC message sent or accepted, in bytes (default
    /// [`lts_core::limits::DEFAULT_MAX_MESSAGE_BYTES`]). A result is also kept under the
    /// tracker's own limit, which it announces: past it, the run's business-log lines are
    /// dropped (with a line saying so) and the outcome is sent as it is.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Keep finished results the tracker has not acknowledged yet in a durable outbox at
    /// `path` (an SQLite file, fsynced on every write), and send them again after a crash or
    /// restart, so that a run that finished is not run again ([`crate::outbox`]). Costs one
    /// fsync per result; off by default.
    pub fn outbox(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.outbox = Some(path.into());
        self
    }

    /// The runner (required).
    pub fn runner(mut self, runner: impl JobRunner) -> Self {
        self.runner = Some(Arc::new(runner));
        self
    }

    /// The runner, already shared (required unless [`TaskTrackerBuilder::runner`] was used).
    pub fn runner_arc(mut self, runner: Arc<dyn JobRunner>) -> Self {
        self.runner = Some(runner);
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<TaskTracker, ClientError> {
        let mut v = Vec::new();
        let node_group = self.node_group.unwrap_or_default();
        lts_core::validate::check_node_group("node_group", &node_group, &mut v);
        lts_core::validate::check_node_group("cluster", &self.cluster, &mut v);
        if self.threads == 0 {
            v.push(lts_core::FieldViolation::new(
                "threads",
                "must be at least 1",
            ));
        }
        lts_core::validate::check_labels("labels", &self.labels, &mut v);
        if self.prefetch > lts_core::validate::MAX_PREFETCH {
            v.push(lts_core::FieldViolation::new(
                "prefetch",
                format!(
                    "must be at most {} (got {})",
                    lts_core::validate::MAX_PREFETCH,
                    self.prefetch
                ),
            ));
        }
        lts_core::limits::check_message_limit("max_message_bytes", self.max_message_bytes, &mut v);
        lts_core::limits::check_report_limits(&self.report_limits, &mut v);
        if self.trackers.is_empty() && self.registry.is_none() {
            v.push(lts_core::FieldViolation::new(
                "tracker",
                "at least one tracker address (or a registry) is required",
            ));
        }
        let min_heartbeat = lts_core::heartbeat::MIN_INTERVAL;
        if self.heartbeat < min_heartbeat {
            v.push(lts_core::FieldViolation::new(
                "heartbeat",
                format!("must be at least {} ms", min_heartbeat.as_millis()),
            ));
        }
        if self.silence <= self.heartbeat {
            v.push(lts_core::FieldViolation::new(
                "tracker_silence",
                "must be longer than the heartbeat interval",
            ));
        }
        for t in &self.trackers {
            if let Err(e) = connect::endpoint(t, &self.creds) {
                v.push(lts_core::FieldViolation::new("tracker", e.to_string()));
            }
        }
        let Some(runner) = self.runner else {
            v.push(lts_core::FieldViolation::new("runner", "is required"));
            return Err(ClientError::Invalid(lts_core::Violations(v)));
        };
        if !v.is_empty() {
            return Err(ClientError::Invalid(lts_core::Violations(v)));
        }
        let outbox = self.outbox.map(Outbox::open).transpose()?;
        Ok(TaskTracker {
            identity: self.identity.unwrap_or_else(|| default_identity("worker")),
            cluster: self.cluster,
            node_group,
            trackers: match self.registry {
                Some(r) => Trackers::Registry(r),
                None => Trackers::Static(self.trackers),
            },
            creds: self.creds,
            threads: self.threads,
            prefetch: self.prefetch,
            labels: self.labels,
            slots: Arc::new(Semaphore::new(self.threads as usize)),
            grace: self.grace,
            heartbeat: self.heartbeat,
            silence: self.silence,
            avoid: connect::Avoid::default(),
            report_limits: self.report_limits,
            max_message_bytes: self.max_message_bytes,
            outbox,
            runner,
            connection: Connection::default(),
        })
    }
}

pub use lts_core::default_identity;

/// Whether a TaskTracker holds a Work stream to a tracker right now: what a readiness check
/// asks (`lts-worker --health-listen` serves it as `/readyz`). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Connection(Arc<AtomicBool>);

impl Connection {
    /// Connected to a tracker now.
    pub fn is_connected(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, connected: bool) {
        self.0
            .store(connected, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A TaskTracker: see the module docs.
pub struct TaskTracker {
    identity: String,
    cluster: String,
    node_group: String,
    trackers: Trackers,
    creds: Credentials,
    threads: u32,
    prefetch: u32,
    labels: std::collections::BTreeMap<String, String>,
    /// One permit per thread: a job runs while it holds one.
    slots: Arc<Semaphore>,
    grace: Duration,
    heartbeat: Duration,
    silence: Duration,
    /// Trackers that went silent or failed: reconnect elsewhere first.
    avoid: connect::Avoid,
    report_limits: ReportLimits,
    max_message_bytes: usize,
    outbox: Option<Outbox>,
    runner: Arc<dyn JobRunner>,
    connection: Connection,
}

impl std::fmt::Debug for TaskTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskTracker")
            .field("identity", &self.identity)
            .field("node_group", &self.node_group)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

struct RunningJob {
    token: String,
    cancel: CancellationToken,
    /// Set by whoever decides its fate first: its task when it gets a thread (it runs), or a
    /// shutdown while it still waits in line (it is handed back unrun).
    decided: Arc<AtomicBool>,
}

struct Finished {
    job_id: String,
    result: proto::JobResult,
    /// Its entry in the outbox, if kept there.
    outbox_id: Option<i64>,
}

/// State that survives reconnects.
struct State {
    running: HashMap<String, RunningJob>,
    /// Results sent (or waiting to be sent) and not yet acknowledged.
    unacked: HashMap<String, proto::JobResult>,
    /// Results already unacknowledged at the last renewal tick: sent again at the next one (a
    /// tracker that failed to record one, say while its store was down, never answers it).
    overdue: std::collections::HashSet<String>,
    shutting_down: bool,
    /// Jobs handed back at the end of the grace period.
    released: bool,
    /// Prefetched jobs a shutdown took out of line before they started, to hand back.
    unstarted: Vec<proto::LeaseRef>,
    /// The largest message the tracker takes: the least of this TaskTracker's limit and what
    /// trackers announced (or, failing that, showed by refusing one).
    peer_limit: usize,
    /// Outbox entries of unacknowledged results, by job id.
    outbox_ids: HashMap<String, i64>,
}

enum SessionEnd {
    /// Shutdown finished.
    Done,
    /// The stream broke (or never opened); `bool`: whether it had connected.
    Lost(String, bool),
}

impl TaskTracker {
    /// Starts building a TaskTracker.
    pub fn builder() -> TaskTrackerBuilder {
        TaskTrackerBuilder {
            cluster: "default".into(),
            node_group: None,
            trackers: Vec::new(),
            creds: Credentials::default(),
            registry: None,
            threads: 8,
            prefetch: 0,
            identity: None,
            labels: Default::default(),
            grace: Duration::from_secs(30),
            heartbeat: Duration::from_millis(500),
            silence: Duration::from_secs(2),
            report_limits: ReportLimits::default(),
            max_message_bytes: lts_core::limits::DEFAULT_MAX_MESSAGE_BYTES,
            outbox: None,
            runner: None,
        }
    }

    /// This TaskTracker's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether it is connected to a tracker, now and later (take it before [`TaskTracker::run`]).
    pub fn connection(&self) -> Connection {
        self.connection.clone()
    }

    /// Runs until `shutdown` completes, then shuts down gracefully.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let me = Arc::new(self);
        let worker = tokio::spawn(me.clone().run_inner(stop.clone()));
        tokio::pin!(shutdown);
        let mut worker = worker;
        tokio::select! {
            _ = &mut shutdown => {
                s.cancel();
                let _ = worker.await;
            }
            _ = &mut worker => {}
        }
    }

    /// Runs until `stop` is cancelled, then shuts down gracefully.
    pub async fn run_until_cancelled(self, stop: CancellationToken) {
        Arc::new(self).run_inner(stop).await
    }

    async fn run_inner(self: Arc<Self>, stop: CancellationToken) {
        if let Trackers::Registry(r) = &self.trackers {
            let me = NodeInfo {
                role: Role::TaskTracker,
                identity: self.identity.clone(),
                node_group: self.node_group.clone(),
                address: String::new(),
                threads: self.threads,
                version: lts_core::VERSION.to_string(),
                since_ms: now_ms(),
            };
            if let Err(e) = r.register(me).await {
                tracing::warn!(error = %e, "registration failed; retrying in the background");
            }
        }
        self.work(stop).await;
        if let Trackers::Registry(r) = &self.trackers {
            let _ = r.unregister(Role::TaskTracker, &self.identity).await;
        }
    }

    async fn work(self: &Arc<Self>, stop: CancellationToken) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let mut st = State {
            running: HashMap::new(),
            unacked: HashMap::new(),
            overdue: std::collections::HashSet::new(),
            shutting_down: false,
            released: false,
            unstarted: Vec::new(),
            peer_limit: self.max_message_bytes,
            outbox_ids: HashMap::new(),
        };
        // Results a previous run of this TaskTracker finished and never got acknowledged: sent
        // again once connected.
        if let Some(outbox) = &self.outbox {
            match outbox.load().await {
                Ok(kept) if !kept.is_empty() => {
                    tracing::info!(n = kept.len(), "results from the outbox to send again");
                    for (job_id, (id, result)) in kept {
                        st.outbox_ids.insert(job_id.clone(), id);
                        st.unacked.insert(job_id, result);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "the outbox cannot be read"),
            }
        }
        let mut delays = reconnect_backoff();
        let mut grace_deadline: Option<tokio::time::Instant> = None;
        loop {
            if st.shutting_down && st.running.is_empty() && st.unacked.is_empty() {
                break;
            }
            let end = self
                .session(&mut st, &done_tx, &mut done_rx, &stop, &mut grace_deadline)
                .await;
            self.connection.set(false);
            match end {
                SessionEnd::Done => break,
                SessionEnd::Lost(why, connected) => {
                    if connected {
                        delays = reconnect_backoff();
                    }
                    if st.shutting_down && st.running.is_empty() {
                        if self.outbox.is_some() {
                            tracing::warn!(
                                unacked = st.unacked.len(),
                                "shutting down without a tracker; unacknowledged results stay in the outbox for the next start"
                            );
                        } else {
                            tracing::warn!(
                                unacked = st.unacked.len(),
                                "shutting down without a tracker; unacknowledged results are dropped (their leases expire and the jobs run again)"
                            );
                        }
                        break;
                    }
                    let d = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(node_group = %self.node_group, error = %why, retry_in_ms = d.as_millis() as u64, "tracker connection lost");
                    // Keep collecting finished jobs while disconnected.
                    let sleep = tokio::time::sleep(d);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            Some(f) = done_rx.recv() => self.finished(&mut st, f, None),
                            _ = stop.cancelled(), if !st.shutting_down => {
                                self.begin_shutdown(&mut st, &mut grace_deadline);
                            }
                        }
                    }
                    if st.shutting_down && st.running.is_empty() && st.unacked.is_empty() {
                        break;
                    }
                }
            }
        }
        tracing::info!(identity = %self.identity, "TaskTracker stopped");
    }

    fn begin_shutdown(&self, st: &mut State, grace: &mut Option<tokio::time::Instant>) {
        st.shutting_down = true;
        // Prefetched jobs still waiting for a thread are not started: they go back at once.
        let waiting: Vec<String> = st
            .running
            .iter()
            .filter(|(_, r)| !r.decided.swap(true, Ordering::SeqCst))
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            if let Some(r) = st.running.remove(&id) {
                r.cancel.cancel();
                st.unstarted.push(proto::LeaseRef {
                    job_id: id,
                    lease_token: r.token,
                });
            }
        }
        *grace = Some(tokio::time::Instant::now() + self.grace);
        tracing::info!(
            running = st.running.len(),
            grace_s = self.grace.as_secs_f64(),
            "shutting down: no new jobs; waiting for running ones"
        );
    }

    /// Records a finished job; sends its result on `out` when connected.
    fn finished(&self, st: &mut State, f: Finished, out: Option<&WorkerOut>) {
        let wanted = match st.running.remove(&f.job_id) {
            // Handed back or lost: the tracker no longer expects a result.
            None => false,
            Some(run) => run.token == f.result.lease_token,
        };
        if !wanted {
            self.forget(f.outbox_id);
            return;
        }
        if let Some(id) = f.outbox_id {
            st.outbox_ids.insert(f.job_id.clone(), id);
        }
        let mut result = fit(f.result, st.peer_limit);
        result.credits = u32::from(!st.shutting_down);
        if let Some(o) = out {
            send(o, worker_message::Msg::Result(result.clone()));
        }
        st.unacked.insert(f.job_id, result);
    }

    async fn session(
        &self,
        st: &mut State,
        done_tx: &mpsc::UnboundedSender<Finished>,
        done_rx: &mut mpsc::UnboundedReceiver<Finished>,
        stop: &CancellationToken,
        grace: &mut Option<tokio::time::Instant>,
    ) -> SessionEnd {
        let (addr, channel) =
            match connect::connect_avoiding(&self.trackers, &self.avoid.current(), &self.creds)
                .await
            {
                Ok(c) => c,
                Err(e) => return SessionEnd::Lost(e.to_string(), false),
            };
        let (out, rx) = mpsc::unbounded_channel();
        send(
            &out,
            worker_message::Msg::Hello(proto::Hello {
                cluster: self.cluster.clone(),
                node_group: self.node_group.clone(),
                identity: self.identity.clone(),
                threads: self.threads,
                version: lts_core::VERSION.to_string(),
                running: st
                    .running
                    .iter()
                    .map(|(id, r)| proto::LeaseRef {
                        job_id: id.clone(),
                        lease_token: r.token.clone(),
                    })
                    .collect(),
                heartbeat_ms: self.heartbeat.as_millis() as u32,
                prefetch: self.prefetch,
                waits_for_start: true,
                labels: self.labels.clone().into_iter().collect(),
            }),
        );
        // A frozen tracker accepts the connection (its kernel does) but never answers.
        let mut stub = WorkerServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        let open = stub.work(UnboundedReceiverStream::new(rx));
        let mut inbound = match tokio::time::timeout(self.silence.max(OPEN_TIMEOUT), open).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                self.avoid.add(&addr);
                return SessionEnd::Lost(ClientError::from(s).to_string(), false);
            }
            Err(_) => {
                self.avoid.add(&addr);
                return SessionEnd::Lost(format!("tracker {addr} did not answer"), false);
            }
        };
        tracing::info!(tracker = %addr, node_group = %self.node_group, identity = %self.identity, threads = self.threads, "connected to tracker");
        self.connection.set(true);
        if !st.shutting_down {
            let window = self.threads.saturating_add(self.prefetch);
            let free = window.saturating_sub(st.running.len() as u32);
            send(&out, worker_message::Msg::Credit(proto::Credit { n: free }));
        }
        self.release_unstarted(st, &out);
        let mut renew_every = Duration::from_secs(5);
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Until the Welcome says the tracker answers pings, only the open timeout applies.
        let heartbeat = Heartbeat::new(self.silence);
        let mut tracker_pings = false;
        let mut ping = tokio::time::interval(self.heartbeat);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // With a registry, a tracker whose session ended (crashed, frozen, partitioned) leaves
        // the member list: move at once.
        let mut members = match &self.trackers {
            Trackers::Registry(r) => Some(r.members(Role::JobTracker)),
            Trackers::Static(_) => None,
        };
        let welcome_by = tokio::time::Instant::now() + self.silence.max(OPEN_TIMEOUT);
        let mut welcomed = false;
        loop {
            if st.shutting_down && st.running.is_empty() && st.unacked.is_empty() {
                return SessionEnd::Done;
            }
            let grace_at = *grace;
            tokio::select! {
                msg = inbound.next() => {
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        Some(Err(s)) => {
                            if matches!(s.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted) {
                                // A message too large for the tracker: send less from now on,
                                // down to a floor at which a bare outcome always fits.
                                st.peer_limit = (st.peer_limit / 2).max(lts_core::limits::MIN_MAX_MESSAGE_BYTES);
                                tracing::warn!(limit = st.peer_limit, error = %s.message(), "the tracker refused a message as too large; results are kept smaller");
                            }
                            return SessionEnd::Lost(ClientError::from(s).to_string(), true);
                        }
                        None => return SessionEnd::Lost("stream closed by the tracker".into(), true),
                    };
                    match msg.msg {
                        Some(tracker_message::Msg::Welcome(w)) => {
                            welcomed = true;
                            if w.max_message_bytes > 0 {
                                let theirs = usize::try_from(w.max_message_bytes).unwrap_or(usize::MAX);
                                st.peer_limit = st.peer_limit.min(theirs);
                            }
                            // Results the previous stream did not acknowledge (their threads
                            // are already free), kept under the limit just learnt.
                            for result in st.unacked.values_mut() {
                                *result = fit(std::mem::take(result), st.peer_limit);
                                let mut r = result.clone();
                                r.credits = 0;
                                send(&out, worker_message::Msg::Result(r));
                            }
                            tracker_pings = w.heartbeat_ms > 0;
                            let every = Duration::from_millis((w.lease_ms.max(1_000) / 3) as u64);
                            if every != renew_every {
                                renew_every = every;
                                renew = tokio::time::interval(every);
                                renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            }
                            self.lost(st, &w.lost_job_ids);
                        }
                        Some(tracker_message::Msg::Assign(a)) => {
                            self.start_job(st, a, done_tx, &out, &stub);
                        }
                        Some(tracker_message::Msg::RenewAck(r)) => self.lost(st, &r.lost_job_ids),
                        Some(tracker_message::Msg::Ping(p)) => {
                            send(&out, worker_message::Msg::Pong(proto::Pong { nonce: p.nonce }));
                        }
                        Some(tracker_message::Msg::Pong(p)) => heartbeat.answered(p.nonce),
                        Some(tracker_message::Msg::ResultAck(a)) => {
                            let was_pending = st.unacked.remove(&a.job_id).is_some();
                            st.overdue.remove(&a.job_id);
                            if !a.accepted && was_pending {
                                tracing::warn!(job_id = %a.job_id, reason = %a.reason, "result refused by the tracker (it no longer wants it); dropped");
                            } else if !a.accepted {
                                tracing::debug!(job_id = %a.job_id, reason = %a.reason, "a result sent again was already recorded");
                            }
                            self.forget(st.outbox_ids.remove(&a.job_id));
                        }
                        None => {}
                    }
                }
                // Until the Welcome, a result waits with the unacknowledged ones.
                Some(f) = done_rx.recv() => self.finished(st, f, welcomed.then_some(&out)),
                _ = ping.tick() => {
                    if (tracker_pings && !heartbeat.is_alive())
                        || (!welcomed && tokio::time::Instant::now() >= welcome_by)
                    {
                        self.avoid.add(&addr);
                        return SessionEnd::Lost(
                            format!(
                                "tracker {addr} silent for {} ms",
                                heartbeat.silent_for().as_millis()
                            ),
                            true,
                        );
                    }
                    send(&out, worker_message::Msg::Ping(proto::Ping { nonce: heartbeat.ping() }));
                }
                changed = async { members.as_mut()?.changed().await.ok() }, if members.is_some() => {
                    match changed {
                        None => members = None,
                        Some(()) if !self.trackers.addresses().contains(&addr) => {
                            return SessionEnd::Lost(format!("tracker {addr} left the cluster"), true);
                        }
                        Some(()) => {}
                    }
                }
                _ = renew.tick() => {
                    let overdue: Vec<&proto::JobResult> = st
                        .unacked
                        .iter()
                        .filter(|(id, _)| st.overdue.contains(*id))
                        .map(|(_, r)| r)
                        .collect();
                    if !overdue.is_empty() {
                        tracing::info!(n = overdue.len(), "results still unacknowledged; sending them again");
                    }
                    for r in overdue {
                        let mut r = r.clone();
                        r.credits = 0;
                        send(&out, worker_message::Msg::Result(r));
                    }
                    st.overdue = st.unacked.keys().cloned().collect();
                    if !st.running.is_empty() {
                        let leases = st.running.iter().map(|(id, r)| proto::LeaseRef {
                            job_id: id.clone(),
                            lease_token: r.token.clone(),
                        }).collect();
                        send(&out, worker_message::Msg::Renew(proto::Renew { leases }));
                    }
                }
                _ = stop.cancelled(), if !st.shutting_down => {
                    self.begin_shutdown(st, grace);
                    self.release_unstarted(st, &out);
                }
                _ = async { if let Some(at) = grace_at { tokio::time::sleep_until(at).await } else { std::future::pending::<()>().await } }, if grace_at.is_some() && !st.released => {
                    self.hand_back(st, &out);
                }
            }
        }
    }

    /// Removes a result from the outbox (in the background: a result kept a little longer is
    /// at worst sent once more, and refused as stale).
    fn forget(&self, outbox_id: Option<i64>) {
        if let (Some(outbox), Some(id)) = (&self.outbox, outbox_id) {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                if let Err(e) = outbox.forget(vec![id]).await {
                    tracing::warn!(error = %e, "outbox cleanup failed");
                }
            });
        }
    }

    /// Hands back the prefetched jobs a shutdown took out of line.
    fn release_unstarted(&self, st: &mut State, out: &WorkerOut) {
        if st.unstarted.is_empty() {
            return;
        }
        let leases = std::mem::take(&mut st.unstarted);
        tracing::info!(
            n = leases.len(),
            "handing back prefetched jobs that did not start"
        );
        send(out, worker_message::Msg::Release(proto::Release { leases }));
    }

    /// The grace period ran out: cancel what still runs and give it back to the tracker.
    fn hand_back(&self, st: &mut State, out: &WorkerOut) {
        st.released = true;
        if st.running.is_empty() {
            return;
        }
        let leases: Vec<proto::LeaseRef> = st
            .running
            .drain()
            .map(|(id, r)| {
                r.cancel.cancel();
                proto::LeaseRef {
                    job_id: id,
                    lease_token: r.token,
                }
            })
            .collect();
        tracing::warn!(
            n = leases.len(),
            "grace period over: cancelling running jobs and handing them back"
        );
        send(out, worker_message::Msg::Release(proto::Release { leases }));
    }

    fn lost(&self, st: &mut State, ids: &[String]) {
        for id in ids {
            if let Some(r) = st.running.remove(id) {
                tracing::warn!(job_id = %id, "lease lost (job cancelled or reassigned); stopping it");
                r.cancel.cancel();
            }
        }
    }

    fn start_job(
        &self,
        st: &mut State,
        a: proto::Assignment,
        done_tx: &mpsc::UnboundedSender<Finished>,
        out: &WorkerOut,
        stub: &WorkerServiceClient<AuthChannel>,
    ) {
        let job = convert::job_from_proto(a.job.unwrap_or_default());
        // Only a map-reduce job's own run maps; its reduce step reads its children's results.
        let mapper = (job.spec.map_reduce.is_some()
            || matches!(job.map, Some(lts_core::model::MapOf::Reduce { .. })))
        .then(|| crate::map::Mapper::new(stub.clone(), job.job_id.clone(), a.lease_token.clone()));
        if st.shutting_down {
            send(
                out,
                worker_message::Msg::Release(proto::Release {
                    leases: vec![proto::LeaseRef {
                        job_id: job.job_id,
                        lease_token: a.lease_token,
                    }],
                }),
            );
            return;
        }
        let cancel = CancellationToken::new();
        let decided = Arc::new(AtomicBool::new(false));
        st.running.insert(
            job.job_id.clone(),
            RunningJob {
                token: a.lease_token.clone(),
                cancel: cancel.clone(),
                decided: decided.clone(),
            },
        );
        let runner = self.runner.clone();
        let outbox = self.outbox.clone();
        let limits = self.report_limits;
        // A job claimed ahead of its trigger time starts then (counted on this TaskTracker's
        // own clock from the moment it arrived, so no skew between the two clocks), and its
        // timeout counts from then, as the tracker's deadline does.
        let start_in = Duration::from_millis(a.start_in_ms.clamp(0, MAX_START_IN_MS) as u64);
        let start_at = tokio::time::Instant::now() + start_in;
        let timeout = job.spec.timeout_ms.map(Duration::from_millis);
        let deadline = timeout.map(|t| start_at + t);
        let done = done_tx.clone();
        let slots = self.slots.clone();
        tokio::spawn(async move {
            if !start_in.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep_until(start_at) => {}
                    _ = cancel.cancelled() => return,
                }
            }
            // A free thread, in the order jobs came; a job lost or taken out of line by a
            // shutdown meanwhile never starts.
            let _thread = tokio::select! {
                permit = slots.acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = cancel.cancelled() => return,
            };
            if decided.swap(true, Ordering::SeqCst) || cancel.is_cancelled() {
                return;
            }
            tracing::debug!(job_id = %job.job_id, task_id = %job.spec.task_id, attempt = job.attempt, "job started");
            let started = now_ms();
            let job_id = job.job_id.clone();
            let ctx = JobContext {
                attempt: job.attempt,
                job,
                logger: BizLogger::with_limits(limits),
                cancel: cancel.clone(),
                mapper: mapper.clone(),
            };
            let logger = ctx.logger.clone();
            let run = AssertUnwindSafe(runner.run(ctx)).catch_unwind();
            tokio::pin!(run);
            let ended = match (deadline, timeout) {
                (Some(at), Some(timeout)) => tokio::select! {
                    r = &mut run => r,
                    _ = tokio::time::sleep_until(at) => {
                        cancel.cancel();
                        let stopped = tokio::time::timeout(CANCEL_GRACE, &mut run).await.is_ok();
                        let left = if stopped {
                            "the run was cancelled"
                        } else {
                            "the run did not stop within its grace and was abandoned"
                        };
                        let took = lts_core::duration::format_ms(timeout.as_millis() as u64);
                        tracing::warn!(job_id = %job_id, timeout = %took, stopped, "job timed out");
                        Ok(RunResult::timeout(format!("timed out after {took} (the job's timeout); {left}")))
                    }
                },
                _ => (&mut run).await,
            };
            let result = match ended {
                Ok(r) => r,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    RunResult::exception(format!("runner panicked: {what}"))
                }
            };
            let mut message = result.message;
            lts_core::limits::truncate(&mut message, limits.message_bytes);
            let result = proto::JobResult {
                job_id: job_id.clone(),
                lease_token: a.lease_token,
                outcome: convert::outcome_to_proto(result.outcome) as i32,
                message,
                logs: logger.take().iter().map(convert::biz_to_proto).collect(),
                started_at_ms: started,
                finished_at_ms: now_ms(),
                credits: 1,
                mapped: mapper.as_ref().map_or(0, crate::map::Mapper::mapped),
            };
            // Kept before it is sent: from here on, a crash does not run the job again.
            let outbox_id = match &outbox {
                Some(o) => match o.keep(&result).await {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::error!(job_id = %job_id, error = %e, "the outbox cannot keep a result; sending it anyway");
                        None
                    }
                },
                None => None,
            };
            let _ = done.send(Finished {
                job_id,
                result,
                outbox_id,
            });
        });
    }
}

type WorkerOut = mpsc::UnboundedSender<proto::WorkerMessage>;

/// The longest a job sent ahead of its trigger time is held before it starts (a tracker
/// claims at most 10 s ahead; anything longer is a tracker's error, and the job starts then).
const MAX_START_IN_MS: i64 = 60_000;

/// How long a run past its job's timeout gets, once cancelled, to stop before it is abandoned
/// and reported `TIMEOUT` (well within the tracker's own grace past the deadline).
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Least time a tracker gets to open the work stream and send its Welcome (it renews the
/// leases this TaskTracker re-announces first).
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// Room for the envelope of a result (the `WorkerMessage` around it).
const ENVELOPE_BYTES: usize = 64;

/// Keeps a result under `limit` bytes, encoded: past it, the run's business-log lines are
/// dropped, with one line saying so, and its message is cut — the outcome always goes through.
fn fit(mut r: proto::JobResult, limit: usize) -> proto::JobResult {
    use prost::Message;
    let size = r.encoded_len();
    if size + ENVELOPE_BYTES <= limit {
        return r;
    }
    let lines = r.logs.len();
    tracing::warn!(job_id = %r.job_id, size, limit, lines, "result over the message limit; its business-log lines are dropped");
    lts_core::limits::truncate(&mut r.message, FITTED_MESSAGE_BYTES);
    let note = lts_core::BizLine {
        time_ms: r.finished_at_ms,
        level: lts_core::LogLevel::Warn,
        message: format!(
            "this run's {lines} business-log lines were dropped: its report ({size} bytes) exceeded the tracker's {limit}-byte message limit"
        ),
    };
    r.logs = vec![convert::biz_to_proto(&note)];
    r
}

/// The longest message of a result cut to fit the message limit: far below the least limit.
const FITTED_MESSAGE_BYTES: usize = 4 << 10;

fn send(out: &WorkerOut, msg: worker_message::Msg) -> bool {
    out.send(proto::WorkerMessage { msg: Some(msg) }).is_ok()
}
