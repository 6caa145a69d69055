//! The Job controller's decisions, as pure functions of the resource and of what is known about
//! its tracker job ([`Observed`]):
//!
//! * [`is_due`]: whether the tracker is to be asked although no change of it arrived — the spec
//!   changed (`metadata.generation` is not the status's `observedGeneration`), the refresh
//!   timer ran out, or this process has not read the job yet (or may have missed changes).
//! * [`fetch`]: the one `Get` a round may start with, only when it is due and no change from
//!   the watch is at hand; never before a first submit.
//! * [`plan`]: the next step — [`Plan::Submit`], [`Plan::Replace`], [`Plan::Adopt`],
//!   [`Plan::Suspend`], [`Plan::Resume`], [`Plan::Cancel`], [`Plan::Blocked`] or
//!   [`Plan::Nothing`]. Applying a step adds the tracker's answer to the [`Observed`] and the
//!   plan is asked again: a submit answered "duplicate" (the job exists already, e.g. after an
//!   operator restart between submit and status write) is read once and then adopted, replaced
//!   or refused; a fresh submission of a suspended Job is then suspended.
//! * [`next_look`], [`then`]: when the resource is looked at again.

use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use lts_core::{JobKey, JobState};

use super::convert::{self, ClusterRef, Problem, owned_by, spec_hash};
use super::{CLUSTER_RETRY, FALLBACK_REFRESH, WATCHED_REFRESH};
use crate::conditions;
use crate::crd::{Job, JobStatus, NodeGroup};

/// The job a Job resource submits, and its fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub struct ToSubmit {
    /// The job.
    pub spec: lts_core::JobSpec,
    /// [`spec_hash`] of it.
    pub hash: String,
}

/// How the job reached the tracker in this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submission {
    /// Submitted and stored as a new job.
    Accepted,
    /// Submitted over the unfinished job of its task id, which it replaced.
    Replaced,
    /// Submitted for this resource before (an operator stopped between submit and status
    /// write): the tracker answered "duplicate" and the job it holds is taken as this one's.
    Adopted,
}

impl Submission {
    /// The reason of the `Submitted` Condition.
    pub fn reason(self) -> &'static str {
        match self {
            Submission::Accepted => "Accepted",
            Submission::Replaced => "Replaced",
            Submission::Adopted => "Adopted",
        }
    }
}

/// What the tracker says about the resource's job.
#[derive(Debug, Clone, PartialEq)]
pub enum Tracker {
    /// Not asked, and no change of it arrived: the status is all there is.
    Unasked,
    /// The job as the tracker holds it now (from the watch, a `Get` or an answer).
    Current(lts_core::Job),
    /// The trackers have no job of that id (deleting: no job of this resource under its task
    /// id).
    Missing,
    /// A submit was answered "duplicate": this job holds the task id.
    Taken(lts_core::Job),
    /// The tracker refused the spec: what is wrong, by resource field.
    Rejected(String),
}

/// What a decision rests on besides the resource itself: the resource's cluster and job, and
/// what this round learnt from the watch and the tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The cluster, or why there is none.
    pub cluster: Result<ClusterRef, Problem>,
    /// The job to submit, or what is wrong with the spec.
    pub spec: Result<ToSubmit, Problem>,
    /// Whether the tracker is to be asked though no change of it arrived ([`is_due`]).
    pub due: bool,
    /// The tracker job this round works on: the status's, or the one a submit answered.
    pub job_id: Option<String>,
    /// What the tracker says about it.
    pub tracker: Tracker,
    /// How the job reached the tracker in this round, if it did.
    pub submission: Option<Submission>,
    /// A suspend the tracker refused in this round: why.
    pub refused: Option<String>,
    /// A suspend, resume or cancel went to the tracker in this round. Its answer stands (a
    /// running attempt finishes first, so a suspended or cancelled job may still run): no
    /// second request in the same round.
    pub requested: bool,
    /// The newest fire of a recurring job the watch delivered since the last round.
    pub instance: Option<lts_core::Job>,
    /// A workflow's nodes the watch delivered since the last round (their newest states).
    pub nodes: Vec<lts_core::Job>,
}

