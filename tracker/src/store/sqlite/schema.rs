//! The tables, their migrations, the SQL that names job states, and the one codec between a
//! `jobs` row and a [`StoredJob`].
//!
//! State codes are never written as numbers: SQL text names them `{QUEUED}`, `{RUNNING}`,
//! `{SUSPENDED}`, and [`states`] puts in [`JobState::code`]. Statements that must use a
//! partial index get the code as a literal (a bound parameter cannot prove the index's
//! `WHERE state = …`); the others bind it.

use std::sync::LazyLock;

use lts_core::transition::StoredJob;
use lts_core::{Job, JobSpec, JobState, Outcome, Shard};
use rusqlite::{Connection, Row};

use crate::store::{StoreError, StoreResult};

/// Version of the schema, kept in `PRAGMA user_version`.
pub(super) const SCHEMA_VERSION: i64 = 9;

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
    -- Suspended by a user (while queued: state = {SUSPENDED}; while running: when the attempt ends).
    suspend_requested INTEGER NOT NULL DEFAULT 0,
    -- The job_id of the recurring job this job is an instance (one fire) of.
    instance_of    TEXT,
    -- Runs of the current fire lost without a result (bounded by the spec's max_lease_losses).
    lease_losses   INTEGER NOT NULL DEFAULT 0,
    -- While running with a timeout: when the run must have ended.
    deadline       INTEGER,
    -- For a shard run of a sharded job: the job's id, the shard's index and the shard count.
    shard_of       TEXT,
    shard_index    INTEGER,
    shard_count    INTEGER,
    -- For a broadcast job's shard: the TaskTracker it runs on, and no other.
    shard_on       TEXT,
    -- The spec's affinity, canonical (`key=value,...` in key order): only TaskTrackers with
    -- these labels claim it.
    affinity       TEXT,
    -- For a workflow node (a shard of its workflow's run): its name and place in the graph
    -- (JSON).
    node           TEXT,
    -- The bucket of the spec's route key (`lts_core::route`): only the TaskTracker the bucket
    -- is dealt to claims it.
    route_bucket   INTEGER,
    -- For a map-reduce job whose run mapped, its children and its reduce step: their part
    -- (JSON).
    map            TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_task ON jobs(node_group, task_id);
-- Partial indexes: each holds only the rows it serves, so a state change is one index delete
-- or insert instead of an update in every index.
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs(node_group, priority DESC, trigger_time, seq) WHERE state = {QUEUED};
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(node_group, trigger_time) WHERE state = {QUEUED};
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs(lease_expiry) WHERE state = {RUNNING};
CREATE INDEX IF NOT EXISTS jobs_instance_of ON jobs(instance_of) WHERE instance_of IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_shard_on ON jobs(shard_on) WHERE shard_on IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_affinity ON jobs(node_group, affinity)
    WHERE affinity IS NOT NULL AND state = {QUEUED};

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

-- Idempotency keys of submits, for the retention period: a submit with a known key is
-- answered with its job instead of storing another.
-- In time order by rowid, so retention deletes from the front without a time index.
CREATE TABLE IF NOT EXISTS submit_keys (
    id     INTEGER PRIMARY KEY,
    key    TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    at     INTEGER NOT NULL
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

/// `sql` with each state placeholder (`{QUEUED}`, `{RUNNING}`, `{SUSPENDED}`) replaced by the
/// state's [`JobState::code`].
pub(super) fn states(sql: &str) -> String {
    [JobState::Queued, JobState::Running, JobState::Suspended]
        .into_iter()
        .fold(sql.to_string(), |sql, state| {
            sql.replace(
                &format!("{{{}}}", state.as_str()),
                &state.code().to_string(),
            )
        })
}

/// A statement whose SQL names states, formatted once.
pub(super) struct Sql(LazyLock<String>);

impl Sql {
    /// The statement with its state codes in.
    pub(super) fn text(&self) -> &str {
        &self.0
    }
}

/// Declares [`Sql`] statements from templates with state placeholders.
macro_rules! sql {
    ($($(#[$doc:meta])* $name:ident = $template:expr;)*) => {
        $($(#[$doc])* pub(super) static $name: Sql = Sql(LazyLock::new(|| states($template)));)*
    };
}

/// The columns of a `jobs` row that [`stored_job`] reads, in its order.
pub(super) const JOB_COLS: &str = "seq, job_id, node_group, task_id, state, priority, \
     trigger_time, attempt, fire_count, scheduled_fire, created_at, updated_at, lease_owner, \
     lease_token, lease_expiry, last_outcome, last_message, spec, suspend_requested, instance_of, \
     lease_losses, deadline, shard_of, shard_index, shard_count, shard_on, node, map";

/// The place of `shard_index` in [`JOB_COLS`].
pub(super) const SHARD_INDEX_COL: usize = 23;

sql! {
    /// The whole schema.
    SCHEMA_SQL = SCHEMA;
    /// The due queued jobs of a node group, best first (`?1` group, `?2` now, `?3` limit), but
    /// the broadcast shards for TaskTrackers other than `?4`, the jobs whose affinity is not in
    /// the JSON array `?5` and the routed jobs whose bucket is not in the JSON array `?6` (an
    /// uncorrelated subquery: built at most once per claim, and only if a routed job is met).
    DUE_JOBS = &format!("SELECT {JOB_COLS} FROM jobs INDEXED BY jobs_claim \
        WHERE node_group = ?1 AND state = {{QUEUED}} AND trigger_time <= ?2 \
        AND (shard_on IS NULL OR shard_on = ?4) \
        AND (affinity IS NULL OR affinity IN (SELECT value FROM json_each(?5))) \
        AND (route_bucket IS NULL OR route_bucket IN (SELECT value FROM json_each(?6))) \
        ORDER BY priority DESC, trigger_time ASC, seq ASC LIMIT ?3");
    /// The running jobs whose lease expired before `?1`.
    EXPIRED_LEASES = &format!("SELECT {JOB_COLS} FROM jobs INDEXED BY jobs_lease WHERE state = {{RUNNING}} AND lease_expiry < ?1");
    /// The running jobs leased to `?1`.
    OWNER_LEASES = &format!("SELECT {JOB_COLS} FROM jobs INDEXED BY jobs_lease WHERE state = {{RUNNING}} AND lease_owner = ?1");
    /// The unfinished job with id `?1`.
    FIND_BY_ID = &format!("SELECT {JOB_COLS} FROM jobs WHERE job_id = ?1");
    /// The unfinished job with node group `?1` and task id `?2`.
    FIND_BY_TASK = &format!("SELECT {JOB_COLS} FROM jobs WHERE node_group = ?1 AND task_id = ?2");
    /// The earliest trigger time of a queued job of node group `?1`.
    NEXT_DUE = "SELECT MIN(trigger_time) FROM jobs INDEXED BY jobs_due \
        WHERE node_group = ?1 AND state = {QUEUED}";
    /// Queued, due (at `?1`) and running jobs per node group with any, by group (`?2` groups).
    BACKLOG = "SELECT node_group, \
        SUM(state = {QUEUED}), SUM(state = {QUEUED} AND trigger_time <= ?1), SUM(state = {RUNNING}) \
        FROM jobs WHERE state IN ({QUEUED}, {RUNNING}) GROUP BY node_group ORDER BY node_group LIMIT ?2";
    /// How many queued jobs of node group `?1` are due at `?2`.
    DUE_COUNT = "SELECT COUNT(*) FROM jobs INDEXED BY jobs_due \
        WHERE node_group = ?1 AND state = {QUEUED} AND trigger_time <= ?2";
}

/// Brings the database to [`SCHEMA_VERSION`], or says why it cannot.
pub(super) fn migrate(conn: &Connection, path: &std::path::Path) -> StoreResult<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != 0 && version < 3 {
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
    if version == 3 {
        // v4: instances name their recurring job in `instance_of`. Those of a v3 store are
        // found by their task id, `<the recurring job's task id cut to 48 characters>~<fire
        // ms>`, and their recurring job's node group.
        conn.execute_batch(
            "ALTER TABLE jobs ADD COLUMN instance_of TEXT;
             UPDATE jobs SET instance_of = (
                 SELECT d.job_id FROM jobs d
                 WHERE d.node_group = jobs.node_group AND d.job_id <> jobs.job_id
                   AND json_extract(d.spec, '$.schedule.type') IN ('cron', 'repeat')
                   AND substr(jobs.task_id, 1, length(substr(d.task_id, 1, 48)) + 1)
                       = substr(d.task_id, 1, 48) || '~'
                   AND substr(jobs.task_id, length(substr(d.task_id, 1, 48)) + 2)
                       NOT GLOB '*[^0-9]*'
                 LIMIT 1)
             WHERE instr(task_id, '~') > 0;",
        )?;
    }
    // v5: lost runs are counted (none lost so far), and runs have deadlines (none so far).
    if (3..5).contains(&version) {
        for (column, ty) in [
            ("lease_losses", "INTEGER NOT NULL DEFAULT 0"),
            ("deadline", "INTEGER"),
        ] {
            if !has_column(conn, "jobs", column)? {
                conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {column} {ty};"))?;
            }
        }
    }
    // v6: shard runs name their sharded job (none so far).
    if (3..6).contains(&version) {
        for (column, ty) in [
            ("shard_of", "TEXT"),
            ("shard_index", "INTEGER"),
            ("shard_count", "INTEGER"),
            ("shard_on", "TEXT"),
            ("affinity", "TEXT"),
        ] {
            if !has_column(conn, "jobs", column)? {
                conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {column} {ty};"))?;
            }
        }
    }
    // v7: workflow nodes keep their place in the graph (none so far).
    if (3..7).contains(&version) && !has_column(conn, "jobs", "node")? {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN node TEXT;")?;
    }
    // v8: routed jobs keep their key's bucket (none so far).
    if (3..8).contains(&version) && !has_column(conn, "jobs", "route_bucket")? {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN route_bucket INTEGER;")?;
    }
    // v9: map-reduce jobs keep their part (none so far).
    if (3..9).contains(&version) && !has_column(conn, "jobs", "map")? {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN map TEXT;")?;
    }
    conn.execute_batch(SCHEMA_SQL.text())?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

fn has_column(conn: &Connection, table: &str, column: &str) -> StoreResult<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// A job read from `jobs`: its row id and the job as stored.
#[derive(Debug, Clone)]
pub(super) struct Found {
    /// The row id, which guards its write.
    pub seq: i64,
    /// The job.
    pub stored: StoredJob,
}

fn corrupt(job_id: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("job {job_id}: {what}"))
}

/// The codec: a `jobs` row (its [`JOB_COLS`]) as the job it stores.
pub(super) fn stored_job(r: &Row<'_>) -> StoreResult<Found> {
    let job_id: String = r.get(1)?;
    let spec: String = r.get(17)?;
    let spec: JobSpec = serde_json::from_str(&spec).map_err(|e| corrupt(&job_id, e))?;
    let code: i64 = r.get(4)?;
    let state = JobState::from_code(code).ok_or_else(|| corrupt(&job_id, code))?;
    let last_outcome: Option<i64> = r.get(15)?;
    let node = match r.get::<_, Option<String>>(26)? {
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| corrupt(&job_id, e))?),
        None => None,
    };
    let map = match r.get::<_, Option<String>>(27)? {
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| corrupt(&job_id, e))?),
        None => None,
    };
    let job = Job {
        job_id,
        spec,
        state,
        attempt: r.get::<_, i64>(7)? as u32,
        trigger_time_ms: r.get(6)?,
        created_at_ms: r.get(10)?,
        updated_at_ms: r.get(11)?,
        lease_owner: r.get(12)?,
        lease_expiry_ms: r.get(14)?,
        last_outcome: last_outcome.and_then(Outcome::from_code),
        last_message: r.get(16)?,
        finished_at_ms: None,
        scheduled_fire_ms: r.get(9)?,
        fire_count: r.get::<_, i64>(8)? as u64,
        instance_of: r.get(19)?,
        lease_losses: r.get::<_, i64>(20)? as u32,
        deadline_ms: r.get(21)?,
        shard: match r.get::<_, Option<String>>(22)? {
            Some(of) => Some(Shard {
                of,
                index: r.get::<_, i64>(SHARD_INDEX_COL)? as u32,
                count: r.get::<_, i64>(24)? as u32,
                on: r.get(25)?,
            }),
            None => None,
        },
        shard_progress: None,
        node,
        map,
    };
    Ok(Found {
        seq: r.get(0)?,
        stored: StoredJob {
            job,
            lease_token: r.get(13)?,
            suspend_requested: r.get::<_, i64>(18)? != 0,
        },
    })
}

/// Every job that `stmt` finds with `params`, decoded.
pub(super) fn found_all(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<Found>> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(stored_job(r)?);
    }
    Ok(out)
}

/// A finished job as `finished_jobs` keeps it (JSON).
pub(super) fn decode_finished(text: &str) -> StoreResult<Job> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// JSON of a value the store keeps as text (a spec, a finished job, a feedback item).
pub(super) fn encode<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use lts_core::Schedule;

    use super::*;

    #[test]
    fn states_come_from_the_model() {
        let schema = SCHEMA_SQL.text();
        assert!(!schema.contains('{'), "a placeholder left: {schema}");
        let claim = format!("WHERE state = {}", JobState::Queued.code());
        let lease = format!("WHERE state = {}", JobState::Running.code());
        // The partial indexes as every existing database has them: `CREATE INDEX IF NOT
        // EXISTS` keeps those, so the text must not change.
        assert!(schema.contains(&format!(
            "jobs_claim ON jobs(node_group, priority DESC, trigger_time, seq) {claim};"
        )));
        assert!(schema.contains(&format!("jobs_lease ON jobs(lease_expiry) {lease};")));
        assert_eq!(claim, "WHERE state = 1", "the codes stored databases hold");
        assert!(
            DUE_JOBS
                .text()
                .contains(&format!("state = {}", JobState::Queued.code()))
        );
        for sql in [
            &DUE_JOBS,
            &EXPIRED_LEASES,
            &OWNER_LEASES,
            &NEXT_DUE,
            &DUE_COUNT,
            &BACKLOG,
        ] {
            assert!(!sql.text().contains('{'), "{}", sql.text());
        }
        assert!(DUE_JOBS.text().contains(JOB_COLS));
    }

    #[test]
    fn a_v3_store_gives_its_instances_their_recurring_job() {
        let conn = Connection::open_in_memory().unwrap();
        let path = std::path::Path::new(":memory:");
        migrate(&conn, path).unwrap();
        let long = format!("{}-nightly", "r".repeat(48));
        let cron = Schedule::Cron {
            expression: "0 0 * * * *".into(),
            time_zone: None,
        };
        let jobs = [
            ("d", JobSpec::new(long.clone(), "g").schedule(cron)),
            (
                "i",
                JobSpec::new(format!("{}~1700000000000", "r".repeat(48)), "g"),
            ),
            ("u", JobSpec::new("mine~x", "g")),
            ("o", JobSpec::new(format!("{}~17", "r".repeat(48)), "other")),
        ];
        for (id, spec) in jobs {
            let s = lts_core::transition::accept(spec, id.into(), 5).job;
            super::super::write::insert(&conn, &s, None).unwrap();
        }
        // The store as v3 left it.
        conn.execute_batch(
            "DROP INDEX jobs_instance_of; ALTER TABLE jobs DROP COLUMN instance_of;
             PRAGMA user_version = 3;",
        )
        .unwrap();
        migrate(&conn, path).unwrap();
        let of = |id: &str| -> Option<String> {
            conn.query_row(
                "SELECT instance_of FROM jobs WHERE job_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(of("i").as_deref(), Some("d"));
        assert_eq!((of("d"), of("u"), of("o")), (None, None, None));
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_v4_store_counts_no_lost_runs_yet() {
        let conn = Connection::open_in_memory().unwrap();
        let path = std::path::Path::new(":memory:");
        migrate(&conn, path).unwrap();
        let s = lts_core::transition::accept(JobSpec::new("t", "g"), "j".into(), 5).job;
        super::super::write::insert(&conn, &s, None).unwrap();
        conn.execute_batch(
            "ALTER TABLE jobs DROP COLUMN lease_losses; ALTER TABLE jobs DROP COLUMN deadline;
             PRAGMA user_version = 4;",
        )
        .unwrap();
        migrate(&conn, path).unwrap();
        let found = conn
            .prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs"))
            .unwrap()
            .query_row([], |r| Ok(stored_job(r).map_err(|e| e.to_string())))
            .unwrap()
            .unwrap();
        assert_eq!(found.stored, s);
    }

    #[test]
    fn a_row_reads_back_as_the_job_it_stores() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn, std::path::Path::new(":memory:")).unwrap();
        let spec = JobSpec::new("t", "g").priority(3).param("k", "v");
        let mut s = lts_core::transition::accept(spec, "j".into(), 5).job;
        s.job.state = JobState::Running;
        s.job.attempt = 2;
        s.job.lease_owner = Some("w".into());
        s.job.lease_expiry_ms = Some(9);
        s.job.last_outcome = Some(Outcome::Later);
        s.job.last_message = Some("m".into());
        s.lease_token = Some("tok".into());
        s.suspend_requested = true;
        s.job.instance_of = Some("d".into());
        s.job.lease_losses = 2;
        s.job.deadline_ms = Some(7);
        super::super::write::insert(&conn, &s, None).unwrap();
        let found = conn
            .prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs"))
            .unwrap()
            .query_row([], |r| Ok(stored_job(r).map_err(|e| e.to_string())))
            .unwrap()
            .unwrap();
        assert_eq!(found.stored, s);
    }
}
