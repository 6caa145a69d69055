//! The `lts-operator` binary against a stand-in API server that serves no LTS CRDs: it must
//! refuse to start with one clear message. And `crdgen` prints exactly `crds/`.

use std::process::Command;

use axum::Router;
use axum::http::{StatusCode, header};

async fn api_server_without_crds() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let not_found = || async {
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","code":404}"#,
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(not_found);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_to_start_without_the_crds() {
    let (addr, server) = api_server_without_crds().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: lts\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_lts-operator"))
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .args(["--listen", "127.0.0.1:0", "--log-format", "text"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    server.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "lts-operator: the CRDs nodegroups.lts.io, jobs.lts.io are not installed: install them with `kubectl apply -f crds/` (or the Helm chart charts/lts) and start the operator again"
    );
}

#[test]
fn crdgen_prints_the_checked_in_crds() {
    let out = Command::new(env!("CARGO_BIN_EXE_crdgen")).output().unwrap();
    assert!(out.status.success());
    let checked_in = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/lts.io.yaml"),
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == checked_in,
        "crds/lts.io.yaml drifted: cargo run -p lts-operator --bin crdgen > crds/lts.io.yaml"
    );
}
