//! `lts-worker-sdk`: everything a program needs to take part in an LTS cluster.
//!
//! * [`TaskTracker`] runs jobs with your [`JobRunner`]:
//!
//! ```no_run
//! use lts_worker_sdk::{JobContext, RunResult, TaskTracker};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = TaskTracker::builder()
//!     .cluster("default")
//!     .node_group("mail-senders")
//!     .tracker("127.0.0.1:7070")
//!     .threads(16)
//!     .runner(|ctx: JobContext| async move {
//!         ctx.log().info(format!("sending to {:?}", ctx.param("to")));
//!         RunResult::success("sent")
//!     })
//!     .build()?;
//! worker.run(async { tokio::signal::ctrl_c().await.ok(); }).await;
//! # Ok(()) }
//! ```
//!
//! * [`JobClient`] submits jobs, looks them up and subscribes to feedback;
//!   [`RetryingJobClient`] adds a durable local spool so no submit is lost while no tracker
//!   is reachable; [`JobClient::watch`] follows job changes across the cluster as they
//!   happen.
//! * [`sidecar`] holds the runners of the `lts-worker` binary, which makes any program a
//!   TaskTracker (a command per job, or an HTTP call per job).
//! * [`runtime`] (the `runtime` feature, on by default) sets up logging and waits for SIGTERM
//!   or Ctrl-C, as the LTS binaries do: `worker.run(lts_worker_sdk::runtime::shutdown_signal())`.

mod background;
pub mod client;
pub mod connect;
pub mod credentials;
pub mod map;
pub mod outbox;
mod retrying;
pub mod runner;
pub mod sidecar;
pub mod spool;
pub mod watch;
pub mod worker;

pub use client::{
    ClientError, DEFAULT_CALL_TIMEOUT, FeedbackSubscription, JobClient, ListQuery, RetryingAnswer,
    RetryingJobClient, SubmitAnswer,
};
/// Logging set-up and the shutdown signal of the LTS binaries ([`lts_core::runtime`]).
#[cfg(feature = "runtime")]
pub use credentials::{CredentialOptions, Credentials};
pub use lts_core::runtime;
pub use lts_core::{FeedbackItem, Job, JobKey, JobSpec, JobState, Outcome, Schedule};
pub use runner::{BizLogger, JobContext, JobRunner, RunResult};
pub use watch::{JobWatch, WatchEvent, WatchFilter};
pub use worker::{Connection, TaskTracker, TaskTrackerBuilder};
