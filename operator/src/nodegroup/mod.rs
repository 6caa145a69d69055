//! The NodeGroup controller: dereference → validate → build → apply → status → one status patch.
//!
//! Only `dereference` (the shared NodeGroup store), `apply` and the status patch touch the API;
//! [`validate()`], [`build()`], [`observed_status`] and [`invalid_status`] are pure. The status
//! patch, the Warning Event of an invalid spec and the retry of a failed reconcile go through
//! [`crate::reconcile`], as for Jobs. An invalid spec becomes a Condition and a Warning Event
//! and is looked at again only after a while or when the object changes; it never stops the
//! controller from reconciling other NodeGroups.

pub mod autoscale;
pub mod build;
pub mod template;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use lts_core::proto::{ListNodesResponse, NodeRole as ProtoRole};

pub use build::{BuildConfig, Desired, Workload, build};
pub use validate::{Invalid, Validated, validate};

use crate::conditions::{self, Wanted};
use crate::crd::{Member, NodeGroup, NodeGroupStatus, NodeRole};
use crate::reconcile::{self, Outcome, Problem};
use crate::{Context, Error, MANAGER, Result};

/// Re-reads members and master this often while all is well.
pub const REFRESH: Duration = Duration::from_secs(60);
/// … and this often while pods are not ready or the trackers cannot be reached.
pub const REFRESH_UNSETTLED: Duration = Duration::from_secs(15);
/// An invalid spec is looked at again after this long (its siblings may have changed).
pub const INVALID_RECHECK: Duration = Duration::from_secs(300);

/// At most this many NodeGroup reconciles wait to be triggered by a sibling's change; more
/// are dropped (the timed reconcile catches up).
pub const SIBLING_TRIGGERS: usize = 1024;

/// Reconciles of NodeGroups asked for by another NodeGroup's reconcile: a JobTracker whose
/// spec changed (new ZooKeeper, new name on the certificate…) has its TaskTracker groups
/// reconciled at once instead of at their next timed look.
pub struct SiblingTriggers {
    tx: tokio::sync::mpsc::Sender<ObjectRef<DeserializeGuard<NodeGroup>>>,
    rx: std::sync::Mutex<
        Option<tokio::sync::mpsc::Receiver<ObjectRef<DeserializeGuard<NodeGroup>>>>,
    >,
}

