//! The job path end to end: a real `lts-tracker` process, TaskTrackers (the SDK in this
//! process, or `lts-worker` processes) and clients over real gRPC on loopback.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lts_core::proto::{self, worker_service_client::WorkerServiceClient};
use lts_core::{JobKey, JobSpec, JobState, LogType, Outcome, Schedule, now_ms};
use lts_tests::{TrackerProc, eventually, wait_final};
use lts_worker_sdk::{
    ClientError, JobClient, JobContext, RetryingAnswer, RetryingJobClient, RunResult, SubmitAnswer,
    TaskTracker,
};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

fn worker(
    tracker: &TrackerProc,
    group: &str,
    threads: u32,
    runner: impl lts_worker_sdk::JobRunner,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let tt = TaskTracker::builder()
        .node_group(group)
        .tracker(tracker.addr.clone())
        .threads(threads)
        .runner(runner)
        .build()
        .expect("worker");
    let h = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    (stop, h)
}

fn accepted(a: &SubmitAnswer) -> String {
    match a {
        SubmitAnswer::Accepted { job_id } => job_id.clone(),
        other => panic!("expected accepted, got {other:?}"),
    }
}

#[tokio::test]
async fn jobs_run_by_priority_then_trigger_time_then_submit_order() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let now = now_ms();
    let specs = vec![
        JobSpec::new("low", "order"),
        JobSpec::new("high", "order").priority(10),
        JobSpec::new("mid", "order").priority(5),
        JobSpec::new("past", "order").schedule(Schedule::TriggerAt {
            trigger_time_ms: now - 60_000,
        }),
        JobSpec::new("later", "order")
            .priority(100)
            .schedule(Schedule::TriggerAt {
                trigger_time_ms: now + 1_500,
            }),
        JobSpec::new("low2", "order"),
    ];
    for a in client.submit_batch(specs).await.unwrap() {
        accepted(&a);
    }
    let order = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let o = order.clone();
    let (stop, h) = worker(&tracker, "order", 1, move |ctx: JobContext| {
        let o = o.clone();
        async move {
            o.lock()
                .unwrap()
                .push((ctx.task_id().to_string(), now_ms()));
            RunResult::success("")
        }
    });
    eventually(T, "six runs", || async {
        (order.lock().unwrap().len() == 6).then_some(())
    })
    .await
    .unwrap();
    let got: Vec<(String, i64)> = order.lock().unwrap().clone();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["high", "mid", "past", "low", "low2", "later"]);
    // The trigger time is respected.
    assert!(got[5].1 >= now + 1_500, "ran before its trigger time");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn duplicates_are_ignored_and_replace_on_exist_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let first = client
        .submit(JobSpec::new("dup", "dedup").param("v", "1"))
        .await
        .unwrap();
    let id = accepted(&first);
    let again = client
        .submit(JobSpec::new("dup", "dedup").param("v", "2"))
        .await
        .unwrap();
    assert_eq!(again, SubmitAnswer::Duplicate { job_id: id.clone() });
    let job = client.get(JobKey::Id(id.clone())).await.unwrap();
    assert_eq!(
        job.spec.params["v"], "1",
        "a duplicate must not change the job"
    );

    let replaced = client
        .submit(
            JobSpec::new("dup", "dedup")
                .param("v", "3")
                .priority(4)
                .replace_on_exist(true),
        )
        .await
        .unwrap();
    assert_eq!(replaced, SubmitAnswer::Replaced { job_id: id.clone() });
    let job = client.get(JobKey::Id(id.clone())).await.unwrap();
    assert_eq!(job.spec.params["v"], "3");
    assert_eq!(job.spec.priority, 4);
    let log = client.log(&id, 100).await.unwrap();
    assert!(log.iter().any(|l| l.log_type == LogType::Update));

    // Exactly one run, with the replaced parameters.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let (stop, h) = worker(&tracker, "dedup", 2, move |ctx: JobContext| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .push(ctx.param("v").unwrap_or("").to_string());
            RunResult::success("")
        }
    });
    let done = wait_final(&client, &id, T).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(*seen.lock().unwrap(), vec!["3".to_string()]);

    // Once finished, the same task id is a new job.
    let new = client.submit(JobSpec::new("dup", "dedup")).await.unwrap();
    assert_ne!(accepted(&new), id);
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn later_and_exception_are_retried_with_backoff_until_retries_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &["--retry-min-delay-ms", "200"])
        .await
        .unwrap();
    let client = tracker.client();
    let starts = Arc::new(Mutex::new(BTreeMap::<String, Vec<(u32, Instant)>>::new()));
    let s = starts.clone();
    let (stop, h) = worker(&tracker, "retry", 4, move |ctx: JobContext| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .entry(ctx.task_id().to_string())
                .or_default()
                .push((ctx.attempt, Instant::now()));
            match (ctx.task_id(), ctx.attempt) {
                ("eventually", 1) => RunResult::later("busy"),
                ("eventually", 2) => RunResult::exception("boom"),
                ("eventually", _) => RunResult::success("third time lucky"),
                _ => RunResult::later("never ready"),
            }
        }
    });
    let ok = accepted(
        &client
            .submit(JobSpec::new("eventually", "retry").max_retries(2))
            .await
            .unwrap(),
    );
    let exhausted = accepted(
        &client
            .submit(JobSpec::new("exhausted", "retry").max_retries(1))
            .await
            .unwrap(),
    );
    let job = wait_final(&client, &ok, T).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempt, 3);
    let job = wait_final(&client, &exhausted, T).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempt, 2);
    assert_eq!(job.last_outcome, Some(Outcome::Later));

    let runs = starts.lock().unwrap().clone();
    let r = &runs["eventually"];
    assert_eq!(r.iter().map(|(a, _)| *a).collect::<Vec<_>>(), [1, 2, 3]);
    // Exponential backoff: at least 200 ms, then at least 400 ms.
    assert!(r[1].1 - r[0].1 >= Duration::from_millis(200));
    assert!(r[2].1 - r[1].1 >= Duration::from_millis(400));
    let log = client.log(&ok, 100).await.unwrap();
    let resends = log.iter().filter(|l| l.log_type == LogType::Resend).count();
    assert_eq!(resends, 2, "{log:#?}");
    stop.cancel();
    h.await.unwrap();
}

