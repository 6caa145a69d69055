//! What a user implements to run jobs: [`JobRunner`], and what it gets: [`JobContext`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use lts_core::limits::{LineBudget, ReportLimits};
use lts_core::{BizLine, Job, LogLevel, Outcome, now_ms};
use tokio_util::sync::CancellationToken;

/// The result of one run, as a runner returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// SUCCESS, FAILED, LATER or EXCEPTION.
    pub outcome: Outcome,
    /// A short message stored with the result and sent as feedback.
    pub message: String,
}

impl RunResult {
    /// Done.
    pub fn success(message: impl Into<String>) -> Self {
        RunResult {
            outcome: Outcome::Success,
            message: message.into(),
        }
    }

    /// Final failure; not retried.
    pub fn failed(message: impl Into<String>) -> Self {
        RunResult {
            outcome: Outcome::Failed,
            message: message.into(),
        }
    }

    /// Try again later (retried while the job has retries left).
    pub fn later(message: impl Into<String>) -> Self {
        RunResult {
            outcome: Outcome::Later,
            message: message.into(),
        }
    }

    /// Unexpected error (retried while the job has retries left).
    pub fn exception(message: impl Into<String>) -> Self {
        RunResult {
            outcome: Outcome::Exception,
            message: message.into(),
        }
    }

    /// Ran out of time (retried while the job has retries left). The TaskTracker reports this
    /// itself when a job's timeout passes; a runner with its own time limits may too.
    pub fn timeout(message: impl Into<String>) -> Self {
        RunResult {
            outcome: Outcome::Timeout,
            message: message.into(),
        }
    }
}

/// Business log of one run: lines go to the job log with the result.
///
/// Bounded as the run logs ([`ReportLimits`]): lines longer than the limit are cut with a
/// marker, and past the most lines a run may keep, the first half and the latest lines are
/// kept with a note of how many were dropped between — memory stays bounded however much a
/// run logs.
#[derive(Debug, Clone)]
pub struct BizLogger {
    lines: Arc<Mutex<LineBudget>>,
    limits: ReportLimits,
}

impl Default for BizLogger {
    fn default() -> Self {
        BizLogger::with_limits(ReportLimits::default())
    }
}

impl BizLogger {
    /// A logger bounded by `limits`.
    pub fn with_limits(limits: ReportLimits) -> BizLogger {
        BizLogger {
            lines: Arc::new(Mutex::new(LineBudget::new(limits))),
            limits,
        }
    }

    /// The bounds this logger keeps.
    pub fn limits(&self) -> ReportLimits {
        self.limits
    }

    /// Logs a line at `level`.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        let line = BizLine {
            time_ms: now_ms(),
            level,
            message: message.into(),
        };
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    /// Logs an INFO line.
    pub fn info(&self, message: impl Into<String>) {
        self.log(LogLevel::Info, message);
    }

    /// Logs a WARN line.
    pub fn warn(&self, message: impl Into<String>) {
        self.log(LogLevel::Warn, message);
    }

    /// Logs an ERROR line.
    pub fn error(&self, message: impl Into<String>) {
        self.log(LogLevel::Error, message);
    }

    /// Takes the lines logged so far (with the note of dropped lines, if any).
    pub fn take(&self) -> Vec<BizLine> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *lines, LineBudget::new(self.limits)).into_lines()
    }
}

/// Everything a runner knows about the job it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job as the tracker sent it.
    pub job: Job,
    /// Attempt number of this run (1 on the first run).
    pub attempt: u32,
    /// Business log: lines end up in the job log.
    pub logger: BizLogger,
    /// Cancelled when the run should stop early: the job's timeout passed, the job was
    /// cancelled or reassigned, or the TaskTracker is shutting down and the grace period ran
    /// out. A runner that watches it and returns soon after is the well-behaved one: past a
    /// timeout, the run gets [`crate::worker::CANCEL_GRACE`] to stop before it is abandoned.
    pub cancel: CancellationToken,
    /// The run's line to the tracker for a map-reduce job's map and results (`None` outside a
    /// TaskTracker, e.g. in a runner's unit tests).
    pub mapper: Option<crate::map::Mapper>,
}

