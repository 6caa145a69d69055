//! Affinity with real processes: two `lts-worker` sidecars, one labelled `gpu=a100` (by
//! `--label`) and one `zone=eu` (by `LTS_LABELS`); every job asking for a label runs on the
//! sidecar that has it, and the jobs without affinity run anywhere.

use std::time::{Duration, Instant};

use lts_core::{JobKey, JobSpec, JobState};
use lts_tests::{Proc, TrackerProc};
use lts_worker_sdk::SubmitAnswer;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_only_on_task_trackers_whose_labels_they_ask_for() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let runs = dir.path().join("runs.txt");
    let worker = |name: &str, flags: &[&str], env: Option<&str>| {
        let script = format!("echo \"$LTS_TASK_ID {name}\" >> {}", runs.display());
        let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
        cmd.args(["--tracker", &tracker.addr, "--node-group", "labelled"])
            .args(["--identity", name, "--threads", "2", "--exec", &script])
            .args(flags);
        if let Some(labels) = env {
            cmd.env("LTS_LABELS", labels);
        }
        Proc::spawn(cmd, dir.path().join(format!("{name}.log"))).unwrap()
    };
    let _gpu = worker("gpu", &["--label", "gpu=a100"], None);
    let _eu = worker("eu", &[], Some("zone=eu,tier=web"));

    let mut ids = Vec::new();
    for i in 0..18 {
        let mut spec = JobSpec::new(format!("job-{i}"), "labelled");
        match i % 3 {
            0 => {
                spec.affinity.insert("gpu".into(), "a100".into());
            }
            1 => {
                spec.affinity.insert("zone".into(), "eu".into());
            }
            _ => {}
        }
        match client.submit(spec).await.unwrap() {
            SubmitAnswer::Accepted { job_id } => ids.push(job_id),
            other => panic!("{other:?}"),
        }
    }
    let started = Instant::now();
    for id in &ids {
        loop {
            let j = client.get(JobKey::Id(id.clone())).await.unwrap();
            if j.state.is_final() {
                assert_eq!(j.state, JobState::Succeeded, "{j:?}");
                break;
            }
            assert!(started.elapsed() < T, "{j:?} never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ran = std::fs::read_to_string(&runs).unwrap();
    let mut count = 0;
    for line in ran.lines() {
        let (task, on) = line.split_once(' ').unwrap();
        let i: usize = task.trim_start_matches("job-").parse().unwrap();
        match i % 3 {
            0 => assert_eq!(on, "gpu", "{line}"),
            1 => assert_eq!(on, "eu", "{line}"),
            _ => {}
        }
        count += 1;
    }
    assert_eq!(count, 18, "each job once: {ran}");
}
