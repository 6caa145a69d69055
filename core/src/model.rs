//! The job model: what a client submits ([`JobSpec`]), what the tracker stores ([`Job`]), the
//! outcome of a run ([`Outcome`]) and the job log ([`LogEntry`]).
//!
//! These are plain Rust types with serde, independent of gRPC, SQL, MongoDB and Kubernetes;
//! [`crate::convert`] maps them to and from the wire types in [`crate::proto`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// When a job runs. Exactly one variant per job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Schedule {
    /// Real-time: as soon as a TaskTracker of the node group is free.
    #[default]
    Now,
    /// Once, at the given instant (Unix epoch milliseconds).
    TriggerAt {
        /// The instant, in Unix epoch milliseconds.
        trigger_time_ms: i64,
    },
    /// On a cron expression with a seconds field, in a time zone (UTC when `None`).
    Cron {
        /// `sec min hour day-of-month month day-of-week [year]`.
        expression: String,
        /// IANA time zone name, e.g. `Europe/Berlin`.
        time_zone: Option<String>,
    },
    /// Every `interval_ms`, `count` times (-1 = forever), starting at `first_fire_ms`.
    Repeat {
        /// Milliseconds between fires.
        interval_ms: i64,
        /// Number of fires; -1 means forever.
        count: i64,
        /// First fire; `None` means at submit time.
        first_fire_ms: Option<i64>,
    },
}

impl Schedule {
    /// Whether the schedule fires more than once (cron or repeat).
    pub fn is_recurring(&self) -> bool {
        matches!(self, Schedule::Cron { .. } | Schedule::Repeat { .. })
    }

    /// Which kind of schedule this is.
    pub fn kind(&self) -> ScheduleKind {
        match self {
            Schedule::Now => ScheduleKind::Now,
            Schedule::TriggerAt { .. } => ScheduleKind::TriggerTime,
            Schedule::Cron { .. } => ScheduleKind::Cron,
            Schedule::Repeat { .. } => ScheduleKind::Repeat,
        }
    }
}

/// The kind of a [`Schedule`], without its parameters: what `lts jobs list --schedule` and
/// `ListJobsRequest.schedule_type` filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleKind {
    /// [`Schedule::Now`].
    Now,
    /// [`Schedule::TriggerAt`].
    TriggerTime,
    /// [`Schedule::Cron`].
    Cron,
    /// [`Schedule::Repeat`].
    Repeat,
}

impl ScheduleKind {
    /// Every kind, in the order above.
    pub const ALL: [ScheduleKind; 4] = [
        ScheduleKind::Now,
        ScheduleKind::TriggerTime,
        ScheduleKind::Cron,
        ScheduleKind::Repeat,
    ];

    /// Its name in tables, metrics and the API: `now`, `trigger_time`, `cron`, `repeat`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::Now => "now",
            ScheduleKind::TriggerTime => "trigger_time",
            ScheduleKind::Cron => "cron",
            ScheduleKind::Repeat => "repeat",
        }
    }

    /// The `type` tag a [`Schedule`] of this kind has in its JSON form (what a store that keeps
    /// the spec as JSON filters on).
    pub fn json_tag(self) -> &'static str {
        match self {
            ScheduleKind::Now => "now",
            ScheduleKind::TriggerTime => "trigger_at",
            ScheduleKind::Cron => "cron",
            ScheduleKind::Repeat => "repeat",
        }
    }

    /// The kind named `name` ([`ScheduleKind::as_str`]), or an error that lists the names.
    pub fn parse(name: &str) -> Result<ScheduleKind, String> {
        ScheduleKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = ScheduleKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown schedule {name:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with fires missed while the cluster was down or the job suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// One catch-up run, then back on schedule.
    #[default]
    FireOnce,
    /// No catch-up; wait for the next scheduled time.
    Skip,
}

/// What a fire of a recurring job does while an earlier run of it (an instance, retries
/// included) is unfinished — Kubernetes CronJob's `concurrencyPolicy`. Applies to the jobs
/// whose runs may overlap: cron and repeat with `rely_on_prev_cycle = false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyPolicy {
    /// The fire runs alongside the earlier runs.
    #[default]
    Allow,
    /// The fire is skipped (and the skip logged) while an earlier run is unfinished.
    Forbid,
    /// The earlier unfinished runs are cancelled, and the fire runs.
    Replace,
}

