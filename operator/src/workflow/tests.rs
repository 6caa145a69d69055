//! Workflow controller: the Job it builds, the status it mirrors, and its conversation with a
//! mocked API server.

use std::time::Duration;

use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};

use super::*;
use crate::crd::{
    CronSchedule, EdgeCondition, JobStatus, NodeStatus, ScheduleSpec, ShardCounts,
    WorkflowEdgeSpec, WorkflowNodeSpec, WorkflowResourceSpec,
};
use crate::fixtures::{FakeTracker, Step, context, finish, status_of};

const JOB: &str = "/apis/lts.io/v1alpha1/namespaces/lts/jobs/etl";
const STATUS: &str = "/apis/lts.io/v1alpha1/namespaces/lts/workflows/etl/status";

fn node(name: &str, after: &[&str]) -> WorkflowNodeSpec {
    WorkflowNodeSpec {
        name: name.into(),
        after: after.iter().map(|a| a.to_string()).collect(),
        task_tracker_node_group: None,
        params: BTreeMap::new(),
        priority: 0,
        max_retries: 1,
        max_lease_losses: None,
        timeout_seconds: Some(60),
        affinity: BTreeMap::new(),
        route_key: None,
    }
}

/// A nightly Workflow `etl` in namespace `lts`: extract, then load and report; a cleanup
/// when load fails.
fn workflow() -> Workflow {
    let mut wf = Workflow::new(
        "etl",
        WorkflowResourceSpec {
            cluster: None,
            task_tracker_node_group: "etl".into(),
            submit_node_group: None,
            need_feedback: false,
            priority: 0,
            schedule: Some(ScheduleSpec {
                trigger_time: None,
                cron: Some(CronSchedule {
                    expression: "0 0 2 * * *".into(),
                    time_zone: None,
                }),
                repeat: None,
            }),
            rely_on_prev_cycle: false,
            misfire_policy: Default::default(),
            concurrency_policy: crate::crd::ConcurrencyPolicy::Forbid,
            max_concurrent: None,
            nodes: vec![
                node("extract", &[]),
                node("load", &["extract"]),
                node("report", &["load"]),
                node("cleanup", &[]),
            ],
            edges: vec![WorkflowEdgeSpec {
                from: "load".into(),
                to: "cleanup".into(),
                when: EdgeCondition::Failure,
            }],
            suspend: false,
        },
    );
    wf.metadata.namespace = Some("lts".into());
    wf.metadata.uid = Some("uid-wf-etl".into());
    wf.metadata.generation = Some(3);
    wf
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions::find(conditions, type_).unwrap_or_else(|| panic!("no {type_}: {conditions:?}"))
}

#[test]
fn the_job_carries_the_graph_and_is_owned_by_the_workflow() {
    let wf = workflow();
    let job = job_for(&wf).unwrap();
    assert_eq!(job.metadata.name.as_deref(), Some("etl"));
    assert_eq!(job.metadata.namespace.as_deref(), Some("lts"));
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Workflow", "etl", "uid-wf-etl")
    );
    assert_eq!(owner.controller, Some(true));
    assert!(owned_by(&job, &wf));
    assert_eq!(job.labels()[WORKFLOW_LABEL], "etl");
    let graph = job.spec.workflow.as_ref().unwrap();
    assert_eq!(graph.nodes.len(), 4);
    assert_eq!(graph.edges[0].when, EdgeCondition::Failure);
    assert_eq!(job.spec.schedule, wf.spec.schedule);
    assert_eq!(
        job.spec.concurrency_policy,
        crate::crd::ConcurrencyPolicy::Forbid
    );
    assert_eq!(job.spec.task_tracker_node_group, "etl");
    // The Job controller finds it a valid workflow job.
    let mut stored = job.clone();
    stored.metadata.uid = Some("uid-job-etl".into());
    let spec = crate::job::convert::to_lts_spec(&stored).expect("a valid workflow job");
    assert_eq!(spec.workflow.unwrap().nodes.len(), 4);
    // Without a uid (never stored), no owner reference can be made.
    let mut unsaved = workflow();
    unsaved.metadata.uid = None;
    assert!(job_for(&unsaved).is_err());
}

