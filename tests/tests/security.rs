//! Authentication, authorization and TLS with real processes: an `lts-tracker` serving TLS
//! with an auth file, called by every kind of principal over real sockets — every RPC allowed
//! or refused as its role says, a worker confined to its groups and its identity, tokens that
//! expire or are revoked while the tracker runs, certificates rotated on disk, and the errors a
//! misconfigured client gets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lts_core::pki::{Ca, Leaf};
use lts_core::proto::{
    self, feedback_service_client::FeedbackServiceClient, job_service_client::JobServiceClient,
};
use lts_core::{JobKey, JobSpec, Schedule};
use lts_tests::{RawWorker, TrackerProc, eventually, free_port};
use lts_tracker::auth::new_token;
use lts_worker_sdk::{ClientError, Credentials, JobClient, ListQuery};
use tonic::Code;

const T: Duration = Duration::from_secs(30);

/// A tracker serving TLS (client certificates optional) with an auth file, and the
/// credentials of each principal the file names.
struct Secured {
    tracker: TrackerProc,
    ca: Ca,
    admin: Credentials,
    billing: Credentials,
    other: Credentials,
    /// Certificate `billing-workers`: worker of `billing-jobs`.
    worker: Credentials,
    /// Token: worker of `other-jobs`.
    rogue: Credentials,
    expired: Credentials,
    revocable: Credentials,
    auth_file: PathBuf,
    revocable_hash: String,
}

fn write(path: &Path, text: &str) {
    // Write then rename, as a Secret volume update does: a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn tls_creds(ca: &Ca) -> Credentials {
    Credentials::default().tls_ca_pem(ca.cert_pem())
}

fn auth_file(h: &[(&str, String)], revocable: Option<&str>) -> String {
    let hash = |name: &str| {
        h.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, h)| h.clone())
            .unwrap()
    };
    let mut text = format!(
        r#"principals:
  - name: admin
    tokens: [{{sha256: {admin}}}]
    grants: [{{role: admin}}]
  - name: billing-api
    tokens: [{{sha256: {billing}}}]
    grants: [{{role: submitter, groups: [billing]}}]
  - name: other-api
    tokens: [{{sha256: {other}}}]
    grants: [{{role: submitter, groups: [other]}}]
  - name: billing-workers
    certificates: [billing-workers]
    grants: [{{role: worker, groups: [billing-jobs]}}]
  - name: rogue-workers
    tokens: [{{sha256: {rogue}}}]
    grants: [{{role: worker, groups: [other-jobs]}}]
  - name: old-api
    tokens:
      - sha256: {expired}
        expires: 2001-01-01T00:00:00Z
    grants: [{{role: submitter, groups: [billing]}}]
"#,
        admin = hash("admin"),
        billing = hash("billing"),
        other = hash("other"),
        rogue = hash("rogue"),
        expired = hash("expired"),
    );
    if let Some(r) = revocable {
        text.push_str(&format!(
            "  - name: temp-api\n    tokens: [{{sha256: {r}}}]\n    grants: [{{role: submitter, groups: [billing]}}, {{role: worker, groups: [billing-jobs]}}]\n"
        ));
    }
    text
}

fn save_leaf(dir: &Path, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    write(&cert, &leaf.cert_pem);
    write(&key, &leaf.key_pem);
    (cert, key)
}

impl Secured {
    async fn start(dir: &Path) -> Secured {
        let ca = Ca::new("test CA").unwrap();
        let mut tokens = Vec::new();
        let mut hashes = Vec::new();
        for name in ["admin", "billing", "other", "rogue", "expired", "revocable"] {
            let (t, h) = new_token();
            tokens.push((name, t));
            hashes.push((name, h));
        }
        let token = |name: &str| {
            tokens
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.clone())
                .unwrap()
        };
        let revocable_hash = hashes[5].1.clone();
        let admin = tls_creds(&ca).token(token("admin"));
        let w = ca
            .issue("billing-workers", &["billing-workers"], T * 100)
            .unwrap();
        let (tracker, _, _) = start_tls_tracker(
            dir,
            &ca,
            "optional",
            &auth_file(&hashes, Some(&revocable_hash)),
            admin.clone(),
        )
        .await;
        Secured {
            tracker,
            admin,
            billing: tls_creds(&ca).token(token("billing")),
            other: tls_creds(&ca).token(token("other")),
            worker: tls_creds(&ca).tls_identity_pem(w.cert_pem, w.key_pem),
            rogue: tls_creds(&ca).token(token("rogue")),
            expired: tls_creds(&ca).token(token("expired")),
            revocable: tls_creds(&ca).token(token("revocable")),
            ca,
            auth_file: dir.join("auth.yaml"),
            revocable_hash: revocable_hash.clone(),
        }
    }

    fn client(&self, creds: &Credentials) -> JobClient {
        JobClient::new(std::slice::from_ref(&self.tracker.addr))
            .unwrap()
            .with_credentials(creds.clone())
    }

    async fn jobs(
        &self,
        creds: &Credentials,
    ) -> JobServiceClient<lts_worker_sdk::credentials::AuthChannel> {
        JobServiceClient::new(
            lts_worker_sdk::connect::connect_one(&self.tracker.addr, creds)
                .await
                .unwrap(),
        )
    }
}

