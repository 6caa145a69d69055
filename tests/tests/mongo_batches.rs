//! Group commit in the MongoDB store, on a real `mongod`: the concurrent writes of many
//! operations go out as one command, and each operation still gets its own answer — a result
//! whose job another tracker changed meanwhile is refused alone, a submit whose task id is
//! taken is a duplicate alone, and nothing is written twice or lost. And the hand-over: a
//! job due now, submitted while a TaskTracker has a free thread, is stored already leased.

use std::sync::Arc;

use futures::future::join_all;
use lts_core::{JobSpec, JobState, Outcome};
use lts_tests::{MongoServer, claim_request};
use lts_tracker::store::mongo::{MongoOptions, MongoStore};
use lts_tracker::store::{
    CancelOutcome, ClaimRequest, CompleteOutcome, Completion, JobKey, JobStore, SubmitOutcome,
};

const NOW: i64 = 1_800_000_000_000;

async fn store(server: &MongoServer, db: &str) -> Arc<MongoStore> {
    Arc::new(
        MongoStore::connect(&server.url(db), "batches", MongoOptions::default())
            .await
            .unwrap(),
    )
}

/// Specs of group `g` with task ids `{prefix}-{i}`.
fn specs(prefix: &str, range: std::ops::Range<usize>) -> Vec<JobSpec> {
    range
        .map(|i| JobSpec::new(format!("{prefix}-{i}"), "g"))
        .collect()
}

