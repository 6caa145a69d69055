//! The `JobStore` conformance suite: the same semantics for every backend. The embedded store
//! gets one `#[tokio::test]` per case; MongoDB (a real `mongod`, started here) runs
//! every case in one test, each in a fresh database, so that one server serves them all.

use std::sync::Arc;

use lts_core::schedule::{Disposition, RetryPolicy};
use lts_core::{JobSpec, JobState, LogType, Outcome, Schedule, ScheduleKind};
use lts_tests::MongoServer;
use lts_tracker::store::mongo::{MongoOptions, MongoStore};
use lts_tracker::store::sqlite::{SqliteOptions, SqliteStore};
use lts_tracker::store::{
    CancelOutcome, ChangeOutcome, ClaimRequest, CompleteOutcome, Completion, HeldLease, JobKey,
    JobStore, LeaseRef, ListFilter, SubmitOutcome, TriggerOutcome,
};

const NOW: i64 = 1_800_000_000_000;

fn claim(group: &str, owner: &str, max: usize, now: i64) -> ClaimRequest {
    ClaimRequest {
        node_group: group.into(),
        owner: owner.into(),
        max,
        lease_ms: 10_000,
        now_ms: now,
    }
}

fn done(job_id: &str, token: &str, outcome: Outcome, now: i64) -> Completion {
    Completion {
        job_id: job_id.into(),
        token: token.into(),
        outcome,
        message: format!("{outcome}"),
        logs: vec![],
        node: "w1".into(),
        now_ms: now,
    }
}

fn id(o: &SubmitOutcome) -> String {
    match o {
        SubmitOutcome::Accepted { job_id }
        | SubmitOutcome::Duplicate { job_id }
        | SubmitOutcome::Replaced { job_id } => job_id.clone(),
    }
}

/// Claims in priority, then trigger time, then submit order; never past the trigger time.
pub async fn claim_order(store: Arc<dyn JobStore>) {
    let specs = vec![
        JobSpec::new("a", "g"),
        JobSpec::new("b", "g").priority(5),
        JobSpec::new("c", "g").schedule(Schedule::TriggerAt {
            trigger_time_ms: NOW - 1000,
        }),
        JobSpec::new("d", "g")
            .priority(9)
            .schedule(Schedule::TriggerAt {
                trigger_time_ms: NOW + 1000,
            }),
        JobSpec::new("e", "g"),
        JobSpec::new("other", "h").priority(100),
    ];
    store.submit(specs, NOW).await.unwrap();
    let got = store.claim(claim("g", "w1", 10, NOW)).await.unwrap();
    let order: Vec<&str> = got.iter().map(|l| l.job.spec.task_id.as_str()).collect();
    assert_eq!(order, ["b", "c", "a", "e"]);
    assert!(
        got.iter()
            .all(|l| l.job.state == JobState::Running && l.job.attempt == 1)
    );
    assert!(
        store
            .claim(claim("g", "w2", 10, NOW))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_due("g").await.unwrap(), Some(NOW + 1000));
    let later = store.claim(claim("g", "w2", 10, NOW + 1000)).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].job.spec.task_id, "d");
}

/// Concurrent claims never lease a job twice.
pub async fn no_double_lease(store: Arc<dyn JobStore>) {
    let specs: Vec<JobSpec> = (0..200)
        .map(|i| JobSpec::new(format!("t{i}"), "g"))
        .collect();
    store.submit(specs, NOW).await.unwrap();
    let mut handles = Vec::new();
    for w in 0..8 {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s.claim(claim("g", &format!("w{w}"), 7, NOW)).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|l| l.job.job_id));
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(n, 200);
    assert_eq!(all.len(), 200);
}

