//! Starting a JobTracker: configuration ([`TrackerConfig`]) and the running server
//! ([`Tracker`]). The binary `lts-tracker`, `lts dev` and the tests all start trackers this way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lts_core::limits::{self, ReportLimits};
use lts_core::proto::{
    cluster_service_server::ClusterServiceServer, feedback_service_server::FeedbackServiceServer,
    job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer,
};
use lts_core::redact::{self, redact_url};
use lts_core::schedule::RetryPolicy;
use lts_core::{now_ms, validate};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::admission::StreamSlots;
use crate::auth::Auth;
use crate::dispatch::Dispatcher;
use crate::feedback::FeedbackHub;
use crate::registry::{LocalRegistry, NodeInfo, Registry, Role, ZkConfig, ZkRegistry};
use crate::service::{ClusterApi, FeedbackApi, JobApi, TrackerCore, WorkerApi, WorkflowApi};
use crate::store::JobStore;
use crate::store::mongo::{MongoOptions, MongoStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore, SyncMode};
use crate::tls::{ClientAuth, ServerTls, TlsFiles};

/// Where jobs are stored. Shown (`Display` and `Debug`) with its secrets hidden.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite:PATH`: the embedded store in one file.
    Sqlite(std::path::PathBuf),
    /// `mongodb://…` or `mongodb+srv://…`: MongoDB, shared by every tracker of a cluster.
    Mongo(String),
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            StoreUrl::Mongo(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            StoreUrl::Mongo(url) => f.debug_tuple("Mongo").field(&redact_url(url)).finish(),
        }
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("sqlite: needs a file path, e.g. sqlite:./data/lts.db".into());
            }
            return Ok(StoreUrl::Sqlite(path.into()));
        }
        if s.starts_with("mongodb://") || s.starts_with("mongodb+srv://") {
            return Ok(StoreUrl::Mongo(s.to_string()));
        }
        Err(format!(
            "unsupported store {:?}: expected sqlite:PATH (e.g. sqlite:./data/lts.db) or mongodb://HOST:PORT/DATABASE",
            redact_url(s)
        ))
    }
}

/// SQLite durability, as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncFlag {
    /// Answer a write only after an fsync covers it (survives power loss).
    Full,
    /// fsync at checkpoints only (survives a process crash).
    Normal,
}

