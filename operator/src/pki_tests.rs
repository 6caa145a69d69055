//! The operator's PKI: the pure pieces, the API conversation against a mocked API server, and
//! what it issues put to work on a real `lts-tracker` process (TLS with client certificates
//! required, the generated auth file): each identity can do what its role says and nothing
//! else. Needs the workspace binaries (`cargo build --workspace --bins`).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Secret;
use lts_core::pki::{Ca, fingerprint};
use lts_core::{JobSpec, proto};
use lts_tests::{RawWorker, TrackerProc, free_port};
use lts_worker_sdk::{ClientError, Credentials, JobClient};
use serde_json::Value;

use super::*;
use crate::crd::{ClientSpec, NodeGroup, NodeRole};
use crate::fixtures::{FakeTracker, Step, context, finish, nodegroup};

fn client(name: &str, groups: &[&str], admin: bool) -> ClientSpec {
    ClientSpec {
        name: name.into(),
        submit_node_groups: groups.iter().map(|g| g.to_string()).collect(),
        admin,
    }
}

fn pem(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

#[test]
fn the_auth_file_grants_the_operator_each_worker_group_and_each_client_only_their_part() {
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let mailers = nodegroup("mailers", NodeRole::TaskTracker);
    let mut other_cluster = nodegroup("elsewhere", NodeRole::TaskTracker);
    other_cluster.spec.cluster = "staging".into();
    let mut other_ns = nodegroup("far", NodeRole::TaskTracker);
    other_ns.metadata.namespace = Some("other".into());
    let text = auth_file(
        "lts",
        "prod",
        &[jt, mailers.clone(), other_cluster, other_ns, mailers],
        &[
            client("ops", &[], true),
            client("billing", &["billing"], false),
        ],
    );
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let principals = doc["principals"].as_array().unwrap();
    let names: Vec<&str> = principals
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "lts-operator",
            "task-tracker/mailers",
            "client/billing",
            "client/ops"
        ]
    );
    assert_eq!(principals[0]["certificates"][0], OPERATOR_ID);
    assert_eq!(principals[0]["grants"][0]["role"], "admin");
    assert_eq!(
        principals[1]["certificates"][0],
        "spiffe://lts/ns/lts/cluster/prod/node-group/mailers"
    );
    assert_eq!(
        principals[1]["grants"],
        serde_json::json!([{"role": "worker", "groups": ["mailers"]}])
    );
    assert_eq!(
        principals[2]["grants"],
        serde_json::json!([{"role": "submitter", "groups": ["billing"]}])
    );
    assert_eq!(principals[3]["grants"][0]["role"], "admin");
    assert!(text.starts_with("# Written by lts-operator"));
}

#[test]
fn a_certificate_is_kept_until_two_thirds_of_its_life_or_a_new_ca() {
    let ca = Ca::new("test").unwrap();
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let w = Wanted::node_group(&jt, "lts");
    assert_eq!(w.common_name, "tracker.lts.svc");
    assert_eq!(w.secret, "tracker-lts-tls");
    let sans = w.sans.clone();
    assert!(sans.contains(&"tracker.lts.svc.cluster.local".to_string()));
    let validity = Duration::from_secs(3 * 3600);
    let s = leaf_secret(&w, &ca, validity).unwrap();
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(pem(&s, "ca.crt"), ca.cert_pem());
    let fp = fingerprint(&ca.cert_pem());
    let now = now();
    assert!(leaf_is_current(Some(&s), &fp, &sans, now));
    assert!(!leaf_is_current(None, &fp, &sans, now), "missing");
    let other = fingerprint(&Ca::new("other").unwrap().cert_pem());
    assert!(!leaf_is_current(Some(&s), &other, &sans, now), "new CA");
    let more = [sans.clone(), vec!["extra.example".into()]].concat();
    assert!(!leaf_is_current(Some(&s), &fp, &more, now), "a name added");
    // Issued 5 min back-dated: 2/3 of 3h05m is past at now + 2h.
    assert!(
        !leaf_is_current(Some(&s), &fp, &sans, now + 2 * 3600),
        "renewal due"
    );
    assert!(leaf_is_current(Some(&s), &fp, &sans, now + 3600));
}

