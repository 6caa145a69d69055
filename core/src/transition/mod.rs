//! The rules of a job's life, in one place: how each event — submit, claim, renew, complete,
//! release, lease loss, suspend, resume, trigger, cancel — changes a stored job.
//!
//! [`apply`] is a pure function of the job as stored, the event and `now`: no I/O, no clock, no
//! randomness (retry jitter is a deterministic function of the job and its attempt). It answers
//! with a [`Transition`] — the job as it is to be stored and which [`Field`]s changed, the log
//! lines, the feedback, where the schedule went, the job to create with it (an instance of a
//! recurring job), the work on other jobs — or with a typed [`Refusal`]. A store only
//! translates a transition into its writes (one SQL batch, one Mongo update), guarded by what
//! it read: the state in [`Write`], the lease token, a revision.
//!
//! # Where the two stores disagreed, and the rule kept here
//!
//! * **Which claims of a sequential recurring job follow the misfire policy.** SQLite tested
//!   `attempt != 1` on the row *after* the claim's increment, MongoDB `attempt != 0` on the
//!   document *before* it: one rule read off two snapshots. Stated once, on the attempt the
//!   claim starts: only the first attempt of a fire (attempt 1) can be late. A retry is due at
//!   its backoff time and keeps its fire; an attempt handed back unrun is the first again.
//! * **The job in the feedback of a run after which a recurring job goes on.** SQLite reported
//!   it still holding its lease and its old `updated_at`, MongoDB without the lease. Feedback
//!   reports the job as the run ended: no lease, the run's result as state, updated and
//!   finished at the completion.
//! * **The log line of a replaced suspended job.** MongoDB wrote "applies after the running
//!   attempt" (its fallback update matched any unfinished job); only a running job has a
//!   running attempt, as in SQLite.
//! * **The scheduled fire of a replaced queued job.** Both set it to the new trigger time even
//!   for a one-off job, while a submit gives one only to recurring jobs. A replace gives the job
//!   what a submit of the new spec would: a one-off job has none.
//! * **Release.** SQLite floored the attempt at 0, MongoDB decremented it blindly; a leased job
//!   has attempt ≥ 1, so they agree, and `saturating_sub` says so.
//!
//! # Invariants (property-tested below)
//!
//! A job is `Running` exactly when it holds a lease (owner, token and expiry together). A
//! `Suspended` job has `suspend_requested`, which is also how a running job remembers a suspend
//! until its attempt ends. A final job has `finished_at_ms`. An unfinished job always has a way
//! on: a queued one is claimed once due, a running one requeued once its lease expires, a
//! suspended one resumed. A lost lease does not give the attempt back (the run may have had
//! effects): the one way `attempt` passes `max_retries + 1`.

use thiserror::Error;

use crate::format_ms;
use crate::model::{
    BizLine, ChildTally, ConcurrencyPolicy, FeedbackItem, Job, JobSpec, JobState, LogEntry,
    LogLevel, LogType, MAP_ITEM_PARAM, MAX_MAP_BATCH, MAX_MAP_ITEM, MapOf, Outcome, Shard,
    ShardProgress,
};
use crate::schedule::{self, Disposition, LateFire, RetryPolicy};
use crate::workflow::Verdict;

/// A job as a store keeps it: the model's [`Job`] and the two fields only the store sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredJob {
    /// The job.
    pub job: Job,
    /// The token of its lease while it runs; results and renewals must show it.
    pub lease_token: Option<String>,
    /// A user suspended it: set while `Suspended`, and on a running job until its attempt ends,
    /// when whatever would queue it again (retry, next fire, hand-back, lost lease) suspends it.
    pub suspend_requested: bool,
}

impl StoredJob {
    /// A stored job with no lease and no suspend request.
    pub fn new(job: Job) -> StoredJob {
        StoredJob {
            job,
            lease_token: None,
            suspend_requested: false,
        }
    }

    fn leased_with(&self, token: &str) -> Result<(), Refusal> {
        if self.job.state != JobState::Running {
            return Err(Refusal::NotRunning(self.job.state));
        }
        if self.lease_token.as_deref() != Some(token) {
            return Err(Refusal::StaleLease);
        }
        Ok(())
    }
}

