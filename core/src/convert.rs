//! Conversions between the model ([`crate::model`]) and the wire types ([`crate::proto`]).

use crate::model::{
    BizLine, ConcurrencyPolicy, FeedbackItem, Job, JobKey, JobSpec, JobState, LogEntry, LogLevel,
    LogType, MisfirePolicy, Outcome, Schedule,
};
use crate::proto;
use crate::validate::{FieldViolation, Violations};
use crate::workflow::{Edge, EdgeOn, Need, NodeOf, Workflow, WorkflowNode};

/// Wire → model. Structural problems (unknown enum values) are reported as violations;
/// semantic checks are [`crate::validate::validate`]'s job.
pub fn spec_from_proto(p: proto::JobSpec) -> Result<JobSpec, Violations> {
    let mut errs = Vec::new();
    let schedule = match p.schedule {
        None | Some(proto::job_spec::Schedule::Now(_)) => Schedule::Now,
        Some(proto::job_spec::Schedule::TriggerTimeMs(t)) => {
            Schedule::TriggerAt { trigger_time_ms: t }
        }
        Some(proto::job_spec::Schedule::Cron(c)) => Schedule::Cron {
            expression: c.expression,
            time_zone: (!c.time_zone.is_empty()).then_some(c.time_zone),
        },
        Some(proto::job_spec::Schedule::Repeat(r)) => Schedule::Repeat {
            interval_ms: r.interval_ms,
            count: r.count,
            first_fire_ms: (r.first_fire_ms != 0).then_some(r.first_fire_ms),
        },
    };
    let misfire_policy = match proto::MisfirePolicy::try_from(p.misfire_policy) {
        Ok(proto::MisfirePolicy::Unspecified | proto::MisfirePolicy::FireOnce) => {
            MisfirePolicy::FireOnce
        }
        Ok(proto::MisfirePolicy::Skip) => MisfirePolicy::Skip,
        Err(_) => {
            errs.push(FieldViolation::new(
                "misfire_policy",
                format!("unknown value {}", p.misfire_policy),
            ));
            MisfirePolicy::FireOnce
        }
    };
    let concurrency_policy = match proto::ConcurrencyPolicy::try_from(p.concurrency_policy) {
        Ok(proto::ConcurrencyPolicy::Unspecified | proto::ConcurrencyPolicy::Allow) => {
            ConcurrencyPolicy::Allow
        }
        Ok(proto::ConcurrencyPolicy::Forbid) => ConcurrencyPolicy::Forbid,
        Ok(proto::ConcurrencyPolicy::Replace) => ConcurrencyPolicy::Replace,
        Err(_) => {
            errs.push(FieldViolation::new(
                "concurrency_policy",
                format!("unknown value {}", p.concurrency_policy),
            ));
            ConcurrencyPolicy::Allow
        }
    };
    let workflow = p.workflow.map(|w| workflow_from_proto(w, &mut errs));
    if !errs.is_empty() {
        return Err(Violations(errs));
    }
    Ok(JobSpec {
        task_id: p.task_id,
        task_tracker_node_group: p.task_tracker_node_group,
        submit_node_group: p.submit_node_group,
        priority: p.priority,
        params: p.params.into_iter().collect(),
        need_feedback: p.need_feedback,
        max_retries: p.max_retries,
        schedule,
        rely_on_prev_cycle: p.rely_on_prev_cycle,
        replace_on_exist: p.replace_on_exist,
        misfire_policy,
        concurrency_policy,
        max_concurrent: p.max_concurrent,
        shards: p.shards,
        broadcast: p.broadcast,
        affinity: p.affinity.into_iter().collect(),
        max_lease_losses: p.max_lease_losses,
        timeout_ms: p.timeout_ms,
        idempotency_key: (!p.idempotency_key.is_empty()).then_some(p.idempotency_key),
        workflow,
        route_key: (!p.route_key.is_empty()).then_some(p.route_key),
        map_reduce: p.map_reduce.map(|m| crate::model::MapReduce {
            reduce: m.reduce,
            max_children: m.max_children,
        }),
    })
}