/// Opens a raw Work stream with this Hello and `credits` free threads.
async fn open_raw_stream(
    addr: &str,
    hello: proto::Hello,
    credits: u32,
) -> (
    tokio::sync::mpsc::UnboundedSender<proto::WorkerMessage>,
    tonic::Streaming<proto::TrackerMessage>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let send = |m| proto::WorkerMessage { msg: Some(m) };
    tx.send(send(proto::worker_message::Msg::Hello(hello)))
        .unwrap();
    tx.send(send(proto::worker_message::Msg::Credit(proto::Credit {
        n: credits,
    })))
    .unwrap();
    let inbound = WorkerServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .work(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

fn raw_hello(group: &str, identity: &str, threads: u32, heartbeat_ms: u32) -> proto::Hello {
    proto::Hello {
        cluster: "default".into(),
        node_group: group.into(),
        identity: identity.into(),
        threads,
        version: "test".into(),
        running: vec![],
        heartbeat_ms,
        prefetch: 0,
        waits_for_start: false,
        labels: Default::default(),
    }
}

/// Opens a raw Work stream and takes one job without ever renewing its lease.
async fn raw_worker_take_one(
    addr: &str,
    group: &str,
) -> (
    tokio::sync::mpsc::UnboundedSender<proto::WorkerMessage>,
    tonic::Streaming<proto::TrackerMessage>,
    proto::Assignment,
) {
    let (tx, mut inbound) = open_raw_stream(addr, raw_hello(group, "raw-worker", 1, 0), 1).await;
    loop {
        let m = tokio::time::timeout(T, inbound.next())
            .await
            .expect("an assignment")
            .expect("stream open")
            .unwrap();
        if let Some(proto::tracker_message::Msg::Assign(a)) = m.msg {
            return (tx, inbound, a);
        }
    }
}

/// A job due later is claimed ahead of its trigger time for a TaskTracker that holds it until
/// then (the SDK's), and starts on time, never before; a TaskTracker that does not wait (an
/// older one: no `waits_for_start` in its Hello) is sent a job only once it is due.
#[tokio::test]
async fn a_job_claimed_ahead_starts_at_its_trigger_time_and_never_before() {
    let dir = tempfile::tempdir().unwrap();
    // Two seconds ahead: long enough to see the job held before it starts.
    let tracker = TrackerProc::start(dir.path(), &["--claim-ahead-ms", "2000"])
        .await
        .unwrap();
    let client = tracker.client();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let seen = starts.clone();
    let (stop, h) = worker(&tracker, "ahead", 2, move |ctx: JobContext| {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .push((ctx.job.job_id.clone(), now_ms()));
            RunResult::success("on time")
        }
    });
    let due = now_ms() + 3_000;
    let later = JobSpec::new("later", "ahead").schedule(Schedule::TriggerAt {
        trigger_time_ms: due,
    });
    let id = accepted(&client.submit(later).await.unwrap());
    // Half a second before its trigger time it is leased, and not started.
    tokio::time::sleep(Duration::from_millis((due - 500 - now_ms()).max(0) as u64)).await;
    let held = client.get(JobKey::Id(id.clone())).await.unwrap();
    assert_eq!(held.state, JobState::Running, "claimed ahead: {held:?}");
    assert!(starts.lock().unwrap().is_empty(), "started early");
    let done = wait_final(&client, &id, T).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    let started = starts.lock().unwrap().clone();
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(
        started[0].1 >= due,
        "started {} ms early",
        due - started[0].1
    );
    stop.cancel();
    h.await.unwrap();

    // A TaskTracker that does not wait gets the job when it is due, to start at once.
    let (_tx, mut inbound) =
        open_raw_stream(&tracker.addr, raw_hello("older", "older-worker", 1, 0), 1).await;
    let due = now_ms() + 1_500;
    let later = JobSpec::new("later", "older").schedule(Schedule::TriggerAt {
        trigger_time_ms: due,
    });
    let id = accepted(&client.submit(later).await.unwrap());
    let a = loop {
        let m = tokio::time::timeout(T, inbound.next())
            .await
            .expect("an assignment")
            .expect("stream open")
            .unwrap();
        if let Some(proto::tracker_message::Msg::Assign(a)) = m.msg {
            break a;
        }
    };
    assert!(
        now_ms() >= due,
        "sent {} ms before it was due",
        due - now_ms()
    );
    assert_eq!(a.job.unwrap().job_id, id);
    assert_eq!(a.start_in_ms, 0);
}

/// A user's cancel of a running job reaches its TaskTracker at once, not at its next lease
/// renewal: the run is cancelled well within the renewal period (20 s here), and the job stays
/// `CANCELLED`.
#[tokio::test]
async fn a_cancelled_running_job_is_stopped_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A minute's lease: TaskTrackers renew every 20 s.
    let tracker = TrackerProc::start(dir.path(), &["--lease-ms", "60000"])
        .await
        .unwrap();
    let client = tracker.client();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (stopped_tx, mut stopped) = tokio::sync::mpsc::unbounded_channel();
    let (stop, h) = worker(&tracker, "cancel", 1, move |ctx: JobContext| {
        let (started_tx, stopped_tx) = (started_tx.clone(), stopped_tx.clone());
        async move {
            let _ = started_tx.send(());
            tokio::select! {
                _ = ctx.cancel.cancelled() => { let _ = stopped_tx.send(()); }
                _ = tokio::time::sleep(Duration::from_secs(120)) => {}
            }
            RunResult::success("ran to the end")
        }
    });
    let id = accepted(&client.submit(JobSpec::new("long", "cancel")).await.unwrap());
    tokio::time::timeout(T, started.recv())
        .await
        .unwrap()
        .unwrap();
    let cancelled = client.cancel(JobKey::Id(id.clone())).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    tokio::time::timeout(Duration::from_secs(10), stopped.recv())
        .await
        .expect("the run was stopped before the next renewal")
        .unwrap();
    let j = client.get(JobKey::Id(id)).await.unwrap();
    assert_eq!(j.state, JobState::Cancelled, "{j:?}");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_requeues_the_job_and_the_stale_result_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Long orphan grace: only the lease expiry can bring the job back.
    let tracker = TrackerProc::start(
        dir.path(),
        &["--lease-ms", "1000", "--orphan-grace-ms", "600000"],
    )
    .await
    .unwrap();
    let client = tracker.client();
    let id = accepted(&client.submit(JobSpec::new("hang", "lease")).await.unwrap());
    let (tx, mut inbound, assignment) = raw_worker_take_one(&tracker.addr, "lease").await;
    assert_eq!(assignment.job.as_ref().unwrap().job_id, id);
    // It never renews; the sweep puts the job back.
    eventually(T, "the job to be queued again", || async {
        let j = client.get(JobKey::Id(id.clone())).await.ok()?;
        (j.state == JobState::Queued).then_some(())
    })
    .await
    .unwrap();
    let log = client.log(&id, 100).await.unwrap();
    assert!(
        log.iter().any(|l| l.log_type == LogType::FixedDead),
        "{log:#?}"
    );

    // Another TaskTracker runs it.
    let (stop, h) = worker(&tracker, "lease", 1, |_ctx: JobContext| async {
        RunResult::success("second try")
    });
    let done = wait_final(&client, &id, T).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.attempt, 2);

    // The first worker's late result is refused.
    tx.send(proto::WorkerMessage {
        msg: Some(proto::worker_message::Msg::Result(proto::JobResult {
            job_id: id.clone(),
            lease_token: assignment.lease_token.clone(),
            outcome: proto::Outcome::Failed as i32,
            message: "late".into(),
            credits: 1,
            ..Default::default()
        })),
    })
    .unwrap();
    let ack = loop {
        let m = tokio::time::timeout(T, inbound.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(proto::tracker_message::Msg::ResultAck(a)) = m.msg {
            break a;
        }
    };
    assert!(!ack.accepted);
    assert!(!ack.reason.is_empty());
    let after = client.get(JobKey::Id(id.clone())).await.unwrap();
    assert_eq!(
        after.state,
        JobState::Succeeded,
        "a stale result must not change the job"
    );
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn jobs_of_a_killed_worker_process_run_again_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args([
        "--tracker",
        &tracker.addr,
        "--node-group",
        "vanish",
        "--threads",
        "2",
        "--exec",
        "sleep 60",
    ]);
    let mut doomed = lts_tests::Proc::spawn(cmd, dir.path().join("doomed-worker.log")).unwrap();
    let ids: Vec<String> = client
        .submit_batch(vec![
            JobSpec::new("v1", "vanish"),
            JobSpec::new("v2", "vanish"),
        ])
        .await
        .unwrap()
        .iter()
        .map(accepted)
        .collect();
    eventually(T, "both jobs running on the doomed worker", || async {
        let s = client.stats(Some("vanish")).await.ok()?;
        (s.running == 2).then_some(())
    })
    .await
    .unwrap();
    doomed.kill9();
    let killed_at = Instant::now();
    let (stop, h) = worker(&tracker, "vanish", 2, |_ctx: JobContext| async {
        RunResult::success("rescued")
    });
    for id in &ids {
        let j = wait_final(&client, id, T).await.unwrap();
        assert_eq!(j.state, JobState::Succeeded);
        assert_eq!(j.last_message.as_deref(), Some("rescued"));
    }
    // Default settings: well under the lease time (orphan grace 2 s).
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn feedback_waits_for_a_subscriber_and_unacknowledged_feedback_is_resent() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let (stop, h) = worker(&tracker, "fbw", 2, |ctx: JobContext| async move {
        ctx.log().info("working");
        RunResult::success(format!("done {}", ctx.task_id()))
    });
    let id = accepted(
        &client
            .submit(JobSpec::new("fb1", "fbw").feedback_to("fbc"))
            .await
            .unwrap(),
    );
    wait_final(&client, &id, T).await.unwrap();
    assert_eq!(client.stats(None).await.unwrap().pending_feedback, 1);

    // A subscriber that receives but never acknowledges, then goes away.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(proto::FeedbackClientMessage {
        msg: Some(proto::feedback_client_message::Msg::Subscribe(
            proto::FeedbackSubscribe {
                submit_node_group: "fbc".into(),
                identity: "forgetful".into(),
            },
        )),
    })
    .unwrap();
    let mut fc = proto::feedback_service_client::FeedbackServiceClient::connect(format!(
        "http://{}",
        tracker.addr
    ))
    .await
    .unwrap();
    let mut stream = fc
        .subscribe(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(T, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.job.unwrap().job_id, id);
    drop(stream);
    drop(tx);

    // The next subscriber of the group gets it, and its acknowledgement removes it.
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let sub = client.subscribe_feedback("fbc", "good-client", move |item| {
        g.lock().unwrap().push(item);
    });
    eventually(T, "feedback redelivered", || async {
        (got.lock().unwrap().len() == 1).then_some(())
    })
    .await
    .unwrap();
    let item = got.lock().unwrap()[0].clone();
    assert_eq!(item.job.job_id, id);
    assert_eq!(item.outcome, Outcome::Success);
    assert_eq!(item.message, "done fb1");
    eventually(T, "the ack to be stored", || async {
        (client.stats(None).await.ok()?.pending_feedback == 0).then_some(())
    })
    .await
    .unwrap();
    sub.stop().await;
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn the_retrying_client_spools_while_no_tracker_runs_and_delivers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let port = lts_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let retrying = RetryingJobClient::open(
        JobClient::new(std::slice::from_ref(&addr)).unwrap(),
        dir.path().join("client-spool.db"),
    )
    .unwrap();
    for i in 0..3 {
        let a = retrying
            .submit(vec![JobSpec::new(format!("spooled-{i}"), "spool")])
            .await
            .unwrap();
        assert_eq!(a, RetryingAnswer::Spooled);
    }
    assert_eq!(retrying.spooled().await.unwrap(), 3);

    let tracker = TrackerProc::start_on(dir.path(), port, &[]).await.unwrap();
    assert!(retrying.flush(T).await.unwrap(), "spool not delivered");
    let (jobs, _) = tracker
        .client()
        .list(lts_worker_sdk::ListQuery {
            node_group: Some("spool".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let tasks: Vec<&str> = jobs.iter().map(|j| j.spec.task_id.as_str()).collect();
    assert_eq!(
        tasks,
        ["spooled-0", "spooled-1", "spooled-2"],
        "in order, once each"
    );

    // Submitting again while connected goes straight through.
    let a = retrying
        .submit(vec![JobSpec::new("direct", "spool")])
        .await
        .unwrap();
    assert!(
        matches!(a, RetryingAnswer::Submitted(ref v) if matches!(v[0], SubmitAnswer::Accepted { .. }))
    );
}

#[tokio::test]
async fn spooled_entries_that_can_never_go_out_are_quarantined_and_nothing_behind_them_waits() {
    let dir = tempfile::tempdir().unwrap();
    let spool_path = dir.path().join("client-spool.db");
    // A spool as a crash or a bug may leave it: a torn entry, and a job too large for any
    // message, between good ones.
    let spool = lts_worker_sdk::spool::Spool::open(&spool_path).unwrap();
    let body = |spec: &JobSpec| serde_json::to_string(spec).unwrap();
    let huge = JobSpec::new("huge", "quarantine").param("blob", "x".repeat(20 << 20));
    spool
        .push(vec![
            body(&JobSpec::new("first", "quarantine")),
            "{\"task_id\": \"torn".into(),
            body(&huge),
            body(&JobSpec::new("last", "quarantine")),
        ])
        .await
        .unwrap();
    drop(spool);
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let retrying = RetryingJobClient::open(
        JobClient::new(std::slice::from_ref(&tracker.addr)).unwrap(),
        &spool_path,
    )
    .unwrap();
    assert!(retrying.flush(T).await.unwrap(), "the spool drained");
    let (jobs, _) = tracker
        .client()
        .list(lts_worker_sdk::ListQuery {
            node_group: Some("quarantine".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let tasks: Vec<&str> = jobs.iter().map(|j| j.spec.task_id.as_str()).collect();
    assert_eq!(tasks, ["first", "last"], "the good ones, in order");
    let mut quarantine = spool_path.as_os_str().to_owned();
    quarantine.push(".quarantine.jsonl");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&quarantine)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("unreadable")
    );
    assert_eq!(lines[0]["body"], "{\"task_id\": \"torn");
    assert!(
        lines[1]["reason"].as_str().unwrap().starts_with("refused"),
        "{}",
        lines[1]["reason"]
    );
}

#[tokio::test]
async fn kill_9_of_the_tracker_loses_no_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &["--lease-ms", "2000"])
        .await
        .unwrap();
    let client = tracker.client();
    let specs: Vec<JobSpec> = (0..40)
        .map(|i| JobSpec::new(format!("durable-{i}"), "crash"))
        .collect();
    let ids: Vec<String> = client
        .submit_batch(specs)
        .await
        .unwrap()
        .iter()
        .map(accepted)
        .collect();
    // Some jobs run while the tracker dies.
    let runs = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
    let r = runs.clone();
    let (stop, h) = worker(&tracker, "crash", 4, move |ctx: JobContext| {
        let r = r.clone();
        async move {
            *r.lock()
                .unwrap()
                .entry(ctx.task_id().to_string())
                .or_default() += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            RunResult::success("")
        }
    });
    eventually(T, "some jobs to run", || async {
        (runs.lock().unwrap().len() >= 4).then_some(())
    })
    .await
    .unwrap();
    let tracker = tracker.restart_after_kill9().await.unwrap();
    let client = tracker.client();
    for id in &ids {
        let j = wait_final(&client, id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    }
    assert_eq!(runs.lock().unwrap().len(), 40, "every job ran");
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn the_exec_sidecar_maps_exit_codes_and_logs_output() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args([
        "--tracker",
        &tracker.addr,
        "--node-group",
        "shell",
        "--threads",
        "3",
        "--exec",
        "echo \"hello from $LTS_TASK_ID\"; exit $LTS_PARAM_CODE",
    ]);
    let _sidecar = lts_tests::Proc::spawn(cmd, dir.path().join("sidecar.log")).unwrap();
    let mut expect = Vec::new();
    for (code, state, outcome) in [
        ("0", JobState::Succeeded, Outcome::Success),
        ("75", JobState::Failed, Outcome::Later),
        ("3", JobState::Failed, Outcome::Failed),
    ] {
        let id = accepted(
            &client
                .submit(JobSpec::new(format!("exit-{code}"), "shell").param("code", code))
                .await
                .unwrap(),
        );
        expect.push((id, code, state, outcome));
    }
    for (id, code, state, outcome) in expect {
        let j = wait_final(&client, &id, T).await.unwrap();
        assert_eq!(j.state, state, "exit {code}: {j:?}");
        assert_eq!(j.last_outcome, Some(outcome), "exit {code}");
        let log = client.log(&id, 100).await.unwrap();
        assert!(
            log.iter()
                .any(|l| l.log_type == LogType::Biz
                    && l.message == format!("hello from exit-{code}")),
            "exit {code}: {log:#?}"
        );
    }
}

#[tokio::test]
async fn invalid_jobs_are_rejected_with_the_field_named_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let mut feedback_without_group = JobSpec::new("fb", "inv");
    feedback_without_group.need_feedback = true;
    let mut rely_now = JobSpec::new("rely", "inv");
    rely_now.rely_on_prev_cycle = true;
    let cases: Vec<(JobSpec, &[&str])> = vec![
        (JobSpec::new("", "inv"), &["task_id"]),
        (JobSpec::new("x".repeat(65), "inv"), &["task_id"]),
        (JobSpec::new("ok", ""), &["task_tracker_node_group"]),
        (
            JobSpec::new("ok", "bad group!"),
            &["task_tracker_node_group"],
        ),
        (feedback_without_group, &["submit_node_group"]),
        (
            JobSpec::new("r", "inv").max_retries(100_000),
            &["max_retries"],
        ),
        (
            JobSpec::new("c", "inv").schedule(Schedule::Cron {
                expression: "0 0 25 * * *".into(),
                time_zone: Some("Nowhere/City".into()),
            }),
            &["cron.expression", "cron.time_zone"],
        ),
        (
            JobSpec::new("rep", "inv").schedule(Schedule::Repeat {
                interval_ms: -5,
                count: 0,
                first_fire_ms: None,
            }),
            &["repeat.interval", "repeat.count"],
        ),
        (
            JobSpec::new("t", "inv").schedule(Schedule::TriggerAt {
                trigger_time_ms: -1,
            }),
            &["trigger_time"],
        ),
        (rely_now, &["rely_on_prev_cycle"]),
        (JobSpec::new("p", "inv").param("", "v"), &["params"]),
        (
            JobSpec::new("feb30", "inv").schedule(Schedule::Cron {
                expression: "0 0 0 30 2 *".into(),
                time_zone: None,
            }),
            &["cron.expression"],
        ),
        (JobSpec::new("report~1", "inv"), &["task_id"]),
    ];
    let n = cases.len();
    let mut specs: Vec<JobSpec> = cases.iter().map(|(s, _)| s.clone()).collect();
    specs.push(JobSpec::new("the-valid-one", "inv"));
    let answers = client.submit_batch(specs).await.unwrap();
    for ((spec, fields), answer) in cases.iter().zip(&answers) {
        match answer {
            SubmitAnswer::Rejected(v) => {
                let got: Vec<&str> = v.0.iter().map(|f| f.field.as_str()).collect();
                assert_eq!(&got, fields, "{spec:?}");
                assert!(v.0.iter().all(|f| !f.reason.is_empty()));
            }
            other => panic!("{spec:?} was not rejected: {other:?}"),
        }
    }
    assert!(matches!(answers[n], SubmitAnswer::Accepted { .. }));
    let (jobs, _) = client
        .list(lts_worker_sdk::ListQuery::default())
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "only the valid job is stored: {jobs:#?}");

    // Bad requests outside Submit name their field too.
    let err = client
        .get(JobKey::Task {
            node_group: "bad group".into(),
            task_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Invalid(v) if v.0[0].field == "task.task_tracker_node_group"),
        "{err:?}"
    );
    let err = TaskTracker::builder()
        .node_group("no spaces allowed")
        .tracker(tracker.addr.clone())
        .runner(|_c: JobContext| async { RunResult::success("") })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("node_group"), "{err}");
}