#[test]
fn a_job_counts_as_up_to_date_only_with_the_built_spec_labels_and_owner() {
    let wf = workflow();
    let want = job_for(&wf).unwrap();
    let mut have = want.clone();
    have.metadata.resource_version = Some("7".into());
    have.status = Some(JobStatus::default());
    assert!(up_to_date(&have, &want));
    have.spec.suspend = true;
    assert!(!up_to_date(&have, &want));
    let mut orphan = want.clone();
    orphan.metadata.owner_references = None;
    assert!(!up_to_date(&orphan, &want));
    assert!(!owned_by(&orphan, &wf));
    let mut someone_elses = want.clone();
    someone_elses.metadata.owner_references = Some(vec![OwnerReference {
        uid: "other".into(),
        ..want.owner_references()[0].clone()
    }]);
    assert!(!owned_by(&someone_elses, &wf));
}

#[test]
fn the_status_mirrors_the_job_and_names_the_workflows_fields() {
    let wf = workflow();
    let mut job = job_for(&wf).unwrap();
    let submitted = Condition {
        type_: "Submitted".into(),
        status: "False".into(),
        reason: "InvalidSpec".into(),
        message: "spec.workflow.nodes[1].after[0]: no node is named \"nope\"".into(),
        observed_generation: Some(1),
        last_transition_time: Time(now()),
    };
    job.status = Some(JobStatus {
        phase: Some(JobPhase::Running),
        job_id: Some("0193".into()),
        shards: Some(ShardCounts {
            succeeded: 1,
            running: 1,
            pending: 2,
            ..Default::default()
        }),
        nodes: vec![NodeStatus {
            name: "extract".into(),
            phase: JobPhase::Succeeded,
            attempts: 1,
            message: Some("42 rows".into()),
            job_id: "0193-1-0-0".into(),
        }],
        next_fire_time: Some("2027-01-16T02:00:00Z".into()),
        conditions: vec![submitted],
        ..Default::default()
    });
    let st = status(&wf, Some(&job), Ok(()), now());
    assert_eq!(st.phase, Some(JobPhase::Running));
    assert_eq!(st.job.as_deref(), Some("etl"));
    assert_eq!(st.job_id.as_deref(), Some("0193"));
    assert_eq!(st.node_counts.unwrap().pending, 2);
    assert_eq!(st.nodes[0].message.as_deref(), Some("42 rows"));
    assert_eq!(st.next_fire_time.as_deref(), Some("2027-01-16T02:00:00Z"));
    assert_eq!(st.observed_generation, Some(3));
    assert_eq!(condition(&st.conditions, JOB_APPLIED).status, "True");
    let s = condition(&st.conditions, "Submitted");
    assert_eq!(
        (s.status.as_str(), s.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert_eq!(
        s.message,
        "spec.nodes[1].after[0]: no node is named \"nope\""
    );
    // No Job yet: pending.
    let st = status(&wf, None, Ok(()), now());
    assert_eq!(st.phase, Some(JobPhase::Pending));
    assert!(st.nodes.is_empty());
}

async fn run(wf: Workflow, ctx: Arc<Context>) -> Result<Action> {
    tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(wf), ctx))
        .await
        .expect("reconcile made a request the test did not expect")
}

#[tokio::test]
async fn a_new_workflow_gets_its_job_by_server_side_apply() {
    let wf = workflow();
    let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
    let verifier = api.run(vec![
        Step::error(Method::GET, JOB, 404, "NotFound"),
        Step::echo(Method::PATCH, JOB),
        Step::status(STATUS, &wf),
    ]);
    run(wf, ctx).await.unwrap();
    let calls = finish(verifier).await;
    let apply = &calls[1];
    assert!(
        apply.uri.contains("fieldManager=lts-operator") && apply.uri.contains("force=true"),
        "{}",
        apply.uri
    );
    assert_eq!(apply.body["kind"], "Job");
    assert_eq!(
        apply.body["metadata"]["ownerReferences"][0]["uid"],
        "uid-wf-etl"
    );
    assert_eq!(
        apply.body["spec"]["workflow"]["nodes"][1]["after"][0],
        "extract"
    );
    let st: WorkflowStatus = status_of(&calls[2]);
    assert_eq!(st.phase, Some(JobPhase::Pending));
    assert_eq!(condition(&st.conditions, JOB_APPLIED).reason, "Applied");
}

