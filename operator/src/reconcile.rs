//! What both controllers do around their own logic, in one place:
//!
//! * [`guarded`]: a reconcile of an object that does not deserialize becomes a Warning Event
//!   (`UnreadableObject`) and nothing else; [`timed`] counts and times a reconcile and resets
//!   the object's backoff when it succeeds.
//! * [`patch_status`]: `.status` written with server-side apply by [`MANAGER`], stamped with
//!   `observedGeneration`, and not written at all when nothing changed (so a reconcile caused
//!   by the controller's own status write writes nothing and ends there).
//! * [`conditions`]: the object's Conditions merged with the wanted ones, `lastTransitionTime`
//!   kept when a Condition's status did not change.
//! * [`conclude`]: how a reconcile ends, as an [`Outcome`]: settled; blocked on a [`Problem`]
//!   the user must fix (its Condition is in the status, a Warning Event says so the first time,
//!   and the object is looked at again after a fixed delay or on its next change); or failed
//!   (its Condition is in the status, the error goes to [`retry`], a per-object exponential
//!   backoff bounded at 5 minutes).
//!
//! The controllers build their statuses with pure functions; this module does the writing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::object::HasStatus;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::conditions::{self, Wanted};
use crate::metrics::ReconcileTimer;
use crate::{Context, Error, MANAGER, Result};

/// The status fields the helper reads and stamps.
pub trait StatusFields: Serialize + PartialEq + Send + Sync {
    /// The status's Conditions.
    fn conditions(&self) -> &[Condition];
    /// Records which `metadata.generation` the status describes.
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

/// A resource one of the controllers reconciles.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + HasStatus<Status: StatusFields>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The controller's name in metrics and logs (`nodegroup`, `job`).
    const CONTROLLER: &'static str;
    /// When an object that does not deserialize is looked at again after its Warning Event
    /// could not be published.
    const UNREADABLE_RETRY: Duration;
}

impl StatusFields for crate::crd::NodeGroupStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn set_observed_generation(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
    }
}

impl StatusFields for crate::crd::JobStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn set_observed_generation(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
    }
}

impl StatusFields for crate::crd::WorkflowStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn set_observed_generation(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
    }
}

impl Reconciled for crate::crd::Workflow {
    const CONTROLLER: &'static str = "workflow";
    const UNREADABLE_RETRY: Duration = crate::job::WATCHED_REFRESH;
}

impl Reconciled for crate::crd::NodeGroup {
    const CONTROLLER: &'static str = "nodegroup";
    const UNREADABLE_RETRY: Duration = crate::nodegroup::REFRESH;
}

impl Reconciled for crate::crd::Job {
    const CONTROLLER: &'static str = "job";
    const UNREADABLE_RETRY: Duration = crate::job::WATCHED_REFRESH;
}

/// A problem the user must fix (or wait out), such as an invalid spec or a missing cluster:
/// a Condition reason and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason (of the Condition and the Event).
    pub reason: &'static str,
    /// What to fix.
    pub message: String,
}

