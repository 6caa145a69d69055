//! The client commands: `lts submit`, `lts jobs list|get|cancel`, `lts nodes`.

use std::collections::BTreeMap;
use std::time::Duration;

use lts_core::{
    ConcurrencyPolicy, Job, JobKey, JobSpec, JobState, MisfirePolicy, Schedule, ScheduleKind,
    now_ms, validate,
};
use lts_worker_sdk::{ListQuery, SubmitAnswer};
use serde::Serialize;

pub use crate::client_opts::ClientOpts;
use crate::error::{CliError, CliResult};
use crate::output::{self, OutputFormat, print_json, table, time};

/// `lts submit`: every job field as a flag.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// The business key (1–64 characters, unique per node group among unfinished jobs).
    #[arg(long)]
    task_id: String,
    /// The TaskTracker node group that runs it.
    #[arg(long)]
    node_group: String,
    /// The JobClient node group that gets the feedback.
    #[arg(long, default_value = "")]
    submit_node_group: String,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// A parameter `KEY=VALUE` (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Run only on TaskTrackers with this label, `KEY=VALUE` (repeatable: all of them).
    #[arg(long = "affinity", value_name = "KEY=VALUE")]
    affinity: Vec<String>,
    /// Jobs with the same route key run on the same worker of the node group while it stays
    /// connected (consistent hashing); when it leaves, its keys move to the others.
    #[arg(long)]
    route_key: Option<String>,
    /// Run as a map-reduce job: its run may map items, each run as a child job (the SDK's
    /// `ctx.map`); the job ends once every child ended.
    #[arg(long)]
    map_reduce: bool,
    /// With --map-reduce: run a reduce step after the children, whose outcome is the job's.
    #[arg(long, requires = "map_reduce")]
    reduce: bool,
    /// With --map-reduce: the most children the run may map [default: 100000].
    #[arg(long, requires = "map_reduce")]
    max_children: Option<u32>,
    /// Send the final result to the submit node group.
    #[arg(long)]
    feedback: bool,
    /// Retries after LATER/EXCEPTION.
    #[arg(long, default_value_t = 0)]
    max_retries: u32,
    /// Runs that may be lost (their worker died, froze or left without a result) before the
    /// job fails; counted apart from --max-retries [default: 3].
    #[arg(long)]
    max_lease_losses: Option<u32>,
    /// How long one run may take (`90s`, `10m`, `2h`); a run past it is cancelled and ends
    /// TIMEOUT, retried while --max-retries allows [default: no limit].
    #[arg(long)]
    timeout: Option<String>,
    /// Run once at this time: RFC 3339 (`2026-12-01T10:00:00Z`) or `+30s`, `+5m`, `+2h`, `+1d`.
    #[arg(long, group = "schedule")]
    trigger_time: Option<String>,
    /// Run on a cron expression with seconds: `sec min hour dom month dow [year]`.
    #[arg(long, group = "schedule")]
    cron: Option<String>,
    /// IANA time zone of --cron (default UTC).
    #[arg(long, requires = "cron")]
    time_zone: Option<String>,
    /// Run every DURATION (`500ms`, `10s`, `5m`, `1h`, or milliseconds).
    #[arg(long, group = "schedule")]
    repeat_interval: Option<String>,
    /// How many times to run with --repeat-interval (-1 = forever).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, requires = "repeat_interval")]
    repeat_count: i64,
    /// First run of --repeat-interval (same forms as --trigger-time; default now).
    #[arg(long, requires = "repeat_interval")]
    first_fire: Option<String>,
    /// For cron/repeat: the next run only after the current one ends.
    #[arg(long)]
    rely_on_prev_cycle: bool,
    /// Replace an unfinished job with the same task id instead of ignoring this one.
    #[arg(long = "replace")]
    replace_on_exist: bool,
    /// After missed fires: one catch-up run, or skip to the next time.
    #[arg(long, value_enum, default_value_t = Misfire::FireOnce)]
    misfire: Misfire,
    /// For cron/repeat whose runs may overlap: what a fire does while an earlier run is
    /// unfinished (allow: run alongside; forbid: skip the fire; replace: cancel the earlier
    /// runs).
    #[arg(long, value_enum, default_value_t = Concurrency::Allow)]
    concurrency: Concurrency,
    /// With `--concurrency allow`: at most this many runs at once (1..=10000); a fire while
    /// that many are unfinished is skipped.
    #[arg(long)]
    max_concurrent: Option<u32>,
    /// Run as this many shard runs (1..=10000), each with its index and the count, spread over
    /// the group's TaskTrackers; the job succeeds when every shard succeeded.
    #[arg(long)]
    shards: Option<u32>,
    /// Run once on every TaskTracker of the node group connected when it fires.
    #[arg(long, conflicts_with = "shards")]
    broadcast: bool,
    /// Wait for the final outcome and print it.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, requires = "wait")]
    wait_timeout: Option<u64>,
}

