//! `lts-worker`: the TaskTracker for programs in any language. It takes jobs from the
//! JobTrackers like any TaskTracker and hands each to the program: a command per job
//! (`--exec`), or an HTTP POST per job to a local endpoint (`--http`). See
//! `lts_worker_sdk::sidecar` for the contract.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lts_core::limits::{self, ReportLimits};
use lts_registry::{ZkConfig, ZkRegistry};
use lts_worker_sdk::sidecar::{SidecarArgs, runner_from_args};
use lts_worker_sdk::{TaskTracker, runtime};

/// Runs jobs of one TaskTracker node group with a command or a local HTTP endpoint.
#[derive(Debug, Parser)]
#[command(name = "lts-worker", version, about)]
struct Cli {
    /// JobTracker address(es), comma-separated or repeated.
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
    /// ZooKeeper session timeout in milliseconds.
    #[arg(long, env = "LTS_ZK_SESSION_TIMEOUT_MS", default_value_t = 6_000)]
    zk_session_timeout_ms: u64,
    /// File holding the ZooKeeper digest credential `user:password` (a mounted Secret): the
    /// registry's nodes are then readable and writable with it only.
    #[arg(long, env = "LTS_ZK_AUTH_FILE")]
    zk_auth_file: Option<std::path::PathBuf>,
    /// Cluster name.
    #[arg(long, env = "LTS_CLUSTER", default_value = "default")]
    cluster: String,
    /// The TaskTracker node group whose jobs to run.
    #[arg(long, env = "LTS_NODE_GROUP")]
    node_group: String,
    /// Jobs run at once.
    #[arg(long, env = "LTS_THREADS", default_value_t = 4)]
    threads: u32,
    /// Jobs taken beyond `--threads`, queued here and started as threads free up (for many
    /// short jobs; keep 0 for long ones).
    #[arg(long, env = "LTS_PREFETCH", default_value_t = 0)]
    prefetch: u32,
    /// Identity (default: host name and a random suffix).
    #[arg(long, env = "LTS_IDENTITY")]
    identity: Option<String>,
    /// A label, `key=value`, for the jobs' affinity: repeat the flag, or separate with commas.
    /// This TaskTracker is sent the jobs whose affinity its labels satisfy (and those without).
    #[arg(long = "label", env = "LTS_LABELS", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Seconds running jobs may take to finish on SIGTERM before they are handed back.
    #[arg(long, env = "LTS_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,
    /// How often to ping the tracker on the work stream, in milliseconds.
    #[arg(long, env = "LTS_HEARTBEAT_MS", default_value_t = 500)]
    heartbeat_ms: u64,
    /// Move to another tracker when the current one leaves pings unanswered this long (ms);
    /// running jobs keep running and their leases move along.
    #[arg(long, env = "LTS_TRACKER_SILENCE_MS", default_value_t = 2_000)]
    tracker_silence_ms: u64,
    /// The largest gRPC message sent or accepted, in bytes (a result is also kept under the
    /// tracker's own limit: past it, the run's log lines are dropped with a note).
    #[arg(long, env = "LTS_MAX_MESSAGE_BYTES", default_value_t = limits::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// The longest result message sent, in bytes; longer ones are cut with a marker.
    #[arg(long, env = "LTS_MAX_RESULT_MESSAGE_BYTES", default_value_t = ReportLimits::default().message_bytes)]
    max_result_message_bytes: usize,
    /// The most business-log (output) lines kept per run: the first and the last half, with
    /// a line saying how many were dropped between.
    #[arg(long, env = "LTS_MAX_LOG_LINES", default_value_t = ReportLimits::default().log_lines)]
    max_log_lines: usize,
    /// The longest business-log (output) line kept, in bytes; longer ones are cut with a marker.
    #[arg(long, env = "LTS_MAX_LOG_LINE_BYTES", default_value_t = ReportLimits::default().log_line_bytes)]
    max_log_line_bytes: usize,
    /// Keep finished results until the tracker acknowledges them in this file (SQLite,
    /// fsynced), and send them again after a crash or restart instead of letting the job run
    /// again. One fsync per result; put it on a volume that outlives the container.
    #[arg(long, env = "LTS_OUTBOX")]
    outbox: Option<std::path::PathBuf>,
    /// Serve `/healthz` (the process answers) and `/readyz` (connected to a tracker) over
    /// plain HTTP on this address, for a kubelet's probes (e.g. `0.0.0.0:8081`).
    #[arg(long, env = "LTS_HEALTH_LISTEN")]
    health_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    sidecar: SidecarArgs,
    /// TLS and token.
    #[command(flatten)]
    credentials: lts_worker_sdk::CredentialOptions,
}

#[tokio::main]
async fn main() -> ExitCode {
    runtime::init_tracing(runtime::LogFormat::from_env());
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runner = match runner_from_args(&cli.sidecar) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lts-worker: {e:#}");
            return ExitCode::from(2);
        }
    };
    let creds = match lts_worker_sdk::Credentials::from_options(&cli.credentials) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lts-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = TaskTracker::builder()
        .credentials(creds)
        .cluster(cli.cluster.clone())
        .node_group(cli.node_group)
        .trackers(cli.tracker)
        .threads(cli.threads)
        .prefetch(cli.prefetch)
        .shutdown_grace(Duration::from_secs(cli.shutdown_grace))
        .heartbeat(Duration::from_millis(cli.heartbeat_ms))
        .tracker_silence(Duration::from_millis(cli.tracker_silence_ms))
        .max_message_bytes(cli.max_message_bytes)
        .report_limits(ReportLimits {
            message_bytes: cli.max_result_message_bytes,
            log_lines: cli.max_log_lines,
            log_line_bytes: cli.max_log_line_bytes,
        })
        .runner_arc(runner);
    for (k, v) in cli.labels {
        builder = builder.label(k, v);
    }
    if let Some(id) = cli.identity {
        builder = builder.identity(id);
    }
    if let Some(path) = cli.outbox {
        builder = builder.outbox(path);
    }
    let mut zk = None;
    if let Some(url) = &cli.registry {
        let mut cfg = match ZkConfig::parse(url, &cli.cluster)
            .and_then(|c| c.with_auth_file(cli.zk_auth_file.as_deref()))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("lts-worker: --registry: {e}");
                return ExitCode::from(2);
            }
        };
        cfg.session_timeout = Duration::from_millis(cli.zk_session_timeout_ms);
        let reg = ZkRegistry::start(cfg, None);
        builder = builder.registry(std::sync::Arc::new(reg.clone()));
        zk = Some(reg);
    }
    let worker = match builder.build() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("lts-worker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = cli.health_listen {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lts-worker: --health-listen {addr}: {e}");
                return ExitCode::from(2);
            }
        };
        tokio::spawn(serve_health(listener, worker.connection()));
    }
    worker.run(runtime::shutdown_signal()).await;
    if let Some(zk) = zk {
        zk.close().await;
    }
    ExitCode::SUCCESS
}

/// `/healthz`: 200 while the process answers (liveness: never tied to the trackers, so an
/// outage of theirs restarts nothing). `/readyz`: 200 while connected to a tracker.
async fn serve_health(listener: tokio::net::TcpListener, connection: lts_worker_sdk::Connection) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let connected = connection.is_connected();
                async move {
                    if connected {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not connected to a tracker\n",
                        )
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, router).await {
        tracing::warn!(error = %e, "health listener stopped");
    }
}

/// One `--label` value: `key=value`.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected key=value"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}
