//! The production shape: several `lts-tracker` processes sharing a real `mongod` (a one-node
//! replica set) and coordinated by a real ZooKeeper, with `lts-worker` processes. Nothing here
//! is timed: figures come from `lts bench --store mongodb://…`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lts_core::{JobSpec, JobState};
use lts_registry::{Registry, ZkConfig, ZkRegistry};
use lts_tests::{MongoServer, Proc, TrackerProc, ZkServer, eventually, master_of, wait_final};
use lts_worker_sdk::{JobClient, JobContext, RunResult, SubmitAnswer, TaskTracker};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(60);
const SESSION_MS: &str = "2000";

async fn tracker(dir: &Path, store: &str, registry: &str) -> TrackerProc {
    TrackerProc::start(
        dir,
        &[
            "--store",
            store,
            "--registry",
            registry,
            "--zk-session-timeout-ms",
            SESSION_MS,
            "--idle-poll-ms",
            "100",
        ],
    )
    .await
    .unwrap()
}

/// An `lts-worker` process that records each run as a line `TASK_ID IDENTITY` in `runs`.
fn worker_proc(dir: &Path, zk: &ZkServer, group: &str, identity: &str, runs: &Path) -> Proc {
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args([
        "--registry",
        &zk.url(),
        "--zk-session-timeout-ms",
        SESSION_MS,
    ])
    .args([
        "--node-group",
        group,
        "--threads",
        "3",
        "--identity",
        identity,
    ])
    .arg("--exec")
    .arg(format!(
        "echo \"$LTS_TASK_ID {identity}\" >> {}; sleep \"${{LTS_PARAM_SLEEP:-0}}\"",
        runs.display()
    ))
    .env("LTS_LOG", "info");
    Proc::spawn(cmd, dir.join(format!("{identity}.log"))).unwrap()
}

fn runs_of(path: &Path) -> BTreeMap<String, Vec<String>> {
    let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Some((task, who)) = line.split_once(' ') {
            runs.entry(task.to_string())
                .or_default()
                .push(who.to_string());
        }
    }
    runs
}

fn registry(zk: &ZkServer) -> Arc<dyn Registry> {
    let mut cfg = ZkConfig::parse(&zk.url(), "default").unwrap();
    cfg.session_timeout = Duration::from_millis(2000);
    Arc::new(ZkRegistry::start(cfg, None))
}

async fn submit(client: &JobClient, specs: Vec<JobSpec>) -> Vec<String> {
    client
        .submit_batch(specs)
        .await
        .unwrap()
        .into_iter()
        .map(|a| match a {
            SubmitAnswer::Accepted { job_id } => job_id,
            other => panic!("expected accepted, got {other:?}"),
        })
        .collect()
}

