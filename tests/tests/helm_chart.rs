//! The Helm chart `charts/lts`, through the Helm SDK from PyPI (no cluster, no `helm` binary):
//! lint, render with the default values and with `ci/full-values.yaml`, every rendered object
//! valid for Kubernetes 1.30 and the newest version kubernetes-validate knows, the NodeGroups of
//! the default cluster valid against the generated CRDs, `values.schema.json` rejecting bad
//! values, and a comment on every RBAC rule.
//!
//! Needs `LTS_TEST_PYTHON` and `LTS_TEST_KUBERNETES_VALIDATE` (scripts/test.sh sets them).

use std::path::{Path, PathBuf};

use lts_tests::{k8s_check, kubernetes_validate, workspace_root, yaml_files};
use serde_json::Value;
use tempfile::TempDir;

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/lts")
}

fn full_values() -> PathBuf {
    chart_dir().join("ci/full-values.yaml")
}

/// One rendering of the chart, split into files by kind.
struct Rendered {
    dir: TempDir,
    objects: Vec<Value>,
}

impl Rendered {
    fn of(values: Option<&Path>) -> Rendered {
        let dir = TempDir::new().expect("tempdir");
        let out = dir.path().display().to_string();
        let chart = chart_dir().display().to_string();
        let mut args = vec!["render", chart.as_str(), "--out", out.as_str()];
        let values = values.map(|v| v.display().to_string());
        if let Some(v) = &values {
            args.extend(["--values", v.as_str()]);
        }
        k8s_check(&args).unwrap_or_else(|e| panic!("{e:#}"));
        let objects = serde_json::from_str::<Vec<Value>>(
            &std::fs::read_to_string(dir.path().join("objects.json")).expect("objects.json"),
        )
        .expect("objects.json is JSON");
        Rendered { dir, objects }
    }

    fn builtin(&self) -> Vec<PathBuf> {
        yaml_files(&self.dir.path().join("k8s"))
    }

    fn custom(&self) -> Vec<PathBuf> {
        yaml_files(&self.dir.path().join("custom"))
    }

    fn notes(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("NOTES.txt")).unwrap_or_default()
    }

    fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
            .collect();
        k.sort();
        k
    }

    fn one(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "exactly one {kind} expected: {found:#?}");
        found[0]
    }
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?
        .get("value")?
        .as_str()
}

/// Validates the custom resources against the chart's CRDs (which must equal `crds/`).
fn validate_custom(files: &[PathBuf]) {
    let crds = chart_dir().join("crds");
    assert!(
        !yaml_files(&crds).is_empty(),
        "{} holds no CRDs: copy the crdgen output (crds/*.yaml) there",
        crds.display()
    );
    let mut args = vec![
        "crs".to_string(),
        "--crds".into(),
        crds.display().to_string(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    k8s_check(&args).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn lint_passes_with_default_and_full_values() {
    let chart = chart_dir().display().to_string();
    k8s_check(&["lint", &chart]).unwrap_or_else(|e| panic!("{e:#}"));
    let full = full_values().display().to_string();
    k8s_check(&["lint", &chart, "--values", &full]).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn default_values_render_valid_kubernetes_objects() {
    let r = Rendered::of(None);
    assert_eq!(
        r.kinds(),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ],
        "the default install is the operator alone, behind its NetworkPolicy"
    );
    assert!(r.custom().is_empty(), "no cluster by default");
    kubernetes_validate(&r.builtin()).unwrap_or_else(|e| panic!("{e:#}"));
    let notes = r.notes();
    assert!(
        notes.contains("kubectl apply") && notes.contains("ltsjobs"),
        "NOTES.txt tells what to do next:\n{notes}"
    );
}

#[test]
fn full_values_render_valid_objects_and_node_groups() {
    let r = Rendered::of(Some(&full_values()));
    for kind in ["PodDisruptionBudget", "NetworkPolicy", "NodeGroup"] {
        assert!(
            r.kinds().iter().any(|k| k == kind),
            "{kind} missing: {:?}",
            r.kinds()
        );
    }
    kubernetes_validate(&r.builtin()).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        r.custom().len(),
        2,
        "a JobTracker and a TaskTracker NodeGroup"
    );
    validate_custom(&r.custom());

    let groups: Vec<&Value> = r
        .objects
        .iter()
        .filter(|o| o["kind"] == "NodeGroup")
        .collect();
    let tracker = groups
        .iter()
        .find(|g| g["spec"]["role"] == "JobTracker")
        .unwrap();
    assert_eq!(tracker["spec"]["cluster"], "prod");
    assert_eq!(
        tracker["spec"]["zookeeper"],
        "zookeeper-headless.data.svc.cluster.local:2181/lts"
    );
    assert_eq!(tracker["spec"]["mongoUriSecretRef"]["name"], "lts-mongodb");
    assert_eq!(tracker["spec"]["replicas"], 3);
    let workers = groups
        .iter()
        .find(|g| g["spec"]["role"] == "TaskTracker")
        .unwrap();
    assert_eq!(workers["metadata"]["name"], "reports");
    assert_eq!(workers["spec"]["worker"]["http"]["port"], 8080);
    assert!(
        workers["spec"]["worker"].get("exec").is_none(),
        "http replaces the default exec"
    );
    let notes = r.notes();
    assert!(notes.contains("taskTrackerNodeGroup: reports"), "{notes}");
}

#[test]
fn operator_deployment_is_leader_elected_probed_and_non_root() {
    let r = Rendered::of(Some(&full_values()));
    let d = r.one("Deployment");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "lts-operator-sa");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example.com/lts/lts-operator:0.1.0");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["ports"][0]["containerPort"], 9443);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(env_value(c, "LTS_LISTEN"), Some("0.0.0.0:9443"));
    assert_eq!(env_value(c, "LTS_LEADER_ELECTION"), Some("true"));
    assert_eq!(env_value(c, "LTS_LEASE_NAME"), Some("lts-operator-leader"));
    assert_eq!(env_value(c, "LTS_LEASE_NAMESPACE"), Some("lts-system"));
    assert_eq!(
        env_value(c, "LTS_TRACKER_IMAGE"),
        Some("registry.example.com/lts/lts-tracker:0.1.0")
    );
    assert_eq!(
        env_value(c, "LTS_WORKER_IMAGE"),
        Some("registry.example.com/lts/lts-worker:0.1.0")
    );
    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], "9443");

    // The Role for the Lease names exactly the Lease the operator uses.
    let role = r.one("Role");
    let named: Vec<&Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|rule| rule.get("resourceNames"))
        .collect();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0][0], "lts-operator-leader");
    assert_eq!(role["metadata"]["namespace"], "lts-system");

    // The default image tag is the chart's appVersion.
    let d = Rendered::of(None);
    let c = &d.one("Deployment")["spec"]["template"]["spec"]["containers"][0];
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap();
    assert_eq!(
        c["image"],
        format!("ghcr.io/lts-rs/lts-operator:{app_version}").as_str()
    );
}

