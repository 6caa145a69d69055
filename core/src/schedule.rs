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
/// not exist and are skipped that day; a time inside a fall-back overlap fires once, at the
/// first (summer-time) instant (both proved by this module's tests).
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

/// How late a fire may be claimed before it counts as missed (and follows the misfire policy)
/// when its instances are created as they are claimed (`rely_on_prev_cycle = false`).
pub const MISFIRE_THRESHOLD_MS: i64 = 1_000;

/// What a claim does with the due fire of a recurring job whose instances overlap
/// (`rely_on_prev_cycle = false`), see [`overlap_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlapStep {
    /// Whether an instance runs for this fire (false: the fire was missed and the misfire
    /// policy skips it).
    pub run: bool,
    /// The fire time the instance records: the fire itself, or for the one catch-up run of
    /// missed fires the time it is claimed.
    pub instance_fire_ms: i64,
    /// The definition's next fire; `None` when the schedule is exhausted.
    pub next_ms: Option<i64>,
}

/// The step of a recurring job with overlapping instances whose fire `fire_ms` (the
/// `fired`-th) is claimed at `now_ms`: the definition moves on as soon as the instance is
/// created, whether or not it has finished. A fire claimed within [`MISFIRE_THRESHOLD_MS`]
/// runs and the schedule continues from it; a fire claimed later was missed (downtime, no
/// free TaskTracker) and follows the misfire policy: `FireOnce` runs it as the one catch-up
/// run, `Skip` drops it; either way the schedule continues after `now_ms` — never a burst.
pub fn overlap_step(spec: &JobSpec, fire_ms: i64, fired: u64, now_ms: i64) -> OverlapStep {
    if fire_ms >= now_ms - MISFIRE_THRESHOLD_MS {
        // With "now" at the fire itself, next_fire is the schedule alone.
        return OverlapStep {
            run: true,
            instance_fire_ms: fire_ms,
            next_ms: next_fire(spec, fire_ms, fired, fire_ms),
        };
    }
    let mut skip = spec.clone();
    skip.misfire_policy = crate::model::MisfirePolicy::Skip;
    OverlapStep {
        run: spec.misfire_policy == crate::model::MisfirePolicy::FireOnce,
        instance_fire_ms: now_ms,
        next_ms: next_fire(&skip, fire_ms, fired, now_ms),
    }
}

/// What a claim does with a recurring job that relies on its previous cycle and was due at
/// `trigger_ms` (see [`late_fire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateFire {
    /// Claimed within [`MISFIRE_THRESHOLD_MS`] of its trigger: it runs as scheduled.
    OnTime,
    /// Missed (downtime, suspension, no free TaskTracker) with `FireOnce`: it runs now as the
    /// one catch-up run, and counts as the fire of `now` — its next fire is the schedule's
    /// first after now, so the missed fires are not run one by one.
    CatchUp,
    /// Missed with `Skip`: it does not run; it waits for `next_ms` (`None`: the schedule is
    /// exhausted).
    Skip {
        /// The first fire after now.
        next_ms: Option<i64>,
    },
}

/// Decides what a claim at `now_ms` does with a recurring job relying on its previous cycle
/// whose current fire `scheduled_ms` (the `fired`-th) became due at `trigger_ms` (later than
/// the fire for a retry).
pub fn late_fire(
    spec: &JobSpec,
    trigger_ms: i64,
    scheduled_ms: i64,
    fired: u64,
    now_ms: i64,
) -> LateFire {
    if !spec.schedule.is_recurring() || trigger_ms >= now_ms - MISFIRE_THRESHOLD_MS {
        return LateFire::OnTime;
    }
    match spec.misfire_policy {
        crate::model::MisfirePolicy::FireOnce => LateFire::CatchUp,
        crate::model::MisfirePolicy::Skip => LateFire::Skip {
            next_ms: next_fire(spec, scheduled_ms, fired, now_ms),
        },
    }
}

/// Whether a job's instances are created on schedule as separate jobs that may overlap
/// (a recurring job with `rely_on_prev_cycle = false`), instead of the job itself running and
/// being queued again for its next fire when a run ends.
pub fn fires_overlapping_instances(spec: &JobSpec) -> bool {
    spec.schedule.is_recurring() && !spec.rely_on_prev_cycle
}

/// The character that joins a recurring job's task id and a fire time in the task id of an
/// instance; reserved, so no task id a client submits can be an instance's.
pub const INSTANCE_SEPARATOR: char = '~';

/// The task id of the instance of the recurring job `task_id` for the fire at `fire_ms`:
/// `<task_id>~<fire ms>`, the whole task id kept (a recurring job's task ids are unique in
/// its node group, and fire times are unique per job, so instance task ids are too).
pub fn instance_task_id(task_id: &str, fire_ms: i64) -> String {
    format!("{task_id}{INSTANCE_SEPARATOR}{fire_ms}")
}

/// The one-off job spec that runs one fire of a recurring job: the definition's spec with
/// task id [`instance_task_id`], due at once, with the definition's retries, params and
/// feedback. Its own job, so the definition's schedule does not move; the job made of it
/// carries the definition's id in [`crate::Job::instance_of`].
pub fn instance_spec(spec: &JobSpec, fire_ms: i64) -> JobSpec {
    let mut instance = spec.clone();
    instance.task_id = instance_task_id(&spec.task_id, fire_ms);
    instance.schedule = Schedule::Now;
    instance.replace_on_exist = false;
    instance.rely_on_prev_cycle = false;
    // The definition's submit key is the definition's: an instance is not a submit.
    instance.idempotency_key = None;
    instance
}

