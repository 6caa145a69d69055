//! The JobClient: submit jobs, look them up, cancel them, and receive feedback.
//!
//! * [`JobClient`] talks to the trackers directly; an unreachable tracker is an error.
//! * [`RetryingJobClient`] never loses a submit: when no tracker accepts, it appends the jobs to
//!   a durable local spool and resends them in the background, in order. A resend after a lost
//!   answer cannot duplicate a job: the tracker deduplicates by (node group, task id).

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use lts_core::proto::{
    self, cluster_service_client::ClusterServiceClient,
    feedback_service_client::FeedbackServiceClient, job_service_client::JobServiceClient,
};
use lts_core::{FeedbackItem, Job, JobKey, JobSpec, JobState, LogEntry, Violations, convert};
use prost::Message;
use rand::seq::IndexedRandom;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::connect::{self, Trackers};
use crate::credentials::{AuthChannel, Credentials};
use crate::spool::SpoolError;
use lts_registry::Registry;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No tracker could be reached (or it is shutting down): try again later.
    #[error("tracker unavailable: {0}")]
    Unavailable(String),
    /// The request was invalid; each violation names its field.
    #[error("{0}")]
    Invalid(Violations),
    /// No such job.
    #[error("{0}")]
    NotFound(String),
    /// The request was refused in the job's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Bad client configuration (addresses, paths).
    #[error("{0}")]
    Config(String),
    /// The tracker does not know who is calling: no token or client certificate, or one it
    /// does not accept (unknown, expired, revoked).
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but lacks a grant; the message names it.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The local spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Any other gRPC error.
    #[error("tracker error ({code:?}): {message}")]
    Rpc {
        /// gRPC status code.
        code: tonic::Code,
        /// Message.
        message: String,
    },
}

impl ClientError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Unavailable(_))
            || matches!(
                self,
                ClientError::Rpc {
                    code: tonic::Code::DeadlineExceeded
                        | tonic::Code::Aborted
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::Unknown
                        | tonic::Code::Cancelled,
                    ..
                }
            )
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::Unavailable => ClientError::Unavailable(s.message().to_string()),
            tonic::Code::InvalidArgument => {
                let details = proto::SubmitResult::decode(s.details()).ok();
                let violations = details
                    .map(|d| {
                        d.violations
                            .into_iter()
                            .map(|v| lts_core::FieldViolation::new(v.field, v.reason))
                            .collect::<Vec<_>>()
                    })
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| vec![lts_core::FieldViolation::new("request", s.message())]);
                ClientError::Invalid(Violations(violations))
            }
            tonic::Code::NotFound => ClientError::NotFound(s.message().to_string()),
            tonic::Code::Unauthenticated => ClientError::Unauthenticated(format!(
                "{} ({})",
                s.message(),
                crate::credentials::hint(&s).unwrap_or_default()
            )),
            tonic::Code::PermissionDenied => ClientError::PermissionDenied(s.message().to_string()),
            tonic::Code::FailedPrecondition => {
                ClientError::FailedPrecondition(s.message().to_string())
            }
            code => ClientError::Rpc {
                code,
                message: s.message().to_string(),
            },
        }
    }
}

/// A status's message with the transport error under it (where TLS problems show).
fn status_chain(s: &tonic::Status) -> String {
    match std::error::Error::source(s) {
        Some(src) => format!("{}: {}", s.message(), connect::source_chain(src)),
        None => s.message().to_string(),
    }
}

/// The tracker's answer to one submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitAnswer {
    /// Stored as a new job.
    Accepted {
        /// Its id.
        job_id: String,
    },
    /// An unfinished job with the same task id exists, or a job was stored with the same
    /// idempotency key; nothing changed.
    Duplicate {
        /// The existing job's id.
        job_id: String,
    },
    /// The unfinished duplicate was replaced.
    Replaced {
        /// The job's id.
        job_id: String,
    },
    /// Invalid; nothing stored.
    Rejected(Violations),
}

