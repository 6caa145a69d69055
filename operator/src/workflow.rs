//! The Workflow controller: a [`Workflow`] runs through a [`Job`] of the same name that it owns.
//!
//! * **Build** ([`job_for`], pure): the Job — the Workflow's graph as `spec.workflow`, its
//!   schedule and policies — with the Workflow as its controlling owner, so that deleting the
//!   Workflow deletes the Job (the garbage collector), whose finalizer cancels the run on the
//!   trackers. The Job controller does the rest: submit, watch, cancel.
//! * **Apply**: the Job is read, and written (server-side apply) only when it differs from the
//!   one built; a Job of that name that is not the Workflow's is left alone and the Workflow is
//!   blocked on it (`JobApplied` False, `JobNameTaken`).
//! * **Status** ([`status`], pure): the Job's status — phase, node counts and every node's
//!   phase — with its Conditions naming the Workflow's fields (`spec.nodes[1]`, not
//!   `spec.workflow.nodes[1]`), and one status patch through [`crate::reconcile`].
//!
//! The controller watches the Jobs it owns, so a change of a node's phase reaches the Workflow
//! as soon as the Job controller writes it.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::conditions::{self, Wanted};
use crate::crd::{Job, JobPhase, JobSpec, Workflow, WorkflowSpec, WorkflowStatus};
use crate::reconcile::{self, Outcome, Problem};
use crate::{Context, Error, MANAGER, Result};

/// The Condition that says whether the Workflow's Job is in place.
pub const JOB_APPLIED: &str = "JobApplied";
/// The label on a Workflow's Job that names the Workflow.
pub const WORKFLOW_LABEL: &str = "lts.io/workflow";
/// The Job's Conditions that the Workflow shows as its own.
const MIRRORED: [&str; 2] = ["Submitted", "Synced"];

/// The Job that runs `wf`: same name and namespace, controlled by `wf`. Pure.
pub fn job_for(wf: &Workflow) -> Result<Job> {
    let owner = wf
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let s = &wf.spec;
    let mut job = Job::new(
        &wf.name_any(),
        JobSpec {
            cluster: s.cluster.clone(),
            task_id: None,
            task_tracker_node_group: s.task_tracker_node_group.clone(),
            submit_node_group: s.submit_node_group.clone(),
            priority: s.priority,
            params: BTreeMap::new(),
            need_feedback: s.need_feedback,
            max_retries: 0,
            max_lease_losses: None,
            timeout_seconds: None,
            schedule: s.schedule.clone(),
            rely_on_prev_cycle: s.rely_on_prev_cycle,
            replace_on_exist: false,
            misfire_policy: s.misfire_policy,
            concurrency_policy: s.concurrency_policy,
            max_concurrent: s.max_concurrent,
            shards: None,
            broadcast: false,
            affinity: BTreeMap::new(),
            route_key: None,
            map_reduce: None,
            workflow: Some(WorkflowSpec {
                nodes: s.nodes.clone(),
                edges: s.edges.clone(),
            }),
            suspend: s.suspend,
        },
    );
    job.metadata.namespace = wf.namespace();
    job.metadata.owner_references = Some(vec![owner]);
    job.metadata.labels = Some(BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGER.to_string(),
        ),
        (WORKFLOW_LABEL.to_string(), wf.name_any()),
    ]));
    Ok(job)
}

