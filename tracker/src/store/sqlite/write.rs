//! A [`Transition`] as SQL: the one place the SQLite store writes a job's change.
//!
//! [`change`] reads nothing and decides nothing: it applies an event to a job as read (with
//! [`transition::apply`]) and writes what the transition says — the insert, the update of
//! exactly its changed fields, or the move to `finished_jobs`; its log lines, its feedback, the
//! job it creates and its cascade. Every write of a read job is guarded by the row id and the
//! state and lease token it was read with; inside the writer's transaction nothing can change
//! them, so a write that matches no row is a bug, reported as an error.

use std::fmt::Write as _;
use std::sync::Arc;

use lts_core::schedule::RetryPolicy;
use lts_core::transition::{
    self, Cascade, Event, Field, Refusal, Related, StoredJob, Transition, Write,
};
use lts_core::{FeedbackItem, Job, JobState, LogEntry, Shard, ShardProgress, workflow};
use rusqlite::types::Value;
use rusqlite::{Connection, params, params_from_iter};

use super::schema::{Found, JOB_COLS, SHARD_INDEX_COL, encode, found_all};
use crate::store::work::Work;
use crate::store::{StoreError, StoreResult};

/// A transition as written.
#[derive(Debug)]
pub(super) struct Written {
    /// What the event did.
    pub transition: Transition,
    /// Whether its follow-up job was inserted (not when an unfinished job has its task id).
    pub follow_up_inserted: bool,
    /// The submit node group its feedback was recorded for.
    pub feedback_group: Option<String>,
    /// The node groups where its cascade queued jobs (workflow nodes whose predecessors
    /// ended).
    pub woken: Vec<String>,
}

/// Applies `event` at `now` to the job as read and writes the transition, with its cascade;
/// a refusal writes nothing. `spec_json` is the transition's spec as JSON, when the caller has
/// it already.
pub(super) fn change(
    conn: &Connection,
    found: &Found,
    event: Event,
    now: i64,
    retry: &RetryPolicy,
    spec_json: Option<&str>,
) -> StoreResult<Result<Written, Refusal>> {
    match transition::apply(&found.stored, event, now, retry) {
        Ok(t) => write(conn, Some(found), t, spec_json, now, retry).map(Ok),
        Err(refusal) => Ok(Err(refusal)),
    }
}

/// Writes `t`, the transition of the job `found` (none for a new job), then its cascade —
/// and the cascades of the changes that cascade makes, one after another (a workflow node's
/// skip may skip a chain of 10,000 nodes: a work list, not recursion).
pub(super) fn write(
    conn: &Connection,
    found: Option<&Found>,
    t: Transition,
    spec_json: Option<&str>,
    now: i64,
    retry: &RetryPolicy,
) -> StoreResult<Written> {
    let (mut written, cascade) = write_one(conn, found, t, spec_json)?;
    let mut work = Work::default();
    work.todo.extend(cascade);
    while let Some(cascade) = work.todo.pop_front() {
        run_cascade(conn, &cascade, now, retry, &mut work)?;
    }
    written.woken = work.woken;
    Ok(written)
}

/// Applies `event` to the job as read, as [`change`] does, but leaves the transition's cascade
/// to `work` instead of running it.
fn change_one(
    conn: &Connection,
    found: &Found,
    event: Event,
    now: i64,
    retry: &RetryPolicy,
    work: &mut Work,
) -> StoreResult<()> {
    if let Ok(t) = transition::apply(&found.stored, event, now, retry) {
        let (written, cascade) = write_one(conn, Some(found), t, None)?;
        let job = &written.transition.job.job;
        if found.stored.job.state == JobState::Waiting && job.state == JobState::Queued {
            work.wake(&job.spec.task_tracker_node_group);
        }
        work.todo.extend(cascade);
    }
    // A refusal (a running instance cancelled with its schedule, a node judged twice) writes
    // nothing.
    Ok(())
}