impl SubmitAnswer {
    /// The job id, unless rejected.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            SubmitAnswer::Accepted { job_id }
            | SubmitAnswer::Duplicate { job_id }
            | SubmitAnswer::Replaced { job_id } => Some(job_id),
            SubmitAnswer::Rejected(_) => None,
        }
    }

    /// `accepted`, `duplicate`, `replaced` or `rejected`.
    pub fn status(&self) -> &'static str {
        match self {
            SubmitAnswer::Accepted { .. } => "accepted",
            SubmitAnswer::Duplicate { .. } => "duplicate",
            SubmitAnswer::Replaced { .. } => "replaced",
            SubmitAnswer::Rejected(_) => "rejected",
        }
    }

    fn from_proto(r: proto::SubmitResult) -> SubmitAnswer {
        match proto::SubmitStatus::try_from(r.status) {
            Ok(proto::SubmitStatus::Accepted) => SubmitAnswer::Accepted { job_id: r.job_id },
            Ok(proto::SubmitStatus::DuplicateIgnored) => {
                SubmitAnswer::Duplicate { job_id: r.job_id }
            }
            Ok(proto::SubmitStatus::Replaced) => SubmitAnswer::Replaced { job_id: r.job_id },
            _ => SubmitAnswer::Rejected(Violations(
                r.violations
                    .into_iter()
                    .map(|v| lts_core::FieldViolation::new(v.field, v.reason))
                    .collect(),
            )),
        }
    }
}

/// Filters for [`JobClient::list`].
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this node group.
    pub node_group: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only task ids with this prefix.
    pub task_id_prefix: Option<String>,
    /// Only jobs submitted by this JobClient node group.
    pub submit_node_group: Option<String>,
    /// Only jobs with this schedule kind: `now`, `trigger_time`, `cron` or `repeat`
    /// ([`lts_core::Schedule::kind`]).
    pub schedule_type: Option<String>,
    /// Page size (default 100, at most 1000). With `submit_node_group` or `schedule_type` a
    /// page may hold fewer jobs while a next page token says there are more.
    pub page_size: u32,
    /// Continue from a previous page.
    pub page_token: Option<String>,
}

/// Job counts per state, as the tracker reports them.
pub type Stats = proto::StatsResponse;

/// A client of the JobTrackers. Cheap to clone.
///
/// With a fixed address list it uses one lazily connecting channel (balanced when there are
/// several addresses). With a registry it connects to one registered tracker at random and
/// stays with it until it fails; a call that finds its tracker unavailable moves to another
/// and is tried again (submits are safe to repeat: the tracker deduplicates by task id).
#[derive(Debug, Clone)]
pub struct JobClient {
    current: Arc<std::sync::Mutex<Option<(String, AuthChannel)>>>,
    /// When the TLS files were last looked at, and their fingerprint when the current channel
    /// was made.
    tls_files: Arc<std::sync::Mutex<(std::time::Instant, Option<u64>)>>,
    trackers: Trackers,
    creds: Credentials,
    avoid: Arc<connect::Avoid>,
    call_timeout: Duration,
    pub(crate) keys: Arc<KeyMaker>,
}

/// How long one call may take by default before the client gives up on that tracker and
/// tries another ([`JobClient::with_call_timeout`]).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a call may be sent again after a tracker did not answer in time (it may have done
/// it anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Doing it twice is harmless (reads; submits, which deduplicate by task id; cancel…).
    Safe,
    /// Doing it twice does it twice (trigger): only a refused connection is retried.
    Unsafe,
}

