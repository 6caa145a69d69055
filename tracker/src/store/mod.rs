//! The [`JobStore`] trait: everything the JobTracker keeps durably — queued and running jobs,
//! finished jobs (for the retention period), the job log and pending feedback.
//!
//! Every backend implements the same semantics; `tests/store_conformance.rs` runs one suite
//! against each. The rules that matter:
//!
//! * `submit` validates nothing (the service did) and is atomic per job: a job is stored with
//!   its RECEIVE log line or not at all. Dedup is by (`task_tracker_node_group`, `task_id`)
//!   among jobs that are not finished.
//! * `claim` takes the best due jobs of a node group — highest priority, then earliest trigger
//!   time, then earliest submit — and leases them to one owner in one atomic operation. A job
//!   is never leased twice.
//! * `complete` accepts a result only with the current lease token, then decides retry / next
//!   fire / finish with [`lts_core::schedule::disposition`] in the same atomic step.
//! * A job suspended while it runs is never queued again before it is resumed: whatever would
//!   re-queue it (a retry, its next fire, a hand-back, an expired lease) suspends it instead.

pub mod mongo;
pub mod sqlite;
mod work;

use async_trait::async_trait;
pub use lts_core::JobKey;
use lts_core::schedule::Disposition;
use lts_core::transition::{MapBatch, Refusal, StoredJob};
use lts_core::{
    BizLine, FeedbackItem, Job, JobSpec, JobState, LogEntry, LogType, Outcome, ScheduleKind,
};

/// Errors of a store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, SQL, connection).
    #[error("store backend error: {0}")]
    Backend(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The store was shut down.
    #[error("store is closed")]
    Closed,
}

/// Result type of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The answer to one submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Stored as a new job.
    Accepted {
        /// The new job's id.
        job_id: String,
    },
    /// An unfinished job with the same task id exists; nothing changed.
    Duplicate {
        /// The existing job's id.
        job_id: String,
    },
    /// The unfinished duplicate was replaced (`replace_on_exist`), keeping its id.
    Replaced {
        /// The existing job's id.
        job_id: String,
    },
}

/// A leased job handed to one TaskTracker.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The job (state RUNNING, attempt already counted).
    pub job: Job,
    /// Proves the lease in renewals and results.
    pub token: String,
    /// When the lease runs out unless renewed.
    pub expiry_ms: i64,
}

impl Lease {
    /// The lease of a job as its claim stored it: the expiry is the job's own, which for a job
    /// claimed ahead of its trigger time counts from its start, not from `claimed_expiry_ms`.
    pub fn of(job: Job, token: &str, claimed_expiry_ms: i64) -> Self {
        Self {
            expiry_ms: job.lease_expiry_ms.unwrap_or(claimed_expiry_ms),
            job,
            token: token.to_string(),
        }
    }
}

/// A job and the token of its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    /// The job.
    pub job_id: String,
    /// Its lease token.
    pub token: String,
}

/// A lease exactly as one TaskTracker stream last wrote it. The expiry doubles as the lease's
/// version: every renewal writes a new one, so a lease whose expiry is still the one written
/// here has not been renewed through any other stream since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    /// The job.
    pub job_id: String,
    /// Its lease token.
    pub token: String,
    /// The expiry written with the lease's last claim or renewal through this stream.
    pub expiry_ms: i64,
}

/// Ask for up to `max` due jobs of `node_group`, leased to `owner`.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The TaskTracker node group.
    pub node_group: String,
    /// The TaskTracker identity that will hold the leases.
    pub owner: String,
    /// Most jobs to lease.
    pub max: usize,
    /// Lease duration.
    pub lease_ms: i64,
    /// The current time.
    pub now_ms: i64,
    /// Also lease jobs due up to this long after `now_ms`, for a TaskTracker that holds a job
    /// until its trigger time (0: only jobs due now). The claim is then done before the fire,
    /// not after it, so that the run starts on time however long the claim takes.
    pub ahead_ms: i64,
    /// The node group's cap on running jobs, across every tracker of the cluster: the claim
    /// leases no more than the cap leaves room for. `None`: no cap.
    pub max_running: Option<u32>,
    /// The TaskTrackers (identities) of the node group connected now, for a broadcast job's
    /// claim (one shard for each).
    pub targets: Vec<String>,
    /// The labels of the TaskTracker that will hold the leases: only the jobs whose affinity
    /// they satisfy are claimed.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The route buckets dealt to `owner` among the node group's connected TaskTrackers
    /// ([`lts_core::route::Assignment`]): of the jobs with a route key, only those whose
    /// bucket is here are claimed. Empty: no routed job.
    pub route_buckets: Vec<u32>,
}

