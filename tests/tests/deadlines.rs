//! Per-job timeouts, end to end with real processes: the TaskTracker cancels a run that
//! passes its job's timeout and reports `TIMEOUT` (retried while retries remain); the exec
//! sidecar stops every process of the job; a runner that ignores the cancel is abandoned; and
//! a TaskTracker that never reports loses the run to the tracker's own deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lts_core::proto::{self, worker_message};
use lts_core::{JobSpec, JobState, LogType, Outcome};
use lts_tests::{Proc, RawWorker, TrackerProc, wait_final};
use lts_worker_sdk::{JobContext, RunResult, SubmitAnswer, TaskTracker};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(40);

fn accepted(a: SubmitAnswer) -> String {
    match a {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_is_cancelled_retried_and_finally_fails_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &["--retry-min-delay-ms", "100"])
        .await
        .unwrap();
    let client = tracker.client();
    let runs = Arc::new(AtomicU32::new(0));
    let cancelled = Arc::new(AtomicU32::new(0));
    let (r, c) = (runs.clone(), cancelled.clone());
    let stop = CancellationToken::new();
    let worker = TaskTracker::builder()
        .node_group("slow")
        .tracker(tracker.addr.clone())
        .threads(2)
        .runner(move |ctx: JobContext| {
            let (runs, cancelled) = (r.clone(), c.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                if ctx.param("obey") == Some("no") {
                    // Ignores its cancel: abandoned after the grace.
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return RunResult::success("too late");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => RunResult::success("too late"),
                    _ = ctx.cancel.cancelled() => {
                        cancelled.fetch_add(1, Ordering::SeqCst);
                        RunResult::success("stopped, but the deadline decides")
                    }
                }
            }
        })
        .build()
        .unwrap();
    let h = tokio::spawn(worker.run_until_cancelled(stop.clone()));

    let obeys = accepted(
        client
            .submit(
                JobSpec::new("obeys", "slow")
                    .timeout(Duration::from_secs(1))
                    .max_retries(1),
            )
            .await
            .unwrap(),
    );
    let ignores = accepted(
        client
            .submit(
                JobSpec::new("ignores", "slow")
                    .timeout(Duration::from_secs(1))
                    .param("obey", "no"),
            )
            .await
            .unwrap(),
    );

    let j = wait_final(&client, &obeys, T).await.unwrap();
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    assert_eq!(j.last_outcome, Some(Outcome::Timeout));
    assert_eq!(j.attempt, 2, "one retry after the first timeout");
    let message = j.last_message.unwrap_or_default();
    assert!(
        message.contains("timed out after 1s (the job's timeout); the run was cancelled"),
        "{message}"
    );
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        2,
        "each run saw its cancel"
    );
    let log = client.log(&obeys, 50).await.unwrap();
    let finished: Vec<&str> = log
        .iter()
        .filter(|l| l.log_type == LogType::Finished)
        .map(|l| l.message.as_str())
        .collect();
    assert_eq!(finished.len(), 2, "{log:?}");
    assert!(
        finished.iter().all(|m| m.starts_with("TIMEOUT: ")),
        "{finished:?}"
    );

    let j = wait_final(&client, &ignores, T).await.unwrap();
    assert_eq!(
        (j.state, j.last_outcome),
        (JobState::Failed, Some(Outcome::Timeout)),
        "{j:?}"
    );
    let message = j.last_message.unwrap_or_default();
    assert!(
        message.contains("did not stop within its grace and was abandoned"),
        "{message}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exec_sidecar_stops_every_process_of_a_job_past_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let pids = dir.path().join("pids");
    // A job that starts a child which ignores SIGTERM, and waits for it.
    let script = format!(
        "sh -c \"trap '' TERM; sleep 60\" & echo $! >> {}; wait",
        pids.display()
    );
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args(["--tracker", &tracker.addr, "--node-group", "exec-slow"])
        .args(["--exec", &script]);
    let _worker = Proc::spawn(cmd, dir.path().join("worker.log")).unwrap();
    let id = accepted(
        client
            .submit(JobSpec::new("sleepy", "exec-slow").timeout(Duration::from_secs(1)))
            .await
            .unwrap(),
    );
    let j = wait_final(&client, &id, T).await.unwrap();
    assert_eq!(
        (j.state, j.last_outcome),
        (JobState::Failed, Some(Outcome::Timeout)),
        "{j:?}"
    );
    let child = std::fs::read_to_string(&pids).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.trim()));
    let running = stat.is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    });
    assert!(
        !running,
        "the job's child {} outlived its timeout",
        child.trim()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_tracker_that_never_ends_a_run_loses_it_to_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let id = accepted(
        client
            .submit(JobSpec::new("stuck", "raw").timeout(Duration::from_secs(1)))
            .await
            .unwrap(),
    );
    // A TaskTracker of our own making: it takes the job and renews its lease every 500 ms,
    // asking for a minute each time, and never reports.
    let mut raw = RawWorker::connect(&tracker.addr, "raw", "never-done")
        .await
        .unwrap();
    let send = raw.sender();
    let assignment = raw.assignment().await.unwrap();
    let job = assignment.job.clone().unwrap();
    assert!(job.deadline_ms > 0, "the assignment carries the deadline");
    let lease = proto::LeaseRef {
        job_id: id.clone(),
        lease_token: assignment.lease_token.clone(),
    };
    let renewer = tokio::spawn(async move {
        loop {
            send(worker_message::Msg::Renew(proto::Renew {
                leases: vec![lease.clone()],
            }));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let j = wait_final(&client, &id, T).await.unwrap();
    renewer.abort();
    assert_eq!(
        (j.state, j.last_outcome),
        (JobState::Failed, Some(Outcome::Timeout)),
        "{j:?}"
    );
    let message = j.last_message.unwrap_or_default();
    assert!(message.contains("ran past its timeout of 1s"), "{message}");
    let finished = j.finished_at_ms.unwrap();
    let grace = lts_core::transition::DEADLINE_GRACE_MS;
    assert!(
        finished >= job.deadline_ms + grace,
        "renewals kept it no longer than the grace past its deadline, and no shorter"
    );
}
