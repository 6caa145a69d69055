//! `lts-operator`: the Kubernetes operator of LTS.
//!
//! * [`crd`]: the `NodeGroup` and `Job` custom resources (`lts.io/v1alpha1`).
//! * [`nodegroup`]: NodeGroup → Deployment, or a StatefulSet for a JobTracker on the embedded
//!   store (+ Service, PodDisruptionBudget, NetworkPolicy), merged with the user's pod
//!   template; TaskTrackers sized by their queue when autoscaled; status from the workload and
//!   the trackers. Pipeline: dereference → validate → build → apply → status.
//! * [`pki`]: each cluster's CA, NodeGroup and client certificates, and its auth file (or
//!   cert-manager `Certificate`s).
//! * [`job`]: Job → submitted to the cluster's trackers over gRPC, status mirrored from them,
//!   cancelled on delete (finalizer). Pipeline: observe → plan → apply → status.
//! * [`workflow`]: Workflow → a Job of the same name that it owns (the Job controller runs
//!   it); the Job's status, every node's phase included, mirrored into the Workflow's.
//! * [`reconcile`]: what the controllers share: the guarded reconcile, the status patch,
//!   Conditions, and how a reconcile ends (settled, blocked on a problem with a Warning Event,
//!   or failed and retried with backoff).
//! * [`leader`]: Lease-based leader election, so one replica reconciles at a time.
//! * [`http`]: `/metrics`, `/healthz`, `/readyz`.
//!
//! Reconcile logic lives in pure functions (`validate`, `build`, the Job's `plan` and
//! `status`, status mapping) with unit tests; the API conversation is tested against a mocked
//! API server.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;

pub mod backoff;
pub mod conditions;
pub mod crd;
pub mod error;
pub mod http;
pub mod job;
pub mod leader;
pub mod metrics;
pub mod nodegroup;
pub mod pki;
pub mod reconcile;
pub mod tracker;
pub mod workflow;

#[cfg(test)]
mod fixtures;

pub use error::{Error, Result};

/// The field manager of every server-side apply, and the reporting controller of Events.
pub const MANAGER: &str = "lts-operator";
/// The JobTrackers' gRPC port (Service and container).
pub const GRPC_PORT: i32 = 7070;
/// The JobTrackers' Prometheus port.
pub const METRICS_PORT: i32 = 9090;

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Publishes Events about the reconciled objects.
    pub recorder: Recorder,
    /// Every NodeGroup (a reflector shared by both controllers); objects that do not
    /// deserialize are kept as errors so they cannot break the watch for the others.
    pub nodegroups: Store<DeserializeGuard<crate::crd::NodeGroup>>,
    /// Clients of the clusters' trackers.
    pub trackers: Arc<dyn tracker::TrackerConnector>,
    /// Images and defaults for built objects.
    pub build: nodegroup::BuildConfig,
    /// Per-object retry delays after failed reconciles.
    pub backoff: backoff::Backoff,
    /// Job watches of the clusters' trackers, feeding the Job controller.
    pub watches: Arc<job::Watches>,
    /// Only this namespace's NodeGroups and Jobs (and the objects built for them) are
    /// watched; `None`: every namespace.
    pub watch_namespace: Option<String>,
    /// The clusters' certificates and grants.
    pub pki: Arc<pki::Pki>,
    /// How long a deleted Job tries to cancel its job before it lets go.
    pub cancel_timeout: Duration,
    /// NodeGroup reconciles asked for by a sibling's change.
    pub siblings: nodegroup::SiblingTriggers,
}

impl Context {
    /// A context with the default backoff (1 s doubling to 5 min), without certificates
    /// ([`Context::with_pki`] turns them on).
    pub fn new(
        client: Client,
        nodegroups: Store<DeserializeGuard<crate::crd::NodeGroup>>,
        trackers: Arc<dyn tracker::TrackerConnector>,
        build: nodegroup::BuildConfig,
        watches: Arc<job::Watches>,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Context {
            client,
            recorder,
            nodegroups,
            trackers,
            build: nodegroup::BuildConfig {
                secure: false,
                ..build
            },
            backoff: backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            watches,
            watch_namespace: None,
            pki: Arc::new(pki::Pki::disabled()),
            cancel_timeout: job::DEFAULT_CANCEL_TIMEOUT,
            siblings: nodegroup::SiblingTriggers::default(),
        }
    }

    /// A deleted Job tries this long to cancel its job (builder style).
    pub fn with_cancel_timeout(mut self, timeout: Duration) -> Context {
        self.cancel_timeout = timeout;
        self
    }