#[tokio::test]
async fn an_up_to_date_job_is_only_read_and_its_status_mirrored() {
    let wf = workflow();
    let mut job = job_for(&wf).unwrap();
    job.status = Some(JobStatus {
        phase: Some(JobPhase::Succeeded),
        shards: Some(ShardCounts {
            succeeded: 3,
            skipped: 1,
            ..Default::default()
        }),
        last_message: Some("4 nodes ended: 3 succeeded, 1 skipped".into()),
        ..Default::default()
    });
    let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
    let verifier = api.run(vec![
        Step::json(Method::GET, JOB, serde_json::to_value(&job).unwrap()),
        Step::status(STATUS, &wf),
    ]);
    run(wf.clone(), ctx).await.unwrap();
    let calls = finish(verifier).await;
    let st: WorkflowStatus = status_of(&calls[1]);
    assert_eq!(st.phase, Some(JobPhase::Succeeded));
    assert_eq!(st.node_counts.unwrap().skipped, 1);
    assert_eq!(
        st.last_message.as_deref(),
        Some("4 nodes ended: 3 succeeded, 1 skipped")
    );

    // Its own status write brings it back: the Job is read, nothing is written.
    let mut settled = wf;
    settled.status = Some(st);
    let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
    let verifier = api.run(vec![Step::json(
        Method::GET,
        JOB,
        serde_json::to_value(&job).unwrap(),
    )]);
    run(settled, ctx).await.unwrap();
    assert_eq!(finish(verifier).await.len(), 1);
}

#[tokio::test]
async fn a_job_of_that_name_that_is_not_the_workflows_is_left_alone() {
    let wf = workflow();
    let mut stranger = job_for(&wf).unwrap();
    stranger.metadata.owner_references = None;
    let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
    let verifier = api.run(vec![
        Step::json(Method::GET, JOB, serde_json::to_value(&stranger).unwrap()),
        Step::event(),
        Step::status(STATUS, &wf),
    ]);
    run(wf, ctx).await.unwrap();
    let calls = finish(verifier).await;
    assert_eq!(calls[1].body["reason"], "JobNameTaken");
    let st: WorkflowStatus = status_of(&calls[2]);
    let applied = condition(&st.conditions, JOB_APPLIED);
    assert_eq!(
        (applied.status.as_str(), applied.reason.as_str()),
        ("False", "JobNameTaken")
    );
    assert!(
        applied.message.contains("rename the Workflow"),
        "{}",
        applied.message
    );
}

#[tokio::test]
async fn a_job_the_api_server_refuses_blocks_the_workflow_with_the_reason() {
    let mut wf = workflow();
    wf.spec.task_tracker_node_group = "etl-2".into();
    let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
    let owned = job_for(&workflow()).unwrap();
    let verifier = api.run(vec![
        Step::json(Method::GET, JOB, serde_json::to_value(&owned).unwrap()),
        Step::error(Method::PATCH, JOB, 422, "taskTrackerNodeGroup is immutable"),
        Step::event(),
        Step::status(STATUS, &wf),
    ]);
    run(wf, ctx).await.unwrap();
    let calls = finish(verifier).await;
    assert_eq!(calls[2].body["reason"], "JobRefused");
    let st: WorkflowStatus = status_of(&calls[3]);
    let applied = condition(&st.conditions, JOB_APPLIED);
    assert_eq!(applied.status, "False");
    assert!(applied.message.contains("immutable"), "{}", applied.message);
}
