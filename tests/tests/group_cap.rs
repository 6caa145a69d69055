//! A node group's cap on running jobs (`--max-running GROUP=N`) holds across the trackers of a
//! cluster: two trackers on one MongoDB store, a TaskTracker with threads to spare on each,
//! and never more runs of the group at once than the cap — while every job still runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lts_core::{JobSpec, JobState};
use lts_tests::{MongoServer, TrackerProc, ZkServer, eventually};
use lts_worker_sdk::{JobContext, ListQuery, RunResult, TaskTracker};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_group_never_runs_more_at_once_across_trackers() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    let mongo = MongoServer::start(dir.path()).await.unwrap();
    let store = mongo.url("capped");
    let start = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        let (store, registry) = (store.clone(), zk.url());
        async move {
            TrackerProc::start(
                &path,
                &[
                    "--store",
                    &store,
                    "--registry",
                    &registry,
                    "--idle-poll-ms",
                    "100",
                    "--max-running",
                    "capped=3,other=100",
                ],
            )
            .await
            .unwrap()
        }
    };
    let (a, b) = (start("a").await, start("b").await);

    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = CancellationToken::new();
    let mut handles = Vec::new();
    for (n, tracker) in [&a, &b].into_iter().enumerate() {
        let (r, m) = (running.clone(), most.clone());
        let tt = TaskTracker::builder()
            .node_group("capped")
            .identity(format!("tt-{n}"))
            .tracker(tracker.addr.clone())
            .threads(4)
            .runner(move |_ctx: JobContext| {
                let (r, m) = (r.clone(), m.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    RunResult::success("")
                }
            })
            .build()
            .unwrap();
        handles.push(tokio::spawn(tt.run_until_cancelled(stop.clone())));
    }
    let client = a.client();
    let n = 24;
    for i in 0..n {
        client
            .submit(JobSpec::new(format!("c{i}"), "capped"))
            .await
            .unwrap();
    }
    eventually(T, "every job of the capped group to succeed", || async {
        let (jobs, _) = client
            .list(ListQuery {
                node_group: Some("capped".into()),
                page_size: 100,
                ..Default::default()
            })
            .await
            .ok()?;
        (jobs.len() == n && jobs.iter().all(|j| j.state == JobState::Succeeded)).then_some(())
    })
    .await
    .unwrap();
    stop.cancel();
    for h in handles {
        h.await.unwrap();
    }
    // Eight threads and 24 jobs: the cap is reached, and never passed.
    assert_eq!(most.load(Ordering::SeqCst), 3, "runs at once");
}

#[test]
fn a_bad_cap_is_refused_with_the_flag_named() {
    for (value, why) in [
        ("capped=0", "the cap must be 1..=1000000"),
        ("capped", "expected GROUP=N"),
        ("=3", "the node group is empty"),
        ("capped=lots", "not a whole number"),
    ] {
        let out = std::process::Command::new(lts_tests::bin("lts-tracker"))
            .args(["--insecure", "--no-auth", "--max-running", value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--max-running") && stderr.contains(why),
            "{value}: {stderr}"
        );
    }
}
