//! `build`: a validated NodeGroup → the objects the operator owns for it. Pure.
//!
//! * JobTracker: `lts-tracker` pods, a Service (gRPC 7070 + metrics), and a
//!   PodDisruptionBudget when it has more than one replica. On MongoDB the pods are a
//!   Deployment; on the embedded store one pod of a StatefulSet with a PersistentVolumeClaim
//!   for the queue, replaced only after the old pod is gone.
//! * TaskTracker: a Deployment of the user's SDK image, or of the user's container plus the
//!   `lts-worker` sidecar (or the sidecar alone when it runs a command); a PodDisruptionBudget
//!   when it has more than one replica.
//!
//! Every container runs as non-root without privilege escalation and without capabilities.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::validate::{TrackerDiscovery, Validated};
use crate::crd::{NodeGroup, NodeRole, WorkerMode};
use crate::pki;
use crate::{GRPC_PORT, METRICS_PORT};

/// Operator-wide defaults for what a NodeGroup leaves open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildConfig {
    /// Image of `lts-tracker` for JobTracker groups without `spec.image`.
    pub tracker_image: String,
    /// Image of the `lts-worker` sidecar.
    pub worker_image: String,
    /// Pods get their NodeGroup's certificate (and a JobTracker the cluster's auth file) and
    /// speak only TLS; `false`: plaintext without authentication (`--pki none`).
    pub secure: bool,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            tracker_image: format!("ghcr.io/lts-rs/lts-tracker:{}", lts_core::VERSION),
            worker_image: format!("ghcr.io/lts-rs/lts-worker:{}", lts_core::VERSION),
            secure: true,
        }
    }
}

/// What runs a NodeGroup's pods.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// TaskTrackers, and JobTrackers on MongoDB: interchangeable pods.
    Deployment(Deployment),
    /// A JobTracker on the embedded store: one pod on its own PersistentVolumeClaim, replaced
    /// only after the old pod is gone (no two trackers on one SQLite file, ever).
    StatefulSet(StatefulSet),
}

impl Workload {
    /// The pod template.
    pub fn template(&self) -> &PodTemplateSpec {
        match self {
            Workload::Deployment(d) => &d.spec.as_ref().expect("built with a spec").template,
            Workload::StatefulSet(s) => &s.spec.as_ref().expect("built with a spec").template,
        }
    }

    /// The pod spec.
    pub fn pod(&self) -> &PodSpec {
        self.template()
            .spec
            .as_ref()
            .expect("built with a pod spec")
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Workload::Deployment(d) => &d.metadata,
            Workload::StatefulSet(s) => &s.metadata,
        }
    }
}

/// Everything the operator owns for one NodeGroup.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The group's pods.
    pub workload: Workload,
    /// JobTracker only: the cluster's gRPC endpoint.
    pub service: Option<Service>,
    /// With more than one replica: at most one pod down at a time.
    pub pdb: Option<PodDisruptionBudget>,
    /// Who may connect to the pods (unless `spec.networkPolicy.enabled` is `false`).
    pub network_policy: Option<NetworkPolicy>,
}

/// Labels of the LTS operator's pods (the chart's), allowed to call every JobTracker.
pub fn operator_pod_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "lts".to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            "operator".to_string(),
        ),
    ])
}

