//! `crds/` must be exactly what `crdgen` prints for the current Rust types.

use std::path::Path;

#[test]
fn checked_in_crds_match_the_rust_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/lts.io.yaml");
    let checked_in =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let generated = lts_operator::crds_yaml();
    assert!(
        checked_in == generated,
        "crds/lts.io.yaml drifted from the Rust types in operator/src/crd.rs; regenerate it with\n  cargo run -p lts-operator --bin crdgen > crds/lts.io.yaml"
    );
}

#[test]
fn crdgen_prints_every_crd() {
    let docs: Vec<serde_yaml::Value> =
        serde_yaml::Deserializer::from_str(&lts_operator::crds_yaml())
            .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
            .collect();
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["nodegroups.lts.io", "jobs.lts.io", "workflows.lts.io"]
    );
    let job = &docs[1];
    assert_eq!(
        job["spec"]["names"]["shortNames"][0].as_str(),
        Some("ltsjob")
    );
    assert_eq!(job["spec"]["names"]["categories"][0].as_str(), Some("lts"));
    let workflow = &docs[2];
    assert_eq!(
        workflow["spec"]["names"]["shortNames"][0].as_str(),
        Some("ltswf")
    );
    assert_eq!(
        workflow["spec"]["names"]["categories"][0].as_str(),
        Some("lts")
    );
}
