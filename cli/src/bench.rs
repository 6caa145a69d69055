//! `lts bench`: measures the job path with the embedded store, one tracker and W TaskTrackers
//! × T threads running a no-op runner, all over real gRPC on loopback.
//!
//! Phases:
//! 1. **submit, batched** — concurrent clients submit batches of 1,000 jobs;
//! 2. **submit, single** — 64 concurrent clients submit one job per request;
//! 3. **drain** — a preloaded backlog is run to completion (claim, push, run, result, commit);
//! 4. **dispatch latency** — jobs submitted one by one at a fixed offered rate; the time from
//!    the submit call to the runner starting, as an HDR histogram;
//! 5. **workflow** (`--phases workflow`, or `--workflow`) — a workflow whose root fans out to
//!    `--workflow-fan-out` children (their throughput, from the submit to the workflow's end),
//!    and a chain of `--workflow-chain` nodes (the time per edge: a node's end to the next
//!    node's end).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use lts_core::JobSpec;
use lts_tracker::server::SyncFlag;
use lts_tracker::{StoreUrl, Tracker, TrackerConfig};
use lts_worker_sdk::{JobClient, JobContext, RunResult, TaskTracker};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{CliError, CliResult};
use crate::output;
use crate::{bench_compare, bench_raw};

/// Options of `lts bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// TaskTrackers.
    #[arg(long, short = 'w', default_value_t = 2)]
    pub workers: u32,
    /// JobTrackers sharing the store (MongoDB only); TaskTracker `i` connects to tracker
    /// `i mod N`, and clients to the first. Compare `--trackers 3 --workers 3` with
    /// `--trackers 1 --workers 3` to see whether trackers get in each other's way.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub trackers: u32,
    /// Threads per TaskTracker. Default 32; when only the cron phase runs, enough to start
    /// every fire of a second at once (`--cron` ÷ `--workers`), so that the lateness measures
    /// the scheduler rather than a queue for free threads.
    #[arg(long, short = 't')]
    pub threads: Option<u32>,
    /// Jobs each TaskTracker takes beyond its threads (the SDK's `prefetch`). Default: as many
    /// as its threads — the bench's jobs do nothing, the case prefetch is made for.
    #[arg(long)]
    pub prefetch: Option<u32>,
    /// Offered rate of the latency phase, jobs per second.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Duration of the latency phase, seconds.
    #[arg(long, default_value_t = 10)]
    pub latency_seconds: u64,
    /// Jobs in the batched-submit phase.
    #[arg(long, default_value_t = 200_000)]
    pub submit_jobs: u64,
    /// Jobs in the single-submit phase.
    #[arg(long, default_value_t = 30_000)]
    pub single_jobs: u64,
    /// Concurrent submitters in the single-submit phase.
    #[arg(long, default_value_t = 64)]
    pub submitters: u32,
    /// Backlog of the drain phase.
    #[arg(long, default_value_t = 100_000)]
    pub drain_jobs: u64,
    /// Phases to run (comma-separated): submit, single, drain, latency, cron. Default: the
    /// first four, or only `cron` when `--cron` is given.
    #[arg(long, value_delimiter = ',')]
    pub phases: Vec<Phase>,
    /// Run the workflow phase alone (as `--phases workflow`).
    #[arg(long)]
    pub workflow: bool,
    /// Workflow phase: children of the fan-out workflow's root.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=19_999))]
    pub workflow_fan_out: u32,
    /// Workflow phase: nodes of the chain.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(2..=20_000))]
    pub workflow_chain: u32,
    /// Cron phase: this many cron definitions, each firing every second.
    #[arg(long, default_value_t = 0)]
    pub cron: u32,
    /// Cron phase: seconds of fires to measure.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// SQLite durability (`full`: every write answered after an fsync covers it).
    #[arg(long, value_enum, default_value_t = SyncFlag::Full)]
    pub sync: SyncFlag,
    /// Where the store file goes (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Benchmark another store: `mongodb://HOST:PORT` uses a fresh database `lts_bench-PID`
    /// (dropped afterwards) and reports the store round trips per job.
    #[arg(long, value_name = "URL")]
    pub store: Option<StoreUrl>,
    /// Run with security on: TLS (a throwaway CA and certificate) and a token checked
    /// against an auth file on every call, to measure what they cost.
    #[arg(long)]
    pub secure: bool,
    /// Write the figures as one JSON object to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// After the run, show each figure against the same figure in this saved `--json` file:
    /// the change in percent, better or worse. The file is checked before the run.
    #[arg(long, value_name = "FILE")]
    pub compare: Option<PathBuf>,
    /// With `--compare OLD`: compare OLD with this second saved file (as "now") instead of
    /// running the benchmark.
    #[arg(
        long,
        value_name = "FILE",
        requires = "compare",
        conflicts_with_all = [
            "workers", "threads", "prefetch", "rate", "latency_seconds", "submit_jobs", "single_jobs",
            "submitters", "drain_jobs", "phases", "cron", "seconds", "sync", "data_dir", "store",
            "json", "secure", "workflow", "workflow_fan_out", "workflow_chain",
        ]
    )]
    pub against: Option<PathBuf>,
}

