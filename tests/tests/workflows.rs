//! Workflows with real processes, on both stores.
//!
//! * A diamond submitted with `lts workflow submit -f`: `extract` runs on `lts-worker`
//!   sidecars and hands its output on; the sidecar running it is killed (`kill -9`) and it runs
//!   again elsewhere; `transform` fails, so `report` (after its success) is skipped and `alert`
//!   (after its failure) runs with `extract`'s output; the workflow succeeds, the failure
//!   handled, and `lts workflow get` shows every node.
//! * A workflow whose second node fails is retried with `lts workflow retry`: only the failed
//!   node and what follows it run again, the first node's output handed on from the kept run.
//! * A chain of 10,000 nodes (1,000 on MongoDB) runs node after node to its end, each woken by
//!   its predecessor's end (no poll between them).

use std::path::Path;
use std::time::{Duration, Instant};

use lts_core::workflow::{Edge, EdgeOn, Workflow, WorkflowNode};
use lts_core::{JobKey, JobSpec, JobState};
use lts_tests::{MongoServer, Proc, TrackerProc};
use lts_worker_sdk::{JobContext, RunResult, SubmitAnswer, TaskTracker};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_takes_its_failure_edge_with_a_worker_killed_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    diamond(dir.path(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_takes_its_failure_edge_with_a_worker_killed_on_mongodb() {
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(dir.path()).await.unwrap();
    let store = mongo.url("diamond");
    diamond(dir.path(), &["--store", &store]).await;
}

const DIAMOND: &str = r#"
name: etl
nodeGroup: flow
nodes:
  - name: extract
    maxRetries: 0
  - name: transform
    after: [extract]
  - name: report
    after: [transform]
  - name: alert
    after: [extract]
edges:
  - { from: transform, to: alert, on: failure }
"#;

async fn diamond(dir: &Path, store: &[&str]) {
    let mut args = vec!["--orphan-grace-ms", "300"];
    args.extend_from_slice(store);
    let tracker = TrackerProc::start(dir, &args).await.unwrap();
    let runs = dir.join("runs.txt");
    let worker = |name: &str| {
        // Each run writes `task worker attempt output-of-extract`; extract takes a while and
        // hands on its output; transform fails.
        let script = format!(
            "echo \"$LTS_TASK_ID {name} $LTS_ATTEMPT ${{LTS_PARAM_OUTPUT_EXTRACT:--}}\" >> {runs}; \
             case \"$LTS_TASK_ID\" in \
               */extract) sleep 2; echo 'lts:output rows=10';; \
               */transform) echo 'bad rows' >&2; exit 3;; \
             esac",
            runs = runs.display()
        );
        let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
        cmd.args(["--tracker", &tracker.addr, "--node-group", "flow"])
            .args(["--identity", name, "--threads", "2", "--exec", &script]);
        Proc::spawn(cmd, dir.join(format!("{name}.log"))).unwrap()
    };
    let mut workers = vec![worker("w0"), worker("w1")];

    let file = dir.join("wf.yaml");
    std::fs::write(&file, DIAMOND).unwrap();
    let lts = |args: &[&str]| {
        let out = std::process::Command::new(lts_tests::bin("lts"))
            .args(args)
            .args(["--tracker", &tracker.addr, "-o", "json"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), stdout, stderr)
    };
    let (code, stdout, stderr) = lts(&["workflow", "submit", "-f", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let submitted: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(submitted["nodes"], 4, "{stdout}");
    let id = submitted["job_id"].as_str().unwrap().to_string();

    // Kill the worker that runs extract first.
    let started = Instant::now();
    let killed = loop {
        assert!(started.elapsed() < T, "extract never ran");
        if let Some(first) = lines(&runs).into_iter().find(|l| l[0] == "etl/extract") {
            let i = if first[1] == "w0" { 0 } else { 1 };
            workers[i].kill9();
            break first[1].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let client = tracker.client();
    let wf = client
        .wait(JobKey::Id(id.clone()), Some(T))
        .await
        .expect("the workflow to end");
    assert_eq!(wf.state, JobState::Succeeded, "{wf:?}");
    assert_eq!(
        wf.last_message.as_deref(),
        Some("4 nodes ended: 2 succeeded, 1 failed (1 handled by an edge), 1 skipped")
    );
    let runs = lines(&runs);
    let of = |task: &str| -> Vec<Vec<String>> {
        runs.iter().filter(|l| l[0] == task).cloned().collect()
    };
    // extract ran again on the other worker after the kill; its lost run is not a retry.
    let extract = of("etl/extract");
    assert_eq!(extract.len(), 2, "{runs:?}");
    assert_ne!(extract[1][1], killed, "{runs:?}");
    assert_eq!(extract[1][2], "2", "{runs:?}");
    // transform saw extract's output and failed once; report never ran; alert ran with it.
    assert_eq!(of("etl/transform").len(), 1, "{runs:?}");
    assert_eq!(of("etl/transform")[0][3], "rows=10", "{runs:?}");
    assert!(of("etl/report").is_empty(), "{runs:?}");
    assert_eq!(of("etl/alert").len(), 1, "{runs:?}");
    assert_eq!(of("etl/alert")[0][3], "rows=10", "{runs:?}");

    // `lts workflow get` shows each node.
    let (code, stdout, stderr) = lts(&["workflow", "get", "--job-id", &id]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let got: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let nodes: Vec<(String, String)> = got["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"]["name"].as_str().unwrap().to_string(),
                n["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("extract", "SUCCEEDED"),
        ("transform", "FAILED"),
        ("report", "SKIPPED"),
        ("alert", "SUCCEEDED"),
    ]
    .map(|(n, s)| (n.to_string(), s.to_string()));
    assert_eq!(nodes, want, "{stdout}");
    // A table too, for people.
    let out = std::process::Command::new(lts_tests::bin("lts"))
        .args([
            "workflow",
            "get",
            "--job-id",
            &id,
            "--tracker",
            &tracker.addr,
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("transform (failure)"), "{table}");
    assert!(table.contains("SKIPPED"), "{table}");
    // `lts jobs get` tells a workflow's nodes from a sharded job's shards.
    let out = std::process::Command::new(lts_tests::bin("lts"))
        .args(["jobs", "get", "--job-id", &id, "--tracker", &tracker.addr])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(
            "workflow of 4 nodes: 2 succeeded, 1 failed, 0 running, 0 pending, 1 skipped"
        ),
        "{table}"
    );

    // A bad file is refused with its field named, and nothing is stored.
    std::fs::write(
        &file,
        DIAMOND.replace("after: [transform]", "after: [nope]"),
    )
    .unwrap();
    let (code, _, stderr) = lts(&["workflow", "submit", "-f", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("nodes[2].after[0]: no node is named \"nope\""),
        "{stderr}"
    );
    drop(workers);
}

fn lines(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .filter(|f: &Vec<String>| f.len() == 4)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_10000_nodes_runs_to_its_end_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    chain(dir.path(), &[], 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_1000_nodes_runs_to_its_end_on_mongodb() {
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::start(dir.path()).await.unwrap();
    let store = mongo.url("chain");
    chain(dir.path(), &["--store", &store], 1_000).await;
}

async fn chain(dir: &Path, store: &[&str], n: usize) {
    let tracker = TrackerProc::start(dir, store).await.unwrap();
    let stop = CancellationToken::new();
    // Each node checks that it got its predecessor's output, and hands on its own.
    let tt = TaskTracker::builder()
        .node_group("chain")
        .tracker(tracker.addr.clone())
        .threads(4)
        .runner(|c: JobContext| async move {
            let name = c
                .job
                .node
                .as_ref()
                .map(|n| n.name.clone())
                .unwrap_or_default();
            let i: usize = name.trim_start_matches('n').parse().unwrap_or(0);
            if i > 0 {
                let want = format!("from n{}", i - 1);
                let got = c.job.spec.params.get(&format!("output.n{}", i - 1));
                if got != Some(&want) {
                    return RunResult::failed(format!("wanted {want:?}, got {got:?}"));
                }
            }
            RunResult::success(format!("from {name}"))
        })
        .build()
        .unwrap();
    let h = tokio::spawn(tt.run_until_cancelled(stop.clone()));

    let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let mut spec = JobSpec::new("chain", "chain");
    spec.workflow = Some(Workflow {
        nodes: names
            .iter()
            .map(|name| WorkflowNode {
                name: name.clone(),
                spec: JobSpec::default(),
                kept_output: None,
            })
            .collect(),
        edges: names
            .windows(2)
            .map(|w| Edge {
                from: w[0].clone(),
                to: w[1].clone(),
                on: EdgeOn::Success,
            })
            .collect(),
    });
    let client = tracker.client();
    let started = Instant::now();
    let id = match client.submit(spec).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    let wf = client
        .wait(JobKey::Id(id), Some(Duration::from_secs(600)))
        .await
        .expect("the chain to end");
    let took = started.elapsed();
    assert_eq!(wf.state, JobState::Succeeded, "{:?}", wf.last_message);
    let p = wf.shard_progress.unwrap();
    assert_eq!((p.succeeded, p.failed, p.skipped), (n as u32, 0, 0));
    eprintln!(
        "a chain of {n} nodes ran in {took:?}: {:.2} ms per edge",
        took.as_secs_f64() * 1e3 / n as f64
    );
    stop.cancel();
    let _ = h.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_workflow_is_retried_from_its_failed_node() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let runs = dir.path().join("runs.txt");
    let fixed = dir.path().join("fixed");
    // load fails until the file `fixed` exists.
    let script = format!(
        "echo \"$LTS_TASK_ID w $LTS_ATTEMPT ${{LTS_PARAM_OUTPUT_EXTRACT:--}}\" >> {runs}; \
         case \"$LTS_TASK_ID\" in \
           */extract) echo 'lts:output rows=7';; \
           */load) test -e {fixed} || exit 3;; \
         esac",
        runs = runs.display(),
        fixed = fixed.display()
    );
    let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
    cmd.args(["--tracker", &tracker.addr, "--node-group", "flow"])
        .args(["--threads", "2", "--exec", &script]);
    let _worker = Proc::spawn(cmd, dir.path().join("worker.log")).unwrap();
    let file = dir.path().join("wf.yaml");
    std::fs::write(
        &file,
        "name: nightly\nnodeGroup: flow\nnodes:\n  - name: extract\n  - name: load\n    after: [extract]\n  - name: report\n    after: [load]\n",
    )
    .unwrap();
    let lts = |args: &[&str]| {
        let out = std::process::Command::new(lts_tests::bin("lts"))
            .args(args)
            .args(["--tracker", &tracker.addr, "-o", "json"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), stdout, stderr)
    };
    let (code, stdout, stderr) =
        lts(&["workflow", "submit", "-f", file.to_str().unwrap(), "--wait"]);
    assert_eq!(code, Some(1), "it fails: {stdout}{stderr}");
    let first: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let first_id = first["job_id"].as_str().unwrap().to_string();
    assert_eq!(first["job"]["state"], "FAILED", "{stdout}");

    // Fixed: the retry runs load and report, not extract.
    std::fs::write(&fixed, "").unwrap();
    let (code, stdout, stderr) = lts(&["workflow", "retry", "--job-id", &first_id, "--wait"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let retried: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (retried["kept"].as_u64(), retried["to_run"].as_u64()),
        (Some(1), Some(2)),
        "{stdout}"
    );
    assert_eq!(retried["job"]["state"], "SUCCEEDED", "{stdout}");
    let retry_id = retried["job_id"].as_str().unwrap().to_string();
    // A workflow that did not fail is not retried.
    let (code, _, stderr) = lts(&["workflow", "retry", "--job-id", &retry_id]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("only a failed or cancelled workflow is retried"),
        "{stderr}"
    );

    // extract ran once; load twice (the retry with extract's kept output); report once.
    let lines = lines(&runs);
    let count = |task: &str| lines.iter().filter(|l| l[0] == task).count();
    assert_eq!(count("nightly/extract"), 1, "{lines:?}");
    assert_eq!(count("nightly-retry/extract"), 0, "{lines:?}");
    assert_eq!(
        count("nightly/load") + count("nightly-retry/load"),
        2,
        "{lines:?}"
    );
    let load_again = lines.iter().find(|l| l[0] == "nightly-retry/load").unwrap();
    assert_eq!(load_again[3], "rows=7", "{lines:?}");
    assert_eq!(count("nightly-retry/report"), 1, "{lines:?}");

    // The same through `WorkflowService` from code: the failed run's nodes, in node order…
    let client = tracker.client();
    let nodes = client
        .workflow_nodes(JobKey::Id(first_id.clone()))
        .await
        .unwrap();
    let seen: Vec<(&str, JobState)> = nodes
        .iter()
        .map(|n| (n.node.as_ref().unwrap().name.as_str(), n.state))
        .collect();
    assert_eq!(
        seen,
        [
            ("extract", JobState::Succeeded),
            ("load", JobState::Failed),
            ("report", JobState::Skipped)
        ]
    );
    // … a retry refused for a workflow that succeeded, and a "workflow" without a graph.
    let refused = client
        .retry_workflow(JobKey::Id(retry_id))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, lts_worker_sdk::ClientError::FailedPrecondition(ref m) if m.contains("only a failed")),
        "{refused:?}"
    );
    let plain = client
        .submit_workflow(JobSpec::new("plain", "flow"))
        .await
        .unwrap_err();
    assert!(plain.to_string().contains("spec.workflow"), "{plain}");
    // A second retry of the failed run is its own workflow, run again from `load`.
    let (answer, kept, to_run) = client.retry_workflow(JobKey::Id(first_id)).await.unwrap();
    assert!(
        matches!(answer, SubmitAnswer::Accepted { .. }),
        "{answer:?}"
    );
    assert_eq!((kept, to_run), (1, 2));
}
