//! A tracker killed (`kill -9`) between the two writes of a fire on MongoDB — the fire's
//! instance inserted, its recurring job not yet moved on — leaves nothing half-done: the next
//! tracker finds the fire taken, runs it once (its instance), and moves the schedule on.
//!
//! The kill lands exactly between the writes: the first tracker runs with the fail point
//! `mongo-fire-between-instance-and-definition` armed to sleep, the test watches the database
//! until the instance is there and the recurring job is not moved, and kills it then. The same
//! for a sharded job's last shard and the job, and for a workflow node and its successor.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_core::{JobSpec, JobState, Schedule, now_ms};
use lts_tests::{MongoServer, TrackerProc, eventually, free_port};
use lts_worker_sdk::{JobContext, RunResult, SubmitAnswer, TaskTracker};
use mongodb::bson::{Document, doc};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(60);
const FAIL_POINT: &str = "mongo-fire-between-instance-and-definition";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_killed_between_a_fires_two_writes_neither_loses_nor_doubles_it() {
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(&dir.path().join("mongo")).await.unwrap();
    let store = mongo.url("crash");
    let db = mongodb::Client::with_uri_str(&store)
        .await
        .unwrap()
        .database("crash");
    let jobs = db.collection::<Document>("jobs");
    let port = free_port();
    let args = ["--store", store.as_str(), "--lease-ms", "2000"];
    let armed = format!("{FAIL_POINT}=sleep(600000)");
    let mut first = TrackerProc::start_with_env(dir.path(), port, &args, &[("FAILPOINTS", &armed)])
        .await
        .unwrap();

    // A worker that counts runs per task id, connected to the tracker's address throughout.
    let runs = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
    let r = runs.clone();
    let stop = CancellationToken::new();
    let worker = TaskTracker::builder()
        .node_group("fires")
        .tracker(first.addr.clone())
        .threads(2)
        .runner(move |ctx: JobContext| {
            let r = r.clone();
            async move {
                *r.lock()
                    .unwrap()
                    .entry(ctx.task_id().to_string())
                    .or_default() += 1;
                RunResult::success("")
            }
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(worker.run_until_cancelled(stop.clone()));

    // Two fires an hour apart; the first is due in a moment.
    let first_fire = now_ms() + 1_000;
    let spec = JobSpec::new("hourly", "fires").schedule(Schedule::Repeat {
        interval_ms: 3_600_000,
        count: 2,
        first_fire_ms: Some(first_fire),
    });
    let def_id = match first.client().submit(spec).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };

    // The first write is done and the second is not: kill the tracker now.
    let instance: Document = eventually(T, "the fire's instance to be written", || async {
        jobs.find_one(doc! { "instance_of": &def_id })
            .await
            .unwrap()
    })
    .await
    .unwrap();
    let def = first
        .client()
        .get(lts_core::JobKey::Id(def_id.clone()))
        .await
        .unwrap();
    assert_eq!(
        (def.fire_count, def.trigger_time_ms),
        (1, first_fire),
        "the recurring job is not moved on yet: {def:?}"
    );
    first.proc.kill9();
    assert!(
        runs.lock().unwrap().is_empty(),
        "nothing ran before the kill"
    );

    // Another tracker on the same store and address, without the fail point, once the fire is
    // past its misfire threshold (1 s) and the dead claim's lease (2 s) has run out: taken
    // again, the fire would be a catch-up run under a task id of its own, and its first
    // instance is free to run — only the fire's key tells the two apart.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let second = TrackerProc::start_on(dir.path(), port, &args)
        .await
        .unwrap();
    let client = second.client();
    let instance_id = instance.get_str("_id").unwrap().to_string();
    let done = eventually(T, "the fire's instance to run", || async {
        let j = client
            .get(lts_core::JobKey::Id(instance_id.clone()))
            .await
            .ok()?;
        j.state.is_final().then_some(j)
    })
    .await
    .unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let def = eventually(T, "the recurring job to move on", || async {
        let j = client
            .get(lts_core::JobKey::Id(def_id.clone()))
            .await
            .ok()?;
        (j.fire_count == 2).then_some(j)
    })
    .await
    .unwrap();
    assert_eq!(def.state, JobState::Queued, "{def:?}");
    assert!(
        def.trigger_time_ms > now_ms() + 3_000_000,
        "its next fire is the one an hour later: {def:?}"
    );

    // Whatever the second tracker did first (requeue the dead claim's lease, or take the
    // recurring job again), the fire ran once and has one instance.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let instances = jobs
        .count_documents(doc! { "instance_of": &def_id })
        .await
        .unwrap();
    assert_eq!(instances, 1, "one instance of the fire");
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.values().sum::<u32>(), 1, "the fire ran once: {runs:?}");
    stop.cancel();
    worker.await.unwrap();
}

