//! The runners of the `lts-worker` sidecar: they make any program a TaskTracker.
//!
//! # The contract for program authors
//!
//! **`--exec CMD`** runs `sh -c CMD` once per job.
//!
//! * stdin: the job as JSON ([`JobPayload`]), then end of file;
//! * environment: every parameter as `LTS_PARAM_<NAME>` (the key upper-cased, every character
//!   other than `A-Z`, `0-9` and `_` replaced by `_`), plus `LTS_JOB_ID`, `LTS_TASK_ID`,
//!   `LTS_ATTEMPT`, `LTS_NODE_GROUP`, and `LTS_SHARD_INDEX` and `LTS_SHARD_COUNT` (`0` and `1`
//!   for a job that is not sharded), and `LTS_ROUTE_KEY` for a job with a route key;
//! * exit code: `0` → `SUCCESS`, `75` (`EX_TEMPFAIL`) → `LATER` (retried while the job has
//!   retries left), anything else → `FAILED`; killed by a signal → `EXCEPTION`;
//! * every stdout line becomes an INFO business-log line, every stderr line a WARN line
//!   (bounded: `--max-log-lines` lines a run, the first half and the last half kept with a
//!   note between; a line over `--max-log-line-bytes` is cut with a marker; output that is not
//!   UTF-8 is replaced, never fatal);
//! * the job's timeout (`--timeout`) or a cancellation kills the process: `EXCEPTION`;
//! * a map-reduce job's run maps one item per stdout line `lts:map ITEM` (read as they come,
//!   stored in calls of up to 1,000; while the store catches up, the program's writes wait);
//!   a child gets `LTS_MAP_ITEM` and `LTS_MAP_INDEX`, the reduce step `LTS_REDUCE=1` and every
//!   child's result in its payload's `map_results`.
//!
//! **`--http URL`** POSTs the job as JSON ([`JobPayload`], headers `x-lts-job-id` and
//! `x-lts-attempt`) to the program, usually the app container next to the sidecar on
//! localhost.
//!
//! * `2xx` with an empty body → `SUCCESS`;
//! * `2xx` with a JSON body `{"outcome": "SUCCESS"|"FAILED"|"LATER"|"EXCEPTION",
//!   "message": "...", "logs": ["line", {"level": "WARN", "message": "line"}]}` → that outcome
//!   (default `SUCCESS`), message and business-log lines; a body that is not such JSON is
//!   ignored with a WARN line (the program did succeed);
//! * `429` or `503` → `LATER`; any other status → `FAILED` (with the status and the start of
//!   the body);
//! * the program not reachable (connection refused) → `LATER`;
//! * no answer within `--timeout` → `EXCEPTION`;
//! * a `2xx` body larger than `--max-answer-bytes` (default 8 MiB) → `FAILED`, unread;
//! * a map-reduce job's run maps the items of `"map": ["item", ...]` in a successful answer.
//!
//! In both modes what a run reports is bounded (`--max-result-message-bytes`,
//! `--max-log-lines`, `--max-log-line-bytes`), and a result is kept under the tracker's
//! message limit by dropping its log lines with a note: the outcome always arrives.

pub mod exec;
pub mod http;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::JobRunner;
use crate::runner::JobContext;

pub use exec::ExecRunner;
pub use http::HttpRunner;

/// The job as a program receives it (stdin for `--exec`, the request body for `--http`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPayload {
    /// Tracker-assigned id, stable across retries.
    pub job_id: String,
    /// The business key.
    pub task_id: String,
    /// The TaskTracker node group.
    pub task_tracker_node_group: String,
    /// 1 on the first run.
    pub attempt: u32,
    /// The job's parameters.
    pub params: BTreeMap<String, String>,
    /// The job's priority.
    pub priority: i32,
    /// For cron/repeat jobs: the fire time this run belongs to (Unix epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_fire_ms: Option<i64>,
    /// For a shard run of a sharded job: this shard's index (`0..shard_count`).
    pub shard_index: u32,
    /// How many shards the job runs as (1 for a job that is not sharded).
    pub shard_count: u32,
    /// For a child of a map-reduce job: its item's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_index: Option<u32>,
    /// For a child of a map-reduce job: its item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_item: Option<String>,
    /// For a map-reduce job's reduce step: `true`, with every child's result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reduce: bool,
    /// For the reduce step: every child's result, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub map_results: Vec<MapResultPayload>,
}

/// A child's result as the reduce step's payload holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapResultPayload {
    /// The item's index.
    pub index: u32,
    /// How it ended: `SUCCEEDED`, `FAILED`, `CANCELLED`.
    pub state: String,
    /// Its message: its output when it succeeded.
    pub message: String,
    /// Its item.
    pub item: String,
}

/// The most bytes of children's results a reduce step's payload may carry; past it the step
/// fails with the reason (read the results through the SDK's `JobContext::map_results`
/// instead).
pub const MAX_RESULTS_PAYLOAD_BYTES: usize = 64 << 20;

/// What starts a standard-output line (`--exec`) that maps an item: the text after it becomes
/// a child job of a map-reduce job.
pub const MAP_PREFIX: &str = "lts:map ";

