//! `lts-core`: the LTS job model and its validation, schedule math (cron, repeat, retry
//! backoff), and the gRPC protocol (`lts.v1`).
//!
//! This crate knows nothing of storage, ZooKeeper or Kubernetes.

pub mod convert;
pub mod duration;
pub mod heartbeat;
pub mod limits;
pub mod model;
#[cfg(feature = "pki")]
pub mod pki;
pub mod redact;
pub mod route;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod schedule;
pub mod transition;
pub mod validate;
pub mod workflow;

/// The generated `lts.v1` protocol types, clients and servers.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("lts.v1");
}

pub use duration::{parse_duration, parse_duration_ms};
pub use model::{
    BizLine, ConcurrencyPolicy, FeedbackItem, Job, JobKey, JobSpec, JobState, LogEntry, LogLevel,
    LogType, MisfirePolicy, Outcome, Schedule, ScheduleKind, Shard, ShardProgress,
};
pub use validate::{FieldViolation, Violations, validate};

/// The version every node reports in its registration.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// This machine's host name: `HOSTNAME` when set and not empty, else `/etc/hostname`, else
/// `localhost`.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// A default node identity: `PREFIX-HOST-NNNNNN`, the [`hostname`] and a random six-digit
/// suffix (so that two processes on one host differ).
pub fn default_identity(prefix: &str) -> String {
    let suffix: u32 = rand::random::<u32>() % 1_000_000;
    format!("{prefix}-{}-{suffix:06}", hostname())
}

/// Formats epoch milliseconds as RFC 3339 (UTC, millisecond precision); empty for 0.
pub fn format_ms(ms: i64) -> String {
    if ms == 0 {
        return String::new();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_identity_names_the_host() {
        let id = default_identity("worker");
        let host = hostname();
        assert!(!host.is_empty());
        let suffix = id
            .strip_prefix(&format!("worker-{host}-"))
            .unwrap_or_else(|| panic!("{id}"));
        assert!(
            suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_digit()),
            "{id}"
        );
    }
}
