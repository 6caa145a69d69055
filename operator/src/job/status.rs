//! The Job's new status, as a pure function of the resource, what its round observed and how
//! the round ended ([`Ending`]).
//!
//! * **Settled** with the tracker's job at hand: its state mirrored (phase, job and task id,
//!   runs, fire times), the submitted fingerprint, `Submitted=True` with how it got there and
//!   `Synced=True` (`Mirrored`), or `Synced=False` (`SuspendRefused`).
//! * **Settled** without asking the tracker (nothing was due): the status as it was, with only
//!   what the watch delivered (a recurring job's newest fire) and `observedGeneration`.
//! * **Blocked** on a problem: `Submitted=False` with its reason; `Pending` while no tracker job
//!   is known.
//! * **Failed**: `Synced=False` with `TrackerUnavailable` (worth retrying) or `TrackerError`;
//!   `Pending` while no tracker job is known.
//!
//! Conditions keep their `lastTransitionTime` while their status stays.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use lts_worker_sdk::ClientError;

use super::convert::{self, Problem};
use super::plan::{Observed, Tracker};
use crate::conditions::{self, Wanted};
use crate::crd::{Job, JobPhase, JobStatus};
use crate::nodegroup::validate::service_address;

/// How a round ended.
#[derive(Debug)]
pub enum Ending {
    /// The plan has nothing more to do.
    Settled,
    /// The Job cannot go further until the user acts.
    Blocked(Problem),
    /// A tracker call failed; the round is retried with backoff.
    Failed(ClientError),
}

/// The status of `job` after a round that observed `obs` and ended as `ending`, at `now`.
pub fn status(job: &Job, obs: &Observed, ending: &Ending, now: Timestamp) -> JobStatus {
    let previous = job.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = job.metadata.generation;
    if let Ok(c) = &obs.cluster {
        status.cluster = Some(c.cluster.clone());
    }
    let wanted = match ending {
        Ending::Blocked(problem) => {
            if status.job_id.is_none() {
                status.phase = Some(JobPhase::Pending);
            }
            vec![Wanted::new(
                "Submitted",
                false,
                problem.reason,
                problem.message.clone(),
            )]
        }
        Ending::Failed(e) => {
            if status.job_id.is_none() {
                status.phase = Some(JobPhase::Pending);
            }
            let reason = if e.is_retryable() {
                "TrackerUnavailable"
            } else {
                "TrackerError"
            };
            let place = match &obs.cluster {
                Ok(c) => format!(
                    "cluster {} at {}",
                    c.cluster,
                    service_address(&c.job_tracker, &job.namespace().unwrap_or_default())
                ),
                Err(_) => "the cluster".into(),
            };
            vec![Wanted::new(
                "Synced",
                false,
                reason,
                format!("{place}: {e}"),
            )]
        }
        Ending::Settled => match &obs.tracker {
            Tracker::Current(current) => {
                convert::mirror(&mut status, current);
                if let Ok(target) = &obs.spec {
                    status.submitted_hash = Some(target.hash.clone());
                }
                let how = obs
                    .submission
                    .map(|s| s.reason().to_string())
                    .unwrap_or_else(|| {
                        conditions::find(&previous.conditions, "Submitted")
                            .filter(|c| c.status == "True")
                            .map(|c| c.reason.clone())
                            .unwrap_or_else(|| "Submitted".into())
                    });
                let cluster = obs.cluster.as_ref().map(|c| c.cluster.as_str());
                vec![
                    Wanted::new(
                        "Submitted",
                        true,
                        how,
                        format!(
                            "job {} (task {}) on cluster {}",
                            current.job_id,
                            current.spec.task_id,
                            cluster.unwrap_or_default()
                        ),
                    ),
                    match &obs.refused {
                        Some(why) => Wanted::new("Synced", false, "SuspendRefused", why.clone()),
                        None => Wanted::new(
                            "Synced",
                            true,
                            "Mirrored",
                            format!("status mirrors the tracker's job {}", current.job_id),
                        ),
                    },
                ]
            }
            // Nothing new from the tracker: the Conditions stand.
            _ => vec![],
        },
    };
    if let Some(instance) = &obs.instance
        && convert::is_instance_of(instance, &job.uid().unwrap_or_default())
        && status.job_id.as_ref() != Some(&instance.job_id)
    {
        convert::mirror_instance(&mut status, instance);
    }
    let uid = job.uid().unwrap_or_default();
    let nodes: Vec<lts_core::Job> = obs
        .nodes
        .iter()
        .filter(|n| convert::owned_by(n, &uid))
        .cloned()
        .collect();
    convert::mirror_nodes(&mut status, &nodes);
    if !wanted.is_empty() {
        status.conditions = crate::reconcile::conditions(job, &wanted, now);
    }
    status
}

