//! MongoDB as production runs it: a three-member replica set of real `mongod` processes, two
//! `lts-tracker` processes coordinated by a real ZooKeeper, and `lts-worker` processes. The
//! primary is killed with `kill -9` while jobs are being submitted and run and a cron job fires
//! every second: no acknowledged job is lost or run twice, no fire runs twice, and the trackers
//! carry on with the new primary. Nothing here is timed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lts_core::{JobSpec, JobState, Schedule};
use lts_registry::{Registry, ZkConfig, ZkRegistry};
use lts_tests::{MongoReplicaSet, Proc, TrackerProc, ZkServer, eventually, wait_final};
use lts_worker_sdk::{JobClient, SubmitAnswer};

const T: Duration = Duration::from_secs(120);
const SESSION_MS: &str = "2000";

/// An `lts-worker` process of `group` that records each run as a line `TASK_ID` in `runs`.
fn worker_proc(dir: &Path, zk: &ZkServer, group: &str, runs: &Path) -> Proc {
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args([
        "--registry",
        &zk.url(),
        "--zk-session-timeout-ms",
        SESSION_MS,
    ])
    .args(["--node-group", group, "--threads", "4"])
    .arg("--exec")
    .arg(format!("echo \"$LTS_TASK_ID\" >> {}", runs.display()))
    .env("LTS_LOG", "info");
    Proc::spawn(cmd, dir.join(format!("worker-{group}.log"))).unwrap()
}

/// How often each task id ran.
fn runs_of(path: &Path) -> BTreeMap<String, usize> {
    let mut runs = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *runs.entry(line.to_string()).or_default() += 1;
    }
    runs
}

fn registry(zk: &ZkServer) -> Arc<dyn Registry> {
    let mut cfg = ZkConfig::parse(&zk.url(), "default").unwrap();
    cfg.session_timeout = Duration::from_millis(2000);
    Arc::new(ZkRegistry::start(cfg, None))
}

/// What the submitter saw: jobs it was told were accepted, and task ids whose submit failed
/// (stored or not: the answer was lost).
#[derive(Default)]
struct Submitted {
    accepted: Vec<(String, String)>,
    accepted_after_failover: usize,
    unanswered: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_mongodb_primary_under_load_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    let mut rs = MongoReplicaSet::start(dir.path(), 3).await.unwrap();
    let store = rs.url("lts_rs_test");
    let mut trackers = Vec::new();
    for _ in 0..2 {
        trackers.push(
            TrackerProc::start(
                dir.path(),
                &[
                    "--store",
                    &store,
                    "--registry",
                    &zk.url(),
                    "--zk-session-timeout-ms",
                    SESSION_MS,
                    "--idle-poll-ms",
                    "100",
                ],
            )
            .await
            .unwrap(),
        );
    }
    let (load_runs, cron_runs) = (dir.path().join("load.txt"), dir.path().join("cron.txt"));
    let _load_worker = worker_proc(dir.path(), &zk, "load", &load_runs);
    let _cron_worker = worker_proc(dir.path(), &zk, "cron", &cron_runs);
    let client = JobClient::from_registry(registry(&zk));
    let tick = JobSpec::new("tick", "cron").schedule(Schedule::Cron {
        expression: "* * * * * *".into(),
        time_zone: None,
    });
    let answer = eventually(T, "the cron job accepted", || async {
        client.submit_batch(vec![tick.clone()]).await.ok()
    })
    .await
    .unwrap();
    assert!(
        matches!(answer[0], SubmitAnswer::Accepted { .. }),
        "{answer:?}"
    );

    // Submit batches of five until a while after the failover.
    let submitter = {
        let client = client.clone();
        let failed_over = Arc::new(AtomicBool::new(false));
        let flag = failed_over.clone();
        let task = tokio::spawn(async move {
            let mut seen = Submitted::default();
            let mut after: Option<Instant> = None;
            for batch in 0.. {
                if after.is_none() && flag.load(Ordering::Relaxed) {
                    after = Some(Instant::now());
                }
                if after.is_some_and(|t| t.elapsed() > Duration::from_secs(6)) {
                    break;
                }
                let tasks: Vec<String> = (0..5).map(|i| format!("load-{batch}-{i}")).collect();
                let specs = tasks
                    .iter()
                    .map(|t| JobSpec::new(t.clone(), "load"))
                    .collect();
                match client.submit_batch(specs).await {
                    Ok(answers) => {
                        for (task, a) in tasks.into_iter().zip(answers) {
                            match a {
                                SubmitAnswer::Accepted { job_id } => {
                                    seen.accepted.push((task, job_id));
                                    if after.is_some() {
                                        seen.accepted_after_failover += 1;
                                    }
                                }
                                other => panic!("{task}: expected accepted, got {other:?}"),
                            }
                        }
                    }
                    Err(_) => seen.unanswered.extend(tasks),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        });
        (task, failed_over)
    };

    eventually(T, "load running and the cron firing", || async {
        (runs_of(&load_runs).len() >= 20 && runs_of(&cron_runs).len() >= 3).then_some(())
    })
    .await
    .unwrap();
    let old = rs.primary().await.expect("a primary");
    rs.kill9(old);
    let killed = Instant::now();
    let new = rs.wait_primary(T).await.unwrap();
    assert_ne!(new, old);
    eprintln!("a new primary after {:?}", killed.elapsed());
    submitter.1.store(true, Ordering::Relaxed);
    let seen = submitter.0.await.unwrap();
    rs.restart(old).unwrap();

    assert!(
        seen.accepted_after_failover > 0,
        "the trackers accepted nothing after the failover"
    );
    for (task, id) in &seen.accepted {
        let job = wait_final(&client, id, T).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{task}: {job:?}");
    }
    let runs = runs_of(&load_runs);
    for (task, _) in &seen.accepted {
        assert_eq!(
            runs.get(task),
            Some(&1),
            "{task} ran {:?} times",
            runs.get(task)
        );
    }
    let doubled: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "ran twice: {doubled:?}");
    eprintln!(
        "{} jobs acknowledged ({} after the failover), {} submits unanswered",
        seen.accepted.len(),
        seen.accepted_after_failover,
        seen.unanswered.len()
    );

    // The cron job: fires go on after the failover, and none runs twice.
    let fires_at_kill: BTreeSet<String> = runs_of(&cron_runs).into_keys().collect();
    let fires = eventually(T, "three more fires after the failover", || async {
        let runs = runs_of(&cron_runs);
        (runs.len() >= fires_at_kill.len() + 3).then_some(runs)
    })
    .await
    .unwrap();
    let doubled: Vec<_> = fires.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "fires that ran twice: {doubled:?}");
    assert!(fires.keys().all(|t| t.starts_with("tick~")), "{fires:?}");
}
