//! `JobService.Watch` through real tracker processes: changes are pushed as they happen,
//! filtered on the tracker, and a watch survives a tracker crash with a resync.

use std::time::Duration;

use lts_core::{Job, JobKey, JobSpec, JobState};
use lts_tests::{TrackerProc, free_port};
use lts_worker_sdk::{JobContext, RunResult, TaskTracker, WatchEvent, WatchFilter};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

/// Collects watch events until `done` says the story is complete.
async fn collect(
    watch: &mut lts_worker_sdk::JobWatch,
    mut done: impl FnMut(&[Job]) -> bool,
) -> (Vec<Job>, usize) {
    let mut jobs = Vec::new();
    let mut resyncs = 0;
    let deadline = tokio::time::Instant::now() + T;
    while !done(&jobs) {
        let event = tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap_or_else(|_| panic!("watch timed out; saw {jobs:#?}"))
            .expect("watch ended");
        match event {
            WatchEvent::Changed(job) => jobs.push(*job),
            WatchEvent::Resync { .. } => resyncs += 1,
        }
    }
    (jobs, resyncs)
}

#[tokio::test]
async fn changes_are_pushed_filtered_and_resynced_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let tracker = TrackerProc::start_on(dir.path(), port, &[]).await.unwrap();
    let client = tracker.client();
    let mut watch = client.watch(WatchFilter {
        submit_node_group: Some("ops".into()),
        ..Default::default()
    });
    // The first event of a stream is its resync marker.
    assert!(matches!(
        tokio::time::timeout(T, watch.next()).await.unwrap(),
        Some(WatchEvent::Resync { .. })
    ));

    let mut mine = JobSpec::new("watched", "watch-workers");
    mine.submit_node_group = "ops".into();
    let mut other = JobSpec::new("unwatched", "watch-workers");
    other.submit_node_group = "others".into();
    let answers = client.submit_batch(vec![mine, other]).await.unwrap();
    let id = answers[0].job_id().unwrap().to_string();

    let stop = CancellationToken::new();
    let worker = TaskTracker::builder()
        .node_group("watch-workers")
        .tracker(tracker.addr.clone())
        .threads(2)
        .runner(|_ctx: JobContext| async { RunResult::success("done") })
        .build()
        .unwrap();
    let h = tokio::spawn(worker.run_until_cancelled(stop.clone()));

    let (jobs, _) = collect(&mut watch, |jobs| {
        jobs.last().is_some_and(|j| j.state == JobState::Succeeded)
    })
    .await;
    assert!(
        jobs.iter().all(|j| j.job_id == id),
        "only the watched group's job: {jobs:#?}"
    );
    // Changes within a few milliseconds of each other arrive as one event with the stored
    // state, so the story may be short; it always ends with the final state.
    let states: Vec<JobState> = jobs.iter().map(|j| j.state).collect();
    assert_eq!(states.last(), Some(&JobState::Succeeded), "{states:?}");
    assert_eq!(jobs.last().unwrap().last_message.as_deref(), Some("done"));

    // The tracker crashes and comes back on the same address: the watch reconnects by
    // itself and says so with a resync; later changes flow again.
    let tracker = tracker.restart_after_kill9().await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(WatchEvent::Resync { .. })) => break,
            Ok(Some(WatchEvent::Changed(_))) => {}
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("no resync after the tracker restart"),
        }
    }
    let mut again = JobSpec::new("after-restart", "watch-workers");
    again.submit_node_group = "ops".into();
    let client = tracker.client();
    let id2 = client
        .submit(again)
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_string();
    let (jobs, _) = collect(&mut watch, |jobs| {
        jobs.iter()
            .any(|j| j.job_id == id2 && j.state == JobState::Succeeded)
    })
    .await;
    assert!(jobs.iter().all(|j| j.spec.submit_node_group == "ops"));
    let stored = client.get(JobKey::Id(id2)).await.unwrap();
    assert_eq!(stored.state, JobState::Succeeded);
    stop.cancel();
    h.await.unwrap();
}
