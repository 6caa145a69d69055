//! A tracker bounds what peers may hold or ask for: a stream that never says who it is is
//! closed, streams beyond the cap are refused, an absurd thread count is refused with its
//! field named, and pages and logs are cut to their maximum. Real tracker process, raw gRPC.

use std::time::{Duration, Instant};

use lts_core::JobSpec;
use lts_core::proto::{
    self, job_service_client::JobServiceClient, worker_message,
    worker_service_client::WorkerServiceClient,
};
use lts_tests::TrackerProc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

type Outbox = mpsc::UnboundedSender<proto::WorkerMessage>;

fn hello(identity: &str, threads: u32) -> proto::WorkerMessage {
    proto::WorkerMessage {
        msg: Some(worker_message::Msg::Hello(proto::Hello {
            cluster: "default".into(),
            node_group: "g".into(),
            identity: identity.into(),
            threads,
            version: "test".into(),
            ..Default::default()
        })),
    }
}

/// Opens a Work stream; the answer to its opening, and the sender that keeps it open.
async fn open(
    addr: &str,
    first: Option<proto::WorkerMessage>,
) -> (
    Result<tonic::Streaming<proto::TrackerMessage>, tonic::Status>,
    Outbox,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(m) = first {
        tx.send(m).unwrap();
    }
    let mut stub = WorkerServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let answer = stub
        .work(UnboundedReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (answer, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streams_end_extra_streams_are_refused_and_absurd_threads_named() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(
        dir.path(),
        &["--hello-timeout-ms", "500", "--max-worker-streams", "2"],
    )
    .await
    .unwrap();

    // Says nothing: closed after the Hello timeout, naming the flag.
    let started = Instant::now();
    let (silent, _keep) = open(&tracker.addr, None).await;
    let status = silent.expect_err("a stream without Hello is refused");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("--hello-timeout-ms"),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // u32::MAX threads: refused, the field named.
    let (huge, _keep) = open(&tracker.addr, Some(hello("greedy", u32::MAX))).await;
    let status = huge.expect_err("u32::MAX threads are refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("hello.threads"), "{status:?}");

    // Two streams fit; a third is refused until one ends.
    let (a, keep_a) = open(&tracker.addr, Some(hello("a", 1))).await;
    let (b, _keep_b) = open(&tracker.addr, Some(hello("b", 1))).await;
    let (mut a, _b) = (a.unwrap(), b.unwrap());
    let (c, _keep_c) = open(&tracker.addr, Some(hello("c", 1))).await;
    let status = c.expect_err("a third stream is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-worker-streams"),
        "{status:?}"
    );
    drop(keep_a);
    while let Ok(Some(_)) = a.message().await {}
    let again = lts_tests::eventually(Duration::from_secs(10), "a slot free again", || async {
        let (d, keep) = open(&tracker.addr, Some(hello("d", 1))).await;
        d.ok().map(|s| (s, keep))
    })
    .await;
    assert!(again.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_logs_are_cut_to_their_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &["--max-page-size", "5"])
        .await
        .unwrap();
    let client = tracker.client();
    client
        .submit_batch(
            (0..12)
                .map(|i| JobSpec::new(format!("p{i}"), "pages"))
                .collect(),
        )
        .await
        .unwrap();
    let mut raw = JobServiceClient::connect(format!("http://{}", tracker.addr))
        .await
        .unwrap();
    let refused = raw
        .list(proto::ListJobsRequest {
            page_size: u32::MAX,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("page_size: must be at most 5"),
        "{refused:?}"
    );
    let page = raw
        .list(proto::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.jobs.len(),
        5,
        "the default page is cut to --max-page-size"
    );
    assert!(
        !page.next_page_token.is_empty(),
        "and the rest is a page away"
    );
    let log = raw
        .get_log(proto::GetLogRequest {
            job_id: page.jobs[0].job_id.clone(),
            limit: u32::MAX,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !log.entries.is_empty(),
        "a huge log limit is cut, not refused"
    );
}