/// Every option of a JobTracker. Each flag also reads an `LTS_…` environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct TrackerConfig {
    /// Address to serve gRPC on.
    #[arg(long, env = "LTS_LISTEN", default_value = "0.0.0.0:7070")]
    pub listen: SocketAddr,
    /// Address other nodes should use to reach this tracker (default: the listen address).
    #[arg(long, env = "LTS_ADVERTISE")]
    pub advertise: Option<String>,
    /// Job store: `sqlite:PATH` (embedded, one tracker) or `mongodb://HOST:PORT[,…]/DATABASE`
    /// (shared by every tracker of the cluster; without a database, `lts_<cluster>`).
    #[arg(long, env = "LTS_STORE", default_value = "sqlite:./lts-data/lts.db")]
    pub store: StoreUrl,
    /// Read the job store URL from this file instead (a mounted Secret): a URL with a
    /// password belongs here or in `LTS_STORE`, never in a flag (`ps` shows flags).
    #[arg(long, env = "LTS_STORE_FILE", conflicts_with = "store")]
    pub store_file: Option<PathBuf>,
    /// Membership and election: `local` (one tracker) or
    /// `zookeeper://HOST:PORT[,HOST:PORT]/CHROOT`.
    #[arg(long, env = "LTS_REGISTRY", default_value = "local")]
    pub registry: String,
    /// ZooKeeper session timeout in milliseconds: a crashed node's registration and a crashed
    /// master's leadership end after this.
    #[arg(long, env = "LTS_ZK_SESSION_TIMEOUT_MS", default_value_t = 6_000)]
    pub zk_session_timeout_ms: u64,
    /// File holding the ZooKeeper digest credential `user:password` (a mounted Secret): the
    /// registry's nodes are then readable and writable with it only.
    #[arg(long, env = "LTS_ZK_AUTH_FILE")]
    pub zk_auth_file: Option<std::path::PathBuf>,
    /// Cluster name; TaskTrackers and clients of another cluster are refused.
    #[arg(long, env = "LTS_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Node group of the JobTrackers.
    #[arg(long, env = "LTS_NODE_GROUP", default_value = "job-tracker")]
    pub node_group: String,
    /// This tracker's identity (default: hostname and a random suffix).
    #[arg(long, env = "LTS_IDENTITY")]
    pub identity: Option<String>,
    /// How long a lease lasts without renewal, in milliseconds.
    #[arg(long, env = "LTS_LEASE_MS", default_value_t = 15_000)]
    pub lease_ms: i64,
    /// With idle TaskTrackers, look for due work this often (milliseconds). Catches jobs
    /// submitted through other trackers of a cluster; a tracker's own submits, retries and
    /// fires wake its dispatcher at once.
    #[arg(long, env = "LTS_IDLE_POLL_MS", default_value_t = 500)]
    pub idle_poll_ms: u64,
    /// Claim a job this many milliseconds ahead of its trigger time (a cron fire, a delayed job, a
    /// retry) for a TaskTracker that holds it until then, so that it starts on time however
    /// long the claim takes when many jobs fall due at once. 0: claim only due jobs. At most
    /// 10000.
    #[arg(long, env = "LTS_CLAIM_AHEAD_MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub claim_ahead_ms: u64,
    /// Cap on a node group's running jobs across every tracker of the cluster, as
    /// `GROUP=N` (1..=1000000); repeat the flag, or separate with commas, for more groups. Give
    /// every tracker the same caps. Groups not named have none.
    #[arg(long = "max-running", env = "LTS_MAX_RUNNING", value_delimiter = ',',
          value_parser = parse_group_cap)]
    pub max_running: Vec<(String, u32)>,
    /// How often each TaskTracker's stream is pinged, in milliseconds. A TaskTracker that
    /// leaves four pings unanswered gets no new jobs until it answers again; TaskTrackers ping
    /// back and move to another tracker when this one goes silent.
    #[arg(long, env = "LTS_HEARTBEAT_MS", default_value_t = 500)]
    pub heartbeat_ms: u64,
    /// How long a disconnected TaskTracker may take to come back before its running jobs are
    /// queued again, in milliseconds.
    #[arg(long, env = "LTS_ORPHAN_GRACE_MS", default_value_t = 2_000)]
    pub orphan_grace_ms: u64,
    /// A broadcast job's shard at least this old (milliseconds) whose TaskTracker is neither
    /// connected nor registered is cancelled by the master, and the job ends without it.
    /// 1000..=3600000.
    #[arg(long, env = "LTS_BROADCAST_GRACE_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub broadcast_grace_ms: u64,
    /// Delay before the first retry of a LATER/EXCEPTION outcome, in milliseconds.
    #[arg(long, env = "LTS_RETRY_MIN_DELAY_MS", default_value_t = 1_000)]
    pub retry_min_delay_ms: u64,
    /// Upper bound of retry delays, in milliseconds.
    #[arg(long, env = "LTS_RETRY_MAX_DELAY_MS", default_value_t = 300_000)]
    pub retry_max_delay_ms: u64,
    /// How long finished jobs and job-log lines are kept, in hours.
    #[arg(long, env = "LTS_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: u64,
    /// SQLite durability.
    #[arg(long, env = "LTS_SQLITE_SYNC", value_enum, default_value_t = SyncFlag::Full)]
    pub sqlite_sync: SyncFlag,
    /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9464).
    #[arg(long, env = "LTS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds between SIGTERM and the end of serving: the tracker leaves ZooKeeper and says
    /// it is not ready (`/readyz`, gRPC health) at once, so load balancers and clients move
    /// away, and keeps answering calls already on their way until then.
    #[arg(long, env = "LTS_DRAIN_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub drain_seconds: u64,
    /// The largest gRPC message sent or accepted, in bytes (encoded). TaskTrackers learn it
    /// when they connect and keep their results under it.
    #[arg(long, env = "LTS_MAX_MESSAGE_BYTES", default_value_t = limits::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// The longest result message stored, in bytes; longer ones are cut with a marker.
    #[arg(long, env = "LTS_MAX_RESULT_MESSAGE_BYTES", default_value_t = ReportLimits::default().message_bytes)]
    pub max_result_message_bytes: usize,
    /// The most business-log lines stored per run: the first and the last half are kept,
    /// with a line saying how many were dropped between.
    #[arg(long, env = "LTS_MAX_LOG_LINES", default_value_t = ReportLimits::default().log_lines)]
    pub max_log_lines: usize,
    /// The longest business-log line stored, in bytes; longer ones are cut with a marker.
    #[arg(long, env = "LTS_MAX_LOG_LINE_BYTES", default_value_t = ReportLimits::default().log_line_bytes)]
    pub max_log_line_bytes: usize,
    /// How long a new Work or feedback stream may take to send its first message (Hello,
    /// Subscribe), in milliseconds.
    #[arg(long, env = "LTS_HELLO_TIMEOUT_MS", default_value_t = 10_000)]
    pub hello_timeout_ms: u64,
    /// The most TaskTracker (Work) streams served at once.
    #[arg(long, env = "LTS_MAX_WORKER_STREAMS", default_value_t = 10_000)]
    pub max_worker_streams: usize,
    /// The most feedback subscriptions and job watches served at once.
    #[arg(long, env = "LTS_MAX_SUBSCRIBER_STREAMS", default_value_t = 10_000)]
    pub max_subscriber_streams: usize,
    /// The largest page `ListJobs` returns (a larger page size is cut to it).
    #[arg(long, env = "LTS_MAX_PAGE_SIZE", default_value_t = 1_000)]
    pub max_page_size: usize,
    /// The most job-log lines `GetLog` returns (a larger limit is cut to it).
    #[arg(long, env = "LTS_MAX_LOG_ENTRIES", default_value_t = 10_000)]
    pub max_log_entries: usize,
    /// The tracker's TLS certificate chain (PEM). Read again when it changes on disk.
    #[arg(long, env = "LTS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "LTS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA bundle (PEM) that signs client certificates.
    #[arg(long, env = "LTS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Whether clients must present a certificate signed by `--tls-ca` (`required`), may
    /// (`optional`, the others use tokens) or are not asked (`none`). Default: `required`
    /// with `--tls-ca`, else `none`.
    #[arg(long, env = "LTS_TLS_CLIENT_AUTH", value_enum)]
    pub tls_client_auth: Option<ClientAuth>,
    /// Serve plaintext gRPC (no `--tls-cert`): only on a trusted network or loopback.
    #[arg(long, env = "LTS_INSECURE")]
    pub insecure: bool,
    /// Principals, their tokens and certificate names, and their grants (YAML; see the
    /// README's security section). Read again when it changes.
    #[arg(long, env = "LTS_AUTH_FILE", conflicts_with = "no_auth")]
    pub auth_file: Option<PathBuf>,
    /// Serve without an auth file: every caller is an administrator.
    #[arg(long, env = "LTS_NO_AUTH")]
    pub no_auth: bool,
}