/// `--misfire` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Misfire {
    /// One catch-up run.
    FireOnce,
    /// Wait for the next scheduled time.
    Skip,
}

/// `--concurrency` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Concurrency {
    /// Run alongside earlier runs.
    Allow,
    /// Skip the fire while an earlier run is unfinished.
    Forbid,
    /// Cancel the earlier unfinished runs, then run.
    Replace,
}

/// Parses `KEY=VALUE`.
pub fn parse_param(s: &str) -> CliResult<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(CliError::Usage(format!(
            "--param: expected KEY=VALUE, got {s:?}"
        ))),
    }
}

/// Parses a duration in milliseconds: `500ms`, `10s`, `5m`, `2h`, `1d`, `1h30m`, or a plain
/// number of milliseconds ([`lts_core::duration::parse_duration_ms`]).
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    lts_core::duration::parse_duration_ms(s)
}

/// Parses an instant: RFC 3339 or `+DURATION` from `now_ms`.
pub fn parse_instant(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Some(rel) = s.strip_prefix('+') {
        return parse_duration_ms(rel).map(|d| now_ms + d);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!(
                "{s:?} is not a time: use RFC 3339 (2026-12-01T10:00:00Z) or +30s/+5m/+2h/+1d ({e})"
            )
        })
}

/// Builds and validates the job from the flags.
pub fn spec_from_args(a: &SubmitArgs, now: i64) -> CliResult<JobSpec> {
    let mut params = BTreeMap::new();
    for p in &a.params {
        let (k, v) = parse_param(p)?;
        params.insert(k, v);
    }
    let mut affinity = BTreeMap::new();
    for p in &a.affinity {
        let (k, v) = parse_param(p)
            .map_err(|_| CliError::Usage(format!("--affinity: expected KEY=VALUE, got {p:?}")))?;
        affinity.insert(k, v);
    }
    let schedule = if let Some(t) = &a.trigger_time {
        Schedule::TriggerAt {
            trigger_time_ms: parse_instant(t, now)
                .map_err(|e| CliError::Usage(format!("--trigger-time: {e}")))?,
        }
    } else if let Some(expr) = &a.cron {
        Schedule::Cron {
            expression: expr.clone(),
            time_zone: a.time_zone.clone(),
        }
    } else if let Some(every) = &a.repeat_interval {
        Schedule::Repeat {
            interval_ms: parse_duration_ms(every)
                .map_err(|e| CliError::Usage(format!("--repeat-interval: {e}")))?,
            count: a.repeat_count,
            first_fire_ms: a
                .first_fire
                .as_deref()
                .map(|f| parse_instant(f, now))
                .transpose()
                .map_err(|e| CliError::Usage(format!("--first-fire: {e}")))?,
        }
    } else {
        Schedule::Now
    };
    let spec = JobSpec {
        task_id: a.task_id.clone(),
        task_tracker_node_group: a.node_group.clone(),
        submit_node_group: a.submit_node_group.clone(),
        priority: a.priority,
        params,
        need_feedback: a.feedback,
        max_retries: a.max_retries,
        schedule,
        rely_on_prev_cycle: a.rely_on_prev_cycle,
        replace_on_exist: a.replace_on_exist,
        misfire_policy: match a.misfire {
            Misfire::FireOnce => MisfirePolicy::FireOnce,
            Misfire::Skip => MisfirePolicy::Skip,
        },
        concurrency_policy: match a.concurrency {
            Concurrency::Allow => ConcurrencyPolicy::Allow,
            Concurrency::Forbid => ConcurrencyPolicy::Forbid,
            Concurrency::Replace => ConcurrencyPolicy::Replace,
        },
        max_concurrent: a.max_concurrent,
        shards: a.shards,
        broadcast: a.broadcast,
        affinity,
        max_lease_losses: a.max_lease_losses,
        // Set by the client for each submit (its retries dedup).
        idempotency_key: None,
        workflow: None,
        route_key: a.route_key.clone(),
        map_reduce: a.map_reduce.then_some(lts_core::model::MapReduce {
            reduce: a.reduce,
            max_children: a.max_children,
        }),
        timeout_ms: a
            .timeout
            .as_deref()
            .map(lts_core::parse_duration_ms)
            .transpose()
            .map_err(|e| CliError::Usage(format!("--timeout: {e}")))?
            .map(|ms| ms.max(0) as u64),
    };
    validate::validate(&spec).map_err(|v| CliError::Usage(v.to_string()))?;
    Ok(spec)
}

