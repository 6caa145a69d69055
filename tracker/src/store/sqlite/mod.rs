//! The embedded [`JobStore`]: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that **groups commits**: it takes every operation
//! waiting in its queue (up to [`MAX_GROUP`]), runs them in one transaction, commits once and
//! answers each caller only once the commit is durable (`writer`: how a failed operation fails
//! alone, and how a syncer thread fsyncs the WAL while the writer runs the next group). One
//! fsync thus covers many submits, claims and completions, which is what makes a durable store
//! fast. Reads use a small pool of separate connections and never wait for the writer.
//!
//! The store decides nothing about a job's life: each change is an event applied by
//! [`lts_core::transition`] to the job as read, and the store writes the transition.
//!
//! * [`schema`]: the tables, migrations and the row ↔ [`lts_core::transition::StoredJob`] codec;
//! * `write`: a transition as SQL; `claim`: the drain's hot path; `events`: each changing call
//!   as events and its answer; `queries`: reads, feedback, the fence and retention.

mod claim;
mod events;
mod leased;
mod queries;
mod schema;
mod write;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use async_trait::async_trait;
use lts_core::schedule::RetryPolicy;
use lts_core::transition::{Event, MapBatch, Refusal};
use lts_core::{FeedbackItem, Job, JobSpec, LogEntry};
use rusqlite::Connection;
use rusqlite::config::DbConfig;
use tokio::sync::{mpsc, oneshot};

use self::events::Sweep;
use self::writer::{Fatal, WalSync, WriteOp, writer_loop};
use super::{
    CancelOutcome, ChangeOutcome, ChildResult, ClaimRequest, CompleteOutcome, Completion,
    HeldLease, JobKey, JobStore, Lease, LeaseRef, ListFilter, MapOutcome, Page, Requeued, Stats,
    StoreError, StoreResult, SubmitOutcome, TriggerOutcome,
};

/// Most operations committed together.
pub const MAX_GROUP: usize = 2048;
const READERS: usize = 3;

/// How hard SQLite syncs on commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Every write is answered only after an fsync that covers it: survives power loss. The
    /// fsync runs on its own thread while the writer goes on with the next group.
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

/// The SQLite job store.
pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::Sender<WriteOp>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// One permit per reader connection: a read waits for a free one instead of failing.
    reader_permits: Arc<tokio::sync::Semaphore>,
    retry: RetryPolicy,
    /// Why the store stopped writing for good, once it did (a failed fsync).
    fatal: Fatal,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
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
    // Plans that never depend on bound values: without it, a statement whose `LIMIT` is a
    // parameter (the claim's) is prepared anew on every run, which was ~15% of a claim.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // Temp b-trees in memory; a page cache that holds the hot indexes.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -16_384)?;
    // Every statement the store runs, updates of each set of changed fields among them.
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (and creates, if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("create {}: {e}", dir.display())))?;
        }
        // The writer's commits only write the WAL; with `SyncMode::Full` its syncer thread
        // makes them durable before anyone is answered (`wal_sync`).
        let conn = open_conn(&path, SyncMode::Normal)?;
        schema::migrate(&conn, &path)?;
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
        let sync = match options.sync {
            SyncMode::Full => Some(wal_sync(&path)),
            SyncMode::Normal => None,
        };
        let fatal = Fatal::default();
        let writer_fatal = fatal.clone();
        thread::Builder::new()
            .name("lts-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, sync, writer_fatal))
            .map_err(|e| StoreError::Backend(format!("spawn writer: {e}")))?;
        thread::Builder::new()
            .name("lts-sqlite-ckpt".into())
            .spawn(move || checkpoint_loop(checkpointer, alive))
            .map_err(|e| StoreError::Backend(format!("spawn checkpointer: {e}")))?;
        Ok(SqliteStore {
            path,
            writer: tx,
            readers: Arc::new(Mutex::new(readers)),
            reader_permits: Arc::new(tokio::sync::Semaphore::new(READERS)),
            retry: options.retry,
            fatal,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the writer thread inside the next grouped transaction, with the store's
    /// retry policy; answers after commit.
    async fn write<T, F>(&self, name: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection, &RetryPolicy) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: WriteOp = Box::new(writer::Pending::new(name, f, self.retry, tx));
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
        // More reads than connections wait their turn (no "store is closed" under load).
        let permit = self
            .reader_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
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
}

/// The fsync that makes the writer's commits durable: of the WAL file (`<db>-wal`, which
/// SQLite keeps for as long as a connection is open; the writer's opened it), and once of the
/// directory that holds it, so that a WAL created since the last boot is found after one.
fn wal_sync(db: &Path) -> WalSync {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let dir = match db.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("."),
    };
    // Opened at the first sync: the WAL exists once anything was committed.
    let mut file: Option<std::fs::File> = None;
    Box::new(move || {
        // Tests make the disk fail here (`FAILPOINTS=sqlite-wal-fsync=return`).
        fail::fail_point!("sqlite-wal-fsync", |_| Err(std::io::Error::other(
            "injected by the fail point sqlite-wal-fsync"
        )));
        let wal_file = match &mut file {
            Some(f) => f,
            None => {
                let opened = std::fs::File::open(&wal).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("open {}: {e}", wal.display()))
                })?;
                std::fs::File::open(&dir)?.sync_all()?;
                file.insert(opened)
            }
        };
        // `fdatasync`: the data and the size, which is what a WAL needs (as SQLite's own sync).
        wal_file.sync_data()
    })
}

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

