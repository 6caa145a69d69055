//! Workflows: a named graph of job templates run as one job.
//!
//! A job whose spec has a [`Workflow`] is its workflow's *run*: when it is claimed (each fire,
//! for a cron or repeat workflow), every node becomes a job of its own, with the ids and the
//! accounting of a sharded job's shards ([`crate::Shard`]): node `i` is shard `i` of the run.
//! A node without predecessors is queued at once; the others wait ([`crate::JobState::Waiting`])
//! until every predecessor ended, and then run — or are skipped
//! ([`crate::JobState::Skipped`]) when an edge into them asks for an end their predecessor did
//! not have. The workflow ends with its last node: `SUCCEEDED` unless a node failed (or was
//! cancelled) and no `failure` or `always` edge leads out of it.
//!
//! Everything here is pure: the graph's checks ([`check`]), the node jobs a claim creates
//! ([`NodeOf`] from [`Workflow::plan`]) and when a waiting node may run ([`readiness`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Job, JobSpec, JobState};
use crate::validate::FieldViolation;

/// The most nodes a workflow may have.
pub const MAX_NODES: usize = 20_000;

/// The most edges a workflow may have.
pub const MAX_EDGES: usize = 100_000;

/// The most predecessors one node may have. When a predecessor ends, each of its successors'
/// predecessors is read, so a node's fan-in bounds that work.
pub const MAX_NEEDS: usize = 1_000;

/// The longest node name.
pub const MAX_NODE_NAME_LEN: usize = 63;

/// The most bytes of a predecessor's output handed to a successor.
pub const MAX_OUTPUT_BYTES: usize = 64 << 10;

/// The parameter of a successor that carries the output (final message) of its predecessor
/// `name` that succeeded: `output.<name>`.
pub fn output_param(name: &str) -> String {
    format!("output.{name}")
}

/// A workflow: nodes (job templates) and the edges between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Workflow {
    /// The nodes, each run as a job of its own.
    pub nodes: Vec<WorkflowNode>,
    /// `from -> to`: run `to` once `from` ended as `on` asks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<Edge>,
}

/// One node of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WorkflowNode {
    /// Its name, unique in the workflow: 1..=63 characters of `a-z 0-9 -`, starting and ending
    /// with a letter or digit (a Kubernetes name label).
    pub name: String,
    /// The job it runs. Its `task_id` is made from the workflow's and the node's name; an empty
    /// `task_tracker_node_group` is the workflow's. It runs once its predecessors ended (no
    /// schedule of its own), and it is neither sharded, broadcast nor a workflow.
    pub spec: JobSpec,
    /// Set by a retry of a workflow run: the node succeeded in the run retried, with this
    /// output (at most [`MAX_OUTPUT_BYTES`]); it is not run again, and its successors get its
    /// output as if it had just run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_output: Option<String>,
}

/// An edge of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The predecessor's name.
    pub from: String,
    /// The successor's name.
    pub to: String,
    /// Which ends of `from` let `to` run.
    #[serde(default)]
    pub on: EdgeOn,
}

/// Which ends of a predecessor let its successor run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EdgeOn {
    /// It succeeded.
    #[default]
    Success,
    /// It failed (retries spent, timed out, or its runs lost).
    Failure,
    /// It ended in any way: succeeded, failed, cancelled or skipped.
    Always,
}

impl EdgeOn {
    /// Its name: `success`, `failure`, `always`.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeOn::Success => "success",
            EdgeOn::Failure => "failure",
            EdgeOn::Always => "always",
        }
    }

    /// Whether a predecessor that ended `state` lets the successor run.
    pub fn admits(self, state: JobState) -> bool {
        match self {
            EdgeOn::Success => state == JobState::Succeeded,
            EdgeOn::Failure => state == JobState::Failed,
            EdgeOn::Always => state.is_final(),
        }
    }
}

impl fmt::Display for EdgeOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EdgeOn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [EdgeOn::Success, EdgeOn::Failure, EdgeOn::Always]
            .into_iter()
            .find(|on| on.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown edge condition {s:?}; expected success, failure or always")
            })
    }
}

/// A predecessor of a node, as the node's job keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    /// The predecessor's index in the workflow (its shard index).
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Which of its ends let this node run.
    pub on: EdgeOn,
}

