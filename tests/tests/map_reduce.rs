//! Map-reduce with real processes: a run maps 1,000 items through the SDK (`ctx.map`), a
//! TaskTracker runs the children, the tracker is killed with `kill -9` while they run and
//! started again on the same store, and still every child runs (none lost; none run twice
//! beyond the runs in flight at the kill), the reduce step runs once with every child's result,
//! and the job ends with the reduce's outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_core::model::MapReduce;
use lts_core::{JobSpec, JobState};
use lts_tests::{MongoServer, TrackerProc, eventually, wait_final};
use lts_worker_sdk::{JobContext, RunResult, SubmitAnswer, TaskTracker};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(120);
const CHILDREN: u32 = 1_000;
const THREADS: u32 = 8;

/// What the runner saw: runs of each child (by index), reduce steps and their sums.
#[derive(Default)]
struct Seen {
    children: HashMap<u32, u32>,
    reduces: Vec<u64>,
}

/// The runner: the job's run maps `0..n` (in calls of 100); a child doubles its item; the
/// reduce step sums the children's outputs.
async fn run(ctx: JobContext, seen: Arc<Mutex<Seen>>) -> RunResult {
    if ctx.is_reduce() {
        let results = match ctx.map_results().await {
            Ok(r) => r,
            Err(e) => return RunResult::later(format!("results: {e}")),
        };
        let sum: u64 = results
            .iter()
            .filter(|r| r.state == JobState::Succeeded)
            .filter_map(|r| r.message.parse::<u64>().ok())
            .sum();
        seen.lock().unwrap().reduces.push(sum);
        return RunResult::success(format!("{} results, sum {sum}", results.len()));
    }
    if let Some(item) = ctx.map_item() {
        let i: u32 = item.parse().unwrap();
        *seen.lock().unwrap().children.entry(i).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
        return RunResult::success((u64::from(i) * 2).to_string());
    }
    let n: u32 = ctx.param("n").unwrap().parse().unwrap();
    for start in (0..n).step_by(100) {
        let items = (start..(start + 100).min(n))
            .map(|i| i.to_string())
            .collect();
        if let Err(e) = ctx.map(items).await {
            return RunResult::later(format!("map: {e}"));
        }
    }
    RunResult::success(format!("mapped {n}"))
}

fn map_reduce_job(task: &str) -> JobSpec {
    let mut spec = JobSpec::new(task, "mr").param("n", CHILDREN.to_string());
    spec.map_reduce = Some(MapReduce {
        reduce: true,
        max_children: None,
    });
    spec.max_retries = 3;
    spec
}

