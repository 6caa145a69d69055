//! Operations on scheduled jobs through a real tracker process, the SDK and the `lts` CLI:
//! suspend, resume, trigger-now.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_core::{ConcurrencyPolicy, JobKey, JobSpec, JobState, Schedule};
use lts_tests::{TrackerProc, eventually};
use lts_worker_sdk::{JobContext, RunResult, SubmitAnswer, TaskTracker};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

type Runs = Arc<Mutex<Vec<String>>>;

fn worker(
    tracker: &TrackerProc,
    group: &str,
    runs: Runs,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let tt = TaskTracker::builder()
        .node_group(group)
        .tracker(tracker.addr.clone())
        .threads(2)
        .runner(move |ctx: JobContext| {
            let runs = runs.clone();
            async move {
                runs.lock().unwrap().push(ctx.task_id().to_string());
                RunResult::success("")
            }
        })
        .build()
        .unwrap();
    let h = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    (stop, h)
}

fn accepted(a: &SubmitAnswer) -> String {
    match a {
        SubmitAnswer::Accepted { job_id } => job_id.clone(),
        other => panic!("expected accepted, got {other:?}"),
    }
}

/// Runs `lts ARGS --tracker ADDR`; returns (exit code, stdout, stderr).
fn lts(tracker: &TrackerProc, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(lts_tests::bin("lts"))
        .args(args)
        .args(["--tracker", &tracker.addr])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_suspended_job_never_fires_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let runs: Runs = Arc::default();
    let (stop, h) = worker(&tracker, "sched", runs.clone());
    let id = accepted(
        &client
            .submit(JobSpec::new("tick", "sched").schedule(Schedule::Repeat {
                interval_ms: 200,
                count: -1,
                first_fire_ms: None,
            }))
            .await
            .unwrap(),
    );
    let count = || runs.lock().unwrap().len();
    eventually(T, "two fires", || async { (count() >= 2).then_some(()) })
        .await
        .unwrap();

    let (code, out, err) = lts(&tracker, &["jobs", "suspend", "--job-id", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("suspended"), "{out}");
    let j = eventually(T, "the job to wait suspended", || async {
        let j = client.get(JobKey::Id(id.clone())).await.ok()?;
        (j.state == JobState::Suspended).then_some(j)
    })
    .await
    .unwrap();
    // A fire already handed out before the suspend (claimed ahead of its time, shown
    // RUNNING) still runs, as a run already started would; nothing after it.
    eventually(T, "the fires handed out to end", || async {
        let q = lts_worker_sdk::ListQuery {
            node_group: Some("sched".into()),
            state: Some(JobState::Running),
            ..Default::default()
        };
        let (running, _) = client.list(q).await.ok()?;
        running.is_empty().then_some(())
    })
    .await
    .unwrap();
    let frozen = count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(), frozen, "a suspended job fired: {j:?}");
    let (code, out, _) = lts(&tracker, &["jobs", "suspend", "--job-id", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("already suspended"), "{out}");

    // Resumed after ~7 missed fires: one catch-up run, then on schedule again.
    let (code, out, err) = lts(
        &tracker,
        &[
            "jobs",
            "resume",
            "--node-group",
            "sched",
            "--task-id",
            "tick",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("resumed"), "{out}");
    eventually(T, "fires after the resume", || async {
        (count() >= frozen + 2).then_some(())
    })
    .await
    .unwrap();
    client.cancel(JobKey::Id(id)).await.unwrap();
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn trigger_runs_one_instance_now_without_moving_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let runs: Runs = Arc::default();
    let (stop, h) = worker(&tracker, "yearly", runs.clone());
    // Fires once a year, at New Year.
    let id = accepted(
        &client
            .submit(JobSpec::new("new-year", "yearly").schedule(Schedule::Cron {
                expression: "0 0 0 1 1 *".into(),
                time_zone: Some("UTC".into()),
            }))
            .await
            .unwrap(),
    );
    let before = client.get(JobKey::Id(id.clone())).await.unwrap();
    let (code, out, err) = lts(
        &tracker,
        &["jobs", "trigger", "--job-id", &id, "--output", "json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let instance: serde_json::Value = serde_json::from_str(&out).unwrap();
    let task = instance["spec"]["task_id"].as_str().unwrap().to_string();
    assert!(task.starts_with("new-year~"), "{task}");
    eventually(T, "the triggered instance to run", || async {
        runs.lock().unwrap().contains(&task).then_some(())
    })
    .await
    .unwrap();
    let after = client.get(JobKey::Id(id.clone())).await.unwrap();
    assert_eq!(after.state, JobState::Queued);
    assert_eq!(
        after.trigger_time_ms, before.trigger_time_ms,
        "the schedule did not move"
    );
    assert_eq!(runs.lock().unwrap().len(), 1, "only the instance ran");

    // Definitions by schedule type; the next fires of one.
    let (code, out, err) = lts(
        &tracker,
        &["jobs", "list", "--type", "cron", "--output", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tasks: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["spec"]["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["new-year"]);
    let (code, out, _) = lts(&tracker, &["jobs", "list", "--type", "cron"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("NEXT FIRE") && out.contains("new-year"),
        "{out}"
    );
    let (code, out, _) = lts(&tracker, &["jobs", "get", "--job-id", &id]);
    assert_eq!(code, 0);
    let year = chrono_year_now() + 1;
    assert!(
        out.contains("next fires") && out.contains(&format!("{year}-01-01 00:00:00")),
        "{out}"
    );
    let (code, _, err) = lts(&tracker, &["jobs", "list", "--type", "weekly"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--type"), "{err}");

    // A one-off job cannot be triggered: one readable line, exit code ≠ 0.
    let one_off = accepted(
        &client
            .submit(
                JobSpec::new("later", "nobody").schedule(Schedule::TriggerAt {
                    trigger_time_ms: lts_core::now_ms() + 3_600_000,
                }),
            )
            .await
            .unwrap(),
    );
    let (code, out, err) = lts(&tracker, &["jobs", "trigger", "--job-id", &one_off]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("one-off"), "{err}");
    stop.cancel();
    h.await.unwrap();
}

fn chrono_year_now() -> i64 {
    // Days since 1970 → year, good enough away from New Year's Eve for this test.
    let days = lts_core::now_ms() / 86_400_000;
    1970 + (days * 400 / 146_097)
}

/// Runs a repeat job every 300 ms whose runs take a second; returns the most runs seen at
/// once and the scheduled fire of every run.
async fn run_slow_repeat(rely_on_prev_cycle: bool) -> (usize, Vec<i64>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let fires: Arc<Mutex<Vec<i64>>> = Arc::default();
    let stop = CancellationToken::new();
    let (r, m, f) = (running.clone(), most.clone(), fires.clone());
    let tt = TaskTracker::builder()
        .node_group("slow")
        .tracker(tracker.addr.clone())
        .threads(8)
        .runner(move |ctx: JobContext| {
            let (r, m, f) = (r.clone(), m.clone(), f.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                f.lock().unwrap().extend(ctx.job.scheduled_fire_ms);
                tokio::time::sleep(Duration::from_secs(1)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                RunResult::success("")
            }
        })
        .build()
        .unwrap();
    let h = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    let mut spec = JobSpec::new("slow", "slow").schedule(Schedule::Repeat {
        interval_ms: 300,
        count: 4,
        first_fire_ms: None,
    });
    spec.rely_on_prev_cycle = rely_on_prev_cycle;
    let id = accepted(&client.submit(spec).await.unwrap());
    let j = eventually(T, "the schedule to end", || async {
        let j = client.get(JobKey::Id(id.clone())).await.ok()?;
        let runs = fires.lock().unwrap().len();
        (j.state.is_final() && runs == 4 && running.load(Ordering::SeqCst) == 0).then_some(j)
    })
    .await
    .unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    stop.cancel();
    h.await.unwrap();
    let fires = fires.lock().unwrap().clone();
    (most.load(Ordering::SeqCst), fires)
}

#[tokio::test]
async fn overlapping_instances_run_on_time_while_earlier_ones_run() {
    let (most, fires) = run_slow_repeat(false).await;
    assert!(
        most >= 2,
        "instances did not overlap (at most {most} at once)"
    );
    assert_eq!(fires.len(), 4);
    let mut sorted = fires.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 4, "every fire once: {fires:?}");
    // On the 300 ms grid from the first fire, not pushed back by the 1 s runs.
    assert!(
        sorted.windows(2).all(|w| w[1] - w[0] == 300),
        "fires off the grid: {sorted:?}"
    );
}

#[tokio::test]
async fn relying_on_the_previous_cycle_never_overlaps() {
    let (most, fires) = run_slow_repeat(true).await;
    assert_eq!(most, 1, "a run started before the previous one ended");
    assert_eq!(fires.len(), 4);
}

/// Every fire of a cron job runs once across a `kill -9` of the tracker: none doubled, and the
/// fires missed while it was down come back as at most one catch-up run.
#[tokio::test]
async fn a_tracker_crash_neither_doubles_nor_bursts_cron_fires() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let fires: Arc<Mutex<Vec<i64>>> = Arc::default();
    let f = fires.clone();
    let stop = CancellationToken::new();
    let tt = TaskTracker::builder()
        .node_group("every-second")
        .tracker(tracker.addr.clone())
        .threads(4)
        .runner(move |ctx: JobContext| {
            let f = f.clone();
            async move {
                f.lock().unwrap().extend(ctx.job.scheduled_fire_ms);
                RunResult::success("")
            }
        })
        .build()
        .unwrap();
    let h = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    let id = accepted(
        &tracker
            .client()
            .submit(
                JobSpec::new("tick", "every-second").schedule(Schedule::Cron {
                    expression: "* * * * * *".into(),
                    time_zone: None,
                }),
            )
            .await
            .unwrap(),
    );
    let count = || fires.lock().unwrap().len();
    eventually(T, "three fires", || async { (count() >= 3).then_some(()) })
        .await
        .unwrap();
    let before = count();
    let tracker = tracker
        .restart_after_kill9_after(Duration::from_millis(3_500))
        .await
        .unwrap();
    eventually(T, "fires after the restart", || async {
        (count() >= before + 3).then_some(())
    })
    .await
    .unwrap();
    tracker.client().cancel(JobKey::Id(id)).await.unwrap();
    stop.cancel();
    h.await.unwrap();
    let mut fires = fires.lock().unwrap().clone();
    let n = fires.len();
    fires.sort();
    fires.dedup();
    assert_eq!(fires.len(), n, "a fire ran twice: {fires:?}");
    // On the seconds grid, except for the one catch-up fire after the downtime.
    let off_grid = fires.iter().filter(|t| *t % 1000 != 0).count();
    assert!(off_grid <= 1, "more than one catch-up fire: {fires:?}");
    // The 3.5 s of downtime cost at most one run per missed second beyond the catch-up:
    // never a burst of catch-up runs at the restart.
    let gaps: Vec<i64> = fires.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().filter(|g| **g < 900).count() <= 1,
        "fires bunched up after the restart: {fires:?}"
    );
}

/// Waiting for a recurring job whose fires overlap follows the instance of its next fire and
/// returns how that run ended.
#[tokio::test]
async fn waiting_for_a_recurring_job_returns_its_next_fires_run() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let runs: Runs = Arc::default();
    let (stop, h) = worker(&tracker, "waited", runs.clone());
    let first = lts_core::now_ms() + 700;
    let id = accepted(
        &client
            .submit(JobSpec::new("tick", "waited").schedule(Schedule::Repeat {
                interval_ms: 60_000,
                count: 2,
                first_fire_ms: Some(first),
            }))
            .await
            .unwrap(),
    );
    let run = client.wait(JobKey::Id(id.clone()), Some(T)).await.unwrap();
    assert_eq!(run.spec.task_id, format!("tick~{first}"), "{run:?}");
    assert_eq!(run.state, JobState::Succeeded);
    assert_eq!(run.scheduled_fire_ms, Some(first));
    assert_eq!(runs.lock().unwrap().as_slice(), [format!("tick~{first}")]);
    client.cancel(JobKey::Id(id)).await.unwrap();
    stop.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn a_cron_that_never_fires_is_refused_with_its_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let (code, out, err) = lts(
        &tracker,
        &[
            "submit",
            "--task-id",
            "feb30",
            "--node-group",
            "sched",
            "--cron",
            "0 0 0 30 2 *",
        ],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("cron.expression") && err.contains("never fires"),
        "{err}"
    );
    // A concurrency policy on a job whose runs never overlap is refused the same way.
    let (code, out, err) = lts(
        &tracker,
        &[
            "submit",
            "--task-id",
            "once",
            "--node-group",
            "sched",
            "--concurrency",
            "forbid",
        ],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("concurrency_policy") && err.contains("may overlap"),
        "{err}"
    );
    // So is a cap of concurrent runs, and one out of range.
    for (extra, why) in [
        (&["--max-concurrent", "2"][..], "may overlap"),
        (
            &["--repeat-interval", "1s", "--max-concurrent", "0"][..],
            "must be 1..=10000",
        ),
    ] {
        let mut args = vec!["submit", "--task-id", "capped", "--node-group", "sched"];
        args.extend_from_slice(extra);
        let (code, out, err) = lts(&tracker, &args);
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains("max_concurrent") && err.contains(why), "{err}");
    }
    let (jobs, _) = tracker
        .client()
        .list(lts_worker_sdk::ListQuery::default())
        .await
        .unwrap();
    assert!(jobs.is_empty(), "nothing stored: {jobs:?}");
}

/// Concurrency policy `Forbid`: a fire while the previous run is unfinished is skipped, and the
/// job's log says so; runs never overlap, and the schedule still ends on time.
#[tokio::test]
async fn a_forbidding_job_skips_fires_while_its_run_is_unfinished() {
    let spec = JobSpec::new("tick", "forbid").concurrency_policy(ConcurrencyPolicy::Forbid);
    capped_overlap(spec, 8, 1, "concurrency policy forbid", false).await;
}

/// Forbid and `max_concurrent` hold across a tracker killed (`kill -9`) and restarted while
/// runs are under way: the runs the TaskTracker still holds count when the fires resume, so
/// the cap is never passed, and no fire runs twice.
#[tokio::test]
async fn forbid_and_max_concurrent_hold_across_a_tracker_crash() {
    let spec = JobSpec::new("tick", "forbid-crash").concurrency_policy(ConcurrencyPolicy::Forbid);
    capped_overlap(spec, 14, 1, "concurrency policy forbid", true).await;
    let spec = JobSpec::new("tick", "capped-crash").max_concurrent(2);
    capped_overlap(spec, 14, 2, "max_concurrent (2) allows", true).await;
}

/// `max_concurrent: 2`: runs overlap, but never more than two at once; a fire while two are
/// unfinished is skipped and logged.
#[tokio::test]
async fn a_job_with_max_concurrent_never_runs_more_at_once() {
    let spec = JobSpec::new("tick", "capped").max_concurrent(2);
    capped_overlap(spec, 10, 2, "as many as max_concurrent (2) allows", false).await;
}

/// Runs `spec` with a repeat schedule of `fires` fires 300 ms apart, each run taking a second,
/// on one TaskTracker with threads to spare; checks that at most (and, with fires this close,
/// exactly) `cap` runs overlapped, that no fire ran twice, and that every fire either ran or
/// was logged skipped with `skip_note` — or, with `crash` (the tracker killed and restarted
/// once a run is under way), that the schedule still ends.
async fn capped_overlap(spec: JobSpec, fires: i64, cap: usize, skip_note: &str, crash: bool) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]).await.unwrap();
    let client = tracker.client();
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let runs: Runs = Arc::default();
    let (r, m, seen) = (running.clone(), most.clone(), runs.clone());
    let stop = CancellationToken::new();
    let tt = TaskTracker::builder()
        .node_group(spec.task_tracker_node_group.clone())
        .tracker(tracker.addr.clone())
        .threads(8)
        .runner(move |ctx: JobContext| {
            let (r, m, seen) = (r.clone(), m.clone(), seen.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                seen.lock().unwrap().push(ctx.task_id().to_string());
                tokio::time::sleep(Duration::from_secs(1)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                RunResult::success("")
            }
        })
        .build()
        .unwrap();
    let h = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    let spec = spec.schedule(Schedule::Repeat {
        interval_ms: 300,
        count: fires,
        first_fire_ms: None,
    });
    let id = accepted(&client.submit(spec).await.unwrap());
    let mut tracker = tracker;
    if crash {
        eventually(T, "a run under way", || async {
            (running.load(Ordering::SeqCst) > 0).then_some(())
        })
        .await
        .unwrap();
        tracker = tracker
            .restart_after_kill9_after(Duration::from_millis(800))
            .await
            .unwrap();
    }
    let client = tracker.client();
    let j = eventually(T, "the schedule to end", || async {
        let j = client.get(JobKey::Id(id.clone())).await.ok()?;
        (j.state.is_final() && running.load(Ordering::SeqCst) == 0).then_some(j)
    })
    .await
    .unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    stop.cancel();
    h.await.unwrap();
    let most = most.load(Ordering::SeqCst);
    let runs = runs.lock().unwrap().clone();
    let mut once = runs.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), runs.len(), "a fire ran twice: {runs:?}");
    if crash {
        assert!((1..=cap).contains(&most), "{most} runs at once, cap {cap}");
        return;
    }
    assert_eq!(most, cap, "runs at once");
    let fires = fires as usize;
    assert!(
        (cap + 1..fires).contains(&runs.len()),
        "fires run: {runs:?}"
    );
    let log = client.log(&id, 100).await.unwrap();
    let skipped = log.iter().filter(|l| l.message.contains(skip_note)).count();
    assert_eq!(
        skipped + runs.len(),
        fires,
        "every fire run or skipped: {log:#?}"
    );
}

/// Concurrency policy `Replace`: each fire cancels the run before it, and its TaskTracker is
/// told at once (well before its next renewal, 20 s here) and stops it; the last fire's run
/// ends on its own.
#[tokio::test]
async fn a_replacing_job_cancels_its_earlier_run_at_each_fire() {
    let dir = tempfile::tempdir().unwrap();
    // A minute's lease: renewals every 20 s, long after a run's own 3 s end.
    let tracker = TrackerProc::start(dir.path(), &["--lease-ms", "60000"])
        .await
        .unwrap();
    let client = tracker.client();
    let runs: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let seen = runs.clone();
    let stop = CancellationToken::new();
    let tt = TaskTracker::builder()
        .node_group("replace")
        .tracker(tracker.addr.clone())
        .threads(8)
        .runner(move |ctx: JobContext| {
            let seen = seen.clone();
            async move {
                let id = ctx.job.job_id.clone();
                let stopped = tokio::select! {
                    _ = ctx.cancel.cancelled() => true,
                    _ = tokio::time::sleep(Duration::from_secs(3)) => false,
                };
                seen.lock().unwrap().push((id, stopped));
                RunResult::success("")
            }
        })
        .build()
        .unwrap();
    let h = tokio::spawn(tt.run_until_cancelled(stop.clone()));
    let spec = JobSpec::new("tick", "replace")
        .schedule(Schedule::Repeat {
            interval_ms: 500,
            count: 4,
            first_fire_ms: None,
        })
        .concurrency_policy(ConcurrencyPolicy::Replace);
    let id = accepted(&client.submit(spec).await.unwrap());
    let runs = eventually(T, "four runs to end", || async {
        let runs = runs.lock().unwrap().clone();
        (runs.len() == 4).then_some(runs)
    })
    .await
    .unwrap();
    stop.cancel();
    h.await.unwrap();
    let mut states = Vec::new();
    for (job_id, _) in &runs {
        let j = client.get(JobKey::Id(job_id.clone())).await.unwrap();
        states.push((j.scheduled_fire_ms, j.state));
    }
    states.sort_by_key(|(fire, _)| *fire);
    let last = states.pop().unwrap();
    assert_eq!(last.1, JobState::Succeeded, "{states:?} {last:?}");
    assert!(
        states.iter().all(|(_, s)| *s == JobState::Cancelled),
        "{states:?}"
    );
    assert!(
        runs.iter().filter(|(_, stopped)| *stopped).count() >= 3,
        "the replaced runs were stopped: {runs:?}"
    );
    let def = client.get(JobKey::Id(id)).await.unwrap();
    assert_eq!(def.state, JobState::Succeeded);
}