/// A benchmark phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Batched submits.
    Submit,
    /// Single submits from many clients.
    Single,
    /// Drain a backlog.
    Drain,
    /// Dispatch latency at a fixed rate.
    Latency,
    /// Cron exactness: fires expected vs observed, lateness.
    Cron,
    /// The backend's raw limit without the scheduler (insert, claim, complete of
    /// `--drain-jobs` jobs), and the store's figures as fractions of it.
    Raw,
    /// Workflows: a fan-out and a chain.
    Workflow,
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    samples: u64,
}

#[derive(Debug, Default, Serialize)]
struct CronReport {
    definitions: u32,
    seconds: u64,
    /// Fires on the schedule inside the measured window.
    expected: u64,
    /// Distinct scheduled fires that ran.
    observed: u64,
    /// Expected fires that never ran.
    missed: u64,
    /// Extra runs of a fire that had already run.
    doubled: u64,
    /// Catch-up runs off the schedule (misfire policy after a late instance).
    catch_up: u64,
    /// Runner start minus scheduled fire time.
    lateness_ms: Latency,
}

#[derive(Debug, Default, Serialize)]
struct WorkflowReport {
    /// Children of the fan-out's root.
    fan_out: u32,
    /// The fan-out's children run per second, from the submit to the workflow's end (the
    /// submit, the claim that writes every node, the root's run and the judging of its
    /// successors included).
    fan_out_nodes_per_s: f64,
    /// The children run per second from the root's end (when they all became runnable) to the
    /// workflow's end, by the store's clock.
    fan_out_children_per_s: f64,
    /// [`Self::fan_out_children_per_s`] as a fraction of the drain measured by the same run
    /// (`--phases drain,workflow`): the goal is at least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    fan_out_of_drain: Option<f64>,
    /// Nodes of the chain.
    chain: u32,
    /// The chain's time from submit to end, per edge.
    chain_edge_ms: f64,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    submit_batched_jobs_per_s: Option<f64>,
    submit_single_jobs_per_s: Option<f64>,
    drain_jobs_per_s: Option<f64>,
    dispatch_latency_ms: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cron: Option<CronReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow: Option<WorkflowReport>,
    /// Store round trips per job over its whole life: one submit (the single-submit path when
    /// measured, else batched), its claim and its completion with every log line.
    #[serde(skip_serializing_if = "Option::is_none")]
    store_round_trips_per_job: Option<f64>,
    /// Round trips per job of each phase.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    store_round_trips: BTreeMap<&'static str, f64>,
    /// The backend's raw limit (`--phases raw`).
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<bench_raw::RawReport>,
    config: serde_json::Value,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what:<16} {{bar:40.cyan/blue}} {{pos}}/{{len}} ({{per_sec}}, {{elapsed}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// The bench's own cluster (with MongoDB: its own database).
fn bench_cluster() -> String {
    format!("bench-{}", std::process::id())
}

fn job(group: &str, i: u64) -> JobSpec {
    JobSpec::new(format!("j{i}"), group)
}

/// Threads per TaskTracker unless `--threads` says otherwise.
const DEFAULT_THREADS: u32 = 32;

impl BenchArgs {
    /// Threads per TaskTracker, once [`run`] has settled the default.
    fn threads(&self) -> u32 {
        self.threads.unwrap_or(DEFAULT_THREADS)
    }

    fn prefetch(&self) -> u32 {
        self.prefetch.unwrap_or_else(|| self.threads())
    }
}

/// Runs `lts bench`.
pub async fn run(mut args: BenchArgs) -> CliResult {
    // A bad saved file is reported now, not after a run.
    let saved = match &args.compare {
        Some(path) => Some((path, bench_compare::load("--compare", path)?)),
        None => None,
    };
    if let (Some((old, saved)), Some(new)) = (&saved, &args.against) {
        let now = bench_compare::load("--against", new)?;
        let heading = format!("{} (saved) against {} (now)", old.display(), new.display());
        bench_compare::print(saved, &now, &heading);
        return Ok(());
    }
    if args.workflow && args.phases.is_empty() {
        args.phases = vec![Phase::Workflow];
    }
    if args.phases.is_empty() {
        args.phases = if args.cron > 0 {
            vec![Phase::Cron]
        } else {
            vec![Phase::Submit, Phase::Single, Phase::Drain, Phase::Latency]
        };
    }
    if args.phases.contains(&Phase::Cron) && (args.cron == 0 || args.seconds == 0) {
        return Err(CliError::Usage(
            "--cron and --seconds must be at least 1 for the cron phase".into(),
        ));
    }
    if args.threads.is_none() {
        let only_cron = args.phases == [Phase::Cron];
        args.threads = Some(if only_cron && args.workers > 0 {
            args.cron.div_ceil(args.workers).max(DEFAULT_THREADS)
        } else {
            DEFAULT_THREADS
        });
    }
    if args.workers == 0 || args.threads() == 0 || args.rate == 0 || args.submitters == 0 {
        return Err(CliError::Usage(
            "--workers, --threads, --rate and --submitters must be at least 1".into(),
        ));
    }
    if std::env::var_os("LTS_LOG").is_some() {
        lts_core::runtime::init_tracing(lts_core::runtime::LogFormat::from_env());
    }
    let tmp;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().map_err(|e| CliError::Failed(format!("temp dir: {e}")))?;
            tmp.path().to_path_buf()
        }
    };
    if let Some(StoreUrl::Mongo(url)) = &args.store
        && url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('/'))
            .is_some_and(|(_, path)| !path.is_empty() && !path.starts_with('?'))
    {
        return Err(CliError::Usage(
            "--store: leave the database out of the URI (mongodb://HOST:PORT/?OPTIONS); the bench uses a fresh one and drops it".into(),
        ));
    }
    let db = dir.join(format!("bench-{}.db", std::process::id()));
    let store = args.store.clone().unwrap_or(StoreUrl::Sqlite(db.clone()));
    let mut config = TrackerConfig::new(
        store.clone(),
        "127.0.0.1:0"
            .parse()
            .map_err(|e| CliError::Failed(format!("{e}")))?,
    );
    // A cluster of its own: with MongoDB, a database of its own.
    config.cluster = bench_cluster();
    config.sqlite_sync = args.sync;
    config.identity = Some("bench-tracker".into());
    let creds = if args.secure {
        secure(&mut config, &dir)?
    } else {
        config = config.open();
        lts_worker_sdk::Credentials::default()
    };
    if args.trackers > 1 && !matches!(store, StoreUrl::Mongo(_)) {
        return Err(CliError::Usage(
            "--trackers: several trackers share a MongoDB store only (--store mongodb://…)".into(),
        ));
    }
    let mut trackers = Vec::with_capacity(args.trackers as usize);
    for i in 0..args.trackers {
        let mut config = config.clone();
        if i > 0 {
            config.identity = Some(format!("bench-tracker-{i}"));
        }
        trackers.push(Tracker::start(config).await?);
    }
    let endpoints: Vec<String> = trackers.iter().map(|t| t.endpoint()).collect();
    let endpoint = endpoints.as_slice();
    let mut report = Report {
        config: serde_json::json!({
            "workers": args.workers,
            "trackers": args.trackers,
            "threads": args.threads(),
            "prefetch": args.prefetch(),
            "rate": args.rate,
            "latency_seconds": args.latency_seconds,
            "submit_jobs": args.submit_jobs,
            "single_jobs": args.single_jobs,
            "submitters": args.submitters,
            "drain_jobs": args.drain_jobs,
            "store": match &store { StoreUrl::Sqlite(_) => "sqlite", StoreUrl::Mongo(_) => "mongodb" },
            "sync": format!("{:?}", args.sync).to_lowercase(),
            "secure": args.secure,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }),
        ..Default::default()
    };
    // The phases; whatever they come to (an error, Ctrl-C), the trackers stop and the bench's
    // database goes.
    let phases = async {
        let client = JobClient::connect_with(&endpoints[..1], creds).await?;

        let stores: Vec<_> = trackers.iter().map(|t| t.store()).collect();
        let trips = move || stores.iter().map(|s| s.round_trips()).sum::<Option<u64>>();
        let per_job = |before: Option<u64>, after: Option<u64>, jobs: u64| match (before, after) {
            (Some(b), Some(a)) if jobs > 0 => Some(a.saturating_sub(b) as f64 / jobs as f64),
            _ => None,
        };
        if args.phases.contains(&Phase::Submit) {
            let before = trips();
            let r = submit_batched(&client, "bench-submit", args.submit_jobs).await?;
            report.submit_batched_jobs_per_s = Some(r);
            if let Some(t) = per_job(before, trips(), args.submit_jobs) {
                report.store_round_trips.insert("submit_batched", t);
            }
        }
        if args.phases.contains(&Phase::Single) {
            let before = trips();
            let r = submit_single(&client, args.single_jobs, args.submitters).await?;
            report.submit_single_jobs_per_s = Some(r);
            if let Some(t) = per_job(before, trips(), args.single_jobs) {
                report.store_round_trips.insert("submit_single", t);
            }
        }
        if args.phases.contains(&Phase::Drain) {
            let (r, [before, loaded, drained]) = drain(&client, endpoint, &args, &trips).await?;
            report.drain_jobs_per_s = Some(r);
            if let Some(t) = per_job(before, loaded, args.drain_jobs) {
                report.store_round_trips.insert("preload_batched", t);
            }
            if let Some(t) = per_job(loaded, drained, args.drain_jobs) {
                report.store_round_trips.insert("claim_and_complete", t);
            }
        }
        if let Some(run) = report.store_round_trips.get("claim_and_complete") {
            let submit = report
                .store_round_trips
                .get("submit_single")
                .or(report.store_round_trips.get("preload_batched"))
                .copied()
                .unwrap_or(0.0);
            report.store_round_trips_per_job = Some(submit + run);
        }
        if args.phases.contains(&Phase::Latency) {
            report.dispatch_latency_ms = Some(latency(&client, endpoint, &args).await?);
        }
        if args.phases.contains(&Phase::Cron) {
            report.cron = Some(cron(&client, endpoint, &args).await?);
        }
        if args.phases.contains(&Phase::Workflow) {
            let mut w = workflows(&client, endpoint, &args).await?;
            w.fan_out_of_drain = report
                .drain_jobs_per_s
                .filter(|d| *d > 0.0)
                .map(|d| w.fan_out_children_per_s / d);
            report.workflow = Some(w);
        }
        CliResult::Ok(())
    };
    let phases = tokio::select! {
        done = phases => done,
        _ = lts_core::runtime::shutdown_signal() => {
            Err(CliError::Failed("interrupted; the bench's trackers and database are cleaned up".into()))
        }
    };
    let mut stopped = Ok(());
    for tracker in trackers {
        if let Err(e) = tracker.shutdown().await {
            stopped = Err(e);
        }
    }
    if let StoreUrl::Mongo(url) = &store {
        lts_tracker::store::mongo::drop_bench_database(url, &bench_cluster())
            .await
            .map_err(|e| CliError::Failed(format!("dropping the bench database: {e}")))?;
    }
    phases?;
    stopped?;
    if args.phases.contains(&Phase::Raw) {
        let pb = bar(args.drain_jobs, "raw: insert, then claim + complete");
        let mut raw = match &store {
            StoreUrl::Mongo(url) => {
                let (loops, claim) = (args.workers as usize, args.threads() as usize);
                bench_raw::mongo(url, args.drain_jobs, loops, claim, &pb).await?
            }
            StoreUrl::Sqlite(_) => {
                let sync = match args.sync {
                    SyncFlag::Full => "FULL",
                    SyncFlag::Normal => "NORMAL",
                };
                bench_raw::sqlite(&dir, sync, args.drain_jobs, &pb).await?
            }
        };
        pb.finish_and_clear();
        bench_raw::relate(
            &mut raw,
            report.submit_batched_jobs_per_s,
            report.drain_jobs_per_s,
        );
        report.raw = Some(raw);
    }

    let mut t = output::table(["figure", "value"]);
    let rate = |v: f64| format!("{v:.0} jobs/s");
    if let Some(v) = report.submit_batched_jobs_per_s {
        t.add_row(vec!["submit, batched".to_string(), rate(v)]);
    }
    if let Some(v) = report.submit_single_jobs_per_s {
        t.add_row(vec![
            format!("submit, single ({} clients)", args.submitters),
            rate(v),
        ]);
    }
    if let Some(v) = report.drain_jobs_per_s {
        t.add_row(vec![
            format!("drain ({} × {} threads)", args.workers, args.threads()),
            rate(v),
        ]);
    }
    if let Some(l) = &report.dispatch_latency_ms {
        t.add_row(vec![
            format!("dispatch latency @ {} jobs/s", args.rate),
            format!(
                "p50 {:.2} ms · p99 {:.2} ms · p99.9 {:.2} ms · max {:.2} ms ({} samples)",
                l.p50, l.p99, l.p999, l.max, l.samples
            ),
        ]);
    }
    if let Some(c) = &report.cron {
        t.add_row(vec![
            format!("cron: {} definitions × {} s", c.definitions, c.seconds),
            format!(
                "expected {} · observed {} · missed {} · doubled {} · catch-up {} · lateness p50 {:.1} ms · p99 {:.1} ms · max {:.1} ms",
                c.expected, c.observed, c.missed, c.doubled, c.catch_up, c.lateness_ms.p50, c.lateness_ms.p99, c.lateness_ms.max
            ),
        ]);
    }
    if let Some(w) = &report.workflow {
        t.add_row(vec![
            format!("workflow fan-out: 1 → {} nodes", w.fan_out),
            format!("{:.0} nodes/s", w.fan_out_nodes_per_s),
        ]);
        let of_drain = w
            .fan_out_of_drain
            .map(|f| format!(" ({:.2} of the drain)", f))
            .unwrap_or_default();
        t.add_row(vec![
            "  … from the root's end".to_string(),
            format!("{:.0} nodes/s{of_drain}", w.fan_out_children_per_s),
        ]);
        t.add_row(vec![
            format!("workflow chain: {} nodes", w.chain),
            format!("{:.2} ms per edge", w.chain_edge_ms),
        ]);
    }
    if let Some(r) = &report.raw {
        let share = |f: Option<f64>| f.map(|f| format!(" (the store: {:.0} %)", f * 100.0));
        t.add_row(vec![
            "raw backend: insert, batched".to_string(),
            rate(r.insert_batched_jobs_per_s) + &share(r.submit_batched_of_raw).unwrap_or_default(),
        ]);
        t.add_row(vec![
            "raw backend: claim + complete".to_string(),
            rate(r.drain_jobs_per_s) + &share(r.drain_of_raw).unwrap_or_default(),
        ]);
    }
    if let Some(n) = report.store_round_trips_per_job {
        let parts: Vec<String> = report
            .store_round_trips
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        t.add_row(vec![
            "store round trips per job".to_string(),
            format!("{n:.2} ({})", parts.join(" · ")),
        ]);
    }
    println!("{t}");
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::Failed(format!("encode report: {e}")))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| CliError::Failed(format!("write {}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some((path, saved)) = &saved {
        let value = serde_json::to_value(&report)
            .map_err(|e| CliError::Failed(format!("encode report: {e}")))?;
        let now = bench_compare::parse(&value)
            .map_err(|e| CliError::Failed(format!("this run's figures: {e}")))?;
        println!();
        bench_compare::print(saved, &now, &format!("against {} (saved)", path.display()));
    }
    Ok(())
}

