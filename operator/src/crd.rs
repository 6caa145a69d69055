//! The custom resources of group `lts.io/v1alpha1`: [`NodeGroup`] and [`Job`].
//!
//! Rules the API server can check itself are CEL `x-kubernetes-validations` in the schema
//! (exactly one schedule, immutable fields, worker mode shape); the controllers check the same
//! rules again in plain Rust (`validate`) so a mistake never reaches a Deployment or a tracker.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every LTS resource.
pub const GROUP: &str = "lts.io";

/// The role of a [`NodeGroup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NodeRole {
    /// `lts-tracker` processes: store jobs and hand them out. One per cluster.
    JobTracker,
    /// Workers that run jobs.
    TaskTracker,
}

impl NodeRole {
    /// `job-tracker` or `task-tracker`, as used in labels.
    pub fn component(self) -> &'static str {
        match self {
            NodeRole::JobTracker => "job-tracker",
            NodeRole::TaskTracker => "task-tracker",
        }
    }
}

/// How a TaskTracker NodeGroup runs jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum WorkerMode {
    /// The image links `lts-worker-sdk` and reads its settings from `LTS_*` variables.
    #[default]
    Sdk,
    /// The `lts-worker` sidecar gets the jobs and calls the user's container over localhost
    /// HTTP (`http`), or runs a command in its own image (`exec`).
    Sidecar,
}

/// The local HTTP endpoint the sidecar POSTs each job to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpTarget {
    /// Port of the user's container on localhost.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Request path.
    #[serde(default = "default_http_path")]
    pub path: String,
}

fn default_http_path() -> String {
    "/run".into()
}

/// Worker settings of a TaskTracker NodeGroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.mode == 'Sdk' ? (!has(self.http) && !has(self.exec) && !has(self.sidecarImage)) : (has(self.http) != has(self.exec))"
).message("mode Sidecar needs exactly one of http or exec; mode Sdk takes none of http, exec, sidecarImage"))]
pub struct WorkerSpec {
    /// `Sdk` (default) or `Sidecar`.
    #[serde(default)]
    pub mode: WorkerMode,
    /// Sidecar mode: the user container's endpoint (`http://127.0.0.1:PORT/PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTarget>,
    /// Sidecar mode: a shell command run per job inside the sidecar's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// Sidecar mode: the `lts-worker` image (default: the operator's `--worker-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_image: Option<String>,
    /// Sidecar mode: seconds one job may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i64>,
}

/// A key of a Secret in the NodeGroup's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_secret_key")]
    pub key: String,
}

fn default_secret_key() -> String {
    "uri".into()
}

fn default_replicas() -> i32 {
    1
}

/// A group of LTS nodes of one cluster: its JobTrackers, or one group of TaskTrackers.
///
/// The operator owns one Deployment per NodeGroup, a Service for a JobTracker group and a
/// PodDisruptionBudget when it has more than one replica.
// kube's printcolumn(...) attributes repeat `type_ = ...`, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "lts.io",
    version = "v1alpha1",
    kind = "NodeGroup",
    doc = "A group of LTS nodes of one cluster: its JobTrackers, or one group of TaskTrackers. The operator runs it as a Deployment.",
    namespaced,
    status = "NodeGroupStatus",
    shortname = "ng",
    category = "lts",
    derive = "PartialEq",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Master", type_ = "string", json_path = ".status.master"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.role == 'TaskTracker' || !has(self.worker)")
    .message("worker applies to TaskTracker NodeGroups only"))]
#[x_kube(validation = Rule::new("self.role == 'JobTracker' || !has(self.clients)")
    .message("clients applies to JobTracker NodeGroups only"))]
#[x_kube(validation = Rule::new("self.role == 'TaskTracker' || !has(self.autoscaling)")
    .message("autoscaling applies to TaskTracker NodeGroups only"))]
