//! Several JobTracker processes coordinated by a real ZooKeeper: election, failover, dispatch
//! across trackers, membership-driven requeue, ZooKeeper restarts, client failover.
//!
//! The trackers share one embedded store file (SQLite serialises writers across processes),
//! so these tests exercise the cluster logic without MongoDB; the MongoDB store has its own
//! conformance suite.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lts_core::{JobSpec, JobState};
use lts_registry::{Registry, ZkConfig, ZkRegistry};
use lts_tests::{TrackerProc, ZkServer, eventually, master_of, wait_final};
use lts_worker_sdk::{JobClient, JobContext, RunResult, SubmitAnswer, TaskTracker};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);
const SESSION_MS: &str = "2000";

async fn start_tracker(dir: &std::path::Path, zk: &ZkServer) -> TrackerProc {
    TrackerProc::start(
        dir,
        &[
            "--registry",
            &zk.url(),
            "--zk-session-timeout-ms",
            SESSION_MS,
            "--idle-poll-ms",
            "100",
        ],
    )
    .await
    .unwrap()
}

fn registry(zk: &ZkServer) -> Arc<dyn Registry> {
    let mut cfg = ZkConfig::parse(&zk.url(), "default").unwrap();
    cfg.session_timeout = Duration::from_millis(2000);
    Arc::new(ZkRegistry::start(cfg, None))
}

type Runs = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

fn zk_worker(
    reg: Arc<dyn Registry>,
    name: &str,
    runs: Runs,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let me = name.to_string();
    let tt = TaskTracker::builder()
        .node_group("cluster")
        .registry(reg)
        .threads(4)
        .identity(name)
        .runner(move |ctx: JobContext| {
            let runs = runs.clone();
            let me = me.clone();
            async move {
                runs.lock()
                    .unwrap()
                    .entry(ctx.task_id().to_string())
                    .or_default()
                    .push(me);
                tokio::time::sleep(Duration::from_millis(20)).await;
                RunResult::success("")
            }
        })
        .build()
        .unwrap();
    let h = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    (stop, h)
}

