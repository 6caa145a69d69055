//! Validation of submitted jobs and of a TaskTracker's `Hello`. Every problem is reported at
//! once, each naming its field.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{JobSpec, Schedule};
use crate::{proto, schedule};

/// Longest `task_id`.
pub const MAX_TASK_ID_LEN: usize = 64;
/// Longest node-group name.
pub const MAX_NODE_GROUP_LEN: usize = 64;
/// Most parameters on one job.
pub const MAX_PARAMS: usize = 256;
/// Longest parameter key.
pub const MAX_PARAM_KEY_LEN: usize = 256;
/// Total bytes of all parameter keys and values.
pub const MAX_PARAMS_BYTES: usize = 256 * 1024;
/// Highest `max_retries`.
pub const MAX_RETRIES: u32 = 1000;
/// Shortest `timeout_ms`: one second.
pub const MIN_TIMEOUT_MS: u64 = 1_000;
/// Longest `timeout_ms`: 30 days.
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3_600_000;
/// Most threads one TaskTracker may announce.
pub const MAX_THREADS: u32 = 10_000;
/// Longest `idempotency_key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Highest `max_lease_losses`.
pub const MAX_LEASE_LOSSES: u32 = 100;
/// Latest accepted instant: 9999-12-31T23:59:59Z.
pub const MAX_INSTANT_MS: i64 = 253_402_300_799_000;
/// Most jobs a TaskTracker may take beyond its threads (`Hello.prefetch`).
pub const MAX_PREFETCH: u32 = 10_000;
/// Most running jobs a TaskTracker may re-announce in its `Hello`.
pub const MAX_HELLO_RUNNING: usize = 10_000;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldViolation {
    /// Field path, e.g. `task_id` or `cron.expression`.
    pub field: String,
    /// Why it is wrong, readable by a person.
    pub reason: String,
}

impl FieldViolation {
    /// A violation of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// All problems found in one job; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Violations(pub Vec<FieldViolation>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Checks a node-group name: 1..=64 characters of `[A-Za-z0-9._-]`.
pub fn check_node_group(field: &str, value: &str, out: &mut Vec<FieldViolation>) {
    if value.is_empty() {
        out.push(FieldViolation::new(field, "is required"));
    } else if value.chars().count() > MAX_NODE_GROUP_LEN {
        out.push(FieldViolation::new(
            field,
            format!("must be at most {MAX_NODE_GROUP_LEN} characters"),
        ));
    } else if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        out.push(FieldViolation::new(
            field,
            format!("may only contain letters, digits, '.', '_' and '-' (found {c:?})"),
        ));
    }
}

fn check_instant(field: &str, ms: i64, out: &mut Vec<FieldViolation>) {
    if ms <= 0 || ms > MAX_INSTANT_MS {
        out.push(FieldViolation::new(
            field,
            format!(
                "must be an instant between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z in epoch milliseconds (got {ms})"
            ),
        ));
    }
}

/// Validates a job submitted now; returns every problem at once.
pub fn validate(spec: &JobSpec) -> Result<(), Violations> {
    validate_at(spec, crate::now_ms())
}

