//! How the client commands reach the cluster ([`ClientOpts`]): tracker addresses or a registry,
//! credentials, and the config file's context filling in what the flags leave out.

use std::sync::Arc;
use std::time::Duration;

use lts_registry::{Registry, ZkConfig, ZkRegistry};
use lts_worker_sdk::{CredentialOptions, Credentials, JobClient};

use crate::error::{CliError, CliResult};
use crate::output::OutputFormat;

/// How to reach the cluster, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// JobTracker address(es), comma-separated or repeated (default: the context's, else
    /// 127.0.0.1:7070).
    #[arg(long, env = "LTS_TRACKER", value_delimiter = ',')]
    pub tracker: Vec<String>,
    /// Find the JobTrackers in ZooKeeper instead: `zookeeper://HOST:PORT[,HOST:PORT]/CHROOT`.
    #[arg(long, env = "LTS_REGISTRY")]
    pub registry: Option<String>,
    /// Cluster name (with --registry; default: the context's, else `default`).
    #[arg(long, env = "LTS_CLUSTER")]
    pub cluster: Option<String>,
    /// File holding the ZooKeeper digest credential `user:password` (a mounted Secret): the
    /// registry's nodes are then readable and writable with it only.
    #[arg(long, env = "LTS_ZK_AUTH_FILE")]
    pub zk_auth_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', env = "LTS_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Deadline of each call to a tracker, in milliseconds; a tracker that does not answer in
    /// time is left for another one (with --registry or several --tracker addresses).
    #[arg(long, env = "LTS_CALL_TIMEOUT_MS", default_value_t = 5_000)]
    pub call_timeout_ms: u64,
    /// TLS and token.
    #[command(flatten)]
    pub credentials: CredentialOptions,
    /// The config file of contexts (default: ~/.config/lts/config.toml).
    #[arg(long, env = "LTS_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// The context of the config file to use (default: its `current-context`).
    #[arg(long, env = "LTS_CONTEXT")]
    pub context: Option<String>,
}

impl ClientOpts {
    pub(crate) async fn client(&self) -> CliResult<JobClient> {
        let opts = self.resolved()?;
        let creds = Credentials::from_options(&opts.credentials)?;
        Ok(opts.bare_client().await?.with_credentials(creds))
    }

    /// These options with what they leave unset taken from the config file's context, then
    /// from the defaults.
    fn resolved(&self) -> CliResult<ClientOpts> {
        let mut o = self.clone();
        if let Some(ctx) = crate::config::load(o.config.as_deref(), o.context.as_deref())? {
            if o.tracker.is_empty() && o.registry.is_none() {
                o.tracker = ctx.tracker;
                o.registry = ctx.registry;
            }
            o.cluster = o.cluster.or(ctx.cluster);
            o.zk_auth_file = o.zk_auth_file.or(ctx.zk_auth_file);
            let c = &mut o.credentials;
            c.tls_ca = c.tls_ca.take().or(ctx.tls_ca);
            c.tls_cert = c.tls_cert.take().or(ctx.tls_cert);
            c.tls_key = c.tls_key.take().or(ctx.tls_key);
            c.tls_domain = c.tls_domain.take().or(ctx.tls_domain);
            if c.token.is_none() {
                c.token_file = c.token_file.take().or(ctx.token_file);
            }
        }
        if o.tracker.is_empty() {
            o.tracker = vec!["127.0.0.1:7070".into()];
        }
        Ok(o)
    }

    fn cluster(&self) -> &str {
        self.cluster.as_deref().unwrap_or("default")
    }

    async fn bare_client(&self) -> CliResult<JobClient> {
        match &self.registry {
            Some(url) => {
                let cfg = ZkConfig::parse(url, self.cluster())
                    .and_then(|c| c.with_auth_file(self.zk_auth_file.as_deref()))
                    .map_err(|e| CliError::Usage(format!("--registry: {e}")))?;
                let zk = ZkRegistry::start(cfg, None);
                zk.wait_connected(Duration::from_secs(10))
                    .await
                    .map_err(|e| CliError::Failed(e.to_string()))?;
                let reg: Arc<dyn Registry> = Arc::new(zk);
                Ok(JobClient::from_registry(reg).with_call_timeout(self.call_timeout()))
            }
            None => JobClient::new(&self.tracker)
                .map(|c| c.with_call_timeout(self.call_timeout()))
                .map_err(|e| self.unavailable(e)),
        }
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms.max(1))
    }

    fn where_(&self) -> String {
        let o = self.resolved().unwrap_or_else(|_| self.clone());
        match &o.registry {
            Some(r) => format!("cluster {:?} in {r}", o.cluster()),
            None => o.tracker.join(","),
        }
    }

    pub(crate) fn unavailable(&self, e: lts_worker_sdk::ClientError) -> CliError {
        match e {
            lts_worker_sdk::ClientError::Unavailable(why) => {
                CliError::Failed(format!("tracker unavailable at {}: {why}", self.where_()))
            }
            other => other.into(),
        }
    }
}
