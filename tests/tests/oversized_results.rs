//! A run that reports too much — one enormous output line, more lines than the tracker's
//! message limit holds, or a raw client's unbounded report — never wedges its TaskTracker: the
//! report is cut (with markers) in the sidecar, the worker keeps the result under the limit the
//! tracker announces, the tracker bounds what it stores, and the jobs behind it run.

use std::time::Duration;

use lts_core::limits::{ReportLimits, TRUNCATED_MARKER};
use lts_core::proto::{self, worker_message};
use lts_core::{JobSpec, JobState, LogType};
use lts_tests::{Proc, RawWorker, TrackerProc, wait_final};
use lts_worker_sdk::SubmitAnswer;

const T: Duration = Duration::from_secs(30);

fn accepted(a: SubmitAnswer) -> String {
    match a {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    }
}

/// An `lts-worker` of group `group` running `script` per job (`$LTS_PARAM_MODE` picks what
/// it prints).
fn worker(tracker: &TrackerProc, dir: &std::path::Path, group: &str, extra: &[&str]) -> Proc {
    let script = r#"case "$LTS_PARAM_MODE" in
  huge-line) head -c 5000000 /dev/zero | tr '\0' x; echo ;;
  many-lines) i=0; while [ $i -lt 200 ]; do head -c 3000 /dev/zero | tr '\0' y; echo; i=$((i+1)); done ;;
  *) echo small ;;
esac"#;
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args([
        "--tracker",
        &tracker.addr,
        "--node-group",
        group,
        "--threads",
        "1",
    ])
    .args(extra)
    .arg("--exec")
    .arg(script);
    Proc::spawn(cmd, dir.join(format!("{group}-worker.log"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_megabyte_line_is_cut_and_the_next_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let _w = worker(&tracker, dir.path(), "huge", &[]);
    let huge = accepted(
        client
            .submit(JobSpec::new("huge", "huge").param("mode", "huge-line"))
            .await
            .unwrap(),
    );
    let after = accepted(client.submit(JobSpec::new("after", "huge")).await.unwrap());
    let j = wait_final(&client, &huge, T).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let log = client.log(&huge, 100).await.unwrap();
    let line = log
        .iter()
        .find(|l| l.log_type == LogType::Biz)
        .expect("the output line is in the job log");
    assert!(
        line.message.len() <= ReportLimits::default().log_line_bytes,
        "{} bytes",
        line.message.len()
    );
    assert!(line.message.starts_with("xxxx"));
    assert!(line.message.contains(TRUNCATED_MARKER), "{}", line.message);
    let j = wait_final(&client, &after, T).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "the job behind it ran: {j:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_over_the_trackers_message_limit_drops_its_lines_and_keeps_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    // 200 lines of 3,000 bytes (600 KB) against a 64 KiB message limit.
    let tracker = TrackerProc::start(dir.path(), &["--max-message-bytes", "65536"])
        .await
        .unwrap();
    let client = tracker.client();
    let w = worker(&tracker, dir.path(), "limit", &[]);
    let big = accepted(
        client
            .submit(JobSpec::new("big", "limit").param("mode", "many-lines"))
            .await
            .unwrap(),
    );
    let after = accepted(client.submit(JobSpec::new("after", "limit")).await.unwrap());
    let j = wait_final(&client, &big, T).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let log = client.log(&big, 100).await.unwrap();
    let biz: Vec<_> = log.iter().filter(|l| l.log_type == LogType::Biz).collect();
    assert_eq!(biz.len(), 1, "{biz:?}");
    assert!(
        biz[0]
            .message
            .contains("200 business-log lines were dropped")
            && biz[0].message.contains("65536-byte message limit"),
        "{}",
        biz[0].message
    );
    let j = wait_final(&client, &after, T).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert!(
        w.output().contains("result over the message limit"),
        "the worker says why it dropped lines"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_bounds_what_a_raw_client_reports_and_says_why_it_refuses_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(
        dir.path(),
        &["--max-log-lines", "10", "--max-message-bytes", "1048576"],
    )
    .await
    .unwrap();
    let client = tracker.client();
    let id = accepted(client.submit(JobSpec::new("raw", "raw")).await.unwrap());

    let mut raw = RawWorker::connect(&tracker.addr, "raw", "raw-worker")
        .await
        .unwrap();
    let send = raw.sender();
    let welcome = raw.inbound.message().await.unwrap().unwrap();
    let Some(proto::tracker_message::Msg::Welcome(w)) = welcome.msg else {
        panic!("{welcome:?}")
    };
    assert_eq!(w.max_message_bytes, 1_048_576, "the limit is announced");
    let assignment = raw.assignment().await.unwrap();
    // 5,000 lines and a 100 KB message: within the message limit, beyond what is stored.
    send(worker_message::Msg::Result(proto::JobResult {
        job_id: id.clone(),
        lease_token: assignment.lease_token,
        outcome: proto::Outcome::Success as i32,
        message: "m".repeat(100_000),
        logs: (0..5_000)
            .map(|i| proto::BizLog {
                time_ms: 1,
                level: "INFO".into(),
                message: format!("line {i}"),
            })
            .collect(),
        ..Default::default()
    }));
    let j = wait_final(&client, &id, T).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let message = j.last_message.unwrap_or_default();
    assert!(
        message.len() <= ReportLimits::default().message_bytes
            && message.contains(TRUNCATED_MARKER),
        "{} bytes",
        message.len()
    );
    let log = client.log(&id, 1_000).await.unwrap();
    let biz: Vec<_> = log.iter().filter(|l| l.log_type == LogType::Biz).collect();
    assert_eq!(biz.len(), 10, "{biz:?}");
    assert!(
        biz[5].message.contains("4991 log lines dropped"),
        "{:?}",
        biz[5]
    );

    // A message over the limit ends the stream with a status that says so.
    send(worker_message::Msg::Result(proto::JobResult {
        job_id: "nobody".into(),
        message: "z".repeat(2 << 20),
        ..Default::default()
    }));
    let status = loop {
        match raw.inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
}
