//! Reconcile metrics (Prometheus names): `lts_operator_reconciles_total{controller}`,
//! `lts_operator_reconcile_errors_total{controller,error}`,
//! `lts_operator_reconcile_duration_seconds{controller}` and `lts_operator_leader`.

use std::time::Instant;

/// Times one reconcile; counts it and records its duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    controller: &'static str,
    start: Instant,
}

impl ReconcileTimer {
    /// Starts timing a reconcile of `controller` (`nodegroup` or `job`).
    pub fn start(controller: &'static str) -> ReconcileTimer {
        metrics::counter!("lts_operator_reconciles_total", "controller" => controller).increment(1);
        ReconcileTimer {
            controller,
            start: Instant::now(),
        }
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        metrics::histogram!("lts_operator_reconcile_duration_seconds", "controller" => self.controller)
            .record(self.start.elapsed().as_secs_f64());
    }
}

/// Counts a failed reconcile.
pub fn reconcile_failed(controller: &'static str, error: &crate::Error) {
    metrics::counter!(
        "lts_operator_reconcile_errors_total",
        "controller" => controller,
        "error" => error.metric_label()
    )
    .increment(1);
}

/// Records whether this replica leads.
pub fn set_leader(leading: bool) {
    metrics::gauge!("lts_operator_leader").set(if leading { 1.0 } else { 0.0 });
}