/// The largest cap `--max-running` takes.
const MAX_GROUP_CAP: u32 = 1_000_000;

/// One `--max-running` value: `GROUP=N`.
fn parse_group_cap(s: &str) -> Result<(String, u32), String> {
    let (group, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected GROUP=N"))?;
    let group = group.trim();
    if group.is_empty() {
        return Err(format!("{s:?}: the node group is empty"));
    }
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: the cap is not a whole number ({e})"))?;
    if n == 0 || n > MAX_GROUP_CAP {
        return Err(format!("{s:?}: the cap must be 1..={MAX_GROUP_CAP}"));
    }
    Ok((group.to_string(), n))
}

impl TrackerConfig {
    /// Defaults, as the flags have them, with the store at `store` and listening on `listen`.
    pub fn new(store: StoreUrl, listen: SocketAddr) -> TrackerConfig {
        TrackerConfig {
            listen,
            advertise: None,
            store,
            store_file: None,
            registry: "local".into(),
            zk_session_timeout_ms: 6_000,
            zk_auth_file: None,
            cluster: "default".into(),
            node_group: "job-tracker".into(),
            identity: None,
            lease_ms: 15_000,
            orphan_grace_ms: 2_000,
            broadcast_grace_ms: 10_000,
            heartbeat_ms: 500,
            idle_poll_ms: 500,
            claim_ahead_ms: 200,
            max_running: Vec::new(),
            retry_min_delay_ms: 1_000,
            retry_max_delay_ms: 300_000,
            retention_hours: 168,
            sqlite_sync: SyncFlag::Full,
            metrics_listen: None,
            drain_seconds: 0,
            max_message_bytes: limits::DEFAULT_MAX_MESSAGE_BYTES,
            max_result_message_bytes: ReportLimits::default().message_bytes,
            max_log_lines: ReportLimits::default().log_lines,
            max_log_line_bytes: ReportLimits::default().log_line_bytes,
            hello_timeout_ms: 10_000,
            max_worker_streams: 10_000,
            max_subscriber_streams: 10_000,
            max_page_size: 1_000,
            max_log_entries: 10_000,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_client_auth: None,
            insecure: false,
            auth_file: None,
            no_auth: false,
        }
    }

    /// Plaintext and without an auth file (every caller is an administrator): what `lts dev`
    /// and in-process tools on loopback use.
    pub fn open(mut self) -> TrackerConfig {
        self.insecure = true;
        self.no_auth = true;
        self
    }

    /// The TLS files, when TLS is configured.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        let (cert, key) = (self.tls_cert.clone()?, self.tls_key.clone()?);
        Some(TlsFiles {
            cert,
            key,
            ca: self.tls_ca.clone(),
            client_auth: self.tls_client_auth.unwrap_or(if self.tls_ca.is_some() {
                ClientAuth::Required
            } else {
                ClientAuth::None
            }),
        })
    }

    /// The bounds a run's report is stored within.
    pub fn report_limits(&self) -> ReportLimits {
        ReportLimits {
            message_bytes: self.max_result_message_bytes,
            log_lines: self.max_log_lines,
            log_line_bytes: self.max_log_line_bytes,
        }
    }

    fn check(&self) -> Result<(), validate::Violations> {
        let mut v = Vec::new();
        validate::check_node_group("cluster", &self.cluster, &mut v);
        validate::check_node_group("node_group", &self.node_group, &mut v);
        if self.lease_ms < 1_000 {
            v.push(validate::FieldViolation::new(
                "lease_ms",
                format!("must be at least 1000 (got {})", self.lease_ms),
            ));
        }
        let (min, max) = (
            lts_core::heartbeat::MIN_INTERVAL.as_millis() as u64,
            lts_core::heartbeat::MAX_INTERVAL.as_millis() as u64,
        );
        if !(min..=max).contains(&self.heartbeat_ms) {
            v.push(validate::FieldViolation::new(
                "heartbeat_ms",
                format!(
                    "must be between {min} and {max} (got {})",
                    self.heartbeat_ms
                ),
            ));
        }
        limits::check_message_limit("max_message_bytes", self.max_message_bytes, &mut v);
        limits::check_report_limits(&self.report_limits(), &mut v);
        for (field, value) in [
            ("hello_timeout_ms", self.hello_timeout_ms as usize),
            ("max_worker_streams", self.max_worker_streams),
            ("max_subscriber_streams", self.max_subscriber_streams),
            ("max_page_size", self.max_page_size),
            ("max_log_entries", self.max_log_entries),
        ] {
            if value == 0 {
                v.push(validate::FieldViolation::new(field, "must be at least 1"));
            }
        }
        if self.retry_min_delay_ms == 0 || self.retry_min_delay_ms > self.retry_max_delay_ms {
            v.push(validate::FieldViolation::new(
                "retry_min_delay_ms",
                "must be > 0 and at most retry_max_delay_ms",
            ));
        }
        if self.tls_cert.is_none() && !self.insecure {
            v.push(validate::FieldViolation::new(
                "tls_cert",
                "TLS is off: give --tls-cert and --tls-key, or --insecure to serve plaintext gRPC on a trusted network",
            ));
        }
        if self.tls_cert.is_some() && self.insecure {
            v.push(validate::FieldViolation::new(
                "insecure",
                "--insecure and --tls-cert contradict each other: give one",
            ));
        }
        if self.auth_file.is_none() && !self.no_auth {
            v.push(validate::FieldViolation::new(
                "auth_file",
                "every caller would be an administrator: give --auth-file, or --no-auth to allow it",
            ));
        }
        if v.is_empty() {
            Ok(())
        } else {
            Err(validate::Violations(v))
        }
    }
}