/// Which node of which workflow a job is, with the graph around it: set when the workflow's
/// claim creates the node's job, never changed. The workflow and the index are in the job's
/// [`crate::Shard`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOf {
    /// The node's name.
    pub name: String,
    /// Its predecessors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<Need>,
    /// The indexes of its successors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next: Vec<u32>,
    /// A `failure` or `always` edge leads out of it: its failure does not fail the workflow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handles_failure: bool,
}

impl Workflow {
    /// The node indexes in an order where every node comes after its predecessors (Kahn's
    /// algorithm over [`Workflow::plan`]); nodes on a cycle are left out.
    pub fn topological_order(plan: &[NodeOf]) -> Vec<usize> {
        let mut waiting: Vec<usize> = plan.iter().map(|p| p.needs.len()).collect();
        let mut ready: std::collections::VecDeque<usize> =
            (0..plan.len()).filter(|&i| waiting[i] == 0).collect();
        let mut order = Vec::with_capacity(plan.len());
        while let Some(i) = ready.pop_front() {
            order.push(i);
            for &j in &plan[i].next {
                let j = j as usize;
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    ready.push_back(j);
                }
            }
        }
        order
    }

    /// Each node's place in the graph, in node order. Assumes the graph passed [`check`]
    /// (names unique and known); an edge naming an unknown node is left out.
    pub fn plan(&self) -> Vec<NodeOf> {
        let index: HashMap<&str, u32> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i as u32))
            .collect();
        let mut plan: Vec<NodeOf> = self
            .nodes
            .iter()
            .map(|n| NodeOf {
                name: n.name.clone(),
                needs: Vec::new(),
                next: Vec::new(),
                handles_failure: false,
            })
            .collect();
        for e in &self.edges {
            let (Some(&from), Some(&to)) = (index.get(e.from.as_str()), index.get(e.to.as_str()))
            else {
                continue;
            };
            plan[to as usize].needs.push(Need {
                index: from,
                name: e.from.clone(),
                on: e.on,
            });
            let pred = &mut plan[from as usize];
            pred.next.push(to);
            pred.handles_failure |= e.on != EdgeOn::Success;
        }
        plan
    }

    /// The spec node `i`'s job runs with, for the workflow `parent` (its task id and node
    /// group fill in the node's).
    pub fn node_spec(&self, i: usize, parent: &JobSpec) -> JobSpec {
        let node = &self.nodes[i];
        let mut spec = node.spec.clone();
        spec.task_id = format!("{}/{}", parent.task_id, node.name);
        if spec.task_tracker_node_group.is_empty() {
            spec.task_tracker_node_group = parent.task_tracker_node_group.clone();
        }
        spec.submit_node_group = parent.submit_node_group.clone();
        spec
    }
}

/// The spec of a retry of the ended workflow `wf` whose last run's nodes are `nodes`: a
/// one-off workflow `<task>-retry` (the task id cut at an instance's `~`) whose succeeded
/// nodes are kept with their outputs ([`WorkflowNode::kept_output`]), so that only the failed,
/// skipped and cancelled ones run again; and how many are kept. Only a `FAILED` or
/// `CANCELLED` workflow is retried; anything else is refused with the reason.
pub fn retry_spec(wf: &crate::Job, nodes: &[crate::Job]) -> Result<(JobSpec, usize), String> {
    use crate::{ConcurrencyPolicy, JobState, Schedule};
    let Some(graph) = &wf.spec.workflow else {
        return Err(format!("job {} is not a workflow", wf.job_id));
    };
    if !matches!(wf.state, JobState::Failed | JobState::Cancelled) {
        return Err(format!(
            "workflow {} is {}: only a failed or cancelled workflow is retried",
            wf.job_id, wf.state
        ));
    }
    let mut graph = graph.clone();
    let mut kept = 0;
    for n in nodes.iter().filter(|n| n.state == JobState::Succeeded) {
        let Some(name) = n.node.as_ref().map(|o| &o.name) else {
            continue;
        };
        if let Some(node) = graph.nodes.iter_mut().find(|g| &g.name == name) {
            let mut output = n.last_message.clone().unwrap_or_default();
            crate::limits::truncate(&mut output, MAX_OUTPUT_BYTES);
            node.kept_output = Some(output);
            kept += 1;
        }
    }
    let base = wf.spec.task_id.split('~').next().unwrap_or_default();
    let base: String = base
        .chars()
        .take(crate::validate::MAX_TASK_ID_LEN - 6)
        .collect();
    let mut spec = wf.spec.clone();
    spec.task_id = format!("{base}-retry");
    spec.schedule = Schedule::Now;
    spec.rely_on_prev_cycle = false;
    spec.concurrency_policy = ConcurrencyPolicy::Allow;
    spec.max_concurrent = None;
    spec.replace_on_exist = false;
    spec.idempotency_key = None;
    spec.workflow = Some(graph);
    crate::validate(&spec).map_err(|v| v.to_string())?;
    Ok((spec, kept))
}

