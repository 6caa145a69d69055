//! Job controller scenarios against a mocked API server and a fake tracker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use lts_core::JobState;
use serde_json::json;

use super::*;
use crate::conditions;
use crate::crd::{CronSchedule, NodeRole, ScheduleSpec};
use crate::crd::{JobPhase, JobStatus, NodeGroup};
use crate::fixtures::{
    ApiServerVerifier, Call, FakeApi, FakeTracker, SameTracker, Step, context, finish, job,
    nodegroup, status_of,
};

const JOB: &str = "/apis/lts.io/v1alpha1/namespaces/lts/jobs/mail";
const JOB_STATUS: &str = "/apis/lts.io/v1alpha1/namespaces/lts/jobs/mail/status";

fn cluster() -> Vec<NodeGroup> {
    vec![
        nodegroup("tracker", NodeRole::JobTracker),
        nodegroup("mailers", NodeRole::TaskTracker),
    ]
}

async fn run(job: Job, ctx: Arc<Context>) -> Result<Action> {
    tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(job), ctx))
        .await
        .expect("reconcile made a request the test did not expect")
}

/// Reconciles `job` once: a `Submitted` Event when it has no status yet, then its status;
/// returns the status.
async fn reconcile_to_status(job: Job, tracker: Arc<FakeTracker>) -> (Result<Action>, JobStatus) {
    let events: &[&str] = if job.status.is_none() {
        &["Submitted"]
    } else {
        &[]
    };
    reconcile_expecting(job, tracker, events).await
}

/// Reconciles `job` once: the lifecycle Events `events`, then its status; returns the status.
async fn reconcile_expecting(
    job: Job,
    tracker: Arc<FakeTracker>,
    events: &[&str],
) -> (Result<Action>, JobStatus) {
    let (ctx, api) = context(&cluster(), tracker);
    let mut steps: Vec<Step> = events.iter().map(|_| Step::event()).collect();
    steps.push(Step::status(JOB_STATUS, &job));
    let verifier = api.run(steps);
    let res = run(job, ctx).await;
    let calls = finish(verifier).await;
    for (call, reason) in calls.iter().zip(events) {
        assert_eq!(call.body["reason"].as_str(), Some(*reason), "{}", call.body);
    }
    (res, status_of(&calls[events.len()]))
}

#[tokio::test]
async fn create_adds_the_finalizer_first() {
    let tracker = Arc::new(FakeTracker::default());
    let (ctx, api) = context(&cluster(), tracker.clone());
    let verifier = api.run(vec![Step::json(
        Method::PATCH,
        JOB,
        serde_json::to_value(job("mail").finalized()).unwrap(),
    )]);
    run(job("mail"), ctx).await.unwrap();
    let calls = finish(verifier).await;
    assert!(
        calls[0].body.to_string().contains(FINALIZER),
        "{}",
        calls[0].body
    );
    assert!(
        tracker.ops().is_empty(),
        "nothing is submitted before the finalizer is in place"
    );
}

#[tokio::test]
async fn apply_submits_once_and_mirrors_the_tracker() {
    let tracker = Arc::new(FakeTracker::default());
    let (res, status) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    assert_eq!(res.unwrap(), Action::requeue(FALLBACK_REFRESH));
    assert_eq!(
        tracker.ops(),
        ["submit", "get"],
        "submitted first, then read once"
    );
    assert_eq!(status.phase, Some(JobPhase::Queued));
    assert_eq!(status.job_id.as_deref(), Some("J1"));
    assert_eq!(status.task_id.as_deref(), Some("k8s-0b6f3c1e-uid"));
    assert_eq!(status.cluster.as_deref(), Some("prod"));
    assert_eq!(status.observed_generation, Some(1));
    assert!(status.next_fire_time.is_some());
    let submitted = conditions::find(&status.conditions, "Submitted").unwrap();
    assert_eq!(
        (submitted.status.as_str(), submitted.reason.as_str()),
        ("True", "Accepted")
    );
    let stored = tracker.jobs();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].spec.params[convert::PARAM_UID], "0b6f3c1e-uid");
    assert_eq!(stored[0].spec.submit_node_group, convert::SUBMIT_NODE_GROUP);

    // The next reconcile with that status, in a new operator process (which reads the job
    // once), submits nothing and writes nothing new.
    let (ctx, api) = context(&cluster(), tracker.clone());
    let verifier = api.run(vec![]);
    let again = job("mail").finalized().with_status(JobStatus {
        conditions: status.conditions.clone(),
        ..status.clone()
    });
    run(again, ctx).await.unwrap();
    finish(verifier).await;
    assert_eq!(tracker.ops(), ["submit", "get", "get"]);
}