impl Default for SiblingTriggers {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(SIBLING_TRIGGERS);
        SiblingTriggers {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl SiblingTriggers {
    /// Asks for a reconcile of `name` in `namespace`; dropped when the queue is full.
    pub fn trigger(&self, namespace: &str, name: &str) {
        let r = ObjectRef::new(name).within(namespace);
        if self.tx.try_send(r).is_err() {
            tracing::debug!(node_group = %name, "sibling trigger dropped; the timed reconcile follows");
        }
    }

    /// The stream of triggers, for the controller (once).
    pub fn take(
        &self,
    ) -> Option<impl futures::Stream<Item = ObjectRef<DeserializeGuard<NodeGroup>>> + Send + 'static>
    {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        Some(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

/// The TaskTracker NodeGroups of `job_tracker`'s cluster among `siblings`, to reconcile when
/// the JobTracker's spec changed (its generation is not yet observed). Pure.
pub fn followers(job_tracker: &NodeGroup, siblings: &[NodeGroup]) -> Vec<String> {
    let changed = job_tracker
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        != job_tracker.metadata.generation;
    if job_tracker.spec.role != NodeRole::JobTracker || !changed {
        return Vec::new();
    }
    siblings
        .iter()
        .filter(|g| {
            g.spec.role == NodeRole::TaskTracker && g.spec.cluster == job_tracker.spec.cluster
        })
        .map(|g| g.name_any())
        .collect()
}

/// Reconciles one NodeGroup.
pub async fn reconcile(ng: Arc<NodeGroup>, ctx: Arc<Context>) -> Result<Action> {
    let ns = ng
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    reconcile::timed(&*ng, &ctx, reconcile_inner(&ng, &ns, &ctx)).await
}

/// Retries a failed reconcile with per-object exponential backoff.
pub fn error_policy(ng: Arc<NodeGroup>, err: &Error, ctx: Arc<Context>) -> Action {
    reconcile::retry(&*ng, err, &ctx)
}

/// The NodeGroups of `ns` from the shared store, with `ng` itself in its newest version.
fn dereference(ng: &NodeGroup, ns: &str, ctx: &Context) -> Vec<NodeGroup> {
    let mut siblings: Vec<NodeGroup> = ctx
        .valid_nodegroups()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(ns) && s.name_any() != ng.name_any())
        .collect();
    siblings.push(ng.clone());
    siblings
}

async fn reconcile_inner(ng: &NodeGroup, ns: &str, ctx: &Context) -> Result<Action> {
    let siblings = dereference(ng, ns, ctx);
    let validated = match validate(ng, &siblings) {
        Ok(v) => v,
        Err(invalid) => {
            tracing::info!(node_group = %ng.name_any(), namespace = %ns, problems = %invalid.message(), "NodeGroup spec invalid");
            // A missing JobTracker group may appear any moment; a spec error needs an edit
            // (which triggers a reconcile by itself).
            let then = Action::requeue(if invalid.reason == "ClusterNotFound" {
                REFRESH_UNSETTLED
            } else {
                INVALID_RECHECK
            });
            let status = invalid_status(ng, &invalid, Timestamp::now());
            let outcome = Outcome::Blocked {
                problem: Problem::new(invalid.reason, invalid.message()),
                condition: "Degraded",
                action: "Validate",
                then,
            };
            return reconcile::conclude(ctx, ng, status, outcome).await;
        }
    };
    // Certificates and grants before the pods that mount them. A TaskTracker group of a
    // cluster whose JobTracker NodeGroup is not here (trackers found through ZooKeeper) has
    // no CA to get a certificate from: its pods take their credentials from `spec.env`.
    let job_tracker = validated
        .job_tracker
        .as_deref()
        .and_then(|name| siblings.iter().find(|g| g.name_any() == name));
    let mut cfg = ctx.build.clone();
    match job_tracker {
        Some(jt) if ctx.pki.mode.enabled() => {
            ctx.pki.reconcile(&ctx.client, ng, jt, &siblings).await?
        }
        _ => cfg.secure = false,
    }
    // One client of the cluster's trackers for this round, made when first needed.
    let mut trackers: Option<Result<Arc<dyn crate::tracker::TrackerApi>, String>> = None;
    let mut trackers_of = async |tracker: &str| {
        trackers
            .get_or_insert(match ctx.tracker(ns, tracker).await {
                Ok((_, t)) => Ok(t),
                Err(e) => Err(e.to_string()),
            })
            .clone()
    };
    // Autoscaled TaskTrackers: the pods their queue calls for, instead of spec.replicas.
    let (scaled, autoscaling) = match (&ng.spec.autoscaling, ng.spec.role, &validated.job_tracker) {
        (Some(spec), NodeRole::TaskTracker, Some(tracker)) if !spec.external => {
            let load = match trackers_of(tracker).await {
                Ok(t) => match t.stats(&ng.name_any()).await {
                    Ok(s) => Some(autoscale::Load {
                        due: s.due,
                        running: s.running,
                    }),
                    Err(e) => {
                        tracing::info!(node_group = %ng.name_any(), error = %e, "no job counts to scale on");
                        None
                    }
                },
                Err(_) => None,
            };
            let previous = ng.status.as_ref().and_then(|s| s.autoscaling.as_ref());
            let next = autoscale::decide(spec, previous, load, Timestamp::now());
            let before = previous
                .map(|p| p.desired_replicas)
                .unwrap_or(ng.spec.replicas);
            if next.desired_replicas != before {
                let note = format!(
                    "scaled from {before} to {} pods: {} jobs due, {} running, {} per pod",
                    next.desired_replicas, next.due, next.running, spec.target_backlog_per_replica
                );
                tracing::info!(node_group = %ng.name_any(), namespace = %ns, %note, "autoscaled");
                reconcile::publish(ctx, ng, false, "Scaled", "Scale", &note).await?;
            }
            let mut scaled = ng.clone();
            scaled.spec.replicas = next.desired_replicas;
            (scaled, Some(next))
        }
        _ => (ng.clone(), None),
    };
    let desired = build(&scaled, &validated, &cfg);
    let applied = apply(&ctx.client, ns, &desired).await?;
    let ready = applied.ready;
    let mut scaled = scaled;
    if build::externally_scaled(ng) {
        // The Ready condition compares with what the HPA/KEDA asked for.
        scaled.spec.replicas = applied.replicas.unwrap_or(scaled.spec.replicas);
    }
    for follower in followers(ng, &siblings) {
        ctx.siblings.trigger(ns, &follower);
    }
    let nodes = match (&validated.job_tracker, ng.spec.role, ready) {
        // No tracker pod is up yet: nothing to ask.
        (_, NodeRole::JobTracker, 0) | (None, _, _) => None,
        (Some(tracker), _, _) => Some(match trackers_of(tracker).await {
            Ok(t) => t.nodes().await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        }),
    };
    let mut status = observed_status(&scaled, ready, nodes.as_ref(), Timestamp::now());
    let settled = conditions::find(&status.conditions, "Ready").is_some_and(|c| c.status == "True")
        && conditions::find(&status.conditions, "Degraded").is_some_and(|c| c.status == "False");
    // An autoscaled group looks at its queue as often as an unsettled one.
    let then = Action::requeue(if settled && autoscaling.is_none() {
        REFRESH
    } else {
        REFRESH_UNSETTLED
    });
    status.autoscaling = autoscaling;
    reconcile::conclude(ctx, ng, status, Outcome::Settled(then)).await
}

/// Writes the built objects with server-side apply; deletes what is no longer wanted (a
/// PodDisruptionBudget or NetworkPolicy turned off, the Deployment of a JobTracker now on a
/// StatefulSet or the other way round). Returns the ready pods as the API server reports them.
pub async fn apply(client: &kube::Client, ns: &str, desired: &Desired) -> Result<Applied> {
    let name = desired.workload.metadata().name.clone().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let ready = match &desired.workload {
        Workload::Deployment(d) => {
            if desired.service.is_some() {
                // A JobTracker moved from the embedded store to MongoDB: the old tracker goes
                // first (its claim is kept), so no client submits to it during the switch.
                apply_or_delete::<StatefulSet>(&statefulsets, &name, None).await?;
            }
            let d = apply_or_delete(&deployments, &name, Some(d)).await?;
            let wanted = d.as_ref().and_then(|d| d.spec.as_ref()?.replicas);
            (d.and_then(|d| d.status?.ready_replicas), wanted)
        }
        Workload::StatefulSet(s) => {
            // Whatever ran this JobTracker before (an older operator's Deployment on an
            // emptyDir) goes first, so two trackers never serve one cluster.
            apply_or_delete::<Deployment>(&deployments, &name, None).await?;
            let s = apply_or_delete(&statefulsets, &name, Some(s)).await?;
            let wanted = s.as_ref().and_then(|s| s.spec.as_ref()?.replicas);
            (s.and_then(|s| s.status?.ready_replicas), wanted)
        }
    };
    if let Some(svc) = &desired.service {
        Api::<Service>::namespaced(client.clone(), ns)
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(svc),
            )
            .await?;
    }
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    apply_or_delete(&pdbs, &name, desired.pdb.as_ref()).await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    apply_or_delete(&policies, &name, desired.network_policy.as_ref()).await?;
    Ok(Applied {
        ready: ready.0.unwrap_or(0),
        replicas: ready.1,
    })
}

/// What the API server answered for a NodeGroup's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Ready pods.
    pub ready: i32,
    /// Pods the workload wants (whoever set it: the operator, or an HPA/KEDA).
    pub replicas: Option<i32>,
}

/// Applies `object` (server-side) and returns it as stored, or deletes the one named `name`
/// when it is not wanted (`None`).
async fn apply_or_delete<K>(api: &Api<K>, name: &str, object: Option<&K>) -> Result<Option<K>>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match object {
        Some(o) => Ok(Some(
            api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(o))
                .await?,
        )),
        None => match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        },
    }
}