async fn submit_batched(client: &JobClient, group: &str, n: u64) -> CliResult<f64> {
    const BATCH: u64 = 1_000;
    const CONCURRENCY: u64 = 4;
    let pb = bar(n, "submit, batched");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONCURRENCY {
        let client = client.clone();
        let pb = pb.clone();
        let group = group.to_string();
        tasks.push(tokio::spawn(async move {
            let mut i = c * BATCH;
            while i < n {
                let end = (i + BATCH).min(n);
                let specs: Vec<JobSpec> = (i..end).map(|k| job(&group, k)).collect();
                client.submit_batch(specs).await?;
                pb.inc(end - i);
                i += BATCH * CONCURRENCY;
            }
            Ok::<(), lts_worker_sdk::ClientError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| CliError::Failed(e.to_string()))??;
    }
    let secs = start.elapsed().as_secs_f64();
    pb.finish();
    Ok(n as f64 / secs)
}

async fn submit_single(client: &JobClient, n: u64, submitters: u32) -> CliResult<f64> {
    let pb = bar(n, "submit, single");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..u64::from(submitters) {
        let client = client.clone();
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while i < n {
                client.submit(job("bench-single", i)).await?;
                pb.inc(1);
                i += u64::from(submitters);
            }
            Ok::<(), lts_worker_sdk::ClientError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| CliError::Failed(e.to_string()))??;
    }
    let secs = start.elapsed().as_secs_f64();
    pb.finish();
    Ok(n as f64 / secs)
}

/// TLS and token authentication for the bench's tracker: a throwaway CA, a certificate for
/// 127.0.0.1, and an admin token in an auth file, all in `dir`; returns what clients present.
fn secure(
    config: &mut TrackerConfig,
    dir: &std::path::Path,
) -> CliResult<lts_worker_sdk::Credentials> {
    let fail = |e: &dyn std::fmt::Display| CliError::Failed(format!("--secure: {e}"));
    let ca = lts_core::pki::Ca::new("LTS bench CA").map_err(|e| fail(&e))?;
    let leaf = ca
        .issue(
            "bench-tracker",
            &["localhost", "127.0.0.1"],
            Duration::from_secs(86_400),
        )
        .map_err(|e| fail(&e))?;
    let (token, hash) = lts_tracker::auth::new_token();
    let files = [
        ("bench-tls.pem", leaf.cert_pem),
        ("bench-tls-key.pem", leaf.key_pem),
        (
            "bench-auth.yaml",
            format!(
                "principals:\n  - name: bench\n    tokens: [{{sha256: {hash}}}]\n    grants: [{{role: admin}}]\n"
            ),
        ),
    ];
    for (name, text) in &files {
        std::fs::write(dir.join(name), text).map_err(|e| fail(&e))?;
    }
    config.tls_cert = Some(dir.join("bench-tls.pem"));
    config.tls_key = Some(dir.join("bench-tls-key.pem"));
    config.auth_file = Some(dir.join("bench-auth.yaml"));
    Ok(lts_worker_sdk::Credentials::default()
        .tls_ca_pem(ca.cert_pem())
        .token(token))
}

fn start_workers(
    endpoints: &[String],
    creds: &lts_worker_sdk::Credentials,
    group: &str,
    args: &BenchArgs,
    runner: impl Fn(JobContext) -> futures::future::BoxFuture<'static, RunResult>
    + Send
    + Sync
    + Clone
    + 'static,
    stop: &CancellationToken,
) -> CliResult<Vec<tokio::task::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for w in 0..args.workers {
        let tt = TaskTracker::builder()
            .cluster(bench_cluster())
            .node_group(group)
            .tracker(&endpoints[w as usize % endpoints.len()])
            .credentials(creds.clone())
            .threads(args.threads())
            .prefetch(args.prefetch())
            .identity(format!("bench-{group}-{w}"))
            .runner(runner.clone())
            .build()?;
        handles.push(tokio::spawn(tt.run_until_cancelled(stop.clone())));
    }
    Ok(handles)
}