/// One reconcile of `obj` on `ctx` (the same operator process across rounds), the API
/// answering `steps`; the verifier comes back for the next round.
async fn round(
    obj: Job,
    ctx: &Arc<Context>,
    api: ApiServerVerifier,
    steps: Vec<Step>,
) -> (Action, Vec<Call>, ApiServerVerifier) {
    let verifier = api.round(steps);
    let action = run(obj, ctx.clone()).await.unwrap();
    let (calls, api) = tokio::time::timeout(Duration::from_secs(5), verifier)
        .await
        .expect("the API server saw fewer requests than expected")
        .expect("verifier panicked");
    (action, calls, api)
}

#[tokio::test]
async fn a_reconcile_caused_by_its_own_status_write_asks_the_tracker_nothing() {
    let tracker = Arc::new(FakeTracker::default());
    let (ctx, api) = context(&cluster(), tracker.clone());
    let new = job("mail").finalized();
    // A new Job: submitted, read once, one status write.
    let (action, calls, api) = round(
        new.clone(),
        &ctx,
        api,
        vec![Step::event(), Step::status(JOB_STATUS, &new)],
    )
    .await;
    assert_eq!(action, Action::requeue(FALLBACK_REFRESH));
    assert_eq!(tracker.ops(), ["submit", "get"]);
    assert_eq!(calls[0].body["reason"], "Submitted");

    // That write comes back through the Job watch: same generation, nothing due. No tracker
    // call, no write (the verifier expects no request), and the refresh timer still runs.
    let written = new.clone().with_status(status_of(&calls[1]));
    let (action, _, api) = round(written.clone(), &ctx, api, vec![]).await;
    assert_eq!(tracker.ops(), ["submit", "get"], "no tracker call");
    assert_ne!(action, Action::await_change());

    // A change from the trackers' watch is mirrored without a call, and the reconcile its
    // status write causes asks nothing either.
    let mut running = tracker.jobs()[0].clone();
    running.state = JobState::Running;
    running.attempt = 1;
    tracker.put(running.clone());
    ctx.watches.route(running);
    let (_, calls, api) = round(
        written.clone(),
        &ctx,
        api,
        vec![Step::event(), Step::status(JOB_STATUS, &written)],
    )
    .await;
    assert_eq!(calls[0].body["reason"], "Started");
    let mirrored: JobStatus = status_of(&calls[1]);
    assert_eq!(mirrored.phase, Some(JobPhase::Running));
    let written = written.with_status(mirrored);
    let (_, _, api) = round(written.clone(), &ctx, api, vec![]).await;
    assert_eq!(tracker.ops(), ["submit", "get"], "no tracker call");

    // A spec edit (suspend, generation 2) reads the job and suspends it; the reconcile of its
    // status write asks nothing.
    let mut edited = written.clone();
    edited.spec.suspend = true;
    edited.metadata.generation = Some(2);
    let (_, calls, api) = round(
        edited.clone(),
        &ctx,
        api,
        vec![Step::event(), Step::status(JOB_STATUS, &edited)],
    )
    .await;
    assert_eq!(tracker.ops(), ["submit", "get", "get", "suspend"]);
    assert_eq!(calls[0].body["reason"], "Suspended");
    let suspended: JobStatus = status_of(&calls[1]);
    assert_eq!(suspended.phase, Some(JobPhase::Suspended));
    let edited = edited.with_status(suspended);
    let (_, _, api) = round(edited.clone(), &ctx, api, vec![]).await;
    assert_eq!(tracker.ops().len(), 4, "no tracker call");

    // The refresh timer runs out (FALLBACK_REFRESH: the fake trackers cannot stream): one Get,
    // nothing changed, nothing written.
    ctx.watches.backdate("lts/mail", FALLBACK_REFRESH);
    let (action, _, _) = round(edited, &ctx, api, vec![]).await;
    assert_eq!(tracker.ops(), ["submit", "get", "get", "suspend", "get"]);
    assert_eq!(action, Action::requeue(FALLBACK_REFRESH));
}

