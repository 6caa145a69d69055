//! `lts-tracker`: runs one JobTracker.

use clap::Parser;
use lts_tracker::{Tracker, TrackerConfig};

/// The LTS JobTracker: accepts jobs, stores them and hands them to TaskTrackers.
#[derive(Debug, Parser)]
#[command(name = "lts-tracker", version, about)]
struct Cli {
    #[command(flatten)]
    config: TrackerConfig,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lts_tracker::init_tracing();
    // Fail points armed by `FAILPOINTS` (builds with the `failpoints` feature only; tests).
    let _fail_points = fail::FailScenario::setup();
    let cli = Cli::parse();
    let tracker = match Tracker::start(cli.config).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lts-tracker: {e:#}");
            return std::process::ExitCode::from(1);
        }
    };
    lts_core::runtime::shutdown_signal().await;
    tracing::info!("shutting down");
    if let Err(e) = tracker.shutdown().await {
        eprintln!("lts-tracker: {e:#}");
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}
