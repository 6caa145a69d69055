//! The plan's table: every observation a reconcile can make, and what it does.

use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::conditions::Wanted;
use crate::crd::{JobPhase, NodeRole};
use crate::fixtures::{job, nodegroup, tracker_job};

fn cluster() -> Vec<NodeGroup> {
    vec![
        nodegroup("tracker", NodeRole::JobTracker),
        nodegroup("mailers", NodeRole::TaskTracker),
    ]
}

/// The resource's tracker job in `state`, with the spec the resource submits.
fn tracked(id: &str, state: JobState) -> lts_core::Job {
    let spec = convert::to_lts_spec(&job("mail")).unwrap();
    lts_core::Job {
        state,
        ..tracker_job(id, spec)
    }
}

fn hash() -> String {
    spec_hash(&convert::to_lts_spec(&job("mail")).unwrap())
}

fn submitted_condition(status: bool, reason: &str) -> Vec<Wanted> {
    vec![Wanted::new("Submitted", status, reason.to_string(), "m")]
}

/// The status a resource had after a round: its job `id` in `phase`, submitted with the
/// current spec (`same_hash`) or an older one, written for generation `written`.
fn status(id: Option<&str>, phase: JobPhase, same_hash: bool, written: i64) -> JobStatus {
    JobStatus {
        observed_generation: Some(written),
        phase: Some(phase),
        job_id: id.map(str::to_string),
        submitted_hash: Some(if same_hash { hash() } else { "old".into() }),
        conditions: conditions::merge(
            &[],
            &submitted_condition(true, "Accepted"),
            Some(written),
            Timestamp::UNIX_EPOCH,
        ),
        ..JobStatus::default()
    }
}

fn with(status: Option<JobStatus>, generation: i64, suspend: bool) -> Job {
    let mut j = job("mail").finalized();
    j.metadata.generation = Some(generation);
    j.spec.suspend = suspend;
    j.status = status;
    j
}

fn observed(j: &Job, due: bool, tracker: Tracker) -> Observed {
    Observed {
        tracker,
        ..Observed::new(j, &cluster(), due)
    }
}

#[test]
fn due_when_the_spec_changed_the_timer_ran_out_or_never_read() {
    let every = Duration::from_secs(30);
    let written = with(
        Some(status(Some("J1"), JobPhase::Queued, true, 1)),
        1,
        false,
    );
    let edited = with(
        Some(status(Some("J1"), JobPhase::Queued, true, 1)),
        2,
        false,
    );
    let new = with(None, 1, false);
    let s = Duration::from_secs;
    for (j, since, due) in [
        (&written, Some(s(1)), false),
        (&written, Some(s(29)), false),
        (&written, Some(s(30)), true),
        (&written, None, true),
        (&edited, Some(s(1)), true),
        (&new, Some(s(1)), true),
    ] {
        assert_eq!(
            is_due(j, since, every),
            due,
            "{:?} {since:?}",
            j.metadata.generation
        );
    }
}

