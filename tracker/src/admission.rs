//! Caps on what peers may hold open: how many long-lived streams of each kind a tracker
//! serves, and how long a stream may take to say who it is. A refusal is
//! `RESOURCE_EXHAUSTED` (try another tracker, or later) or `DEADLINE_EXCEEDED`, each naming
//! the flag that sets the bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

/// Streams of one kind, counted against a cap.
#[derive(Debug)]
pub struct StreamSlots {
    kind: &'static str,
    flag: &'static str,
    open: AtomicUsize,
    max: usize,
}

impl StreamSlots {
    /// At most `max` open streams of `kind`, set by `flag`.
    pub fn new(kind: &'static str, flag: &'static str, max: usize) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            kind,
            flag,
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot for one more stream, held until the guard drops; `RESOURCE_EXHAUSTED` when all
    /// are taken.
    pub fn admit(self: &Arc<Self>) -> Result<StreamGuard, Status> {
        let taken = self.open.fetch_add(1, Ordering::SeqCst);
        if taken >= self.max {
            self.open.fetch_sub(1, Ordering::SeqCst);
            metrics::counter!("lts_streams_refused_total", "kind" => self.kind).increment(1);
            return Err(Status::resource_exhausted(format!(
                "this tracker serves at most {} {} streams ({}); try another tracker, or later",
                self.max, self.kind, self.flag
            )));
        }
        Ok(StreamGuard(self.clone()))
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// One admitted stream; its slot is free again when this drops.
#[derive(Debug)]
pub struct StreamGuard(Arc<StreamSlots>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The first message of `inbound`, which must come within `within` (`--hello-timeout-ms`):
/// a peer that opens a stream and says nothing holds nothing for long.
pub async fn first_message<T>(
    inbound: &mut Streaming<T>,
    within: Duration,
    what: &str,
) -> Result<Option<T>, Status> {
    match tokio::time::timeout(within, inbound.next()).await {
        Ok(Some(Ok(m))) => Ok(Some(m)),
        Ok(Some(Err(e))) => Err(e),
        Ok(None) => Ok(None),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no {what} within {} ms of opening the stream (--hello-timeout-ms)",
            within.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back() {
        let slots = StreamSlots::new("Work", "--max-worker-streams", 2);
        let a = slots.admit().unwrap();
        let _b = slots.admit().unwrap();
        let refused = slots.admit().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("--max-worker-streams"),
            "{refused:?}"
        );
        drop(a);
        assert_eq!(slots.open(), 1);
        assert!(slots.admit().is_ok());
    }
}