impl JobPayload {
    /// The payload of a run, with the children's results for a reduce step (read from the
    /// tracker); `Err` is the run's result when they cannot be read.
    pub async fn for_run(ctx: &JobContext) -> Result<JobPayload, crate::RunResult> {
        let mut payload = JobPayload::from_context(ctx);
        if ctx.is_reduce() {
            // Read no further than the payload may carry.
            let results = match ctx.map_results_within(MAX_RESULTS_PAYLOAD_BYTES).await {
                Ok(r) => r,
                Err(crate::ClientError::FailedPrecondition(why)) => {
                    return Err(crate::RunResult::failed(format!(
                        "a reduce step's payload carries at most {MAX_RESULTS_PAYLOAD_BYTES} \
                         bytes of results: {why}"
                    )));
                }
                Err(e) => {
                    return Err(crate::RunResult::later(format!(
                        "cannot read the children's results: {e}"
                    )));
                }
            };
            payload.map_results = results
                .into_iter()
                .map(|r| MapResultPayload {
                    index: r.index,
                    state: r.state.to_string(),
                    message: r.message,
                    item: r.item,
                })
                .collect();
        }
        Ok(payload)
    }

    /// The payload of a run, without children's results.
    pub fn from_context(ctx: &JobContext) -> JobPayload {
        JobPayload {
            job_id: ctx.job.job_id.clone(),
            task_id: ctx.job.spec.task_id.clone(),
            task_tracker_node_group: ctx.job.spec.task_tracker_node_group.clone(),
            attempt: ctx.attempt,
            params: ctx.job.spec.params.clone(),
            priority: ctx.job.spec.priority,
            scheduled_fire_ms: ctx.job.scheduled_fire_ms,
            shard_index: ctx.shard_index(),
            shard_count: ctx.shard_count(),
            map_index: match ctx.job.map {
                Some(lts_core::model::MapOf::Child { index }) => Some(index),
                _ => None,
            },
            map_item: ctx.map_item().map(str::to_string),
            reduce: ctx.is_reduce(),
            map_results: Vec::new(),
        }
    }
}

/// Maps `items` for the run of `ctx`; `Err` is the run's result when that fails: `FAILED` for
/// a job that may not map (not a map-reduce job, past its budget), `LATER` otherwise.
pub(crate) async fn map_items(
    ctx: &JobContext,
    items: Vec<String>,
) -> Result<(), crate::RunResult> {
    match ctx.map(items).await {
        Ok(_) => Ok(()),
        Err(e @ (crate::ClientError::FailedPrecondition(_) | crate::ClientError::Invalid(_))) => {
            Err(crate::RunResult::failed(format!("map refused: {e}")))
        }
        Err(e) => Err(crate::RunResult::later(format!("map failed: {e}"))),
    }
}

/// How the sidecar hands jobs to the program.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "mode", required = true, multiple = false)]
pub struct SidecarArgs {
    /// Run `sh -c CMD` per job.
    #[arg(long, env = "LTS_EXEC", group = "mode")]
    pub exec: Option<String>,
    /// POST each job to this URL.
    #[arg(long, env = "LTS_HTTP", group = "mode")]
    pub http: Option<String>,
    /// Seconds one job may take.
    #[arg(long, env = "LTS_JOB_TIMEOUT", default_value_t = 600)]
    pub timeout: u64,
    /// `--http`: the largest answer body read, in bytes; a successful answer with a larger
    /// body ends the run FAILED.
    #[arg(long, env = "LTS_MAX_ANSWER_BYTES", default_value_t = http::DEFAULT_MAX_ANSWER_BYTES)]
    pub max_answer_bytes: usize,
}

/// The runner the arguments ask for.
pub fn runner_from_args(args: &SidecarArgs) -> anyhow::Result<Arc<dyn JobRunner>> {
    if args.timeout == 0 {
        anyhow::bail!("--timeout: must be at least 1 second");
    }
    let timeout = Duration::from_secs(args.timeout);
    match (&args.exec, &args.http) {
        (Some(cmd), None) => {
            if cmd.trim().is_empty() {
                anyhow::bail!("--exec: the command is empty");
            }
            Ok(Arc::new(ExecRunner::new(cmd.clone(), timeout)))
        }
        (None, Some(url)) => {
            if args.max_answer_bytes == 0 {
                anyhow::bail!("--max-answer-bytes: must be at least 1");
            }
            Ok(Arc::new(
                HttpRunner::new(url.clone(), timeout)?.max_answer_bytes(args.max_answer_bytes),
            ))
        }
        _ => anyhow::bail!("give exactly one of --exec CMD or --http URL"),
    }
}

/// Cuts a message to at most `max` characters.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use lts_core::{Job, JobSpec, JobState};
    use tokio_util::sync::CancellationToken;

    use crate::runner::{BizLogger, JobContext};

    /// A context for a job with the given params.
    pub fn ctx(task_id: &str, params: &[(&str, &str)]) -> JobContext {
        let mut spec = JobSpec::new(task_id, "sidecar");
        for (k, v) in params {
            spec = spec.param(*k, *v);
        }
        JobContext {
            job: Job {
                state: JobState::Running,
                attempt: 1,
                fire_count: 1,
                ..Job::new(format!("job-{task_id}"), spec)
            },
            attempt: 1,
            logger: BizLogger::default(),
            cancel: CancellationToken::new(),
            mapper: None,
        }
    }
}
