//! Output helpers: tables for people, JSON for scripts.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

/// How a command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Tables and sentences.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

/// A table with the house style and the given header.
pub fn table<I: IntoIterator<Item = S>, S: Into<comfy_table::Cell>>(header: I) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    t
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("lts: cannot encode JSON: {e}"),
    }
}

/// Epoch ms as a readable local-independent UTC time, `-` for none.
pub fn time(ms: Option<i64>) -> String {
    match ms {
        Some(ms) if ms > 0 => chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|| ms.to_string()),
        _ => "-".into(),
    }
}