/// Something that happens to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client submits a spec with this job's node group and task id. Dedup is among
    /// unfinished jobs: against a finished job the spec is accepted as a new job.
    Submit {
        /// What was submitted (boxed: the other events are far smaller).
        spec: Box<JobSpec>,
        /// The id it gets if it is accepted as a new job.
        new_job_id: String,
    },
    /// A dispatcher claims the job, which the store found queued and due.
    Claim(Claim),
    /// The TaskTracker extends its lease.
    Renew {
        /// The lease token.
        token: String,
        /// The new expiry.
        expiry_ms: i64,
    },
    /// The TaskTracker reports the run's result.
    Complete(RunReport),
    /// The TaskTracker holding this lease token hands the job back unrun: the attempt does not
    /// count.
    Release(String),
    /// The lease is lost; the job goes back to its queue.
    LeaseLost(LeaseLoss),
    /// A user suspends the job.
    Suspend,
    /// A user resumes the job.
    Resume,
    /// A user asks for one extra run of a recurring job now, as a one-off instance with this
    /// job id; the schedule does not move.
    Trigger(String),
    /// The job is cancelled.
    Cancel(CancelCause),
    /// Every shard run of this sharded job ended, as counted here (the store's tally of its
    /// shards, none unfinished): the job's run ends — `SUCCESS` if every shard succeeded.
    ShardsEnded(ShardProgress),
    /// Every predecessor of this waiting workflow node ended, and [`crate::workflow::readiness`]
    /// judged what that means for it.
    PredecessorsEnded(Verdict),
    /// The running map-reduce job's run adds children (see [`MapBatch`]).
    Map(MapBatch),
    /// The reduce step of this map-reduce job ended so: the job ends with it.
    ReduceEnded {
        /// The reduce step's outcome (a cancelled one: `FAILED`).
        outcome: Outcome,
        /// Its message (its output).
        message: String,
    },
}

/// Items a map-reduce job's run maps, each to become a child job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapBatch {
    /// The run's lease token.
    pub token: String,
    /// The index of the first item in the run's map (the items of one run are numbered from
    /// 0 in the order it maps them).
    pub first_index: u32,
    /// The items, at most [`MAX_MAP_BATCH`], each at most [`MAX_MAP_ITEM`] bytes.
    pub items: Vec<String>,
}

/// A claim of one job by a dispatcher, for one TaskTracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The TaskTracker that will hold the lease.
    pub owner: String,
    /// The lease token.
    pub token: String,
    /// When the lease runs out unless renewed, for a job due now; a job claimed ahead of its
    /// trigger time keeps its lease that much longer.
    pub expiry_ms: i64,
    /// The id of the instance, if the claim fires one (a recurring job whose instances
    /// overlap): the caller's fresh id.
    pub instance_id: String,
    /// The latest trigger time the claim takes: `now`, or a little later for a TaskTracker
    /// that holds a job until its trigger time (a claim ahead of the fire, so that the run
    /// starts on time however long the claim itself takes). Earlier than `now` counts as now.
    pub due_by_ms: i64,
    /// How many earlier runs (unfinished instances) of this recurring job exist, counted up
    /// to [`Claim::instances_to_count`] (the store's answer; `0` when that is `0`).
    pub unfinished_instances: u32,
    /// The TaskTrackers (identities) of the node group connected now: a broadcast job runs one
    /// shard on each (and on `owner`, listed or not). Empty for other jobs.
    pub targets: Vec<String>,
}

impl Claim {
    /// How far a claim of `spec` must count [`Claim::unfinished_instances`]: for a recurring
    /// job whose runs may overlap, `1` under concurrency policy `Forbid` or `Replace`, its
    /// `max_concurrent` under `Allow`; `0` (nothing to count) otherwise.
    pub fn instances_to_count(spec: &crate::JobSpec) -> u32 {
        if !crate::schedule::fires_overlapping_instances(spec) {
            return 0;
        }
        match spec.concurrency_policy {
            ConcurrencyPolicy::Allow => spec.max_concurrent.unwrap_or(0),
            ConcurrencyPolicy::Forbid | ConcurrencyPolicy::Replace => 1,
        }
    }
}

