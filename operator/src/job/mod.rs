//! The Job controller: observe → plan → apply → status → one status patch, inside a finalizer.
//!
//! * **Observe** ([`apply::news`], [`apply::observe`]): the resource, its cluster (from the
//!   NodeGroup store) and the job it submits ([`plan::Observed`]); what the trackers' watch
//!   delivered since the last round; and a `Get` only when [`plan::fetch`] says one is due.
//! * **Plan** ([`plan::plan`], pure): the next step — submit, replace, adopt, suspend, resume,
//!   cancel, or nothing — asked again after each answer.
//! * **Apply** ([`apply::apply`]): the steps, against the cluster's trackers.
//! * **Status** ([`status::status`], pure) and one patch through [`crate::reconcile`], which also
//!   publishes the Warning Event of a new problem and hands a failure to the backoff.
//!
//! A new Job is submitted straight away; submits are idempotent (the resource's uid travels in
//! the job's params as `lts.io/uid`, the task id defaults to `k8s-<uid>`), so a job submitted
//! before a lost status write is answered "duplicate", read once and adopted. The tracker is
//! asked only when something is due: the spec changed, a change arrived from the watch (which
//! needs no call), or the refresh timer ran out ([`plan::is_due`]); a reconcile caused by the
//! controller's own status write asks nothing and writes nothing. Deleting the resource cancels
//! its job.

pub mod apply;
pub mod convert;
pub mod plan;
pub mod status;
pub mod watches;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

pub use watches::Watches;

use crate::crd::Job;
use crate::reconcile::{self, Outcome};
use crate::{Context, Error, Result};
use plan::{Observed, Tracker};
use status::Ending;

/// The finalizer that cancels the tracker job before the resource goes.
pub const FINALIZER: &str = "lts.io/job-cleanup";
/// Unfinished jobs are re-read this often when their cluster's watch is not streaming.
pub const FALLBACK_REFRESH: Duration = Duration::from_secs(30);
/// … and this rarely when it is (a safety net; the watch drives the status).
pub const WATCHED_REFRESH: Duration = Duration::from_secs(600);
/// A Job whose cluster is missing is looked at again after this long.
pub const CLUSTER_RETRY: Duration = Duration::from_secs(30);
/// Annotation: `"true"` deletes the resource without cancelling its job on the trackers.
pub const SKIP_CANCEL: &str = "lts.io/skip-cancel";
/// How long a deleted Job keeps trying to cancel its job before it lets go (default of the
/// operator's `--cancel-timeout`).
pub const DEFAULT_CANCEL_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a deleted Job lets go without its job cancelled: skipped by the user, or the trackers
/// could not be reached within the cancel timeout. `None`: keep trying. Pure.
pub fn let_go(
    job: &Job,
    now: Timestamp,
    timeout: Duration,
    error: &str,
) -> Option<(&'static str, String)> {
    let id = job
        .status
        .as_ref()
        .and_then(|s| s.job_id.clone())
        .unwrap_or_else(|| "(not yet known)".into());
    if job.annotations().get(SKIP_CANCEL).map(String::as_str) == Some("true") {
        return Some((
            "CancelSkipped",
            format!(
                "deleted without cancelling job {id} on the trackers ({SKIP_CANCEL}); it may still run"
            ),
        ));
    }
    let since = job.metadata.deletion_timestamp.as_ref()?.0;
    let waited = now.duration_since(since);
    let waited = Duration::try_from(waited).unwrap_or_default();
    (waited >= timeout).then(|| {
        (
            "CancelAbandoned",
            format!(
                "could not cancel job {id} on the trackers for {} ({error}); the resource goes, the job may still run: cancel it with `lts jobs cancel {id}` once its trackers are back",
                lts_core::duration::format_ms(timeout.as_millis() as u64)
            ),
        )
    })
}

/// Reconciles one Job.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let work = finalizer(&api, FINALIZER, job.clone(), |event| async {
        match event {
            Event::Apply(job) => apply(job, ctx.clone()).await,
            Event::Cleanup(job) => cleanup(job, ctx.clone()).await,
        }
    });
    reconcile::timed(&*job, &ctx, async { work.await.map_err(Error::from) }).await
}

/// Retries a failed reconcile with per-object exponential backoff.
pub fn error_policy(job: Arc<Job>, err: &Error, ctx: Arc<Context>) -> Action {
    reconcile::retry(&*job, err, &ctx)
}

