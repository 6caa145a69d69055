//! Prefetch: a TaskTracker takes jobs beyond its threads, runs them one thread at a time in
//! the order they came, and hands back those that never started when it shuts down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lts_core::{JobKey, JobSpec, JobState};
use lts_tests::{TrackerProc, eventually, wait_final};
use lts_worker_sdk::{JobContext, RunResult, SubmitAnswer, TaskTracker};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

/// Runs at once now, and the most ever seen.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    most: AtomicUsize,
    runs: AtomicUsize,
}

fn ids(answers: &[SubmitAnswer]) -> Vec<String> {
    answers
        .iter()
        .map(|a| match a {
            SubmitAnswer::Accepted { job_id } => job_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_jobs_wait_for_a_thread_and_go_back_unrun_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let c = Arc::new(Concurrency::default());
    let seen = c.clone();
    let stop = CancellationToken::new();
    let worker = TaskTracker::builder()
        .node_group("pf")
        .tracker(tracker.addr.clone())
        .threads(1)
        .prefetch(2)
        .shutdown_grace(Duration::from_secs(10))
        .runner(move |ctx: JobContext| {
            let c = seen.clone();
            async move {
                let now = c.now.fetch_add(1, Ordering::SeqCst) + 1;
                c.most.fetch_max(now, Ordering::SeqCst);
                c.runs.fetch_add(1, Ordering::SeqCst);
                let ms: u64 = ctx.param("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                c.now.fetch_sub(1, Ordering::SeqCst);
                RunResult::success("")
            }
        })
        .build()
        .unwrap();
    let handle = tokio::spawn(worker.run_until_cancelled(stop.clone()));

    // Four short jobs: one thread runs them all, one at a time.
    let short: Vec<JobSpec> = (0..4)
        .map(|i| JobSpec::new(format!("short-{i}"), "pf").param("ms", "50"))
        .collect();
    for id in ids(&client.submit_batch(short).await.unwrap()) {
        let j = wait_final(&client, &id, T).await.unwrap();
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    }
    assert_eq!(
        c.most.load(Ordering::SeqCst),
        1,
        "never more runs than threads"
    );

    // Three long jobs: one runs, two are leased to this TaskTracker and wait in line.
    let long: Vec<JobSpec> = (0..3)
        .map(|i| JobSpec::new(format!("long-{i}"), "pf").param("ms", "3000"))
        .collect();
    let long = ids(&client.submit_batch(long).await.unwrap());
    eventually(T, "all three leased", || async {
        let mut running = 0;
        for id in &long {
            let j = client.get(JobKey::Id(id.clone())).await.ok()?;
            running += usize::from(j.state == JobState::Running);
        }
        (running == 3).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(c.now.load(Ordering::SeqCst), 1, "one runs, two wait");

    // Shutdown: the running one finishes within the grace period; the two that never
    // started go back to the queue at once, their attempt not counted.
    stop.cancel();
    let back = eventually(T, "the unstarted jobs back in the queue", || async {
        let mut queued = Vec::new();
        for id in &long {
            let j = client.get(JobKey::Id(id.clone())).await.ok()?;
            if j.state == JobState::Queued {
                queued.push(j);
            }
        }
        (queued.len() == 2).then_some(queued)
    })
    .await
    .unwrap();
    for j in &back {
        assert_eq!(j.attempt, 0, "handed back unrun: {j:?}");
    }
    handle.await.unwrap();
    let ran = long
        .iter()
        .find(|id| !back.iter().any(|b| &b.job_id == *id))
        .unwrap();
    let j = wait_final(&client, ran, T).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_eq!(c.runs.load(Ordering::SeqCst), 5, "four short and one long");
}