impl ConcurrencyPolicy {
    /// Its name as the CLI and the job listings write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyPolicy::Allow => "allow",
            ConcurrencyPolicy::Forbid => "forbid",
            ConcurrencyPolicy::Replace => "replace",
        }
    }
}

/// A job as a JobClient submits it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JobSpec {
    /// The user's business key, 1..=64 characters, unique per `task_tracker_node_group`.
    pub task_id: String,
    /// Which TaskTracker node group must run the job.
    pub task_tracker_node_group: String,
    /// The JobClient node group that submitted it; feedback goes there.
    pub submit_node_group: String,
    /// Higher runs first.
    pub priority: i32,
    /// Parameters for the runner (LTS `extParams`).
    pub params: BTreeMap<String, String>,
    /// Send the final result back to `submit_node_group`.
    pub need_feedback: bool,
    /// Retries after `LATER` / `EXCEPTION` outcomes.
    pub max_retries: u32,
    /// When it runs.
    pub schedule: Schedule,
    /// For cron/repeat: the next instance is created only after the current one ends.
    pub rely_on_prev_cycle: bool,
    /// A duplicate `task_id` replaces the queued job instead of being ignored.
    pub replace_on_exist: bool,
    /// Catch-up behaviour for missed fires of cron/repeat jobs.
    pub misfire_policy: MisfirePolicy,
    /// What a fire does while an earlier run is unfinished (cron/repeat jobs whose runs may
    /// overlap); stored jobs from before the field read as [`ConcurrencyPolicy::Allow`].
    #[serde(default, skip_serializing_if = "is_allow")]
    pub concurrency_policy: ConcurrencyPolicy,
    /// With concurrency policy `Allow`: at most this many runs (unfinished instances) of the
    /// recurring job at once, 1..=[`MAX_CONCURRENT`]; a fire while that many are unfinished is
    /// skipped and logged, like a `Forbid` fire. `None`: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Run as this many shard runs (1..=[`MAX_SHARDS`]), each its own job with its index and
    /// the count ([`Job::shard`]), spread over the node group's TaskTrackers and retried on its
    /// own; the job succeeds when every shard succeeded. `None`: one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// Run once on every TaskTracker of the node group connected when it fires (a cache
    /// flush, say): one shard run per TaskTracker, each for that TaskTracker only, with the
    /// accounting of [`JobSpec::shards`]. A shard whose TaskTracker left before it ran is
    /// cancelled (and the job fails).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broadcast: bool,
    /// Run only on TaskTrackers that have every one of these labels (`--label key=value` on
    /// the worker): a job no connected TaskTracker matches waits in its queue. Empty: any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub affinity: BTreeMap<String, String>,
    /// How many runs may be lost — their TaskTracker died, froze past its lease or left the
    /// cluster without a result — before the job fails: a job that kills its worker must not
    /// walk through every worker of its group. `None`: [`DEFAULT_MAX_LEASE_LOSSES`]. Counted
    /// apart from `max_retries`, which bounds the failures a run reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lease_losses: Option<u32>,
    /// How long one run may take, in milliseconds (none: no limit). A run past it is cancelled
    /// by its TaskTracker and ends `TIMEOUT` (retried while retries remain); the tracker renews
    /// its lease no further than a grace period past the deadline, so a TaskTracker that
    /// ignores it loses the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A key that makes submitting this job again harmless: a submit whose key a job already
    /// has (within the retention period, finished or not) is answered with that job instead
    /// of storing another. `JobClient` sets a fresh one on every submit it may retry, so a
    /// retry after a lost answer never stores (or runs) a job twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Run as this workflow: each claim (each fire of a cron or repeat workflow) runs every
    /// node as a job of its own, in the order its edges say, and the job ends with its last
    /// node (see [`crate::workflow`]). `None`: a plain job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<crate::workflow::Workflow>,
    /// Jobs with the same route key run on the same TaskTracker of their node group while it
    /// stays connected: the key picks a bucket ([`crate::route::bucket`]) and the group's
    /// TaskTrackers share the buckets by consistent hashing, so that when one leaves only its
    /// keys move. A key's jobs wait while their TaskTracker is connected but busy. `None`: any
    /// TaskTracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_key: Option<String>,
    /// Run as a map-reduce job: its run may map child items (`JobContext::map` in the SDK),
    /// each run as a child job of the same node group, durable and retried like any job; the
    /// job ends once its run and every child ended — with the reduce step's outcome when it
    /// has one. `None`: a run that maps is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_reduce: Option<MapReduce>,
}

