use std::collections::HashMap;

use proptest::prelude::*;

use super::rules::retry_jitter_ms;
use super::*;
use crate::model::{MisfirePolicy, Schedule};
use JobState::{Cancelled, Failed, Queued, Running, Skipped, Succeeded, Suspended, Waiting};

const NOW: i64 = 1_800_000_000_000;
const LATER: i64 = NOW + 100;

fn exact() -> RetryPolicy {
    RetryPolicy {
        jitter: false,
        ..Default::default()
    }
}

/// A repeat job `tick` firing every second from `NOW` (`count` times), retried once, with
/// feedback.
fn repeat(rely_on_prev_cycle: bool, count: i64) -> JobSpec {
    let first_fire_ms = Some(NOW);
    let schedule = Schedule::Repeat {
        interval_ms: 1000,
        count,
        first_fire_ms,
    };
    let mut spec = JobSpec::new("tick", "g").schedule(schedule).max_retries(1);
    spec.rely_on_prev_cycle = rely_on_prev_cycle;
    spec.feedback_to("clients")
}

fn claim(token: &str) -> Event {
    let (owner, token, instance_id) = ("w1".into(), token.into(), "i1".into());
    Event::Claim(Claim {
        owner,
        token,
        expiry_ms: NOW + 50,
        instance_id,
        due_by_ms: NOW,
        unfinished_instances: 0,
        targets: Vec::new(),
    })
}

fn report(token: &str, outcome: Outcome) -> RunReport {
    let (token, message, node) = (token.into(), String::new(), "w1".into());
    RunReport {
        token,
        outcome,
        message,
        logs: Vec::new(),
        node,
        mapped: 0,
    }
}

fn done(token: &str, outcome: Outcome) -> Event {
    Event::Complete(report(token, outcome))
}

fn run(job: &StoredJob, event: Event, now: i64) -> Transition {
    apply(job, event, now, &exact()).unwrap_or_else(|r| panic!("refused: {r}"))
}

fn types(logs: &[LogEntry]) -> Vec<LogType> {
    logs.iter().map(|l| l.log_type).collect()
}

/// The table's job `j1` in `state`: a sequential repeat job, as a store would hold it; a
/// running one under lease `tok` of `w1`, expired at `LATER`.
fn job_in(state: JobState) -> StoredJob {
    let mut s = accept(repeat(true, -1), "j1".into(), NOW).job;
    s.job.state = state;
    match state {
        Queued => {}
        Running => {
            s.job.attempt = 1;
            s.job.lease_owner = Some("w1".into());
            s.job.lease_expiry_ms = Some(NOW + 50);
            s.lease_token = Some("tok".into());
        }
        Suspended => s.suspend_requested = true,
        Waiting => {}
        Succeeded | Failed | Cancelled | Skipped => s.job.finished_at_ms = Some(NOW),
    }
    s
}

/// The module's invariants on one stored job.
fn consistent(s: &StoredJob) -> Result<(), String> {
    let (j, unfinished) = (&s.job, !s.job.state.is_final());
    let leased = [
        j.lease_owner.is_some(),
        s.lease_token.is_some(),
        j.lease_expiry_ms.is_some(),
    ];
    let ran_out = j.last_message.as_deref() == Some("schedule complete");
    let broken = if leased != [j.state == Running && !j.waits_for_shards(); 3] {
        "a lease that does not match its state"
    } else if (j.state == Suspended)
        != (s.suspend_requested && unfinished && !matches!(j.state, Running | Waiting))
    {
        "a suspend request that does not match its state"
    } else if unfinished == j.finished_at_ms.is_some() {
        "a finish time that does not match its state"
    } else if matches!(j.state, Succeeded | Failed) && j.last_outcome.is_none() && !ran_out {
        "finished without an outcome"
    } else if j.deadline_ms.is_some() != (j.state == Running && j.spec.timeout_ms.is_some()) {
        "a deadline that does not match its state"
    } else if let (Some(d), Some(e)) = (j.deadline_ms, j.lease_expiry_ms)
        && e > d + DEADLINE_GRACE_MS
    {
        "a lease past its deadline's grace"
    } else {
        return Ok(());
    };
    Err(format!("{} ({}): {broken}", j.job_id, j.state))
}

/// One event of each kind, as the table applies them to `job_in(state)` at `LATER`.
fn events() -> Vec<Event> {
    let tok = || "tok".to_string();
    let submit = |replace| {
        let spec = repeat(true, -1).replace_on_exist(replace);
        Event::Submit {
            spec: Box::new(spec),
            new_job_id: "j2".into(),
        }
    };
    let (token, expiry_ms) = (tok(), NOW + 50);
    vec![
        submit(false),
        submit(true),
        claim("new"),
        Event::Renew {
            token: tok(),
            expiry_ms: NOW + 9000,
        },
        done("tok", Outcome::Exception),
        Event::Release(tok()),
        Event::LeaseLost(LeaseLoss::Expired),
        Event::LeaseLost(LeaseLoss::OwnerGone("w1".into())),
        Event::LeaseLost(LeaseLoss::StreamEnded { token, expiry_ms }),
        Event::Suspend,
        Event::Resume,
        Event::Trigger("i1".into()),
        Event::Cancel(CancelCause::User),
        Event::Cancel(CancelCause::WithSchedule("d".into())),
        Event::Cancel(CancelCause::WithParent("p".into())),
        Event::ShardsEnded(ShardProgress {
            succeeded: 2,
            ..ShardProgress::default()
        }),
        Event::PredecessorsEnded(Verdict::Run {
            outputs: Default::default(),
        }),
        Event::PredecessorsEnded(Verdict::Skip("skipped".into())),
        Event::Map(MapBatch {
            token: tok(),
            first_index: 0,
            items: vec!["a".into()],
        }),
        Event::ReduceEnded {
            outcome: Outcome::Success,
            message: String::new(),
        },
    ]
}

/// The table, every state × every event: the state a legal event leaves and the log lines
/// it writes, or the refusal of an illegal one. The match is exhaustive over both.
fn expect(state: JobState, event: &Event) -> Result<(JobState, &'static [LogType]), Refusal> {
    use Event as E;
    use LogType as L;
    match (state, event) {
        (Succeeded | Failed | Cancelled | Skipped, E::Submit { .. }) => Ok((Queued, &[L::Receive])),
        (Succeeded | Failed | Cancelled | Skipped, _) => Err(Refusal::Finished("j1".into(), state)),
        (_, E::ShardsEnded(_)) => Err(Refusal::NoShardsRunning),
        (Waiting, E::PredecessorsEnded(Verdict::Run { .. })) => Ok((Queued, &[L::Update])),
        (Waiting, E::PredecessorsEnded(Verdict::Skip(_))) => Ok((Skipped, &[L::Del])),
        (_, E::PredecessorsEnded(_)) => Err(Refusal::NotWaiting(state)),
        (Running, E::Map(_)) => Err(Refusal::NotMapReduce),
        (_, E::Map(_)) => Err(Refusal::NotRunning(state)),
        (_, E::ReduceEnded { .. }) => Err(Refusal::NotReducing),
        (_, E::Submit { spec, .. }) if spec.replace_on_exist => Ok((state, &[L::Update])),
        (_, E::Submit { .. }) => Err(Refusal::Duplicate("j1".into())),
        (Queued, E::Claim(_)) => Ok((Running, &[L::Sent])),
        (_, E::Claim(_)) => Err(Refusal::NotQueued(state)),
        (Running, E::Renew { .. }) => Ok((Running, &[])),
        (Running, E::Complete(_)) => Ok((Queued, &[L::Finished, L::Resend])),
        (Running, E::Release(_)) => Ok((Queued, &[L::Resend])),
        (Running, E::LeaseLost(_)) => Ok((Queued, &[L::FixedDead])),
        (_, E::Renew { .. } | E::Complete(_) | E::Release(_) | E::LeaseLost(_)) => {
            Err(Refusal::NotRunning(state))
        }
        (Queued, E::Suspend) => Ok((Suspended, &[L::Suspend])),
        (Running, E::Suspend) => Ok((Running, &[L::Suspend])),
        (Waiting, E::Suspend) => Ok((Waiting, &[L::Suspend])),
        (_, E::Suspend) => Err(Refusal::AlreadySuspended),
        (Suspended, E::Resume) => Ok((Queued, &[L::Resume])),
        (_, E::Resume) => Err(Refusal::NotSuspended),
        (_, E::Trigger(_)) => Ok((state, &[])),
        (Running, E::Cancel(CancelCause::WithSchedule(_))) => Err(Refusal::InstanceRunning),
        (_, E::Cancel(_)) => Ok((Cancelled, &[L::Del])),
    }
}

#[test]
fn every_state_and_every_event() {
    for state in JobState::ALL {
        for event in events() {
            let (before, case) = (job_in(state), format!("{state} × {event:?}"));
            let got = apply(&before, event.clone(), LATER, &exact());
            let want = expect(state, &event);
            let (t, (to, logs)) = match (got, want) {
                (Ok(t), Ok(want)) => (t, want),
                (Err(got), Err(want)) if got == want => continue,
                (got, want) => panic!("{case}: expected {want:?}, got {got:?}"),
            };
            let j = &t.job.job;
            assert_eq!(j.state, to, "{case}");
            assert_eq!(types(&t.logs), logs, "{case}");
            consistent(&t.job).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!(t.logs.iter().all(|l| l.job_id == j.job_id), "{case}");
            match &t.write {
                Write::Insert => assert_eq!(j.job_id, "j2", "{case}"),
                Write::Keep => assert_eq!(t.job, before, "{case}"),
                Write::Update { from, fields } | Write::Finish { from, fields } => {
                    assert_eq!((*from, j.job_id.as_str()), (state, "j1"), "{case}");
                    assert_eq!(fields, &Field::changed(&before, &t.job), "{case}");
                    let finish = matches!(t.write, Write::Finish { .. });
                    assert_eq!(finish, to.is_final(), "{case}");
                }
            }
            let triggered = matches!(event, Event::Trigger(_));
            assert_eq!(t.follow_up.is_some(), triggered, "{case}");
            let claimed = matches!(event, Event::Claim(_));
            assert_eq!(t.handout == Handout::Job, claimed, "{case}");
        }
    }
}

