//! A frozen tracker — `kill -STOP`, the same as a long pause, a frozen VM or a partition — under
//! a stream of real-time jobs: two `lts-tracker` processes sharing ZooKeeper (default 6 s
//! session) and a real `mongod`, one `lts-worker` process, and a JobClient that
//! finds the trackers in ZooKeeper. Each test freezes one tracker for twice the session
//! timeout, then lets it go on (`kill -CONT`), and checks that:
//!
//! * every accepted job ran to success, and none ran twice;
//! * a long job that was running across the freeze ran once: the worker moved its lease to the
//!   live tracker, and the woken tracker did not queue it again;
//! * afterwards the trackers agree on one master.
//!
//! It prints the delay from the freeze to the next job start (the figure the closing note of
//! the issue quotes); the assertion on it is loose (below the 15 s lease), since tests check
//! behaviour, not speed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lts_core::{JobKey, JobSpec, JobState, now_ms};
use lts_registry::{Registry, ZkConfig, ZkRegistry};
use lts_tests::{MongoServer, Proc, TrackerProc, ZkServer, eventually, master_of};
use lts_worker_sdk::{JobClient, SubmitAnswer};
use tokio_util::sync::CancellationToken;

/// The default ZooKeeper session timeout of trackers and workers.
const SESSION: Duration = Duration::from_secs(6);
const T: Duration = Duration::from_secs(90);

struct Cluster {
    trackers: Vec<TrackerProc>,
    worker: Proc,
    runs: PathBuf,
    client: JobClient,
    _zk: ZkServer,
    _mongo: MongoServer,
    // Last: removed after every process above is gone.
    _dir: tempfile::TempDir,
}

async fn cluster(database: &str) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    let mongo = MongoServer::start(dir.path()).await.unwrap();
    let store = mongo.url(database);
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
                    "--idle-poll-ms",
                    "100",
                ],
            )
            .await
            .unwrap(),
        );
    }
    let runs = dir.path().join("runs.txt");
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args(["--registry", &zk.url()])
        .args(["--node-group", "rt", "--threads", "4", "--identity", "w1"])
        .arg("--exec")
        .arg(format!(
            "echo \"$LTS_TASK_ID $(date +%s%3N)\" >> {}; sleep \"${{LTS_PARAM_SLEEP:-0.2}}\"",
            runs.display()
        ))
        .env("LTS_LOG", "info");
    let worker = Proc::spawn(cmd, dir.path().join("worker.log")).unwrap();
    let mut cfg = ZkConfig::parse(&zk.url(), "default").unwrap();
    cfg.session_timeout = SESSION;
    let zk_client = ZkRegistry::start(cfg, None);
    zk_client
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let registry: Arc<dyn Registry> = Arc::new(zk_client);
    let client = JobClient::from_registry(registry).with_call_timeout(Duration::from_secs(2));
    Cluster {
        trackers,
        worker,
        runs,
        client,
        _zk: zk,
        _mongo: mongo,
        _dir: dir,
    }
}

/// `TASK_ID -> [start ms…]` from the worker's run records.
fn runs_of(path: &Path) -> BTreeMap<String, Vec<i64>> {
    let mut runs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Some((task, at)) = line.split_once(' ') {
            runs.entry(task.to_string())
                .or_default()
                .push(at.trim().parse().unwrap_or(0));
        }
    }
    runs
}

