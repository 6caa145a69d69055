//! Prometheus metrics. Every crate records through the `metrics` facade; this installs the
//! exporter and serves `/metrics` with the health endpoints.
//!
//! Names: `lts_jobs_submitted_total{status}`, `lts_jobs_dispatched_total{node_group}`,
//! `lts_jobs_completed_total{outcome}`, `lts_stale_results_total`,
//! `lts_jobs_requeued_total{reason}`, `lts_jobs_cancelled_total`,
//! `lts_task_trackers_connected{node_group}`, `lts_feedback_sent_total`,
//! `lts_feedback_acked_total`, `lts_store_commit_group_size` and `lts_store_sync_seconds`
//! (histograms: the SQLite writer's groups and the fsyncs of its WAL), and per TaskTracker
//! node group with unfinished work `lts_jobs_queued{node_group}`, `lts_jobs_due{node_group}`
//! (queued and due now: what an autoscaler scales on) and `lts_jobs_running{node_group}`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::store::JobStore;

/// Serves, on `addr` (plain HTTP, whatever the gRPC port does, so a kubelet can probe it):
///
/// * `/metrics`: Prometheus metrics;
/// * `/healthz`: 200 while the process runs (a liveness probe: never depends on the store, so
///   a store outage does not restart every tracker);
/// * `/readyz`: 200 while the job store answers and the tracker is not draining or shutting
///   down; 503 with the reason otherwise (a readiness probe: the Service stops sending
///   clients here).
///
/// Binds before returning, so a taken port fails the tracker's start.
pub async fn serve(
    addr: SocketAddr,
    store: Arc<dyn JobStore>,
    draining: CancellationToken,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    let stopping = draining;
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let h = handle.clone();
                async move {
                    h.run_upkeep();
                    h.render()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let store = store.clone();
                let stopping = stopping.clone();
                async move {
                    if stopping.is_cancelled() {
                        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string());
                    }
                    match tokio::time::timeout(std::time::Duration::from_secs(3), store.health())
                        .await
                    {
                        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_string()),
                        Ok(Err(e)) => {
                            (StatusCode::SERVICE_UNAVAILABLE, format!("job store: {e}\n"))
                        }
                        Err(_) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "job store: no answer within 3 s\n".to_string(),
                        ),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}

/// The node groups whose backlog is exported, at most (bounds the metrics' label count).
pub const MAX_BACKLOG_GROUPS: usize = 1_000;
/// How often the backlog gauges are read from the store.
pub const BACKLOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps `lts_jobs_queued`, `lts_jobs_due` and `lts_jobs_running` per node group current
/// (every tracker reads the shared store: take the `max` across trackers). A group whose work
/// is all done drops to 0.
pub fn spawn_backlog(store: Arc<dyn JobStore>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut known: std::collections::BTreeSet<String> = Default::default();
        let mut tick = tokio::time::interval(BACKLOG_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let groups = match store.backlog(lts_core::now_ms(), MAX_BACKLOG_GROUPS).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::debug!(error = %e, "backlog metrics: store unavailable");
                    continue;
                }
            };
            let now: std::collections::BTreeSet<String> =
                groups.iter().map(|g| g.node_group.clone()).collect();
            for gone in known.difference(&now) {
                for name in ["lts_jobs_queued", "lts_jobs_due", "lts_jobs_running"] {
                    metrics::gauge!(name, "node_group" => gone.clone()).set(0.0);
                }
            }
            for g in &groups {
                let group = g.node_group.clone();
                metrics::gauge!("lts_jobs_queued", "node_group" => group.clone())
                    .set(g.queued as f64);
                metrics::gauge!("lts_jobs_due", "node_group" => group.clone()).set(g.due as f64);
                metrics::gauge!("lts_jobs_running", "node_group" => group).set(g.running as f64);
            }
            known.extend(now);
            if known.len() > 4 * MAX_BACKLOG_GROUPS {
                known = groups.into_iter().map(|g| g.node_group).collect();
            }
        }
    });
}