/// Validates a job submitted at `now_ms` (a schedule must have a fire after it); returns
/// every problem at once.
pub fn validate_at(spec: &JobSpec, now_ms: i64) -> Result<(), Violations> {
    let mut out = Vec::new();

    let len = spec.task_id.chars().count();
    if len == 0 || len > MAX_TASK_ID_LEN {
        out.push(FieldViolation::new(
            "task_id",
            format!("must be 1..={MAX_TASK_ID_LEN} characters (got {len})"),
        ));
    } else if spec.task_id.chars().any(char::is_control) {
        out.push(FieldViolation::new(
            "task_id",
            "must not contain control characters",
        ));
    } else if spec.task_id.contains(crate::schedule::INSTANCE_SEPARATOR) {
        out.push(FieldViolation::new(
            "task_id",
            format!(
                "must not contain {:?}: it names the instances of recurring jobs",
                crate::schedule::INSTANCE_SEPARATOR
            ),
        ));
    }

    check_node_group(
        "task_tracker_node_group",
        &spec.task_tracker_node_group,
        &mut out,
    );
    if spec.need_feedback || !spec.submit_node_group.is_empty() {
        if spec.need_feedback && spec.submit_node_group.is_empty() {
            out.push(FieldViolation::new(
                "submit_node_group",
                "is required when need_feedback is true",
            ));
        } else {
            check_node_group("submit_node_group", &spec.submit_node_group, &mut out);
        }
    }

    if spec.params.len() > MAX_PARAMS {
        out.push(FieldViolation::new(
            "params",
            format!("at most {MAX_PARAMS} entries (got {})", spec.params.len()),
        ));
    }
    let mut bytes = 0usize;
    for (k, v) in &spec.params {
        bytes += k.len() + v.len();
        if k.is_empty() {
            out.push(FieldViolation::new("params", "keys must not be empty"));
        } else if k.len() > MAX_PARAM_KEY_LEN {
            out.push(FieldViolation::new(
                format!("params[{k}]"),
                format!("key must be at most {MAX_PARAM_KEY_LEN} bytes"),
            ));
        }
    }
    if bytes > MAX_PARAMS_BYTES {
        out.push(FieldViolation::new(
            "params",
            format!("keys and values must total at most {MAX_PARAMS_BYTES} bytes (got {bytes})"),
        ));
    }

    if spec.max_retries > MAX_RETRIES {
        out.push(FieldViolation::new(
            "max_retries",
            format!("must be at most {MAX_RETRIES} (got {})", spec.max_retries),
        ));
    }
    if let Some(t) = spec.timeout_ms
        && !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t)
    {
        out.push(FieldViolation::new(
            "timeout",
            format!(
                "must be between {} and {} (got {})",
                crate::duration::format_ms(MIN_TIMEOUT_MS),
                crate::duration::format_ms(MAX_TIMEOUT_MS),
                crate::duration::format_ms(t)
            ),
        ));
    }
    if let Some(key) = &spec.idempotency_key
        && (key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY_BYTES
            || key.chars().any(|c| c.is_control()))
    {
        out.push(FieldViolation::new(
            "idempotency_key",
            format!(
                "must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes without control characters (got {} bytes)",
                key.len()
            ),
        ));
    }
    if let Some(n) = spec.max_lease_losses
        && n > MAX_LEASE_LOSSES
    {
        out.push(FieldViolation::new(
            "max_lease_losses",
            format!("must be at most {MAX_LEASE_LOSSES} (got {n})"),
        ));
    }

    match &spec.schedule {
        Schedule::Now => {}
        Schedule::TriggerAt { trigger_time_ms } => {
            check_instant("trigger_time", *trigger_time_ms, &mut out)
        }
        Schedule::Cron {
            expression,
            time_zone,
        } => {
            let parsed = schedule::parse_cron(expression);
            if let Err(reason) = &parsed {
                out.push(FieldViolation::new("cron.expression", reason.clone()));
            }
            let zone = time_zone.as_deref().map(schedule::parse_time_zone);
            if let Some(Err(reason)) = &zone {
                out.push(FieldViolation::new("cron.time_zone", reason.clone()));
            }
            if parsed.is_ok() && !matches!(zone, Some(Err(_))) {
                match schedule::next_cron_fire(
                    expression,
                    time_zone.as_deref(),
                    now_ms.saturating_sub(1),
                ) {
                    None => out.push(FieldViolation::new(
                        "cron.expression",
                        "never fires from now on (a date that does not exist, such as 30 \
                         February, or only past years)",
                    )),
                    Some(at) if at > MAX_INSTANT_MS => out.push(FieldViolation::new(
                        "cron.expression",
                        "does not fire before 9999-12-31T23:59:59Z",
                    )),
                    Some(_) => {}
                }
            }
        }
        Schedule::Repeat {
            interval_ms,
            count,
            first_fire_ms,
        } => {
            if *interval_ms <= 0 {
                out.push(FieldViolation::new(
                    "repeat.interval",
                    format!("must be greater than 0 (got {interval_ms} ms)"),
                ));
            }
            if *count == 0 || *count < -1 {
                out.push(FieldViolation::new(
                    "repeat.count",
                    format!("must be -1 (forever) or at least 1 (got {count})"),
                ));
            }
            if let Some(first) = first_fire_ms {
                check_instant("repeat.first_fire", *first, &mut out);
            }
        }
    }

    if spec.concurrency_policy != crate::model::ConcurrencyPolicy::Allow
        && !crate::schedule::fires_overlapping_instances(spec)
    {
        out.push(FieldViolation::new(
            "concurrency_policy",
            format!(
                "{} only applies to cron and repeat jobs whose runs may overlap \
                 (rely_on_prev_cycle false); this job's schedule is {}{}",
                spec.concurrency_policy.as_str(),
                spec.schedule.kind(),
                if spec.rely_on_prev_cycle {
                    " with rely_on_prev_cycle, whose runs never overlap"
                } else {
                    ""
                }
            ),
        ));
    }

    if let Some(n) = spec.shards
        && (n == 0 || n > crate::model::MAX_SHARDS)
    {
        out.push(FieldViolation::new(
            "shards",
            format!("must be 1..={} (got {n})", crate::model::MAX_SHARDS),
        ));
    }

    check_labels("affinity", &spec.affinity, &mut out);
    if spec.broadcast && !spec.affinity.is_empty() {
        out.push(FieldViolation::new(
            "broadcast",
            "runs on every TaskTracker of the group: leave affinity empty",
        ));
    }

    if let Some(key) = &spec.route_key {
        let most = crate::route::MAX_ROUTE_KEY_LEN;
        let refusal = if key.is_empty() || key.len() > most {
            Some(format!("must be 1..={most} bytes (got {})", key.len()))
        } else if key.chars().any(char::is_control) {
            Some("must not hold control characters".to_string())
        } else if spec.broadcast {
            Some("a broadcast job runs on every TaskTracker: leave route_key empty".into())
        } else if spec.shards.is_some() {
            Some("shards spread over the group's TaskTrackers: leave route_key empty".into())
        } else if !spec.affinity.is_empty() {
            Some(
                "the key's TaskTracker is picked among all of the group's: \
                 use route_key or affinity, not both"
                    .into(),
            )
        } else {
            None
        };
        if let Some(why) = refusal {
            out.push(FieldViolation::new("route_key", why));
        }
    }

    if let Some(mr) = &spec.map_reduce {
        let most = crate::model::MAX_MAP_CHILDREN;
        if let Some(n) = mr.max_children
            && (n == 0 || n > most)
        {
            out.push(FieldViolation::new(
                "map_reduce.max_children",
                format!("must be 1..={most} (got {n})"),
            ));
        }
        if spec.shards.is_some() || spec.broadcast {
            out.push(FieldViolation::new(
                "map_reduce",
                "a map-reduce job's run makes its children: leave shards and broadcast unset",
            ));
        }
    }

    if spec.broadcast && spec.shards.is_some() {
        out.push(FieldViolation::new(
            "broadcast",
            "runs one shard per connected TaskTracker: leave shards unset",
        ));
    }

    if let Some(n) = spec.max_concurrent {
        let most = crate::model::MAX_CONCURRENT;
        if n == 0 || n > most {
            out.push(FieldViolation::new(
                "max_concurrent",
                format!("must be 1..={most} (got {n})"),
            ));
        } else if !crate::schedule::fires_overlapping_instances(spec) {
            out.push(FieldViolation::new(
                "max_concurrent",
                format!(
                    "only applies to cron and repeat jobs whose runs may overlap \
                     (rely_on_prev_cycle false); this job's schedule is {}{}",
                    spec.schedule.kind(),
                    if spec.rely_on_prev_cycle {
                        " with rely_on_prev_cycle, whose runs never overlap"
                    } else {
                        ""
                    }
                ),
            ));
        } else if spec.concurrency_policy != crate::model::ConcurrencyPolicy::Allow {
            out.push(FieldViolation::new(
                "max_concurrent",
                format!(
                    "only applies with concurrency policy allow: {} already keeps one run \
                     at a time",
                    spec.concurrency_policy.as_str()
                ),
            ));
        }
    }

    if let Some(wf) = &spec.workflow {
        crate::workflow::check(spec, wf, now_ms, &mut out);
    }

    if spec.rely_on_prev_cycle && !spec.schedule.is_recurring() {
        out.push(FieldViolation::new(
            "rely_on_prev_cycle",
            format!(
                "only applies to cron and repeat schedules (this job's schedule is {})",
                spec.schedule.kind()
            ),
        ));
    }

    if out.is_empty() {
        Ok(())
    } else {
        Err(Violations(out))
    }
}