/// The place a problem with edge `i` of a workflow names, when the edges were written in
/// several places (a node's `after` list and an `edges` list, say): `origins[i]` is where
/// edge `i` came from. A field `workflow.edges[i]…` becomes `origins[i]`, with the rest of the
/// path (`.from`, `.to`) kept only for an origin that is an edge of its own (not a name in an
/// `after` list); any other field is `None`.
pub fn edge_origin(field: &str, origins: &[String]) -> Option<String> {
    let rest = field.strip_prefix("workflow.edges[")?;
    let (index, rest) = rest.split_once(']')?;
    let origin = origins.get(index.parse::<usize>().ok()?)?;
    Some(match origin.contains(".after[") {
        true => origin.clone(),
        false => format!("{origin}{rest}"),
    })
}

/// Why a node name is not allowed, if it is not.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NODE_NAME_LEN {
        return Some(format!(
            "must be 1..={MAX_NODE_NAME_LEN} characters (got {})",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!(
            "{c:?} is not allowed (lower-case letters, digits and '-')"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("must start and end with a letter or digit".into());
    }
    None
}

/// Checks the workflow of `spec` (submitted at `now_ms`): its size, its nodes' names and
/// specs, its edges (known names, no self-edge, none twice, fan-in bounded) and that they form
/// no cycle. Problems are named by field path (`workflow.nodes[2].name`, `workflow.edges[0].to`).
pub fn check(spec: &JobSpec, wf: &Workflow, now_ms: i64, out: &mut Vec<FieldViolation>) {
    if wf.nodes.is_empty() || wf.nodes.len() > MAX_NODES {
        out.push(FieldViolation::new(
            "workflow.nodes",
            format!("must have 1..={MAX_NODES} nodes (got {})", wf.nodes.len()),
        ));
        if wf.nodes.len() > MAX_NODES {
            return;
        }
    }
    if wf.edges.len() > MAX_EDGES {
        out.push(FieldViolation::new(
            "workflow.edges",
            format!("at most {MAX_EDGES} edges (got {})", wf.edges.len()),
        ));
        return;
    }
    for (field, reason) in [
        (spec.shards.is_some(), "shards"),
        (spec.broadcast, "broadcast"),
        (!spec.affinity.is_empty(), "affinity"),
        (spec.route_key.is_some(), "route_key"),
        (spec.map_reduce.is_some(), "map_reduce"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, f)| (f, "a workflow runs its nodes: set it on the nodes instead"))
    {
        out.push(FieldViolation::new(field, reason));
    }
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(wf.nodes.len());
    for (i, node) in wf.nodes.iter().enumerate() {
        let at = format!("workflow.nodes[{i}]");
        if let Some(why) = name_problem(&node.name) {
            out.push(FieldViolation::new(format!("{at}.name"), why));
        } else if let Some(first) = index.insert(&node.name, i) {
            out.push(FieldViolation::new(
                format!("{at}.name"),
                format!("{:?} is also the name of node {first}", node.name),
            ));
            index.insert(&node.name, first);
        }
        check_node_spec(&at, &node.spec, spec, wf, i, now_ms, out);
    }
    let mut prev: Vec<Vec<usize>> = vec![Vec::new(); wf.nodes.len()];
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); wf.nodes.len()];
    let mut seen: HashMap<(usize, usize), usize> = HashMap::with_capacity(wf.edges.len());
    for (i, e) in wf.edges.iter().enumerate() {
        let at = format!("workflow.edges[{i}]");
        let from = index.get(e.from.as_str()).copied();
        let to = index.get(e.to.as_str()).copied();
        for (end, name, found) in [("from", &e.from, from), ("to", &e.to, to)] {
            if found.is_none() {
                out.push(FieldViolation::new(
                    format!("{at}.{end}"),
                    format!("no node is named {name:?}"),
                ));
            }
        }
        let (Some(from), Some(to)) = (from, to) else {
            continue;
        };
        if from == to {
            out.push(FieldViolation::new(
                at,
                format!("node {:?} cannot follow itself", e.from),
            ));
            continue;
        }
        if let Some(first) = seen.insert((from, to), i) {
            out.push(FieldViolation::new(
                at,
                format!(
                    "{} -> {} is also edge {first}: one edge per pair of nodes",
                    e.from, e.to
                ),
            ));
            continue;
        }
        prev[to].push(from);
        next[from].push(to);
    }
    for (i, n) in prev.iter().map(Vec::len).enumerate() {
        if n > MAX_NEEDS {
            out.push(FieldViolation::new(
                format!("workflow.nodes[{i}]"),
                format!(
                    "{:?} has {n} predecessors; at most {MAX_NEEDS}",
                    wf.nodes[i].name
                ),
            ));
        }
    }
    if let Some(cycle) = find_cycle(&prev, &next) {
        let names: Vec<&str> = cycle.iter().map(|&i| wf.nodes[i].name.as_str()).collect();
        out.push(FieldViolation::new(
            "workflow.edges",
            format!("form a cycle: {}", names.join(" -> ")),
        ));
    }
}