#[test]
fn fetch_reads_only_a_known_due_unchanged_unfinished_job() {
    use JobPhase::*;
    let by_id = Some(JobKey::Id("J1".into()));
    let cached = Tracker::Current(tracked("J1", JobState::Running));
    // (status, generation, due, what the watch delivered) → the Get
    let cases: Vec<(Option<JobStatus>, bool, Tracker, Option<JobKey>)> = vec![
        // A new Job: submit first, never a Get.
        (None, true, Tracker::Unasked, None),
        // Its own status write, nothing due: no call.
        (
            Some(status(Some("J1"), Queued, true, 1)),
            false,
            Tracker::Unasked,
            None,
        ),
        // Due (timer, spec edit, restart): one Get.
        (
            Some(status(Some("J1"), Queued, true, 1)),
            true,
            Tracker::Unasked,
            by_id.clone(),
        ),
        (
            Some(status(Some("J1"), Suspended, true, 1)),
            true,
            Tracker::Unasked,
            by_id.clone(),
        ),
        // The watch delivered it: no call.
        (
            Some(status(Some("J1"), Queued, true, 1)),
            true,
            cached.clone(),
            None,
        ),
        // A changed spec: the replacing submit answers.
        (
            Some(status(Some("J1"), Queued, false, 1)),
            true,
            Tracker::Unasked,
            None,
        ),
        // Finished: never asked again.
        (
            Some(status(Some("J1"), Succeeded, true, 1)),
            true,
            Tracker::Unasked,
            None,
        ),
        (
            Some(status(Some("J1"), Failed, false, 1)),
            true,
            Tracker::Unasked,
            None,
        ),
        // Blocked before any submit (no job id).
        (
            Some(status(None, Pending, true, 1)),
            true,
            Tracker::Unasked,
            None,
        ),
    ];
    for (i, (st, due, tracker, want)) in cases.into_iter().enumerate() {
        let j = with(st, 1, false);
        assert_eq!(fetch(&j, &observed(&j, due, tracker)), want, "case {i}");
    }
    // Without a cluster nothing is asked.
    let j = with(Some(status(Some("J1"), Queued, true, 1)), 1, false);
    let mut obs = observed(&j, true, Tracker::Unasked);
    obs.cluster = Err(Problem::new("ClusterNotFound", "none"));
    assert_eq!(fetch(&j, &obs), None);
}

#[test]
fn fetch_when_deleting_looks_the_job_up_by_task_id_only_without_an_id() {
    use JobPhase::*;
    let by_task = Some(JobKey::Task {
        node_group: "mailers".into(),
        task_id: "k8s-0b6f3c1e-uid".into(),
    });
    for (st, want) in [
        (None, by_task.clone()),
        (Some(status(None, Pending, true, 1)), by_task),
        (Some(status(Some("J1"), Queued, true, 1)), None),
        (Some(status(Some("J1"), Succeeded, true, 1)), None),
    ] {
        let j = with(st, 1, false).deleting();
        assert_eq!(fetch(&j, &observed(&j, false, Tracker::Unasked)), want);
    }
}

/// One row of the plan table: the Job's status and spec flags, what is known, the step.
struct Row {
    name: &'static str,
    status: Option<JobStatus>,
    generation: i64,
    suspend: bool,
    due: bool,
    tracker: Tracker,
    submission: Option<Submission>,
    refused: bool,
    requested: bool,
    want: Plan,
}

fn row(name: &'static str, status: Option<JobStatus>, tracker: Tracker, want: Plan) -> Row {
    Row {
        name,
        status,
        generation: 1,
        suspend: false,
        due: false,
        tracker,
        submission: None,
        refused: false,
        requested: false,
        want,
    }
}

impl Row {
    fn suspend(mut self) -> Row {
        self.suspend = true;
        self.generation = 2;
        self.due = true;
        self
    }
    fn due(mut self) -> Row {
        self.due = true;
        self
    }
    fn generation(mut self, g: i64) -> Row {
        self.generation = g;
        self
    }
    fn submitted(mut self, s: Submission) -> Row {
        self.submission = Some(s);
        self
    }
    fn refused(mut self) -> Row {
        self.refused = true;
        self
    }
    fn requested(mut self) -> Row {
        self.requested = true;
        self
    }
}

fn refused_status(reason: &str, generation: i64) -> JobStatus {
    JobStatus {
        observed_generation: Some(generation),
        phase: Some(JobPhase::Pending),
        conditions: conditions::merge(
            &[],
            &submitted_condition(false, reason),
            Some(generation),
            Timestamp::UNIX_EPOCH,
        ),
        ..JobStatus::default()
    }
}