/// A run's result as its TaskTracker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The lease token the job was handed out with.
    pub token: String,
    /// How the run went.
    pub outcome: Outcome,
    /// The runner's message.
    pub message: String,
    /// The runner's business-log lines.
    pub logs: Vec<BizLine>,
    /// The TaskTracker that ran it.
    pub node: String,
    /// How many children the run mapped (a map-reduce job's run; 0 otherwise).
    pub mapped: u32,
}

/// How a lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLoss {
    /// A sweep found it past its expiry.
    Expired,
    /// The TaskTracker holding it (this identity) left the cluster.
    OwnerGone(String),
    /// The stream it was handed out on ended, and it is still exactly as that stream last wrote
    /// it (not renewed through another stream since).
    StreamEnded {
        /// The lease token.
        token: String,
        /// The expiry that stream last wrote.
        expiry_ms: i64,
    },
}

/// Why a job is cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelCause {
    /// A user cancelled it.
    User,
    /// It is a queued instance of the cancelled recurring job with this id (see
    /// [`Cascade::CancelQueuedInstances`]); a running instance finishes its attempt.
    WithSchedule(String),
    /// It is an unfinished instance of a recurring job with concurrency policy `Replace`, and
    /// the fire at this time replaces it; a running one is cancelled too (its TaskTracker
    /// learns at its next renewal that the lease is gone and stops the run).
    Replaced(i64),
    /// It is a shard run of the sharded job with this id, which was cancelled; a running
    /// shard is cancelled too.
    WithParent(String),
    /// It is a broadcast job's shard for this TaskTracker, which left the cluster before it
    /// ran (or while it ran).
    TargetGone(String),
}

/// What an event does to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The job as it is to be stored (as it was, for [`Write::Keep`]).
    pub job: StoredJob,
    /// How the job is written.
    pub write: Write,
    /// Lines of the job's log, in order.
    pub logs: Vec<LogEntry>,
    /// Feedback to record for the submitting node group (`feedback_id` is the store's to set).
    pub feedback: Option<FeedbackItem>,
    /// For a completion: what [`schedule::disposition`] decided.
    pub disposition: Option<Disposition>,
    /// Where the job's schedule went.
    pub next_fire: NextFire,
    /// A job to create with this one: the instance of a fire or of a trigger.
    pub follow_up: Option<FollowUp>,
    /// What a claim hands to the TaskTracker.
    pub handout: Handout,
    /// Work on other jobs that goes with this transition.
    pub cascade: Option<Cascade>,
    /// The shard runs a claim of a sharded job creates, queued, with their log lines in
    /// [`Transition::logs`]. Each has an id made of its job's, fire, attempt and index, so
    /// that a claim written again after a crash creates none twice.
    pub fan_out: Vec<StoredJob>,
}

/// How a transition is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert the job as new.
    Insert,
    /// Update the job, still unfinished.
    Update {
        /// Its state as read: the write's guard.
        from: JobState,
        /// What changed; the values are in [`Transition::job`].
        fields: Vec<Field>,
    },
    /// Update the job, now final (SQLite moves it to `finished_jobs`, MongoDB sets `done`).
    Finish {
        /// Its state as read: the write's guard.
        from: JobState,
        /// What changed; the values are in [`Transition::job`].
        fields: Vec<Field>,
    },
    /// Nothing to write for this job.
    Keep,
}

/// A stored field that a transition changed. Its new value is in [`Transition::job`]: values
/// are absolute (no increments), so a write must be guarded by what the store read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// `state`.
    State,
    /// The spec, and its `priority` where a store keeps it apart.
    Spec,
    /// `attempt` and `lease_losses`, set together.
    Attempt,
    /// `trigger_time`.
    TriggerTime,
    /// `scheduled_fire` (may become none).
    ScheduledFire,
    /// `fire_count`.
    FireCount,
    /// The whole lease: owner, token, expiry and the run's deadline, set or cleared together.
    Lease,
    /// The lease expiry alone (a renewal).
    LeaseExpiry,
    /// `last_outcome` and `last_message`.
    LastResult,
    /// `suspend_requested`.
    SuspendRequested,
    /// `finished_at`.
    FinishedAt,
    /// `updated_at`.
    UpdatedAt,
    /// `map`: a map-reduce job's part ([`Job::map`]).
    Map,
}

