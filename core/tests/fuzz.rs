//! Property tests of everything that reads outside input: the job validator, the cron and
//! repeat schedule math, the protocol → model conversion (from arbitrary bytes), and the
//! duration parser. None may panic, and every rejection names a field.

use lts_core::model::{ConcurrencyPolicy, MisfirePolicy};
use lts_core::proto;
use lts_core::{JobSpec, Schedule, convert, schedule, validate};
use proptest::prelude::*;
use prost::Message;

/// Every field a violation may name.
const FIELDS: &[&str] = &[
    "task_id",
    "task_tracker_node_group",
    "submit_node_group",
    "priority",
    "params",
    "max_retries",
    "max_lease_losses",
    "timeout",
    "idempotency_key",
    "trigger_time",
    "cron.expression",
    "cron.time_zone",
    "repeat.interval",
    "repeat.count",
    "repeat.first_fire",
    "schedule",
    "misfire_policy",
    "concurrency_policy",
    "max_concurrent",
    "shards",
    "broadcast",
    "affinity",
    "route_key",
    "map_reduce",
    "need_feedback",
    "rely_on_prev_cycle",
];

fn names_a_field(field: &str) -> bool {
    FIELDS.iter().any(|f| {
        field == *f || field.starts_with(&format!("{f}.")) || field.starts_with(&format!("{f}["))
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9~._-]{0,70}", any::<String>(), Just(String::new()),]
}

/// Names that mostly pass validation, so that what lies behind it gets exercised too.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z][a-z0-9-]{0,20}", 1 => text()]
}

fn instant() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        Just(i64::MAX),
        Just(i64::MIN),
        Just(0i64),
        1_700_000_000_000i64..1_900_000_000_000,
    ]
}

fn cron_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9*/,-]{1,4}( [0-9*/,?LW#-]{1,4}){4,7}",
        Just("0 0 0 30 2 *".to_string()),
        Just("* * * * * * 2099".to_string()),
        any::<String>(),
    ]
}

fn schedule_strategy() -> impl Strategy<Value = Schedule> {
    prop_oneof![
        Just(Schedule::Now),
        instant().prop_map(|t| Schedule::TriggerAt { trigger_time_ms: t }),
        (
            cron_text(),
            proptest::option::of(prop_oneof![
                Just("Europe/Berlin".to_string()),
                Just("UTC".to_string()),
                any::<String>(),
            ])
        )
            .prop_map(|(expression, time_zone)| Schedule::Cron {
                expression,
                time_zone
            }),
        (
            prop_oneof![any::<i64>(), 1i64..100_000_000],
            prop_oneof![any::<i64>(), Just(-1i64), 1i64..10],
            proptest::option::of(instant()),
        )
            .prop_map(|(interval_ms, count, first_fire_ms)| Schedule::Repeat {
                interval_ms,
                count,
                first_fire_ms
            }),
    ]
}