#[test]
fn a_one_off_job_runs_retries_and_reports() {
    use Field as F;
    let spec = JobSpec::new("once", "g").max_retries(1).feedback_to("c");
    let queued = accept(spec, "a".into(), NOW).job;
    assert_eq!(queued.job.scheduled_fire_ms, None);
    let t = run(&queued, claim("t1"), NOW + 1);
    let fields = vec![F::State, F::Attempt, F::Lease, F::UpdatedAt];
    assert_eq!(
        t.write,
        Write::Update {
            from: Queued,
            fields
        }
    );
    let running = t.job;
    let renew = Event::Renew {
        token: "t1".into(),
        expiry_ms: NOW + 999,
    };
    let fields = vec![F::LeaseExpiry];
    assert_eq!(
        run(&running, renew, NOW).write,
        Write::Update {
            from: Running,
            fields
        }
    );
    let stale = apply(&running, done("t0", Outcome::Later), NOW, &exact());
    assert_eq!(stale, Err(Refusal::StaleLease));
    // A retry: between one and two delays (jitter), the same for the same job and attempt.
    let policy = RetryPolicy::default();
    let later = || apply(&running, done("t1", Outcome::Later), NOW, &policy).unwrap();
    let t = later();
    assert_eq!(t, later());
    let Some(Disposition::Retry { at_ms }) = t.disposition else {
        panic!("{t:?}")
    };
    assert!((NOW + 1000..NOW + 2000).contains(&at_ms), "{at_ms}");
    assert_eq!(t.job.job.trigger_time_ms, at_ms);
    assert_eq!(
        t.logs[1].message,
        format!("retry 1 of 1 at {}", format_ms(at_ms))
    );
    assert_eq!(t.feedback, None);
    let jitters = ["a", "b", "c"].map(|id| retry_jitter_ms(1000, id, 1));
    assert!(jitters.iter().all(|j| (0..1000).contains(j)), "{jitters:?}");
    assert!(jitters.windows(2).any(|w| w[0] != w[1]), "{jitters:?}");
    // The last attempt fails for good; its business log and result are recorded.
    let again = run(&t.job, claim("t2"), at_ms).job;
    assert_eq!(again.job.attempt, 2);
    let mut last = report("t2", Outcome::Exception);
    last.message = "boom".into();
    let (level, message) = (LogLevel::Warn, "hm".to_string());
    last.logs.push(BizLine {
        time_ms: at_ms + 5,
        level,
        message,
    });
    let t = run(&again, Event::Complete(last), at_ms + 10);
    let fields = vec![
        F::State,
        F::Lease,
        F::LastResult,
        F::FinishedAt,
        F::UpdatedAt,
    ];
    assert_eq!(
        t.write,
        Write::Finish {
            from: Running,
            fields
        }
    );
    assert_eq!(t.disposition, Some(Disposition::Finish(Failed)));
    let lines: Vec<_> = t
        .logs
        .iter()
        .map(|l| (l.message.as_str(), l.attempt))
        .collect();
    assert_eq!(lines, [("hm", 2), ("EXCEPTION: boom", 2)]);
    assert_eq!(
        (t.logs[0].node.as_str(), t.logs[1].level),
        ("w1", LogLevel::Warn)
    );
    let fb = t.feedback.expect("feedback");
    assert_eq!(fb.job, t.job.job, "a finished job is reported as stored");
    assert_eq!(
        (fb.outcome, fb.finished_at_ms),
        (Outcome::Exception, at_ms + 10)
    );
}

#[test]
fn a_job_suspended_while_running_waits_after_its_attempt() {
    let job = run(&job_in(Queued), claim("t1"), LATER).job;
    let flagged = run(&job, Event::Suspend, LATER).job;
    assert!(flagged.job.state == Running && flagged.suspend_requested);
    // Whatever would queue it again suspends it instead.
    let t = run(&flagged, done("t1", Outcome::Success), LATER);
    assert_eq!(t.job.job.state, Suspended);
    assert_eq!(t.next_fire, NextFire::At(NOW + 1000));
    let fb = t.feedback.expect("feedback of each run").job;
    assert_eq!(
        (fb.state, fb.lease_owner, fb.fire_count),
        (Succeeded, None, 1)
    );
    let release = Event::Release("t1".into());
    assert_eq!(run(&flagged, release, LATER).job.job.state, Suspended);
    let expired = Event::LeaseLost(LeaseLoss::Expired);
    assert_eq!(run(&flagged, expired, NOW + 51).job.job.state, Suspended);
    // Resumed long after its fire: one catch-up run now.
    let resumed = run(&t.job, Event::Resume, NOW + 60_500);
    assert_eq!(resumed.next_fire, NextFire::At(NOW + 60_500));
    // Resumed before the attempt ended: it just goes on.
    let t = run(&flagged, Event::Resume, LATER).job;
    assert!(t.job.state == Running && !t.suspend_requested);
}

#[test]
fn overlapping_fires_run_as_leased_instances() {
    let def = accept(repeat(false, 2), "d".into(), NOW).job;
    let t = run(&def, claim("t1"), NOW + 10);
    assert_eq!(
        (t.handout, t.next_fire),
        (Handout::FollowUp, NextFire::At(NOW + 1000))
    );
    assert!(
        t.logs.is_empty(),
        "a plain fire is told in the instance's log"
    );
    let d = &t.job.job;
    assert_eq!((d.state, d.fire_count, d.attempt), (Queued, 2, 0));
    let f = t.follow_up.as_ref().expect("instance");
    let i = &f.job.job;
    assert_eq!(i.spec.task_id, format!("tick~{NOW}"));
    assert_eq!(
        i.instance_of.as_deref(),
        Some("d"),
        "carries its definition"
    );
    assert_eq!(
        (i.state, i.attempt, i.scheduled_fire_ms),
        (Running, 1, Some(NOW))
    );
    assert_eq!(f.job.lease_token.as_deref(), Some("t1"));
    assert_eq!(types(&f.logs), [LogType::Receive, LogType::Sent]);
    assert_eq!(f.logs[0].message, format!("fire {} of d", format_ms(NOW)));
    // The last fire finishes the definition.
    let t = run(&t.job, claim("t2"), NOW + 1000);
    assert!(matches!(t.write, Write::Finish { .. }));
    assert_eq!(t.next_fire, NextFire::Exhausted);
    assert_eq!(t.job.job.last_message.as_deref(), Some("schedule complete"));
    assert!(t.logs[0].message.ends_with("the last of its schedule"));
    // A fire claimed long after with misfire policy skip: no instance.
    let mut skip = def;
    skip.job.spec.misfire_policy = MisfirePolicy::Skip;
    let t = run(&skip, claim("t3"), NOW + 60_500);
    assert_eq!((t.handout, t.follow_up), (Handout::Nothing, None));
    assert_eq!(t.job.job.trigger_time_ms, NOW + 61_000);
    assert!(t.logs[0].message.starts_with("skipped the missed fire"));
}

#[test]
fn a_claim_ahead_of_the_trigger_time_leases_from_the_start() {
    let ahead = |due_by_ms: i64| {
        Event::Claim(Claim {
            owner: "w1".into(),
            token: "t1".into(),
            expiry_ms: NOW + 50,
            instance_id: "i1".into(),
            due_by_ms,
            unfinished_instances: 0,
            targets: Vec::new(),
        })
    };
    // A job due 200 ms after the claim, with a 1 s timeout.
    let spec = JobSpec::new("later", "g")
        .timeout(std::time::Duration::from_secs(1))
        .schedule(Schedule::TriggerAt {
            trigger_time_ms: NOW + 200,
        });
    let queued = accept(spec, "l".into(), NOW).job;
    // Not due by the claim's horizon: refused, nothing written.
    assert_eq!(
        apply(&queued, ahead(NOW + 199), NOW, &exact()).map(|t| t.write),
        Err(Refusal::NotDue(NOW + 200))
    );
    // A horizon in the past is the same as now.
    assert!(apply(&queued, ahead(NOW - 5_000), NOW, &exact()).is_err());
    // Due by the horizon: leased now, its lease and deadline counted from its start.
    let j = run(&queued, ahead(NOW + 200), NOW).job.job;
    assert_eq!(j.state, Running);
    assert_eq!(j.deadline_ms, Some(NOW + 200 + 1_000));
    assert_eq!(j.lease_expiry_ms, Some(NOW + 50 + 200));
    // The instance of a fire claimed ahead is the fire's, on time, leased from the fire.
    let def = accept(repeat(false, 2), "d".into(), NOW).job;
    let mut early = def.clone();
    early.job.trigger_time_ms = NOW + 1_000;
    early.job.scheduled_fire_ms = Some(NOW + 1_000);
    let t = run(&early, ahead(NOW + 1_000), NOW + 700);
    let i = &t.follow_up.as_ref().expect("instance").job.job;
    assert_eq!(i.spec.task_id, format!("tick~{}", NOW + 1_000));
    assert_eq!(i.lease_expiry_ms, Some(NOW + 50 + 300));
    assert_eq!(t.job.job.trigger_time_ms, NOW + 2_000);
}