async fn submit_all(client: &JobClient, prefix: &str, n: usize) -> Vec<String> {
    let specs = (0..n)
        .map(|i| JobSpec::new(format!("{prefix}-{i}"), "cluster"))
        .collect();
    client
        .submit_batch(specs)
        .await
        .unwrap()
        .into_iter()
        .map(|a| match a {
            SubmitAnswer::Accepted { job_id } => job_id,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn trackers_elect_one_master_fail_over_and_keep_dispatching() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    let a = start_tracker(dir.path(), &zk).await;
    let b = start_tracker(dir.path(), &zk).await;
    let c = start_tracker(dir.path(), &zk).await;
    let trackers = [&a, &b, &c];
    let master = eventually(T, "one agreed master", || async {
        let mut seen = Vec::new();
        for t in trackers {
            seen.push(master_of(&t.addr).await?);
        }
        (seen.iter().all(|m| *m == seen[0])).then(|| seen[0].clone())
    })
    .await
    .unwrap();

    let runs: Runs = Arc::default();
    let reg = registry(&zk);
    let (s1, h1) = zk_worker(reg.clone(), "w1", runs.clone());
    let (s2, h2) = zk_worker(registry(&zk), "w2", runs.clone());
    let client = JobClient::from_registry(reg.clone());
    let ids = submit_all(&client, "before", 30).await;
    for id in &ids {
        assert_eq!(
            wait_final(&client, id, T).await.unwrap().state,
            JobState::Succeeded
        );
    }
    // No job ran twice.
    assert!(
        runs.lock().unwrap().values().all(|w| w.len() == 1),
        "{runs:?}"
    );

    // Kill the master; another tracker takes over within the session timeout.
    let (dead, survivors): (Vec<_>, Vec<_>) = [a, b, c]
        .into_iter()
        .partition(|t| master.ends_with(&t.addr.rsplit(':').next().unwrap().to_string()));
    assert_eq!(dead.len(), 1, "master {master} is one of the trackers");
    let mut dead = dead.into_iter().next().unwrap();
    // The SDK's master-change listener sees the change too.
    let changes = client.master_changes().await.unwrap();
    let current = |rx: &tokio::sync::watch::Receiver<Option<lts_registry::NodeInfo>>| {
        rx.borrow().as_ref().map(|m| m.identity.clone())
    };
    eventually(T, "the listener to know the master", || {
        let m = current(&changes);
        async { m.filter(|m| *m == master) }
    })
    .await
    .unwrap();
    dead.proc.kill9();
    let killed = Instant::now();
    let new_master = eventually(T, "a new master", || async {
        let m = master_of(&survivors[0].addr).await?;
        (m != master).then_some(m)
    })
    .await
    .unwrap();
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    assert_ne!(new_master, master);
    eprintln!("failover: {master} -> {new_master} in {took:?}");
    let heard = eventually(T, "the listener to hear the new master", || {
        let m = current(&changes);
        async { m.filter(|m| *m != master) }
    })
    .await
    .unwrap();
    assert_eq!(heard, new_master);

    // Dispatch continues through the survivors.
    let ids = submit_all(&client, "after", 30).await;
    for id in &ids {
        assert_eq!(
            wait_final(&client, id, T).await.unwrap().state,
            JobState::Succeeded
        );
    }
    assert!(
        runs.lock().unwrap().values().all(|w| w.len() == 1),
        "{runs:?}"
    );
    s1.cancel();
    s2.cancel();
    h1.await.unwrap();
    h2.await.unwrap();
}

#[tokio::test]
async fn a_zookeeper_restart_is_survived_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    let a = start_tracker(dir.path(), &zk).await;
    let runs: Runs = Arc::default();
    let (s1, h1) = zk_worker(registry(&zk), "w1", runs.clone());
    let direct = a.client();
    let first = submit_all(&direct, "pre", 10).await;
    for id in &first {
        wait_final(&direct, id, T).await.unwrap();
    }
    // ZooKeeper goes away for a moment; the tracker keeps accepting and running jobs.
    let zk = zk
        .restart_after_kill9(Duration::from_millis(500))
        .await
        .unwrap();
    let during = submit_all(&direct, "during", 10).await;
    for id in &during {
        assert_eq!(
            wait_final(&direct, id, T).await.unwrap().state,
            JobState::Succeeded
        );
    }
    // And it is master again once ZooKeeper is back.
    eventually(T, "a master after the restart", || async {
        master_of(&a.addr).await.filter(|m| !m.is_empty())
    })
    .await
    .unwrap();
    drop(zk);
    s1.cancel();
    h1.await.unwrap();
}

#[tokio::test]
async fn a_client_whose_tracker_dies_moves_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    let mut a = start_tracker(dir.path(), &zk).await;
    let b = start_tracker(dir.path(), &zk).await;
    let reg = registry(&zk);
    let client = JobClient::from_registry(reg.clone());
    eventually(T, "both trackers known", || async {
        (reg.members(lts_registry::Role::JobTracker).borrow().len() == 2).then_some(())
    })
    .await
    .unwrap();
    submit_all(&client, "one", 5).await;
    a.proc.kill9();
    // Every later call still succeeds, through the survivor.
    let ids = eventually(T, "submits through the survivor", || async {
        let specs = (0..5)
            .map(|i| JobSpec::new(format!("two-{i}"), "cluster"))
            .collect();
        client.submit_batch(specs).await.ok()
    })
    .await
    .unwrap();
    assert_eq!(ids.len(), 5);
    for _ in 0..20 {
        client.stats(None).await.unwrap();
    }
    let jobs = b.client().stats(Some("cluster")).await.unwrap();
    assert_eq!(jobs.queued, 10, "nothing lost, nothing doubled");
}