impl ClaimRequest {
    /// A claim of up to `max` jobs of `node_group` due at `now_ms`, leased to `owner` for
    /// `lease_ms`, with nothing else asked: no claim ahead, no cap, no broadcast targets,
    /// affinity labels or route buckets.
    pub fn plain(
        node_group: impl Into<String>,
        owner: impl Into<String>,
        max: usize,
        lease_ms: i64,
        now_ms: i64,
    ) -> ClaimRequest {
        ClaimRequest {
            node_group: node_group.into(),
            owner: owner.into(),
            max,
            lease_ms,
            now_ms,
            ahead_ms: 0,
            max_running: None,
            targets: Vec::new(),
            labels: Default::default(),
            route_buckets: Vec::new(),
        }
    }

    /// The latest trigger time the claim takes.
    pub fn due_by_ms(&self) -> i64 {
        self.now_ms.saturating_add(self.ahead_ms.max(0))
    }
}

/// A run's result as reported by a TaskTracker.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The job.
    pub job_id: String,
    /// The lease token the job was handed out with.
    pub token: String,
    /// How the run went.
    pub outcome: Outcome,
    /// The runner's message.
    pub message: String,
    /// The runner's business-log lines.
    pub logs: Vec<BizLine>,
    /// Which TaskTracker ran it.
    pub node: String,
    /// How many children the run mapped (a map-reduce job's run; 0 otherwise).
    pub mapped: u32,
    /// The current time.
    pub now_ms: i64,
}

/// What `complete` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompleteOutcome {
    /// Recorded.
    Accepted {
        /// The job's node group (to wake its dispatcher for retries and next fires).
        node_group: String,
        /// What happens next.
        disposition: Disposition,
        /// The submit node group when feedback was queued.
        feedback_group: Option<String>,
        /// The job's submitting JobClient node group (for watchers).
        submit_node_group: String,
        /// The node groups where the completion queued other jobs (a workflow node's
        /// successors), to wake their dispatchers.
        woken: Vec<String>,
    },
    /// Refused: the lease is no longer this token's (reassigned, cancelled or finished).
    Stale {
        /// Why.
        reason: String,
    },
}

/// A job put back in its queue by a lease sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requeued {
    /// The job.
    pub job_id: String,
    /// Its node group.
    pub node_group: String,
}

/// What `cancel` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled; the job as it is now.
    Cancelled(Job),
    /// It had already finished; nothing changed.
    AlreadyFinished(Job),
    /// No such job.
    NotFound,
}

/// What `suspend` or `resume` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Done; the job as it is now.
    Changed(Job),
    /// It already was that way; nothing changed.
    Unchanged(Job),
    /// It had already finished; nothing changed.
    AlreadyFinished(Job),
    /// No such job.
    NotFound,
}

/// What `trigger` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerOutcome {
    /// The instance that runs the extra fire, queued now (or the one already created for the
    /// same instant), with the recurring job it belongs to in [`Job::instance_of`].
    Triggered(Job),
    /// The job is a one-off job: only a cron or repeat job has instances.
    NotRecurring(Job),
    /// It had already finished; nothing changed.
    AlreadyFinished(Job),
    /// No such job.
    NotFound,
}

/// Filters for `list`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this node group.
    pub node_group: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only task ids starting with this.
    pub task_id_prefix: Option<String>,
    /// Only jobs submitted by this node group.
    pub submit_node_group: Option<String>,
    /// Only jobs with this kind of schedule.
    pub schedule_kind: Option<ScheduleKind>,
    /// Page size (1..=1000).
    pub limit: usize,
    /// Continue after this job id (the previous page's `next`).
    pub after: Option<String>,
}

/// One page of `list`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Jobs in job-id (= submit) order.
    pub jobs: Vec<Job>,
    /// Where the next page starts, if there is one.
    pub next: Option<String>,
}

/// The unfinished work of one TaskTracker node group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupBacklog {
    /// The node group.
    pub node_group: String,
    /// Queued jobs (due or not).
    pub queued: u64,
    /// Queued jobs due now.
    pub due: u64,
    /// Running jobs.
    pub running: u64,
}

/// Job counts per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Waiting (for their time, a TaskTracker, or — workflow nodes — their predecessors).
    pub queued: u64,
    /// Leased.
    pub running: u64,
    /// Suspended.
    pub suspended: u64,
    /// Finished with success (within retention).
    pub succeeded: u64,
    /// Finished with failure (within retention).
    pub failed: u64,
    /// Cancelled, or skipped workflow nodes (within retention).
    pub cancelled: u64,
    /// Feedback not yet acknowledged.
    pub pending_feedback: u64,
}

/// The answer to a submit of one job.
pub(crate) fn only_answer(out: Vec<SubmitOutcome>) -> StoreResult<SubmitOutcome> {
    out.into_iter()
        .next()
        .ok_or_else(|| StoreError::Backend("submit: no answer for the job".into()))
}

