//! Files read again while the tracker runs (its TLS certificate, the auth file): one loop for
//! all of them, so that each behaves the same way on a change and on a broken file.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Calls `reload` every `every` until `shutdown`. `reload` reads its files and answers whether
/// what it serves changed (`Ok(true)`: logged and counted) or why the files do not load (kept
/// as they were; warned once per streak, since a file being rewritten fails one read).
/// Counted in `lts_reloads_total{what, result}`.
pub fn spawn(
    what: &'static str,
    every: Duration,
    shutdown: CancellationToken,
    mut reload: impl FnMut() -> anyhow::Result<bool> + Send + 'static,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: the files were just read at start-up.
        tick.tick().await;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match reload() {
                Ok(changed) => {
                    failing = false;
                    if changed {
                        metrics::counter!("lts_reloads_total", "what" => what, "result" => "ok")
                            .increment(1);
                        tracing::info!("{what} reloaded");
                    }
                }
                Err(e) => {
                    metrics::counter!("lts_reloads_total", "what" => what, "result" => "error")
                        .increment(1);
                    if !failing {
                        tracing::warn!(error = %format!("{e:#}"), "{what} changed but does not load; keeping the previous one");
                    }
                    failing = true;
                }
            }
        }
    });
}
