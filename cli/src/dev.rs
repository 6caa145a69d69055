//! `lts dev`: a whole cluster in one process — a JobTracker with the embedded store, a demo
//! TaskTracker group with a built-in runner, a JobClient submitting a mix of demo jobs and
//! receiving their feedback — with live progress.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lts_core::{JobSpec, Outcome, Schedule, now_ms};
use lts_tracker::{StoreUrl, Tracker, TrackerConfig};
use lts_worker_sdk::{JobClient, JobContext, RunResult, SubmitAnswer, TaskTracker};
use tokio_util::sync::CancellationToken;

use crate::error::{CliError, CliResult};

/// Node group of the demo TaskTrackers.
pub const DEMO_GROUP: &str = "demo";
/// Node group of the demo JobClient (feedback target).
pub const DEMO_CLIENT_GROUP: &str = "dev-client";

/// Options of `lts dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the embedded store lives.
    #[arg(long, env = "LTS_DATA_DIR", default_value = ".lts-dev")]
    pub data_dir: PathBuf,
    /// Where the tracker listens (other `lts` commands use 127.0.0.1:7070 by default).
    #[arg(long, env = "LTS_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// How many demo jobs to submit.
    #[arg(long, default_value_t = 200)]
    pub jobs: u32,
    /// Exit 0 with a one-line summary once every demo job reached a final outcome.
    #[arg(long)]
    pub until_done: bool,
    /// Demo TaskTrackers.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Threads per demo TaskTracker.
    #[arg(long, default_value_t = 8)]
    pub threads: u32,
    /// Give up after this many seconds with --until-done (exit 1).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// What the demo runner does, chosen by the job's `kind` parameter.
async fn demo_runner(ctx: JobContext) -> RunResult {
    let kind = ctx.param("kind").unwrap_or("ok").to_string();
    let ms: u64 = ctx.param("ms").and_then(|v| v.parse().ok()).unwrap_or(100);
    ctx.log().info(format!(
        "{kind} job {} attempt {}",
        ctx.task_id(),
        ctx.attempt
    ));
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        _ = ctx.cancel.cancelled() => return RunResult::exception("cancelled"),
    }
    match kind.as_str() {
        "flaky" if ctx.attempt < 3 => {
            ctx.log().warn("upstream busy; asking for a retry");
            RunResult::later(format!("busy on attempt {}", ctx.attempt))
        }
        "fail" => {
            ctx.log().error("bad input; giving up");
            RunResult::failed("invalid payload")
        }
        _ => RunResult::success(format!("done in {ms} ms")),
    }
}

/// The demo mix: mostly quick jobs, some slow, some flaky (retried), a few failing, some with
/// a trigger time a few seconds out, some high priority, one repeat job.
fn demo_jobs(run: &str, n: u32) -> Vec<JobSpec> {
    let now = now_ms();
    (0..n)
        .map(|i| {
            let (kind, ms) = match i % 20 {
                0 => ("fail", 50),
                1 | 2 => ("flaky", 80),
                3 => ("slow", 1500),
                _ => ("ok", 50 + u64::from(i % 7) * 40),
            };
            let mut spec = JobSpec::new(format!("demo-{run}-{i:05}"), DEMO_GROUP)
                .param("kind", kind)
                .param("ms", ms.to_string())
                .feedback_to(DEMO_CLIENT_GROUP)
                .priority(if i % 10 == 9 { 10 } else { 0 });
            if kind == "flaky" {
                spec = spec.max_retries(3);
            }
            if i % 25 == 5 {
                spec = spec.schedule(Schedule::TriggerAt {
                    trigger_time_ms: now + 3_000 + i64::from(i % 5) * 1_000,
                });
            }
            if i == 7 {
                spec = spec.schedule(Schedule::Repeat {
                    interval_ms: 2_000,
                    count: 3,
                    first_fire_ms: None,
                });
            }
            spec
        })
        .collect()
}

#[derive(Debug, Default)]
struct Tally {
    seen: HashSet<String>,
    succeeded: u64,
    failed: u64,
}