/// Dedup among unfinished jobs; replace keeps the id; finished jobs free the task id.
pub async fn dedup_and_replace(store: Arc<dyn JobStore>) {
    let a = store
        .submit(vec![JobSpec::new("x", "g").param("v", "1")], NOW)
        .await
        .unwrap();
    let job_id = id(&a[0]);
    assert!(matches!(a[0], SubmitOutcome::Accepted { .. }));
    let b = store
        .submit(
            vec![
                JobSpec::new("x", "g").param("v", "2"),
                JobSpec::new("x", "g")
                    .param("v", "3")
                    .replace_on_exist(true),
                JobSpec::new("x", "other-group"),
            ],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        b[0],
        SubmitOutcome::Duplicate {
            job_id: job_id.clone()
        }
    );
    assert_eq!(
        b[1],
        SubmitOutcome::Replaced {
            job_id: job_id.clone()
        }
    );
    assert!(matches!(b[2], SubmitOutcome::Accepted { .. }));
    let job = store
        .get(JobKey::Id(job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.spec.params["v"], "3");
    let lease = store
        .claim(claim("g", "w", 1, NOW))
        .await
        .unwrap()
        .remove(0);
    let r = store
        .complete(done(&job_id, &lease.token, Outcome::Success, NOW + 5))
        .await
        .unwrap();
    assert!(matches!(
        r,
        CompleteOutcome::Accepted {
            disposition: Disposition::Finish(JobState::Succeeded),
            ..
        }
    ));
    let again = store
        .submit(vec![JobSpec::new("x", "g")], NOW + 10)
        .await
        .unwrap();
    assert!(matches!(again[0], SubmitOutcome::Accepted { .. }));
    assert_ne!(id(&again[0]), job_id);
    // By task id: the unfinished one wins over the finished one.
    let by_task = store
        .get(JobKey::Task {
            node_group: "g".into(),
            task_id: "x".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_task.job_id, id(&again[0]));
}

/// Results need the current token; retries and finishing follow the disposition.
pub async fn complete_retry_and_stale(store: Arc<dyn JobStore>) {
    let a = store
        .submit(
            vec![JobSpec::new("r", "g").max_retries(1).feedback_to("clients")],
            NOW,
        )
        .await
        .unwrap();
    let job_id = id(&a[0]);
    let l1 = store
        .claim(claim("g", "w1", 1, NOW))
        .await
        .unwrap()
        .remove(0);
    let stale = store
        .complete(done(&job_id, "not-the-token", Outcome::Success, NOW))
        .await
        .unwrap();
    assert!(matches!(stale, CompleteOutcome::Stale { .. }));
    let r = store
        .complete(done(&job_id, &l1.token, Outcome::Later, NOW + 10))
        .await
        .unwrap();
    let CompleteOutcome::Accepted {
        disposition: Disposition::Retry { at_ms },
        feedback_group: None,
        ..
    } = r
    else {
        panic!("expected a retry, got {r:?}");
    };
    assert!(at_ms > NOW + 10);
    // Not due before the backoff.
    assert!(
        store
            .claim(claim("g", "w1", 1, NOW + 10))
            .await
            .unwrap()
            .is_empty()
    );
    let l2 = store
        .claim(claim("g", "w2", 1, at_ms))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(l2.job.attempt, 2);
    // The first lease's token is dead now.
    let stale = store
        .complete(done(&job_id, &l1.token, Outcome::Success, at_ms))
        .await
        .unwrap();
    assert!(matches!(stale, CompleteOutcome::Stale { .. }));
    let r = store
        .complete(done(&job_id, &l2.token, Outcome::Exception, at_ms + 1))
        .await
        .unwrap();
    assert!(matches!(
        r,
        CompleteOutcome::Accepted {
            disposition: Disposition::Finish(JobState::Failed),
            feedback_group: Some(_),
            ..
        }
    ));
    let job = store
        .get(JobKey::Id(job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.last_outcome, Some(Outcome::Exception));
    let fb = store.pending_feedback("clients", None, 10).await.unwrap();
    assert_eq!(fb.len(), 1);
    assert_eq!(fb[0].job.job_id, job_id);
    store
        .ack_feedback(vec![fb[0].feedback_id.clone()])
        .await
        .unwrap();
    assert!(
        store
            .pending_feedback("clients", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let types: Vec<LogType> = store
        .log(&job_id, 100)
        .await
        .unwrap()
        .iter()
        .map(|l| l.log_type)
        .collect();
    assert_eq!(
        types,
        [
            LogType::Receive,
            LogType::Sent,
            LogType::Finished,
            LogType::Resend,
            LogType::Sent,
            LogType::Finished
        ]
    );
}

/// Expired leases, gone owners and released leases put jobs back.
pub async fn requeue_paths(store: Arc<dyn JobStore>) {
    store
        .submit(
            (0..3).map(|i| JobSpec::new(format!("q{i}"), "g")).collect(),
            NOW,
        )
        .await
        .unwrap();
    let leases = store.claim(claim("g", "w1", 3, NOW)).await.unwrap();
    assert_eq!(leases.len(), 3);
    // Renewal keeps one alive past the original expiry.
    let lost = store
        .renew(
            vec![LeaseRef {
                job_id: leases[0].job.job_id.clone(),
                token: leases[0].token.clone(),
            }],
            NOW + 60_000,
        )
        .await
        .unwrap();
    assert!(lost.is_empty());
    let expired = store.requeue_expired(NOW + 10_001).await.unwrap();
    assert_eq!(expired.len(), 2);
    // Release does not count the attempt.
    let released = store
        .release(
            vec![LeaseRef {
                job_id: leases[0].job.job_id.clone(),
                token: leases[0].token.clone(),
            }],
            NOW + 10_002,
        )
        .await
        .unwrap();
    assert_eq!(released.len(), 1);
    let job = store
        .get(JobKey::Id(leases[0].job.job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Queued, 0));
    let again = store
        .claim(claim("g", "w2", 3, NOW + 10_003))
        .await
        .unwrap();
    assert_eq!(again.len(), 3);
    assert_eq!(
        store.requeue_owner("w2", NOW + 10_004).await.unwrap().len(),
        3
    );
    let lost = store
        .renew(
            vec![LeaseRef {
                job_id: again[0].job.job_id.clone(),
                token: again[0].token.clone(),
            }],
            NOW + 70_000,
        )
        .await
        .unwrap();
    assert_eq!(lost, vec![again[0].job.job_id.clone()]);
}

/// Listings filter on the submitting node group and the schedule kind in the store, for
/// unfinished and finished jobs alike, and page through what matches.
pub async fn list_by_submit_group_and_schedule_kind(store: Arc<dyn JobStore>) {
    let spec = |i: usize| {
        let mut spec = JobSpec::new(format!("f-{i:02}"), "g");
        spec.submit_node_group = if i.is_multiple_of(2) { "even" } else { "odd" }.into();
        if i.is_multiple_of(3) {
            spec = spec.schedule(Schedule::Cron {
                expression: "0 0 * * * *".into(),
                time_zone: None,
            });
        }
        spec
    };
    let ids: Vec<String> = store
        .submit((0..12).map(spec).collect(), NOW)
        .await
        .unwrap()
        .iter()
        .map(id)
        .collect();
    // Two of them finish: one even one-off, one odd one-off.
    for i in [2, 5] {
        let c = store
            .cancel(JobKey::Id(ids[i].clone()), NOW + 1)
            .await
            .unwrap();
        assert!(matches!(c, CancelOutcome::Cancelled(_)), "{c:?}");
    }
    let list = |submit: Option<&str>, kind: Option<ScheduleKind>, limit: usize| {
        let store = store.clone();
        let submit = submit.map(str::to_string);
        async move {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .list(ListFilter {
                        submit_node_group: submit.clone(),
                        schedule_kind: kind,
                        limit,
                        after: after.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert!(page.jobs.len() <= limit);
                seen.extend(page.jobs.iter().map(|j| j.spec.task_id.clone()));
                match page.next {
                    Some(n) => after = Some(n),
                    None => break seen,
                }
            }
        }
    };
    let names = |is: &[usize]| is.iter().map(|i| format!("f-{i:02}")).collect::<Vec<_>>();
    assert_eq!(
        list(Some("even"), None, 4).await,
        names(&[0, 2, 4, 6, 8, 10]),
        "every job the group submitted, finished ones too"
    );
    assert_eq!(
        list(None, Some(ScheduleKind::Cron), 100).await,
        names(&[0, 3, 6, 9])
    );
    assert_eq!(
        list(Some("odd"), Some(ScheduleKind::Now), 1).await,
        names(&[1, 5, 7, 11])
    );
    assert!(
        list(Some("nobody"), None, 100).await.is_empty(),
        "no job of another group"
    );
    assert!(
        list(None, Some(ScheduleKind::Repeat), 100).await.is_empty(),
        "no repeat job"
    );
}

/// Cancel, list with filters and pages, stats, retention.
pub async fn cancel_list_stats_retention(store: Arc<dyn JobStore>) {
    let ids: Vec<String> = store
        .submit(
            (0..25)
                .map(|i| JobSpec::new(format!("job-{i:02}"), if i < 20 { "g" } else { "h" }))
                .collect(),
            NOW,
        )
        .await
        .unwrap()
        .iter()
        .map(id)
        .collect();
    let c = store
        .cancel(JobKey::Id(ids[0].clone()), NOW + 1)
        .await
        .unwrap();
    assert!(matches!(c, CancelOutcome::Cancelled(ref j) if j.state == JobState::Cancelled));
    let c = store
        .cancel(JobKey::Id(ids[0].clone()), NOW + 2)
        .await
        .unwrap();
    assert!(matches!(c, CancelOutcome::AlreadyFinished(_)));
    assert_eq!(
        store.cancel(JobKey::Id("nope".into()), NOW).await.unwrap(),
        CancelOutcome::NotFound
    );
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(ListFilter {
                node_group: Some("g".into()),
                limit: 7,
                after: after.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.jobs.iter().map(|j| j.job_id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ids[..20].to_vec(), "all of g, in submit order, once");
    let cancelled = store
        .list(ListFilter {
            state: Some(JobState::Cancelled),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(cancelled.jobs.len(), 1);
    let prefixed = store
        .list(ListFilter {
            task_id_prefix: Some("job-2".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(prefixed.jobs.len(), 5);
    let s = store.stats(Some("g")).await.unwrap();
    assert_eq!((s.queued, s.cancelled), (19, 1));
    let s = store.stats(None).await.unwrap();
    assert_eq!(s.queued, 24);
    let removed = store.enforce_retention(NOW + 100).await.unwrap();
    assert!(removed > 0);
    assert!(
        store
            .get(JobKey::Id(ids[0].clone()))
            .await
            .unwrap()
            .is_none()
    );
}

/// A repeat job relying on its previous cycle is one stored job that comes back for each
/// fire when its run ends.
pub async fn repeat_fires_until_count(store: Arc<dyn JobStore>) {
    let mut spec = JobSpec::new("rep", "g").schedule(Schedule::Repeat {
        interval_ms: 1000,
        count: 2,
        first_fire_ms: Some(NOW),
    });
    spec.rely_on_prev_cycle = true;
    let job_id = id(&store.submit(vec![spec], NOW).await.unwrap()[0]);
    let l = store
        .claim(claim("g", "w", 1, NOW))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(l.job.scheduled_fire_ms, Some(NOW));
    let r = store
        .complete(done(&job_id, &l.token, Outcome::Success, NOW + 10))
        .await
        .unwrap();
    assert!(matches!(
        r,
        CompleteOutcome::Accepted { disposition: Disposition::NextFire { at_ms, .. }, .. } if at_ms == NOW + 1000
    ));
    let l = store
        .claim(claim("g", "w", 1, NOW + 1000))
        .await
        .unwrap()
        .remove(0);
    assert_eq!((l.job.attempt, l.job.fire_count), (1, 2));
    let r = store
        .complete(done(&job_id, &l.token, Outcome::Success, NOW + 1010))
        .await
        .unwrap();
    assert!(matches!(
        r,
        CompleteOutcome::Accepted {
            disposition: Disposition::Finish(JobState::Succeeded),
            ..
        }
    ));
}

/// Pending feedback stays until acknowledged, survives retention, and pages by its id.
pub async fn feedback_until_acknowledged(store: Arc<dyn JobStore>) {
    let spec = JobSpec::new("fb", "g").feedback_to("clients");
    let job_id = id(&store.submit(vec![spec], NOW).await.unwrap()[0]);
    let l = store
        .claim(claim("g", "w", 1, NOW))
        .await
        .unwrap()
        .remove(0);
    let r = store
        .complete(done(&job_id, &l.token, Outcome::Success, NOW + 5))
        .await
        .unwrap();
    assert!(
        matches!(r, CompleteOutcome::Accepted { feedback_group: Some(ref g), ref submit_node_group, .. } if g == "clients" && submit_node_group == "clients")
    );
    assert!(
        store
            .pending_feedback("others", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let items = store.pending_feedback("clients", None, 10).await.unwrap();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(
        (
            item.job.job_id.as_str(),
            item.outcome,
            item.job.state,
            item.finished_at_ms
        ),
        (
            job_id.as_str(),
            Outcome::Success,
            JobState::Succeeded,
            NOW + 5
        )
    );
    assert_eq!(store.stats(None).await.unwrap().pending_feedback, 1);
    store.enforce_retention(NOW + 1_000_000).await.unwrap();
    let again = store.pending_feedback("clients", None, 10).await.unwrap();
    assert_eq!(again.len(), 1, "unacknowledged feedback outlives retention");
    assert!(
        store
            .pending_feedback("clients", Some(&item.feedback_id), 10)
            .await
            .unwrap()
            .is_empty(),
        "paging after the last item finds nothing"
    );
    store
        .ack_feedback(vec![item.feedback_id.clone()])
        .await
        .unwrap();
    assert!(
        store
            .pending_feedback("clients", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.stats(None).await.unwrap().pending_feedback, 0);
}

/// A deposed master's writes are refused once a newer master has acted; a stale fence yields.
pub async fn master_fence(store: Arc<dyn JobStore>) {
    assert!(store.fence(5, "a", NOW).await.unwrap(), "first master");
    assert!(store.fence(5, "a", NOW + 500).await.unwrap(), "same master");
    assert!(
        store.fence(7, "b", NOW + 600).await.unwrap(),
        "newer master"
    );
    assert!(!store.fence(5, "a", NOW + 700).await.unwrap(), "deposed");
    assert!(
        store.fence(7, "b", NOW + 800).await.unwrap(),
        "still the newest"
    );
    let later = NOW + 800 + lts_tracker::store::FENCE_STALE_MS + 1;
    assert!(
        store.fence(1, "c", later).await.unwrap(),
        "a fence nobody renewed yields (a rebuilt ZooKeeper starts epochs again)"
    );
    assert!(!store.fence(0, "d", later + 1).await.unwrap());
}

/// A suspended job is never claimed; a running one that is suspended waits after its attempt;
/// resuming after missed fires follows the misfire policy, never a burst.
pub async fn suspend_and_resume(store: Arc<dyn JobStore>) {
    let every_second = |task: &str| {
        let mut spec = JobSpec::new(task, "g").schedule(Schedule::Repeat {
            interval_ms: 1000,
            count: -1,
            first_fire_ms: Some(NOW),
        });
        spec.rely_on_prev_cycle = true;
        spec
    };
    let queued = JobKey::Task {
        node_group: "g".into(),
        task_id: "q".into(),
    };
    store.submit(vec![every_second("q")], NOW).await.unwrap();
    let r = store.suspend(queued.clone(), NOW).await.unwrap();
    assert!(
        matches!(r, ChangeOutcome::Changed(ref j) if j.state == JobState::Suspended),
        "{r:?}"
    );
    assert!(matches!(
        store.suspend(queued.clone(), NOW).await.unwrap(),
        ChangeOutcome::Unchanged(_)
    ));
    assert!(
        store
            .claim(claim("g", "w", 10, NOW + 60_000))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_due("g").await.unwrap(), None);
    assert_eq!(store.stats(Some("g")).await.unwrap().suspended, 1);
    // Resumed a minute later: one catch-up run now (fire_once), not sixty.
    let later = NOW + 60_500;
    let r = store.resume(queued.clone(), later).await.unwrap();
    assert!(
        matches!(r, ChangeOutcome::Changed(ref j) if j.state == JobState::Queued && j.trigger_time_ms == later),
        "{r:?}"
    );
    let got = store.claim(claim("g", "w", 10, later)).await.unwrap();
    assert_eq!(got.len(), 1);
    let r = store
        .complete(done(
            &got[0].job.job_id,
            &got[0].token,
            Outcome::Success,
            later + 10,
        ))
        .await
        .unwrap();
    assert!(
        matches!(r, CompleteOutcome::Accepted { disposition: Disposition::NextFire { at_ms, .. }, .. } if at_ms == later + 1000),
        "{r:?}"
    );

    // Suspended while running: the attempt ends, then it waits; resumed with skip.
    let mut spec = every_second("r");
    spec.misfire_policy = lts_core::MisfirePolicy::Skip;
    let running = JobKey::Task {
        node_group: "g".into(),
        task_id: "r".into(),
    };
    store.submit(vec![spec], NOW).await.unwrap();
    let l = store
        .claim(claim("g", "w", 1, NOW))
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.job.spec.task_id == "r")
        .expect("r is due");
    let r = store.suspend(running.clone(), NOW + 1).await.unwrap();
    assert!(
        matches!(r, ChangeOutcome::Changed(ref j) if j.state == JobState::Running),
        "{r:?}"
    );
    let r = store
        .complete(done(&l.job.job_id, &l.token, Outcome::Success, NOW + 20))
        .await
        .unwrap();
    assert!(matches!(r, CompleteOutcome::Accepted { .. }), "{r:?}");
    let j = store.get(running.clone()).await.unwrap().unwrap();
    assert_eq!(
        j.state,
        JobState::Suspended,
        "not queued again after its attempt"
    );
    assert!(
        store
            .claim(claim("g", "w", 10, NOW + 10_000))
            .await
            .unwrap()
            .iter()
            .all(|l| l.job.spec.task_id != "r")
    );
    let r = store.resume(running.clone(), NOW + 5_500).await.unwrap();
    assert!(
        matches!(r, ChangeOutcome::Changed(ref j) if j.state == JobState::Queued && j.trigger_time_ms == NOW + 6_000),
        "skip waits for the next fire on the grid: {r:?}"
    );
    let log = store.log(&l.job.job_id, 100).await.unwrap();
    assert!(log.iter().any(|e| e.log_type == LogType::Suspend));
    assert!(log.iter().any(|e| e.log_type == LogType::Resume));
    assert_eq!(
        store.resume(running.clone(), NOW).await.unwrap(),
        ChangeOutcome::Unchanged(store.get(running).await.unwrap().unwrap())
    );
    let nope = JobKey::Id("nope".into());
    assert_eq!(
        store.suspend(nope, NOW).await.unwrap(),
        ChangeOutcome::NotFound
    );
}

/// Without `rely_on_prev_cycle`, each fire is its own instance job, created and leased when
/// the fire is claimed, while the definition moves on at once: instances overlap, each keeps
/// its fire time, retries stay with the instance, a suspended definition stops firing without
/// touching a running instance, a missed fire follows the misfire policy, and the definition
/// finishes after its last fire.
pub async fn overlapping_instances(store: Arc<dyn JobStore>) {
    let spec = JobSpec::new("tick", "g")
        .max_retries(1)
        .schedule(Schedule::Repeat {
            interval_ms: 1000,
            count: 3,
            first_fire_ms: Some(NOW),
        });
    let def_id = id(&store.submit(vec![spec], NOW).await.unwrap()[0]);
    let def_key = JobKey::Id(def_id.clone());
    let first = store.claim(claim("g", "w1", 10, NOW + 5)).await.unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    let a = &first[0];
    assert_ne!(a.job.job_id, def_id, "an instance runs, not the definition");
    assert_eq!(a.job.spec.task_id, format!("tick~{NOW}"));
    assert_eq!(
        (a.job.state, a.job.attempt, a.job.scheduled_fire_ms),
        (JobState::Running, 1, Some(NOW))
    );
    assert_eq!(a.job.spec.max_retries, 1);
    let def = store.get(def_key.clone()).await.unwrap().unwrap();
    assert_eq!(
        (def.state, def.trigger_time_ms, def.fire_count),
        (JobState::Queued, NOW + 1000, 2),
        "the definition moved on while the instance runs"
    );
    // The next fire comes while the first instance still runs: they overlap.
    assert!(
        store
            .claim(claim("g", "w2", 10, NOW + 500))
            .await
            .unwrap()
            .is_empty()
    );
    let second = store
        .claim(claim("g", "w2", 10, NOW + 1_002))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    let b = &second[0];
    assert_eq!(b.job.spec.task_id, format!("tick~{}", NOW + 1000));
    assert_eq!(b.job.scheduled_fire_ms, Some(NOW + 1000));
    // A retry stays with its instance and keeps its fire time.
    let r = store
        .complete(done(&a.job.job_id, &a.token, Outcome::Later, NOW + 1_100))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            CompleteOutcome::Accepted {
                disposition: Disposition::Retry { .. },
                ..
            }
        ),
        "{r:?}"
    );
    let a2 = store
        .get(JobKey::Id(a.job.job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a2.state, a2.scheduled_fire_ms),
        (JobState::Queued, Some(NOW))
    );
    let r = store
        .complete(done(&b.job.job_id, &b.token, Outcome::Success, NOW + 1_200))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            CompleteOutcome::Accepted {
                disposition: Disposition::Finish(JobState::Succeeded),
                ..
            }
        ),
        "{r:?}"
    );
    // Suspending the definition stops its fires; the queued retry of an instance is its own.
    assert!(matches!(
        store.suspend(def_key.clone(), NOW + 1_300).await.unwrap(),
        ChangeOutcome::Changed(ref j) if j.state == JobState::Suspended
    ));
    let got = store
        .claim(claim("g", "w1", 10, NOW + 30_000))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "only the retry: {got:?}");
    assert_eq!(got[0].job.job_id, a.job.job_id);
    assert_eq!(got[0].job.attempt, 2);
    // Resumed long after its fire: one catch-up instance, then on schedule — the last fire.
    let later = NOW + 60_000;
    store.resume(def_key.clone(), later).await.unwrap();
    let third = store.claim(claim("g", "w1", 10, later)).await.unwrap();
    assert_eq!(third.len(), 1, "{third:?}");
    assert_eq!(third[0].job.spec.task_id, format!("tick~{later}"));
    let def = store.get(def_key.clone()).await.unwrap().unwrap();
    assert_eq!(
        def.state,
        JobState::Succeeded,
        "the third fire was the last: {def:?}"
    );
    assert!(
        store
            .claim(claim("g", "w1", 10, later + 5_000))
            .await
            .unwrap()
            .is_empty()
    );
    // The definition's log tells of the end of its schedule (each fire is in its instance's
    // log), the instance's log of the fire it runs.
    let log = store.log(&def_id, 100).await.unwrap();
    assert!(
        log.iter()
            .any(|e| e.log_type == LogType::Update && e.message.contains("last of its schedule")),
        "{log:?}"
    );
    let log = store.log(&b.job.job_id, 100).await.unwrap();
    assert!(
        log.iter()
            .any(|e| e.log_type == LogType::Receive && e.message.contains(&def_id)),
        "{log:?}"
    );

    // A fire claimed long after it was due (downtime) with misfire policy skip: no instance
    // for it; the definition waits for the next fire after now.
    let mut spec = JobSpec::new("skip", "g")
        .max_retries(1)
        .schedule(Schedule::Repeat {
            interval_ms: 1000,
            count: -1,
            first_fire_ms: Some(NOW),
        });
    spec.misfire_policy = lts_core::MisfirePolicy::Skip;
    let skip_id = id(&store.submit(vec![spec], NOW).await.unwrap()[0]);
    assert!(
        store
            .claim(claim("g", "w1", 10, NOW + 10_500))
            .await
            .unwrap()
            .is_empty(),
        "a missed fire is skipped"
    );
    let def = store
        .get(JobKey::Id(skip_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (def.state, def.trigger_time_ms),
        (JobState::Queued, NOW + 11_000)
    );

    // Cancelling a schedule cancels its queued instances (a pending retry) with it; a running
    // instance finishes its attempt.
    let late = NOW + 11_000;
    let l = store
        .claim(claim("g", "w1", 1, late))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(l.job.spec.task_id, format!("skip~{late}"));
    let l2 = store
        .claim(claim("g", "w1", 1, late + 1_000))
        .await
        .unwrap()
        .remove(0);
    store
        .complete(done(&l.job.job_id, &l.token, Outcome::Later, late + 10))
        .await
        .unwrap();
    assert!(matches!(
        store
            .cancel(JobKey::Id(skip_id), late + 1_100)
            .await
            .unwrap(),
        CancelOutcome::Cancelled(_)
    ));
    let retry = store
        .get(JobKey::Id(l.job.job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    let running = store
        .get(JobKey::Id(l2.job.job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (retry.state, running.state),
        (JobState::Cancelled, JobState::Running),
        "{retry:?} {running:?}"
    );
}

/// Four months of a daily 03:00 Europe/Berlin cron job, sequential and overlapping, driven by
/// the store's clock argument (months of schedule in milliseconds): one run per day at 03:00
/// local time across the spring-forward change, and after three days of downtime one catch-up
/// run, never a burst.
pub async fn months_of_a_daily_cron(store: Arc<dyn JobStore>) {
    let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let start = chrono::DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    let daily = |task: &str, rely: bool| {
        let mut spec = JobSpec::new(task, "cal").schedule(Schedule::Cron {
            expression: "0 0 3 * * *".into(),
            time_zone: Some("Europe/Berlin".into()),
        });
        spec.rely_on_prev_cycle = rely;
        spec
    };
    store
        .submit(vec![daily("seq", true), daily("ovl", false)], start)
        .await
        .unwrap();
    const DAYS: i64 = 120;
    const DOWN: std::ops::Range<i64> = 60..63;
    let mut runs: Vec<(String, i64, i64)> = Vec::new(); // (definition task, fire, claimed at)
    for day in 0..DAYS {
        if DOWN.contains(&day) {
            continue; // the cluster is down: nobody claims
        }
        // A little after 03:00 local time that day.
        let date = chrono::DateTime::from_timestamp_millis(start + day * 86_400_000)
            .unwrap()
            .with_timezone(&tz)
            .date_naive();
        let local = date.and_hms_opt(3, 0, 0).unwrap();
        let fire = chrono::TimeZone::from_local_datetime(&tz, &local)
            .single()
            .unwrap()
            .timestamp_millis();
        let now = fire + 50;
        for l in store.claim(claim("cal", "w", 10, now)).await.unwrap() {
            let def = l.job.spec.task_id.split('~').next().unwrap().to_string();
            runs.push((def, l.job.scheduled_fire_ms.unwrap(), now));
            let r = store
                .complete(done(&l.job.job_id, &l.token, Outcome::Success, now + 100))
                .await
                .unwrap();
            assert!(matches!(r, CompleteOutcome::Accepted { .. }), "{r:?}");
        }
        assert!(
            store
                .claim(claim("cal", "w", 10, now + 200))
                .await
                .unwrap()
                .is_empty(),
            "day {day}: a second run the same day"
        );
    }
    for task in ["seq", "ovl"] {
        let mine: Vec<&(String, i64, i64)> = runs.iter().filter(|r| r.0 == task).collect();
        assert_eq!(
            mine.len() as i64,
            DAYS - (DOWN.end - DOWN.start),
            "{task}: one run per day the cluster was up, the first after the downtime being \
             the catch-up"
        );
        for (_, fire, claimed) in &mine {
            assert!(claimed - fire < 86_400_000, "{task}: ran a day late");
        }
        // Every on-time run fired at 03:00 local time, in winter (UTC+1) and summer (UTC+2).
        let on_time: Vec<i64> = mine
            .iter()
            .filter(|(_, fire, claimed)| claimed - fire <= 1_000)
            .map(|(_, fire, _)| *fire)
            .collect();
        assert!(on_time.len() as i64 >= DAYS - (DOWN.end - DOWN.start) - 1);
        for fire in &on_time {
            let local = chrono::DateTime::from_timestamp_millis(*fire)
                .unwrap()
                .with_timezone(&tz);
            assert_eq!(
                local.format("%H:%M:%S").to_string(),
                "03:00:00",
                "{task}: fired at {local}"
            );
        }
    }
}

/// Every case, by name.
/// A stream's held leases go back to the queue when it ends — but not a lease that the
/// TaskTracker re-announced (renewed) through another stream meanwhile, nor a finished job.
pub async fn requeue_held_only_what_nobody_renewed(store: Arc<dyn JobStore>) {
    store
        .submit(
            (0..3).map(|i| JobSpec::new(format!("h{i}"), "g")).collect(),
            NOW,
        )
        .await
        .unwrap();
    let leases = store.claim(claim("g", "w1", 3, NOW)).await.unwrap();
    assert_eq!(leases.len(), 3);
    let held: Vec<HeldLease> = leases
        .iter()
        .map(|l| HeldLease {
            job_id: l.job.job_id.clone(),
            token: l.token.clone(),
            expiry_ms: l.expiry_ms,
        })
        .collect();
    // h0 moved to another stream (renewed there), h1 finished, h2 is left behind.
    let lost = store
        .renew(
            vec![LeaseRef {
                job_id: leases[0].job.job_id.clone(),
                token: leases[0].token.clone(),
            }],
            NOW + 3_000,
        )
        .await
        .unwrap();
    assert!(lost.is_empty());
    store
        .complete(done(
            &leases[1].job.job_id,
            &leases[1].token,
            Outcome::Success,
            NOW + 1_000,
        ))
        .await
        .unwrap();
    let requeued = store.requeue_held(held, NOW + 4_000).await.unwrap();
    assert_eq!(
        requeued
            .iter()
            .map(|r| r.job_id.as_str())
            .collect::<Vec<_>>(),
        [leases[2].job.job_id.as_str()]
    );
    let get = |i: usize| {
        let store = store.clone();
        let id = leases[i].job.job_id.clone();
        async move { store.get(JobKey::Id(id)).await.unwrap().unwrap() }
    };
    assert_eq!(get(0).await.state, JobState::Running);
    assert_eq!(get(1).await.state, JobState::Succeeded);
    let left = get(2).await;
    assert_eq!((left.state, left.attempt), (JobState::Queued, 1));
    let log = store.log(&leases[2].job.job_id, 20).await.unwrap();
    assert!(
        log.iter().any(|l| l.log_type == LogType::FixedDead),
        "{log:?}"
    );
    // Nothing left to requeue a second time.
    assert!(
        store
            .requeue_held(
                vec![HeldLease {
                    job_id: leases[2].job.job_id.clone(),
                    token: leases[2].token.clone(),
                    expiry_ms: leases[2].expiry_ms,
                }],
                NOW + 5_000
            )
            .await
            .unwrap()
            .is_empty()
    );
}

/// Once a job is leased again, the first lease's token is dead: its renewal is lost, its result
/// is stale, its hand-back does nothing, and none of them touches the new lease. A lost lease
/// counts its attempt (the run may have had effects); a hand-back does not.
pub async fn stale_token_after_reassignment(store: Arc<dyn JobStore>) {
    let job_id = id(&store
        .submit(vec![JobSpec::new("s", "g").max_retries(3)], NOW)
        .await
        .unwrap()[0]);
    let first = store
        .claim(claim("g", "w1", 1, NOW))
        .await
        .unwrap()
        .remove(0);
    let expired = store.requeue_expired(NOW + 10_001).await.unwrap();
    assert_eq!(expired.len(), 1);
    let job = store
        .get(JobKey::Id(job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (job.state, job.attempt, job.lease_owner.as_deref()),
        (JobState::Queued, 1, None),
        "a lost lease counts its attempt"
    );
    let second = store
        .claim(claim("g", "w2", 1, NOW + 10_002))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.job.attempt, 2);
    assert_ne!(second.token, first.token);
    let old = LeaseRef {
        job_id: job_id.clone(),
        token: first.token.clone(),
    };
    let lost = store.renew(vec![old.clone()], NOW + 90_000).await.unwrap();
    assert_eq!(lost, vec![job_id.clone()], "a stale renewal is lost");
    let stale = store
        .complete(done(&job_id, &first.token, Outcome::Success, NOW + 10_003))
        .await
        .unwrap();
    assert!(matches!(stale, CompleteOutcome::Stale { .. }), "{stale:?}");
    let released = store.release(vec![old], NOW + 10_004).await.unwrap();
    assert!(released.is_empty(), "a stale hand-back does nothing");
    let job = store
        .get(JobKey::Id(job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            job.state,
            job.attempt,
            job.lease_owner.as_deref(),
            job.lease_expiry_ms
        ),
        (JobState::Running, 2, Some("w2"), Some(second.expiry_ms)),
        "the new lease is untouched"
    );
    // The holder hands it back: the attempt does not count.
    let back = LeaseRef {
        job_id: job_id.clone(),
        token: second.token.clone(),
    };
    let released = store.release(vec![back], NOW + 10_005).await.unwrap();
    assert_eq!(released.len(), 1);
    let job = store
        .get(JobKey::Id(job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Queued, 1));
    let third = store
        .claim(claim("g", "w1", 1, NOW + 10_006))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(third.job.attempt, 2);
    let r = store
        .complete(done(&job_id, &third.token, Outcome::Success, NOW + 10_007))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            CompleteOutcome::Accepted {
                disposition: Disposition::Finish(JobState::Succeeded),
                ..
            }
        ),
        "{r:?}"
    );
    let types: Vec<LogType> = store
        .log(&job_id, 100)
        .await
        .unwrap()
        .iter()
        .map(|l| l.log_type)
        .collect();
    assert_eq!(
        types,
        [
            LogType::Receive,
            LogType::Sent,
            LogType::FixedDead,
            LogType::Sent,
            LogType::Resend,
            LogType::Sent,
            LogType::Finished
        ]
    );
}

/// A running job suspended by a user finishes its attempt, then waits suspended whatever would
/// have queued it again — a retry, a lost lease, a hand-back — and runs once resumed.
pub async fn suspended_while_running_waits_after_its_attempt(store: Arc<dyn JobStore>) {
    let job_id = id(&store
        .submit(vec![JobSpec::new("p", "g").max_retries(2)], NOW)
        .await
        .unwrap()[0]);
    let key = JobKey::Id(job_id.clone());
    let l = store
        .claim(claim("g", "w1", 1, NOW))
        .await
        .unwrap()
        .remove(0);
    let r = store.suspend(key.clone(), NOW + 1).await.unwrap();
    assert!(
        matches!(r, ChangeOutcome::Changed(ref j) if j.state == JobState::Running),
        "{r:?}"
    );
    assert!(
        matches!(
            store.suspend(key.clone(), NOW + 2).await.unwrap(),
            ChangeOutcome::Unchanged(_)
        ),
        "asked once already"
    );
    // It fails with retries left: the retry waits suspended.
    let r = store
        .complete(done(&job_id, &l.token, Outcome::Exception, NOW + 10))
        .await
        .unwrap();
    let CompleteOutcome::Accepted {
        disposition: Disposition::Retry { at_ms },
        ..
    } = r
    else {
        panic!("expected a retry: {r:?}");
    };
    let job = store.get(key.clone()).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.attempt, job.lease_owner.as_deref()),
        (JobState::Suspended, 1, None)
    );
    assert!(
        store
            .claim(claim("g", "w1", 1, at_ms + 60_000))
            .await
            .unwrap()
            .is_empty(),
        "a suspended retry is never claimed"
    );
    // Resumed: due at its retry time.
    let r = store.resume(key.clone(), NOW + 20).await.unwrap();
    assert!(
        matches!(r, ChangeOutcome::Changed(ref j) if j.state == JobState::Queued && j.trigger_time_ms == at_ms),
        "{r:?}"
    );
    assert!(matches!(
        store.resume(key.clone(), NOW + 21).await.unwrap(),
        ChangeOutcome::Unchanged(_)
    ));
    assert!(
        store
            .claim(claim("g", "w1", 1, NOW + 30))
            .await
            .unwrap()
            .is_empty()
    );
    let l = store
        .claim(claim("g", "w1", 1, at_ms))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(l.job.attempt, 2);
    // Suspended again, then its lease expires: suspended, the attempt counted.
    store.suspend(key.clone(), at_ms + 1).await.unwrap();
    assert_eq!(
        store.requeue_expired(at_ms + 10_001).await.unwrap().len(),
        1
    );
    let job = store.get(key.clone()).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Suspended, 2));
    // Resumed before its attempt ends: nothing waits, it is queued again as usual.
    store.resume(key.clone(), at_ms + 10_002).await.unwrap();
    let l = store
        .claim(claim("g", "w2", 1, at_ms + 10_003))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(l.job.attempt, 3);
    store.suspend(key.clone(), at_ms + 10_004).await.unwrap();
    let r = store.resume(key.clone(), at_ms + 10_005).await.unwrap();
    assert!(
        matches!(r, ChangeOutcome::Changed(ref j) if j.state == JobState::Running),
        "{r:?}"
    );
    // Suspended once more, then handed back: suspended, the attempt not counted.
    store.suspend(key.clone(), at_ms + 10_006).await.unwrap();
    let back = LeaseRef {
        job_id: job_id.clone(),
        token: l.token.clone(),
    };
    assert_eq!(
        store
            .release(vec![back], at_ms + 10_007)
            .await
            .unwrap()
            .len(),
        1
    );
    let job = store.get(key.clone()).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Suspended, 2));
    assert_eq!(store.stats(Some("g")).await.unwrap().suspended, 1);
    let types: Vec<LogType> = store
        .log(&job_id, 100)
        .await
        .unwrap()
        .iter()
        .map(|l| l.log_type)
        .collect();
    assert!(types.contains(&LogType::Suspend) && types.contains(&LogType::Resume));
}

/// Cancelling a recurring job cancels its queued instances — a pending retry and a triggered
/// run — but neither a running instance, which finishes its attempt, nor another job whose
/// task id only starts like it.
pub async fn cancel_cascades_to_queued_instances_only(store: Arc<dyn JobStore>) {
    let spec = JobSpec::new("cron", "g")
        .max_retries(1)
        .schedule(Schedule::Repeat {
            interval_ms: 1000,
            count: -1,
            first_fire_ms: Some(NOW),
        });
    let def_id = id(&store.submit(vec![spec.clone()], NOW).await.unwrap()[0]);
    let a = store
        .claim(claim("g", "w1", 10, NOW))
        .await
        .unwrap()
        .remove(0);
    let b = store
        .claim(claim("g", "w1", 10, NOW + 1_000))
        .await
        .unwrap()
        .remove(0);
    assert_ne!(a.job.job_id, b.job.job_id);
    // `a` fails with a retry left (queued); `b` runs on; a triggered run is queued; "cronx"
    // and "cron~7" (a task id accepted before `~` was reserved) only look like instances.
    let r = store
        .complete(done(&a.job.job_id, &a.token, Outcome::Later, NOW + 1_100))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            CompleteOutcome::Accepted {
                disposition: Disposition::Retry { .. },
                ..
            }
        ),
        "{r:?}"
    );
    let trig_id = match store
        .trigger(JobKey::Id(def_id.clone()), NOW + 1_200)
        .await
        .unwrap()
    {
        TriggerOutcome::Triggered(i) => i.job_id,
        other => panic!("{other:?}"),
    };
    let others = store
        .submit(
            vec![JobSpec::new("cronx", "g"), JobSpec::new("cron~7", "g")],
            NOW,
        )
        .await
        .unwrap();
    let c = store
        .cancel(JobKey::Id(def_id.clone()), NOW + 1_300)
        .await
        .unwrap();
    assert!(
        matches!(c, CancelOutcome::Cancelled(ref j) if j.state == JobState::Cancelled),
        "{c:?}"
    );
    let state = |job_id: String| {
        let store = store.clone();
        async move { store.get(JobKey::Id(job_id)).await.unwrap().unwrap().state }
    };
    assert_eq!(
        state(a.job.job_id.clone()).await,
        JobState::Cancelled,
        "the pending retry"
    );
    assert_eq!(
        state(trig_id.clone()).await,
        JobState::Cancelled,
        "the triggered run"
    );
    assert_eq!(
        state(b.job.job_id.clone()).await,
        JobState::Running,
        "the running instance"
    );
    for other in &others {
        assert_eq!(state(id(other)).await, JobState::Queued, "not an instance");
    }
    let log = store.log(&trig_id, 100).await.unwrap();
    assert!(
        log.iter()
            .any(|l| l.log_type == LogType::Del && l.message.contains(&def_id)),
        "{log:?}"
    );
    // The running instance finishes its attempt; nothing fires after it.
    let r = store
        .complete(done(&b.job.job_id, &b.token, Outcome::Success, NOW + 1_400))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            CompleteOutcome::Accepted {
                disposition: Disposition::Finish(JobState::Succeeded),
                ..
            }
        ),
        "{r:?}"
    );
    let later = store
        .claim(claim("g", "w1", 10, NOW + 60_000))
        .await
        .unwrap();
    let mut tasks: Vec<&str> = later.iter().map(|l| l.job.spec.task_id.as_str()).collect();
    tasks.sort_unstable();
    assert_eq!(tasks, ["cronx", "cron~7"]);
    // A cancelled job stays cancelled.
    assert!(matches!(
        store
            .cancel(JobKey::Id(def_id), NOW + 60_001)
            .await
            .unwrap(),
        CancelOutcome::AlreadyFinished(_)
    ));
}

/// An instance is told apart by the recurring job it names in `instance_of`, not by its task
/// id: two recurring jobs whose long task ids share their first 48 characters both fire at the
/// same instant, each into its own instance; a trigger makes an instance too, and refuses a
/// one-off job.
pub async fn instances_name_their_recurring_job(store: Arc<dyn JobStore>) {
    let common = "x".repeat(48);
    let every_second = |task_id: String| {
        JobSpec::new(task_id, "g").schedule(Schedule::Repeat {
            interval_ms: 1000,
            count: -1,
            first_fire_ms: Some(NOW),
        })
    };
    let (a, b) = (format!("{common}-report-a"), format!("{common}-report-b"));
    let out = store
        .submit(vec![every_second(a.clone()), every_second(b.clone())], NOW)
        .await
        .unwrap();
    let (a_id, b_id) = (id(&out[0]), id(&out[1]));
    let fired = store.claim(claim("g", "w1", 10, NOW + 5)).await.unwrap();
    let mut seen: Vec<(String, Option<String>)> = fired
        .iter()
        .map(|l| (l.job.spec.task_id.clone(), l.job.instance_of.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (format!("{a}~{NOW}"), Some(a_id.clone())),
            (format!("{b}~{NOW}"), Some(b_id.clone())),
        ],
        "one fire each, none lost"
    );
    // A trigger: an instance of now, naming its recurring job; the schedule does not move.
    let t = store
        .trigger(JobKey::Id(a_id.clone()), NOW + 100)
        .await
        .unwrap();
    let TriggerOutcome::Triggered(i) = t else {
        panic!("{t:?}")
    };
    assert_eq!(
        (i.spec.task_id.as_str(), i.instance_of.as_deref(), i.state),
        (format!("{a}~{}", NOW + 100).as_str(), Some(a_id.as_str()), JobState::Queued)
    );
    let again = store
        .trigger(JobKey::Id(a_id.clone()), NOW + 100)
        .await
        .unwrap();
    assert_eq!(
        again,
        TriggerOutcome::Triggered(i.clone()),
        "the same instant: the same instance"
    );
    let got = store.get(JobKey::Id(i.job_id.clone())).await.unwrap().unwrap();
    assert_eq!(got.instance_of.as_deref(), Some(a_id.as_str()));
    let def = store.get(JobKey::Id(a_id.clone())).await.unwrap().unwrap();
    assert_eq!((def.fire_count, def.instance_of), (2, None));
    // Cancelling `b` leaves `a`'s instances alone.
    store.cancel(JobKey::Id(b_id), NOW + 200).await.unwrap();
    let i_now = store.get(JobKey::Id(i.job_id)).await.unwrap().unwrap();
    assert_eq!(i_now.state, JobState::Queued);
    // What a trigger refuses.
    let one_off = id(&store
        .submit(vec![JobSpec::new("once", "g")], NOW)
        .await
        .unwrap()[0]);
    let t = store.trigger(JobKey::Id(one_off), NOW).await.unwrap();
    assert!(matches!(t, TriggerOutcome::NotRecurring(ref j) if j.spec.task_id == "once"), "{t:?}");
    let t = store.trigger(JobKey::Id("nope".into()), NOW).await.unwrap();
    assert_eq!(t, TriggerOutcome::NotFound);
}

macro_rules! for_each_case {
    ($m:ident) => {
        $m!(
            claim_order,
            no_double_lease,
            dedup_and_replace,
            complete_retry_and_stale,
            requeue_paths,
            requeue_held_only_what_nobody_renewed,
            cancel_list_stats_retention,
            list_by_submit_group_and_schedule_kind,
            repeat_fires_until_count,
            feedback_until_acknowledged,
            master_fence,
            suspend_and_resume,
            overlapping_instances,
            months_of_a_daily_cron,
            stale_token_after_reassignment,
            suspended_while_running_waits_after_its_attempt,
            cancel_cascades_to_queued_instances_only,
            instances_name_their_recurring_job
        );
    };
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        jitter: false,
        ..RetryPolicy::default()
    }
}

mod sqlite_store {
    use super::*;

    fn open() -> (Arc<dyn JobStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            dir.path().join("lts.db"),
            SqliteOptions {
                retry: retry(),
                ..Default::default()
            },
        )
        .unwrap();
        (Arc::new(store), dir)
    }

    macro_rules! cases {
        ($($case:ident),*) => {
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _dir) = open();
                    super::$case(store).await;
                }
            )*
        };
    }
    for_each_case!(cases);
}

/// Every case against MongoDB, each in its own database of one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = MongoServer::start(dir.path()).await.unwrap();
    macro_rules! cases {
        ($($case:ident),*) => {
            $(
                eprintln!("mongo_store: {}", stringify!($case));
                let store = MongoStore::connect(
                    &server.url(stringify!($case)),
                    "conformance",
                    MongoOptions { retry: retry(), ..Default::default() },
                )
                .await
                .unwrap();
                assert_eq!(store.database(), stringify!($case));
                $case(Arc::new(store)).await;
            )*
        };
    }
    for_each_case!(cases);
}