/// Writes `t` alone, and hands back the cascade to run after it (if any).
fn write_one(
    conn: &Connection,
    found: Option<&Found>,
    t: Transition,
    spec_json: Option<&str>,
) -> StoreResult<(Written, Option<Cascade>)> {
    match (&t.write, found) {
        (Write::Insert, _) => {
            if !insert(conn, &t.job, spec_json)? {
                return Err(StoreError::Backend(format!(
                    "job {}: an unfinished job has its task id",
                    t.job.job.job_id
                )));
            }
        }
        (Write::Update { from, fields }, Some(f)) => {
            super::leased::forget(&f.stored.job.job_id);
            update(conn, f, *from, fields, &t.job, spec_json)?
        }
        (Write::Finish { from, .. }, Some(f)) => {
            super::leased::forget(&f.stored.job.job_id);
            finish(conn, f, *from, &t.job.job)?
        }
        (Write::Keep, _) => {}
        (Write::Update { .. } | Write::Finish { .. }, None) => {
            return Err(StoreError::Backend("an update of a job never read".into()));
        }
    }
    log_lines(conn, &t.logs)?;
    let feedback_group = t.feedback.as_ref().map(|f| feedback(conn, f)).transpose()?;
    let mut follow_up_inserted = false;
    if let Some(f) = &t.follow_up
        && insert(conn, &f.job, None)?
    {
        log_lines(conn, &f.logs)?;
        follow_up_inserted = true;
    }
    for shard in &t.fan_out {
        // A retry's kept (or at once skipped) workflow nodes are written as ended.
        if shard.job.state.is_final() {
            insert_finished(conn, &shard.job)?;
            continue;
        }
        if !insert(conn, shard, None)? {
            return Err(StoreError::Backend(format!(
                "shard {}: an unfinished job has its task id {:?}",
                shard.job.job_id, shard.job.spec.task_id
            )));
        }
    }
    // A fire replaces earlier runs only once its own instance is stored.
    let cascade = t
        .cascade
        .clone()
        .filter(|c| follow_up_inserted || !matches!(c, Cascade::ReplaceInstances { .. }));
    let written = Written {
        transition: t,
        follow_up_inserted,
        feedback_group,
        woken: Vec::new(),
    };
    Ok((written, cascade))
}

/// Works on the jobs a cascade names: each instance or shard by its own transition (a refusal,
/// say of a running instance cancelled with its schedule, writes nothing), or a workflow
/// node's waiting successors and the sharded job whose shards all ended. The cascades of those
/// changes go to `work`.
fn run_cascade(
    conn: &Connection,
    cascade: &Cascade,
    now: i64,
    retry: &RetryPolicy,
    work: &mut Work,
) -> StoreResult<()> {
    let related = match cascade.related() {
        Related::InstancesOf(definition) => found_all(
            &mut conn.prepare_cached(&format!(
                "SELECT {JOB_COLS} FROM jobs INDEXED BY jobs_instance_of WHERE instance_of = ?1"
            ))?,
            params![definition],
        )?,
        Related::ShardsOf(run) => found_all(
            &mut conn.prepare_cached(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE job_id >= ?1 AND job_id < ?2"
            ))?,
            params![Shard::ids_from(run), Shard::ids_to(run)],
        )?,
        Related::Parent {
            parent,
            run,
            successors,
        } => {
            if successors.len() >= BULK_JUDGE {
                for found in waiting_nodes(conn, run, successors)? {
                    judge_successor(conn, run, found, now, retry, work)?;
                }
            } else {
                for &index in successors {
                    let id = Shard::id(run, index);
                    if let Some(found) = super::queries::find_by_id(conn, &id)? {
                        judge_successor(conn, run, found, now, retry, work)?;
                    }
                }
            }
            if any_unfinished(conn, run)? {
                return Ok(());
            }
            let progress = shard_progress(conn, run)?;
            if let Some(found) = super::queries::find_by_id(conn, parent)? {
                // Refused (the job was cancelled meanwhile, say): nothing to write.
                change_one(conn, &found, Event::ShardsEnded(progress), now, retry, work)?;
            }
            return Ok(());
        }
        Related::Job(id) => super::queries::find_by_id(conn, id)?.into_iter().collect(),
    };
    for found in &related {
        if let Some(event) = cascade.event_for(&found.stored.job.job_id) {
            change_one(conn, found, event, now, retry, work)?;
        }
    }
    Ok(())
}

/// How many successors a node's end has before they are read in one scan of the run's waiting
/// nodes ([`waiting_nodes`]) rather than one by one: a fan-out's root has thousands.
const BULK_JUDGE: usize = 32;