impl Field {
    /// The fields that differ between two versions of a job, in declaration order.
    pub fn changed(a: &StoredJob, b: &StoredJob) -> Vec<Field> {
        let (x, y) = (&a.job, &b.job);
        let lease = x.lease_owner != y.lease_owner
            || a.lease_token != b.lease_token
            || x.deadline_ms != y.deadline_ms;
        [
            (Field::State, x.state != y.state),
            (Field::Spec, x.spec != y.spec),
            (
                Field::Attempt,
                (x.attempt, x.lease_losses) != (y.attempt, y.lease_losses),
            ),
            (Field::TriggerTime, x.trigger_time_ms != y.trigger_time_ms),
            (
                Field::ScheduledFire,
                x.scheduled_fire_ms != y.scheduled_fire_ms,
            ),
            (Field::FireCount, x.fire_count != y.fire_count),
            (Field::Lease, lease),
            (
                Field::LeaseExpiry,
                !lease && x.lease_expiry_ms != y.lease_expiry_ms,
            ),
            (
                Field::LastResult,
                (&x.last_outcome, &x.last_message) != (&y.last_outcome, &y.last_message),
            ),
            (
                Field::SuspendRequested,
                a.suspend_requested != b.suspend_requested,
            ),
            (Field::FinishedAt, x.finished_at_ms != y.finished_at_ms),
            (Field::UpdatedAt, x.updated_at_ms != y.updated_at_ms),
            (Field::Map, x.map != y.map),
        ]
        .into_iter()
        .filter_map(|(field, differs)| differs.then_some(field))
        .collect()
    }
}

/// Where a transition took a recurring job's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextFire {
    /// Nowhere: the event does not move it (or the job has no schedule).
    Unchanged,
    /// On to its next fire, at this instant.
    At(i64),
    /// Its schedule is exhausted: the job finished.
    Exhausted,
}

/// A job created with a transition. It is inserted only if no unfinished job has its node
/// group and task id (each fire and trigger instant runs once, even after a claim that crashed
/// half-way); otherwise none of it is written, and a handout of it is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp {
    /// The job to insert.
    pub job: StoredJob,
    /// Its log lines, written with it.
    pub logs: Vec<LogEntry>,
}

/// What a claim hands to the TaskTracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handout {
    /// Nothing (not a claim, or a claim of a fire that the misfire policy skipped).
    Nothing,
    /// The job itself, now leased.
    Job,
    /// The [`FollowUp`] instance, leased with the claim's token, if it was inserted.
    FollowUp,
}