#[test]
fn an_issuer_reference_names_its_kind() {
    let i: IssuerRef = "ClusterIssuer/lts-ca".parse().unwrap();
    assert_eq!(
        (i.kind.as_str(), i.name.as_str()),
        ("ClusterIssuer", "lts-ca")
    );
    let i: IssuerRef = "Issuer/mine".parse().unwrap();
    assert_eq!(i.kind, "Issuer");
    let bare: IssuerRef = "lts-ca".parse().unwrap();
    assert_eq!(bare.kind, "ClusterIssuer");
    assert!("Secret/x".parse::<IssuerRef>().is_err());
    assert!("Issuer/".parse::<IssuerRef>().is_err());
}

#[test]
fn a_cert_manager_certificate_asks_for_the_same_names() {
    let tt = nodegroup("mailers", NodeRole::TaskTracker);
    let issuer: IssuerRef = "ClusterIssuer/lts-ca".parse().unwrap();
    let c = certificate(&Wanted::node_group(&tt, "lts"), &issuer, DEFAULT_VALIDITY);
    let spec = &c.data["spec"];
    assert_eq!(spec["secretName"], "mailers-lts-tls");
    assert_eq!(
        spec["uris"],
        serde_json::json!(["spiffe://lts/ns/lts/cluster/prod/node-group/mailers"])
    );
    assert_eq!(spec["dnsNames"], serde_json::json!([]));
    assert_eq!(spec["duration"], "168h");
    assert_eq!(spec["renewBefore"], "56h");
    assert_eq!(spec["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(c.types.as_ref().unwrap().kind, "Certificate");
}

const SECRETS: &str = "/api/v1/namespaces/lts/secrets";

#[tokio::test]
async fn a_job_tracker_reconcile_makes_the_ca_its_certificate_its_clients_and_the_auth_file() {
    let mut jt = nodegroup("tracker", NodeRole::JobTracker);
    jt.spec.clients = vec![client("billing", &["billing"], false)];
    let mailers = nodegroup("mailers", NodeRole::TaskTracker);
    let (ctx, api) = context(
        &[jt.clone(), mailers.clone()],
        Arc::new(FakeTracker::default()),
    );
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(PkiMode::Operator, DEFAULT_VALIDITY, dir.path());
    let verifier = api.run(vec![
        Step::error(
            Method::GET,
            format!("{SECRETS}/prod-lts-ca"),
            404,
            "NotFound",
        ),
        Step::echo(Method::POST, SECRETS),
        Step::error(
            Method::GET,
            format!("{SECRETS}/tracker-lts-tls"),
            404,
            "NotFound",
        ),
        Step::echo(Method::PATCH, format!("{SECRETS}/tracker-lts-tls")),
        Step::error(
            Method::GET,
            format!("{SECRETS}/prod-lts-client-billing"),
            404,
            "NotFound",
        ),
        Step::echo(Method::PATCH, format!("{SECRETS}/prod-lts-client-billing")),
        Step::json(
            Method::GET,
            SECRETS,
            serde_json::json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                "metadata": {}, "items": [
                    {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                     "metadata": {"name": "prod-lts-client-billing", "namespace": "lts"}},
                    {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                     "metadata": {"name": "prod-lts-client-gone", "namespace": "lts"}}]}),
        ),
        Step::echo(Method::DELETE, format!("{SECRETS}/prod-lts-client-gone")),
        Step::echo(Method::PATCH, format!("{SECRETS}/prod-lts-auth")),
    ]);
    pki.reconcile(&ctx.client, &jt, &jt, &[jt.clone(), mailers])
        .await
        .unwrap();
    let calls = finish(verifier).await;
    let ca: Secret = serde_json::from_value(calls[1].body.clone()).unwrap();
    assert_eq!(ca.metadata.name.as_deref(), Some("prod-lts-ca"));
    assert_eq!(
        ca.metadata.owner_references.as_ref().unwrap()[0].name,
        "tracker",
        "the CA goes with the cluster's JobTracker NodeGroup"
    );
    let ca = Ca::load(&pem(&ca, "ca.crt"), &pem(&ca, "ca.key")).unwrap();
    let leaf: Secret = serde_json::from_value(calls[3].body.clone()).unwrap();
    assert_eq!(pem(&leaf, "ca.crt"), ca.cert_pem(), "signed by the new CA");
    assert_eq!(
        leaf.annotations()[CA_ANNOTATION],
        fingerprint(&ca.cert_pem())
    );
    let names = lts_core::pki::inspect(&pem(&leaf, "tls.crt"))
        .unwrap()
        .names;
    assert!(names.contains(&"tracker.lts.svc".to_string()), "{names:?}");
    assert!(calls[3].uri.contains("fieldManager=lts-operator"));
    let client: Secret = serde_json::from_value(calls[5].body.clone()).unwrap();
    let names = lts_core::pki::inspect(&pem(&client, "tls.crt"))
        .unwrap()
        .names;
    assert!(names.contains(&client_id("lts", "prod", "billing")));
    assert_eq!(client.labels()[CLIENT_LABEL], "prod");
    assert!(
        calls[6]
            .uri
            .contains("labelSelector=lts.io%2Fclient-of%3Dprod"),
        "{}",
        calls[6].uri
    );
    let auth: Secret = serde_json::from_value(calls[8].body.clone()).unwrap();
    let text = pem(&auth, AUTH_KEY);
    assert!(text.contains("task-tracker/mailers"), "{text}");
    assert!(text.contains("client/billing"), "{text}");
}