/// The waiting nodes of `run` among `successors` (their indexes): one range scan of the run's
/// ids, each row decoded only if it is one of them. Read in full before any is judged, so the judging writes nothing the
/// scan still reads.
fn waiting_nodes(conn: &Connection, run: &str, successors: &[u32]) -> StoreResult<Vec<Found>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLS} FROM jobs WHERE job_id >= ?1 AND job_id < ?2 AND state = ?3"
    ))?;
    let mut rows = stmt.query(params![
        Shard::ids_from(run),
        Shard::ids_to(run),
        JobState::Waiting.code()
    ])?;
    let mut sorted = successors.to_vec();
    sorted.sort_unstable();
    let mut out = Vec::with_capacity(sorted.len());
    while let Some(r) = rows.next()? {
        let index: Option<i64> = r.get(SHARD_INDEX_COL)?;
        let wanted = index
            .and_then(|i| u32::try_from(i).ok())
            .is_some_and(|i| sorted.binary_search(&i).is_ok());
        if wanted {
            out.push(super::schema::stored_job(r)?);
        }
    }
    Ok(out)
}

/// The workflow node as read (`found`) of `run`, if it waits: queued or skipped once every
/// predecessor ended ([`workflow::readiness`]).
fn judge_successor(
    conn: &Connection,
    run: &str,
    found: Found,
    now: i64,
    retry: &RetryPolicy,
    work: &mut Work,
) -> StoreResult<()> {
    let node = &found.stored.job;
    let Some(of) = node
        .node
        .as_ref()
        .filter(|_| node.state == JobState::Waiting)
    else {
        return Ok(());
    };
    let mut preds: Vec<Arc<Job>> = Vec::with_capacity(of.needs.len());
    for need in &of.needs {
        let id = Shard::id(run, need.index);
        if let Some(job) = work.ended.get(&id) {
            preds.push(job.clone());
            continue;
        }
        let key = lts_core::JobKey::Id(id.clone());
        if super::queries::find_by_key(conn, &key)?.is_some() {
            // One still runs: its own end judges this node again.
            return Ok(());
        }
        if let Some(job) = super::queries::get_finished(conn, &key)? {
            preds.push(work.remember_ended(job));
        }
    }
    let preds: Vec<&Job> = preds.iter().map(|p| p.as_ref()).collect();
    if let Some(verdict) = workflow::readiness(node, &preds) {
        change_one(
            conn,
            &found,
            Event::PredecessorsEnded(verdict),
            now,
            retry,
            work,
        )?;
    }
    Ok(())
}

/// Whether a shard (node) of `run` is unfinished: one probe of the `jobs` id index, which holds
/// only unfinished jobs.
fn any_unfinished(conn: &Connection, run: &str) -> StoreResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM jobs WHERE job_id >= ?1 AND job_id < ?2 LIMIT 1")?
        .exists(params![Shard::ids_from(run), Shard::ids_to(run)])?)
}

/// Inserts a job as new, unless an unfinished job has its node group and task id: then nothing
/// is written and the answer is `false`.
pub(super) fn insert(
    conn: &Connection,
    s: &StoredJob,
    spec_json: Option<&str>,
) -> StoreResult<bool> {
    let job = &s.job;
    let encoded;
    let spec = match spec_json {
        Some(text) => text,
        None => {
            encoded = encode(&job.spec)?;
            &encoded
        }
    };
    let n = conn
        .prepare_cached(
            "INSERT INTO jobs (job_id, node_group, task_id, state, priority, trigger_time,
                 attempt, fire_count, scheduled_fire, created_at, updated_at, lease_owner,
                 lease_token, lease_expiry, last_outcome, last_message, spec, suspend_requested,
                 instance_of, lease_losses, deadline, shard_of, shard_index, shard_count, shard_on,
                 affinity, node, route_bucket, map)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)
             ON CONFLICT (node_group, task_id) DO NOTHING",
        )?
        .execute(params![
            job.job_id,
            job.spec.task_tracker_node_group,
            job.spec.task_id,
            job.state.code(),
            job.spec.priority,
            job.trigger_time_ms,
            i64::from(job.attempt),
            job.fire_count as i64,
            job.scheduled_fire_ms,
            job.created_at_ms,
            job.updated_at_ms,
            job.lease_owner,
            s.lease_token,
            job.lease_expiry_ms,
            job.last_outcome.map(|o| o.code()),
            job.last_message,
            spec,
            s.suspend_requested,
            job.instance_of,
            i64::from(job.lease_losses),
            job.deadline_ms,
            job.shard.as_ref().map(|s| &s.of),
            job.shard.as_ref().map(|s| i64::from(s.index)),
            job.shard.as_ref().map(|s| i64::from(s.count)),
            job.shard.as_ref().and_then(|s| s.on.as_ref()),
            job.spec.affinity_key(),
            job.node.as_ref().map(encode).transpose()?,
            job.spec.route_bucket(),
            job.map.as_ref().map(encode).transpose()?,
        ])?;
    Ok(n == 1)
}