/// A tracker killed between a sharded job's two writes at its end — its last shard's result
/// written, the job not yet ended — leaves the job to the next master's sweep, which ends it
/// with its shards' tally; no shard runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_killed_between_a_last_shard_and_its_job_leaves_the_job_to_the_sweep() {
    const SHARD_POINT: &str = "mongo-between-a-shard-and-its-job";
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(&dir.path().join("mongo")).await.unwrap();
    let store = mongo.url("shards");
    let jobs = mongodb::Client::with_uri_str(&store)
        .await
        .unwrap()
        .database("shards")
        .collection::<Document>("jobs");
    let port = free_port();
    let args = ["--store", store.as_str()];
    let armed = format!("{SHARD_POINT}=sleep(600000)");
    let mut first = TrackerProc::start_with_env(dir.path(), port, &args, &[("FAILPOINTS", &armed)])
        .await
        .unwrap();
    let runs = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
    let r = runs.clone();
    let stop = CancellationToken::new();
    let worker = TaskTracker::builder()
        .node_group("sharded")
        .tracker(first.addr.clone())
        .threads(2)
        .runner(move |ctx: JobContext| {
            let r = r.clone();
            async move {
                *r.lock()
                    .unwrap()
                    .entry(ctx.task_id().to_string())
                    .or_default() += 1;
                RunResult::success("")
            }
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(worker.run_until_cancelled(stop.clone()));
    let mut spec = JobSpec::new("split", "sharded");
    spec.shards = Some(1);
    let id = match first.client().submit(spec).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    // The shard's result is written, its job not ended: kill the tracker now.
    eventually(T, "the shard's end to be written", || async {
        let shard = jobs
            .find_one(doc! { "shard_of": &id, "done": { "$ne": "" } })
            .await
            .unwrap()?;
        let job = jobs.find_one(doc! { "_id": &id }).await.unwrap()?;
        (job.get_i64("state").ok()? == JobState::Running.code()).then_some(shard)
    })
    .await
    .unwrap();
    first.proc.kill9();

    let second = TrackerProc::start_on(dir.path(), port, &args)
        .await
        .unwrap();
    let client = second.client();
    let job = eventually(T, "the sweep to end the sharded job", || async {
        let j = client.get(lts_core::JobKey::Id(id.clone())).await.ok()?;
        j.state.is_final().then_some(j)
    })
    .await
    .unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.last_message.as_deref(), Some("its one shard succeeded"));
    let runs = runs.lock().unwrap().clone();
    assert_eq!(
        runs.values().sum::<u32>(),
        1,
        "the shard ran once: {runs:?}"
    );
    stop.cancel();
    worker.await.unwrap();
}