#[tokio::test]
async fn a_current_certificate_is_left_alone() {
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let tt = nodegroup("mailers", NodeRole::TaskTracker);
    let ca = Ca::new("test").unwrap();
    let ca_secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "prod-lts-ca", "namespace": "lts"},
        "data": {"ca.crt": base64(&ca.cert_pem()), "ca.key": base64(&ca.key_pem())}});
    let leaf = leaf_secret(&Wanted::node_group(&tt, "lts"), &ca, DEFAULT_VALIDITY).unwrap();
    let (ctx, api) = context(&[jt.clone(), tt.clone()], Arc::new(FakeTracker::default()));
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(PkiMode::Operator, DEFAULT_VALIDITY, dir.path());
    let verifier = api.run(vec![
        Step::json(Method::GET, format!("{SECRETS}/prod-lts-ca"), ca_secret),
        Step::json(
            Method::GET,
            format!("{SECRETS}/mailers-lts-tls"),
            serde_json::to_value(&leaf).unwrap(),
        ),
        Step::echo(Method::PATCH, format!("{SECRETS}/prod-lts-auth")),
    ]);
    pki.reconcile(&ctx.client, &tt, &jt, &[jt.clone(), tt.clone()])
        .await
        .unwrap();
    finish(verifier).await;
}

fn base64(s: &str) -> String {
    serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// The material of one NodeGroup's Secret, written where a pod would mount it.
fn mount(dir: &std::path::Path, s: &Secret) -> std::path::PathBuf {
    let name = s.metadata.name.clone().unwrap();
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(d.join(key), pem(s, key)).unwrap();
    }
    d
}

