//! `lts workflow submit|get`: a workflow from a YAML file, and its nodes' progress.
//!
//! The file names the workflow, its default node group, an optional schedule and its nodes;
//! edges come from each node's `after` (run after those succeeded) and from `edges` (with
//! `on: success|failure|always`):
//!
//! ```yaml
//! name: nightly-etl
//! nodeGroup: etl
//! cron: "0 0 2 * * *"
//! nodes:
//!   - name: extract
//!     params: { source: s3://bucket/in }
//!     maxRetries: 2
//!   - name: transform
//!     after: [extract]
//!     timeout: 30m
//!   - name: alert
//!     nodeGroup: ops
//! edges:
//!   - { from: transform, to: alert, on: failure }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use lts_core::workflow::{Edge, EdgeOn, Workflow, WorkflowNode};
use lts_core::{ConcurrencyPolicy, Job, JobKey, JobSpec, JobState, Schedule};
use lts_worker_sdk::SubmitAnswer;
use serde::{Deserialize, Serialize};

use crate::client_cmds::{ClientOpts, JobSelector};
use crate::error::{CliError, CliResult};
use crate::output::{OutputFormat, print_json, table, time};

/// `lts workflow …`.
#[derive(Debug, clap::Subcommand)]
pub enum WorkflowCommand {
    /// Submit a workflow from a YAML file.
    Submit(SubmitArgs),
    /// Show a workflow and each of its nodes (of its current or last run).
    Get(GetArgs),
    /// Run a failed (or cancelled) workflow again, keeping the nodes that succeeded: a new
    /// one-off workflow `<task>-retry` runs the other nodes, the kept ones' outputs handed on.
    Retry(RetryArgs),
}

/// `lts workflow retry`.
#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    #[command(flatten)]
    opts: ClientOpts,
    #[command(flatten)]
    job: JobSelector,
    /// Wait until the retry ends; exit 1 unless it succeeded.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long)]
    wait_timeout: Option<u64>,
}

/// `lts workflow submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// The workflow file (YAML; `-` reads standard input).
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Wait until the workflow ends; exit 1 unless it succeeded.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long)]
    wait_timeout: Option<u64>,
}

/// `lts workflow get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    opts: ClientOpts,
    #[command(flatten)]
    job: JobSelector,
    /// Show at most this many nodes.
    #[arg(long, default_value_t = 1_000)]
    limit: usize,
}

/// A workflow file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowFile {
    /// The workflow's task id (its nodes' are `name/node`).
    pub name: String,
    /// The TaskTracker node group that starts it, and its nodes' unless they name their own.
    pub node_group: String,
    /// The JobClient node group its feedback goes to (with `feedback`).
    #[serde(default)]
    pub submit_node_group: String,
    /// Send the workflow's end to `submitNodeGroup`.
    #[serde(default)]
    pub feedback: bool,
    /// Start it on this cron expression (with seconds) instead of now.
    #[serde(default)]
    pub cron: Option<String>,
    /// The cron's IANA time zone (default UTC).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// What a fire does while the previous run is unfinished: `allow`, `forbid`, `replace`.
    #[serde(default)]
    pub concurrency_policy: Option<String>,
    /// With `allow`: at most this many runs at once.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// A submit whose name an unfinished workflow has replaces it (else: a duplicate).
    #[serde(default)]
    pub replace_on_exist: bool,
    /// The nodes.
    pub nodes: Vec<NodeFile>,
    /// Edges besides the nodes' `after`.
    #[serde(default)]
    pub edges: Vec<EdgeFile>,
}

/// A node of a workflow file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeFile {
    /// Its name.
    pub name: String,
    /// Runs after these nodes succeeded.
    #[serde(default)]
    pub after: Vec<String>,
    /// Its TaskTracker node group (default: the workflow's).
    #[serde(default)]
    pub node_group: Option<String>,
    /// Parameters for its runner.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Retries after LATER/EXCEPTION/TIMEOUT.
    #[serde(default)]
    pub max_retries: u32,
    /// Lost runs it survives.
    #[serde(default)]
    pub max_lease_losses: Option<u32>,
    /// How long one run may take (`90s`, `10m`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Labels its TaskTracker must have.
    #[serde(default)]
    pub affinity: BTreeMap<String, String>,
    /// Nodes (and jobs) with the same route key run on the same TaskTracker.
    #[serde(default)]
    pub route_key: Option<String>,
}

/// An edge of a workflow file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeFile {
    /// The predecessor.
    pub from: String,
    /// The successor.
    pub to: String,
    /// `success` (default), `failure` or `always`.
    #[serde(default)]
    pub on: Option<String>,
}

