//! `lts-registry`: cluster membership, tracker discovery and master election.
//!
//! * [`LocalRegistry`] serves one JobTracker without external services (always the master).
//! * [`ZkRegistry`] uses ZooKeeper: every node registers an ephemeral znode under
//!   `/lts/{cluster}/nodes/{role}/{identity}`, JobTrackers elect a master with
//!   ephemeral-sequential candidates under `/lts/{cluster}/election/job-tracker`, and anyone can
//!   watch the members of a role (TaskTrackers and clients use it to find trackers).
//!
//! It is its own crate because JobTrackers, TaskTrackers and JobClients all need it.

mod local;
mod zookeeper;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use local::LocalRegistry;
pub use zookeeper::{ZkConfig, ZkRegistry};

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A JobTracker.
    JobTracker,
    /// A TaskTracker (worker).
    TaskTracker,
    /// A JobClient subscribed to feedback.
    JobClient,
}

impl Role {
    /// All roles.
    pub const ALL: [Role; 3] = [Role::JobTracker, Role::TaskTracker, Role::JobClient];

    /// The ZooKeeper path segment and the name `lts nodes` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::JobTracker => "job-tracker",
            Role::TaskTracker => "task-tracker",
            Role::JobClient => "job-client",
        }
    }
}

/// One registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its role.
    pub role: Role,
    /// Unique identity.
    pub identity: String,
    /// Node group.
    pub node_group: String,
    /// Where it can be reached (trackers) or where it connects from.
    pub address: String,
    /// Worker threads (TaskTrackers).
    pub threads: u32,
    /// Software version.
    pub version: String,
    /// When it registered (Unix epoch ms).
    pub since_ms: i64,
}

/// Errors of a registry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The coordination service failed or is unreachable.
    #[error("registry backend error: {0}")]
    Backend(String),
    /// Bad configuration (address, cluster name).
    #[error("registry configuration: {0}")]
    Config(String),
}

/// Connection state of a registry, for `lts nodes` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working.
    Connected,
    /// Trying to (re)connect; the string says why.
    Disconnected(String),
}

/// Membership and master election.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers (or updates) a node; kept until unregistered or the process dies.
    async fn register(&self, node: NodeInfo) -> Result<(), RegistryError>;
    /// Removes a node.
    async fn unregister(&self, role: Role, identity: &str) -> Result<(), RegistryError>;
    /// All registered nodes.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError>;
    /// Whether this process is the master JobTracker right now.
    fn is_master(&self) -> bool;
    /// The current master (`None` while there is none or it is unknown).
    fn master(&self) -> watch::Receiver<Option<NodeInfo>>;
    /// The live members of one role, updated as they come and go.
    fn members(&self, role: Role) -> watch::Receiver<Vec<NodeInfo>>;
    /// Connection state.
    fn health(&self) -> Health;
    /// While this process is master: its election epoch, higher for every later election, so
    /// that stores can refuse the writes of a deposed master (fencing). `None` when not master
    /// or when the registry has no election (`local`: one tracker, nothing to fence).
    fn master_epoch(&self) -> Option<u64> {
        None
    }
}
