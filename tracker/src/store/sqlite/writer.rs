//! The writer thread: every change of the store is an operation run here, many to one
//! transaction and one fsync (group commit), each answered only after its commit.
//!
//! A group runs without savepoints: a savepoint per operation copies every page the operation
//! touches first into a statement journal, which cost more than the operations themselves.
//! Operations almost never fail; when one does, the whole group is rolled back and each of
//! its operations runs again alone, in its own transaction, so that a failed operation writes
//! nothing and takes nobody else's work with it. Operations are therefore re-runnable
//! (`FnMut`): each run starts from the store as it was before the group.

use std::collections::BTreeMap;
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

/// The writer thread's loop: until every sender is gone, takes what is queued (up to
/// [`MAX_GROUP`]), runs it as one transaction and answers each operation after the commit.
pub(super) fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<WriteOp>) {
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
        stats.group(batch.len());
        if let Err(e) = run(&conn, "BEGIN IMMEDIATE") {
            let err = StoreError::from(e);
            tracing::error!(error = %err, ops = batch.len(), "sqlite: cannot begin a transaction");
            for op in batch.drain(..) {
                op.answer(Err(&err));
            }
            continue;
        }
        let all_ran = batch.iter_mut().all(|op| stats.timed(op, &conn));
        if all_ran {
            let committed = commit(&conn);
            for op in batch.drain(..) {
                op.answer(committed.as_ref().map(|_| ()));
            }
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
            if stats.timed(&mut op, &conn) {
                let committed = commit(&conn);
                op.answer(committed.as_ref().map(|_| ()));
            } else {
                rollback(&conn);
                op.answer(Ok(()));
            }
        }
    }
    stats.log();
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
        writer_loop(conn, rx);
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
}
