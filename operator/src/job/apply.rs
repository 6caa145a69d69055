//! The Job controller's conversation with the trackers, and nothing else: [`news`] takes what
//! the watch delivered (no call), [`observe`] makes the one `Get` [`plan::fetch`] asks for (if
//! any), and [`apply`] carries out each step [`plan::plan`] chooses, adding the answer to the
//! [`Observed`], until the plan has nothing more to do. Decisions are the plan's; this only
//! reads the answers.

use kube::ResourceExt;
use lts_core::JobKey;
use lts_worker_sdk::{ClientError, SubmitAnswer};

use super::Watches;
use super::convert::{self, owned_by};
use super::plan::{self, Observed, Plan, Submission, Tracker};
use super::status::Ending;
use crate::crd::Job;
use crate::tracker::TrackerApi;

/// At most this many steps per round. The longest path is submit → "duplicate" → adopt →
/// suspend (a suspend, resume or cancel is sent once per round); only a "duplicate" whose job
/// vanished before it was read repeats the submit.
const MAX_STEPS: usize = 6;

/// Takes what the watch delivered for `job` since its last round: the newest state of its
/// tracker job and the newest fire of a recurring one. No tracker call.
pub fn news(job: &Job, obs: &mut Observed, watches: &Watches) {
    if let Some(id) = &obs.job_id
        && let Some(current) = watches.take_observed(id)
    {
        obs.tracker = Tracker::Current(current);
    }
    let (ns, name) = (job.namespace().unwrap_or_default(), job.name_any());
    obs.instance = watches.take_instance(&ns, &name);
    obs.nodes = watches.take_nodes(&ns, &name);
}

/// Makes the `Get` the round needs before deciding, if [`plan::fetch`] asks for one.
pub async fn observe(
    job: &Job,
    obs: &mut Observed,
    tracker: &dyn TrackerApi,
) -> Result<(), ClientError> {
    let Some(key) = plan::fetch(job, obs) else {
        return Ok(());
    };
    let by_task = matches!(key, JobKey::Task { .. });
    obs.tracker = match tracker.get(key).await {
        // Looked up by task id (a resource being deleted): only a job submitted for it counts.
        Ok(found) if by_task && !owned_by(&found, &job.uid().unwrap_or_default()) => {
            Tracker::Missing
        }
        Ok(found) => {
            obs.job_id = Some(found.job_id.clone());
            Tracker::Current(found)
        }
        Err(ClientError::NotFound(_)) => Tracker::Missing,
        Err(e) => return Err(e),
    };
    Ok(())
}

/// Carries out the plan's steps until it has nothing more to do, is blocked, or a call fails.
pub async fn apply(
    job: &Job,
    obs: &mut Observed,
    tracker: &dyn TrackerApi,
    watches: &Watches,
) -> Ending {
    for _ in 0..MAX_STEPS {
        let done = match plan::plan(job, obs) {
            Plan::Nothing => return Ending::Settled,
            Plan::Blocked(problem) => return Ending::Blocked(problem),
            Plan::Submit => submit(job, obs, false, tracker, watches).await,
            Plan::Replace => submit(job, obs, true, tracker, watches).await,
            Plan::Adopt => {
                obs.adopt();
                Ok(())
            }
            Plan::Suspend(id) => match request(obs, tracker.suspend(JobKey::Id(id))).await {
                Ok(current) => {
                    obs.tracker = Tracker::Current(current);
                    Ok(())
                }
                Err(ClientError::FailedPrecondition(m)) => {
                    obs.refused = Some(format!("suspend: {m}"));
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Plan::Resume(id) => request(obs, tracker.resume(JobKey::Id(id)))
                .await
                .map(|current| obs.tracker = Tracker::Current(current)),
            Plan::Cancel(id) => match request(obs, tracker.cancel(JobKey::Id(id))).await {
                Ok(current) => {
                    tracing::info!(job = %job.name_any(), job_id = %current.job_id, "cancelled");
                    obs.tracker = Tracker::Current(current);
                    Ok(())
                }
                // Gone, or finished meanwhile: nothing to cancel.
                Err(ClientError::NotFound(_) | ClientError::FailedPrecondition(_)) => {
                    obs.tracker = Tracker::Missing;
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = done {
            return Ending::Failed(e);
        }
    }
    Ending::Failed(ClientError::Unavailable(format!(
        "no settled answer from the trackers in {MAX_STEPS} steps"
    )))
}

/// Sends a suspend, resume or cancel: once per round, whatever it answers.
async fn request<T>(
    obs: &mut Observed,
    call: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    obs.requested = true;
    call.await
}

/// Submits the resource's job (with `replace_on_exist` to replace), then learns its state: from
/// the watch if it reported the job already, else with one `Get`. A "duplicate" answer is
/// followed by one `Get` of the job holding the task id, which the plan then adopts, replaces
/// or refuses.
async fn submit(
    job: &Job,
    obs: &mut Observed,
    replace: bool,
    tracker: &dyn TrackerApi,
    watches: &Watches,
) -> Result<(), ClientError> {
    let Ok(target) = &obs.spec else {
        return Ok(());
    };
    let mut spec = target.spec.clone();
    spec.replace_on_exist |= replace;
    let (job_id, how) = match tracker.submit(spec).await? {
        SubmitAnswer::Accepted { job_id } => (job_id, Submission::Accepted),
        SubmitAnswer::Replaced { job_id } => (job_id, Submission::Replaced),
        SubmitAnswer::Duplicate { job_id } => {
            obs.tracker = match tracker.get(JobKey::Id(job_id)).await {
                Ok(existing) => Tracker::Taken(existing),
                // Finished and dropped meanwhile: the next step submits again.
                Err(ClientError::NotFound(_)) => Tracker::Unasked,
                Err(e) => return Err(e),
            };
            return Ok(());
        }
        SubmitAnswer::Rejected(v) => {
            obs.tracker = Tracker::Rejected(
                v.0.iter()
                    .map(|f| format!("{}: {}", convert::spec_field(&f.field), f.reason))
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            return Ok(());
        }
    };
    tracing::info!(job = %job.name_any(), job_id = %job_id, answer = how.reason(), "submitted");
    obs.submission = Some(how);
    obs.job_id = Some(job_id.clone());
    obs.tracker = match watches.take_observed(&job_id) {
        Some(current) => Tracker::Current(current),
        None => match tracker.get(JobKey::Id(job_id)).await {
            Ok(current) => Tracker::Current(current),
            Err(ClientError::NotFound(_)) => Tracker::Missing,
            Err(e) => return Err(e),
        },
    };
    Ok(())
}
