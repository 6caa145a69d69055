//! The Job controller. Inside a finalizer:
//!
//! * **Apply**: resolve the cluster → map the spec to an LTS job → submit it to the cluster's
//!   trackers unless this exact spec was submitted before → suspend/resume as `spec.suspend`
//!   says → mirror the tracker's state into the status.
//! * **Cleanup**: cancel the job on the tracker, then let the resource go.
//!
//! Submits are idempotent: the resource's uid travels in the job's params (`lts.io/uid`), the
//! task id defaults to `k8s-<uid>`, a job submitted before a lost status write is adopted, and a
//! duplicate answer returns the existing job. Status follows the trackers through a job watch
//! ([`Watches`]); problems the user must fix become Conditions and Events, tracker outages are
//! errors retried with backoff.

pub mod convert;
pub mod watches;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use lts_core::{JobKey, JobState};
use lts_worker_sdk::{ClientError, SubmitAnswer};
use serde_json::json;

pub use watches::Watches;

use crate::conditions::{self, Wanted};
use crate::crd::{Job, JobPhase, JobStatus, NodeGroup};
use crate::metrics::ReconcileTimer;
use crate::nodegroup::validate::service_address;
use crate::tracker::TrackerApi;
use crate::{Context, Error, MANAGER, Result};
use convert::{Problem, owned_by, resolve_cluster, spec_hash};

const CONTROLLER: &str = "job";

/// The finalizer that cancels the tracker job before the resource goes.
pub const FINALIZER: &str = "lts.io/job-cleanup";
/// Unfinished jobs are re-read this often when their cluster's watch is not streaming.
pub const FALLBACK_REFRESH: Duration = Duration::from_secs(30);
/// … and this rarely when it is (a safety net; the watch drives the status).
pub const WATCHED_REFRESH: Duration = Duration::from_secs(600);
/// A Job whose cluster is missing is looked at again after this long.
pub const CLUSTER_RETRY: Duration = Duration::from_secs(30);

/// Reconciles one Job.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ReconcileTimer::start(CONTROLLER);
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let key = format!("{ns}/{}", job.name_any());
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let action = finalizer(&api, FINALIZER, job, |event| async {
        match event {
            Event::Apply(job) => apply(job, ctx.clone()).await,
            Event::Cleanup(job) => cleanup(job, ctx.clone()).await,
        }
    })
    .await
    .map_err(Error::from)?;
    ctx.backoff.succeeded(&key);
    Ok(action)
}

/// Retries a failed reconcile with per-object exponential backoff.
pub fn error_policy(job: Arc<Job>, err: &Error, ctx: Arc<Context>) -> Action {
    crate::metrics::reconcile_failed(CONTROLLER, err);
    let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    let delay = ctx.backoff.failed(&key);
    tracing::warn!(job = %key, error = %err, retry_in = ?delay, "Job reconcile failed");
    Action::requeue(delay)
}

fn nodegroups(ctx: &Context) -> Vec<NodeGroup> {
    ctx.valid_nodegroups()
}