/// The checks of one node's spec, as the job it becomes: problems named under `at.spec`.
fn check_node_spec(
    at: &str,
    node: &JobSpec,
    parent: &JobSpec,
    wf: &Workflow,
    i: usize,
    now_ms: i64,
    out: &mut Vec<FieldViolation>,
) {
    let mut derived = wf.node_spec(i, parent);
    // The derived task id may be longer than a submitted one may; the workflow's own was
    // checked, and the node's name is.
    derived.task_id = "node".into();
    if let Err(v) = crate::validate::validate_at(&derived, now_ms) {
        out.extend(
            v.0.into_iter()
                .map(|f| FieldViolation::new(format!("{at}.spec.{}", f.field), f.reason)),
        );
    }
    if let Some(kept) = &wf.nodes[i].kept_output
        && kept.len() > MAX_OUTPUT_BYTES
    {
        out.push(FieldViolation::new(
            format!("{at}.kept_output"),
            format!("at most {MAX_OUTPUT_BYTES} bytes (got {})", kept.len()),
        ));
    }
    let refused = [
        (
            node.schedule != crate::Schedule::Now,
            "schedule",
            "a node runs when its predecessors ended: leave it unset (schedule the workflow)",
        ),
        (
            node.shards.is_some() || node.broadcast,
            "shards",
            "a node runs as one job: sharded and broadcast nodes are not supported",
        ),
        (node.workflow.is_some(), "workflow", "workflows do not nest"),
        (
            node.map_reduce.is_some(),
            "map_reduce",
            "a node runs as one job: map-reduce nodes are not supported",
        ),
        (
            node.need_feedback,
            "need_feedback",
            "a node sends no feedback: ask for the workflow's",
        ),
        (
            node.replace_on_exist,
            "replace_on_exist",
            "a node's job is the workflow's to make",
        ),
        (
            node.idempotency_key.is_some(),
            "idempotency_key",
            "a node's job is the workflow's to make",
        ),
    ];
    for (bad, field, reason) in refused {
        if bad {
            out.push(FieldViolation::new(format!("{at}.spec.{field}"), reason));
        }
    }
}

/// A cycle of the graph (`prev[i]`, `next[i]`: where edges into and out of `i` come from and
/// lead), as node indexes in edge order with the first repeated at the end; `None` if it has
/// none. Kahn's algorithm, then a walk among the nodes it could not order: O(nodes + edges).
fn find_cycle(prev: &[Vec<usize>], next: &[Vec<usize>]) -> Option<Vec<usize>> {
    let mut waiting: Vec<usize> = prev.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..prev.len()).filter(|&i| waiting[i] == 0).collect();
    let mut ordered = 0;
    while let Some(i) = ready.pop() {
        ordered += 1;
        for &j in &next[i] {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push(j);
            }
        }
    }
    if ordered == prev.len() {
        return None;
    }
    // Each node left unordered has a predecessor left unordered: walking back along such
    // predecessors must come round to a node already passed.
    let left = |i: usize| waiting[i] > 0;
    let mut i = (0..prev.len()).find(|&i| left(i))?;
    let mut at_step: HashMap<usize, usize> = HashMap::new();
    let mut path = Vec::new();
    loop {
        if let Some(&step) = at_step.get(&i) {
            let mut cycle = path[step..].to_vec();
            cycle.push(i);
            cycle.reverse();
            return Some(cycle);
        }
        at_step.insert(i, path.len());
        path.push(i);
        i = prev[i].iter().copied().find(|&p| left(p))?;
    }
}

