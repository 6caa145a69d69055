//! `lts-operator`: reconciles `NodeGroup` and `Job` resources (`lts.io/v1alpha1`).
//!
//! One replica leads (a Lease); the others stand by and serve `/healthz`, `/readyz` and
//! `/metrics`. SIGTERM stops the controllers gracefully and releases the Lease.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kube::Client;
use kube::core::DeserializeGuard;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use lts_operator::crd::NodeGroup;
use lts_operator::http::{self, Health};
use lts_operator::leader::{Elector, LeaseConfig};
use lts_operator::nodegroup::BuildConfig;
use lts_operator::pki::{Pki, PkiMode};
use lts_operator::tracker::GrpcConnector;
use lts_operator::{Context, job, nodegroup, workflow};
use tokio_util::sync::CancellationToken;

/// The LTS operator: runs NodeGroups as Deployments and Jobs on their cluster's trackers.
#[derive(Debug, Parser)]
#[command(name = "lts-operator", version, about)]
struct Cli {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "LTS_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// `lts-tracker` image for JobTracker NodeGroups without `spec.image`.
    #[arg(long, env = "LTS_TRACKER_IMAGE", default_value_t = BuildConfig::default().tracker_image)]
    tracker_image: String,
    /// `lts-worker` sidecar image for TaskTracker NodeGroups in Sidecar mode.
    #[arg(long, env = "LTS_WORKER_IMAGE", default_value_t = BuildConfig::default().worker_image)]
    worker_image: String,
    /// Elect a leader with a Lease (turn off only for a single replica).
    #[arg(long, env = "LTS_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "LTS_LEASE_NAME", default_value = "lts-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else the client's).
    #[arg(long, env = "LTS_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a leader keeps the Lease without renewing it.
    #[arg(long, env = "LTS_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's identity (default: the pod name from POD_NAME, else the host name).
    #[arg(long, env = "LTS_IDENTITY")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "LTS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Reconcile NodeGroups and Jobs of this namespace only (a namespace-scoped install with
    /// a Role instead of a ClusterRole); default: every namespace.
    #[arg(long, env = "LTS_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Deadline of each call to a JobTracker, in milliseconds; a tracker that does not answer
    /// in time is left for another one.
    #[arg(long, env = "LTS_CALL_TIMEOUT_MS", default_value_t = 5_000)]
    call_timeout_ms: u64,
    /// Who makes the clusters' certificates: `operator` (a CA per cluster in a Secret,
    /// short-lived certificates per NodeGroup), `cert-manager` (Certificates from
    /// `--cert-manager-issuer`), or `none` (plaintext, no authentication).
    #[arg(long, env = "LTS_PKI", value_enum, default_value_t = PkiFlag::Operator)]
    pki: PkiFlag,
    /// With `--pki cert-manager`: `ClusterIssuer/NAME` or `Issuer/NAME` (in each NodeGroup's
    /// namespace).
    #[arg(
        long,
        env = "LTS_CERT_MANAGER_ISSUER",
        required_if_eq("pki", "cert-manager")
    )]
    cert_manager_issuer: Option<lts_operator::pki::IssuerRef>,
    /// Life of each NodeGroup certificate (renewed at two thirds), e.g. `7d`, `24h`;
    /// between 1h and 365d.
    #[arg(long, env = "LTS_CERTIFICATE_VALIDITY", default_value = "7d", value_parser = validity)]
    certificate_validity: Duration,
    /// Where the operator keeps its own client certificates (`--pki operator`); default:
    /// `lts-operator` in the temporary directory.
    #[arg(long, env = "LTS_PKI_DIR")]
    pki_dir: Option<std::path::PathBuf>,
    /// How long a deleted Job keeps trying to cancel its job on unreachable trackers before
    /// the resource goes anyway (with a Warning Event), e.g. `5m`. The annotation
    /// `lts.io/skip-cancel: "true"` lets a Job go at once.
    #[arg(long, env = "LTS_CANCEL_TIMEOUT", default_value = "5m", value_parser = lts_core::duration::parse_duration)]
    cancel_timeout: Duration,
    /// How the operator reaches JobTrackers: TLS and token. With `--pki operator` the
    /// operator presents its own certificate to each cluster instead.
    #[command(flatten)]
    credentials: lts_worker_sdk::CredentialOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PkiFlag {
    Operator,
    CertManager,
    None,
}

fn validity(s: &str) -> Result<Duration, String> {
    let d = lts_core::duration::parse_duration(s)?;
    if d < Duration::from_secs(3600) || d > Duration::from_secs(365 * 24 * 3600) {
        return Err(format!("{s:?}: must be between 1h and 365d"));
    }
    Ok(d)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// JSON lines with the event's fields at the top level, or text; on stdout.
fn init_tracing(format: LogFormat) {
    use lts_core::runtime::{self, LogOutput};
    let format = match format {
        LogFormat::Json => runtime::LogFormat::FlatJson,
        LogFormat::Text => runtime::LogFormat::Text,
    };
    runtime::init_tracing_to(format, LogOutput::Stdout);
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let message = error_chain(&e);
            tracing::error!(error = %message, "lts-operator stopped");
            eprintln!("lts-operator: {message}");
            std::process::ExitCode::from(1)
        }
    }
}