async fn apply(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let previous = job.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = job.metadata.generation;

    let cluster = match resolve_cluster(&job, &nodegroups(&ctx)) {
        Ok(c) => c,
        Err(p) => return blocked(&job, &ctx, status, p, Action::requeue(CLUSTER_RETRY)).await,
    };
    status.cluster = Some(cluster.cluster.clone());
    let spec = match convert::to_lts_spec(&job) {
        Ok(s) => s,
        Err(problems) => {
            let p = Problem {
                reason: "InvalidSpec",
                message: problems.join("; "),
            };
            return blocked(&job, &ctx, status, p, Action::await_change()).await;
        }
    };
    let hash = spec_hash(&spec);
    if convert::is_final(previous.phase) && previous.submitted_hash.as_deref() == Some(&hash) {
        // A finished job never changes again (and the tracker may have dropped it after its
        // retention): nothing to ask.
        write_status(&job, &ctx, status).await?;
        return Ok(Action::await_change());
    }
    let address = service_address(&cluster.job_tracker, &ns);
    let tracker = ctx.trackers.tracker(&address)?;
    let submit_group = spec.submit_node_group.clone();
    ctx.watches.ensure(&address, &submit_group, tracker.clone());

    match sync(&job, &previous, spec, &hash, &*tracker, &ctx.watches).await {
        Ok(synced) => {
            convert::mirror(&mut status, &synced.job);
            if let Some(instance) = ctx.watches.take_instance(&ns, &job.name_any())
                && convert::is_instance_of(&instance, &synced.job.spec.task_id)
            {
                convert::mirror_instance(&mut status, &instance);
            }
            status.submitted_hash = Some(hash);
            let submitted_reason = synced.submitted.map(str::to_string).unwrap_or_else(|| {
                conditions::find(&previous.conditions, "Submitted")
                    .filter(|c| c.status == "True")
                    .map(|c| c.reason.clone())
                    .unwrap_or_else(|| "Submitted".into())
            });
            let synced_cond = match &synced.note {
                Some(note) => Wanted::new("Synced", false, "SuspendRefused", note.clone()),
                None => Wanted::new(
                    "Synced",
                    true,
                    "Mirrored",
                    format!("status mirrors the tracker's job {}", synced.job.job_id),
                ),
            };
            status.conditions = conditions::merge(
                &previous.conditions,
                &[
                    Wanted::new(
                        "Submitted",
                        true,
                        submitted_reason,
                        format!(
                            "job {} (task {}) on cluster {}",
                            synced.job.job_id, synced.job.spec.task_id, cluster.cluster
                        ),
                    ),
                    synced_cond,
                ],
                job.metadata.generation,
                Timestamp::now(),
            );
            write_status(&job, &ctx, status.clone()).await?;
            Ok(if convert::is_final(status.phase) {
                Action::await_change()
            } else if ctx.watches.is_live(&address, &submit_group) {
                Action::requeue(WATCHED_REFRESH)
            } else {
                Action::requeue(FALLBACK_REFRESH)
            })
        }
        Err(SyncError::Problem(p)) => blocked(&job, &ctx, status, p, Action::await_change()).await,
        Err(SyncError::Client(e)) => {
            let reason = if e.is_retryable() {
                "TrackerUnavailable"
            } else {
                "TrackerError"
            };
            if status.job_id.is_none() {
                status.phase = Some(JobPhase::Pending);
            }
            status.conditions = conditions::merge(
                &previous.conditions,
                &[Wanted::new(
                    "Synced",
                    false,
                    reason,
                    format!("cluster {} at {address}: {e}", cluster.cluster),
                )],
                job.metadata.generation,
                Timestamp::now(),
            );
            write_status(&job, &ctx, status).await?;
            Err(e.into())
        }
    }
}

/// What one round with the tracker produced.
struct Synced {
    /// The job as the tracker holds it now.
    job: lts_core::Job,
    /// Why it was (re)submitted in this round, if it was.
    submitted: Option<&'static str>,
    /// A request the tracker refused (e.g. suspending a job that cannot be suspended).
    note: Option<String>,
}

enum SyncError {
    Problem(Problem),
    Client(ClientError),
}

impl From<ClientError> for SyncError {
    fn from(e: ClientError) -> Self {
        SyncError::Client(e)
    }
}