#[x_kube(validation = Rule::new(
    "self.role == 'TaskTracker' || self.replicas <= 1 || (has(self.mongoUriSecretRef) && has(self.zookeeper))"
).message("a JobTracker NodeGroup with more than one replica needs mongoUriSecretRef and zookeeper"))]
#[x_kube(validation = Rule::new(
    "self.role == 'JobTracker' || has(self.image) || (has(self.worker) && has(self.worker.exec))"
).message("image is required for a TaskTracker NodeGroup unless the sidecar runs a command (worker.exec)"))]
pub struct NodeGroupSpec {
    /// The LTS cluster this group belongs to (a DNS label).
    #[x_kube(validation = Rule::new("self == oldSelf").message("cluster is immutable"))]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub cluster: String,
    /// `JobTracker` or `TaskTracker`.
    #[x_kube(validation = Rule::new("self == oldSelf").message("role is immutable"))]
    pub role: NodeRole,
    /// Pods of the group.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Container image: `lts-tracker` for a JobTracker (default: the operator's
    /// `--tracker-image`), the user's worker image for a TaskTracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of every container (`Always`, `IfNotPresent`, `Never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// TaskTracker: labels its pods announce; Jobs whose `affinity` they satisfy (and Jobs
    /// without affinity) run on them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// TaskTracker: jobs run at once per pod (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub threads: Option<i32>,
    /// TaskTracker: SDK image or sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerSpec>,
    /// Resources of the workload container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment of the workload container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// ZooKeeper connect string (`host:port[,host:port][/chroot]`). A TaskTracker without it
    /// reaches its cluster's JobTrackers through their Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<String>,
    /// JobTracker: the Secret key holding the MongoDB URI. Without it one JobTracker keeps
    /// the embedded SQLite store on a PersistentVolumeClaim (`storage`): a StatefulSet whose
    /// pod is replaced only after the old one is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongo_uri_secret_ref: Option<SecretKeyRef>,
    /// JobTracker on the embedded store: the PersistentVolumeClaim holding its queue. Set at
    /// creation (a StatefulSet's claims cannot change); default 1Gi of the default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable (a StatefulSet's volume claims cannot change)"))]
    pub storage: Option<StorageSpec>,
    /// Who may reach the group's pods. By default a NetworkPolicy denies every inbound
    /// connection except: to a JobTracker's gRPC port, from the cluster's own pods, the LTS
    /// operator and `clientsFrom`; to the metrics port, from `metricsFrom` (default: anyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySettings>,
    /// JobTracker: the applications that call the cluster (submit jobs, read them). Unless
    /// the operator runs with `--pki none`, each gets a client certificate in the Secret
    /// `<cluster>-lts-client-<name>` (`tls.crt`, `tls.key`, `ca.crt`) and the grants listed;
    /// a client taken off the list loses its Secret and its grants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub clients: Vec<ClientSpec>,
    /// A pod template (`metadata`, `spec`) merged over the pods the operator builds:
    /// scheduling (`nodeSelector`, `tolerations`, `affinity`, `topologySpreadConstraints`,
    /// `priorityClassName`), `serviceAccountName`, `imagePullSecrets`, volumes and mounts,
    /// labels and annotations, probes, security context. A JSON merge patch, with containers
    /// and volumes merged by name; the images, the operator's commands and volume names stay
    /// the operator's (see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub pod_template: Option<serde_json::Value>,
    /// TaskTracker: scale the group with its queue instead of `replicas` (the operator asks
    /// the trackers for the group's due and running jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

/// How a TaskTracker NodeGroup scales with its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("minReplicas must not exceed maxReplicas"))]
pub struct AutoscalingSpec {
    /// Fewest pods; 0 scales to zero when nothing is due or running.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Jobs (due now plus running) one pod should carry: pods = ceil(jobs / this).
    #[serde(default = "default_target_backlog")]
    #[schemars(range(min = 1))]
    pub target_backlog_per_replica: i32,
    /// How long the queue must want fewer pods before the group shrinks (growing is at once).
    #[serde(default = "default_scale_down_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_delay_seconds: i64,
    /// `true`: an HPA or a KEDA `ScaledObject` sizes the group's Deployment (on the trackers'
    /// `lts_jobs_due` and `lts_jobs_running` gauges); the operator leaves its `replicas` alone
    /// and only reports.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_target_backlog() -> i32 {
    10
}

fn default_scale_down_delay() -> i64 {
    300
}

/// What the autoscaler last saw and decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Pods the group runs now.
    pub desired_replicas: i32,
    /// Queued jobs of the group due now, at the last look.
    pub due: i64,
    /// Running jobs of the group, at the last look.
    pub running: i64,
    /// When the group last changed size (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Since when the queue has wanted fewer pods (RFC 3339); the group shrinks once this is
    /// `scaleDownDelaySeconds` old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_since: Option<String>,
}

