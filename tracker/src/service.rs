//! The tracker's gRPC services: `JobService`, `WorkerService`, `FeedbackService` and
//! `ClusterService`, over one shared [`TrackerCore`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use lts_core::heartbeat::Heartbeat;
use lts_core::proto::{
    self, cluster_service_server::ClusterService, feedback_client_message,
    feedback_service_server::FeedbackService, job_service_server::JobService, tracker_message,
    worker_message, worker_service_server::WorkerService,
};
use lts_core::{JobSpec, ScheduleKind, convert, now_ms, validate};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::conn::WorkerConn;
use crate::dispatch::Dispatcher;
use crate::feedback::FeedbackHub;
use crate::registry::{NodeInfo, Registry, Role};
use crate::store::{
    CancelOutcome, ChangeOutcome, CompleteOutcome, Completion, HeldLease, JobKey, JobStore,
    LeaseRef, ListFilter, StoreError, SubmitOutcome,
};

/// Most jobs in one `Submit`.
pub const MAX_SUBMIT_BATCH: usize = 10_000;

/// Most running jobs a TaskTracker may re-announce when it connects.
pub const MAX_HELLO_RUNNING: usize = 10_000;

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
    /// Register connected TaskTrackers and JobClients in the registry on their behalf (the
    /// local registry); with ZooKeeper they register themselves.
    pub register_peers: bool,
    /// Stops the tracker's background work.
    pub shutdown: CancellationToken,
    /// How often each TaskTracker stream is pinged.
    pub heartbeat: Duration,
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

fn job_key(r: Option<proto::JobRef>) -> Result<JobKey, Status> {
    let missing = || {
        invalid_argument(&validate::Violations(vec![validate::FieldViolation::new(
            "job",
            "give a job_id, or a task_tracker_node_group with a task_id",
        )]))
    };
    match r.and_then(|r| r.by).ok_or_else(missing)? {
        proto::job_ref::By::JobId(id) if !id.is_empty() => Ok(JobKey::Id(id)),
        proto::job_ref::By::Task(t) if !t.task_id.is_empty() => {
            let mut v = Vec::new();
            validate::check_node_group(
                "task.task_tracker_node_group",
                &t.task_tracker_node_group,
                &mut v,
            );
            if !v.is_empty() {
                return Err(invalid_argument(&validate::Violations(v)));
            }
            Ok(JobKey::Task {
                node_group: t.task_tracker_node_group,
                task_id: t.task_id,
            })
        }
        _ => Err(missing()),
    }
}