/// What a map-reduce job's spec says of its children and its reduce step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapReduce {
    /// Run one more step after every child ended (the job's run with the children's results:
    /// `JobContext::map_results`), whose outcome is the job's.
    #[serde(default)]
    pub reduce: bool,
    /// The most children one run may map, 1..=[`MAX_MAP_CHILDREN`];
    /// `None`: [`DEFAULT_MAP_CHILDREN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_children: Option<u32>,
}

impl MapReduce {
    /// The most children one run may map.
    pub fn children_budget(&self) -> u32 {
        self.max_children.unwrap_or(DEFAULT_MAP_CHILDREN)
    }
}

/// How many children a map-reduce run may map unless its spec says otherwise.
pub const DEFAULT_MAP_CHILDREN: u32 = 100_000;
/// The most children a map-reduce spec may allow.
pub const MAX_MAP_CHILDREN: u32 = 1_000_000;
/// The longest item of a map, in bytes.
pub const MAX_MAP_ITEM: usize = 64 * 1024;
/// The most items one map call sends (the SDK cuts larger maps into calls of this many).
pub const MAX_MAP_BATCH: usize = 1_000;
/// The param that holds a map child's item.
pub const MAP_ITEM_PARAM: &str = "map.item";

/// A job's part in a map-reduce run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapOf {
    /// The map-reduce job itself, after its run mapped `children` children (and ended
    /// successfully): it waits for them, then for its reduce step if it has one.
    Parent {
        /// How many children the run mapped.
        children: u32,
        /// Set once the reduce step is queued: the children's tally then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reducing: Option<ChildTally>,
    },
    /// A child: the item at `index` of its job's map (the item is its param `map.item`).
    Child {
        /// The item's index.
        index: u32,
    },
    /// The reduce step of a job whose run mapped `children` children.
    Reduce {
        /// How many children there are (indexes `0..children`).
        children: u32,
    },
}

/// How a map-reduce job's children ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildTally {
    /// Ended `SUCCESS`.
    pub succeeded: u32,
    /// Ended otherwise.
    pub failed: u32,
}

/// Labels as one canonical text: `key=value` pairs in key order, joined by `,`.
pub fn labels_key(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a TaskTracker with `labels` may run a job whose affinity is the canonical `key`
/// ([`JobSpec::affinity_key`]): it has every pair.
pub fn labels_satisfy(labels: &BTreeMap<String, String>, key: &str) -> bool {
    key.split(',').all(|pair| match pair.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => false,
    })
}

/// The most labels a job's affinity or a TaskTracker may have.
pub const MAX_LABELS: usize = 16;

/// The longest label key or value.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a label key or value is not allowed, if it is not: 1..=[`MAX_LABEL_LEN`] characters of
/// `A-Z a-z 0-9 . _ - /` (no `=` or `,`, which the canonical text uses).
pub fn label_problem(text: &str) -> Option<String> {
    if text.is_empty() || text.len() > MAX_LABEL_LEN {
        return Some(format!(
            "must be 1..={MAX_LABEL_LEN} characters (got {})",
            text.len()
        ));
    }
    text.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
        .map(|c| format!("{c:?} is not allowed (letters, digits, '.', '_', '-', '/')"))
}

/// The most shards a job may ask for.
pub const MAX_SHARDS: u32 = 10_000;

/// The largest `max_concurrent` a job may ask for.
pub const MAX_CONCURRENT: u32 = 10_000;

/// How many lost runs a job survives unless its spec says otherwise.
pub const DEFAULT_MAX_LEASE_LOSSES: u32 = 3;

fn is_allow(p: &ConcurrencyPolicy) -> bool {
    *p == ConcurrencyPolicy::Allow
}

impl JobSpec {
    /// A real-time job with the given task id and node group, other fields at defaults.
    pub fn new(task_id: impl Into<String>, task_tracker_node_group: impl Into<String>) -> Self {
        JobSpec {
            task_id: task_id.into(),
            task_tracker_node_group: task_tracker_node_group.into(),
            ..Default::default()
        }
    }

