//! `WorkflowService`: a workflow's own calls — submit one as such, list its nodes, retry a
//! failed run. Submits go through [`JobApi`]'s path (checks, grants, dedup, hand-over), with
//! the caller's own credentials.

use std::sync::Arc;

use lts_core::proto::{self, job_service_server::JobService, workflow_service_server};
use lts_core::{Job, Shard, convert, validate};
use tonic::{Request, Response, Status};

use super::job::job_key;
use super::{JobApi, TrackerCore, invalid_argument, store_status};
use crate::auth::Need;
use crate::store::ListFilter;

/// The largest page of `ListNodes`.
const MAX_NODES_PAGE: usize = 1_000;

/// `WorkflowService`.
#[derive(Clone)]
pub struct WorkflowApi(pub Arc<TrackerCore>);

impl WorkflowApi {
    /// The workflow `r` names, if the caller may read it.
    async fn workflow<T>(
        &self,
        request: &Request<T>,
        r: Option<proto::JobRef>,
    ) -> Result<Job, Status> {
        let who = self.0.auth.principal(request)?;
        let key = job_key(r)?;
        let wf = self
            .0
            .store
            .get(key)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found("no such workflow"))?;
        who.require(
            Need::Submitter(&wf.spec.submit_node_group),
            "read this workflow",
        )?;
        if wf.spec.workflow.is_none() {
            return Err(Status::failed_precondition(format!(
                "job {} is not a workflow",
                wf.job_id
            )));
        }
        Ok(wf)
    }

    /// One page of the nodes of `wf`'s latest run, after the job id `after`.
    async fn nodes_page(
        &self,
        wf: &Job,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<Job>, Option<String>), Status> {
        let run = Shard::run_of(wf);
        let end = Shard::ids_to(&run);
        // Node ids share the run's prefix; their task ids the workflow's (`<task>/<node>`).
        let after = after.filter(|a| *a >= run).unwrap_or_else(|| run.clone());
        let page = self
            .0
            .store
            .list(ListFilter {
                task_id_prefix: Some(format!("{}/", wf.spec.task_id)),
                limit,
                after: Some(after),
                ..ListFilter::default()
            })
            .await
            .map_err(store_status)?;
        let past_end = page.jobs.last().is_some_and(|j| j.job_id >= end);
        let nodes: Vec<Job> = page
            .jobs
            .into_iter()
            .filter(|j| j.job_id < end && j.shard.as_ref().is_some_and(|s| s.of == wf.job_id))
            .collect();
        let next = match past_end {
            true => None,
            false => page.next,
        };
        Ok((nodes, next))
    }
}

/// Hands one spec to [`JobApi`]'s submit under the caller's credentials; its one result.
async fn submit_as<T>(
    core: &Arc<TrackerCore>,
    request: Request<T>,
    spec: proto::JobSpec,
) -> Result<proto::SubmitResult, Status> {
    let (metadata, extensions, _) = request.into_parts();
    let submit = Request::from_parts(
        metadata,
        extensions,
        proto::SubmitRequest { jobs: vec![spec] },
    );
    JobApi(core.clone())
        .submit(submit)
        .await?
        .into_inner()
        .results
        .pop()
        .ok_or_else(|| Status::internal("a submit without its result"))
}

#[tonic::async_trait]
impl workflow_service_server::WorkflowService for WorkflowApi {
    async fn submit_workflow(
        &self,
        request: Request<proto::SubmitWorkflowRequest>,
    ) -> Result<Response<proto::SubmitResult>, Status> {
        let spec = request.get_ref().spec.clone().unwrap_or_default();
        if spec.workflow.is_none() {
            return Err(invalid_argument(&validate::Violations(vec![
                validate::FieldViolation::new(
                    "spec.workflow",
                    "a workflow needs its graph (nodes and edges)",
                ),
            ])));
        }
        Ok(Response::new(submit_as(&self.0, request, spec).await?))
    }

    async fn list_nodes(
        &self,
        request: Request<proto::ListWorkflowNodesRequest>,
    ) -> Result<Response<proto::ListWorkflowNodesResponse>, Status> {
        let wf = self
            .workflow(&request, request.get_ref().workflow.clone())
            .await?;
        let r = request.into_inner();
        let limit = match r.page_size as usize {
            0 => MAX_NODES_PAGE,
            n => n.min(MAX_NODES_PAGE),
        };
        let after = (!r.page_token.is_empty()).then_some(r.page_token);
        let (nodes, next) = self.nodes_page(&wf, after, limit).await?;
        Ok(Response::new(proto::ListWorkflowNodesResponse {
            nodes: nodes.iter().map(convert::job_to_proto).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn retry_workflow(
        &self,
        request: Request<proto::RetryWorkflowRequest>,
    ) -> Result<Response<proto::RetryWorkflowResponse>, Status> {
        let wf = self
            .workflow(&request, request.get_ref().workflow.clone())
            .await?;
        // Every node of the run (a workflow has at most `MAX_NODES`): what succeeded is kept.
        let mut nodes = Vec::new();
        if wf.attempt > 0 {
            let mut after = None;
            loop {
                let (page, next) = self.nodes_page(&wf, after, MAX_NODES_PAGE).await?;
                nodes.extend(page);
                match next {
                    Some(n) if nodes.len() < lts_core::workflow::MAX_NODES => after = Some(n),
                    _ => break,
                }
            }
        }
        let (mut spec, kept) =
            lts_core::workflow::retry_spec(&wf, &nodes).map_err(Status::failed_precondition)?;
        let key = &request.get_ref().idempotency_key;
        spec.idempotency_key = (!key.is_empty()).then(|| key.clone());
        let total = spec.workflow.as_ref().map_or(0, |w| w.nodes.len());
        let result = submit_as(&self.0, request, convert::spec_to_proto(&spec)).await?;
        Ok(Response::new(proto::RetryWorkflowResponse {
            result: Some(result),
            kept: kept as u32,
            to_run: total.saturating_sub(kept) as u32,
        }))
    }
}