/// An object the API server keeps as given (`x-kubernetes-preserve-unknown-fields`); the
/// operator checks it.
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// An application allowed to call an LTS cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSpec {
    /// A DNS label, unique in the cluster; names the client's Secret.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Submit node groups it may submit jobs as, and whose jobs it may read, change, watch
    /// and get feedback of (`["*"]`: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub submit_node_groups: Vec<String>,
    /// Everything, including the cluster APIs and every node group.
    #[serde(default)]
    pub admin: bool,
}

/// The volume of an embedded-store JobTracker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size, e.g. `10Gi`.
    #[serde(default = "default_storage_size")]
    pub size: k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    /// StorageClass (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
    k8s_openapi::apimachinery::pkg::api::resource::Quantity(DEFAULT_STORAGE_SIZE.into())
}

/// The size of an embedded-store JobTracker's volume when `storage` does not say.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";

/// The NetworkPolicy the operator keeps for a NodeGroup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySettings {
    /// `false`: no NetworkPolicy (every pod may connect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// JobTracker: further peers allowed to call gRPC — the applications that submit jobs,
    /// e.g. `[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: billing}}}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients_from: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
    /// Who may scrape the metrics port (empty: anyone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_from: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
}

impl NodeGroupSpec {
    /// A one-replica group of `role` in `cluster`, every optional field unset (the operator's
    /// defaults apply).
    pub fn new(cluster: impl Into<String>, role: NodeRole) -> NodeGroupSpec {
        NodeGroupSpec {
            cluster: cluster.into(),
            role,
            replicas: 1,
            image: None,
            image_pull_policy: None,
            labels: BTreeMap::new(),
            threads: None,
            worker: None,
            resources: None,
            env: vec![],
            zookeeper: None,
            mongo_uri_secret_ref: None,
            storage: None,
            network_policy: None,
            clients: vec![],
            pod_template: None,
            autoscaling: None,
        }
    }
}

/// One member of a NodeGroup as the trackers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Node identity (the pod name).
    pub identity: String,
    /// Address (JobTracker) or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Worker threads (TaskTracker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i64>,
}

/// Observed state of a [`NodeGroup`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeGroupStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready pods of the Deployment.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Registered nodes of this group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// The cluster's current master JobTracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// TaskTracker with `autoscaling`: what the autoscaler saw and decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
    /// `Ready` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// What to do with fires missed while the cluster was down or the job suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum MisfirePolicy {
    /// One catch-up run, then back on schedule.
    #[default]
    FireOnce,
    /// No catch-up; wait for the next scheduled time.
    Skip,
}

/// What a fire of a recurring job does while an earlier run of it is unfinished (as Kubernetes
/// CronJob's `concurrencyPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum ConcurrencyPolicy {
    /// Runs alongside the earlier runs.
    #[default]
    Allow,
    /// Skips the fire (and logs it) while an earlier run is unfinished.
    Forbid,
    /// Cancels the earlier unfinished runs, then runs.
    Replace,
}

/// A cron schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronSchedule {
    /// `sec min hour day-of-month month day-of-week [year]`.
    #[schemars(length(min = 1))]
    pub expression: String,
    /// IANA time zone, e.g. `Europe/Berlin` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

fn default_count() -> i64 {
    -1
}

/// A fixed-interval schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.intervalMs) != has(self.interval)")
    .message("repeat needs exactly one of intervalMs or interval"))]
pub struct RepeatSchedule {
    /// Milliseconds between fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub interval_ms: Option<i64>,
    /// Time between fires as a duration (`30s`, `5m`, `1h30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')")
        .message("interval must be a positive duration such as 30s or 5m"))]
    pub interval: Option<String>,
    /// Number of fires; -1 (default) means forever.
    #[serde(default = "default_count")]
    #[schemars(range(min = -1))]
    pub count: i64,
    /// First fire (RFC 3339); default: when submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub first_fire: Option<String>,
}

/// When a job runs: exactly one of the fields. No schedule at all means now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.triggerTime) ? 1 : 0) + (has(self.cron) ? 1 : 0) + (has(self.repeat) ? 1 : 0) == 1"
).message("schedule needs exactly one of triggerTime, cron or repeat (omit schedule to run now)"))]
pub struct ScheduleSpec {
    /// Once, at this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub trigger_time: Option<String>,
    /// On a cron expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronSchedule>,
    /// At a fixed interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<RepeatSchedule>,
}