/// The workflow phase: a fan-out of `--workflow-fan-out` children from one root, then a chain
/// of `--workflow-chain` nodes, each run to its end by no-op runners.
async fn workflows(
    client: &JobClient,
    endpoint: &[String],
    args: &BenchArgs,
) -> CliResult<WorkflowReport> {
    use lts_core::workflow::{Edge, EdgeOn, Workflow, WorkflowNode};
    let group = "bench-workflow";
    let stop = CancellationToken::new();
    // Node runs are counted in the runner: polling the workflow (a tally of its nodes) while
    // they run would take the cores the run needs, as it would in the drain.
    let ran = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = ran.clone();
    let workers = start_workers(
        endpoint,
        client.credentials(),
        group,
        args,
        move |_ctx: JobContext| {
            r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async { RunResult::success("") }) as _
        },
        &stop,
    )?;
    let node = |name: String| WorkflowNode {
        name,
        spec: JobSpec::default(),
        kept_output: None,
    };
    let edge = |from: &str, to: &str| Edge {
        from: from.to_string(),
        to: to.to_string(),
        on: EdgeOn::Success,
    };
    let fan = args.workflow_fan_out;
    let mut nodes = vec![node("root".into())];
    nodes.extend((0..fan).map(|i| node(format!("c{i}"))));
    let edges = (0..fan).map(|i| edge("root", &format!("c{i}"))).collect();
    let fan_took = run_workflow(
        client,
        group,
        "workflow-fan-out",
        Workflow { nodes, edges },
        u64::from(fan) + 1,
        &ran,
    )
    .await;
    let chain = args.workflow_chain;
    let names: Vec<String> = (0..chain).map(|i| format!("n{i}")).collect();
    let edges = names.windows(2).map(|w| edge(&w[0], &w[1])).collect();
    let nodes = names.into_iter().map(node).collect();
    let chain_took = match &fan_took {
        Ok(_) => {
            run_workflow(
                client,
                group,
                "workflow-chain",
                Workflow { nodes, edges },
                u64::from(chain),
                &ran,
            )
            .await
        }
        Err(_) => Ok((
            Duration::ZERO,
            lts_core::Job::new(String::new(), JobSpec::default()),
        )),
    };
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    let ((fan_took, fan_ended), (chain_took, _)) = (fan_took?, chain_took?);
    // The root's end, by the store's clock: node 0 of the run.
    let root_id = format!("{}0", lts_core::Shard::run_of(&fan_ended));
    let root = client.get(lts_core::JobKey::Id(root_id)).await?;
    let children_ms = fan_ended
        .finished_at_ms
        .unwrap_or_default()
        .saturating_sub(root.finished_at_ms.unwrap_or_default())
        .max(1);
    Ok(WorkflowReport {
        fan_out: fan,
        fan_out_nodes_per_s: f64::from(fan) / fan_took.as_secs_f64(),
        fan_out_children_per_s: f64::from(fan) * 1e3 / children_ms as f64,
        fan_out_of_drain: None,
        chain,
        chain_edge_ms: chain_took.as_secs_f64() * 1e3 / f64::from(chain - 1),
    })
}

