//! The embedded [`JobStore`]: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that **groups commits**: it takes every operation
//! waiting in its queue (up to [`MAX_GROUP`]), runs each inside its own savepoint, commits once
//! and only then answers each caller. One fsync thus covers many submits, claims and
//! completions, which is what makes a durable (`synchronous=FULL`) store fast. Reads use a
//! small pool of separate connections and never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use async_trait::async_trait;
use lts_core::schedule::{
    self, Disposition, RetryPolicy, disposition, first_trigger, resume_trigger,
};
use lts_core::{FeedbackItem, Job, JobSpec, JobState, LogEntry, LogLevel, LogType, Outcome};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    CancelOutcome, ChangeOutcome, ClaimRequest, CompleteOutcome, Completion, HeldLease, JobKey,
    JobStore, Lease, LeaseRef, ListFilter, Page, Requeued, Stats, StoreError, StoreResult,
    SubmitOutcome, parse_log_type,
};

/// Most operations committed together.
pub const MAX_GROUP: usize = 2048;
const READERS: usize = 3;

/// How hard SQLite syncs on commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// fsync on every (grouped) commit: survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: survives a process crash, may lose the last commits on power
    /// loss.
    Normal,
}

/// Options of the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Durability level.
    pub sync: SyncMode,
    /// How retries are spaced.
    pub retry: RetryPolicy,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            sync: SyncMode::Full,
            retry: RetryPolicy::default(),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

type Finish = Box<dyn FnOnce(Option<&StoreError>) + Send>;
type WriteOp = (
    &'static str,
    Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>,
);

/// The SQLite job store.
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<WriteOp>,
    readers: Arc<Mutex<Vec<Connection>>>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Version of [`SCHEMA`], kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id         TEXT NOT NULL UNIQUE,
    node_group     TEXT NOT NULL,
    task_id        TEXT NOT NULL,
    state          INTEGER NOT NULL,
    priority       INTEGER NOT NULL,
    trigger_time   INTEGER NOT NULL,
    attempt        INTEGER NOT NULL DEFAULT 0,
    fire_count     INTEGER NOT NULL DEFAULT 1,
    scheduled_fire INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    lease_owner    TEXT,
    lease_token    TEXT,
    lease_expiry   INTEGER,
    last_outcome   INTEGER,
    last_message   TEXT,
    spec           TEXT NOT NULL,
    -- Suspended by a user (while queued: state = 3; while running: when the attempt ends).
    suspend_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_task ON jobs(node_group, task_id);
-- Partial indexes: each holds only the rows it serves, so a state change is one index delete
-- or insert instead of an update in every index.
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs(node_group, priority DESC, trigger_time, seq) WHERE state = 1;
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(node_group, trigger_time) WHERE state = 1;
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs(lease_expiry) WHERE state = 2;