/// An LTS job: the operator submits it to its cluster's JobTrackers, mirrors its state into the
/// status, and cancels it when the resource is deleted.
// kube's printcolumn(...) attributes repeat `type_ = ...`, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "lts.io",
    version = "v1alpha1",
    kind = "Job",
    doc = "An LTS job: submitted to its cluster's JobTrackers, its state mirrored into the status, cancelled when deleted.",
    namespaced,
    status = "JobStatus",
    shortname = "ltsjob",
    shortname = "ltsjobs",
    category = "lts",
    derive = "PartialEq",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Node Group",
        type_ = "string",
        json_path = ".spec.taskTrackerNodeGroup"
    ),
    printcolumn(name = "Attempts", type_ = "integer", json_path = ".status.attempts"),
    printcolumn(
        name = "Last Result",
        type_ = "string",
        json_path = ".status.lastResult"
    ),
    printcolumn(name = "Duration", type_ = "string", json_path = ".status.duration"),
    printcolumn(name = "Next Fire", type_ = "date", json_path = ".status.nextFireTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.taskId) == has(oldSelf.taskId) && (!has(self.taskId) || self.taskId == oldSelf.taskId)"
).message("taskId is immutable"))]
#[x_kube(validation = Rule::new(
    "has(self.cluster) == has(oldSelf.cluster) && (!has(self.cluster) || self.cluster == oldSelf.cluster)"
).message("cluster is immutable"))]
pub struct JobSpec {
    /// The cluster (name of its JobTracker NodeGroup's `cluster`); optional when the namespace
    /// holds exactly one cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The business key, unique per TaskTracker node group among unfinished jobs (default:
    /// `k8s-<uid>` of this resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub task_id: Option<String>,
    /// The TaskTracker node group that runs it.
    #[x_kube(validation = Rule::new("self == oldSelf").message("taskTrackerNodeGroup is immutable"))]
    #[schemars(length(min = 1, max = 128))]
    pub task_tracker_node_group: String,
    /// The JobClient group that gets feedback (default: `lts-operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_node_group: Option<String>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Parameters handed to the runner.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Send the final result to the submitting group as feedback.
    #[serde(default)]
    pub need_feedback: bool,
    /// Retries after `LATER` / `EXCEPTION`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub max_retries: i32,
    /// Runs that may be lost (their TaskTracker died, froze past its lease or left without a
    /// result) before the job fails; counted apart from `maxRetries`. Omitted: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_lease_losses: Option<i32>,
    /// Seconds one run may take (like a Pod's `activeDeadlineSeconds`, per run): a run past
    /// it is cancelled and ends `TIMEOUT`, retried while `maxRetries` allows. Omitted: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2592000))]
    pub timeout_seconds: Option<i64>,
    /// When it runs; omitted means now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Cron/repeat: the next instance only after the current one ends.
    #[serde(default)]
    pub rely_on_prev_cycle: bool,
    /// A duplicate task id replaces the unfinished job instead of being ignored.
    #[serde(default)]
    pub replace_on_exist: bool,
    /// Fires missed while down or suspended: `FireOnce` (default) or `Skip`.
    #[serde(default)]
    pub misfire_policy: MisfirePolicy,
    /// Cron/repeat whose runs may overlap (`relyOnPrevCycle` false): a fire while an earlier
    /// run is unfinished — `Allow` (default) runs alongside, `Forbid` skips the fire,
    /// `Replace` cancels the earlier runs.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// With `concurrencyPolicy: Allow`: at most this many runs at once; a fire while that
    /// many are unfinished is skipped (and logged). Omitted: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent: Option<i64>,
    /// Run as this many shard runs, each with its index and the count
    /// (`LTS_SHARD_INDEX`, `LTS_SHARD_COUNT` in the sidecar), spread over the TaskTrackers
    /// and retried on its own; the Job succeeds when every shard succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub shards: Option<i64>,
    /// Run once on every TaskTracker of the group connected when it fires (a cache flush,
    /// say), with the accounting of `shards`; not with `shards`.
    #[serde(default)]
    pub broadcast: bool,
    /// Run only on TaskTrackers with every one of these labels (a TaskTracker NodeGroup's
    /// `labels`); a Job no TaskTracker matches waits queued.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub affinity: BTreeMap<String, String>,
    /// Jobs with the same route key run on the same TaskTracker of the group while it stays
    /// connected (consistent hashing); when it leaves, its keys move to the others. Not with
    /// `shards`, `broadcast` or `affinity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub route_key: Option<String>,
    /// Run as a map-reduce job: its run maps items (the sidecar's `lts:map ITEM` lines, or
    /// `{"map": [...]}` in its HTTP answer; `JobContext::map` in the SDK), each run as a child
    /// job of the group; the Job ends once every child ended (with its reduce step's outcome
    /// when `reduce` is set). Not with `shards`, `broadcast` or `workflow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_reduce: Option<MapReduceSpec>,
    /// Run as a workflow: its nodes, each a job of its own, after their predecessors (each
    /// fire, for a scheduled Job); the Job ends with its last node. Not with `shards`,
    /// `broadcast` or `affinity` (set those on the nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowSpec>,
    /// No runs or fires while true.
    #[serde(default)]
    pub suspend: bool,
}

