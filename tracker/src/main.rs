//! `lts-tracker`: runs one JobTracker.

use clap::{CommandFactory, FromArgMatches, Parser, parser::ValueSource};
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
    let matches = Cli::command().get_matches();
    // A store URL with a password in a flag is visible to every user of the machine (`ps`).
    if matches.value_source("store") == Some(ValueSource::CommandLine)
        && let Some(url) = matches.get_one::<lts_tracker::server::StoreUrl>("store")
        && let lts_tracker::server::StoreUrl::Mongo(raw) = url
        && lts_core::redact::redact_url(raw) != *raw
    {
        eprintln!(
            "lts-tracker: --store {url}: the URL holds a secret; pass it in --store-file (a mounted Secret) or LTS_STORE instead of a flag"
        );
        return std::process::ExitCode::from(2);
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let tracker = match Tracker::start(cli.config).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("lts-tracker: {e:#}");
            return std::process::ExitCode::from(1);
        }
    };
    let refused = tokio::select! {
        _ = lts_core::runtime::shutdown_signal() => None,
        e = tracker.registry_refused() => Some(e),
    };
    match &refused {
        None => tracing::info!("shutting down"),
        Some(e) => tracing::error!(error = %e, "the registry refused; stopping"),
    }
    let stopped = tracker.shutdown().await;
    if let Some(e) = refused {
        eprintln!("lts-tracker: registry: {e}");
        return std::process::ExitCode::from(1);
    }
    if let Err(e) = stopped {
        eprintln!("lts-tracker: {e:#}");
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}
