//! `validate`: a NodeGroup spec and the other NodeGroups of its namespace → what `build`
//! needs, or every problem at once. Pure.

use crate::crd::{NodeGroup, NodeRole, WorkerMode};
use kube::ResourceExt;

/// Where a TaskTracker group finds its JobTrackers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerDiscovery {
    /// Through ZooKeeper (`zookeeper://…`).
    Registry(String),
    /// Through the JobTracker Service (`name.namespace.svc:7070`).
    Service(String),
}

/// A spec that passed validation, with everything resolved that `build` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The registry argument of a JobTracker (`local` or `zookeeper://…`).
    pub registry: String,
    /// TaskTracker: how it finds the trackers.
    pub discovery: Option<TrackerDiscovery>,
    /// The JobTracker NodeGroup of the cluster (itself for a JobTracker).
    pub job_tracker: Option<String>,
}

/// Why a spec cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// CamelCase reason for the Condition and the Event.
    pub reason: &'static str,
    /// Every problem found, each naming its field.
    pub problems: Vec<String>,
}

impl Invalid {
    /// The problems as one message.
    pub fn message(&self) -> String {
        self.problems.join("; ")
    }
}

/// `zookeeper://…` for a connect string that may or may not carry the scheme.
pub fn registry_url(zookeeper: &str) -> String {
    if zookeeper.starts_with("zookeeper://") {
        zookeeper.to_string()
    } else {
        format!("zookeeper://{zookeeper}")
    }
}

