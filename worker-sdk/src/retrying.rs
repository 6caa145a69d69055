//! [`RetryingJobClient`]: a [`JobClient`] with a durable local spool, so that no submit is
//! lost while no tracker accepts it, and the loop that sends the spool on in order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lts_core::JobSpec;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, JobClient, SubmitAnswer, reconnect_backoff};
use crate::spool::Spool;

/// What [`RetryingJobClient::submit`] did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryingAnswer {
    /// The tracker answered for each job.
    Submitted(Vec<SubmitAnswer>),
    /// No tracker accepted; the jobs are in the local spool and will be sent in order.
    Spooled,
}

/// A JobClient that never loses a submit: see the module docs.
#[derive(Debug)]
pub struct RetryingJobClient {
    client: JobClient,
    spool: Spool,
    wake: Arc<Notify>,
    gate: Arc<tokio::sync::Mutex<()>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RetryingJobClient {
    /// Wraps `client` with a spool file at `spool_path` (created if missing). Anything already
    /// in the spool is resent in the background.
    pub fn open(client: JobClient, spool_path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let spool = Spool::open(spool_path)?;
        let wake = Arc::new(Notify::new());
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(resend_loop(
            client.clone(),
            spool.clone(),
            wake.clone(),
            gate.clone(),
            stop.clone(),
        ));
        wake.notify_one();
        Ok(RetryingJobClient {
            client,
            spool,
            wake,
            gate,
            stop,
            task,
        })
    }

    /// The plain client underneath.
    pub fn client(&self) -> &JobClient {
        &self.client
    }

    /// Submits jobs. While the spool holds earlier jobs, new ones join the end of it so that
    /// order is kept.
    pub async fn submit(&self, mut specs: Vec<JobSpec>) -> Result<RetryingAnswer, ClientError> {
        // Keys made now go into the spool with the jobs: a resend whose first answer was lost
        // is answered with the job it stored, even after that job finished.
        for s in &mut specs {
            s.idempotency_key
                .get_or_insert_with(|| self.client.keys.key());
        }
        let _g = self.gate.lock().await;
        if self.spool.is_empty().await? {
            match self.client.submit_batch(specs.clone()).await {
                Ok(answers) => return Ok(RetryingAnswer::Submitted(answers)),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, n = specs.len(), "no tracker accepted; spooling");
                }
                Err(e) => return Err(e),
            }
        }
        let bodies = specs
            .iter()
            .map(|s| serde_json::to_string(s).map_err(|e| ClientError::Config(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        self.spool.push(bodies).await?;
        self.wake.notify_one();
        Ok(RetryingAnswer::Spooled)
    }

    /// How many jobs wait in the spool.
    pub async fn spooled(&self) -> Result<u64, ClientError> {
        Ok(self.spool.len().await?)
    }

    /// Waits until the spool is empty or `timeout` passes; returns whether it is empty.
    pub async fn flush(&self, timeout: Duration) -> Result<bool, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.spool.is_empty().await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            self.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RetryingJobClient {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

/// The most spooled jobs resent in one batch.
const RESEND_BATCH: usize = 500;
/// The most bytes (of spooled JSON) resent in one batch: far below any message limit.
const RESEND_BATCH_BYTES: usize = 4 << 20;

async fn resend_loop(
    client: JobClient,
    spool: Spool,
    wake: Arc<Notify>,
    gate: Arc<tokio::sync::Mutex<()>>,
    stop: CancellationToken,
) {
    let mut delays = reconnect_backoff();
    // The most entries in one resend: halved when a batch is refused for good, so that the
    // one entry at fault ends up alone (and in quarantine).
    let mut most = RESEND_BATCH;
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        loop {
            let guard = gate.lock().await;
            let batch = match spool.peek(most).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "spool read failed");
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            // Unreadable entries go to quarantine; the rest go out in order, a batch at most
            // RESEND_BATCH_BYTES large (at least one entry).
            let (mut sendable, mut unreadable, mut bytes) = (Vec::new(), Vec::new(), 0usize);
            for (id, body) in batch {
                match serde_json::from_str::<JobSpec>(&body) {
                    Ok(spec) => {
                        if !sendable.is_empty() && bytes + body.len() > RESEND_BATCH_BYTES {
                            break;
                        }
                        bytes += body.len();
                        sendable.push((id, body, spec));
                    }
                    Err(e) => unreadable.push((id, body, format!("unreadable: {e}"))),
                }
            }
            if !unreadable.is_empty() {
                if let Err(e) = spool.quarantine(unreadable).await {
                    tracing::error!(error = %e, "spool quarantine failed");
                    break;
                }
                continue;
            }
            let ids: Vec<i64> = sendable.iter().map(|(id, _, _)| *id).collect();
            let specs: Vec<JobSpec> = sendable.iter().map(|(_, _, s)| s.clone()).collect();
            match client.submit_batch(specs).await {
                Err(e) if !e.is_retryable() => {
                    drop(guard);
                    if sendable.len() > 1 {
                        most = (sendable.len() / 2).max(1);
                        tracing::warn!(error = %e, next_batch = most, "spooled batch refused; sending smaller batches");
                        continue;
                    }
                    let (id, body, _) = sendable.remove(0);
                    if let Err(q) = spool
                        .quarantine(vec![(id, body, format!("refused: {e}"))])
                        .await
                    {
                        tracing::error!(error = %q, "spool quarantine failed");
                        break;
                    }
                    continue;
                }
                Ok(answers) => {
                    most = RESEND_BATCH;
                    for a in &answers {
                        if let SubmitAnswer::Rejected(v) = a {
                            tracing::warn!(violations = %v, "spooled job rejected by the tracker");
                        }
                    }
                    if let Err(e) = spool.remove(ids).await {
                        tracing::error!(error = %e, "spool cleanup failed; jobs will be resent (the tracker ignores duplicates)");
                    }
                    tracing::info!(n = answers.len(), "spooled jobs delivered");
                    delays = reconnect_backoff();
                    drop(guard);
                }
                Err(e) => {
                    drop(guard);
                    let d = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::debug!(error = %e, delay_ms = d.as_millis() as u64, "spool resend failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}