/// A map-reduce Job's children and reduce step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MapReduceSpec {
    /// Run a reduce step after every child ended, with their results; its outcome is the
    /// Job's.
    #[serde(default)]
    pub reduce: bool,
    /// The most children one run may map. Omitted: 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_children: Option<i64>,
}

/// A workflow: nodes and the edges between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// The nodes (names unique).
    #[schemars(length(min = 1, max = 20000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub nodes: Vec<WorkflowNodeSpec>,
    /// Edges besides the nodes' `after`: `from -> to`, taken `when` `from` ended so (`Success`
    /// by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100000))]
    pub edges: Vec<WorkflowEdgeSpec>,
}

/// One node of a workflow: the job it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowNodeSpec {
    /// Its name: lower-case letters, digits and `-`, starting and ending with a letter or digit.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Runs after these nodes succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Its TaskTracker node group (default: the Job's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub task_tracker_node_group: Option<String>,
    /// Parameters handed to its runner (besides `output.<node>` of its predecessors).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Retries after `LATER` / `EXCEPTION` / `TIMEOUT`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub max_retries: i32,
    /// Runs that may be lost before the node fails. Omitted: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_lease_losses: Option<i32>,
    /// Seconds one run may take. Omitted: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2592000))]
    pub timeout_seconds: Option<i64>,
    /// Labels its TaskTracker must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub affinity: BTreeMap<String, String>,
    /// Its route key: nodes (and jobs) with the same key run on the same TaskTracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub route_key: Option<String>,
}

/// An edge of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowEdgeSpec {
    /// The predecessor.
    pub from: String,
    /// The successor.
    pub to: String,
    /// Which ends of `from` let `to` run. (Named `when`, not `on`: YAML 1.1, as kubectl reads
    /// it, takes an unquoted `on` key for `true`.)
    #[serde(default)]
    pub when: EdgeCondition,
}

/// Which ends of a predecessor let its successor run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum EdgeCondition {
    /// It succeeded.
    #[default]
    Success,
    /// It failed.
    Failure,
    /// It ended in any way.
    Always,
}

/// Where a [`Job`] is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum JobPhase {
    /// Not (yet) accepted by a tracker.
    Pending,
    /// Stored, waiting for its time or a free TaskTracker.
    Queued,
    /// Running on a TaskTracker.
    Running,
    /// Finished with `SUCCESS`.
    Succeeded,
    /// Finished with `FAILED`, or retries exhausted.
    Failed,
    /// Suspended (`spec.suspend`).
    Suspended,
    /// Cancelled on the tracker.
    Cancelled,
    /// A workflow node waiting for its predecessors.
    Waiting,
    /// A workflow node that did not run: an edge into it was not taken.
    Skipped,
}

/// One node of a workflow [`Job`], as its status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node's name.
    pub name: String,
    /// Where it is.
    pub phase: JobPhase,
    /// Runs started.
    pub attempts: i64,
    /// The message of its last run (or why it was skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Its tracker job id.
    pub job_id: String,
}

/// A sharded [`Job`]'s shard runs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShardCounts {
    /// Ended with `SUCCESS`.
    pub succeeded: i64,
    /// Ended otherwise: failed past their retries, or cancelled.
    pub failed: i64,
    /// Running now.
    pub running: i64,
    /// Waiting for a retry or a free TaskTracker (workflow nodes: or their predecessors).
    pub pending: i64,
    /// Workflow nodes skipped (an edge into them was not taken).
    #[serde(default)]
    pub skipped: i64,
}

