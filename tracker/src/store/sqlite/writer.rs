//! The writer thread: every change of the store is an operation run here, many to one
//! transaction (group commit), each answered only once its transaction is durable.
//!
//! A group runs without savepoints: a savepoint per operation copies every page the operation
//! touches first into a statement journal, which cost more than the operations themselves.
//! Operations almost never fail; when one does, the whole group is rolled back and each of
//! its operations runs again alone, in its own transaction, so that a failed operation writes
//! nothing and takes nobody else's work with it. Operations are therefore re-runnable
//! (`FnMut`): each run starts from the store as it was before the group.
//!
//! **Durability is pipelined.** With a [`WalSync`], the writer's connection commits without an
//! fsync (`synchronous=NORMAL`: the commit is only written to the WAL file) and hands the
//! group's answers to a syncer thread, then goes on with the next group at once. The syncer
//! fsyncs the WAL file and only then answers every group that was committed before that fsync
//! began, so no caller ever hears of a write that a power loss could take back — the same
//! promise as `synchronous=FULL` — while the writer runs the next group during the fsync
//! instead of waiting ~1 ms for the disk. What other connections may see in that window is
//! a committed transaction not yet on disk; SQLite's WAL keeps the file consistent either way
//! (a torn tail is dropped at recovery), and a process crash loses nothing (the OS holds the
//! written pages). A failed fsync is fatal to the store: Linux may drop the pages it could
//! not write and report success on the next fsync, so after one failure every write is refused
//! until the tracker restarts and SQLite recovers from the file.

use std::collections::BTreeMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use lts_core::schedule::RetryPolicy;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::MAX_GROUP;
use crate::store::{StoreError, StoreResult};

/// One operation of the writer, queued by a caller that waits for its answer.
pub(super) trait Op: Send {
    /// What it is, for metrics and logs.
    fn name(&self) -> &'static str;
    /// Runs it in the open transaction; whether it succeeded (a failure may have written part
    /// of its work: the transaction is then rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: its result once `committed` is `Ok`, or the commit's error.
    fn answer(self: Box<Self>, committed: Result<(), &StoreError>);
}

/// An operation as a closure over the connection and the retry policy, and its caller's answer.
pub(super) struct Pending<T, F> {
    name: &'static str,
    f: F,
    retry: RetryPolicy,
    result: Option<StoreResult<T>>,
    tx: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Pending<T, F> {
    /// `f` as an operation; its result goes to `tx` after commit.
    pub(super) fn new(
        name: &'static str,
        f: F,
        retry: RetryPolicy,
        tx: oneshot::Sender<StoreResult<T>>,
    ) -> Self {
        Pending {
            name,
            f,
            retry,
            result: None,
            tx,
        }
    }
}

impl<T, F> Op for Pending<T, F>
where
    T: Send,
    F: FnMut(&Connection, &RetryPolicy) -> StoreResult<T> + Send,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.f)(conn, &self.retry);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, committed: Result<(), &StoreError>) {
        let answer = match (committed, self.result) {
            (Err(e), _) => Err(e.clone()),
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::Backend("the write was not run".into())),
        };
        let _ = self.tx.send(answer);
    }
}

/// A queued operation.
pub(super) type WriteOp = Box<dyn Op>;

/// An operation that holds the writer this long is logged (debug) on its own.
const SLOW_OP: Duration = Duration::from_millis(20);

/// Time spent per operation name, logged every 10 s at debug level.
#[derive(Default)]
struct Stats {
    commits: u64,
    ops: u64,
    since: Option<Instant>,
    op_time: BTreeMap<&'static str, Duration>,
}

impl Stats {
    fn group(&mut self, ops: usize) {
        metrics::histogram!("lts_store_commit_group_size").record(ops as f64);
        self.commits += 1;
        self.ops += ops as u64;
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= Duration::from_secs(10) {
            self.log();
        }
    }

