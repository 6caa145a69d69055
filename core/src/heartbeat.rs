//! Liveness of the peer of a long-lived stream (the `WorkerService.Work` stream), judged by
//! the answers to our own pings.
//!
//! Each side pings every interval with a nonce that is its *own* monotonic clock reading and
//! the peer echoes it back. The age of the newest answered ping is then measured on one clock
//! only, so it needs no clock agreement between machines, and it cannot be fooled by a burst
//! of old answers: a process that was frozen (SIGSTOP, a paused VM, a partition) and reads
//! answers that queued up meanwhile still sees that they answer old pings, and treats the peer
//! as silent until a *new* ping is answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shortest ping interval a tracker or a TaskTracker may be configured with.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Longest ping interval a tracker may be configured with.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Liveness of one stream's peer; shared between the task that pings, the task that reads
/// answers and whoever needs to know (e.g. the dispatcher). All methods take `&self`.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    timeout: Duration,
    /// Nonce (ms since `origin`) of the newest answered ping; 0 until the first answer, which
    /// counts as "answered at the start", so a new stream has one timeout of grace.
    answered: AtomicU64,
}

impl Heartbeat {
    /// A stream opened now, whose peer counts as silent once no ping sent within the last
    /// `timeout` has been answered.
    pub fn new(timeout: Duration) -> Heartbeat {
        Heartbeat {
            origin: Instant::now(),
            timeout,
            answered: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The nonce for a ping sent now.
    pub fn ping(&self) -> u64 {
        self.now()
    }

    /// The peer answered the ping with `nonce`. Nonces from the future (not ours) are ignored.
    pub fn answered(&self, nonce: u64) {
        if nonce <= self.now() {
            self.answered.fetch_max(nonce, Ordering::SeqCst);
        }
    }

    /// How long ago the newest answered ping was sent.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(
            self.now()
                .saturating_sub(self.answered.load(Ordering::SeqCst)),
        )
    }

    /// Whether a ping sent within the timeout has been answered.
    pub fn is_alive(&self) -> bool {
        self.silent_for() <= self.timeout
    }

    /// The timeout this heartbeat was made with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_stream_has_one_timeout_of_grace() {
        let hb = Heartbeat::new(Duration::from_millis(50));
        assert!(hb.is_alive());
        std::thread::sleep(Duration::from_millis(80));
        assert!(!hb.is_alive(), "no answer within the timeout");
    }

    #[test]
    fn only_an_answer_to_a_recent_ping_counts() {
        let hb = Heartbeat::new(Duration::from_millis(50));
        let old = hb.ping();
        std::thread::sleep(Duration::from_millis(80));
        // The answer to a ping sent before the pause arrives late (it queued up while this
        // side was frozen): the peer is still silent.
        hb.answered(old);
        assert!(!hb.is_alive());
        let fresh = hb.ping();
        hb.answered(fresh);
        assert!(hb.is_alive());
        // An older answer never moves liveness back.
        hb.answered(old);
        assert!(hb.is_alive());
    }

    #[test]
    fn nonces_from_the_future_are_ignored() {
        let hb = Heartbeat::new(Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(80));
        hb.answered(u64::MAX);
        assert!(!hb.is_alive());
    }
}