/// Observed state of a [`Job`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the job is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// The resolved cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The tracker's job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The task id it was submitted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Runs started for the current instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    /// Outcome of the last run (`SUCCESS`, `FAILED`, `LATER`, `EXCEPTION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// Message of the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<String>,
    /// The fire time of the current or last instance (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire_time: Option<String>,
    /// When it is due next (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire_time: Option<String>,
    /// When the job finished (RFC 3339); real-time and one-time jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// From accepted to finished, e.g. `1m12s`; real-time and one-time jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Fingerprint of the job as last submitted; a change resubmits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_hash: Option<String>,
    /// A sharded Job: its shard runs by state (a workflow: its nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardCounts>,
    /// A workflow: each node of its latest run, as the trackers last told (at most the first
    /// 500 nodes; `shards` counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub nodes: Vec<NodeStatus>,
    /// `Submitted` and `Synced`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// An LTS workflow: a graph of jobs, run as one. The operator keeps a [`Job`] of the same name
/// for it (owned by it, so deleting the Workflow deletes the Job, which cancels the run) and
/// mirrors that Job's status, every node's phase included, into the Workflow's.
// kube's printcolumn(...) attributes repeat `type_ = ...`, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "lts.io",
    version = "v1alpha1",
    kind = "Workflow",
    doc = "An LTS workflow: a graph of jobs run as one, through a Job of the same name that it owns; its status mirrors every node's phase.",
    namespaced,
    status = "WorkflowStatus",
    shortname = "ltswf",
    category = "lts",
    derive = "PartialEq",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Succeeded",
        type_ = "integer",
        json_path = ".status.nodeCounts.succeeded"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.nodeCounts.failed"
    ),
    printcolumn(
        name = "Skipped",
        type_ = "integer",
        json_path = ".status.nodeCounts.skipped"
    ),
    printcolumn(name = "Next Fire", type_ = "date", json_path = ".status.nextFireTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.cluster) == has(oldSelf.cluster) && (!has(self.cluster) || self.cluster == oldSelf.cluster)"
).message("cluster is immutable"))]
pub struct WorkflowResourceSpec {
    /// The cluster (name of its JobTracker NodeGroup's `cluster`); optional when the namespace
    /// holds exactly one cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The TaskTracker node group of the nodes that name none.
    #[x_kube(validation = Rule::new("self == oldSelf").message("taskTrackerNodeGroup is immutable"))]
    #[schemars(length(min = 1, max = 128))]
    pub task_tracker_node_group: String,
    /// The JobClient group that gets the workflow's feedback (default: `lts-operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_node_group: Option<String>,
    /// Send the workflow's final result to the submitting group as feedback.
    #[serde(default)]
    pub need_feedback: bool,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// When it runs; omitted means now. A cron or repeat schedule runs the whole graph at each
    /// fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Cron/repeat: the next run only after the current one ends.
    #[serde(default)]
    pub rely_on_prev_cycle: bool,
    /// Fires missed while down or suspended: `FireOnce` (default) or `Skip`.
    #[serde(default)]
    pub misfire_policy: MisfirePolicy,
    /// Cron/repeat whose runs may overlap: `Allow` (default), `Forbid` or `Replace`.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// With `concurrencyPolicy: Allow`: at most this many runs at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent: Option<i64>,
    /// The nodes (names unique), each a job of its own.
    #[schemars(length(min = 1, max = 20000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub nodes: Vec<WorkflowNodeSpec>,
    /// Edges besides the nodes' `after`: `from -> to`, taken `when` `from` ended so (`Success`
    /// by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100000))]
    pub edges: Vec<WorkflowEdgeSpec>,
    /// No runs or fires while true: the running nodes finish their attempt, the others wait.
    #[serde(default)]
    pub suspend: bool,
}

/// Observed state of a [`Workflow`]: its Job's, by node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the workflow is (its Job's phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// The Job that runs it (same name, same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The tracker's job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The message of the latest run's end, e.g. `4 nodes ended: 3 succeeded, 1 skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<String>,
    /// The fire time of the current or last run (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire_time: Option<String>,
    /// When it is due next (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire_time: Option<String>,
    /// When the run finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// From accepted to finished, e.g. `1m12s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// The latest run's nodes by state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_counts: Option<ShardCounts>,
    /// Each node of the latest run (at most the first 500; `nodeCounts` counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub nodes: Vec<NodeStatus>,
    /// `JobApplied` (its Job is in place), and the Job's `Submitted` and `Synced`, with the
    /// fields they name given as the Workflow's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