impl JobContext {
    /// A map-reduce job's run maps `items`: each becomes a child job of the node group, run
    /// like any job (durable, retried), with the item as its param `map.item`
    /// ([`JobContext::map_item`]). Returns once the tracker stored them — the back-pressure of
    /// a run that maps faster than the store takes; the count is reported with the run's
    /// result, and the job ends once every child ended (then its reduce step, if it has one).
    pub async fn map(&self, items: Vec<String>) -> Result<u32, crate::ClientError> {
        match &self.mapper {
            _ if self.job.spec.map_reduce.is_none() => Err(crate::ClientError::FailedPrecondition(
                "the job is not a map-reduce job (its spec has no map_reduce)".into(),
            )),
            Some(m) => m.map(items).await,
            None => Err(crate::ClientError::FailedPrecondition(
                "this run has no tracker to map to".into(),
            )),
        }
    }

    /// A map child's item; `None` for a run that is not a child.
    pub fn map_item(&self) -> Option<&str> {
        match self.job.map {
            Some(lts_core::model::MapOf::Child { .. }) => {
                self.param(lts_core::model::MAP_ITEM_PARAM)
            }
            _ => None,
        }
    }

    /// Whether this run is a map-reduce job's reduce step.
    pub fn is_reduce(&self) -> bool {
        matches!(self.job.map, Some(lts_core::model::MapOf::Reduce { .. }))
    }

    /// The reduce step reads every child's result, by index: at most
    /// [`crate::map::MAX_RESULTS_BYTES`] of items and messages (a larger map is refused with
    /// the reason: read it with [`JobContext::map_results_page`]).
    pub async fn map_results(&self) -> Result<Vec<crate::map::ChildResult>, crate::ClientError> {
        self.map_results_within(crate::map::MAX_RESULTS_BYTES).await
    }

    /// [`JobContext::map_results`] with a bound of its own, in bytes.
    pub async fn map_results_within(
        &self,
        max_bytes: usize,
    ) -> Result<Vec<crate::map::ChildResult>, crate::ClientError> {
        match &self.mapper {
            Some(m) => m.results(max_bytes).await,
            None => Err(crate::ClientError::FailedPrecondition(
                "this run has no tracker to read results from".into(),
            )),
        }
    }

    /// One page of the children's results (in id order), for a reduce step over a map too
    /// large to hold at once; the token of the next page, if there is one.
    pub async fn map_results_page(
        &self,
        page_token: Option<String>,
    ) -> Result<(Vec<crate::map::ChildResult>, Option<String>), crate::ClientError> {
        match &self.mapper {
            Some(m) => m.results_page(page_token).await,
            None => Err(crate::ClientError::FailedPrecondition(
                "this run has no tracker to read results from".into(),
            )),
        }
    }

    /// The job's parameters.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.job.spec.params
    }

    /// One parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.job.spec.params.get(key).map(String::as_str)
    }

    /// The job's task id.
    pub fn task_id(&self) -> &str {
        &self.job.spec.task_id
    }

    /// For a shard run of a sharded job: this shard's index, `0..shard_count()`; `0` for a
    /// job that is not sharded.
    pub fn shard_index(&self) -> u32 {
        self.job.shard.as_ref().map_or(0, |s| s.index)
    }

    /// For a shard run of a sharded job: how many shards the job runs as; `1` for a job that
    /// is not sharded.
    pub fn shard_count(&self) -> u32 {
        self.job.shard.as_ref().map_or(1, |s| s.count)
    }

    /// The business logger.
    pub fn log(&self) -> &BizLogger {
        &self.logger
    }
}

/// Runs jobs. Implement this and hand it to [`crate::TaskTracker::builder`].
///
/// `run` may be called concurrently, up to the TaskTracker's `threads`. A panic inside `run` is
/// caught and reported as `EXCEPTION`.
#[async_trait]
pub trait JobRunner: Send + Sync + 'static {
    /// Runs one job and says how it went.
    async fn run(&self, ctx: JobContext) -> RunResult;
}

/// Any async closure `Fn(JobContext) -> Future<Output = RunResult>` is a runner.
#[async_trait]
impl<F, Fut> JobRunner for F
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = RunResult> + Send + 'static,
{
    async fn run(&self, ctx: JobContext) -> RunResult {
        (self)(ctx).await
    }
}
