//! `--exec`: one `sh -c CMD` process per job. See the module docs of [`super`] for the
//! contract.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::{JobPayload, MAP_PREFIX, map_items, truncate};

/// How many mapped items wait for their map call before the program's output is read no further.
const MAP_CHANNEL: usize = lts_core::model::MAX_MAP_BATCH;
use crate::runner::{BizLogger, JobContext, JobRunner, RunResult};

/// The exit code that means "try again later" (`EX_TEMPFAIL` of sysexits.h).
pub const EXIT_LATER: i32 = 75;
/// What starts a standard-output line that gives the run's output: the text after it is the
/// message of a successful run (the last such line wins), which a workflow hands to the
/// node's successors as the parameter `output.<node>` (`LTS_PARAM_OUTPUT_<NODE>`).
pub const OUTPUT_PREFIX: &str = "lts:output ";
/// How long a cancelled or timed-out job's processes get between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// The process group a job's shell leads: every process the job started. Whatever is left of
/// it when the run ends is killed (SIGKILL), so no child outlives its job.
struct Group(Option<Pid>);

impl Group {
    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.0 {
            // ESRCH: the group is gone already.
            let _ = kill_process_group(pid, signal);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(Signal::KILL);
    }
}

/// Runs a shell command per job.
#[derive(Debug, Clone)]
pub struct ExecRunner {
    command: String,
    timeout: Duration,
}

impl ExecRunner {
    /// A runner of `sh -c command`, killing runs that take longer than `timeout`.
    pub fn new(command: String, timeout: Duration) -> ExecRunner {
        ExecRunner { command, timeout }
    }
}

/// `my-key.x` → `LTS_PARAM_MY_KEY_X`.
pub fn param_env_name(key: &str) -> String {
    let mut name = String::from("LTS_PARAM_");
    for c in key.chars() {
        let c = c.to_ascii_uppercase();
        name.push(
            if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            },
        );
    }
    name
}

/// Maps an exit code to an outcome: 0 success, 75 later, others failed.
pub fn outcome_for_exit(code: i32, last_err: Option<&str>) -> RunResult {
    let detail = last_err
        .filter(|l| !l.is_empty())
        .map(|l| format!(": {}", truncate(l, 1_000)))
        .unwrap_or_default();
    match code {
        0 => RunResult::success(format!("exit code 0{detail}")),
        EXIT_LATER => RunResult::later(format!("exit code {EXIT_LATER} (try later){detail}")),
        c => RunResult::failed(format!("exit code {c}{detail}")),
    }
}

struct Lines {
    logger: BizLogger,
    last_err: std::sync::Mutex<Option<String>>,
    output: std::sync::Mutex<Option<String>>,
}

impl Lines {
    fn push(&self, line: String, is_err: bool) {
        if !is_err && let Some(output) = line.strip_prefix(OUTPUT_PREFIX) {
            *self.output.lock().unwrap_or_else(|e| e.into_inner()) = Some(output.to_string());
            return;
        }
        if is_err {
            *self.last_err.lock().unwrap_or_else(|e| e.into_inner()) = Some(line.clone());
            self.logger.warn(line);
        } else {
            self.logger.info(line);
        }
    }
}

/// Reads a program's output line by line into `lines`. A line longer than the logger's line
/// limit is cut with a marker, the rest of it read and dropped (the program never blocks on a
/// full pipe, and a run without newlines cannot fill memory); bytes that are not UTF-8 are
/// replaced. With `maps`, a line `lts:map ITEM` goes there instead (up to a map item's
/// length): while its channel is full, reading waits, and so does the program's next write.
async fn pump<R: tokio::io::AsyncRead + Unpin>(
    reader: R,
    lines: Arc<Lines>,
    is_err: bool,
    maps: Option<tokio::sync::mpsc::Sender<String>>,
) {
    let mut max = lines.logger.limits().log_line_bytes;
    if maps.is_some() {
        max = max.max(lts_core::model::MAX_MAP_ITEM + MAP_PREFIX.len());
    }
    let mut r = BufReader::new(reader);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = 0usize;
    loop {
        let buf = match r.fill_buf().await {
            Ok(b) if !b.is_empty() => b,
            _ => break,
        };
        let newline = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        let take = chunk.len().min(max.saturating_sub(line.len()));
        line.extend_from_slice(&chunk[..take]);
        cut += chunk.len() - take;
        let consumed = newline.map_or(buf.len(), |i| i + 1);
        r.consume(consumed);
        if newline.is_some() {
            let text = finish_line(&mut line, &mut cut, max);
            deliver(text, &lines, is_err, maps.as_ref()).await;
        }
    }
    if !line.is_empty() || cut > 0 {
        let text = finish_line(&mut line, &mut cut, max);
        deliver(text, &lines, is_err, maps.as_ref()).await;
    }
}