impl JobClient {
    /// A client of the trackers at `addrs` (`host:port` or `http://host:port`). Connects lazily:
    /// an unreachable tracker shows up as [`ClientError::Unavailable`] on the first call.
    pub fn new(addrs: &[String]) -> Result<JobClient, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Config("no tracker address given".into()));
        }
        for a in addrs {
            connect::endpoint(a, &Credentials::default())?;
        }
        Ok(JobClient {
            current: Arc::default(),
            tls_files: Arc::new(std::sync::Mutex::new((std::time::Instant::now(), None))),
            trackers: Trackers::Static(addrs.to_vec()),
            creds: Credentials::default(),
            avoid: Arc::default(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            keys: Arc::default(),
        })
    }

    /// A client of the JobTrackers registered in `registry` (e.g. ZooKeeper).
    pub fn from_registry(registry: Arc<dyn Registry>) -> JobClient {
        JobClient {
            current: Arc::default(),
            tls_files: Arc::new(std::sync::Mutex::new((std::time::Instant::now(), None))),
            trackers: Trackers::Registry(registry),
            creds: Credentials::default(),
            avoid: Arc::default(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            keys: Arc::default(),
        }
    }

    /// A client connected now to one of `addrs`.
    pub async fn connect(addrs: &[String]) -> Result<JobClient, ClientError> {
        Self::connect_with(addrs, Credentials::default()).await
    }

    /// A client connected now to one of `addrs`, with `creds`.
    pub async fn connect_with(
        addrs: &[String],
        creds: Credentials,
    ) -> Result<JobClient, ClientError> {
        let client = JobClient::new(addrs)?.with_credentials(creds);
        let c = connect::connect_any(addrs, &client.creds).await?;
        *client.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        Ok(client)
    }

    /// Connect with these credentials (TLS, client certificate, token) from now on.
    pub fn with_credentials(mut self, creds: Credentials) -> JobClient {
        let fingerprint = creds.fingerprint();
        self.creds = creds;
        self.current = Arc::default();
        self.tls_files = Arc::new(std::sync::Mutex::new((
            std::time::Instant::now(),
            fingerprint,
        )));
        self
    }

    /// The credentials this client presents.
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// The deadline of every call (default [`DEFAULT_CALL_TIMEOUT`]). A tracker that does not
    /// answer in time (frozen, partitioned, overloaded) is left for another one and the call
    /// is tried there — except `trigger`, which might then run twice.
    pub fn with_call_timeout(mut self, timeout: Duration) -> JobClient {
        self.call_timeout = timeout;
        self
    }

    /// Where this client finds trackers.
    pub fn trackers(&self) -> &Trackers {
        &self.trackers
    }

    /// Master changes of the cluster (the LTS `MasterChangeListener`): the receiver holds the
    /// current master JobTracker and wakes on every change. With a fixed tracker list (no
    /// registry) it asks the tracker once and never changes.
    pub async fn master_changes(
        &self,
    ) -> Result<tokio::sync::watch::Receiver<Option<lts_registry::NodeInfo>>, ClientError> {
        match &self.trackers {
            Trackers::Registry(r) => Ok(r.master()),
            Trackers::Static(_) => {
                let master = self
                    .call(|ch| async move {
                        ClusterServiceClient::new(ch)
                            .get_master(proto::GetMasterRequest {})
                            .await
                    })
                    .await?
                    .master
                    .map(|m| lts_registry::NodeInfo {
                        role: lts_registry::Role::JobTracker,
                        identity: m.identity,
                        node_group: m.node_group,
                        address: m.address,
                        threads: m.threads,
                        version: m.version,
                        since_ms: m.since_ms,
                    });
                let (tx, rx) = tokio::sync::watch::channel(master);
                // Keep the sender alive so the receiver never reports "closed".
                tokio::spawn(async move { tx.closed().await });
                Ok(rx)
            }
        }
    }

    /// The tracker this client talks to, chosen (at random, avoiding recent failures) when
    /// there is none yet or the current one left the registry.
    async fn channel(&self) -> Result<(String, AuthChannel), ClientError> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((addr, ch)) = current {
            let left = matches!(self.trackers, Trackers::Registry(_)) && {
                let now = self.trackers.addresses();
                !now.is_empty() && !now.contains(&addr)
            };
            if left {
                self.forget(&addr);
            } else if !self.tls_files_changed() {
                return Ok((addr, ch));
            }
        }
        let c = match &self.trackers {
            Trackers::Static(addrs) => {
                let avoid = self.avoid.current();
                let mut pick: Vec<&String> = addrs.iter().filter(|a| !avoid.contains(a)).collect();
                if pick.is_empty() {
                    pick = addrs.iter().collect();
                }
                let addr = (*pick
                    .choose(&mut rand::rng())
                    .ok_or_else(|| ClientError::Config("no tracker address given".into()))?)
                .clone();
                let ch = connect::lazy(&addr, &self.creds)?;
                (addr, ch)
            }
            Trackers::Registry(_) => {
                connect::connect_avoiding(&self.trackers, &self.avoid.current(), &self.creds)
                    .await?
            }
        };
        tracing::debug!(tracker = %c.0, "JobClient connected");
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Whether the certificate files changed since the current channel was made (looked at
    /// every [`crate::credentials::TLS_FILE_RECHECK`]): a renewed client certificate is
    /// presented from the next connection on.
    fn tls_files_changed(&self) -> bool {
        let mut files = self.tls_files.lock().unwrap_or_else(|e| e.into_inner());
        if files.1.is_none() || files.0.elapsed() < crate::credentials::TLS_FILE_RECHECK {
            return false;
        }
        files.0 = std::time::Instant::now();
        let now = self.creds.fingerprint();
        if now == files.1 {
            return false;
        }
        tracing::info!("the TLS certificate files changed; reconnecting with them");
        files.1 = now;
        true
    }

    fn forget(&self, addr: &str) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|(a, _)| a == addr) {
            tracing::info!(tracker = %addr, "tracker unavailable; moving to another");
            *cur = None;
        }
    }

    /// Runs one RPC with the call deadline, moving to another tracker when the current one is
    /// unavailable or does not answer in time.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(AuthChannel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(Repeat::Safe, f).await
    }

    async fn call_with<T, F, Fut>(&self, repeat: Repeat, f: F) -> Result<T, ClientError>
    where
        F: Fn(AuthChannel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let attempts = match &self.trackers {
            Trackers::Registry(_) => 3,
            Trackers::Static(a) => a.len().clamp(2, 3),
        };
        let mut last = None;
        for _ in 0..attempts {
            let (addr, ch) = self.channel().await?;
            match tokio::time::timeout(self.call_timeout, f(ch)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                    self.avoid.add(&addr);
                    self.forget(&addr);
                    last = Some(ClientError::Unavailable(connect::explain(
                        &status_chain(&s),
                        &self.creds,
                    )));
                }
                Ok(Err(s)) => return Err(self.error(s)),
                Err(_) => {
                    self.avoid.add(&addr);
                    self.forget(&addr);
                    let why = format!(
                        "tracker {addr} did not answer within {} ms",
                        self.call_timeout.as_millis()
                    );
                    tracing::warn!(tracker = %addr, timeout_ms = self.call_timeout.as_millis() as u64, "call timed out; moving to another tracker");
                    if repeat == Repeat::Unsafe {
                        return Err(ClientError::Rpc {
                            code: tonic::Code::DeadlineExceeded,
                            message: format!("{why}; it may or may not have done it"),
                        });
                    }
                    last = Some(ClientError::Unavailable(why));
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unavailable("no tracker".into())))
    }

    /// A status as an error; a transport failure (a TLS mismatch shows as an HTTP/2 or
    /// connection error) says what to change.
    fn error(&self, s: tonic::Status) -> ClientError {
        match s.code() {
            tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::Cancelled => {
                ClientError::Rpc {
                    code: s.code(),
                    message: connect::explain(&status_chain(&s), &self.creds),
                }
            }
            _ => s.into(),
        }
    }

    fn jobs(ch: AuthChannel) -> JobServiceClient<AuthChannel> {
        JobServiceClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// Submits one job.
    pub async fn submit(&self, spec: JobSpec) -> Result<SubmitAnswer, ClientError> {
        let mut answers = self.submit_batch(vec![spec]).await?;
        answers
            .pop()
            .ok_or_else(|| ClientError::Unavailable("empty answer from tracker".into()))
    }

    /// Submits many jobs in one request; one answer per job, in order.
    ///
    /// Each spec without an idempotency key gets a fresh one, so that a retry of this call
    /// (its first answer lost, say to a tracker that froze) never stores a job twice: the
    /// job the lost attempt stored is answered `Accepted`, as it was.
    pub async fn submit_batch(
        &self,
        mut specs: Vec<JobSpec>,
    ) -> Result<Vec<SubmitAnswer>, ClientError> {
        let n = specs.len();
        let generated: Vec<bool> = specs
            .iter_mut()
            .map(|s| {
                let fresh = s.idempotency_key.is_none();
                if fresh {
                    s.idempotency_key = Some(self.keys.key());
                }
                fresh
            })
            .collect();
        let req = proto::SubmitRequest {
            jobs: specs.iter().map(convert::spec_to_proto).collect(),
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::jobs(ch).submit(req).await }
            })
            .await?;
        let mut out: Vec<Option<SubmitAnswer>> = vec![None; n];
        for r in resp.results {
            let i = r.index as usize;
            if i < n {
                out[i] = Some(SubmitAnswer::from_proto(r));
            }
        }
        let mut answers = out
            .into_iter()
            .map(|a| {
                a.ok_or_else(|| ClientError::Unavailable("incomplete answer from tracker".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A duplicate of a key made for this call is this call's own job (an earlier attempt
        // stored it and its answer was lost): say so.
        for (i, answer) in answers.iter_mut().enumerate() {
            if let SubmitAnswer::Duplicate { job_id } = answer
                && generated[i]
                && let Ok(job) = self.get(JobKey::Id(job_id.clone())).await
                && job.spec.idempotency_key == specs[i].idempotency_key
            {
                *answer = SubmitAnswer::Accepted { job_id: job.job_id };
            }
        }
        Ok(answers)
    }

    fn workflows(
        ch: AuthChannel,
    ) -> proto::workflow_service_client::WorkflowServiceClient<AuthChannel> {
        proto::workflow_service_client::WorkflowServiceClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// Submits one workflow (a spec with `workflow` set) through `WorkflowService`; like
    /// [`JobClient::submit`], a retried call never stores it twice.
    pub async fn submit_workflow(&self, mut spec: JobSpec) -> Result<SubmitAnswer, ClientError> {
        let generated = spec.idempotency_key.is_none();
        if generated {
            spec.idempotency_key = Some(self.keys.key());
        }
        let req = proto::SubmitWorkflowRequest {
            spec: Some(convert::spec_to_proto(&spec)),
        };
        let result = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::workflows(ch).submit_workflow(req).await }
            })
            .await?;
        let mut answer = SubmitAnswer::from_proto(result);
        if let SubmitAnswer::Duplicate { job_id } = &answer
            && generated
            && let Ok(job) = self.get(JobKey::Id(job_id.clone())).await
            && job.spec.idempotency_key == spec.idempotency_key
        {
            answer = SubmitAnswer::Accepted { job_id: job.job_id };
        }
        Ok(answer)
    }

    /// Every node of a workflow's latest run (each a job), by node index.
    pub async fn workflow_nodes(&self, key: JobKey) -> Result<Vec<Job>, ClientError> {
        let mut nodes = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = proto::ListWorkflowNodesRequest {
                workflow: Some(convert::key_to_proto(&key)),
                page_token: page_token.clone(),
                page_size: 0,
            };
            let page = self
                .call(|ch| {
                    let req = req.clone();
                    async move { Self::workflows(ch).list_nodes(req).await }
                })
                .await?;
            nodes.extend(page.nodes.into_iter().map(convert::job_from_proto));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        nodes.sort_by_key(|j| j.shard.as_ref().map_or(0, |s| s.index));
        Ok(nodes)
    }

    /// Runs a failed or cancelled workflow again as `<task>-retry`, its succeeded nodes kept
    /// (see `WorkflowService.RetryWorkflow`): the answer, and how many nodes were kept and
    /// are to run.
    pub async fn retry_workflow(
        &self,
        key: JobKey,
    ) -> Result<(SubmitAnswer, u32, u32), ClientError> {
        let req = proto::RetryWorkflowRequest {
            workflow: Some(convert::key_to_proto(&key)),
            idempotency_key: self.keys.key(),
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::workflows(ch).retry_workflow(req).await }
            })
            .await?;
        let mut answer = SubmitAnswer::from_proto(resp.result.unwrap_or_default());
        // A duplicate of this call's own key: an earlier attempt stored it.
        if let SubmitAnswer::Duplicate { job_id } = &answer
            && let Ok(job) = self.get(JobKey::Id(job_id.clone())).await
            && job.spec.idempotency_key.as_deref() == Some(req.idempotency_key.as_str())
        {
            answer = SubmitAnswer::Accepted { job_id: job.job_id };
        }
        Ok((answer, resp.kept, resp.to_run))
    }

    /// One job.
    pub async fn get(&self, key: JobKey) -> Result<Job, ClientError> {
        let req = proto::GetJobRequest {
            job: Some(convert::key_to_proto(&key)),
        };
        let job = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::jobs(ch).get(req).await }
            })
            .await?;
        Ok(convert::job_from_proto(job))
    }

    /// One page of jobs; the second value continues the listing.
    pub async fn list(&self, q: ListQuery) -> Result<(Vec<Job>, Option<String>), ClientError> {
        let req = proto::ListJobsRequest {
            task_tracker_node_group: q.node_group.unwrap_or_default(),
            state: q.state.map(convert::state_to_proto).unwrap_or_default() as i32,
            task_id_prefix: q.task_id_prefix.unwrap_or_default(),
            page_size: q.page_size,
            page_token: q.page_token.unwrap_or_default(),
            submit_node_group: q.submit_node_group.unwrap_or_default(),
            schedule_type: q.schedule_type.unwrap_or_default(),
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::jobs(ch).list(req).await }
            })
            .await?;
        Ok((
            resp.jobs.into_iter().map(convert::job_from_proto).collect(),
            (!resp.next_page_token.is_empty()).then_some(resp.next_page_token),
        ))
    }

    /// Cancels an unfinished job; returns it as cancelled.
    pub async fn cancel(&self, key: JobKey) -> Result<Job, ClientError> {
        let req = proto::CancelJobRequest {
            job: Some(convert::key_to_proto(&key)),
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::jobs(ch).cancel(req).await }
            })
            .await?;
        Ok(convert::job_from_proto(resp.job.unwrap_or_default()))
    }

    /// Suspends a job: no runs or fires until resumed (a running attempt finishes first).
    /// Returns the job and whether it changed (`false`: it was already suspended).
    pub async fn suspend(&self, key: JobKey) -> Result<(Job, bool), ClientError> {
        let req = proto::SuspendJobRequest {
            job: Some(convert::key_to_proto(&key)),
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::jobs(ch).suspend(req).await }
            })
            .await?;
        Ok((
            convert::job_from_proto(resp.job.unwrap_or_default()),
            resp.changed,
        ))
    }

    /// Resumes a suspended job; fires missed meanwhile follow its misfire policy. Returns the
    /// job and whether it changed (`false`: it was not suspended).
    pub async fn resume(&self, key: JobKey) -> Result<(Job, bool), ClientError> {
        let req = proto::ResumeJobRequest {
            job: Some(convert::key_to_proto(&key)),
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::jobs(ch).resume(req).await }
            })
            .await?;
        Ok((
            convert::job_from_proto(resp.job.unwrap_or_default()),
            resp.changed,
        ))
    }

    /// Runs one instance of a cron or repeat job now, without shifting its schedule; returns
    /// the new instance.
    pub async fn trigger(&self, key: JobKey) -> Result<Job, ClientError> {
        let req = proto::TriggerJobRequest {
            job: Some(convert::key_to_proto(&key)),
        };
        let resp = self
            .call_with(Repeat::Unsafe, |ch| {
                let req = req.clone();
                async move { Self::jobs(ch).trigger(req).await }
            })
            .await?;
        Ok(convert::job_from_proto(resp.instance.unwrap_or_default()))
    }

    /// The job log of one job.
    pub async fn log(&self, job_id: &str, limit: u32) -> Result<Vec<LogEntry>, ClientError> {
        let req = proto::GetLogRequest {
            job_id: job_id.to_string(),
            limit,
        };
        let resp = self
            .call(|ch| {
                let req = req.clone();
                async move { Self::jobs(ch).get_log(req).await }
            })
            .await?;
        Ok(resp
            .entries
            .into_iter()
            .map(convert::log_from_proto)
            .collect())
    }

    /// Job counts per state.
    pub async fn stats(&self, node_group: Option<&str>) -> Result<Stats, ClientError> {
        let req = proto::StatsRequest {
            task_tracker_node_group: node_group.unwrap_or_default().to_string(),
        };
        self.call(|ch| {
            let req = req.clone();
            async move { Self::jobs(ch).stats(req).await }
        })
        .await
    }

    /// Watches job changes across every tracker of the cluster, pushed as they happen (no
    /// polling): see [`crate::watch`]. Re-read what you track on each
    /// [`WatchEvent::Resync`](crate::WatchEvent::Resync).
    pub fn watch(&self, filter: crate::WatchFilter) -> crate::JobWatch {
        crate::watch::start(self.trackers.clone(), self.creds.clone(), filter)
    }

    /// The cluster's nodes, as the tracker sees them.
    pub async fn nodes(&self) -> Result<proto::ListNodesResponse, ClientError> {
        self.call(|ch| async move {
            ClusterServiceClient::new(ch)
                .list_nodes(proto::ListNodesRequest {})
                .await
        })
        .await
    }

    /// Waits until the job reaches a final state (or, for a recurring job, finishes a run) and
    /// returns it. Polls `Get` with a growing interval (50 ms to 1 s).
    ///
    /// A recurring job whose fires overlap runs each fire as its own instance job: the wait
    /// then follows the instance of its next fire and returns that instance when it ends.
    pub async fn wait(&self, key: JobKey, timeout: Option<Duration>) -> Result<Job, ClientError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .without_max_times()
            .build();
        let start = self.get(key.clone()).await?;
        let start_fires = start.fire_count;
        let mut key = key;
        loop {
            let job = self.get(key.clone()).await?;
            if !job.state.is_final()
                && lts_core::schedule::fires_overlapping_instances(&job.spec)
                && job.fire_count > start_fires
            {
                // It fired: follow the instance of the fire it was waiting for, when it ran
                // on time (a catch-up run is named after the moment it ran).
                let fire = start.scheduled_fire_ms.unwrap_or(start.trigger_time_ms);
                let instance = JobKey::Task {
                    node_group: job.spec.task_tracker_node_group.clone(),
                    task_id: lts_core::schedule::instance_spec(&job.spec, fire).task_id,
                };
                match self.get(instance.clone()).await {
                    Ok(_) => {
                        key = instance;
                        continue;
                    }
                    Err(ClientError::NotFound(_)) => return Ok(job),
                    Err(e) => return Err(e),
                }
            }
            if job.state.is_final()
                || (job.spec.schedule.is_recurring()
                    && (job.fire_count > start_fires || job.last_outcome.is_some()))
            {
                return Ok(job);
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Err(ClientError::Rpc {
                    code: tonic::Code::DeadlineExceeded,
                    message: format!("job still {} after the wait timeout", job.state),
                });
            }
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
        }
    }

    /// Subscribes to feedback for `submit_node_group`; `handler` is called for each result and
    /// the result is acknowledged when it returns. Reconnects by itself until the returned
    /// subscription is dropped or stopped.
    pub fn subscribe_feedback<F>(
        &self,
        submit_node_group: &str,
        identity: &str,
        handler: F,
    ) -> FeedbackSubscription
    where
        F: Fn(FeedbackItem) + Send + Sync + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(feedback_loop(
            self.trackers.clone(),
            self.creds.clone(),
            submit_node_group.to_string(),
            identity.to_string(),
            Arc::new(handler),
            stop.clone(),
        ));
        FeedbackSubscription {
            task: crate::background::Background::new(stop, task),
        }
    }
}