/// The next reconcile the controller finishes (virtual time: a requeue timer fires as soon as
/// nothing else is left to do).
async fn next_reconcile(reconciles: &mut (impl futures::Stream<Item = ReconcileResult> + Unpin)) {
    let done = tokio::time::timeout(Duration::from_secs(3600), reconciles.next())
        .await
        .expect("a reconcile within the hour")
        .expect("the controller runs");
    assert!(done.is_ok(), "{done:?}");
}

/// The whole Job controller (kube-runtime's Controller: the Job watch, the trackers' watch
/// trigger, requeue timers) against an in-memory API server: the reconciles its own status
/// writes cause make no tracker call.
#[tokio::test(start_paused = true)]
async fn the_controller_reconciles_its_own_status_writes_without_a_tracker_call() {
    use futures::StreamExt;
    let tracker = Arc::new(FakeTracker::default());
    let (client, api) = FakeApi::start(&[job("mail").finalized()]);
    let ctx = Arc::new(Context::new(
        client,
        crate::fixtures::guarded_store(&cluster()),
        Arc::new(SameTracker(tracker.clone(), Default::default())),
        crate::nodegroup::BuildConfig::default(),
        Arc::new(Watches::default()),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let shutdown = stop.clone();
    let mut reconciles = Box::pin(controller(ctx.clone(), async move {
        shutdown.cancelled().await
    }));

    // The new Job: submitted, read once, its status written.
    next_reconcile(&mut reconciles).await;
    assert_eq!(tracker.ops(), ["submit", "get"]);
    assert_eq!(api.status_patches().len(), 1);
    // The watch delivers that write: a reconcile that asks the tracker nothing, writes nothing.
    next_reconcile(&mut reconciles).await;
    assert_eq!(tracker.ops(), ["submit", "get"], "no tracker call");
    assert_eq!(api.status_patches().len(), 1, "no write");

    // The trackers' watch reports the job running: mirrored without a call; the reconcile of
    // that status write asks nothing either.
    let mut running = tracker.jobs()[0].clone();
    running.state = JobState::Running;
    running.attempt = 1;
    tracker.put(running.clone());
    ctx.watches.route(running);
    next_reconcile(&mut reconciles).await;
    next_reconcile(&mut reconciles).await;
    assert_eq!(tracker.ops(), ["submit", "get"], "no tracker call");
    assert_eq!(api.status_patches().len(), 2);
    let stored = api.job("lts", "mail");
    assert_eq!(
        stored.status.as_ref().unwrap().phase,
        Some(JobPhase::Running)
    );

    // Nothing else happens until the refresh timer runs out (30 s: the fake trackers cannot
    // stream): then one Get; nothing changed, nothing written.
    next_reconcile(&mut reconciles).await;
    assert_eq!(tracker.ops(), ["submit", "get", "get"]);
    assert_eq!(api.status_patches().len(), 2);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), async {
        while reconciles.next().await.is_some() {}
    })
    .await
    .expect("the controller stops");
}

