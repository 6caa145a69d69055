//! `lts-tracker`: the LTS JobTracker.
//!
//! * [`server`] starts one ([`server::Tracker::start`]) from a [`server::TrackerConfig`];
//! * [`service`] holds the gRPC services;
//! * [`dispatch`] pushes due jobs to TaskTrackers with free threads;
//! * [`store`] is the durable [`store::JobStore`] trait and its backends;
//! * [`registry`] is membership and master election;
//! * [`feedback`] delivers results to subscribed JobClients;
//! * [`changes`] announces job changes to `JobService.Watch` subscribers.

pub mod changes;
pub mod conn;
pub mod dispatch;
pub mod feedback;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod service;
pub mod store;

pub use server::{StoreUrl, Tracker, TrackerConfig};

/// Installs the `tracing` subscriber used by every LTS binary: `RUST_LOG`-style filter from
/// `LTS_LOG` (default `info`), JSON lines when `LTS_LOG_FORMAT=json`.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LTS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LTS_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: a log file or collector gets plain `key=value` text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