impl WorkflowFile {
    /// The job spec that runs this workflow, checked; problems name their field.
    pub fn spec(&self) -> CliResult<JobSpec> {
        let mut problems = Vec::new();
        let schedule = match &self.cron {
            Some(expression) => Schedule::Cron {
                expression: expression.clone(),
                time_zone: self.time_zone.clone(),
            },
            None => Schedule::Now,
        };
        let concurrency_policy = match self.concurrency_policy.as_deref() {
            None | Some("allow") => ConcurrencyPolicy::Allow,
            Some("forbid") => ConcurrencyPolicy::Forbid,
            Some("replace") => ConcurrencyPolicy::Replace,
            Some(other) => {
                problems.push(format!(
                    "concurrencyPolicy: unknown policy {other:?}; expected allow, forbid or replace"
                ));
                ConcurrencyPolicy::Allow
            }
        };
        let mut nodes = Vec::with_capacity(self.nodes.len());
        let mut edges = Vec::new();
        // Where each edge was written, to name it in a problem.
        let mut origins = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let timeout_ms = match n.timeout.as_deref().map(lts_core::parse_duration_ms) {
                Some(Ok(ms)) => Some(ms.max(0) as u64),
                Some(Err(e)) => {
                    problems.push(format!("nodes[{i}].timeout: {e}"));
                    None
                }
                None => None,
            };
            let mut spec = JobSpec::new("", n.node_group.clone().unwrap_or_default());
            spec.params = n.params.clone();
            spec.priority = n.priority;
            spec.max_retries = n.max_retries;
            spec.max_lease_losses = n.max_lease_losses;
            spec.timeout_ms = timeout_ms;
            spec.affinity = n.affinity.clone();
            spec.route_key = n.route_key.clone();
            nodes.push(WorkflowNode {
                name: n.name.clone(),
                spec,
                kept_output: None,
            });
            for (k, from) in n.after.iter().enumerate() {
                edges.push(Edge {
                    from: from.clone(),
                    to: n.name.clone(),
                    on: EdgeOn::Success,
                });
                origins.push(format!("nodes[{i}].after[{k}]"));
            }
        }
        for (i, e) in self.edges.iter().enumerate() {
            let on = match e.on.as_deref().map(str::parse::<EdgeOn>) {
                None => EdgeOn::Success,
                Some(Ok(on)) => on,
                Some(Err(why)) => {
                    problems.push(format!("edges[{i}].on: {why}"));
                    EdgeOn::Success
                }
            };
            edges.push(Edge {
                from: e.from.clone(),
                to: e.to.clone(),
                on,
            });
            origins.push(format!("edges[{i}]"));
        }
        let mut spec = JobSpec::new(self.name.clone(), self.node_group.clone());
        spec.submit_node_group = self.submit_node_group.clone();
        spec.need_feedback = self.feedback;
        spec.schedule = schedule;
        spec.concurrency_policy = concurrency_policy;
        spec.max_concurrent = self.max_concurrent;
        spec.replace_on_exist = self.replace_on_exist;
        spec.workflow = Some(Workflow { nodes, edges });
        if let Err(v) = lts_core::validate(&spec) {
            problems.extend(v.0.iter().map(|f| {
                let field = lts_core::workflow::edge_origin(&f.field, &origins)
                    .or_else(|| f.field.strip_prefix("workflow.").map(file_field))
                    .unwrap_or_else(|| f.field.clone());
                format!("{field}: {}", f.reason)
            }));
        }
        match problems.is_empty() {
            true => Ok(spec),
            false => Err(CliError::Usage(problems.join("; "))),
        }
    }
}

/// A node's field as the file writes it: `nodes[1].spec.max_retries` → `nodes[1].maxRetries`.
fn file_field(field: &str) -> String {
    match field.split_once(".spec.") {
        Some((node, rest)) => {
            let mut camel = String::new();
            let mut upper = false;
            for c in rest.chars() {
                match c {
                    '_' => upper = true,
                    c if upper => {
                        camel.extend(c.to_uppercase());
                        upper = false;
                    }
                    c => camel.push(c),
                }
            }
            let camel = match camel.as_str() {
                "taskTrackerNodeGroup" => "nodeGroup".to_string(),
                _ => camel,
            };
            format!("{node}.{camel}")
        }
        None => field.to_string(),
    }
}

/// Reads and checks a workflow file.
pub fn read_file(path: &std::path::Path) -> CliResult<JobSpec> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| CliError::Usage(format!("--file {}: {e}", path.display())))?;
    let file: WorkflowFile = serde_yaml::from_str(&text)
        .map_err(|e| CliError::Usage(format!("--file {}: {e}", path.display())))?;
    file.spec()
        .map_err(|e| CliError::Usage(format!("--file {}: {e}", path.display())))
}