pub use lts_core::default_identity;

/// A running JobTracker.
pub struct Tracker {
    core: Arc<TrackerCore>,
    local_addr: SocketAddr,
    tls: bool,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    shutdown: CancellationToken,
    /// Cancelled when draining starts (before `shutdown`).
    draining: CancellationToken,
    drain_for: Duration,
    health: tonic_health::server::HealthReporter,
    zk: Option<ZkRegistry>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Tracker {
    /// Opens the store, binds the listener and starts serving.
    pub async fn start(mut config: TrackerConfig) -> anyhow::Result<Tracker> {
        config.check().map_err(|v| anyhow::anyhow!("{v}"))?;
        if let Some(path) = &config.store_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the store URL from {}", path.display()))?;
            config.store = text
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("the store URL in {}: {e}", path.display()))?;
        }
        let tls = config.tls_files().map(ServerTls::load).transpose()?;
        let auth = match &config.auth_file {
            Some(path) => Auth::from_file(path.clone())?,
            None => Auth::open(),
        };
        let retry = RetryPolicy {
            min_delay: Duration::from_millis(config.retry_min_delay_ms),
            max_delay: Duration::from_millis(config.retry_max_delay_ms),
            ..RetryPolicy::default()
        };
        let store: Arc<dyn JobStore> = match &config.store {
            StoreUrl::Sqlite(path) => Arc::new(
                SqliteStore::open(
                    path,
                    SqliteOptions {
                        sync: match config.sqlite_sync {
                            SyncFlag::Full => SyncMode::Full,
                            SyncFlag::Normal => SyncMode::Normal,
                        },
                        retry,
                    },
                )
                .with_context(|| format!("opening the job store {}", path.display()))?,
            ),
            StoreUrl::Mongo(url) => Arc::new(
                MongoStore::connect(
                    url,
                    &config.cluster,
                    MongoOptions {
                        retry,
                        retention: Duration::from_secs(config.retention_hours * 3600),
                        ..MongoOptions::default()
                    },
                )
                .await
                // A driver's error may quote the URL, or its parts.
                .map_err(|e| anyhow::anyhow!("{}", redact::scrub(&format!("{e:#}"), url)))
                .with_context(|| format!("opening the job store {}", config.store))?,
            ),
        };
        // Every write announces the jobs it touched to `JobService.Watch` subscribers.
        let changes = crate::changes::ChangeFeed::new(store);
        let store: Arc<dyn JobStore> = changes.clone();
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let identity = config
            .identity
            .clone()
            .unwrap_or_else(|| default_identity("tracker"));
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        let me = NodeInfo {
            role: Role::JobTracker,
            identity: identity.clone(),
            node_group: config.node_group.clone(),
            address: advertise,
            threads: 0,
            version: lts_core::VERSION.to_string(),
            since_ms: now_ms(),
        };
        let (registry, zk): (Arc<dyn Registry>, Option<ZkRegistry>) = if config.registry == "local"
        {
            (Arc::new(LocalRegistry::new(me)), None)
        } else {
            let mut zk_config = ZkConfig::parse(&config.registry, &config.cluster)?
                .with_auth_file(config.zk_auth_file.as_deref())?;
            zk_config.session_timeout = Duration::from_millis(config.zk_session_timeout_ms);
            let zk = ZkRegistry::start(zk_config, Some(me));
            // Start serving even if ZooKeeper is down: the tracker keeps accepting jobs and
            // joins the cluster (and the election) when ZooKeeper is back.
            match zk.wait_connected(Duration::from_secs(10)).await {
                Ok(()) => {}
                // Its nodes cannot be secured: not a passing fault.
                Err(e @ lts_registry::RegistryError::Config(_)) => {
                    return Err(anyhow::anyhow!("registry: {e}"));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "starting without ZooKeeper; will keep trying")
                }
            }
            (Arc::new(zk.clone()), Some(zk))
        };
        let shutdown = CancellationToken::new();
        let dispatcher = Dispatcher::new(
            store.clone(),
            config.lease_ms,
            Duration::from_millis(config.idle_poll_ms),
            config.claim_ahead_ms as i64,
            config.max_running.iter().cloned().collect(),
            shutdown.clone(),
        );
        let feedback = FeedbackHub::new(store.clone(), shutdown.clone());
        let core = Arc::new(TrackerCore {
            identity: identity.clone(),
            cluster: config.cluster.clone(),
            store,
            changes,
            dispatcher,
            registry,
            feedback,
            orphan_grace: Duration::from_millis(config.orphan_grace_ms),
            broadcast_grace: Duration::from_millis(config.broadcast_grace_ms),
            register_peers: zk.is_none(),
            shutdown: shutdown.clone(),
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            report_limits: config.report_limits(),
            max_message_bytes: config.max_message_bytes,
            hello_timeout: Duration::from_millis(config.hello_timeout_ms),
            worker_streams: StreamSlots::new(
                "TaskTracker (Work)",
                "--max-worker-streams",
                config.max_worker_streams,
            ),
            subscriber_streams: StreamSlots::new(
                "feedback and watch",
                "--max-subscriber-streams",
                config.max_subscriber_streams,
            ),
            max_page_size: config.max_page_size,
            max_log_entries: config.max_log_entries,
            auth: auth.clone(),
        });
        auth.spawn_reloader(shutdown.clone());
        let draining = CancellationToken::new();
        if let Some(tls) = &tls {
            tls.spawn_reloader(shutdown.clone());
        }

        if let Some(addr) = config.metrics_listen {
            crate::metrics::serve(addr, core.store.clone(), draining.clone(), shutdown.clone())
                .await?;
            crate::metrics::spawn_backlog(core.store.clone(), shutdown.clone());
        }
        core.dispatcher
            .watch_peers(core.registry.members(Role::TaskTracker));
        spawn_master_loops(core.clone(), config.retention_hours);

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<JobServiceServer<JobApi>>()
            .await;
        health_reporter
            .set_serving::<WorkerServiceServer<WorkerApi>>()
            .await;
        let stop = shutdown.clone();
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(health_service)
            .add_service(
                JobServiceServer::new(JobApi(core.clone()))
                    .max_decoding_message_size(config.max_message_bytes)
                    .max_encoding_message_size(config.max_message_bytes),
            )
            .add_service(
                lts_core::proto::workflow_service_server::WorkflowServiceServer::new(WorkflowApi(
                    core.clone(),
                ))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
            )
            .add_service(
                WorkerServiceServer::new(WorkerApi(core.clone()))
                    .max_decoding_message_size(config.max_message_bytes)
                    .max_encoding_message_size(config.max_message_bytes),
            )
            .add_service(
                FeedbackServiceServer::new(FeedbackApi(core.clone()))
                    .max_decoding_message_size(config.max_message_bytes)
                    .max_encoding_message_size(config.max_message_bytes),
            )
            .add_service(
                ClusterServiceServer::new(ClusterApi(core.clone()))
                    .max_decoding_message_size(config.max_message_bytes)
                    .max_encoding_message_size(config.max_message_bytes),
            );
        let server = match &tls {
            Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
                crate::tls::incoming(listener, tls.clone(), shutdown.clone()),
                async move { stop.cancelled().await },
            )),
            None => tokio::spawn(
                router.serve_with_incoming_shutdown(
                    TcpIncoming::from(listener)
                        .with_nodelay(Some(true))
                        .with_keepalive(Some(Duration::from_secs(30))),
                    async move { stop.cancelled().await },
                ),
            ),
        };
        tracing::info!(
            identity = %identity,
            cluster = %config.cluster,
            listen = %local_addr,
            store = ?config.store,
            tls = tls.is_some(),
            auth = auth.enabled(),
            "JobTracker started"
        );
        Ok(Tracker {
            core,
            local_addr,
            tls: tls.is_some(),
            server,
            shutdown,
            draining,
            drain_for: Duration::from_secs(config.drain_seconds),
            health: health_reporter,
            zk,
        })
    }

    /// The address the server is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR` (`https://` with TLS) for clients on this machine.
    pub fn endpoint(&self) -> String {
        let addr = if self.local_addr.ip().is_unspecified() {
            SocketAddr::new([127, 0, 0, 1].into(), self.local_addr.port())
        } else {
            self.local_addr
        };
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// The tracker's store (for in-process tools such as `lts dev`).
    pub fn store(&self) -> Arc<dyn JobStore> {
        self.core.store.clone()
    }

    /// This tracker's identity.
    pub fn identity(&self) -> &str {
        &self.core.identity
    }

    /// Whether this tracker is the master right now.
    pub fn is_master(&self) -> bool {
        self.core.registry.is_master()
    }

    /// Resolves when the ZooKeeper registry gave up for good — its nodes cannot be secured, a
    /// refusal that came after the tracker started without ZooKeeper (slow to answer at
    /// start) — with the reason; never with the local registry. The tracker must then stop:
    /// it would otherwise serve on without ever joining its cluster.
    pub async fn registry_refused(&self) -> lts_registry::RegistryError {
        let Some(zk) = &self.zk else {
            return std::future::pending().await;
        };
        loop {
            if let Some(e) = zk.fatal() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Starts draining: leaves ZooKeeper (clients and TaskTrackers pick another tracker) and
    /// reports not ready (`/readyz` 503, gRPC health `NOT_SERVING`: the Service stops sending
    /// new connections here), while still serving what arrives.
    pub async fn drain(&self) {
        if self.draining.is_cancelled() {
            return;
        }
        self.draining.cancel();
        tracing::info!(drain_seconds = self.drain_for.as_secs(), "draining");
        self.health
            .set_not_serving::<JobServiceServer<JobApi>>()
            .await;
        self.health
            .set_not_serving::<WorkerServiceServer<WorkerApi>>()
            .await;
        if let Some(zk) = &self.zk {
            zk.close().await;
        }
    }

    /// Stops serving: drains first (for `--drain-seconds`), then streams end and background
    /// loops stop.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.drain().await;
        tokio::time::sleep(self.drain_for).await;
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(joined) => joined??,
            Err(_) => tracing::warn!("gRPC server did not stop within 10 s"),
        }
        tracing::info!("JobTracker stopped");
        Ok(())
    }
}