#[test]
fn a_fire_while_an_earlier_run_is_unfinished_follows_the_concurrency_policy() {
    let fire = |unfinished: bool| {
        Event::Claim(Claim {
            owner: "w1".into(),
            token: "t2".into(),
            expiry_ms: NOW + 50,
            instance_id: "i2".into(),
            due_by_ms: NOW + 1_000,
            unfinished_instances: u32::from(unfinished),
            targets: Vec::new(),
        })
    };
    let def = |policy| {
        let mut d = accept(repeat(false, 3).concurrency_policy(policy), "d".into(), NOW).job;
        d.job.trigger_time_ms = NOW + 1_000;
        d.job.scheduled_fire_ms = Some(NOW + 1_000);
        d
    };
    // Allow, or no earlier run: the fire runs, nothing else happens.
    for (policy, unfinished) in [
        (ConcurrencyPolicy::Allow, true),
        (ConcurrencyPolicy::Forbid, false),
        (ConcurrencyPolicy::Replace, false),
    ] {
        let t = run(&def(policy), fire(unfinished), NOW + 1_000);
        assert_eq!(
            (t.handout, t.cascade),
            (Handout::FollowUp, None),
            "{policy:?}"
        );
    }
    // Forbid: no instance; the schedule moves on and the log says why.
    let t = run(&def(ConcurrencyPolicy::Forbid), fire(true), NOW + 1_000);
    assert_eq!((t.handout, t.follow_up.is_none()), (Handout::Nothing, true));
    assert_eq!(t.job.job.trigger_time_ms, NOW + 2_000);
    assert_eq!(t.next_fire, NextFire::At(NOW + 2_000));
    assert!(
        t.logs[0].message.starts_with(&format!(
            "skipped fire {}: an earlier run is unfinished (concurrency policy forbid)",
            format_ms(NOW + 1_000)
        )),
        "{:?}",
        t.logs
    );
    // Replace: the fire runs and cancels the earlier runs but its own.
    let t = run(&def(ConcurrencyPolicy::Replace), fire(true), NOW + 1_000);
    assert_eq!(t.handout, Handout::FollowUp);
    assert_eq!(
        t.cascade,
        Some(Cascade::ReplaceInstances {
            definition: "d".into(),
            keep: "i2".into(),
            fire_ms: NOW + 1_000,
        })
    );
    // A running instance is cancelled by a replace, unlike by a cancel of its schedule.
    let running = run(
        &accept(JobSpec::new("x", "g"), "x".into(), NOW).job,
        claim("t1"),
        NOW,
    )
    .job;
    let by_schedule = CancelCause::WithSchedule("d".into());
    assert_eq!(
        apply(&running, Event::Cancel(by_schedule), NOW, &exact()).map(|t| t.write),
        Err(Refusal::InstanceRunning)
    );
    let t = run(
        &running,
        Event::Cancel(CancelCause::Replaced(NOW + 1_000)),
        NOW,
    );
    assert_eq!(t.job.job.state, Cancelled);
    assert_eq!(t.job.lease_token, None);
    assert!(t.logs[0].message.contains("concurrency policy replace"));
}

#[test]
fn a_fire_while_max_concurrent_runs_are_unfinished_is_skipped() {
    let fire = |unfinished_instances| {
        Event::Claim(Claim {
            owner: "w1".into(),
            token: "t3".into(),
            expiry_ms: NOW + 50,
            instance_id: "i3".into(),
            due_by_ms: NOW + 1_000,
            unfinished_instances,
            targets: Vec::new(),
        })
    };
    let mut def = accept(repeat(false, 3).max_concurrent(2), "d".into(), NOW).job;
    def.job.trigger_time_ms = NOW + 1_000;
    def.job.scheduled_fire_ms = Some(NOW + 1_000);
    assert_eq!(Claim::instances_to_count(&def.job.spec), 2);
    for running in [0, 1] {
        let t = run(&def, fire(running), NOW + 1_000);
        assert_eq!((t.handout, t.cascade), (Handout::FollowUp, None));
    }
    let t = run(&def, fire(2), NOW + 1_000);
    assert_eq!((t.handout, t.follow_up.is_none()), (Handout::Nothing, true));
    assert_eq!(t.next_fire, NextFire::At(NOW + 2_000));
    assert_eq!(
        t.logs[0].message,
        format!(
            "skipped fire {}: 2 earlier runs are unfinished, as many as max_concurrent (2) \
             allows; next fire {}",
            format_ms(NOW + 1_000),
            format_ms(NOW + 2_000)
        )
    );
    // Nothing to count for a job without a cap, or whose runs never overlap.
    assert_eq!(Claim::instances_to_count(&repeat(false, 3)), 0);
    assert_eq!(Claim::instances_to_count(&repeat(true, 3)), 0);
}

#[test]
fn only_the_first_attempt_of_a_sequential_fire_can_be_late() {
    let late = NOW + 60_500;
    let job = job_in(Queued);
    let t = run(&job, claim("t1"), late);
    assert_eq!(
        t.job.job.scheduled_fire_ms,
        Some(late),
        "one catch-up run now"
    );
    assert_eq!(types(&t.logs), [LogType::Update, LogType::Sent]);
    // Handed back, the attempt did not count: the next claim is the first again.
    let back = run(&t.job, Event::Release("t1".into()), late).job;
    assert_eq!(back.job.attempt, 0);
    let t = run(&back, claim("t2"), late + 5_000).job;
    assert_eq!(t.job.scheduled_fire_ms, Some(late + 5_000));
    // A retry keeps its fire, however late.
    let mut retry = job.clone();
    retry.job.attempt = 1;
    let t = run(&retry, claim("t3"), late).job;
    assert_eq!((t.job.attempt, t.job.scheduled_fire_ms), (2, Some(NOW)));
    // With misfire policy skip the late fire does not run: on to the next one.
    let mut skip = job;
    skip.job.spec.misfire_policy = MisfirePolicy::Skip;
    let t = run(&skip, claim("t4"), late);
    assert_eq!(t.handout, Handout::Nothing);
    let j = &t.job.job;
    assert_eq!((j.state, j.attempt, j.fire_count), (Queued, 0, 2));
    assert_eq!(j.trigger_time_ms, NOW + 61_000);
}

#[test]
fn cancels_replaces_triggers_and_lost_leases() {
    // Cancelling a schedule cancels its queued instances; a running job loses its lease.
    let t = run(&job_in(Running), Event::Cancel(CancelCause::User), LATER);
    let Some(Cascade::CancelQueuedInstances { definition }) = t.cascade else {
        panic!("{t:?}")
    };
    assert_eq!(definition, "j1");
    assert!(matches!(&t.write, Write::Finish { fields, .. } if fields.contains(&Field::Lease)));
    let with = Event::Cancel(CancelCause::WithSchedule("j0".into()));
    let t = run(&job_in(Queued), with, LATER);
    assert_eq!(t.logs[0].message, "cancelled with its schedule j0");
    let one_off = accept(JobSpec::new("o", "g"), "o".into(), NOW).job;
    assert_eq!(
        run(&one_off, Event::Cancel(CancelCause::User), NOW).cascade,
        None
    );
    let trigger = apply(&one_off, Event::Trigger("i".into()), NOW, &exact());
    assert_eq!(trigger, Err(Refusal::NotRecurring("o".into())));
    // A trigger queues an instance now; the schedule does not move.
    let t = run(&job_in(Queued), Event::Trigger("i".into()), LATER);
    let i = t.follow_up.expect("instance").job.job;
    assert_eq!(
        (i.spec.task_id, i.trigger_time_ms, i.instance_of.as_deref()),
        (format!("tick~{LATER}"), LATER, Some("j1"))
    );
    // A replace: a queued job takes the new trigger time (a one-off, no scheduled fire).
    let submit = |ms| {
        let schedule = Schedule::TriggerAt {
            trigger_time_ms: ms,
        };
        let spec = JobSpec::new("o", "g")
            .schedule(schedule)
            .replace_on_exist(true);
        Event::Submit {
            spec: Box::new(spec),
            new_job_id: "x".into(),
        }
    };
    let queued = accept(JobSpec::new("o", "g"), "o".into(), NOW).job;
    let t = run(&queued, submit(NOW + 9_000), NOW).job.job;
    assert_eq!(
        (t.trigger_time_ms, t.scheduled_fire_ms),
        (NOW + 9_000, None)
    );
    let running = run(&queued, claim("t"), NOW).job;
    let t = run(&running, submit(NOW + 9_000), NOW);
    assert_eq!(t.job.job.trigger_time_ms, NOW);
    assert!(
        t.logs[0]
            .message
            .ends_with("applies after the running attempt")
    );
    let spec = repeat(true, -1).replace_on_exist(true);
    let t = run(
        &job_in(Suspended),
        Event::Submit {
            spec: Box::new(spec),
            new_job_id: "x".into(),
        },
        LATER,
    );
    assert_eq!(t.logs[0].message, "replaced by a new submit");
    // A lease is lost only for its cause; the attempt stays counted.
    let job = job_in(Running);
    let lost = |loss, now| apply(&job, Event::LeaseLost(loss), now, &exact());
    let early = lost(LeaseLoss::Expired, NOW);
    assert_eq!(early, Err(Refusal::LeaseNotExpired(NOW + 50)));
    let other = lost(LeaseLoss::OwnerGone("w2".into()), LATER);
    assert_eq!(other, Err(Refusal::NotOwner("w1".into())));
    let (token, expiry_ms) = ("tok".into(), NOW);
    let renewed = lost(LeaseLoss::StreamEnded { token, expiry_ms }, LATER);
    assert_eq!(renewed, Err(Refusal::LeaseRenewed(NOW + 50)));
    let t = lost(LeaseLoss::Expired, LATER).unwrap();
    assert_eq!((t.logs[0].level, t.job.job.attempt), (LogLevel::Warn, 1));
    // Refusals read as sentences.
    let due = Refusal::NotDue(1_000).to_string();
    assert_eq!(due, "the job is not due before 1970-01-01T00:00:01.000Z");
    let finished = Refusal::Finished("j".into(), Cancelled).to_string();
    assert_eq!(finished, "job j already finished (CANCELLED)");
}