#[derive(Serialize)]
struct SubmitOut<'a> {
    status: &'a str,
    job_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<&'a Job>,
}

/// Runs `lts submit`.
pub async fn submit(a: SubmitArgs) -> CliResult {
    let spec = spec_from_args(&a, now_ms())?;
    let client = a.opts.client().await?;
    let answer = client
        .submit(spec.clone())
        .await
        .map_err(|e| a.opts.unavailable(e))?;
    let job_id = match &answer {
        SubmitAnswer::Rejected(v) => return Err(CliError::Usage(v.to_string())),
        other => other.job_id().unwrap_or_default().to_string(),
    };
    let waited = if a.wait {
        Some(
            client
                .wait(
                    JobKey::Id(job_id.clone()),
                    a.wait_timeout.map(Duration::from_secs),
                )
                .await
                .map_err(|e| a.opts.unavailable(e))?,
        )
    } else {
        None
    };
    match a.opts.output {
        OutputFormat::Json => print_json(&SubmitOut {
            status: answer.status(),
            job_id: Some(&job_id),
            job: waited.as_ref(),
        }),
        OutputFormat::Table => {
            let what = match answer {
                SubmitAnswer::Accepted { .. } => "accepted",
                SubmitAnswer::Duplicate { .. } => "duplicate (already queued, nothing changed):",
                SubmitAnswer::Replaced { .. } => "replaced",
                SubmitAnswer::Rejected(_) => "rejected",
            };
            println!(
                "{what} job {job_id} (task {} → node group {})",
                spec.task_id, spec.task_tracker_node_group
            );
            if let Some(j) = &waited {
                println!(
                    "{} after {} attempt(s): {}",
                    j.state,
                    j.attempt,
                    j.last_message.as_deref().unwrap_or("")
                );
            }
        }
    }
    match waited {
        Some(j) if matches!(j.state, JobState::Failed | JobState::Cancelled) => Err(
            CliError::Failed(format!("job {} ended {}", j.job_id, j.state)),
        ),
        _ => Ok(()),
    }
}

/// How a command names one job.
#[derive(Debug, Clone, clap::Args)]
pub struct JobSelector {
    /// The job id.
    #[arg(long)]
    job_id: Option<String>,
    /// The node group (with --task-id).
    #[arg(long)]
    node_group: Option<String>,
    /// The task id (with --node-group).
    #[arg(long)]
    task_id: Option<String>,
}

impl JobSelector {
    /// The key, or a usage error naming the flags.
    pub fn key(&self) -> CliResult<JobKey> {
        match (&self.job_id, &self.node_group, &self.task_id) {
            (Some(id), None, None) => Ok(JobKey::Id(id.clone())),
            (None, Some(g), Some(t)) => Ok(JobKey::Task {
                node_group: g.clone(),
                task_id: t.clone(),
            }),
            _ => Err(CliError::Usage(
                "name the job with --job-id ID, or with --node-group GROUP and --task-id TASK"
                    .into(),
            )),
        }
    }
}

