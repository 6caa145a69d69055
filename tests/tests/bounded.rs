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

/// A map (`WorkerService.Map`) is bounded before the store sees it: more than 1,000 items in
/// one call, an item over 64 KiB, or a map past the job's budget of children are refused with
/// the reason, and nothing of the refused call is stored; a stale lease token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_maps_are_refused_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let mut spec = lts_core::JobSpec::new("big-map", "mapper");
    spec.map_reduce = Some(lts_core::model::MapReduce {
        reduce: false,
        max_children: Some(1_500),
    });
    let job_id = client
        .submit(spec)
        .await
        .unwrap()
        .job_id()
        .unwrap()
        .to_string();
    let mut raw = lts_tests::RawWorker::connect(&tracker.addr, "mapper", "raw-mapper")
        .await
        .unwrap();
    let a = raw.assignment().await.unwrap();
    let channel = lts_worker_sdk::connect::connect_one(&tracker.addr, &Default::default())
        .await
        .unwrap();
    let mut stub = WorkerServiceClient::new(channel).max_encoding_message_size(64 << 20);
    let map = |first_index: u32, items: Vec<String>, token: &str| proto::MapRequest {
        job_id: job_id.clone(),
        lease_token: token.to_string(),
        first_index,
        items,
    };
    let too_many = stub
        .map(map(0, vec!["x".into(); 1_001], &a.lease_token))
        .await
        .unwrap_err();
    assert_eq!(
        too_many.code(),
        tonic::Code::InvalidArgument,
        "{too_many:?}"
    );
    assert!(
        too_many.message().contains("at most 1000 items"),
        "{too_many:?}"
    );
    let mut items = vec!["ok".to_string(); 3];
    items.push("x".repeat(64 * 1024 + 1));
    let too_long = stub.map(map(0, items, &a.lease_token)).await.unwrap_err();
    assert_eq!(
        too_long.code(),
        tonic::Code::InvalidArgument,
        "{too_long:?}"
    );
    assert!(too_long.message().contains("map item 3"), "{too_long:?}");
    let stale = stub
        .map(map(0, vec!["a".into()], "not-the-token"))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
    // Within the bounds: stored; past the budget of 1,500: refused.
    let ok = stub
        .map(map(0, vec!["a".into(); 1_000], &a.lease_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.created, 1_000);
    let over = stub
        .map(map(1_000, vec!["b".into(); 501], &a.lease_token))
        .await
        .unwrap_err();
    assert_eq!(over.code(), tonic::Code::FailedPrecondition, "{over:?}");
    assert!(over.message().contains("at most 1500 children"), "{over:?}");
    // Only the accepted call's children exist.
    let (children, _) = client
        .list(lts_worker_sdk::ListQuery {
            task_id_prefix: Some("big-map#map-".into()),
            page_size: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let (more, _) = client
        .list(lts_worker_sdk::ListQuery {
            task_id_prefix: Some("big-map#map-".into()),
            page_size: 1_000,
            page_token: children.last().map(|j| j.job_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(children.len() + more.len(), 1_000);
}
