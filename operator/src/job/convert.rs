//! Pure mappings of the Job controller: resource → cluster, resource → `lts_core::JobSpec`,
//! tracker job → status fields.

use std::collections::BTreeMap;

use kube::ResourceExt;
use lts_core::{JobState, Schedule};

use crate::crd::{ConcurrencyPolicy, Job, JobPhase, MisfirePolicy, NodeGroup, NodeRole};

/// Param carrying the resource's uid: the key that makes submits idempotent.
pub const PARAM_UID: &str = "lts.io/uid";
/// Param carrying the resource's namespace (maps watch events back to the resource).
pub const PARAM_NAMESPACE: &str = "lts.io/namespace";
/// Param carrying the resource's name.
pub const PARAM_NAME: &str = "lts.io/name";
/// The JobClient group of operator-submitted jobs (the watch filters on it).
pub const SUBMIT_NODE_GROUP: &str = "lts-operator";
/// Longest `lastMessage` kept in the status.
pub const MAX_MESSAGE: usize = 1024;

/// The cluster a Job goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRef {
    /// Cluster name.
    pub cluster: String,
    /// Its JobTracker NodeGroup (names the Service).
    pub job_tracker: String,
}

/// Why a Job cannot be placed or submitted: a Condition reason and message.
pub use crate::reconcile::Problem;

/// Picks the Job's cluster among the NodeGroups of its namespace: the one named by
/// `spec.cluster`, else the one it was placed on before (`status.cluster`, so a second cluster
/// appearing later does not strand it), else the only one there is.
pub fn resolve_cluster(job: &Job, nodegroups: &[NodeGroup]) -> Result<ClusterRef, Problem> {
    let ns = job.namespace().unwrap_or_default();
    let wanted = job
        .spec
        .cluster
        .clone()
        .or_else(|| job.status.as_ref().and_then(|s| s.cluster.clone()));
    let mut trackers: Vec<&NodeGroup> = nodegroups
        .iter()
        .filter(|n| n.spec.role == NodeRole::JobTracker && n.namespace().as_deref() == Some(&ns))
        .filter(|n| wanted.as_ref().is_none_or(|c| *c == n.spec.cluster))
        .collect();
    trackers.sort_by_key(|n| n.name_any());
    match (trackers.as_slice(), &wanted) {
        ([one], _) => Ok(ClusterRef {
            cluster: one.spec.cluster.clone(),
            job_tracker: one.name_any(),
        }),
        ([], Some(c)) => Err(Problem::new(
            "ClusterNotFound",
            format!("no JobTracker NodeGroup of cluster {c:?} in namespace {ns:?}"),
        )),
        ([], None) => Err(Problem::new(
            "ClusterNotFound",
            format!(
                "no LTS cluster in namespace {ns:?}: create a JobTracker NodeGroup there or set spec.cluster"
            ),
        )),
        (many, _) => {
            let mut clusters: Vec<String> = many
                .iter()
                .map(|n| format!("{} ({})", n.spec.cluster, n.name_any()))
                .collect();
            clusters.dedup();
            Err(Problem::new(
                "AmbiguousCluster",
                format!(
                    "namespace {ns:?} holds several JobTracker NodeGroups: {}; set spec.cluster",
                    clusters.join(", ")
                ),
            ))
        }
    }
}

/// The task id: `spec.taskId`, or `k8s-<uid>`.
pub fn task_id(job: &Job) -> Option<String> {
    job.spec
        .task_id
        .clone()
        .or_else(|| job.uid().map(|u| format!("k8s-{u}")))
}

/// Milliseconds of a duration like `90s`, `5m`, `1h30m`, `250ms`, `1.5h`.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    // What the CRD's CEL rule takes (Go durations): no bare numbers, no days, at least 1 ms.
    let text = s.trim();
    if text.bytes().all(|b| b.is_ascii_digit()) || text.contains('d') {
        return None;
    }
    let d = lts_core::parse_duration(text).ok()?;
    if d < std::time::Duration::from_millis(1) {
        return None;
    }
    lts_core::parse_duration_ms(text).ok()
}