/// `lts jobs …`.
#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest last.
    List(ListArgs),
    /// One job with all its fields and its log.
    Get(GetArgs),
    /// Cancel a queued or running job (a cron or repeat job: the definition and its fires).
    Cancel(CancelArgs),
    /// Suspend a job: no runs or fires until resumed (a running attempt finishes first).
    Suspend(CancelArgs),
    /// Resume a suspended job; missed fires follow its misfire policy.
    Resume(CancelArgs),
    /// Run one instance of a cron or repeat job now, without shifting its schedule.
    Trigger(CancelArgs),
}

/// `lts jobs list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// Only this node group.
    #[arg(long)]
    node_group: Option<String>,
    /// Only this state: queued, running, suspended, succeeded, failed, cancelled.
    #[arg(long)]
    state: Option<String>,
    /// Only task ids starting with this.
    #[arg(long)]
    task_id_prefix: Option<String>,
    /// Only jobs submitted by this JobClient node group.
    #[arg(long)]
    submit_node_group: Option<String>,
    /// Only jobs with this schedule: now, trigger_time, cron, repeat. With cron or repeat the
    /// table shows the definitions with their fires so far, last result and next fire.
    #[arg(long = "type", value_name = "SCHEDULE")]
    schedule_type: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Continue a previous listing.
    #[arg(long)]
    page_token: Option<String>,
}

/// `lts jobs get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    opts: ClientOpts,
    #[command(flatten)]
    job: JobSelector,
    /// Log lines to show.
    #[arg(long, default_value_t = 100)]
    log_limit: u32,
}

/// `lts jobs cancel|suspend|resume|trigger`: one job, by id or by node group and task id.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    #[command(flatten)]
    opts: ClientOpts,
    #[command(flatten)]
    job: JobSelector,
}

/// Runs `lts jobs …`.
pub async fn jobs(cmd: JobsCommand) -> CliResult {
    match cmd {
        JobsCommand::List(a) => list(a).await,
        JobsCommand::Get(a) => get(a).await,
        JobsCommand::Cancel(a) => cancel(a).await,
        JobsCommand::Suspend(a) => suspend_or_resume(a, true).await,
        JobsCommand::Resume(a) => suspend_or_resume(a, false).await,
        JobsCommand::Trigger(a) => trigger(a).await,
    }
}

fn schedule_text(s: &Schedule) -> String {
    match s {
        Schedule::Now | Schedule::TriggerAt { .. } => s.kind().to_string(),
        Schedule::Cron {
            expression,
            time_zone,
        } => format!(
            "cron {expression}{}",
            time_zone
                .as_ref()
                .map(|z| format!(" ({z})"))
                .unwrap_or_default()
        ),
        Schedule::Repeat {
            interval_ms, count, ..
        } => format!(
            "every {interval_ms} ms × {}",
            if *count < 0 {
                "∞".to_string()
            } else {
                count.to_string()
            }
        ),
    }
}