    /// Logs the time spent since the last line, and starts counting again.
    fn log(&mut self) {
        if self.commits == 0 {
            return;
        }
        tracing::debug!(
            commits = self.commits,
            ops = self.ops,
            ops_per_commit = self.ops as f64 / self.commits as f64,
            op_ms = ?self.op_time.iter().map(|(k, v)| (*k, v.as_millis())).collect::<Vec<_>>(),
            "sqlite writer"
        );
        *self = Stats::default();
    }

    fn timed(&mut self, op: &mut WriteOp, conn: &Connection) -> bool {
        let started = Instant::now();
        let ok = op.run(conn);
        let took = started.elapsed();
        let name = op.name();
        metrics::histogram!("lts_store_op_seconds", "op" => name).record(took.as_secs_f64());
        *self.op_time.entry(name).or_default() += took;
        if took >= SLOW_OP {
            // Other operations wait for it: a workflow's start or a long cascade, say.
            tracing::debug!(
                op = name,
                ms = took.as_millis(),
                "sqlite writer: a slow operation"
            );
        }
        ok
    }
}

/// Runs statements without parameters, prepared once.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Commits the open transaction, or rolls it back when the commit fails.
fn commit(conn: &Connection) -> Result<(), StoreError> {
    run(conn, "COMMIT").map_err(|e| {
        let err = StoreError::from(e);
        tracing::error!(error = %err, "sqlite: commit failed");
        rollback(conn);
        err
    })
}

/// Rolls the open transaction back, and forgets the jobs it leased.
fn rollback(conn: &Connection) {
    let _ = conn.execute_batch("ROLLBACK");
    super::leased::forget_all();
}

/// Makes the WAL durable: an fsync of the file that every commit of the writer wrote to.
pub(super) type WalSync = Box<dyn FnMut() -> std::io::Result<()> + Send>;

/// Committed groups the writer may run ahead of the syncer: it waits when this many are not
/// yet durable, so a slow disk slows the writer instead of growing a queue.
const SYNC_QUEUE: usize = 8;

/// Set once the store stopped writing for good (a failed fsync): the error every write gets,
/// and what the store's health reports, until the tracker restarts.
pub(super) type Fatal = Arc<OnceLock<StoreError>>;

/// A group's operations and how their transaction ended, to be answered.
type Committed = (Vec<WriteOp>, Result<(), StoreError>);

/// Where committed groups are answered: at once, or, with a syncer, after its next fsync.
struct Answers {
    /// The syncer thread and its queue; `None`: answers go out at commit.
    syncer: Option<(std_mpsc::SyncSender<Committed>, thread::JoinHandle<()>)>,
    /// Set once a sync failed (or the syncer could not start): every write gets it.
    fatal: Fatal,
}

impl Answers {
    fn new(sync: Option<WalSync>, fatal: Fatal) -> Answers {
        let syncer = sync.and_then(|sync| {
            let (tx, rx) = std_mpsc::sync_channel(SYNC_QUEUE);
            let syncer_fatal = fatal.clone();
            match thread::Builder::new()
                .name("lts-sqlite-sync".into())
                .spawn(move || syncer_loop(rx, sync, &syncer_fatal))
            {
                Ok(handle) => Some((tx, handle)),
                Err(e) => {
                    // Nothing could be made durable: refuse every write instead.
                    let _ = fatal.set(StoreError::Backend(format!("spawn the WAL syncer: {e}")));
                    None
                }
            }
        });
        Answers { syncer, fatal }
    }

    /// The error every write gets once the store stopped writing for good.
    fn failed(&self) -> Option<&StoreError> {
        self.fatal.get()
    }

    /// Answers `ops`, whose transaction ended with `committed`, once that is durable.
    fn deliver(&self, ops: Vec<WriteOp>, committed: Result<(), StoreError>) {
        let Some((tx, _)) = &self.syncer else {
            return answer_all(ops, committed.as_ref().map(|_| ()));
        };
        if let Err(std_mpsc::SendError((ops, _))) = tx.send((ops, committed)) {
            let err = StoreError::Backend("the WAL syncer stopped".into());
            answer_all(ops, Err(&err));
        }
    }