-- Finished jobs, in finishing order (the rowid), for the retention period. Retention deletes
-- from the front, so no time index is needed.
CREATE TABLE IF NOT EXISTS finished_jobs (
    id          INTEGER PRIMARY KEY,
    job_id      TEXT NOT NULL UNIQUE,
    node_group  TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    state       INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    job         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS finished_task ON finished_jobs(node_group, task_id);

-- How many finished jobs each node group has per final state (kept with the rows above).
CREATE TABLE IF NOT EXISTS finished_counts (
    node_group TEXT NOT NULL,
    state      INTEGER NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (node_group, state)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS job_log (
    id         INTEGER PRIMARY KEY,
    job_id     TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    node_group TEXT NOT NULL,
    time       INTEGER NOT NULL,
    log_type   TEXT NOT NULL,
    level      TEXT NOT NULL,
    message    TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    node       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_log_job ON job_log(job_id, id);

-- The newest master's election epoch (fencing of master-only writes).
CREATE TABLE IF NOT EXISTS fence (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    epoch    INTEGER NOT NULL,
    identity TEXT NOT NULL,
    at       INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS feedback (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    submit_group TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    item       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_group ON feedback(submit_group, id);
"#;

const JOB_COLS: &str = "job_id, node_group, task_id, state, priority, trigger_time, attempt, \
     fire_count, scheduled_fire, created_at, updated_at, lease_owner, lease_token, lease_expiry, \
     last_outcome, last_message, spec";

/// A `jobs` row as read; decoded outside the writer thread.
#[derive(Clone)]
struct RawJob {
    job_id: String,
    task_id: String,
    state: i64,
    trigger_time: i64,
    attempt: i64,
    fire_count: i64,
    scheduled_fire: Option<i64>,
    created_at: i64,
    updated_at: i64,
    lease_owner: Option<String>,
    lease_token: Option<String>,
    lease_expiry: Option<i64>,
    last_outcome: Option<i64>,
    last_message: Option<String>,
    spec: String,
}

impl RawJob {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawJob> {
        Ok(RawJob {
            job_id: r.get(0)?,
            task_id: r.get(2)?,
            state: r.get(3)?,
            trigger_time: r.get(5)?,
            attempt: r.get(6)?,
            fire_count: r.get(7)?,
            scheduled_fire: r.get(8)?,
            created_at: r.get(9)?,
            updated_at: r.get(10)?,
            lease_owner: r.get(11)?,
            lease_token: r.get(12)?,
            lease_expiry: r.get(13)?,
            last_outcome: r.get(14)?,
            last_message: r.get(15)?,
            spec: r.get(16)?,
        })
    }

    fn decode(self) -> StoreResult<Job> {
        let spec: JobSpec = serde_json::from_str(&self.spec)
            .map_err(|e| StoreError::Corrupt(format!("job {}: spec: {e}", self.job_id)))?;
        Ok(Job {
            state: JobState::from_code(self.state).ok_or_else(|| {
                StoreError::Corrupt(format!("job {}: state {}", self.job_id, self.state))
            })?,
            job_id: self.job_id,
            spec,
            attempt: self.attempt as u32,
            trigger_time_ms: self.trigger_time,
            created_at_ms: self.created_at,
            updated_at_ms: self.updated_at,
            lease_owner: self.lease_owner,
            lease_expiry_ms: self.lease_expiry,
            last_outcome: self.last_outcome.and_then(Outcome::from_code),
            last_message: self.last_message,
            finished_at_ms: None,
            scheduled_fire_ms: self.scheduled_fire,
            fire_count: self.fire_count as u64,
        })
    }
}

/// Creates and leases the instance of a definition's due fire (see
/// [`lts_core::schedule::fires_overlapping_instances`]) and moves the definition, just leased by
/// a claim, on to its next fire — or finishes it when its schedule is exhausted. Returns the
/// instance's `(seq, row)`; `(0, _)` when no instance was created (the misfire policy skips a
/// missed fire, or a job with the instance's task id exists), `None` when the job is not
/// such a definition.
fn fire_instance(
    conn: &Connection,
    seq: i64,
    def: &RawJob,
    req: &ClaimRequest,
) -> StoreResult<Option<(i64, RawJob)>> {
    let spec: JobSpec = serde_json::from_str(&def.spec)
        .map_err(|e| StoreError::Corrupt(format!("job {}: spec: {e}", def.job_id)))?;
    if !schedule::fires_overlapping_instances(&spec) {
        return late_sequential_fire(conn, seq, def, &spec, req);
    }
    let now = req.now_ms;
    let fire = def.scheduled_fire.unwrap_or(def.trigger_time);
    let fired = def.fire_count.max(1) as u64;
    let group = &spec.task_tracker_node_group;
    let step = schedule::overlap_step(&spec, fire, fired, now);
    let inst = schedule::instance_spec(&spec, step.instance_fire_ms);
    let inst_id = new_job_id();
    let text = encode_spec(&inst)?;
    let inserted = if !step.run {
        0
    } else {
        conn
        .prepare_cached(
            "INSERT OR IGNORE INTO jobs (job_id, node_group, task_id, state, priority, trigger_time,
                 attempt, fire_count, scheduled_fire, created_at, updated_at, lease_owner,
                 lease_token, lease_expiry, spec)
             VALUES (?1, ?2, ?3, 2, ?4, ?5, 1, ?6, ?7, ?8, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            inst_id,
            group,
            inst.task_id,
            inst.priority,
            def.trigger_time,
            fired as i64,
            step.instance_fire_ms,
            now,
            def.lease_owner,
            def.lease_token,
            def.lease_expiry,
            text
        ])?
    };
    let inst_seq = conn.last_insert_rowid();
    if inserted == 1 {
        log_line(
            conn,
            &inst_id,
            &inst.task_id,
            group,
            now,
            LogType::Receive,
            LogLevel::Info,
            &format!("fire {} of {}", lts_core::format_ms(fire), def.job_id),
            0,
            "",
        )?;
    }
    let what = if step.run { FIRED } else { SKIPPED };
    advance_schedule(conn, seq, def, group, fire, step.next_ms, what, now)?;
    if inserted == 0 {
        return Ok(Some((0, def.clone())));
    }
    // The row as inserted, without reading it back.
    let row = RawJob {
        job_id: inst_id,
        task_id: inst.task_id,
        state: JobState::Running.code(),
        trigger_time: def.trigger_time,
        attempt: 1,
        fire_count: fired as i64,
        scheduled_fire: Some(step.instance_fire_ms),
        created_at: now,
        updated_at: now,
        lease_owner: def.lease_owner.clone(),
        lease_token: def.lease_token.clone(),
        lease_expiry: def.lease_expiry,
        last_outcome: None,
        last_message: None,
        spec: text,
    };
    Ok(Some((inst_seq, row)))
}

/// For a just-claimed recurring job relying on its previous cycle, whose first attempt at a
/// fire was claimed late: the misfire policy ([`schedule::late_fire`]). `FireOnce` runs it as
/// the fire of now (so its completion does not queue another catch-up); `Skip` gives the
/// lease back and queues it for its next fire (`(0, _)`: nothing to hand out).
fn late_sequential_fire(
    conn: &Connection,
    seq: i64,
    job: &RawJob,
    spec: &JobSpec,
    req: &ClaimRequest,
) -> StoreResult<Option<(i64, RawJob)>> {
    if job.attempt != 1 {
        return Ok(None); // a retry keeps its fire
    }
    let now = req.now_ms;
    let fire = job.scheduled_fire.unwrap_or(job.trigger_time);
    let group = &spec.task_tracker_node_group;
    let late = schedule::late_fire(
        spec,
        job.trigger_time,
        fire,
        job.fire_count.max(1) as u64,
        now,
    );
    match late {
        schedule::LateFire::OnTime => return Ok(None),
        schedule::LateFire::CatchUp => {
            conn.prepare_cached("UPDATE jobs SET scheduled_fire = ?2 WHERE seq = ?1")?
                .execute(params![seq, now])?;
            schedule_log(
                conn,
                job,
                group,
                now,
                &format!(
                    "missed fire {}: one catch-up run now",
                    lts_core::format_ms(fire)
                ),
            )?;
            let mut caught_up = job.clone();
            caught_up.scheduled_fire = Some(now);
            return Ok(Some((seq, caught_up)));
        }
        schedule::LateFire::Skip { next_ms } => {
            advance_schedule(conn, seq, job, group, fire, next_ms, SKIPPED, now)?;
        }
    }
    Ok(Some((0, job.clone())))
}

/// What [`advance_schedule`] did with a fire.
const FIRED: &str = "fired";
const SKIPPED: &str = "skipped the missed fire";

/// Moves a just-claimed recurring job on to its fire `next` (queued, lease dropped, one more
/// fire counted), or finishes it when its schedule is exhausted (`None`); logs `what` it did
/// with `fire` — except a plain fire that the schedule goes on from: the instance's own log
/// tells of it, and a cron firing every second would fill its definition's log otherwise.
#[allow(clippy::too_many_arguments)]
fn advance_schedule(
    conn: &Connection,
    seq: i64,
    job: &RawJob,
    group: &str,
    fire: i64,
    next: Option<i64>,
    what: &str,
    now: i64,
) -> StoreResult<()> {
    let note = match next {
        Some(next) => {
            conn.prepare_cached(
                "UPDATE jobs SET state = 1, lease_owner = NULL, lease_token = NULL,
                     lease_expiry = NULL, attempt = 0, trigger_time = ?2, scheduled_fire = ?2,
                     fire_count = fire_count + 1, updated_at = ?3
                 WHERE seq = ?1",
            )?
            .execute(params![seq, next, now])?;
            if what == FIRED {
                return Ok(());
            }
            format!(
                "{what} {}; next fire {}",
                lts_core::format_ms(fire),
                lts_core::format_ms(next)
            )
        }
        None => {
            let mut done = job.clone().decode()?;
            done.attempt = 0;
            done.last_message = Some("schedule complete".into());
            finish_job(conn, seq, done, JobState::Succeeded, now)?;
            format!(
                "{what} {}, the last of its schedule",
                lts_core::format_ms(fire)
            )
        }
    };
    schedule_log(conn, job, group, now, &note)
}

/// An `UPDATE` line in a recurring job's log about its schedule.
fn schedule_log(
    conn: &Connection,
    job: &RawJob,
    group: &str,
    now: i64,
    note: &str,
) -> StoreResult<()> {
    log_line(
        conn,
        &job.job_id,
        &job.task_id,
        group,
        now,
        LogType::Update,
        LogLevel::Info,
        note,
        0,
        "",
    )?;
    Ok(())
}

/// Cancels the queued (or suspended) instances of a cancelled recurring job: its pending
/// retries and triggered runs. Running instances finish their attempt.
fn cancel_queued_instances(
    conn: &Connection,
    def_id: &str,
    task_id: &str,
    group: &str,
    now: i64,
) -> StoreResult<()> {
    let rows: Vec<(i64, RawJob)> = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLS}, seq FROM jobs
             WHERE node_group = ?1 AND task_id LIKE ?2 ESCAPE '\\' AND state IN (1, 3)"
        ))?
        .query_map(
            params![group, like_prefix(&schedule::instance_prefix(task_id))],
            |r| Ok((r.get(17)?, RawJob::from_row(r)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    for (seq, raw) in rows {
        let job = raw.decode()?;
        let (id, task, attempt) = (job.job_id.clone(), job.spec.task_id.clone(), job.attempt);
        finish_job(conn, seq, job, JobState::Cancelled, now)?;
        log_line(
            conn,
            &id,
            &task,
            group,
            now,
            LogType::Del,
            LogLevel::Info,
            &format!("cancelled with its schedule {def_id}"),
            i64::from(attempt),
            "",
        )?;
    }
    Ok(())
}

fn new_job_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn open_conn(path: &Path, sync: SyncMode) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Savepoint journals and temp b-trees in memory; a page cache that holds the hot indexes.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -16_384)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

#[allow(clippy::too_many_arguments)]
fn log_line(
    conn: &Connection,
    job_id: &str,
    task_id: &str,
    node_group: &str,
    time: i64,
    log_type: LogType,
    level: LogLevel,
    message: &str,
    attempt: i64,
    node: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO job_log (job_id, task_id, node_group, time, log_type, level, message, attempt, node)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        job_id,
        task_id,
        node_group,
        time,
        log_type.as_str(),
        level.as_str(),
        message,
        attempt,
        node
    ])?;
    Ok(())
}

fn fetch_active(conn: &Connection, job_id: &str) -> rusqlite::Result<Option<(i64, RawJob)>> {
    conn.prepare_cached(&format!(
        "SELECT {JOB_COLS}, seq FROM jobs WHERE job_id = ?1"
    ))?
    .query_row([job_id], |r| Ok((r.get(17)?, RawJob::from_row(r)?)))
    .optional()
}

fn finish_job(
    conn: &Connection,
    seq: i64,
    mut job: Job,
    state: JobState,
    now: i64,
) -> StoreResult<Job> {
    job.state = state;
    job.finished_at_ms = Some(now);
    job.updated_at_ms = now;
    job.lease_owner = None;
    job.lease_expiry_ms = None;
    let text = serde_json::to_string(&job).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached("DELETE FROM jobs WHERE seq = ?1")?
        .execute([seq])?;
    conn.prepare_cached(
        "INSERT INTO finished_counts (node_group, state, n) VALUES (?1, ?2, 1)
         ON CONFLICT (node_group, state) DO UPDATE SET n = n + 1",
    )?
    .execute(params![job.spec.task_tracker_node_group, state.code()])?;
    conn.prepare_cached(
        "INSERT INTO finished_jobs (job_id, node_group, task_id, state, finished_at, job)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        job.job_id,
        job.spec.task_tracker_node_group,
        job.spec.task_id,
        state.code(),
        now,
        text
    ])?;
    Ok(job)
}