/// The Event telling the story of a change from `before` to `after`: Submitted, Started,
/// Retrying, Succeeded, Failed (a Warning, with the message), Suspended, Resumed, Cancelled.
/// `None` when nothing happened worth telling. Pure.
pub fn lifecycle_event(
    before: &JobStatus,
    after: &JobStatus,
) -> Option<(bool, &'static str, String)> {
    let job = after.job_id.as_deref().unwrap_or("?");
    let attempts = after.attempts.unwrap_or(0);
    let message = after
        .last_message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let result = after.last_result.as_deref().unwrap_or("");
    let same_run =
        before.attempts == after.attempts && before.last_fire_time == after.last_fire_time;
    let phase = after.phase?;
    if before.phase == Some(phase) && same_run {
        return None;
    }
    let retryable = matches!(result, "LATER" | "EXCEPTION" | "TIMEOUT");
    let event = match (before.phase, phase) {
        (None | Some(JobPhase::Pending), JobPhase::Queued) if before.job_id.is_none() => (
            false,
            "Submitted",
            format!(
                "job {job} accepted by cluster {}",
                after.cluster.as_deref().unwrap_or("?")
            ),
        ),
        (_, JobPhase::Running) => (
            false,
            "Started",
            format!("job {job}: run {attempts} started"),
        ),
        (b, JobPhase::Queued) if retryable && (b == Some(JobPhase::Running) || !same_run) => (
            false,
            "Retrying",
            format!("job {job}: run {attempts} ended {result}{message}; it runs again"),
        ),
        (Some(JobPhase::Suspended), JobPhase::Queued) => {
            (false, "Resumed", format!("job {job} resumed"))
        }
        (Some(JobPhase::Succeeded), JobPhase::Succeeded) => return None,
        (_, JobPhase::Succeeded) => (
            false,
            "Succeeded",
            format!(
                "job {job} succeeded after {attempts} run(s){}",
                after
                    .duration
                    .as_deref()
                    .map(|d| format!(" in {d}"))
                    .unwrap_or_default()
            ),
        ),
        (Some(JobPhase::Failed), JobPhase::Failed) => return None,
        (_, JobPhase::Failed) => (
            true,
            "Failed",
            format!("job {job} failed after {attempts} run(s), last {result}{message}"),
        ),
        (_, JobPhase::Suspended) => (false, "Suspended", format!("job {job} suspended")),
        (_, JobPhase::Cancelled) => (false, "Cancelled", format!("job {job} cancelled")),
        _ => return None,
    };
    Some(event)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use lts_core::JobState;

    use super::*;
    use crate::crd::{NodeGroup, NodeRole};
    use crate::fixtures::{job, nodegroup, tracker_job};
    use crate::job::plan::Submission;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn cluster() -> Vec<NodeGroup> {
        vec![
            nodegroup("tracker", NodeRole::JobTracker),
            nodegroup("mailers", NodeRole::TaskTracker),
        ]
    }

    fn tracked(id: &str, state: JobState) -> lts_core::Job {
        let spec = convert::to_lts_spec(&job("mail")).unwrap();
        lts_core::Job {
            state,
            ..tracker_job(id, spec)
        }
    }

    fn obs(j: &Job, tracker: Tracker) -> Observed {
        Observed {
            tracker,
            ..Observed::new(j, &cluster(), false)
        }
    }

    fn cond<'a>(s: &'a JobStatus, type_: &str) -> (&'a str, &'a str) {
        let c = conditions::find(&s.conditions, type_).unwrap_or_else(|| panic!("{type_}"));
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn each_step_of_a_jobs_life_tells_its_event_once() {
        let st = |phase: Option<JobPhase>, attempts: i64, result: Option<&str>| JobStatus {
            phase,
            job_id: Some("J1".into()),
            cluster: Some("prod".into()),
            attempts: Some(attempts),
            last_result: result.map(str::to_string),
            last_message: result.map(|_| "disk full".to_string()),
            ..JobStatus::default()
        };
        let pending = JobStatus {
            phase: Some(JobPhase::Pending),
            ..JobStatus::default()
        };
        let queued = st(Some(JobPhase::Queued), 0, None);
        let running = st(Some(JobPhase::Running), 1, None);
        let retry = st(Some(JobPhase::Queued), 1, Some("LATER"));
        let running2 = st(Some(JobPhase::Running), 2, Some("LATER"));
        let mut done = st(Some(JobPhase::Succeeded), 2, Some("SUCCESS"));
        done.duration = Some("12s".into());
        let failed = st(Some(JobPhase::Failed), 3, Some("FAILED"));
        let reason = |b: &JobStatus, a: &JobStatus| lifecycle_event(b, a).map(|e| (e.0, e.1));
        assert_eq!(reason(&pending, &queued), Some((false, "Submitted")));
        assert_eq!(reason(&queued, &running), Some((false, "Started")));
        assert_eq!(reason(&running, &retry), Some((false, "Retrying")));
        assert_eq!(reason(&retry, &running2), Some((false, "Started")));
        assert_eq!(reason(&running2, &done), Some((false, "Succeeded")));
        assert!(
            lifecycle_event(&running2, &done)
                .unwrap()
                .2
                .contains("in 12s")
        );
        assert_eq!(reason(&running2, &failed), Some((true, "Failed")));
        assert!(
            lifecycle_event(&running2, &failed)
                .unwrap()
                .2
                .contains("disk full")
        );
        // Nothing new: nothing told.
        for s in [&queued, &running, &retry, &done, &failed] {
            assert_eq!(reason(s, s), None);
        }
        let suspended = st(Some(JobPhase::Suspended), 0, None);
        assert_eq!(reason(&queued, &suspended), Some((false, "Suspended")));
        assert_eq!(reason(&suspended, &queued), Some((false, "Resumed")));
        let cancelled = st(Some(JobPhase::Cancelled), 0, None);
        assert_eq!(reason(&queued, &cancelled), Some((false, "Cancelled")));
    }

    /// A round that submitted, then the reconcile caused by its own status write.
    #[test]
    fn settled_rounds_mirror_the_tracker_or_keep_the_status() {
        let new = job("mail");
        let mut o = obs(&new, Tracker::Current(tracked("J1", JobState::Queued)));
        o.job_id = Some("J1".into());
        o.submission = Some(Submission::Accepted);
        let first = status(&new, &o, &Ending::Settled, t(10));
        assert_eq!(first.phase, Some(JobPhase::Queued));
        assert_eq!(first.job_id.as_deref(), Some("J1"));
        assert_eq!(first.task_id.as_deref(), Some("k8s-0b6f3c1e-uid"));
        assert_eq!(first.cluster.as_deref(), Some("prod"));
        assert_eq!(first.observed_generation, Some(1));
        assert_eq!(first.submitted_hash, Some(o.spec.clone().unwrap().hash));
        assert!(first.next_fire_time.is_some());
        assert_eq!(cond(&first, "Submitted"), ("True", "Accepted"));
        assert_eq!(cond(&first, "Synced"), ("True", "Mirrored"));
        let msg = &conditions::find(&first.conditions, "Submitted")
            .unwrap()
            .message;
        assert_eq!(msg, "job J1 (task k8s-0b6f3c1e-uid) on cluster prod");

        // Its own status write: nothing asked, the status stands exactly.
        let written = new.clone().with_status(first.clone());
        let again = status(
            &written,
            &obs(&written, Tracker::Unasked),
            &Ending::Settled,
            t(20),
        );
        assert_eq!(again, first);

        // The watch delivers a change: mirrored; Submitted keeps its reason and its time.
        let mut running = tracked("J1", JobState::Running);
        running.attempt = 1;
        let later = status(
            &written,
            &obs(&written, Tracker::Current(running)),
            &Ending::Settled,
            t(30),
        );
        assert_eq!(later.phase, Some(JobPhase::Running));
        assert_eq!(later.attempts, Some(1));
        assert_eq!(cond(&later, "Submitted"), ("True", "Accepted"));
        let submitted = conditions::find(&later.conditions, "Submitted").unwrap();
        assert_eq!(submitted.last_transition_time, Time(t(10)));

        // Read without any status before (adopted reasons are set by the round; a status
        // without one says Submitted).
        let bare = status(
            &new,
            &obs(&new, Tracker::Current(tracked("J1", JobState::Queued))),
            &Ending::Settled,
            t(10),
        );
        assert_eq!(cond(&bare, "Submitted"), ("True", "Submitted"));
        let mut adopted = obs(&new, Tracker::Current(tracked("J1", JobState::Queued)));
        adopted.submission = Some(Submission::Adopted);
        assert_eq!(
            cond(
                &status(&new, &adopted, &Ending::Settled, t(10)),
                "Submitted"
            ),
            ("True", "Adopted")
        );
    }

    #[test]
    fn a_refused_suspend_is_a_synced_false_condition() {
        let j = job("mail").with_status(JobStatus {
            job_id: Some("J1".into()),
            ..JobStatus::default()
        });
        let mut o = obs(&j, Tracker::Current(tracked("J1", JobState::Queued)));
        o.refused = Some("suspend: not now".into());
        let s = status(&j, &o, &Ending::Settled, t(1));
        assert_eq!(cond(&s, "Synced"), ("False", "SuspendRefused"));
        assert_eq!(
            conditions::find(&s.conditions, "Synced").unwrap().message,
            "suspend: not now"
        );
        assert_eq!(s.phase, Some(JobPhase::Queued));
    }

    #[test]
    fn blocked_and_failed_rounds() {
        /// Name, the status's job id, the ending, the Condition it sets and how, the phase.
        type Case = (
            &'static str,
            Option<&'static str>,
            Ending,
            &'static str,
            (&'static str, &'static str),
            JobPhase,
        );
        let cases: Vec<Case> = vec![
            (
                "invalid, new",
                None,
                Ending::Blocked(Problem::new("InvalidSpec", "spec.x: bad")),
                "Submitted",
                ("False", "InvalidSpec"),
                JobPhase::Pending,
            ),
            (
                "lost job",
                Some("J1"),
                Ending::Blocked(Problem::new("JobNotFound", "gone")),
                "Submitted",
                ("False", "JobNotFound"),
                JobPhase::Running,
            ),
            (
                "unreachable, new",
                None,
                Ending::Failed(ClientError::Unavailable("connection refused".into())),
                "Synced",
                ("False", "TrackerUnavailable"),
                JobPhase::Pending,
            ),
            (
                "tracker error, known",
                Some("J1"),
                Ending::Failed(ClientError::FailedPrecondition("boom".into())),
                "Synced",
                ("False", "TrackerError"),
                JobPhase::Running,
            ),
        ];
        for (name, id, ending, type_, want, phase) in cases {
            let j = job("mail").with_status(JobStatus {
                job_id: id.map(str::to_string),
                phase: Some(JobPhase::Running),
                ..JobStatus::default()
            });
            let s = status(&j, &obs(&j, Tracker::Unasked), &ending, t(1));
            assert_eq!(cond(&s, type_), want, "{name}");
            assert_eq!(s.phase, Some(phase), "{name}");
            assert_eq!(s.job_id.as_deref(), id, "{name}");
            assert_eq!(s.observed_generation, Some(1), "{name}");
        }
        let j = job("mail");
        let s = status(
            &j,
            &obs(&j, Tracker::Unasked),
            &Ending::Failed(ClientError::Unavailable("connection refused".into())),
            t(1),
        );
        let c = conditions::find(&s.conditions, "Synced").unwrap();
        assert_eq!(
            c.message,
            "cluster prod at tracker.lts.svc:7070: tracker unavailable: connection refused"
        );
    }

    /// Every combination of previous status, what the tracker said, how the round ended, how
    /// it submitted, a refused suspend and a delivered fire: the rules that must hold in each —
    /// above all, that the reconcile the status write causes (nothing asked, nothing arrived)
    /// builds the very same status, so it writes nothing.
    #[test]
    fn status_rules_hold_for_every_combination() {
        let spec = convert::to_lts_spec(&job("mail")).unwrap();
        let hash = convert::spec_hash(&spec);
        let known = |phase| JobStatus {
            observed_generation: Some(1),
            phase: Some(phase),
            job_id: Some("J1".into()),
            task_id: Some(spec.task_id.clone()),
            submitted_hash: Some(hash.clone()),
            conditions: conditions::merge(
                &[],
                &[
                    Wanted::new("Submitted", true, "Adopted", "m"),
                    Wanted::new("Synced", true, "Mirrored", "m"),
                ],
                Some(1),
                t(1),
            ),
            ..JobStatus::default()
        };
        let refused = JobStatus {
            phase: Some(JobPhase::Pending),
            conditions: conditions::merge(
                &[],
                &[Wanted::new("Submitted", false, "TaskIdConflict", "m")],
                Some(1),
                t(1),
            ),
            ..JobStatus::default()
        };
        let previous = [
            None,
            Some(refused),
            Some(known(JobPhase::Queued)),
            Some(known(JobPhase::Running)),
            Some(known(JobPhase::Suspended)),
            Some(known(JobPhase::Succeeded)),
        ];
        let mut trackers = vec![Tracker::Unasked, Tracker::Missing];
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Suspended,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            trackers.push(Tracker::Current(tracked("J1", s)));
        }
        let endings = || {
            [
                Ending::Settled,
                Ending::Blocked(Problem::new("JobNotFound", "gone")),
                Ending::Failed(ClientError::Unavailable("down".into())),
                Ending::Failed(ClientError::FailedPrecondition("no".into())),
            ]
        };
        let mut fire = tracker_job("I1", lts_core::schedule::instance_spec(&spec, 5_000));
        fire.state = JobState::Running;
        fire.scheduled_fire_ms = Some(5_000);
        fire.instance_of = Some("J1".into());
        let mut n = 0;
        for prev in &previous {
            for generation in [1, 2] {
                for tracker in &trackers {
                    for ending in endings() {
                        for submission in
                            [None, Some(Submission::Accepted), Some(Submission::Adopted)]
                        {
                            for refused in [false, true] {
                                for instance in [None, Some(fire.clone())] {
                                    n += 1;
                                    let mut j = job("mail");
                                    j.metadata.generation = Some(generation);
                                    j.status = prev.clone();
                                    let mut o = obs(&j, tracker.clone());
                                    o.submission = submission;
                                    o.refused = refused.then(|| "suspend: no".into());
                                    o.instance = instance;
                                    check(&j, &o, &ending, &status(&j, &o, &ending, t(50)));
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(n > 2_000, "{n} combinations");
    }

    fn check(j: &Job, o: &Observed, ending: &Ending, s: &JobStatus) {
        let prev = j.status.clone().unwrap_or_default();
        let ctx = format!("{prev:?} {o:?} {ending:?} → {s:?}");
        assert_eq!(s.observed_generation, j.metadata.generation, "{ctx}");
        assert_eq!(s.cluster.as_deref(), Some("prod"), "{ctx}");
        match (ending, &o.tracker) {
            (Ending::Blocked(p), _) => {
                let c = conditions::find(&s.conditions, "Submitted").unwrap();
                assert_eq!(
                    (c.status.as_str(), c.reason.as_str()),
                    ("False", p.reason),
                    "{ctx}"
                );
                assert_eq!(s.job_id, prev.job_id, "{ctx}");
            }
            (Ending::Failed(e), _) => {
                let c = conditions::find(&s.conditions, "Synced").unwrap();
                let reason = if e.is_retryable() {
                    "TrackerUnavailable"
                } else {
                    "TrackerError"
                };
                assert_eq!(
                    (c.status.as_str(), c.reason.as_str()),
                    ("False", reason),
                    "{ctx}"
                );
                assert_eq!(s.job_id, prev.job_id, "{ctx}");
            }
            (Ending::Settled, Tracker::Current(current)) => {
                assert_eq!(s.job_id.as_deref(), Some(current.job_id.as_str()), "{ctx}");
                let synced = conditions::find(&s.conditions, "Synced").unwrap();
                assert_eq!(synced.status == "False", o.refused.is_some(), "{ctx}");
                let submitted = conditions::find(&s.conditions, "Submitted").unwrap();
                assert_eq!(submitted.status, "True", "{ctx}");
                if let Some(how) = o.submission {
                    assert_eq!(submitted.reason, how.reason(), "{ctx}");
                }
            }
            (Ending::Settled, _) => {
                assert_eq!(s.conditions, prev.conditions, "nothing learnt: {ctx}");
                assert_eq!(s.job_id, prev.job_id, "{ctx}");
            }
        }
        if s.job_id.is_none() && !matches!(ending, Ending::Settled) {
            assert_eq!(s.phase, Some(JobPhase::Pending), "{ctx}");
        }
        // A Condition whose status did not change keeps its transition time.
        for c in &s.conditions {
            if let Some(before) = conditions::find(&prev.conditions, &c.type_)
                && before.status == c.status
            {
                assert_eq!(before.last_transition_time, c.last_transition_time, "{ctx}");
            }
        }
        // The reconcile this status write causes: nothing asked, nothing arrived → the same
        // status, so no write.
        let written = Job {
            status: Some(s.clone()),
            ..j.clone()
        };
        let again = status(
            &written,
            &obs(&written, Tracker::Unasked),
            &Ending::Settled,
            t(99),
        );
        assert_eq!(&again, s, "{ctx}");
    }

    #[test]
    fn a_recurring_jobs_newest_fire_reaches_the_status_without_a_call() {
        let mut j = job("mail");
        j.spec.schedule = Some(crate::crd::ScheduleSpec {
            repeat: Some(crate::crd::RepeatSchedule {
                interval_ms: Some(60_000),
                interval: None,
                count: -1,
                first_fire: None,
            }),
            ..Default::default()
        });
        let spec = convert::to_lts_spec(&j).unwrap();
        let j = j.with_status(JobStatus {
            job_id: Some("D".into()),
            phase: Some(JobPhase::Queued),
            ..JobStatus::default()
        });
        let fire = 1_893_456_000_000;
        let mut instance = tracker_job("I1", lts_core::schedule::instance_spec(&spec, fire));
        instance.state = JobState::Running;
        instance.attempt = 1;
        instance.scheduled_fire_ms = Some(fire);
        instance.instance_of = Some("J1".into());
        let mut o = obs(&j, Tracker::Unasked);
        o.instance = Some(instance.clone());
        let s = status(&j, &o, &Ending::Settled, t(1));
        assert_eq!(s.phase, Some(JobPhase::Running));
        assert_eq!(s.attempts, Some(1));
        assert_eq!(
            s.last_fire_time.as_deref(),
            Some("2030-01-01T00:00:00.000Z")
        );
        // Another resource's fire, or the definition itself, is no fire of this one.
        let mut other = instance.clone();
        other
            .spec
            .params
            .insert(convert::PARAM_UID.into(), "other".into());
        o.instance = Some(other);
        assert_eq!(
            status(&j, &o, &Ending::Settled, t(1)).phase,
            Some(JobPhase::Queued)
        );
        let mut itself = instance;
        itself.job_id = "D".into();
        o.instance = Some(itself);
        assert_eq!(
            status(&j, &o, &Ending::Settled, t(1)).phase,
            Some(JobPhase::Queued)
        );
    }
}