/// The tracker pings every TaskTracker stream; one that stops answering (frozen, partitioned)
/// gets no new jobs, and gets them again once it answers.
#[tokio::test]
async fn a_task_tracker_that_stops_answering_pings_gets_no_new_jobs() {
    let dir = tempfile::tempdir().unwrap();
    // Silent after 4 unanswered pings of 100 ms.
    let tracker = TrackerProc::start(dir.path(), &["--heartbeat-ms", "100"])
        .await
        .unwrap();
    let client = tracker.client();
    let (tx, mut inbound) =
        open_raw_stream(&tracker.addr, raw_hello("pings", "deaf-worker", 4, 100), 4).await;
    let send = |m| proto::WorkerMessage { msg: Some(m) };
    let mut pings = Vec::new();
    // Unanswered pings pile up for a second.
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, inbound.next()).await {
        match m.msg {
            Some(proto::tracker_message::Msg::Welcome(w)) => assert_eq!(w.heartbeat_ms, 100),
            Some(proto::tracker_message::Msg::Ping(p)) => pings.push(p.nonce),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings.len() >= 5, "pinged every 100 ms: {pings:?}");
    let id = accepted(
        &client
            .submit(JobSpec::new("wait-for-me", "pings"))
            .await
            .unwrap(),
    );
    // Silent: the job waits, though the stream has four free threads.
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, inbound.next()).await {
        assert!(
            !matches!(m.msg, Some(proto::tracker_message::Msg::Assign(_))),
            "a silent TaskTracker was given a job"
        );
    }
    let job = client.get(JobKey::Id(id.clone())).await.unwrap();
    assert_eq!(job.state, JobState::Queued);
    // Answering the late pings does not count (they are old); answering a fresh one does.
    for nonce in pings {
        tx.send(send(proto::worker_message::Msg::Pong(proto::Pong {
            nonce,
        })))
        .unwrap();
    }
    let assigned = loop {
        let m = tokio::time::timeout(T, inbound.next())
            .await
            .expect("an assignment once answering")
            .expect("stream open")
            .unwrap();
        match m.msg {
            Some(proto::tracker_message::Msg::Ping(p)) => {
                tx.send(send(proto::worker_message::Msg::Pong(proto::Pong {
                    nonce: p.nonce,
                })))
                .unwrap();
            }
            Some(proto::tracker_message::Msg::Assign(a)) => break a,
            _ => {}
        }
    };
    assert_eq!(assigned.job.unwrap().job_id, id);
    // The tracker answers the worker's pings with the same nonce.
    tx.send(send(proto::worker_message::Msg::Ping(proto::Ping {
        nonce: 42,
    })))
    .unwrap();
    let pong = loop {
        let m = tokio::time::timeout(T, inbound.next())
            .await
            .expect("a pong")
            .expect("stream open")
            .unwrap();
        if let Some(proto::tracker_message::Msg::Pong(p)) = m.msg {
            break p;
        }
    };
    assert_eq!(pong.nonce, 42);
}