/// A line of output: a map item to `maps`, anything else to `lines`.
async fn deliver(
    text: String,
    lines: &Lines,
    is_err: bool,
    maps: Option<&tokio::sync::mpsc::Sender<String>>,
) {
    if let (Some(tx), Some(item)) = (maps, text.strip_prefix(MAP_PREFIX)) {
        // The mapper stopped (a map failed): the rest of the items are dropped, and the run's
        // result says why.
        let _ = tx.send(item.to_string()).await;
        return;
    }
    lines.push(text, is_err);
}

/// Maps the items that arrive on `rx`, up to a map call's worth at a time, in order; stops at
/// the first failure, which becomes the run's result.
async fn mapper(
    ctx: JobContext,
    mut rx: tokio::sync::mpsc::Receiver<String>,
) -> Result<u32, RunResult> {
    let mut n = 0u32;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < lts_core::model::MAX_MAP_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        n = n.saturating_add(batch.len() as u32);
        map_items(&ctx, batch).await?;
    }
    Ok(n)
}

fn finish_line(line: &mut Vec<u8>, cut: &mut usize, max: usize) -> String {
    if line.last() == Some(&b'\r') && *cut == 0 {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(line).into_owned();
    lts_core::limits::truncate_after(&mut text, max, *cut);
    line.clear();
    *cut = 0;
    text
}

#[async_trait]
impl JobRunner for ExecRunner {
    async fn run(&self, ctx: JobContext) -> RunResult {
        let payload = match JobPayload::for_run(&ctx).await {
            Ok(p) => p,
            Err(result) => return result,
        };
        let payload = match serde_json::to_vec(&payload) {
            Ok(p) => p,
            Err(e) => return RunResult::exception(format!("cannot encode the job: {e}")),
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .env("LTS_JOB_ID", &ctx.job.job_id)
            .env("LTS_TASK_ID", &ctx.job.spec.task_id)
            .env("LTS_ATTEMPT", ctx.attempt.to_string())
            .env("LTS_NODE_GROUP", &ctx.job.spec.task_tracker_node_group)
            .env("LTS_SHARD_INDEX", ctx.shard_index().to_string())
            .env("LTS_SHARD_COUNT", ctx.shard_count().to_string());
        if let Some(key) = &ctx.job.spec.route_key {
            cmd.env("LTS_ROUTE_KEY", key);
        }
        if let Some(lts_core::model::MapOf::Child { index }) = ctx.job.map {
            cmd.env("LTS_MAP_INDEX", index.to_string());
        }
        if let Some(item) = ctx.map_item() {
            cmd.env("LTS_MAP_ITEM", item);
        }
        if ctx.is_reduce() {
            cmd.env("LTS_REDUCE", "1");
        }
        for (k, v) in &ctx.job.spec.params {
            cmd.env(param_env_name(k), v);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return RunResult::exception(format!("cannot start `sh -c`: {e}")),
        };
        tracing::debug!(job_id = %ctx.job.job_id, pid = ?child.id(), "job process started");
        let group = Group(child.id().and_then(|id| Pid::from_raw(id as i32)));
        if let Some(mut stdin) = child.stdin.take() {
            // A program that does not read stdin closes the pipe early; that is fine.
            tokio::spawn(async move {
                let _ = stdin.write_all(&payload).await;
                let _ = stdin.shutdown().await;
            });
        }
        let lines = Arc::new(Lines {
            logger: ctx.logger.clone(),
            last_err: std::sync::Mutex::new(None),
            output: std::sync::Mutex::new(None),
        });
        // A map-reduce job's run maps the items of its `lts:map` lines as they come.
        let (maps, mapping) = if ctx.job.spec.map_reduce.is_some() && ctx.job.shard.is_none() {
            let (tx, rx) = tokio::sync::mpsc::channel(MAP_CHANNEL);
            (Some(tx), Some(tokio::spawn(mapper(ctx.clone(), rx))))
        } else {
            (None, None)
        };
        let out = child
            .stdout
            .take()
            .map(|o| tokio::spawn(pump(o, lines.clone(), false, maps)));
        let err = child
            .stderr
            .take()
            .map(|e| tokio::spawn(pump(e, lines.clone(), true, None)));
        let stopped = tokio::select! {
            s = child.wait() => Ok(s),
            _ = tokio::time::sleep(self.timeout) => Err(format!("timed out after {} s (--timeout)", self.timeout.as_secs())),
            _ = ctx.cancel.cancelled() => Err("cancelled".to_string()),
        };
        let status = match stopped {
            Ok(s) => s,
            Err(why) => {
                // SIGTERM to every process of the job, SIGKILL to what is left after the grace.
                group.signal(Signal::TERM);
                let _ = tokio::time::timeout(TERM_GRACE, child.wait()).await;
                drop(group);
                return RunResult::exception(format!("{why}; the job's processes were stopped"));
            }
        };
        // Children the job left behind die with it; then the pipes close.
        drop(group);
        // Collect the rest of the output.
        for h in [out, err].into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
        // The items mapped so far are stored before the run's result goes out.
        if let Some(mapping) = mapping {
            match mapping.await {
                Ok(Ok(_)) => {}
                Ok(Err(result)) => return result,
                Err(e) => return RunResult::exception(format!("the mapper failed: {e}")),
            }
        }
        let last_err = lines
            .last_err
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let output = lines
            .output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match status {
            Ok(s) => match (s.code(), output) {
                (Some(0), Some(output)) => RunResult::success(output),
                (Some(code), _) => outcome_for_exit(code, last_err.as_deref()),
                (None, _) => {
                    use std::os::unix::process::ExitStatusExt;
                    RunResult::exception(format!(
                        "killed by signal {}",
                        s.signal()
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "?".into())
                    ))
                }
            },
            Err(e) => RunResult::exception(format!("waiting for the process failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::test_support::ctx;
    use lts_core::limits::ReportLimits;
    use lts_core::{LogLevel, Outcome};

    fn runner(cmd: &str) -> ExecRunner {
        ExecRunner::new(cmd.into(), Duration::from_secs(10))
    }

    #[test]
    fn param_names_become_env_names() {
        assert_eq!(param_env_name("my-key.x"), "LTS_PARAM_MY_KEY_X");
        assert_eq!(param_env_name("a_B9"), "LTS_PARAM_A_B9");
    }

    #[tokio::test]
    async fn exit_codes_map_to_outcomes() {
        for (cmd, outcome) in [
            ("exit 0", Outcome::Success),
            ("exit 75", Outcome::Later),
            ("exit 3", Outcome::Failed),
            ("kill -9 $$", Outcome::Exception),
        ] {
            let r = runner(cmd).run(ctx("t", &[])).await;
            assert_eq!(r.outcome, outcome, "{cmd}: {r:?}");
        }
    }

    #[tokio::test]
    async fn an_output_line_is_the_message_of_a_successful_run() {
        let c = ctx("out", &[("output.extract", "rows=10")]);
        let logger = c.logger.clone();
        let script = "echo working; echo \"lts:output first\"; \
                      echo \"lts:output got $LTS_PARAM_OUTPUT_EXTRACT\"";
        let r = runner(script).run(c).await;
        assert_eq!(
            (r.outcome, r.message.as_str()),
            (Outcome::Success, "got rows=10")
        );
        let lines: Vec<String> = logger.take().into_iter().map(|l| l.message).collect();
        assert_eq!(lines, ["working"], "output lines are not logged");
        // A failed run's message is its exit, whatever it output.
        let r = runner("echo \"lts:output x\"; exit 3")
            .run(ctx("out", &[]))
            .await;
        assert_eq!(
            (r.outcome, r.message.as_str()),
            (Outcome::Failed, "exit code 3")
        );
    }

    #[tokio::test]
    async fn the_job_arrives_on_stdin_and_in_the_environment() {
        let c = ctx("env-test", &[("my-key", "hello world")]);
        let logger = c.logger.clone();
        let r = runner(
            "cat; echo; echo \"$LTS_PARAM_MY_KEY|$LTS_TASK_ID|$LTS_ATTEMPT\"; echo oops >&2",
        )
        .run(c)
        .await;
        assert_eq!(r.outcome, Outcome::Success, "{r:?}");
        let lines = logger.take();
        let payload: JobPayload = serde_json::from_str(&lines[0].message).unwrap();
        assert_eq!(payload.task_id, "env-test");
        assert_eq!(payload.params["my-key"], "hello world");
        assert_eq!(lines[1].message, "hello world|env-test|1");
        assert_eq!(lines[1].level, LogLevel::Info);
        let err = lines.iter().find(|l| l.message == "oops").unwrap();
        assert_eq!(err.level, LogLevel::Warn);
        assert!(r.message.ends_with(": oops"), "{}", r.message);
    }

    #[tokio::test]
    async fn a_timeout_or_a_cancel_kills_the_process() {
        let r = ExecRunner::new("sleep 30".into(), Duration::from_millis(200))
            .run(ctx("slow", &[]))
            .await;
        assert_eq!(r.outcome, Outcome::Exception);
        assert!(r.message.contains("timed out"), "{}", r.message);

        let c = ctx("cancel", &[]);
        let cancel = c.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let started = std::time::Instant::now();
        let r = runner("sleep 30").run(c).await;
        assert_eq!(r.outcome, Outcome::Exception);
        assert!(r.message.contains("cancelled"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// Whether process `pid` runs (a zombie does not).
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .map(|s| s.rsplit(')').next().map(|r| r.trim_start().chars().next()) != Some(Some('Z')))
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn a_cancel_stops_every_process_of_the_job_even_one_that_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let c = ctx("group", &[]);
        let cancel = c.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        });
        let cmd = format!(
            "trap '' TERM; sh -c \"trap '' TERM; sleep 30\" & echo $! > {}; wait",
            pid_file.display()
        );
        let started = std::time::Instant::now();
        let r = runner(&cmd).run(c).await;
        assert_eq!(r.outcome, Outcome::Exception, "{r:?}");
        assert!(
            r.message.contains("processes were stopped"),
            "{}",
            r.message
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        let child = std::fs::read_to_string(&pid_file).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !alive(&child),
            "the job's child {child} survived its cancel"
        );
    }

    #[tokio::test]
    async fn children_left_behind_die_with_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let started = std::time::Instant::now();
        let cmd = format!("sleep 30 & echo $! > {}; echo done", pid_file.display());
        let r = runner(&cmd).run(ctx("leftover", &[])).await;
        assert_eq!(r.outcome, Outcome::Success, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        let child = std::fs::read_to_string(&pid_file).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!alive(&child), "the job's child {child} outlived it");
    }

    #[tokio::test]
    async fn output_is_capped() {
        let c = ctx("chatty", &[]);
        let logger = c.logger.clone();
        let r = runner("seq 1 1500").run(c).await;
        assert_eq!(r.outcome, Outcome::Success);
        let lines = logger.take();
        let limit = ReportLimits::default().log_lines;
        assert_eq!(lines.len(), limit);
        // The first lines, a note, and the last lines.
        assert_eq!(lines[0].message, "1");
        assert!(
            lines[limit / 2].message.contains("501 log lines dropped"),
            "{:?}",
            lines[limit / 2]
        );
        assert_eq!(lines[limit - 1].message, "1500");
    }

    #[tokio::test]
    async fn a_line_too_long_or_not_utf8_is_cut_and_the_program_never_blocks() {
        let c = ctx("long", &[]);
        let logger = c.logger.clone();
        // 5 MB without a newline, then binary bytes, then a short line.
        let r =
            runner("head -c 5000000 /dev/zero | tr '\\0' x; echo; printf 'a\\377b\\n'; echo done")
                .run(c)
                .await;
        assert_eq!(r.outcome, Outcome::Success, "{r:?}");
        let lines = logger.take();
        let max = ReportLimits::default().log_line_bytes;
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].message.len() <= max, "{}", lines[0].message.len());
        assert!(lines[0].message.starts_with("xxxx"));
        let kept = lines[0].message.bytes().take_while(|&b| b == b'x').count();
        let marker = format!(
            "{}{} bytes]",
            lts_core::limits::TRUNCATED_MARKER,
            5_000_000 - kept
        );
        assert!(
            lines[0].message.ends_with(&marker),
            "{}",
            &lines[0].message[kept..]
        );
        assert_eq!(lines[1].message, "a\u{fffd}b");
        assert_eq!(lines[2].message, "done");
    }
}
