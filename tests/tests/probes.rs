//! The health endpoints a kubelet probes, on real processes: the `lts-worker` sidecar's
//! `/readyz` follows its connection to a tracker (not ready before the tracker is up, ready
//! once connected, not ready again when the tracker is killed) while `/healthz` stays up
//! throughout, so a tracker outage takes workers out of rotation without restarting them; the
//! tracker exports each node group's backlog for autoscalers; and a tracker whose embedded
//! store can no longer make its writes durable says so.

use std::time::Duration;

use lts_tests::{Proc, TrackerProc, eventually, free_port, http_get};

const T: Duration = Duration::from_secs(30);

async fn status(addr: &str, path: &str) -> Option<u16> {
    let answer = http_get(addr, path).await.ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_readiness_follows_its_tracker_and_liveness_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let tracker_addr = format!("127.0.0.1:{port}");
    let health = format!("127.0.0.1:{}", free_port());
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args(["--tracker", &tracker_addr, "--node-group", "probed"])
        .args(["--exec", "true", "--health-listen", &health]);
    let _worker = Proc::spawn(cmd, dir.path().join("worker.log")).unwrap();

    // No tracker yet: alive, not ready.
    eventually(T, "/healthz answers 200", || async {
        (status(&health, "/healthz").await == Some(200)).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(status(&health, "/readyz").await, Some(503));

    let mut tracker = TrackerProc::start_on(dir.path(), port, &[]).await.unwrap();
    eventually(T, "/readyz once connected", || async {
        (status(&health, "/readyz").await == Some(200)).then_some(())
    })
    .await
    .unwrap();

    tracker.proc.kill9();
    eventually(T, "/readyz 503 after the tracker died", || async {
        (status(&health, "/readyz").await == Some(503)).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(status(&health, "/healthz").await, Some(200), "still alive");
}

/// The per-group backlog gauges an autoscaler (KEDA, an HPA on an external metric) reads:
/// jobs submitted for a group with no TaskTracker show as due on the tracker's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_exports_each_groups_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let tracker = TrackerProc::start(dir.path(), &["--metrics-listen", &metrics])
        .await
        .unwrap();
    let client = tracker.client();
    let jobs: Vec<lts_core::JobSpec> = (0..3)
        .map(|i| lts_core::JobSpec::new(format!("b-{i}"), "batch"))
        .collect();
    client.submit_batch(jobs).await.unwrap();
    let body = eventually(T, "lts_jobs_due for batch", || async {
        let body = http_get(&metrics, "/metrics").await.ok()?;
        body.contains("lts_jobs_due{node_group=\"batch\"} 3")
            .then_some(body)
    })
    .await
    .unwrap();
    assert!(
        body.contains("lts_jobs_queued{node_group=\"batch\"} 3"),
        "{body}"
    );
    assert!(
        body.contains("lts_jobs_running{node_group=\"batch\"} 0"),
        "{body}"
    );
}

/// A tracker told to stop drains first: at once not ready (so the Service and the clients move
/// away) while it still answers calls, and gone after `--drain-seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_tracker_drains_before_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut tracker = TrackerProc::start(
        dir.path(),
        &["--metrics-listen", &metrics, "--drain-seconds", "3"],
    )
    .await
    .unwrap();
    assert_eq!(status(&metrics, "/readyz").await, Some(200));
    let client = tracker.client();
    tracker.proc.signal("TERM");
    eventually(T, "/readyz 503 while draining", || async {
        (status(&metrics, "/readyz").await == Some(503)).then_some(())
    })
    .await
    .unwrap();
    assert!(!tracker.proc.has_exited(), "still serving while draining");
    client
        .nodes()
        .await
        .expect("calls on their way are still answered");
    eventually(T, "the tracker to exit after draining", || {
        let gone = tracker.proc.has_exited();
        async move { gone.then_some(()) }
    })
    .await
    .unwrap();
}

/// A failed fsync of the embedded store's WAL (injected with a fail point): the write it was
/// to make durable is refused with the reason, so is every write after it, and `/readyz`
/// answers 503 naming it — while `/healthz` stays up (the process lives; a restart recovers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_stores_writes_and_readyz_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let tracker = TrackerProc::start_with_env(
        dir.path(),
        free_port(),
        &["--metrics-listen", &metrics],
        &[("FAILPOINTS", "sqlite-wal-fsync=return")],
    )
    .await
    .unwrap();
    let client = tracker.client();
    for i in 0..2 {
        let job = lts_core::JobSpec::new(format!("f-{i}"), "batch");
        let err = client
            .submit_batch(vec![job])
            .await
            .expect_err("a write that could not be made durable is refused")
            .to_string();
        assert!(err.contains("fsync"), "{err}");
    }
    let body = eventually(T, "/readyz 503 naming the fsync", || async {
        let answer = http_get(&metrics, "/readyz").await.ok()?;
        (answer.contains(" 503 ") && answer.contains("fsync")).then_some(answer)
    })
    .await
    .unwrap();
    assert!(body.contains("restart"), "{body}");
    assert_eq!(status(&metrics, "/healthz").await, Some(200));
}