fn accepted(o: &SubmitOutcome) -> String {
    match o {
        SubmitOutcome::Accepted { job_id } => job_id.clone(),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_results_share_commands_and_a_stale_one_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = MongoServer::start(dir.path()).await.unwrap();
    // Two trackers on one database: `a` leases and records results, `b` cancels meanwhile.
    let a = store(&server, "results").await;
    let b = store(&server, "results").await;
    let ids: Vec<String> = a
        .submit(specs("r", 0..200), NOW)
        .await
        .unwrap()
        .iter()
        .map(accepted)
        .collect();
    let leases = a.claim(claim_request("g", "w1", 200, NOW)).await.unwrap();
    assert_eq!(leases.len(), 200);
    let cancelled: Vec<String> = ids.iter().step_by(4).cloned().collect();
    for id in &cancelled {
        let c = b.cancel(JobKey::Id(id.clone()), NOW + 1).await.unwrap();
        assert!(matches!(c, CancelOutcome::Cancelled(_)), "{c:?}");
    }
    // Every result at once: `a` still holds every lease as it wrote it, so each result is
    // one guarded statement of a shared command; a quarter of the guards no longer match.
    let results = join_all(leases.iter().map(|l| {
        a.complete(Completion {
            job_id: l.job.job_id.clone(),
            token: l.token.clone(),
            outcome: Outcome::Success,
            message: "done".into(),
            logs: vec![],
            node: "w1".into(),
            mapped: 0,
            now_ms: NOW + 2,
        })
    }))
    .await;
    for (lease, result) in leases.iter().zip(results) {
        let id = &lease.job.job_id;
        let result = result.unwrap();
        let job = a.get(JobKey::Id(id.clone())).await.unwrap().unwrap();
        if cancelled.contains(id) {
            assert!(
                matches!(result, CompleteOutcome::Stale { .. }),
                "{id}: {result:?}"
            );
            assert_eq!(job.state, JobState::Cancelled, "{id}");
        } else {
            assert!(
                matches!(result, CompleteOutcome::Accepted { .. }),
                "{id}: {result:?}"
            );
            assert_eq!(job.state, JobState::Succeeded, "{id}");
            assert_eq!(job.attempt, 1, "{id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_submits_share_inserts_and_duplicates_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = MongoServer::start(dir.path()).await.unwrap();
    let a = store(&server, "submits").await;
    let b = store(&server, "submits").await;
    let taken: Vec<String> = a
        .submit(specs("s", 0..20), NOW)
        .await
        .unwrap()
        .iter()
        .map(accepted)
        .collect();
    // 300 clients submit one job each through two trackers at once: 280 new task ids and the
    // 20 taken ones, interleaved.
    let answers = join_all((0..300).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            let task = if i % 15 == 0 {
                format!("s-{}", i / 15)
            } else {
                format!("new-{i}")
            };
            let out = store
                .submit(vec![JobSpec::new(task.clone(), "g")], NOW + 1)
                .await
                .unwrap();
            (task, out.into_iter().next().unwrap())
        }
    }))
    .await;
    let mut new = 0;
    for (task, answer) in &answers {
        match answer {
            SubmitOutcome::Duplicate { job_id } => {
                let i: usize = task.strip_prefix("s-").unwrap().parse().unwrap();
                assert_eq!(job_id, &taken[i], "{task}");
            }
            SubmitOutcome::Accepted { job_id } => {
                assert!(task.starts_with("new-"), "{task} accepted twice");
                let job = a.get(JobKey::Id(job_id.clone())).await.unwrap().unwrap();
                assert_eq!(job.spec.task_id, *task);
                new += 1;
            }
            other => panic!("{task}: {other:?}"),
        }
    }
    assert_eq!(new, 280);
    assert_eq!(a.stats(Some("g")).await.unwrap().queued, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_job_is_stored_already_leased_and_anything_else_is_an_ordinary_submit() {
    let dir = tempfile::tempdir().unwrap();
    let server = MongoServer::start(dir.path()).await.unwrap();
    let a = store(&server, "handover").await;
    let claim = |now: i64| claim_request("g", "w1", 1, now);
    // Due now: one insert of the job as leased to w1, with both log lines.
    let (out, lease) = a
        .submit_leased(JobSpec::new("now", "g"), claim(NOW))
        .await
        .unwrap();
    let id = accepted(&out);
    let lease = lease.expect("leased at once");
    assert_eq!(lease.job.job_id, id);
    let job = a.get(JobKey::Id(id.clone())).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.lease_owner.as_deref(), Some("w1"));
    let log = a.log(&id, 10).await.unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    // Its result is recorded like any claimed job's.
    let done = a
        .complete(Completion {
            job_id: id.clone(),
            token: lease.token.clone(),
            outcome: Outcome::Success,
            message: String::new(),
            logs: vec![],
            node: "w1".into(),
            mapped: 0,
            now_ms: NOW + 1,
        })
        .await
        .unwrap();
    assert!(matches!(done, CompleteOutcome::Accepted { .. }), "{done:?}");

    // A taken task id: the duplicate answer, nothing leased.
    let first = accepted(
        &a.submit(vec![JobSpec::new("busy", "g")], NOW)
            .await
            .unwrap()[0],
    );
    let (out, lease) = a
        .submit_leased(JobSpec::new("busy", "g"), claim(NOW))
        .await
        .unwrap();
    assert_eq!(out, SubmitOutcome::Duplicate { job_id: first });
    assert!(lease.is_none());

    // Not due yet, or recurring: stored queued, nothing leased.
    let mut later = JobSpec::new("later", "g");
    later.schedule = lts_core::Schedule::TriggerAt {
        trigger_time_ms: NOW + 3_600_000,
    };
    let mut cron = JobSpec::new("cron", "g");
    cron.schedule = lts_core::Schedule::Cron {
        expression: "0 * * * * *".into(),
        time_zone: None,
    };
    for spec in [later, cron] {
        let task = spec.task_id.clone();
        let (out, lease) = a.submit_leased(spec, claim(NOW)).await.unwrap();
        assert!(lease.is_none(), "{task}");
        let job = a.get(JobKey::Id(accepted(&out))).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Queued, "{task}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trackers_racing_for_one_queue_lease_every_job_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = MongoServer::start(dir.path()).await.unwrap();
    let trackers = [
        store(&server, "race").await,
        store(&server, "race").await,
        store(&server, "race").await,
    ];
    let n = 600;
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let specs = chunk
            .iter()
            .map(|i| JobSpec::new(format!("race-{i}"), "g"))
            .collect();
        trackers[0].submit(specs, NOW).await.unwrap();
    }
    // Every tracker claims 16 at a time, all at once, until the queue is empty. The ones that
    // lose races spread their next claims out; none may lease a job another one holds.
    let claims = trackers.iter().enumerate().map(|(t, s)| {
        let s = s.clone();
        async move {
            let mut mine = Vec::new();
            loop {
                let got = s
                    .claim(claim_request("g", &format!("w{t}"), 16, NOW + 1))
                    .await
                    .unwrap();
                if got.is_empty() {
                    // Another tracker may still hold candidates it lost: look once more.
                    let again = s.stats(Some("g")).await.unwrap();
                    if again.queued == 0 {
                        return mine;
                    }
                    continue;
                }
                mine.extend(got.into_iter().map(|l| l.job.job_id));
            }
        }
    });
    let leased: Vec<Vec<String>> = join_all(claims).await;
    let mut all: Vec<&String> = leased.iter().flatten().collect();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "a job was leased twice");
    assert_eq!(total, n, "every job leased");
    let stats = trackers[0].stats(Some("g")).await.unwrap();
    assert_eq!((stats.queued, stats.running), (0, n as u64));
}

/// Three trackers on one database claim a capped node group all at once, and each run ends a
/// moment after its claim: the group's running jobs never pass its cap (a tracker whose claim
/// raced past it hands back its own surplus before sending any), and every job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_trackers_never_run_a_capped_group_past_its_cap() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let server = MongoServer::start(dir.path()).await.unwrap();
    let trackers = [
        store(&server, "cap").await,
        store(&server, "cap").await,
        store(&server, "cap").await,
    ];
    let (n, cap) = (120, 5u32);
    trackers[0].submit(specs("cap", 0..n), NOW).await.unwrap();
    let (held, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let runs = trackers.iter().enumerate().map(|(t, s)| {
        let (s, held, most) = (s.clone(), held.clone(), most.clone());
        async move {
            let mut ran = 0;
            loop {
                let got = s
                    .claim(ClaimRequest {
                        max_running: Some(cap),
                        ..claim_request("g", &format!("w{t}"), 4, NOW + 1)
                    })
                    .await
                    .unwrap();
                if got.is_empty() {
                    let stats = s.stats(Some("g")).await.unwrap();
                    if stats.queued == 0 && stats.running == 0 {
                        return ran;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    continue;
                }
                // What this tracker now holds, on top of what the others hold.
                let now = held.fetch_add(got.len(), Ordering::SeqCst) + got.len();
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                for l in &got {
                    held.fetch_sub(1, Ordering::SeqCst);
                    let done = s
                        .complete(Completion {
                            job_id: l.job.job_id.clone(),
                            token: l.token.clone(),
                            outcome: Outcome::Success,
                            message: String::new(),
                            logs: vec![],
                            node: format!("w{t}"),
                            mapped: 0,
                            now_ms: NOW + 2,
                        })
                        .await
                        .unwrap();
                    assert!(matches!(done, CompleteOutcome::Accepted { .. }), "{done:?}");
                }
                ran += got.len();
            }
        }
    });
    let ran: usize = join_all(runs).await.into_iter().sum();
    assert_eq!(ran, n, "every job ran once");
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= cap as usize,
        "{most} jobs held at once, past the cap of {cap}"
    );
    let stats = trackers[0].stats(Some("g")).await.unwrap();
    assert_eq!((stats.queued, stats.running), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_of_an_older_version_give_way_to_the_partial_ones() {
    use mongodb::IndexModel;
    use mongodb::bson::{Document, doc};
    use mongodb::options::IndexOptions;
    let dir = tempfile::tempdir().unwrap();
    let server = MongoServer::start(dir.path()).await.unwrap();
    let client = mongodb::Client::with_uri_str(server.url("older"))
        .await
        .unwrap();
    let jobs = client.database("older").collection::<Document>("jobs");
    let named = |keys: Document, name: &str| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().name(name.to_string()).build())
            .build()
    };
    jobs.create_indexes([
        named(
            doc! { "task_tracker_node_group": 1, "state": 1, "priority": -1, "trigger_time": 1, "_id": 1 },
            "claim",
        ),
        named(doc! { "task_tracker_node_group": 1, "state": 1, "trigger_time": 1 }, "due"),
        named(doc! { "instance_of": 1, "done": 1 }, "instance_of"),
        named(doc! { "fb_group": 1, "_id": 1 }, "feedback"),
    ])
    .await
    .unwrap();
    let s = store(&server, "older").await;
    let names = jobs.list_index_names().await.unwrap();
    for old in ["claim", "due", "instance_of", "feedback"] {
        assert!(
            !names.contains(&old.to_string()),
            "{old} is still there: {names:?}"
        );
    }
    for new in [
        "claim_queued",
        "due_queued",
        "instance_of_only",
        "feedback_only",
    ] {
        assert!(
            names.contains(&new.to_string()),
            "{new} is missing: {names:?}"
        );
    }
    // A second start finds nothing to change.
    drop(s);
    let _again = store(&server, "older").await;
    assert_eq!(jobs.list_index_names().await.unwrap().len(), names.len());
}

/// In a deep queue a TaskTracker's claims start where its last claim found the queue's front
/// (past the keys of the jobs it leased). A job submitted through the same tracker that sorts
/// before that point is taken at once; one another tracker queued, within the floor's
/// 200 ms; and every job is leased once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_from_the_front_found_last_miss_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = MongoServer::start(dir.path()).await.unwrap();
    let a = store(&server, "floors").await;
    let b = store(&server, "floors").await;
    a.submit(specs("f", 0..100), NOW).await.unwrap();
    let mut leased = std::collections::HashSet::new();
    assert_eq!(take(&a, &mut leased, 10, NOW).await.len(), 10);

    let high = |task: &str| {
        let mut spec = JobSpec::new(task, "g");
        spec.priority = 5;
        vec![spec]
    };
    // Through this tracker: the next claim takes it.
    a.submit(high("high-a"), NOW + 1).await.unwrap();
    assert_eq!(take(&a, &mut leased, 1, NOW + 2).await, ["high-a"]);
    assert_eq!(take(&a, &mut leased, 10, NOW + 3).await.len(), 10);
    // Through another tracker: within the floor's time of the last whole read, at the latest.
    b.submit(high("high-b"), NOW + 4).await.unwrap();
    // (Within it, this tracker's claims still start at its floor: they skip the keys of the
    // jobs leased before, which is what the floor is for.)
    let next = take(&a, &mut leased, 1, NOW + 5).await;
    assert!(next[0].starts_with("f-"), "{next:?}");
    assert_eq!(take(&a, &mut leased, 1, NOW + 1_000).await, ["high-b"]);
    // The rest, each once.
    let mut rounds = 0;
    while !take(&a, &mut leased, 7, NOW + 2_000 + rounds)
        .await
        .is_empty()
    {
        rounds += 1;
        assert!(rounds < 100);
    }
    assert_eq!(leased.len(), 102);
}

/// Leases up to `max` jobs of `g` to `w1`; their task ids, each checked leased only once.
async fn take(
    store: &MongoStore,
    leased: &mut std::collections::HashSet<String>,
    max: usize,
    now: i64,
) -> Vec<String> {
    let got: Vec<String> = store
        .claim(claim_request("g", "w1", max, now))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.job.spec.task_id)
        .collect();
    for t in &got {
        assert!(leased.insert(t.clone()), "{t} leased twice");
    }
    got
}
