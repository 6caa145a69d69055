//! The CRDs: `charts/lts/crds/` must hold exactly the files of `crds/` (the output of
//! `crdgen`, which the operator crate keeps in step with its Rust types), byte for byte, and
//! they must be valid `CustomResourceDefinition`s for Kubernetes 1.30 and the newest version
//! kubernetes-validate knows.
//!
//! After changing the CRD types: `cargo run -p lts-operator --bin crdgen > crds/lts.io.yaml`
//! and `cp crds/*.yaml charts/lts/crds/`.

use std::collections::BTreeMap;
use std::path::Path;

use lts_tests::{kubernetes_validate, workspace_root, yaml_files};

fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    yaml_files(dir)
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let root = workspace_root();
    let generated = contents(&root.join("crds"));
    let chart = contents(&root.join("charts/lts/crds"));
    assert!(
        !generated.is_empty(),
        "crds/ holds no CRDs (crdgen writes them)"
    );
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&chart),
        names(&generated),
        "charts/lts/crds/ and crds/ must hold the same files: run `cp crds/*.yaml charts/lts/crds/`"
    );
    for (name, bytes) in &generated {
        assert!(
            chart[name] == *bytes,
            "charts/lts/crds/{name} drifted from crds/{name}: run `cp crds/*.yaml charts/lts/crds/`"
        );
    }
}

#[test]
fn crds_are_valid_kubernetes_objects() {
    let files = yaml_files(&workspace_root().join("crds"));
    let out = kubernetes_validate(&files).unwrap_or_else(|e| panic!("{e:#}"));
    for kind in ["nodegroups.lts.io", "jobs.lts.io"] {
        assert!(
            out.contains(&format!("customresourcedefinition/{kind}")),
            "{kind} was validated:\n{out}"
        );
    }
}