impl Problem {
    /// A problem with `reason` and `message`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// How a reconcile ends, besides the status it leaves.
#[derive(Debug)]
pub enum Outcome {
    /// Done; look again as the action says.
    Settled(Action),
    /// The object cannot go further until the user acts. The status holds the problem as the
    /// Condition `condition`; a Warning Event tells of it unless that Condition already did.
    Blocked {
        /// The problem.
        problem: Problem,
        /// The Condition type that carries it (and tells whether it was reported before).
        condition: &'static str,
        /// The Event's action (`Submit`, `Validate`).
        action: &'static str,
        /// When to look again (`await_change` when only an edit can help).
        then: Action,
    },
    /// A failure worth retrying (an unreachable tracker). The status holds it as a Condition;
    /// the error goes to the controller's error policy, [`retry`].
    Failed(Error),
}

/// `namespace/name` of `obj`: the key of its backoff and of other per-object bookkeeping.
pub fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// The key of `obj`'s failures in the shared [`crate::backoff::Backoff`]: a NodeGroup and a Job
/// of the same name back off apart.
fn backoff_key<K: Reconciled>(obj: &K) -> String {
    format!("{} {}", K::CONTROLLER, key(obj))
}

/// The Conditions of `obj`'s status merged with `wanted` at its generation:
/// `lastTransitionTime` only moves for a Condition whose status changes. Pure.
pub fn conditions<K: Reconciled>(obj: &K, wanted: &[Wanted], now: Timestamp) -> Vec<Condition> {
    let previous = obj
        .status()
        .map(StatusFields::conditions)
        .unwrap_or_default();
    conditions::merge(previous, wanted, obj.meta().generation, now)
}

/// Whether `conditions` already tell of `problem` through the Condition `type_` (same reason
/// and message), so its Warning Event was published before. Pure.
pub fn already_reported(conditions: &[Condition], type_: &str, problem: &Problem) -> bool {
    conditions::find(conditions, type_)
        .is_some_and(|c| c.reason == problem.reason && c.message == problem.message)
}

/// Writes `status` as `obj`'s `.status` (server-side apply by [`MANAGER`], forced), stamped
/// with `obj`'s `metadata.generation` as `observedGeneration`; writes nothing when `obj`
/// has that status already. Returns whether it wrote.
pub async fn patch_status<K: Reconciled>(
    client: &kube::Client,
    obj: &K,
    mut status: K::Status,
) -> Result<bool> {
    status.set_observed_generation(obj.meta().generation);
    if obj.status() == Some(&status) {
        return Ok(false);
    }
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(true)
}

/// Publishes an Event about `obj` (a Warning, or Normal); the Recorder folds repeats of the
/// same one into a series.
pub async fn publish<K>(
    ctx: &Context,
    obj: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: &str,
) -> Result<()>
where
    K: Resource<DynamicType = ()>,
{
    ctx.recorder
        .publish(
            &Event {
                type_: if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: reason.into(),
                note: Some(crate::nodegroup::truncate(note, 1000)),
                action: action.into(),
                secondary: None,
            },
            &obj.object_ref(&()),
        )
        .await?;
    Ok(())
}

/// Ends a reconcile of `obj`: the Warning Event of a new problem, the one status patch, then
/// the action to requeue with, or the error for [`retry`].
pub async fn conclude<K: Reconciled>(
    ctx: &Context,
    obj: &K,
    status: K::Status,
    outcome: Outcome,
) -> Result<Action> {
    if let Outcome::Blocked {
        problem,
        condition,
        action,
        ..
    } = &outcome
    {
        let previous = obj
            .status()
            .map(StatusFields::conditions)
            .unwrap_or_default();
        if !already_reported(previous, condition, problem) {
            tracing::info!(
                controller = K::CONTROLLER,
                object = %key(obj),
                reason = problem.reason,
                message = %problem.message,
                "blocked until the user acts"
            );
            ctx.recorder
                .publish(
                    &Event {
                        type_: EventType::Warning,
                        reason: problem.reason.into(),
                        note: Some(crate::nodegroup::truncate(&problem.message, 1000)),
                        action: (*action).into(),
                        secondary: None,
                    },
                    &obj.object_ref(&()),
                )
                .await?;
        }
    }
    patch_status(&ctx.client, obj, status).await?;
    match outcome {
        Outcome::Settled(action) | Outcome::Blocked { then: action, .. } => Ok(action),
        Outcome::Failed(e) => Err(e),
    }
}

/// Runs `work`, one reconcile of `obj`: counted and timed, and on success the object's backoff
/// is reset.
pub async fn timed<K: Reconciled>(
    obj: &K,
    ctx: &Context,
    work: impl Future<Output = Result<Action>>,
) -> Result<Action> {
    let _timer = ReconcileTimer::start(K::CONTROLLER);
    if obj.meta().namespace.is_none() {
        return Err(Error::MissingField("metadata.namespace"));
    }
    let action = work.await?;
    ctx.backoff.succeeded(&backoff_key(obj));
    Ok(action)
}

/// Runs `reconcile` on an object that deserializes; one that does not gets a Warning Event
/// (`UnreadableObject`) and is left until it changes.
pub async fn guarded<K, F, Fut>(
    obj: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action>
where
    K: Reconciled,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>>,
{
    match &obj.0 {
        Ok(o) => reconcile(Arc::new(o.clone()), ctx).await,
        Err(_) => {
            ctx.report_unreadable(&obj).await?;
            Ok(Action::await_change())
        }
    }
}

/// The error policy of both controllers: counts the failure and retries the object with its
/// own exponential backoff (1 s doubling to 5 min; reset by a success).
pub fn retry<K: Reconciled>(obj: &K, err: &Error, ctx: &Context) -> Action {
    crate::metrics::reconcile_failed(K::CONTROLLER, err);
    let key = key(obj);
    let delay = ctx.backoff.failed(&backoff_key(obj));
    tracing::warn!(
        controller = K::CONTROLLER,
        object = %key,
        error = %err,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// [`retry`] for the controllers' guarded objects.
pub fn retry_guarded<K: Reconciled>(
    obj: Arc<DeserializeGuard<K>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    match &obj.0 {
        Ok(o) => retry(o, err, &ctx),
        Err(_) => {
            crate::metrics::reconcile_failed(K::CONTROLLER, err);
            Action::requeue(K::UNREADABLE_RETRY)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{JobStatus, NodeRole};
    use crate::fixtures::{FakeTracker, Step, context, finish, job, nodegroup, status_of};

    const STATUS: &str = "/apis/lts.io/v1alpha1/namespaces/lts/jobs/mail/status";

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn a_problem_is_reported_once_per_reason_and_message() {
        let p = Problem::new("InvalidSpec", "spec.x: bad");
        let c = conditions::merge(
            &[],
            &[Wanted::new("Submitted", false, p.reason, p.message.clone())],
            Some(1),
            t(1),
        );
        assert!(already_reported(&c, "Submitted", &p));
        assert!(!already_reported(&c, "Synced", &p), "another type");
        assert!(!already_reported(
            &c,
            "Submitted",
            &Problem::new("InvalidSpec", "spec.y: bad")
        ));
        assert!(!already_reported(
            &c,
            "Submitted",
            &Problem::new("ClusterNotFound", "spec.x: bad")
        ));
        assert!(!already_reported(&[], "Submitted", &p));
    }

    #[test]
    fn conditions_keep_their_transition_time_and_take_the_generation() {
        let mut j = job("mail");
        j.metadata.generation = Some(4);
        let first = conditions(&j, &[Wanted::new("Synced", true, "Mirrored", "a")], t(10));
        assert_eq!(first[0].observed_generation, Some(4));
        let j = j.with_status(JobStatus {
            conditions: first,
            ..JobStatus::default()
        });
        let same = conditions(&j, &[Wanted::new("Synced", true, "Mirrored", "b")], t(20));
        assert_eq!(same[0].last_transition_time.0, t(10));
        let flipped = conditions(&j, &[Wanted::new("Synced", false, "Down", "")], t(20));
        assert_eq!(flipped[0].last_transition_time.0, t(20));
    }

    #[tokio::test]
    async fn a_status_is_stamped_with_the_generation_and_written_only_when_it_changed() {
        let mut j = job("mail");
        j.metadata.generation = Some(3);
        let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
        let verifier = api.run(vec![Step::status(STATUS, &j)]);
        let status = JobStatus {
            job_id: Some("J1".into()),
            ..JobStatus::default()
        };
        assert!(patch_status(&ctx.client, &j, status.clone()).await.unwrap());
        let calls = finish(verifier).await;
        let written: JobStatus = status_of(&calls[0]);
        assert_eq!(written.observed_generation, Some(3));
        assert_eq!(calls[0].body["kind"], "Job");

        // The object has it now: nothing to write (the mock would fail any request).
        let j = j.with_status(written);
        let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
        let verifier = api.run(vec![]);
        assert!(!patch_status(&ctx.client, &j, status).await.unwrap());
        finish(verifier).await;
    }

    #[tokio::test]
    async fn a_blocked_object_gets_one_event_then_its_status() {
        let j = job("mail");
        let problem = Problem::new("InvalidSpec", "spec.x: bad");
        let blocked = |p: &Problem| Outcome::Blocked {
            problem: p.clone(),
            condition: "Submitted",
            action: "Submit",
            then: Action::await_change(),
        };
        let status = JobStatus {
            conditions: conditions(
                &j,
                &[Wanted::new(
                    "Submitted",
                    false,
                    problem.reason,
                    &problem.message,
                )],
                t(1),
            ),
            ..JobStatus::default()
        };
        let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
        let verifier = api.run(vec![Step::event(), Step::status(STATUS, &j)]);
        let action = conclude(&ctx, &j, status.clone(), blocked(&problem))
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
        let calls = finish(verifier).await;
        assert_eq!(calls[0].body["type"], "Warning");
        assert_eq!(calls[0].body["reason"], "InvalidSpec");
        assert_eq!(calls[0].body["action"], "Submit");

        // Reported already: no Event, and the same status is not written again.
        let mut written = status;
        written.observed_generation = j.metadata.generation;
        let j = j.with_status(written.clone());
        let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
        let verifier = api.run(vec![]);
        conclude(&ctx, &j, written, blocked(&problem))
            .await
            .unwrap();
        finish(verifier).await;
    }

    #[tokio::test]
    async fn a_failure_writes_its_status_then_returns_the_error_for_the_backoff() {
        let j = job("mail");
        let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
        let verifier = api.run(vec![Step::status(STATUS, &j)]);
        let err = conclude(
            &ctx,
            &j,
            JobStatus::default(),
            Outcome::Failed(Error::TrackerUnavailable("down".into())),
        )
        .await
        .unwrap_err();
        assert_eq!(err.metric_label(), "tracker_unavailable");
        finish(verifier).await;
        let delays: Vec<_> = (0..3).map(|_| retry(&j, &err, &ctx)).collect();
        assert_eq!(
            delays,
            [1, 2, 4].map(|s| Action::requeue(Duration::from_secs(s)))
        );
        // A success resets it.
        timed(&j, &ctx, async { Ok(Action::await_change()) })
            .await
            .unwrap();
        assert_eq!(
            retry(&j, &err, &ctx),
            Action::requeue(Duration::from_secs(1))
        );
        // A NodeGroup of the same name has a backoff of its own.
        let ng = nodegroup("mail", NodeRole::JobTracker);
        assert_eq!(
            retry(&ng, &err, &ctx),
            Action::requeue(Duration::from_secs(1))
        );
    }
}
