//! Schedule math: cron parsing and next-fire computation, repeat intervals, retry backoff, and
//! what happens to a job after a run ([`disposition`]).
//!
//! Everything here is a pure function of its inputs (including "now"), so tests can run months
//! of schedules in microseconds.

use std::str::FromStr;
use std::time::Duration;

use backon::BackoffBuilder;
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::model::{JobSpec, JobState, Outcome, Schedule};

/// Parses a cron expression with a seconds field (6 or 7 fields).
///
/// The error names which part of the expression is wrong where it can.
pub fn parse_cron(expression: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if !(6..=7).contains(&fields.len()) {
        return Err(format!(
            "expected 6 or 7 fields (sec min hour day-of-month month day-of-week [year]), got {}",
            fields.len()
        ));
    }
    cron::Schedule::from_str(expression).map_err(|e| {
        // The cron crate reports the whole expression; find the first field that fails alone.
        const NAMES: [&str; 7] = [
            "seconds",
            "minutes",
            "hours",
            "day-of-month",
            "month",
            "day-of-week",
            "year",
        ];
        for (i, field) in fields.iter().enumerate() {
            let mut probe = vec!["*"; fields.len()];
            probe[i] = field;
            if cron::Schedule::from_str(&probe.join(" ")).is_err() {
                return format!("invalid {} field {field:?}: {e}", NAMES[i]);
            }
        }
        format!("invalid expression: {e}")
    })
}

/// Parses an IANA time-zone name.
pub fn parse_time_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown IANA time zone {name:?} (e.g. \"Europe/Berlin\", \"UTC\")"))
}

fn to_utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
}

/// The first fire of a cron expression strictly after `after_ms`, in Unix epoch ms.
///
/// Daylight-saving transitions follow the `cron` crate: times inside a spring-forward gap do
/// not exist and are skipped; times in a fall-back overlap fire once per matching instant.
pub fn next_cron_fire(expression: &str, time_zone: Option<&str>, after_ms: i64) -> Option<i64> {
    let schedule = parse_cron(expression).ok()?;
    let after = to_utc(after_ms);
    match time_zone {
        Some(tz) => {
            let tz = parse_time_zone(tz).ok()?;
            schedule
                .after(&after.with_timezone(&tz))
                .next()
                .map(|t| t.timestamp_millis())
        }
        None => schedule.after(&after).next().map(|t| t.timestamp_millis()),
    }
}

/// The first time a newly accepted job is due.
pub fn first_trigger(spec: &JobSpec, now_ms: i64) -> Option<i64> {
    match &spec.schedule {
        Schedule::Now => Some(now_ms),
        Schedule::TriggerAt { trigger_time_ms } => Some(*trigger_time_ms),
        Schedule::Cron {
            expression,
            time_zone,
        } => next_cron_fire(expression, time_zone.as_deref(), now_ms - 1),
        Schedule::Repeat { first_fire_ms, .. } => Some(first_fire_ms.unwrap_or(now_ms)),
    }
}

/// The next fire of a recurring job after the instance scheduled at `scheduled_ms`, given
/// `fired` instances so far, or `None` when the schedule is exhausted.
///
/// Missed fires (the next time is already in the past) follow the job's misfire policy:
/// `FireOnce` returns one catch-up fire at `now`, `Skip` the first fire after `now`. Never a
/// burst of catch-up runs.
pub fn next_fire(spec: &JobSpec, scheduled_ms: i64, fired: u64, now_ms: i64) -> Option<i64> {
    let next = match &spec.schedule {
        Schedule::Now | Schedule::TriggerAt { .. } => return None,
        Schedule::Cron {
            expression,
            time_zone,
        } => next_cron_fire(expression, time_zone.as_deref(), scheduled_ms)?,
        Schedule::Repeat {
            interval_ms, count, ..
        } => {
            if *count >= 0 && fired >= *count as u64 {
                return None;
            }
            scheduled_ms.checked_add(*interval_ms)?
        }
    };
    if next >= now_ms {
        return Some(next);
    }
    match spec.misfire_policy {
        crate::model::MisfirePolicy::FireOnce => Some(now_ms),
        crate::model::MisfirePolicy::Skip => match &spec.schedule {
            Schedule::Cron {
                expression,
                time_zone,
            } => next_cron_fire(expression, time_zone.as_deref(), now_ms - 1),
            Schedule::Repeat { interval_ms, .. } => {
                let behind = now_ms - next;
                let steps = behind / interval_ms + i64::from(behind % interval_ms != 0);
                Some(next + steps * interval_ms)
            }
            _ => None,
        },
    }
}

/// When a job resumed at `now_ms` runs next, given its pending fire `pending_ms` and `fired`
/// instances so far: a fire still ahead stays; a recurring job whose fire passed while it was
/// suspended follows its misfire policy — `FireOnce` runs once now, `Skip` waits for the
/// first fire after now (or runs now if the schedule has no later fire). A one-off job runs
/// as soon as it is due. Never a burst of catch-up runs.
pub fn resume_trigger(spec: &JobSpec, pending_ms: i64, fired: u64, now_ms: i64) -> i64 {
    if pending_ms >= now_ms || !spec.schedule.is_recurring() {
        return pending_ms;
    }
    match spec.misfire_policy {
        crate::model::MisfirePolicy::FireOnce => now_ms,
        crate::model::MisfirePolicy::Skip => {
            // The pending fire itself is skipped: the next one counts it as fired.
            next_fire(spec, pending_ms, fired.saturating_sub(1), now_ms)
                .filter(|&t| t >= now_ms)
                .unwrap_or(now_ms)
        }
    }
}

