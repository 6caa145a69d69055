//! What the controllers need from a cluster's JobTrackers, behind a small trait so reconciles
//! can be tested with a fake; [`GrpcConnector`] implements it with `lts_worker_sdk::JobClient`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use lts_core::proto::ListNodesResponse;
use lts_core::{Job, JobKey, JobSpec};
use lts_worker_sdk::{ClientError, JobClient, ListQuery, SubmitAnswer, WatchEvent, WatchFilter};

/// Which jobs a watch reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobWatchFilter {
    /// Only jobs submitted by this JobClient group.
    pub submit_node_group: Option<String>,
    /// Only jobs of this TaskTracker group.
    pub task_tracker_node_group: Option<String>,
    /// Only task ids with this prefix.
    pub task_id_prefix: Option<String>,
}

/// One event of a job watch.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackerEvent {
    /// A job changed; this is its new state.
    Changed(Box<Job>),
    /// The watch (re)connected and may have missed events: re-read what you track.
    Resync,
}

/// A stream of job changes from the trackers.
pub type EventStream = BoxStream<'static, TrackerEvent>;

/// The tracker operations the operator uses.
#[async_trait]
pub trait TrackerApi: Send + Sync + 'static {
    /// Submits one job.
    async fn submit(&self, spec: JobSpec) -> Result<SubmitAnswer, ClientError>;
    /// One job.
    async fn get(&self, key: JobKey) -> Result<Job, ClientError>;
    /// Cancels an unfinished job.
    async fn cancel(&self, key: JobKey) -> Result<Job, ClientError>;
    /// Suspends a job.
    async fn suspend(&self, key: JobKey) -> Result<Job, ClientError>;
    /// Resumes a suspended job.
    async fn resume(&self, key: JobKey) -> Result<Job, ClientError>;
    /// The cluster's nodes as the answering tracker sees them.
    async fn nodes(&self) -> Result<ListNodesResponse, ClientError>;
    /// Job counts of one TaskTracker node group (`due`: queued and due now).
    async fn stats(&self, node_group: &str) -> Result<lts_core::proto::StatsResponse, ClientError>;
    /// One page of jobs; the second value continues the listing.
    async fn list(&self, query: ListQuery) -> Result<(Vec<Job>, Option<String>), ClientError>;
    /// A watch of job changes, or `None` when the trackers cannot stream them.
    async fn watch(&self, filter: JobWatchFilter) -> Result<Option<EventStream>, ClientError>;
}

/// Hands out a tracker client per address (`host:port`).
pub trait TrackerConnector: Send + Sync + 'static {
    /// A client of the trackers at `address`, presenting `creds` (the connector's own when
    /// `None`). The first call for an address decides: credentials given as files are read
    /// again on each connection, so they stay current.
    fn tracker(
        &self,
        address: &str,
        creds: Option<lts_worker_sdk::Credentials>,
    ) -> Result<Arc<dyn TrackerApi>, ClientError>;
}

#[async_trait]
impl TrackerApi for JobClient {
    async fn submit(&self, spec: JobSpec) -> Result<SubmitAnswer, ClientError> {
        JobClient::submit(self, spec).await
    }

    async fn get(&self, key: JobKey) -> Result<Job, ClientError> {
        JobClient::get(self, key).await
    }

    async fn cancel(&self, key: JobKey) -> Result<Job, ClientError> {
        JobClient::cancel(self, key).await
    }

    async fn suspend(&self, key: JobKey) -> Result<Job, ClientError> {
        JobClient::suspend(self, key).await.map(|(job, _)| job)
    }

    async fn resume(&self, key: JobKey) -> Result<Job, ClientError> {
        JobClient::resume(self, key).await.map(|(job, _)| job)
    }

    async fn nodes(&self) -> Result<ListNodesResponse, ClientError> {
        JobClient::nodes(self).await
    }

    async fn stats(&self, node_group: &str) -> Result<lts_core::proto::StatsResponse, ClientError> {
        JobClient::stats(self, Some(node_group)).await
    }

    async fn list(&self, query: ListQuery) -> Result<(Vec<Job>, Option<String>), ClientError> {
        JobClient::list(self, query).await
    }

    async fn watch(&self, filter: JobWatchFilter) -> Result<Option<EventStream>, ClientError> {
        let watch = JobClient::watch(
            self,
            WatchFilter {
                task_tracker_node_group: filter.task_tracker_node_group,
                submit_node_group: filter.submit_node_group,
                task_id_prefix: filter.task_id_prefix,
            },
        );
        let events = futures::stream::unfold(watch, |mut watch| async move {
            let event = match watch.next().await? {
                WatchEvent::Changed(job) => TrackerEvent::Changed(job),
                WatchEvent::Resync { .. } => TrackerEvent::Resync,
            };
            Some((event, watch))
        });
        Ok(Some(events.boxed()))
    }
}

/// [`TrackerConnector`] over gRPC: one lazily connecting [`JobClient`] per address.
#[derive(Debug)]
pub struct GrpcConnector {
    clients: Mutex<HashMap<String, Arc<JobClient>>>,
    call_timeout: Duration,
    creds: lts_worker_sdk::Credentials,
}

impl GrpcConnector {
    /// Clients whose calls each have `call_timeout` (then they try another tracker).
    pub fn new(call_timeout: Duration) -> GrpcConnector {
        GrpcConnector {
            clients: Mutex::default(),
            call_timeout,
            creds: lts_worker_sdk::Credentials::default(),
        }
    }

    /// Connect to trackers with these credentials (the CA of their certificates, a token).
    pub fn with_credentials(mut self, creds: lts_worker_sdk::Credentials) -> GrpcConnector {
        self.creds = creds;
        self
    }
}

impl Default for GrpcConnector {
    fn default() -> Self {
        GrpcConnector::new(lts_worker_sdk::DEFAULT_CALL_TIMEOUT)
    }
}

impl TrackerConnector for GrpcConnector {
    fn tracker(
        &self,
        address: &str,
        creds: Option<lts_worker_sdk::Credentials>,
    ) -> Result<Arc<dyn TrackerApi>, ClientError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let client = Arc::new(
            JobClient::new(&[address.to_string()])?
                .with_call_timeout(self.call_timeout)
                .with_credentials(creds.unwrap_or_else(|| self.creds.clone())),
        );
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }
}
