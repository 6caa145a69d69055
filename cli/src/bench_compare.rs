//! `lts bench --compare FILE`: every figure of a run (or of a second saved file, with
//! `--against`) next to the same figure in a saved `--json` results file, with the change and
//! whether it is better or worse, so that a regression shows at a glance.
//!
//! A figure is a number in the results document outside `config`, named by its JSON path
//! (`drain_jobs_per_s`, `dispatch_latency_ms.p99`, `store_round_trips.submit_single`, …).
//! Which way is better follows from the name: throughputs (`*_per_s`) up; latencies (`*_ms`),
//! round trips and missed / doubled / catch-up fires down; counts such as `samples` or
//! `expected` are shown without a verdict.

use std::cmp::Ordering;
use std::path::Path;

use comfy_table::{Cell, Color};
use serde_json::{Map, Value};

use crate::error::{CliError, CliResult};
use crate::output;

/// A results document as `lts bench --json` writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    /// Every figure, by JSON path, in the report's order.
    pub figures: Vec<(String, f64)>,
    /// The run's `config` object (`Value::Null` if it has none).
    pub config: Value,
}

/// Reads and checks a saved results file given to `flag`; every failure is one line naming
/// the flag, the file and the reason.
pub fn load(flag: &str, path: &Path) -> CliResult<Results> {
    let fail = |why: String| CliError::Usage(format!("{flag} {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    parse(&value).map_err(fail)
}

/// The figures of a results document, or why it is not one.
pub fn parse(value: &Value) -> Result<Results, String> {
    let Value::Object(top) = value else {
        return Err("not an `lts bench --json` results file (expected a JSON object)".into());
    };
    let mut figures = Vec::new();
    for (key, v) in top.iter().filter(|(k, _)| k.as_str() != "config") {
        flatten(key.clone(), v, &mut figures)?;
    }
    if figures.is_empty() {
        return Err("no benchmark figures in it (expected e.g. `drain_jobs_per_s`)".into());
    }
    figures.sort_by(|(a, _), (b, _)| figure_order(a, b));
    Ok(Results {
        figures,
        config: top.get("config").cloned().unwrap_or(Value::Null),
    })
}

/// Collects the numbers under `v` as `(path, value)`; `null` is a phase that did not run.
fn flatten(path: String, v: &Value, out: &mut Vec<(String, f64)>) -> Result<(), String> {
    match v {
        Value::Null => Ok(()),
        Value::Number(n) => {
            let x = n
                .as_f64()
                .ok_or_else(|| format!("`{path}` is not a finite number"))?;
            out.push((path, x));
            Ok(())
        }
        Value::Object(m) => m
            .iter()
            .try_for_each(|(k, v)| flatten(format!("{path}.{k}"), v, out)),
        other => Err(format!(
            "`{path}` is {}, expected a number",
            match other {
                Value::Bool(_) => "a boolean",
                Value::String(_) => "a string",
                _ => "an array",
            }
        )),
    }
}

/// The report's order of the path segments it writes; other names go after, alphabetically.
const ORDER: &[&str] = &[
    "submit_batched_jobs_per_s",
    "submit_single_jobs_per_s",
    "drain_jobs_per_s",
    "dispatch_latency_ms",
    "cron",
    "workflow",
    "store_round_trips_per_job",
    "store_round_trips",
    "definitions",
    "seconds",
    "expected",
    "observed",
    "missed",
    "doubled",
    "catch_up",
    "lateness_ms",
    "p50",
    "p99",
    "p999",
    "max",
    "samples",
];

fn figure_order(a: &str, b: &str) -> Ordering {
    let key = |p: &str| -> Vec<(usize, String)> {
        p.split('.')
            .map(|s| {
                let rank = ORDER.iter().position(|o| *o == s).unwrap_or(ORDER.len());
                (rank, s.to_string())
            })
            .collect()
    };
    key(a).cmp(&key(b))
}

/// Which way a figure should move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Throughputs.
    HigherIsBetter,
    /// Latencies, round trips, missed or doubled fires.
    LowerIsBetter,
    /// Counts that describe the run rather than grade it (`samples`, `expected`, …).
    Neutral,
}

/// The direction of a figure, from its JSON path.
pub fn direction(path: &str) -> Direction {
    let segments: Vec<&str> = path.split('.').collect();
    let leaf = segments.last().copied().unwrap_or_default();
    if leaf.ends_with("_per_s") || leaf.ends_with("_of_raw") || leaf.ends_with("_of_drain") {
        Direction::HigherIsBetter
    } else if leaf == "samples" {
        Direction::Neutral
    } else if segments
        .iter()
        .any(|s| s.ends_with("_ms") || s.starts_with("store_round_trips"))
        || matches!(leaf, "missed" | "doubled" | "catch_up")
    {
        Direction::LowerIsBetter
    } else {
        Direction::Neutral
    }
}

/// How a figure moved between the saved results and now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// Relative change, in percent of the saved value.
    Percent(f64),
    /// The saved value was 0 and the new one is not: no percentage.
    FromZero,
    /// Only the saved results have it.
    OnlySaved,
    /// Only the new results have it.
    OnlyNow,
}