/// The `jobs` columns that hold a field (none: `finished_at` is kept by `finished_jobs`).
fn columns(field: Field) -> &'static [&'static str] {
    match field {
        Field::State => &["state"],
        Field::Spec => &["spec", "priority", "affinity", "route_bucket"],
        Field::Attempt => &["attempt", "lease_losses"],
        Field::TriggerTime => &["trigger_time"],
        Field::ScheduledFire => &["scheduled_fire"],
        Field::FireCount => &["fire_count"],
        Field::Lease => &["lease_owner", "lease_token", "lease_expiry", "deadline"],
        Field::LeaseExpiry => &["lease_expiry"],
        Field::LastResult => &["last_outcome", "last_message"],
        Field::SuspendRequested => &["suspend_requested"],
        Field::FinishedAt => &[],
        Field::UpdatedAt => &["updated_at"],
        Field::Map => &["map"],
    }
}

/// The values of a field's [`columns`] in `s`.
fn values(field: Field, s: &StoredJob, spec_json: Option<&str>) -> StoreResult<Vec<Value>> {
    let job = &s.job;
    Ok(match field {
        Field::State => vec![job.state.code().into()],
        Field::Spec => {
            let text = match spec_json {
                Some(text) => text.to_string(),
                None => encode(&job.spec)?,
            };
            vec![
                text.into(),
                job.spec.priority.into(),
                job.spec.affinity_key().into(),
                job.spec.route_bucket().into(),
            ]
        }
        Field::Attempt => vec![
            i64::from(job.attempt).into(),
            i64::from(job.lease_losses).into(),
        ],
        Field::TriggerTime => vec![job.trigger_time_ms.into()],
        Field::ScheduledFire => vec![job.scheduled_fire_ms.into()],
        Field::FireCount => vec![(job.fire_count as i64).into()],
        Field::Lease => vec![
            job.lease_owner.clone().into(),
            s.lease_token.clone().into(),
            job.lease_expiry_ms.into(),
            job.deadline_ms.into(),
        ],
        Field::LeaseExpiry => vec![job.lease_expiry_ms.into()],
        Field::LastResult => vec![
            job.last_outcome.map(|o| o.code()).into(),
            job.last_message.clone().into(),
        ],
        Field::SuspendRequested => vec![s.suspend_requested.into()],
        Field::FinishedAt => vec![],
        Field::UpdatedAt => vec![job.updated_at_ms.into()],
        Field::Map => vec![job.map.as_ref().map(encode).transpose()?.into()],
    })
}

/// Updates exactly `fields` of the job as read, to their values in `after`.
fn update(
    conn: &Connection,
    found: &Found,
    from: JobState,
    fields: &[Field],
    after: &StoredJob,
    spec_json: Option<&str>,
) -> StoreResult<()> {
    let mut sql = String::from("UPDATE jobs SET ");
    let mut args: Vec<Value> = Vec::with_capacity(fields.len() + 5);
    for &field in fields {
        for (column, value) in columns(field).iter().zip(values(field, after, spec_json)?) {
            if !args.is_empty() {
                sql.push_str(", ");
            }
            args.push(value);
            let _ = write!(sql, "{column} = ?{}", args.len());
        }
    }
    if args.is_empty() {
        return Ok(());
    }
    let n = args.len();
    let _ = write!(
        sql,
        " WHERE seq = ?{} AND state = ?{} AND lease_token IS ?{}",
        n + 1,
        n + 2,
        n + 3
    );
    args.push(found.seq.into());
    args.push(from.code().into());
    args.push(found.stored.lease_token.clone().into());
    let changed = conn.prepare_cached(&sql)?.execute(params_from_iter(args))?;
    guarded(changed, &found.stored.job)
}

