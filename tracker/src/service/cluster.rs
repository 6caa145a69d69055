//! `ClusterService`: the cluster's nodes and its master, as the registry knows them.

use std::sync::Arc;

use lts_core::proto::{self, cluster_service_server::ClusterService};
use tonic::{Request, Response, Status};

use super::TrackerCore;
use crate::registry::{NodeInfo, Role};

/// `ClusterService`.
#[derive(Debug, Clone)]
pub struct ClusterApi(pub Arc<TrackerCore>);

fn node_to_proto(n: &NodeInfo, master: Option<&NodeInfo>, free: Option<u32>) -> proto::Node {
    proto::Node {
        role: match n.role {
            Role::JobTracker => proto::NodeRole::JobTracker,
            Role::TaskTracker => proto::NodeRole::TaskTracker,
            Role::JobClient => proto::NodeRole::JobClient,
        } as i32,
        identity: n.identity.clone(),
        node_group: n.node_group.clone(),
        address: n.address.clone(),
        threads: n.threads,
        version: n.version.clone(),
        is_master: master.is_some_and(|m| m.role == n.role && m.identity == n.identity),
        free_threads: free.unwrap_or(0),
        since_ms: n.since_ms,
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn list_nodes(
        &self,
        request: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        // Anyone who may call finds the JobTrackers; only an admin sees the TaskTrackers and
        // clients (their identities and addresses).
        let admin = self.0.auth.principal(&request)?.admin;
        let mut nodes = self
            .0
            .registry
            .nodes()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if !admin {
            nodes.retain(|n| n.role == Role::JobTracker);
        }
        let master = self.0.registry.master().borrow().clone();
        let loads = self.0.dispatcher.loads();
        Ok(Response::new(proto::ListNodesResponse {
            registry_health: match self.0.registry.health() {
                crate::registry::Health::Connected => "connected".into(),
                crate::registry::Health::Disconnected(why) => format!("disconnected: {why}"),
            },
            tracker_identity: self.0.identity.clone(),
            store_health: match self.0.store.health().await {
                Ok(()) => "ok".into(),
                Err(e) => e.to_string(),
            },
            cluster: self.0.cluster.clone(),
            nodes: nodes
                .iter()
                .map(|n| {
                    let free = loads
                        .iter()
                        .filter(|l| l.identity == n.identity)
                        .map(|l| l.free)
                        .reduce(|a, b| a + b);
                    node_to_proto(n, master.as_ref(), free)
                })
                .collect(),
        }))
    }

    async fn get_master(
        &self,
        request: Request<proto::GetMasterRequest>,
    ) -> Result<Response<proto::GetMasterResponse>, Status> {
        self.0.auth.principal(&request)?;
        let master = self.0.registry.master().borrow().clone();
        Ok(Response::new(proto::GetMasterResponse {
            master: master.as_ref().map(|m| node_to_proto(m, Some(m), None)),
        }))
    }
}