#[tokio::test]
async fn a_fire_of_a_recurring_job_reaches_the_status_without_a_call() {
    let tracker = Arc::new(FakeTracker::default());
    let (ctx, api) = context(&cluster(), tracker.clone());
    let mut cron = job("mail").finalized();
    cron.spec.schedule = Some(ScheduleSpec {
        cron: Some(CronSchedule {
            expression: "0 * * * * *".into(),
            time_zone: None,
        }),
        ..ScheduleSpec::default()
    });
    let (_, calls, api) = round(
        cron.clone(),
        &ctx,
        api,
        vec![Step::event(), Step::status(JOB_STATUS, &cron)],
    )
    .await;
    let written = cron.with_status(status_of(&calls[1]));
    let before = tracker.ops().len();

    // The watch delivers one fire (an instance job) of it.
    let definition = tracker.jobs()[0].clone();
    let fire = definition.trigger_time_ms;
    let mut instance = crate::fixtures::tracker_job(
        "I1",
        lts_core::schedule::instance_spec(&definition.spec, fire),
    );
    instance.state = JobState::Running;
    instance.attempt = 1;
    instance.scheduled_fire_ms = Some(fire);
    instance.instance_of = Some(definition.job_id.clone());
    assert!(convert::is_instance(&instance));
    ctx.watches.route(instance);
    let (_, calls, api) = round(
        written.clone(),
        &ctx,
        api,
        vec![Step::event(), Step::status(JOB_STATUS, &written)],
    )
    .await;
    assert_eq!(calls[0].body["reason"], "Started");
    let st: JobStatus = status_of(&calls[1]);
    assert_eq!(st.phase, Some(JobPhase::Running));
    assert_eq!(st.attempts, Some(1));
    assert_eq!(
        st.job_id,
        written.status.as_ref().unwrap().job_id,
        "still the definition"
    );
    let (_, _, _) = round(written.with_status(st), &ctx, api, vec![]).await;
    assert_eq!(tracker.ops().len(), before, "no tracker call");
}

#[tokio::test]
async fn a_lost_status_write_adopts_the_submitted_job_instead_of_repeating_it() {
    let tracker = Arc::new(FakeTracker::default());
    let (_, first) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    // The operator restarts and the status write was lost: the resource has no status. It is
    // submitted again (idempotently), the tracker answers "duplicate", and the job is adopted.
    let (_, second) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    assert_eq!(tracker.jobs().len(), 1, "no duplicate job");
    assert_eq!(second.job_id, first.job_id);
    let submitted = conditions::find(&second.conditions, "Submitted").unwrap();
    assert_eq!(submitted.reason, "Adopted");
    assert_eq!(second.submitted_hash, first.submitted_hash);
    assert_eq!(tracker.ops(), ["submit", "get", "submit", "get"]);
}

#[tokio::test]
async fn a_duplicate_answer_is_read_by_id_and_adopted() {
    let tracker = Arc::new(FakeTracker::default());
    let (_, first) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    // Lookups by task id find nothing (as if racing with the earlier submit): the round needs
    // none, the "duplicate" answer names the job and one Get by id reads it.
    tracker.blind_task_lookup.store(true, Ordering::Relaxed);
    let (_, second) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    assert_eq!(tracker.jobs().len(), 1);
    assert_eq!(second.job_id, first.job_id);
    let submitted = conditions::find(&second.conditions, "Submitted").unwrap();
    assert_eq!(submitted.reason, "Adopted");
    let calls = tracker.calls.lock().unwrap().clone();
    assert_eq!(calls[2..], ["submit k8s-0b6f3c1e-uid", "get job_id J1"]);
}

#[tokio::test]
async fn a_lost_status_write_with_a_changed_spec_replaces_the_job() {
    let tracker = Arc::new(FakeTracker::default());
    let (_, first) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    let mut changed = job("mail").finalized();
    changed.spec.priority = 9;
    let (_, second) = reconcile_to_status(changed, tracker.clone()).await;
    assert_eq!(tracker.jobs().len(), 1);
    assert_eq!(tracker.jobs()[0].spec.priority, 9);
    assert_eq!(second.job_id, first.job_id);
    let submitted = conditions::find(&second.conditions, "Submitted").unwrap();
    assert_eq!(submitted.reason, "Replaced");
}

#[tokio::test]
async fn a_task_id_taken_by_someone_else_is_a_condition_and_an_event() {
    let tracker = Arc::new(FakeTracker::default());
    let mut foreign = lts_core::JobSpec::new("report-1", "mailers");
    foreign
        .params
        .insert(convert::PARAM_UID.into(), "someone-else".into());
    tracker.put(crate::fixtures::tracker_job("J9", foreign));
    let mut mine = job("mail").finalized();
    mine.spec.task_id = Some("report-1".into());
    let (ctx, api) = context(&cluster(), tracker.clone());
    let verifier = api.run(vec![Step::event(), Step::status(JOB_STATUS, &job("mail"))]);
    assert_eq!(run(mine, ctx).await.unwrap(), Action::await_change());
    let calls = finish(verifier).await;
    assert_eq!(calls[0].body["reason"], "TaskIdConflict");
    let status: JobStatus = status_of(&calls[1]);
    assert_eq!(status.phase, Some(JobPhase::Pending));
    assert_eq!(status.job_id, None);
    let c = conditions::find(&status.conditions, "Submitted").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "TaskIdConflict")
    );
}