#[test]
fn lost_runs_back_off_have_their_own_budget_and_end_a_poison_job() {
    // A one-off job that may lose one run and retry one reported failure.
    let spec = JobSpec::new("poison", "g")
        .max_retries(1)
        .max_lease_losses(1)
        .feedback_to("c");
    let queued = accept(spec, "p1".into(), NOW).job;
    let running = run(&queued, claim("t1"), NOW).job;
    let expired = NOW + 51;

    // The first loss: queued again after the first backoff step, not at once.
    let t = run(&running, Event::LeaseLost(LeaseLoss::Expired), expired);
    assert_eq!(t.job.job.state, Queued);
    assert_eq!((t.job.job.attempt, t.job.job.lease_losses), (1, 1));
    assert_eq!(t.job.job.trigger_time_ms, expired + 1_000);
    assert_eq!(
        t.disposition,
        Some(Disposition::Retry {
            at_ms: expired + 1_000
        })
    );
    assert_eq!(types(&t.logs), [LogType::FixedDead]);
    assert!(
        t.logs[0].message.contains("lost run 1 of at most 1"),
        "{}",
        t.logs[0].message
    );
    assert!(t.feedback.is_none());
    let again = t.job;
    assert!(
        apply(&again, claim("t2"), expired, &exact()).is_err(),
        "not before its backoff"
    );

    // A lost run did not use up the retry: a reported EXCEPTION is still retried.
    let running = run(&again, claim("t2"), expired + 1_000).job;
    let t = run(&running, done("t2", Outcome::Exception), expired + 1_100);
    assert!(
        matches!(t.disposition, Some(Disposition::Retry { .. })),
        "{:?}",
        t.disposition
    );
    assert!(t.logs.iter().any(|l| l.message.starts_with("retry 1 of 1")));

    // The second loss is past the budget: the job fails, with a FIXED_DEAD line and feedback.
    let retried = t.job;
    let at = retried.job.trigger_time_ms;
    let running = run(&retried, claim("t3"), at).job;
    let t = run(
        &running,
        Event::LeaseLost(LeaseLoss::OwnerGone("w1".into())),
        at + 10,
    );
    let j = &t.job.job;
    assert_eq!(
        (j.state, j.last_outcome),
        (Failed, Some(Outcome::Exception))
    );
    assert_eq!((j.attempt, j.lease_losses), (3, 2));
    assert_eq!(types(&t.logs), [LogType::FixedDead]);
    let message =
        "its TaskTracker left the cluster: run lost 2 times, more than max_lease_losses (1) allows";
    assert_eq!(t.logs[0].message, message);
    assert_eq!(j.last_message.as_deref(), Some(message));
    let feedback = t.feedback.expect("feedback of the failure");
    assert_eq!(
        (feedback.outcome, feedback.job.state),
        (Outcome::Exception, Failed)
    );
    match &t.write {
        Write::Finish { from, fields } => {
            assert_eq!(*from, Running);
            assert!(fields.contains(&Field::Attempt), "{fields:?}");
        }
        other => panic!("{other:?}"),
    }

    // A recurring job past its budget fails that fire and goes on to the next one, its count
    // of lost runs starting again.
    let mut def = job_in(Running);
    def.job.spec.max_lease_losses = Some(0);
    let t = run(&def, Event::LeaseLost(LeaseLoss::Expired), expired);
    let j = &t.job.job;
    assert_eq!((j.state, j.attempt, j.lease_losses), (Queued, 0, 0));
    assert_eq!(j.last_outcome, Some(Outcome::Exception));
    assert!(matches!(t.next_fire, NextFire::At(_)), "{:?}", t.next_fire);
    assert_eq!(t.feedback.map(|f| f.job.state), Some(Failed));
}

#[test]
fn a_run_past_its_timeout_ends_timeout_and_is_retried_while_retries_remain() {
    let spec = JobSpec::new("slow", "g")
        .timeout(std::time::Duration::from_secs(1))
        .max_retries(1);
    let queued = accept(spec, "s1".into(), NOW).job;
    let claim_until = |token: &str, expiry_ms| {
        let (owner, token, instance_id) = ("w1".into(), token.into(), "i".into());
        Event::Claim(Claim {
            owner,
            token,
            expiry_ms,
            instance_id,
            due_by_ms: NOW,
            unfinished_instances: 0,
            targets: Vec::new(),
        })
    };
    // The lease runs to the deadline's grace at most, however long the claim asked for.
    let running = run(&queued, claim_until("t1", NOW + 60_000), NOW).job;
    let grace_end = NOW + 1_000 + DEADLINE_GRACE_MS;
    assert_eq!(running.job.deadline_ms, Some(NOW + 1_000));
    assert_eq!(running.job.lease_expiry_ms, Some(grace_end));
    let renew = Event::Renew {
        token: "t1".into(),
        expiry_ms: NOW + 90_000,
    };
    let renewed = run(&running, renew, NOW + 500).job;
    assert_eq!(renewed.job.lease_expiry_ms, Some(grace_end));

    // Its TaskTracker never ends it: past the grace, the sweep ends the run TIMEOUT. It is
    // not a lost run; a retry remains.
    let t = run(
        &renewed,
        Event::LeaseLost(LeaseLoss::Expired),
        grace_end + 1,
    );
    let j = &t.job.job;
    assert_eq!((j.state, j.last_outcome), (Queued, Some(Outcome::Timeout)));
    assert_eq!((j.lease_losses, j.deadline_ms), (0, None));
    assert!(matches!(t.disposition, Some(Disposition::Retry { .. })));
    assert_eq!(types(&t.logs), [LogType::Finished, LogType::Resend]);
    assert!(
        t.logs[0]
            .message
            .starts_with("TIMEOUT: ran past its timeout of 1s"),
        "{}",
        t.logs[0].message
    );

    // The second run's TaskTracker reports TIMEOUT itself: retries are spent, the job fails.
    let at = j.trigger_time_ms;
    let running = run(&t.job, claim_until("t2", at + 50), at).job;
    assert_eq!(running.job.deadline_ms, Some(at + 1_000));
    let t = run(&running, done("t2", Outcome::Timeout), at + 1_200);
    let j = &t.job.job;
    assert_eq!((j.state, j.last_outcome), (Failed, Some(Outcome::Timeout)));
    assert_eq!(j.deadline_ms, None);
}

/// A store in memory, driven by [`apply`] alone, that checks the invariants after each event.
struct World {
    now: i64,
    jobs: Vec<StoredJob>,
    ids: u64,
    /// Leases lost per job since its attempt counter last started again.
    losses: HashMap<String, u32>,
}

/// An event for a picked job; a `true` asks for a stale lease token.
#[derive(Debug, Clone)]
enum Op {
    Submit(bool),
    Claim,
    Renew(bool),
    Complete(Outcome, bool),
    Release(bool),
    Lose(u8),
    Suspend,
    Resume,
    Trigger,
    Cancel,
    Wait(i64),
}

fn op() -> impl Strategy<Value = Op> {
    use Outcome::{Exception, Failed, Later, Success};
    let outcome = prop_oneof![Just(Success), Just(Failed), Just(Later), Just(Exception)];
    prop_oneof![
        1 => any::<bool>().prop_map(Op::Submit),
        4 => Just(Op::Claim),
        1 => any::<bool>().prop_map(Op::Renew),
        4 => (outcome, any::<bool>()).prop_map(|(o, stale)| Op::Complete(o, stale)),
        1 => any::<bool>().prop_map(Op::Release),
        2 => (0u8..3).prop_map(Op::Lose),
        1 => Just(Op::Suspend),
        1 => Just(Op::Resume),
        1 => Just(Op::Trigger),
        1 => Just(Op::Cancel),
        3 => (0i64..4_000).prop_map(Op::Wait),
    ]
}