    /// Sets a parameter (builder style).
    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.insert(key.into(), value.into());
        self
    }

    /// Sets the priority (builder style).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the schedule (builder style).
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// The job's affinity as one canonical text, `key=value` pairs in key order joined by
    /// `,` (how the stores keep and match it); `None` without affinity.
    pub fn affinity_key(&self) -> Option<String> {
        (!self.affinity.is_empty()).then(|| labels_key(&self.affinity))
    }

    /// The bucket of the job's route key, as the stores keep it; `None` without a key.
    pub fn route_bucket(&self) -> Option<i64> {
        self.route_key
            .as_deref()
            .map(|k| i64::from(crate::route::bucket(k)))
    }

    /// Whether a claim runs the job as shard runs ([`JobSpec::shards`], [`JobSpec::broadcast`])
    /// or as its workflow's nodes ([`JobSpec::workflow`]).
    pub fn fans_out(&self) -> bool {
        self.shards.is_some() || self.broadcast || self.workflow.is_some()
    }

    /// How many lost runs this job survives (its `max_lease_losses`, or the default).
    pub fn lease_loss_budget(&self) -> u32 {
        self.max_lease_losses.unwrap_or(DEFAULT_MAX_LEASE_LOSSES)
    }

    /// Sets `max_lease_losses` (builder style).
    pub fn max_lease_losses(mut self, max_lease_losses: u32) -> Self {
        self.max_lease_losses = Some(max_lease_losses);
        self
    }

    /// Sets `timeout_ms` (builder style).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout_ms = Some(timeout.as_millis().try_into().unwrap_or(u64::MAX));
        self
    }

    /// Sets `max_concurrent` (builder style).
    pub fn max_concurrent(mut self, max_concurrent: u32) -> Self {
        self.max_concurrent = Some(max_concurrent);
        self
    }

    /// Sets `concurrency_policy` (builder style).
    pub fn concurrency_policy(mut self, policy: ConcurrencyPolicy) -> Self {
        self.concurrency_policy = policy;
        self
    }

    /// Sets `max_retries` (builder style).
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Asks for feedback to `submit_node_group` (builder style).
    pub fn feedback_to(mut self, submit_node_group: impl Into<String>) -> Self {
        self.submit_node_group = submit_node_group.into();
        self.need_feedback = true;
        self
    }

    /// Sets `replace_on_exist` (builder style).
    pub fn replace_on_exist(mut self, replace: bool) -> Self {
        self.replace_on_exist = replace;
        self
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Stored, waiting for its trigger time or a free TaskTracker.
    Queued,
    /// Leased to a TaskTracker.
    Running,
    /// A scheduled job suspended by a user.
    Suspended,
    /// Finished with `SUCCESS`.
    Succeeded,
    /// Finished with `FAILED`, or retries exhausted.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// A workflow node waiting for its predecessors to end.
    Waiting,
    /// A workflow node that did not run: an edge into it asked for an end its predecessor did
    /// not have.
    Skipped,
}

impl JobState {
    /// All states, in display order.
    pub const ALL: [JobState; 8] = [
        JobState::Waiting,
        JobState::Queued,
        JobState::Running,
        JobState::Suspended,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Skipped,
    ];

    /// Whether the job is finished (no further runs).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Skipped
        )
    }

    /// Stable small integer used by the stores.
    pub fn code(self) -> i64 {
        match self {
            JobState::Queued => 1,
            JobState::Running => 2,
            JobState::Suspended => 3,
            JobState::Succeeded => 4,
            JobState::Failed => 5,
            JobState::Cancelled => 6,
            JobState::Waiting => 7,
            JobState::Skipped => 8,
        }
    }

    /// Inverse of [`JobState::code`].
    pub fn from_code(code: i64) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Upper-case name, as in the protocol without its prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::Running => "RUNNING",
            JobState::Suspended => "SUSPENDED",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
            JobState::Waiting => "WAITING",
            JobState::Skipped => "SKIPPED",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown state {s:?}; expected one of waiting, queued, running, suspended, succeeded, failed, cancelled, skipped")
            })
    }
}

/// The outcome of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// Done.
    Success,
    /// Final failure, never retried.
    Failed,
    /// Run again later; retried while retries remain.
    Later,
    /// The runner failed unexpectedly; retried while retries remain.
    Exception,
    /// The run passed the job's timeout and was cancelled; retried while retries remain.
    Timeout,
}

