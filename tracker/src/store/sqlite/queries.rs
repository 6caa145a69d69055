//! Reads — a job, a listing, a job's log, counts, the next due time, pending feedback — and
//! the writes that change no job: feedback acknowledgement, the master fence, retention.

use lts_core::{FeedbackItem, Job, JobKey, JobState, LogEntry, LogLevel};
use rusqlite::{Connection, OptionalExtension, params};

use super::schema::{
    BACKLOG, DUE_COUNT, FIND_BY_ID, FIND_BY_TASK, Found, JOB_COLS, NEXT_DUE, decode_finished,
    found_all, stored_job,
};
use crate::store::{ListFilter, Page, Stats, StoreError, StoreResult, parse_log_type};

/// The unfinished job with this id.
pub(super) fn find_by_id(conn: &Connection, job_id: &str) -> StoreResult<Option<Found>> {
    let mut stmt = conn.prepare_cached(FIND_BY_ID.text())?;
    let mut rows = stmt.query([job_id])?;
    rows.next()?.map(stored_job).transpose()
}

/// The unfinished job with this key.
pub(super) fn find_by_key(conn: &Connection, key: &JobKey) -> StoreResult<Option<Found>> {
    match key {
        JobKey::Id(id) => find_by_id(conn, id),
        JobKey::Task {
            node_group,
            task_id,
        } => {
            let mut stmt = conn.prepare_cached(FIND_BY_TASK.text())?;
            let mut rows = stmt.query(params![node_group, task_id])?;
            rows.next()?.map(stored_job).transpose()
        }
    }
}

/// The finished job with this key (by task id: the one that finished last).
pub(super) fn get_finished(conn: &Connection, key: &JobKey) -> StoreResult<Option<Job>> {
    let text: Option<String> = match key {
        JobKey::Id(id) => conn
            .prepare_cached("SELECT job FROM finished_jobs WHERE job_id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?,
        JobKey::Task {
            node_group,
            task_id,
        } => conn
            .prepare_cached(
                "SELECT job FROM finished_jobs WHERE node_group = ?1 AND task_id = ?2
                 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![node_group, task_id], |r| r.get(0))
            .optional()?,
    };
    text.as_deref().map(decode_finished).transpose()
}

/// One job, unfinished or finished.
pub(super) fn get(conn: &Connection, key: &JobKey) -> StoreResult<Option<Job>> {
    let mut job = match find_by_key(conn, key)? {
        Some(found) => found.stored.job,
        None => match get_finished(conn, key)? {
            Some(job) => job,
            None => return Ok(None),
        },
    };
    // A sharded job that ran: the shards of its current run by state.
    if job.spec.fans_out() && job.shard.is_none() && job.attempt > 0 {
        let run = lts_core::Shard::run_of(&job);
        job.shard_progress = Some(super::write::shard_progress(conn, &run)?);
    }
    Ok(Some(job))
}

/// One page of jobs matching a filter, from both tables, in job-id order.
pub(super) fn list(conn: &Connection, f: &ListFilter) -> StoreResult<Page> {
    let limit = f.limit.clamp(1, 1000);
    let after = f.after.clone().unwrap_or_default();
    let prefix = f.task_id_prefix.as_deref().map(like_prefix);
    let state = f.state.map(JobState::code);
    let kind = f.schedule_kind.map(|k| k.json_tag());
    let want_active = f.state.is_none_or(|s| !s.is_final());
    let want_finished = f.state.is_none_or(|s| s.is_final());
    let page = (limit + 1) as i64;
    let args = params![
        after,
        f.node_group,
        state,
        prefix,
        page,
        f.submit_node_group,
        kind
    ];
    let mut jobs: Vec<Job> = Vec::new();
    // Both tables are read in job-id order (UUIDv7: submit order) and merged.
    if want_active {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM jobs
             WHERE job_id > ?1 AND (?2 IS NULL OR node_group = ?2) AND (?3 IS NULL OR state = ?3)
               AND (?4 IS NULL OR task_id LIKE ?4 ESCAPE '\\')
               AND (?6 IS NULL OR json_extract(spec, '$.submit_node_group') = ?6)
               AND (?7 IS NULL OR json_extract(spec, '$.schedule.type') = ?7)
             ORDER BY job_id LIMIT ?5"
        ))?;
        jobs.extend(
            found_all(&mut stmt, args)?
                .into_iter()
                .map(|f| f.stored.job),
        );
    }
    if want_finished {
        let mut stmt = conn.prepare_cached(
            "SELECT job FROM finished_jobs
             WHERE job_id > ?1 AND (?2 IS NULL OR node_group = ?2) AND (?3 IS NULL OR state = ?3)
               AND (?4 IS NULL OR task_id LIKE ?4 ESCAPE '\\')
               AND (?6 IS NULL OR json_extract(job, '$.spec.submit_node_group') = ?6)
               AND (?7 IS NULL OR json_extract(job, '$.spec.schedule.type') = ?7)
             ORDER BY job_id LIMIT ?5",
        )?;
        let rows = stmt
            .query_map(args, |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for text in rows {
            jobs.push(decode_finished(&text)?);
        }
    }
    jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    let next = if jobs.len() > limit {
        jobs.truncate(limit);
        jobs.last().map(|j| j.job_id.clone())
    } else {
        None
    };
    Ok(Page { jobs, next })
}

