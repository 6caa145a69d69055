//! Prometheus metrics. Every crate records through the `metrics` facade; this installs the
//! exporter that serves `/metrics`.
//!
//! Names: `lts_jobs_submitted_total{status}`, `lts_jobs_dispatched_total{node_group}`,
//! `lts_jobs_completed_total{outcome}`, `lts_stale_results_total`,
//! `lts_jobs_requeued_total{reason}`, `lts_jobs_cancelled_total`,
//! `lts_task_trackers_connected{node_group}`, `lts_feedback_sent_total`,
//! `lts_feedback_acked_total`, `lts_store_commit_group_size` (histogram).

use std::net::SocketAddr;

/// Serves Prometheus metrics on `addr` (HTTP, any path).
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?;
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}