async fn list(a: ListArgs) -> CliResult {
    let state = a
        .state
        .as_deref()
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--state: {e}")))?;
    if a.limit == 0 {
        return Err(CliError::Usage("--limit: must be at least 1".into()));
    }
    let kind = a
        .schedule_type
        .as_deref()
        .map(ScheduleKind::parse)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--type: {e}")))?;
    let client = a.opts.client().await?;
    let mut jobs = Vec::new();
    let mut token = a.page_token.clone();
    loop {
        let want = (a.limit as usize - jobs.len()).min(1000) as u32;
        let (page, next) = client
            .list(ListQuery {
                node_group: a.node_group.clone(),
                state,
                task_id_prefix: a.task_id_prefix.clone(),
                submit_node_group: a.submit_node_group.clone(),
                schedule_type: a.schedule_type.clone(),
                page_size: want,
                page_token: token.clone(),
            })
            .await
            .map_err(|e| a.opts.unavailable(e))?;
        jobs.extend(page);
        token = next;
        if token.is_none() || jobs.len() >= a.limit as usize {
            break;
        }
    }
    match a.opts.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "jobs": jobs,
            "next_page_token": token,
        })),
        OutputFormat::Table => {
            let next_fire = |j: &lts_core::Job| {
                if j.state.is_final() {
                    "-".to_string()
                } else {
                    time(Some(j.trigger_time_ms))
                }
            };
            let last = |j: &lts_core::Job| {
                j.last_outcome
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let definitions = matches!(kind, Some(ScheduleKind::Cron | ScheduleKind::Repeat));
            let mut t = if definitions {
                table([
                    "JOB ID",
                    "TASK ID",
                    "NODE GROUP",
                    "STATE",
                    "SCHEDULE",
                    "FIRES",
                    "LAST RESULT",
                    "NEXT FIRE",
                ])
            } else {
                table([
                    "JOB ID",
                    "TASK ID",
                    "NODE GROUP",
                    "STATE",
                    "PRIO",
                    "ATTEMPT",
                    "SCHEDULE",
                    "NEXT/TRIGGER",
                    "LAST RESULT",
                ])
            };
            for j in &jobs {
                let mut row = vec![
                    j.job_id.clone(),
                    j.spec.task_id.clone(),
                    j.spec.task_tracker_node_group.clone(),
                    j.state.to_string(),
                ];
                if definitions {
                    // fire_count counts the pending fire too.
                    let fired = if j.state.is_final() {
                        j.fire_count
                    } else {
                        j.fire_count.saturating_sub(1)
                    };
                    row.extend([
                        schedule_text(&j.spec.schedule),
                        fired.to_string(),
                        last(j),
                        next_fire(j),
                    ]);
                } else {
                    row.extend([
                        j.spec.priority.to_string(),
                        j.attempt.to_string(),
                        schedule_text(&j.spec.schedule),
                        next_fire(j),
                        last(j),
                    ]);
                }
                t.add_row(row);
            }
            println!("{t}");
            if let Some(next) = &token {
                eprintln!("more jobs: --page-token {next}");
            }
        }
    }
    Ok(())
}