/// Whether a change is good news.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Moved the right way.
    Better,
    /// Moved the wrong way: a regression.
    Worse,
    /// Unchanged.
    Same,
    /// No verdict: a neutral figure, or one side is missing.
    None,
}

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The figure's JSON path.
    pub figure: String,
    /// Its value in the saved results.
    pub saved: Option<f64>,
    /// Its value now.
    pub now: Option<f64>,
    /// The change.
    pub change: Change,
    /// Better, worse or neither.
    pub verdict: Verdict,
}

/// Compares every figure of `now` with `saved` (pure): the figures of both, in report order.
pub fn compare(saved: &[(String, f64)], now: &[(String, f64)]) -> Vec<Row> {
    let find = |list: &[(String, f64)], k: &str| list.iter().find(|(f, _)| f == k).map(|p| p.1);
    let mut names: Vec<&str> = now.iter().map(|(k, _)| k.as_str()).collect();
    for (k, _) in saved {
        if !names.contains(&k.as_str()) {
            names.push(k);
        }
    }
    names.sort_by(|a, b| figure_order(a, b));
    names
        .into_iter()
        .map(|figure| {
            let (s, n) = (find(saved, figure), find(now, figure));
            let (change, verdict) = match (s, n) {
                (Some(s), Some(n)) => judge(direction(figure), s, n),
                (Some(_), None) => (Change::OnlySaved, Verdict::None),
                _ => (Change::OnlyNow, Verdict::None),
            };
            Row {
                figure: figure.to_string(),
                saved: s,
                now: n,
                change,
                verdict,
            }
        })
        .collect()
}

fn judge(direction: Direction, saved: f64, now: f64) -> (Change, Verdict) {
    let change = if saved == 0.0 {
        if now == 0.0 {
            Change::Percent(0.0)
        } else {
            Change::FromZero
        }
    } else {
        Change::Percent((now - saved) / saved.abs() * 100.0)
    };
    let verdict = match (direction, now.partial_cmp(&saved)) {
        (Direction::Neutral, _) | (_, None) => Verdict::None,
        (_, Some(Ordering::Equal)) => Verdict::Same,
        (Direction::HigherIsBetter, Some(Ordering::Greater))
        | (Direction::LowerIsBetter, Some(Ordering::Less)) => Verdict::Better,
        _ => Verdict::Worse,
    };
    (change, verdict)
}