/// Wire workflow → model workflow; structural problems of its nodes' specs and edges go to
/// `errs`, named by their place (`workflow.nodes[1].spec.misfire_policy`).
fn workflow_from_proto(w: proto::Workflow, errs: &mut Vec<FieldViolation>) -> Workflow {
    let nodes = w
        .nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| WorkflowNode {
            name: n.name,
            kept_output: n.kept_output,
            spec: match spec_from_proto(n.spec.unwrap_or_default()) {
                Ok(spec) => spec,
                Err(v) => {
                    errs.extend(v.0.into_iter().map(|f| {
                        FieldViolation::new(
                            format!("workflow.nodes[{i}].spec.{}", f.field),
                            f.reason,
                        )
                    }));
                    JobSpec::default()
                }
            },
        })
        .collect();
    let edges = w
        .edges
        .into_iter()
        .enumerate()
        .map(|(i, e)| Edge {
            on: edge_on_from_proto(e.on).unwrap_or_else(|| {
                errs.push(FieldViolation::new(
                    format!("workflow.edges[{i}].on"),
                    format!("unknown value {}", e.on),
                ));
                EdgeOn::Success
            }),
            from: e.from,
            to: e.to,
        })
        .collect();
    Workflow { nodes, edges }
}

/// Wire edge condition → model (unspecified is `Success`; `None` for an unknown value).
fn edge_on_from_proto(v: i32) -> Option<EdgeOn> {
    match proto::EdgeCondition::try_from(v).ok()? {
        proto::EdgeCondition::Unspecified | proto::EdgeCondition::Success => Some(EdgeOn::Success),
        proto::EdgeCondition::Failure => Some(EdgeOn::Failure),
        proto::EdgeCondition::Always => Some(EdgeOn::Always),
    }
}

fn edge_on_to_proto(on: EdgeOn) -> proto::EdgeCondition {
    match on {
        EdgeOn::Success => proto::EdgeCondition::Success,
        EdgeOn::Failure => proto::EdgeCondition::Failure,
        EdgeOn::Always => proto::EdgeCondition::Always,
    }
}

/// Model workflow → wire workflow.
fn workflow_to_proto(w: &Workflow) -> proto::Workflow {
    proto::Workflow {
        nodes: w
            .nodes
            .iter()
            .map(|n| proto::WorkflowNode {
                name: n.name.clone(),
                kept_output: n.kept_output.clone(),
                spec: Some(spec_to_proto(&n.spec)),
            })
            .collect(),
        edges: w
            .edges
            .iter()
            .map(|e| proto::WorkflowEdge {
                from: e.from.clone(),
                to: e.to.clone(),
                on: edge_on_to_proto(e.on) as i32,
            })
            .collect(),
    }
}

/// Model → wire.
pub fn spec_to_proto(s: &JobSpec) -> proto::JobSpec {
    let schedule = Some(match &s.schedule {
        Schedule::Now => proto::job_spec::Schedule::Now(proto::Now {}),
        Schedule::TriggerAt { trigger_time_ms } => {
            proto::job_spec::Schedule::TriggerTimeMs(*trigger_time_ms)
        }
        Schedule::Cron {
            expression,
            time_zone,
        } => proto::job_spec::Schedule::Cron(proto::CronSchedule {
            expression: expression.clone(),
            time_zone: time_zone.clone().unwrap_or_default(),
        }),
        Schedule::Repeat {
            interval_ms,
            count,
            first_fire_ms,
        } => proto::job_spec::Schedule::Repeat(proto::RepeatSchedule {
            interval_ms: *interval_ms,
            count: *count,
            first_fire_ms: first_fire_ms.unwrap_or(0),
        }),
    });
    proto::JobSpec {
        task_id: s.task_id.clone(),
        task_tracker_node_group: s.task_tracker_node_group.clone(),
        submit_node_group: s.submit_node_group.clone(),
        priority: s.priority,
        params: s.params.clone().into_iter().collect(),
        need_feedback: s.need_feedback,
        max_retries: s.max_retries,
        schedule,
        rely_on_prev_cycle: s.rely_on_prev_cycle,
        replace_on_exist: s.replace_on_exist,
        misfire_policy: match s.misfire_policy {
            MisfirePolicy::FireOnce => proto::MisfirePolicy::FireOnce,
            MisfirePolicy::Skip => proto::MisfirePolicy::Skip,
        } as i32,
        concurrency_policy: match s.concurrency_policy {
            ConcurrencyPolicy::Allow => proto::ConcurrencyPolicy::Allow,
            ConcurrencyPolicy::Forbid => proto::ConcurrencyPolicy::Forbid,
            ConcurrencyPolicy::Replace => proto::ConcurrencyPolicy::Replace,
        } as i32,
        max_concurrent: s.max_concurrent,
        shards: s.shards,
        broadcast: s.broadcast,
        affinity: s.affinity.clone().into_iter().collect(),
        max_lease_losses: s.max_lease_losses,
        timeout_ms: s.timeout_ms,
        idempotency_key: s.idempotency_key.clone().unwrap_or_default(),
        workflow: s.workflow.as_ref().map(workflow_to_proto),
        route_key: s.route_key.clone().unwrap_or_default(),
        map_reduce: s.map_reduce.as_ref().map(|m| proto::MapReduce {
            reduce: m.reduce,
            max_children: m.max_children,
        }),
    }
}