impl Outcome {
    /// Stable small integer used by the stores.
    pub fn code(self) -> i64 {
        match self {
            Outcome::Success => 1,
            Outcome::Failed => 2,
            Outcome::Later => 3,
            Outcome::Exception => 4,
            Outcome::Timeout => 5,
        }
    }

    /// Inverse of [`Outcome::code`].
    pub fn from_code(code: i64) -> Option<Outcome> {
        [
            Outcome::Success,
            Outcome::Failed,
            Outcome::Later,
            Outcome::Exception,
            Outcome::Timeout,
        ]
        .into_iter()
        .find(|o| o.code() == code)
    }

    /// Upper-case name as LTS spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "SUCCESS",
            Outcome::Failed => "FAILED",
            Outcome::Later => "LATER",
            Outcome::Exception => "EXCEPTION",
            Outcome::Timeout => "TIMEOUT",
        }
    }

    /// Whether this outcome may be retried (`LATER`, `EXCEPTION`, `TIMEOUT`).
    pub fn is_retryable(self) -> bool {
        matches!(self, Outcome::Later | Outcome::Exception | Outcome::Timeout)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "SUCCESS" => Ok(Outcome::Success),
            "FAILED" => Ok(Outcome::Failed),
            "LATER" => Ok(Outcome::Later),
            "EXCEPTION" => Ok(Outcome::Exception),
            "TIMEOUT" => Ok(Outcome::Timeout),
            _ => Err(format!(
                "unknown outcome {s:?}; expected SUCCESS, FAILED, LATER or EXCEPTION"
            )),
        }
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Assigned by the tracker on accept; stable across retries and schedule fires.
    pub job_id: String,
    /// What was submitted.
    pub spec: JobSpec,
    /// Where it is in its life.
    pub state: JobState,
    /// Runs started so far for the current instance (1 on the first run).
    pub attempt: u32,
    /// When it is due next (Unix epoch ms).
    pub trigger_time_ms: i64,
    /// When it was accepted.
    pub created_at_ms: i64,
    /// Last change.
    pub updated_at_ms: i64,
    /// TaskTracker identity holding the lease while running.
    pub lease_owner: Option<String>,
    /// When the lease runs out unless renewed.
    pub lease_expiry_ms: Option<i64>,
    /// Outcome of the last run.
    pub last_outcome: Option<Outcome>,
    /// Message of the last run.
    pub last_message: Option<String>,
    /// When it reached a final state.
    pub finished_at_ms: Option<i64>,
    /// For scheduled jobs: the fire time the current instance belongs to.
    pub scheduled_fire_ms: Option<i64>,
    /// For scheduled jobs: instances fired so far.
    pub fire_count: u64,
    /// For one fire (or trigger) of a recurring job run as its own job: the `job_id` of the
    /// recurring job it belongs to. Set when the tracker creates the instance and never
    /// changed; `None` for every job a client submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_of: Option<String>,
    /// Runs of the current fire that were lost (see [`JobSpec::max_lease_losses`]); these
    /// count in `attempt` too, but not against `max_retries`.
    #[serde(default)]
    pub lease_losses: u32,
    /// While running with a timeout: when the run must have ended (the lease's start plus
    /// the spec's `timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    /// For one shard run of a sharded job: which shard of which job. Set when the tracker
    /// creates the shard and never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// For a sharded job, as a read (`get`) reports it: its shard runs of the current run by
    /// state. Not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_progress: Option<ShardProgress>,
    /// For a node of a workflow (whose run and index are in [`Job::shard`]): its name and its
    /// place in the graph. Set when the tracker creates the node's job and never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<crate::workflow::NodeOf>,
    /// For a map-reduce job whose run mapped, its children and its reduce step: their part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapOf>,
}

/// Which shard run of which sharded job a job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// The `job_id` of the sharded job.
    pub of: String,
    /// This shard's index, `0..count`.
    pub index: u32,
    /// How many shards the job runs as.
    pub count: u32,
    /// For a shard of a broadcast job: the TaskTracker (identity) it runs on, and no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
}

impl Shard {
    /// The prefix of the ids of every shard of one run of the sharded job `parent` (its fire
    /// and attempt): a shard's id is the prefix and its index, so the shards of a run are the
    /// ids in [`Shard::ids_from`]`..`[`Shard::ids_to`], and a claim written again after a
    /// crash creates none twice.
    ///
    /// The children of a map-reduce job are the shards of a run without its attempt,
    /// `<job>-<fire>-m-`: a retried run that maps its items again makes no child twice.
    pub fn run_of(parent: &Job) -> String {
        if parent.spec.map_reduce.is_some() {
            return format!("{}-{}-m-", parent.job_id, parent.fire_count);
        }
        format!(
            "{}-{}-{}-",
            parent.job_id, parent.fire_count, parent.attempt
        )
    }