#[tokio::test]
async fn suspend_and_resume_follow_the_spec() {
    let tracker = Arc::new(FakeTracker::default());
    let mut cron = job("mail").finalized();
    cron.spec.schedule = Some(ScheduleSpec {
        cron: Some(CronSchedule {
            expression: "0 0 * * * *".into(),
            time_zone: None,
        }),
        ..ScheduleSpec::default()
    });
    let (_, status) = reconcile_to_status(cron.clone(), tracker.clone()).await;

    let mut suspended = cron.clone().with_status(status.clone());
    suspended.spec.suspend = true;
    suspended.metadata.generation = Some(2);
    let (_, status) = reconcile_expecting(suspended.clone(), tracker.clone(), &["Suspended"]).await;
    assert_eq!(status.phase, Some(JobPhase::Suspended));
    assert_eq!(status.observed_generation, Some(2));
    assert!(tracker.ops().contains(&"suspend".to_string()));
    assert_eq!(tracker.jobs()[0].state, JobState::Suspended);
    assert_eq!(
        tracker.ops().iter().filter(|o| *o == "submit").count(),
        1,
        "suspend is no resubmit"
    );

    let mut resumed = suspended.with_status(status);
    resumed.spec.suspend = false;
    resumed.metadata.generation = Some(3);
    let (_, status) = reconcile_expecting(resumed, tracker.clone(), &["Resumed"]).await;
    assert_eq!(status.phase, Some(JobPhase::Queued));
    assert!(tracker.ops().contains(&"resume".to_string()));
}

#[tokio::test]
async fn a_running_job_is_asked_to_suspend_once_per_round() {
    let tracker = Arc::new(FakeTracker::default());
    tracker.attempts_finish_first.store(true, Ordering::Relaxed);
    let (_, status) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    let mut running = tracker.jobs()[0].clone();
    running.state = JobState::Running;
    tracker.put(running);
    let mut suspended = job("mail").finalized().with_status(status);
    suspended.spec.suspend = true;
    suspended.metadata.generation = Some(2);
    let (res, status) = reconcile_expecting(suspended, tracker.clone(), &["Started"]).await;
    res.unwrap();
    // The tracker suspends it once the running attempt ends: the answer stands for this round.
    assert_eq!(tracker.ops(), ["submit", "get", "get", "suspend"]);
    assert_eq!(status.phase, Some(JobPhase::Running));
}

#[tokio::test]
async fn other_spec_changes_replace_the_job() {
    let tracker = Arc::new(FakeTracker::default());
    let (_, status) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    let mut changed = job("mail").finalized().with_status(status.clone());
    changed.spec.priority = 50;
    changed.metadata.generation = Some(2);
    let (_, after) = reconcile_to_status(changed, tracker.clone()).await;
    assert_eq!(after.job_id, status.job_id, "replaced in place");
    assert_ne!(after.submitted_hash, status.submitted_hash);
    let submitted = conditions::find(&after.conditions, "Submitted").unwrap();
    assert_eq!(submitted.reason, "Replaced");
    let jobs = tracker.jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].spec.priority, 50);
}

