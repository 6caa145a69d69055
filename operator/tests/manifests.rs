//! Every object the builders produce, and the CRDs, validated offline against the real
//! Kubernetes schemas with `kubernetes-validate --strict` (Kubernetes 1.30 and the newest
//! version it knows; `LTS_TEST_KUBERNETES_VALIDATE`, set by scripts/setup-test-deps.sh).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lts_operator::crd::{
    HttpTarget, NodeGroup, NodeGroupSpec, NodeRole, SecretKeyRef, WorkerMode, WorkerSpec,
};
use lts_operator::leader::{Decision, LeaseConfig, next_spec};
use lts_operator::nodegroup::{BuildConfig, Workload, build, validate};

fn group(name: &str, role: NodeRole) -> NodeGroup {
    let mut ng = NodeGroup::new(name, NodeGroupSpec::new("prod", role));
    ng.metadata.namespace = Some("lts".into());
    ng.metadata.uid = Some(format!("4a1f0000-0000-4000-8000-{:012}", name.len()));
    ng
}

fn resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("250m".into())),
            ("memory".to_string(), Quantity("256Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// One NodeGroup of every shape the builders know.
fn every_shape() -> Vec<NodeGroup> {
    let single = group("tracker", NodeRole::JobTracker);

    let mut ha = group("tracker-ha", NodeRole::JobTracker);
    ha.spec.cluster = "ha".into();
    ha.spec.replicas = 3;
    ha.spec.zookeeper = Some("zk-0.zk:2181,zk-1.zk:2181/lts".into());
    ha.spec.mongo_uri_secret_ref = Some(SecretKeyRef {
        name: "mongo".into(),
        key: "uri".into(),
    });
    ha.spec.resources = Some(resources());
    ha.spec.image_pull_policy = Some("IfNotPresent".into());
    // Clients of one namespace, and Prometheus, may reach these trackers.
    ha.spec.network_policy = Some(lts_operator::crd::NetworkPolicySettings {
        enabled: None,
        clients_from: vec![k8s_openapi::api::networking::v1::NetworkPolicyPeer {
            namespace_selector: Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(
                        [(
                            "kubernetes.io/metadata.name".to_string(),
                            "billing".to_string(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }],
        metrics_from: vec![k8s_openapi::api::networking::v1::NetworkPolicyPeer {
            pod_selector: Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some(
                        [(
                            "app.kubernetes.io/name".to_string(),
                            "prometheus".to_string(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
            ),
            ..Default::default()
        }],
    });

    let mut sdk = group("mailers", NodeRole::TaskTracker);
    sdk.spec.image = Some("example/mailer:1".into());
    sdk.spec.replicas = 2;
    sdk.spec.threads = Some(8);
    sdk.spec.env = vec![EnvVar {
        name: "SMTP_HOST".into(),
        value: Some("smtp".into()),
        ..EnvVar::default()
    }];
    sdk.spec.resources = Some(resources());

    let mut http = group("reports", NodeRole::TaskTracker);
    http.spec.image = Some("example/reports:2".into());
    http.spec.worker = Some(WorkerSpec {
        mode: WorkerMode::Sidecar,
        http: Some(HttpTarget {
            port: 8080,
            path: "/run".into(),
        }),
        timeout_seconds: Some(120),
        ..WorkerSpec::default()
    });

    let mut exec = group("scripts", NodeRole::TaskTracker);
    exec.spec.worker = Some(WorkerSpec {
        mode: WorkerMode::Sidecar,
        exec: Some("./run.sh \"$LTS_TASK_ID\"".into()),
        sidecar_image: Some("example/scripts:1".into()),
        ..WorkerSpec::default()
    });
    exec.spec.resources = Some(resources());

    let mut zk_worker = group("zk-workers", NodeRole::TaskTracker);
    zk_worker.spec.cluster = "ha".into();
    zk_worker.spec.image = Some("example/worker:1".into());

    vec![single, ha, sdk, http, exec, zk_worker]
}

/// Writes `docs` as a multi-document YAML file of JSON documents (JSON is YAML, and its
/// quoted strings keep timestamps strings, as kubectl sends them).
fn write_docs(dir: &std::path::Path, name: &str, docs: &[serde_json::Value]) -> PathBuf {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(d).unwrap());
        out.push('\n');
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn built_objects_are_valid_kubernetes_objects() {
    let dir = tempfile::tempdir().unwrap();
    let groups = every_shape();
    let mut files = Vec::new();
    let mut kinds = Vec::new();
    for ng in &groups {
        let v = validate(ng, &groups)
            .unwrap_or_else(|e| panic!("{}: {e:?}", ng.metadata.name.as_deref().unwrap()));
        let d = build(ng, &v, &BuildConfig::default());
        let mut docs = vec![match &d.workload {
            Workload::Deployment(w) => serde_json::to_value(w).unwrap(),
            Workload::StatefulSet(w) => serde_json::to_value(w).unwrap(),
        }];
        docs.extend(d.service.iter().map(|s| serde_json::to_value(s).unwrap()));
        docs.extend(d.pdb.iter().map(|p| serde_json::to_value(p).unwrap()));
        docs.extend(
            d.network_policy
                .iter()
                .map(|p| serde_json::to_value(p).unwrap()),
        );
        kinds.extend(docs.iter().map(|d| d["kind"].as_str().unwrap().to_string()));
        files.push(write_docs(
            dir.path(),
            ng.metadata.name.as_deref().unwrap(),
            &docs,
        ));
    }
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("lts-operator".into()),
            namespace: Some("lts".into()),
            ..ObjectMeta::default()
        },
        spec: Some(next_spec(
            None,
            Decision::Take,
            &LeaseConfig {
                name: "lts-operator".into(),
                namespace: "lts".into(),
                identity: "lts-operator-0".into(),
                duration: Duration::from_secs(15),
            },
            k8s_openapi::jiff::Timestamp::now(),
        )),
    };
    files.push(write_docs(
        dir.path(),
        "lease",
        &[serde_json::to_value(&lease).unwrap()],
    ));
    for kind in [
        "Deployment",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} was built");
    }
    let out = lts_tests::kubernetes_validate(&files).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.contains("deployment/reports"), "{out}");
}

#[test]
fn crds_are_valid_kubernetes_objects() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/lts.io.yaml");
    let out = lts_tests::kubernetes_validate(&[path]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        out.contains("customresourcedefinition/jobs.lts.io"),
        "{out}"
    );
    assert!(
        out.contains("customresourcedefinition/workflows.lts.io"),
        "{out}"
    );
    assert!(
        out.contains("customresourcedefinition/nodegroups.lts.io"),
        "{out}"
    );
}