async fn get(a: GetArgs) -> CliResult {
    let key = a.job.key()?;
    let client = a.opts.client().await?;
    let job = client.get(key).await.map_err(|e| a.opts.unavailable(e))?;
    let log = client
        .log(&job.job_id, a.log_limit)
        .await
        .map_err(|e| a.opts.unavailable(e))?;
    if a.opts.output == OutputFormat::Json {
        print_json(&serde_json::json!({ "job": job, "log": log }));
        return Ok(());
    }
    let mut t = table(["FIELD", "VALUE"]);
    let s = &job.spec;
    let params = if s.params.is_empty() {
        "-".to_string()
    } else {
        s.params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let rows: Vec<(&str, String)> = vec![
        ("job_id", job.job_id.clone()),
        ("task_id", s.task_id.clone()),
        ("task_tracker_node_group", s.task_tracker_node_group.clone()),
        ("submit_node_group", or_dash(&s.submit_node_group)),
        ("state", job.state.to_string()),
        ("priority", s.priority.to_string()),
        ("schedule", schedule_text(&s.schedule)),
        ("trigger / next fire", time(Some(job.trigger_time_ms))),
        (
            "next fires",
            if job.state.is_final() {
                "-".to_string()
            } else {
                let fires =
                    lts_core::schedule::upcoming_fires(s, job.trigger_time_ms, job.fire_count, 5);
                if fires.is_empty() {
                    "-".to_string()
                } else {
                    fires
                        .iter()
                        .map(|t| time(Some(*t)))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            },
        ),
        ("scheduled fire", time(job.scheduled_fire_ms)),
        ("fires so far", job.fire_count.to_string()),
        (
            "instance of",
            job.instance_of.clone().unwrap_or_else(|| "-".into()),
        ),
        ("attempt", job.attempt.to_string()),
        ("max_retries", s.max_retries.to_string()),
        (
            "timeout",
            s.timeout_ms
                .map(lts_core::duration::format_ms)
                .unwrap_or_else(|| "-".into()),
        ),
        ("deadline", time(job.deadline_ms)),
        (
            "lost runs",
            format!(
                "{} (max_lease_losses {})",
                job.lease_losses,
                s.lease_loss_budget()
            ),
        ),
        ("need_feedback", s.need_feedback.to_string()),
        ("rely_on_prev_cycle", s.rely_on_prev_cycle.to_string()),
        ("replace_on_exist", s.replace_on_exist.to_string()),
        ("misfire_policy", format!("{:?}", s.misfire_policy)),
        (
            "concurrency_policy",
            s.concurrency_policy.as_str().to_string(),
        ),
        (
            "max_concurrent",
            s.max_concurrent
                .map_or_else(|| "-".into(), |n| n.to_string()),
        ),
        ("shards / nodes", shards(&job)),
        ("affinity", s.affinity_key().unwrap_or_else(|| "-".into())),
        (
            "route key",
            s.route_key.clone().unwrap_or_else(|| "-".into()),
        ),
        ("params", params),
        (
            "lease owner",
            job.lease_owner.clone().unwrap_or_else(|| "-".into()),
        ),
        ("lease expiry", time(job.lease_expiry_ms)),
        (
            "last result",
            job.last_outcome
                .map(|o| o.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "last message",
            job.last_message.clone().unwrap_or_else(|| "-".into()),
        ),
        ("created", time(Some(job.created_at_ms))),
        ("updated", time(Some(job.updated_at_ms))),
        ("finished", time(job.finished_at_ms)),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    println!("{t}");
    let mut l = table(["TIME", "TYPE", "LEVEL", "ATTEMPT", "NODE", "MESSAGE"]);
    for e in &log {
        l.add_row(vec![
            time(Some(e.time_ms)),
            e.log_type.to_string(),
            e.level.as_str().to_string(),
            e.attempt.to_string(),
            or_dash(&e.node),
            e.message.clone(),
        ]);
    }
    println!("{l}");
    Ok(())
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

async fn cancel(a: CancelArgs) -> CliResult {
    let key = a.job.key()?;
    let client = a.opts.client().await?;
    let job = client
        .cancel(key)
        .await
        .map_err(|e| a.opts.unavailable(e))?;
    match a.opts.output {
        OutputFormat::Json => print_json(&job),
        OutputFormat::Table => println!("cancelled job {} ({})", job.job_id, job.spec.task_id),
    }
    Ok(())
}

async fn suspend_or_resume(a: CancelArgs, suspend: bool) -> CliResult {
    let key = a.job.key()?;
    let client = a.opts.client().await?;
    let (job, changed) = if suspend {
        client.suspend(key).await
    } else {
        client.resume(key).await
    }
    .map_err(|e| a.opts.unavailable(e))?;
    match a.opts.output {
        OutputFormat::Json => print_json(&serde_json::json!({ "changed": changed, "job": job })),
        OutputFormat::Table => {
            let what = match (suspend, changed) {
                (true, true) if job.state == JobState::Running => {
                    "suspended (its running attempt finishes first)"
                }
                (true, true) => "suspended",
                (true, false) => "was already suspended",
                (false, true) => "resumed",
                (false, false) => "was not suspended",
            };
            let next = if !suspend && changed {
                format!(", runs at {}", time(Some(job.trigger_time_ms)))
            } else {
                String::new()
            };
            println!("job {} ({}) {what}{next}", job.job_id, job.spec.task_id);
        }
    }
    Ok(())
}

async fn trigger(a: CancelArgs) -> CliResult {
    let key = a.job.key()?;
    let client = a.opts.client().await?;
    let instance = client
        .trigger(key)
        .await
        .map_err(|e| a.opts.unavailable(e))?;
    match a.opts.output {
        OutputFormat::Json => print_json(&instance),
        OutputFormat::Table => println!(
            "triggered: instance {} ({}) runs now",
            instance.job_id, instance.spec.task_id
        ),
    }
    Ok(())
}

/// `lts nodes`.
#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    #[command(flatten)]
    opts: ClientOpts,
}

#[derive(Serialize)]
struct NodeOut {
    role: String,
    identity: String,
    node_group: String,
    address: String,
    threads: u32,
    free_threads: u32,
    version: String,
    is_master: bool,
    since_ms: i64,
}

/// Runs `lts nodes`.
pub async fn nodes(a: NodesArgs) -> CliResult {
    let client = a.opts.client().await?;
    let resp = client.nodes().await.map_err(|e| a.opts.unavailable(e))?;
    let role = |r: i32| match lts_core::proto::NodeRole::try_from(r) {
        Ok(lts_core::proto::NodeRole::JobTracker) => "job-tracker",
        Ok(lts_core::proto::NodeRole::TaskTracker) => "task-tracker",
        Ok(lts_core::proto::NodeRole::JobClient) => "job-client",
        _ => "unknown",
    };
    let nodes: Vec<NodeOut> = resp
        .nodes
        .iter()
        .map(|n| NodeOut {
            role: role(n.role).to_string(),
            identity: n.identity.clone(),
            node_group: n.node_group.clone(),
            address: n.address.clone(),
            threads: n.threads,
            free_threads: n.free_threads,
            version: n.version.clone(),
            is_master: n.is_master,
            since_ms: n.since_ms,
        })
        .collect();
    let master = nodes
        .iter()
        .find(|n| n.is_master)
        .map(|n| n.identity.clone())
        .unwrap_or_else(|| "none".into());
    match a.opts.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "cluster": resp.cluster,
            "master": master,
            "registry": resp.registry_health,
            "store": resp.store_health,
            "answered_by": resp.tracker_identity,
            "nodes": nodes,
        })),
        OutputFormat::Table => {
            let mut t = output::table([
                "ROLE",
                "IDENTITY",
                "NODE GROUP",
                "ADDRESS",
                "THREADS",
                "VERSION",
                "MASTER",
                "SINCE",
            ]);
            for n in &nodes {
                t.add_row(vec![
                    n.role.clone(),
                    n.identity.clone(),
                    n.node_group.clone(),
                    or_dash(&n.address),
                    if n.role == "task-tracker" {
                        format!("{}/{}", n.free_threads, n.threads)
                    } else {
                        "-".into()
                    },
                    or_dash(&n.version),
                    if n.is_master {
                        "*".into()
                    } else {
                        String::new()
                    },
                    time(Some(n.since_ms)),
                ]);
            }
            println!("{t}");
            println!(
                "cluster {}, master {master}, registry {}, store {} (answered by {})",
                resp.cluster, resp.registry_health, resp.store_health, resp.tracker_identity
            );
        }
    }
    Ok(())
}