/// Model state → wire state.
pub fn state_to_proto(s: JobState) -> proto::JobState {
    match s {
        JobState::Queued => proto::JobState::Queued,
        JobState::Running => proto::JobState::Running,
        JobState::Suspended => proto::JobState::Suspended,
        JobState::Succeeded => proto::JobState::Succeeded,
        JobState::Failed => proto::JobState::Failed,
        JobState::Cancelled => proto::JobState::Cancelled,
        JobState::Waiting => proto::JobState::Waiting,
        JobState::Skipped => proto::JobState::Skipped,
    }
}

/// Wire state → model state (`None` for unspecified or unknown).
pub fn state_from_proto(v: i32) -> Option<JobState> {
    match proto::JobState::try_from(v).ok()? {
        proto::JobState::Unspecified => None,
        proto::JobState::Queued => Some(JobState::Queued),
        proto::JobState::Running => Some(JobState::Running),
        proto::JobState::Suspended => Some(JobState::Suspended),
        proto::JobState::Succeeded => Some(JobState::Succeeded),
        proto::JobState::Failed => Some(JobState::Failed),
        proto::JobState::Cancelled => Some(JobState::Cancelled),
        proto::JobState::Waiting => Some(JobState::Waiting),
        proto::JobState::Skipped => Some(JobState::Skipped),
    }
}

/// Model outcome → wire outcome.
pub fn outcome_to_proto(o: Outcome) -> proto::Outcome {
    match o {
        Outcome::Success => proto::Outcome::Success,
        Outcome::Failed => proto::Outcome::Failed,
        Outcome::Later => proto::Outcome::Later,
        Outcome::Exception => proto::Outcome::Exception,
        Outcome::Timeout => proto::Outcome::Timeout,
    }
}

/// Wire outcome → model outcome (`None` for unspecified or unknown).
pub fn outcome_from_proto(v: i32) -> Option<Outcome> {
    match proto::Outcome::try_from(v).ok()? {
        proto::Outcome::Unspecified => None,
        proto::Outcome::Success => Some(Outcome::Success),
        proto::Outcome::Failed => Some(Outcome::Failed),
        proto::Outcome::Later => Some(Outcome::Later),
        proto::Outcome::Exception => Some(Outcome::Exception),
        proto::Outcome::Timeout => Some(Outcome::Timeout),
    }
}

/// Model job → wire job.
pub fn job_to_proto(j: &Job) -> proto::Job {
    proto::Job {
        job_id: j.job_id.clone(),
        spec: Some(spec_to_proto(&j.spec)),
        state: state_to_proto(j.state) as i32,
        attempt: j.attempt,
        trigger_time_ms: j.trigger_time_ms,
        created_at_ms: j.created_at_ms,
        updated_at_ms: j.updated_at_ms,
        lease_owner: j.lease_owner.clone().unwrap_or_default(),
        lease_expiry_ms: j.lease_expiry_ms.unwrap_or(0),
        last_outcome: j.last_outcome.map(outcome_to_proto).unwrap_or_default() as i32,
        last_message: j.last_message.clone().unwrap_or_default(),
        finished_at_ms: j.finished_at_ms.unwrap_or(0),
        scheduled_fire_ms: j.scheduled_fire_ms.unwrap_or(0),
        fire_count: j.fire_count,
        instance_of: j.instance_of.clone().unwrap_or_default(),
        lease_losses: j.lease_losses,
        deadline_ms: j.deadline_ms.unwrap_or(0),
        shard: j.shard.as_ref().map(|s| proto::ShardOf {
            job_id: s.of.clone(),
            index: s.index,
            count: s.count,
            task_tracker: s.on.clone().unwrap_or_default(),
        }),
        shard_progress: j.shard_progress.map(|p| proto::ShardProgress {
            succeeded: p.succeeded,
            failed: p.failed,
            running: p.running,
            pending: p.pending,
            skipped: p.skipped,
            handled: p.handled,
        }),
        node: j.node.as_ref().map(|n| proto::WorkflowNodeOf {
            name: n.name.clone(),
            needs: n
                .needs
                .iter()
                .map(|need| proto::WorkflowNeed {
                    index: need.index,
                    name: need.name.clone(),
                    on: edge_on_to_proto(need.on) as i32,
                })
                .collect(),
            next: n.next.clone(),
            handles_failure: n.handles_failure,
        }),
        map: j.map.map(map_to_proto),
    }
}