fn parse_time(field: &str, s: &str, problems: &mut Vec<String>) -> Option<i64> {
    match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => Some(t.timestamp_millis()),
        Err(e) => {
            problems.push(format!("{field}: {s:?} is not an RFC 3339 time ({e})"));
            None
        }
    }
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The resource path of a field the tracker's validation names (`repeat.interval_ms` →
/// `spec.schedule.repeat.intervalMs`).
pub fn spec_field(field: &str) -> String {
    // A workflow node's own fields sit on the node: `workflow.nodes[1].spec.timeout` →
    // `spec.workflow.nodes[1].timeoutSeconds`.
    if let Some((node, rest)) = field.split_once(".spec.")
        && node.starts_with("workflow.nodes[")
    {
        let inner = spec_field(rest);
        return format!("spec.{node}.{}", inner.trim_start_matches("spec."));
    }
    let camel_path: Vec<String> = field.split('.').map(camel).collect();
    let path = camel_path.join(".");
    match camel_path.first().map(String::as_str) {
        Some("triggerTime" | "cron" | "repeat") => format!("spec.schedule.{path}"),
        // The resource gives the timeout in seconds.
        Some("timeout") => "spec.timeoutSeconds".into(),
        _ => format!("spec.{path}"),
    }
}

/// The job to submit for `job`, or every problem with its spec.
pub fn to_lts_spec(job: &Job) -> Result<lts_core::JobSpec, Vec<String>> {
    let spec = &job.spec;
    let mut problems = Vec::new();
    let uid = job.uid().unwrap_or_default();
    if uid.is_empty() {
        problems.push("metadata.uid: missing".to_string());
    }
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &spec.params {
        if k.starts_with("lts.io/") {
            problems.push(format!("spec.params[{k}]: the prefix lts.io/ is reserved"));
        } else {
            params.insert(k.clone(), v.clone());
        }
    }
    params.insert(PARAM_UID.into(), uid);
    params.insert(PARAM_NAMESPACE.into(), job.namespace().unwrap_or_default());
    params.insert(PARAM_NAME.into(), job.name_any());

    let schedule = match &spec.schedule {
        None => Schedule::Now,
        Some(s) => {
            let set = [
                s.trigger_time.is_some(),
                s.cron.is_some(),
                s.repeat.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set != 1 {
                problems.push(
                    "spec.schedule: needs exactly one of triggerTime, cron or repeat (omit schedule to run now)"
                        .into(),
                );
            }
            if let Some(t) = &s.trigger_time {
                parse_time("spec.schedule.triggerTime", t, &mut problems)
                    .map(|trigger_time_ms| Schedule::TriggerAt { trigger_time_ms })
                    .unwrap_or_default()
            } else if let Some(c) = &s.cron {
                Schedule::Cron {
                    expression: c.expression.clone(),
                    time_zone: c.time_zone.clone(),
                }
            } else if let Some(r) = &s.repeat {
                let interval_ms = match (r.interval_ms, &r.interval) {
                    (Some(ms), None) => ms,
                    (None, Some(d)) => parse_duration_ms(d).unwrap_or_else(|| {
                        problems.push(format!(
                            "spec.schedule.repeat.interval: {d:?} is not a positive duration such as 30s, 5m or 1h30m"
                        ));
                        0
                    }),
                    _ => {
                        problems.push(
                            "spec.schedule.repeat: needs exactly one of intervalMs or interval"
                                .into(),
                        );
                        0
                    }
                };
                let first_fire_ms = r
                    .first_fire
                    .as_deref()
                    .and_then(|t| parse_time("spec.schedule.repeat.firstFire", t, &mut problems));
                Schedule::Repeat {
                    interval_ms,
                    count: r.count,
                    first_fire_ms,
                }
            } else {
                Schedule::Now
            }
        }
    };
    if spec.max_retries < 0 {
        problems.push("spec.maxRetries: must not be negative".into());
    }
    if spec.max_lease_losses.is_some_and(|n| n < 0) {
        problems.push("spec.maxLeaseLosses: must not be negative".into());
    }
    // Out of range (past the schema, say on an older CRD): 0, which the validation below names.
    let max_concurrent = spec.max_concurrent.map(|n| u32::try_from(n).unwrap_or(0));
    let resource: BTreeMap<String, String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("lts.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let workflow = spec
        .workflow
        .as_ref()
        .map(|w| to_lts_workflow(w, &resource, &mut problems));
    let out = lts_core::JobSpec {
        task_id: task_id(job).unwrap_or_default(),
        task_tracker_node_group: spec.task_tracker_node_group.clone(),
        submit_node_group: spec
            .submit_node_group
            .clone()
            .unwrap_or_else(|| SUBMIT_NODE_GROUP.into()),
        priority: spec.priority,
        params,
        need_feedback: spec.need_feedback,
        max_retries: spec.max_retries.max(0) as u32,
        schedule,
        rely_on_prev_cycle: spec.rely_on_prev_cycle,
        replace_on_exist: spec.replace_on_exist,
        misfire_policy: match spec.misfire_policy {
            MisfirePolicy::FireOnce => lts_core::MisfirePolicy::FireOnce,
            MisfirePolicy::Skip => lts_core::MisfirePolicy::Skip,
        },
        concurrency_policy: match spec.concurrency_policy {
            ConcurrencyPolicy::Allow => lts_core::ConcurrencyPolicy::Allow,
            ConcurrencyPolicy::Forbid => lts_core::ConcurrencyPolicy::Forbid,
            ConcurrencyPolicy::Replace => lts_core::ConcurrencyPolicy::Replace,
        },
        max_concurrent,
        // Out of range: 0, which the validation below names.
        shards: spec.shards.map(|n| u32::try_from(n).unwrap_or(0)),
        broadcast: spec.broadcast,
        affinity: spec.affinity.clone(),
        max_lease_losses: spec.max_lease_losses.map(|n| n.max(0) as u32),
        timeout_ms: spec
            .timeout_seconds
            .map(|s| u64::try_from(s).unwrap_or(0).saturating_mul(1_000)),
        // A resource is its own key: its task id (from its uid) dedups, and a changed spec
        // must replace the job, not be answered with it.
        idempotency_key: None,
        workflow,
        route_key: spec.route_key.clone(),
        map_reduce: spec
            .map_reduce
            .as_ref()
            .map(|m| lts_core::model::MapReduce {
                reduce: m.reduce,
                // Out of range: 0, which the validation below names.
                max_children: m.max_children.map(|n| u32::try_from(n).unwrap_or(0)),
            }),
    };
    if let Err(v) = lts_core::validate(&out) {
        let origins = spec.workflow.as_ref().map(edge_origins).unwrap_or_default();
        problems.extend(v.0.iter().map(|f| {
            let field = lts_core::workflow::edge_origin(&f.field, &origins)
                .map(|origin| format!("spec.workflow.{origin}"))
                .unwrap_or_else(|| spec_field(&f.field));
            format!("{field}: {}", f.reason)
        }));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Where each edge of [`to_lts_workflow`]'s workflow was written: `nodes[i].after[k]`, then
/// `edges[k]`.
fn edge_origins(w: &crate::crd::WorkflowSpec) -> Vec<String> {
    let mut origins: Vec<String> = w
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| (0..n.after.len()).map(move |k| format!("nodes[{i}].after[{k}]")))
        .collect();
    origins.extend((0..w.edges.len()).map(|k| format!("edges[{k}]")));
    origins
}

/// The workflow of a Job's spec as the tracker takes it; a node's `after` become `Success`
/// edges, and bad values (a negative retry count, say) are named in `problems`.
fn to_lts_workflow(
    w: &crate::crd::WorkflowSpec,
    resource_params: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> lts_core::workflow::Workflow {
    use crate::crd::EdgeCondition;
    use lts_core::workflow::{Edge, EdgeOn, Workflow, WorkflowNode};
    let mut edges = Vec::new();
    let nodes = w
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            for k in n.params.keys().filter(|k| k.starts_with("lts.io/")) {
                problems.push(format!(
                    "spec.workflow.nodes[{i}].params[{k}]: the prefix lts.io/ is reserved"
                ));
            }
            if n.max_retries < 0 {
                problems.push(format!(
                    "spec.workflow.nodes[{i}].maxRetries: must not be negative"
                ));
            }
            let mut spec =
                lts_core::JobSpec::new("", n.task_tracker_node_group.clone().unwrap_or_default());
            spec.params = n.params.clone();
            // The node's job names the resource too, so that the watch brings its changes
            // to the resource's status ([`mirror_nodes`]).
            spec.params
                .extend(resource_params.iter().map(|(k, v)| (k.clone(), v.clone())));
            spec.priority = n.priority;
            spec.max_retries = n.max_retries.max(0) as u32;
            spec.max_lease_losses = n.max_lease_losses.map(|m| m.max(0) as u32);
            spec.timeout_ms = n
                .timeout_seconds
                .map(|s| u64::try_from(s).unwrap_or(0).saturating_mul(1_000));
            spec.affinity = n.affinity.clone();
            spec.route_key = n.route_key.clone();
            edges.extend(n.after.iter().map(|from| Edge {
                from: from.clone(),
                to: n.name.clone(),
                on: EdgeOn::Success,
            }));
            WorkflowNode {
                name: n.name.clone(),
                spec,
                kept_output: None,
            }
        })
        .collect();
    edges.extend(w.edges.iter().map(|e| Edge {
        from: e.from.clone(),
        to: e.to.clone(),
        on: match e.when {
            EdgeCondition::Success => EdgeOn::Success,
            EdgeCondition::Failure => EdgeOn::Failure,
            EdgeCondition::Always => EdgeOn::Always,
        },
    }));
    Workflow { nodes, edges }
}

/// A stable fingerprint of what is submitted (FNV-1a over its JSON), so a changed spec is
/// resubmitted and an unchanged one never is.
pub fn spec_hash(spec: &lts_core::JobSpec) -> String {
    // The idempotency key a client gave the submit is not what the resource asks for.
    let spec = lts_core::JobSpec {
        idempotency_key: None,
        ..spec.clone()
    };
    let json = serde_json::to_string(&spec).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Whether a tracker job was submitted for the resource with `uid`.
pub fn owned_by(job: &lts_core::Job, uid: &str) -> bool {
    job.spec.params.get(PARAM_UID).map(String::as_str) == Some(uid)
}

/// The resource a tracker job belongs to (namespace, name), from its params.
pub fn resource_of(job: &lts_core::Job) -> Option<(String, String)> {
    Some((
        job.spec.params.get(PARAM_NAMESPACE)?.clone(),
        job.spec.params.get(PARAM_NAME)?.clone(),
    ))
}

/// The phase of a tracker job.
pub fn phase(state: JobState) -> JobPhase {
    match state {
        JobState::Queued => JobPhase::Queued,
        JobState::Running => JobPhase::Running,
        JobState::Suspended => JobPhase::Suspended,
        JobState::Succeeded => JobPhase::Succeeded,
        JobState::Failed => JobPhase::Failed,
        JobState::Cancelled => JobPhase::Cancelled,
        JobState::Waiting => JobPhase::Waiting,
        JobState::Skipped => JobPhase::Skipped,
    }
}

/// Whether a phase is final (no further runs).
pub fn is_final(phase: Option<JobPhase>) -> bool {
    matches!(
        phase,
        Some(JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled | JobPhase::Skipped)
    )
}

fn rfc3339(ms: i64) -> Option<String> {
    (ms > 0).then(|| lts_core::format_ms(ms))
}

/// The status fields that mirror a tracker job (conditions and bookkeeping untouched).
///
/// A cron or repeat job whose fires overlap (`relyOnPrevCycle: false`) never runs itself:
/// each fire runs as its own instance job ([`mirror_instance`]). For such a definition the
/// run fields (attempts, last result and message, last fire) are left as its instances set
/// them.
pub fn mirror(status: &mut crate::crd::JobStatus, job: &lts_core::Job) {
    status.phase = Some(phase(job.state));
    status.job_id = Some(job.job_id.clone());
    status.task_id = Some(job.spec.task_id.clone());
    if let Some(p) = job.shard_progress {
        status.shards = Some(crate::crd::ShardCounts {
            succeeded: i64::from(p.succeeded),
            failed: i64::from(p.failed),
            running: i64::from(p.running),
            pending: i64::from(p.pending),
            skipped: i64::from(p.skipped),
        });
    }
    status.next_fire_time = match job.state {
        JobState::Queued => rfc3339(job.trigger_time_ms),
        _ => None,
    };
    if lts_core::schedule::fires_overlapping_instances(&job.spec) {
        return;
    }
    status.attempts = Some(i64::from(job.attempt));
    status.last_result = job.last_outcome.map(|o| o.as_str().to_string());
    status.last_message = job
        .last_message
        .as_deref()
        .filter(|m| !m.is_empty())
        .map(|m| crate::nodegroup::truncate(m, MAX_MESSAGE));
    status.last_fire_time = job.scheduled_fire_ms.and_then(rfc3339);
    match job.finished_at_ms.filter(|_| job.state.is_final()) {
        Some(done) => {
            status.completion_time = rfc3339(done);
            status.duration = Some(lts_core::duration::format_ms(
                u64::try_from(done - job.created_at_ms).unwrap_or(0) / 1000 * 1000,
            ));
        }
        None => {
            status.completion_time = None;
            status.duration = None;
        }
    }
}

/// The most workflow nodes a Job's status lists.
pub const MAX_STATUS_NODES: u32 = 500;

/// Whether `job` is a node of a workflow.
pub fn is_node(job: &lts_core::Job) -> bool {
    job.node.is_some()
}

/// Mirrors what the watch told of a workflow's nodes into `status.nodes`: each node by name,
/// those of a newer run replacing the older run's; at most [`MAX_STATUS_NODES`] (by index).
pub fn mirror_nodes(status: &mut crate::crd::JobStatus, nodes: &[lts_core::Job]) {
    let run_of = |id: &str| lts_core::Shard::run_of_id(id).to_string();
    for node in nodes {
        let (Some(of), Some(shard)) = (&node.node, &node.shard) else {
            continue;
        };
        if shard.index >= MAX_STATUS_NODES {
            continue;
        }
        let run = run_of(&node.job_id);
        if status
            .nodes
            .first()
            .is_some_and(|n| run_of(&n.job_id) != run)
        {
            status.nodes.clear();
        }
        let entry = crate::crd::NodeStatus {
            name: of.name.clone(),
            phase: phase(node.state),
            attempts: i64::from(node.attempt),
            message: node
                .last_message
                .as_deref()
                .filter(|m| !m.is_empty())
                .map(|m| crate::nodegroup::truncate(m, MAX_MESSAGE)),
            job_id: node.job_id.clone(),
        };
        match status.nodes.iter_mut().find(|n| n.name == entry.name) {
            Some(known) => *known = entry,
            None => status.nodes.push(entry),
        }
    }
}

/// Whether `job` runs one fire of a recurring job (an instance job): the tracker names the
/// recurring job in its `instance_of`.
pub fn is_instance(job: &lts_core::Job) -> bool {
    job.instance_of.is_some()
}

/// Whether `job` is an instance (one fire) of the recurring job submitted for the resource with
/// `uid` (instances carry their definition's params, [`PARAM_UID`] among them).
pub fn is_instance_of(job: &lts_core::Job, uid: &str) -> bool {
    is_instance(job) && owned_by(job, uid)
}

/// The run fields of a recurring job's status from one of its instances (its newest fire):
/// attempts, last result and message, last fire; `Running` while the instance runs and the
/// definition waits for its next fire.
pub fn mirror_instance(status: &mut crate::crd::JobStatus, instance: &lts_core::Job) {
    let newer = match (
        status.last_fire_time.as_deref(),
        instance.scheduled_fire_ms.and_then(rfc3339),
    ) {
        (Some(known), Some(fire)) => fire.as_str() >= known,
        _ => true,
    };
    if !newer {
        return;
    }
    status.attempts = Some(i64::from(instance.attempt));
    if let Some(outcome) = instance.last_outcome {
        status.last_result = Some(outcome.as_str().to_string());
        status.last_message = instance
            .last_message
            .as_deref()
            .filter(|m| !m.is_empty())
            .map(|m| crate::nodegroup::truncate(m, MAX_MESSAGE));
    }
    status.last_fire_time = instance.scheduled_fire_ms.and_then(rfc3339);
    if instance.state == JobState::Running && status.phase == Some(JobPhase::Queued) {
        status.phase = Some(JobPhase::Running);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CronSchedule, RepeatSchedule, ScheduleSpec};
    use crate::fixtures::{job, nodegroup as ng, tracker_job};

    #[test]
    fn default_task_id_and_params_key_the_resource() {
        let spec = to_lts_spec(&job("mail")).unwrap();
        assert_eq!(spec.task_id, "k8s-0b6f3c1e-uid");
        assert_eq!(spec.submit_node_group, SUBMIT_NODE_GROUP);
        assert_eq!(spec.params[PARAM_UID], "0b6f3c1e-uid");
        assert_eq!(spec.params[PARAM_NAMESPACE], "lts");
        assert_eq!(spec.params[PARAM_NAME], "mail");
        assert_eq!(spec.params["to"], "a@b.c");
        assert_eq!((spec.priority, spec.max_retries), (5, 2));
        assert_eq!(spec.schedule, Schedule::Now);
    }

    #[test]
    fn schedules_map_to_the_job_model() {
        let mut j = job("s");
        j.spec.schedule = Some(ScheduleSpec {
            trigger_time: Some("2030-01-01T00:00:00Z".into()),
            ..ScheduleSpec::default()
        });
        assert_eq!(
            to_lts_spec(&j).unwrap().schedule,
            Schedule::TriggerAt {
                trigger_time_ms: 1_893_456_000_000
            }
        );
        j.spec.schedule = Some(ScheduleSpec {
            cron: Some(CronSchedule {
                expression: "0 */5 * * * *".into(),
                time_zone: Some("Europe/Berlin".into()),
            }),
            ..ScheduleSpec::default()
        });
        assert!(matches!(
            to_lts_spec(&j).unwrap().schedule,
            Schedule::Cron { .. }
        ));
        j.spec.schedule = Some(ScheduleSpec {
            repeat: Some(RepeatSchedule {
                interval_ms: None,
                interval: Some("1m30s".into()),
                count: 3,
                first_fire: None,
            }),
            ..ScheduleSpec::default()
        });
        assert_eq!(
            to_lts_spec(&j).unwrap().schedule,
            Schedule::Repeat {
                interval_ms: 90_000,
                count: 3,
                first_fire_ms: None
            }
        );
    }

    #[test]
    fn a_workflow_maps_to_the_job_model_and_its_problems_name_the_resource_field() {
        use crate::crd::{EdgeCondition, WorkflowEdgeSpec, WorkflowNodeSpec, WorkflowSpec};
        use lts_core::workflow::EdgeOn;
        let node = |name: &str, after: &[&str]| WorkflowNodeSpec {
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
        };
        let mut j = job("etl");
        j.spec.params.clear();
        j.spec.workflow = Some(WorkflowSpec {
            nodes: vec![
                node("extract", &[]),
                node("load", &["extract"]),
                node("alert", &[]),
            ],
            edges: vec![WorkflowEdgeSpec {
                from: "load".into(),
                to: "alert".into(),
                when: EdgeCondition::Failure,
            }],
        });
        let spec = to_lts_spec(&j).unwrap();
        let wf = spec.workflow.unwrap();
        assert_eq!(wf.nodes[1].spec.timeout_ms, Some(60_000));
        let edges: Vec<(&str, &str, EdgeOn)> = wf
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str(), e.on))
            .collect();
        assert_eq!(
            edges,
            [
                ("extract", "load", EdgeOn::Success),
                ("load", "alert", EdgeOn::Failure)
            ]
        );
        // Problems: an unknown name in an `after`, a cycle through `edges`, a node's field.
        let w = j.spec.workflow.as_mut().unwrap();
        w.nodes[0].after = vec!["nope".into()];
        w.edges.push(WorkflowEdgeSpec {
            from: "alert".into(),
            to: "load".into(),
            when: EdgeCondition::Always,
        });
        w.nodes[2].timeout_seconds = Some(0);
        let problems = to_lts_spec(&j).unwrap_err();
        for want in [
            "spec.workflow.nodes[0].after[0]: no node is named \"nope\"",
            "spec.workflow.edges: form a cycle: ",
            "spec.workflow.nodes[2].timeoutSeconds: ",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{want}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_workflows_nodes_reach_its_status_by_name_the_newest_run_only() {
        use lts_core::workflow::NodeOf;
        let node = |run: &str, index: u32, name: &str, state: JobState| {
            let mut n = tracker_job(&format!("{run}{index}"), to_lts_spec(&job("etl")).unwrap());
            n.state = state;
            n.attempt = 1;
            n.shard = Some(lts_core::Shard {
                of: "W".into(),
                index,
                count: 600,
                on: None,
            });
            n.node = Some(NodeOf {
                name: name.into(),
                needs: Vec::new(),
                next: Vec::new(),
                handles_failure: false,
            });
            n
        };
        let mut st = crate::crd::JobStatus::default();
        mirror_nodes(
            &mut st,
            &[
                node("W-1-1-", 0, "extract", JobState::Succeeded),
                node("W-1-1-", 1, "load", JobState::Waiting),
                node("W-1-1-", 550, "far", JobState::Queued),
            ],
        );
        let phases: Vec<(&str, JobPhase)> = st
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.phase))
            .collect();
        assert_eq!(
            phases,
            [
                ("extract", JobPhase::Succeeded),
                ("load", JobPhase::Waiting)
            ],
            "a node past the first {MAX_STATUS_NODES} is counted, not listed"
        );
        mirror_nodes(&mut st, &[node("W-1-1-", 1, "load", JobState::Skipped)]);
        assert_eq!(st.nodes[1].phase, JobPhase::Skipped);
        // The next run's first node replaces the last run's list.
        mirror_nodes(&mut st, &[node("W-2-1-", 0, "extract", JobState::Running)]);
        assert_eq!(st.nodes.len(), 1);
        assert_eq!(
            (st.nodes[0].phase, st.nodes[0].job_id.as_str()),
            (JobPhase::Running, "W-2-1-0")
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut j = job("bad");
        j.spec.params.insert("lts.io/uid".into(), "forged".into());
        j.spec.task_tracker_node_group = String::new();
        j.spec.schedule = Some(ScheduleSpec {
            trigger_time: Some("tomorrow".into()),
            cron: Some(CronSchedule {
                expression: "not cron".into(),
                time_zone: None,
            }),
            repeat: None,
        });
        let problems = to_lts_spec(&j).unwrap_err().join("\n");
        assert!(problems.contains("spec.params[lts.io/uid]"), "{problems}");
        assert!(
            problems.contains("spec.schedule: needs exactly one"),
            "{problems}"
        );
        assert!(problems.contains("spec.schedule.triggerTime"), "{problems}");
        assert!(problems.contains("spec.taskTrackerNodeGroup"), "{problems}");
    }

    #[test]
    fn invalid_cron_is_named_by_its_resource_path() {
        let mut j = job("c");
        j.spec.schedule = Some(ScheduleSpec {
            cron: Some(CronSchedule {
                expression: "every day".into(),
                time_zone: Some("Mars/Olympus".into()),
            }),
            ..ScheduleSpec::default()
        });
        let problems = to_lts_spec(&j).unwrap_err().join("\n");
        assert!(
            problems.contains("spec.schedule.cron.expression"),
            "{problems}"
        );
        assert!(
            problems.contains("spec.schedule.cron.timeZone"),
            "{problems}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("30s"), Some(30_000));
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("1.5h"), Some(5_400_000));
        assert_eq!(parse_duration_ms("5"), None);
        assert_eq!(parse_duration_ms("0s"), None);
        assert_eq!(parse_duration_ms("3d"), None);
        assert_eq!(parse_duration_ms(""), None);
    }

    #[test]
    fn hash_is_stable_and_follows_the_spec() {
        let a = to_lts_spec(&job("h")).unwrap();
        let mut b = a.clone();
        assert_eq!(spec_hash(&a), spec_hash(&b));
        b.priority = 9;
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }

    #[test]
    fn cluster_resolution() {
        let jt = ng("tracker", NodeRole::JobTracker);
        let tt = ng("mailers", NodeRole::TaskTracker);
        let j = job("j");
        let c = resolve_cluster(&j, &[jt.clone(), tt.clone()]).unwrap();
        assert_eq!(
            (c.cluster.as_str(), c.job_tracker.as_str()),
            ("prod", "tracker")
        );

        let none = resolve_cluster(&j, std::slice::from_ref(&tt)).unwrap_err();
        assert_eq!(none.reason, "ClusterNotFound");

        let mut other = ng("tracker-b", NodeRole::JobTracker);
        other.spec.cluster = "staging".into();
        let many = resolve_cluster(&j, &[jt.clone(), other.clone()]).unwrap_err();
        assert_eq!(many.reason, "AmbiguousCluster");
        assert!(many.message.contains("staging"), "{}", many.message);

        let mut named = j.clone();
        named.spec.cluster = Some("staging".into());
        let c = resolve_cluster(&named, &[jt.clone(), other.clone()]).unwrap();
        assert_eq!(c.job_tracker, "tracker-b");
        named.spec.cluster = Some("qa".into());
        assert_eq!(
            resolve_cluster(&named, std::slice::from_ref(&jt))
                .unwrap_err()
                .reason,
            "ClusterNotFound"
        );

        let mut placed = j.clone();
        placed.status = Some(crate::crd::JobStatus {
            cluster: Some("prod".into()),
            ..Default::default()
        });
        let c = resolve_cluster(&placed, &[jt.clone(), other]).unwrap();
        assert_eq!(
            c.job_tracker, "tracker",
            "stays on the cluster it was placed on"
        );

        let mut elsewhere = ng("tracker", NodeRole::JobTracker);
        elsewhere.metadata.namespace = Some("other".into());
        assert!(resolve_cluster(&j, &[elsewhere]).is_err());
    }

    #[test]
    fn mirror_maps_tracker_state() {
        let spec = to_lts_spec(&job("m")).unwrap();
        let tracked = lts_core::Job {
            attempt: 2,
            last_outcome: Some(lts_core::Outcome::Later),
            last_message: Some("busy".into()),
            scheduled_fire_ms: Some(1_893_455_000_000),
            fire_count: 1,
            ..tracker_job("J1", spec)
        };
        let mut st = crate::crd::JobStatus::default();
        mirror(&mut st, &tracked);
        assert_eq!(st.phase, Some(JobPhase::Queued));
        assert_eq!(st.job_id.as_deref(), Some("J1"));
        assert_eq!(st.attempts, Some(2));
        assert_eq!(st.last_result.as_deref(), Some("LATER"));
        assert_eq!(st.last_message.as_deref(), Some("busy"));
        assert_eq!(
            st.next_fire_time.as_deref(),
            Some("2030-01-01T00:00:00.000Z")
        );
        assert!(st.last_fire_time.is_some());
        assert!(owned_by(&tracked, "0b6f3c1e-uid"));
        assert_eq!(resource_of(&tracked), Some(("lts".into(), "m".into())));
        let mut done = tracked.clone();
        done.state = JobState::Succeeded;
        mirror(&mut st, &done);
        assert_eq!(st.next_fire_time, None);
        assert!(is_final(st.phase));
    }

    #[test]
    fn a_sharded_jobs_shards_are_counted_in_its_status() {
        let mut j = job("s");
        j.spec.shards = Some(4);
        let spec = to_lts_spec(&j).unwrap();
        assert_eq!(spec.shards, Some(4));
        let tracked = lts_core::Job {
            state: JobState::Running,
            attempt: 1,
            shard_progress: Some(lts_core::ShardProgress {
                succeeded: 1,
                failed: 0,
                running: 2,
                pending: 1,
                ..Default::default()
            }),
            ..tracker_job("S1", spec)
        };
        let mut st = crate::crd::JobStatus::default();
        mirror(&mut st, &tracked);
        assert_eq!(
            st.shards,
            Some(crate::crd::ShardCounts {
                succeeded: 1,
                failed: 0,
                running: 2,
                pending: 1,
                skipped: 0,
            })
        );
        // Out of the schema's range (an older CRD that let it through): named, not sent.
        j.spec.shards = Some(0);
        let problems = to_lts_spec(&j).unwrap_err();
        assert!(
            problems.iter().any(|p| p.starts_with("spec.shards:")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_recurring_jobs_runs_come_from_its_instances() {
        let mut spec = to_lts_spec(&job("c")).unwrap();
        spec.schedule = lts_core::Schedule::Repeat {
            interval_ms: 60_000,
            count: -1,
            first_fire_ms: None,
        };
        let definition = lts_core::Job {
            trigger_time_ms: 1_893_456_060_000,
            scheduled_fire_ms: Some(1_893_456_060_000),
            fire_count: 2,
            ..tracker_job("D", spec.clone())
        };
        let fire = 1_893_456_000_000;
        let mut instance = definition.clone();
        instance.job_id = "I1".into();
        instance.spec = lts_core::schedule::instance_spec(&spec, fire);
        instance.state = JobState::Running;
        instance.attempt = 1;
        instance.scheduled_fire_ms = Some(fire);
        instance.instance_of = Some("D".into());
        assert!(is_instance_of(&instance, "0b6f3c1e-uid"));
        assert!(!is_instance_of(&instance, "another-uid"));
        assert!(!is_instance_of(&definition, "0b6f3c1e-uid"));

        let mut st = crate::crd::JobStatus::default();
        mirror(&mut st, &definition);
        mirror_instance(&mut st, &instance);
        assert_eq!(st.phase, Some(JobPhase::Running), "its newest fire runs");
        assert_eq!(st.job_id.as_deref(), Some("D"));
        assert_eq!(
            st.last_fire_time.as_deref(),
            Some("2030-01-01T00:00:00.000Z")
        );

        instance.state = JobState::Succeeded;
        instance.last_outcome = Some(lts_core::Outcome::Success);
        instance.last_message = Some("sent".into());
        mirror(&mut st, &definition);
        mirror_instance(&mut st, &instance);
        assert_eq!(
            st.phase,
            Some(JobPhase::Queued),
            "waiting for its next fire"
        );
        assert_eq!(st.last_result.as_deref(), Some("SUCCESS"));
        assert_eq!(st.last_message.as_deref(), Some("sent"));
        // The definition's own changes keep what its instances reported.
        mirror(&mut st, &definition);
        assert_eq!(st.last_result.as_deref(), Some("SUCCESS"));
        assert_eq!(
            st.next_fire_time.as_deref(),
            Some("2030-01-01T00:01:00.000Z")
        );
        // An older fire reported late changes nothing.
        let mut older = instance.clone();
        older.scheduled_fire_ms = Some(fire - 60_000);
        older.last_outcome = Some(lts_core::Outcome::Failed);
        mirror_instance(&mut st, &older);
        assert_eq!(st.last_result.as_deref(), Some("SUCCESS"));
    }
}