#[test]
fn rbac_is_least_privilege() {
    let r = Rendered::of(None);
    let role = r.one("ClusterRole");
    for rule in role["rules"].as_array().unwrap() {
        let text = rule.to_string();
        assert!(!text.contains("\"*\""), "no wildcards: {text}");
        if text.contains("secrets") {
            // The clusters' certificates: made, read and replaced, never watched or listed
            // beyond a label selector's worth, and nothing else with them.
            assert_eq!(rule["resources"], serde_json::json!(["secrets"]), "{text}");
            assert_eq!(
                rule["verbs"],
                serde_json::json!(["get", "list", "create", "patch", "delete"]),
                "{text}"
            );
        }
        assert!(!text.contains("\"pods\""), "no access to pods: {text}");
        if rule["apiGroups"][0] == "apiextensions.k8s.io" {
            let verbs = rule["verbs"].to_string();
            assert_eq!(verbs, r#"["get","list"]"#, "CRDs are read-only: {text}");
            assert!(
                rule.get("resourceNames").is_some(),
                "only its own CRDs: {text}"
            );
        }
    }
    let lease_rules = r.one("Role")["rules"].to_string();
    assert!(lease_rules.contains("coordination.k8s.io"), "{lease_rules}");
    assert!(!lease_rules.contains("delete"), "{lease_rules}");
}

#[test]
fn pki_modes_shape_the_operator_and_its_rights() {
    let dir = TempDir::new().unwrap();
    let values = |name: &str, text: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        f
    };
    let env = |r: &Rendered| -> Vec<(String, String)> {
        r.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let has = |r: &Rendered, name: &str, value: &str| {
        env(r).contains(&(name.to_string(), value.to_string()))
    };

    // Default: the operator is the CA; it keeps its own certificates in memory.
    let r = Rendered::of(None);
    assert!(has(&r, "LTS_PKI", "operator"));
    assert!(has(&r, "LTS_PKI_DIR", "/var/run/lts-operator"));
    let pod = &r.one("Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["emptyDir"]["medium"], "Memory");
    assert!(!r.kinds().contains(&"Certificate".to_string()));

    // cert-manager: a Certificate for the operator, mounted, and rights on Certificates.
    let f = values(
        "cm.yaml",
        "pki:\n  mode: cert-manager\n  certManager:\n    issuer: ClusterIssuer/lts-ca\n",
    );
    let r = Rendered::of(Some(&f));
    let cert = r.one("Certificate");
    assert_eq!(cert["spec"]["uris"][0], "spiffe://lts/operator");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(cert["spec"]["issuerRef"]["name"], "lts-ca");
    assert!(has(&r, "LTS_CERT_MANAGER_ISSUER", "ClusterIssuer/lts-ca"));
    assert!(has(&r, "LTS_TLS_CERT", "/etc/lts/tls/tls.crt"));
    let rules = r.one("ClusterRole")["rules"].to_string();
    assert!(rules.contains("cert-manager.io"), "{rules}");

    // none: no Secrets at all.
    let f = values("none.yaml", "pki:\n  mode: none\n");
    let r = Rendered::of(Some(&f));
    assert!(has(&r, "LTS_PKI", "none"));
    let rules = r.one("ClusterRole")["rules"].to_string();
    assert!(!rules.contains("secrets"), "{rules}");
    assert!(!rules.contains("cert-manager.io"), "{rules}");
}

#[test]
fn keda_scales_the_task_trackers_on_the_backlog_gauges() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(
        &file,
        "cluster:\n  enabled: true\n  taskTracker:\n    keda:\n      enabled: true\n      prometheusAddress: http://prom.monitoring.svc\n      maxReplicas: 12\n",
    )
    .unwrap();
    let r = Rendered::of(Some(&file));
    let so = r.one("ScaledObject");
    assert_eq!(so["spec"]["scaleTargetRef"]["name"], "workers");
    assert_eq!(so["spec"]["maxReplicaCount"], 12);
    let trigger = &so["spec"]["triggers"][0]["metadata"];
    assert_eq!(
        trigger["query"],
        "max(lts_jobs_due{node_group=\"workers\"}) + max(lts_jobs_running{node_group=\"workers\"})"
    );
    assert_eq!(trigger["threshold"], "10");
    let workers = r
        .objects
        .iter()
        .find(|o| o["kind"] == "NodeGroup" && o["spec"]["role"] == "TaskTracker")
        .unwrap();
    assert_eq!(workers["spec"]["autoscaling"]["external"], true);
    validate_custom(&r.custom());
}

#[test]
fn every_rbac_rule_has_a_comment() {
    let path = chart_dir().join("templates/rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut rules = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            rules += 1;
            let above = lines[..i]
                .last()
                .map(|l| l.trim_start())
                .unwrap_or_default();
            assert!(
                above.starts_with('#'),
                "{}:{}: the rule `{}` needs a comment above it saying why its verbs are needed",
                path.display(),
                i + 1,
                line.trim()
            );
        }
    }
    assert!(rules >= 9, "expected every rule to be found, got {rules}");
}

