//! ZooKeeper ACLs with a real ZooKeeper: with a digest credential, the registry's nodes can be
//! read and changed only with it — nobody without it can delete a worker's node, publish a
//! fake tracker, or read the cluster's membership — and a tracker refuses to start on nodes
//! someone else can change.

use std::time::Duration;

use lts_registry::{Registry, Role, ZkConfig, ZkRegistry};
use lts_tests::{Proc, TrackerProc, ZkServer, eventually};
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError};

const T: Duration = Duration::from_secs(30);

async fn zk_client(zk: &ZkServer, auth: Option<&str>) -> Client {
    let mut c = Client::connector();
    if let Some(a) = auth {
        c = c.with_auth("digest", a.as_bytes());
    }
    c.connect(&format!(
        "127.0.0.1:{}",
        zk.url().rsplit(':').next().unwrap()
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_credential_only_its_holders_can_read_or_change_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    let cred = dir.path().join("zk.cred");
    std::fs::write(&cred, "lts:s3cret-zk\n").unwrap();
    let registry = format!("{}/secure", zk.url());
    let tracker = TrackerProc::start(
        dir.path(),
        &[
            "--registry",
            &registry,
            "--zk-auth-file",
            cred.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();

    // A member with the credential sees the tracker.
    let cfg = ZkConfig::parse(&registry, "default")
        .unwrap()
        .with_auth_file(Some(&cred))
        .unwrap();
    let member = ZkRegistry::start(cfg, None);
    member.wait_connected(T).await.unwrap();
    let trackers = member.members(Role::JobTracker);
    eventually(T, "the tracker is a member", || {
        let t = trackers.clone();
        async move { (!t.borrow().is_empty()).then_some(()) }
    })
    .await
    .unwrap();
    let node = format!(
        "/secure/lts/default/nodes/job-tracker/{}",
        trackers.borrow()[0].identity
    );

    // Without the credential, or with another one: nothing can be read, deleted or added.
    for auth in [None, Some("lts:wrong"), Some("mallory:s3cret-zk")] {
        let c = zk_client(&zk, auth).await;
        assert_eq!(
            c.get_data(&node).await.unwrap_err(),
            ZkError::NoAuth,
            "{auth:?} reads"
        );
        assert_eq!(
            c.delete(&node, None).await.unwrap_err(),
            ZkError::NoAuth,
            "{auth:?} deletes"
        );
        assert_eq!(
            c.list_children("/secure/lts/default/nodes/job-tracker")
                .await
                .unwrap_err(),
            ZkError::NoAuth,
            "{auth:?} lists"
        );
        let fake = c
            .create(
                "/secure/lts/default/nodes/job-tracker/fake",
                b"{}",
                &CreateMode::Ephemeral.with_acls(Acls::anyone_all()),
            )
            .await;
        assert_eq!(fake.unwrap_err(), ZkError::NoAuth, "{auth:?} creates");
    }
    // With it: readable.
    let c = zk_client(&zk, Some("lts:s3cret-zk")).await;
    c.get_data(&node).await.unwrap();
    member.close().await;
    drop(tracker);
}

/// Lets a registry without a credential make its nodes under `chroot` (world-writable), and
/// waits until they are there: it makes them only once its session is up.
async fn open_chroot(zk: &ZkServer, chroot: &str) {
    let open = ZkRegistry::start(
        ZkConfig::parse(&format!("{}{chroot}", zk.url()), "default").unwrap(),
        None,
    );
    open.wait_connected(T).await.unwrap();
    let anyone = zk_client(zk, None).await;
    let path = format!("{chroot}/lts/default");
    eventually(T, "the open registry's nodes", || {
        let (anyone, path) = (anyone.clone(), path.clone());
        async move { anyone.check_stat(&path).await.ok().flatten().map(|_| ()) }
    })
    .await
    .unwrap();
    open.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tracker_refuses_a_chroot_anyone_can_change() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    open_chroot(&zk, "/open").await;

    let cred = dir.path().join("zk.cred");
    std::fs::write(&cred, "lts:s3cret-zk").unwrap();
    let out = std::process::Command::new(lts_tests::bin("lts-tracker"))
        .args(["--insecure", "--no-auth", "--listen", "127.0.0.1:0"])
        .arg("--store")
        .arg(format!("sqlite:{}", dir.path().join("t.db").display()))
        .args(["--registry", &format!("{}/open", zk.url())])
        .args(["--zk-auth-file", cred.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {stderr}");
    assert!(
        stderr.contains("cannot be secured") && stderr.contains("deleteall /open/lts/default"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");

    // A credential file that is not `user:password` is refused, naming the file.
    std::fs::write(&cred, "just-a-password").unwrap();
    let out = std::process::Command::new(lts_tests::bin("lts-tracker"))
        .args(["--insecure", "--no-auth", "--listen", "127.0.0.1:0"])
        .arg("--store")
        .arg(format!("sqlite:{}", dir.path().join("t.db").display()))
        .args(["--registry", &format!("{}/other", zk.url())])
        .args(["--zk-auth-file", cred.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("zk.cred") && stderr.contains("user:password"),
        "{stderr}"
    );
}

/// A tracker that started while ZooKeeper was down (it serves and keeps trying) stops, naming
/// the reason, once ZooKeeper is back and the chroot turns out to be one anyone can change —
/// instead of serving on without ever joining its cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_started_without_zookeeper_stops_when_its_chroot_cannot_be_secured() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    let url = zk.url();
    open_chroot(&zk, "/late").await;
    // ZooKeeper stops answering (frozen: its data stays) for longer than the tracker waits
    // for it at start (10 s).
    zk.proc.signal("STOP");
    let cred = dir.path().join("zk.cred");
    std::fs::write(&cred, "lts:s3cret-zk").unwrap();
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-tracker"));
    cmd.args(["--insecure", "--no-auth", "--listen", "127.0.0.1:0"])
        .arg("--store")
        .arg(format!("sqlite:{}", dir.path().join("t.db").display()))
        .args(["--registry", &format!("{url}/late")])
        .args(["--zk-auth-file", cred.to_str().unwrap()]);
    let mut tracker = Proc::spawn(cmd, dir.path().join("tracker.log")).unwrap();
    eventually(
        Duration::from_secs(30),
        "the tracker to start without ZooKeeper",
        || {
            let started = tracker.output().contains("starting without ZooKeeper");
            async move { started.then_some(()) }
        },
    )
    .await
    .unwrap();
    zk.proc.signal("CONT");
    let stopped = eventually(Duration::from_secs(60), "the tracker to stop", || {
        let gone = tracker.has_exited();
        async move { gone.then_some(()) }
    })
    .await;
    let out = tracker.output();
    assert!(stopped.is_ok(), "still running: {out}");
    assert!(
        out.contains("lts-tracker: registry:")
            && out.contains("cannot be secured")
            && out.contains("deleteall /late/lts/default"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "{out}");
}
