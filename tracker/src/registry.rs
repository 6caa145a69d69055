//! Cluster membership and master election: the [`Registry`] trait.
//!
//! The `local` registry serves a single JobTracker without ZooKeeper: it is always the master
//! and knows the TaskTrackers and JobClients connected to it. The ZooKeeper registry (several
//! trackers, ephemeral nodes, election) implements the same trait.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::watch;

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A JobTracker.
    JobTracker,
    /// A TaskTracker (worker).
    TaskTracker,
    /// A JobClient subscribed to feedback.
    JobClient,
}

impl Role {
    /// The path segment used in ZooKeeper and the name shown by `lts nodes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::JobTracker => "job-tracker",
            Role::TaskTracker => "task-tracker",
            Role::JobClient => "job-client",
        }
    }
}

/// One registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// When it registered.
    pub since_ms: i64,
}

/// Errors of a registry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The coordination service failed.
    #[error("registry backend error: {0}")]
    Backend(String),
}

/// Membership and master election.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers (or updates) a node.
    async fn register(&self, node: NodeInfo) -> Result<(), RegistryError>;
    /// Removes a node.
    async fn unregister(&self, role: Role, identity: &str) -> Result<(), RegistryError>;
    /// All registered nodes.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError>;
    /// Whether this tracker is the master right now.
    fn is_master(&self) -> bool;
    /// The master changes: `None` while there is none.
    fn master(&self) -> watch::Receiver<Option<NodeInfo>>;
}

/// A single-tracker registry without external services.
#[derive(Debug)]
pub struct LocalRegistry {
    nodes: Mutex<BTreeMap<(Role, String), NodeInfo>>,
    master: watch::Sender<Option<NodeInfo>>,
}

impl LocalRegistry {
    /// A registry in which `me` (a JobTracker) is the master.
    pub fn new(me: NodeInfo) -> LocalRegistry {
        let mut nodes = BTreeMap::new();
        nodes.insert((me.role, me.identity.clone()), me.clone());
        let (master, _) = watch::channel(Some(me));
        LocalRegistry {
            nodes: Mutex::new(nodes),
            master,
        }
    }
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn register(&self, node: NodeInfo) -> Result<(), RegistryError> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((node.role, node.identity.clone()), node);
        Ok(())
    }

    async fn unregister(&self, role: Role, identity: &str) -> Result<(), RegistryError> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(role, identity.to_string()));
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        Ok(self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect())
    }

    fn is_master(&self) -> bool {
        true
    }

    fn master(&self) -> watch::Receiver<Option<NodeInfo>> {
        self.master.subscribe()
    }
}