/// The master-only housekeeping: re-queue the jobs of TaskTrackers that left the cluster and
/// of expired leases, enforce retention.
fn spawn_master_loops(core: Arc<TrackerCore>, retention_hours: u64) {
    if !core.register_peers {
        tokio::spawn(watch_task_trackers(core.clone()));
    }
    let c = core.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = c.shutdown.cancelled() => return,
            }
            if !c.may_act_as_master().await {
                continue;
            }
            match c.store.requeue_expired(now_ms()).await {
                Ok(requeued) if !requeued.is_empty() => {
                    metrics::counter!("lts_jobs_requeued_total", "reason" => "lease_expired")
                        .increment(requeued.len() as u64);
                    tracing::warn!(n = requeued.len(), "expired leases: jobs queued again");
                    for r in requeued {
                        c.dispatcher.signal_work(&r.node_group);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "lease sweep failed"),
            }
            end_broadcasts_to_gone_task_trackers(&c).await;
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = core.shutdown.cancelled() => return,
            }
            if !core.may_act_as_master().await {
                continue;
            }
            let before = now_ms() - (retention_hours as i64) * 3_600_000;
            match core.store.enforce_retention(before).await {
                Ok(n) if n > 0 => tracing::info!(
                    rows = n,
                    "retention: old finished jobs and log lines deleted"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
    });
}

