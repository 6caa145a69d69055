//! The example manifests in `examples/k8s/`: every NodeGroup and Job valid against the
//! generated CRD schemas (`crds/`, with the structural-schema extensions the API server
//! applies), every built-in object valid for Kubernetes 1.30 and the newest version
//! kubernetes-validate knows. Also checks that the schema check itself catches mistakes, and
//! that the Dockerfiles build binaries that exist, as a non-root user.

use std::path::PathBuf;

use lts_tests::{k8s_check, kubernetes_validate, workspace_root, yaml_files};
use tempfile::TempDir;

fn crds_dir() -> String {
    workspace_root().join("crds").display().to_string()
}

fn check_crs(files: &[PathBuf]) -> anyhow::Result<String> {
    let mut args = vec!["crs".to_string(), "--crds".into(), crds_dir()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    k8s_check(&args)
}

#[test]
fn example_manifests_are_valid() {
    let examples = yaml_files(&workspace_root().join("examples/k8s"));
    assert!(examples.len() >= 5, "examples/k8s: {examples:?}");
    let out = TempDir::new().unwrap();
    let mut args = vec![
        "split".to_string(),
        "--out".into(),
        out.path().display().to_string(),
    ];
    args.extend(examples.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    k8s_check(&args).unwrap_or_else(|e| panic!("{e:#}"));

    let custom = yaml_files(&out.path().join("custom"));
    let report = check_crs(&custom).unwrap_or_else(|e| panic!("{e:#}"));
    let count = |kind: &str| {
        report
            .lines()
            .filter(|l| l.contains(&format!("({kind}/")))
            .count()
    };
    assert!(
        count("NodeGroup") >= 4,
        "cluster pair + sidecar groups:\n{report}"
    );
    assert!(
        count("Job") >= 4,
        "real-time, cron, repeat, at a time:\n{report}"
    );
    assert!(count("Workflow") >= 1, "a Workflow:\n{report}");

    let builtin = yaml_files(&out.path().join("k8s"));
    kubernetes_validate(&builtin).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Custom resources with one mistake each, and the part of the message that names it.
const BROKEN: &[(&str, &str)] = &[
    (
        "apiVersion: lts.io/v1alpha1\nkind: Job\nmetadata: {name: typo}\nspec:\n  taskTrackerNodeGroup: reports\n  maxRetrys: 3\n",
        "maxRetrys",
    ),
    (
        "apiVersion: lts.io/v1alpha1\nkind: Job\nmetadata: {name: no-group}\nspec:\n  params: {a: b}\n",
        "taskTrackerNodeGroup",
    ),
    (
        "apiVersion: lts.io/v1alpha1\nkind: Job\nmetadata: {name: bad-time}\nspec:\n  taskTrackerNodeGroup: reports\n  schedule:\n    triggerTime: tomorrow\n",
        "date-time",
    ),
    (
        "apiVersion: lts.io/v1alpha1\nkind: Job\nmetadata: {name: param-int}\nspec:\n  taskTrackerNodeGroup: reports\n  params: {count: 3}\n",
        "params.count",
    ),
    (
        "apiVersion: lts.io/v1alpha1\nkind: NodeGroup\nmetadata: {name: role}\nspec:\n  cluster: prod\n  role: Master\n",
        "Master",
    ),
    (
        "apiVersion: lts.io/v1alpha1\nkind: NodeGroup\nmetadata: {name: Upper_Case}\nspec:\n  cluster: prod\n  role: JobTracker\n",
        "DNS subdomain",
    ),
    (
        "apiVersion: lts.io/v1beta9\nkind: Job\nmetadata: {name: version}\nspec:\n  taskTrackerNodeGroup: reports\n",
        "no served CRD",
    ),
];

#[test]
fn crd_schema_check_catches_mistakes() {
    let dir = TempDir::new().unwrap();
    for (i, (yaml, needle)) in BROKEN.iter().enumerate() {
        let file = dir.path().join(format!("broken-{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        match check_crs(&[file]) {
            Ok(out) => panic!("accepted:\n{yaml}\n{out}"),
            Err(e) => assert!(
                format!("{e:#}").contains(needle),
                "expected {needle:?} in the error for\n{yaml}\n{e:#}"
            ),
        }
    }
    // Quantities are int-or-string, and resources accept both forms.
    let ok = dir.path().join("ok.yaml");
    std::fs::write(
        &ok,
        "apiVersion: lts.io/v1alpha1\nkind: NodeGroup\nmetadata: {name: q}\nspec:\n  cluster: prod\n  role: JobTracker\n  resources:\n    requests: {cpu: 1, memory: 256Mi}\n",
    )
    .unwrap();
    check_crs(&[ok]).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Every `[[bin]]` name in the workspace's manifests.
fn workspace_bins() -> Vec<String> {
    let root = workspace_root();
    let mut bins = Vec::new();
    for dir in [
        "tracker",
        "worker-sdk",
        "operator",
        "cli",
        "examples/worker",
    ] {
        let Ok(manifest) = std::fs::read_to_string(root.join(dir).join("Cargo.toml")) else {
            continue;
        };
        let mut in_bin = false;
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(name) = line.strip_prefix("name = ") {
                bins.push(name.trim_matches('"').to_string());
            }
        }
    }
    bins
}

#[test]
fn dockerfiles_build_existing_binaries_as_non_root() {
    let root = workspace_root();
    let bins = workspace_bins();
    for (file, expected) in [
        (
            "docker/Dockerfile",
            vec!["lts-tracker", "lts-operator", "lts-worker"],
        ),
        ("examples/worker/Dockerfile", vec!["lts-example-worker"]),
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            text.lines().filter(|l| l.starts_with("FROM ")).count() >= 2,
            "{file}: a multi-stage build"
        );
        assert!(text.contains("USER 65532"), "{file}: runs as uid 65532");
        for bin in expected {
            assert!(
                bins.iter().any(|b| b == bin),
                "{bin} is not a workspace binary: {bins:?}"
            );
            assert!(text.contains(bin), "{file} builds {bin}");
        }
    }
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore leaves out target"
    );
}