/// Runs the job through `tracker` with an SDK TaskTracker, kills the tracker with `kill -9`
/// once `kill_after` children ran, starts it again (`restart`), and checks the outcome.
async fn survive_a_kill<F, Fut>(tracker_addr: &str, client: lts_worker_sdk::JobClient, restart: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = CancellationToken::new();
    let runner_seen = seen.clone();
    let tt = TaskTracker::builder()
        .node_group("mr")
        .tracker(tracker_addr.to_string())
        .identity("mr-worker")
        .threads(THREADS)
        .runner(move |ctx: JobContext| run(ctx, runner_seen.clone()))
        .build()
        .unwrap();
    let worker = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    let job_id = match client.submit(map_reduce_job("words")).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    eventually(T, "300 children to run", || async {
        (seen.lock().unwrap().children.len() >= 300).then_some(())
    })
    .await
    .unwrap();
    restart().await;
    let job = wait_final(&client, &job_id, T).await.unwrap();
    let expected_sum: u64 = (0..u64::from(CHILDREN)).map(|i| i * 2).sum();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(
        job.last_message.as_deref(),
        Some(
            format!(
                "reduce SUCCESS after {CHILDREN} children ({CHILDREN} succeeded, 0 failed): \
                 {CHILDREN} results, sum {expected_sum}"
            )
            .as_str()
        ),
        "{job:?}"
    );
    let (reduces, children) = {
        let seen = seen.lock().unwrap();
        (seen.reduces.clone(), seen.children.clone())
    };
    assert_eq!(reduces, [expected_sum], "the reduce step ran once");
    assert_eq!(children.len(), CHILDREN as usize, "no child lost");
    let twice = children.values().filter(|&&n| n > 1).count();
    assert!(
        twice <= (2 * THREADS) as usize,
        "{twice} children ran twice: more than the runs in flight at the kill"
    );
    stop.cancel();
    let _ = worker.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_children_survive_a_tracker_kill9_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let (addr, client) = (tracker.addr.clone(), tracker.client());
    let slot = Arc::new(Mutex::new(Some(tracker)));
    let restart = {
        let slot = slot.clone();
        move || async move {
            let old = slot.lock().unwrap().take().unwrap();
            let new = old.restart_after_kill9().await.unwrap();
            *slot.lock().unwrap() = Some(new);
        }
    };
    survive_a_kill(&addr, client, restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_children_survive_a_tracker_kill9_on_mongodb() {
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(&dir.path().join("mongo")).await.unwrap();
    let store = mongo.url("mapreduce");
    let tracker = TrackerProc::start(dir.path(), &["--store", &store])
        .await
        .unwrap();
    let (addr, client) = (tracker.addr.clone(), tracker.client());
    let slot = Arc::new(Mutex::new(Some(tracker)));
    let restart = {
        let slot = slot.clone();
        move || async move {
            let old = slot.lock().unwrap().take().unwrap();
            let new = old.restart_after_kill9().await.unwrap();
            *slot.lock().unwrap() = Some(new);
        }
    };
    survive_a_kill(&addr, client, restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_past_its_budget_or_of_a_plain_job_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let answers = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = CancellationToken::new();
    let seen = answers.clone();
    let tt = TaskTracker::builder()
        .node_group("mr")
        .tracker(tracker.addr.clone())
        .threads(2)
        .runner(move |ctx: JobContext| {
            let seen = seen.clone();
            async move {
                let items = (0..6).map(|i| i.to_string()).collect();
                let answer = match ctx.map(items).await {
                    Ok(n) => format!("{}: created {n}", ctx.task_id()),
                    Err(e) => format!("{}: {e}", ctx.task_id()),
                };
                seen.lock().unwrap().push(answer);
                RunResult::failed("done")
            }
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    let mut small = JobSpec::new("small", "mr");
    small.map_reduce = Some(MapReduce {
        reduce: false,
        max_children: Some(5),
    });
    for spec in [small, JobSpec::new("plain", "mr")] {
        let SubmitAnswer::Accepted { job_id } = client.submit(spec).await.unwrap() else {
            panic!()
        };
        let job = wait_final(&client, &job_id, T).await.unwrap();
        assert_eq!(job.state, JobState::Failed);
    }
    let mut answers = answers.lock().unwrap().clone();
    answers.sort();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(
        answers[0].starts_with("plain: ") && answers[0].contains("not a map-reduce job"),
        "{answers:?}"
    );
    assert!(
        answers[1].starts_with("small: ") && answers[1].contains("at most 5 children"),
        "{answers:?}"
    );
    stop.cancel();
    let _ = worker.await;
}

/// The sidecar's contract: a run maps with `lts:map ITEM` lines on stdout, a child gets its
/// item as `LTS_MAP_ITEM` and answers with `lts:output`, and the reduce step (`LTS_REDUCE=1`)
/// reads every child's result from its payload on stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_maps_from_stdout_and_reduces_from_its_payload() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let script = r#"
if [ -n "$LTS_REDUCE" ]; then
  sum=$(grep -o '"message":"[0-9]*"' | grep -o '[0-9][0-9]*' | awk '{ s += $1 } END { print s }')
  echo "lts:output sum $sum"
elif [ -n "$LTS_MAP_ITEM" ]; then
  echo "lts:output $((LTS_MAP_ITEM * 2))"
else
  i=0
  while [ $i -lt 1000 ]; do echo "lts:map $i"; i=$((i + 1)); done
fi
"#;
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args([
        "--tracker",
        &tracker.addr,
        "--node-group",
        "mr",
        "--threads",
        "8",
    ])
    .args(["--exec", script]);
    let _worker = lts_tests::Proc::spawn(cmd, dir.path().join("worker.log")).unwrap();
    let SubmitAnswer::Accepted { job_id } = client.submit(map_reduce_job("sidecar")).await.unwrap()
    else {
        panic!()
    };
    let job = wait_final(&client, &job_id, T).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(
        job.last_message.as_deref(),
        Some("reduce SUCCESS after 1000 children (1000 succeeded, 0 failed): sum 999000")
    );
}

/// Results larger than one gRPC message are read in pages the tracker cuts by size: 300
/// children with 60 KiB items (18 MB, past the tracker's 16 MiB message limit) reach the reduce
/// step whole, every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_reach_the_reduce_step_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let stop = CancellationToken::new();
    let tt = TaskTracker::builder()
        .node_group("mr")
        .tracker(tracker.addr.clone())
        .threads(4)
        .runner(|ctx: JobContext| async move {
            if ctx.is_reduce() {
                return match ctx.map_results().await {
                    Ok(r) if r.iter().all(|c| c.item.len() == 60 * 1024) => {
                        RunResult::success(format!("{} results", r.len()))
                    }
                    Ok(r) => RunResult::failed(format!("{} results, some cut", r.len())),
                    Err(e) => RunResult::failed(e.to_string()),
                };
            }
            if ctx.map_item().is_some() {
                return RunResult::success("ok");
            }
            let items = (0..300).map(|_| "x".repeat(60 * 1024)).collect();
            match ctx.map(items).await {
                Ok(_) => RunResult::success("mapped"),
                Err(e) => RunResult::failed(e.to_string()),
            }
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    let SubmitAnswer::Accepted { job_id } = client.submit(map_reduce_job("large")).await.unwrap()
    else {
        panic!()
    };
    let job = wait_final(&client, &job_id, T).await.unwrap();
    assert_eq!(
        job.last_message.as_deref(),
        Some("reduce SUCCESS after 300 children (300 succeeded, 0 failed): 300 results"),
        "{job:?}"
    );
    stop.cancel();
    let _ = worker.await;
}