#[tokio::test]
async fn an_invalid_spec_becomes_a_condition_and_an_event_without_a_tracker_call() {
    let tracker = Arc::new(FakeTracker::default());
    let mut bad = job("mail").finalized();
    bad.spec.schedule = Some(ScheduleSpec {
        trigger_time: Some("next tuesday".into()),
        ..ScheduleSpec::default()
    });
    let (ctx, api) = context(&cluster(), tracker.clone());
    let verifier = api.run(vec![Step::event(), Step::status(JOB_STATUS, &job("mail"))]);
    assert_eq!(run(bad.clone(), ctx).await.unwrap(), Action::await_change());
    let calls = finish(verifier).await;
    assert_eq!(calls[0].body["type"], "Warning");
    assert_eq!(calls[0].body["reason"], "InvalidSpec");
    let status: JobStatus = status_of(&calls[1]);
    assert_eq!(status.phase, Some(JobPhase::Pending));
    let c = conditions::find(&status.conditions, "Submitted").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        c.message.contains("spec.schedule.triggerTime"),
        "{}",
        c.message
    );
    assert!(tracker.ops().is_empty());

    // Reconciled again unchanged: no second Event, no status write.
    let (ctx, api) = context(&cluster(), tracker.clone());
    let verifier = api.run(vec![]);
    run(bad.with_status(status), ctx).await.unwrap();
    finish(verifier).await;
}

#[tokio::test]
async fn no_cluster_in_the_namespace_is_a_condition() {
    let tracker = Arc::new(FakeTracker::default());
    let (ctx, api) = context(
        &[nodegroup("mailers", NodeRole::TaskTracker)],
        tracker.clone(),
    );
    let verifier = api.run(vec![Step::event(), Step::status(JOB_STATUS, &job("mail"))]);
    assert_eq!(
        run(job("mail").finalized(), ctx).await.unwrap(),
        Action::requeue(CLUSTER_RETRY)
    );
    let calls = finish(verifier).await;
    let status: JobStatus = status_of(&calls[1]);
    let c = conditions::find(&status.conditions, "Submitted").unwrap();
    assert_eq!(c.reason, "ClusterNotFound");
    assert!(tracker.ops().is_empty());
}

#[tokio::test]
async fn an_unreachable_tracker_is_an_error_with_backoff_and_a_condition() {
    let tracker = Arc::new(FakeTracker::default());
    tracker.unavailable.store(true, Ordering::Relaxed);
    let (ctx, api) = context(&cluster(), tracker.clone());
    let verifier = api.run(vec![Step::status(JOB_STATUS, &job("mail"))]);
    let obj = job("mail").finalized();
    let err = run(obj.clone(), ctx.clone()).await.unwrap_err();
    assert!(matches!(err, Error::TrackerUnavailable(_)), "{err}");
    assert_eq!(err.metric_label(), "tracker_unavailable");
    let calls = finish(verifier).await;
    let status: JobStatus = status_of(&calls[0]);
    assert_eq!(status.phase, Some(JobPhase::Pending));
    let c = conditions::find(&status.conditions, "Synced").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "TrackerUnavailable")
    );
    assert!(c.message.contains("tracker.lts.svc:7070"), "{}", c.message);

    let obj = Arc::new(obj);
    let first = error_policy(obj.clone(), &err, ctx.clone());
    let second = error_policy(obj.clone(), &err, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(1)));
    assert_eq!(second, Action::requeue(Duration::from_secs(2)));
}

#[tokio::test]
async fn delete_cancels_the_job_then_removes_the_finalizer() {
    let tracker = Arc::new(FakeTracker::default());
    let (_, status) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    let doomed = job("mail").finalized().with_status(status).deleting();
    let (ctx, api) = context(&cluster(), tracker.clone());
    let mut released = doomed.clone();
    released.metadata.finalizers = None;
    let verifier = api.run(vec![Step::json(
        Method::PATCH,
        JOB,
        serde_json::to_value(&released).unwrap(),
    )]);
    run(doomed, ctx).await.unwrap();
    let calls = finish(verifier).await;
    assert!(
        calls[0].body.to_string().contains("remove"),
        "{}",
        calls[0].body
    );
    assert_eq!(tracker.jobs()[0].state, JobState::Cancelled);
    assert!(tracker.ops().contains(&"cancel".to_string()));
}

#[tokio::test]
async fn delete_with_the_tracker_down_keeps_the_finalizer_and_retries() {
    let tracker = Arc::new(FakeTracker::default());
    let (_, status) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    tracker.unavailable.store(true, Ordering::Relaxed);
    let doomed = job("mail").finalized().with_status(status).deleting();
    let (ctx, api) = context(&cluster(), tracker.clone());
    let verifier = api.run(vec![]);
    let err = run(doomed, ctx).await.unwrap_err();
    assert!(matches!(err, Error::TrackerUnavailable(_)), "{err}");
    finish(verifier).await;
    assert_eq!(tracker.jobs()[0].state, JobState::Queued);
}

