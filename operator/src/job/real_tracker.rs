//! The Job controller against a real `lts-tracker` process (embedded SQLite store, free port)
//! over gRPC through `lts_worker_sdk::JobClient`, with a mocked API server. Needs the workspace
//! binaries (`cargo build --workspace --bins`, which scripts/test.sh runs first).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action;
use lts_core::{JobKey, JobState};
use lts_tests::{Proc, TrackerProc, bin, wait_final};
use lts_worker_sdk::{JobClient, ListQuery};

use crate::tracker::TrackerApi;

use super::*;
use crate::conditions;
use crate::crd::{CronSchedule, NodeRole, ScheduleSpec};
use crate::crd::{JobPhase, JobStatus};
use crate::fixtures::{SameTracker, Step, finish, guarded_store, job, nodegroup, status_of};

fn context_for(client: &JobClient) -> (Arc<Context>, crate::fixtures::ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let groups = [
        nodegroup("tracker", NodeRole::JobTracker),
        nodegroup("mailers", NodeRole::TaskTracker),
    ];
    let ctx = Context::new(
        kube::Client::new(service, "lts"),
        guarded_store(&groups),
        Arc::new(SameTracker(Arc::new(client.clone()), Mutex::default())),
        crate::nodegroup::BuildConfig::default(),
        Arc::new(Watches::default()),
    );
    (
        Arc::new(ctx),
        crate::fixtures::ApiServerVerifier::new(handle),
    )
}

async fn reconcile_once(
    client: &JobClient,
    obj: &Job,
    steps: Vec<Step>,
) -> (Result<Action>, Vec<crate::fixtures::Call>) {
    let (ctx, api) = context_for(client);
    let verifier = api.run(steps);
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        reconcile(Arc::new(obj.clone()), ctx),
    )
    .await
    .expect("reconcile finished");
    (res, finish(verifier).await)
}

fn status_path(name: &str) -> String {
    format!("/apis/lts.io/v1alpha1/namespaces/lts/jobs/{name}/status")
}