    /// The id of shard `index` of the run `run` ([`Shard::run_of`]).
    pub fn id(run: &str, index: u32) -> String {
        format!("{run}{index}")
    }

    /// The run a shard's id belongs to.
    pub fn run_of_id(shard_id: &str) -> &str {
        shard_id.rfind('-').map_or(shard_id, |i| &shard_id[..=i])
    }

    /// The least id of a shard of `run`.
    pub fn ids_from(run: &str) -> String {
        run.to_string()
    }

    /// The least id past every shard of `run` (its last character, `-`, made `.`).
    pub fn ids_to(run: &str) -> String {
        let mut to = run.strip_suffix('-').unwrap_or(run).to_string();
        to.push('.');
        to
    }
}

/// The shard runs of a sharded job's current run, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardProgress {
    /// Ended `SUCCESS`.
    pub succeeded: u32,
    /// Ended otherwise (failed past their retries, cancelled).
    pub failed: u32,
    /// Running now.
    pub running: u32,
    /// Waiting for their time, a retry, a free TaskTracker — or, a workflow's nodes, for
    /// their predecessors.
    pub pending: u32,
    /// Workflow nodes skipped (an edge into them asked for an end their predecessor did not
    /// have); not counted in the others.
    #[serde(default)]
    pub skipped: u32,
    /// Of `failed`: workflow nodes whose failure a `failure` or `always` edge out of them
    /// handles, which do not fail the workflow.
    #[serde(default)]
    pub handled: u32,
}

impl ShardProgress {
    /// Shards not yet ended.
    pub fn unfinished(&self) -> u32 {
        self.running + self.pending
    }
}

/// LTS job-log types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LogType {
    /// Accepted from a client.
    Receive,
    /// Handed to a TaskTracker.
    Sent,
    /// A run finished (any outcome).
    Finished,
    /// Put back in the queue for another try.
    Resend,
    /// Recovered from a dead TaskTracker or an expired lease.
    FixedDead,
    /// A line the runner logged.
    Biz,
    /// Replaced or changed by a client.
    Update,
    /// Cancelled / deleted.
    Del,
    /// Suspended.
    Suspend,
    /// Resumed.
    Resume,
}

impl LogType {
    /// Every log type, in the order above.
    pub const ALL: [LogType; 10] = [
        LogType::Receive,
        LogType::Sent,
        LogType::Finished,
        LogType::Resend,
        LogType::FixedDead,
        LogType::Biz,
        LogType::Update,
        LogType::Del,
        LogType::Suspend,
        LogType::Resume,
    ];

    /// The type named `s` ([`LogType::as_str`], exactly), or [`LogType::Biz`] for any other
    /// text: how a stored or received log line whose type this version does not know is read.
    pub fn parse_lenient(s: &str) -> LogType {
        s.parse().unwrap_or(LogType::Biz)
    }

    /// Upper-case name as LTS spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogType::Receive => "RECEIVE",
            LogType::Sent => "SENT",
            LogType::Finished => "FINISHED",
            LogType::Resend => "RESEND",
            LogType::FixedDead => "FIXED_DEAD",
            LogType::Biz => "BIZ",
            LogType::Update => "UPDATE",
            LogType::Del => "DEL",
            LogType::Suspend => "SUSPEND",
            LogType::Resume => "RESUME",
        }
    }
}

impl fmt::Display for LogType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogType {
    type Err = String;
    /// The type named `s` exactly as [`LogType::as_str`] spells it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LogType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = LogType::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "unknown log type {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Severity of a business-log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LogLevel {
    /// Informational.
    #[default]
    Info,
    /// Something odd.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// Upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
        }
    }

    /// Parses `INFO`/`WARN`/`ERROR` (any case); anything else is `Info`.
    pub fn parse_lenient(s: &str) -> LogLevel {
        match s.to_ascii_uppercase().as_str() {
            "WARN" | "WARNING" => LogLevel::Warn,
            "ERROR" => LogLevel::Error,
            _ => LogLevel::Info,
        }
    }
}