/// Runs `lts dev`.
pub async fn run(args: DevArgs) -> CliResult {
    if args.workers == 0 || args.threads == 0 {
        return Err(CliError::Usage(
            "--workers and --threads must be at least 1".into(),
        ));
    }
    if !args.until_done {
        lts_core::runtime::init_tracing(lts_core::runtime::LogFormat::from_env());
    }
    let db = args.data_dir.join("lts.db");
    // Zero-config on loopback: plaintext, every caller an administrator.
    let mut config = TrackerConfig::new(StoreUrl::Sqlite(db.clone()), args.listen).open();
    config.retry_min_delay_ms = 200;
    config.retry_max_delay_ms = 5_000;
    config.identity = Some("dev-tracker".into());
    let tracker = Tracker::start(config).await?;
    let endpoint = tracker.endpoint();

    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let tt = TaskTracker::builder()
            .node_group(DEMO_GROUP)
            .tracker(endpoint.clone())
            .threads(args.threads)
            .identity(format!("dev-worker-{w}"))
            .shutdown_grace(Duration::from_secs(5))
            .runner(demo_runner)
            .build()?;
        workers.push(tokio::spawn(tt.run_until_cancelled(stop.clone())));
    }

    let client = JobClient::connect(std::slice::from_ref(&endpoint)).await?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let t = tally.clone();
    let subscription = client.subscribe_feedback(DEMO_CLIENT_GROUP, "lts-dev", move |item| {
        let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
        let key = format!("{}:{}", item.job.job_id, item.job.fire_count);
        if t.seen.insert(key) {
            if item.outcome == Outcome::Success {
                t.succeeded += 1;
            } else {
                t.failed += 1;
            }
        }
    });

    let run_id = format!("{:x}", now_ms() % 0xfffff);
    let specs = demo_jobs(&run_id, args.jobs);
    // The repeat job reports once per fire.
    let expected: u64 = specs
        .iter()
        .map(|s| match s.schedule {
            Schedule::Repeat { count, .. } if count > 0 => count as u64,
            _ => 1,
        })
        .sum();
    let started = Instant::now();
    let mut accepted = 0u64;
    for chunk in specs.chunks(1000) {
        for a in client.submit_batch(chunk.to_vec()).await? {
            match a {
                SubmitAnswer::Accepted { .. } => accepted += 1,
                SubmitAnswer::Rejected(v) => {
                    return Err(CliError::Failed(format!("demo job rejected: {v}")));
                }
                _ => {}
            }
        }
    }
    if !args.until_done {
        eprintln!(
            "lts dev: tracker on {endpoint} (store {}), {} TaskTrackers × {} threads in group {DEMO_GROUP:?}, {accepted} demo jobs submitted.\n\
             Try: lts jobs list --node-group {DEMO_GROUP}   ·   lts nodes   ·   Ctrl-C to stop",
            db.display(),
            args.workers,
            args.threads
        );
    }

    let bar = ProgressBar::new(expected);
    if args.until_done && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} results  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let stop_signal = lts_core::runtime::shutdown_signal();
    tokio::pin!(stop_signal);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let outcome = loop {
        tokio::select! {
            _ = &mut stop_signal => break Ok(()),
            _ = tick.tick() => {}
        }
        let (done, ok, failed) = {
            let t = tally.lock().unwrap_or_else(|e| e.into_inner());
            (t.seen.len() as u64, t.succeeded, t.failed)
        };
        let stats = client.stats(Some(DEMO_GROUP)).await.ok();
        if let Some(s) = &stats {
            bar.set_message(format!(
                "queued {} · running {} · succeeded {} · failed {} · feedback ✓{ok} ✗{failed}",
                s.queued, s.running, s.succeeded, s.failed
            ));
        }
        bar.set_position(done.min(expected));
        if args.until_done && done >= expected {
            break Ok(());
        }
        if args.until_done && Instant::now() > deadline {
            break Err(CliError::Failed(format!(
                "timed out after {} s with {done} of {expected} results",
                args.timeout
            )));
        }
    };
    bar.finish_and_clear();
    let (ok, failed) = {
        let t = tally.lock().unwrap_or_else(|e| e.into_inner());
        (t.succeeded, t.failed)
    };
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    subscription.stop().await;
    tracker.shutdown().await?;
    outcome?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "lts dev: {accepted} jobs, {} results in {secs:.1} s: {ok} succeeded, {failed} failed (store {})",
        ok + failed,
        db.display()
    );
    Ok(())
}