/// Default-deny inbound for the group's pods, with the openings its role needs: a JobTracker's
/// gRPC port for the cluster's pods (its TaskTrackers and JobTrackers), the operator (any
/// namespace) and `clientsFrom`; the metrics port for `metricsFrom` (anyone when empty).
/// TaskTrackers get no gRPC opening: they only connect out (a sidecar's HTTP program is
/// reached over the pod's loopback, which no NetworkPolicy filters).
fn network_policy(ng: &NodeGroup) -> Option<NetworkPolicy> {
    let settings = ng.spec.network_policy.clone().unwrap_or_default();
    if settings.enabled == Some(false) {
        return None;
    }
    let tcp = |name: &str| NetworkPolicyPort {
        port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    };
    let pods = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        ports: Some(vec![tcp("metrics")]),
        from: (!settings.metrics_from.is_empty()).then(|| settings.metrics_from.clone()),
    }];
    if ng.spec.role == NodeRole::JobTracker {
        let mut from = vec![
            NetworkPolicyPeer {
                pod_selector: Some(pods(BTreeMap::from([(
                    "lts.io/cluster".to_string(),
                    ng.spec.cluster.clone(),
                )]))),
                ..NetworkPolicyPeer::default()
            },
            NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                pod_selector: Some(pods(operator_pod_labels())),
                ..NetworkPolicyPeer::default()
            },
        ];
        from.extend(settings.clients_from.iter().cloned());
        ingress.push(NetworkPolicyIngressRule {
            ports: Some(vec![tcp("grpc")]),
            from: Some(from),
        });
    }
    Some(NetworkPolicy {
        metadata: meta(ng),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods(selector_labels(ng))),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    })
}

/// The UID/GID every container runs as unless the image says otherwise.
pub const RUN_AS: i64 = 65532;
/// Default worker threads.
pub const DEFAULT_THREADS: i32 = 4;

/// Labels selecting the pods of `ng`.
pub fn selector_labels(ng: &NodeGroup) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "lts".to_string()),
        ("app.kubernetes.io/instance".to_string(), ng.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            ng.spec.role.component().to_string(),
        ),
    ])
}

/// Every label of the objects built for `ng`.
pub fn labels(ng: &NodeGroup) -> BTreeMap<String, String> {
    let mut l = selector_labels(ng);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        crate::MANAGER.to_string(),
    );
    l.insert("app.kubernetes.io/part-of".into(), ng.spec.cluster.clone());
    l.insert("lts.io/cluster".into(), ng.spec.cluster.clone());
    l.insert("lts.io/node-group".into(), ng.name_any());
    l
}