/// The gRPC address of a JobTracker NodeGroup's Service.
pub fn service_address(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc:{}", crate::GRPC_PORT)
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Each client: a DNS label, named once, granted something, naming valid node groups.
fn check_clients(clients: &[crate::crd::ClientSpec], problems: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in clients.iter().enumerate() {
        if !is_dns_label(&c.name, 40) {
            problems.push(format!(
                "spec.clients[{i}].name: {:?} must be a DNS label of at most 40 characters",
                c.name
            ));
        } else if !seen.insert(c.name.as_str()) {
            problems.push(format!(
                "spec.clients[{i}].name: {:?} is listed twice",
                c.name
            ));
        }
        if !c.admin && c.submit_node_groups.is_empty() {
            problems.push(format!(
                "spec.clients[{i}]: grants nothing: list submitNodeGroups or set admin"
            ));
        }
        for g in c.submit_node_groups.iter().filter(|g| g.as_str() != "*") {
            let mut v = Vec::new();
            lts_core::validate::check_node_group(
                &format!("spec.clients[{i}].submitNodeGroups"),
                g,
                &mut v,
            );
            problems.extend(v.iter().map(|v| v.to_string()));
        }
    }
}

/// Checks `ng` against its siblings (every NodeGroup of its namespace, itself included).
pub fn validate(ng: &NodeGroup, siblings: &[NodeGroup]) -> Result<Validated, Invalid> {
    let spec = &ng.spec;
    let name = ng.name_any();
    let namespace = ng.namespace().unwrap_or_default();
    let mut problems = Vec::new();

    if !is_dns_label(&spec.cluster, 63) {
        problems.push(format!(
            "spec.cluster: {:?} must be a DNS label (lowercase letters, digits, '-', at most 63)",
            spec.cluster
        ));
    }
    if spec.replicas < 0 {
        problems.push("spec.replicas: must not be negative".into());
    }
    if spec.threads.is_some_and(|t| t < 1) {
        problems.push("spec.threads: must be at least 1".into());
    }
    if let Some(p) = &spec.image_pull_policy
        && !["Always", "IfNotPresent", "Never"].contains(&p.as_str())
    {
        problems.push(format!(
            "spec.imagePullPolicy: {p:?} is not Always, IfNotPresent or Never"
        ));
    }
    if spec
        .zookeeper
        .as_deref()
        .is_some_and(|z| z.trim().is_empty())
    {
        problems.push("spec.zookeeper: must not be empty".into());
    }
    if let Some(t) = &spec.pod_template {
        problems.extend(super::template::check(t));
    }
    let mut labels = Vec::new();
    lts_core::validate::check_labels("spec.labels", &spec.labels, &mut labels);
    problems.extend(
        labels
            .into_iter()
            .map(|f| format!("{}: {}", f.field, f.reason)),
    );
    if spec.role == NodeRole::JobTracker && !spec.labels.is_empty() {
        problems.push("spec.labels: apply to TaskTracker NodeGroups only".into());
    }
    let job_trackers: Vec<&NodeGroup> = siblings
        .iter()
        .filter(|s| s.spec.role == NodeRole::JobTracker && s.spec.cluster == spec.cluster)
        .collect();

    let mut out = Validated {
        registry: spec
            .zookeeper
            .as_deref()
            .map(registry_url)
            .unwrap_or_else(|| "local".into()),
        discovery: None,
        job_tracker: None,
    };
    match spec.role {
        NodeRole::JobTracker => {
            if !is_dns_label(&name, 63) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                problems.push(format!(
                    "metadata.name: {name:?} names the JobTracker Service and must be a DNS-1035 label"
                ));
            }
            if spec.worker.is_some() {
                problems.push("spec.worker: applies to TaskTracker NodeGroups only".into());
            }
            if spec.replicas > 1
                && (spec.mongo_uri_secret_ref.is_none() || spec.zookeeper.is_none())
            {
                problems.push(
                    "spec.replicas: more than one JobTracker needs spec.mongoUriSecretRef (a shared store) and spec.zookeeper (master election)"
                        .into(),
                );
            }
            let mut others: Vec<String> = job_trackers
                .iter()
                .map(|s| s.name_any())
                .filter(|n| *n != name)
                .collect();
            others.sort();
            if !others.is_empty() {
                problems.push(format!(
                    "spec.cluster: cluster {:?} already has the JobTracker NodeGroup {}",
                    spec.cluster,
                    others.join(", ")
                ));
            }
            check_clients(&spec.clients, &mut problems);
            if spec.autoscaling.is_some() {
                problems.push("spec.autoscaling: applies to TaskTracker NodeGroups only".into());
            }
            if spec.storage.is_some() && spec.mongo_uri_secret_ref.is_some() {
                problems.push(
                    "spec.storage: applies to the embedded store only (leave it out with spec.mongoUriSecretRef)"
                        .into(),
                );
            }
            if spec
                .storage
                .as_ref()
                .is_some_and(|st| st.size.0.trim().is_empty())
            {
                problems.push("spec.storage.size: must not be empty (e.g. 10Gi)".into());
            }
            out.job_tracker = Some(name.clone());
        }
        NodeRole::TaskTracker => {
            let worker = spec.worker.clone().unwrap_or_default();
            match worker.mode {
                WorkerMode::Sdk => {
                    if worker.http.is_some()
                        || worker.exec.is_some()
                        || worker.sidecar_image.is_some()
                    {
                        problems.push(
                            "spec.worker: mode Sdk takes none of http, exec, sidecarImage".into(),
                        );
                    }
                    if spec.image.is_none() {
                        problems.push("spec.image: required for a TaskTracker in Sdk mode".into());
                    }
                }
                WorkerMode::Sidecar => {
                    if worker.http.is_some() == worker.exec.is_some() {
                        problems.push(
                            "spec.worker: mode Sidecar needs exactly one of http or exec".into(),
                        );
                    }
                    if worker.http.is_some() && spec.image.is_none() {
                        problems.push(
                            "spec.image: required when the sidecar calls the user's container (worker.http)"
                                .into(),
                        );
                    }
                    if let Some(h) = &worker.http {
                        if !(1..=65535).contains(&h.port) {
                            problems.push("spec.worker.http.port: must be 1..65535".into());
                        }
                        if !h.path.starts_with('/') {
                            problems.push("spec.worker.http.path: must start with '/'".into());
                        }
                    }
                    if worker.exec.as_deref().is_some_and(|e| e.trim().is_empty()) {
                        problems.push("spec.worker.exec: must not be empty".into());
                    }
                }
            }
            if spec.mongo_uri_secret_ref.is_some() {
                problems
                    .push("spec.mongoUriSecretRef: applies to JobTracker NodeGroups only".into());
            }
            if !spec.clients.is_empty() {
                problems.push("spec.clients: applies to JobTracker NodeGroups only".into());
            }
            if spec.storage.is_some() {
                problems.push("spec.storage: applies to JobTracker NodeGroups only".into());
            }
            if let Some(a) = &spec.autoscaling {
                if a.min_replicas < 0 {
                    problems.push("spec.autoscaling.minReplicas: must not be negative".into());
                }
                if !a.external && (a.max_replicas < 1 || a.max_replicas < a.min_replicas) {
                    problems.push(
                        "spec.autoscaling.maxReplicas: must be at least 1 and at least minReplicas"
                            .into(),
                    );
                }
                if a.target_backlog_per_replica < 1 {
                    problems.push(
                        "spec.autoscaling.targetBacklogPerReplica: must be at least 1".into(),
                    );
                }
            }
            let tracker = match job_trackers.as_slice() {
                [one] => Some(*one),
                _ => None,
            };
            out.job_tracker = tracker.map(|t| t.name_any());
            let zookeeper = spec
                .zookeeper
                .clone()
                .or_else(|| tracker.and_then(|t| t.spec.zookeeper.clone()));
            out.discovery = match (zookeeper, tracker) {
                (Some(zk), _) => Some(TrackerDiscovery::Registry(registry_url(&zk))),
                (None, Some(t)) => Some(TrackerDiscovery::Service(service_address(
                    &t.name_any(),
                    &namespace,
                ))),
                (None, None) => None,
            };
            if problems.is_empty() && out.discovery.is_none() {
                return Err(Invalid {
                    reason: "ClusterNotFound",
                    problems: vec![format!(
                        "spec.cluster: no JobTracker NodeGroup of cluster {:?} in namespace {namespace:?} and no spec.zookeeper to find the trackers",
                        spec.cluster
                    )],
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Invalid {
            reason: "InvalidSpec",
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{HttpTarget, SecretKeyRef, WorkerSpec};
    use crate::fixtures::nodegroup;

    fn problems(ng: &NodeGroup, siblings: &[NodeGroup]) -> (String, &'static str) {
        let e = validate(ng, siblings).unwrap_err();
        (e.message(), e.reason)
    }

    #[test]
    fn a_single_job_tracker_needs_nothing_else() {
        let jt = nodegroup("tracker", NodeRole::JobTracker);
        let v = validate(&jt, std::slice::from_ref(&jt)).unwrap();
        assert_eq!(v.registry, "local");
        assert_eq!(v.job_tracker.as_deref(), Some("tracker"));
        assert_eq!(v.discovery, None);
    }

    #[test]
    fn replicated_job_trackers_need_a_shared_store_and_zookeeper() {
        let mut jt = nodegroup("tracker", NodeRole::JobTracker);
        jt.spec.replicas = 2;
        let (msg, reason) = problems(&jt, &[]);
        assert_eq!(reason, "InvalidSpec");
        assert!(
            msg.contains("mongoUriSecretRef") && msg.contains("zookeeper"),
            "{msg}"
        );
        jt.spec.zookeeper = Some("zookeeper://zk:2181".into());
        jt.spec.mongo_uri_secret_ref = Some(SecretKeyRef {
            name: "m".into(),
            key: "uri".into(),
        });
        assert_eq!(validate(&jt, &[]).unwrap().registry, "zookeeper://zk:2181");
    }

    #[test]
    fn labels_are_plain_and_for_task_trackers() {
        let jt = nodegroup("tracker", NodeRole::JobTracker);
        let mut tt = nodegroup("gpus", NodeRole::TaskTracker);
        tt.spec.image = Some("example/gpu:1".into());
        tt.spec.labels = [("gpu".to_string(), "a100".to_string())].into();
        assert!(validate(&tt, &[jt.clone(), tt.clone()]).is_ok());
        tt.spec.labels.insert("zone".into(), "eu,west".into());
        let (msg, _) = problems(&tt, &[jt.clone(), tt.clone()]);
        assert!(
            msg.contains("spec.labels[zone]: value ',' is not allowed"),
            "{msg}"
        );
        let mut labelled_jt = jt.clone();
        labelled_jt.spec.labels = [("a".to_string(), "b".to_string())].into();
        let (msg, _) = problems(&labelled_jt, &[]);
        assert!(
            msg.contains("spec.labels: apply to TaskTracker NodeGroups only"),
            "{msg}"
        );
    }

    #[test]
    fn one_job_tracker_group_per_cluster() {
        let a = nodegroup("tracker-a", NodeRole::JobTracker);
        let b = nodegroup("tracker-b", NodeRole::JobTracker);
        let (msg, _) = problems(&b, &[a.clone(), b.clone()]);
        assert!(
            msg.contains("already has the JobTracker NodeGroup tracker-a"),
            "{msg}"
        );
        let mut other = b.clone();
        other.spec.cluster = "staging".into();
        assert!(validate(&other, &[a, other.clone()]).is_ok());
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_field() {
        let mut jt = nodegroup("Tracker_1", NodeRole::JobTracker);
        jt.spec.cluster = "Prod!".into();
        jt.spec.replicas = -1;
        jt.spec.image_pull_policy = Some("Sometimes".into());
        jt.spec.worker = Some(WorkerSpec::default());
        let (msg, _) = problems(&jt, &[]);
        for field in [
            "spec.cluster",
            "spec.replicas",
            "spec.imagePullPolicy",
            "spec.worker",
            "metadata.name",
        ] {
            assert!(msg.contains(field), "{field} missing in: {msg}");
        }
    }

    #[test]
    fn worker_modes() {
        let jt = nodegroup("tracker", NodeRole::JobTracker);
        let mut tt = nodegroup("w", NodeRole::TaskTracker);
        let (msg, _) = problems(&tt, std::slice::from_ref(&jt));
        assert!(msg.contains("spec.image: required"), "{msg}");

        tt.spec.worker = Some(WorkerSpec {
            mode: WorkerMode::Sidecar,
            http: Some(HttpTarget {
                port: 0,
                path: "run".into(),
            }),
            exec: Some("x".into()),
            ..WorkerSpec::default()
        });
        let (msg, _) = problems(&tt, std::slice::from_ref(&jt));
        assert!(msg.contains("exactly one of http or exec"), "{msg}");
        assert!(msg.contains("spec.worker.http.port"), "{msg}");
        assert!(msg.contains("spec.worker.http.path"), "{msg}");
        assert!(
            msg.contains("spec.image: required when the sidecar calls"),
            "{msg}"
        );

        tt.spec.worker = Some(WorkerSpec {
            mode: WorkerMode::Sidecar,
            exec: Some("./run.sh".into()),
            ..WorkerSpec::default()
        });
        assert!(
            validate(&tt, std::slice::from_ref(&jt)).is_ok(),
            "exec needs no user image"
        );

        tt.spec.worker = Some(WorkerSpec {
            mode: WorkerMode::Sdk,
            exec: Some("./run.sh".into()),
            ..WorkerSpec::default()
        });
        tt.spec.image = Some("img".into());
        let (msg, _) = problems(&tt, &[jt]);
        assert!(msg.contains("mode Sdk takes none"), "{msg}");
    }

    #[test]
    fn a_task_tracker_without_a_way_to_its_trackers_is_cluster_not_found() {
        let mut tt = nodegroup("w", NodeRole::TaskTracker);
        tt.spec.image = Some("img".into());
        let (msg, reason) = problems(&tt, &[]);
        assert_eq!(reason, "ClusterNotFound");
        assert!(msg.contains("no JobTracker NodeGroup"), "{msg}");
        tt.spec.zookeeper = Some("zk:2181".into());
        let v = validate(&tt, &[]).unwrap();
        assert_eq!(
            v.discovery,
            Some(TrackerDiscovery::Registry("zookeeper://zk:2181".into()))
        );
        tt.spec.mongo_uri_secret_ref = Some(SecretKeyRef {
            name: "m".into(),
            key: "uri".into(),
        });
        let (msg, _) = problems(&tt, &[]);
        assert!(msg.contains("spec.mongoUriSecretRef"), "{msg}");
    }

    #[test]
    fn clients_are_named_once_grant_something_and_belong_to_a_job_tracker() {
        use crate::crd::ClientSpec;
        let client = |name: &str, groups: &[&str], admin: bool| ClientSpec {
            name: name.into(),
            submit_node_groups: groups.iter().map(|g| g.to_string()).collect(),
            admin,
        };
        let mut jt = nodegroup("tracker", NodeRole::JobTracker);
        jt.spec.clients = vec![
            client("billing", &["billing"], false),
            client("ops", &[], true),
            client("any", &["*"], false),
        ];
        assert!(validate(&jt, std::slice::from_ref(&jt)).is_ok());
        jt.spec.clients = vec![
            client("billing", &["billing"], false),
            client("billing", &["x"], false),
            client("Bad_Name", &["x"], false),
            client("idle", &[], false),
            client("spaces", &["a b"], false),
        ];
        let (msg, _) = problems(&jt, std::slice::from_ref(&jt));
        assert!(
            msg.contains("spec.clients[1].name: \"billing\" is listed twice"),
            "{msg}"
        );
        assert!(msg.contains("spec.clients[2].name"), "{msg}");
        assert!(msg.contains("spec.clients[3]: grants nothing"), "{msg}");
        assert!(msg.contains("spec.clients[4].submitNodeGroups"), "{msg}");
        let mut tt = nodegroup("w", NodeRole::TaskTracker);
        tt.spec.image = Some("img".into());
        tt.spec.clients = vec![client("c", &["x"], false)];
        let jt = nodegroup("tracker", NodeRole::JobTracker);
        let (msg, _) = problems(&tt, &[jt]);
        assert!(msg.contains("spec.clients: applies to JobTracker"), "{msg}");
    }

    #[test]
    fn storage_belongs_to_an_embedded_store_job_tracker() {
        use crate::crd::StorageSpec;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let storage = Some(StorageSpec {
            size: Quantity("5Gi".into()),
            storage_class_name: None,
        });
        let mut jt = nodegroup("tracker", NodeRole::JobTracker);
        jt.spec.storage = storage.clone();
        assert!(validate(&jt, std::slice::from_ref(&jt)).is_ok());
        jt.spec.mongo_uri_secret_ref = Some(SecretKeyRef {
            name: "m".into(),
            key: "uri".into(),
        });
        let (msg, _) = problems(&jt, std::slice::from_ref(&jt));
        assert!(
            msg.contains("spec.storage: applies to the embedded store only"),
            "{msg}"
        );
        let mut tt = nodegroup("w", NodeRole::TaskTracker);
        tt.spec.image = Some("img".into());
        tt.spec.storage = storage;
        let jt = nodegroup("tracker", NodeRole::JobTracker);
        let (msg, _) = problems(&tt, &[jt]);
        assert!(msg.contains("spec.storage: applies to JobTracker"), "{msg}");
    }

    #[test]
    fn a_pod_template_that_takes_what_the_operator_keeps_is_invalid() {
        let mut jt = nodegroup("tracker", NodeRole::JobTracker);
        jt.spec.pod_template = Some(serde_json::json!({
            "spec": {"containers": [{"name": "tracker", "image": "mine"}]}
        }));
        let (msg, reason) = problems(&jt, std::slice::from_ref(&jt));
        assert_eq!(reason, "InvalidSpec");
        assert!(
            msg.contains("spec.podTemplate.spec.containers[0].image"),
            "{msg}"
        );
    }

    #[test]
    fn service_address_and_registry_url() {
        assert_eq!(service_address("tracker", "lts"), "tracker.lts.svc:7070");
        assert_eq!(registry_url("zk:2181/lts"), "zookeeper://zk:2181/lts");
        assert_eq!(registry_url("zookeeper://zk:2181"), "zookeeper://zk:2181");
    }
}