/// A running feedback subscription; stops when dropped.
#[derive(Debug)]
pub struct FeedbackSubscription {
    task: crate::background::Background,
}

impl FeedbackSubscription {
    /// Stops receiving feedback.
    pub async fn stop(self) {
        self.task.stop().await;
    }
}

type Handler = Arc<dyn Fn(FeedbackItem) + Send + Sync>;

async fn feedback_loop(
    trackers: Trackers,
    creds: Credentials,
    group: String,
    identity: String,
    handler: Handler,
    stop: CancellationToken,
) {
    // With a registry, a subscribed JobClient is a member of the cluster like any node.
    let registry = match &trackers {
        Trackers::Registry(r) => Some(r.clone()),
        Trackers::Static(_) => None,
    };
    if let Some(r) = &registry {
        let me = lts_registry::NodeInfo {
            role: lts_registry::Role::JobClient,
            identity: identity.clone(),
            node_group: group.clone(),
            address: String::new(),
            threads: 0,
            version: lts_core::VERSION.to_string(),
            since_ms: lts_core::now_ms(),
        };
        if let Err(e) = r.register(me).await {
            tracing::warn!(error = %e, "JobClient registration failed; retrying in the background");
        }
    }
    feedback_sessions(&trackers, &creds, &group, &identity, &handler, &stop).await;
    if let Some(r) = &registry {
        let _ = r.unregister(lts_registry::Role::JobClient, &identity).await;
    }
}

