//! A submit whose answer is lost is retried, and stored once. The tracker is reached twice:
//! directly, and through a proxy that passes requests on and swallows every answer (a
//! network that fails one way). A client whose first attempt goes through the proxy times
//! out and retries directly; the idempotency key it gave the submit answers the retry with
//! the job the first attempt stored — which has run and finished meanwhile, so its task id
//! alone would not have stopped a second job.

use std::time::{Duration, Instant};

use lts_core::{JobSpec, JobState};
use lts_tests::{Proc, TrackerProc, wait_final};
use lts_worker_sdk::{JobClient, ListQuery, SubmitAnswer};
use tokio::net::{TcpListener, TcpStream};

/// A proxy to `target` that forwards what clients send and drops what comes back.
async fn answer_swallowing_proxy(target: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(&target).await else {
                    return;
                };
                let (mut from_client, _to_client) = inbound.split();
                let (mut from_tracker, mut to_tracker) = outbound.split();
                let mut swallowed = tokio::io::sink();
                let _ = tokio::join!(
                    tokio::io::copy(&mut from_client, &mut to_tracker),
                    tokio::io::copy(&mut from_tracker, &mut swallowed),
                );
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_whose_answer_was_lost_is_stored_and_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let runs = dir.path().join("runs.txt");
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args(["--tracker", &tracker.addr, "--node-group", "lost"])
        .arg("--exec")
        .arg(format!("echo \"$LTS_TASK_ID\" >> {}", runs.display()));
    let _worker = Proc::spawn(cmd, dir.path().join("worker.log")).unwrap();
    let proxy = answer_swallowing_proxy(tracker.addr.clone()).await;
    let addrs = vec![proxy, tracker.addr.clone()];
    let mut exercised = false;
    for attempt in 0..10 {
        let task = format!("once-{attempt}");
        // A fresh client starts at one of the two addresses at random.
        let client = JobClient::new(&addrs)
            .unwrap()
            .with_call_timeout(Duration::from_secs(2));
        let started = Instant::now();
        let answer = client
            .submit(JobSpec::new(task.clone(), "lost"))
            .await
            .unwrap();
        let job_id = match answer {
            SubmitAnswer::Accepted { job_id } => job_id,
            other => panic!("the client's own job is answered Accepted: {other:?}"),
        };
        let j = wait_final(&tracker.client(), &job_id, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(j.state, JobState::Succeeded);
        if started.elapsed() < Duration::from_secs(2) {
            continue; // it went directly: try again
        }
        exercised = true;
        let (jobs, _) = tracker
            .client()
            .list(ListQuery {
                node_group: Some("lost".into()),
                task_id_prefix: Some(task.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "stored once: {jobs:?}");
        let ran = std::fs::read_to_string(&runs).unwrap();
        assert_eq!(
            ran.lines().filter(|l| *l == task).count(),
            1,
            "run once:\n{ran}"
        );
        break;
    }
    assert!(
        exercised,
        "no first attempt went through the proxy in 10 tries"
    );
}