/// How failed runs are retried: exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub min_delay: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
    /// Growth factor per attempt.
    pub factor: f32,
    /// Add random jitter (up to one delay) so retries of many jobs spread out.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let mut builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        builder
            .build()
            .nth(retry.saturating_sub(1) as usize)
            .unwrap_or(self.max_delay)
    }
}

/// What happens to a job after one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Finished for good with this state.
    Finish(JobState),
    /// Same instance again at `at_ms` (a retry; the attempt counter keeps counting).
    Retry {
        /// When the retry is due.
        at_ms: i64,
    },
    /// A recurring job's next instance at `at_ms` (the attempt counter starts again).
    NextFire {
        /// The next scheduled fire.
        at_ms: i64,
        /// The state this instance ended with, for the log and feedback.
        instance: JobState,
    },
}

/// Decides what happens after a run of `spec` that was attempt number `attempt` (1-based) of the
/// instance scheduled at `scheduled_ms`, with `fired` instances so far.
pub fn disposition(
    spec: &JobSpec,
    attempt: u32,
    scheduled_ms: i64,
    fired: u64,
    outcome: Outcome,
    now_ms: i64,
    policy: &RetryPolicy,
) -> Disposition {
    if outcome.is_retryable() && attempt <= spec.max_retries {
        let delay = policy.delay(attempt).as_millis() as i64;
        return Disposition::Retry {
            at_ms: now_ms + delay,
        };
    }
    let instance = if outcome == Outcome::Success {
        JobState::Succeeded
    } else {
        JobState::Failed
    };
    match next_fire(spec, scheduled_ms, fired, now_ms) {
        Some(at_ms) => Disposition::NextFire { at_ms, instance },
        None => Disposition::Finish(instance),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MisfirePolicy;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn cron_errors_name_the_field() {
        let e = parse_cron("0 * * * 13 *").unwrap_err();
        assert!(e.starts_with("invalid month field \"13\""), "{e}");
        let e = parse_cron("* * *").unwrap_err();
        assert!(e.starts_with("expected 6 or 7 fields"), "{e}");
        assert!(parse_cron("*/5 * * * * *").is_ok());
    }

    #[test]
    fn cron_next_fire_in_a_time_zone() {
        // 09:00 every day in Berlin is 08:00 UTC in winter.
        let next = next_cron_fire(
            "0 0 9 * * *",
            Some("Europe/Berlin"),
            ms("2026-01-10T10:00:00Z"),
        );
        assert_eq!(next, Some(ms("2026-01-11T08:00:00Z")));
    }

    #[test]
    fn cron_skips_the_spring_forward_gap() {
        // 02:30 does not exist in Berlin on 2026-03-29 (clocks jump 02:00 -> 03:00).
        let next = next_cron_fire(
            "0 30 2 * * *",
            Some("Europe/Berlin"),
            ms("2026-03-28T12:00:00Z"),
        );
        assert_eq!(next, Some(ms("2026-03-30T00:30:00Z")));
    }

    #[test]
    fn repeat_counts_and_misfires() {
        let mut spec = JobSpec::new("t", "g").schedule(Schedule::Repeat {
            interval_ms: 1000,
            count: 3,
            first_fire_ms: None,
        });
        assert_eq!(next_fire(&spec, 10_000, 1, 10_500), Some(11_000));
        assert_eq!(next_fire(&spec, 10_000, 3, 10_500), None);
        // Far behind: fire once now, or skip to the grid.
        assert_eq!(next_fire(&spec, 10_000, 1, 15_500), Some(15_500));
        spec.misfire_policy = MisfirePolicy::Skip;
        assert_eq!(next_fire(&spec, 10_000, 1, 15_500), Some(16_000));
    }

    #[test]
    fn resuming_after_missed_fires_runs_at_most_once() {
        let mut spec = JobSpec::new("t", "g").schedule(Schedule::Repeat {
            interval_ms: 1000,
            count: -1,
            first_fire_ms: None,
        });
        // Still ahead: unchanged.
        assert_eq!(resume_trigger(&spec, 20_000, 1, 15_000), 20_000);
        // Missed while suspended: one catch-up run now …
        assert_eq!(resume_trigger(&spec, 10_000, 1, 15_500), 15_500);
        // … or the next fire on the grid.
        spec.misfire_policy = MisfirePolicy::Skip;
        assert_eq!(resume_trigger(&spec, 10_000, 1, 15_500), 16_000);
        // A one-off job runs when due.
        let once = JobSpec::new("o", "g");
        assert_eq!(resume_trigger(&once, 10_000, 1, 15_500), 10_000);
    }

    #[test]
    fn retries_until_exhausted() {
        let spec = JobSpec::new("t", "g").max_retries(2);
        let p = RetryPolicy {
            jitter: false,
            ..Default::default()
        };
        assert_eq!(
            disposition(&spec, 1, 0, 1, Outcome::Later, 1000, &p),
            Disposition::Retry { at_ms: 2000 }
        );
        assert_eq!(
            disposition(&spec, 2, 0, 1, Outcome::Exception, 1000, &p),
            Disposition::Retry { at_ms: 3000 }
        );
        assert_eq!(
            disposition(&spec, 3, 0, 1, Outcome::Later, 1000, &p),
            Disposition::Finish(JobState::Failed)
        );
        assert_eq!(
            disposition(&spec, 1, 0, 1, Outcome::Failed, 1000, &p),
            Disposition::Finish(JobState::Failed)
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            factor: 2.0,
            jitter: false,
        };
        let d: Vec<u128> = (1..=6).map(|r| p.delay(r).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        let j = RetryPolicy { jitter: true, ..p };
        for r in 1..=6 {
            let got = j.delay(r).as_millis();
            assert!(
                got >= d[r as usize - 1] && got <= 2 * d[r as usize - 1],
                "{got}"
            );
        }
    }
}
