//! `lts-example-worker`: a TaskTracker in its own image, linking `lts-worker-sdk`.
//!
//! It runs the jobs of one TaskTracker node group: each job names a report in its params
//! (`report`, `day`, `recipients`), the worker "builds" it, writes business-log lines that end
//! up in the job log, and answers `SUCCESS`, `LATER` (the day is not over yet; retried) or
//! `FAILED` (bad params; not retried). Every flag also reads an `LTS_…` environment variable,
//! which is how the operator configures it in a pod.

mod report;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use lts_registry::{ZkConfig, ZkRegistry};
use lts_worker_sdk::{TaskTracker, runtime};

use crate::report::ReportRunner;

/// Example LTS TaskTracker: builds reports named by each job's params.
#[derive(Debug, Parser)]
#[command(name = "lts-example-worker", version, about)]
struct Cli {
    /// JobTracker address(es), comma-separated or repeated (e.g. the trackers' Service).
    #[arg(
        long,
        env = "LTS_TRACKER",
        value_delimiter = ',',
        required_unless_present = "registry"
    )]
    tracker: Vec<String>,
    /// Find JobTrackers in ZooKeeper instead: `zookeeper://HOST:PORT[,HOST:PORT]/CHROOT`.
    #[arg(long, env = "LTS_REGISTRY", conflicts_with = "tracker")]
    registry: Option<String>,
    /// Cluster name.
    #[arg(long, env = "LTS_CLUSTER", default_value = "default")]
    cluster: String,
    /// File holding the ZooKeeper digest credential `user:password` (a mounted Secret): the
    /// registry's nodes are then readable and writable with it only.
    #[arg(long, env = "LTS_ZK_AUTH_FILE")]
    zk_auth_file: Option<std::path::PathBuf>,
    /// The TaskTracker node group whose jobs to run.
    #[arg(long, env = "LTS_NODE_GROUP", default_value = "reports")]
    node_group: String,
    /// Jobs run at once.
    #[arg(long, env = "LTS_THREADS", default_value_t = 4)]
    threads: u32,
    /// Identity (default: host name and a random suffix).
    #[arg(long, env = "LTS_IDENTITY")]
    identity: Option<String>,
    /// Milliseconds one report takes to build.
    #[arg(long, env = "LTS_EXAMPLE_WORK_MS", default_value_t = 500)]
    work_ms: u64,
    /// Seconds running jobs may take to finish on SIGTERM before they are handed back.
    #[arg(long, env = "LTS_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    runtime::init_tracing(runtime::LogFormat::from_env());
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let runner = ReportRunner {
        work: Duration::from_millis(cli.work_ms),
    };
    let mut builder = TaskTracker::builder()
        .cluster(cli.cluster.clone())
        .node_group(cli.node_group.clone())
        .trackers(cli.tracker)
        .threads(cli.threads)
        .shutdown_grace(Duration::from_secs(cli.shutdown_grace))
        .runner(runner);
    if let Some(id) = cli.identity {
        builder = builder.identity(id);
    }
    let zk = match &cli.registry {
        Some(url) => {
            let cfg =
                ZkConfig::parse(url, &cli.cluster)?.with_auth_file(cli.zk_auth_file.as_deref())?;
            let registry = ZkRegistry::start(cfg, None);
            builder = builder.registry(Arc::new(registry.clone()));
            Some(registry)
        }
        None => None,
    };
    let worker = builder.build()?;
    tracing::info!(node_group = %cli.node_group, threads = cli.threads, "example worker started");
    worker.run(runtime::shutdown_signal()).await;
    if let Some(zk) = zk {
        zk.close().await;
    }
    tracing::info!("example worker stopped");
    Ok(())
}