/// One round of a Job that is not being deleted.
async fn apply(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let key = reconcile::key(&*job);
    let since_read = ctx.watches.since_read(&key);
    let mut obs = Observed::new(&job, &ctx.valid_nodegroups(), false);
    apply::news(&job, &mut obs, &ctx.watches);
    let route = plan::target(&obs).map(|(cluster, target)| {
        (
            cluster.job_tracker.clone(),
            target.spec.submit_node_group.clone(),
        )
    });
    let mut every = FALLBACK_REFRESH;
    let ending = match route {
        Err(problem) => Ending::Blocked(problem),
        Ok((job_tracker, group)) => {
            let (address, tracker) = ctx.tracker(&ns, &job_tracker).await?;
            ctx.watches.ensure(&address, &group, tracker.clone());
            every = plan::refresh_every(ctx.watches.is_live(&address, &group));
            obs.due = plan::is_due(&job, since_read, every);
            match apply::observe(&job, &mut obs, &*tracker).await {
                Ok(()) => apply::apply(&job, &mut obs, &*tracker, &ctx.watches).await,
                Err(e) => Ending::Failed(e),
            }
        }
    };
    let read = !matches!(ending, Ending::Failed(_)) && obs.tracker != Tracker::Unasked;
    if matches!(ending, Ending::Failed(_)) {
        // Whatever happened on the tracker is unknown: the next round reads it.
        ctx.watches.mark_stale(&key);
    } else if read {
        ctx.watches.mark_read(&key);
    }
    let status = status::status(&job, &obs, &ending, Timestamp::now());
    let before = job.status.clone().unwrap_or_default();
    if let Some((warning, reason, note)) = status::lifecycle_event(&before, &status) {
        publish(&ctx, &job, warning, reason, note).await?;
    }
    let outcome = match ending {
        Ending::Settled => Outcome::Settled(plan::next_look(
            &status,
            every,
            if read { None } else { since_read },
        )),
        Ending::Blocked(problem) => Outcome::Blocked {
            then: plan::then(&obs),
            problem,
            condition: "Submitted",
            action: "Submit",
        },
        Ending::Failed(e) => Outcome::Failed(e.into()),
    };
    reconcile::conclude(&ctx, &*job, status, outcome).await
}

/// A Job being deleted: cancel its job on the tracker, then let the resource go. The finalizer
/// stays while the cancel fails, for at most the cancel timeout; `lts.io/skip-cancel: "true"`
/// lets go at once. Letting go without a cancel is a Warning Event.
async fn cleanup(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    if let Some((reason @ "CancelSkipped", note)) =
        let_go(&job, Timestamp::now(), ctx.cancel_timeout, "skipped")
    {
        return warn_and_let_go(&job, &ctx, reason, note).await;
    }
    match cancel(job.clone(), ctx.clone()).await {
        Ok(action) => Ok(action),
        Err(e) => match let_go(&job, Timestamp::now(), ctx.cancel_timeout, &e.to_string()) {
            Some((reason, note)) => warn_and_let_go(&job, &ctx, reason, note).await,
            None => Err(e),
        },
    }
}

async fn warn_and_let_go(job: &Job, ctx: &Context, reason: &str, note: String) -> Result<Action> {
    tracing::warn!(job = %reconcile::key(job), reason, message = %note, "letting a deleted Job go without cancelling its job");
    publish(ctx, job, true, reason, note).await?;
    Ok(Action::await_change())
}

/// An Event about `job` (the Recorder folds repeats of the same one into a series).
async fn publish(
    ctx: &Context,
    job: &Job,
    warning: bool,
    reason: &str,
    note: String,
) -> Result<()> {
    reconcile::publish(ctx, job, warning, reason, "Reconcile", &note).await
}

/// Cancels the deleted Job's unfinished job on its cluster's trackers.
async fn cancel(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action> {
    let ns = job
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    ctx.watches.mark_stale(&reconcile::key(&*job));
    let mut obs = Observed::new(&job, &ctx.valid_nodegroups(), false);
    if plan::plan(&job, &obs) == plan::Plan::Nothing && plan::fetch(&job, &obs).is_none() {
        // Finished, or no cluster to cancel it on.
        if let Err(p) = &obs.cluster {
            tracing::info!(job = %job.name_any(), reason = p.reason, "no cluster to cancel the job on");
        }
        return Ok(Action::await_change());
    }
    let Ok(cluster) = &obs.cluster else {
        return Ok(Action::await_change());
    };
    let (_, tracker) = ctx.tracker(&ns, &cluster.job_tracker).await?;
    apply::news(&job, &mut obs, &ctx.watches);
    apply::observe(&job, &mut obs, &*tracker).await?;
    match apply::apply(&job, &mut obs, &*tracker, &ctx.watches).await {
        Ending::Failed(e) => Err(e.into()),
        Ending::Settled | Ending::Blocked(_) => Ok(Action::await_change()),
    }
}

/// [`reconcile`] for objects that deserialize; the others get a Warning Event.
pub async fn reconcile_guarded(
    obj: Arc<DeserializeGuard<Job>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    reconcile::guarded(obj, ctx, reconcile).await
}

/// What the Job controller yields per finished reconcile.
pub type ReconcileResult = std::result::Result<
    (ObjectRef<DeserializeGuard<Job>>, Action),
    kube::runtime::controller::Error<Error, watcher::Error>,
>;

/// The Job controller: every Job of the watched namespaces, reconciled when it changes (its own
/// status writes included), when the trackers' watch reports a change of its job, and when its
/// requeue timer runs out. Yields each finished reconcile; ends once `shutdown` resolved.
pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> impl futures::Stream<Item = ReconcileResult> + Send {
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
    controller.graceful_shutdown_on(shutdown).run(
        reconcile_guarded,
        reconcile::retry_guarded::<Job>,
        ctx,
    )
}

/// Runs the Job controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller(ctx.clone(), shutdown)
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