#[test]
fn plan_table() {
    use JobPhase::*;
    use JobState as S;
    use Tracker::*;
    let q = |id: &str, ph, same| Some(status(Some(id), ph, same, 1));
    let cur = |s| Current(tracked("J1", s));
    let mut foreign = tracked("J9", S::Queued);
    foreign
        .spec
        .params
        .insert(convert::PARAM_UID.into(), "someone-else".into());
    let mut older = tracked("J1", S::Queued);
    older.spec.priority = 99;
    let sus = |id: &str| Plan::Suspend(id.into());
    let res = |id: &str| Plan::Resume(id.into());
    let rows = vec![
        // A new Job: submitted straight away, whatever is due.
        row("new", None, Unasked, Plan::Submit).due(),
        row("new, not due", None, Unasked, Plan::Submit),
        row("new, suspended", None, Unasked, Plan::Submit).suspend(),
        // Submitted this round: follow the answer.
        row("accepted", None, cur(S::Queued), Plan::Nothing).submitted(Submission::Accepted),
        row("accepted, suspend", None, cur(S::Queued), sus("J1"))
            .submitted(Submission::Accepted)
            .suspend(),
        // A "duplicate" answer: ours with this spec → adopt; ours with another → replace;
        // someone else's → refuse.
        row(
            "duplicate, ours",
            None,
            Taken(tracked("J1", S::Running)),
            Plan::Adopt,
        ),
        row(
            "duplicate, ours, older spec",
            None,
            Taken(older),
            Plan::Replace,
        ),
        row(
            "duplicate, foreign",
            None,
            Taken(foreign.clone()),
            Plan::Blocked(Problem::new("TaskIdConflict", "")),
        ),
        row("adopted", None, cur(S::Running), Plan::Nothing).submitted(Submission::Adopted),
        row("adopted, suspend", None, cur(S::Running), sus("J1"))
            .submitted(Submission::Adopted)
            .suspend(),
        row(
            "rejected",
            None,
            Rejected("spec.priority: bad".into()),
            Plan::Blocked(Problem::new("InvalidSpec", "")),
        ),
        // Refused before at this generation: not again until due.
        row(
            "conflict written",
            Some(refused_status("TaskIdConflict", 1)),
            Unasked,
            Plan::Nothing,
        ),
        row(
            "conflict written, due",
            Some(refused_status("TaskIdConflict", 1)),
            Unasked,
            Plan::Submit,
        )
        .due(),
        row(
            "rejected written, edited",
            Some(refused_status("InvalidSpec", 1)),
            Unasked,
            Plan::Submit,
        )
        .generation(2),
        row(
            "no cluster before",
            Some(refused_status("ClusterNotFound", 1)),
            Unasked,
            Plan::Submit,
        ),
        // A known job, spec unchanged: nothing, or suspend / resume as the spec says.
        row(
            "own status write",
            q("J1", Queued, true),
            Unasked,
            Plan::Nothing,
        ),
        row(
            "due, queued",
            q("J1", Queued, true),
            cur(S::Queued),
            Plan::Nothing,
        )
        .due(),
        row(
            "watched, running",
            q("J1", Queued, true),
            cur(S::Running),
            Plan::Nothing,
        ),
        row(
            "suspend, queued",
            q("J1", Queued, true),
            cur(S::Queued),
            sus("J1"),
        )
        .suspend(),
        row(
            "suspend, running",
            q("J1", Running, true),
            cur(S::Running),
            sus("J1"),
        )
        .suspend(),
        row(
            "suspend, suspended",
            q("J1", Suspended, true),
            cur(S::Suspended),
            Plan::Nothing,
        )
        .suspend(),
        row(
            "suspend, finished meanwhile",
            q("J1", Running, true),
            cur(S::Succeeded),
            Plan::Nothing,
        )
        .suspend(),
        row(
            "suspend refused",
            q("J1", Queued, true),
            cur(S::Queued),
            Plan::Nothing,
        )
        .suspend()
        .refused(),
        row(
            "suspend sent, still running",
            q("J1", Running, true),
            cur(S::Running),
            Plan::Nothing,
        )
        .suspend()
        .requested(),
        row(
            "resume",
            q("J1", Suspended, true),
            cur(S::Suspended),
            res("J1"),
        )
        .generation(2),
        row(
            "resume sent",
            q("J1", Suspended, true),
            cur(S::Suspended),
            Plan::Nothing,
        )
        .generation(2)
        .requested(),
        row(
            "resume, not yet read",
            q("J1", Suspended, true),
            Unasked,
            Plan::Nothing,
        ),
        row(
            "lost",
            q("J1", Queued, true),
            Missing,
            Plan::Blocked(Problem::new("JobNotFound", "")),
        )
        .due(),
        // A changed spec replaces, finished or not; a finished unchanged one rests.
        row("edited", q("J1", Queued, false), Unasked, Plan::Replace).generation(2),
        row(
            "edited, finished",
            q("J1", Failed, false),
            Unasked,
            Plan::Replace,
        ),
        row("finished", q("J1", Succeeded, true), Unasked, Plan::Nothing).due(),
        row(
            "cancelled",
            q("J1", Cancelled, true),
            Unasked,
            Plan::Nothing,
        )
        .suspend(),
        row(
            "replaced",
            q("J1", Queued, false),
            cur(S::Queued),
            Plan::Nothing,
        )
        .submitted(Submission::Replaced),
        row(
            "replaced, suspend",
            q("J1", Queued, false),
            cur(S::Queued),
            sus("J1"),
        )
        .submitted(Submission::Replaced)
        .suspend(),
    ];
    for r in rows {
        let j = with(r.status, r.generation, r.suspend);
        let mut obs = observed(&j, r.due, r.tracker);
        obs.submission = r.submission;
        if r.submission.is_some() && obs.job_id.is_none() {
            obs.job_id = Some("J1".into());
        }
        obs.refused = r.refused.then(|| "suspend: finished".into());
        obs.requested = r.requested;
        let got = plan(&j, &obs);
        match (&got, &r.want) {
            (Plan::Blocked(a), Plan::Blocked(b)) => {
                assert_eq!(a.reason, b.reason, "{}", r.name)
            }
            _ => assert_eq!(got, r.want, "{}", r.name),
        }
    }
}

