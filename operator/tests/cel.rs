//! The CRDs' CEL rules (`x-kubernetes-validations`), evaluated client-side with kube's CEL
//! engine on the generated schemas: what the API server will accept and refuse.

use std::collections::BTreeMap;

use kube::core::cel::{validate_cel, validate_cel_update};
use lts_operator::crd::{
    ConcurrencyPolicy, CronSchedule, HttpTarget, Job, JobSpec, MisfirePolicy, NodeGroup,
    NodeGroupSpec, NodeRole, RepeatSchedule, ScheduleSpec, SecretKeyRef, WorkerMode, WorkerSpec,
};

fn job() -> Job {
    Job::new(
        "mail",
        JobSpec {
            cluster: None,
            task_id: None,
            task_tracker_node_group: "mailers".into(),
            submit_node_group: None,
            priority: 0,
            params: BTreeMap::new(),
            need_feedback: false,
            max_retries: 0,
            max_lease_losses: None,
            timeout_seconds: None,
            schedule: None,
            rely_on_prev_cycle: false,
            replace_on_exist: false,
            misfire_policy: MisfirePolicy::FireOnce,
            concurrency_policy: ConcurrencyPolicy::Allow,
            max_concurrent: None,
            shards: None,
            broadcast: false,
            affinity: Default::default(),
            route_key: None,
            map_reduce: None,
            workflow: None,
            suspend: false,
        },
    )
}

fn group(role: NodeRole) -> NodeGroup {
    NodeGroup::new(
        "g",
        NodeGroupSpec {
            image: Some("img".into()),
            ..NodeGroupSpec::new("prod", role)
        },
    )
}

/// The messages of the rules `value` breaks (empty when it passes).
fn broken<T: kube::CustomResourceExt + serde::Serialize>(value: &T) -> String {
    match validate_cel(value) {
        Ok(()) => String::new(),
        Err(e) => e
            .into_vec()
            .into_iter()
            .map(|v| v.message)
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn broken_update<T: kube::CustomResourceExt + serde::Serialize>(new: &T, old: &T) -> String {
    match validate_cel_update(new, old) {
        Ok(()) => String::new(),
        Err(e) => e
            .into_vec()
            .into_iter()
            .map(|v| v.message)
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn with_schedule(s: ScheduleSpec) -> Job {
    let mut j = job();
    j.spec.schedule = Some(s);
    j
}

fn cron() -> Option<CronSchedule> {
    Some(CronSchedule {
        expression: "0 0 * * * *".into(),
        time_zone: None,
    })
}

fn repeat(interval_ms: Option<i64>, interval: Option<&str>) -> Option<RepeatSchedule> {
    Some(RepeatSchedule {
        interval_ms,
        interval: interval.map(str::to_string),
        count: -1,
        first_fire: None,
    })
}

#[test]
fn a_job_has_at_most_one_schedule() {
    assert_eq!(broken(&job()), "", "no schedule means now");
    assert_eq!(
        broken(&with_schedule(ScheduleSpec {
            cron: cron(),
            ..ScheduleSpec::default()
        })),
        ""
    );
    assert_eq!(
        broken(&with_schedule(ScheduleSpec {
            trigger_time: Some("2030-01-01T00:00:00Z".into()),
            ..ScheduleSpec::default()
        })),
        ""
    );
    let two = broken(&with_schedule(ScheduleSpec {
        trigger_time: Some("2030-01-01T00:00:00Z".into()),
        cron: cron(),
        repeat: None,
    }));
    assert!(
        two.contains("exactly one of triggerTime, cron or repeat"),
        "{two}"
    );
    let none = broken(&with_schedule(ScheduleSpec::default()));
    assert!(none.contains("exactly one"), "{none}");
}

#[test]
fn repeat_takes_one_interval_and_a_real_duration() {
    let ok = |r| {
        broken(&with_schedule(ScheduleSpec {
            repeat: r,
            ..ScheduleSpec::default()
        }))
    };
    assert_eq!(ok(repeat(Some(1000), None)), "");
    assert_eq!(ok(repeat(None, Some("1m30s"))), "");
    let both = ok(repeat(Some(1000), Some("1s")));
    assert!(
        both.contains("exactly one of intervalMs or interval"),
        "{both}"
    );
    let neither = ok(repeat(None, None));
    assert!(
        neither.contains("exactly one of intervalMs or interval"),
        "{neither}"
    );
    let negative = ok(repeat(None, Some("-5s")));
    assert!(negative.contains("positive duration"), "{negative}");
}

#[test]
fn a_jobs_identity_is_immutable() {
    let old = job();
    let mut new = job();
    new.spec.priority = 7;
    new.spec.suspend = true;
    assert_eq!(broken_update(&new, &old), "", "other fields may change");
    new.spec.task_tracker_node_group = "others".into();
    assert!(
        broken_update(&new, &old).contains("taskTrackerNodeGroup is immutable"),
        "{}",
        broken_update(&new, &old)
    );
    let mut new = job();
    new.spec.task_id = Some("t".into());
    assert!(broken_update(&new, &old).contains("taskId is immutable"));
    let mut new = job();
    new.spec.cluster = Some("other".into());
    assert!(broken_update(&new, &old).contains("cluster is immutable"));
}

#[test]
fn node_group_rules() {
    assert_eq!(broken(&group(NodeRole::JobTracker)), "");
    assert_eq!(broken(&group(NodeRole::TaskTracker)), "");

    let mut jt = group(NodeRole::JobTracker);
    jt.spec.worker = Some(WorkerSpec::default());
    assert!(broken(&jt).contains("worker applies to TaskTracker NodeGroups only"));

    let mut ha = group(NodeRole::JobTracker);
    ha.spec.replicas = 3;
    assert!(broken(&ha).contains("needs mongoUriSecretRef and zookeeper"));
    ha.spec.zookeeper = Some("zk:2181".into());
    ha.spec.mongo_uri_secret_ref = Some(SecretKeyRef {
        name: "mongo".into(),
        key: "uri".into(),
    });
    assert_eq!(broken(&ha), "");

    let mut tt = group(NodeRole::TaskTracker);
    tt.spec.image = None;
    assert!(broken(&tt).contains("image is required"));
    tt.spec.worker = Some(WorkerSpec {
        mode: WorkerMode::Sidecar,
        exec: Some("./run.sh".into()),
        ..WorkerSpec::default()
    });
    assert_eq!(broken(&tt), "", "a sidecar command needs no user image");

    let mut side = group(NodeRole::TaskTracker);
    side.spec.worker = Some(WorkerSpec {
        mode: WorkerMode::Sidecar,
        ..WorkerSpec::default()
    });
    assert!(broken(&side).contains("mode Sidecar needs exactly one of http or exec"));
    side.spec.worker = Some(WorkerSpec {
        mode: WorkerMode::Sidecar,
        http: Some(HttpTarget {
            port: 8080,
            path: "/run".into(),
        }),
        ..WorkerSpec::default()
    });
    assert_eq!(broken(&side), "");

    let mut moved = group(NodeRole::TaskTracker);
    moved.spec.cluster = "staging".into();
    assert!(broken_update(&moved, &group(NodeRole::TaskTracker)).contains("cluster is immutable"));
    let flipped = group(NodeRole::JobTracker);
    assert!(broken_update(&flipped, &group(NodeRole::TaskTracker)).contains("role is immutable"));
}
