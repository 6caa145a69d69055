//! End-to-end on a real cluster: runs `tests/e2e/kind.sh` (install the chart, apply a Job, see
//! it Succeeded, delete it) when `LTS_E2E_KUBECONFIG` names a kubeconfig; otherwise it is
//! skipped with a message. The script's header says how to build and load the images.

use std::process::Command;

use lts_tests::workspace_root;

#[test]
fn chart_installs_and_runs_a_job_on_a_real_cluster() {
    if std::env::var_os("LTS_E2E_KUBECONFIG").is_none_or(|v| v.is_empty()) {
        eprintln!(
            "skipped: set LTS_E2E_KUBECONFIG to the kubeconfig of a disposable kind/k3d cluster \
             to run tests/e2e/kind.sh"
        );
        return;
    }
    let script = workspace_root().join("tests/e2e/kind.sh");
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(status.success(), "{} failed: {status}", script.display());
}
