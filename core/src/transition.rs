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
    BizLine, FeedbackItem, Job, JobSpec, JobState, LogEntry, LogLevel, LogType, Outcome,
};
use crate::schedule::{self, Disposition, LateFire, RetryPolicy};

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
        /// What was submitted.
        spec: JobSpec,
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
}

/// A claim of one job by a dispatcher, for one TaskTracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The TaskTracker that will hold the lease.
    pub owner: String,
    /// The lease token.
    pub token: String,
    /// When the lease runs out unless renewed.
    pub expiry_ms: i64,
    /// The id of the instance, if the claim fires one (a recurring job whose instances
    /// overlap): the caller's fresh id.
    pub instance_id: String,
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
    /// `attempt`.
    Attempt,
    /// `trigger_time`.
    TriggerTime,
    /// `scheduled_fire` (may become none).
    ScheduledFire,
    /// `fire_count`.
    FireCount,
    /// The whole lease: owner, token and expiry, set or cleared together.
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
}

impl Field {
    /// The fields that differ between two versions of a job, in declaration order.
    pub fn changed(a: &StoredJob, b: &StoredJob) -> Vec<Field> {
        let (x, y) = (&a.job, &b.job);
        let lease = x.lease_owner != y.lease_owner || a.lease_token != b.lease_token;
        [
            (Field::State, x.state != y.state),
            (Field::Spec, x.spec != y.spec),
            (Field::Attempt, x.attempt != y.attempt),
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
}

fn at(ms: &i64) -> String {
    format_ms(*ms)
}

/// The transition of a submit that found no unfinished job with the spec's task id: a new
/// queued job `job_id`, due at its first trigger time.
pub fn accept(spec: JobSpec, job_id: String, now_ms: i64) -> Transition {
    let trigger = schedule::first_trigger(&spec, now_ms).unwrap_or(now_ms);
    let mut job = Job::new(job_id, spec);
    job.trigger_time_ms = trigger;
    job.scheduled_fire_ms = job.spec.schedule.is_recurring().then_some(trigger);
    job.fire_count = 1;
    job.created_at_ms = now_ms;
    job.updated_at_ms = now_ms;
    let line = log(&job, now_ms, LogType::Receive, "accepted");
    keep(StoredJob::new(job)).written(Write::Insert, vec![line])
}

/// Applies `event` at `now_ms` to the job as stored; retries are spaced by `retry`.
pub fn apply(
    stored: &StoredJob,
    event: Event,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if job.state.is_final() {
        return match event {
            Event::Submit { spec, new_job_id } => Ok(accept(spec, new_job_id, now_ms)),
            _ => Err(Refusal::Finished(job.job_id.clone(), job.state)),
        };
    }
    match event {
        Event::Submit { spec, .. } => replace(stored, spec, now_ms),
        Event::Claim(claim) => claim_job(stored, &claim, now_ms),
        Event::Renew { token, expiry_ms } => {
            stored.leased_with(&token)?;
            let mut after = stored.clone();
            after.job.lease_expiry_ms = Some(expiry_ms);
            Ok(changed(stored, after, Vec::new()))
        }
        Event::Complete(report) => complete(stored, report, now_ms, retry),
        Event::Release(token) => {
            stored.leased_with(&token)?;
            let mut after = requeued(stored, now_ms);
            after.job.attempt = after.job.attempt.saturating_sub(1);
            let note = "handed back by its TaskTracker";
            let line = log(&after.job, now_ms, LogType::Resend, note);
            Ok(changed(stored, after, vec![line]))
        }
        Event::LeaseLost(loss) => lease_lost(stored, loss, now_ms),
        Event::Suspend => suspend(stored, now_ms),
        Event::Resume => resume(stored, now_ms),
        Event::Trigger(instance_id) => {
            if !job.spec.schedule.is_recurring() {
                return Err(Refusal::NotRecurring(job.job_id.clone()));
            }
            let mut instance = accept(
                schedule::instance_spec(&job.spec, now_ms),
                instance_id,
                now_ms,
            );
            instance.job.job.instance_of = Some(job.job_id.clone());
            let mut t = keep(stored.clone());
            t.follow_up = Some(FollowUp {
                job: instance.job,
                logs: instance.logs,
            });
            Ok(t)
        }
        Event::Cancel(cause) => cancel(stored, cause, now_ms),
    }
}

/// A transition that writes nothing.
fn keep(job: StoredJob) -> Transition {
    Transition {
        job,
        write: Write::Keep,
        logs: Vec::new(),
        feedback: None,
        disposition: None,
        next_fire: NextFire::Unchanged,
        follow_up: None,
        handout: Handout::Nothing,
        cascade: None,
    }
}

/// The transition from `before` to `after`. Its fields are found by comparing the two, so what
/// a store writes cannot drift from what the rule decided.
fn changed(before: &StoredJob, after: StoredJob, logs: Vec<LogEntry>) -> Transition {
    let (from, fields) = (before.job.state, Field::changed(before, &after));
    let write = if after.job.state.is_final() {
        Write::Finish { from, fields }
    } else {
        Write::Update { from, fields }
    };
    keep(after).written(write, logs)
}

impl Transition {
    fn written(self, write: Write, logs: Vec<LogEntry>) -> Transition {
        Transition {
            write,
            logs,
            ..self
        }
    }
}

/// A line of `job`'s log, as most are: informational, of its current attempt, by the tracker.
fn log(job: &Job, time_ms: i64, log_type: LogType, message: impl Into<String>) -> LogEntry {
    LogEntry {
        time_ms,
        log_type,
        level: LogLevel::Info,
        message: message.into(),
        attempt: job.attempt,
        job_id: job.job_id.clone(),
        task_id: job.spec.task_id.clone(),
        task_tracker_node_group: job.spec.task_tracker_node_group.clone(),
        node: String::new(),
    }
}

// Private to this module: the exceptions to `log`'s defaults.
impl LogEntry {
    fn with_level(self, level: LogLevel) -> LogEntry {
        LogEntry { level, ..self }
    }

    fn by_node(self, node: &str) -> LogEntry {
        LogEntry {
            node: node.to_string(),
            ..self
        }
    }
}

/// The job leased by `claim`: running, one more attempt.
fn lease(s: &mut StoredJob, claim: &Claim, now_ms: i64) {
    s.job.state = JobState::Running;
    s.job.attempt += 1;
    s.job.lease_owner = Some(claim.owner.clone());
    s.job.lease_expiry_ms = Some(claim.expiry_ms);
    s.job.updated_at_ms = now_ms;
    s.lease_token = Some(claim.token.clone());
}

fn sent(job: &Job, claim: &Claim, now_ms: i64) -> LogEntry {
    log(job, now_ms, LogType::Sent, &claim.owner).by_node(&claim.owner)
}

/// The job without its lease, back in its queue — or suspended, if a user asked for that while
/// it ran (the one place that rule lives).
fn requeued(stored: &StoredJob, now_ms: i64) -> StoredJob {
    let mut after = stored.clone();
    after.job.state = if stored.suspend_requested {
        JobState::Suspended
    } else {
        JobState::Queued
    };
    after.job.lease_owner = None;
    after.job.lease_expiry_ms = None;
    after.lease_token = None;
    after.job.updated_at_ms = now_ms;
    after
}

fn replace(stored: &StoredJob, spec: JobSpec, now_ms: i64) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if !spec.replace_on_exist {
        return Err(Refusal::Duplicate(job.job_id.clone()));
    }
    let mut after = stored.clone();
    // A queued job takes the new trigger time, as a submit of the spec would; a running or
    // suspended one keeps its own, and the new spec applies to what comes after.
    if job.state == JobState::Queued {
        let trigger = schedule::first_trigger(&spec, now_ms).unwrap_or(now_ms);
        after.job.trigger_time_ms = trigger;
        after.job.scheduled_fire_ms = spec.schedule.is_recurring().then_some(trigger);
    }
    after.job.spec = spec;
    after.job.updated_at_ms = now_ms;
    let note = if job.state == JobState::Running {
        "replaced by a new submit; applies after the running attempt"
    } else {
        "replaced by a new submit"
    };
    Ok(changed(
        stored,
        after,
        vec![log(job, now_ms, LogType::Update, note)],
    ))
}

fn claim_job(stored: &StoredJob, claim: &Claim, now_ms: i64) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if job.state != JobState::Queued {
        return Err(Refusal::NotQueued(job.state));
    }
    if job.trigger_time_ms > now_ms {
        return Err(Refusal::NotDue(job.trigger_time_ms));
    }
    let fire = job.scheduled_fire_ms.unwrap_or(job.trigger_time_ms);
    let fired = job.fire_count.max(1);
    if schedule::fires_overlapping_instances(&job.spec) {
        return Ok(fire_instance(stored, claim, fire, fired, now_ms));
    }
    let mut after = stored.clone();
    lease(&mut after, claim, now_ms);
    let mut logs = Vec::new();
    // Only the first attempt of a fire can be late (see the module docs).
    if after.job.attempt == 1 {
        match schedule::late_fire(&job.spec, job.trigger_time_ms, fire, fired, now_ms) {
            LateFire::OnTime => {}
            LateFire::CatchUp => {
                // It runs as the fire of now, so its completion does not queue another catch-up.
                after.job.scheduled_fire_ms = Some(now_ms);
                let note = format!("missed fire {}: one catch-up run now", format_ms(fire));
                logs.push(log(job, now_ms, LogType::Update, note));
            }
            LateFire::Skip { next_ms } => return Ok(advance(stored, fire, next_ms, false, now_ms)),
        }
    }
    logs.push(sent(&after.job, claim, now_ms));
    let mut t = changed(stored, after, logs);
    t.handout = Handout::Job;
    Ok(t)
}