/// `JobService`.
#[derive(Debug, Clone)]
pub struct JobApi(pub Arc<TrackerCore>);

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit(
        &self,
        request: Request<proto::SubmitRequest>,
    ) -> Result<Response<proto::SubmitResponse>, Status> {
        let jobs = request.into_inner().jobs;
        if jobs.len() > MAX_SUBMIT_BATCH {
            return Err(invalid_argument(&validate::Violations(vec![
                validate::FieldViolation::new(
                    "jobs",
                    format!(
                        "at most {MAX_SUBMIT_BATCH} jobs per request (got {})",
                        jobs.len()
                    ),
                ),
            ])));
        }
        let mut results: Vec<Option<proto::SubmitResult>> = vec![None; jobs.len()];
        let mut valid: Vec<(usize, JobSpec)> = Vec::with_capacity(jobs.len());
        for (i, p) in jobs.into_iter().enumerate() {
            let checked = convert::spec_from_proto(p)
                .and_then(|spec| validate::validate(&spec).map(|()| spec));
            match checked {
                Ok(spec) => valid.push((i, spec)),
                Err(v) => {
                    metrics::counter!("lts_jobs_submitted_total", "status" => "rejected")
                        .increment(1);
                    results[i] = Some(proto::SubmitResult {
                        index: i as u32,
                        status: proto::SubmitStatus::Rejected as i32,
                        job_id: String::new(),
                        violations: convert::violations_to_proto(&v),
                    });
                }
            }
        }
        if !valid.is_empty() {
            let groups: std::collections::BTreeSet<String> = valid
                .iter()
                .map(|(_, s)| s.task_tracker_node_group.clone())
                .collect();
            let (idx, specs): (Vec<usize>, Vec<JobSpec>) = valid.into_iter().unzip();
            let outcomes = self
                .0
                .store
                .submit(specs, now_ms())
                .await
                .map_err(store_status)?;
            for (i, outcome) in idx.into_iter().zip(outcomes) {
                let (status, job_id, label) = match outcome {
                    SubmitOutcome::Accepted { job_id } => {
                        (proto::SubmitStatus::Accepted, job_id, "accepted")
                    }
                    SubmitOutcome::Duplicate { job_id } => {
                        (proto::SubmitStatus::DuplicateIgnored, job_id, "duplicate")
                    }
                    SubmitOutcome::Replaced { job_id } => {
                        (proto::SubmitStatus::Replaced, job_id, "replaced")
                    }
                };
                metrics::counter!("lts_jobs_submitted_total", "status" => label).increment(1);
                results[i] = Some(proto::SubmitResult {
                    index: i as u32,
                    status: status as i32,
                    job_id,
                    violations: Vec::new(),
                });
            }
            for g in groups {
                self.0.dispatcher.signal_work(&g);
            }
        }
        Ok(Response::new(proto::SubmitResponse {
            results: results.into_iter().flatten().collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let key = job_key(request.into_inner().job)?;
        match self.0.store.get(key.clone()).await.map_err(store_status)? {
            Some(job) => Ok(Response::new(convert::job_to_proto(&job))),
            None => Err(Status::not_found(format!("no job {}", describe(&key)))),
        }
    }

    async fn list(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let r = request.into_inner();
        let mut v = Vec::new();
        if !r.task_tracker_node_group.is_empty() {
            validate::check_node_group(
                "task_tracker_node_group",
                &r.task_tracker_node_group,
                &mut v,
            );
        }
        if r.page_size > 1000 {
            v.push(validate::FieldViolation::new(
                "page_size",
                format!("must be at most 1000 (got {})", r.page_size),
            ));
        }
        let state = match r.state {
            0 => None,
            s => match convert::state_from_proto(s) {
                Some(s) => Some(s),
                None => {
                    v.push(validate::FieldViolation::new(
                        "state",
                        format!("unknown state {s}"),
                    ));
                    None
                }
            },
        };
        if !v.is_empty() {
            return Err(invalid_argument(&validate::Violations(v)));
        }
        let schedule_kind = match r.schedule_type.as_str() {
            "" => None,
            name => Some(ScheduleKind::parse(name).map_err(|reason| {
                invalid_argument(&validate::Violations(vec![validate::FieldViolation::new(
                    "schedule_type",
                    reason,
                )]))
            })?),
        };
        let page = self
            .0
            .store
            .list(ListFilter {
                node_group: (!r.task_tracker_node_group.is_empty())
                    .then_some(r.task_tracker_node_group),
                state,
                task_id_prefix: (!r.task_id_prefix.is_empty()).then_some(r.task_id_prefix),
                submit_node_group: (!r.submit_node_group.is_empty()).then_some(r.submit_node_group),
                schedule_kind,
                limit: if r.page_size == 0 {
                    100
                } else {
                    r.page_size as usize
                },
                after: (!r.page_token.is_empty()).then_some(r.page_token),
            })
            .await
            .map_err(store_status)?;
        let (jobs, next) = (page.jobs, page.next);
        Ok(Response::new(proto::ListJobsResponse {
            jobs: jobs.iter().map(convert::job_to_proto).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    type WatchStream = BoxStream<proto::JobChange>;

    async fn watch(
        &self,
        request: Request<proto::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        let mut v = Vec::new();
        for (field, value) in [
            ("task_tracker_node_group", &r.task_tracker_node_group),
            ("submit_node_group", &r.submit_node_group),
        ] {
            if !value.is_empty() {
                validate::check_node_group(field, value, &mut v);
            }
        }
        if !v.is_empty() {
            return Err(invalid_argument(&validate::Violations(v)));
        }
        let filter = crate::changes::WatchFilter::from_proto(r);
        let (tx, rx) = mpsc::channel(1024);
        metrics::gauge!("lts_job_watchers").increment(1.0);
        let feed = self.0.changes.clone();
        let stop = self.0.shutdown.clone();
        tokio::spawn(async move {
            feed.watch(filter, tx, stop).await;
            metrics::gauge!("lts_job_watchers").decrement(1.0);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        let key = job_key(request.into_inner().job)?;
        match self
            .0
            .store
            .cancel(key.clone(), now_ms())
            .await
            .map_err(store_status)?
        {
            CancelOutcome::Cancelled(job) => {
                metrics::counter!("lts_jobs_cancelled_total").increment(1);
                tracing::info!(job_id = %job.job_id, task_id = %job.spec.task_id, "job cancelled");
                Ok(Response::new(proto::CancelJobResponse {
                    job: Some(convert::job_to_proto(&job)),
                }))
            }
            CancelOutcome::AlreadyFinished(job) => Err(Status::failed_precondition(format!(
                "job {} already finished ({})",
                job.job_id, job.state
            ))),
            CancelOutcome::NotFound => Err(Status::not_found(format!("no job {}", describe(&key)))),
        }
    }

    async fn suspend(
        &self,
        request: Request<proto::SuspendJobRequest>,
    ) -> Result<Response<proto::SuspendJobResponse>, Status> {
        let key = job_key(request.into_inner().job)?;
        let out = self
            .0
            .store
            .suspend(key.clone(), now_ms())
            .await
            .map_err(store_status)?;
        let (job, changed) = changed_or_status(out, &key)?;
        if changed {
            metrics::counter!("lts_jobs_suspended_total").increment(1);
            tracing::info!(job_id = %job.job_id, task_id = %job.spec.task_id, "job suspended");
        }
        Ok(Response::new(proto::SuspendJobResponse {
            job: Some(convert::job_to_proto(&job)),
            changed,
        }))
    }

    async fn resume(
        &self,
        request: Request<proto::ResumeJobRequest>,
    ) -> Result<Response<proto::ResumeJobResponse>, Status> {
        let key = job_key(request.into_inner().job)?;
        let out = self
            .0
            .store
            .resume(key.clone(), now_ms())
            .await
            .map_err(store_status)?;
        let (job, changed) = changed_or_status(out, &key)?;
        if changed {
            metrics::counter!("lts_jobs_resumed_total").increment(1);
            tracing::info!(job_id = %job.job_id, task_id = %job.spec.task_id, "job resumed");
            self.0
                .dispatcher
                .signal_work(&job.spec.task_tracker_node_group);
        }
        Ok(Response::new(proto::ResumeJobResponse {
            job: Some(convert::job_to_proto(&job)),
            changed,
        }))
    }

    async fn trigger(
        &self,
        request: Request<proto::TriggerJobRequest>,
    ) -> Result<Response<proto::TriggerJobResponse>, Status> {
        let key = job_key(request.into_inner().job)?;
        let job = self
            .0
            .store
            .get(key.clone())
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no job {}", describe(&key))))?;
        if job.state.is_final() {
            return Err(Status::failed_precondition(format!(
                "job {} already finished ({})",
                job.job_id, job.state
            )));
        }
        if !job.spec.schedule.is_recurring() {
            return Err(Status::failed_precondition(format!(
                "job {} is a one-off job: trigger runs an extra instance of a cron or repeat job; \
                 to run this one now, resubmit it with replace_on_exist and no trigger time",
                job.job_id
            )));
        }
        let now = now_ms();
        let instance = lts_core::schedule::instance_spec(&job.spec, now);
        if let Err(v) = lts_core::validate(&instance) {
            return Err(Status::internal(format!(
                "trigger instance is invalid: {v}"
            )));
        }
        let group = instance.task_tracker_node_group.clone();
        let out = self
            .0
            .store
            .submit(vec![instance], now)
            .await
            .map_err(store_status)?;
        let job_id = match out.into_iter().next() {
            Some(
                SubmitOutcome::Accepted { job_id }
                | SubmitOutcome::Duplicate { job_id }
                | SubmitOutcome::Replaced { job_id },
            ) => job_id,
            None => return Err(Status::internal("trigger: the store answered nothing")),
        };
        self.0.dispatcher.signal_work(&group);
        metrics::counter!("lts_jobs_triggered_total").increment(1);
        tracing::info!(job_id = %job.job_id, instance = %job_id, "job triggered");
        let instance = self
            .0
            .store
            .get(JobKey::Id(job_id.clone()))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::internal(format!("trigger instance {job_id} vanished")))?;
        Ok(Response::new(proto::TriggerJobResponse {
            instance: Some(convert::job_to_proto(&instance)),
        }))
    }

    async fn get_log(
        &self,
        request: Request<proto::GetLogRequest>,
    ) -> Result<Response<proto::GetLogResponse>, Status> {
        let r = request.into_inner();
        if r.job_id.is_empty() {
            return Err(invalid_argument(&validate::Violations(vec![
                validate::FieldViolation::new("job_id", "is required"),
            ])));
        }
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let entries = self
            .0
            .store
            .log(&r.job_id, limit)
            .await
            .map_err(store_status)?;
        Ok(Response::new(proto::GetLogResponse {
            entries: entries.iter().map(convert::log_to_proto).collect(),
        }))
    }

    async fn stats(
        &self,
        request: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        let r = request.into_inner();
        let group = (!r.task_tracker_node_group.is_empty()).then_some(r.task_tracker_node_group);
        let s = self
            .0
            .store
            .stats(group.as_deref())
            .await
            .map_err(store_status)?;
        Ok(Response::new(proto::StatsResponse {
            queued: s.queued,
            running: s.running,
            suspended: s.suspended,
            succeeded: s.succeeded,
            failed: s.failed,
            cancelled: s.cancelled,
            pending_feedback: s.pending_feedback,
        }))
    }
}

/// The job and whether it changed, or the gRPC status for a finished or unknown job.
fn changed_or_status(out: ChangeOutcome, key: &JobKey) -> Result<(lts_core::Job, bool), Status> {
    match out {
        ChangeOutcome::Changed(job) => Ok((job, true)),
        ChangeOutcome::Unchanged(job) => Ok((job, false)),
        ChangeOutcome::AlreadyFinished(job) => Err(Status::failed_precondition(format!(
            "job {} already finished ({})",
            job.job_id, job.state
        ))),
        ChangeOutcome::NotFound => Err(Status::not_found(format!("no job {}", describe(key)))),
    }
}

fn describe(key: &JobKey) -> String {
    match key {
        JobKey::Id(id) => format!("with job_id {id}"),
        JobKey::Task {
            node_group,
            task_id,
        } => format!("with task_id {task_id:?} in node group {node_group:?}"),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `WorkerService`.
#[derive(Debug, Clone)]
pub struct WorkerApi(pub Arc<TrackerCore>);

fn lease_refs(v: Vec<proto::LeaseRef>) -> Vec<LeaseRef> {
    v.into_iter()
        .map(|l| LeaseRef {
            job_id: l.job_id,
            token: l.lease_token,
        })
        .collect()
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type WorkStream = BoxStream<proto::TrackerMessage>;

    async fn work(
        &self,
        request: Request<Streaming<proto::WorkerMessage>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let core = self.0.clone();
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(proto::WorkerMessage {
                msg: Some(worker_message::Msg::Hello(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a Work stream must be Hello",
                ));
            }
        };
        let mut v = Vec::new();
        validate::check_node_group("hello.node_group", &hello.node_group, &mut v);
        if hello.identity.is_empty() {
            v.push(validate::FieldViolation::new(
                "hello.identity",
                "is required",
            ));
        }
        if hello.threads == 0 {
            v.push(validate::FieldViolation::new(
                "hello.threads",
                "must be at least 1",
            ));
        }
        if hello.running.len() > MAX_HELLO_RUNNING {
            v.push(validate::FieldViolation::new(
                "hello.running",
                format!(
                    "at most {MAX_HELLO_RUNNING} running jobs can be re-announced (got {})",
                    hello.running.len()
                ),
            ));
        }
        if !hello.cluster.is_empty() && hello.cluster != core.cluster {
            v.push(validate::FieldViolation::new(
                "hello.cluster",
                format!(
                    "this tracker serves cluster {:?}, not {:?}",
                    core.cluster, hello.cluster
                ),
            ));
        }
        if !v.is_empty() {
            return Err(invalid_argument(&validate::Violations(v)));
        }

        let (tx, rx) = mpsc::unbounded_channel();
        // Pings go both ways when the TaskTracker takes part: it learns fast that this tracker
        // froze, and this tracker stops handing jobs to (and renewing leases through) a stream
        // whose TaskTracker stopped answering.
        let conn =
            Arc::new(WorkerConn::new((hello.heartbeat_ms > 0).then(|| {
                Heartbeat::new(core.heartbeat * crate::conn::SILENT_AFTER_PINGS)
            })));
        // Leases the TaskTracker still holds from an earlier connection: renewing them through
        // this stream moves them here (the old stream's leases no longer match).
        let lost = if hello.running.is_empty() {
            Vec::new()
        } else {
            let expiry = now_ms() + core.dispatcher.lease_ms();
            let lost = core
                .store
                .renew(lease_refs(hello.running.clone()), expiry)
                .await
                .map_err(store_status)?;
            for l in &hello.running {
                if !lost.contains(&l.job_id) {
                    conn.hold(HeldLease {
                        job_id: l.job_id.clone(),
                        token: l.lease_token.clone(),
                        expiry_ms: expiry,
                    });
                }
            }
            lost
        };
        let _ = tx.send(Ok(proto::TrackerMessage {
            msg: Some(tracker_message::Msg::Welcome(proto::Welcome {
                tracker_identity: core.identity.clone(),
                lease_ms: core.dispatcher.lease_ms(),
                lost_job_ids: lost,
                heartbeat_ms: core.heartbeat.as_millis() as u32,
            })),
        }));
        let group = hello.node_group.clone();
        let identity = hello.identity.clone();
        let conn_id =
            core.dispatcher
                .connect(&group, &identity, hello.threads, tx.clone(), conn.clone());
        if core.register_peers {
            let _ = core
                .registry
                .register(NodeInfo {
                    role: Role::TaskTracker,
                    identity: identity.clone(),
                    node_group: group.clone(),
                    address: peer,
                    threads: hello.threads,
                    version: hello.version.clone(),
                    since_ms: now_ms(),
                })
                .await;
        }
        tracing::info!(node_group = %group, identity = %identity, threads = hello.threads, "TaskTracker connected");

        let ended = CancellationToken::new();
        if conn.heartbeat().is_some() {
            tokio::spawn(ping_loop(
                conn.clone(),
                tx.clone(),
                core.heartbeat,
                ended.clone(),
            ));
        }
        tokio::spawn(async move {
            let _ended = ended.drop_guard();
            loop {
                let msg = tokio::select! {
                    m = inbound.next() => m,
                    _ = core.shutdown.cancelled() => break,
                };
                let Some(Ok(msg)) = msg else { break };
                match msg.msg {
                    Some(worker_message::Msg::Credit(c)) => {
                        core.dispatcher.add_credits(&group, conn_id, c.n);
                    }
                    Some(worker_message::Msg::Ping(p)) => {
                        let _ = tx.send(Ok(proto::TrackerMessage {
                            msg: Some(tracker_message::Msg::Pong(proto::Pong { nonce: p.nonce })),
                        }));
                    }
                    Some(worker_message::Msg::Pong(p)) => {
                        if let Some(hb) = conn.heartbeat() {
                            hb.answered(p.nonce);
                        }
                    }
                    Some(worker_message::Msg::Renew(r)) => {
                        if !conn.is_alive() {
                            // Read late (this tracker was frozen, or the TaskTracker went
                            // silent): it may have moved its leases to another stream since.
                            tracing::debug!(node_group = %group, identity = %identity, "renewal on a silent stream ignored");
                            continue;
                        }
                        let core = core.clone();
                        let tx = tx.clone();
                        let conn = conn.clone();
                        tokio::spawn(async move {
                            let expiry = now_ms() + core.dispatcher.lease_ms();
                            let ids: Vec<String> =
                                r.leases.iter().map(|l| l.job_id.clone()).collect();
                            match core.store.renew(lease_refs(r.leases), expiry).await {
                                Ok(lost) => {
                                    conn.renewed(
                                        ids.iter().filter(|id| !lost.contains(id)),
                                        &lost,
                                        expiry,
                                    );
                                    let _ = tx.send(Ok(proto::TrackerMessage {
                                        msg: Some(tracker_message::Msg::RenewAck(
                                            proto::RenewAck {
                                                lease_deadline_ms: expiry,
                                                lost_job_ids: lost,
                                            },
                                        )),
                                    }));
                                }
                                Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                            }
                        });
                    }
                    Some(worker_message::Msg::Result(r)) => {
                        // Completions run concurrently so that many land in one commit.
                        let core = core.clone();
                        let tx = tx.clone();
                        let conn = conn.clone();
                        let (group, identity) = (group.clone(), identity.clone());
                        tokio::spawn(async move {
                            complete(&core, &group, &identity, conn_id, &conn, r, &tx).await;
                        });
                    }
                    Some(worker_message::Msg::Release(r)) => {
                        for l in &r.leases {
                            conn.forget(&l.job_id);
                        }
                        match core.store.release(lease_refs(r.leases), now_ms()).await {
                            Ok(released) => {
                                if !released.is_empty() {
                                    tracing::info!(node_group = %group, identity = %identity, n = released.len(), "jobs handed back");
                                    core.dispatcher.signal_work(&group);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "release failed; leases will expire")
                            }
                        }
                    }
                    Some(worker_message::Msg::Hello(_)) | None => {}
                }
            }
            core.dispatcher.disconnect(&group, conn_id);
            tracing::info!(node_group = %group, identity = %identity, "TaskTracker disconnected");
            orphan_check(core, group, identity, conn).await;
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// Pings the TaskTracker of one stream every `every` until the stream ends.
async fn ping_loop(
    conn: Arc<WorkerConn>,
    tx: crate::dispatch::WorkerTx,
    every: Duration,
    ended: CancellationToken,
) {
    let Some(hb) = conn.heartbeat() else { return };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ended.cancelled() => return,
        }
        let ping = proto::TrackerMessage {
            msg: Some(tracker_message::Msg::Ping(proto::Ping { nonce: hb.ping() })),
        };
        if tx.send(Ok(ping)).is_err() {
            return;
        }
    }
}

async fn complete(
    core: &TrackerCore,
    group: &str,
    identity: &str,
    conn_id: u64,
    conn: &WorkerConn,
    r: proto::JobResult,
    tx: &crate::dispatch::WorkerTx,
) {
    // The thread is free now: hand out its next job while this result is being committed, so
    // the claim and the completion share one grouped commit.
    core.dispatcher.add_credits(group, conn_id, r.credits);
    let job_id = r.job_id.clone();
    let Some(outcome) = convert::outcome_from_proto(r.outcome) else {
        let _ = tx.send(Ok(result_ack(&job_id, false, "outcome is required")));
        return;
    };
    let completion = Completion {
        job_id: r.job_id,
        token: r.lease_token,
        outcome,
        message: r.message,
        logs: r.logs.into_iter().map(convert::biz_from_proto).collect(),
        node: identity.to_string(),
        now_ms: now_ms(),
    };
    let result = core.store.complete(completion).await;
    if result.is_ok() {
        // Recorded or refused as stale: either way this stream no longer holds the lease.
        conn.forget(&job_id);
    }
    let ack = match result {
        Ok(CompleteOutcome::Accepted {
            node_group,
            disposition,
            feedback_group,
            ..
        }) => {
            metrics::counter!("lts_jobs_completed_total", "outcome" => outcome.as_str())
                .increment(1);
            match disposition {
                lts_core::schedule::Disposition::Retry { at_ms }
                | lts_core::schedule::Disposition::NextFire { at_ms, .. } => {
                    core.dispatcher.signal_work_at(&node_group, at_ms);
                }
                lts_core::schedule::Disposition::Finish(_) => {}
            }
            if let Some(g) = feedback_group {
                core.feedback.signal(&g);
            }
            result_ack(&job_id, true, "")
        }
        Ok(CompleteOutcome::Stale { reason }) => {
            metrics::counter!("lts_stale_results_total").increment(1);
            tracing::info!(job_id = %job_id, node = %identity, %reason, "stale result refused");
            result_ack(&job_id, false, &reason)
        }
        Err(e) => {
            tracing::warn!(job_id = %job_id, error = %e, "recording a result failed");
            // Not acknowledged: the TaskTracker keeps it and sends it again.
            return;
        }
    };
    let _ = tx.send(Ok(ack));
}

fn result_ack(job_id: &str, accepted: bool, reason: &str) -> proto::TrackerMessage {
    proto::TrackerMessage {
        msg: Some(tracker_message::Msg::ResultAck(proto::ResultAck {
            job_id: job_id.to_string(),
            accepted,
            reason: reason.to_string(),
        })),
    }
}

/// After a TaskTracker's stream ends, wait `orphan_grace`, then put the leases this stream
/// held back in the queue so another TaskTracker runs them — each only if nobody renewed it
/// meanwhile (a TaskTracker that reconnected, here or to another tracker, re-announced it).
async fn orphan_check(
    core: Arc<TrackerCore>,
    group: String,
    identity: String,
    conn: Arc<WorkerConn>,
) {
    tokio::select! {
        _ = tokio::time::sleep(core.orphan_grace) => {}
        _ = core.shutdown.cancelled() => return,
    }
    if core.register_peers && !core.dispatcher.is_connected(&identity) {
        let _ = core.registry.unregister(Role::TaskTracker, &identity).await;
    }
    let held = conn.held();
    if held.is_empty() {
        return;
    }
    match core.store.requeue_held(held, now_ms()).await {
        Ok(requeued) if !requeued.is_empty() => {
            metrics::counter!("lts_jobs_requeued_total", "reason" => "task_tracker_left")
                .increment(requeued.len() as u64);
            tracing::warn!(node_group = %group, identity = %identity, n = requeued.len(), "TaskTracker gone; its jobs are queued again");
            for r in requeued {
                core.dispatcher.signal_work(&r.node_group);
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "requeue of a gone TaskTracker's jobs failed; leases will expire")
        }
    }
}

/// `FeedbackService`.
#[derive(Debug, Clone)]
pub struct FeedbackApi(pub Arc<TrackerCore>);

#[tonic::async_trait]
impl FeedbackService for FeedbackApi {
    type SubscribeStream = BoxStream<proto::Feedback>;

    async fn subscribe(
        &self,
        request: Request<Streaming<proto::FeedbackClientMessage>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let core = self.0.clone();
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let sub = match inbound.next().await {
            Some(Ok(proto::FeedbackClientMessage {
                msg: Some(feedback_client_message::Msg::Subscribe(s)),
            })) => s,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a Subscribe stream must be FeedbackSubscribe",
                ));
            }
        };
        let mut v = Vec::new();
        validate::check_node_group(
            "subscribe.submit_node_group",
            &sub.submit_node_group,
            &mut v,
        );
        if !v.is_empty() {
            return Err(invalid_argument(&validate::Violations(v)));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let group = sub.submit_node_group;
        let identity = if sub.identity.is_empty() {
            peer.clone()
        } else {
            sub.identity
        };
        let id = core.feedback.subscribe(&group, tx);
        if core.register_peers {
            let _ = core
                .registry
                .register(NodeInfo {
                    role: Role::JobClient,
                    identity: identity.clone(),
                    node_group: group.clone(),
                    address: peer,
                    threads: 0,
                    version: String::new(),
                    since_ms: now_ms(),
                })
                .await;
        }
        tracing::info!(submit_node_group = %group, identity = %identity, "feedback subscriber connected");
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.next() => m,
                    _ = core.shutdown.cancelled() => break,
                };
                let Some(Ok(msg)) = msg else { break };
                if let Some(feedback_client_message::Msg::Ack(a)) = msg.msg {
                    core.feedback.ack(&group, id, a.feedback_ids).await;
                }
            }
            core.feedback.unsubscribe(&group, id);
            if core.register_peers {
                let _ = core.registry.unregister(Role::JobClient, &identity).await;
            }
            tracing::info!(submit_node_group = %group, identity = %identity, "feedback subscriber gone");
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

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
        _request: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        let nodes = self
            .0
            .registry
            .nodes()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
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
        _request: Request<proto::GetMasterRequest>,
    ) -> Result<Response<proto::GetMasterResponse>, Status> {
        let master = self.0.registry.master().borrow().clone();
        Ok(Response::new(proto::GetMasterResponse {
            master: master.as_ref().map(|m| node_to_proto(m, Some(m), None)),
        }))
    }
}