impl SqliteStore {
    /// Opens (and creates, if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("create {}: {e}", dir.display())))?;
        }
        let conn = open_conn(&path, options.sync)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != 0 && version < SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "{} has the pre-release schema version {version}; move it away to start a new store",
                path.display()
            )));
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "{} has schema version {version}; this build knows up to {SCHEMA_VERSION}: upgrade lts-tracker",
                path.display()
            )));
        }
        if version == 2 {
            // v3: suspension of running jobs.
            conn.execute_batch(
                "ALTER TABLE jobs ADD COLUMN suspend_requested INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_conn(&path, options.sync)?);
        }
        // Checkpoints run on their own thread and connection, so the writer never copies WAL
        // pages back into the database inside a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = open_conn(&path, options.sync)?;
        let (tx, rx) = mpsc::channel::<WriteOp>(MAX_GROUP * 4);
        let alive = tx.downgrade();
        thread::Builder::new()
            .name("lts-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Backend(format!("spawn writer: {e}")))?;
        thread::Builder::new()
            .name("lts-sqlite-ckpt".into())
            .spawn(move || checkpoint_loop(checkpointer, alive))
            .map_err(|e| StoreError::Backend(format!("spawn checkpointer: {e}")))?;
        Ok(SqliteStore {
            path,
            writer: tx,
            readers: Arc::new(Mutex::new(readers)),
            retry: options.retry,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the writer thread inside the next grouped transaction; answers after commit.
    async fn write<T, F>(&self, name: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: WriteOp = (
            name,
            Box::new(move |conn| {
                let result = f(conn);
                let ok = result.is_ok();
                let finish: Finish = Box::new(move |commit_err| {
                    let _ = tx.send(match commit_err {
                        None => result,
                        Some(e) => Err(e.clone()),
                    });
                });
                (ok, finish)
            }),
        );
        self.writer.send(op).await.map_err(|_| StoreError::Closed)?;
        rx.await
            .map_err(|_| StoreError::Backend("the write was not committed".into()))?
    }

    /// Runs `f` on a reader connection in the blocking pool.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .ok_or(StoreError::Closed)?;
            let result = f(&conn);
            readers.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("reader task: {e}")))?
    }

    /// Queues again the leased jobs matching `condition` (SQL over `jobs`, with `?1` the
    /// current time and `?2`… the `args`), each with a `FIXED_DEAD` log line.
    fn requeue_where(
        conn: &Connection,
        index: &str,
        condition: &str,
        now: i64,
        args: &[&dyn rusqlite::ToSql],
        note: &str,
        out: &mut Vec<Requeued>,
    ) -> StoreResult<()> {
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE jobs {index}
             SET state = CASE WHEN suspend_requested = 1 THEN 3 ELSE 1 END,
                 lease_owner = NULL, lease_token = NULL, lease_expiry = NULL, updated_at = ?1
             WHERE state = 2 AND {condition}
             RETURNING job_id, node_group, task_id, attempt"
        ))?;
        let mut all: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(args.len() + 1);
        all.push(&now);
        all.extend_from_slice(args);
        let rows: Vec<(String, String, String, i64)> = stmt
            .query_map(all.as_slice(), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (job_id, node_group, task_id, attempt) in rows {
            log_line(
                conn,
                &job_id,
                &task_id,
                &node_group,
                now,
                LogType::FixedDead,
                LogLevel::Warn,
                note,
                attempt,
                "",
            )?;
            out.push(Requeued { job_id, node_group });
        }
        Ok(())
    }
}

