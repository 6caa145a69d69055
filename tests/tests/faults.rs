//! The fault suite. A production-shaped cluster — ZooKeeper, a real `mongod`, three
//! `lts-tracker`s sharing it and three `lts-worker` processes — runs a steady load of
//! real-time jobs and a recurring job while, one at a time, the master tracker is killed
//! (`kill -9`) and frozen (`SIGSTOP` for twice the session timeout), a follower tracker, a
//! worker mid-job, the ZooKeeper server, the MongoDB server and a client process holding a
//! spooled batch are killed, each brought back after a few seconds. Then the load stops, every accepted job is waited for, and the suite
//! prints (as JSON) the faults injected, jobs accepted and finished, jobs lost (must be 0),
//! jobs run more than once (counted, each explained: only jobs in flight at a kill), fires of
//! the recurring job missed and doubled (must be 0), and how long after each fault the first
//! job ran again. A fire whose time and the next fire's both fall inside one outage (a loaded
//! machine can take longer than a period to bring `mongod` back) runs as the misfire policy's
//! one catch-up run for the two: counted apart, not as missed.
//!
//! The README's test command runs one round of every fault. The long form:
//! `LTS_FAULTS_ROUNDS=5 cargo nextest run -p lts-tests --test faults --no-capture`
//! (`LTS_FAULTS_OUT=PATH` also writes the JSON to a file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_core::{JobKey, JobSpec, Schedule, now_ms};
use lts_registry::{Registry, ZkConfig, ZkRegistry};
use lts_tests::{MongoServer, Proc, TrackerProc, ZkServer, eventually, master_of};
use lts_worker_sdk::{JobClient, ListQuery, SubmitAnswer};

const SESSION_MS: u64 = 2_000;
/// How long a killed part stays down.
const DOWN: Duration = Duration::from_secs(3);
/// The recurring job fires this often: longer than most outages here, so that each fire is
/// run on time or as its one catch-up run (two fires inside one outage run as one catch-up).
const EVERY_MS: i64 = 5_000;
const GROUP: &str = "chaos";
/// Jobs in the batch a killed client had spooled.
const SPOOLED_BATCH: usize = 20;
/// The trackers' lease time.
const LEASE_MS: i64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillMaster,
    FreezeMaster,
    KillFollower,
    KillWorker,
    KillZooKeeper,
    KillMongo,
    KillSpoolingClient,
}

impl Fault {
    const ALL: [Fault; 7] = [
        Fault::KillMaster,
        Fault::KillWorker,
        Fault::FreezeMaster,
        Fault::KillFollower,
        Fault::KillZooKeeper,
        Fault::KillMongo,
        Fault::KillSpoolingClient,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillMaster => "kill -9 master tracker",
            Fault::FreezeMaster => "SIGSTOP master tracker (2x session)",
            Fault::KillFollower => "kill -9 follower tracker",
            Fault::KillWorker => "kill -9 worker mid-job",
            Fault::KillZooKeeper => "kill -9 zookeeper",
            Fault::KillMongo => "kill -9 mongod",
            Fault::KillSpoolingClient => "kill -9 client with a spooled batch",
        }
    }
}

struct Cluster {
    dir: PathBuf,
    zk: Option<ZkServer>,
    mongo: Option<MongoServer>,
    store: String,
    trackers: Vec<Option<TrackerProc>>,
    workers: Vec<Option<Proc>>,
    runs: PathBuf,
    /// Task ids a killed client had spooled: each must be stored exactly once.
    spooled: Vec<String>,
}

impl Cluster {
    fn zk_url(&self) -> String {
        self.zk.as_ref().unwrap().url()
    }

    async fn tracker(&self) -> TrackerProc {
        TrackerProc::start(
            &self.dir,
            &[
                "--store",
                &self.store,
                "--registry",
                &self.zk_url(),
                "--zk-session-timeout-ms",
                &SESSION_MS.to_string(),
                "--idle-poll-ms",
                "100",
                "--lease-ms",
                &LEASE_MS.to_string(),
            ],
        )
        .await
        .unwrap()
    }

    fn worker(&self, i: usize) -> Proc {
        let identity = format!("w{i}");
        let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
        cmd.args(["--registry", &self.zk_url()])
            .args(["--zk-session-timeout-ms", &SESSION_MS.to_string()])
            .args([
                "--node-group",
                GROUP,
                "--threads",
                "4",
                "--identity",
                &identity,
            ])
            .arg("--exec")
            .arg(format!(
                "echo \"$LTS_TASK_ID {identity} $(date +%s%3N)\" >> {}; sleep 0.2",
                self.runs.display()
            ))
            .env("LTS_LOG", "info");
        Proc::spawn(cmd, self.dir.join(format!("{identity}-{}.log", now_ms()))).unwrap()
    }