/// A tracker killed between a workflow node's end and the judging of its successor — `a`'s
/// result written, `b` still waiting for it — leaves `b` to the next master's sweep, which
/// queues it: `b` runs once, after `a`, and the workflow succeeds; no node runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_killed_between_a_node_and_its_successor_leaves_it_to_the_sweep() {
    use lts_core::workflow::{Edge, EdgeOn, Workflow, WorkflowNode};
    const NODE_POINT: &str = "mongo-between-a-shard-and-its-job";
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(&dir.path().join("mongo")).await.unwrap();
    let store = mongo.url("nodes");
    let jobs = mongodb::Client::with_uri_str(&store)
        .await
        .unwrap()
        .database("nodes")
        .collection::<Document>("jobs");
    let port = free_port();
    let args = ["--store", store.as_str()];
    let armed = format!("{NODE_POINT}=sleep(600000)");
    let mut first = TrackerProc::start_with_env(dir.path(), port, &args, &[("FAILPOINTS", &armed)])
        .await
        .unwrap();
    let runs = Arc::new(Mutex::new(Vec::<String>::new()));
    let r = runs.clone();
    let stop = CancellationToken::new();
    let worker = TaskTracker::builder()
        .node_group("flow")
        .tracker(first.addr.clone())
        .threads(2)
        .runner(move |ctx: JobContext| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push(ctx.task_id().to_string());
                RunResult::success("done")
            }
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(worker.run_until_cancelled(stop.clone()));
    let node = |name: &str| WorkflowNode {
        name: name.into(),
        spec: JobSpec::default(),
        kept_output: None,
    };
    let mut spec = JobSpec::new("wf", "flow");
    spec.workflow = Some(Workflow {
        nodes: vec![node("a"), node("b")],
        edges: vec![Edge {
            from: "a".into(),
            to: "b".into(),
            on: EdgeOn::Success,
        }],
    });
    let id = match first.client().submit(spec).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    // a's end is written, b still waits: kill the tracker now.
    eventually(T, "a's end to be written", || async {
        let a = jobs
            .find_one(doc! { "shard_of": &id, "shard_index": 0i64, "done": { "$ne": "" } })
            .await
            .unwrap()?;
        let b = jobs
            .find_one(doc! { "shard_of": &id, "shard_index": 1i64 })
            .await
            .unwrap()?;
        (b.get_i64("state").ok()? == JobState::Waiting.code()).then_some(a)
    })
    .await
    .unwrap();
    first.proc.kill9();

    let second = TrackerProc::start_on(dir.path(), port, &args)
        .await
        .unwrap();
    let client = second.client();
    let job = eventually(T, "the sweep to move the workflow on", || async {
        let j = client.get(lts_core::JobKey::Id(id.clone())).await.ok()?;
        j.state.is_final().then_some(j)
    })
    .await
    .unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs, ["wf/a", "wf/b"], "each node ran once, in order");
    stop.cancel();
    worker.await.unwrap();
}

/// A tracker killed between a workflow's cancel and the cancel of its nodes — the workflow
/// written cancelled, its running node not — leaves nothing to run on: when that node's result
/// arrives at the next tracker, its successor is cancelled with the rest of the run instead of
/// being judged to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_killed_between_a_workflows_cancel_and_its_nodes_runs_no_successor() {
    use lts_core::workflow::{Edge, EdgeOn, Workflow, WorkflowNode};
    const CASCADE_POINT: &str = "mongo-between-a-job-and-its-cascade";
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(&dir.path().join("mongo")).await.unwrap();
    let store = mongo.url("cancels");
    let jobs = mongodb::Client::with_uri_str(&store)
        .await
        .unwrap()
        .database("cancels")
        .collection::<Document>("jobs");
    let port = free_port();
    let args = ["--store", store.as_str()];
    let armed = format!("{CASCADE_POINT}=sleep(600000)");
    let mut first = TrackerProc::start_with_env(dir.path(), port, &args, &[("FAILPOINTS", &armed)])
        .await
        .unwrap();
    let runs = Arc::new(Mutex::new(Vec::<String>::new()));
    let r = runs.clone();
    let stop = CancellationToken::new();
    let worker = TaskTracker::builder()
        .node_group("flow")
        .tracker(first.addr.clone())
        .threads(2)
        .runner(move |ctx: JobContext| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push(ctx.task_id().to_string());
                // Long enough to cancel the workflow and kill the tracker meanwhile.
                tokio::time::sleep(Duration::from_secs(3)).await;
                RunResult::success("done")
            }
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(worker.run_until_cancelled(stop.clone()));
    let node = |name: &str| WorkflowNode {
        name: name.into(),
        spec: JobSpec::default(),
        kept_output: None,
    };
    let mut spec = JobSpec::new("wf", "flow");
    spec.workflow = Some(Workflow {
        nodes: vec![node("a"), node("b")],
        edges: vec![Edge {
            from: "a".into(),
            to: "b".into(),
            on: EdgeOn::Success,
        }],
    });
    let client = first.client();
    let id = match client.submit(spec).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    eventually(T, "a to run", || async {
        (runs.lock().unwrap().as_slice() == ["wf/a"]).then_some(())
    })
    .await
    .unwrap();
    // The cancel writes the workflow, then sleeps before its nodes: kill the tracker there.
    let cancel = tokio::spawn({
        let id = id.clone();
        async move { client.cancel(lts_core::JobKey::Id(id)).await }
    });
    eventually(T, "the workflow to be written cancelled", || async {
        let wf = jobs.find_one(doc! { "_id": &id }).await.unwrap()?;
        let a = jobs
            .find_one(doc! { "shard_of": &id, "shard_index": 0i64 })
            .await
            .unwrap()?;
        (wf.get_i64("state").ok()? == JobState::Cancelled.code()
            && a.get_i64("state").ok()? == JobState::Running.code())
        .then_some(())
    })
    .await
    .unwrap();
    first.proc.kill9();
    cancel.abort();

    let second = TrackerProc::start_on(dir.path(), port, &args)
        .await
        .unwrap();
    let client = second.client();
    // a's result reaches the second tracker; b is cancelled, not run.
    let b = eventually(T, "b to end", || async {
        let d = jobs
            .find_one(doc! { "shard_of": &id, "shard_index": 1i64 })
            .await
            .unwrap()?;
        let state = JobState::from_code(d.get_i64("state").ok()?)?;
        state.is_final().then_some(state)
    })
    .await
    .unwrap();
    assert_eq!(b, JobState::Cancelled);
    let wf = client.get(lts_core::JobKey::Id(id.clone())).await.unwrap();
    assert_eq!(wf.state, JobState::Cancelled);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs, ["wf/a"], "b never ran");
    stop.cancel();
    worker.await.unwrap();
}