impl Observed {
    /// What the resource alone tells, before the watch or the tracker are heard: its cluster
    /// among `nodegroups`, its job, and the job id of its status.
    pub fn new(job: &Job, nodegroups: &[NodeGroup], due: bool) -> Observed {
        Observed {
            cluster: convert::resolve_cluster(job, nodegroups),
            spec: convert::to_lts_spec(job)
                .map(|spec| ToSubmit {
                    hash: spec_hash(&spec),
                    spec,
                })
                .map_err(|problems| Problem::new("InvalidSpec", problems.join("; "))),
            due,
            job_id: job.status.as_ref().and_then(|s| s.job_id.clone()),
            tracker: Tracker::Unasked,
            submission: None,
            refused: None,
            requested: false,
            instance: None,
            nodes: Vec::new(),
        }
    }

    /// Takes the job a "duplicate" answer pointed at as this resource's ([`Plan::Adopt`]).
    pub fn adopt(&mut self) {
        if let Tracker::Taken(existing) = std::mem::replace(&mut self.tracker, Tracker::Unasked) {
            self.job_id = Some(existing.job_id.clone());
            self.submission = Some(Submission::Adopted);
            self.tracker = Tracker::Current(existing);
        }
    }
}

/// The next step of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing (more) to ask of the tracker; the status is built from what is known.
    Nothing,
    /// Submit the job: the resource has none on the tracker yet (as far as its status knows).
    Submit,
    /// Submit it with `replace_on_exist`: the spec changed and replaces the job it was
    /// submitted as (or the job found under its task id was submitted for an older spec).
    Replace,
    /// Take the job found under the task id after a "duplicate" answer as this resource's:
    /// it was submitted for it, with this spec.
    Adopt,
    /// Suspend the job of this id (`spec.suspend`).
    Suspend(String),
    /// Resume the suspended job of this id.
    Resume(String),
    /// Cancel the job of this id: the resource is being deleted.
    Cancel(String),
    /// Stop here: the user must act (a Condition and an Event say what).
    Blocked(Problem),
}

/// Where the Job goes and what it submits, or why it cannot go to a tracker at all: no (single)
/// cluster, or an invalid spec — in that order.
pub fn target(obs: &Observed) -> Result<(&ClusterRef, &ToSubmit), Problem> {
    match (&obs.cluster, &obs.spec) {
        (Err(p), _) | (Ok(_), Err(p)) => Err(p.clone()),
        (Ok(cluster), Ok(spec)) => Ok((cluster, spec)),
    }
}

fn finished(job: &Job) -> bool {
    convert::is_final(job.status.as_ref().and_then(|s| s.phase))
}

fn submitted_hash(job: &Job) -> Option<&str> {
    job.status.as_ref()?.submitted_hash.as_deref()
}

/// Whether the status already holds the tracker's refusal of this generation's submit (a task
/// id taken by another client, a spec the tracker rejected): submitting again is pointless
/// until the spec changes or the refresh timer runs out.
fn refused_this_generation(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, "Submitted"))
        .is_some_and(|c| {
            c.status == "False"
                && matches!(c.reason.as_str(), "TaskIdConflict" | "InvalidSpec")
                && c.observed_generation == job.metadata.generation
        })
}

/// Whether the tracker is to be asked about the resource's job although no change of it
/// arrived: the spec changed since the status was written, or the job was last read from the
/// trackers `since_read` ago (`None`: not by this process, or changes may have been missed),
/// which is at least `every`.
pub fn is_due(job: &Job, since_read: Option<Duration>, every: Duration) -> bool {
    let observed = job.status.as_ref().and_then(|s| s.observed_generation);
    job.metadata.generation != observed || since_read.is_none_or(|d| d >= every)
}

/// The `Get` a round starts with, if any: by id when the resource's known job is due to be
/// read and no change of it came from the watch; by task id when a resource being deleted
/// does not know its job's id (it may have been submitted before a lost status write). Never
/// before a first submit (submits are idempotent: a "duplicate" answer is read then), never for
/// a spec change (the replacing submit answers), never for a finished job.
pub fn fetch(job: &Job, obs: &Observed) -> Option<JobKey> {
    if obs.tracker != Tracker::Unasked || obs.cluster.is_err() || finished(job) {
        return None;
    }
    if job.metadata.deletion_timestamp.is_some() {
        if obs.job_id.is_some() {
            return None;
        }
        return Some(JobKey::Task {
            node_group: job.spec.task_tracker_node_group.clone(),
            task_id: convert::task_id(job)?,
        });
    }
    let target = obs.spec.as_ref().ok()?;
    let id = obs.job_id.as_ref()?;
    (obs.due && submitted_hash(job) == Some(target.hash.as_str())).then(|| JobKey::Id(id.clone()))
}