    /// Waits until every delivered answer went out.
    fn close(self) {
        if let Some((tx, handle)) = self.syncer {
            drop(tx);
            let _ = handle.join();
        }
    }
}

fn answer_all(ops: Vec<WriteOp>, committed: Result<(), &StoreError>) {
    for op in ops {
        op.answer(committed);
    }
}

/// The syncer thread: takes every committed group waiting, fsyncs the WAL once, answers them.
fn syncer_loop(
    rx: std_mpsc::Receiver<Committed>,
    mut sync: WalSync,
    failed: &OnceLock<StoreError>,
) {
    let mut groups: Vec<Committed> = Vec::with_capacity(SYNC_QUEUE);
    while let Ok(first) = rx.recv() {
        groups.push(first);
        groups.extend(rx.try_iter());
        let synced = match failed.get() {
            Some(err) => Err(err.clone()),
            None => {
                let started = Instant::now();
                let synced = sync();
                metrics::histogram!("lts_store_sync_seconds")
                    .record(started.elapsed().as_secs_f64());
                synced.map_err(|e| {
                    let err = StoreError::Backend(format!(
                        "fsync of the write-ahead log failed ({e}): the last writes may not be \
                         on disk, so the store refuses writes until the tracker restarts"
                    ));
                    tracing::error!(error = %err, "sqlite: the store stopped writing");
                    failed.get_or_init(|| err).clone()
                })
            }
        };
        for (ops, committed) in groups.drain(..) {
            answer_all(ops, committed.and(synced.clone()).as_ref().map(|_| ()));
        }
    }
}

