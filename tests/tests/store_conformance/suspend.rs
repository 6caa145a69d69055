//! Suspending and resuming, queued and running.

use super::*;

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
    // Resumed: queued again as usual, once the backoff of its lost run (1 s) is over.
    store.resume(key.clone(), at_ms + 11_002).await.unwrap();
    let l = store
        .claim(claim("g", "w2", 1, at_ms + 11_003))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(l.job.attempt, 3);
    store.suspend(key.clone(), at_ms + 11_004).await.unwrap();
    let r = store.resume(key.clone(), at_ms + 11_005).await.unwrap();
    assert!(
        matches!(r, ChangeOutcome::Changed(ref j) if j.state == JobState::Running),
        "{r:?}"
    );
    // Suspended once more, then handed back: suspended, the attempt not counted.
    store.suspend(key.clone(), at_ms + 11_006).await.unwrap();
    let back = LeaseRef {
        job_id: job_id.clone(),
        token: l.token.clone(),
    };
    assert_eq!(
        store
            .release(vec![back], at_ms + 11_007)
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