async fn all_succeed(client: &JobClient, ids: &[String]) {
    for id in ids {
        let j = wait_final(client, id, T).await.unwrap();
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_share_mongodb_spread_work_fail_over_and_rescue_a_killed_workers_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    let mongo = MongoServer::start(dir.path()).await.unwrap();
    let store = mongo.url("lts_cluster_test");
    let a = tracker(dir.path(), &store, &zk.url()).await;
    let b = tracker(dir.path(), &store, &zk.url()).await;
    let c = tracker(dir.path(), &store, &zk.url()).await;
    let runs = dir.path().join("runs.txt");
    let _w1 = worker_proc(dir.path(), &zk, "mc", "w1", &runs);
    let _w2 = worker_proc(dir.path(), &zk, "mc", "w2", &runs);
    let client = JobClient::from_registry(registry(&zk));
    eventually(T, "two TaskTrackers registered", || async {
        let nodes = client.nodes().await.ok()?;
        let workers = nodes.nodes.iter().filter(|n| n.node_group == "mc").count();
        (workers == 2).then_some(())
    })
    .await
    .unwrap();
    let master = eventually(T, "one agreed master", || async {
        let mut seen = Vec::new();
        for t in [&a, &b, &c] {
            seen.push(master_of(&t.addr).await?);
        }
        seen.iter().all(|m| *m == seen[0]).then(|| seen[0].clone())
    })
    .await
    .unwrap();

    // Jobs spread over both workers, each run exactly once.
    let ids = submit(
        &client,
        (0..18)
            .map(|i| JobSpec::new(format!("spread-{i}"), "mc").param("sleep", "0.2"))
            .collect(),
    )
    .await;
    all_succeed(&client, &ids).await;
    let seen = runs_of(&runs);
    assert_eq!(seen.len(), 18, "{seen:?}");
    assert!(seen.values().all(|w| w.len() == 1), "ran twice: {seen:?}");
    for w in ["w1", "w2"] {
        assert!(
            seen.values().any(|v| v[0] == w),
            "{w} ran nothing: {seen:?}"
        );
    }

    // kill -9 of the master: another tracker takes over within the session timeout, and
    // dispatch continues.
    let port_of = |t: &TrackerProc| t.addr.rsplit(':').next().unwrap().to_string();
    let (dead, survivors): (Vec<_>, Vec<_>) = [a, b, c]
        .into_iter()
        .partition(|t| master.ends_with(&port_of(t)));
    assert_eq!(dead.len(), 1, "master {master} is one of the trackers");
    let mut dead = dead.into_iter().next().unwrap();
    dead.proc.kill9();
    let killed = Instant::now();
    let new_master = eventually(T, "a new master", || async {
        let m = master_of(&survivors[0].addr).await?;
        (m != master).then_some(m)
    })
    .await
    .unwrap();
    eprintln!(
        "failover {master} -> {new_master} in {:?}",
        killed.elapsed()
    );
    assert!(survivors.iter().any(|t| new_master.ends_with(&port_of(t))));
    let ids = submit(
        &client,
        (0..12)
            .map(|i| JobSpec::new(format!("after-{i}"), "mc"))
            .collect(),
    )
    .await;
    all_succeed(&client, &ids).await;
    let seen = runs_of(&runs);
    assert_eq!(seen.len(), 30, "{seen:?}");
    assert!(seen.values().all(|w| w.len() == 1), "ran twice: {seen:?}");

    // kill -9 of a worker mid-job: its jobs run again on another worker, without waiting for
    // their leases to run out.
    let slow_runs = dir.path().join("slow-runs.txt");
    let mut doomed = worker_proc(dir.path(), &zk, "slow", "doomed", &slow_runs);
    let ids = submit(
        &client,
        (0..3)
            .map(|i| JobSpec::new(format!("slow-{i}"), "slow").param("sleep", "120"))
            .collect(),
    )
    .await;
    eventually(T, "the doomed worker running all three", || async {
        let s = client.stats(Some("slow")).await.ok()?;
        (s.running == 3).then_some(())
    })
    .await
    .unwrap();
    let rescue_runs = dir.path().join("rescue-runs.txt");
    let _rescuer = worker_proc(dir.path(), &zk, "slow", "rescuer", &rescue_runs);
    doomed.kill9();
    let killed = Instant::now();
    eventually(T, "the rescuer to start all three", || async {
        (runs_of(&rescue_runs).len() == 3).then_some(())
    })
    .await
    .unwrap();
    let took = killed.elapsed();
    eprintln!("a killed worker's jobs started elsewhere after {took:?}");
    // The master that re-queued them writes its log lines in the background (gathered for
    // 20 ms), so they may show up a moment after the runs.
    for id in &ids {
        let log = eventually(T, "the re-queue in the job log", || async {
            let log = client.log(id, 50).await.ok()?;
            log.iter()
                .any(|l| {
                    l.log_type == lts_core::LogType::FixedDead
                        && l.message.contains("left the cluster")
                })
                .then_some(log)
        })
        .await;
        assert!(log.is_ok(), "requeued because the worker left: {log:?}");
    }
    // The lease is 15 s: the rescue came from the worker's ZooKeeper node vanishing.
    assert!(took < Duration::from_secs(15), "rescue took {took:?}");
    for id in &ids {
        client
            .cancel(lts_core::JobKey::Id(id.clone()))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_restart_is_survived_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(dir.path()).await.unwrap();
    let store = mongo.url("lts_restart_test");
    let tracker = TrackerProc::start(dir.path(), &["--store", &store, "--idle-poll-ms", "100"])
        .await
        .unwrap();
    let client = tracker.client();
    let stop = CancellationToken::new();
    let tt = TaskTracker::builder()
        .node_group("mr")
        .tracker(tracker.addr.clone())
        .threads(2)
        .runner(|_ctx: JobContext| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            RunResult::success("ok")
        })
        .build()
        .unwrap();
    let h = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    let before = submit(
        &client,
        (0..8)
            .map(|i| JobSpec::new(format!("before-{i}"), "mr"))
            .collect(),
    )
    .await;
    eventually(T, "some jobs finished and some still to go", || async {
        let s = client.stats(Some("mr")).await.ok()?;
        (s.succeeded >= 1 && s.queued + s.running >= 1).then_some(())
    })
    .await
    .unwrap();
    // Down for longer than a few claim and result attempts; then back with its data.
    let mongo = mongo
        .restart_after_kill9(Duration::from_secs(3))
        .await
        .unwrap();
    let after = submit(
        &client,
        (0..4)
            .map(|i| JobSpec::new(format!("after-{i}"), "mr"))
            .collect(),
    )
    .await;
    all_succeed(&client, &before).await;
    all_succeed(&client, &after).await;
    let s = client.stats(Some("mr")).await.unwrap();
    assert_eq!((s.succeeded, s.queued, s.running), (12, 0, 0), "{s:?}");
    stop.cancel();
    h.await.unwrap();
    drop(mongo);
}

/// A cron job firing every second on two trackers sharing MongoDB: `kill -9` of the master
/// neither doubles a fire nor stops the schedule — fires are materialised atomically in the
/// store by whichever tracker claims them, so no master loop stands between a schedule and
/// its runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_survive_a_master_failover_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    let mongo = MongoServer::start(dir.path()).await.unwrap();
    let store = mongo.url("lts_cron_failover");
    let a = tracker(dir.path(), &store, &zk.url()).await;
    let b = tracker(dir.path(), &store, &zk.url()).await;
    let runs = dir.path().join("runs.txt");
    let _w = worker_proc(dir.path(), &zk, "cron", "w1", &runs);
    let client = JobClient::from_registry(registry(&zk));
    let master = eventually(T, "an agreed master", || async {
        let (ma, mb) = (master_of(&a.addr).await?, master_of(&b.addr).await?);
        (ma == mb).then_some(ma)
    })
    .await
    .unwrap();
    submit(
        &client,
        vec![
            JobSpec::new("tick", "cron").schedule(lts_core::Schedule::Cron {
                expression: "* * * * * *".into(),
                time_zone: None,
            }),
        ],
    )
    .await;
    let fires = || runs_of(&runs).len();
    eventually(T, "three fires", || async { (fires() >= 3).then_some(()) })
        .await
        .unwrap();
    let port_of = |t: &TrackerProc| t.addr.rsplit(':').next().unwrap().to_string();
    let (mut dead, survivor) = if master.ends_with(&port_of(&a)) {
        (a, b)
    } else {
        (b, a)
    };
    dead.proc.kill9();
    let before = fires();
    eventually(T, "a new master", || async {
        let m = master_of(&survivor.addr).await?;
        (m != master).then_some(())
    })
    .await
    .unwrap();
    eventually(T, "fires after the failover", || async {
        (fires() >= before + 3).then_some(())
    })
    .await
    .unwrap();
    client
        .cancel(lts_core::JobKey::Task {
            node_group: "cron".into(),
            task_id: "tick".into(),
        })
        .await
        .unwrap();
    let seen = runs_of(&runs);
    assert!(
        seen.values().all(|w| w.len() == 1),
        "a fire ran twice: {seen:?}"
    );
    assert!(seen.keys().all(|t| t.starts_with("tick~")), "{seen:?}");
}