#[tokio::test]
async fn a_delete_that_cannot_cancel_lets_go_after_the_timeout_with_a_warning() {
    let tracker = Arc::new(FakeTracker::default());
    let (_, status) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    tracker.unavailable.store(true, Ordering::Relaxed);
    let mut doomed = job("mail").finalized().with_status(status).deleting();
    let ten_minutes_ago =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(600);
    doomed.metadata.deletion_timestamp = Some(Time(ten_minutes_ago));
    let (ctx, api) = context(&cluster(), tracker.clone());
    let mut released = doomed.clone();
    released.metadata.finalizers = None;
    let verifier = api.run(vec![
        Step::event(),
        Step::json(Method::PATCH, JOB, serde_json::to_value(&released).unwrap()),
    ]);
    run(doomed, ctx).await.unwrap();
    let calls = finish(verifier).await;
    assert_eq!(calls[0].body["type"], "Warning");
    assert_eq!(calls[0].body["reason"], "CancelAbandoned");
    let note = calls[0].body["note"].as_str().unwrap();
    assert!(note.contains("lts jobs cancel"), "{note}");
    assert!(
        calls[1].body.to_string().contains("remove"),
        "{}",
        calls[1].body
    );
    assert_eq!(tracker.jobs()[0].state, JobState::Queued, "not cancelled");
}

#[tokio::test]
async fn skip_cancel_lets_a_deleted_job_go_at_once_with_a_warning() {
    let tracker = Arc::new(FakeTracker::default());
    let (_, status) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    let mut doomed = job("mail").finalized().with_status(status).deleting();
    doomed
        .annotations_mut()
        .insert(super::SKIP_CANCEL.into(), "true".into());
    let (ctx, api) = context(&cluster(), tracker.clone());
    let mut released = doomed.clone();
    released.metadata.finalizers = None;
    let verifier = api.run(vec![
        Step::event(),
        Step::json(Method::PATCH, JOB, serde_json::to_value(&released).unwrap()),
    ]);
    let before = tracker.ops().len();
    run(doomed, ctx).await.unwrap();
    let calls = finish(verifier).await;
    assert_eq!(calls[0].body["reason"], "CancelSkipped");
    assert_eq!(tracker.ops().len(), before, "the trackers are not asked");
}

#[test]
fn a_deleted_job_lets_go_when_skipped_or_after_the_timeout() {
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    let now = Timestamp::now();
    let timeout = Duration::from_secs(300);
    let at = |secs_ago: i64| {
        let mut j = job("mail").deleting();
        j.metadata.deletion_timestamp = Some(Time(now - SignedDuration::from_secs(secs_ago)));
        j
    };
    assert_eq!(
        super::let_go(&job("mail"), now, timeout, "e"),
        None,
        "not deleted"
    );
    assert_eq!(
        super::let_go(&at(60), now, timeout, "e"),
        None,
        "still trying"
    );
    let (reason, note) = super::let_go(&at(301), now, timeout, "tracker unavailable").unwrap();
    assert_eq!(reason, "CancelAbandoned");
    assert!(
        note.contains("tracker unavailable") && note.contains("5m"),
        "{note}"
    );
    let mut skipped = at(1);
    skipped
        .annotations_mut()
        .insert(super::SKIP_CANCEL.into(), "true".into());
    assert_eq!(
        super::let_go(&skipped, now, timeout, "e").unwrap().0,
        "CancelSkipped"
    );
    skipped
        .annotations_mut()
        .insert(super::SKIP_CANCEL.into(), "false".into());
    assert_eq!(super::let_go(&skipped, now, timeout, "e"), None);
}