fn creds(d: &std::path::Path) -> Credentials {
    Credentials::default()
        .tls_ca_file(d.join("ca.crt"))
        .unwrap()
        .tls_identity_files(d.join("tls.crt"), d.join("tls.key"))
        .unwrap()
        .tls_domain("tracker.lts.svc")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_the_operator_issues_lets_each_part_do_its_job_and_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("LTS cluster prod CA").unwrap();
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let mailers = nodegroup("mailers", NodeRole::TaskTracker);
    let reports = nodegroup("reports", NodeRole::TaskTracker);
    let issue = |ng: &NodeGroup| {
        let w = Wanted::node_group(ng, "lts");
        mount(dir.path(), &leaf_secret(&w, &ca, DEFAULT_VALIDITY).unwrap())
    };
    let tracker_dir = issue(&jt);
    let mailers_dir = issue(&mailers);
    let reports_dir = issue(&reports);
    let billing = client("billing", &["billing"], false);
    let billing_dir = mount(
        dir.path(),
        &leaf_secret(
            &Wanted::client(&jt, "lts", "billing"),
            &ca,
            DEFAULT_VALIDITY,
        )
        .unwrap(),
    );
    let auth = dir.path().join("auth.yaml");
    std::fs::write(
        &auth,
        auth_file(
            "lts",
            "prod",
            &[jt.clone(), mailers.clone(), reports.clone()],
            std::slice::from_ref(&billing),
        ),
    )
    .unwrap();
    // The operator's own identity, as `Pki::credentials` keeps it.
    let pki = Pki::new(
        PkiMode::Operator,
        DEFAULT_VALIDITY,
        dir.path().join("operator"),
    );
    let key = ("lts".to_string(), "prod".to_string());
    let id_dir = pki.identity_dir("lts", "prod");
    let operator = pki
        .write_identity(&key, &id_dir, &ca)
        .unwrap()
        .tls_domain("tracker.lts.svc");

    let path = |p: std::path::PathBuf| p.display().to_string();
    let (cert, key_file, ca_file, auth_arg) = (
        path(tracker_dir.join("tls.crt")),
        path(tracker_dir.join("tls.key")),
        path(tracker_dir.join("ca.crt")),
        path(auth.clone()),
    );
    let port = free_port();
    let metrics = format!("127.0.0.1:{}", free_port());
    let tracker = TrackerProc::start_secured(
        dir.path(),
        port,
        &[
            "--metrics-listen",
            &metrics,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key_file,
            "--tls-ca",
            &ca_file,
            "--tls-client-auth",
            "required",
            "--auth-file",
            &auth_arg,
        ],
        &[],
        operator.clone(),
    )
    .await
    .unwrap();
    let addr = tracker.addr.clone();

    // The kubelet's probes reach the metrics port over plain HTTP while gRPC needs TLS.
    for (path, want) in [
        ("/readyz", "ready"),
        ("/healthz", "ok"),
        ("/metrics", "lts_"),
    ] {
        let answer = lts_tests::http_get(&metrics, path).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(answer.contains(want), "{path}: {answer}");
    }

    // The operator is admin: it sees the whole cluster and submits for any group.
    let admin = JobClient::new(std::slice::from_ref(&addr))
        .unwrap()
        .with_credentials(operator);
    admin.nodes().await.expect("the operator is admin");
    let mut spec = JobSpec::new("for-mailers", "mailers");
    spec.submit_node_group = "lts-operator".into();
    admin.submit(spec).await.unwrap();

    // A mailers pod takes mailers' jobs.
    let mut w = RawWorker::connect_with(&addr, "mailers", "mailers-0", &creds(&mailers_dir))
        .await
        .unwrap();
    let a = tokio::time::timeout(Duration::from_secs(20), w.assignment())
        .await
        .expect("an assignment")
        .unwrap();
    assert_eq!(a.job.unwrap().spec.unwrap().task_id, "for-mailers");

    // A reports pod cannot take mailers' jobs.
    let refused =
        match RawWorker::connect_with(&addr, "mailers", "reports-0", &creds(&reports_dir)).await {
            Ok(mut w) => w.inbound.message().await.unwrap_err(),
            Err(e) => e.downcast::<tonic::Status>().unwrap(),
        };
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // The client submits as billing only, and sees no cluster internals.
    let billing = JobClient::new(std::slice::from_ref(&addr))
        .unwrap()
        .with_credentials(creds(&billing_dir));
    let mut ok = JobSpec::new("invoice-1", "mailers");
    ok.submit_node_group = "billing".into();
    billing
        .submit(ok)
        .await
        .expect("billing submits as billing");
    let mut other = JobSpec::new("other-1", "mailers");
    other.submit_node_group = "payroll".into();
    assert!(
        matches!(
            billing.submit(other).await,
            Err(ClientError::PermissionDenied(_))
        ),
        "billing cannot submit as payroll"
    );
    let nodes: proto::ListNodesResponse = billing.nodes().await.unwrap();
    assert!(
        nodes
            .nodes
            .iter()
            .all(|n| n.role == proto::NodeRole::JobTracker as i32),
        "a submitter sees only the JobTrackers"
    );

    // A worker's certificate does not make a submitter; and without a certificate the
    // tracker does not talk at all.
    let worker_as_client = JobClient::new(std::slice::from_ref(&addr))
        .unwrap()
        .with_credentials(creds(&mailers_dir));
    let mut spec = JobSpec::new("sneaky", "mailers");
    spec.submit_node_group = "billing".into();
    assert!(matches!(
        worker_as_client.submit(spec).await,
        Err(ClientError::PermissionDenied(_))
    ));
    let anonymous = JobClient::new(std::slice::from_ref(&addr))
        .unwrap()
        .with_credentials(
            Credentials::default()
                .tls_ca_file(mailers_dir.join("ca.crt"))
                .unwrap()
                .tls_domain("tracker.lts.svc"),
        );
    let e = anonymous.nodes().await.expect_err("no client certificate");
    assert!(
        e.to_string().contains("client certificate"),
        "the error says what is missing: {e}"
    );
}