/// Runs `lts workflow …`.
pub async fn run(cmd: WorkflowCommand) -> CliResult {
    match cmd {
        WorkflowCommand::Submit(a) => submit(a).await,
        WorkflowCommand::Get(a) => get(a).await,
        WorkflowCommand::Retry(a) => retry(a).await,
    }
}

async fn retry(a: RetryArgs) -> CliResult {
    let client = a.opts.client().await?;
    let key = a.job.key()?;
    // The tracker builds the retry from the run's nodes (`WorkflowService.RetryWorkflow`).
    let (answer, kept, to_run) = client
        .retry_workflow(key.clone())
        .await
        .map_err(|e| match e {
            // Not a workflow, or not failed or cancelled: the reason, as a usage error.
            lts_worker_sdk::ClientError::FailedPrecondition(why) => CliError::Usage(why),
            e => a.opts.unavailable(e),
        })?;
    let job_id = match &answer {
        SubmitAnswer::Rejected(v) => return Err(CliError::Usage(v.to_string())),
        other => other.job_id().unwrap_or_default().to_string(),
    };
    let retried = client.get(key).await.map_err(|e| a.opts.unavailable(e))?;
    let waited = match a.wait {
        true => Some(
            client
                .wait(
                    JobKey::Id(job_id.clone()),
                    a.wait_timeout.map(Duration::from_secs),
                )
                .await
                .map_err(|e| a.opts.unavailable(e))?,
        ),
        false => None,
    };
    match a.opts.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "status": answer.status(),
            "job_id": job_id,
            "retry_of": retried.job_id,
            "kept": kept,
            "to_run": to_run,
            "job": waited,
        })),
        OutputFormat::Table => {
            println!(
                "{} workflow {job_id}, a retry of {} ({}): {kept} nodes kept, {to_run} to run",
                answer.status().to_ascii_lowercase(),
                retried.job_id,
                retried.spec.task_id,
            );
            if let Some(j) = &waited {
                println!("{}: {}", j.state, j.last_message.as_deref().unwrap_or(""));
            }
        }
    }
    ended_well(waited)
}

/// Submits a workflow and, with `wait`, waits for its end: the answer, the job id and the
/// job as it ended. A rejected spec is a usage error.
async fn submit_and_wait(
    client: &lts_worker_sdk::JobClient,
    opts: &ClientOpts,
    spec: JobSpec,
    wait: bool,
    wait_timeout: Option<u64>,
) -> CliResult<(SubmitAnswer, String, Option<Job>)> {
    let answer = client
        .submit_workflow(spec)
        .await
        .map_err(|e| opts.unavailable(e))?;
    let job_id = match &answer {
        SubmitAnswer::Rejected(v) => return Err(CliError::Usage(v.to_string())),
        other => other.job_id().unwrap_or_default().to_string(),
    };
    let waited = match wait {
        true => Some(
            client
                .wait(
                    JobKey::Id(job_id.clone()),
                    wait_timeout.map(Duration::from_secs),
                )
                .await
                .map_err(|e| opts.unavailable(e))?,
        ),
        false => None,
    };
    Ok((answer, job_id, waited))
}

/// The exit of a command that waited (or not) for a workflow: an error unless it succeeded.
fn ended_well(waited: Option<Job>) -> CliResult {
    match waited {
        Some(j) if j.state != JobState::Succeeded => Err(CliError::Failed(format!(
            "workflow {} ended {}",
            j.job_id, j.state
        ))),
        _ => Ok(()),
    }
}

#[derive(Serialize)]
struct SubmitOut<'a> {
    status: &'a str,
    job_id: &'a str,
    nodes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<&'a Job>,
}

async fn submit(a: SubmitArgs) -> CliResult {
    let spec = read_file(&a.file)?;
    let nodes = spec.workflow.as_ref().map_or(0, |w| w.nodes.len());
    let client = a.opts.client().await?;
    let (answer, job_id, waited) =
        submit_and_wait(&client, &a.opts, spec.clone(), a.wait, a.wait_timeout).await?;
    match a.opts.output {
        OutputFormat::Json => print_json(&SubmitOut {
            status: answer.status(),
            job_id: &job_id,
            nodes,
            job: waited.as_ref(),
        }),
        OutputFormat::Table => {
            println!(
                "{} workflow {job_id} ({} → node group {}, {nodes} nodes)",
                answer.status().to_ascii_lowercase(),
                spec.task_id,
                spec.task_tracker_node_group
            );
            if let Some(j) = &waited {
                println!("{}: {}", j.state, j.last_message.as_deref().unwrap_or(""));
            }
        }
    }
    ended_well(waited)
}