/// Work on other jobs that goes with a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cascade {
    /// Cancel the queued and suspended instances of a cancelled recurring job (its pending
    /// retries and triggered runs): each unfinished job whose [`Job::instance_of`] is
    /// `definition`, by [`CancelCause::WithSchedule`] (which refuses a running one).
    CancelQueuedInstances {
        /// The cancelled job's id.
        definition: String,
    },
    /// Cancel every unfinished instance of `definition` but the fire's new one, `keep`, running
    /// ones included, by [`CancelCause::Replaced`]: a fire of a job with concurrency policy
    /// `Replace`.
    ReplaceInstances {
        /// The recurring job's id.
        definition: String,
        /// The instance of the fire, which stays.
        keep: String,
        /// The fire.
        fire_ms: i64,
    },
    /// Cancel every unfinished shard run of the cancelled sharded job `parent`, running ones
    /// included, by [`CancelCause::WithParent`].
    CancelShards {
        /// The sharded job's id.
        parent: String,
        /// Its run whose shards these are ([`Shard::run_of`]).
        run: String,
    },
    /// Suspend every unfinished shard (workflow node) of the suspended job `parent`'s `run`: a
    /// queued one is suspended, a running one after its attempt, a waiting one when its
    /// predecessors ended.
    SuspendShards {
        /// The sharded job's (the workflow's) id.
        parent: String,
        /// Its run.
        run: String,
    },
    /// Resume every suspended shard (workflow node) of the resumed job `parent`'s `run`.
    ResumeShards {
        /// The sharded job's (the workflow's) id.
        parent: String,
        /// Its run.
        run: String,
    },
    /// A shard run of `parent` ended: if none of the shards of its `run` is unfinished any
    /// more, the store applies [`Event::ShardsEnded`] with their tally to `parent`. A workflow
    /// node's end first gives each of its waiting `successors` (shards of the same run) the
    /// [`Event::PredecessorsEnded`] that [`crate::workflow::readiness`] judges, once all their
    /// predecessors ended.
    ShardEnded {
        /// The sharded job's (the workflow's) id.
        parent: String,
        /// The run the shard belongs to ([`Shard::run_of`]).
        run: String,
        /// For a workflow node: its successors' indexes ([`crate::workflow::NodeOf::next`]).
        successors: Vec<u32>,
    },
    /// The reduce step of the map-reduce job `parent` ended: the store applies
    /// [`Event::ReduceEnded`] to `parent`.
    ReduceEnded {
        /// The map-reduce job's id.
        parent: String,
        /// The reduce step's outcome.
        outcome: Outcome,
        /// Its message.
        message: String,
    },
}