/// The status of a NodeGroup from its ready pods and the trackers' view of the cluster
/// (`None`: not asked; `Some(Err)`: unreachable). Pure.
pub fn observed_status(
    ng: &NodeGroup,
    ready: i32,
    nodes: Option<&Result<ListNodesResponse, String>>,
    now: Timestamp,
) -> NodeGroupStatus {
    let previous = ng.status.clone().unwrap_or_default();
    let wanted_role = match ng.spec.role {
        NodeRole::JobTracker => ProtoRole::JobTracker,
        NodeRole::TaskTracker => ProtoRole::TaskTracker,
    };
    let name = ng.name_any();
    let (members, master, degraded) = match nodes {
        None => (
            previous.members.clone(),
            previous.master.clone(),
            Wanted::new("Degraded", false, "AsExpected", ""),
        ),
        Some(Err(e)) => (
            previous.members.clone(),
            previous.master.clone(),
            Wanted::new(
                "Degraded",
                true,
                "TrackersUnreachable",
                format!("cannot list the cluster's nodes: {e}"),
            ),
        ),
        Some(Ok(resp)) => {
            let mut members: Vec<Member> = resp
                .nodes
                .iter()
                .filter(|n| n.role == wanted_role as i32 && n.node_group == name)
                .map(|n| Member {
                    identity: n.identity.clone(),
                    address: n.address.clone(),
                    threads: (ng.spec.role == NodeRole::TaskTracker).then_some(n.threads as i64),
                })
                .collect();
            members.sort_by(|a, b| a.identity.cmp(&b.identity));
            let master = resp
                .nodes
                .iter()
                .find(|n| n.is_master && n.role == ProtoRole::JobTracker as i32)
                .map(|n| n.identity.clone());
            let degraded = if master.is_none() {
                Wanted::new(
                    "Degraded",
                    true,
                    "NoMaster",
                    "the cluster has no master JobTracker",
                )
            } else if !resp.store_health.is_empty() && resp.store_health != "ok" {
                Wanted::new(
                    "Degraded",
                    true,
                    "StoreUnhealthy",
                    format!("job store: {}", resp.store_health),
                )
            } else {
                Wanted::new("Degraded", false, "AsExpected", "")
            };
            (members, master, degraded)
        }
    };
    let replicas = ng.spec.replicas;
    let ready_cond = if replicas == 0 {
        Wanted::new("Ready", true, "ScaledToZero", "no replicas wanted")
    } else if ready >= replicas {
        Wanted::new(
            "Ready",
            true,
            "AllReplicasReady",
            format!("{ready}/{replicas} pods ready"),
        )
    } else {
        Wanted::new(
            "Ready",
            false,
            "ReplicasNotReady",
            format!("{ready}/{replicas} pods ready"),
        )
    };
    NodeGroupStatus {
        observed_generation: ng.metadata.generation,
        ready_replicas: ready,
        members,
        master,
        autoscaling: previous.autoscaling,
        conditions: reconcile::conditions(ng, &[ready_cond, degraded], now),
    }
}