/// Durable storage of jobs, their log and feedback. See the module docs for the semantics.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Stores validated jobs; one answer per job, in order.
    async fn submit(&self, jobs: Vec<JobSpec>, now_ms: i64) -> StoreResult<Vec<SubmitOutcome>>;

    /// Stores one validated job and, when it is due now and not recurring, leases it to
    /// `claim.owner` in the same write: the hand-over of a submit to a TaskTracker that has a
    /// free thread while its node group has no queue (one durable write instead of an insert
    /// and a claim). Otherwise (not due, recurring, a duplicate, or a store that always
    /// stores first) it is an ordinary [`JobStore::submit`] and no lease comes back.
    async fn submit_leased(
        &self,
        spec: JobSpec,
        claim: ClaimRequest,
    ) -> StoreResult<(SubmitOutcome, Option<Lease>)> {
        let out = self.submit(vec![spec], claim.now_ms).await?;
        Ok((only_answer(out)?, None))
    }

    /// Leases up to `max` due jobs of a node group to one owner, best first.
    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Lease>>;

    /// Extends leases to `expiry_ms`; returns the job ids whose lease is lost.
    async fn renew(&self, leases: Vec<LeaseRef>, expiry_ms: i64) -> StoreResult<Vec<String>>;

    /// Records a run's result if the lease token still matches.
    async fn complete(&self, completion: Completion) -> StoreResult<CompleteOutcome>;

    /// Gives leased jobs back to the queue without counting the attempt.
    async fn release(&self, leases: Vec<LeaseRef>, now_ms: i64) -> StoreResult<Vec<Requeued>>;

    /// Puts every job whose lease expired before `now_ms` back in its queue.
    async fn requeue_expired(&self, now_ms: i64) -> StoreResult<Vec<Requeued>>;

    /// Puts every job leased to `owner` back in its queue (the TaskTracker is gone).
    async fn requeue_owner(&self, owner: &str, now_ms: i64) -> StoreResult<Vec<Requeued>>;

    /// Puts the jobs of these leases back in their queue, each only if its lease is still
    /// exactly as given (same token, same expiry): the stream that held them ended, and the
    /// TaskTracker has not re-announced them through another stream (which renews them).
    async fn requeue_held(&self, leases: Vec<HeldLease>, now_ms: i64)
    -> StoreResult<Vec<Requeued>>;

    /// Cancels an unfinished job.
    async fn cancel(&self, key: JobKey, now_ms: i64) -> StoreResult<CancelOutcome>;

    /// Suspends an unfinished job. A queued job stops waiting (it is neither claimed nor
    /// fired) until resumed; a running job finishes its attempt and then waits suspended
    /// instead of being queued again (for a retry or its next fire).
    async fn suspend(&self, key: JobKey, now_ms: i64) -> StoreResult<ChangeOutcome>;

    /// Resumes a suspended job. A recurring job whose fire passed meanwhile follows its misfire
    /// policy ([`lts_core::schedule::resume_trigger`]): never a burst of catch-up runs.
    async fn resume(&self, key: JobKey, now_ms: i64) -> StoreResult<ChangeOutcome>;

    /// Queues one extra run of an unfinished recurring job now, as an instance of it (its
    /// schedule does not move).
    async fn trigger(&self, key: JobKey, now_ms: i64) -> StoreResult<TriggerOutcome>;

    /// One job, unfinished or finished.
    async fn get(&self, key: JobKey) -> StoreResult<Option<Job>>;

    /// Jobs matching a filter, one page.
    async fn list(&self, filter: ListFilter) -> StoreResult<Page>;

    /// The job log of one job, oldest first, at most `limit` lines.
    async fn log(&self, job_id: &str, limit: usize) -> StoreResult<Vec<LogEntry>>;

    /// Counts per state, for one node group or all.
    async fn stats(&self, node_group: Option<&str>) -> StoreResult<Stats>;

    /// The earliest trigger time of a queued job of the node group.
    async fn next_due(&self, node_group: &str) -> StoreResult<Option<i64>>;

    /// How many queued jobs of the node group are due at `now` (ms): the work waiting for a
    /// free TaskTracker, what an autoscaler scales on.
    async fn due_count(&self, node_group: &str, now: i64) -> StoreResult<u64>;

    /// How many jobs of the node group are running (leased) now, counted up to `most`.
    async fn running_count(&self, node_group: &str, most: u32) -> StoreResult<u32>;

    /// How many claim rounds of one node group the dispatcher may have out at once. More than
    /// one pays where a claim mostly waits (for a grouped commit and its fsync) and costs
    /// little work of its own; where each claim costs the server work per statement, two
    /// smaller rounds cost more than one (MongoDB: one).
    fn claim_rounds(&self) -> usize {
        1
    }

    /// The TaskTrackers that the unfinished broadcast shards created before `before_ms` are
    /// for (at most 1,000).
    async fn broadcast_targets(&self, before_ms: i64) -> StoreResult<Vec<String>>;

    /// Cancels the unfinished broadcast shards for the TaskTracker `identity`, which left the
    /// cluster; how many.
    async fn target_gone(&self, identity: &str, now_ms: i64) -> StoreResult<usize>;

    /// The running map-reduce job `job_id` maps items ([`lts_core::transition::Event::Map`]):
    /// each becomes a child job unless it exists already (finished or not).
    async fn map(&self, job_id: &str, batch: MapBatch, now_ms: i64) -> StoreResult<MapOutcome>;

    /// The children of the map-reduce job whose reduce step `reduce_id` runs with lease
    /// `token`, in id order after `after` (none: from the first), at most `limit`.
    async fn map_results(
        &self,
        reduce_id: &str,
        token: &str,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<Result<Vec<ChildResult>, Refusal>>;

    /// Queued, due and running jobs of each node group with unfinished work, by group name,
    /// at most `limit` groups (the metrics export them).
    async fn backlog(&self, now: i64, limit: usize) -> StoreResult<Vec<GroupBacklog>>;

    /// Feedback for a submit node group with a store id after `after`, oldest first.
    async fn pending_feedback(
        &self,
        submit_node_group: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<FeedbackItem>>;

    /// Deletes acknowledged feedback of `submit_node_group`; ids of another group's feedback
    /// are ignored (a subscriber acknowledges only what it may receive).
    async fn ack_feedback(
        &self,
        submit_node_group: &str,
        feedback_ids: Vec<String>,
    ) -> StoreResult<()>;

    /// Deletes finished jobs and log lines older than `before_ms`; returns how many rows went.
    async fn enforce_retention(&self, before_ms: i64) -> StoreResult<u64>;

    /// Fencing of master-only writes (lease sweeps, membership requeues, retention): records
    /// that the master of election `epoch` acts now, unless a master of a newer epoch has
    /// acted within [`FENCE_STALE_MS`] — then returns `false` and the caller, a deposed master,
    /// must not act. (A fence older than that yields, so that a ZooKeeper ensemble rebuilt from
    /// scratch, whose epochs start again at 0, does not lock every tracker out.)
    async fn fence(&self, epoch: u64, identity: &str, now_ms: i64) -> StoreResult<bool>;

    /// Whether the backend answers: `Ok` or the reason it does not. Quick (bounded wait).
    async fn health(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Requests sent to a remote backend so far, where the backend counts them (MongoDB);
    /// `None` for an embedded store.
    fn round_trips(&self) -> Option<u64> {
        None
    }
}

/// After this long without the newest master acting, its fence yields to any master.
pub const FENCE_STALE_MS: i64 = 60_000;

/// Reads a stored log type name; unknown names are business-log lines
/// ([`LogType::parse_lenient`]).
pub(crate) fn parse_log_type(s: &str) -> LogType {
    LogType::parse_lenient(s)
}

/// What a map did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOutcome {
    /// The children are stored.
    Accepted {
        /// The job's node group (its children's): its dispatcher has work.
        node_group: String,
        /// How many children were new.
        created: u32,
    },
    /// Refused, for this reason.
    Refused(Refusal),
    /// No unfinished job has the id.
    Missing,
}

/// A child of a map-reduce job as its reduce step reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildResult {
    /// Its job id (the page token of the next page).
    pub job_id: String,
    /// Its item's index.
    pub index: u32,
    /// Its state.
    pub state: JobState,
    /// Its last message: its output when it succeeded.
    pub message: String,
    /// Its item.
    pub item: String,
}

impl ChildResult {
    /// The result of `job`, if it is a map child.
    pub fn of(job: &Job) -> Option<ChildResult> {
        let Some(lts_core::model::MapOf::Child { index }) = job.map else {
            return None;
        };
        Some(ChildResult {
            job_id: job.job_id.clone(),
            index,
            state: job.state,
            message: job.last_message.clone().unwrap_or_default(),
            item: job
                .spec
                .params
                .get(lts_core::model::MAP_ITEM_PARAM)
                .cloned()
                .unwrap_or_default(),
        })
    }
}

/// Whether `reduce` (as stored) is a running reduce step leased with `token`: the one caller
/// that may read its job's children's results.
pub fn reduce_leased(reduce: &StoredJob, token: &str) -> Result<(), Refusal> {
    if !matches!(reduce.job.map, Some(lts_core::model::MapOf::Reduce { .. })) {
        return Err(Refusal::NotReducing);
    }
    if reduce.job.state != JobState::Running {
        return Err(Refusal::NotRunning(reduce.job.state));
    }
    if reduce.lease_token.as_deref() != Some(token) {
        return Err(Refusal::StaleLease);
    }
    Ok(())
}