/// Copies the WAL back into the database every second (PASSIVE: never blocks the writer or
/// readers); once the WAL passes 64 MiB it waits for readers (RESTART) so it cannot grow
/// without bound. Stops with the store.
/// Copies committed WAL pages back into the database file, a little at a time: a PASSIVE
/// checkpoint every 200 ms keeps each one small, so its write-back and fsync never hold up the
/// writer's commits for long (after a burst of work, one large checkpoint a second stalled
/// commits for ~100 ms).
fn checkpoint_loop(conn: Connection, alive: mpsc::WeakSender<WriteOp>) {
    const WAL_LIMIT_PAGES: i64 = 16_384;
    while alive.upgrade().is_some() {
        thread::sleep(std::time::Duration::from_millis(200));
        let r: rusqlite::Result<(i64, i64, i64)> =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            });
        match r {
            Ok((_, log, done)) if log > WAL_LIMIT_PAGES && done < log => {
                if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(RESTART)") {
                    tracing::debug!(error = %e, "sqlite: restart checkpoint failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sqlite: checkpoint failed"),
        }
    }
}

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<WriteOp>) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(MAX_GROUP);
    let mut finishers: Vec<Finish> = Vec::with_capacity(MAX_GROUP);
    let (mut commits, mut ops, mut since) = (0u64, 0u64, std::time::Instant::now());
    let mut op_time: std::collections::BTreeMap<&'static str, std::time::Duration> =
        Default::default();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        metrics::histogram!("lts_store_commit_group_size").record(batch.len() as f64);
        commits += 1;
        ops += batch.len() as u64;
        if since.elapsed() >= std::time::Duration::from_secs(10) {
            tracing::debug!(commits, ops, ops_per_commit = ops as f64 / commits as f64, op_ms = ?op_time.iter().map(|(k, v)| (*k, v.as_millis())).collect::<Vec<_>>(), "sqlite writer");
            (commits, ops, since) = (0, 0, std::time::Instant::now());
            op_time.clear();
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Dropping the operations drops their answer channels: every caller gets an error
            // and nothing was written.
            tracing::error!(error = %e, ops = batch.len(), "sqlite: cannot begin a transaction");
            batch.clear();
            continue;
        }
        for (name, op) in batch.drain(..) {
            let started = std::time::Instant::now();
            let _ = conn.execute_batch("SAVEPOINT op");
            let (ok, finish) = op(&conn);
            let took = started.elapsed();
            metrics::histogram!("lts_store_op_seconds", "op" => name).record(took.as_secs_f64());
            *op_time.entry(name).or_default() += took;
            if ok {
                let _ = conn.execute_batch("RELEASE op");
            } else {
                let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
            }
            finishers.push(finish);
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                for f in finishers.drain(..) {
                    f(None);
                }
            }
            Err(e) => {
                let err = StoreError::from(e);
                tracing::error!(error = %err, "sqlite: commit failed");
                let _ = conn.execute_batch("ROLLBACK");
                for f in finishers.drain(..) {
                    f(Some(&err));
                }
            }
        }
    }
    tracing::debug!("sqlite writer stopped");
}