/// The status of a NodeGroup whose spec cannot be built. Pure.
pub fn invalid_status(ng: &NodeGroup, invalid: &Invalid, now: Timestamp) -> NodeGroupStatus {
    let previous = ng.status.clone().unwrap_or_default();
    NodeGroupStatus {
        observed_generation: ng.metadata.generation,
        conditions: reconcile::conditions(
            ng,
            &[
                Wanted::new("Ready", false, invalid.reason, invalid.message()),
                Wanted::new("Degraded", true, invalid.reason, invalid.message()),
            ],
            now,
        ),
        ..previous
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// [`reconcile`] for objects that deserialize; the others get a Warning Event.
pub async fn reconcile_guarded(
    obj: Arc<DeserializeGuard<NodeGroup>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    reconcile::guarded(obj, ctx, reconcile).await
}

/// Runs the NodeGroup controller until `shutdown` resolves. `nodegroups` is the shared
/// NodeGroup watch (its store is `ctx.nodegroups`).
pub async fn run(
    ctx: Arc<Context>,
    nodegroups: impl futures::Stream<Item = Result<DeserializeGuard<NodeGroup>, watcher::Error>>
    + Send
    + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let wc = watcher::Config::default().labels("app.kubernetes.io/managed-by=lts-operator");
    let controller = Controller::for_stream(nodegroups, ctx.nodegroups.clone());
    let controller = match ctx.siblings.take() {
        Some(triggers) => controller.reconcile_on(triggers),
        None => controller,
    };
    controller
        .owns(ctx.api::<Deployment>(), wc.clone())
        .owns(ctx.api::<StatefulSet>(), wc.clone())
        .owns(ctx.api::<Service>(), wc)
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile_guarded,
            reconcile::retry_guarded::<NodeGroup>,
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "NodeGroup controller");
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
