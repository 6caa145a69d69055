//! The tracker's gRPC services, one a file — [`JobApi`] (`JobService`), [`WorkflowApi`]
//! (`WorkflowService`), [`WorkerApi`] (`WorkerService`), [`FeedbackApi`] (`FeedbackService`)
//! and [`ClusterApi`]
//! (`ClusterService`) — over one shared [`TrackerCore`], and what they share: the store-error
//! and violation mappings to gRPC statuses.

mod cluster;
mod feedback;
mod job;
mod worker;
mod workflow;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use lts_core::{convert, proto, validate};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::dispatch::Dispatcher;
use crate::feedback::FeedbackHub;
use crate::registry::Registry;
use crate::store::{JobStore, StoreError};

pub use cluster::ClusterApi;
pub use feedback::FeedbackApi;
pub use job::{JobApi, MAX_SUBMIT_BATCH};
pub use lts_core::validate::MAX_HELLO_RUNNING;
pub use worker::WorkerApi;
pub use workflow::WorkflowApi;

/// Shared state of one JobTracker.
pub struct TrackerCore {
    /// This tracker's identity.
    pub identity: String,
    /// The cluster name.
    pub cluster: String,
    /// The durable store (the change feed in front of the backend).
    pub store: Arc<dyn JobStore>,
    /// Announces the jobs store writes touch, for `JobService.Watch`.
    pub changes: Arc<crate::changes::ChangeFeed>,
    /// Dispatch to TaskTrackers.
    pub dispatcher: Arc<Dispatcher>,
    /// Membership and master election.
    pub registry: Arc<dyn Registry>,
    /// Feedback delivery.
    pub feedback: Arc<FeedbackHub>,
    /// How long a disconnected TaskTracker may take to come back before its jobs are re-queued.
    pub orphan_grace: Duration,
    /// How long a broadcast shard may wait for a TaskTracker that is not in the cluster before
    /// it is cancelled.
    pub broadcast_grace: Duration,
    /// Register connected TaskTrackers and JobClients in the registry on their behalf (the
    /// local registry); with ZooKeeper they register themselves.
    pub register_peers: bool,
    /// Stops the tracker's background work.
    pub shutdown: CancellationToken,
    /// How often each TaskTracker stream is pinged.
    pub heartbeat: Duration,
    /// The bounds a run's report is stored within (a client need not be ours).
    pub report_limits: lts_core::limits::ReportLimits,
    /// The largest gRPC message sent or accepted (TaskTrackers learn it in the Welcome).
    pub max_message_bytes: usize,
    /// How long a new stream may take to send its first message.
    pub hello_timeout: Duration,
    /// TaskTracker (Work) streams, capped.
    pub worker_streams: Arc<crate::admission::StreamSlots>,
    /// Feedback subscriptions and job watches, capped together.
    pub subscriber_streams: Arc<crate::admission::StreamSlots>,
    /// The largest `ListJobs` page.
    pub max_page_size: usize,
    /// The most `GetLog` lines.
    pub max_log_entries: usize,
    /// Who may call what.
    pub auth: Arc<crate::auth::Auth>,
}

impl std::fmt::Debug for TrackerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackerCore")
            .field("identity", &self.identity)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl TrackerCore {
    /// Whether this tracker may run a master-only write now: it is master, and (with an
    /// election) the store's fence accepts its epoch — a deposed master that has not noticed
    /// yet is refused by the store.
    pub async fn may_act_as_master(&self) -> bool {
        if !self.registry.is_master() {
            return false;
        }
        let Some(epoch) = self.registry.master_epoch() else {
            return true;
        };
        match self
            .store
            .fence(epoch, &self.identity, lts_core::now_ms())
            .await
        {
            Ok(true) => true,
            Ok(false) => {
                metrics::counter!("lts_master_fenced_total").increment(1);
                tracing::warn!(
                    epoch,
                    "a newer master has acted: this tracker is deposed and does not act"
                );
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the master fence; not acting");
                false
            }
        }
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Closed => Status::unavailable(e.to_string()),
        StoreError::Backend(_) => Status::unavailable(e.to_string()),
        StoreError::Corrupt(_) => Status::internal(e.to_string()),
    }
}

/// A gRPC `INVALID_ARGUMENT` naming the field, with the violations in the details
/// (`google.rpc.BadRequest`-shaped: one `FieldViolation` per problem).
pub fn invalid_argument(violations: &validate::Violations) -> Status {
    use prost::Message;
    let details = proto::SubmitResult {
        index: 0,
        status: proto::SubmitStatus::Rejected as i32,
        job_id: String::new(),
        violations: convert::violations_to_proto(violations),
    };
    Status::with_details(
        tonic::Code::InvalidArgument,
        violations.to_string(),
        details.encode_to_vec().into(),
    )
}

/// A server stream of `T`s, as the services hand them to tonic.
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