async fn feedback_sessions(
    trackers: &Trackers,
    creds: &Credentials,
    group: &str,
    identity: &str,
    handler: &Handler,
    stop: &CancellationToken,
) {
    let mut delays = reconnect_backoff();
    while !stop.is_cancelled() {
        match feedback_session(trackers, creds, group, identity, handler, stop).await {
            Ok(()) => delays = reconnect_backoff(),
            Err(e) => {
                tracing::warn!(submit_node_group = %group, error = %e, "feedback stream lost; reconnecting")
            }
        }
        let d = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn feedback_session(
    trackers: &Trackers,
    creds: &Credentials,
    group: &str,
    identity: &str,
    handler: &Handler,
    stop: &CancellationToken,
) -> Result<(), ClientError> {
    let (_, channel) = connect::connect_to(trackers, creds).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(proto::FeedbackClientMessage {
        msg: Some(proto::feedback_client_message::Msg::Subscribe(
            proto::FeedbackSubscribe {
                submit_node_group: group.to_string(),
                identity: identity.to_string(),
            },
        )),
    });
    let mut inbound = FeedbackServiceClient::new(channel)
        .subscribe(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(submit_node_group = %group, "feedback subscription open");
    loop {
        let msg = tokio::select! {
            m = inbound.next() => m,
            _ = stop.cancelled() => return Ok(()),
        };
        match msg {
            Some(Ok(f)) => {
                let item = convert::feedback_from_proto(f);
                let id = item.feedback_id.clone();
                let h = handler.clone();
                // The handler is user code: run it off the runtime's worker threads.
                let _ = tokio::task::spawn_blocking(move || h(item)).await;
                let _ = tx.send(proto::FeedbackClientMessage {
                    msg: Some(proto::feedback_client_message::Msg::Ack(
                        proto::FeedbackAck {
                            feedback_ids: vec![id],
                        },
                    )),
                });
            }
            Some(Err(s)) => return Err(s.into()),
            None => return Err(ClientError::Unavailable("feedback stream closed".into())),
        }
    }
}

/// Reconnect delays: 100 ms growing to 5 s, with jitter.
pub(crate) fn reconnect_backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Idempotency keys of one client: a random prefix and a counter, so that the keys one
/// client makes sort in the order it makes them (cheap for the stores' indexes).
#[derive(Debug)]
pub(crate) struct KeyMaker {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl Default for KeyMaker {
    fn default() -> Self {
        KeyMaker {
            prefix: uuid::Uuid::new_v4().simple().to_string(),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl KeyMaker {
    pub(crate) fn key(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n:016x}", self.prefix)
    }
}

pub use crate::retrying::{RetryingAnswer, RetryingJobClient};
