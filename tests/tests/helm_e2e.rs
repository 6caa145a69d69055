//! End-to-end on a real cluster: runs `tests/e2e/kind.sh` (install the chart, apply a Job, see
//! it Succeeded, delete it; the same for a Workflow). Ignored by default, since no Kubernetes
//! API server runs in the test suite: run it with `LTS_E2E_KUBECONFIG` naming the kubeconfig of
//! a disposable kind/k3d cluster and `cargo nextest run -p lts-tests --test helm_e2e
//! --run-ignored all`. The script's header says how to build and load the images.

use std::process::Command;

use lts_tests::workspace_root;

#[test]
#[ignore = "needs a disposable Kubernetes cluster: set LTS_E2E_KUBECONFIG and run ignored tests"]
fn chart_installs_and_runs_a_job_on_a_real_cluster() {
    assert!(
        std::env::var_os("LTS_E2E_KUBECONFIG").is_some_and(|v| !v.is_empty()),
        "set LTS_E2E_KUBECONFIG to the kubeconfig of a disposable kind/k3d cluster to run \
         tests/e2e/kind.sh"
    );
    let script = workspace_root().join("tests/e2e/kind.sh");
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(status.success(), "{} failed: {status}", script.display());
}