/// A job's shards, as `lts jobs get` shows them: a sharded job's count and progress, a shard
/// run's place among its job's shards.
fn shards(job: &lts_core::Job) -> String {
    if let (Some(node), Some(shard)) = (&job.node, &job.shard) {
        return format!(
            "node {} ({} of {}) of workflow {}",
            node.name,
            shard.index + 1,
            shard.count,
            shard.of
        );
    }
    if let Some(wf) = &job.spec.workflow {
        let n = wf.nodes.len();
        return match job.shard_progress {
            Some(p) => format!(
                "workflow of {n} nodes: {} succeeded, {} failed, {} running, {} pending, {} skipped (lts workflow get)",
                p.succeeded, p.failed, p.running, p.pending, p.skipped
            ),
            None => format!("workflow of {n} nodes (none run yet)"),
        };
    }
    use lts_core::model::MapOf;
    match (&job.map, &job.shard) {
        (Some(MapOf::Child { index }), Some(shard)) => {
            return format!("map child {index} of job {}", shard.of);
        }
        (Some(MapOf::Reduce { children }), Some(shard)) => {
            return format!("reduce step of job {} ({children} children)", shard.of);
        }
        (Some(MapOf::Parent { children, reducing }), _) => {
            let phase = if reducing.is_some() {
                "reduce step runs"
            } else {
                "children run"
            };
            return match job.shard_progress {
                Some(p) => format!(
                    "map-reduce, {children} children ({phase}): {} succeeded, {} failed, {} running, {} pending",
                    p.succeeded, p.failed, p.running, p.pending
                ),
                None => format!("map-reduce, {children} children ({phase})"),
            };
        }
        _ if job.spec.map_reduce.is_some() && job.shard.is_none() => {
            return "map-reduce (its run maps)".into();
        }
        _ => {}
    }
    if let Some(shard) = &job.shard {
        let on = shard
            .on
            .as_ref()
            .map(|on| format!(", for TaskTracker {on}"))
            .unwrap_or_default();
        return format!(
            "shard {} of {} of job {}{on}",
            shard.index, shard.count, shard.of
        );
    }
    if job.spec.broadcast {
        return match job.shard_progress {
            Some(p) => format!(
                "broadcast: {} succeeded, {} failed, {} running, {} pending",
                p.succeeded, p.failed, p.running, p.pending
            ),
            None => "broadcast (none run yet)".into(),
        };
    }
    match (job.spec.shards, job.shard_progress) {
        (Some(n), Some(p)) => format!(
            "{n}: {} succeeded, {} failed, {} running, {} pending",
            p.succeeded, p.failed, p.running, p.pending
        ),
        (Some(n), None) => format!("{n} (none run yet)"),
        (None, _) => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: SubmitArgs,
    }

    fn args(extra: &[&str]) -> Result<SubmitArgs, clap::Error> {
        let mut v = vec!["t", "--task-id", "t1", "--node-group", "g"];
        v.extend_from_slice(extra);
        T::try_parse_from(v).map(|t| t.a)
    }

    #[test]
    fn params_need_an_equals_sign() {
        assert_eq!(parse_param("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_param("novalue").is_err());
        assert!(parse_param("=v").is_err());
    }

    #[test]
    fn durations_and_instants() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert!(parse_duration_ms("5 weeks").is_err());
        assert!(parse_duration_ms("x").is_err());
        assert_eq!(parse_instant("+2h", 1000), Ok(1000 + 7_200_000));
        assert_eq!(
            parse_instant("2026-12-01T10:00:00Z", 0),
            Ok(1_796_119_200_000)
        );
        assert!(
            parse_instant("tomorrow", 0)
                .unwrap_err()
                .contains("RFC 3339")
        );
    }

    #[test]
    fn flags_build_a_valid_job() {
        let a = args(&[
            "--cron",
            "0 0 3 * * *",
            "--time-zone",
            "Europe/Berlin",
            "--param",
            "k=v",
        ])
        .unwrap();
        let spec = spec_from_args(&a, 0).unwrap();
        assert_eq!(spec.params["k"], "v");
        assert!(matches!(spec.schedule, Schedule::Cron { .. }));
        let a = args(&["--repeat-interval", "10s", "--repeat-count", "3"]).unwrap();
        assert!(matches!(
            spec_from_args(&a, 0).unwrap().schedule,
            Schedule::Repeat {
                interval_ms: 10_000,
                count: 3,
                ..
            }
        ));
    }

    #[test]
    fn schedules_are_exclusive_and_bad_input_names_the_field() {
        assert!(args(&["--cron", "* * * * * *", "--trigger-time", "+1s"]).is_err());
        let a = args(&["--cron", "0 0 25 * * *"]).unwrap();
        let e = spec_from_args(&a, 0).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .starts_with("cron.expression: invalid hours field"),
            "{e}"
        );
        let a = args(&["--trigger-time", "soon"]).unwrap();
        assert!(
            spec_from_args(&a, 0)
                .unwrap_err()
                .to_string()
                .starts_with("--trigger-time:")
        );
        let mut long = args(&[]).unwrap();
        long.task_id = "x".repeat(70);
        assert_eq!(
            spec_from_args(&long, 0).unwrap_err().to_string(),
            "task_id: must be 1..=64 characters (got 70)"
        );
    }

    #[test]
    fn a_job_is_named_one_way() {
        let by_id = JobSelector {
            job_id: Some("j".into()),
            node_group: None,
            task_id: None,
        };
        assert_eq!(by_id.key().unwrap(), JobKey::Id("j".into()));
        let both = JobSelector {
            job_id: Some("j".into()),
            node_group: Some("g".into()),
            task_id: Some("t".into()),
        };
        assert_eq!(both.key().unwrap_err().exit_code(), 2);
    }
}