/// A claimed recurring job whose instances overlap is not run itself: the instance of its due
/// fire is created and leased in its place, and the job moves on to its next fire at once.
fn fire_instance(stored: &StoredJob, claim: &Claim, fire: i64, fired: u64, now: i64) -> Transition {
    let def = &stored.job;
    let step = schedule::overlap_step(&def.spec, fire, fired, now);
    let mut t = advance(stored, fire, step.next_ms, step.run, now);
    if step.run {
        let spec = schedule::instance_spec(&def.spec, step.instance_fire_ms);
        let mut instance = Job::new(claim.instance_id.clone(), spec);
        instance.trigger_time_ms = def.trigger_time_ms;
        instance.created_at_ms = now;
        instance.fire_count = fired;
        instance.scheduled_fire_ms = Some(step.instance_fire_ms);
        instance.instance_of = Some(def.job_id.clone());
        let note = format!("fire {} of {}", format_ms(fire), def.job_id);
        let receive = log(&instance, now, LogType::Receive, note);
        let mut instance = StoredJob::new(instance);
        lease(&mut instance, claim, now);
        let logs = vec![receive, sent(&instance.job, claim, now)];
        (t.follow_up, t.handout) = (
            Some(FollowUp {
                job: instance,
                logs,
            }),
            Handout::FollowUp,
        );
    }
    t
}

/// Moves a queued recurring job on to its fire `next` (one more fire counted), or finishes it
/// when its schedule is exhausted (`None`), and says whether a claim `fired` or skipped `fire`
/// — except for a plain fire the schedule goes on from: the instance's own log tells of it,
/// and a cron firing every second would fill the job's log otherwise.
fn advance(stored: &StoredJob, fire: i64, next: Option<i64>, fired: bool, now: i64) -> Transition {
    let mut after = stored.clone();
    after.job.attempt = 0;
    after.job.updated_at_ms = now;
    let what = if fired {
        "fired"
    } else {
        "skipped the missed fire"
    };
    let (note, next_fire) = match next {
        Some(at_ms) => {
            after.job.trigger_time_ms = at_ms;
            after.job.scheduled_fire_ms = Some(at_ms);
            after.job.fire_count += 1;
            let note = format!("{what} {}; next fire {}", format_ms(fire), format_ms(at_ms));
            ((!fired).then_some(note), NextFire::At(at_ms))
        }
        None => {
            after.job.state = JobState::Succeeded;
            after.job.finished_at_ms = Some(now);
            after.job.last_message = Some("schedule complete".into());
            let note = format!("{what} {}, the last of its schedule", format_ms(fire));
            (Some(note), NextFire::Exhausted)
        }
    };
    // Attempt 0, as the job's before a first claim: a schedule line is of no run.
    let logs = note.map(|n| log(&stored.job, now, LogType::Update, n));
    let mut t = changed(stored, after, logs.into_iter().collect());
    t.next_fire = next_fire;
    t
}