/// The same cut-short cancel with a node still queued (no node end comes to clean up): the
/// next master's sweep cancels it before any TaskTracker takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_node_of_a_workflow_cancelled_by_a_killed_tracker_is_cancelled_by_the_sweep() {
    use lts_core::workflow::{Workflow, WorkflowNode};
    const CASCADE_POINT: &str = "mongo-between-a-job-and-its-cascade";
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(&dir.path().join("mongo")).await.unwrap();
    let store = mongo.url("sweeps");
    let jobs = mongodb::Client::with_uri_str(&store)
        .await
        .unwrap()
        .database("sweeps")
        .collection::<Document>("jobs");
    let port = free_port();
    let args = ["--store", store.as_str()];
    let armed = format!("{CASCADE_POINT}=sleep(600000)");
    let mut first = TrackerProc::start_with_env(dir.path(), port, &args, &[("FAILPOINTS", &armed)])
        .await
        .unwrap();
    let runs = Arc::new(Mutex::new(Vec::<String>::new()));
    let r = runs.clone();
    let stop = CancellationToken::new();
    // One thread: while a runs, c waits queued.
    let worker = TaskTracker::builder()
        .node_group("flow")
        .tracker(first.addr.clone())
        .threads(1)
        .prefetch(0)
        .runner(move |ctx: JobContext| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push(ctx.task_id().to_string());
                tokio::time::sleep(Duration::from_secs(10)).await;
                RunResult::success("done")
            }
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(worker.run_until_cancelled(stop.clone()));
    let node = |name: &str| WorkflowNode {
        name: name.into(),
        spec: JobSpec::default(),
        kept_output: None,
    };
    let mut spec = JobSpec::new("wf", "flow");
    spec.workflow = Some(Workflow {
        nodes: vec![node("a"), node("c")],
        edges: Vec::new(),
    });
    let client = first.client();
    let id = match client.submit(spec).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    eventually(T, "one node to run", || async {
        (runs.lock().unwrap().len() == 1).then_some(())
    })
    .await
    .unwrap();
    let cancel = tokio::spawn({
        let id = id.clone();
        async move { client.cancel(lts_core::JobKey::Id(id)).await }
    });
    eventually(T, "the workflow to be written cancelled", || async {
        let wf = jobs.find_one(doc! { "_id": &id }).await.unwrap()?;
        (wf.get_i64("state").ok()? == JobState::Cancelled.code()).then_some(())
    })
    .await
    .unwrap();
    first.proc.kill9();
    cancel.abort();
    let queued = jobs
        .find_one(doc! { "shard_of": &id, "state": JobState::Queued.code() })
        .await
        .unwrap()
        .expect("the other node still queued");
    let queued_id = queued.get_str("_id").unwrap().to_string();

    let _second = TrackerProc::start_on(dir.path(), port, &args)
        .await
        .unwrap();
    let state = eventually(T, "the sweep to cancel the queued node", || async {
        let d = jobs.find_one(doc! { "_id": &queued_id }).await.unwrap()?;
        let state = JobState::from_code(d.get_i64("state").ok()?)?;
        state.is_final().then_some(state)
    })
    .await
    .unwrap();
    assert_eq!(state, JobState::Cancelled);
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "the queued node never ran: {runs:?}");
    stop.cancel();
    worker.await.unwrap();
}