fn spec_strategy() -> impl Strategy<Value = JobSpec> {
    (
        (name(), name(), name(), any::<i32>()),
        proptest::collection::btree_map(text(), text(), 0..4),
        (
            any::<bool>(),
            any::<u32>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        schedule_strategy(),
        (
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u64>()),
            0..3u8,
            proptest::option::of(0..3u32),
        ),
    )
        .prop_map(
            |(
                (task_id, group, submit, priority),
                params,
                (fb, retries, rely, replace, skip),
                schedule,
                (losses, timeout, concurrency, max_concurrent),
            )| {
                let affinity = if replace {
                    params.clone()
                } else {
                    Default::default()
                };
                let route_key = (rely || fb).then(|| submit.clone());
                JobSpec {
                    task_id,
                    task_tracker_node_group: group,
                    submit_node_group: submit,
                    priority,
                    params,
                    need_feedback: fb,
                    max_retries: retries,
                    schedule,
                    rely_on_prev_cycle: rely,
                    replace_on_exist: replace,
                    misfire_policy: if skip {
                        MisfirePolicy::Skip
                    } else {
                        MisfirePolicy::FireOnce
                    },
                    concurrency_policy: match concurrency {
                        0 => ConcurrencyPolicy::Allow,
                        1 => ConcurrencyPolicy::Forbid,
                        _ => ConcurrencyPolicy::Replace,
                    },
                    max_concurrent,
                    shards: max_concurrent.map(|n| n * 5_000),
                    broadcast: replace && skip,
                    affinity,
                    max_lease_losses: losses,
                    timeout_ms: timeout,
                    workflow: None,
                    idempotency_key: None,
                    // Sometimes a key, sometimes with what it may not be combined with.
                    route_key,
                    map_reduce: max_concurrent.map(|n| lts_core::model::MapReduce {
                        reduce: skip,
                        max_children: Some(n.saturating_mul(400_000)),
                    }),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The validator takes anything, and names the field of each thing it refuses.
    #[test]
    fn the_validator_never_panics_and_names_fields(spec in spec_strategy(), now in instant()) {
        if let Err(v) = validate::validate_at(&spec, now) {
            prop_assert!(!v.0.is_empty());
            for f in &v.0 {
                prop_assert!(names_a_field(&f.field), "unknown field {:?}: {}", f.field, f.reason);
                prop_assert!(!f.reason.is_empty());
            }
        }
    }

    /// The schedule math of any spec the validator accepts, at any time, never panics (no
    /// overflow at the ends of time), and a next fire is never in the past of its base.
    #[test]
    fn schedule_math_never_panics(
        spec in spec_strategy(),
        now in instant(),
        fired in prop_oneof![any::<u64>(), 0u64..10],
        n in 0usize..5,
    ) {
        if validate::validate_at(&spec, now).is_err() {
            return Ok(());
        }
        let first = schedule::first_trigger(&spec, now);
        if let Some(at) = first {
            let _ = schedule::next_fire(&spec, at, fired, now);
            let _ = schedule::resume_trigger(&spec, at, fired, now);
            let _ = schedule::upcoming_fires(&spec, at, fired, n);
            if schedule::fires_overlapping_instances(&spec) {
                let _ = schedule::overlap_step(&spec, at, fired.max(1), now);
            }
        }
    }

    /// Cron parsing and the next fire in any zone take any text and any instant.
    #[test]
    fn cron_parsing_never_panics(expression in cron_text(), zone in proptest::option::of(any::<String>()), after in instant()) {
        let _ = schedule::parse_cron(&expression);
        let _ = schedule::next_cron_fire(&expression, zone.as_deref(), after);
    }

    /// Bytes off the wire: decoded or refused; a decoded spec converts or is refused with its
    /// fields named; a decoded job converts.
    #[test]
    fn the_protocol_conversion_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(p) = proto::JobSpec::decode(bytes.as_slice())
            && let Err(v) = convert::spec_from_proto(p)
        {
            for f in &v.0 {
                prop_assert!(names_a_field(&f.field), "unknown field {:?}", f.field);
            }
        }
        if let Ok(p) = proto::Job::decode(bytes.as_slice()) {
            let _ = convert::job_from_proto(p);
        }
        if let Ok(p) = proto::SubmitRequest::decode(bytes.as_slice()) {
            for s in p.jobs {
                let _ = convert::spec_from_proto(s);
            }
        }
    }

    /// A spec the validator accepts survives the trip to the wire and back.
    #[test]
    fn a_spec_round_trips_through_the_protocol(spec in spec_strategy(), now in 1_700_000_000_000i64..1_900_000_000_000) {
        if validate::validate_at(&spec, now).is_err() {
            return Ok(());
        }
        let back = convert::spec_from_proto(convert::spec_to_proto(&spec));
        prop_assert_eq!(back.ok(), Some(spec));
    }

    /// Durations as people type them: parsed or refused, never a panic.
    #[test]
    fn durations_never_panic(text in prop_oneof!["[0-9.]{0,25}(ms|s|m|h|d)?", any::<String>()]) {
        let _ = lts_core::parse_duration(&text);
        let _ = lts_core::parse_duration_ms(&text);
    }
}