#[test]
fn a_problem_on_this_side_comes_first_cluster_before_spec() {
    let mut bad = with(None, 1, false);
    bad.spec.max_retries = -1;
    let mut obs = observed(&bad, true, Tracker::Unasked);
    let problem = target(&obs).unwrap_err();
    assert_eq!(problem.reason, "InvalidSpec");
    assert_eq!(plan(&bad, &obs), Plan::Blocked(problem));
    assert_eq!(then(&obs), Action::await_change());
    obs.cluster = Err(Problem::new("AmbiguousCluster", "two"));
    assert_eq!(
        plan(&bad, &obs),
        Plan::Blocked(Problem::new("AmbiguousCluster", "two"))
    );
    assert_eq!(then(&obs), Action::requeue(CLUSTER_RETRY));
}

/// Every combination of spec flags (suspend, edited), status (none, refused, each phase,
/// submitted with this spec or an older one), what is due, what the tracker said and
/// whether this round submitted: the rules that must hold in each.
#[test]
fn plan_rules_hold_for_every_combination() {
    use JobPhase::*;
    use JobState as S;
    let mut foreign = tracked("J9", S::Queued);
    foreign
        .spec
        .params
        .insert(convert::PARAM_UID.into(), "someone-else".into());
    let mut older = tracked("J1", S::Queued);
    older.spec.priority = 99;
    let mut trackers = vec![
        Tracker::Unasked,
        Tracker::Missing,
        Tracker::Taken(tracked("J1", S::Queued)),
        Tracker::Taken(older),
        Tracker::Taken(foreign),
        Tracker::Rejected("spec.priority: bad".into()),
    ];
    for s in [
        S::Queued,
        S::Running,
        S::Suspended,
        S::Succeeded,
        S::Failed,
        S::Cancelled,
    ] {
        trackers.push(Tracker::Current(tracked("J1", s)));
    }
    let mut statuses = vec![
        None,
        Some(refused_status("TaskIdConflict", 1)),
        Some(refused_status("InvalidSpec", 1)),
        Some(refused_status("ClusterNotFound", 1)),
    ];
    for phase in [
        Pending, Queued, Running, Suspended, Succeeded, Failed, Cancelled,
    ] {
        for same in [true, false] {
            statuses.push(Some(status(Some("J1"), phase, same, 1)));
        }
    }
    let mut n = 0;
    for st in &statuses {
        for generation in [1, 2] {
            for suspend in [false, true] {
                for due in [false, true] {
                    for tracker in &trackers {
                        for submission in [None, Some(Submission::Accepted)] {
                            for (refused, requested) in
                                [(false, false), (true, false), (false, true)]
                            {
                                n += 1;
                                let j = with(st.clone(), generation, suspend);
                                let mut obs = observed(&j, due, tracker.clone());
                                obs.submission = submission;
                                if submission.is_some() {
                                    obs.job_id = Some("J1".into());
                                }
                                obs.refused = refused.then(|| "suspend: no".into());
                                obs.requested = requested;
                                check(&j, &obs, &plan(&j, &obs));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(n > 5_000, "{n} combinations");
}

/// The rules of one plan: the step follows from what is known, never repeats a submit in a
/// round, and asks nothing when nothing is due and nothing arrived.
fn check(j: &Job, obs: &Observed, got: &Plan) {
    let st = j.status.clone().unwrap_or_default();
    let hash = obs.spec.as_ref().unwrap().hash.clone();
    let unchanged = st.submitted_hash.as_deref() == Some(hash.as_str());
    let final_status = convert::is_final(st.phase);
    let ctx = format!("{st:?} {obs:?} suspend={} → {got:?}", j.spec.suspend);
    match got {
        Plan::Submit => {
            assert!(obs.submission.is_none() && obs.job_id.is_none(), "{ctx}");
            assert!(!(final_status && unchanged), "{ctx}");
        }
        Plan::Replace => {
            assert!(
                obs.submission.is_none(),
                "no second submit in a round: {ctx}"
            );
            let older_found =
                matches!(&obs.tracker, Tracker::Taken(t) if spec_hash(&t.spec) != hash);
            assert!(older_found || (obs.job_id.is_some() && !unchanged), "{ctx}");
        }
        Plan::Adopt => {
            assert!(obs.submission.is_none(), "{ctx}");
            assert!(
                matches!(&obs.tracker, Tracker::Taken(t) if owned_by(t, "0b6f3c1e-uid") && spec_hash(&t.spec) == hash),
                "{ctx}"
            );
        }
        Plan::Suspend(id) => {
            assert!(
                j.spec.suspend && obs.refused.is_none() && !obs.requested,
                "{ctx}"
            );
            assert_eq!(Some(id), obs.job_id.as_ref(), "{ctx}");
            assert!(
                matches!(&obs.tracker, Tracker::Current(t) if !t.state.is_final() && t.state != JobState::Suspended),
                "{ctx}"
            );
        }
        Plan::Resume(id) => {
            assert!(!j.spec.suspend && !obs.requested, "{ctx}");
            assert_eq!(Some(id), obs.job_id.as_ref(), "{ctx}");
            assert!(
                matches!(&obs.tracker, Tracker::Current(t) if t.state == JobState::Suspended),
                "{ctx}"
            );
        }
        Plan::Cancel(_) => panic!("cancel only when deleting: {ctx}"),
        Plan::Blocked(p) => match p.reason {
            "TaskIdConflict" => assert!(
                matches!(&obs.tracker, Tracker::Taken(t) if !owned_by(t, "0b6f3c1e-uid")),
                "{ctx}"
            ),
            "InvalidSpec" => assert!(matches!(obs.tracker, Tracker::Rejected(_)), "{ctx}"),
            "JobNotFound" => assert!(obs.tracker == Tracker::Missing, "{ctx}"),
            other => panic!("{other}: {ctx}"),
        },
        Plan::Nothing => {}
    }
    // A round that submitted only follows up on its job (suspend, resume) or stops.
    if obs.submission.is_some() {
        assert!(
            matches!(
                got,
                Plan::Nothing | Plan::Suspend(_) | Plan::Resume(_) | Plan::Blocked(_)
            ),
            "{ctx}"
        );
    }
    // Nothing due, nothing arrived, the job known with this spec: no tracker call at all.
    if !obs.due && obs.tracker == Tracker::Unasked && obs.job_id.is_some() && unchanged {
        assert_eq!(got, &Plan::Nothing, "{ctx}");
        assert_eq!(fetch(j, obs), None, "{ctx}");
    }
    // A Get is only ever made when due.
    if fetch(j, obs).is_some() {
        assert!(obs.due, "{ctx}");
    }
}

#[test]
fn plan_when_deleting() {
    use JobPhase::*;
    use JobState as S;
    use Tracker::*;
    let cancel = Plan::Cancel("J1".into());
    for (name, st, job_id, tracker, want) in [
        (
            "known id",
            Some(status(Some("J1"), Queued, true, 1)),
            Some("J1"),
            Unasked,
            cancel.clone(),
        ),
        (
            "suspended",
            Some(status(Some("J1"), Suspended, true, 1)),
            Some("J1"),
            Unasked,
            cancel.clone(),
        ),
        (
            "found by task id",
            None,
            Some("J1"),
            Current(tracked("J1", S::Queued)),
            cancel.clone(),
        ),
        (
            "nothing under the task id",
            None,
            None,
            Missing,
            Plan::Nothing,
        ),
        (
            "finished",
            Some(status(Some("J1"), Succeeded, true, 1)),
            Some("J1"),
            Unasked,
            Plan::Nothing,
        ),
        (
            "cancelled now",
            Some(status(Some("J1"), Queued, true, 1)),
            Some("J1"),
            Current(tracked("J1", S::Cancelled)),
            Plan::Nothing,
        ),
        (
            "gone meanwhile",
            Some(status(Some("J1"), Queued, true, 1)),
            Some("J1"),
            Missing,
            Plan::Nothing,
        ),
    ] {
        let j = with(st, 1, false).deleting();
        let mut obs = observed(&j, false, tracker);
        obs.job_id = job_id.map(str::to_string);
        assert_eq!(plan(&j, &obs), want, "{name}");
        obs.requested = true;
        assert_eq!(
            plan(&j, &obs),
            Plan::Nothing,
            "{name}: cancelled once a round"
        );
        obs.requested = false;
        obs.cluster = Err(Problem::new("ClusterNotFound", "gone"));
        assert_eq!(
            plan(&j, &obs),
            Plan::Nothing,
            "{name}: no cluster to cancel on"
        );
    }
}

#[test]
fn adopting_takes_the_found_job() {
    let j = with(None, 1, false);
    let mut obs = observed(&j, true, Tracker::Taken(tracked("J7", JobState::Running)));
    obs.adopt();
    assert_eq!(obs.job_id.as_deref(), Some("J7"));
    assert_eq!(obs.submission, Some(Submission::Adopted));
    assert_eq!(
        obs.tracker,
        Tracker::Current(tracked("J7", JobState::Running))
    );
    // Nothing found: nothing adopted.
    let mut obs = observed(&j, true, Tracker::Unasked);
    obs.adopt();
    assert_eq!((obs.job_id, obs.submission), (None, None));
}

#[test]
fn next_look() {
    use JobPhase::*;
    let s = Duration::from_secs;
    let queued = status(Some("J1"), Queued, true, 1);
    assert_eq!(
        super::next_look(&queued, s(30), None),
        Action::requeue(s(30))
    );
    assert_eq!(
        super::next_look(&queued, s(30), Some(s(20))),
        Action::requeue(s(10))
    );
    assert_eq!(
        super::next_look(&queued, s(30), Some(s(40))),
        Action::requeue(s(1))
    );
    for rests in [
        status(Some("J1"), Succeeded, true, 1),
        status(Some("J1"), Cancelled, true, 1),
        refused_status("TaskIdConflict", 1),
        JobStatus {
            conditions: conditions::merge(
                &queued.conditions,
                &[Wanted::new("Submitted", false, "JobNotFound", "")],
                Some(1),
                Timestamp::UNIX_EPOCH,
            ),
            ..queued.clone()
        },
    ] {
        assert_eq!(
            super::next_look(&rests, s(30), None),
            Action::await_change()
        );
    }
    assert_eq!(refresh_every(true), WATCHED_REFRESH);
    assert_eq!(refresh_every(false), FALLBACK_REFRESH);
}
