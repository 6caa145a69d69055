//! Sharded jobs with real processes, on both stores: a job of 8 shards runs on three
//! `lts-worker` sidecars, each shard seeing its index and the count; one sidecar is killed
//! (`kill -9`) while it runs shards, and those shards run again elsewhere. The job succeeds
//! once every shard did, and its progress counts each shard once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lts_core::{JobKey, JobSpec, JobState};
use lts_tests::{MongoServer, Proc, TrackerProc};
use lts_worker_sdk::{JobClient, ListQuery, SubmitAnswer};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_job_survives_a_worker_killed_mid_run_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    shards_survive_a_killed_worker(dir.path(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_job_survives_a_worker_killed_mid_run_on_mongodb() {
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(dir.path()).await.unwrap();
    let store = mongo.url("shards");
    shards_survive_a_killed_worker(dir.path(), &["--store", &store]).await;
}

async fn shards_survive_a_killed_worker(dir: &Path, store: &[&str]) {
    let mut args = vec!["--orphan-grace-ms", "300"];
    args.extend_from_slice(store);
    let tracker = TrackerProc::start(dir, &args).await.unwrap();
    let client = tracker.client();
    let runs = dir.join("runs.txt");
    let worker = |name: &str| {
        let script = format!(
            "echo \"$LTS_SHARD_INDEX $LTS_SHARD_COUNT {name} $LTS_ATTEMPT\" >> {}; sleep 1",
            runs.display()
        );
        let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
        cmd.args(["--tracker", &tracker.addr, "--node-group", "sharded"])
            .args(["--identity", name, "--threads", "2", "--exec", &script]);
        Proc::spawn(cmd, dir.join(format!("{name}.log"))).unwrap()
    };
    let mut workers = vec![worker("w0"), worker("w1"), worker("w2")];

    let mut spec = JobSpec::new("split", "sharded").max_retries(0);
    spec.shards = Some(8);
    let id = match client.submit(spec).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    // Kill w0 once it runs shards.
    let started = Instant::now();
    let killed: Vec<u32> = loop {
        assert!(started.elapsed() < T, "w0 never ran a shard");
        let on_w0: Vec<u32> = starts(&runs)
            .into_iter()
            .filter(|s| s.worker == "w0")
            .map(|s| s.index)
            .collect();
        if !on_w0.is_empty() {
            workers[0].kill9();
            break on_w0;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let job = wait_for_end(&client, &id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.last_message.as_deref(), Some("all 8 shards succeeded"));
    let progress = job.shard_progress.expect("the shards' progress");
    assert_eq!(
        (progress.succeeded, progress.failed, progress.unfinished()),
        (8, 0, 0)
    );
    // Every shard ran, with its index and the count; the killed worker's ran again elsewhere.
    let all = starts(&runs);
    let mut by_index: BTreeMap<u32, Vec<&Start>> = BTreeMap::new();
    for s in &all {
        assert_eq!(s.count, 8, "{s:?}");
        by_index.entry(s.index).or_default().push(s);
    }
    assert_eq!(
        by_index.keys().copied().collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    for index in &killed {
        let again = &by_index[index];
        assert!(
            again.iter().any(|s| s.worker != "w0" && s.attempt == 2),
            "shard {index} was not run again: {again:?}"
        );
    }
    // Each shard is a job of its own, succeeded once.
    let (shards, _) = client
        .list(ListQuery {
            task_id_prefix: Some("split#".into()),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(shards.len(), 8, "{shards:?}");
    assert!(
        shards.iter().all(|s| s.state == JobState::Succeeded),
        "{shards:?}"
    );
    drop(workers);
}

#[derive(Debug)]
struct Start {
    index: u32,
    count: u32,
    worker: String,
    attempt: u32,
}

fn starts(path: &Path) -> Vec<Start> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Start {
                index: f.first()?.parse().ok()?,
                count: f.get(1)?.parse().ok()?,
                worker: f.get(2)?.to_string(),
                attempt: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

async fn wait_for_end(client: &JobClient, id: &str) -> lts_core::Job {
    client
        .wait(JobKey::Id(id.to_string()), Some(T))
        .await
        .expect("the job to end")
}
