//! A poison job — one whose run kills its worker — is not retried for ever: each lost run is
//! counted, the next is held back by a growing backoff, and past `max_lease_losses` the job
//! fails with a FIXED_DEAD line. Real processes: a tracker, and `lts-worker` sidecars whose
//! job kills the sidecar itself with `kill -9` (as an OOM kill would).

use std::time::{Duration, Instant};

use lts_core::{JobKey, JobSpec, JobState, LogType, Outcome};
use lts_tests::{Proc, TrackerProc, eventually};
use lts_worker_sdk::SubmitAnswer;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_worker_fails_after_its_lost_runs_are_spent() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(
        dir.path(),
        &["--orphan-grace-ms", "300", "--retry-min-delay-ms", "300"],
    )
    .await
    .unwrap();
    let client = tracker.client();
    let runs = dir.path().join("runs.txt");
    // Each run writes its attempt and when it started (ms since the epoch, this machine's clock).
    let script = format!(
        "echo \"$LTS_ATTEMPT $(date +%s%3N)\" >> {}; kill -9 $PPID",
        runs.display()
    );
    let spawn_worker = |n: usize| {
        let mut cmd = std::process::Command::new(lts_tests::bin("lts-worker"));
        cmd.args(["--tracker", &tracker.addr, "--node-group", "poison"])
            .args(["--threads", "1", "--exec", &script]);
        Proc::spawn(cmd, dir.path().join(format!("worker-{n}.log"))).unwrap()
    };

    // Two lost runs allowed, and one retry of a reported failure (which must stay unused).
    let spec = JobSpec::new("oom", "poison")
        .max_lease_losses(2)
        .max_retries(1);
    let id = match client.submit(spec).await.unwrap() {
        SubmitAnswer::Accepted { job_id } => job_id,
        other => panic!("{other:?}"),
    };

    // Like a Deployment, start a new worker whenever the last one died.
    let started = Instant::now();
    let mut workers = vec![spawn_worker(0)];
    let job = loop {
        assert!(started.elapsed() < T, "the poison job never ended");
        let j = client.get(JobKey::Id(id.clone())).await.unwrap();
        if j.state.is_final() {
            break j;
        }
        if let Some(last) = workers.last_mut()
            && last.has_exited()
        {
            let n = workers.len();
            workers.push(spawn_worker(n));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert_eq!(job.last_outcome, Some(Outcome::Exception));
    assert_eq!((job.attempt, job.lease_losses), (3, 3));
    let message = job.last_message.clone().unwrap_or_default();
    assert!(
        message.contains("run lost 3 times, more than max_lease_losses (2) allows"),
        "{message}"
    );
    let ran = std::fs::read_to_string(&runs).unwrap();
    let (attempts, started): (Vec<&str>, Vec<i64>) = ran
        .lines()
        .map(|l| {
            let (attempt, at) = l.split_once(' ').unwrap();
            (attempt, at.parse::<i64>().unwrap())
        })
        .unzip();
    assert_eq!(attempts, ["1", "2", "3"], "three runs, then no more");

    let log = client.log(&id, 100).await.unwrap();
    let dead: Vec<&str> = log
        .iter()
        .filter(|l| l.log_type == LogType::FixedDead)
        .map(|l| l.message.as_str())
        .collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead[0].contains("lost run 1 of at most 2"), "{}", dead[0]);
    assert!(dead[1].contains("lost run 2 of at most 2"), "{}", dead[1]);
    // Each run after a loss started after its backoff (300 ms, then 600 ms, each plus up to
    // one more of jitter) from when the loss was noticed. (It may be sent up to the tracker's
    // claim-ahead before that; the TaskTracker holds it until its start.)
    let sent = log.iter().filter(|l| l.log_type == LogType::Sent).count();
    let lost: Vec<i64> = log
        .iter()
        .filter(|l| l.log_type == LogType::FixedDead)
        .map(|l| l.time_ms)
        .collect();
    assert_eq!(sent, 3, "{log:?}");
    assert!(started[1] - lost[0] >= 300, "{started:?} {lost:?}");
    assert!(started[2] - lost[1] >= 600, "{started:?} {lost:?}");
    // Each loss was noticed from the ended stream (orphan grace 300 ms), not from the lease's
    // expiry 15 s later — a run claimed ahead of its start included.
    for (run, noticed) in started.iter().zip(&lost) {
        assert!(noticed - run < 10_000, "{started:?} {lost:?}");
    }

    // Nothing runs it again, however many workers come.
    let n = workers.len();
    workers.push(spawn_worker(n));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 3);
    eventually(Duration::from_secs(5), "the queue is empty", || async {
        let s = client.stats(Some("poison")).await.ok()?;
        (s.queued == 0 && s.running == 0).then_some(())
    })
    .await
    .unwrap();
}