#[tokio::test]
async fn delete_of_a_finished_job_only_removes_the_finalizer() {
    let tracker = Arc::new(FakeTracker::default());
    let doomed = job("mail")
        .finalized()
        .with_status(JobStatus {
            phase: Some(JobPhase::Succeeded),
            job_id: Some("J1".into()),
            ..JobStatus::default()
        })
        .deleting();
    let (ctx, api) = context(&cluster(), tracker.clone());
    let verifier = api.run(vec![Step::json(
        Method::PATCH,
        JOB,
        json!({"apiVersion": "lts.io/v1alpha1", "kind": "Job", "metadata": {"name": "mail", "namespace": "lts"}, "spec": {"taskTrackerNodeGroup": "mailers"}}),
    )]);
    run(doomed, ctx).await.unwrap();
    finish(verifier).await;
    assert!(tracker.ops().is_empty());
}

#[tokio::test]
async fn watch_events_route_to_their_resource() {
    let watches = Arc::new(Watches::default());
    let mut trigger = Box::pin(watches.take_trigger().unwrap());
    let spec = convert::to_lts_spec(&job("mail")).unwrap();
    watches.route(crate::fixtures::tracker_job("J7", spec));
    let r = futures::StreamExt::next(&mut trigger).await.unwrap();
    assert_eq!(
        (r.name.as_str(), r.namespace.as_deref()),
        ("mail", Some("lts"))
    );
    assert!(watches.take_observed("J7").is_some());
    assert!(watches.take_observed("J7").is_none());
}

#[tokio::test]
async fn a_watched_change_is_mirrored_without_asking_the_tracker() {
    let tracker = Arc::new(FakeTracker::default());
    let (_, status) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    let calls_before = tracker.ops().len();
    let mut running = tracker.jobs()[0].clone();
    running.state = JobState::Running;
    running.attempt = 1;
    let (ctx, api) = context(&cluster(), tracker.clone());
    ctx.watches.route(running);
    let obj = job("mail").finalized().with_status(status);
    let verifier = api.run(vec![Step::event(), Step::status(JOB_STATUS, &obj)]);
    run(obj, ctx).await.unwrap();
    let calls = finish(verifier).await;
    assert_eq!(calls[0].body["reason"], "Started");
    assert_eq!(calls[0].body["note"], "job J1: run 1 started");
    let mirrored: JobStatus = status_of(&calls[1]);
    assert_eq!(mirrored.phase, Some(JobPhase::Running));
    assert_eq!(mirrored.attempts, Some(1));
    assert_eq!(tracker.ops().len(), calls_before, "no tracker call");
}

#[tokio::test]
async fn a_finished_job_is_not_asked_for_again() {
    let tracker = Arc::new(FakeTracker::default());
    let (_, mut status) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    let calls_before = tracker.ops().len();
    status.phase = Some(JobPhase::Succeeded);
    let mut obj = job("mail").finalized().with_status(status);
    let (ctx, api) = context(&cluster(), tracker.clone());
    let verifier = api.run(vec![]);
    assert_eq!(run(obj.clone(), ctx).await.unwrap(), Action::await_change());
    finish(verifier).await;
    // A new generation (e.g. a label edit that changed nothing submitted) only records it.
    obj.metadata.generation = Some(2);
    let (ctx, api) = context(&cluster(), tracker.clone());
    let verifier = api.run(vec![Step::status(JOB_STATUS, &obj)]);
    run(obj, ctx).await.unwrap();
    let calls = finish(verifier).await;
    let st: JobStatus = status_of(&calls[0]);
    assert_eq!(st.observed_generation, Some(2));
    assert_eq!(tracker.ops().len(), calls_before, "no tracker call");
}

#[tokio::test]
async fn a_job_the_tracker_lost_is_a_condition_not_a_retry_loop() {
    let tracker = Arc::new(FakeTracker::default());
    let (_, mut status) = reconcile_to_status(job("mail").finalized(), tracker.clone()).await;
    status.job_id = Some("J404".into());
    let obj = job("mail").finalized().with_status(status);
    let (ctx, api) = context(&cluster(), tracker.clone());
    let verifier = api.run(vec![Step::event(), Step::status(JOB_STATUS, &obj)]);
    assert_eq!(run(obj, ctx).await.unwrap(), Action::await_change());
    let calls = finish(verifier).await;
    let st: JobStatus = status_of(&calls[1]);
    let c = conditions::find(&st.conditions, "Submitted").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "JobNotFound")
    );
}