/// What a waiting node does now that its predecessors ended: runs (with their outputs), or is
/// skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every edge into it admits its predecessor's end: it is queued, due now, with these
    /// parameters added (`output.<pred>`: each successful predecessor's final message).
    Run {
        /// The parameters to add.
        outputs: BTreeMap<String, String>,
    },
    /// An edge into it does not admit its predecessor's end: it is skipped, for this reason.
    Skip(String),
}

/// What the waiting node `node` does now, given its predecessors as stored (`preds`, any
/// order; the node's [`NodeOf::needs`] name them by shard index): `None` while one of them is
/// unfinished or not found.
pub fn readiness(node: &Job, preds: &[&Job]) -> Option<Verdict> {
    let of = node.node.as_ref()?;
    let by_index: HashMap<u32, &Job> = preds
        .iter()
        .filter_map(|p| p.shard.as_ref().map(|s| (s.index, *p)))
        .collect();
    let mut outputs = BTreeMap::new();
    let mut skip = None;
    for need in &of.needs {
        let pred = by_index.get(&need.index)?;
        if !pred.state.is_final() {
            return None;
        }
        if skip.is_none() && !need.on.admits(pred.state) {
            skip = Some(format!(
                "skipped: it runs after {} {}, which ended {}",
                need.name,
                match need.on {
                    EdgeOn::Success => "succeeds",
                    EdgeOn::Failure => "fails",
                    EdgeOn::Always => "ends",
                },
                pred.state
            ));
        }
        if pred.state == JobState::Succeeded
            && let Some(message) = pred.last_message.as_deref().filter(|m| !m.is_empty())
        {
            let mut output = message.to_string();
            crate::limits::truncate(&mut output, MAX_OUTPUT_BYTES);
            outputs.insert(output_param(&need.name), output);
        }
    }
    Some(match skip {
        Some(why) => Verdict::Skip(why),
        None => Verdict::Run { outputs },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nodes: &[&str], edges: &[(&str, &str)]) -> JobSpec {
        let mut spec = JobSpec::new("wf", "g");
        spec.workflow = Some(Workflow {
            nodes: nodes
                .iter()
                .map(|n| WorkflowNode {
                    name: n.to_string(),
                    spec: JobSpec::default(),
                    kept_output: None,
                })
                .collect(),
            edges: edges
                .iter()
                .map(|(from, to)| Edge {
                    from: from.to_string(),
                    to: to.to_string(),
                    on: EdgeOn::Success,
                })
                .collect(),
        });
        spec
    }

    fn problems(spec: &JobSpec) -> Vec<String> {
        match crate::validate::validate_at(spec, 1_800_000_000_000) {
            Ok(()) => Vec::new(),
            Err(v) => v.0.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn a_cycle_is_refused_and_named() {
        let s = spec(
            &["a", "b", "c", "d"],
            &[("a", "b"), ("b", "c"), ("c", "b"), ("c", "d")],
        );
        assert_eq!(problems(&s), ["workflow.edges: form a cycle: b -> c -> b"]);
        let s = spec(&["a", "b", "c"], &[("a", "b"), ("b", "c"), ("c", "a")]);
        let got = problems(&s);
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("workflow.edges: form a cycle: "),
            "{got:?}"
        );
        // Every node of the cycle is named, first and last the same.
        let cycle: Vec<&str> = got[0].rsplit(": ").next().unwrap().split(" -> ").collect();
        assert_eq!(
            (cycle.len(), cycle.first(), cycle.last()),
            (4, cycle.last(), cycle.first())
        );
    }

    #[test]
    fn unknown_names_duplicates_and_bad_nodes_are_named() {
        let s = spec(&["a", "a", "Bad_name"], &[("a", "x"), ("a", "a")]);
        let got = problems(&s);
        assert!(
            got.contains(&"workflow.nodes[1].name: \"a\" is also the name of node 0".into()),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("workflow.nodes[2].name: 'B' is not allowed")),
            "{got:?}"
        );
        assert!(
            got.contains(&"workflow.edges[0].to: no node is named \"x\"".into()),
            "{got:?}"
        );
        assert!(
            got.contains(&"workflow.edges[1]: node \"a\" cannot follow itself".into()),
            "{got:?}"
        );
        let mut s = spec(&["a", "b"], &[("a", "b"), ("a", "b")]);
        assert_eq!(
            problems(&s),
            ["workflow.edges[1]: a -> b is also edge 0: one edge per pair of nodes"]
        );
        let wf = s.workflow.as_mut().unwrap();
        wf.edges.pop();
        wf.nodes[1].spec.shards = Some(2);
        wf.nodes[1].spec.max_retries = 5000;
        wf.nodes[1].spec.task_tracker_node_group = "no spaces".into();
        let got = problems(&s);
        assert!(
            got.iter()
                .any(|p| p.starts_with("workflow.nodes[1].spec.shards:")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("workflow.nodes[1].spec.max_retries:")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("workflow.nodes[1].spec.task_tracker_node_group:")),
            "{got:?}"
        );
        let mut s = spec(&[], &[]);
        s.shards = Some(3);
        let got = problems(&s);
        assert!(
            got.iter()
                .any(|p| p.starts_with("workflow.nodes: must have 1..=20000")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("shards: a workflow runs its nodes")),
            "{got:?}"
        );
    }

    #[test]
    fn a_long_chain_is_checked_and_planned_without_recursion() {
        let names: Vec<String> = (0..MAX_NODES).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let edges: Vec<(&str, &str)> = refs.windows(2).map(|w| (w[0], w[1])).collect();
        let s = spec(&refs, &edges);
        assert_eq!(problems(&s), Vec::<String>::new());
        let plan = s.workflow.as_ref().unwrap().plan();
        assert_eq!(plan.len(), MAX_NODES);
        assert!(plan[0].needs.is_empty());
        assert_eq!(plan[0].next, [1]);
        assert_eq!(plan[MAX_NODES - 1].needs[0].index, MAX_NODES as u32 - 2);
        // One node too many is refused, without checking each.
        let mut s = s;
        let wf = s.workflow.as_mut().unwrap();
        wf.nodes.push(WorkflowNode {
            name: "extra".into(),
            spec: JobSpec::default(),
            kept_output: None,
        });
        let got = problems(&s);
        assert_eq!(got.len(), 1, "{got:?}");
    }

    #[test]
    fn fan_in_is_bounded() {
        let names: Vec<String> = (0..=MAX_NEEDS).map(|i| format!("n{i}")).collect();
        let mut refs: Vec<&str> = names.iter().map(String::as_str).collect();
        refs.push("sink");
        let edges: Vec<(&str, &str)> = refs[..=MAX_NEEDS].iter().map(|n| (*n, "sink")).collect();
        let got = problems(&spec(&refs, &edges));
        assert_eq!(
            got,
            [format!(
                "workflow.nodes[{}]: \"sink\" has 1001 predecessors; at most 1000",
                MAX_NEEDS + 1
            )]
        );
    }

    #[test]
    fn an_edge_problem_names_where_the_edge_was_written() {
        let origins = ["nodes[1].after[0]".to_string(), "edges[0]".to_string()];
        assert_eq!(
            edge_origin("workflow.edges[0].from", &origins).as_deref(),
            Some("nodes[1].after[0]")
        );
        assert_eq!(
            edge_origin("workflow.edges[1].to", &origins).as_deref(),
            Some("edges[0].to")
        );
        assert_eq!(edge_origin("workflow.edges", &origins), None);
        assert_eq!(edge_origin("workflow.edges[7].to", &origins), None);
        assert_eq!(edge_origin("workflow.nodes[0].name", &origins), None);
    }

    #[test]
    fn an_edge_condition_parses_and_admits_its_ends() {
        assert_eq!("Failure".parse::<EdgeOn>(), Ok(EdgeOn::Failure));
        assert!(
            "sometimes"
                .parse::<EdgeOn>()
                .unwrap_err()
                .contains("\"sometimes\"")
        );
        assert!(EdgeOn::Always.admits(JobState::Skipped));
        assert!(!EdgeOn::Failure.admits(JobState::Cancelled));
        assert!(!EdgeOn::Success.admits(JobState::Skipped));
    }
}
