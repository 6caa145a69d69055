//! `JobService`: submit, read, list, watch and change jobs.

use std::sync::Arc;

use lts_core::proto::{self, job_service_server::JobService};
use lts_core::{JobSpec, ScheduleKind, convert, now_ms, validate};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::{BoxStream, TrackerCore, invalid_argument, store_status};
use crate::auth::{Need, Principal};
use crate::store::{
    CancelOutcome, ChangeOutcome, JobKey, ListFilter, SubmitOutcome, TriggerOutcome,
};

/// Most jobs in one `Submit`.
pub const MAX_SUBMIT_BATCH: usize = 10_000;

pub(super) fn job_key(r: Option<proto::JobRef>) -> Result<JobKey, Status> {
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
        let who = self.0.auth.principal(&request)?;
        let jobs = request.into_inner().jobs;
        if !who.admin {
            let groups: std::collections::BTreeSet<&str> =
                jobs.iter().map(|j| j.submit_node_group.as_str()).collect();
            for g in groups {
                who.require(Need::Submitter(g), "submit jobs")?;
            }
            // Replacing is writing to the job already there: it must be the caller's too.
            for j in jobs.iter().filter(|j| j.replace_on_exist) {
                let key = JobKey::Task {
                    node_group: j.task_tracker_node_group.clone(),
                    task_id: j.task_id.clone(),
                };
                if let Some(existing) = self.0.store.get(key).await.map_err(store_status)?
                    && !existing.state.is_final()
                {
                    who.require(
                        Need::Submitter(&existing.spec.submit_node_group),
                        "replace this job",
                    )?;
                }
            }
        }
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
            let (outcomes, handed_over) = self.store_specs(specs).await?;
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
                // A duplicate of another tenant's job: say the task id is taken, without
                // handing out that job's id.
                if status == proto::SubmitStatus::DuplicateIgnored
                    && !who.admin
                    && let Some(existing) = self
                        .0
                        .store
                        .get(JobKey::Id(job_id.clone()))
                        .await
                        .map_err(store_status)?
                    && !who.holds(Need::Submitter(&existing.spec.submit_node_group))
                {
                    let v = validate::Violations(vec![validate::FieldViolation::new(
                        format!("jobs[{i}].task_id"),
                        "is taken by an unfinished job of another submit node group",
                    )]);
                    results[i] = Some(proto::SubmitResult {
                        index: i as u32,
                        status: proto::SubmitStatus::Rejected as i32,
                        job_id: String::new(),
                        violations: convert::violations_to_proto(&v),
                    });
                    continue;
                }
                results[i] = Some(proto::SubmitResult {
                    index: i as u32,
                    status: status as i32,
                    job_id,
                    violations: Vec::new(),
                });
            }
            if !handed_over {
                for g in groups {
                    self.0.dispatcher.signal_work(&g);
                }
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
        let who = self.0.auth.principal(&request)?;
        let key = job_key(request.into_inner().job)?;
        match self.0.store.get(key.clone()).await.map_err(store_status)? {
            Some(job) => {
                who.require(
                    Need::Submitter(&job.spec.submit_node_group),
                    "read this job",
                )?;
                Ok(Response::new(convert::job_to_proto(&job)))
            }
            None => Err(Status::not_found(format!("no job {}", describe(&key)))),
        }
    }

    async fn list(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let who = self.0.auth.principal(&request)?;
        let mut r = request.into_inner();
        r.submit_node_group = own_groups(&who, r.submit_node_group, "list jobs")?;
        let mut v = Vec::new();
        if !r.task_tracker_node_group.is_empty() {
            validate::check_node_group(
                "task_tracker_node_group",
                &r.task_tracker_node_group,
                &mut v,
            );
        }
        if r.page_size as usize > self.0.max_page_size {
            v.push(validate::FieldViolation::new(
                "page_size",
                format!(
                    "must be at most {} (got {}; --max-page-size)",
                    self.0.max_page_size, r.page_size
                ),
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
                limit: match r.page_size as usize {
                    0 => 100.min(self.0.max_page_size),
                    n => n,
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
        let (who, presented) = self.0.auth.authenticate(&request)?;
        let mut r = request.into_inner();
        r.submit_node_group = own_groups(&who, r.submit_node_group, "watch jobs")?;
        let need_group = r.submit_node_group.clone();
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
        let admitted = self.0.subscriber_streams.admit()?;
        let filter = crate::changes::WatchFilter::from_proto(r);
        let (tx, rx) = mpsc::channel(1024);
        metrics::gauge!("lts_job_watchers").increment(1.0);
        let feed = self.0.changes.clone();
        let stop = self.0.shutdown.child_token();
        let auth = self.0.auth.clone();
        let ended_tx = tx.clone();
        let admin = who.admin;
        tokio::spawn(async move {
            let _admitted = admitted;
            // Revoked credentials end the watch within a reload of the rules.
            let revoked = async {
                let need = if admin {
                    Need::Admin
                } else {
                    Need::Submitter(&need_group)
                };
                auth.revoked(&presented, need, "watch jobs").await
            };
            tokio::select! {
                _ = feed.watch(filter, tx, stop.clone()) => {}
                status = revoked => {
                    stop.cancel();
                    let _ = ended_tx.send(Err(status)).await;
                }
            }
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
        let who = self.0.auth.principal(&request)?;
        let key = job_key(request.into_inner().job)?;
        self.own_job(&who, &key, "cancel this job").await?;
        match self
            .0
            .store
            .cancel(key.clone(), now_ms())
            .await
            .map_err(store_status)?
        {
            CancelOutcome::Cancelled(job) => {
                metrics::counter!("lts_jobs_cancelled_total").increment(1);
                let group = &job.spec.task_tracker_node_group;
                self.0.dispatcher.lease_gone(group, &job.job_id);
                self.0.dispatcher.run_ended(group);
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
        let who = self.0.auth.principal(&request)?;
        let key = job_key(request.into_inner().job)?;
        self.own_job(&who, &key, "suspend this job").await?;
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
        let who = self.0.auth.principal(&request)?;
        let key = job_key(request.into_inner().job)?;
        self.own_job(&who, &key, "resume this job").await?;
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
        let who = self.0.auth.principal(&request)?;
        let key = job_key(request.into_inner().job)?;
        self.own_job(&who, &key, "trigger this job").await?;
        let out = self
            .0
            .store
            .trigger(key.clone(), now_ms())
            .await
            .map_err(store_status)?;
        let instance = match out {
            TriggerOutcome::Triggered(instance) => instance,
            TriggerOutcome::NotRecurring(job) => {
                return Err(Status::failed_precondition(format!(
                    "job {} is a one-off job: trigger runs an extra instance of a cron or \
                     repeat job; to run this one now, resubmit it with replace_on_exist and no \
                     trigger time",
                    job.job_id
                )));
            }
            TriggerOutcome::AlreadyFinished(job) => {
                return Err(Status::failed_precondition(format!(
                    "job {} already finished ({})",
                    job.job_id, job.state
                )));
            }
            TriggerOutcome::NotFound => {
                return Err(Status::not_found(format!("no job {}", describe(&key))));
            }
        };
        self.0
            .dispatcher
            .signal_work(&instance.spec.task_tracker_node_group);
        metrics::counter!("lts_jobs_triggered_total").increment(1);
        tracing::info!(
            job_id = instance.instance_of.as_deref().unwrap_or_default(),
            instance = %instance.job_id,
            "job triggered"
        );
        Ok(Response::new(proto::TriggerJobResponse {
            instance: Some(convert::job_to_proto(&instance)),
        }))
    }

    async fn get_log(
        &self,
        request: Request<proto::GetLogRequest>,
    ) -> Result<Response<proto::GetLogResponse>, Status> {
        let who = self.0.auth.principal(&request)?;
        let r = request.into_inner();
        if r.job_id.is_empty() {
            return Err(invalid_argument(&validate::Violations(vec![
                validate::FieldViolation::new("job_id", "is required"),
            ])));
        }
        self.own_job(&who, &JobKey::Id(r.job_id.clone()), "read this job's log")
            .await?;
        let limit = match r.limit as usize {
            0 => 1_000.min(self.0.max_log_entries),
            n => n.min(self.0.max_log_entries),
        };
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
        let who = self.0.auth.principal(&request)?;
        let r = request.into_inner();
        // Counts over every tenant: an admin's, or (for one TaskTracker node group) its
        // workers' — e.g. to scale them.
        if r.task_tracker_node_group.is_empty() {
            who.require(Need::Admin, "read the stats of every node group")?;
        } else {
            who.require(
                Need::Worker(&r.task_tracker_node_group),
                "read this node group's stats",
            )?;
        }
        let group = (!r.task_tracker_node_group.is_empty()).then_some(r.task_tracker_node_group);
        let s = self
            .0
            .store
            .stats(group.as_deref())
            .await
            .map_err(store_status)?;
        let due = match &group {
            Some(g) => self
                .0
                .store
                .due_count(g, lts_core::now_ms())
                .await
                .map_err(store_status)?,
            None => 0,
        };
        Ok(Response::new(proto::StatsResponse {
            due,
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

impl JobApi {
    /// Stores validated specs. A lone spec whose node group has a free TaskTracker thread and
    /// no queue is stored already leased to that TaskTracker and sent to it at once (one
    /// durable write and no claim round: see [`crate::dispatch::Dispatcher::reserve_idle`]);
    /// the `bool` says so, and that the dispatcher need not look for work.
    async fn store_specs(
        &self,
        mut specs: Vec<JobSpec>,
    ) -> Result<(Vec<SubmitOutcome>, bool), Status> {
        let core = &self.0;
        let reserved = match specs.as_slice() {
            // A job with affinity or a route key goes through a claim, which matches it to a
            // TaskTracker.
            [one] if one.affinity.is_empty() && one.route_key.is_none() => {
                core.dispatcher.reserve_idle(&one.task_tracker_node_group)
            }
            _ => None,
        };
        let Some((reserved, spec)) = reserved.and_then(|r| Some((r, specs.pop()?))) else {
            let outcomes = core
                .store
                .submit(specs, now_ms())
                .await
                .map_err(store_status)?;
            return Ok((outcomes, false));
        };
        let claim = reserved.claim(core.dispatcher.lease_ms(), now_ms());
        match core.store.submit_leased(spec, claim).await {
            Ok((outcome, lease)) => {
                let leased = lease.is_some();
                core.dispatcher.hand_over(reserved, lease).await;
                Ok((vec![outcome], leased))
            }
            Err(e) => {
                core.dispatcher.hand_over(reserved, None).await;
                Err(store_status(e))
            }
        }
    }

    /// `Ok` when `who` may act on the job `key` names: an admin, or a submitter of the node
    /// group that submitted it. An unknown job passes (the call answers `NOT_FOUND`).
    async fn own_job(&self, who: &Principal, key: &JobKey, action: &str) -> Result<(), Status> {
        if who.admin {
            return Ok(());
        }
        match self.0.store.get(key.clone()).await.map_err(store_status)? {
            Some(job) => who.require(Need::Submitter(&job.spec.submit_node_group), action),
            None => Ok(()),
        }
    }
}

/// The submit node group a list or watch of `who` is confined to: the one asked for, which it
/// must submit for; or, left empty, its only one. An admin may leave it empty (every group).
fn own_groups(who: &Principal, asked: String, action: &str) -> Result<String, Status> {
    if who.admin {
        return Ok(asked);
    }
    if asked.is_empty() {
        return match who.submit.only() {
            Some(g) => Ok(g.to_string()),
            None => Err(Status::permission_denied(format!(
                "principal {:?} may {action} only of its own submit node groups: name one in submit_node_group",
                who.name
            ))),
        };
    }
    who.require(Need::Submitter(&asked), action)?;
    Ok(asked)
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
