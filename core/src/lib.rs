//! `lts-core`: the LTS job model and its validation, schedule math (cron, repeat, retry
//! backoff), and the gRPC protocol (`lts.v1`).
//!
//! This crate knows nothing of storage, ZooKeeper or Kubernetes.

pub mod convert;
pub mod duration;
pub mod heartbeat;
pub mod model;
pub mod schedule;
pub mod transition;
pub mod validate;

/// The generated `lts.v1` protocol types, clients and servers.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("lts.v1");
}

pub use duration::{parse_duration, parse_duration_ms};
pub use model::{
    BizLine, FeedbackItem, Job, JobKey, JobSpec, JobState, LogEntry, LogLevel, LogType,
    MisfirePolicy, Outcome, Schedule, ScheduleKind,
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

/// Formats epoch milliseconds as RFC 3339 (UTC, millisecond precision); empty for 0.
pub fn format_ms(ms: i64) -> String {
    if ms == 0 {
        return String::new();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}
