//! `lts-worker-sdk`: the TaskTracker runtime ([`TaskTracker`], [`JobRunner`]), the
//! [`JobClient`], and the runners of the language-agnostic `lts-worker` sidecar.

pub mod runner;
pub mod sidecar;

pub use runner::{BizLogger, JobContext, JobRunner, RunResult};