/// A business-log line written by a runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BizLine {
    /// When it was logged.
    pub time_ms: i64,
    /// Severity.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

/// A line of the job log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When.
    pub time_ms: i64,
    /// LTS log type.
    pub log_type: LogType,
    /// Severity.
    pub level: LogLevel,
    /// The text.
    pub message: String,
    /// Attempt it belongs to.
    pub attempt: u32,
    /// The job.
    pub job_id: String,
    /// The job's task id.
    pub task_id: String,
    /// The job's node group.
    pub task_tracker_node_group: String,
    /// Which node wrote it.
    pub node: String,
}

/// A final (or per-instance) result waiting for the submitting JobClient group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackItem {
    /// Store-assigned id used to acknowledge it.
    pub feedback_id: String,
    /// The job as it was when the run finished.
    pub job: Job,
    /// The run's outcome.
    pub outcome: Outcome,
    /// The run's message.
    pub message: String,
    /// When the run finished.
    pub finished_at_ms: i64,
}

/// How a client names one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKey {
    /// By tracker-assigned id.
    Id(String),
    /// By (node group, task id): the unfinished job, else the latest finished one.
    Task {
        /// The TaskTracker node group.
        node_group: String,
        /// The task id.
        task_id: String,
    },
}

impl JobKey {
    /// The key of the job a spec describes: its node group and task id.
    pub fn of_spec(spec: &JobSpec) -> JobKey {
        JobKey::Task {
            node_group: spec.task_tracker_node_group.clone(),
            task_id: spec.task_id.clone(),
        }
    }
}

impl Job {
    /// A queued job `job_id` for `spec`, every other field at its empty value (builders and
    /// tests start here and set what they need).
    pub fn new(job_id: impl Into<String>, spec: JobSpec) -> Job {
        Job {
            job_id: job_id.into(),
            spec,
            state: JobState::Queued,
            attempt: 0,
            trigger_time_ms: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            lease_owner: None,
            lease_expiry_ms: None,
            last_outcome: None,
            last_message: None,
            finished_at_ms: None,
            scheduled_fire_ms: None,
            fire_count: 0,
            instance_of: None,
            lease_losses: 0,
            deadline_ms: None,
            shard: None,
            shard_progress: None,
            node: None,
            map: None,
        }
    }

    /// Whether this job is sharded and its shards run now: it holds no lease itself, and it
    /// ends when the last of its shards ended.
    pub fn waits_for_shards(&self) -> bool {
        self.state == JobState::Running
            && self.shard.is_none()
            && (self.spec.fans_out() || matches!(self.map, Some(MapOf::Parent { .. })))
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobKey::Id(id) => write!(f, "job_id {id}"),
            JobKey::Task {
                node_group,
                task_id,
            } => write!(f, "task_id {task_id:?} in node group {node_group:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_kind_names_the_json_tag_of_its_schedule() {
        let schedules = [
            Schedule::Now,
            Schedule::TriggerAt { trigger_time_ms: 1 },
            Schedule::Cron {
                expression: "* * * * * *".into(),
                time_zone: None,
            },
            Schedule::Repeat {
                interval_ms: 1,
                count: 1,
                first_fire_ms: None,
            },
        ];
        for s in schedules {
            let json = serde_json::to_value(&s).unwrap();
            assert_eq!(json["type"], s.kind().json_tag(), "{s:?}");
            assert_eq!(ScheduleKind::parse(s.kind().as_str()), Ok(s.kind()));
        }
        let err = ScheduleKind::parse("hourly").unwrap_err();
        assert!(
            err.contains("\"hourly\"") && err.contains("trigger_time"),
            "{err}"
        );
    }

    #[test]
    fn a_log_type_round_trips_through_its_name() {
        for t in LogType::ALL {
            assert_eq!(t.as_str().parse::<LogType>(), Ok(t));
            assert_eq!(LogType::parse_lenient(t.as_str()), t);
            assert_eq!(t.to_string(), t.as_str());
            // The JSON form is the same name.
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        for unknown in ["", "receive", "FIXED-DEAD", "NEW_TYPE"] {
            let err = unknown.parse::<LogType>().unwrap_err();
            assert!(
                err.contains(&format!("{unknown:?}")) && err.contains("FIXED_DEAD"),
                "{err}"
            );
            assert_eq!(LogType::parse_lenient(unknown), LogType::Biz, "{unknown:?}");
        }
    }
}