fn encode_spec(spec: &JobSpec) -> StoreResult<String> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn submit(&self, jobs: Vec<JobSpec>, now: i64) -> StoreResult<Vec<SubmitOutcome>> {
        let encoded: Vec<(JobSpec, String)> = jobs
            .into_iter()
            .map(|s| encode_spec(&s).map(|e| (s, e)))
            .collect::<StoreResult<_>>()?;
        self.write("submit", move |conn| {
            let mut out = Vec::with_capacity(encoded.len());
            for (spec, text) in encoded {
                let group = &spec.task_tracker_node_group;
                let existing: Option<(String, i64, i64)> = conn
                    .prepare_cached(
                        "SELECT job_id, state, attempt FROM jobs WHERE node_group = ?1 AND task_id = ?2",
                    )?
                    .query_row(params![group, spec.task_id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?;
                let trigger = first_trigger(&spec, now).unwrap_or(now);
                match existing {
                    Some((job_id, state, attempt)) if spec.replace_on_exist => {
                        // A running instance keeps its lease; the new definition applies to
                        // what comes after it. A queued one takes the new trigger time.
                        conn.prepare_cached(
                            "UPDATE jobs SET spec = ?2, priority = ?3, updated_at = ?4,
                                 trigger_time = CASE WHEN state = 1 THEN ?5 ELSE trigger_time END,
                                 scheduled_fire = CASE WHEN state = 1 THEN ?5 ELSE scheduled_fire END
                             WHERE job_id = ?1",
                        )?
                        .execute(params![job_id, text, spec.priority, now, trigger])?;
                        let note = if state == JobState::Running.code() {
                            "replaced by a new submit; applies after the running attempt"
                        } else {
                            "replaced by a new submit"
                        };
                        log_line(
                            conn, &job_id, &spec.task_id, group, now, LogType::Update,
                            LogLevel::Info, note, attempt, "",
                        )?;
                        out.push(SubmitOutcome::Replaced { job_id });
                    }
                    Some((job_id, _, _)) => out.push(SubmitOutcome::Duplicate { job_id }),
                    None => {
                        let job_id = new_job_id();
                        let scheduled = spec.schedule.is_recurring().then_some(trigger);
                        conn.prepare_cached(
                            "INSERT INTO jobs (job_id, node_group, task_id, state, priority, trigger_time,
                                 scheduled_fire, created_at, updated_at, spec)
                             VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?7, ?8)",
                        )?
                        .execute(params![
                            job_id, group, spec.task_id, spec.priority, trigger, scheduled, now, text
                        ])?;
                        log_line(
                            conn, &job_id, &spec.task_id, group, now, LogType::Receive,
                            LogLevel::Info, "accepted", 0, "",
                        )?;
                        out.push(SubmitOutcome::Accepted { job_id });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Lease>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expiry = req.now_ms + req.lease_ms;
        let tok = token.clone();
        let raws = self
            .write("claim", move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "UPDATE jobs SET state = 2, lease_owner = ?1, lease_token = ?2, lease_expiry = ?3,
                         attempt = attempt + 1, updated_at = ?4
                     WHERE seq IN (
                         SELECT seq FROM jobs INDEXED BY jobs_claim
                         WHERE node_group = ?5 AND state = 1 AND trigger_time <= ?4
                         ORDER BY priority DESC, trigger_time ASC, seq ASC
                         LIMIT ?6)
                     RETURNING {JOB_COLS}, seq"
                ))?;
                let mut rows: Vec<(i64, RawJob)> = stmt
                    .query_map(
                        params![req.owner, tok, expiry, req.now_ms, req.node_group, req.max as i64],
                        |r| Ok((r.get(17)?, RawJob::from_row(r)?)),
                    )?
                    .collect::<rusqlite::Result<_>>()?;
                drop(stmt);
                // A recurring job with overlapping instances is not run itself: the instance of
                // its due fire is created and leased in its place, and it moves on to its next
                // fire (or finishes) in the same transaction. A missed fire of any recurring
                // job follows its misfire policy.
                for (seq, raw) in rows.iter_mut() {
                    // A cheap test first: only cron and repeat specs are parsed.
                    if super::spec_may_recur(&raw.spec)
                        && let Some(instance) = fire_instance(conn, *seq, raw, &req)?
                    {
                        *seq = instance.0;
                        *raw = instance.1;
                    }
                }
                rows.retain(|(seq, _)| *seq != 0);
                for (_, raw) in &rows {
                    log_line(
                        conn, &raw.job_id, &raw.task_id, &req.node_group, req.now_ms, LogType::Sent,
                        LogLevel::Info, &req.owner, raw.attempt, &req.owner,
                    )?;
                }
                // RETURNING has no order: restore the claim order.
                rows.sort_by_key(|(seq, raw)| (raw.trigger_time, *seq));
                Ok(rows)
            })
            .await?;
        let mut leases = Vec::with_capacity(raws.len());
        for (_, raw) in raws {
            leases.push(Lease {
                job: raw.decode()?,
                token: token.clone(),
                expiry_ms: expiry,
            });
        }
        leases.sort_by_key(|l| std::cmp::Reverse(l.job.spec.priority));
        Ok(leases)
    }

    async fn renew(&self, leases: Vec<LeaseRef>, expiry: i64) -> StoreResult<Vec<String>> {
        self.write("renew", move |conn| {
            let mut lost = Vec::new();
            let mut stmt = conn.prepare_cached(
                "UPDATE jobs SET lease_expiry = ?3 WHERE job_id = ?1 AND lease_token = ?2 AND state = 2",
            )?;
            for l in leases {
                if stmt.execute(params![l.job_id, l.token, expiry])? == 0 {
                    lost.push(l.job_id);
                }
            }
            Ok(lost)
        })
        .await
    }

    async fn complete(&self, c: Completion) -> StoreResult<CompleteOutcome> {
        let retry = self.retry;
        self.write("complete", move |conn| {
            let Some((seq, raw)) = fetch_active(conn, &c.job_id)? else {
                return Ok(CompleteOutcome::Stale {
                    reason: "job is no longer active (cancelled or already finished)".into(),
                });
            };
            if raw.state != JobState::Running.code() || raw.lease_token.as_deref() != Some(&c.token)
            {
                return Ok(CompleteOutcome::Stale {
                    reason: "lease token does not match: the job was reassigned".into(),
                });
            }
            let mut job = raw.decode()?;
            let now = c.now_ms;
            let spec = &job.spec;
            let group = spec.task_tracker_node_group.clone();
            let submit_node_group = spec.submit_node_group.clone();
            let task_id = spec.task_id.clone();
            let attempt = job.attempt as i64;
            for line in &c.logs {
                log_line(
                    conn, &job.job_id, &task_id, &group, line.time_ms, LogType::Biz, line.level,
                    &line.message, attempt, &c.node,
                )?;
            }
            let summary = if c.message.is_empty() {
                c.outcome.as_str().to_string()
            } else {
                format!("{}: {}", c.outcome, c.message)
            };
            log_line(
                conn, &job.job_id, &task_id, &group, now, LogType::Finished,
                if c.outcome == Outcome::Success { LogLevel::Info } else { LogLevel::Warn },
                &summary, attempt, &c.node,
            )?;
            let scheduled = job.scheduled_fire_ms.unwrap_or(job.created_at_ms);
            let disp = disposition(
                spec, job.attempt, scheduled, job.fire_count, c.outcome, now, &retry,
            );
            job.last_outcome = Some(c.outcome);
            job.last_message = Some(c.message.clone());
            let mut feedback_job = None;
            match &disp {
                Disposition::Finish(state) => {
                    let done = finish_job(conn, seq, job, *state, now)?;
                    feedback_job = Some(done);
                }
                Disposition::Retry { at_ms } => {
                    conn.prepare_cached(
                        "UPDATE jobs SET state = CASE WHEN suspend_requested = 1 THEN 3 ELSE 1 END,
                             lease_owner = NULL, lease_token = NULL,
                             lease_expiry = NULL, trigger_time = ?2, updated_at = ?3,
                             last_outcome = ?4, last_message = ?5
                         WHERE seq = ?1",
                    )?
                    .execute(params![seq, at_ms, now, c.outcome.code(), c.message])?;
                    log_line(
                        conn, &job.job_id, &task_id, &group, now, LogType::Resend, LogLevel::Info,
                        &format!("retry {} of {} at {}", job.attempt, job.spec.max_retries,
                            lts_core::format_ms(*at_ms)),
                        attempt, "",
                    )?;
                }
                Disposition::NextFire { at_ms, instance } => {
                    conn.prepare_cached(
                        "UPDATE jobs SET state = CASE WHEN suspend_requested = 1 THEN 3 ELSE 1 END,
                             lease_owner = NULL, lease_token = NULL,
                             lease_expiry = NULL, trigger_time = ?2, scheduled_fire = ?2,
                             fire_count = fire_count + 1, attempt = 0, updated_at = ?3,
                             last_outcome = ?4, last_message = ?5
                         WHERE seq = ?1",
                    )?
                    .execute(params![seq, at_ms, now, c.outcome.code(), c.message])?;
                    let mut inst = job.clone();
                    inst.state = *instance;
                    inst.finished_at_ms = Some(now);
                    feedback_job = Some(inst);
                }
            }
            let mut feedback_group = None;
            if let Some(done) = feedback_job.filter(|j| j.spec.need_feedback) {
                let item = FeedbackItem {
                    feedback_id: String::new(),
                    outcome: c.outcome,
                    message: c.message.clone(),
                    finished_at_ms: now,
                    job: done,
                };
                let text =
                    serde_json::to_string(&item).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                conn.prepare_cached(
                    "INSERT INTO feedback (submit_group, job_id, item, created_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![item.job.spec.submit_node_group, item.job.job_id, text, now])?;
                feedback_group = Some(item.job.spec.submit_node_group);
            }
            Ok(CompleteOutcome::Accepted {
                node_group: group,
                disposition: disp,
                feedback_group,
                submit_node_group,
            })
        })
        .await
    }

    async fn release(&self, leases: Vec<LeaseRef>, now: i64) -> StoreResult<Vec<Requeued>> {
        self.write("release", move |conn| {
            let mut out = Vec::new();
            let mut stmt = conn.prepare_cached(
                "UPDATE jobs SET state = CASE WHEN suspend_requested = 1 THEN 3 ELSE 1 END,
                     lease_owner = NULL, lease_token = NULL, lease_expiry = NULL,
                     attempt = MAX(attempt - 1, 0), updated_at = ?3
                 WHERE job_id = ?1 AND lease_token = ?2 AND state = 2
                 RETURNING node_group, task_id, attempt",
            )?;
            let mut released = Vec::new();
            for l in leases {
                let row: Option<(String, String, i64)> = stmt
                    .query_row(params![l.job_id, l.token, now], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?;
                if let Some((group, task, attempt)) = row {
                    released.push((l.job_id, group, task, attempt));
                }
            }
            drop(stmt);
            for (job_id, group, task, attempt) in released {
                log_line(
                    conn,
                    &job_id,
                    &task,
                    &group,
                    now,
                    LogType::Resend,
                    LogLevel::Info,
                    "handed back by its TaskTracker",
                    attempt,
                    "",
                )?;
                out.push(Requeued {
                    job_id,
                    node_group: group,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn requeue_expired(&self, now: i64) -> StoreResult<Vec<Requeued>> {
        self.write("requeue_expired", move |conn| {
            let mut out = Vec::new();
            SqliteStore::requeue_where(
                conn,
                "INDEXED BY jobs_lease",
                "lease_expiry < ?1",
                now,
                &[],
                "lease expired",
                &mut out,
            )?;
            Ok(out)
        })
        .await
    }

    async fn requeue_owner(&self, owner: &str, now: i64) -> StoreResult<Vec<Requeued>> {
        let owner = owner.to_string();
        self.write("requeue_owner", move |conn| {
            let mut out = Vec::new();
            SqliteStore::requeue_where(
                conn,
                "INDEXED BY jobs_lease",
                "lease_owner = ?2",
                now,
                &[&owner],
                "its TaskTracker left the cluster",
                &mut out,
            )?;
            Ok(out)
        })
        .await
    }

    async fn requeue_held(&self, leases: Vec<HeldLease>, now: i64) -> StoreResult<Vec<Requeued>> {
        self.write("requeue_held", move |conn| {
            let mut out = Vec::new();
            for l in &leases {
                SqliteStore::requeue_where(
                    conn,
                    "",
                    "job_id = ?2 AND lease_token = ?3 AND lease_expiry = ?4",
                    now,
                    &[&l.job_id, &l.token, &l.expiry_ms],
                    "its TaskTracker left the cluster (its stream ended)",
                    &mut out,
                )?;
            }
            Ok(out)
        })
        .await
    }

    async fn suspend(&self, key: JobKey, now: i64) -> StoreResult<ChangeOutcome> {
        self.write("suspend", move |conn| {
            let Some((seq, raw)) = fetch_by_key(conn, &key)? else {
                return not_active(conn, &key);
            };
            let mut job = raw.decode()?;
            let flagged: i64 = conn
                .prepare_cached("SELECT suspend_requested FROM jobs WHERE seq = ?1")?
                .query_row([seq], |r| r.get(0))?;
            if flagged == 1 {
                return Ok(ChangeOutcome::Unchanged(job));
            }
            conn.prepare_cached(
                "UPDATE jobs SET suspend_requested = 1, updated_at = ?2,
                     state = CASE WHEN state = 1 THEN 3 ELSE state END
                 WHERE seq = ?1",
            )?
            .execute(params![seq, now])?;
            let note = if job.state == JobState::Running {
                "suspended by a user; the running attempt finishes first"
            } else {
                "suspended by a user"
            };
            if job.state == JobState::Queued {
                job.state = JobState::Suspended;
            }
            job.updated_at_ms = now;
            log_line(
                conn,
                &job.job_id,
                &job.spec.task_id,
                &job.spec.task_tracker_node_group,
                now,
                LogType::Suspend,
                LogLevel::Info,
                note,
                job.attempt as i64,
                "",
            )?;
            Ok(ChangeOutcome::Changed(job))
        })
        .await
    }

    async fn resume(&self, key: JobKey, now: i64) -> StoreResult<ChangeOutcome> {
        self.write("resume", move |conn| {
            let Some((seq, raw)) = fetch_by_key(conn, &key)? else {
                return not_active(conn, &key);
            };
            let mut job = raw.decode()?;
            let flagged: i64 = conn
                .prepare_cached("SELECT suspend_requested FROM jobs WHERE seq = ?1")?
                .query_row([seq], |r| r.get(0))?;
            if flagged == 0 && job.state != JobState::Suspended {
                return Ok(ChangeOutcome::Unchanged(job));
            }
            let note = if job.state == JobState::Suspended {
                let at = resume_trigger(&job.spec, job.trigger_time_ms, job.fire_count, now);
                let scheduled = job.spec.schedule.is_recurring().then_some(at);
                conn.prepare_cached(
                    "UPDATE jobs SET suspend_requested = 0, state = 1, trigger_time = ?2,
                         scheduled_fire = COALESCE(?3, scheduled_fire), updated_at = ?4
                     WHERE seq = ?1",
                )?
                .execute(params![seq, at, scheduled, now])?;
                job.state = JobState::Queued;
                job.trigger_time_ms = at;
                if scheduled.is_some() {
                    job.scheduled_fire_ms = scheduled;
                }
                format!("resumed by a user; runs at {}", lts_core::format_ms(at))
            } else {
                conn.prepare_cached(
                    "UPDATE jobs SET suspend_requested = 0, updated_at = ?2 WHERE seq = ?1",
                )?
                .execute(params![seq, now])?;
                "resumed by a user before its running attempt ended".to_string()
            };
            job.updated_at_ms = now;
            log_line(
                conn,
                &job.job_id,
                &job.spec.task_id,
                &job.spec.task_tracker_node_group,
                now,
                LogType::Resume,
                LogLevel::Info,
                &note,
                job.attempt as i64,
                "",
            )?;
            Ok(ChangeOutcome::Changed(job))
        })
        .await
    }

    async fn cancel(&self, key: JobKey, now: i64) -> StoreResult<CancelOutcome> {
        self.write("cancel", move |conn| {
            let found = fetch_by_key(conn, &key)?;
            match found {
                Some((seq, raw)) => {
                    let job = raw.decode()?;
                    let (id, task, group, attempt) = (
                        job.job_id.clone(),
                        job.spec.task_id.clone(),
                        job.spec.task_tracker_node_group.clone(),
                        job.attempt as i64,
                    );
                    let recurring = job.spec.schedule.is_recurring();
                    let done = finish_job(conn, seq, job, JobState::Cancelled, now)?;
                    log_line(
                        conn,
                        &id,
                        &task,
                        &group,
                        now,
                        LogType::Del,
                        LogLevel::Info,
                        "cancelled by a user",
                        attempt,
                        "",
                    )?;
                    if recurring {
                        cancel_queued_instances(conn, &id, &task, &group, now)?;
                    }
                    Ok(CancelOutcome::Cancelled(done))
                }
                None => Ok(match get_finished(conn, &key)? {
                    Some(job) => CancelOutcome::AlreadyFinished(job),
                    None => CancelOutcome::NotFound,
                }),
            }
        })
        .await
    }

    async fn get(&self, key: JobKey) -> StoreResult<Option<Job>> {
        self.read(move |conn| {
            let active = match &key {
                JobKey::Id(id) => conn
                    .prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE job_id = ?1"))?
                    .query_row([id], RawJob::from_row)
                    .optional()?,
                JobKey::Task {
                    node_group,
                    task_id,
                } => conn
                    .prepare_cached(&format!(
                        "SELECT {JOB_COLS} FROM jobs WHERE node_group = ?1 AND task_id = ?2"
                    ))?
                    .query_row(params![node_group, task_id], RawJob::from_row)
                    .optional()?,
            };
            match active {
                Some(raw) => Ok(Some(raw.decode()?)),
                None => get_finished(conn, &key),
            }
        })
        .await
    }

    async fn list(&self, filter: ListFilter) -> StoreResult<Page> {
        self.read(move |conn| list_jobs(conn, &filter)).await
    }

    async fn log(&self, job_id: &str, limit: usize) -> StoreResult<Vec<LogEntry>> {
        let job_id = job_id.to_string();
        self.read(move |conn| {
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
        })
        .await
    }

    async fn stats(&self, node_group: Option<&str>) -> StoreResult<Stats> {
        let group = node_group.map(str::to_string);
        self.read(move |conn| {
            let mut stats = Stats::default();
            let mut add = |state: i64, n: i64| {
                let n = n as u64;
                match JobState::from_code(state) {
                    Some(JobState::Queued) => stats.queued += n,
                    Some(JobState::Running) => stats.running += n,
                    Some(JobState::Suspended) => stats.suspended += n,
                    Some(JobState::Succeeded) => stats.succeeded += n,
                    Some(JobState::Failed) => stats.failed += n,
                    Some(JobState::Cancelled) => stats.cancelled += n,
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
        })
        .await
    }

    async fn next_due(&self, node_group: &str) -> StoreResult<Option<i64>> {
        let group = node_group.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT MIN(trigger_time) FROM jobs INDEXED BY jobs_due WHERE node_group = ?1 AND state = 1",
                )?
                .query_row([group], |r| r.get::<_, Option<i64>>(0))?)
        })
        .await
    }

    async fn pending_feedback(
        &self,
        submit_node_group: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<FeedbackItem>> {
        let group = submit_node_group.to_string();
        let after: i64 = after.and_then(|a| a.parse().ok()).unwrap_or(0);
        self.read(move |conn| {
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
        })
        .await
    }

    async fn ack_feedback(&self, ids: Vec<String>) -> StoreResult<()> {
        self.write("ack_feedback", move |conn| {
            let mut stmt = conn.prepare_cached("DELETE FROM feedback WHERE id = ?1")?;
            for id in ids {
                if let Ok(id) = id.parse::<i64>() {
                    stmt.execute([id])?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn fence(&self, epoch: u64, identity: &str, now: i64) -> StoreResult<bool> {
        let identity = identity.to_string();
        self.write("fence", move |conn| {
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
                    now - super::FENCE_STALE_MS
                ])?;
            Ok(n == 1)
        })
        .await
    }

    async fn enforce_retention(&self, before: i64) -> StoreResult<u64> {
        // Both tables are in time order by rowid: find where "recent" starts, then delete
        // everything before it in chunks, each its own grouped write, so that a large cleanup
        // never holds the writer for long.
        const CHUNK: i64 = 5_000;
        let mut removed = 0u64;
        loop {
            let n = self
                .write("retention", move |conn| {
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
                            .query_map(params![cut, CHUNK], |r| Ok((r.get(0)?, r.get(1)?)))?
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
                            .execute(params![cut, CHUNK])?,
                        None => 0,
                    };
                    Ok((gone.len() + logs) as u64)
                })
                .await?;
            removed += n;
            if n == 0 {
                return Ok(removed);
            }
        }
    }
}

/// The unfinished job with this key, with its row id.
fn fetch_by_key(conn: &Connection, key: &JobKey) -> rusqlite::Result<Option<(i64, RawJob)>> {
    match key {
        JobKey::Id(id) => fetch_active(conn, id),
        JobKey::Task {
            node_group,
            task_id,
        } => conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLS}, seq FROM jobs WHERE node_group = ?1 AND task_id = ?2"
            ))?
            .query_row(params![node_group, task_id], |r| {
                Ok((r.get(17)?, RawJob::from_row(r)?))
            })
            .optional(),
    }
}

/// The answer for a key with no unfinished job.
fn not_active(conn: &Connection, key: &JobKey) -> StoreResult<ChangeOutcome> {
    Ok(match get_finished(conn, key)? {
        Some(job) => ChangeOutcome::AlreadyFinished(job),
        None => ChangeOutcome::NotFound,
    })
}

fn get_finished(conn: &Connection, key: &JobKey) -> StoreResult<Option<Job>> {
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
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

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

fn list_jobs(conn: &Connection, f: &ListFilter) -> StoreResult<Page> {
    let limit = f.limit.clamp(1, 1000);
    let after = f.after.clone().unwrap_or_default();
    let prefix = f.task_id_prefix.as_deref().map(like_prefix);
    let state = f.state.map(JobState::code);
    let kind = f.schedule_kind.map(|k| k.json_tag());
    let want_active = f.state.is_none_or(|s| !s.is_final());
    let want_finished = f.state.is_none_or(|s| s.is_final());
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
        let rows = stmt
            .query_map(
                params![
                    after,
                    f.node_group,
                    state,
                    prefix,
                    (limit + 1) as i64,
                    f.submit_node_group,
                    kind
                ],
                RawJob::from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for raw in rows {
            jobs.push(raw.decode()?);
        }
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
            .query_map(
                params![
                    after,
                    f.node_group,
                    state,
                    prefix,
                    (limit + 1) as i64,
                    f.submit_node_group,
                    kind
                ],
                |r| r.get::<_, String>(0),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for text in rows {
            jobs.push(serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?);
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