/// The `config` entries that differ between two runs, as `key saved → now` (pure): a
/// comparison of runs of different sizes or stores is worth a warning.
pub fn config_differences(saved: &Value, now: &Value) -> Vec<String> {
    let empty = Map::new();
    let (s, n) = (
        saved.as_object().unwrap_or(&empty),
        now.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = s.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&Value>| match v {
        None => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    keys.into_iter()
        .filter(|k| s.get(*k) != n.get(*k))
        .map(|k| format!("{k} {} → {}", show(s.get(k)), show(n.get(k))))
        .collect()
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 || v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The comparison as a table: figure / saved / now / change (%).
pub fn table(rows: &[Row]) -> comfy_table::Table {
    let color = std::env::var_os("NO_COLOR").is_none();
    let mut t = output::table(["figure", "saved", "now", "change (%)"]);
    for r in rows {
        let opt = |v: Option<f64>| v.map(number).unwrap_or_else(|| "-".into());
        let mut change = match r.change {
            Change::Percent(0.0) => "0.0%".to_string(),
            Change::Percent(p) => format!("{p:+.1}%"),
            Change::FromZero => "n/a (saved 0)".into(),
            Change::OnlySaved => "only in saved".into(),
            Change::OnlyNow => "only now".into(),
        };
        match r.verdict {
            Verdict::Better => change.push_str(" better"),
            Verdict::Worse => change.push_str(" WORSE"),
            Verdict::Same => change.push_str(" same"),
            Verdict::None => {}
        }
        let mut cell = Cell::new(change);
        if color {
            cell = match r.verdict {
                Verdict::Better => cell.fg(Color::Green),
                Verdict::Worse => cell.fg(Color::Red),
                _ => cell,
            };
        }
        t.add_row(vec![
            Cell::new(&r.figure),
            Cell::new(opt(r.saved)),
            Cell::new(opt(r.now)),
            cell,
        ]);
    }
    t
}

/// Prints the comparison of `now` with `saved`, a count of better and worse figures, and the
/// config keys in which the two runs differ.
pub fn print(saved: &Results, now: &Results, heading: &str) {
    let rows = compare(&saved.figures, &now.figures);
    println!("{heading}");
    println!("{}", table(&rows));
    let count = |v: Verdict| rows.iter().filter(|r| r.verdict == v).count();
    println!(
        "{} worse · {} better · {} same",
        count(Verdict::Worse),
        count(Verdict::Better),
        count(Verdict::Same)
    );
    let diffs = config_differences(&saved.config, &now.config);
    if !diffs.is_empty() {
        println!("note: the runs differ in config: {}", diffs.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn figs(list: &[(&str, f64)]) -> Vec<(String, f64)> {
        list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn directions_follow_the_figure_names() {
        use Direction::*;
        for (path, want) in [
            ("submit_batched_jobs_per_s", HigherIsBetter),
            ("drain_jobs_per_s", HigherIsBetter),
            ("raw.drain_jobs_per_s", HigherIsBetter),
            ("raw.drain_of_raw", HigherIsBetter),
            ("dispatch_latency_ms.p99", LowerIsBetter),
            ("dispatch_latency_ms.max", LowerIsBetter),
            ("dispatch_latency_ms.samples", Neutral),
            ("store_round_trips_per_job", LowerIsBetter),
            ("store_round_trips.claim_and_complete", LowerIsBetter),
            ("cron.missed", LowerIsBetter),
            ("cron.doubled", LowerIsBetter),
            ("cron.catch_up", LowerIsBetter),
            ("cron.lateness_ms.p99", LowerIsBetter),
            ("workflow.fan_out_nodes_per_s", HigherIsBetter),
            ("workflow.fan_out_children_per_s", HigherIsBetter),
            ("workflow.fan_out_of_drain", HigherIsBetter),
            ("workflow.chain_edge_ms", LowerIsBetter),
            ("workflow.chain", Neutral),
            ("cron.lateness_ms.samples", Neutral),
            ("cron.expected", Neutral),
            ("cron.observed", Neutral),
            ("something_new", Neutral),
        ] {
            assert_eq!(direction(path), want, "{path}");
        }
    }

    #[test]
    fn compare_cases() {
        struct Case {
            name: &'static str,
            figure: &'static str,
            saved: Option<f64>,
            now: Option<f64>,
            change: Change,
            verdict: Verdict,
        }
        let cases = [
            Case {
                name: "throughput up is better",
                figure: "drain_jobs_per_s",
                saved: Some(20_000.0),
                now: Some(25_000.0),
                change: Change::Percent(25.0),
                verdict: Verdict::Better,
            },
            Case {
                name: "throughput down is worse",
                figure: "submit_single_jobs_per_s",
                saved: Some(10_000.0),
                now: Some(9_000.0),
                change: Change::Percent(-10.0),
                verdict: Verdict::Worse,
            },
            Case {
                name: "latency down is better",
                figure: "dispatch_latency_ms.p99",
                saved: Some(4.0),
                now: Some(3.0),
                change: Change::Percent(-25.0),
                verdict: Verdict::Better,
            },
            Case {
                name: "latency up is worse",
                figure: "cron.lateness_ms.p99",
                saved: Some(40.0),
                now: Some(60.0),
                change: Change::Percent(50.0),
                verdict: Verdict::Worse,
            },
            Case {
                name: "round trips up are worse",
                figure: "store_round_trips_per_job",
                saved: Some(3.0),
                now: Some(3.5),
                change: Change::Percent(50.0 / 3.0),
                verdict: Verdict::Worse,
            },
            Case {
                name: "unchanged is the same",
                figure: "drain_jobs_per_s",
                saved: Some(100.0),
                now: Some(100.0),
                change: Change::Percent(0.0),
                verdict: Verdict::Same,
            },
            Case {
                name: "neutral count has no verdict",
                figure: "dispatch_latency_ms.samples",
                saved: Some(10_000.0),
                now: Some(2_000.0),
                change: Change::Percent(-80.0),
                verdict: Verdict::None,
            },
            Case {
                name: "zero baseline, now worse",
                figure: "cron.missed",
                saved: Some(0.0),
                now: Some(3.0),
                change: Change::FromZero,
                verdict: Verdict::Worse,
            },
            Case {
                name: "zero baseline, still zero",
                figure: "cron.doubled",
                saved: Some(0.0),
                now: Some(0.0),
                change: Change::Percent(0.0),
                verdict: Verdict::Same,
            },
            Case {
                name: "zero baseline throughput, now better",
                figure: "drain_jobs_per_s",
                saved: Some(0.0),
                now: Some(5.0),
                change: Change::FromZero,
                verdict: Verdict::Better,
            },
            Case {
                name: "missing now",
                figure: "drain_jobs_per_s",
                saved: Some(20_000.0),
                now: None,
                change: Change::OnlySaved,
                verdict: Verdict::None,
            },
            Case {
                name: "missing in saved",
                figure: "store_round_trips_per_job",
                saved: None,
                now: Some(3.0),
                change: Change::OnlyNow,
                verdict: Verdict::None,
            },
        ];
        for c in cases {
            let saved: Vec<_> = c
                .saved
                .map(|v| (c.figure.to_string(), v))
                .into_iter()
                .collect();
            let now: Vec<_> = c
                .now
                .map(|v| (c.figure.to_string(), v))
                .into_iter()
                .collect();
            let rows = compare(&saved, &now);
            assert_eq!(rows.len(), 1, "{}", c.name);
            let r = &rows[0];
            assert_eq!((r.saved, r.now), (c.saved, c.now), "{}", c.name);
            assert_eq!(r.verdict, c.verdict, "{}", c.name);
            match (r.change, c.change) {
                (Change::Percent(got), Change::Percent(want)) => {
                    assert!((got - want).abs() < 1e-9, "{}: {got} vs {want}", c.name)
                }
                (got, want) => assert_eq!(got, want, "{}", c.name),
            }
        }
    }

    #[test]
    fn compare_keeps_every_figure_of_both_in_report_order() {
        let saved = figs(&[
            ("drain_jobs_per_s", 1.0),
            ("dispatch_latency_ms.p99", 2.0),
            ("submit_batched_jobs_per_s", 3.0),
        ]);
        let now = figs(&[
            ("store_round_trips_per_job", 3.0),
            ("drain_jobs_per_s", 1.0),
            ("dispatch_latency_ms.p50", 1.0),
        ]);
        let names: Vec<String> = compare(&saved, &now)
            .into_iter()
            .map(|r| r.figure)
            .collect();
        assert_eq!(
            names,
            [
                "submit_batched_jobs_per_s",
                "drain_jobs_per_s",
                "dispatch_latency_ms.p50",
                "dispatch_latency_ms.p99",
                "store_round_trips_per_job",
            ]
        );
    }

    #[test]
    fn parse_reads_what_bench_writes() {
        let doc = json!({
            "submit_batched_jobs_per_s": 120000.5,
            "submit_single_jobs_per_s": null,
            "drain_jobs_per_s": 20000.0,
            "dispatch_latency_ms": {"p50": 1.2, "p99": 3.4, "p999": 5.0, "max": 9.0, "samples": 10000},
            "store_round_trips": {"submit_single": 1.0},
            "config": {"workers": 2, "store": "sqlite"},
        });
        let r = parse(&doc).unwrap();
        let names: Vec<&str> = r.figures.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "submit_batched_jobs_per_s",
                "drain_jobs_per_s",
                "dispatch_latency_ms.p50",
                "dispatch_latency_ms.p99",
                "dispatch_latency_ms.p999",
                "dispatch_latency_ms.max",
                "dispatch_latency_ms.samples",
                "store_round_trips.submit_single",
            ]
        );
        assert_eq!(r.config, json!({"workers": 2, "store": "sqlite"}));
    }

    #[test]
    fn parse_refuses_what_is_not_a_results_file() {
        for (doc, why) in [
            (json!([1, 2]), "expected a JSON object"),
            (json!({}), "no benchmark figures"),
            (json!({"config": {"workers": 2}}), "no benchmark figures"),
            (
                json!({"drain_jobs_per_s": "fast"}),
                "`drain_jobs_per_s` is a string",
            ),
            (
                json!({"dispatch_latency_ms": {"p99": [1]}}),
                "`dispatch_latency_ms.p99` is an array",
            ),
        ] {
            let err = parse(&doc).unwrap_err();
            assert!(err.contains(why), "{doc}: {err}");
        }
    }

    #[test]
    fn load_names_the_file_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        let err = load("--compare", &missing).unwrap_err().to_string();
        assert!(err.starts_with(&format!("--compare {}: cannot read it", missing.display())));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{ not json").unwrap();
        let err = load("--against", &bad).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = err.to_string();
        assert!(err.starts_with("--against "), "{err}");
        assert!(err.contains("bad.json: not valid JSON"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn config_differences_name_each_changed_key() {
        let saved = json!({"workers": 2, "drain_jobs": 100000, "store": "sqlite"});
        let now = json!({"workers": 2, "drain_jobs": 2000, "store": "mongodb", "cores": 2});
        assert_eq!(
            config_differences(&saved, &now),
            [
                "cores - → 2",
                "drain_jobs 100000 → 2000",
                "store sqlite → mongodb"
            ]
        );
        assert!(config_differences(&saved, &saved).is_empty());
    }
}