async fn jobs_of(client: &JobClient, group: &str) -> Vec<lts_core::Job> {
    client
        .list(ListQuery {
            node_group: Some(group.into()),
            page_size: 100,
            ..ListQuery::default()
        })
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread")]
async fn submits_idempotently_mirrors_runs_and_replaces_on_a_real_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let mail = job("mail").finalized();

    // Create: submitted over gRPC (a Submitted Event), status mirrors the tracker.
    let (res, calls) = reconcile_once(
        &client,
        &mail,
        vec![Step::event(), Step::status(status_path("mail"), &mail)],
    )
    .await;
    res.unwrap();
    assert_eq!(calls[0].body["reason"], "Submitted");
    let status: JobStatus = status_of(&calls[1]);
    let job_id = status.job_id.clone().expect("job id");
    assert_eq!(status.phase, Some(JobPhase::Queued));
    let stored = client.get(JobKey::Id(job_id.clone())).await.unwrap();
    assert_eq!(stored.spec.task_id, "k8s-0b6f3c1e-uid");
    assert_eq!(stored.spec.submit_node_group, convert::SUBMIT_NODE_GROUP);
    assert_eq!(stored.spec.params[convert::PARAM_UID], "0b6f3c1e-uid");

    // Operator restart, status write lost: the same job is adopted, nothing is duplicated.
    let (res, calls) = reconcile_once(
        &client,
        &mail,
        vec![Step::event(), Step::status(status_path("mail"), &mail)],
    )
    .await;
    res.unwrap();
    let adopted: JobStatus = status_of(&calls[1]);
    assert_eq!(adopted.job_id.as_deref(), Some(job_id.as_str()));
    assert_eq!(
        conditions::find(&adopted.conditions, "Submitted")
            .unwrap()
            .reason,
        "Adopted"
    );
    assert_eq!(jobs_of(&client, "mailers").await.len(), 1);

    // Spec change: the unfinished job is replaced, still one job.
    let mut changed = mail.clone().with_status(adopted.clone());
    changed.spec.priority = 42;
    changed.metadata.generation = Some(2);
    let (res, calls) = reconcile_once(
        &client,
        &changed,
        vec![Step::status(status_path("mail"), &changed)],
    )
    .await;
    res.unwrap();
    let replaced: JobStatus = status_of(&calls[0]);
    assert_eq!(
        conditions::find(&replaced.conditions, "Submitted")
            .unwrap()
            .reason,
        "Replaced"
    );
    let all = jobs_of(&client, "mailers").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].spec.priority, 42);
    let job_id = replaced.job_id.clone().unwrap();

    // A TaskTracker runs it; the next reconcile mirrors the result.
    let worker_log = dir.path().join("worker.log");
    let _worker = mailer_worker(&tracker, 1, "echo sent; exit 0", worker_log);
    let done = wait_final(&client, &job_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    let current = changed.clone().with_status(replaced);
    let (res, calls) = reconcile_once(
        &client,
        &current,
        vec![Step::event(), Step::status(status_path("mail"), &current)],
    )
    .await;
    assert_eq!(res.unwrap(), Action::await_change());
    assert_eq!(calls[0].body["reason"], "Succeeded");
    let finished: JobStatus = status_of(&calls[1]);
    assert_eq!(finished.phase, Some(JobPhase::Succeeded));
    assert_eq!(finished.last_result.as_deref(), Some("SUCCESS"));
    assert_eq!(finished.attempts, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_then_delete_cancels_on_a_real_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let mut nightly = job("nightly").finalized();
    nightly.metadata.uid = Some("5e1f-nightly".into());
    nightly.spec.schedule = Some(ScheduleSpec {
        cron: Some(CronSchedule {
            expression: "0 0 3 * * *".into(),
            time_zone: Some("Europe/Berlin".into()),
        }),
        ..ScheduleSpec::default()
    });
    let (res, calls) = reconcile_once(
        &client,
        &nightly,
        vec![
            Step::event(),
            Step::status(status_path("nightly"), &nightly),
        ],
    )
    .await;
    res.unwrap();
    let status: JobStatus = status_of(&calls[1]);
    assert_eq!(status.phase, Some(JobPhase::Queued));
    assert!(status.next_fire_time.is_some());

    let mut suspended = nightly.clone().with_status(status);
    suspended.spec.suspend = true;
    let (res, calls) = reconcile_once(
        &client,
        &suspended,
        vec![
            Step::event(),
            Step::status(status_path("nightly"), &suspended),
        ],
    )
    .await;
    res.unwrap();
    assert_eq!(calls[0].body["reason"], "Suspended");
    let status: JobStatus = status_of(&calls[1]);
    assert_eq!(status.phase, Some(JobPhase::Suspended));
    let job_id = status.job_id.clone().unwrap();
    assert_eq!(
        client.get(JobKey::Id(job_id.clone())).await.unwrap().state,
        JobState::Suspended
    );

    let doomed = suspended.with_status(status).deleting();
    let mut released = doomed.clone();
    released.metadata.finalizers = None;
    let (res, _) = reconcile_once(
        &client,
        &doomed,
        vec![Step::json(
            Method::PATCH,
            "/apis/lts.io/v1alpha1/namespaces/lts/jobs/nightly",
            serde_json::to_value(&released).unwrap(),
        )],
    )
    .await;
    res.unwrap();
    assert_eq!(
        client.get(JobKey::Id(job_id)).await.unwrap().state,
        JobState::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_tracker_is_an_error_and_a_condition() {
    let dir = tempfile::tempdir().unwrap();
    let mut tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    tracker.proc.kill9();
    let mail = job("mail").finalized();
    let (res, calls) = reconcile_once(
        &client,
        &mail,
        vec![Step::status(status_path("mail"), &mail)],
    )
    .await;
    let err = res.unwrap_err();
    assert!(matches!(err, Error::TrackerUnavailable(_)), "{err}");
    let status: JobStatus = status_of(&calls[0]);
    let c = conditions::find(&status.conditions, "Synced").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "TrackerUnavailable")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watch_follows_operator_jobs_without_polling() {
    let (dir, tracker, watches, mut trigger) = watched_tracker().await;
    let client = tracker.client();

    // A job of someone else is not reported; the operator's job is, with its state.
    client
        .submit(lts_core::JobSpec::new("not-ours", "mailers"))
        .await
        .unwrap();
    let spec = convert::to_lts_spec(&job("mail")).unwrap();
    let job_id = client
        .submit(spec)
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_string();
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut trigger),
    )
    .await
    .expect("a change of the operator's job")
    .unwrap();
    assert_eq!(
        (first.name.as_str(), first.namespace.as_deref()),
        ("mail", Some("lts"))
    );

    let _worker = mailer_worker(&tracker, 1, "exit 0", dir.path().join("worker.log"));
    let mut seen = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            futures::StreamExt::next(&mut trigger).await.unwrap();
            if let Some(j) = watches.take_observed(&job_id) {
                seen.push(j.state);
                if j.state == JobState::Succeeded {
                    return j;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no Succeeded change from the watch; saw {seen:?}"));
    assert_eq!(done.spec.params[convert::PARAM_NAME], "mail");
    watches.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fires_of_a_recurring_job_reach_its_status() {
    let (dir, tracker, watches, mut trigger) = watched_tracker().await;
    let client = tracker.client();

    // Every 200 ms, twice; fires overlap (relyOnPrevCycle is false), so each runs as its own
    // instance job.
    let mut resource = job("ticker");
    resource.spec.schedule = Some(ScheduleSpec {
        repeat: Some(crate::crd::RepeatSchedule {
            interval_ms: Some(200),
            interval: None,
            count: 2,
            first_fire: None,
        }),
        ..ScheduleSpec::default()
    });
    let spec = convert::to_lts_spec(&resource).unwrap();
    let definition = client
        .submit(spec.clone())
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_string();
    let _worker = mailer_worker(&tracker, 2, "echo sent", dir.path().join("worker.log"));

    let defined = client.get(JobKey::Id(definition.clone())).await.unwrap();
    let mut status = crate::crd::JobStatus::default();
    convert::mirror(&mut status, &defined);
    let mut finished_fires = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while finished_fires.len() < 2 {
            futures::StreamExt::next(&mut trigger).await.unwrap();
            if let Some(instance) = watches.take_instance("lts", "ticker") {
                assert!(
                    convert::is_instance_of(&instance, "0b6f3c1e-uid"),
                    "{instance:?}"
                );
                assert_eq!(instance.spec.params[convert::PARAM_NAME], "ticker");
                convert::mirror_instance(&mut status, &instance);
                if instance.state.is_final() {
                    finished_fires.insert(instance.scheduled_fire_ms);
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fires seen: {finished_fires:?}; status {status:?}"));
    assert_eq!(status.last_result.as_deref(), Some("SUCCESS"), "{status:?}");
    assert_eq!(status.attempts, Some(1));
    let last = finished_fires.iter().max().copied().flatten().unwrap();
    assert_eq!(
        status.last_fire_time.as_deref(),
        Some(lts_core::format_ms(last).as_str())
    );
    // The definition finished with its last fire.
    let defined = wait_final(&client, &definition, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(defined.state, JobState::Succeeded);
    watches.stop();
}

/// The real tracker client, recording each call the operator makes through it.
struct Counting(JobClient, Mutex<Vec<&'static str>>);

impl Counting {
    fn record(&self, op: &'static str) {
        self.1.lock().unwrap().push(op);
    }

    /// The calls about single jobs (submit, get, suspend, …): the watch's own `watch` and
    /// resync `list` are left out.
    fn job_calls(&self) -> Vec<&'static str> {
        let calls = self.1.lock().unwrap();
        calls
            .iter()
            .copied()
            .filter(|c| !matches!(*c, "watch" | "list"))
            .collect()
    }
}

#[async_trait::async_trait]
impl crate::tracker::TrackerApi for Counting {
    async fn submit(
        &self,
        spec: lts_core::JobSpec,
    ) -> Result<lts_worker_sdk::SubmitAnswer, lts_worker_sdk::ClientError> {
        self.record("submit");
        TrackerApi::submit(&self.0, spec).await
    }
    async fn get(&self, key: JobKey) -> Result<lts_core::Job, lts_worker_sdk::ClientError> {
        self.record("get");
        TrackerApi::get(&self.0, key).await
    }
    async fn cancel(&self, key: JobKey) -> Result<lts_core::Job, lts_worker_sdk::ClientError> {
        self.record("cancel");
        TrackerApi::cancel(&self.0, key).await
    }
    async fn suspend(&self, key: JobKey) -> Result<lts_core::Job, lts_worker_sdk::ClientError> {
        self.record("suspend");
        TrackerApi::suspend(&self.0, key).await
    }
    async fn resume(&self, key: JobKey) -> Result<lts_core::Job, lts_worker_sdk::ClientError> {
        self.record("resume");
        TrackerApi::resume(&self.0, key).await
    }
    async fn nodes(
        &self,
    ) -> Result<lts_core::proto::ListNodesResponse, lts_worker_sdk::ClientError> {
        self.record("nodes");
        TrackerApi::nodes(&self.0).await
    }
    async fn stats(
        &self,
        node_group: &str,
    ) -> Result<lts_core::proto::StatsResponse, lts_worker_sdk::ClientError> {
        self.record("stats");
        TrackerApi::stats(&self.0, node_group).await
    }
    async fn list(
        &self,
        query: ListQuery,
    ) -> Result<(Vec<lts_core::Job>, Option<String>), lts_worker_sdk::ClientError> {
        self.record("list");
        TrackerApi::list(&self.0, query).await
    }
    async fn watch(
        &self,
        filter: crate::tracker::JobWatchFilter,
    ) -> Result<Option<crate::tracker::EventStream>, lts_worker_sdk::ClientError> {
        self.record("watch");
        TrackerApi::watch(&self.0, filter).await
    }
}

/// The whole Job controller (an in-memory API server for the resource) against a real tracker
/// and worker: after the submit, the job's whole run reaches the status through the trackers'
/// watch, and neither those reconciles nor the ones the controller's own status writes cause
/// ask the tracker anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_tracker_is_asked_once_and_the_watch_does_the_rest() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let counting = Arc::new(Counting(tracker.client(), Mutex::default()));
    let (client, api) = crate::fixtures::FakeApi::start(&[job("mail").finalized()]);
    let groups = [
        nodegroup("tracker", NodeRole::JobTracker),
        nodegroup("mailers", NodeRole::TaskTracker),
    ];
    let ctx = Arc::new(Context::new(
        client,
        guarded_store(&groups),
        Arc::new(SameTracker(counting.clone(), Mutex::default())),
        crate::nodegroup::BuildConfig::default(),
        Arc::new(Watches::default()),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let shutdown = stop.clone();
    let mut reconciles = Box::pin(controller(ctx.clone(), async move {
        shutdown.cancelled().await
    }));
    let _worker = mailer_worker(&tracker, 1, "echo sent", dir.path().join("worker.log"));

    let phase = || api.job("lts", "mail").status.and_then(|s| s.phase);
    let mut rounds = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while phase() != Some(JobPhase::Succeeded) {
            reconciles.next().await.unwrap().unwrap();
            rounds += 1;
        }
        // … and the reconcile of that last status write.
        reconciles.next().await.unwrap().unwrap();
        rounds += 1;
    })
    .await
    .unwrap_or_else(|_| panic!("not Succeeded; phase {:?}", phase()));
    let calls = counting.job_calls();
    assert_eq!(calls.first(), Some(&"submit"), "{calls:?}");
    assert!(
        calls == ["submit"] || calls == ["submit", "get"],
        "one submit and at most the Get after it (unless the watch told first): {calls:?} in {rounds} reconciles"
    );
    assert!(rounds >= 3, "{rounds} reconciles");
    let status = api.job("lts", "mail").status.unwrap();
    assert_eq!(status.last_result.as_deref(), Some("SUCCESS"));
    assert_eq!(status.attempts, Some(1));
    stop.cancel();
    ctx.watches.stop();
}

/// A real tracker in a temporary directory, with the operator's job watch streaming from it;
/// the stream of resources the watch asks to reconcile.
async fn watched_tracker() -> (
    tempfile::TempDir,
    TrackerProc,
    Arc<Watches>,
    std::pin::Pin<Box<dyn futures::Stream<Item = kube::runtime::reflector::ObjectRef<Job>> + Send>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let watches = Arc::new(Watches::default());
    let trigger = Box::pin(watches.take_trigger().unwrap());
    let address = "tracker.lts.svc:7070";
    watches.ensure(
        address,
        convert::SUBMIT_NODE_GROUP,
        Arc::new(tracker.client()),
    );
    lts_tests::eventually(Duration::from_secs(10), "the watch to stream", || async {
        watches
            .is_live(address, convert::SUBMIT_NODE_GROUP)
            .then_some(())
    })
    .await
    .unwrap();
    (dir, tracker, watches, trigger)
}

/// An `lts-worker` process for the `mailers` group of `tracker`, running `exec` per job.
fn mailer_worker(tracker: &TrackerProc, threads: u32, exec: &str, log: std::path::PathBuf) -> Proc {
    let mut cmd = std::process::Command::new(bin("lts-worker"));
    cmd.args(["--tracker", &tracker.addr, "--node-group", "mailers"])
        .args(["--threads", &threads.to_string()])
        .args(["--exec", exec]);
    Proc::spawn(cmd, log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflows_nodes_reach_its_status() {
    use crate::crd::{WorkflowNodeSpec, WorkflowSpec};
    let (dir, tracker, watches, mut trigger) = watched_tracker().await;
    let client = tracker.client();
    let node = |name: &str, after: &[&str]| WorkflowNodeSpec {
        name: name.into(),
        after: after.iter().map(|a| a.to_string()).collect(),
        task_tracker_node_group: None,
        params: Default::default(),
        priority: 0,
        max_retries: 0,
        max_lease_losses: None,
        timeout_seconds: None,
        affinity: Default::default(),
        route_key: None,
    };
    let mut resource = job("etl");
    resource.spec.workflow = Some(WorkflowSpec {
        nodes: vec![node("extract", &[]), node("load", &["extract"])],
        edges: Vec::new(),
    });
    let spec = convert::to_lts_spec(&resource).unwrap();
    let id = client
        .submit(spec)
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_string();
    let _worker = mailer_worker(
        &tracker,
        2,
        "echo 'lts:output rows=3'",
        dir.path().join("worker.log"),
    );

    let mut status = crate::crd::JobStatus::default();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !(status.nodes.len() == 2
            && status.nodes.iter().all(|n| n.phase == JobPhase::Succeeded))
        {
            futures::StreamExt::next(&mut trigger).await.unwrap();
            let nodes = watches.take_nodes("lts", "etl");
            assert!(
                nodes.iter().all(|n| convert::owned_by(n, "0b6f3c1e-uid")),
                "{nodes:?}"
            );
            convert::mirror_nodes(&mut status, &nodes);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("status {status:?}"));
    let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert!(
        names.contains(&"extract") && names.contains(&"load"),
        "{names:?}"
    );
    let load = status.nodes.iter().find(|n| n.name == "load").unwrap();
    assert_eq!(load.message.as_deref(), Some("rows=3"));
    // The workflow itself ends with its last node, its counts mirrored like a sharded Job's.
    let done = wait_final(&client, &id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    convert::mirror(&mut status, &done);
    let counts = status.shards.unwrap();
    assert_eq!((counts.succeeded, counts.skipped), (2, 0));
    watches.stop();
}