/// A tracker killed between a map-reduce job's reduce step's end and the job's — the step's
/// result written, the job still waiting — leaves the job to the next master's sweep, which
/// ends it with the step's outcome; the step does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_killed_between_a_reduce_step_and_its_job_leaves_the_job_to_the_sweep() {
    const POINT: &str = "mongo-between-a-job-and-its-cascade";
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(&dir.path().join("mongo")).await.unwrap();
    let store = mongo.url("reduce");
    let jobs = mongodb::Client::with_uri_str(&store)
        .await
        .unwrap()
        .database("reduce")
        .collection::<Document>("jobs");
    let port = free_port();
    let args = ["--store", store.as_str()];
    // The first cascade (the run's end, which queues the reduce step) goes through; the
    // second (the step's end, which ends the job) waits until the tracker is killed.
    let armed = format!("{POINT}=1*off->sleep(600000)");
    let first = TrackerProc::start_with_env(dir.path(), port, &args, &[("FAILPOINTS", &armed)])
        .await
        .unwrap();
    let reduces = Arc::new(Mutex::new(0u32));
    let r = reduces.clone();
    let stop = CancellationToken::new();
    let worker = TaskTracker::builder()
        .node_group("mr")
        .tracker(first.addr.clone())
        .threads(2)
        .runner(move |ctx: JobContext| {
            let r = r.clone();
            async move {
                if ctx.is_reduce() {
                    *r.lock().unwrap() += 1;
                    return RunResult::success("reduced");
                }
                RunResult::success("mapped nothing")
            }
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(worker.run_until_cancelled(stop.clone()));
    let mut spec = JobSpec::new("words", "mr");
    spec.map_reduce = Some(lts_core::model::MapReduce {
        reduce: true,
        max_children: None,
    });
    let mut first = first;
    let id = match first.client().submit(spec).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    eventually(T, "the reduce step's end to be written", || async {
        let step = jobs
            .find_one(doc! { "task_id": "words#reduce", "done": { "$ne": "" } })
            .await
            .unwrap()?;
        let job = jobs.find_one(doc! { "_id": &id }).await.unwrap()?;
        (job.get_i64("state").ok()? == JobState::Running.code()).then_some(step)
    })
    .await
    .unwrap();
    first.proc.kill9();

    let second = TrackerProc::start_on(dir.path(), port, &args)
        .await
        .unwrap();
    let client = second.client();
    let job = eventually(T, "the sweep to end the map-reduce job", || async {
        let j = client.get(lts_core::JobKey::Id(id.clone())).await.ok()?;
        j.state.is_final().then_some(j)
    })
    .await
    .unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    // The sweep ends it with the step's own outcome and message, as the step's end would have.
    assert_eq!(
        job.last_message.as_deref(),
        Some("reduce SUCCESS after 0 children (0 succeeded, 0 failed): reduced"),
        "{job:?}"
    );
    assert_eq!(*reduces.lock().unwrap(), 1, "the reduce step ran once");
    stop.cancel();
    worker.await.unwrap();
}

/// A tracker killed between a workflow's resume and its nodes' — the workflow written resumed,
/// its nodes still suspended — leaves the nodes to the next master's sweep, which resumes
/// them, so the workflow runs to its end instead of stalling; a node a user suspended on its
/// own after the workflow's resume stays suspended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_killed_between_a_workflows_resume_and_its_nodes_leaves_them_to_the_sweep() {
    use lts_core::JobKey;
    use lts_core::workflow::{Edge, EdgeOn, Workflow, WorkflowNode};
    const CASCADE_POINT: &str = "mongo-between-a-job-and-its-cascade";
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(&dir.path().join("mongo")).await.unwrap();
    let store = mongo.url("resumes");
    let jobs = mongodb::Client::with_uri_str(&store)
        .await
        .unwrap()
        .database("resumes")
        .collection::<Document>("jobs");
    let port = free_port();
    let args = ["--store", store.as_str()];
    let mut first = TrackerProc::start_on(dir.path(), port, &args)
        .await
        .unwrap();
    let runs = Arc::new(Mutex::new(Vec::<String>::new()));
    let r = runs.clone();
    let stop = CancellationToken::new();
    let worker = TaskTracker::builder()
        .node_group("flow")
        .tracker(first.addr.clone())
        .threads(2)
        .runner(move |ctx: JobContext| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push(ctx.task_id().to_string());
                if ctx.task_id() == "wf/a" || ctx.task_id() == "wf/b" {
                    // Long enough to suspend the workflow (a) or a node (b) meanwhile.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                RunResult::success("done")
            }
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(worker.run_until_cancelled(stop.clone()));
    let node = |name: &str| WorkflowNode {
        name: name.into(),
        spec: JobSpec::default(),
        kept_output: None,
    };
    let edge = |from: &str, to: &str| Edge {
        from: from.into(),
        to: to.into(),
        on: EdgeOn::Success,
    };
    let mut spec = JobSpec::new("wf", "flow");
    spec.workflow = Some(Workflow {
        nodes: vec![node("a"), node("b"), node("c")],
        edges: vec![edge("a", "b"), edge("b", "c")],
    });
    let client = first.client();
    let id = match client.submit(spec).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    eventually(T, "a to run", || async {
        (runs.lock().unwrap().as_slice() == ["wf/a"]).then_some(())
    })
    .await
    .unwrap();
    client.suspend(JobKey::Id(id.clone())).await.unwrap();
    let node_doc = |index: i64| {
        let jobs = jobs.clone();
        let id = id.clone();
        async move {
            jobs.find_one(doc! { "shard_of": &id, "shard_index": index })
                .await
                .unwrap()
        }
    };
    let node_state = |index: i64| {
        let doc = node_doc(index);
        async move { JobState::from_code(doc.await?.get_i64("state").ok()?) }
    };
    // a ends; b, suspended with the workflow, stays suspended.
    eventually(T, "b suspended after a's end", || async {
        (node_state(1).await? == JobState::Suspended).then_some(())
    })
    .await
    .unwrap();
    first.proc.kill9();

    // The resume writes the workflow, then sleeps before its nodes: kill the tracker there.
    let armed = format!("{CASCADE_POINT}=sleep(600000)");
    let mut second =
        TrackerProc::start_with_env(dir.path(), port, &args, &[("FAILPOINTS", &armed)])
            .await
            .unwrap();
    let resume = tokio::spawn({
        let client = second.client();
        let id = id.clone();
        async move { client.resume(JobKey::Id(id)).await }
    });
    eventually(T, "the workflow to be written resumed", || async {
        let wf = jobs.find_one(doc! { "_id": &id }).await.unwrap()?;
        (!wf.get_bool("suspend_requested").unwrap_or(false)).then_some(())
    })
    .await
    .unwrap();
    second.proc.kill9();
    resume.abort();
    assert_eq!(node_state(1).await, Some(JobState::Suspended));
    assert_eq!(node_state(2).await, Some(JobState::Waiting));

    let third = TrackerProc::start_on(dir.path(), port, &args)
        .await
        .unwrap();
    let client = third.client();
    // The sweep resumes b and c; while b runs, a user suspends c on its own.
    eventually(T, "b to run and c to be resumed", || async {
        let c = node_doc(2).await?;
        (runs.lock().unwrap().iter().any(|t| t == "wf/b")
            && !c.get_bool("suspend_requested").unwrap_or(false))
        .then_some(())
    })
    .await
    .unwrap();
    let c_id = node_doc(2)
        .await
        .unwrap()
        .get_str("_id")
        .unwrap()
        .to_string();
    client.suspend(JobKey::Id(c_id.clone())).await.unwrap();
    eventually(T, "c suspended after b's end", || async {
        (node_state(1).await? == JobState::Succeeded && node_state(2).await? == JobState::Suspended)
            .then_some(())
    })
    .await
    .unwrap();
    // Two sweeps later c is still suspended, and the workflow waits for it.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(node_state(2).await, Some(JobState::Suspended));
    assert!(!runs.lock().unwrap().iter().any(|t| t == "wf/c"));
    client.resume(JobKey::Id(c_id)).await.unwrap();
    let wf = eventually(T, "the workflow to end", || async {
        let wf = client.get(JobKey::Id(id.clone())).await.ok()?;
        wf.state.is_final().then_some(wf)
    })
    .await
    .unwrap();
    assert_eq!(wf.state, JobState::Succeeded, "{:?}", wf.last_message);
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs, ["wf/a", "wf/b", "wf/c"], "each node once, in order");
    stop.cancel();
    worker.await.unwrap();
}