fn complete(
    stored: &StoredJob,
    report: RunReport,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Result<Transition, Refusal> {
    stored.leased_with(&report.token)?;
    let (job, attempt, outcome) = (&stored.job, stored.job.attempt, report.outcome);
    let node = report.node.as_str();
    let mut logs: Vec<LogEntry> = report
        .logs
        .iter()
        .map(|l| log(job, l.time_ms, LogType::Biz, &l.message).with_level(l.level))
        .map(|l| l.by_node(node))
        .collect();
    let summary = match report.message.as_str() {
        "" => outcome.to_string(),
        message => format!("{outcome}: {message}"),
    };
    let level = if outcome == Outcome::Success {
        LogLevel::Info
    } else {
        LogLevel::Warn
    };
    logs.push(
        log(job, now_ms, LogType::Finished, summary)
            .with_level(level)
            .by_node(node),
    );

    // The backoff without its random jitter, then a deterministic one.
    let exact = RetryPolicy {
        jitter: false,
        ..*retry
    };
    let scheduled = job.scheduled_fire_ms.unwrap_or(job.created_at_ms);
    let mut disposition = schedule::disposition(
        &job.spec,
        attempt,
        scheduled,
        job.fire_count,
        outcome,
        now_ms,
        &exact,
    );
    if let Disposition::Retry { at_ms } = &mut disposition
        && retry.jitter
    {
        *at_ms += retry_jitter_ms(*at_ms - now_ms, &job.job_id, attempt);
    }

    // The job as the run ended: what feedback reports, and where the next state starts.
    let mut ended = requeued(stored, now_ms);
    ended.job.last_outcome = Some(outcome);
    ended.job.last_message = Some(report.message.clone());
    let mut after = ended.clone();
    let (reported, next_fire) = match disposition {
        Disposition::Finish(state) => {
            after.job.state = state;
            after.job.finished_at_ms = Some(now_ms);
            let next = match job.spec.schedule.is_recurring() {
                true => NextFire::Exhausted,
                false => NextFire::Unchanged,
            };
            (Some(state), next)
        }
        Disposition::Retry { at_ms } => {
            after.job.trigger_time_ms = at_ms;
            let max = job.spec.max_retries;
            let note = format!("retry {attempt} of {max} at {}", format_ms(at_ms));
            logs.push(log(job, now_ms, LogType::Resend, note));
            (None, NextFire::Unchanged)
        }
        Disposition::NextFire { at_ms, instance } => {
            after.job.trigger_time_ms = at_ms;
            after.job.scheduled_fire_ms = Some(at_ms);
            after.job.fire_count += 1;
            after.job.attempt = 0;
            (Some(instance), NextFire::At(at_ms))
        }
    };
    let feedback = reported.filter(|_| job.spec.need_feedback).map(|state| {
        let mut snapshot = ended.job;
        snapshot.state = state;
        snapshot.finished_at_ms = Some(now_ms);
        FeedbackItem {
            feedback_id: String::new(),
            job: snapshot,
            outcome,
            message: report.message,
            finished_at_ms: now_ms,
        }
    });
    let mut t = changed(stored, after, logs);
    (t.feedback, t.disposition, t.next_fire) = (feedback, Some(disposition), next_fire);
    Ok(t)
}

/// The jitter of a retry `delay_ms` away: up to one more delay, like the backoff's own, but a
/// deterministic function of the job and its attempt (FNV-1a, then the splitmix64 finalizer):
/// jobs that fail together still spread out, and the same events give the same transition.
fn retry_jitter_ms(delay_ms: i64, job_id: &str, attempt: u32) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job_id.bytes().chain(attempt.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let fraction = ((h ^ (h >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
    (delay_ms.max(0) as f64 * fraction) as i64
}

fn lease_lost(stored: &StoredJob, loss: LeaseLoss, now_ms: i64) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if job.state != JobState::Running {
        return Err(Refusal::NotRunning(job.state));
    }
    let expiry = job.lease_expiry_ms.unwrap_or_default();
    let note = match loss {
        LeaseLoss::Expired if expiry >= now_ms => return Err(Refusal::LeaseNotExpired(expiry)),
        LeaseLoss::Expired => "lease expired",
        LeaseLoss::OwnerGone(owner) => match &job.lease_owner {
            Some(holder) if *holder != owner => return Err(Refusal::NotOwner(holder.clone())),
            _ => "its TaskTracker left the cluster",
        },
        LeaseLoss::StreamEnded { token, expiry_ms } => {
            stored.leased_with(&token)?;
            if expiry != expiry_ms {
                return Err(Refusal::LeaseRenewed(expiry));
            }
            "its TaskTracker left the cluster (its stream ended)"
        }
    };
    let line = log(job, now_ms, LogType::FixedDead, note).with_level(LogLevel::Warn);
    Ok(changed(stored, requeued(stored, now_ms), vec![line]))
}

fn suspend(stored: &StoredJob, now_ms: i64) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if stored.suspend_requested || job.state == JobState::Suspended {
        return Err(Refusal::AlreadySuspended);
    }
    let mut after = stored.clone();
    after.suspend_requested = true;
    after.job.updated_at_ms = now_ms;
    let note = if job.state == JobState::Running {
        "suspended by a user; the running attempt finishes first"
    } else {
        after.job.state = JobState::Suspended;
        "suspended by a user"
    };
    Ok(changed(
        stored,
        after,
        vec![log(job, now_ms, LogType::Suspend, note)],
    ))
}

fn resume(stored: &StoredJob, now_ms: i64) -> Result<Transition, Refusal> {
    let job = &stored.job;
    let mut after = stored.clone();
    after.suspend_requested = false;
    after.job.updated_at_ms = now_ms;
    let mut next_fire = NextFire::Unchanged;
    let note = if job.state == JobState::Suspended {
        // A fire missed meanwhile follows the misfire policy: never a burst of catch-ups.
        let at_ms =
            schedule::resume_trigger(&job.spec, job.trigger_time_ms, job.fire_count, now_ms);
        after.job.state = JobState::Queued;
        after.job.trigger_time_ms = at_ms;
        if job.spec.schedule.is_recurring() {
            after.job.scheduled_fire_ms = Some(at_ms);
            next_fire = NextFire::At(at_ms);
        }
        format!("resumed by a user; runs at {}", format_ms(at_ms))
    } else if stored.suspend_requested {
        "resumed by a user before its running attempt ended".to_string()
    } else {
        return Err(Refusal::NotSuspended);
    };
    let mut t = changed(stored, after, vec![log(job, now_ms, LogType::Resume, note)]);
    t.next_fire = next_fire;
    Ok(t)
}

fn cancel(stored: &StoredJob, cause: CancelCause, now_ms: i64) -> Result<Transition, Refusal> {
    let job = &stored.job;
    let (note, cascade) = match cause {
        CancelCause::WithSchedule(_) if job.state == JobState::Running => {
            return Err(Refusal::InstanceRunning);
        }
        CancelCause::WithSchedule(definition) => {
            (format!("cancelled with its schedule {definition}"), None)
        }
        CancelCause::User => {
            let recurring = job.spec.schedule.is_recurring();
            let cascade = recurring.then(|| Cascade::CancelQueuedInstances {
                definition: job.job_id.clone(),
            });
            ("cancelled by a user".to_string(), cascade)
        }
    };
    let mut after = requeued(stored, now_ms);
    after.job.state = JobState::Cancelled;
    after.job.finished_at_ms = Some(now_ms);
    let mut t = changed(stored, after, vec![log(job, now_ms, LogType::Del, note)]);
    t.cascade = cascade;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::model::{MisfirePolicy, Schedule};
    use JobState::{Cancelled, Failed, Queued, Running, Succeeded, Suspended};

    const NOW: i64 = 1_800_000_000_000;
    const LATER: i64 = NOW + 100;

    fn exact() -> RetryPolicy {
        RetryPolicy {
            jitter: false,
            ..Default::default()
        }
    }

    /// A repeat job `tick` firing every second from `NOW` (`count` times), retried once, with
    /// feedback.
    fn repeat(rely_on_prev_cycle: bool, count: i64) -> JobSpec {
        let first_fire_ms = Some(NOW);
        let schedule = Schedule::Repeat {
            interval_ms: 1000,
            count,
            first_fire_ms,
        };
        let mut spec = JobSpec::new("tick", "g").schedule(schedule).max_retries(1);
        spec.rely_on_prev_cycle = rely_on_prev_cycle;
        spec.feedback_to("clients")
    }

    fn claim(token: &str) -> Event {
        let (owner, token, instance_id) = ("w1".into(), token.into(), "i1".into());
        Event::Claim(Claim {
            owner,
            token,
            expiry_ms: NOW + 50,
            instance_id,
        })
    }

    fn report(token: &str, outcome: Outcome) -> RunReport {
        let (token, message, node) = (token.into(), String::new(), "w1".into());
        RunReport {
            token,
            outcome,
            message,
            logs: Vec::new(),
            node,
        }
    }

    fn done(token: &str, outcome: Outcome) -> Event {
        Event::Complete(report(token, outcome))
    }

    fn run(job: &StoredJob, event: Event, now: i64) -> Transition {
        apply(job, event, now, &exact()).unwrap_or_else(|r| panic!("refused: {r}"))
    }

    fn types(logs: &[LogEntry]) -> Vec<LogType> {
        logs.iter().map(|l| l.log_type).collect()
    }

    /// The table's job `j1` in `state`: a sequential repeat job, as a store would hold it; a
    /// running one under lease `tok` of `w1`, expired at `LATER`.
    fn job_in(state: JobState) -> StoredJob {
        let mut s = accept(repeat(true, -1), "j1".into(), NOW).job;
        s.job.state = state;
        match state {
            Queued => {}
            Running => {
                s.job.attempt = 1;
                s.job.lease_owner = Some("w1".into());
                s.job.lease_expiry_ms = Some(NOW + 50);
                s.lease_token = Some("tok".into());
            }
            Suspended => s.suspend_requested = true,
            Succeeded | Failed | Cancelled => s.job.finished_at_ms = Some(NOW),
        }
        s
    }

    /// The module's invariants on one stored job.
    fn consistent(s: &StoredJob) -> Result<(), String> {
        let (j, unfinished) = (&s.job, !s.job.state.is_final());
        let leased = [
            j.lease_owner.is_some(),
            s.lease_token.is_some(),
            j.lease_expiry_ms.is_some(),
        ];
        let ran_out = j.last_message.as_deref() == Some("schedule complete");
        let broken = if leased != [j.state == Running; 3] {
            "a lease that does not match its state"
        } else if (j.state == Suspended)
            != (s.suspend_requested && unfinished && j.state != Running)
        {
            "a suspend request that does not match its state"
        } else if unfinished == j.finished_at_ms.is_some() {
            "a finish time that does not match its state"
        } else if matches!(j.state, Succeeded | Failed) && j.last_outcome.is_none() && !ran_out {
            "finished without an outcome"
        } else {
            return Ok(());
        };
        Err(format!("{} ({}): {broken}", j.job_id, j.state))
    }

    /// One event of each kind, as the table applies them to `job_in(state)` at `LATER`.
    fn events() -> Vec<Event> {
        let tok = || "tok".to_string();
        let submit = |replace| {
            let spec = repeat(true, -1).replace_on_exist(replace);
            Event::Submit {
                spec,
                new_job_id: "j2".into(),
            }
        };
        let (token, expiry_ms) = (tok(), NOW + 50);
        vec![
            submit(false),
            submit(true),
            claim("new"),
            Event::Renew {
                token: tok(),
                expiry_ms: NOW + 9000,
            },
            done("tok", Outcome::Exception),
            Event::Release(tok()),
            Event::LeaseLost(LeaseLoss::Expired),
            Event::LeaseLost(LeaseLoss::OwnerGone("w1".into())),
            Event::LeaseLost(LeaseLoss::StreamEnded { token, expiry_ms }),
            Event::Suspend,
            Event::Resume,
            Event::Trigger("i1".into()),
            Event::Cancel(CancelCause::User),
            Event::Cancel(CancelCause::WithSchedule("d".into())),
        ]
    }

    /// The table, every state × every event: the state a legal event leaves and the log lines
    /// it writes, or the refusal of an illegal one. The match is exhaustive over both.
    fn expect(state: JobState, event: &Event) -> Result<(JobState, &'static [LogType]), Refusal> {
        use Event as E;
        use LogType as L;
        match (state, event) {
            (Succeeded | Failed | Cancelled, E::Submit { .. }) => Ok((Queued, &[L::Receive])),
            (Succeeded | Failed | Cancelled, _) => Err(Refusal::Finished("j1".into(), state)),
            (_, E::Submit { spec, .. }) if spec.replace_on_exist => Ok((state, &[L::Update])),
            (_, E::Submit { .. }) => Err(Refusal::Duplicate("j1".into())),
            (Queued, E::Claim(_)) => Ok((Running, &[L::Sent])),
            (_, E::Claim(_)) => Err(Refusal::NotQueued(state)),
            (Running, E::Renew { .. }) => Ok((Running, &[])),
            (Running, E::Complete(_)) => Ok((Queued, &[L::Finished, L::Resend])),
            (Running, E::Release(_)) => Ok((Queued, &[L::Resend])),
            (Running, E::LeaseLost(_)) => Ok((Queued, &[L::FixedDead])),
            (_, E::Renew { .. } | E::Complete(_) | E::Release(_) | E::LeaseLost(_)) => {
                Err(Refusal::NotRunning(state))
            }
            (Queued, E::Suspend) => Ok((Suspended, &[L::Suspend])),
            (Running, E::Suspend) => Ok((Running, &[L::Suspend])),
            (_, E::Suspend) => Err(Refusal::AlreadySuspended),
            (Suspended, E::Resume) => Ok((Queued, &[L::Resume])),
            (_, E::Resume) => Err(Refusal::NotSuspended),
            (_, E::Trigger(_)) => Ok((state, &[])),
            (Running, E::Cancel(CancelCause::WithSchedule(_))) => Err(Refusal::InstanceRunning),
            (_, E::Cancel(_)) => Ok((Cancelled, &[L::Del])),
        }
    }

    #[test]
    fn every_state_and_every_event() {
        for state in JobState::ALL {
            for event in events() {
                let (before, case) = (job_in(state), format!("{state} × {event:?}"));
                let got = apply(&before, event.clone(), LATER, &exact());
                let want = expect(state, &event);
                let (t, (to, logs)) = match (got, want) {
                    (Ok(t), Ok(want)) => (t, want),
                    (Err(got), Err(want)) if got == want => continue,
                    (got, want) => panic!("{case}: expected {want:?}, got {got:?}"),
                };
                let j = &t.job.job;
                assert_eq!(j.state, to, "{case}");
                assert_eq!(types(&t.logs), logs, "{case}");
                consistent(&t.job).unwrap_or_else(|e| panic!("{case}: {e}"));
                assert!(t.logs.iter().all(|l| l.job_id == j.job_id), "{case}");
                match &t.write {
                    Write::Insert => assert_eq!(j.job_id, "j2", "{case}"),
                    Write::Keep => assert_eq!(t.job, before, "{case}"),
                    Write::Update { from, fields } | Write::Finish { from, fields } => {
                        assert_eq!((*from, j.job_id.as_str()), (state, "j1"), "{case}");
                        assert_eq!(fields, &Field::changed(&before, &t.job), "{case}");
                        let finish = matches!(t.write, Write::Finish { .. });
                        assert_eq!(finish, to.is_final(), "{case}");
                    }
                }
                let triggered = matches!(event, Event::Trigger(_));
                assert_eq!(t.follow_up.is_some(), triggered, "{case}");
                let claimed = matches!(event, Event::Claim(_));
                assert_eq!(t.handout == Handout::Job, claimed, "{case}");
            }
        }
    }

    #[test]
    fn a_one_off_job_runs_retries_and_reports() {
        use Field as F;
        let spec = JobSpec::new("once", "g").max_retries(1).feedback_to("c");
        let queued = accept(spec, "a".into(), NOW).job;
        assert_eq!(queued.job.scheduled_fire_ms, None);
        let t = run(&queued, claim("t1"), NOW + 1);
        let fields = vec![F::State, F::Attempt, F::Lease, F::UpdatedAt];
        assert_eq!(
            t.write,
            Write::Update {
                from: Queued,
                fields
            }
        );
        let running = t.job;
        let renew = Event::Renew {
            token: "t1".into(),
            expiry_ms: NOW + 999,
        };
        let fields = vec![F::LeaseExpiry];
        assert_eq!(
            run(&running, renew, NOW).write,
            Write::Update {
                from: Running,
                fields
            }
        );
        let stale = apply(&running, done("t0", Outcome::Later), NOW, &exact());
        assert_eq!(stale, Err(Refusal::StaleLease));
        // A retry: between one and two delays (jitter), the same for the same job and attempt.
        let policy = RetryPolicy::default();
        let later = || apply(&running, done("t1", Outcome::Later), NOW, &policy).unwrap();
        let t = later();
        assert_eq!(t, later());
        let Some(Disposition::Retry { at_ms }) = t.disposition else {
            panic!("{t:?}")
        };
        assert!((NOW + 1000..NOW + 2000).contains(&at_ms), "{at_ms}");
        assert_eq!(t.job.job.trigger_time_ms, at_ms);
        assert_eq!(
            t.logs[1].message,
            format!("retry 1 of 1 at {}", format_ms(at_ms))
        );
        assert_eq!(t.feedback, None);
        let jitters = ["a", "b", "c"].map(|id| retry_jitter_ms(1000, id, 1));
        assert!(jitters.iter().all(|j| (0..1000).contains(j)), "{jitters:?}");
        assert!(jitters.windows(2).any(|w| w[0] != w[1]), "{jitters:?}");
        // The last attempt fails for good; its business log and result are recorded.
        let again = run(&t.job, claim("t2"), at_ms).job;
        assert_eq!(again.job.attempt, 2);
        let mut last = report("t2", Outcome::Exception);
        last.message = "boom".into();
        let (level, message) = (LogLevel::Warn, "hm".to_string());
        last.logs.push(BizLine {
            time_ms: at_ms + 5,
            level,
            message,
        });
        let t = run(&again, Event::Complete(last), at_ms + 10);
        let fields = vec![
            F::State,
            F::Lease,
            F::LastResult,
            F::FinishedAt,
            F::UpdatedAt,
        ];
        assert_eq!(
            t.write,
            Write::Finish {
                from: Running,
                fields
            }
        );
        assert_eq!(t.disposition, Some(Disposition::Finish(Failed)));
        let lines: Vec<_> = t
            .logs
            .iter()
            .map(|l| (l.message.as_str(), l.attempt))
            .collect();
        assert_eq!(lines, [("hm", 2), ("EXCEPTION: boom", 2)]);
        assert_eq!(
            (t.logs[0].node.as_str(), t.logs[1].level),
            ("w1", LogLevel::Warn)
        );
        let fb = t.feedback.expect("feedback");
        assert_eq!(fb.job, t.job.job, "a finished job is reported as stored");
        assert_eq!(
            (fb.outcome, fb.finished_at_ms),
            (Outcome::Exception, at_ms + 10)
        );
    }

    #[test]
    fn a_job_suspended_while_running_waits_after_its_attempt() {
        let job = run(&job_in(Queued), claim("t1"), LATER).job;
        let flagged = run(&job, Event::Suspend, LATER).job;
        assert!(flagged.job.state == Running && flagged.suspend_requested);
        // Whatever would queue it again suspends it instead.
        let t = run(&flagged, done("t1", Outcome::Success), LATER);
        assert_eq!(t.job.job.state, Suspended);
        assert_eq!(t.next_fire, NextFire::At(NOW + 1000));
        let fb = t.feedback.expect("feedback of each run").job;
        assert_eq!(
            (fb.state, fb.lease_owner, fb.fire_count),
            (Succeeded, None, 1)
        );
        let release = Event::Release("t1".into());
        assert_eq!(run(&flagged, release, LATER).job.job.state, Suspended);
        let expired = Event::LeaseLost(LeaseLoss::Expired);
        assert_eq!(run(&flagged, expired, NOW + 51).job.job.state, Suspended);
        // Resumed long after its fire: one catch-up run now.
        let resumed = run(&t.job, Event::Resume, NOW + 60_500);
        assert_eq!(resumed.next_fire, NextFire::At(NOW + 60_500));
        // Resumed before the attempt ended: it just goes on.
        let t = run(&flagged, Event::Resume, LATER).job;
        assert!(t.job.state == Running && !t.suspend_requested);
    }

    #[test]
    fn overlapping_fires_run_as_leased_instances() {
        let def = accept(repeat(false, 2), "d".into(), NOW).job;
        let t = run(&def, claim("t1"), NOW + 10);
        assert_eq!(
            (t.handout, t.next_fire),
            (Handout::FollowUp, NextFire::At(NOW + 1000))
        );
        assert!(
            t.logs.is_empty(),
            "a plain fire is told in the instance's log"
        );
        let d = &t.job.job;
        assert_eq!((d.state, d.fire_count, d.attempt), (Queued, 2, 0));
        let f = t.follow_up.as_ref().expect("instance");
        let i = &f.job.job;
        assert_eq!(i.spec.task_id, format!("tick~{NOW}"));
        assert_eq!(i.instance_of.as_deref(), Some("d"), "carries its definition");
        assert_eq!(
            (i.state, i.attempt, i.scheduled_fire_ms),
            (Running, 1, Some(NOW))
        );
        assert_eq!(f.job.lease_token.as_deref(), Some("t1"));
        assert_eq!(types(&f.logs), [LogType::Receive, LogType::Sent]);
        assert_eq!(f.logs[0].message, format!("fire {} of d", format_ms(NOW)));
        // The last fire finishes the definition.
        let t = run(&t.job, claim("t2"), NOW + 1000);
        assert!(matches!(t.write, Write::Finish { .. }));
        assert_eq!(t.next_fire, NextFire::Exhausted);
        assert_eq!(t.job.job.last_message.as_deref(), Some("schedule complete"));
        assert!(t.logs[0].message.ends_with("the last of its schedule"));
        // A fire claimed long after with misfire policy skip: no instance.
        let mut skip = def;
        skip.job.spec.misfire_policy = MisfirePolicy::Skip;
        let t = run(&skip, claim("t3"), NOW + 60_500);
        assert_eq!((t.handout, t.follow_up), (Handout::Nothing, None));
        assert_eq!(t.job.job.trigger_time_ms, NOW + 61_000);
        assert!(t.logs[0].message.starts_with("skipped the missed fire"));
    }

    #[test]
    fn only_the_first_attempt_of_a_sequential_fire_can_be_late() {
        let late = NOW + 60_500;
        let job = job_in(Queued);
        let t = run(&job, claim("t1"), late);
        assert_eq!(
            t.job.job.scheduled_fire_ms,
            Some(late),
            "one catch-up run now"
        );
        assert_eq!(types(&t.logs), [LogType::Update, LogType::Sent]);
        // Handed back, the attempt did not count: the next claim is the first again.
        let back = run(&t.job, Event::Release("t1".into()), late).job;
        assert_eq!(back.job.attempt, 0);
        let t = run(&back, claim("t2"), late + 5_000).job;
        assert_eq!(t.job.scheduled_fire_ms, Some(late + 5_000));
        // A retry keeps its fire, however late.
        let mut retry = job.clone();
        retry.job.attempt = 1;
        let t = run(&retry, claim("t3"), late).job;
        assert_eq!((t.job.attempt, t.job.scheduled_fire_ms), (2, Some(NOW)));
        // With misfire policy skip the late fire does not run: on to the next one.
        let mut skip = job;
        skip.job.spec.misfire_policy = MisfirePolicy::Skip;
        let t = run(&skip, claim("t4"), late);
        assert_eq!(t.handout, Handout::Nothing);
        let j = &t.job.job;
        assert_eq!((j.state, j.attempt, j.fire_count), (Queued, 0, 2));
        assert_eq!(j.trigger_time_ms, NOW + 61_000);
    }

    #[test]
    fn cancels_replaces_triggers_and_lost_leases() {
        // Cancelling a schedule cancels its queued instances; a running job loses its lease.
        let t = run(&job_in(Running), Event::Cancel(CancelCause::User), LATER);
        let Some(Cascade::CancelQueuedInstances { definition }) = t.cascade else {
            panic!("{t:?}")
        };
        assert_eq!(definition, "j1");
        assert!(matches!(&t.write, Write::Finish { fields, .. } if fields.contains(&Field::Lease)));
        let with = Event::Cancel(CancelCause::WithSchedule("j0".into()));
        let t = run(&job_in(Queued), with, LATER);
        assert_eq!(t.logs[0].message, "cancelled with its schedule j0");
        let one_off = accept(JobSpec::new("o", "g"), "o".into(), NOW).job;
        assert_eq!(
            run(&one_off, Event::Cancel(CancelCause::User), NOW).cascade,
            None
        );
        let trigger = apply(&one_off, Event::Trigger("i".into()), NOW, &exact());
        assert_eq!(trigger, Err(Refusal::NotRecurring("o".into())));
        // A trigger queues an instance now; the schedule does not move.
        let t = run(&job_in(Queued), Event::Trigger("i".into()), LATER);
        let i = t.follow_up.expect("instance").job.job;
        assert_eq!(
            (i.spec.task_id, i.trigger_time_ms, i.instance_of.as_deref()),
            (format!("tick~{LATER}"), LATER, Some("j1"))
        );
        // A replace: a queued job takes the new trigger time (a one-off, no scheduled fire).
        let submit = |ms| {
            let schedule = Schedule::TriggerAt {
                trigger_time_ms: ms,
            };
            let spec = JobSpec::new("o", "g")
                .schedule(schedule)
                .replace_on_exist(true);
            Event::Submit {
                spec,
                new_job_id: "x".into(),
            }
        };
        let queued = accept(JobSpec::new("o", "g"), "o".into(), NOW).job;
        let t = run(&queued, submit(NOW + 9_000), NOW).job.job;
        assert_eq!(
            (t.trigger_time_ms, t.scheduled_fire_ms),
            (NOW + 9_000, None)
        );
        let running = run(&queued, claim("t"), NOW).job;
        let t = run(&running, submit(NOW + 9_000), NOW);
        assert_eq!(t.job.job.trigger_time_ms, NOW);
        assert!(
            t.logs[0]
                .message
                .ends_with("applies after the running attempt")
        );
        let spec = repeat(true, -1).replace_on_exist(true);
        let t = run(
            &job_in(Suspended),
            Event::Submit {
                spec,
                new_job_id: "x".into(),
            },
            LATER,
        );
        assert_eq!(t.logs[0].message, "replaced by a new submit");
        // A lease is lost only for its cause; the attempt stays counted.
        let job = job_in(Running);
        let lost = |loss, now| apply(&job, Event::LeaseLost(loss), now, &exact());
        let early = lost(LeaseLoss::Expired, NOW);
        assert_eq!(early, Err(Refusal::LeaseNotExpired(NOW + 50)));
        let other = lost(LeaseLoss::OwnerGone("w2".into()), LATER);
        assert_eq!(other, Err(Refusal::NotOwner("w1".into())));
        let (token, expiry_ms) = ("tok".into(), NOW);
        let renewed = lost(LeaseLoss::StreamEnded { token, expiry_ms }, LATER);
        assert_eq!(renewed, Err(Refusal::LeaseRenewed(NOW + 50)));
        let t = lost(LeaseLoss::Expired, LATER).unwrap();
        assert_eq!((t.logs[0].level, t.job.job.attempt), (LogLevel::Warn, 1));
        // Refusals read as sentences.
        let due = Refusal::NotDue(1_000).to_string();
        assert_eq!(due, "the job is not due before 1970-01-01T00:00:01.000Z");
        let finished = Refusal::Finished("j".into(), Cancelled).to_string();
        assert_eq!(finished, "job j already finished (CANCELLED)");
    }

    /// A store in memory, driven by [`apply`] alone, that checks the invariants after each event.
    struct World {
        now: i64,
        jobs: Vec<StoredJob>,
        ids: u64,
        /// Leases lost per job since its attempt counter last started again.
        losses: HashMap<String, u32>,
    }

    /// An event for a picked job; a `true` asks for a stale lease token.
    #[derive(Debug, Clone)]
    enum Op {
        Submit(bool),
        Claim,
        Renew(bool),
        Complete(Outcome, bool),
        Release(bool),
        Lose(u8),
        Suspend,
        Resume,
        Trigger,
        Cancel,
        Wait(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        use Outcome::{Exception, Failed, Later, Success};
        let outcome = prop_oneof![Just(Success), Just(Failed), Just(Later), Just(Exception)];
        prop_oneof![
            1 => any::<bool>().prop_map(Op::Submit),
            4 => Just(Op::Claim),
            1 => any::<bool>().prop_map(Op::Renew),
            4 => (outcome, any::<bool>()).prop_map(|(o, stale)| Op::Complete(o, stale)),
            1 => any::<bool>().prop_map(Op::Release),
            2 => (0u8..3).prop_map(Op::Lose),
            1 => Just(Op::Suspend),
            1 => Just(Op::Resume),
            1 => Just(Op::Trigger),
            1 => Just(Op::Cancel),
            3 => (0i64..4_000).prop_map(Op::Wait),
        ]
    }

    fn spec() -> impl Strategy<Value = JobSpec> {
        let count = prop_oneof![Just(-1i64), 1i64..4];
        let flags = (any::<bool>(), any::<bool>(), any::<bool>());
        (0u8..3, 0u32..3, count, flags).prop_map(|(kind, retries, count, (rely, skip, fb))| {
            let schedule = match kind {
                0 => Schedule::Now,
                1 => Schedule::TriggerAt {
                    trigger_time_ms: NOW + 1_500,
                },
                _ => Schedule::Repeat {
                    interval_ms: 1000,
                    count,
                    first_fire_ms: None,
                },
            };
            let mut spec = JobSpec::new("p", "g")
                .schedule(schedule)
                .max_retries(retries);
            spec.rely_on_prev_cycle = rely;
            spec.misfire_policy = [MisfirePolicy::FireOnce, MisfirePolicy::Skip][usize::from(skip)];
            spec.need_feedback = fb;
            spec
        })
    }

    impl World {
        fn new(specs: Vec<JobSpec>) -> World {
            let accepted = specs.into_iter().enumerate().map(|(n, spec)| {
                let spec = JobSpec {
                    task_id: format!("p{n}"),
                    ..spec
                };
                accept(spec, format!("j{n}"), NOW).job
            });
            World {
                now: NOW,
                jobs: accepted.collect(),
                ids: 0,
                losses: HashMap::new(),
            }
        }

        fn fresh(&mut self, prefix: &str) -> String {
            self.ids += 1;
            format!("{prefix}{}", self.ids)
        }

        /// The unfinished job with this spec's node group and task id.
        fn unfinished(&self, spec: &JobSpec) -> Option<usize> {
            let mut jobs = self.jobs.iter();
            jobs.position(|j| !j.job.state.is_final() && key(&j.job.spec) == key(spec))
        }

        /// The event `op` makes for the job at `i` (a submit: for the unfinished job with its
        /// task id, as a store finds it), or `None` for time passing.
        fn event(&mut self, i: &mut usize, pick: usize, op: Op) -> Option<Event> {
            let job = self.jobs[*i].clone();
            let token = |stale: bool| match job.lease_token.clone() {
                Some(t) if !stale => t,
                _ => "stale".into(),
            };
            let expiry_ms = self.now + 5_000;
            Some(match op {
                Op::Wait(ms) => {
                    self.now += ms;
                    return None;
                }
                Op::Submit(replace) => {
                    *i = self.unfinished(&job.job.spec).unwrap_or(*i);
                    let spec = job.job.spec.replace_on_exist(replace).priority(1);
                    Event::Submit {
                        spec,
                        new_job_id: self.fresh("n"),
                    }
                }
                Op::Claim => {
                    let (token, instance_id) = (self.fresh("t"), self.fresh("i"));
                    let owner = format!("w{}", pick % 2);
                    Event::Claim(Claim {
                        owner,
                        token,
                        expiry_ms,
                        instance_id,
                    })
                }
                Op::Renew(stale) => Event::Renew {
                    token: token(stale),
                    expiry_ms,
                },
                Op::Complete(outcome, stale) => done(&token(stale), outcome),
                Op::Release(stale) => Event::Release(token(stale)),
                Op::Lose(0) => Event::LeaseLost(LeaseLoss::Expired),
                Op::Lose(1) => {
                    let owner = job.job.lease_owner.unwrap_or_default();
                    Event::LeaseLost(LeaseLoss::OwnerGone(owner))
                }
                Op::Lose(_) => {
                    let expiry_ms = job.job.lease_expiry_ms.unwrap_or_default();
                    let token = token(false);
                    Event::LeaseLost(LeaseLoss::StreamEnded { token, expiry_ms })
                }
                Op::Suspend => Event::Suspend,
                Op::Resume => Event::Resume,
                Op::Trigger => Event::Trigger(self.fresh("i")),
                Op::Cancel => Event::Cancel(CancelCause::User),
            })
        }

        /// Applies one event as a store would, then checks every invariant.
        fn step(&mut self, pick: usize, op: Op) -> Result<(), TestCaseError> {
            let mut i = pick % self.jobs.len();
            let Some(event) = self.event(&mut i, pick, op) else {
                return self.check();
            };
            let before = self.jobs[i].clone();
            let policy = RetryPolicy::default();
            let Ok(t) = apply(&before, event.clone(), self.now, &policy) else {
                return self.check();
            };
            check_transition(&before, &event, &t)?;
            let id = t.job.job.job_id.clone();
            if t.job.job.attempt == 0 {
                self.losses.remove(&id);
            } else if matches!(event, Event::LeaseLost(_)) {
                *self.losses.entry(id).or_default() += 1;
            }
            match t.write {
                Write::Insert => self.jobs.push(t.job),
                _ => self.jobs[i] = t.job,
            }
            if let Some(f) = t.follow_up
                && self.unfinished(&f.job.job.spec).is_none()
            {
                self.jobs.push(f.job);
            }
            if let Some(Cascade::CancelQueuedInstances { definition }) = t.cascade {
                for k in 0..self.jobs.len() {
                    let j = &self.jobs[k].job;
                    let queued = matches!(j.state, Queued | Suspended);
                    if queued && j.instance_of.as_deref() == Some(definition.as_str()) {
                        let cancel = Event::Cancel(CancelCause::WithSchedule(definition.clone()));
                        let t = apply(&self.jobs[k], cancel, self.now, &policy);
                        self.jobs[k] = t.map_err(|r| TestCaseError::fail(r.to_string()))?.job;
                    }
                }
            }
            self.check()
        }

        fn check(&self) -> Result<(), TestCaseError> {
            let mut tokens = Vec::new();
            for (n, s) in self.jobs.iter().enumerate() {
                consistent(s).map_err(TestCaseError::fail)?;
                let j = &s.job;
                tokens.extend(s.lease_token.clone());
                let lost = self.losses.get(&j.job_id).copied().unwrap_or(0);
                let most = j.spec.max_retries + 1 + lost;
                prop_assert!(
                    j.attempt <= most,
                    "{}: attempt {} > {most}",
                    j.job_id,
                    j.attempt
                );
                // Never lost: an unfinished job is the only one with its task id, with a way on.
                let (event, at) = match j.state {
                    Queued => (claim("probe"), j.trigger_time_ms.max(self.now)),
                    Running => {
                        let expired = j.lease_expiry_ms.unwrap_or_default() + 1;
                        (Event::LeaseLost(LeaseLoss::Expired), expired)
                    }
                    Suspended => (Event::Resume, self.now),
                    Succeeded | Failed | Cancelled => continue,
                };
                prop_assert_eq!(self.unfinished(&j.spec), Some(n), "two {}", &j.spec.task_id);
                let on = apply(s, event, at, &exact());
                prop_assert!(on.is_ok(), "{} ({}) is stuck: {:?}", j.job_id, j.state, on);
            }
            let n = tokens.len();
            tokens.sort();
            tokens.dedup();
            prop_assert_eq!(tokens.len(), n, "one lease per job and one job per lease");
            Ok(())
        }
    }

    fn key(spec: &JobSpec) -> (String, String) {
        (spec.task_id.clone(), spec.task_tracker_node_group.clone())
    }

    /// What holds for every transition, whatever came before.
    fn check_transition(b: &StoredJob, event: &Event, t: &Transition) -> Result<(), TestCaseError> {
        let (was, is) = (&b.job, &t.job.job);
        match &t.write {
            Write::Insert => prop_assert!(was.state.is_final() && is.job_id != was.job_id),
            Write::Keep => prop_assert_eq!(&t.job, b),
            Write::Update { from, .. } | Write::Finish { from, .. } => {
                prop_assert_eq!((*from, &is.job_id), (was.state, &was.job_id));
            }
        }
        prop_assert!(t.logs.iter().all(|l| l.job_id == is.job_id));
        if let Some(f) = &t.follow_up {
            prop_assert!(f.logs.iter().all(|l| l.job_id == f.job.job.job_id));
        }
        // Retried only while retries remain.
        if let Some(Disposition::Retry { .. }) = t.disposition {
            prop_assert!(
                was.attempt <= was.spec.max_retries,
                "retry of attempt {}",
                was.attempt
            );
        }
        // A claim leases one job: the one it hands out.
        let instance = t
            .follow_up
            .as_ref()
            .is_some_and(|f| f.job.job.state == Running);
        let itself = is.state == Running && was.state != Running;
        prop_assert_eq!(itself, t.handout == Handout::Job);
        prop_assert_eq!(instance, t.handout == Handout::FollowUp);
        // A job finishes with an outcome, by a cancel, or when its schedule runs out.
        if is.state.is_final() && !was.state.is_final() {
            let why = match event {
                Event::Complete(_) | Event::Cancel(_) => true,
                Event::Claim(_) => t.next_fire == NextFire::Exhausted,
                _ => false,
            };
            prop_assert!(why, "{} finished by {:?}", is.job_id, event);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// No sequence of events loses a job, leases it twice or retries it past max_retries.
        #[test]
        fn no_sequence_of_events_breaks_a_job(
            specs in prop::collection::vec(spec(), 1..3),
            ops in prop::collection::vec((any::<usize>(), op()), 1..80),
        ) {
            let mut world = World::new(specs);
            world.check()?;
            for (pick, op) in ops {
                world.step(pick, op)?;
            }
        }
    }
}
