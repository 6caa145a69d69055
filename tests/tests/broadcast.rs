//! Broadcast jobs with real processes: a job runs once on every TaskTracker of its group, and
//! when one of them is killed (`kill -9`) while it runs its shard, the job still ends — FAILED,
//! that shard cancelled once its TaskTracker is gone — instead of waiting for it for ever.

use std::path::Path;
use std::time::{Duration, Instant};

use lts_core::{JobKey, JobSpec, JobState};
use lts_tests::{Proc, TrackerProc};
use lts_worker_sdk::{JobClient, SubmitAnswer};

const T: Duration = Duration::from_secs(60);

fn worker(dir: &Path, tracker: &TrackerProc, runs: &Path, name: &str) -> Proc {
    let script = format!(
        "echo \"{name} $LTS_SHARD_INDEX $LTS_SHARD_COUNT\" >> {}; sleep 1",
        runs.display()
    );
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args(["--tracker", &tracker.addr, "--node-group", "fleet"])
        .args(["--identity", name, "--threads", "2", "--exec", &script]);
    Proc::spawn(cmd, dir.join(format!("{name}.log"))).unwrap()
}

fn runs_of(path: &Path) -> Vec<(String, u32, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.parse().ok()?,
                f.get(2)?.parse().ok()?,
            ))
        })
        .collect()
}

async fn submit(client: &JobClient, task: &str) -> String {
    let mut spec = JobSpec::new(task, "fleet");
    spec.broadcast = true;
    match client.submit(spec).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    }
}

async fn ended(client: &JobClient, id: &str) -> lts_core::Job {
    client
        .wait(JobKey::Id(id.to_string()), Some(T))
        .await
        .expect("the job to end")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_runs_on_every_task_tracker_and_ends_when_one_dies() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(
        dir.path(),
        &["--orphan-grace-ms", "300", "--broadcast-grace-ms", "2000"],
    )
    .await
    .unwrap();
    let client = tracker.client();
    let runs = dir.path().join("runs.txt");
    let mut workers: Vec<Proc> = ["w0", "w1", "w2"]
        .iter()
        .map(|n| worker(dir.path(), &tracker, &runs, n))
        .collect();
    // All three connected.
    let started = Instant::now();
    let task_trackers = || async {
        client
            .nodes()
            .await
            .map(|n| n.nodes.iter().filter(|n| n.node_group == "fleet").count())
            .unwrap_or(0)
    };
    while task_trackers().await < 3 {
        assert!(started.elapsed() < T, "the workers never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Once on each, with its index and the count.
    let id = submit(&client, "flush").await;
    let job = ended(&client, &id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.last_message.as_deref(), Some("all 3 shards succeeded"));
    let mut ran: Vec<(String, u32, u32)> = runs_of(&runs);
    ran.sort();
    let on: Vec<&str> = ran.iter().map(|(w, _, _)| w.as_str()).collect();
    assert_eq!(on, ["w0", "w1", "w2"], "once on each: {ran:?}");
    assert!(ran.iter().all(|(_, _, count)| *count == 3), "{ran:?}");
    let mut indexes: Vec<u32> = ran.iter().map(|(_, i, _)| *i).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, [0, 1, 2]);

    // w2 is killed while it runs its shard of the next one: the job ends without it.
    std::fs::remove_file(&runs).unwrap();
    let id = submit(&client, "flush-again").await;
    let started = Instant::now();
    while !runs_of(&runs).iter().any(|(w, _, _)| w == "w2") {
        assert!(started.elapsed() < T, "w2 never ran its shard");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workers[2].kill9();
    let job = ended(&client, &id).await;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert_eq!(job.last_message.as_deref(), Some("1 of 3 shards failed"));
    let progress = job.shard_progress.unwrap();
    assert_eq!((progress.succeeded, progress.failed), (2, 1));
    let log = client.log(&id, 100).await.unwrap();
    assert!(
        log.iter()
            .any(|l| l.message.contains("runs on 3 TaskTrackers")),
        "{log:?}"
    );
    // Nothing ran twice, and nothing ran on another TaskTracker in w2's place.
    let ran = runs_of(&runs);
    assert_eq!(ran.len(), 3, "{ran:?}");

    // The next broadcast goes to the two that are left.
    let id = submit(&client, "flush-after").await;
    let job = ended(&client, &id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.shard_progress.unwrap().succeeded, 2);
    drop(workers);
}