/// The claim's own guard, before any sweep: the queued nodes of a workflow that a tracker's
/// death left ended, or suspended, without its cascade to them are not leased. Store-level on
/// a real mongod: the first of the two writes is made by hand, as such a death leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_leaves_alone_the_queued_nodes_of_an_ended_or_suspended_workflow() {
    use lts_core::workflow::{Workflow, WorkflowNode};
    use lts_tracker::store::mongo::{MongoOptions, MongoStore};
    use lts_tracker::store::{JobStore, SubmitOutcome};
    const NOW: i64 = 1_800_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(&dir.path().join("mongo")).await.unwrap();
    let url = mongo.url("held");
    let store = MongoStore::connect(&url, "held", MongoOptions::default())
        .await
        .unwrap();
    let jobs = mongodb::Client::with_uri_str(&url)
        .await
        .unwrap()
        .database("held")
        .collection::<Document>("jobs");
    let claim = |max: usize| lts_tests::claim_request("flow", "w1", max, NOW);
    let node = |name: &str| WorkflowNode {
        name: name.into(),
        spec: JobSpec::default(),
        kept_output: None,
    };
    let workflow = |task: &str| {
        let mut spec = JobSpec::new(task, "flow");
        spec.workflow = Some(Workflow {
            nodes: vec![node("x"), node("y")],
            edges: Vec::new(),
        });
        spec
    };
    let ids: Vec<String> = store
        .submit(
            vec![workflow("ended"), workflow("suspended"), workflow("kept")],
            NOW,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|o| match o {
            SubmitOutcome::Accepted { job_id } => job_id,
            other => panic!("{other:?}"),
        })
        .collect();
    // The claim that starts the three workflows writes their nodes, queued.
    store.claim(claim(10)).await.unwrap();
    let queued = doc! { "state": JobState::Queued.code() };
    let mut all_queued = queued.clone();
    all_queued.insert("shard_of", doc! { "$in": &ids });
    assert_eq!(jobs.count_documents(all_queued).await.unwrap(), 6);
    // A cancel and a suspend cut short after their first write.
    jobs.update_one(
        doc! { "_id": &ids[0] },
        doc! { "$set": { "state": JobState::Cancelled.code(), "done": &ids[0], "finished_at": NOW } },
    )
    .await
    .unwrap();
    jobs.update_one(
        doc! { "_id": &ids[1] },
        doc! { "$set": { "suspend_requested": true } },
    )
    .await
    .unwrap();
    let leases = store.claim(claim(10)).await.unwrap();
    let mut leased: Vec<String> = leases.iter().map(|l| l.job.spec.task_id.clone()).collect();
    leased.sort();
    assert_eq!(
        leased,
        ["kept/x", "kept/y"],
        "only the kept workflow's nodes"
    );
    for held in &ids[..2] {
        let mut nodes = queued.clone();
        nodes.insert("shard_of", held);
        assert_eq!(
            jobs.count_documents(nodes).await.unwrap(),
            2,
            "{held}'s nodes wait"
        );
    }
}
