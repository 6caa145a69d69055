//! `crdgen`: prints the CustomResourceDefinitions of LTS as YAML (one document each).
//! `crds/` holds exactly this output; a test fails when they drift apart.

fn main() {
    print!("{}", lts_operator::crds_yaml());
}