/// Values files the schema must refuse, each with the reason.
const BAD_VALUES: &[(&str, &str)] = &[
    ("an unknown top-level key", "replica: 3\n"),
    ("replicas as a string", "operator:\n  replicas: two\n"),
    ("zero replicas", "operator:\n  replicas: 0\n"),
    ("an unknown log format", "operator:\n  logFormat: xml\n"),
    (
        "an unknown pull policy",
        "image:\n  pullPolicy: Sometimes\n",
    ),
    ("an unknown RBAC scope", "rbac:\n  scope: everywhere\n"),
    (
        "a misspelt cluster key",
        "cluster:\n  enabled: true\n  zookeeperConnect: zk:2181\n",
    ),
    (
        "a ZooKeeper address without port",
        "cluster:\n  zookeeper: zookeeper.data.svc\n",
    ),
    (
        "a cluster name that is no DNS label",
        "cluster:\n  name: Prod_1\n",
    ),
    (
        "an unknown worker mode",
        "cluster:\n  taskTracker:\n    worker:\n      mode: Lambda\n",
    ),
    (
        "threads as zero",
        "cluster:\n  taskTracker:\n    threads: 0\n",
    ),
    (
        "an HTTP port out of range",
        "cluster:\n  taskTracker:\n    worker:\n      http:\n        port: 70000\n",
    ),
];

#[test]
fn schema_rejects_bad_values() {
    let dir = TempDir::new().unwrap();
    let chart = chart_dir().display().to_string();
    for (i, (why, yaml)) in BAD_VALUES.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let file = file.display().to_string();
        if let Err(e) = k8s_check(&["reject", &chart, "--values", &file]) {
            panic!("values.schema.json must reject {why}:\n{yaml}\n{e:#}");
        }
    }
}