    /// The index of the master tracker, as the trackers agree on it.
    async fn master(&self) -> usize {
        eventually(Duration::from_secs(60), "an agreed master", || async {
            let mut seen = Vec::new();
            for t in self.trackers.iter().flatten() {
                seen.push(master_of(&t.addr).await?);
            }
            let first = seen.first()?.clone();
            if !seen.iter().all(|m| *m == first) {
                return None;
            }
            self.trackers.iter().position(|t| {
                t.as_ref()
                    .is_some_and(|t| first == format!("tracker-{}", port(&t.addr)))
            })
        })
        .await
        .unwrap()
    }

    async fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::KillMaster | Fault::KillFollower => {
                let master = self.master().await;
                let i = if fault == Fault::KillMaster {
                    master
                } else {
                    (master + 1) % self.trackers.len()
                };
                let t = self.trackers[i].take().unwrap();
                self.trackers[i] = Some(t.restart_after_kill9_after(DOWN).await.unwrap());
            }
            Fault::FreezeMaster => {
                let master = self.master().await;
                let t = self.trackers[master].as_ref().unwrap();
                t.proc.signal("STOP");
                tokio::time::sleep(Duration::from_millis(2 * SESSION_MS)).await;
                t.proc.signal("CONT");
            }
            Fault::KillWorker => {
                // Mid-job: the worker is killed while one of its runs is going.
                let runs = self.runs.clone();
                let victim = eventually(Duration::from_secs(30), "a worker mid-job", || {
                    let runs = runs.clone();
                    async move {
                        let last = std::fs::read_to_string(&runs).ok()?;
                        let who = last.lines().last()?.split(' ').nth(1)?.to_string();
                        who.strip_prefix('w')?.parse::<usize>().ok()
                    }
                })
                .await
                .unwrap();
                if let Some(mut w) = self.workers[victim].take() {
                    w.kill9();
                }
                tokio::time::sleep(DOWN).await;
                self.workers[victim] = Some(self.worker(victim));
            }
            Fault::KillZooKeeper => {
                let zk = self.zk.take().unwrap();
                self.zk = Some(zk.restart_after_kill9(DOWN).await.unwrap());
            }
            Fault::KillMongo => {
                let mongo = self.mongo.take().unwrap();
                self.mongo = Some(mongo.restart_after_kill9(DOWN).await.unwrap());
            }
            Fault::KillSpoolingClient => {
                // A client that reaches no tracker spools its batch; it is killed; started
                // again with the trackers, it delivers the batch.
                let spool = self
                    .dir
                    .join(format!("client-spool-{}.db", self.spooled.len()));
                let prefix = format!("spool-{}", self.spooled.len());
                let client = |name: &str, trackers: &str, jobs: usize| {
                    let mut cmd = std::process::Command::new(lts_tests::bin("lts-spool-client"));
                    cmd.args(["--tracker", trackers, "--group", GROUP, "--prefix", &prefix])
                        .args(["--jobs", &jobs.to_string()])
                        .arg("--spool")
                        .arg(&spool);
                    Proc::spawn(cmd, self.dir.join(format!("{prefix}-{name}.log"))).unwrap()
                };
                let dead = format!("127.0.0.1:{}", lts_tests::free_port());
                let mut first = client("first", &dead, SPOOLED_BATCH);
                let last = format!("spooled {}", SPOOLED_BATCH - 1);
                eventually(Duration::from_secs(30), "the batch spooled", || async {
                    first.output().contains(&last).then_some(())
                })
                .await
                .unwrap();
                first.kill9();
                let trackers: Vec<String> = self
                    .trackers
                    .iter()
                    .flatten()
                    .map(|t| t.addr.clone())
                    .collect();
                let mut second = client("second", &trackers.join(","), 0);
                eventually(Duration::from_secs(60), "the spool delivered", || async {
                    second.output().contains("delivered").then_some(())
                })
                .await
                .unwrap();
                second.kill9();
                self.spooled
                    .extend((0..SPOOLED_BATCH).map(|i| format!("{prefix}-{i}")));
            }
        }
    }
}

fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap_or_default()
}

/// Runs recorded so far: task id → (identity, start ms) of each run.
fn runs_of(path: &Path) -> BTreeMap<String, Vec<(String, i64)>> {
    let mut runs: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let mut parts = line.split(' ');
        if let (Some(task), Some(who), Some(at)) = (parts.next(), parts.next(), parts.next()) {
            runs.entry(task.to_string())
                .or_default()
                .push((who.to_string(), at.parse().unwrap_or(0)));
        }
    }
    runs
}