fn spec() -> impl Strategy<Value = JobSpec> {
    let count = prop_oneof![Just(-1i64), 1i64..4];
    let flags = (any::<bool>(), any::<bool>(), any::<bool>());
    let losses = prop_oneof![Just(None), (0u32..3).prop_map(Some)];
    let timeout = prop_oneof![Just(None), Just(Some(1_000u64))];
    (0u8..3, 0u32..3, count, flags, (losses, timeout, 0usize..4)).prop_map(
        |(kind, retries, count, (rely, skip, fb), (losses, timeout, concurrency))| {
            let schedule = match kind {
                0 => Schedule::Now,
                1 => Schedule::TriggerAt {
                    trigger_time_ms: NOW + 1_500,
                },
                _ => Schedule::Repeat {
                    interval_ms: 1000,
                    count,
                    first_fire_ms: None,
                },
            };
            let mut spec = JobSpec::new("p", "g")
                .schedule(schedule)
                .max_retries(retries);
            spec.rely_on_prev_cycle = rely;
            spec.misfire_policy = [MisfirePolicy::FireOnce, MisfirePolicy::Skip][usize::from(skip)];
            spec.need_feedback = fb;
            spec.max_lease_losses = losses;
            spec.timeout_ms = timeout;
            if schedule::fires_overlapping_instances(&spec) {
                spec.concurrency_policy = [
                    ConcurrencyPolicy::Allow,
                    ConcurrencyPolicy::Forbid,
                    ConcurrencyPolicy::Replace,
                    ConcurrencyPolicy::Allow,
                ][concurrency];
                // The last draw: allow, with a cap of two runs.
                if concurrency == 3 {
                    spec.max_concurrent = Some(2);
                }
            }
            spec
        },
    )
}