/// Submits one workflow of `n` nodes to `group` and waits for its end; how long it took.
/// `ran` counts the node runs of the group's runners.
async fn run_workflow(
    client: &JobClient,
    group: &str,
    name: &str,
    wf: lts_core::workflow::Workflow,
    n: u64,
    ran: &std::sync::atomic::AtomicU64,
) -> CliResult<(Duration, lts_core::Job)> {
    use std::sync::atomic::Ordering;
    let before = ran.load(Ordering::Relaxed);
    let mut spec = JobSpec::new(name, group);
    spec.workflow = Some(wf);
    let pb = bar(n, name);
    let start = Instant::now();
    let id = match client.submit(spec).await? {
        lts_worker_sdk::SubmitAnswer::Rejected(v) => {
            return Err(CliError::Failed(format!("{name}: {v}")));
        }
        a => a.job_id().unwrap_or_default().to_string(),
    };
    let key = lts_core::JobKey::Id(id);
    // The bar follows the runners' count; the workflow is read (its nodes tallied) only once
    // they all ran, until it ended — every 5 ms at first, then less and less often: each read
    // tallies every node, and on a store whose results lag the runs (MongoDB) reads every
    // 10 ms took the server from the results they waited for.
    let mut wait = Duration::from_millis(5);
    let ended = loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let done = ran.load(Ordering::Relaxed).saturating_sub(before);
        pb.set_position(done.min(n));
        if done < n {
            continue;
        }
        let wf = client.get(key.clone()).await?;
        if wf.state.is_final() {
            break wf;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(80));
    };
    let took = start.elapsed();
    pb.finish();
    if ended.state != lts_core::JobState::Succeeded {
        return Err(CliError::Failed(format!(
            "{name} ended {}: {}",
            ended.state,
            ended.last_message.unwrap_or_default()
        )));
    }
    Ok((took, ended))
}