/// The next step for `job`, given what is known so far.
pub fn plan(job: &Job, obs: &Observed) -> Plan {
    if job.metadata.deletion_timestamp.is_some() {
        return plan_cleanup(job, obs);
    }
    let target = match self::target(obs) {
        Ok((_, target)) => target,
        Err(problem) => return Plan::Blocked(problem),
    };
    if obs.submission.is_none() {
        match &obs.tracker {
            Tracker::Rejected(message) => {
                return Plan::Blocked(Problem::new("InvalidSpec", message.clone()));
            }
            Tracker::Taken(existing) => {
                return if !owned_by(existing, &job.uid().unwrap_or_default()) {
                    Plan::Blocked(Problem::new(
                        "TaskIdConflict",
                        format!(
                            "task id {:?} of node group {:?} is taken by job {}, which another client submitted; choose another spec.taskId or set replaceOnExist",
                            target.spec.task_id,
                            target.spec.task_tracker_node_group,
                            existing.job_id
                        ),
                    ))
                } else if spec_hash(&existing.spec) == target.hash {
                    Plan::Adopt
                } else {
                    Plan::Replace
                };
            }
            _ => {}
        }
        let unchanged = submitted_hash(job) == Some(target.hash.as_str());
        if finished(job) && unchanged {
            // A finished job never changes again (and the tracker may have dropped it after its
            // retention): nothing to ask.
            return Plan::Nothing;
        }
        match &obs.job_id {
            None if refused_this_generation(job) && !obs.due => return Plan::Nothing,
            None => return Plan::Submit,
            Some(_) if !unchanged => return Plan::Replace,
            Some(_) => {}
        }
    }
    let id = obs.job_id.clone().unwrap_or_default();
    match &obs.tracker {
        Tracker::Missing => Plan::Blocked(Problem::new(
            "JobNotFound",
            format!("the trackers no longer have job {id}; change the spec to submit it again"),
        )),
        _ if obs.requested || obs.refused.is_some() => Plan::Nothing,
        Tracker::Current(j)
            if job.spec.suspend && !j.state.is_final() && j.state != JobState::Suspended =>
        {
            Plan::Suspend(id)
        }
        Tracker::Current(j) if !job.spec.suspend && j.state == JobState::Suspended => {
            Plan::Resume(id)
        }
        _ => Plan::Nothing,
    }
}

/// A resource being deleted: cancel its unfinished job, if it has one on a cluster that exists.
fn plan_cleanup(job: &Job, obs: &Observed) -> Plan {
    if finished(job) || obs.cluster.is_err() {
        return Plan::Nothing;
    }
    match (&obs.job_id, &obs.tracker) {
        _ if obs.requested => Plan::Nothing,
        (None, _) | (Some(_), Tracker::Missing) => Plan::Nothing,
        (Some(_), Tracker::Current(j)) if j.state.is_final() => Plan::Nothing,
        (Some(id), _) => Plan::Cancel(id.clone()),
    }
}

/// When a resource blocked on `obs`'s problem is looked at again: a missing or ambiguous
/// cluster may be fixed by another resource, after [`CLUSTER_RETRY`]; anything else needs an
/// edit of this one.
pub fn then(obs: &Observed) -> Action {
    if obs.cluster.is_err() {
        Action::requeue(CLUSTER_RETRY)
    } else {
        Action::await_change()
    }
}

/// The refresh interval of a resource's job: [`WATCHED_REFRESH`] while its cluster's watch
/// streams, else [`FALLBACK_REFRESH`].
pub fn refresh_every(live: bool) -> Duration {
    if live {
        WATCHED_REFRESH
    } else {
        FALLBACK_REFRESH
    }
}

/// When a settled resource is looked at again: never for a finished job or one blocked on a
/// problem (only a change helps); otherwise when its refresh is due — `every` after it was
/// last read (`since_read`; `None`: just now).
pub fn next_look(status: &JobStatus, every: Duration, since_read: Option<Duration>) -> Action {
    let blocked =
        conditions::find(&status.conditions, "Submitted").is_some_and(|c| c.status == "False");
    if convert::is_final(status.phase) || blocked || status.job_id.is_none() {
        return Action::await_change();
    }
    Action::requeue(
        every
            .saturating_sub(since_read.unwrap_or_default())
            .max(Duration::from_secs(1)),
    )
}

#[cfg(test)]
mod tests;