fn map_to_proto(m: crate::model::MapOf) -> proto::MapPart {
    use crate::model::MapOf;
    use proto::map_part::Kind;
    match m {
        MapOf::Parent { children, reducing } => proto::MapPart {
            kind: Kind::Parent as i32,
            children,
            reducing: reducing.is_some(),
            succeeded: reducing.map_or(0, |t| t.succeeded),
            failed: reducing.map_or(0, |t| t.failed),
            ..Default::default()
        },
        MapOf::Child { index } => proto::MapPart {
            kind: Kind::Child as i32,
            index,
            ..Default::default()
        },
        MapOf::Reduce { children } => proto::MapPart {
            kind: Kind::Reduce as i32,
            children,
            ..Default::default()
        },
    }
}

fn map_from_proto(m: proto::MapPart) -> Option<crate::model::MapOf> {
    use crate::model::{ChildTally, MapOf};
    use proto::map_part::Kind;
    Some(match Kind::try_from(m.kind).ok()? {
        Kind::Unspecified => return None,
        Kind::Parent => MapOf::Parent {
            children: m.children,
            reducing: m.reducing.then_some(ChildTally {
                succeeded: m.succeeded,
                failed: m.failed,
            }),
        },
        Kind::Child => MapOf::Child { index: m.index },
        Kind::Reduce => MapOf::Reduce {
            children: m.children,
        },
    })
}

/// Wire job → model job. A job that came from a tracker is trusted structurally.
pub fn job_from_proto(p: proto::Job) -> Job {
    let spec = p
        .spec
        .map(|s| spec_from_proto(s).unwrap_or_default())
        .unwrap_or_default();
    let opt = |v: i64| (v != 0).then_some(v);
    Job {
        job_id: p.job_id,
        spec,
        state: state_from_proto(p.state).unwrap_or(JobState::Queued),
        attempt: p.attempt,
        trigger_time_ms: p.trigger_time_ms,
        created_at_ms: p.created_at_ms,
        updated_at_ms: p.updated_at_ms,
        lease_owner: (!p.lease_owner.is_empty()).then_some(p.lease_owner),
        lease_expiry_ms: opt(p.lease_expiry_ms),
        last_outcome: outcome_from_proto(p.last_outcome),
        last_message: (!p.last_message.is_empty()).then_some(p.last_message),
        finished_at_ms: opt(p.finished_at_ms),
        scheduled_fire_ms: opt(p.scheduled_fire_ms),
        fire_count: p.fire_count,
        instance_of: (!p.instance_of.is_empty()).then_some(p.instance_of),
        lease_losses: p.lease_losses,
        deadline_ms: opt(p.deadline_ms),
        shard: p.shard.map(|s| crate::Shard {
            of: s.job_id,
            index: s.index,
            count: s.count,
            on: (!s.task_tracker.is_empty()).then_some(s.task_tracker),
        }),
        shard_progress: p.shard_progress.map(|p| crate::ShardProgress {
            succeeded: p.succeeded,
            failed: p.failed,
            running: p.running,
            pending: p.pending,
            skipped: p.skipped,
            handled: p.handled,
        }),
        node: p.node.map(|n| NodeOf {
            name: n.name,
            needs: n
                .needs
                .into_iter()
                .map(|need| Need {
                    index: need.index,
                    name: need.name,
                    on: edge_on_from_proto(need.on).unwrap_or_default(),
                })
                .collect(),
            next: n.next,
            handles_failure: n.handles_failure,
        }),
        map: p.map.and_then(map_from_proto),
    }
}