#[test]
fn value_combinations_the_schema_cannot_express_fail_with_a_message() {
    let cases: &[(&str, &str)] = &[
        (
            "operator:\n  replicas: 2\n  leaderElection:\n    enabled: false\n",
            "needs operator.leaderElection.enabled=true",
        ),
        (
            "cluster:\n  enabled: true\n  jobTracker:\n    replicas: 2\n",
            "needs cluster.zookeeper",
        ),
        (
            "cluster:\n  enabled: true\n  taskTracker:\n    worker:\n      mode: Sdk\n",
            "cluster.taskTracker.image is required",
        ),
        (
            "pki:\n  mode: cert-manager\n",
            "pki.mode=cert-manager needs pki.certManager.issuer",
        ),
        (
            "cluster:\n  enabled: true\n  taskTracker:\n    keda:\n      enabled: true\n",
            "needs cluster.taskTracker.keda.prometheusAddress",
        ),
    ];
    let dir = TempDir::new().unwrap();
    let chart = chart_dir().display().to_string();
    let out = dir.path().join("out").display().to_string();
    for (i, (yaml, message)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case-{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let file = file.display().to_string();
        match k8s_check(&["render", &chart, "--out", &out, "--values", &file]) {
            Ok(o) => panic!("rendering must fail for\n{yaml}\nbut gave {o}"),
            Err(e) => assert!(
                format!("{e:#}").contains(message),
                "for\n{yaml}\nexpected {message:?} in: {e:#}"
            ),
        }
    }
}

#[test]
fn single_tracker_cluster_renders_without_zookeeper_and_mongodb() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, "cluster:\n  enabled: true\n").unwrap();
    let r = Rendered::of(Some(&file));
    let groups: Vec<&Value> = r
        .objects
        .iter()
        .filter(|o| o["kind"] == "NodeGroup")
        .collect();
    assert_eq!(groups.len(), 2);
    for g in &groups {
        assert!(g["spec"].get("zookeeper").is_none(), "{g:#}");
        assert!(g["spec"].get("mongoUriSecretRef").is_none(), "{g:#}");
    }
    let workers = groups
        .iter()
        .find(|g| g["spec"]["role"] == "TaskTracker")
        .unwrap();
    assert_eq!(workers["spec"]["worker"]["mode"], "Sidecar");
    assert!(workers["spec"]["worker"]["exec"].is_string());
    validate_custom(&r.custom());
    assert!(
        r.notes().contains("SQLite"),
        "NOTES warn about the embedded store"
    );

    // The embedded store's claim, sized and classed from the values (checked by the CRD).
    std::fs::write(
        &file,
        "cluster:\n  enabled: true\n  jobTracker:\n    storage:\n      size: 10Gi\n      storageClassName: fast\n",
    )
    .unwrap();
    let r = Rendered::of(Some(&file));
    let tracker = r
        .objects
        .iter()
        .find(|o| o["kind"] == "NodeGroup" && o["spec"]["role"] == "JobTracker")
        .unwrap();
    assert_eq!(
        tracker["spec"]["storage"],
        serde_json::json!({"size": "10Gi", "storageClassName": "fast"})
    );
    validate_custom(&r.custom());
}

#[test]
fn a_namespace_scoped_install_gets_roles_and_watches_its_namespace() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(
        &file,
        "rbac:\n  scope: namespace\ncluster:\n  enabled: true\n",
    )
    .unwrap();
    let r = Rendered::of(Some(&file));
    let kinds = r.kinds();
    assert!(
        !kinds.iter().any(|k| k.starts_with("Cluster")),
        "no cluster-wide access: {kinds:?}"
    );
    let roles: Vec<&Value> = r.objects.iter().filter(|o| o["kind"] == "Role").collect();
    assert_eq!(roles.len(), 2, "the operator's and the leader election's");
    let bindings = r
        .objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding")
        .count();
    assert_eq!(bindings, 2);
    let operator = roles
        .iter()
        .find(|r| r["rules"].to_string().contains("nodegroups"))
        .expect("the operator's Role");
    let ns = operator["metadata"]["namespace"].as_str().unwrap();
    assert!(
        !operator["rules"]
            .to_string()
            .contains("customresourcedefinitions"),
        "a Role cannot grant cluster-scoped CRDs"
    );
    let c = &r.one("Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env_value(c, "LTS_WATCH_NAMESPACE"), Some(ns));
    kubernetes_validate(&r.builtin()).unwrap_or_else(|e| panic!("{e:#}"));
    validate_custom(&r.custom());
}

#[test]
fn every_value_is_described_in_the_schema() {
    let path = chart_dir().join("values.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("values.schema.json is JSON");
    fn walk(node: &Value, at: &str, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                let here = format!("{at}.{k}");
                if v.get("description").is_none() {
                    missing.push(here.clone());
                }
                walk(v, &here, missing);
            }
        }
    }
    let mut missing = Vec::new();
    walk(&schema, "", &mut missing);
    assert!(
        missing.is_empty(),
        "values without a description: {missing:?}"
    );
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown keys are errors"
    );
}