/// The tracker the worker holds its stream to, from its log.
fn attached_tracker(worker: &Proc) -> Option<String> {
    worker
        .output()
        .lines()
        .rev()
        .find(|l| l.contains("connected to tracker"))
        .and_then(|l| l.split("tracker=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

#[derive(Debug, Clone, Copy)]
enum Target {
    /// The tracker the worker's stream goes to.
    Attached,
    /// The master.
    Master,
    /// The tracker that is not the master.
    Follower,
}

async fn freeze_under_load(target: Target) {
    let c = cluster(&format!("lts_frozen_{target:?}").to_lowercase()).await;
    eventually(T, "a master and the worker's stream", || async {
        master_of(&c.trackers[0].addr).await?;
        attached_tracker(&c.worker)
    })
    .await
    .unwrap();

    // A long job running across the freeze: it must run exactly once.
    let long = match c
        .client
        .submit(JobSpec::new("long", "rt").param("sleep", "25"))
        .await
        .unwrap()
    {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    eventually(T, "the long job to start", || async {
        runs_of(&c.runs).contains_key("long").then_some(())
    })
    .await
    .unwrap();

    // A stream of real-time jobs, four a second, through the registry client.
    let stop = CancellationToken::new();
    let submitter = {
        let client = c.client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut accepted: Vec<(String, String, i64)> = Vec::new();
            let mut n = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !stop.is_cancelled() {
                tick.tick().await;
                let task = format!("rt-{n}");
                let at = now_ms();
                match client.submit(JobSpec::new(&task, "rt")).await {
                    // Duplicate: the first try reached the tracker that froze, which stored
                    // the job but never answered; the retry elsewhere found it.
                    Ok(SubmitAnswer::Accepted { job_id } | SubmitAnswer::Duplicate { job_id }) => {
                        accepted.push((task, job_id, at));
                        n += 1;
                    }
                    Ok(other) => panic!("{task}: {other:?}"),
                    // Tried on every tracker within the call deadline; the same task id goes
                    // again next tick (the tracker deduplicates).
                    Err(e) => eprintln!("submit {task} failed, retrying: {e}"),
                }
            }
            accepted
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let master = master_of(&c.trackers[0].addr).await.unwrap();
    let attached = attached_tracker(&c.worker).unwrap();
    let frozen = c
        .trackers
        .iter()
        .find(|t| match target {
            Target::Attached => t.addr == attached,
            Target::Master => identity(t) == master,
            Target::Follower => identity(t) != master,
        })
        .unwrap();
    let roles = format!(
        "{} ({}, {})",
        frozen.addr,
        if identity(frozen) == master {
            "master"
        } else {
            "follower"
        },
        if frozen.addr == attached {
            "the worker's tracker"
        } else {
            "not the worker's tracker"
        }
    );
    let frozen_at = now_ms();
    frozen.proc.signal("STOP");
    tokio::time::sleep(SESSION * 2).await;
    frozen.proc.signal("CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let accepted = submitter.await.unwrap();

    for (task, job_id, _) in &accepted {
        let job = lts_tests::wait_final(&c.client, job_id, T).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{task}: {job:?}");
    }
    let job = lts_tests::wait_final(&c.client, &long, T).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "long: {job:?}");

    let runs = runs_of(&c.runs);
    // A submit in flight when the tracker froze may have been stored there and then, after
    // the call deadline, sent again elsewhere: if the first copy already finished by then, the
    // second is a new job (task ids are unique among *unfinished* jobs). Only such submits —
    // the ones that took longer than the call deadline — may run twice.
    let in_flight: Vec<&String> = accepted
        .iter()
        .filter(|(_, _, at)| (frozen_at - 2_500..=frozen_at).contains(at))
        .map(|(task, _, _)| task)
        .collect();
    let twice: Vec<_> = runs
        .iter()
        .filter(|(task, r)| r.len() > 1 && !(r.len() == 2 && in_flight.contains(task)))
        .collect();
    if !twice.is_empty() {
        let mut logs = String::new();
        for (task, _) in &twice {
            for (t, job_id, at) in accepted.iter().filter(|(t, _, _)| t == *task) {
                let log = c.client.log(job_id, 50).await.unwrap_or_default();
                logs.push_str(&format!("{t} {job_id} submitted at {at}:\n"));
                for l in log {
                    logs.push_str(&format!(
                        "  {} {:?} {} attempt {} node {}\n",
                        l.time_ms, l.log_type, l.message, l.attempt, l.node
                    ));
                }
            }
        }
        panic!(
            "froze {roles} at {frozen_at}; jobs ran more than once: {twice:?}\n{logs}\nworker:\n{}",
            c.worker.output()
        );
    }
    let next_start = runs
        .values()
        .flatten()
        .filter(|&&at| at > frozen_at)
        .min()
        .copied()
        .unwrap();
    let submitted_during: Vec<i64> = accepted
        .iter()
        .filter(|(_, _, at)| *at >= frozen_at && *at < frozen_at + SESSION.as_millis() as i64 * 2)
        .filter_map(|(task, _, at)| Some(runs.get(task)?.first()? - at))
        .collect();
    let worst = submitted_during.iter().max().copied().unwrap_or(0);
    eprintln!(
        "froze {roles} for {:?}: next job start {} ms after the freeze; {} jobs submitted \
         during the freeze, submit-to-start at most {worst} ms; {} jobs in all, {} ran twice \
         (submits in flight at the freeze)",
        SESSION * 2,
        next_start - frozen_at,
        submitted_during.len(),
        accepted.len() + 1,
        runs.values().filter(|r| r.len() > 1).count(),
    );
    // Loose: not waiting for a 15 s lease or a 30 s keepalive.
    assert!(
        next_start - frozen_at < 15_000,
        "work resumed only {} ms after the freeze",
        next_start - frozen_at
    );

    // The woken tracker did not make itself master again beside the new one.
    eventually(T, "the trackers to agree on one master", || async {
        let a = master_of(&c.trackers[0].addr).await?;
        let b = master_of(&c.trackers[1].addr).await?;
        (a == b).then_some(())
    })
    .await
    .unwrap();
    let _ = c.client.cancel(JobKey::Id(long)).await;
}

/// The identity `TrackerProc` gives a tracker: `tracker-PORT`.
fn identity(t: &TrackerProc) -> String {
    format!("tracker-{}", t.addr.rsplit(':').next().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezing_the_workers_tracker_moves_work_and_leases_to_the_other() {
    freeze_under_load(Target::Attached).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezing_the_master_loses_and_doubles_nothing() {
    freeze_under_load(Target::Master).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezing_a_follower_loses_and_doubles_nothing() {
    freeze_under_load(Target::Follower).await;
}
