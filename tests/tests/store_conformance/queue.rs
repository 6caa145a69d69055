//! Claims, leases, results and retries: the queue itself.

use super::*;

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
        .ack_feedback("clients", vec![fb[0].feedback_id.clone()])
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
    // A lost run is counted, and the job waits out a backoff (1 s without jitter) first.
    for r in &expired {
        let job = store
            .get(JobKey::Id(r.job_id.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert_eq!((job.attempt, job.lease_losses), (1, 1));
        assert_eq!(job.trigger_time_ms, NOW + 11_001);
    }
    let early = store
        .claim(claim("g", "w2", 3, NOW + 10_003))
        .await
        .unwrap();
    assert!(early.is_empty(), "the backoff holds them: {early:?}");
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
        .claim(claim("g", "w2", 3, NOW + 11_001))
        .await
        .unwrap();
    assert_eq!(again.len(), 3);
    assert_eq!(
        store.requeue_owner("w2", NOW + 11_002).await.unwrap().len(),
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

/// Every case, by name.
/// Past its budget of lost runs, a job fails (with its FIXED_DEAD line and feedback) instead
/// of going back to the queue; a recurring one fails that fire and keeps its schedule.
pub async fn lost_runs_end_a_poison_job(store: Arc<dyn JobStore>) {
    let spec = JobSpec::new("poison", "g")
        .max_lease_losses(0)
        .max_retries(2)
        .feedback_to("c");
    store.submit(vec![spec], NOW).await.unwrap();
    let leased = store.claim(claim("g", "w1", 1, NOW)).await.unwrap();
    assert_eq!(leased.len(), 1);
    let id = leased[0].job.job_id.clone();
    store.requeue_owner("w1", NOW + 5).await.unwrap();
    let job = store.get(JobKey::Id(id.clone())).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert_eq!(job.last_outcome, Some(Outcome::Exception));
    assert_eq!((job.attempt, job.lease_losses), (1, 1));
    let log = store.log(&id, 20).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(last.log_type, LogType::FixedDead, "{log:?}");
    assert!(
        last.message
            .contains("more than max_lease_losses (0) allows"),
        "{}",
        last.message
    );
    assert_eq!(store.stats(None).await.unwrap().pending_feedback, 1);
    assert!(
        store
            .claim(claim("g", "w2", 1, NOW + 60_000))
            .await
            .unwrap()
            .is_empty()
    );

    // A recurring job: that fire fails, the next one comes, no lost runs counted for it.
    let every = Schedule::Repeat {
        interval_ms: 1_000,
        count: -1,
        first_fire_ms: Some(NOW),
    };
    let spec = JobSpec::new("tick", "g")
        .schedule(every)
        .max_lease_losses(0);
    let mut spec = spec;
    spec.rely_on_prev_cycle = true;
    store.submit(vec![spec], NOW).await.unwrap();
    let leased = store.claim(claim("g", "w3", 1, NOW)).await.unwrap();
    assert_eq!(leased.len(), 1);
    let id = leased[0].job.job_id.clone();
    store.requeue_expired(NOW + 10_001).await.unwrap();
    let job = store.get(JobKey::Id(id)).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued, "{job:?}");
    assert_eq!((job.attempt, job.lease_losses), (0, 0));
    assert_eq!(job.last_outcome, Some(Outcome::Exception));
    assert!(job.trigger_time_ms > NOW, "{job:?}");
}

/// A run's deadline is stored with its lease, caps its renewals, and a run lost past it ends
/// `TIMEOUT` — an attempt, not a lost run.
pub async fn deadlines_cap_leases_and_end_runs_timeout(store: Arc<dyn JobStore>) {
    let spec = JobSpec::new("slow", "g").timeout(std::time::Duration::from_secs(2));
    store.submit(vec![spec], NOW).await.unwrap();
    let leased = store.claim(claim("g", "w1", 1, NOW)).await.unwrap();
    assert_eq!(leased.len(), 1);
    let id = leased[0].job.job_id.clone();
    let grace_end = NOW + 2_000 + lts_core::transition::DEADLINE_GRACE_MS;
    let job = store.get(JobKey::Id(id.clone())).await.unwrap().unwrap();
    assert_eq!(job.deadline_ms, Some(NOW + 2_000));
    let lease = LeaseRef {
        job_id: id.clone(),
        token: leased[0].token.clone(),
    };
    assert!(
        store
            .renew(vec![lease], NOW + 600_000)
            .await
            .unwrap()
            .is_empty()
    );
    let job = store.get(JobKey::Id(id.clone())).await.unwrap().unwrap();
    assert_eq!(
        job.lease_expiry_ms,
        Some(grace_end),
        "renewed no further than the grace"
    );
    assert!(store.requeue_expired(grace_end).await.unwrap().is_empty());
    store.requeue_expired(grace_end + 1).await.unwrap();
    let job = store.get(JobKey::Id(id.clone())).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.last_outcome),
        (JobState::Failed, Some(Outcome::Timeout))
    );
    assert_eq!((job.lease_losses, job.deadline_ms), (0, None));
    let log = store.log(&id, 20).await.unwrap();
    assert_eq!(
        log.last().map(|l| l.log_type),
        Some(LogType::Finished),
        "{log:?}"
    );
}