/// Checks a set of labels (a job's affinity, a TaskTracker's labels) named `field`: at most
/// [`crate::model::MAX_LABELS`], each key and value plain ([`crate::model::label_problem`]).
pub fn check_labels<'a>(
    field: &str,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    out: &mut Vec<FieldViolation>,
) {
    let mut n = 0;
    for (k, value) in labels {
        n += 1;
        let why = crate::model::label_problem(k)
            .map(|w| format!("key {w}"))
            .or_else(|| crate::model::label_problem(value).map(|w| format!("value {w}")));
        if let Some(why) = why {
            out.push(FieldViolation::new(format!("{field}[{k}]"), why));
        }
    }
    if n > crate::model::MAX_LABELS {
        out.push(FieldViolation::new(
            field,
            format!("at most {} labels (got {n})", crate::model::MAX_LABELS),
        ));
    }
}

/// Validates the `Hello` that opens a TaskTracker's `Work` stream at a tracker serving
/// `cluster`; returns every problem at once. Its node group and identity are required, it runs
/// at least one thread, re-announces at most [`MAX_HELLO_RUNNING`] running jobs, and names no
/// other cluster (an empty `cluster` is taken as the tracker's). `heartbeat_ms` is not bounded:
/// 0 means the TaskTracker does not ping, any other value that it does.
pub fn validate_hello(hello: &proto::Hello, cluster: &str) -> Result<(), Violations> {
    let mut v = Vec::new();
    check_node_group("hello.node_group", &hello.node_group, &mut v);
    if hello.identity.is_empty() {
        v.push(FieldViolation::new("hello.identity", "is required"));
    }
    if !(1..=MAX_THREADS).contains(&hello.threads) {
        v.push(FieldViolation::new(
            "hello.threads",
            format!(
                "must be between 1 and {MAX_THREADS} (got {})",
                hello.threads
            ),
        ));
    }
    if hello.prefetch > MAX_PREFETCH {
        v.push(FieldViolation::new(
            "hello.prefetch",
            format!("must be at most {MAX_PREFETCH} (got {})", hello.prefetch),
        ));
    }
    if hello.running.len() > MAX_HELLO_RUNNING {
        v.push(FieldViolation::new(
            "hello.running",
            format!(
                "at most {MAX_HELLO_RUNNING} running jobs can be re-announced (got {})",
                hello.running.len()
            ),
        ));
    }
    check_labels("hello.labels", &hello.labels, &mut v);
    if !hello.cluster.is_empty() && hello.cluster != cluster {
        v.push(FieldViolation::new(
            "hello.cluster",
            format!(
                "this tracker serves cluster {cluster:?}, not {:?}",
                hello.cluster
            ),
        ));
    }
    if v.is_empty() {
        Ok(())
    } else {
        Err(Violations(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(spec: &JobSpec) -> Vec<String> {
        validate(spec)
            .err()
            .map(|v| v.0.into_iter().map(|f| f.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_plain_job_is_valid() {
        assert_eq!(validate(&JobSpec::new("t1", "workers")), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let spec = JobSpec {
            task_id: String::new(),
            task_tracker_node_group: "bad group".into(),
            need_feedback: true,
            max_retries: 5000,
            ..Default::default()
        };
        let err = validate(&spec).unwrap_err();
        let f: Vec<_> = err.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            f,
            [
                "task_id",
                "task_tracker_node_group",
                "submit_node_group",
                "max_retries"
            ]
        );
        assert!(
            err.to_string()
                .starts_with("task_id: must be 1..=64 characters")
        );
    }

    #[test]
    fn long_task_id_is_rejected() {
        let spec = JobSpec::new("x".repeat(65), "g");
        assert_eq!(fields(&spec), ["task_id"]);
        let spec = JobSpec::new("x".repeat(64), "g");
        assert!(validate(&spec).is_ok());
    }

    #[test]
    fn a_cron_that_never_fires_again_is_rejected() {
        const NOW: i64 = 1_800_000_000_000; // 2027-01-15
        let cron = |expression: &str| {
            JobSpec::new("t", "g").schedule(Schedule::Cron {
                expression: expression.into(),
                time_zone: None,
            })
        };
        for never in ["0 0 0 30 2 *", "0 0 0 1 1 * 2020"] {
            let err = validate_at(&cron(never), NOW).unwrap_err();
            let fields: Vec<_> = err.0.iter().map(|v| v.field.as_str()).collect();
            assert_eq!(fields, ["cron.expression"], "{never}");
            assert!(err.to_string().contains("never fires"), "{err}");
        }
        for fires in ["0 0 0 29 2 *", "0 0 0 1 1 * 2030", "*/5 * * * * *"] {
            assert!(validate_at(&cron(fires), NOW).is_ok(), "{fires}");
        }
    }

    #[test]
    fn the_instance_separator_is_reserved() {
        let spec = JobSpec::new("report~1700000000000", "g");
        assert_eq!(fields(&spec), ["task_id"]);
        assert!(
            validate(&spec)
                .unwrap_err()
                .to_string()
                .contains("names the instances of recurring jobs")
        );
    }

    #[test]
    fn schedules_are_checked() {
        let bad_cron = JobSpec::new("t", "g").schedule(Schedule::Cron {
            expression: "0 * * * 99 *".into(),
            time_zone: Some("Mars/Olympus".into()),
        });
        assert_eq!(fields(&bad_cron), ["cron.expression", "cron.time_zone"]);

        let bad_repeat = JobSpec::new("t", "g").schedule(Schedule::Repeat {
            interval_ms: 0,
            count: -2,
            first_fire_ms: Some(-5),
        });
        assert_eq!(
            fields(&bad_repeat),
            ["repeat.interval", "repeat.count", "repeat.first_fire"]
        );

        let bad_time = JobSpec::new("t", "g").schedule(Schedule::TriggerAt {
            trigger_time_ms: i64::MAX,
        });
        assert_eq!(fields(&bad_time), ["trigger_time"]);
    }

    #[test]
    fn a_concurrency_policy_needs_runs_that_may_overlap() {
        use crate::model::ConcurrencyPolicy::{Allow, Forbid, Replace};
        let now = JobSpec::new("t", "g").concurrency_policy(Forbid);
        assert_eq!(fields(&now), ["concurrency_policy"]);
        let every = Schedule::Repeat {
            interval_ms: 1000,
            count: -1,
            first_fire_ms: None,
        };
        let mut sequential = JobSpec::new("t", "g").schedule(every.clone());
        sequential.rely_on_prev_cycle = true;
        let refused = validate(&sequential.clone().concurrency_policy(Replace)).unwrap_err();
        assert!(refused.0[0].reason.contains("never overlap"), "{refused:?}");
        assert!(validate(&sequential.concurrency_policy(Allow)).is_ok());
        for policy in [Allow, Forbid, Replace] {
            let overlapping = JobSpec::new("t", "g").schedule(every.clone());
            assert!(validate(&overlapping.concurrency_policy(policy)).is_ok());
        }
    }

    #[test]
    fn max_concurrent_caps_the_runs_of_an_overlapping_job_that_allows_them() {
        use crate::model::ConcurrencyPolicy::{Forbid, Replace};
        let every = || {
            JobSpec::new("t", "g").schedule(Schedule::Repeat {
                interval_ms: 1000,
                count: -1,
                first_fire_ms: None,
            })
        };
        assert!(validate(&every().max_concurrent(1)).is_ok());
        assert!(validate(&every().max_concurrent(crate::model::MAX_CONCURRENT)).is_ok());
        for n in [0, crate::model::MAX_CONCURRENT + 1] {
            let refused = validate(&every().max_concurrent(n)).unwrap_err();
            assert_eq!(refused.0[0].field, "max_concurrent");
            assert!(refused.0[0].reason.contains("must be 1..="), "{refused:?}");
        }
        assert_eq!(
            fields(&JobSpec::new("t", "g").max_concurrent(2)),
            ["max_concurrent"]
        );
        let mut sequential = every().max_concurrent(2);
        sequential.rely_on_prev_cycle = true;
        let refused = validate(&sequential).unwrap_err();
        assert!(refused.0[0].reason.contains("never overlap"), "{refused:?}");
        for policy in [Forbid, Replace] {
            let refused =
                validate(&every().concurrency_policy(policy).max_concurrent(2)).unwrap_err();
            assert_eq!(refused.0[0].field, "max_concurrent");
            assert!(refused.0[0].reason.contains(policy.as_str()), "{refused:?}");
        }
    }

    #[test]
    fn shards_are_bounded() {
        let mut spec = JobSpec::new("t", "g");
        for ok in [1, crate::model::MAX_SHARDS] {
            spec.shards = Some(ok);
            assert!(validate(&spec).is_ok());
        }
        for bad in [0, crate::model::MAX_SHARDS + 1] {
            spec.shards = Some(bad);
            let refused = validate(&spec).unwrap_err();
            assert_eq!(refused.0[0].field, "shards");
            assert!(
                refused.0[0].reason.contains("must be 1..=10000"),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn affinity_labels_are_bounded_and_plain() {
        let mut spec = JobSpec::new("t", "g");
        spec.affinity.insert("zone".into(), "eu-west-1a".into());
        spec.affinity.insert("gpu".into(), "a100".into());
        assert!(validate(&spec).is_ok());
        assert_eq!(
            spec.affinity_key().as_deref(),
            Some("gpu=a100,zone=eu-west-1a")
        );
        spec.affinity.insert("bad,key".into(), "x".into());
        spec.affinity.insert("k".into(), "a=b".into());
        let refused = validate(&spec).unwrap_err();
        let named: Vec<&str> = refused.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(named, ["affinity[bad,key]", "affinity[k]"], "{refused:?}");
        let mut many = JobSpec::new("t", "g");
        for i in 0..17 {
            many.affinity.insert(format!("k{i}"), "v".into());
        }
        assert_eq!(fields(&many), ["affinity"]);
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("gpu".to_string(), "a100".to_string());
        assert!(!crate::model::labels_satisfy(&labels, "gpu=a100,zone=eu"));
        labels.insert("zone".to_string(), "eu".to_string());
        labels.insert("extra".to_string(), "x".to_string());
        assert!(crate::model::labels_satisfy(&labels, "gpu=a100,zone=eu"));
    }

    #[test]
    fn a_route_key_is_bounded_and_alone() {
        let keyed = |key: &str| JobSpec {
            route_key: Some(key.into()),
            ..JobSpec::new("t", "g")
        };
        assert!(validate(&keyed("customer-42")).is_ok());
        assert_eq!(
            keyed("customer-42").route_bucket(),
            keyed("customer-42").route_bucket()
        );
        assert_eq!(fields(&keyed("")), ["route_key"]);
        assert_eq!(fields(&keyed(&"k".repeat(257))), ["route_key"]);
        assert_eq!(fields(&keyed("a\nb")), ["route_key"]);
        let mut sharded = keyed("k");
        sharded.shards = Some(4);
        assert_eq!(fields(&sharded), ["route_key"]);
        let mut broadcast = keyed("k");
        broadcast.broadcast = true;
        assert_eq!(fields(&broadcast), ["route_key"]);
        let mut both = keyed("k");
        both.affinity.insert("zone".into(), "a".into());
        let refused = validate(&both).unwrap_err();
        assert!(refused.0[0].reason.contains("not both"), "{refused:?}");
    }

    #[test]
    fn broadcast_sets_its_own_shards() {
        let mut spec = JobSpec::new("t", "g");
        spec.broadcast = true;
        assert!(validate(&spec).is_ok());
        spec.shards = Some(2);
        assert_eq!(fields(&spec), ["broadcast"]);
    }

    #[test]
    fn rely_on_prev_cycle_needs_a_recurring_schedule() {
        let mut spec = JobSpec::new("t", "g");
        spec.rely_on_prev_cycle = true;
        assert_eq!(fields(&spec), ["rely_on_prev_cycle"]);
        spec.schedule = Schedule::Repeat {
            interval_ms: 1000,
            count: -1,
            first_fire_ms: None,
        };
        assert!(validate(&spec).is_ok());
    }

    #[test]
    fn hellos_are_checked_field_by_field() {
        let ok = proto::Hello {
            cluster: "prod".into(),
            node_group: "workers".into(),
            identity: "worker-1".into(),
            threads: 4,
            version: "0.1.0".into(),
            running: Vec::new(),
            heartbeat_ms: 500,
            prefetch: 4,
            waits_for_start: true,
            labels: [("zone".to_string(), "eu-1".to_string())].into(),
        };
        let lease = || proto::LeaseRef {
            job_id: "j".into(),
            lease_token: "t".into(),
        };
        type Change = fn(&mut proto::Hello);
        let cases: [(&str, Change, &[&str]); 12] = [
            ("a complete hello", |_| {}, &[]),
            ("no cluster: the tracker's", |h| h.cluster.clear(), &[]),
            (
                "an older TaskTracker without pings",
                |h| h.heartbeat_ms = 0,
                &[],
            ),
            (
                "no node group",
                |h| h.node_group.clear(),
                &["hello.node_group"],
            ),
            (
                "a bad node group",
                |h| h.node_group = "a b".into(),
                &["hello.node_group"],
            ),
            ("no identity", |h| h.identity.clear(), &["hello.identity"]),
            ("no thread", |h| h.threads = 0, &["hello.threads"]),
            (
                "prefetch too large",
                |h| h.prefetch = MAX_PREFETCH + 1,
                &["hello.prefetch"],
            ),
            (
                "another cluster",
                |h| h.cluster = "test".into(),
                &["hello.cluster"],
            ),
            (
                "a label with a comma",
                |h| {
                    h.labels.insert("a,b".into(), "c".into());
                },
                &["hello.labels[a,b]"],
            ),
            (
                "too many running jobs",
                |h| h.running = vec![proto::LeaseRef::default(); MAX_HELLO_RUNNING + 1],
                &["hello.running"],
            ),
            (
                "everything wrong at once",
                |h| {
                    h.node_group.clear();
                    h.identity.clear();
                    h.threads = 0;
                    h.cluster = "test".into();
                },
                &[
                    "hello.node_group",
                    "hello.identity",
                    "hello.threads",
                    "hello.cluster",
                ],
            ),
        ];
        for (name, change, want) in cases {
            let mut hello = ok.clone();
            change(&mut hello);
            let got: Vec<String> = validate_hello(&hello, "prod")
                .err()
                .map(|v| v.0.into_iter().map(|f| f.field).collect())
                .unwrap_or_default();
            assert_eq!(got, want, "{name}");
        }

        let mut full = ok.clone();
        full.running = (0..MAX_HELLO_RUNNING).map(|_| lease()).collect();
        assert_eq!(validate_hello(&full, "prod"), Ok(()), "exactly the limit");
        full.running.push(lease());
        full.cluster = "test".into();
        assert_eq!(
            validate_hello(&full, "prod").unwrap_err().to_string(),
            "hello.running: at most 10000 running jobs can be re-announced (got 10001); \
             hello.cluster: this tracker serves cluster \"prod\", not \"test\""
        );
    }
}
