//! Operations on scheduled jobs through a real tracker process, the SDK and the `lts` CLI:
//! suspend, resume, trigger-now.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_core::{JobKey, JobSpec, JobState, Schedule};
use lts_tests::{TrackerProc, eventually};
use lts_worker_sdk::{JobContext, RunResult, SubmitAnswer, TaskTracker};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

type Runs = Arc<Mutex<Vec<String>>>;

fn worker(
    tracker: &TrackerProc,
    group: &str,
    runs: Runs,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let tt = TaskTracker::builder()
        .node_group(group)
        .tracker(tracker.addr.clone())
        .threads(2)
        .runner(move |ctx: JobContext| {
            let runs = runs.clone();
            async move {
                runs.lock().unwrap().push(ctx.task_id().to_string());
                RunResult::success("")
            }
        })
        .build()
        .unwrap();
    let h = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    (stop, h)
}

fn accepted(a: &SubmitAnswer) -> String {
    match a {
        SubmitAnswer::Accepted { job_id } => job_id.clone(),
        other => panic!("expected accepted, got {other:?}"),
    }
}

/// Runs `lts ARGS --tracker ADDR`; returns (exit code, stdout, stderr).
fn lts(tracker: &TrackerProc, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(lts_tests::bin("lts"))
        .args(args)
        .args(["--tracker", &tracker.addr])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_suspended_job_never_fires_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let runs: Runs = Arc::default();
    let (stop, h) = worker(&tracker, "sched", runs.clone());
    let id = accepted(
        &client
            .submit(JobSpec::new("tick", "sched").schedule(Schedule::Repeat {
                interval_ms: 200,
                count: -1,
                first_fire_ms: None,
            }))
            .await
            .unwrap(),
    );
    let count = || runs.lock().unwrap().len();
    eventually(T, "two fires", || async { (count() >= 2).then_some(()) })
        .await
        .unwrap();

    let (code, out, err) = lts(&tracker, &["jobs", "suspend", "--job-id", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("suspended"), "{out}");
    let j = eventually(T, "the job to wait suspended", || async {
        let j = client.get(JobKey::Id(id.clone())).await.ok()?;
        (j.state == JobState::Suspended).then_some(j)
    })
    .await
    .unwrap();
    let frozen = count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(), frozen, "a suspended job fired: {j:?}");
    let (code, out, _) = lts(&tracker, &["jobs", "suspend", "--job-id", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("already suspended"), "{out}");

    // Resumed after ~7 missed fires: one catch-up run, then on schedule again.
    let (code, out, err) = lts(
        &tracker,
        &[
            "jobs",
            "resume",
            "--node-group",
            "sched",
            "--task-id",
            "tick",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("resumed"), "{out}");
    eventually(T, "fires after the resume", || async {
        (count() >= frozen + 2).then_some(())
    })
    .await
    .unwrap();
    client.cancel(JobKey::Id(id)).await.unwrap();
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn trigger_runs_one_instance_now_without_moving_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let runs: Runs = Arc::default();
    let (stop, h) = worker(&tracker, "yearly", runs.clone());
    // Fires once a year, at New Year.
    let id = accepted(
        &client
            .submit(JobSpec::new("new-year", "yearly").schedule(Schedule::Cron {
                expression: "0 0 0 1 1 *".into(),
                time_zone: Some("UTC".into()),
            }))
            .await
            .unwrap(),
    );
    let before = client.get(JobKey::Id(id.clone())).await.unwrap();
    let (code, out, err) = lts(
        &tracker,
        &["jobs", "trigger", "--job-id", &id, "--output", "json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let instance: serde_json::Value = serde_json::from_str(&out).unwrap();
    let task = instance["spec"]["task_id"].as_str().unwrap().to_string();
    assert!(task.starts_with("new-year~"), "{task}");
    eventually(T, "the triggered instance to run", || async {
        runs.lock().unwrap().contains(&task).then_some(())
    })
    .await
    .unwrap();
    let after = client.get(JobKey::Id(id.clone())).await.unwrap();
    assert_eq!(after.state, JobState::Queued);
    assert_eq!(
        after.trigger_time_ms, before.trigger_time_ms,
        "the schedule did not move"
    );
    assert_eq!(runs.lock().unwrap().len(), 1, "only the instance ran");

    // A one-off job cannot be triggered: one readable line, exit code ≠ 0.
    let one_off = accepted(
        &client
            .submit(
                JobSpec::new("later", "nobody").schedule(Schedule::TriggerAt {
                    trigger_time_ms: lts_core::now_ms() + 3_600_000,
                }),
            )
            .await
            .unwrap(),
    );
    let (code, out, err) = lts(&tracker, &["jobs", "trigger", "--job-id", &one_off]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("one-off"), "{err}");
    stop.cancel();
    h.await.unwrap();
}
