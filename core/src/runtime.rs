//! What every LTS binary does when it starts and stops: install the `tracing` subscriber
//! ([`init_tracing`]) and wait for SIGTERM or Ctrl-C ([`shutdown_signal`]).
//!
//! Behind the `runtime` feature, so that a library built on `lts-core` (the worker SDK) does
//! not bring `tracing-subscriber` and tokio's signal handling into its users' builds unless they
//! ask for them.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Text with `key=value` fields.
    #[default]
    Text,
    /// One JSON object a line, the event's fields under `fields`.
    Json,
    /// One JSON object a line, the event's fields at the top level beside `level`, `target`
    /// and `timestamp` (the operator's format).
    FlatJson,
}

impl LogFormat {
    /// [`LogFormat::Json`] when `LTS_LOG_FORMAT` is `json` (any case), else
    /// [`LogFormat::Text`]: how `lts-tracker`, `lts-worker` and `lts` choose.
    pub fn from_env() -> LogFormat {
        LogFormat::from_setting(std::env::var("LTS_LOG_FORMAT").ok().as_deref())
    }

    /// The format an `LTS_LOG_FORMAT` value asks for (`None`: unset).
    pub fn from_setting(value: Option<&str>) -> LogFormat {
        if value.is_some_and(|v| v.eq_ignore_ascii_case("json")) {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogOutput {
    /// Standard error (the default: standard output stays free for a command's answer).
    #[default]
    Stderr,
    /// Standard output.
    Stdout,
}

/// Installs the process's `tracing` subscriber writing to standard error; see
/// [`init_tracing_to`].
pub fn init_tracing(format: LogFormat) {
    init_tracing_to(format, LogOutput::Stderr)
}

/// Installs the process's `tracing` subscriber: the filter from `LTS_LOG` (`RUST_LOG` syntax,
/// default `info`), lines in `format` to `output`, colours only when `output` is a terminal and
/// `NO_COLOR` is unset or empty (a log file or collector gets plain text). Does nothing when a
/// subscriber is installed already.
pub fn init_tracing_to(format: LogFormat, output: LogOutput) {
    let filter = EnvFilter::try_from_env("LTS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, terminal) = match output {
        LogOutput::Stderr => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
        LogOutput::Stdout => (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        ),
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal && !no_color)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
        LogFormat::FlatJson => builder.json().flatten_event(true).try_init(),
    };
}

/// Resolves on SIGTERM (what Kubernetes sends to stop a pod) or Ctrl-C; on Ctrl-C alone where
/// SIGTERM cannot be watched (not Unix, or its handler cannot be installed).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_format_setting_asks_for_json_in_any_case() {
        for (value, format) in [
            (None, LogFormat::Text),
            (Some(""), LogFormat::Text),
            (Some("text"), LogFormat::Text),
            (Some("jsonl"), LogFormat::Text),
            (Some("json"), LogFormat::Json),
            (Some("JSON"), LogFormat::Json),
        ] {
            assert_eq!(LogFormat::from_setting(value), format, "{value:?}");
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sigterm_resolves_the_shutdown_signal() {
        let signal = tokio::spawn(shutdown_signal());
        // Let the task install its handler before the signal is raised.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!signal.is_finished());
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(5), signal)
            .await
            .expect("the signal resolves it")
            .expect("no panic");
    }
}