#[async_trait]
impl JobStore for SqliteStore {
    /// Two: a claim mostly waits for its group's commit and fsync, and claims of two rounds
    /// share the writer's transactions (drain +17%).
    fn claim_rounds(&self) -> usize {
        2
    }

    async fn submit(&self, jobs: Vec<JobSpec>, now: i64) -> StoreResult<Vec<SubmitOutcome>> {
        // Specs are encoded here, outside the writer thread.
        let encoded: Vec<(JobSpec, String)> = jobs
            .into_iter()
            .map(|s| schema::encode(&s).map(|e| (s, e)))
            .collect::<StoreResult<_>>()?;
        self.write("submit", move |conn, retry| {
            events::submit(conn, encoded.clone(), now, retry)
        })
        .await
    }

    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Lease>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expiry = req.now_ms + req.lease_ms;
        self.write("claim", move |conn, retry| {
            claim::claim(conn, &req, &token, expiry, retry)
        })
        .await
    }

    async fn renew(&self, leases: Vec<LeaseRef>, expiry: i64) -> StoreResult<Vec<String>> {
        self.write("renew", move |conn, retry| {
            events::renew(conn, leases.clone(), expiry, retry)
        })
        .await
    }

    async fn complete(&self, c: Completion) -> StoreResult<CompleteOutcome> {
        self.write("complete", move |conn, retry| {
            events::complete(conn, c.clone(), retry)
        })
        .await
    }

    async fn release(&self, leases: Vec<LeaseRef>, now: i64) -> StoreResult<Vec<Requeued>> {
        self.write("release", move |conn, retry| {
            events::release(conn, leases.clone(), now, retry)
        })
        .await
    }

    async fn requeue_expired(&self, now: i64) -> StoreResult<Vec<Requeued>> {
        self.write("requeue_expired", move |conn, retry| {
            events::requeue(conn, Sweep::Expired, now, retry)
        })
        .await
    }

    async fn requeue_owner(&self, owner: &str, now: i64) -> StoreResult<Vec<Requeued>> {
        let sweep = Sweep::Owner(owner.to_string());
        self.write("requeue_owner", move |conn, retry| {
            events::requeue(conn, sweep.clone(), now, retry)
        })
        .await
    }

    async fn requeue_held(&self, leases: Vec<HeldLease>, now: i64) -> StoreResult<Vec<Requeued>> {
        self.write("requeue_held", move |conn, retry| {
            events::requeue(conn, Sweep::Held(leases.clone()), now, retry)
        })
        .await
    }

    async fn suspend(&self, key: JobKey, now: i64) -> StoreResult<ChangeOutcome> {
        self.write("suspend", move |conn, retry| {
            events::suspend_or_resume(conn, key.clone(), Event::Suspend, now, retry)
        })
        .await
    }

    async fn resume(&self, key: JobKey, now: i64) -> StoreResult<ChangeOutcome> {
        self.write("resume", move |conn, retry| {
            events::suspend_or_resume(conn, key.clone(), Event::Resume, now, retry)
        })
        .await
    }

    async fn cancel(&self, key: JobKey, now: i64) -> StoreResult<CancelOutcome> {
        self.write("cancel", move |conn, retry| {
            events::cancel(conn, key.clone(), now, retry)
        })
        .await
    }

    async fn trigger(&self, key: JobKey, now: i64) -> StoreResult<TriggerOutcome> {
        self.write("trigger", move |conn, retry| {
            events::trigger(conn, key.clone(), now, retry)
        })
        .await
    }

    async fn get(&self, key: JobKey) -> StoreResult<Option<Job>> {
        self.read(move |conn| queries::get(conn, &key)).await
    }

    async fn list(&self, filter: ListFilter) -> StoreResult<Page> {
        self.read(move |conn| queries::list(conn, &filter)).await
    }

    async fn log(&self, job_id: &str, limit: usize) -> StoreResult<Vec<LogEntry>> {
        let job_id = job_id.to_string();
        self.read(move |conn| queries::log(conn, &job_id, limit))
            .await
    }

    async fn stats(&self, node_group: Option<&str>) -> StoreResult<Stats> {
        let group = node_group.map(str::to_string);
        self.read(move |conn| queries::stats(conn, group.as_deref()))
            .await
    }

    async fn next_due(&self, node_group: &str) -> StoreResult<Option<i64>> {
        let group = node_group.to_string();
        self.read(move |conn| queries::next_due(conn, &group)).await
    }

    async fn broadcast_targets(&self, before_ms: i64) -> StoreResult<Vec<String>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT shard_on FROM jobs INDEXED BY jobs_shard_on
                 WHERE shard_on IS NOT NULL AND created_at < ?1 LIMIT 1000",
            )?;
            let rows = stmt.query_map([before_ms], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn target_gone(&self, identity: &str, now: i64) -> StoreResult<usize> {
        let identity = identity.to_string();
        self.write("target_gone", move |conn, retry| {
            events::target_gone(conn, &identity, now, retry)
        })
        .await
    }

    async fn map(&self, job_id: &str, batch: MapBatch, now: i64) -> StoreResult<MapOutcome> {
        let job_id = job_id.to_string();
        self.write("map", move |conn, retry| {
            events::map(conn, &job_id, &batch, now, retry)
        })
        .await
    }

    async fn map_results(
        &self,
        reduce_id: &str,
        token: &str,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<Result<Vec<ChildResult>, Refusal>> {
        let (reduce_id, token) = (reduce_id.to_string(), token.to_string());
        self.read(move |conn| {
            events::map_results(conn, &reduce_id, &token, after.as_deref(), limit)
        })
        .await
    }

    async fn running_count(&self, node_group: &str, most: u32) -> StoreResult<u32> {
        let group = node_group.to_string();
        self.read(move |conn| claim::running_count(conn, &group, most))
            .await
    }

    async fn due_count(&self, node_group: &str, now: i64) -> StoreResult<u64> {
        let group = node_group.to_string();
        self.read(move |conn| queries::due_count(conn, &group, now))
            .await
    }

    async fn backlog(
        &self,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<crate::store::GroupBacklog>> {
        self.read(move |conn| queries::backlog(conn, now, limit))
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
        self.read(move |conn| queries::pending_feedback(conn, &group, after, limit))
            .await
    }

    async fn ack_feedback(&self, group: &str, ids: Vec<String>) -> StoreResult<()> {
        let group = group.to_string();
        self.write("ack_feedback", move |conn, _| {
            queries::ack_feedback(conn, &group, &ids)
        })
        .await
    }

    async fn fence(&self, epoch: u64, identity: &str, now: i64) -> StoreResult<bool> {
        let identity = identity.to_string();
        self.write("fence", move |conn, _| {
            queries::fence(conn, epoch, &identity, now)
        })
        .await
    }

    /// Not ready once the store stopped writing for good (a failed fsync of its WAL): the
    /// readiness probe then names the reason, and only a restart recovers.
    async fn health(&self) -> StoreResult<()> {
        match self.fatal.get() {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    async fn enforce_retention(&self, before: i64) -> StoreResult<u64> {
        // Each chunk is its own grouped write, so that a large cleanup never holds the writer
        // for long.
        let mut removed = 0u64;
        loop {
            let n = self
                .write("retention", move |conn, _| {
                    queries::retention_chunk(conn, before)
                })
                .await?;
            removed += n;
            if n == 0 {
                return Ok(removed);
            }
        }
    }
}