/// Drains a preloaded backlog; returns jobs/s and the store's round-trip counter before the
/// preload, after it, and after the drain.
async fn drain(
    client: &JobClient,
    endpoint: &[String],
    args: &BenchArgs,
    trips: &dyn Fn() -> Option<u64>,
) -> CliResult<(f64, [Option<u64>; 3])> {
    let group = "bench-drain";
    let before = trips();
    let pb = bar(args.drain_jobs, "preload");
    for chunk_start in (0..args.drain_jobs).step_by(1000) {
        let end = (chunk_start + 1000).min(args.drain_jobs);
        client
            .submit_batch((chunk_start..end).map(|k| job(group, k)).collect())
            .await?;
        pb.set_position(end);
    }
    pb.finish_and_clear();
    let loaded = trips();
    let pb = bar(args.drain_jobs, "drain");
    let stop = CancellationToken::new();
    // Count runs in the runner (polling the store would compete with the drain), then confirm
    // in the store that every result was recorded; the time is taken at that confirmation.
    let ran = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = ran.clone();
    let start = Instant::now();
    let workers = start_workers(
        endpoint,
        client.credentials(),
        group,
        args,
        move |_ctx: JobContext| {
            r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async { RunResult::success("") }) as _
        },
        &stop,
    )?;
    let elapsed = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = ran.load(std::sync::atomic::Ordering::Relaxed);
        pb.set_position(n);
        if n < args.drain_jobs {
            continue;
        }
        let s = client.stats(Some(group)).await?;
        if s.succeeded + s.failed >= args.drain_jobs {
            break start.elapsed();
        }
    };
    let drained = trips();
    pb.finish();
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    Ok((
        args.drain_jobs as f64 / elapsed.as_secs_f64(),
        [before, loaded, drained],
    ))
}

fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn latency(client: &JobClient, endpoint: &[String], args: &BenchArgs) -> CliResult<Latency> {
    let group = "bench-latency";
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .map_err(|e| CliError::Failed(e.to_string()))?,
    ));
    let h = hist.clone();
    let stop = CancellationToken::new();
    let workers = start_workers(
        endpoint,
        client.credentials(),
        group,
        args,
        move |ctx: JobContext| {
            let h = h.clone();
            Box::pin(async move {
                if let Some(t) = ctx.param("t").and_then(|v| v.parse::<u64>().ok()) {
                    let d = micros_now().saturating_sub(t).max(1);
                    let _ = h.lock().unwrap_or_else(|e| e.into_inner()).record(d);
                }
                RunResult::success("")
            }) as _
        },
        &stop,
    )?;
    // Let the workers connect and grant credits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = u64::from(args.rate) * args.latency_seconds;
    let pb = bar(total, "latency");
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let start = tokio::time::Instant::now();
    let mut inflight = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let client = client.clone();
        inflight.push(tokio::spawn(async move {
            let spec = job("bench-latency", i).param("t", micros_now().to_string());
            client.submit(spec).await
        }));
        pb.set_position(i + 1);
    }
    for t in inflight {
        t.await.map_err(|e| CliError::Failed(e.to_string()))??;
    }
    // Wait for the last runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while hist.lock().unwrap_or_else(|e| e.into_inner()).len() < total && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pb.finish();
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    let h = hist.lock().unwrap_or_else(|e| e.into_inner());
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Latency {
        p50: ms(0.5),
        p99: ms(0.99),
        p999: ms(0.999),
        max: h.max() as f64 / 1000.0,
        samples: h.len(),
    })
}