/// Whether `job` is controlled by `wf` (its controlling owner reference has `wf`'s uid).
pub fn owned_by(job: &Job, wf: &Workflow) -> bool {
    let uid = wf.metadata.uid.as_deref();
    job.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// Whether the Job as it is (`have`) already is the one built (`want`): same spec, and the
/// labels and owner of the built one.
pub fn up_to_date(have: &Job, want: &Job) -> bool {
    have.spec == want.spec
        && want
            .labels()
            .iter()
            .all(|(k, v)| have.labels().get(k) == Some(v))
        && want
            .owner_references()
            .iter()
            .all(|o| have.owner_references().contains(o))
}

/// A Job Condition's message in the Workflow's terms: the graph is the Workflow's `spec`.
fn in_workflow_terms(message: &str) -> String {
    message.replace("spec.workflow.", "spec.")
}

/// The Workflow's status: its Job's (`None`: not there yet), and `JobApplied` from `applied`.
/// Pure.
pub fn status(
    wf: &Workflow,
    job: Option<&Job>,
    applied: std::result::Result<(), &Problem>,
    now: Timestamp,
) -> WorkflowStatus {
    let js = job.and_then(|j| j.status.clone()).unwrap_or_default();
    let mut wanted = vec![match applied {
        Ok(()) => Wanted::new(
            JOB_APPLIED,
            true,
            "Applied",
            format!("Job {} runs this workflow", wf.name_any()),
        ),
        Err(p) => Wanted::new(JOB_APPLIED, false, p.reason, p.message.clone()),
    }];
    for type_ in MIRRORED {
        if let Some(c) = conditions::find(&js.conditions, type_) {
            wanted.push(Wanted::new(
                type_,
                c.status == "True",
                c.reason.clone(),
                in_workflow_terms(&c.message),
            ));
        }
    }
    WorkflowStatus {
        observed_generation: wf.metadata.generation,
        phase: Some(js.phase.unwrap_or(JobPhase::Pending)),
        job: job.map(|j| j.name_any()),
        job_id: js.job_id,
        last_message: js.last_message,
        last_fire_time: js.last_fire_time,
        next_fire_time: js.next_fire_time,
        completion_time: js.completion_time,
        duration: js.duration,
        node_counts: js.shards,
        nodes: js.nodes,
        conditions: reconcile::conditions(wf, &wanted, now),
    }
}

/// Reconciles one Workflow.
pub async fn reconcile(wf: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action> {
    reconcile::timed(&*wf, &ctx, async {
        let ns = wf
            .namespace()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        let name = wf.name_any();
        let now = Timestamp::now();
        let existing = jobs.get_opt(&name).await?;
        if let Some(other) = existing.as_ref().filter(|j| !owned_by(j, &wf)) {
            let problem = Problem::new(
                "JobNameTaken",
                format!(
                    "a Job named {name} exists and is not this Workflow's (owners: {}): rename the Workflow, or delete that Job",
                    other
                        .owner_references()
                        .iter()
                        .map(|o| format!("{} {}", o.kind, o.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            let st = status(&wf, None, Err(&problem), now);
            let outcome = Outcome::Blocked {
                problem,
                condition: JOB_APPLIED,
                action: "Apply",
                then: Action::requeue(crate::job::CLUSTER_RETRY),
            };
            return reconcile::conclude(&ctx, &*wf, st, outcome).await;
        }
        let want = job_for(&wf)?;
        let job = match existing {
            Some(have) if up_to_date(&have, &want) => have,
            _ => {
                let patched = jobs
                    .patch(
                        &name,
                        &PatchParams::apply(MANAGER).force(),
                        &Patch::Apply(&want),
                    )
                    .await;
                match patched {
                    Ok(job) => job,
                    // The API server refused the Job (a CEL rule: an immutable field changed).
                    Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                        let problem = Problem::new("JobRefused", in_workflow_terms(&e.message));
                        let st = status(&wf, None, Err(&problem), now);
                        let outcome = Outcome::Blocked {
                            problem,
                            condition: JOB_APPLIED,
                            action: "Apply",
                            then: Action::await_change(),
                        };
                        return reconcile::conclude(&ctx, &*wf, st, outcome).await;
                    }
                    Err(e) => {
                        let problem = Problem::new("ApplyFailed", e.to_string());
                        let st = status(&wf, None, Err(&problem), now);
                        let outcome = Outcome::Failed(e.into());
                        return reconcile::conclude(&ctx, &*wf, st, outcome).await;
                    }
                }
            }
        };
        let st = status(&wf, Some(&job), Ok(()), now);
        reconcile::conclude(&ctx, &*wf, st, Outcome::Settled(Action::await_change())).await
    })
    .await
}

/// [`reconcile`] for objects that deserialize; the others get a Warning Event.
pub async fn reconcile_guarded(
    obj: Arc<DeserializeGuard<Workflow>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    reconcile::guarded(obj, ctx, reconcile).await
}

/// Runs the Workflow controller until `shutdown` resolves: every Workflow of the watched
/// namespaces, reconciled when it or a Job it owns changes.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    Controller::new(
        ctx.api::<DeserializeGuard<Workflow>>(),
        watcher::Config::default(),
    )
    .owns(
        ctx.api::<DeserializeGuard<Job>>(),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile_guarded, reconcile::retry_guarded::<Workflow>, ctx)
    .for_each(|res| async move {
        if let Err(e) = res {
            tracing::debug!(error = %e, "Workflow controller");
        }
    })
    .await;
}

#[cfg(test)]
mod tests;
