//! The job log's writer: the lines of every operation, gathered for [`LOG_LINGER`] and sent in
//! one `insert`. Operations do not wait for it; reading a job's log first flushes it.

use std::time::Duration;

use mongodb::Collection;
use mongodb::bson::Document;
use tokio::sync::{mpsc, oneshot};

use super::MongoStore;

/// How long the log writer gathers lines before it writes them.
pub const LOG_LINGER: Duration = Duration::from_millis(20);

/// Lines to write, and whom to tell once everything queued so far is written (a flush).
pub(super) type LogWrite = (Vec<Document>, Option<oneshot::Sender<()>>);

impl MongoStore {
    /// Queues log lines for the grouping writer. Waits only for room in its queue, not for
    /// the write: the job path never waits on its log.
    pub(super) async fn append_log(&self, lines: Vec<Document>) {
        if !lines.is_empty() {
            let _ = self.log_tx.send((lines, None)).await;
        }
    }

    /// Waits until every line queued so far is written (so a tracker reads its own log lines).
    pub(super) async fn flush_log(&self) {
        let (tx, rx) = oneshot::channel();
        if self.log_tx.send((Vec::new(), Some(tx))).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Writes the log lines of concurrent operations together: one `insert` per group, gathering
/// lines for up to [`LOG_LINGER`] so that a busy tracker sends few, large inserts. A failed write
/// is retried with backoff a few times, then dropped with an error in the log (a job's state
/// never depends on its log lines). A crash loses at most the lines of the last linger window.
pub(super) async fn log_writer(coll: Collection<Document>, mut rx: mpsc::Receiver<LogWrite>) {
    const MAX_LINES: usize = 10_000;
    while let Some((first, flush)) = rx.recv().await {
        let mut docs = first;
        let mut waiters: Vec<oneshot::Sender<()>> = flush.into_iter().collect();
        let deadline = tokio::time::Instant::now() + LOG_LINGER;
        while docs.len() < MAX_LINES && waiters.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((more, flush))) => {
                    docs.extend(more);
                    waiters.extend(flush);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=5 {
            if docs.is_empty() {
                break;
            }
            match coll.insert_many(docs.iter()).ordered(false).await {
                Ok(_) => break,
                Err(e) if attempt < 5 => {
                    tracing::warn!(error = %e, lines = docs.len(), retry_in = ?delay, "mongodb: job log write failed");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    metrics::counter!("lts_store_log_lines_dropped_total")
                        .increment(docs.len() as u64);
                    tracing::error!(error = %e, lines = docs.len(), "mongodb: job log lines dropped");
                }
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}