async fn sync(
    job: &Job,
    previous: &JobStatus,
    spec: lts_core::JobSpec,
    hash: &str,
    tracker: &dyn TrackerApi,
    watches: &Watches,
) -> Result<Synced, SyncError> {
    let uid = job.uid().unwrap_or_default();
    let mut submitted = None;
    let mut observed = None;
    let mut job_id = previous.job_id.clone();
    // A changed spec replaces the unfinished job it was submitted as.
    let mut replace = previous.job_id.is_some();
    if previous.submitted_hash.as_deref() != Some(hash) || job_id.is_none() {
        if job_id.is_none() {
            // A submit whose status write was lost (an operator restart): adopt, never repeat.
            match tracker
                .get(JobKey::Task {
                    node_group: spec.task_tracker_node_group.clone(),
                    task_id: spec.task_id.clone(),
                })
                .await
            {
                Ok(existing) if owned_by(&existing, &uid) => {
                    if spec_hash(&existing.spec) == hash {
                        job_id = Some(existing.job_id.clone());
                        submitted = Some("Adopted");
                        observed = Some(existing);
                    } else {
                        replace = !existing.state.is_final();
                    }
                }
                Ok(_) | Err(ClientError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if submitted.is_none() {
            let mut to_submit = spec.clone();
            to_submit.replace_on_exist |= replace;
            let (id, reason) = match tracker.submit(to_submit).await? {
                SubmitAnswer::Accepted { job_id } => (job_id, "Accepted"),
                SubmitAnswer::Replaced { job_id } => (job_id, "Replaced"),
                SubmitAnswer::Duplicate { job_id } => {
                    let existing = tracker.get(JobKey::Id(job_id.clone())).await?;
                    if !owned_by(&existing, &uid) {
                        return Err(SyncError::Problem(Problem {
                            reason: "TaskIdConflict",
                            message: format!(
                                "task id {:?} of node group {:?} is taken by job {job_id}, which another client submitted; choose another spec.taskId or set replaceOnExist",
                                spec.task_id, spec.task_tracker_node_group
                            ),
                        }));
                    }
                    observed = Some(existing);
                    (job_id, "Duplicate")
                }
                SubmitAnswer::Rejected(v) => {
                    return Err(SyncError::Problem(Problem {
                        reason: "InvalidSpec",
                        message: v
                            .0
                            .iter()
                            .map(|f| format!("{}: {}", convert::spec_field(&f.field), f.reason))
                            .collect::<Vec<_>>()
                            .join("; "),
                    }));
                }
            };
            tracing::info!(job = %job.name_any(), job_id = %id, answer = reason, "submitted");
            job_id = Some(id);
            submitted = Some(reason);
        }
    }
    let id = job_id.unwrap_or_default();
    let cached = watches.take_observed(&id);
    let mut current = match observed.or(cached) {
        Some(j) => j,
        None => match tracker.get(JobKey::Id(id.clone())).await {
            Ok(j) => j,
            Err(ClientError::NotFound(_)) => {
                return Err(SyncError::Problem(Problem {
                    reason: "JobNotFound",
                    message: format!(
                        "the trackers no longer have job {id}; change the spec to submit it again"
                    ),
                }));
            }
            Err(e) => return Err(e.into()),
        },
    };
    let mut note = None;
    if job.spec.suspend && !current.state.is_final() && current.state != JobState::Suspended {
        match tracker.suspend(JobKey::Id(id.clone())).await {
            Ok(j) => current = j,
            Err(ClientError::FailedPrecondition(m)) => note = Some(format!("suspend: {m}")),
            Err(e) => return Err(e.into()),
        }
    } else if !job.spec.suspend && current.state == JobState::Suspended {
        current = tracker.resume(JobKey::Id(id.clone())).await?;
    }
    Ok(Synced {
        job: current,
        submitted,
        note,
    })
}

/// The Job cannot go (further) to the tracker until the user acts: a Condition, an Event
/// when the problem is new, and no error (nothing to retry).
async fn blocked(
    job: &Job,
    ctx: &Context,
    mut status: JobStatus,
    problem: Problem,
    action: Action,
) -> Result<Action> {
    let previous = job.status.clone().unwrap_or_default();
    let known = conditions::find(&previous.conditions, "Submitted").is_some_and(|c| {
        c.status == "False" && c.reason == problem.reason && c.message == problem.message
    });
    if !known {
        tracing::info!(job = %job.name_any(), reason = problem.reason, message = %problem.message, "Job blocked");
        ctx.recorder
            .publish(
                &KubeEvent {
                    type_: EventType::Warning,
                    reason: problem.reason.into(),
                    note: Some(crate::nodegroup::truncate(&problem.message, 1000)),
                    action: "Submit".into(),
                    secondary: None,
                },
                &job.object_ref(&()),
            )
            .await?;
    }
    if status.job_id.is_none() {
        status.phase = Some(JobPhase::Pending);
    }
    status.conditions = conditions::merge(
        &previous.conditions,
        &[Wanted::new(
            "Submitted",
            false,
            problem.reason,
            problem.message,
        )],
        job.metadata.generation,
        Timestamp::now(),
    );
    write_status(job, ctx, status).await?;
    Ok(action)
}

async fn cleanup(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let status = job.status.clone().unwrap_or_default();
    if convert::is_final(status.phase) {
        return Ok(Action::await_change());
    }
    let cluster = match resolve_cluster(&job, &nodegroups(&ctx)) {
        Ok(c) => c,
        Err(p) => {
            // The cluster is gone: there is nothing left to cancel.
            tracing::info!(job = %job.name_any(), reason = p.reason, "no cluster to cancel the job on");
            return Ok(Action::await_change());
        }
    };
    let tracker = ctx
        .trackers
        .tracker(&service_address(&cluster.job_tracker, &ns))?;
    let uid = job.uid().unwrap_or_default();
    let key = match status.job_id {
        Some(id) => JobKey::Id(id),
        None => {
            let Some(task_id) = convert::task_id(&job) else {
                return Ok(Action::await_change());
            };
            match tracker
                .get(JobKey::Task {
                    node_group: job.spec.task_tracker_node_group.clone(),
                    task_id,
                })
                .await
            {
                Ok(j) if owned_by(&j, &uid) => JobKey::Id(j.job_id),
                Ok(_) | Err(ClientError::NotFound(_)) => return Ok(Action::await_change()),
                Err(e) => return Err(e.into()),
            }
        }
    };
    match tracker.cancel(key.clone()).await {
        Ok(j) => tracing::info!(job = %job.name_any(), job_id = %j.job_id, "cancelled"),
        // Gone, or finished meanwhile: nothing to cancel.
        Err(ClientError::NotFound(_) | ClientError::FailedPrecondition(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

async fn write_status(job: &Job, ctx: &Context, status: JobStatus) -> Result<()> {
    if job.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": Job::api_version(&()),
        "kind": Job::kind(&()),
        "status": status,
    });
    api.patch_status(
        &job.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// [`reconcile`] for objects that deserialize; the others get a Warning Event.
pub async fn reconcile_guarded(
    obj: Arc<DeserializeGuard<Job>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    match &obj.0 {
        Ok(job) => reconcile(Arc::new(job.clone()), ctx).await,
        Err(_) => {
            ctx.report_unreadable(&obj).await?;
            Ok(Action::await_change())
        }
    }
}

fn error_policy_guarded(obj: Arc<DeserializeGuard<Job>>, err: &Error, ctx: Arc<Context>) -> Action {
    match &obj.0 {
        Ok(job) => error_policy(Arc::new(job.clone()), err, ctx),
        Err(_) => {
            crate::metrics::reconcile_failed(CONTROLLER, err);
            Action::requeue(WATCHED_REFRESH)
        }
    }
}

/// Runs the Job controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = Controller::new(
        ctx.api::<DeserializeGuard<Job>>(),
        watcher::Config::default(),
    );
    ctx.watches.set_store(controller.store());
    let controller = match ctx.watches.take_trigger() {
        Some(trigger) => controller.reconcile_on(trigger.map(|r| {
            let mut guarded = ObjectRef::<DeserializeGuard<Job>>::new(&r.name);
            if let Some(ns) = &r.namespace {
                guarded = guarded.within(ns);
            }
            guarded
        })),
        None => controller,
    };
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile_guarded, error_policy_guarded, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "Job controller");
            }
        })
        .await;
    ctx.watches.stop();
}

#[cfg(test)]
mod real_tracker;
#[cfg(test)]
mod tests;