/// Master only: cancels the broadcast shards for TaskTrackers that left the cluster — none
/// connected here, none registered — so that their jobs end instead of waiting for them. Only
/// shards at least `broadcast_grace` old (a claim may have listed a TaskTracker just leaving).
async fn end_broadcasts_to_gone_task_trackers(core: &TrackerCore) {
    let now = now_ms();
    let grace = i64::try_from(core.broadcast_grace.as_millis()).unwrap_or(i64::MAX);
    let targets = match core
        .store
        .broadcast_targets(now.saturating_sub(grace))
        .await
    {
        Ok(targets) => targets,
        Err(e) => {
            tracing::warn!(error = %e, "looking for broadcast shards failed");
            return;
        }
    };
    if targets.is_empty() {
        return;
    }
    let registered: std::collections::HashSet<String> = core
        .registry
        .members(Role::TaskTracker)
        .borrow()
        .iter()
        .map(|n| n.identity.clone())
        .collect();
    for identity in targets {
        if registered.contains(&identity) || core.dispatcher.is_connected(&identity) {
            continue;
        }
        match core.store.target_gone(&identity, now).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(identity = %identity, n, "TaskTracker gone: its broadcast shards are cancelled")
            }
            Err(e) => {
                tracing::warn!(identity = %identity, error = %e, "cancelling broadcast shards failed")
            }
        }
    }
}