/// A submit with an idempotency key a job already has is answered with that job — unfinished
/// or finished, until the retention period ends — so a retry after a lost answer stores (and
/// runs) nothing twice.
pub async fn idempotent_submits_answer_the_stored_job(store: Arc<dyn JobStore>) {
    let mut spec = JobSpec::new("once", "g");
    spec.idempotency_key = Some("key-1".into());
    let first = id(&store.submit(vec![spec.clone()], NOW).await.unwrap()[0]);
    let again = store.submit(vec![spec.clone()], NOW + 1).await.unwrap();
    assert_eq!(
        again,
        vec![SubmitOutcome::Duplicate {
            job_id: first.clone()
        }]
    );
    let l = store
        .claim(claim("g", "w", 1, NOW + 2))
        .await
        .unwrap()
        .remove(0);
    store
        .complete(done(&first, &l.token, Outcome::Success, NOW + 3))
        .await
        .unwrap();
    // Finished: its task id is free, but the key still answers with it.
    let after = store.submit(vec![spec.clone()], NOW + 4).await.unwrap();
    assert_eq!(
        after,
        vec![SubmitOutcome::Duplicate {
            job_id: first.clone()
        }]
    );
    // Another spec with the key: the key decides.
    let mut other = JobSpec::new("other", "g");
    other.idempotency_key = Some("key-1".into());
    let answer = store.submit(vec![other], NOW + 5).await.unwrap();
    assert_eq!(
        answer,
        vec![SubmitOutcome::Duplicate {
            job_id: first.clone()
        }]
    );
    // Without a key, the finished task id is simply submitted again.
    let plain = store
        .submit(vec![JobSpec::new("once", "g")], NOW + 6)
        .await
        .unwrap();
    assert!(
        matches!(&plain[0], SubmitOutcome::Accepted { job_id } if *job_id != first),
        "{plain:?}"
    );
    // After the retention period the key is forgotten.
    store.enforce_retention(NOW + 1_000).await.unwrap();
    let mut fresh = JobSpec::new("fresh", "g");
    fresh.idempotency_key = Some("key-1".into());
    let late = store.submit(vec![fresh], NOW + 2_000).await.unwrap();
    assert!(
        matches!(&late[0], SubmitOutcome::Accepted { job_id } if *job_id != first),
        "{late:?}"
    );

    // A recurring job's key is its own: its fires are not submits, and each gets its
    // instance.
    let every = Schedule::Repeat {
        interval_ms: 1_000,
        count: -1,
        first_fire_ms: Some(NOW + 3_000),
    };
    let mut tick = JobSpec::new("tick", "fires").schedule(every);
    tick.idempotency_key = Some("key-2".into());
    store.submit(vec![tick], NOW + 2_500).await.unwrap();
    for fire in 0..2 {
        let at = NOW + 3_000 + fire * 1_000;
        let leased = store.claim(claim("fires", "w", 1, at)).await.unwrap();
        assert_eq!(leased.len(), 1, "fire {fire}");
        assert!(leased[0].job.instance_of.is_some(), "{:?}", leased[0].job);
        assert_eq!(leased[0].job.spec.idempotency_key, None);
    }
}

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
    // Queued again after the backoff of a lost run (1 s).
    assert_eq!(job.trigger_time_ms, NOW + 11_001);
    let second = store
        .claim(claim("g", "w2", 1, NOW + 11_002))
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
        .complete(done(&job_id, &first.token, Outcome::Success, NOW + 11_003))
        .await
        .unwrap();
    assert!(matches!(stale, CompleteOutcome::Stale { .. }), "{stale:?}");
    let released = store.release(vec![old], NOW + 11_004).await.unwrap();
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
    let released = store.release(vec![back], NOW + 11_005).await.unwrap();
    assert_eq!(released.len(), 1);
    let job = store
        .get(JobKey::Id(job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Queued, 1));
    let third = store
        .claim(claim("g", "w1", 1, NOW + 11_006))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(third.job.attempt, 2);
    let r = store
        .complete(done(&job_id, &third.token, Outcome::Success, NOW + 11_007))
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