/// The writer thread's loop: until every sender is gone, takes what is queued (up to
/// [`MAX_GROUP`]), runs it as one transaction and answers each operation once its commit is
/// durable: after the commit itself, or with `sync`, after the syncer's next call of it. A
/// failed sync sets `fatal`.
pub(super) fn writer_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    sync: Option<WalSync>,
    fatal: Fatal,
) {
    let answers = Answers::new(sync, fatal);
    let mut batch: Vec<WriteOp> = Vec::with_capacity(MAX_GROUP);
    let mut stats = Stats::default();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if let Some(err) = answers.failed() {
            answer_all(std::mem::take(&mut batch), Err(err));
            continue;
        }
        stats.group(batch.len());
        if let Err(e) = run(&conn, "BEGIN IMMEDIATE") {
            let err = StoreError::from(e);
            tracing::error!(error = %err, ops = batch.len(), "sqlite: cannot begin a transaction");
            answer_all(std::mem::take(&mut batch), Err(&err));
            continue;
        }
        let all_ran = batch.iter_mut().all(|op| stats.timed(op, &conn));
        if all_ran {
            let started = Instant::now();
            let committed = commit(&conn);
            *stats.op_time.entry("(commit)").or_default() += started.elapsed();
            answers.deliver(
                std::mem::replace(&mut batch, Vec::with_capacity(MAX_GROUP)),
                committed,
            );
            continue;
        }
        // One failed: none of the group is kept; each runs again on its own.
        rollback(&conn);
        tracing::debug!(
            ops = batch.len(),
            "sqlite: an operation failed; running the group one by one"
        );
        for mut op in batch.drain(..) {
            if let Err(e) = run(&conn, "BEGIN IMMEDIATE") {
                op.answer(Err(&StoreError::from(e)));
                continue;
            }
            let committed = if stats.timed(&mut op, &conn) {
                commit(&conn)
            } else {
                // Its own error is its answer; nothing of it is kept.
                rollback(&conn);
                Ok(())
            };
            answers.deliver(vec![op], committed);
        }
    }
    stats.log();
    answers.close();
    tracing::debug!("sqlite writer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Connection, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL UNIQUE)")
            .unwrap();
        (conn, dir)
    }

    fn insert(v: i64) -> (WriteOp, oneshot::Receiver<StoreResult<usize>>) {
        let (tx, rx) = oneshot::channel();
        let f = move |conn: &Connection, _: &RetryPolicy| {
            Ok(conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?)
        };
        (
            Box::new(Pending::new("insert", f, RetryPolicy::default(), tx)),
            rx,
        )
    }

    /// A failing operation in a group writes nothing and fails alone; the others are kept.
    #[test]
    fn a_failed_operation_fails_alone() {
        let (conn, dir) = store();
        let (tx, rx) = mpsc::channel(16);
        let mut answers = Vec::new();
        // The second insert of 1 breaks the unique constraint.
        for v in [1, 2, 1, 3] {
            let (op, answer) = insert(v);
            tx.blocking_send(op).unwrap();
            answers.push(answer);
        }
        drop(tx);
        writer_loop(conn, rx, None, Fatal::default());
        let got: Vec<bool> = answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap().is_ok())
            .collect();
        assert_eq!(got, [true, true, false, true]);
        let check = Connection::open(dir.path().join("w.db")).unwrap();
        let mut stmt = check.prepare("SELECT v FROM t ORDER BY v").unwrap();
        let kept: Vec<i64> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(kept, [1, 2, 3]);
    }

    /// With a syncer, a committed write is answered only after the sync that follows its
    /// commit; other connections may see it before.
    #[test]
    fn answers_wait_for_the_sync_after_the_commit() {
        let (conn, dir) = store();
        let (go_tx, go_rx) = std_mpsc::channel::<()>();
        let sync: WalSync = Box::new(move || {
            go_rx.recv().map_err(std::io::Error::other)?;
            Ok(())
        });
        let (tx, rx) = mpsc::channel(16);
        let writer = thread::spawn(move || writer_loop(conn, rx, Some(sync), Fatal::default()));
        let (op, mut answer) = insert(7);
        tx.blocking_send(op).unwrap();
        let check = Connection::open(dir.path().join("w.db")).unwrap();
        let seen = || -> i64 {
            check
                .query_row("SELECT count(*) FROM t WHERE v = 7", [], |r| r.get(0))
                .unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen() == 0 {
            assert!(Instant::now() < deadline, "the write was never committed");
            thread::sleep(Duration::from_millis(5));
        }
        // Committed, not yet synced: no answer.
        thread::sleep(Duration::from_millis(50));
        assert!(matches!(
            answer.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        go_tx.send(()).unwrap();
        assert_eq!(answer.blocking_recv().unwrap().unwrap(), 1);
        drop(tx);
        drop(go_tx);
        writer.join().unwrap();
    }

    /// A failed sync fails the writes it was to cover, and every write after it, without
    /// syncing again: the kernel may have dropped the pages it could not write.
    #[test]
    fn a_failed_sync_refuses_every_later_write() {
        let (conn, _dir) = store();
        let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = syncs.clone();
        let sync: WalSync = Box::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(std::io::Error::other("disk gone"))
        });
        let (tx, rx) = mpsc::channel(16);
        let fatal = Fatal::default();
        let store_fatal = fatal.clone();
        let writer = thread::spawn(move || writer_loop(conn, rx, Some(sync), store_fatal));
        let (op, answer) = insert(1);
        tx.blocking_send(op).unwrap();
        let err = answer.blocking_recv().unwrap().unwrap_err().to_string();
        assert!(err.contains("fsync") && err.contains("disk gone"), "{err}");
        for v in 2..5 {
            let (op, answer) = insert(v);
            tx.blocking_send(op).unwrap();
            let later = answer.blocking_recv().unwrap().unwrap_err().to_string();
            assert_eq!(later, err);
        }
        drop(tx);
        writer.join().unwrap();
        assert_eq!(syncs.load(std::sync::atomic::Ordering::SeqCst), 1);
        // What the store's health reports.
        assert_eq!(fatal.get().map(ToString::to_string), Some(err));
    }
}