/// The log of one job, oldest first.
pub(super) fn log(conn: &Connection, job_id: &str, limit: usize) -> StoreResult<Vec<LogEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT time, log_type, level, message, attempt, job_id, task_id, node_group, node
         FROM job_log WHERE job_id = ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![job_id, limit as i64], |r| {
            let log_type: String = r.get(1)?;
            let level: String = r.get(2)?;
            Ok(LogEntry {
                time_ms: r.get(0)?,
                log_type: parse_log_type(&log_type),
                level: LogLevel::parse_lenient(&level),
                message: r.get(3)?,
                attempt: r.get::<_, i64>(4)? as u32,
                job_id: r.get(5)?,
                task_id: r.get(6)?,
                task_tracker_node_group: r.get(7)?,
                node: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Counts per state, for one node group or all.
pub(super) fn stats(conn: &Connection, group: Option<&str>) -> StoreResult<Stats> {
    let mut stats = Stats::default();
    let mut add = |state: i64, n: i64| {
        let n = n as u64;
        match JobState::from_code(state) {
            // A workflow node waiting for its predecessors is queued behind them.
            Some(JobState::Queued | JobState::Waiting) => stats.queued += n,
            Some(JobState::Running) => stats.running += n,
            Some(JobState::Suspended) => stats.suspended += n,
            Some(JobState::Succeeded) => stats.succeeded += n,
            Some(JobState::Failed) => stats.failed += n,
            Some(JobState::Cancelled | JobState::Skipped) => stats.cancelled += n,
            None => {}
        }
    };
    for sql in [
        "SELECT state, COUNT(*) FROM jobs WHERE (?1 IS NULL OR node_group = ?1) GROUP BY state",
        "SELECT state, SUM(n) FROM finished_counts WHERE (?1 IS NULL OR node_group = ?1) GROUP BY state",
    ] {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map([&group], |r| Ok((r.get(0)?, r.get(1)?)))?;
        for row in rows {
            let (s, n) = row?;
            add(s, n);
        }
    }
    stats.pending_feedback =
        conn.query_row("SELECT COUNT(*) FROM feedback", [], |r| r.get::<_, i64>(0))? as u64;
    Ok(stats)
}

/// The earliest trigger time of a queued job of the node group.
pub(super) fn next_due(conn: &Connection, group: &str) -> StoreResult<Option<i64>> {
    Ok(conn
        .prepare_cached(NEXT_DUE.text())?
        .query_row([group], |r| r.get::<_, Option<i64>>(0))?)
}

/// How many queued jobs of the node group are due at `now`.
pub(super) fn due_count(conn: &Connection, group: &str, now: i64) -> StoreResult<u64> {
    Ok(conn
        .prepare_cached(DUE_COUNT.text())?
        .query_row(params![group, now], |r| r.get::<_, i64>(0))? as u64)
}

/// Queued, due and running jobs per node group with unfinished work, at most `limit` groups.
pub(super) fn backlog(
    conn: &Connection,
    now: i64,
    limit: usize,
) -> StoreResult<Vec<crate::store::GroupBacklog>> {
    let mut stmt = conn.prepare_cached(BACKLOG.text())?;
    let rows = stmt
        .query_map(params![now, limit as i64], |r| {
            Ok(crate::store::GroupBacklog {
                node_group: r.get(0)?,
                queued: r.get::<_, i64>(1)? as u64,
                due: r.get::<_, i64>(2)? as u64,
                running: r.get::<_, i64>(3)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Feedback for a submit node group after the id `after`, oldest first.
pub(super) fn pending_feedback(
    conn: &Connection,
    group: &str,
    after: i64,
    limit: usize,
) -> StoreResult<Vec<FeedbackItem>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, item FROM feedback WHERE submit_group = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![group, after, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(id, text)| {
            let mut item: FeedbackItem = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("feedback {id}: {e}")))?;
            item.feedback_id = id.to_string();
            Ok(item)
        })
        .collect()
}

/// Deletes acknowledged feedback.
pub(super) fn ack_feedback(conn: &Connection, group: &str, ids: &[String]) -> StoreResult<()> {
    let mut stmt =
        conn.prepare_cached("DELETE FROM feedback WHERE id = ?1 AND submit_group = ?2")?;
    for id in ids {
        if let Ok(id) = id.parse::<i64>() {
            stmt.execute(params![id, group])?;
        }
    }
    Ok(())
}

/// Records that the master of `epoch` acts now, unless a newer master acted recently.
pub(super) fn fence(conn: &Connection, epoch: u64, identity: &str, now: i64) -> StoreResult<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO fence (id, epoch, identity, at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch,
                 identity = excluded.identity, at = excluded.at
             WHERE excluded.epoch >= fence.epoch OR fence.at < ?4",
        )?
        .execute(params![
            epoch as i64,
            identity,
            now,
            now - crate::store::FENCE_STALE_MS
        ])?;
    Ok(n == 1)
}

/// Most rows one retention write deletes from each table.
const RETENTION_CHUNK: i64 = 5_000;

/// Deletes one chunk of finished jobs and log lines older than `before`; answers how many
/// rows went (0: nothing is left to delete).
pub(super) fn retention_chunk(conn: &Connection, before: i64) -> StoreResult<u64> {
    // Both tables are in time order by rowid: find where "recent" starts, then delete the
    // oldest rows before it.
    let cut: Option<i64> = conn
        .prepare_cached(
            "SELECT COALESCE(
                 (SELECT id FROM finished_jobs WHERE finished_at >= ?1 ORDER BY id LIMIT 1),
                 (SELECT MAX(id) + 1 FROM finished_jobs))",
        )?
        .query_row([before], |r| r.get(0))?;
    let mut gone: Vec<(String, i64)> = Vec::new();
    if let Some(cut) = cut {
        let mut stmt = conn.prepare_cached(
            "DELETE FROM finished_jobs WHERE id IN
                 (SELECT id FROM finished_jobs WHERE id < ?1 ORDER BY id LIMIT ?2)
             RETURNING node_group, state",
        )?;
        gone = stmt
            .query_map(params![cut, RETENTION_CHUNK], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    let mut per: std::collections::BTreeMap<(String, i64), i64> = Default::default();
    for k in &gone {
        *per.entry(k.clone()).or_default() += 1;
    }
    for ((group, state), n) in per {
        conn.prepare_cached(
            "UPDATE finished_counts SET n = MAX(n - ?3, 0) WHERE node_group = ?1 AND state = ?2",
        )?
        .execute(params![group, state, n])?;
    }
    // Idempotency keys older than the retention period.
    let keys = conn
        .prepare_cached(
            "DELETE FROM submit_keys WHERE id IN
                 (SELECT id FROM submit_keys ORDER BY id LIMIT ?2)
               AND at < ?1",
        )?
        .execute(params![before, RETENTION_CHUNK])? as u64;
    // Feedback nobody took within the retention period (a submit group with no subscriber).
    let feedback = conn
        .prepare_cached(
            "DELETE FROM feedback WHERE id IN
                 (SELECT id FROM feedback WHERE created_at < ?1 ORDER BY id LIMIT ?2)",
        )?
        .execute(params![before, RETENTION_CHUNK])? as u64;
    if feedback > 0 {
        tracing::warn!(
            n = feedback,
            "feedback nobody acknowledged within the retention period deleted"
        );
    }
    let log_cut: Option<i64> = conn
        .prepare_cached(
            "SELECT COALESCE(
                 (SELECT id FROM job_log WHERE time >= ?1 ORDER BY id LIMIT 1),
                 (SELECT MAX(id) + 1 FROM job_log))",
        )?
        .query_row([before], |r| r.get(0))?;
    let logs = match log_cut {
        Some(cut) => conn
            .prepare_cached(
                "DELETE FROM job_log WHERE id IN
                     (SELECT id FROM job_log WHERE id < ?1 ORDER BY id LIMIT ?2)",
            )?
            .execute(params![cut, RETENTION_CHUNK])?,
        None => 0,
    };
    Ok((gone.len() + logs) as u64 + feedback + keys)
}

/// `prefix` as a `LIKE … ESCAPE '\'` pattern.
fn like_prefix(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}