/// The error and its causes, leaving out causes whose text the message already holds
/// (kube's errors repeat their sources in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        lts_core::runtime::shutdown_signal().await;
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("install the metrics recorder")?;
    let health = Arc::new(Health::default());
    let shutdown = shutdown_on_signals();
    let server = {
        let stop = shutdown.clone();
        let router = http::router(Some(metrics), health.clone());
        let listen = cli.listen;
        tokio::spawn(async move {
            http::serve(listen, router, async move { stop.cancelled().await }).await
        })
    };

    let client = Client::try_default()
        .await
        .context("connect to the Kubernetes API (in-cluster config or kubeconfig)")?;
    let watch_namespace = cli.watch_namespace.clone().filter(|ns| !ns.is_empty());
    lts_operator::check_crds(&client, watch_namespace.as_deref()).await?;
    let workflows = lts_operator::serves_workflows(&client, watch_namespace.as_deref()).await?;
    if !workflows {
        tracing::warn!(
            "the CRD workflows.lts.io is not installed: Workflow resources are not served \
             (install it with `kubectl apply -f crds/` and restart the operator)"
        );
    }
    health.set_ready(true);

    let identity = cli
        .identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("lts-operator-{}", std::process::id()));
    let elector = if cli.leader_election {
        let namespace = cli
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| client.default_namespace().to_string());
        let elector = Arc::new(Elector::new(
            client.clone(),
            LeaseConfig {
                name: cli.lease_name.clone(),
                namespace,
                identity: identity.clone(),
                duration: Duration::from_secs(cli.lease_seconds.max(3)),
            },
        ));
        lts_operator::metrics::set_leader(false);
        if !elector.acquire(&shutdown).await {
            return Ok(());
        }
        Some(elector)
    } else {
        None
    };
    lts_operator::metrics::set_leader(true);

    // Controllers stop on SIGTERM, or when the Lease is lost.
    let stop = shutdown.child_token();
    let lost = elector.as_ref().map(|e| e.clone().keep(stop.clone()));
    if let Some(lost) = &lost {
        let (lost, stop) = (lost.clone(), stop.clone());
        tokio::spawn(async move {
            lost.cancelled().await;
            stop.cancel();
        });
    }

    let (reader, writer) = reflector::store();
    let nodegroups = reflector(
        writer,
        watcher(
            lts_operator::watched_api::<DeserializeGuard<NodeGroup>>(
                &client,
                watch_namespace.as_deref(),
            ),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let creds = lts_worker_sdk::Credentials::from_options(&cli.credentials)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pki_mode = match (cli.pki, cli.cert_manager_issuer.clone()) {
        (PkiFlag::Operator, _) => PkiMode::Operator,
        (PkiFlag::CertManager, Some(issuer)) => PkiMode::CertManager(issuer),
        (PkiFlag::CertManager, None) => {
            anyhow::bail!("--pki cert-manager needs --cert-manager-issuer")
        }
        (PkiFlag::None, _) => {
            tracing::warn!("--pki none: trackers run without TLS and without authentication");
            PkiMode::Disabled
        }
    };
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            reader.clone(),
            Arc::new(
                GrpcConnector::new(Duration::from_millis(cli.call_timeout_ms))
                    .with_credentials(creds),
            ),
            BuildConfig {
                tracker_image: cli.tracker_image.clone(),
                worker_image: cli.worker_image.clone(),
                secure: true,
            },
            Arc::new(job::Watches::default()),
        )
        .watching(watch_namespace.clone())
        .with_cancel_timeout(cli.cancel_timeout)
        .with_pki(Pki::new(
            pki_mode,
            cli.certificate_validity,
            cli.pki_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("lts-operator")),
        )),
    );
    tracing::info!(%identity, workflows, "starting the NodeGroup, Job and Workflow controllers");
    let ng_stop = stop.clone();
    let ng_controller =
        nodegroup::run(
            ctx.clone(),
            nodegroups,
            async move { ng_stop.cancelled().await },
        );
    let job_stop = stop.clone();
    let job_ctx = ctx.clone();
    let job_controller = async move {
        // Jobs resolve their cluster from the NodeGroup store: wait until it is filled.
        tokio::select! {
            r = reader.wait_until_ready() => if r.is_err() { return; },
            _ = job_stop.cancelled() => return,
        }
        job::run(job_ctx, async move { job_stop.cancelled().await }).await
    };
    let wf_stop = stop.clone();
    let wf_ctx = ctx.clone();
    let wf_controller = async move {
        if workflows {
            workflow::run(wf_ctx, async move { wf_stop.cancelled().await }).await
        }
    };
    tokio::join!(ng_controller, job_controller, wf_controller);

    if let Some(e) = &elector {
        e.release().await;
    }
    stop.cancel();
    shutdown.cancel();
    let _ = server.await;
    if lost.is_some_and(|l| l.is_cancelled()) {
        anyhow::bail!("lost the leader Lease; exiting so a restart campaigns again")
    }
    Ok(())
}
