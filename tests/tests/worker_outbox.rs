//! The worker's durable outbox: a run that finished while no tracker could hear it, on a
//! worker that was then killed (`kill -9`), is reported by the restarted worker from its
//! outbox — the job is not run a second time. Real processes throughout.

use std::time::Duration;

use lts_core::{JobKey, JobSpec, JobState};
use lts_tests::{Proc, TrackerProc, eventually, wait_final};
use lts_worker_sdk::SubmitAnswer;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_kept_in_the_outbox_survives_a_worker_crash_and_is_not_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let port = lts_tests::free_port();
    // A long lease: the restarted worker comes back well within it.
    let tracker = TrackerProc::start_on(dir.path(), port, &["--lease-ms", "60000"])
        .await
        .unwrap();
    let client = tracker.client();
    let runs = dir.path().join("runs.txt");
    let outbox = dir.path().join("outbox.db");
    let addr = tracker.addr.clone();
    let worker = |name: &str| {
        let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
        cmd.args(["--tracker", &addr, "--node-group", "outbox"])
            .args(["--identity", "w1"])
            .arg("--outbox")
            .arg(&outbox)
            .arg("--exec")
            .arg(format!(
                "echo run >> {}; sleep \"${{LTS_PARAM_SLEEP:-0}}\"; echo finished",
                runs.display()
            ));
        Proc::spawn(cmd, dir.path().join(format!("{name}.log"))).unwrap()
    };
    let mut first = worker("first");
    let id = match client
        .submit(JobSpec::new("once", "outbox").param("sleep", "3"))
        .await
        .unwrap()
    {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    eventually(T, "the job running", || async {
        let j = client.get(JobKey::Id(id.clone())).await.ok()?;
        (j.state == JobState::Running).then_some(())
    })
    .await
    .unwrap();
    // The tracker goes away while the job runs; the run finishes with nobody to tell, its
    // result goes to the outbox; then the worker is killed.
    let stopped = tracker.restart_after_kill9_after(Duration::from_secs(5));
    let worker_log = first.log.clone();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(4)).await;
        first.kill9();
        first
    });
    let tracker = stopped.await.unwrap();
    let first = killer.await.unwrap();
    drop(first);
    let log = std::fs::read_to_string(&worker_log).unwrap_or_default();
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().lines().count(),
        1,
        "one run before the crash:\n{log}"
    );

    // A new worker process with the same outbox reports the result; nothing runs again.
    let second = worker("second");
    let client = tracker.client();
    let j = wait_final(&client, &id, T).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}\n{}", second.output());
    assert_eq!(j.attempt, 1, "the first run's result: {j:?}");
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);
    assert!(
        second
            .output()
            .contains("results from the outbox to send again"),
        "{}",
        second.output()
    );
}