fn guarded(changed: usize, job: &Job) -> StoreResult<()> {
    match changed {
        1 => Ok(()),
        _ => Err(StoreError::Backend(format!(
            "job {} changed while the writer held it",
            job.job_id
        ))),
    }
}

/// Moves the job as read to `finished_jobs`, as `job`, and counts it.
fn finish(conn: &Connection, found: &Found, from: JobState, job: &Job) -> StoreResult<()> {
    let changed = conn
        .prepare_cached("DELETE FROM jobs WHERE seq = ?1 AND state = ?2 AND lease_token IS ?3")?
        .execute(params![found.seq, from.code(), found.stored.lease_token])?;
    guarded(changed, &found.stored.job)?;
    insert_finished(conn, job)
}

/// Writes a final job to `finished_jobs`, and counts it.
fn insert_finished(conn: &Connection, job: &Job) -> StoreResult<()> {
    let group = &job.spec.task_tracker_node_group;
    conn.prepare_cached(
        "INSERT INTO finished_counts (node_group, state, n) VALUES (?1, ?2, 1)
         ON CONFLICT (node_group, state) DO UPDATE SET n = n + 1",
    )?
    .execute(params![group, job.state.code()])?;
    conn.prepare_cached(
        "INSERT INTO finished_jobs (job_id, node_group, task_id, state, finished_at, job)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        job.job_id,
        group,
        job.spec.task_id,
        job.state.code(),
        job.finished_at_ms.unwrap_or(job.updated_at_ms),
        encode(job)?
    ])?;
    Ok(())
}

/// Appends lines to the job log.
pub(super) fn log_lines(conn: &Connection, logs: &[LogEntry]) -> StoreResult<()> {
    if logs.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(
        "INSERT INTO job_log (job_id, task_id, node_group, time, log_type, level, message,
             attempt, node)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for l in logs {
        stmt.execute(params![
            l.job_id,
            l.task_id,
            l.task_tracker_node_group,
            l.time_ms,
            l.log_type.as_str(),
            l.level.as_str(),
            l.message,
            i64::from(l.attempt),
            l.node
        ])?;
    }
    Ok(())
}

/// Records feedback for its submit node group, which it answers.
fn feedback(conn: &Connection, item: &FeedbackItem) -> StoreResult<String> {
    let group = &item.job.spec.submit_node_group;
    conn.prepare_cached(
        "INSERT INTO feedback (submit_group, job_id, item, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        group,
        item.job.job_id,
        encode(item)?,
        item.finished_at_ms
    ])?;
    Ok(group.clone())
}

/// The shards of one run of a sharded job ([`Shard::run_of`]) by state: the unfinished ones in
/// `jobs`, the ended ones in `finished_jobs`, each found by its id's range.
pub(super) fn shard_progress(conn: &Connection, run: &str) -> StoreResult<ShardProgress> {
    let (from, to) = (Shard::ids_from(run), Shard::ids_to(run));
    let mut p = ShardProgress::default();
    for table in ["jobs", "finished_jobs"] {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT state, count(*) FROM {table} WHERE job_id >= ?1 AND job_id < ?2 GROUP BY state"
        ))?;
        let mut rows = stmt.query(params![from, to])?;
        while let Some(r) = rows.next()? {
            let (code, n): (i64, i64) = (r.get(0)?, r.get(1)?);
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            match JobState::from_code(code) {
                Some(JobState::Running) => p.running += n,
                Some(JobState::Queued | JobState::Suspended | JobState::Waiting) => p.pending += n,
                Some(JobState::Succeeded) => p.succeeded += n,
                Some(JobState::Skipped) => p.skipped += n,
                Some(JobState::Failed | JobState::Cancelled) | None => p.failed += n,
            }
        }
    }
    if p.failed > 0 {
        // Workflow nodes whose failure an edge out of them handles.
        let handled: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM finished_jobs WHERE job_id >= ?1 AND job_id < ?2
                 AND state IN (?3, ?4) AND json_extract(job, '$.node.handles_failure') = 1",
            )?
            .query_row(
                params![
                    from,
                    to,
                    JobState::Failed.code(),
                    JobState::Cancelled.code()
                ],
                |r| r.get(0),
            )?;
        p.handled = u32::try_from(handled).unwrap_or(u32::MAX);
    }
    Ok(p)
}