fn job(submit: &str, task: &str) -> JobSpec {
    let mut s = JobSpec::new(task, "billing-jobs");
    s.submit_node_group = submit.into();
    s
}

fn denied<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) -> String {
    match r {
        Err(ClientError::PermissionDenied(m)) => m,
        other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
    }
}

fn unauthenticated<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) -> String {
    match r {
        Err(ClientError::Unauthenticated(m)) => m,
        other => panic!("{what}: expected UNAUTHENTICATED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_is_allowed_or_refused_as_the_callers_role_says() {
    let dir = tempfile::tempdir().unwrap();
    let s = Secured::start(dir.path()).await;
    let (admin, billing, other, worker) = (
        s.client(&s.admin),
        s.client(&s.billing),
        s.client(&s.other),
        s.client(&s.worker),
    );

    // Submit: a submitter for its own group only; a worker never.
    let id = billing
        .submit(job("billing", "b-1"))
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_string();
    let m = denied(
        other.submit(job("billing", "o-1")).await,
        "other submits as billing",
    );
    assert!(
        m.contains("other-api") && m.contains("submitter of submit node group \"billing\""),
        "{m}"
    );
    denied(
        worker.submit(job("billing", "w-1")).await,
        "a worker submits",
    );
    // Nor may another tenant replace it by submitting the same task id with replace_on_exist.
    let m = denied(
        other
            .submit(job("other", "b-1").replace_on_exist(true))
            .await,
        "other replaces billing's job",
    );
    assert!(m.contains("replace this job"), "{m}");
    // A plain duplicate of it is refused as taken, without that job's id.
    match other.submit(job("other", "b-1")).await.unwrap() {
        lts_worker_sdk::SubmitAnswer::Rejected(v) => {
            assert!(v.to_string().contains("taken by an unfinished job"), "{v}")
        }
        a => panic!("a duplicate of another tenant's job: {a:?}"),
    }
    assert_eq!(
        admin
            .get(JobKey::Id(id.clone()))
            .await
            .unwrap()
            .spec
            .submit_node_group,
        "billing"
    );
    let other_id = other
        .submit(job("other", "o-2"))
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_string();
    admin.submit(job("billing", "a-1")).await.unwrap();
    // A batch with one job of a foreign group is refused whole: nothing stored.
    denied(
        billing
            .submit_batch(vec![job("billing", "b-2"), job("other", "b-3")])
            .await,
        "a batch with a foreign job",
    );
    assert!(matches!(
        admin
            .get(JobKey::Task {
                node_group: "billing-jobs".into(),
                task_id: "b-2".into()
            })
            .await,
        Err(ClientError::NotFound(_))
    ));

    // Get and GetLog: own jobs only.
    billing.get(JobKey::Id(id.clone())).await.unwrap();
    admin.get(JobKey::Id(other_id.clone())).await.unwrap();
    denied(
        other.get(JobKey::Id(id.clone())).await,
        "other reads billing's job",
    );
    denied(
        billing.get(JobKey::Id(other_id.clone())).await,
        "billing reads other's job",
    );
    billing.log(&id, 10).await.unwrap();
    denied(other.log(&id, 10).await, "other reads billing's job log");

    // WorkflowService: the grants of the jobs it reads and submits.
    let mut flow = job("billing", "b-flow");
    flow.workflow = Some(lts_core::workflow::Workflow {
        nodes: vec![lts_core::workflow::WorkflowNode {
            name: "only".into(),
            spec: JobSpec::default(),
            kept_output: None,
        }],
        edges: Vec::new(),
    });
    let flow_id = billing
        .submit_workflow(flow.clone())
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_string();
    denied(
        worker.submit_workflow(flow).await,
        "a worker submits a workflow",
    );
    denied(
        other.workflow_nodes(JobKey::Id(flow_id.clone())).await,
        "other lists billing's workflow nodes",
    );
    denied(
        other.retry_workflow(JobKey::Id(flow_id.clone())).await,
        "other retries billing's workflow",
    );
    billing.workflow_nodes(JobKey::Id(flow_id)).await.unwrap();

    // List: confined to its own submit node group, whatever the filter says.
    let (mine, _) = billing.list(ListQuery::default()).await.unwrap();
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|j| j.spec.submit_node_group == "billing"));
    let (all, _) = admin.list(ListQuery::default()).await.unwrap();
    assert!(all.iter().any(|j| j.spec.submit_node_group == "other"));
    denied(
        other
            .list(ListQuery {
                submit_node_group: Some("billing".into()),
                ..Default::default()
            })
            .await,
        "other lists billing's jobs",
    );

    // Cancel, suspend, resume, trigger: own jobs only.
    let mut cron = job("billing", "b-cron");
    cron.schedule = Schedule::Cron {
        expression: "0 0 0 1 1 *".into(),
        time_zone: None,
    };
    let cron_id = billing
        .submit(cron)
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_string();
    let key = JobKey::Id(cron_id.clone());
    denied(other.suspend(key.clone()).await, "other suspends");
    denied(other.resume(key.clone()).await, "other resumes");
    denied(other.trigger(key.clone()).await, "other triggers");
    denied(other.cancel(key.clone()).await, "other cancels");
    billing.suspend(key.clone()).await.unwrap();
    billing.resume(key.clone()).await.unwrap();
    billing.trigger(key.clone()).await.unwrap();
    billing.cancel(key.clone()).await.unwrap();

    // Stats: every group's counts for an admin; one group's for its workers.
    admin.stats(None).await.unwrap();
    denied(
        billing.stats(None).await,
        "a submitter reads every group's stats",
    );
    worker.stats(Some("billing-jobs")).await.unwrap();
    denied(
        worker.stats(Some("other-jobs")).await,
        "a worker reads another group's stats",
    );

    // Watch: own submit node group only.
    let refused = s
        .jobs(&s.other)
        .await
        .watch(proto::WatchJobsRequest {
            submit_node_group: "billing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    s.jobs(&s.billing)
        .await
        .watch(proto::WatchJobsRequest::default())
        .await
        .unwrap();

    // Feedback: only the group's own submitters subscribe.
    for (creds, group, ok) in [(&s.other, "billing", false), (&s.billing, "billing", true)] {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(proto::FeedbackClientMessage {
            msg: Some(proto::feedback_client_message::Msg::Subscribe(
                proto::FeedbackSubscribe {
                    submit_node_group: group.into(),
                    identity: "c".into(),
                },
            )),
        })
        .unwrap();
        let r = FeedbackServiceClient::new(
            lts_worker_sdk::connect::connect_one(&s.tracker.addr, creds)
                .await
                .unwrap(),
        )
        .subscribe(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await;
        assert_eq!(r.is_ok(), ok, "subscribe {group}: {:?}", r.err());
        if let Err(e) = r {
            assert_eq!(e.code(), Code::PermissionDenied);
        }
    }

    // Cluster: anyone known finds the trackers; only an admin sees the TaskTrackers.
    let _w = RawWorker::connect_with(&s.tracker.addr, "billing-jobs", "w-a", &s.worker)
        .await
        .unwrap();
    let seen = |r: proto::ListNodesResponse| {
        r.nodes
            .iter()
            .any(|n| n.role == proto::NodeRole::TaskTracker as i32)
    };
    eventually(T, "the TaskTracker registered", || async {
        seen(admin.nodes().await.unwrap()).then_some(())
    })
    .await
    .unwrap();
    let listed = billing.nodes().await.unwrap();
    assert!(!seen(listed.clone()), "a submitter sees no TaskTracker");
    assert!(
        listed
            .nodes
            .iter()
            .any(|n| n.role == proto::NodeRole::JobTracker as i32)
    );
    billing.master_changes().await.unwrap();

    // Without credentials, or with a token that expired: UNAUTHENTICATED, saying what to do.
    let none = s.client(&tls_creds(&s.ca));
    let m = unauthenticated(none.stats(None).await, "no credentials");
    assert!(m.contains("--token-file"), "{m}");
    unauthenticated(none.nodes().await, "no credentials, cluster API");
    let m = unauthenticated(
        s.client(&s.expired).submit(job("billing", "e-1")).await,
        "an expired token",
    );
    assert!(m.contains("expired"), "{m}");
    unauthenticated(
        s.client(&tls_creds(&s.ca).token("lts_0000"))
            .get(JobKey::Id(id))
            .await,
        "a token never issued",
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_runs_only_its_groups_jobs_under_its_own_identity() {
    let dir = tempfile::tempdir().unwrap();
    let s = Secured::start(dir.path()).await;
    let admin = s.client(&s.admin);

    // A submitter's token cannot open a Work stream, and a worker cannot take another group.
    for (creds, group, who) in [
        (&s.billing, "billing-jobs", "a submitter"),
        (&s.worker, "other-jobs", "a worker of another group"),
    ] {
        let e = match RawWorker::connect_with(&s.tracker.addr, group, "w-x", creds).await {
            Ok(mut w) => w.inbound.message().await.unwrap_err(),
            Err(e) => e
                .downcast::<tonic::Status>()
                .unwrap_or_else(|e| panic!("{who}: {e:#}")),
        };
        assert_eq!(e.code(), Code::PermissionDenied, "{who}: {e:?}");
        assert!(
            e.message().contains("worker of TaskTracker node group"),
            "{e:?}"
        );
    }

    // The worker of billing-jobs receives billing-jobs' job, never other-jobs'.
    let mut foreign = JobSpec::new("foreign", "other-jobs");
    foreign.submit_node_group = "ops".into();
    let foreign_id = admin
        .submit(foreign)
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_string();
    let mut mine = job("billing", "mine");
    mine.priority = -1;
    let mine_id = admin
        .submit(mine)
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_string();
    let mut w = RawWorker::connect_with(&s.tracker.addr, "billing-jobs", "w-1", &s.worker)
        .await
        .unwrap();
    let a = tokio::time::timeout(T, w.assignment())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.job.unwrap().job_id, mine_id);
    let f = admin.get(JobKey::Id(foreign_id)).await.unwrap();
    assert_eq!(f.state, lts_core::JobState::Queued);

    // Another principal cannot speak for w-1 while it is connected, even for a group it
    // may work for: its leases and registration stay w-1's.
    let e = match RawWorker::connect_with(&s.tracker.addr, "other-jobs", "w-1", &s.rogue).await {
        Ok(mut r) => r.inbound.message().await.unwrap_err(),
        Err(e) => e.downcast::<tonic::Status>().unwrap(),
    };
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("in use by principal \"billing-workers\""),
        "{e:?}"
    );
    // The same principal may reconnect as w-1 (a second stream of a restarting worker).
    let again = RawWorker::connect_with(&s.tracker.addr, "billing-jobs", "w-1", &s.worker).await;
    assert!(again.is_ok());
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_revoked_and_added_by_editing_the_auth_file_while_the_tracker_runs() {
    let dir = tempfile::tempdir().unwrap();
    let s = Secured::start(dir.path()).await;
    let temp = s.client(&s.revocable);
    temp.stats(Some("x")).await.unwrap_err();
    temp.submit(job("billing", "t-1")).await.unwrap();
    // Streams opened before the revocation: a Work stream and a feedback subscription.
    let mut w = RawWorker::connect_with(&s.tracker.addr, "billing-jobs", "temp-1", &s.revocable)
        .await
        .unwrap();
    let (fb_tx, fb_rx) = tokio::sync::mpsc::unbounded_channel();
    fb_tx
        .send(proto::FeedbackClientMessage {
            msg: Some(proto::feedback_client_message::Msg::Subscribe(
                proto::FeedbackSubscribe {
                    submit_node_group: "billing".into(),
                    identity: "temp".into(),
                },
            )),
        })
        .unwrap();
    let mut feedback = FeedbackServiceClient::new(
        lts_worker_sdk::connect::connect_one(&s.tracker.addr, &s.revocable)
            .await
            .unwrap(),
    )
    .subscribe(tokio_stream::wrappers::UnboundedReceiverStream::new(fb_rx))
    .await
    .unwrap()
    .into_inner();

    // Revoke: the entry leaves the file; within a reload the token is refused.
    let text = std::fs::read_to_string(&s.auth_file).unwrap();
    let cut = text.find("  - name: temp-api").unwrap();
    write(&s.auth_file, &text[..cut]);
    eventually(T, "the revoked token is refused", || async {
        matches!(
            temp.submit(job("billing", "t-2")).await,
            Err(ClientError::Unauthenticated(_))
        )
        .then_some(())
    })
    .await
    .unwrap();
    // The open streams end too, saying why; the worker's jobs go back like any leaver's.
    let ended = tokio::time::timeout(T, async {
        loop {
            match w.inbound.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    let e = ended.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let ended = tokio::time::timeout(T, async {
        loop {
            match feedback.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ended.unwrap_err().code(), Code::Unauthenticated);
    drop(fb_tx);

    // A file that does not parse keeps the rules it replaced.
    write(&s.auth_file, "principals: [{name: broken");
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.client(&s.billing)
        .submit(job("billing", "b-9"))
        .await
        .unwrap();
    assert!(
        s.tracker
            .proc
            .output()
            .contains("auth file changed but does not load")
    );

    // Add it back: accepted again, no restart.
    write(
        &s.auth_file,
        &format!(
            "{}  - name: temp-api\n    tokens: [{{sha256: {}}}]\n    grants: [{{role: submitter, groups: [billing]}}, {{role: worker, groups: [billing-jobs]}}]\n",
            &text[..cut],
            s.revocable_hash
        ),
    );
    eventually(T, "the token is accepted again", || async {
        temp.submit(job("billing", "t-3")).await.ok()
    })
    .await
    .unwrap();
}

/// Starts a tracker serving a certificate of `ca` for 127.0.0.1 (files in `dir`: `ca.pem`,
/// `tracker.pem`, `tracker-key.pem`, `auth.yaml` holding `auth`), asking clients for a
/// certificate as `client_auth` says; `creds` are an admin's. Returns the certificate files.
async fn start_tls_tracker(
    dir: &Path,
    ca: &Ca,
    client_auth: &str,
    auth: &str,
    creds: Credentials,
) -> (TrackerProc, PathBuf, PathBuf) {
    let leaf = ca
        .issue("tracker", &["localhost", "127.0.0.1"], T * 100)
        .unwrap();
    let (cert, key) = save_leaf(dir, "tracker", &leaf);
    let ca_file = dir.join("ca.pem");
    write(&ca_file, &ca.cert_pem());
    let auth_file = dir.join("auth.yaml");
    write(&auth_file, auth);
    let t = TrackerProc::start_secured(
        dir,
        free_port(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-ca",
            ca_file.to_str().unwrap(),
            "--tls-client-auth",
            client_auth,
            "--auth-file",
            auth_file.to_str().unwrap(),
        ],
        &[],
        creds,
    )
    .await
    .unwrap();
    (t, cert, key)
}

/// A tracker of `ca` with one principal, `admin` (token in `dir/admin.token`, or the
/// certificate `admin`), asking clients for a certificate as `client_auth` says.
async fn tls_tracker(dir: &Path, ca: &Ca, client_auth: &str) -> (TrackerProc, PathBuf, PathBuf) {
    let admin = ca.issue("admin", &[], T * 100).unwrap();
    let (token, hash) = new_token();
    write(&dir.join("admin.token"), &format!("{token}\n"));
    let auth = format!(
        "principals:\n  - name: admin\n    tokens: [{{sha256: {hash}}}]\n    certificates: [admin]\n    grants: [{{role: admin}}]\n"
    );
    let creds = tls_creds(ca)
        .tls_identity_pem(admin.cert_pem, admin.key_pem)
        .token(token);
    start_tls_tracker(dir, ca, client_auth, &auth, creds).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_rotated_on_disk_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new("first CA").unwrap();
    let (tracker, cert, key) = tls_tracker(dir.path(), &first, "none").await;
    tracker.client().nodes().await.unwrap();

    let second = Ca::new("second CA").unwrap();
    let probe = |ca: &Ca| {
        let addr = tracker.addr.clone();
        let creds = tls_creds(ca);
        async move {
            lts_worker_sdk::connect::connect_one(&addr, &creds)
                .await
                .map(|_| ())
        }
    };
    probe(&first).await.unwrap();
    assert!(
        probe(&second).await.is_err(),
        "not yet the second CA's certificate"
    );

    let leaf = second
        .issue("tracker", &["localhost", "127.0.0.1"], T * 100)
        .unwrap();
    write(&key, &leaf.key_pem);
    write(&cert, &leaf.cert_pem);
    eventually(T, "the tracker serves the new certificate", || async {
        probe(&second).await.ok()
    })
    .await
    .unwrap();
    let e = probe(&first).await.unwrap_err().to_string();
    assert!(e.contains("not signed by the CA given"), "{e}");
    assert!(tracker.proc.output().contains("TLS certificate reloaded"));

    // A half-written pair (a key that does not match) keeps the certificate being served.
    write(&key, &first.issue("x", &["localhost"], T).unwrap().key_pem);
    tokio::time::sleep(Duration::from_secs(7)).await;
    probe(&second).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_misconfigured_client_is_told_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA").unwrap();
    let (tracker, _, _) = tls_tracker(dir.path(), &ca, "required").await;

    // Plaintext to a TLS tracker.
    let plain = JobClient::new(std::slice::from_ref(&tracker.addr))
        .unwrap()
        .stats(None)
        .await
        .unwrap_err()
        .to_string();
    assert!(plain.contains("may serve TLS"), "{plain}");

    // TLS without the client certificate the tracker requires.
    let r = JobClient::new(std::slice::from_ref(&tracker.addr))
        .unwrap()
        .with_credentials(tls_creds(&ca))
        .stats(None)
        .await
        .unwrap_err()
        .to_string();
    assert!(r.contains("client certificate"), "{r}");

    // With it: served.
    tracker.client().stats(None).await.unwrap();

    // The CLI: one readable line and a failing exit code without a token; served with one
    // (a token file, and a client certificate).
    let admin = ca.issue("admin", &[], T).unwrap();
    let (cert, key) = save_leaf(dir.path(), "admin", &admin);
    let lts = |extra: &[&str]| {
        std::process::Command::new(lts_tests::bin("lts"))
            .args(["jobs", "list", "--tracker", &tracker.addr])
            .args(["--tls-ca", dir.path().join("ca.pem").to_str().unwrap()])
            .args(extra)
            .env_remove("LTS_TOKEN")
            .env_remove("LTS_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let out = lts(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    let out = lts(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--token-file",
        dir.path().join("admin.token").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let nobody = ca.issue("nobody", &[], T).unwrap();
    let (ncert, nkey) = save_leaf(dir.path(), "nobody", &nobody);
    let out = lts(&[
        "--tls-cert",
        ncert.to_str().unwrap(),
        "--tls-key",
        nkey.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not authenticated") && stderr(&out).contains("nobody"),
        "{}",
        stderr(&out)
    );
    let out = lts(&["--tls-cert", cert.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--tls-key"), "{}", stderr(&out));

    // A context of the config file says it all: `lts --context secured jobs list`.
    let config = dir.path().join("config.toml");
    write(
        &config,
        &format!(
            "current-context = \"other\"\n[contexts.secured]\ntracker = [\"{}\"]\ntls-ca = \"ca.pem\"\ntls-cert = \"admin.pem\"\ntls-key = \"admin-key.pem\"\n[contexts.other]\ntracker = [\"127.0.0.1:1\"]\n",
            tracker.addr
        ),
    );
    let ctx = |args: &[&str]| {
        std::process::Command::new(lts_tests::bin("lts"))
            .args(["jobs", "list", "--config", config.to_str().unwrap()])
            .args(args)
            .env_remove("LTS_TRACKER")
            .env_remove("LTS_CONTEXT")
            .output()
            .unwrap()
    };
    let out = ctx(&["--context", "secured"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctx(&["--context", "staging"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no context \"staging\""),
        "{}",
        stderr(&out)
    );
    // The current context (a tracker that is not there): unavailable, naming where it looked.
    let out = ctx(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("127.0.0.1:1"), "{}", stderr(&out));
}

#[test]
fn a_tracker_refuses_to_start_open_or_with_a_bad_auth_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(lts_tests::bin("lts-tracker"))
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--store")
            .arg(format!("sqlite:{}", dir.path().join("x.db").display()))
            .args(args)
            .env_remove("LTS_INSECURE")
            .env_remove("LTS_NO_AUTH")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&[]);
    assert!(e.contains("--insecure") && e.contains("--auth-file"), "{e}");
    let bad = dir.path().join("auth.yaml");
    std::fs::write(
        &bad,
        "principals:\n  - name: x\n    tokens: [{sha256: nothex}]\n    grants: [{role: admin}]\n",
    )
    .unwrap();
    let e = run(&["--insecure", "--auth-file", bad.to_str().unwrap()]);
    assert!(e.contains("principals[0].tokens[0].sha256"), "{e}");
    let e = run(&[
        "--insecure",
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        "/x.pem",
        "--no-auth",
    ]);
    assert!(e.contains("contradict"), "{e}");
    let e = run(&[
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        "/x.pem",
        "--no-auth",
    ]);
    assert!(e.contains("/nonexistent.pem"), "{e}");
}
