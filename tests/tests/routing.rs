//! Route keys with real processes: the jobs of one key run on one `lts-worker` while it lives,
//! the one the key's bucket is dealt to (`lts_core::route`); when that worker is killed with
//! `kill -9`, its keys move to the others and no other key moves. With two trackers on one
//! MongoDB store, both deal the same way: a key's jobs submitted through either tracker run on
//! the same worker, whichever tracker it is connected to.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use lts_core::route::Assignment;
use lts_core::{JobSpec, JobState};
use lts_tests::{MongoServer, Proc, TrackerProc, ZkServer, eventually, wait_final};
use lts_worker_sdk::{JobClient, SubmitAnswer};

const T: Duration = Duration::from_secs(60);
const KEYS: usize = 12;
const PER_KEY: usize = 4;

/// An `lts-worker` that records each run as `TASK_ID IDENTITY ROUTE_KEY` in `runs`; `connect` says how
/// it finds its tracker (`--tracker ADDR` or `--registry URL`).
fn worker(dir: &Path, connect: &[&str], identity: &str, runs: &Path) -> Proc {
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args(connect)
        .args(["--node-group", "routed", "--threads", "2"])
        .args(["--identity", identity])
        .arg("--exec")
        .arg(format!(
            "echo \"$LTS_TASK_ID {identity} $LTS_ROUTE_KEY\" >> {}",
            runs.display()
        ));
    Proc::spawn(cmd, dir.join(format!("{identity}.log"))).unwrap()
}

fn key(k: usize) -> String {
    format!("customer-{k}")
}

/// Submits `PER_KEY` jobs for each key, task ids `<round>-<k>-<i>`, spread over `clients`, and
/// waits until all succeeded.
async fn run_round(clients: &[JobClient], round: &str) {
    let mut ids = Vec::new();
    for k in 0..KEYS {
        for i in 0..PER_KEY {
            let spec = JobSpec {
                route_key: Some(key(k)),
                ..JobSpec::new(format!("{round}-{k}-{i}"), "routed")
            };
            let client = &clients[(k + i) % clients.len()];
            match client.submit(spec).await.unwrap() {
                SubmitAnswer::Accepted { job_id } => ids.push((client.clone(), job_id)),
                other => panic!("{other:?}"),
            }
        }
    }
    for (client, id) in ids {
        let job = wait_final(&client, &id, T).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    }
}

/// Where each key's jobs of `round` ran: key index → the workers (one, if routing held).
fn ran_on(runs: &Path, round: &str) -> BTreeMap<usize, BTreeSet<String>> {
    let mut out: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let text = std::fs::read_to_string(runs).unwrap_or_default();
    let mut count = 0;
    for line in text.lines() {
        let mut fields = line.split(' ');
        let (task, who, route_key) = (
            fields.next().unwrap(),
            fields.next().unwrap(),
            fields.next(),
        );
        let Some(rest) = task.strip_prefix(&format!("{round}-")) else {
            continue;
        };
        let k: usize = rest.split('-').next().unwrap().parse().unwrap();
        assert_eq!(route_key, Some(key(k).as_str()), "LTS_ROUTE_KEY of {task}");
        out.entry(k).or_default().insert(who.to_string());
        count += 1;
    }
    assert_eq!(count, KEYS * PER_KEY, "each job once: {text}");
    out
}

/// Waits until the trackers behind `client` see exactly `identities` as the group's workers.
async fn wait_workers(client: &JobClient, identities: &[&str]) {
    let want: BTreeSet<String> = identities.iter().map(|s| s.to_string()).collect();
    eventually(T, &format!("the workers {want:?}"), || async {
        let nodes = client.nodes().await.ok()?;
        let have: BTreeSet<String> = nodes
            .nodes
            .iter()
            .filter(|n| n.node_group == "routed")
            .map(|n| n.identity.clone())
            .collect();
        (have == want).then_some(())
    })
    .await
    .unwrap();
}

/// The workers connected to the tracker behind `client` (the ones it knows free threads of:
/// all of them, while they are idle).
async fn local_workers(client: &JobClient) -> BTreeSet<String> {
    let nodes = client.nodes().await.unwrap();
    nodes
        .nodes
        .iter()
        .filter(|n| n.node_group == "routed" && n.free_threads > 0)
        .map(|n| n.identity.clone())
        .collect()
}