/// Model log line → wire log line.
pub fn log_to_proto(e: &LogEntry) -> proto::LogEntry {
    proto::LogEntry {
        time_ms: e.time_ms,
        log_type: e.log_type.as_str().to_string(),
        level: e.level.as_str().to_string(),
        message: e.message.clone(),
        attempt: e.attempt,
        job_id: e.job_id.clone(),
        task_id: e.task_id.clone(),
        task_tracker_node_group: e.task_tracker_node_group.clone(),
        node: e.node.clone(),
    }
}

/// Wire log line → model; a log type or level this version does not know reads as a
/// business line ([`LogType::parse_lenient`]) or `INFO` ([`LogLevel::parse_lenient`]).
pub fn log_from_proto(e: proto::LogEntry) -> LogEntry {
    LogEntry {
        time_ms: e.time_ms,
        log_type: LogType::parse_lenient(&e.log_type),
        level: LogLevel::parse_lenient(&e.level),
        message: e.message,
        attempt: e.attempt,
        job_id: e.job_id,
        task_id: e.task_id,
        task_tracker_node_group: e.task_tracker_node_group,
        node: e.node,
    }
}

/// Wire business line → model.
pub fn biz_from_proto(b: proto::BizLog) -> BizLine {
    BizLine {
        time_ms: b.time_ms,
        level: LogLevel::parse_lenient(&b.level),
        message: b.message,
    }
}

/// Model business line → wire.
pub fn biz_to_proto(b: &BizLine) -> proto::BizLog {
    proto::BizLog {
        time_ms: b.time_ms,
        level: b.level.as_str().to_string(),
        message: b.message.clone(),
    }
}

/// Model feedback → wire.
pub fn feedback_to_proto(f: &FeedbackItem) -> proto::Feedback {
    proto::Feedback {
        feedback_id: f.feedback_id.clone(),
        job: Some(job_to_proto(&f.job)),
        outcome: outcome_to_proto(f.outcome) as i32,
        message: f.message.clone(),
        finished_at_ms: f.finished_at_ms,
    }
}

/// Wire feedback → model.
pub fn feedback_from_proto(p: proto::Feedback) -> FeedbackItem {
    FeedbackItem {
        feedback_id: p.feedback_id,
        job: job_from_proto(p.job.unwrap_or_default()),
        outcome: outcome_from_proto(p.outcome).unwrap_or(Outcome::Failed),
        message: p.message,
        finished_at_ms: p.finished_at_ms,
    }
}

/// Violations → wire violations.
pub fn violations_to_proto(v: &Violations) -> Vec<proto::FieldViolation> {
    v.0.iter()
        .map(|f| proto::FieldViolation {
            field: f.field.clone(),
            reason: f.reason.clone(),
        })
        .collect()
}

/// Model key → wire reference.
pub fn key_to_proto(k: &JobKey) -> proto::JobRef {
    proto::JobRef {
        by: Some(match k {
            JobKey::Id(id) => proto::job_ref::By::JobId(id.clone()),
            JobKey::Task {
                node_group,
                task_id,
            } => proto::job_ref::By::Task(proto::TaskRef {
                task_tracker_node_group: node_group.clone(),
                task_id: task_id.clone(),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips() {
        let mut spec = JobSpec::new("t", "g")
            .param("a", "b")
            .priority(7)
            .feedback_to("clients")
            .schedule(Schedule::Cron {
                expression: "0 0 * * * *".into(),
                time_zone: Some("UTC".into()),
            });
        spec.rely_on_prev_cycle = true;
        spec.misfire_policy = MisfirePolicy::Skip;
        assert_eq!(spec_from_proto(spec_to_proto(&spec)).unwrap(), spec);
    }

    #[test]
    fn log_lines_round_trip() {
        for log_type in LogType::ALL {
            let line = LogEntry {
                time_ms: 1_700_000_000_000,
                log_type,
                level: LogLevel::Warn,
                message: "m".into(),
                attempt: 2,
                job_id: "j".into(),
                task_id: "t".into(),
                task_tracker_node_group: "g".into(),
                node: "n".into(),
            };
            assert_eq!(log_from_proto(log_to_proto(&line)), line);
        }
    }
}
