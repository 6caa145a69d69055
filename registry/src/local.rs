//! The `local` registry: a single JobTracker without external services. It is always the
//! master and knows the TaskTrackers and JobClients connected to it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{Health, NodeInfo, Registry, RegistryError, Role};

/// A single-tracker registry without external services.
#[derive(Debug)]
pub struct LocalRegistry {
    nodes: Mutex<BTreeMap<(Role, String), NodeInfo>>,
    master: watch::Sender<Option<NodeInfo>>,
    members: [watch::Sender<Vec<NodeInfo>>; 3],
}

fn index(role: Role) -> usize {
    match role {
        Role::JobTracker => 0,
        Role::TaskTracker => 1,
        Role::JobClient => 2,
    }
}

impl LocalRegistry {
    /// A registry in which `me` (a JobTracker) is the master.
    pub fn new(me: NodeInfo) -> LocalRegistry {
        let (master, _) = watch::channel(Some(me.clone()));
        let reg = LocalRegistry {
            nodes: Mutex::new(BTreeMap::new()),
            master,
            members: std::array::from_fn(|_| watch::channel(Vec::new()).0),
        };
        reg.put(me);
        reg
    }

    fn put(&self, node: NodeInfo) {
        let role = node.role;
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.insert((role, node.identity.clone()), node);
        self.publish(role, &nodes);
    }

    fn publish(&self, role: Role, nodes: &BTreeMap<(Role, String), NodeInfo>) {
        let list = nodes.values().filter(|n| n.role == role).cloned().collect();
        self.members[index(role)].send_replace(list);
    }
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn register(&self, node: NodeInfo) -> Result<(), RegistryError> {
        self.put(node);
        Ok(())
    }

    async fn unregister(&self, role: Role, identity: &str) -> Result<(), RegistryError> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.remove(&(role, identity.to_string()));
        self.publish(role, &nodes);
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

    fn members(&self, role: Role) -> watch::Receiver<Vec<NodeInfo>> {
        self.members[index(role)].subscribe()
    }

    fn health(&self) -> Health {
        Health::Connected
    }
}
