//! The business logic of the example: build one report from a job's params.
//!
//! Kept free of the SDK's runtime so it can be unit-tested: [`ReportRequest::from_params`]
//! checks the params, [`ReportRunner`] turns a request into a [`RunResult`] and business-log
//! lines.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use lts_worker_sdk::{JobContext, JobRunner, RunResult};

/// Reports this worker knows how to build.
pub const KNOWN_REPORTS: &[&str] = &["daily-sales", "inventory", "signups"];

/// What one job asks for, read from its params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    /// `report`: one of [`KNOWN_REPORTS`].
    pub report: String,
    /// `day`: the business day the report covers (`YYYY-MM-DD`; default: yesterday).
    pub day: NaiveDate,
    /// `recipients`: comma-separated addresses the report is mailed to (may be empty).
    pub recipients: Vec<String>,
}

/// Why a job's params cannot become a report: the job fails for good (retrying would not help).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParams(pub String);

impl ReportRequest {
    /// Reads and checks the params; `today` is the worker's current date.
    pub fn from_params(
        params: &BTreeMap<String, String>,
        today: NaiveDate,
    ) -> Result<ReportRequest, BadParams> {
        let report = params
            .get("report")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| BadParams("param `report` is required".into()))?;
        if !KNOWN_REPORTS.contains(&report.as_str()) {
            return Err(BadParams(format!(
                "unknown report {report:?}; known: {}",
                KNOWN_REPORTS.join(", ")
            )));
        }
        let day = match params
            .get("day")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            Some(d) => NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|e| BadParams(format!("param `day` {d:?} is not YYYY-MM-DD: {e}")))?,
            None => today.pred_opt().unwrap_or(today),
        };
        let recipients = params
            .get("recipients")
            .map(|r| {
                r.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(ReportRequest {
            report,
            day,
            recipients,
        })
    }

    /// Whether the day's data is complete: a day is closed once it is over.
    pub fn data_ready(&self, today: NaiveDate) -> bool {
        self.day < today
    }
}

/// Builds reports; one instance serves every worker thread.
#[derive(Debug, Clone)]
pub struct ReportRunner {
    /// How long building one report takes (stands in for the real queries).
    pub work: Duration,
}

#[async_trait]
impl JobRunner for ReportRunner {
    async fn run(&self, ctx: JobContext) -> RunResult {
        let today = chrono::Utc::now().date_naive();
        let request = match ReportRequest::from_params(ctx.params(), today) {
            Ok(r) => r,
            Err(BadParams(why)) => {
                ctx.log().error(why.clone());
                return RunResult::failed(why);
            }
        };
        let log = ctx.log();
        log.info(format!(
            "building {} for {} (attempt {})",
            request.report, request.day, ctx.attempt
        ));
        if !request.data_ready(today) {
            log.warn(format!("data for {} is not closed yet", request.day));
            return RunResult::later(format!("{} is not over yet", request.day));
        }
        tokio::select! {
            _ = tokio::time::sleep(self.work) => {}
            _ = ctx.cancel.cancelled() => {
                log.warn("stopped before the report was written");
                return RunResult::later("interrupted; will run again");
            }
        }
        let rows = row_count(&request);
        log.info(format!(
            "wrote {rows} rows to {}-{}.csv",
            request.report, request.day
        ));
        for to in &request.recipients {
            log.info(format!("mailed to {to}"));
        }
        tracing::info!(task_id = ctx.task_id(), report = %request.report, day = %request.day, rows, "report built");
        RunResult::success(format!("{} {}: {rows} rows", request.report, request.day))
    }
}

/// A stable, made-up row count so reruns of the same report agree.
fn row_count(request: &ReportRequest) -> u64 {
    let seed = request
        .report
        .bytes()
        .chain(request.day.to_string().bytes())
        .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    100 + seed % 9_900
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn reads_every_param() {
        let r = ReportRequest::from_params(
            &params(&[
                ("report", "inventory"),
                ("day", "2026-03-01"),
                ("recipients", "a@example.com, b@example.com,"),
            ]),
            day("2026-03-05"),
        )
        .unwrap();
        assert_eq!(r.report, "inventory");
        assert_eq!(r.day, day("2026-03-01"));
        assert_eq!(r.recipients, ["a@example.com", "b@example.com"]);
        assert!(r.data_ready(day("2026-03-05")));
    }

    #[test]
    fn day_defaults_to_yesterday() {
        let r = ReportRequest::from_params(&params(&[("report", "signups")]), day("2026-03-05"))
            .unwrap();
        assert_eq!(r.day, day("2026-03-04"));
        assert!(r.recipients.is_empty());
    }

    #[test]
    fn bad_params_name_the_param() {
        let today = day("2026-03-05");
        let missing = ReportRequest::from_params(&params(&[]), today).unwrap_err();
        assert!(missing.0.contains("`report`"), "{missing:?}");
        let unknown =
            ReportRequest::from_params(&params(&[("report", "payroll")]), today).unwrap_err();
        assert!(unknown.0.contains("payroll"), "{unknown:?}");
        let bad_day = ReportRequest::from_params(
            &params(&[("report", "inventory"), ("day", "03/01/2026")]),
            today,
        )
        .unwrap_err();
        assert!(bad_day.0.contains("`day`"), "{bad_day:?}");
    }

    #[test]
    fn today_is_not_ready() {
        let today = day("2026-03-05");
        let r = ReportRequest::from_params(
            &params(&[("report", "daily-sales"), ("day", "2026-03-05")]),
            today,
        )
        .unwrap();
        assert!(!r.data_ready(today));
    }

    #[test]
    fn row_count_is_stable() {
        let r = ReportRequest::from_params(
            &params(&[("report", "daily-sales"), ("day", "2026-03-01")]),
            day("2026-03-05"),
        )
        .unwrap();
        assert_eq!(row_count(&r), row_count(&r.clone()));
    }
}