/// Master only: when a TaskTracker's registration vanishes (its process died or lost its
/// ZooKeeper session), put its leased jobs back at once instead of waiting for the leases.
async fn watch_task_trackers(core: Arc<TrackerCore>) {
    use std::collections::BTreeSet;
    let mut members = core.registry.members(Role::TaskTracker);
    let mut known: BTreeSet<String> = members
        .borrow_and_update()
        .iter()
        .map(|n| n.identity.clone())
        .collect();
    loop {
        tokio::select! {
            changed = members.changed() => if changed.is_err() { return },
            _ = core.shutdown.cancelled() => return,
        }
        let now: BTreeSet<String> = members
            .borrow_and_update()
            .iter()
            .map(|n| n.identity.clone())
            .collect();
        let gone: Vec<String> = known.difference(&now).cloned().collect();
        known = now;
        if gone.is_empty() || !core.may_act_as_master().await {
            continue;
        }
        for identity in gone {
            match core.store.requeue_owner(&identity, now_ms()).await {
                Ok(requeued) => {
                    if !requeued.is_empty() {
                        metrics::counter!("lts_jobs_requeued_total", "reason" => "task_tracker_left")
                            .increment(requeued.len() as u64);
                        tracing::warn!(identity = %identity, n = requeued.len(), "TaskTracker left the cluster; its jobs are queued again");
                    }
                    for r in requeued {
                        core.dispatcher.signal_work(&r.node_group);
                    }
                }
                Err(e) => {
                    tracing::warn!(identity = %identity, error = %e, "requeue failed; leases will expire")
                }
            }
        }
    }
}