/// N cron definitions firing every second; counts every run by (definition, scheduled fire)
/// inside a window of `--seconds` that starts after all are submitted.
async fn cron(client: &JobClient, endpoint: &[String], args: &BenchArgs) -> CliResult<CronReport> {
    use std::collections::HashMap;
    let group = "bench-cron";
    /// (task id, scheduled fire ms) → the lateness of each run of it, in µs.
    type FireRuns = HashMap<(String, i64), Vec<u64>>;
    let runs: Arc<Mutex<FireRuns>> = Arc::default();
    let r = runs.clone();
    let stop = CancellationToken::new();
    let workers = start_workers(
        endpoint,
        client.credentials(),
        group,
        args,
        move |ctx: JobContext| {
            let started = micros_now() as i64;
            if let Some(fire) = ctx.job.scheduled_fire_ms {
                r.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry((ctx.task_id().to_string(), fire))
                    .or_default()
                    .push((started - fire * 1000).max(1) as u64);
            }
            Box::pin(async { RunResult::success("") }) as _
        },
        &stop,
    )?;
    let specs: Vec<JobSpec> = (0..args.cron)
        .map(|i| {
            JobSpec::new(format!("cron-{i}"), group).schedule(lts_core::Schedule::Cron {
                expression: "* * * * * *".into(),
                time_zone: None,
            })
        })
        .collect();
    for chunk in specs.chunks(1000) {
        client.submit_batch(chunk.to_vec()).await?;
    }
    // The window: whole seconds, starting two seconds after the last submit.
    let from = (lts_core::now_ms() / 1000 + 2) * 1000;
    let to = from + args.seconds as i64 * 1000;
    let pb = bar(args.seconds, "cron seconds");
    while lts_core::now_ms() < to + 2_000 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pb.set_position(
            ((lts_core::now_ms() - from).max(0) / 1000).min(args.seconds as i64) as u64,
        );
    }
    pb.finish();
    for i in 0..args.cron {
        let _ = client
            .cancel(lts_core::JobKey::Task {
                node_group: group.into(),
                task_id: format!("cron-{i}"),
            })
            .await;
    }
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    let runs = runs.lock().unwrap_or_else(|e| e.into_inner());
    let in_window = |fire: i64| fire >= from && fire < to;
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let (mut observed, mut doubled, mut catch_up) = (0u64, 0u64, 0u64);
    for ((_, fire), lateness) in runs.iter().filter(|((_, fire), _)| in_window(*fire)) {
        if fire % 1000 == 0 {
            observed += 1;
            doubled += lateness.len() as u64 - 1;
        } else {
            catch_up += lateness.len() as u64;
        }
        for l in lateness {
            let _ = h.record(*l);
        }
    }
    let expected = u64::from(args.cron) * args.seconds;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(CronReport {
        definitions: args.cron,
        seconds: args.seconds,
        expected,
        observed,
        missed: expected.saturating_sub(observed),
        doubled,
        catch_up,
        lateness_ms: Latency {
            p50: ms(0.5),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
            samples: h.len(),
        },
    })
}