fn meta(ng: &NodeGroup) -> ObjectMeta {
    ObjectMeta {
        name: Some(ng.name_any()),
        namespace: ng.namespace(),
        labels: Some(labels(ng)),
        owner_references: ng.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn restricted(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: read_only_root.then_some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The port of the `lts-worker` sidecar's `/healthz` and `/readyz`.
pub const SIDECAR_HEALTH_PORT: i32 = 8081;

/// An HTTP probe of a named port (plain HTTP whether or not gRPC speaks TLS, which a kubelet's
/// gRPC probe cannot). The tracker's metrics port: `/readyz` checks the job store, `/healthz`
/// only that the process answers; the sidecar's health port: `/readyz` says it is connected
/// to a tracker.
fn http_probe(port: &str, path: &str, initial_delay: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

fn read_only(m: VolumeMount) -> VolumeMount {
    VolumeMount {
        read_only: Some(true),
        ..m
    }
}

fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// `LTS_TLS_CERT`, `LTS_TLS_KEY`, `LTS_TLS_CA`: the mounted certificate Secret.
fn tls_env() -> Vec<EnvVar> {
    vec![
        env("LTS_TLS_CERT", format!("{}/tls.crt", pki::TLS_DIR)),
        env("LTS_TLS_KEY", format!("{}/tls.key", pki::TLS_DIR)),
        env("LTS_TLS_CA", format!("{}/ca.crt", pki::TLS_DIR)),
    ]
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn sidecar_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("10m".into())),
            ("memory".to_string(), Quantity("32Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("128Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The objects for `ng`.
pub fn build(ng: &NodeGroup, v: &Validated, cfg: &BuildConfig) -> Desired {
    let (pod, strategy, grace) = match ng.spec.role {
        NodeRole::JobTracker => (job_tracker_pod(ng, v, cfg), tracker_strategy(), 30),
        NodeRole::TaskTracker => (task_tracker_pod(ng, v, cfg), None, 45),
    };
    let pod = PodSpec {
        termination_grace_period_seconds: Some(grace),
        security_context: Some(pod_security()),
        automount_service_account_token: Some(false),
        ..pod
    };
    let selector = LabelSelector {
        match_labels: Some(selector_labels(ng)),
        ..LabelSelector::default()
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(ng)),
            ..ObjectMeta::default()
        }),
        spec: Some(pod),
    };
    // `validate` checked that the user's template merges.
    let template = match &ng.spec.pod_template {
        Some(user) => super::template::merge(&template, user).unwrap_or(template),
        None => template,
    };
    let workload = if embedded_store(ng) {
        Workload::StatefulSet(StatefulSet {
            metadata: meta(ng),
            spec: Some(StatefulSetSpec {
                replicas: Some(ng.spec.replicas.min(1)),
                selector,
                service_name: Some(ng.name_any()),
                template,
                volume_claim_templates: Some(vec![data_claim(ng)]),
                // The queue outlives the StatefulSet: deleting the NodeGroup or scaling it to
                // zero keeps the claim (delete it by hand to drop the jobs).
                persistent_volume_claim_retention_policy: Some(
                    StatefulSetPersistentVolumeClaimRetentionPolicy {
                        when_deleted: Some("Retain".into()),
                        when_scaled: Some("Retain".into()),
                    },
                ),
                ..StatefulSetSpec::default()
            }),
            status: None,
        })
    } else {
        Workload::Deployment(Deployment {
            metadata: meta(ng),
            spec: Some(DeploymentSpec {
                // Sized by an HPA or KEDA: the field is theirs (server-side apply leaves it).
                replicas: (!externally_scaled(ng)).then_some(ng.spec.replicas),
                selector,
                strategy,
                template,
                ..DeploymentSpec::default()
            }),
            status: None,
        })
    };
    let service = (ng.spec.role == NodeRole::JobTracker).then(|| service(ng));
    let pdb = (ng.spec.replicas > 1 || externally_scaled(ng)).then(|| PodDisruptionBudget {
        metadata: meta(ng),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(ng)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    });
    Desired {
        workload,
        service,
        pdb,
        network_policy: network_policy(ng),
    }
}

/// A TaskTracker group an HPA or KEDA sizes (`autoscaling.external`).
pub fn externally_scaled(ng: &NodeGroup) -> bool {
    ng.spec.role == NodeRole::TaskTracker
        && ng.spec.autoscaling.as_ref().is_some_and(|a| a.external)
}

/// A JobTracker without MongoDB keeps its jobs in SQLite on a volume of its own.
pub fn embedded_store(ng: &NodeGroup) -> bool {
    ng.spec.role == NodeRole::JobTracker && ng.spec.mongo_uri_secret_ref.is_none()
}

/// The name of the volume (and claim template) holding the embedded store.
pub const DATA_VOLUME: &str = "data";

/// The PersistentVolumeClaim template of an embedded-store JobTracker; its claim is
/// `data-<name>-0`, the same for every pod that replaces the first.
fn data_claim(ng: &NodeGroup) -> PersistentVolumeClaim {
    let storage = ng.spec.storage.clone();
    let size = storage
        .as_ref()
        .map(|s| s.size.clone())
        .unwrap_or_else(|| Quantity(crate::crd::DEFAULT_STORAGE_SIZE.into()));
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(labels(ng)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.and_then(|s| s.storage_class_name),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// Trackers roll one at a time and never go below the wanted count.
fn tracker_strategy() -> Option<DeploymentStrategy> {
    Some(DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(0)),
        }),
    })
}

fn service(ng: &NodeGroup) -> Service {
    Service {
        metadata: meta(ng),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(ng)),
            ports: Some(vec![
                ServicePort {
                    name: Some("grpc".into()),
                    port: GRPC_PORT,
                    target_port: Some(IntOrString::String("grpc".into())),
                    protocol: Some("TCP".into()),
                    app_protocol: Some("grpc".into()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("metrics".into()),
                    port: METRICS_PORT,
                    target_port: Some(IntOrString::String("metrics".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn job_tracker_pod(ng: &NodeGroup, v: &Validated, cfg: &BuildConfig) -> PodSpec {
    let spec = &ng.spec;
    let mut env_vars = vec![
        env_field("POD_IP", "status.podIP"),
        env_field("POD_NAME", "metadata.name"),
    ];
    let mut volumes = vec![empty_dir("tmp")];
    let mut mounts = vec![mount("tmp", "/tmp")];
    match &spec.mongo_uri_secret_ref {
        Some(secret) => env_vars.push(EnvVar {
            name: "LTS_STORE".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }),
        None => {
            // The volume comes from the StatefulSet's claim template.
            env_vars.push(env("LTS_STORE", "sqlite:/var/lib/lts/lts.db"));
            mounts.push(mount(DATA_VOLUME, "/var/lib/lts"));
        }
    }
    if cfg.secure {
        // The NodeGroup's certificate, clients must present theirs, and the cluster's auth
        // file: both Secrets are kept by the operator (`crate::pki`).
        env_vars.extend(tls_env());
        env_vars.push(env("LTS_TLS_CLIENT_AUTH", "required"));
        env_vars.push(env(
            "LTS_AUTH_FILE",
            format!("{}/{}", pki::AUTH_DIR, pki::AUTH_KEY),
        ));
        volumes.push(secret_volume("tls", &pki::tls_secret(&ng.name_any())));
        volumes.push(secret_volume("auth", &pki::auth_secret(&spec.cluster)));
        mounts.push(read_only(mount("tls", pki::TLS_DIR)));
        mounts.push(read_only(mount("auth", pki::AUTH_DIR)));
    } else {
        // `--pki none`: plaintext without an auth file; `spec.env` comes after and may set
        // LTS_TLS_*, LTS_AUTH_FILE (with LTS_INSECURE/LTS_NO_AUTH "false") by hand.
        env_vars.push(env("LTS_INSECURE", "true"));
        env_vars.push(env("LTS_NO_AUTH", "true"));
    }
    env_vars.extend(spec.env.iter().cloned());
    let container = Container {
        name: "tracker".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| cfg.tracker_image.clone()),
        ),
        image_pull_policy: spec.image_pull_policy.clone(),
        command: Some(vec!["lts-tracker".into()]),
        args: Some(vec![
            format!("--cluster={}", spec.cluster),
            format!("--node-group={}", ng.name_any()),
            format!("--registry={}", v.registry),
            format!("--listen=0.0.0.0:{GRPC_PORT}"),
            format!("--advertise=$(POD_IP):{GRPC_PORT}"),
            "--identity=$(POD_NAME)".into(),
            format!("--metrics-listen=0.0.0.0:{METRICS_PORT}"),
        ]),
        env: Some(env_vars),
        ports: Some(vec![port("grpc", GRPC_PORT), port("metrics", METRICS_PORT)]),
        // Up to a minute to open the store (a large SQLite file, a slow MongoDB) before the
        // liveness probe counts.
        startup_probe: Some(http_probe("metrics", "/healthz", 1, 2, 30)),
        readiness_probe: Some(http_probe("metrics", "/readyz", 0, 5, 3)),
        liveness_probe: Some(http_probe("metrics", "/healthz", 0, 10, 6)),
        resources: spec.resources.clone(),
        security_context: Some(restricted(true)),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// The `LTS_*` settings every TaskTracker process reads; with `secure`, the certificate it
/// presents and the name the JobTracker's certificate must carry (trackers found through
/// ZooKeeper are reached by pod IP).
fn worker_env(ng: &NodeGroup, v: &Validated, secure: bool) -> Vec<EnvVar> {
    let mut out = vec![
        env_field("LTS_IDENTITY", "metadata.name"),
        env("LTS_CLUSTER", ng.spec.cluster.clone()),
        env("LTS_NODE_GROUP", ng.name_any()),
        env(
            "LTS_THREADS",
            ng.spec.threads.unwrap_or(DEFAULT_THREADS).to_string(),
        ),
    ];
    if !ng.spec.labels.is_empty() {
        out.push(env(
            "LTS_LABELS",
            lts_core::model::labels_key(&ng.spec.labels),
        ));
    }
    match &v.discovery {
        Some(TrackerDiscovery::Registry(url)) => out.push(env("LTS_REGISTRY", url.clone())),
        Some(TrackerDiscovery::Service(addr)) => out.push(env("LTS_TRACKER", addr.clone())),
        None => {}
    }
    if secure {
        out.extend(tls_env());
        if let Some(jt) = &v.job_tracker {
            let ns = ng.namespace().unwrap_or_default();
            out.push(env("LTS_TLS_DOMAIN", pki::tracker_domain(jt, &ns)));
        }
    }
    out
}

fn task_tracker_pod(ng: &NodeGroup, v: &Validated, cfg: &BuildConfig) -> PodSpec {
    let spec = &ng.spec;
    let worker = spec.worker.clone().unwrap_or_default();
    let mut containers = Vec::new();
    let mut volumes = Vec::new();
    let tls_mounts = || {
        cfg.secure
            .then(|| read_only(mount("tls", pki::TLS_DIR)))
            .into_iter()
    };
    if cfg.secure {
        volumes.push(secret_volume("tls", &pki::tls_secret(&ng.name_any())));
    }
    match worker.mode {
        WorkerMode::Sdk => {
            let mut e = worker_env(ng, v, cfg.secure);
            e.extend(spec.env.iter().cloned());
            containers.push(Container {
                name: "worker".into(),
                image: spec.image.clone(),
                image_pull_policy: spec.image_pull_policy.clone(),
                env: Some(e),
                resources: spec.resources.clone(),
                security_context: Some(restricted(false)),
                volume_mounts: cfg.secure.then(|| tls_mounts().collect()),
                ..Container::default()
            });
        }
        WorkerMode::Sidecar => {
            let exec_mode = worker.exec.is_some();
            if let Some(image) = &spec.image {
                let mut e = vec![
                    env("LTS_CLUSTER", spec.cluster.clone()),
                    env("LTS_NODE_GROUP", ng.name_any()),
                ];
                e.extend(spec.env.iter().cloned());
                containers.push(Container {
                    name: "app".into(),
                    image: Some(image.clone()),
                    image_pull_policy: spec.image_pull_policy.clone(),
                    env: Some(e),
                    ports: worker.http.as_ref().map(|h| vec![port("http", h.port)]),
                    resources: spec.resources.clone(),
                    security_context: Some(restricted(false)),
                    ..Container::default()
                });
            }
            let mut args = Vec::new();
            if let Some(h) = &worker.http {
                args.push(format!("--http=http://127.0.0.1:{}{}", h.port, h.path));
            }
            if let Some(cmd) = &worker.exec {
                args.push(format!("--exec={cmd}"));
            }
            if let Some(t) = worker.timeout_seconds {
                args.push(format!("--timeout={t}"));
            }
            args.push(format!("--health-listen=0.0.0.0:{SIDECAR_HEALTH_PORT}"));
            let mut e = worker_env(ng, v, cfg.secure);
            if exec_mode {
                // The command runs in the sidecar: it gets the user's environment.
                e.extend(spec.env.iter().cloned());
            }
            containers.push(Container {
                name: "lts-worker".into(),
                image: Some(
                    worker
                        .sidecar_image
                        .clone()
                        .unwrap_or_else(|| cfg.worker_image.clone()),
                ),
                image_pull_policy: spec.image_pull_policy.clone(),
                command: Some(vec!["lts-worker".into()]),
                args: Some(args),
                env: Some(e),
                resources: if exec_mode && spec.image.is_none() {
                    spec.resources.clone()
                } else {
                    Some(sidecar_resources())
                },
                security_context: Some(restricted(true)),
                ports: Some(vec![port("health", SIDECAR_HEALTH_PORT)]),
                startup_probe: Some(http_probe("health", "/healthz", 1, 2, 15)),
                // Not connected to a tracker: not ready (it takes no work), but alive.
                readiness_probe: Some(http_probe("health", "/readyz", 0, 5, 2)),
                liveness_probe: Some(http_probe("health", "/healthz", 0, 10, 6)),
                volume_mounts: Some(
                    std::iter::once(mount("tmp", "/tmp"))
                        .chain(tls_mounts())
                        .collect(),
                ),
                ..Container::default()
            });
            volumes.push(empty_dir("tmp"));
        }
    }
    PodSpec {
        containers,
        volumes: (!volumes.is_empty()).then_some(volumes),
        ..PodSpec::default()
    }
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
