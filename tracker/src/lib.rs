//! `lts-tracker`: the LTS JobTracker.
//!
//! * [`server`] starts one ([`server::Tracker::start`]) from a [`server::TrackerConfig`];
//! * [`service`] holds the gRPC services;
//! * [`dispatch`] pushes due jobs to TaskTrackers with free threads;
//! * [`store`] is the durable [`store::JobStore`] trait and its backends;
//! * [`registry`] is membership and master election;
//! * [`feedback`] delivers results to subscribed JobClients;
//! * [`changes`] announces job changes to `JobService.Watch` subscribers.

pub mod admission;
pub mod auth;
pub mod changes;
pub mod conn;
pub mod dispatch;
pub mod feedback;
pub mod metrics;
pub mod registry;
pub mod reload;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;

pub use server::{StoreUrl, Tracker, TrackerConfig};

/// Installs the `tracing` subscriber of the LTS binaries: `RUST_LOG`-style filter from
/// `LTS_LOG` (default `info`), JSON lines when `LTS_LOG_FORMAT=json`, on stderr
/// ([`lts_core::runtime::init_tracing`]).
pub fn init_tracing() {
    use lts_core::runtime::{LogFormat, init_tracing};
    init_tracing(LogFormat::from_env());
}