async fn get(a: GetArgs) -> CliResult {
    let client = a.opts.client().await?;
    let wf = client
        .get(a.job.key()?)
        .await
        .map_err(|e| a.opts.unavailable(e))?;
    let Some(graph) = &wf.spec.workflow else {
        return Err(CliError::Usage(format!(
            "job {} is not a workflow (see `lts jobs get`)",
            wf.job_id
        )));
    };
    let nodes = match wf.attempt {
        0 => Vec::new(),
        _ => {
            let mut nodes = client
                .workflow_nodes(JobKey::Id(wf.job_id.clone()))
                .await
                .map_err(|e| a.opts.unavailable(e))?;
            nodes.truncate(a.limit);
            nodes
        }
    };
    if a.opts.output == OutputFormat::Json {
        print_json(&serde_json::json!({ "workflow": wf, "nodes": nodes }));
        return Ok(());
    }
    let progress = wf.shard_progress.unwrap_or_default();
    println!(
        "workflow {} ({}): {} — {} nodes: {} succeeded, {} failed, {} running, {} pending, {} skipped{}",
        wf.job_id,
        wf.spec.task_id,
        wf.state,
        graph.nodes.len(),
        progress.succeeded,
        progress.failed,
        progress.running,
        progress.pending,
        progress.skipped,
        wf.last_message
            .as_deref()
            .map(|m| format!("\n{m}"))
            .unwrap_or_default()
    );
    let mut t = table([
        "NODE", "STATE", "ATTEMPT", "AFTER", "FINISHED", "MESSAGE", "JOB ID",
    ]);
    for n in &nodes {
        let of = n.node.as_ref();
        let after = of
            .map(|o| {
                o.needs
                    .iter()
                    .map(|p| match p.on {
                        EdgeOn::Success => p.name.clone(),
                        on => format!("{} ({on})", p.name),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        t.add_row(vec![
            of.map_or("-".into(), |o| o.name.clone()),
            n.state.to_string(),
            n.attempt.to_string(),
            if after.is_empty() { "-".into() } else { after },
            time(n.finished_at_ms),
            n.last_message.clone().unwrap_or_else(|| "-".into()),
            n.job_id.clone(),
        ]);
    }
    if wf.attempt == 0 {
        println!("not started yet: due {}", time(Some(wf.trigger_time_ms)));
    } else {
        println!("{t}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workflow_file_becomes_a_checked_spec() {
        let yaml = r#"
name: etl
nodeGroup: workers
nodes:
  - name: extract
    maxRetries: 2
  - name: transform
    after: [extract]
    timeout: 10m
  - name: alert
    nodeGroup: ops
edges:
  - { from: transform, to: alert, on: failure }
"#;
        let file: WorkflowFile = serde_yaml::from_str(yaml).unwrap();
        let spec = file.spec().unwrap();
        let wf = spec.workflow.unwrap();
        assert_eq!(wf.nodes.len(), 3);
        assert_eq!(wf.nodes[1].spec.timeout_ms, Some(600_000));
        assert_eq!(wf.nodes[2].spec.task_tracker_node_group, "ops");
        assert_eq!(
            wf.edges,
            [
                Edge {
                    from: "extract".into(),
                    to: "transform".into(),
                    on: EdgeOn::Success
                },
                Edge {
                    from: "transform".into(),
                    to: "alert".into(),
                    on: EdgeOn::Failure
                }
            ]
        );
    }

    #[test]
    fn a_bad_workflow_file_names_the_field() {
        let cycle = r#"
name: etl
nodeGroup: workers
nodes:
  - { name: a, after: [b] }
  - { name: b, after: [a] }
  - { name: c, after: [nope] }
edges:
  - { from: a, to: c, on: sometimes }
"#;
        let file: WorkflowFile = serde_yaml::from_str(cycle).unwrap();
        let err = file.spec().unwrap_err().to_string();
        assert!(
            err.contains("edges[0].on: unknown edge condition \"sometimes\""),
            "{err}"
        );
        assert!(
            err.contains("nodes[2].after[0]: no node is named \"nope\""),
            "{err}"
        );
        assert!(err.contains("form a cycle"), "{err}");
        let unknown = "name: x\nnodeGroup: g\nnodes: []\ncolour: red\n";
        let err = serde_yaml::from_str::<WorkflowFile>(unknown)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }
}
