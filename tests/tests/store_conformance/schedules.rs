//! Recurring jobs: fires, their instances, cancels that reach them.

use super::*;

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
        (
            format!("{a}~{}", NOW + 100).as_str(),
            Some(a_id.as_str()),
            JobState::Queued
        )
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
    let got = store
        .get(JobKey::Id(i.job_id.clone()))
        .await
        .unwrap()
        .unwrap();
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
    assert!(
        matches!(t, TriggerOutcome::NotRecurring(ref j) if j.spec.task_id == "once"),
        "{t:?}"
    );
    let t = store.trigger(JobKey::Id("nope".into()), NOW).await.unwrap();
    assert_eq!(t, TriggerOutcome::NotFound);
}

/// A claim ahead of the trigger time (for a TaskTracker that holds the job until then) takes
/// what is due by its horizon and nothing later: a delayed job leased from its start, and the
/// instance of a fire that is due soon, on time.
pub async fn claims_ahead_of_the_trigger_time(store: Arc<dyn JobStore>) {
    let later = JobSpec::new("later", "g").schedule(Schedule::TriggerAt {
        trigger_time_ms: NOW + 150,
    });
    let far = JobSpec::new("far", "g").schedule(Schedule::TriggerAt {
        trigger_time_ms: NOW + 5_000,
    });
    let tick = JobSpec::new("tick", "g").schedule(Schedule::Repeat {
        interval_ms: 1000,
        count: 2,
        first_fire_ms: Some(NOW + 100),
    });
    store.submit(vec![later, far, tick], NOW).await.unwrap();
    // Nothing is due now.
    assert!(
        store
            .claim(claim("g", "w1", 10, NOW))
            .await
            .unwrap()
            .is_empty()
    );
    let ahead = ClaimRequest {
        ahead_ms: 200,
        ..claim("g", "w1", 10, NOW)
    };
    let got = store.claim(ahead).await.unwrap();
    let mut names: Vec<&str> = got.iter().map(|l| l.job.spec.task_id.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["later", format!("tick~{}", NOW + 100).as_str()]);
    for l in &got {
        assert_eq!(l.job.state, JobState::Running);
        // The lease counts from the job's start.
        let starts = l.job.trigger_time_ms;
        assert_eq!(l.job.lease_expiry_ms, Some(starts + 10_000), "{:?}", l.job);
        // And the lease handed out is that lease, so the stream holding it knows its version.
        assert_eq!(l.expiry_ms, starts + 10_000, "{:?}", l.job);
    }
    let tick = got
        .iter()
        .find(|l| l.job.spec.task_id.starts_with("tick"))
        .unwrap();
    assert_eq!(tick.job.scheduled_fire_ms, Some(NOW + 100));
    // The schedule moved on; the far job waits.
    assert_eq!(store.next_due("g").await.unwrap(), Some(NOW + 1_100));
    let ahead = ClaimRequest {
        ahead_ms: 200,
        ..claim("g", "w2", 10, NOW + 50)
    };
    assert!(store.claim(ahead).await.unwrap().is_empty());
    // A stream that ends while it holds a job claimed ahead gives it back like any other.
    let later = got.iter().find(|l| l.job.spec.task_id == "later").unwrap();
    let held = HeldLease {
        job_id: later.job.job_id.clone(),
        token: later.token.clone(),
        expiry_ms: later.expiry_ms,
    };
    let requeued = store.requeue_held(vec![held], NOW + 300).await.unwrap();
    assert_eq!(requeued.len(), 1, "{requeued:?}");
    let back = store
        .get(JobKey::Id(later.job.job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.state, JobState::Queued, "{back:?}");
}

/// A fire while an earlier run of its job is unfinished follows the job's concurrency policy:
/// `Forbid` skips it (the schedule moves on), `Replace` cancels the earlier run (whose result
/// is then refused) and runs; once the earlier run ended, the next fire runs.
pub async fn concurrency_policies(store: Arc<dyn JobStore>) {
    use lts_core::ConcurrencyPolicy::{Forbid, Replace};
    let every = |task: &str, policy| {
        JobSpec::new(task, "g")
            .schedule(Schedule::Repeat {
                interval_ms: 1000,
                count: -1,
                first_fire_ms: Some(NOW),
            })
            .concurrency_policy(policy)
    };
    let out = store
        .submit(vec![every("f", Forbid), every("r", Replace)], NOW)
        .await
        .unwrap();
    let forbid = JobKey::Id(id(&out[0]));
    let first = store.claim(claim("g", "w1", 10, NOW)).await.unwrap();
    let run_of = |leases: &[lts_tracker::store::Lease], task: &str| {
        leases
            .iter()
            .find(|l| l.job.spec.task_id.starts_with(&format!("{task}~")))
            .cloned()
    };
    let (f1, r1) = (run_of(&first, "f").unwrap(), run_of(&first, "r").unwrap());
    // The next fires come while both first runs still run.
    let second = store
        .claim(claim("g", "w1", 10, NOW + 1_000))
        .await
        .unwrap();
    assert!(run_of(&second, "f").is_none(), "forbidden: {second:?}");
    let r2 = run_of(&second, "r").expect("a replacing run");
    assert_eq!(r2.job.spec.task_id, format!("r~{}", NOW + 1_000));
    let f = store.get(forbid.clone()).await.unwrap().unwrap();
    assert_eq!(
        (f.state, f.trigger_time_ms),
        (JobState::Queued, NOW + 2_000)
    );
    // The replaced run is cancelled; its result is refused.
    let replaced = store
        .get(JobKey::Id(r1.job.job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.state, JobState::Cancelled);
    let late = store
        .complete(done(
            &r1.job.job_id,
            &r1.token,
            Outcome::Success,
            NOW + 1_100,
        ))
        .await
        .unwrap();
    assert!(matches!(late, CompleteOutcome::Stale { .. }), "{late:?}");
    // The forbidding job's run ends: its next fire runs.
    let ended = store
        .complete(done(
            &f1.job.job_id,
            &f1.token,
            Outcome::Success,
            NOW + 1_500,
        ))
        .await
        .unwrap();
    assert!(
        matches!(ended, CompleteOutcome::Accepted { .. }),
        "{ended:?}"
    );
    let third = store
        .claim(claim("g", "w1", 10, NOW + 2_000))
        .await
        .unwrap();
    assert!(run_of(&third, "f").is_some(), "{third:?}");
    // ... and the second replacing run is replaced in turn.
    assert!(run_of(&third, "r").is_some(), "{third:?}");
    let replaced = store
        .get(JobKey::Id(r2.job.job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.state, JobState::Cancelled);
}

/// With `max_concurrent: 2`, fires run alongside each other until two runs are unfinished;
/// the next fire is skipped (the schedule moves on, the log says why) until one of them ends.
pub async fn max_concurrent_caps_overlapping_runs(store: Arc<dyn JobStore>) {
    let spec = JobSpec::new("m", "g")
        .schedule(Schedule::Repeat {
            interval_ms: 1000,
            count: -1,
            first_fire_ms: Some(NOW),
        })
        .max_concurrent(2);
    let def = JobKey::Id(id(&store.submit(vec![spec], NOW).await.unwrap()[0]));
    let mut runs = Vec::new();
    for fire in 0..2 {
        let at = NOW + fire * 1_000;
        let mut got = store.claim(claim("g", "w1", 10, at)).await.unwrap();
        assert_eq!(got.len(), 1, "fire {fire}: {got:?}");
        runs.push(got.remove(0));
    }
    // Two runs unfinished: the third fire is skipped, and the schedule goes on.
    let third = store
        .claim(claim("g", "w1", 10, NOW + 2_000))
        .await
        .unwrap();
    assert!(third.is_empty(), "{third:?}");
    let d = store.get(def.clone()).await.unwrap().unwrap();
    assert_eq!(
        (d.state, d.trigger_time_ms),
        (JobState::Queued, NOW + 3_000)
    );
    let log = store.log(&d.job_id, 50).await.unwrap();
    assert!(
        log.iter().any(|l| l
            .message
            .contains("2 earlier runs are unfinished, as many as max_concurrent (2) allows")),
        "{log:?}"
    );
    // One run ends: the next fire runs again.
    let ended = store
        .complete(done(
            &runs[0].job.job_id,
            &runs[0].token,
            Outcome::Success,
            NOW + 2_500,
        ))
        .await
        .unwrap();
    assert!(
        matches!(ended, CompleteOutcome::Accepted { .. }),
        "{ended:?}"
    );
    let fourth = store
        .claim(claim("g", "w1", 10, NOW + 3_000))
        .await
        .unwrap();
    assert_eq!(fourth.len(), 1, "{fourth:?}");
    assert_eq!(fourth[0].job.spec.task_id, format!("m~{}", NOW + 3_000));
}