/// A node group's cap on running jobs: a claim leases no more than the cap leaves room for,
/// counting the running jobs of every owner (and no other group's), and room comes back as
/// runs end.
pub async fn a_group_cap_limits_its_running_jobs(store: Arc<dyn JobStore>) {
    let specs = (0..5)
        .map(|i| JobSpec::new(format!("c{i}"), "capped"))
        .chain((0..3).map(|i| JobSpec::new(format!("o{i}"), "other")))
        .collect();
    store.submit(specs, NOW).await.unwrap();
    let capped = |owner: &str, max: usize, now: i64| ClaimRequest {
        max_running: Some(3),
        ..claim("capped", owner, max, now)
    };
    // Another group's running jobs do not count.
    assert_eq!(
        store
            .claim(claim("other", "w9", 10, NOW))
            .await
            .unwrap()
            .len(),
        3
    );
    let first = store.claim(capped("w1", 2, NOW)).await.unwrap();
    assert_eq!(first.len(), 2);
    let second = store.claim(capped("w2", 10, NOW)).await.unwrap();
    assert_eq!(second.len(), 1, "room for one more: {second:?}");
    assert!(store.claim(capped("w3", 10, NOW)).await.unwrap().is_empty());
    assert_eq!(store.running_count("capped", 10).await.unwrap(), 3);
    assert_eq!(
        store.running_count("capped", 2).await.unwrap(),
        2,
        "counted up to 2"
    );
    assert_eq!(store.running_count("other", 10).await.unwrap(), 3);
    // A run ends: room for one.
    let ended = store
        .complete(done(
            &first[0].job.job_id,
            &first[0].token,
            Outcome::Success,
            NOW + 10,
        ))
        .await
        .unwrap();
    assert!(
        matches!(ended, CompleteOutcome::Accepted { .. }),
        "{ended:?}"
    );
    let third = store.claim(capped("w3", 10, NOW + 20)).await.unwrap();
    assert_eq!(third.len(), 1, "{third:?}");
    assert!(
        store
            .claim(capped("w3", 10, NOW + 30))
            .await
            .unwrap()
            .is_empty()
    );
    // Without the cap the rest would go at once.
    assert_eq!(
        store
            .claim(claim("capped", "w4", 10, NOW + 40))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A sharded job: its claim creates its shards (nothing is handed out for the job itself), the
/// shards are claimed and retried like any job, the job shows their progress and ends with
/// the last of them — FAILED if one failed; a cancel of a sharded job cancels its shards.
pub async fn sharded_jobs_run_as_their_shards(store: Arc<dyn JobStore>) {
    let mut spec = JobSpec::new("split", "g").max_retries(1);
    spec.shards = Some(3);
    let job = JobKey::Id(id(&store.submit(vec![spec], NOW).await.unwrap()[0]));
    assert!(
        store
            .claim(claim("g", "w1", 10, NOW))
            .await
            .unwrap()
            .is_empty()
    );
    let parent = store.get(job.clone()).await.unwrap().unwrap();
    assert_eq!(
        (parent.state, parent.lease_owner.clone()),
        (JobState::Running, None)
    );
    let progress = parent.shard_progress.unwrap();
    assert_eq!((progress.pending, progress.unfinished()), (3, 3));
    // A claim written again (a tracker that crashed half-way) makes no second set.
    let mut shards = store.claim(claim("g", "w1", 10, NOW + 1)).await.unwrap();
    assert_eq!(shards.len(), 3, "{shards:?}");
    shards.sort_by_key(|l| l.job.shard.as_ref().unwrap().index);
    for (i, l) in shards.iter().enumerate() {
        let shard = l.job.shard.as_ref().unwrap();
        assert_eq!(
            (shard.of.as_str(), shard.index, shard.count),
            (parent.job_id.as_str(), i as u32, 3)
        );
        assert_eq!(l.job.spec.task_id, format!("split#{i}"));
    }
    let finish = |i: usize, outcome: Outcome, at: i64| {
        let store = store.clone();
        let l = shards[i].clone();
        async move {
            let r = store
                .complete(done(&l.job.job_id, &l.token, outcome, at))
                .await
                .unwrap();
            assert!(matches!(r, CompleteOutcome::Accepted { .. }), "{r:?}");
        }
    };
    finish(0, Outcome::Success, NOW + 10).await;
    // Shard 1 asks for a retry: retried on its own; the job waits.
    finish(1, Outcome::Later, NOW + 20).await;
    let p = store.get(job.clone()).await.unwrap().unwrap();
    assert_eq!(p.state, JobState::Running);
    let progress = p.shard_progress.unwrap();
    assert_eq!(
        (progress.succeeded, progress.running, progress.pending),
        (1, 1, 1)
    );
    finish(2, Outcome::Failed, NOW + 30).await;
    let retried = store
        .claim(claim("g", "w2", 10, NOW + 60_000))
        .await
        .unwrap();
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(retried[0].job.attempt, 2);
    let r = store
        .complete(done(
            &retried[0].job.job_id,
            &retried[0].token,
            Outcome::Success,
            NOW + 60_010,
        ))
        .await
        .unwrap();
    assert!(matches!(r, CompleteOutcome::Accepted { .. }), "{r:?}");
    // The last shard ended: so did the job, FAILED since one shard failed.
    let p = store.get(job.clone()).await.unwrap().unwrap();
    assert_eq!(p.state, JobState::Failed, "{p:?}");
    assert_eq!(p.last_message.as_deref(), Some("1 of 3 shards failed"));
    let progress = p.shard_progress.unwrap();
    assert_eq!((progress.succeeded, progress.failed), (2, 1));

    // A cancelled sharded job cancels its shards, running ones too; their results are refused.
    let mut spec = JobSpec::new("gone", "g");
    spec.shards = Some(2);
    let gone = JobKey::Id(id(&store.submit(vec![spec], NOW).await.unwrap()[0]));
    assert!(
        store
            .claim(claim("g", "w1", 10, NOW + 100))
            .await
            .unwrap()
            .is_empty()
    );
    let running = store.claim(claim("g", "w1", 1, NOW + 100)).await.unwrap();
    assert_eq!(running.len(), 1);
    assert!(matches!(
        store.cancel(gone.clone(), NOW + 200).await.unwrap(),
        CancelOutcome::Cancelled(_)
    ));
    let p = store.get(gone).await.unwrap().unwrap();
    assert_eq!(p.state, JobState::Cancelled);
    assert_eq!(p.shard_progress.unwrap().unfinished(), 0, "{p:?}");
    let late = store
        .complete(done(
            &running[0].job.job_id,
            &running[0].token,
            Outcome::Success,
            NOW + 300,
        ))
        .await
        .unwrap();
    assert!(matches!(late, CompleteOutcome::Stale { .. }), "{late:?}");
    assert!(
        store
            .claim(claim("g", "w1", 10, NOW + 400))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A broadcast job: its claim makes one shard for each TaskTracker listed (the claim's own
/// included), each claimed by its TaskTracker only; a shard whose TaskTracker left is
/// cancelled, and the job ends with the last shard (FAILED: one did not run).
pub async fn broadcast_jobs_run_once_on_each_task_tracker(store: Arc<dyn JobStore>) {
    let mut spec = JobSpec::new("flush", "g");
    spec.broadcast = true;
    let job = JobKey::Id(id(&store.submit(vec![spec], NOW).await.unwrap()[0]));
    let fan = ClaimRequest {
        targets: vec!["w2".into(), "w3".into()],
        ..claim("g", "w1", 10, NOW)
    };
    assert!(store.claim(fan).await.unwrap().is_empty());
    let p = store.get(job.clone()).await.unwrap().unwrap();
    assert_eq!(p.shard_progress.unwrap().pending, 3, "{p:?}");
    // Each TaskTracker gets its own shard, and no other.
    let mut leases = Vec::new();
    for w in ["w1", "w2"] {
        let mut got = store.claim(claim("g", w, 10, NOW + 1)).await.unwrap();
        assert_eq!(got.len(), 1, "{w}: {got:?}");
        assert_eq!(got[0].job.shard.as_ref().unwrap().on.as_deref(), Some(w));
        leases.push(got.remove(0));
    }
    assert!(
        store
            .claim(claim("g", "w9", 10, NOW + 1))
            .await
            .unwrap()
            .is_empty()
    );
    for l in &leases {
        let r = store
            .complete(done(&l.job.job_id, &l.token, Outcome::Success, NOW + 2))
            .await
            .unwrap();
        assert!(matches!(r, CompleteOutcome::Accepted { .. }), "{r:?}");
    }
    // w3 never came: the sweep finds its shard, and cancels it.
    assert_eq!(
        store.broadcast_targets(NOW).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(store.broadcast_targets(NOW + 10).await.unwrap(), ["w3"]);
    assert_eq!(store.target_gone("w3", NOW + 20).await.unwrap(), 1);
    let p = store.get(job).await.unwrap().unwrap();
    assert_eq!(p.state, JobState::Failed, "{p:?}");
    assert_eq!(p.last_message.as_deref(), Some("1 of 3 shards failed"));
    let progress = p.shard_progress.unwrap();
    assert_eq!((progress.succeeded, progress.failed), (2, 1));
    assert!(store.broadcast_targets(NOW + 10).await.unwrap().is_empty());
}

/// Affinity: a claim takes the jobs whose affinity its TaskTracker's labels satisfy (and the
/// jobs without), never another's; a job that no TaskTracker matches waits, and a replace
/// that drops its affinity lets anyone take it.
pub async fn affinity_matches_jobs_to_labelled_task_trackers(store: Arc<dyn JobStore>) {
    let with = |task: &str, labels: &[(&str, &str)]| {
        let mut spec = JobSpec::new(task, "g");
        for (k, v) in labels {
            spec.affinity.insert(k.to_string(), v.to_string());
        }
        spec
    };
    store
        .submit(
            vec![
                with("any", &[]),
                with("a100", &[("gpu", "a100")]),
                with("a100-eu", &[("gpu", "a100"), ("zone", "eu")]),
                with("h100", &[("gpu", "h100")]),
            ],
            NOW,
        )
        .await
        .unwrap();
    let labelled = |owner: &str, labels: &[(&str, &str)]| ClaimRequest {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..claim("g", owner, 10, NOW)
    };
    let tasks = |leases: Vec<lts_tracker::store::Lease>| {
        let mut t: Vec<String> = leases.into_iter().map(|l| l.job.spec.task_id).collect();
        t.sort();
        t
    };
    let w1 = store
        .claim(labelled("w1", &[("gpu", "a100")]))
        .await
        .unwrap();
    assert_eq!(tasks(w1), ["a100", "any"]);
    let w2 = labelled("w2", &[("gpu", "a100"), ("zone", "eu"), ("x", "y")]);
    assert_eq!(tasks(store.claim(w2).await.unwrap()), ["a100-eu"]);
    assert!(store.claim(labelled("w3", &[])).await.unwrap().is_empty());
    // Nobody has gpu=h100: it waits. Replaced without affinity, anyone takes it.
    let mut plain = with("h100", &[]);
    plain.replace_on_exist = true;
    let out = store.submit(vec![plain], NOW + 1).await.unwrap();
    assert!(matches!(out[0], SubmitOutcome::Replaced { .. }), "{out:?}");
    let w3 = store
        .claim(ClaimRequest {
            now_ms: NOW + 2,
            ..labelled("w3", &[])
        })
        .await
        .unwrap();
    assert_eq!(tasks(w3), ["h100"]);
}

/// Route keys: a claim takes the routed jobs of the buckets dealt to its TaskTracker (and the
/// jobs without a key), never another's; when a TaskTracker leaves, its keys go to the others
/// and every other key stays where it was; a replace that drops the key lets anyone take it.
pub async fn route_keys_keep_to_their_task_tracker(store: Arc<dyn JobStore>) {
    use lts_core::route::Assignment;
    let keyed = |task: String, key: Option<String>| JobSpec {
        route_key: key,
        ..JobSpec::new(task, "g")
    };
    let keys: Vec<String> = (0..12).map(|k| format!("customer-{k}")).collect();
    let mut specs: Vec<JobSpec> = keys
        .iter()
        .flat_map(|k| (0..3).map(move |i| (k.clone(), i)))
        .map(|(k, i)| keyed(format!("{k}-{i}"), Some(k)))
        .collect();
    specs.push(keyed("plain-0".into(), None));
    specs.push(keyed("plain-1".into(), None));
    store.submit(specs, NOW).await.unwrap();
    let workers: Vec<String> = ["w1", "w2", "w3"].map(String::from).to_vec();
    let dealt = Assignment::new(&workers);
    let routed = |owner: &str, a: &Assignment, now: i64| ClaimRequest {
        targets: a.targets().to_vec(),
        route_buckets: a.buckets_of(owner),
        ..claim("g", owner, 100, now)
    };
    // A claim that is dealt no bucket takes only the jobs without a key.
    let mut plain: Vec<String> = store
        .claim(claim("g", "w9", 100, NOW))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.job.spec.task_id)
        .collect();
    plain.sort();
    assert_eq!(plain, ["plain-0", "plain-1"]);
    let mut claimed = 0;
    for w in &workers {
        for l in store.claim(routed(w, &dealt, NOW)).await.unwrap() {
            let key = l.job.spec.route_key.clone().unwrap();
            assert_eq!(dealt.owner_of_key(&key), Some(w.as_str()), "{key}");
            claimed += 1;
        }
    }
    assert_eq!(
        claimed, 36,
        "every routed job went to its key's TaskTracker"
    );
    // w2 leaves: its keys move, the others' stay.
    let specs = keys
        .iter()
        .map(|k| keyed(format!("{k}-late"), Some(k.clone())))
        .collect();
    store.submit(specs, NOW + 1).await.unwrap();
    let fewer = Assignment::new(&["w1".to_string(), "w3".to_string()]);
    let mut seen = 0;
    for w in ["w1", "w3"] {
        for l in store.claim(routed(w, &fewer, NOW + 2)).await.unwrap() {
            let key = l.job.spec.route_key.clone().unwrap();
            let was = dealt.owner_of_key(&key).unwrap();
            if was != "w2" {
                assert_eq!(was, w, "{key} moved though its TaskTracker stayed");
            }
            seen += 1;
        }
    }
    assert_eq!(seen, keys.len());
    // Replaced without its key, a job waiting for a TaskTracker that is gone runs anywhere.
    let key = keys
        .iter()
        .find(|k| dealt.owner_of_key(k) == Some("w1"))
        .expect("some key is w1's")
        .clone();
    store
        .submit(vec![keyed("moved".into(), Some(key))], NOW + 3)
        .await
        .unwrap();
    assert!(
        store
            .claim(routed("w3", &fewer, NOW + 4))
            .await
            .unwrap()
            .is_empty(),
        "w1's key is not w3's"
    );
    let mut plain = keyed("moved".into(), None);
    plain.replace_on_exist = true;
    let out = store.submit(vec![plain], NOW + 5).await.unwrap();
    assert!(matches!(out[0], SubmitOutcome::Replaced { .. }), "{out:?}");
    let got = store.claim(routed("w3", &fewer, NOW + 6)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.spec.task_id, "moved");
}