    /// Makes certificates with `pki` (builder style); also tells `build` whether pods get
    /// them.
    pub fn with_pki(mut self, pki: pki::Pki) -> Context {
        self.build.secure = pki.mode.enabled();
        self.pki = Arc::new(pki);
        self
    }

    /// A client of the trackers of the cluster whose JobTracker NodeGroup is named
    /// `job_tracker` (in `namespace`), presenting the operator's identity in that cluster;
    /// and their address.
    pub async fn tracker(
        &self,
        namespace: &str,
        job_tracker: &str,
    ) -> Result<(String, Arc<dyn tracker::TrackerApi>)> {
        use kube::ResourceExt;
        let address = nodegroup::validate::service_address(job_tracker, namespace);
        let creds =
            match self.valid_nodegroups().into_iter().find(|g| {
                g.name_any() == job_tracker && g.namespace().as_deref() == Some(namespace)
            }) {
                Some(jt) => self.pki.credentials(&self.client, namespace, &jt).await?,
                None => None,
            };
        let api = self.trackers.tracker(&address, creds)?;
        Ok((address, api))
    }

    /// Watches only `namespace` (builder style); see [`Context::watch_namespace`].
    pub fn watching(mut self, namespace: Option<String>) -> Context {
        self.watch_namespace = namespace;
        self
    }

    /// An API of `K` in the watched namespace, or in every namespace.
    pub fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        watched_api(&self.client, self.watch_namespace.as_deref())
    }
}

/// An API of `K` in `namespace`, or in every namespace when `None`.
pub fn watched_api<K>(client: &Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    }
}

impl Context {
    /// The NodeGroups of the store that deserialize.
    pub fn valid_nodegroups(&self) -> Vec<crate::crd::NodeGroup> {
        self.nodegroups
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok().cloned())
            .collect()
    }

    /// Reports an object that does not deserialize (e.g. stored under an older schema) with
    /// a Warning Event; it is not reconciled until it changes.
    pub async fn report_unreadable<K>(&self, obj: &DeserializeGuard<K>) -> Result<()>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let Err(invalid) = &obj.0 else {
            return Ok(());
        };
        tracing::warn!(
            kind = %K::kind(&()),
            name = invalid.metadata.name.as_deref().unwrap_or_default(),
            namespace = invalid.metadata.namespace.as_deref().unwrap_or_default(),
            error = %invalid.error,
            "object does not match the schema"
        );
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: invalid.metadata.name.clone(),
            namespace: invalid.metadata.namespace.clone(),
            uid: invalid.metadata.uid.clone(),
            resource_version: invalid.metadata.resource_version.clone(),
            ..Default::default()
        };
        self.recorder
            .publish(
                &Event {
                    type_: EventType::Warning,
                    reason: "UnreadableObject".into(),
                    note: Some(nodegroup::truncate(&invalid.error, 1000)),
                    action: "Reconcile".into(),
                    secondary: None,
                },
                &reference,
            )
            .await?;
        Ok(())
    }
}

/// Checks that the API server serves both CRDs (listing them in `namespace`, or in every
/// namespace): a missing CRD is [`Error::CrdsNotInstalled`] with one message saying how to
/// install them; any other failure is the API error itself.
pub async fn check_crds(client: &Client, namespace: Option<&str>) -> Result<()> {
    use kube::CustomResourceExt;
    use kube::api::ListParams;
    let lp = ListParams::default().limit(1);
    let mut missing = Vec::new();
    match watched_api::<crd::NodeGroup>(client, namespace)
        .list_metadata(&lp)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => missing.push(crd::NodeGroup::crd_name()),
        Err(e) => return Err(e.into()),
    }
    match watched_api::<crd::Job>(client, namespace)
        .list_metadata(&lp)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => missing.push(crd::Job::crd_name()),
        Err(e) => return Err(e.into()),
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::CrdsNotInstalled(format!(
        "the CRDs {} are not installed: install them with `kubectl apply -f crds/` (or the Helm chart charts/lts) and start the operator again",
        missing.join(", ")
    )))
}

/// Whether the Workflow CRD is served (the operator runs the Workflow controller only then: an
/// installation upgraded without its new CRD keeps its NodeGroups and Jobs going).
pub async fn serves_workflows(client: &Client, namespace: Option<&str>) -> Result<bool> {
    let lp = kube::api::ListParams::default().limit(1);
    match watched_api::<crd::Workflow>(client, namespace)
        .list_metadata(&lp)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The CustomResourceDefinitions of this crate, in a stable order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![crd::NodeGroup::crd(), crd::Job::crd(), crd::Workflow::crd()]
}

/// `crdgen`'s output: every CRD as YAML, one document each.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("a CRD serializes to YAML"));
    }
    out
}