impl World {
    fn new(specs: Vec<JobSpec>) -> World {
        let accepted = specs.into_iter().enumerate().map(|(n, spec)| {
            let spec = JobSpec {
                task_id: format!("p{n}"),
                ..spec
            };
            accept(spec, format!("j{n}"), NOW).job
        });
        World {
            now: NOW,
            jobs: accepted.collect(),
            ids: 0,
            losses: HashMap::new(),
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.ids += 1;
        format!("{prefix}{}", self.ids)
    }

    /// The unfinished job with this spec's node group and task id.
    fn unfinished(&self, spec: &JobSpec) -> Option<usize> {
        let mut jobs = self.jobs.iter();
        jobs.position(|j| !j.job.state.is_final() && key(&j.job.spec) == key(spec))
    }

    /// The event `op` makes for the job at `i` (a submit: for the unfinished job with its
    /// task id, as a store finds it), or `None` for time passing.
    fn event(&mut self, i: &mut usize, pick: usize, op: Op) -> Option<Event> {
        let job = self.jobs[*i].clone();
        let token = |stale: bool| match job.lease_token.clone() {
            Some(t) if !stale => t,
            _ => "stale".into(),
        };
        let expiry_ms = self.now + 5_000;
        Some(match op {
            Op::Wait(ms) => {
                self.now += ms;
                return None;
            }
            Op::Submit(replace) => {
                *i = self.unfinished(&job.job.spec).unwrap_or(*i);
                let spec = job.job.spec.replace_on_exist(replace).priority(1);
                Event::Submit {
                    spec: Box::new(spec),
                    new_job_id: self.fresh("n"),
                }
            }
            Op::Claim => {
                let (token, instance_id) = (self.fresh("t"), self.fresh("i"));
                let owner = format!("w{}", pick % 2);
                Event::Claim(Claim {
                    owner,
                    token,
                    expiry_ms,
                    instance_id,
                    // Now, or ahead of the trigger time as for a TaskTracker that holds it.
                    due_by_ms: self.now + (pick % 3) as i64 * 500,
                    unfinished_instances: self
                        .jobs
                        .iter()
                        .filter(|j| {
                            !j.job.state.is_final()
                                && j.job.instance_of.as_deref() == Some(job.job.job_id.as_str())
                        })
                        .count()
                        .min(Claim::instances_to_count(&job.job.spec) as usize)
                        as u32,
                    targets: Vec::new(),
                })
            }
            Op::Renew(stale) => Event::Renew {
                token: token(stale),
                expiry_ms,
            },
            Op::Complete(outcome, stale) => done(&token(stale), outcome),
            Op::Release(stale) => Event::Release(token(stale)),
            Op::Lose(0) => Event::LeaseLost(LeaseLoss::Expired),
            Op::Lose(1) => {
                let owner = job.job.lease_owner.unwrap_or_default();
                Event::LeaseLost(LeaseLoss::OwnerGone(owner))
            }
            Op::Lose(_) => {
                let expiry_ms = job.job.lease_expiry_ms.unwrap_or_default();
                let token = token(false);
                Event::LeaseLost(LeaseLoss::StreamEnded { token, expiry_ms })
            }
            Op::Suspend => Event::Suspend,
            Op::Resume => Event::Resume,
            Op::Trigger => Event::Trigger(self.fresh("i")),
            Op::Cancel => Event::Cancel(CancelCause::User),
        })
    }

    /// Applies one event as a store would, then checks every invariant.
    fn step(&mut self, pick: usize, op: Op) -> Result<(), TestCaseError> {
        let mut i = pick % self.jobs.len();
        let Some(event) = self.event(&mut i, pick, op) else {
            return self.check();
        };
        let before = self.jobs[i].clone();
        let policy = RetryPolicy::default();
        let Ok(t) = apply(&before, event.clone(), self.now, &policy) else {
            return self.check();
        };
        check_transition(&before, &event, &t)?;
        let id = t.job.job.job_id.clone();
        if t.job.job.attempt == 0 {
            self.losses.remove(&id);
        } else if t.job.job.lease_losses > before.job.lease_losses {
            *self.losses.entry(id).or_default() += 1;
        }
        match t.write {
            Write::Insert => self.jobs.push(t.job),
            _ => self.jobs[i] = t.job,
        }
        if let Some(f) = t.follow_up
            && self.unfinished(&f.job.job.spec).is_none()
        {
            self.jobs.push(f.job);
        }
        if let Some(Cascade::ReplaceInstances {
            definition,
            keep,
            fire_ms,
        }) = &t.cascade
        {
            for k in 0..self.jobs.len() {
                let j = &self.jobs[k].job;
                let earlier = !j.state.is_final() && j.job_id != *keep;
                if earlier && j.instance_of.as_deref() == Some(definition.as_str()) {
                    let cancel = Event::Cancel(CancelCause::Replaced(*fire_ms));
                    let t = apply(&self.jobs[k], cancel, self.now, &policy);
                    self.jobs[k] = t.map_err(|r| TestCaseError::fail(r.to_string()))?.job;
                }
            }
        }
        if let Some(Cascade::CancelQueuedInstances { definition }) = t.cascade {
            for k in 0..self.jobs.len() {
                let j = &self.jobs[k].job;
                let queued = matches!(j.state, Queued | Suspended);
                if queued && j.instance_of.as_deref() == Some(definition.as_str()) {
                    let cancel = Event::Cancel(CancelCause::WithSchedule(definition.clone()));
                    let t = apply(&self.jobs[k], cancel, self.now, &policy);
                    self.jobs[k] = t.map_err(|r| TestCaseError::fail(r.to_string()))?.job;
                }
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let mut tokens = Vec::new();
        for (n, s) in self.jobs.iter().enumerate() {
            consistent(s).map_err(TestCaseError::fail)?;
            let j = &s.job;
            tokens.extend(s.lease_token.clone());
            let lost = self.losses.get(&j.job_id).copied().unwrap_or(0);
            let most = j.spec.max_retries + 1 + lost;
            prop_assert!(
                j.attempt <= most,
                "{}: attempt {} > {most}",
                j.job_id,
                j.attempt
            );
            // Lost runs are counted in the job, and bounded.
            prop_assert_eq!(j.lease_losses, lost, "{} lost runs", &j.job_id);
            let budget = j.spec.lease_loss_budget();
            prop_assert!(
                j.lease_losses <= budget || j.state.is_final(),
                "{}: {} lost runs > {budget}, and it goes on",
                j.job_id,
                j.lease_losses
            );
            // Never lost: an unfinished job is the only one with its task id, with a way on.
            let (event, at) = match j.state {
                Queued => (claim("probe"), j.trigger_time_ms.max(self.now)),
                Running => {
                    let expired = j.lease_expiry_ms.unwrap_or_default() + 1;
                    (Event::LeaseLost(LeaseLoss::Expired), expired)
                }
                Suspended => (Event::Resume, self.now),
                // The property tests draw no workflows.
                Waiting => unreachable!("{} waits, but no workflow was drawn", j.job_id),
                Succeeded | Failed | Cancelled | Skipped => continue,
            };
            prop_assert_eq!(self.unfinished(&j.spec), Some(n), "two {}", &j.spec.task_id);
            let on = apply(s, event, at, &exact());
            prop_assert!(on.is_ok(), "{} ({}) is stuck: {:?}", j.job_id, j.state, on);
        }
        let n = tokens.len();
        tokens.sort();
        tokens.dedup();
        prop_assert_eq!(tokens.len(), n, "one lease per job and one job per lease");
        Ok(())
    }
}

fn key(spec: &JobSpec) -> (String, String) {
    (spec.task_id.clone(), spec.task_tracker_node_group.clone())
}

/// What holds for every transition, whatever came before.
fn check_transition(b: &StoredJob, event: &Event, t: &Transition) -> Result<(), TestCaseError> {
    let (was, is) = (&b.job, &t.job.job);
    match &t.write {
        Write::Insert => prop_assert!(was.state.is_final() && is.job_id != was.job_id),
        Write::Keep => prop_assert_eq!(&t.job, b),
        Write::Update { from, .. } | Write::Finish { from, .. } => {
            prop_assert_eq!((*from, &is.job_id), (was.state, &was.job_id));
        }
    }
    prop_assert!(t.logs.iter().all(|l| l.job_id == is.job_id));
    if let Some(f) = &t.follow_up {
        prop_assert!(f.logs.iter().all(|l| l.job_id == f.job.job.job_id));
    }
    // Retried only while retries remain: a reported failure within max_retries (lost runs
    // not counted), a lost run within max_lease_losses.
    if let Some(Disposition::Retry { .. }) = t.disposition {
        let timed_out = is.lease_losses == was.lease_losses;
        match event {
            Event::LeaseLost(_) if !timed_out => prop_assert!(
                was.lease_losses < was.spec.lease_loss_budget(),
                "lost run {} queued again",
                was.lease_losses + 1
            ),
            _ => prop_assert!(
                was.attempt - was.lease_losses <= was.spec.max_retries,
                "retry of attempt {}",
                was.attempt
            ),
        }
    }
    // A claim leases one job: the one it hands out.
    let instance = t
        .follow_up
        .as_ref()
        .is_some_and(|f| f.job.job.state == Running);
    let itself = is.state == Running && was.state != Running;
    prop_assert_eq!(itself, t.handout == Handout::Job);
    prop_assert_eq!(instance, t.handout == Handout::FollowUp);
    // A job finishes with an outcome, by a cancel, or when its schedule runs out.
    if is.state.is_final() && !was.state.is_final() {
        let why = match event {
            Event::Complete(_) | Event::Cancel(_) => true,
            Event::LeaseLost(_) => {
                is.lease_losses > is.spec.lease_loss_budget()
                    || is.last_outcome == Some(Outcome::Timeout)
            }
            Event::Claim(_) => t.next_fire == NextFire::Exhausted,
            _ => false,
        };
        prop_assert!(why, "{} finished by {:?}", is.job_id, event);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// No sequence of events loses a job, leases it twice or retries it past max_retries.
    #[test]
    fn no_sequence_of_events_breaks_a_job(
        specs in prop::collection::vec(spec(), 1..3),
        ops in prop::collection::vec((any::<usize>(), op()), 1..80),
    ) {
        let mut world = World::new(specs);
        world.check()?;
        for (pick, op) in ops {
            world.step(pick, op)?;
        }
    }
}

fn sharded(n: u32) -> JobSpec {
    let mut spec = JobSpec::new("split", "g").max_retries(1).feedback_to("c");
    spec.shards = Some(n);
    spec
}

fn progress(succeeded: u32, failed: u32) -> Event {
    Event::ShardsEnded(ShardProgress {
        succeeded,
        failed,
        ..ShardProgress::default()
    })
}

#[test]
fn a_sharded_job_runs_as_its_shards_and_ends_with_the_last() {
    let queued = accept(sharded(3), "p".into(), NOW).job;
    let t = run(&queued, claim("t1"), NOW + 1);
    // The job runs without a lease of its own; its shards are queued, due when it was.
    assert_eq!(t.handout, Handout::Nothing);
    let parent = t.job.clone();
    assert!(parent.job.waits_for_shards());
    assert_eq!((parent.job.attempt, &parent.lease_token), (1, &None));
    consistent(&parent).unwrap();
    assert_eq!(t.fan_out.len(), 3);
    for (i, s) in t.fan_out.iter().enumerate() {
        let j = &s.job;
        assert_eq!(j.job_id, format!("p-1-1-{i}"));
        assert_eq!(j.spec.task_id, format!("split#{i}"));
        assert_eq!((j.spec.shards, j.spec.need_feedback), (None, false));
        assert_eq!(
            j.shard,
            Some(Shard {
                of: "p".into(),
                index: i as u32,
                count: 3,
                on: None,
            })
        );
        assert_eq!((j.state, j.trigger_time_ms), (Queued, NOW));
        consistent(s).unwrap();
    }
    assert_eq!(
        types(&t.logs),
        [
            LogType::Sent,
            LogType::Receive,
            LogType::Receive,
            LogType::Receive
        ]
    );
    // Lease events do not apply to it.
    for event in [
        Event::LeaseLost(LeaseLoss::Expired),
        Event::LeaseLost(LeaseLoss::OwnerGone("w1".into())),
    ] {
        assert_eq!(
            apply(&parent, event, LATER, &exact()).map(|t| t.write),
            Err(Refusal::WaitsForShards)
        );
    }
    assert_eq!(
        apply(&parent, done("t1", Outcome::Success), LATER, &exact()).map(|t| t.write),
        Err(Refusal::StaleLease)
    );
    // A shard that ends tells the store to look at its job.
    let shard = run(&t.fan_out[0], claim("s0"), NOW + 2).job;
    let ended = run(&shard, done("s0", Outcome::Success), NOW + 3);
    assert_eq!(ended.job.job.state, Succeeded);
    assert_eq!(
        ended.cascade,
        Some(Cascade::ShardEnded {
            parent: "p".into(),
            run: "p-1-1-".into(),
            successors: Vec::new(),
        })
    );
    assert_eq!(ended.feedback, None, "a shard has no feedback of its own");
    // Not while shards are unfinished; then the job ends with them.
    let unfinished = Event::ShardsEnded(ShardProgress {
        succeeded: 2,
        running: 1,
        ..ShardProgress::default()
    });
    assert_eq!(
        apply(&parent, unfinished, LATER, &exact()).map(|t| t.write),
        Err(Refusal::ShardsUnfinished(1))
    );
    let t = run(&parent, progress(3, 0), LATER);
    assert_eq!(t.job.job.state, Succeeded);
    assert_eq!(
        t.job.job.last_message.as_deref(),
        Some("all 3 shards succeeded")
    );
    assert!(t.feedback.is_some(), "the job's feedback");
    consistent(&t.job).unwrap();
    let t = run(&parent, progress(2, 1), LATER);
    assert_eq!(t.job.job.state, Failed, "no retry of the whole job");
    assert_eq!(
        t.job.job.last_message.as_deref(),
        Some("1 of 3 shards failed")
    );
}

#[test]
fn a_cancelled_sharded_job_cancels_its_shards_running_ones_too() {
    let parent = run(&accept(sharded(2), "p".into(), NOW).job, claim("t1"), NOW).job;
    let t = run(&parent, Event::Cancel(CancelCause::User), NOW + 1);
    assert_eq!(t.job.job.state, Cancelled);
    assert_eq!(
        t.cascade,
        Some(Cascade::CancelShards {
            parent: "p".into(),
            run: "p-1-1-".into()
        })
    );
    let cascade = t.cascade.unwrap();
    assert_eq!(cascade.related(), Related::ShardsOf("p-1-1-"));
    assert_eq!(
        (Shard::ids_from("p-1-1-"), Shard::ids_to("p-1-1-")),
        ("p-1-1-".to_string(), "p-1-1.".to_string())
    );
    assert!("p-1-1-0" < Shard::ids_to("p-1-1-").as_str());
    assert!("p-1-1-9999" < Shard::ids_to("p-1-1-").as_str());
    assert!(
        "p-1-10-0" >= Shard::ids_to("p-1-1-").as_str(),
        "another attempt's shards"
    );
    assert_eq!(Shard::run_of_id("p-1-1-17"), "p-1-1-");
    let shard = accept(JobSpec::new("split#0", "g"), "p-1-1-0".into(), NOW).job;
    let running = run(&shard, claim("s0"), NOW).job;
    let event = cascade.event_for("p-1-1-0").unwrap();
    let t = run(&running, event, NOW + 2);
    assert_eq!(t.job.job.state, Cancelled);
    assert!(t.logs[0].message.contains("cancelled with its job p"));
}

#[test]
fn a_sharded_recurring_job_shards_each_fire() {
    // Sequential: each fire's shards, then the next fire.
    let mut spec = repeat(true, 2);
    spec.shards = Some(2);
    let def = accept(spec.clone(), "d".into(), NOW).job;
    let t = run(&def, claim("t1"), NOW);
    assert_eq!(t.fan_out[0].job.job_id, "d-1-1-0");
    let t = run(&t.job, progress(2, 0), NOW + 10);
    assert_eq!(t.job.job.state, Queued);
    assert_eq!(t.next_fire, NextFire::At(NOW + 1_000));
    let t = run(&t.job, claim("t2"), NOW + 1_000);
    assert_eq!(
        t.fan_out[1].job.job_id, "d-2-1-1",
        "the second fire's own shards"
    );
    // Overlapping: the fire's instance is queued, and sharded at its own claim.
    let mut spec = repeat(false, 2);
    spec.shards = Some(2);
    let def = accept(spec, "o".into(), NOW).job;
    let t = run(&def, claim("t3"), NOW);
    assert_eq!(t.handout, Handout::Nothing);
    let instance = t.follow_up.expect("an instance").job;
    assert_eq!(
        (instance.job.state, instance.job.spec.shards),
        (Queued, Some(2))
    );
    assert!(t.fan_out.is_empty());
    let t = run(&instance, claim("t4"), NOW + 1);
    assert_eq!(t.fan_out.len(), 2);
}

#[test]
fn a_broadcast_job_runs_one_shard_on_each_connected_task_tracker() {
    let mut spec = JobSpec::new("flush", "g");
    spec.broadcast = true;
    let queued = accept(spec, "b".into(), NOW).job;
    let claim = Event::Claim(Claim {
        owner: "w2".into(),
        token: "t1".into(),
        expiry_ms: NOW + 50,
        instance_id: String::new(),
        due_by_ms: NOW,
        unfinished_instances: 0,
        targets: vec!["w3".into(), "w1".into(), "w3".into()],
    });
    let t = run(&queued, claim, NOW);
    assert_eq!(t.handout, Handout::Nothing);
    assert!(t.job.job.waits_for_shards());
    let on: Vec<(u32, Option<&str>)> = t
        .fan_out
        .iter()
        .map(|s| {
            let shard = s.job.shard.as_ref().unwrap();
            (shard.index, shard.on.as_deref())
        })
        .collect();
    // Each TaskTracker once, the claim's own included.
    assert_eq!(on, [(0, Some("w1")), (1, Some("w2")), (2, Some("w3"))]);
    assert!(t.fan_out.iter().all(|s| !s.job.spec.broadcast));
    assert!(
        t.logs[0]
            .message
            .contains("runs on 3 TaskTrackers (broadcast)")
    );
    // A shard whose TaskTracker left is cancelled.
    let gone = Event::Cancel(CancelCause::TargetGone("w3".into()));
    let t = run(&t.fan_out[2], gone, NOW + 1);
    assert_eq!(t.job.job.state, Cancelled);
    assert!(
        t.logs[0]
            .message
            .contains("w3 left the cluster before it ran")
    );
    assert!(matches!(t.cascade, Some(Cascade::ShardEnded { .. })));
}

/// The diamond `a -> b`, `a -> c (on failure)`, `b -> d (always)`, `c -> d (always)`.
fn diamond() -> JobSpec {
    use crate::workflow::{Edge, EdgeOn, Workflow, WorkflowNode};
    let node = |name: &str| WorkflowNode {
        name: name.into(),
        spec: JobSpec::new("", ""),
        kept_output: None,
    };
    let edge = |from: &str, to: &str, on| Edge {
        from: from.into(),
        to: to.into(),
        on,
    };
    let mut spec = JobSpec::new("etl", "g").feedback_to("clients");
    spec.workflow = Some(Workflow {
        nodes: ["a", "b", "c", "d"].map(node).to_vec(),
        edges: vec![
            edge("a", "b", EdgeOn::Success),
            edge("a", "c", EdgeOn::Failure),
            edge("b", "d", EdgeOn::Always),
            edge("c", "d", EdgeOn::Always),
        ],
    });
    spec
}

/// A node's end as the store sees it: the node ended, and its waiting successors judged
/// against their predecessors (here: the nodes in `all`).
fn judge(successor: &StoredJob, all: &[StoredJob]) -> Option<Verdict> {
    let preds: Vec<&Job> = all.iter().map(|s| &s.job).collect();
    crate::workflow::readiness(&successor.job, &preds)
}

#[test]
fn a_workflow_runs_its_nodes_in_edge_order_and_takes_the_failure_edge() {
    assert_eq!(crate::validate::validate_at(&diamond(), NOW), Ok(()));
    let queued = accept(diamond(), "w".into(), NOW).job;
    let t = run(&queued, claim("t1"), NOW + 1);
    assert_eq!(t.handout, Handout::Nothing);
    assert!(t.job.job.waits_for_shards());
    let mut nodes = t.fan_out.clone();
    let states: Vec<JobState> = nodes.iter().map(|n| n.job.state).collect();
    assert_eq!(states, [Queued, Waiting, Waiting, Waiting]);
    let a = &nodes[0].job;
    assert_eq!(
        (a.job_id.as_str(), a.spec.task_id.as_str()),
        ("w-1-1-0", "etl/a")
    );
    assert_eq!(a.spec.task_tracker_node_group, "g");
    assert!(!a.spec.need_feedback && a.spec.workflow.is_none());
    let of = a.node.as_ref().unwrap();
    assert_eq!((of.next.clone(), of.handles_failure), (vec![1, 2], true));
    for n in &nodes {
        consistent(n).unwrap();
    }
    // A waiting node is not claimed or run.
    assert_eq!(
        apply(&nodes[1], claim("x"), NOW + 2, &exact()).map(|t| t.write),
        Err(Refusal::NotQueued(Waiting))
    );

    // a fails: its end names its successors.
    let running = run(&nodes[0], claim("a"), NOW + 2).job;
    let mut failed = report("a", Outcome::Failed);
    failed.message = "bad input".into();
    let ended = run(&running, Event::Complete(failed), NOW + 3);
    assert_eq!(
        ended.cascade,
        Some(Cascade::ShardEnded {
            parent: "w".into(),
            run: "w-1-1-".into(),
            successors: vec![1, 2],
        })
    );
    nodes[0] = ended.job;
    // b (after a succeeds) is skipped; c (after a fails) runs.
    let Some(Verdict::Skip(why)) = judge(&nodes[1], &nodes) else {
        panic!("b is not skipped")
    };
    assert!(
        why.contains("after a succeeds") && why.contains("FAILED"),
        "{why}"
    );
    let skipped = run(
        &nodes[1],
        Event::PredecessorsEnded(Verdict::Skip(why)),
        NOW + 4,
    );
    assert_eq!(skipped.job.job.state, Skipped);
    consistent(&skipped.job).unwrap();
    assert!(matches!(
        skipped.cascade,
        Some(Cascade::ShardEnded { ref successors, .. }) if successors == &[3]
    ));
    nodes[1] = skipped.job;
    // d waits for c still.
    assert_eq!(judge(&nodes[3], &nodes), None);
    let verdict = judge(&nodes[2], &nodes).unwrap();
    assert_eq!(
        verdict,
        Verdict::Run {
            outputs: Default::default()
        },
        "a failed: it hands on no output"
    );
    let c = run(&nodes[2], Event::PredecessorsEnded(verdict), NOW + 5);
    assert_eq!(
        (c.job.job.state, c.job.job.trigger_time_ms),
        (Queued, NOW + 5)
    );
    let c = run(&c.job, claim("c"), NOW + 6).job;
    let mut fixed = report("c", Outcome::Success);
    fixed.message = "fixed".into();
    nodes[2] = run(&c, Event::Complete(fixed), NOW + 7).job;
    // d runs (always), with c's output.
    let Some(Verdict::Run { outputs }) = judge(&nodes[3], &nodes) else {
        panic!("d does not run")
    };
    assert_eq!(outputs.get("output.c").map(String::as_str), Some("fixed"));
    assert_eq!(outputs.len(), 1, "b was skipped: no output");
    let d = run(
        &nodes[3],
        Event::PredecessorsEnded(Verdict::Run { outputs }),
        NOW + 8,
    );
    assert_eq!(d.job.job.spec.params["output.c"], "fixed");
    // The workflow succeeds: a's failure is handled by the edge to c.
    let tally = ShardProgress {
        succeeded: 2,
        failed: 1,
        skipped: 1,
        handled: 1,
        ..ShardProgress::default()
    };
    let end = run(&t.job, Event::ShardsEnded(tally), NOW + 9);
    assert_eq!(end.job.job.state, Succeeded);
    let message = end.job.job.last_message.clone().unwrap();
    assert_eq!(
        message,
        "4 nodes ended: 2 succeeded, 1 failed (1 handled by an edge), 1 skipped"
    );
    assert!(end.feedback.is_some(), "the workflow's feedback");
    // An unhandled failure fails it.
    let tally = ShardProgress {
        handled: 0,
        ..tally
    };
    let end = run(&t.job, Event::ShardsEnded(tally), NOW + 9);
    assert_eq!(end.job.job.state, Failed);
    assert!(
        end.job
            .job
            .last_message
            .as_deref()
            .unwrap_or_default()
            .ends_with("1 failure no edge handles"),
        "{:?}",
        end.job.job.last_message
    );
}

#[test]
fn a_cancelled_workflow_cancels_its_waiting_nodes_without_judging_their_successors() {
    let queued = accept(diamond(), "w".into(), NOW).job;
    let t = run(&queued, claim("t1"), NOW + 1);
    let cancelled = run(&t.job, Event::Cancel(CancelCause::User), NOW + 2);
    assert_eq!(
        cancelled.cascade,
        Some(Cascade::CancelShards {
            parent: "w".into(),
            run: "w-1-1-".into()
        })
    );
    for node in &t.fan_out {
        let t = run(
            node,
            Event::Cancel(CancelCause::WithParent("w".into())),
            NOW + 3,
        );
        assert_eq!(t.job.job.state, Cancelled);
        assert!(matches!(
            t.cascade,
            Some(Cascade::ShardEnded { ref successors, .. }) if successors.is_empty()
        ));
    }
}

#[test]
fn a_replaced_workflow_run_cancels_its_nodes() {
    let queued = accept(diamond(), "w".into(), NOW).job;
    let running = run(&queued, claim("t1"), NOW + 1).job;
    let t = run(
        &running,
        Event::Cancel(CancelCause::Replaced(NOW + 5)),
        NOW + 5,
    );
    assert_eq!(t.job.job.state, Cancelled);
    assert_eq!(
        t.cascade,
        Some(Cascade::CancelShards {
            parent: "w".into(),
            run: "w-1-1-".into()
        })
    );
    // A queued one has no nodes yet: nothing to cascade.
    let t = run(
        &queued,
        Event::Cancel(CancelCause::Replaced(NOW + 5)),
        NOW + 5,
    );
    assert_eq!(t.cascade, None);
}

#[test]
fn a_suspended_workflow_suspends_its_nodes_and_a_waiting_one_stays_suspended() {
    let queued = accept(diamond(), "w".into(), NOW).job;
    let t = run(&queued, claim("t1"), NOW + 1);
    let (parent, nodes) = (t.job, t.fan_out);
    let suspended = run(&parent, Event::Suspend, NOW + 2);
    let cascade = Some(Cascade::SuspendShards {
        parent: "w".into(),
        run: "w-1-1-".into(),
    });
    assert_eq!(suspended.cascade, cascade);
    assert_eq!(
        suspended.job.job.state, Running,
        "it waits for its nodes still"
    );
    // The cascade's event for each node: a queued one is suspended; a waiting one is marked.
    let a = run(&nodes[0], Event::Suspend, NOW + 3).job;
    assert_eq!(a.job.state, Suspended);
    let b = run(&nodes[1], Event::Suspend, NOW + 3).job;
    assert_eq!((b.job.state, b.suspend_requested), (Waiting, true));
    consistent(&b).unwrap();
    // Its predecessors end: it is suspended, not queued.
    let ready = Verdict::Run {
        outputs: Default::default(),
    };
    let b = run(&b, Event::PredecessorsEnded(ready), NOW + 4).job;
    assert_eq!(b.job.state, Suspended);
    consistent(&b).unwrap();
    // Resuming the workflow resumes its nodes.
    let resumed = run(&suspended.job, Event::Resume, NOW + 5);
    assert_eq!(
        resumed.cascade,
        Some(Cascade::ResumeShards {
            parent: "w".into(),
            run: "w-1-1-".into()
        })
    );
    assert_eq!(run(&b, Event::Resume, NOW + 6).job.job.state, Queued);
    assert_eq!(run(&a, Event::Resume, NOW + 6).job.job.state, Queued);
}

#[test]
fn a_retry_keeps_the_nodes_that_succeeded_and_judges_the_rest_at_once() {
    let mut spec = diamond();
    let wf = spec.workflow.as_mut().unwrap();
    wf.nodes[0].kept_output = Some("rows=10".into());
    let queued = accept(spec.clone(), "r".into(), NOW).job;
    let t = run(&queued, claim("t1"), NOW + 1);
    assert!(t.job.job.waits_for_shards());
    let states: Vec<JobState> = t.fan_out.iter().map(|n| n.job.state).collect();
    // a kept; b (after a succeeds) queued with a's output; c (after a fails) skipped; d waits.
    assert_eq!(states, [Succeeded, Queued, Skipped, Waiting]);
    assert_eq!(t.fan_out[1].job.spec.params["output.a"], "rows=10");
    for n in &t.fan_out {
        consistent(n).unwrap();
    }
    // Every node kept but one that is skipped at once: the workflow ends in its claim.
    let mut spec = diamond();
    let wf = spec.workflow.as_mut().unwrap();
    for i in [0, 1, 3] {
        wf.nodes[i].kept_output = Some(String::new());
    }
    let queued = accept(spec, "r2".into(), NOW).job;
    let t = run(&queued, claim("t1"), NOW + 1);
    assert_eq!(t.job.job.state, Succeeded, "{:?}", t.job.job.last_message);
    assert!(matches!(t.write, Write::Finish { .. }));
    assert_eq!(t.fan_out.len(), 4);
    assert!(t.fan_out.iter().all(|n| n.job.state.is_final()));
    assert!(t.feedback.is_some(), "its feedback, as any end's");
}

/// A map-reduce job `mr` (with a reduce step or not), claimed: running with lease `t1`.
fn mapping(reduce: bool) -> StoredJob {
    let mut spec = JobSpec::new("mr", "g");
    spec.map_reduce = Some(crate::model::MapReduce {
        reduce,
        max_children: Some(5),
    });
    let queued = accept(spec, "mr".into(), NOW).job;
    run(&queued, claim("t1"), NOW + 1).job
}

fn map_event(token: &str, first_index: u32, items: &[&str]) -> Event {
    Event::Map(MapBatch {
        token: token.into(),
        first_index,
        items: items.iter().map(|i| i.to_string()).collect(),
    })
}

#[test]
fn a_run_maps_children_within_its_budget() {
    let running = mapping(false);
    let t = run(&running, map_event("t1", 0, &["a", "b"]), NOW + 2);
    assert_eq!(t.write, Write::Keep);
    let ids: Vec<&str> = t.fan_out.iter().map(|c| c.job.job_id.as_str()).collect();
    assert_eq!(ids, ["mr-1-m-0", "mr-1-m-1"]);
    let child = &t.fan_out[1].job;
    assert_eq!(child.state, Queued);
    assert_eq!(child.spec.params[crate::model::MAP_ITEM_PARAM], "b");
    assert_eq!(child.spec.task_id, "mr#map-1");
    assert_eq!(child.spec.map_reduce, None);
    assert_eq!(child.map, Some(MapOf::Child { index: 1 }));
    assert_eq!(child.shard.as_ref().unwrap().of, "mr");
    // The same items again (a resent call, a retried run) are the same children.
    let again = run(&running, map_event("t1", 0, &["a", "b"]), NOW + 3);
    assert_eq!(again.fan_out[1].job.job_id, "mr-1-m-1");
    // Past the budget of 5, with a stale token, too large, or of a plain job: refused.
    let refused = |e| apply(&running, e, NOW, &exact()).unwrap_err();
    assert_eq!(
        refused(map_event("t1", 4, &["x", "y"])),
        Refusal::TooManyChildren(5)
    );
    assert_eq!(refused(map_event("t0", 0, &["x"])), Refusal::StaleLease);
    let big = "x".repeat(crate::model::MAX_MAP_ITEM + 1);
    assert_eq!(
        refused(map_event("t1", 2, &["ok", &big])),
        Refusal::MapItemTooLarge(3)
    );
    let plain = run(
        &accept(JobSpec::new("p", "g"), "p".into(), NOW).job,
        claim("t1"),
        NOW,
    )
    .job;
    let e = apply(&plain, map_event("t1", 0, &["x"]), NOW, &exact()).unwrap_err();
    assert_eq!(e, Refusal::NotMapReduce);
}

#[test]
fn a_mapped_run_waits_for_its_children_then_ends_with_their_tally() {
    let running = mapping(false);
    let mut ok = report("t1", Outcome::Success);
    ok.mapped = 3;
    let t = run(&running, Event::Complete(ok), NOW + 5);
    let waiting = t.job.clone();
    assert_eq!(waiting.job.state, Running);
    assert!(waiting.job.waits_for_shards());
    assert_eq!(waiting.lease_token, None);
    consistent(&waiting).unwrap();
    assert_eq!(
        t.cascade,
        Some(Cascade::ShardEnded {
            parent: "mr".into(),
            run: "mr-1-m-".into(),
            successors: vec![],
        })
    );
    // A stray end while children run is refused; the last one ends the job.
    let ended = |succeeded, failed| {
        Event::ShardsEnded(ShardProgress {
            succeeded,
            failed,
            ..ShardProgress::default()
        })
    };
    let t = run(&waiting, ended(3, 0), NOW + 9);
    assert_eq!(t.job.job.state, Succeeded);
    assert_eq!(
        t.job.job.last_message.as_deref(),
        Some("all 3 children ended: 3 succeeded, 0 failed")
    );
    let t = run(&waiting, ended(2, 1), NOW + 9);
    assert_eq!(t.job.job.state, Failed);
    // Cancelled while children run: they go too.
    let t = run(&waiting, Event::Cancel(CancelCause::User), NOW + 9);
    assert!(matches!(t.cascade, Some(Cascade::CancelShards { ref run, .. }) if run == "mr-1-m-"));
    // … and while its own run still maps them.
    let t = run(&running, Event::Cancel(CancelCause::User), NOW + 9);
    assert!(
        matches!(t.cascade, Some(Cascade::CancelShards { .. })),
        "{:?}",
        t.cascade
    );
}

#[test]
fn a_run_that_fails_after_mapping_takes_its_children_with_it() {
    let running = mapping(false);
    let t = run(&running, done("t1", Outcome::Failed), NOW + 5);
    assert_eq!(t.job.job.state, Failed);
    assert!(matches!(t.cascade, Some(Cascade::CancelShards { ref run, .. }) if run == "mr-1-m-"));
}

#[test]
fn the_reduce_step_runs_once_after_the_children_and_its_outcome_is_the_jobs() {
    let running = mapping(true);
    let mut ok = report("t1", Outcome::Success);
    ok.mapped = 2;
    let waiting = run(&running, Event::Complete(ok), NOW + 5).job;
    let progress = ShardProgress {
        succeeded: 1,
        failed: 1,
        ..ShardProgress::default()
    };
    let t = run(&waiting, Event::ShardsEnded(progress), NOW + 6);
    assert_eq!(t.job.job.state, Running);
    let step = &t.fan_out[0].job;
    assert_eq!(step.job_id, "mr-1-m-2");
    assert_eq!(step.map, Some(MapOf::Reduce { children: 2 }));
    assert_eq!(step.spec.task_id, "mr#reduce");
    let reducing = t.job;
    // A late tally of the run (a child's end judged after the step ran) does not end it:
    // only the step's end does, with its outcome.
    let late = ShardProgress {
        succeeded: 2,
        failed: 1,
        ..ShardProgress::default()
    };
    assert_eq!(
        apply(&reducing, Event::ShardsEnded(late), NOW, &exact()).unwrap_err(),
        Refusal::Reducing
    );
    // The step runs and ends: its end names the job and its outcome.
    let leased = run(&StoredJob::new(step.clone()), claim("t2"), NOW + 7).job;
    let mut out = report("t2", Outcome::Success);
    out.message = "total 42".into();
    let t = run(&leased, Event::Complete(out), NOW + 8);
    let Some(Cascade::ReduceEnded {
        parent,
        outcome,
        message,
    }) = t.cascade
    else {
        panic!("{:?}", t.cascade)
    };
    assert_eq!((parent.as_str(), outcome), ("mr", Outcome::Success));
    let t = run(&reducing, Event::ReduceEnded { outcome, message }, NOW + 9);
    assert_eq!(t.job.job.state, Succeeded);
    assert_eq!(
        t.job.job.last_message.as_deref(),
        Some("reduce SUCCESS after 2 children (1 succeeded, 1 failed): total 42")
    );
}