/// The first run that started after `since_ms`.
fn first_run_after(path: &Path, since_ms: i64) -> Option<i64> {
    runs_of(path)
        .values()
        .flatten()
        .map(|(_, at)| *at)
        .filter(|at| *at > since_ms)
        .min()
}

fn registry(zk_url: &str) -> Arc<dyn Registry> {
    let mut cfg = ZkConfig::parse(zk_url, "default").unwrap();
    cfg.session_timeout = Duration::from_millis(SESSION_MS);
    Arc::new(ZkRegistry::start(cfg, None))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_lost_and_no_fire_missed_or_doubled_under_faults() {
    let rounds: usize = std::env::var("LTS_FAULTS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(dir.path()).await.unwrap();
    let mongo = MongoServer::start(dir.path()).await.unwrap();
    let store = mongo.url("lts_faults");
    let mut cluster = Cluster {
        dir: dir.path().to_path_buf(),
        zk: Some(zk),
        mongo: Some(mongo),
        store,
        trackers: Vec::new(),
        workers: Vec::new(),
        runs: dir.path().join("runs.txt"),
        spooled: Vec::new(),
    };
    for _ in 0..3 {
        let t = cluster.tracker().await;
        cluster.trackers.push(Some(t));
    }
    for i in 0..3 {
        let w = cluster.worker(i);
        cluster.workers.push(Some(w));
    }
    cluster.master().await;
    let client = JobClient::from_registry(registry(&cluster.zk_url()));

    // The recurring job: every EVERY_MS, each fire its own instance.
    let first_fire = (now_ms() / EVERY_MS + 2) * EVERY_MS;
    let tick = JobSpec::new("tick", GROUP).schedule(Schedule::Repeat {
        interval_ms: EVERY_MS,
        count: -1,
        first_fire_ms: Some(first_fire),
    });
    let answer = eventually(
        Duration::from_secs(30),
        "the recurring job accepted",
        || async { client.submit(tick.clone()).await.ok() },
    )
    .await
    .unwrap();
    assert!(
        matches!(answer, SubmitAnswer::Accepted { .. }),
        "{answer:?}"
    );

    // Steady load: three real-time jobs every 100 ms, for as long as the faults last.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, accepted, refused, stop) = (
            client.clone(),
            accepted.clone(),
            refused.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let specs: Vec<JobSpec> = (0..3)
                    .map(|k| JobSpec::new(format!("rt-{n}-{k}"), GROUP).max_retries(3))
                    .collect();
                n += 1;
                match client.submit_batch(specs).await {
                    Ok(answers) => {
                        let mut a = accepted.lock().unwrap();
                        for answer in answers {
                            match answer {
                                SubmitAnswer::Accepted { job_id } => a.push(job_id),
                                _ => {
                                    refused.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    Err(_) => {
                        refused.fetch_add(3, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Faults, one at a time, each after the cluster has settled.
    let mut injected = Vec::new();
    // When each fault began and ended (ms).
    let mut windows: Vec<(i64, i64)> = Vec::new();
    // When each fault began and when a job first ran again after it (ms).
    let mut outages: Vec<(i64, i64)> = Vec::new();
    for round in 0..rounds {
        for fault in Fault::ALL {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let at = now_ms();
            cluster.inject(fault).await;
            let back = eventually(Duration::from_secs(60), "a job running again", || async {
                first_run_after(&cluster.runs, at)
            })
            .await
            .unwrap();
            windows.push((at, now_ms()));
            outages.push((at, back));
            injected.push(serde_json::json!({
                "round": round + 1,
                "fault": fault.name(),
                "at_ms": at,
                "first_run_after_ms": back - at,
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let end = now_ms();

    // Every accepted job reaches a final state.
    let accepted = accepted.lock().unwrap().clone();
    let mut lost = Vec::new();
    let mut finished = 0usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for id in &accepted {
        loop {
            match client.get(JobKey::Id(id.clone())).await {
                Ok(j) if j.state.is_final() => {
                    finished += 1;
                    break;
                }
                Ok(_) | Err(_) if std::time::Instant::now() > deadline => {
                    lost.push(id.clone());
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    client
        .cancel(JobKey::Task {
            node_group: GROUP.into(),
            task_id: "tick".into(),
        })
        .await
        .unwrap();

    // The spooled batches: every job stored exactly once, and finished.
    let (mut spooled_lost, mut spooled_twice) = (Vec::new(), Vec::new());
    for task in &cluster.spooled {
        let found = eventually(
            Duration::from_secs(60),
            "a spooled job finished",
            || async {
                let (jobs, _) = client
                    .list(ListQuery {
                        node_group: Some(GROUP.into()),
                        task_id_prefix: Some(task.clone()),
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                let mine: Vec<_> = jobs
                    .into_iter()
                    .filter(|j| j.spec.task_id == *task)
                    .collect();
                (!mine.is_empty() && mine.iter().all(|j| j.state.is_final())).then_some(mine.len())
            },
        )
        .await;
        match found {
            Ok(1) => {}
            Ok(_) => spooled_twice.push(task.clone()),
            Err(_) => spooled_lost.push(task.clone()),
        }
    }

    // Runs: more than one run of a job happens only to jobs in flight at a kill.
    let runs = runs_of(&cluster.runs);
    let twice: Vec<(&String, &Vec<(String, i64)>)> = runs
        .iter()
        .filter(|(task, r)| task.starts_with("rt-") && r.len() > 1)
        .collect();

    // Fires: each slot of the schedule up to the end has exactly one instance, on time or
    // (after an outage) as its one catch-up run.
    let mut fires: Vec<i64> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (jobs, next) = client
            .list(ListQuery {
                node_group: Some(GROUP.into()),
                task_id_prefix: Some("tick~".into()),
                page_size: 1000,
                page_token: after.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        fires.extend(jobs.iter().filter_map(|j| j.scheduled_fire_ms));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    fires.sort_unstable();
    let slots = ((end - first_fire) / EVERY_MS).max(0);
    // A slot may be empty only when one outage held both it and the next slot's fire: then
    // the misfire policy (one catch-up run) ran the two as one, counted in the next slot.
    let coalesced_by_an_outage = |slot: i64| {
        outages
            .iter()
            .any(|&(down, back)| down <= slot && slot + EVERY_MS <= back)
    };
    let (mut missed, mut doubled, mut coalesced) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..slots {
        let slot = first_fire + k * EVERY_MS;
        let n = fires
            .iter()
            .filter(|f| **f >= slot && **f < slot + EVERY_MS)
            .count();
        match n {
            0 if coalesced_by_an_outage(slot) => coalesced.push(slot),
            0 => missed.push(slot),
            1 => {}
            _ => doubled.push(slot),
        }
    }

    let report = serde_json::json!({
        "rounds": rounds,
        "faults_injected": injected.len(),
        "faults": injected,
        "jobs_accepted": accepted.len(),
        "jobs_refused_while_down": refused.load(Ordering::Relaxed),
        "jobs_finished": finished,
        "jobs_lost": lost.len(),
        "spooled_jobs": cluster.spooled.len(),
        "spooled_jobs_lost": spooled_lost.len(),
        "spooled_jobs_stored_twice": spooled_twice.len(),
        "jobs_run_more_than_once": twice.len(),
        "run_more_than_once": twice
            .iter()
            .map(|(task, r)| serde_json::json!({ "task_id": task, "runs": r }))
            .collect::<Vec<_>>(),
        "cron_fire_slots": slots,
        "cron_fires_missed": missed.len(),
        "cron_fires_run_as_one_catch_up_with_the_next": coalesced.len(),
        "cron_fires_doubled": doubled.len(),
    });
    let text = serde_json::to_string_pretty(&report).unwrap();
    println!("{text}");
    if let Ok(path) = std::env::var("LTS_FAULTS_OUT") {
        std::fs::write(path, &text).unwrap();
    }
    assert!(lost.is_empty(), "jobs lost: {lost:?}\n{text}");
    assert!(
        spooled_lost.is_empty() && spooled_twice.is_empty(),
        "spooled jobs lost {spooled_lost:?}, stored twice {spooled_twice:?}\n{text}"
    );
    assert!(
        missed.is_empty() && doubled.is_empty(),
        "fires missed {missed:?}, doubled {doubled:?}\n{text}"
    );
    assert!(slots >= 3, "the recurring job had time to fire: {text}");
    // A second run is only ever the run of a job in flight when a part died: a fault, or
    // the lease time after it (a run whose result could not be recorded yet), lies between
    // its first run and its last.
    for (task, r) in &twice {
        let (first, last) = (r[0].1, r[r.len() - 1].1);
        assert!(
            windows
                .iter()
                .any(|(at, end)| *at - 1_000 <= last && end + LEASE_MS >= first),
            "{task} ran {} times with no fault in between: {r:?}\n{text}",
            r.len()
        );
    }
}