/// Up to `n` fire times of a recurring job starting with its pending fire `pending_ms`
/// (`fired` instances so far, the pending one included), as the schedule has them; empty for a
/// one-off job.
pub fn upcoming_fires(spec: &JobSpec, pending_ms: i64, fired: u64, n: usize) -> Vec<i64> {
    if !spec.schedule.is_recurring() || n == 0 {
        return Vec::new();
    }
    let mut out = vec![pending_ms];
    let mut at = pending_ms;
    let mut count = fired;
    while out.len() < n {
        match next_fire(spec, at, count, at) {
            Some(next) if next > at => {
                out.push(next);
                at = next;
                count += 1;
            }
            _ => break,
        }
    }
    out
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
    /// The run ended, and the job waits for the children it mapped (a map-reduce job): it
    /// ends with them, or with its reduce step.
    WaitsForChildren,
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
    fn cron_in_the_fall_back_overlap() {
        // 02:30 happens twice in Berlin on 2026-10-25 (clocks go back 03:00 -> 02:00): at
        // 00:30 UTC (CEST) and 01:30 UTC (CET).
        let first = next_cron_fire(
            "0 30 2 * * *",
            Some("Europe/Berlin"),
            ms("2026-10-24T12:00:00Z"),
        );
        let second = first.and_then(|t| next_cron_fire("0 30 2 * * *", Some("Europe/Berlin"), t));
        // The cron crate fires once, at the first of the two instants; the next fire is the
        // next day's 02:30 (CET).
        assert_eq!(first, Some(ms("2026-10-25T00:30:00Z")));
        assert_eq!(second, Some(ms("2026-10-26T01:30:00Z")));
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
    fn upcoming_fires_follow_the_schedule_and_its_count() {
        let spec = JobSpec::new("t", "g").schedule(Schedule::Repeat {
            interval_ms: 1000,
            count: 3,
            first_fire_ms: None,
        });
        assert_eq!(
            upcoming_fires(&spec, 5_000, 1, 10),
            vec![5_000, 6_000, 7_000]
        );
        let cron = JobSpec::new("c", "g").schedule(Schedule::Cron {
            expression: "0 0 * * * *".into(),
            time_zone: None,
        });
        assert_eq!(
            upcoming_fires(&cron, 3_600_000, 1, 3),
            vec![3_600_000, 7_200_000, 10_800_000]
        );
        assert!(upcoming_fires(&JobSpec::new("o", "g"), 1, 1, 3).is_empty());
    }

    #[test]
    fn overlapping_fires_keep_the_schedule_and_do_not_burst() {
        let spec = JobSpec::new("t", "g").schedule(Schedule::Repeat {
            interval_ms: 1000,
            count: 3,
            first_fire_ms: None,
        });
        let step = |spec: &JobSpec, fire, fired, now| {
            let s = overlap_step(spec, fire, fired, now);
            (s.run, s.next_ms)
        };
        // Claimed on time, or a little late: it runs, the schedule goes on from it.
        assert_eq!(step(&spec, 5_000, 1, 5_010), (true, Some(6_000)));
        assert_eq!(step(&spec, 5_000, 1, 5_900), (true, Some(6_000)));
        // Claimed long after (downtime): this fire is the one catch-up run, recorded as fired
        // now, and the schedule continues after now — not a run per missed fire.
        assert_eq!(step(&spec, 5_000, 1, 60_500), (true, Some(61_000)));
        assert_eq!(
            overlap_step(&spec, 5_000, 1, 60_500).instance_fire_ms,
            60_500
        );
        let mut skip = spec.clone();
        skip.misfire_policy = crate::model::MisfirePolicy::Skip;
        assert_eq!(step(&skip, 5_000, 1, 60_500), (false, Some(61_000)));
        // The third fire was the last.
        assert_eq!(step(&spec, 7_000, 3, 7_000), (true, None));
        let i = instance_spec(&spec, 5_000);
        assert_eq!(
            (i.task_id.as_str(), &i.schedule),
            ("t~5000", &Schedule::Now)
        );
        assert!(fires_overlapping_instances(&spec) && !fires_overlapping_instances(&i));
    }

    #[test]
    fn late_fires_of_sequential_jobs_catch_up_once_or_skip() {
        let mut spec = JobSpec::new("t", "g").schedule(Schedule::Repeat {
            interval_ms: 1000,
            count: -1,
            first_fire_ms: None,
        });
        spec.rely_on_prev_cycle = true;
        assert_eq!(late_fire(&spec, 5_000, 5_000, 1, 5_900), LateFire::OnTime);
        // A retry is due at its own time, later than its fire.
        assert_eq!(late_fire(&spec, 9_000, 5_000, 1, 9_100), LateFire::OnTime);
        assert_eq!(late_fire(&spec, 5_000, 5_000, 1, 60_500), LateFire::CatchUp);
        spec.misfire_policy = MisfirePolicy::Skip;
        assert_eq!(
            late_fire(&spec, 5_000, 5_000, 1, 60_500),
            LateFire::Skip {
                next_ms: Some(61_000)
            }
        );
        assert_eq!(
            late_fire(&JobSpec::new("o", "g"), 5_000, 5_000, 1, 60_500),
            LateFire::OnTime
        );
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
