//! A background task that stops when asked or when its handle is dropped.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Owns a spawned task and the token that stops it. Dropping it cancels the task; [`stop`]
/// also waits for it to end.
///
/// [`stop`]: Background::stop
#[derive(Debug)]
pub(crate) struct Background {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Background {
    /// Takes over `task`, which ends when `stop` is cancelled.
    pub(crate) fn new(stop: CancellationToken, task: JoinHandle<()>) -> Background {
        Background {
            stop,
            task: Some(task),
        }
    }

    /// Cancels the task and waits for it to end.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