/// Checks that every key of `round` ran on one worker, the one `dealt` gives it; returns the
/// owner of each key.
fn check_round(runs: &Path, round: &str, dealt: &Assignment) -> BTreeMap<usize, String> {
    ran_on(runs, round)
        .into_iter()
        .map(|(k, on)| {
            assert_eq!(on.len(), 1, "{round}: key {k} ran on {on:?}");
            let on = on.into_iter().next().unwrap();
            assert_eq!(
                dealt.owner_of_key(&key(k)),
                Some(on.as_str()),
                "{round}: key {k}"
            );
            (k, on)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_jobs_run_on_one_worker_and_move_only_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let runs = dir.path().join("runs.txt");
    let connect = ["--tracker", tracker.addr.as_str()];
    let _w1 = worker(dir.path(), &connect, "w1", &runs);
    let mut w2 = worker(dir.path(), &connect, "w2", &runs);
    let _w3 = worker(dir.path(), &connect, "w3", &runs);
    wait_workers(&client, &["w1", "w2", "w3"]).await;

    let all = Assignment::new(&["w1", "w2", "w3"].map(String::from));
    run_round(std::slice::from_ref(&client), "first").await;
    let before = check_round(&runs, "first", &all);
    assert!(
        before.values().collect::<BTreeSet<_>>().len() > 1,
        "12 keys spread over more than one worker: {before:?}"
    );

    w2.kill9();
    wait_workers(&client, &["w1", "w3"]).await;
    let fewer = Assignment::new(&["w1", "w3"].map(String::from));
    run_round(std::slice::from_ref(&client), "second").await;
    let after = check_round(&runs, "second", &fewer);
    for (k, was) in &before {
        if was != "w2" {
            assert_eq!(&after[k], was, "key {k} moved though its worker lived");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trackers_on_one_mongo_store_send_a_key_to_the_same_worker() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZkServer::start(&dir.path().join("zk")).await.unwrap();
    let mongo = MongoServer::start(&dir.path().join("mongo")).await.unwrap();
    let store = mongo.url("routing");
    let tracker = |name: &str| {
        let (dir, store, zk) = (dir.path().join(name), store.clone(), zk.url());
        async move {
            std::fs::create_dir_all(&dir).unwrap();
            TrackerProc::start(
                &dir,
                &[
                    "--store",
                    &store,
                    "--registry",
                    &zk,
                    "--zk-session-timeout-ms",
                    "2000",
                ],
            )
            .await
            .unwrap()
        }
    };
    let (a, b) = (tracker("a").await, tracker("b").await);
    let runs = dir.path().join("runs.txt");
    let registry = zk.url();
    let connect = [
        "--registry",
        registry.as_str(),
        "--zk-session-timeout-ms",
        "2000",
    ];
    let mut workers: Vec<Proc> = ["w1", "w2", "w3"]
        .iter()
        .map(|w| worker(dir.path(), &connect, w, &runs))
        .collect();
    let clients = [a.client(), b.client()];
    // Each worker picks a tracker at random: until both trackers have some, start w3 again.
    for attempt in 0.. {
        for c in &clients {
            wait_workers(c, &["w1", "w2", "w3"]).await;
        }
        let on_a = eventually(T, "the workers of tracker a to be idle", || async {
            let here = local_workers(&clients[0]).await;
            let there = local_workers(&clients[1]).await;
            (here.len() + there.len() == 3).then_some(here)
        })
        .await
        .unwrap();
        if (1..3).contains(&on_a.len()) {
            break;
        }
        assert!(attempt < 20, "w3 never picked the other tracker");
        workers[2].kill9();
        wait_workers(&clients[0], &["w1", "w2"]).await;
        workers[2] = worker(dir.path(), &connect, "w3", &runs);
    }
    // The trackers' registry watches may trail the answer above by a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = Assignment::new(&["w1", "w2", "w3"].map(String::from));
    run_round(&clients, "mongo").await;
    check_round(&runs, "mongo", &all);
}