/// The jobs a [`Cascade`] works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Related<'a> {
    /// The unfinished instances of this recurring job ([`Job::instance_of`]).
    InstancesOf(&'a str),
    /// The unfinished shards of this run of a sharded job ([`Shard::run_of`]): the ids
    /// from [`Shard::ids_from`] to [`Shard::ids_to`].
    ShardsOf(&'a str),
    /// This sharded job (`parent`), once all shards of its run (`run`) ended; first, for a
    /// workflow node, its waiting `successors` (by index in the run), once their
    /// predecessors ended.
    Parent {
        /// The sharded job's id.
        parent: &'a str,
        /// The run.
        run: &'a str,
        /// The ended node's successors.
        successors: &'a [u32],
    },
    /// This one job, by id, to which [`Cascade::event_for`] applies.
    Job(&'a str),
}

impl Cascade {
    /// The jobs the cascade works on.
    pub fn related(&self) -> Related<'_> {
        match self {
            Cascade::CancelQueuedInstances { definition }
            | Cascade::ReplaceInstances { definition, .. } => Related::InstancesOf(definition),
            Cascade::CancelShards { run, .. }
            | Cascade::SuspendShards { run, .. }
            | Cascade::ResumeShards { run, .. } => Related::ShardsOf(run),
            Cascade::ShardEnded {
                parent,
                run,
                successors,
            } => Related::Parent {
                parent,
                run,
                successors,
            },
            Cascade::ReduceEnded { parent, .. } => Related::Job(parent),
        }
    }

    /// The event the cascade applies to the unfinished instance `job_id`, or `None` for the
    /// instance it keeps (a replacing fire's own).
    pub fn event_for(&self, job_id: &str) -> Option<Event> {
        match self {
            Cascade::CancelQueuedInstances { definition } => {
                Some(Event::Cancel(CancelCause::WithSchedule(definition.clone())))
            }
            Cascade::ReplaceInstances { keep, .. } if keep == job_id => None,
            Cascade::ReplaceInstances { fire_ms, .. } => {
                Some(Event::Cancel(CancelCause::Replaced(*fire_ms)))
            }
            Cascade::CancelShards { parent, .. } => {
                Some(Event::Cancel(CancelCause::WithParent(parent.clone())))
            }
            Cascade::SuspendShards { .. } => Some(Event::Suspend),
            Cascade::ResumeShards { .. } => Some(Event::Resume),
            // The event needs the shards' tally: see [`Event::ShardsEnded`].
            Cascade::ShardEnded { .. } => None,
            Cascade::ReduceEnded {
                outcome, message, ..
            } => Some(Event::ReduceEnded {
                outcome: *outcome,
                message: message.clone(),
            }),
        }
    }
}

/// Why an event does not apply to a job. A store maps each to its answer: a duplicate, a stale
/// result, an unchanged or an already finished job.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// A submit without `replace_on_exist` while this unfinished job has the task id.
    #[error("an unfinished job {0} has this task id (submit with replace_on_exist to replace it)")]
    Duplicate(String),
    /// This job finished (in this state); only a submit, of a new job, applies.
    #[error("job {0} already finished ({1})")]
    Finished(String, JobState),
    /// A claim of a job in this state, not queued.
    #[error("the job is {0}, not queued")]
    NotQueued(JobState),
    /// A claim of a queued job before its trigger time.
    #[error("the job is not due before {}", at(.0))]
    NotDue(i64),
    /// A lease event for a job in this state, not running.
    #[error("the job is {0}, not running")]
    NotRunning(JobState),
    /// The lease token is not the job's: it was reassigned.
    #[error("lease token does not match: the job was reassigned")]
    StaleLease,
    /// The lease was renewed (until this expiry) since the ended stream wrote it.
    #[error("the lease was renewed meanwhile (until {})", at(.0))]
    LeaseRenewed(i64),
    /// The lease runs until this expiry.
    #[error("the lease runs until {}", at(.0))]
    LeaseNotExpired(i64),
    /// The lease is held by this TaskTracker, not the one that left.
    #[error("the lease is held by {0}")]
    NotOwner(String),
    /// A suspend of a suspended job (or of a running job already asked to suspend).
    #[error("the job is already suspended")]
    AlreadySuspended,
    /// A resume of a job that is not suspended.
    #[error("the job is not suspended")]
    NotSuspended,
    /// A trigger of this one-off job.
    #[error("job {0} is a one-off job: trigger runs an extra instance of a cron or repeat job")]
    NotRecurring(String),
    /// A cancel with its schedule of a running instance: it finishes its attempt.
    #[error("the instance is running: it finishes its attempt")]
    InstanceRunning,
    /// A lease event for a sharded job whose shards run: it holds no lease itself.
    #[error("the job's shards run; it holds no lease itself")]
    WaitsForShards,
    /// The end of a sharded job's shards, for a job that does not wait for shards.
    #[error("the job does not wait for shards")]
    NoShardsRunning,
    /// The end of a sharded job's shards while this many are unfinished.
    #[error("{0} of the job's shards are unfinished")]
    ShardsUnfinished(u32),
    /// The end of a node's predecessors, for a job in this state, not a waiting node.
    #[error("the job is {0}, not a workflow node waiting for its predecessors")]
    NotWaiting(JobState),
    /// A map of a job whose spec has no `map_reduce` (or of a child).
    #[error("the job is not a map-reduce job (its spec has no map_reduce)")]
    NotMapReduce,
    /// A map call of this many items.
    #[error("a map call sends at most {MAX_MAP_BATCH} items (got {0})")]
    MapBatchTooLarge(usize),
    /// A map item (at this index) past [`MAX_MAP_ITEM`].
    #[error("map item {0} is longer than {MAX_MAP_ITEM} bytes")]
    MapItemTooLarge(u32),
    /// A map past the job's budget of children.
    #[error("the run may map at most {0} children (the spec's map_reduce.max_children)")]
    TooManyChildren(u32),
    /// The tally of a map-reduce job's run while its reduce step runs (or after it ended):
    /// only the step's end ends the job.
    #[error("the job's reduce step runs: its end ends the job")]
    Reducing,
    /// The end of a reduce step, for a job that does not wait for one.
    #[error("the job does not wait for a reduce step")]
    NotReducing,
}

/// How long past a run's deadline its lease may last: the time its TaskTracker has to cancel
/// the run and report `TIMEOUT` itself before the tracker takes the run back as timed out.
pub const DEADLINE_GRACE_MS: i64 = 10_000;

mod rules;
#[cfg(test)]
mod tests;

pub use rules::{accept, apply, reduce_end};

/// An instant in a refusal's message.
fn at(ms: &i64) -> String {
    format_ms(*ms)
}
