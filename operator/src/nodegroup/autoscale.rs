//! Autoscaling a TaskTracker NodeGroup on its queue. Pure: [`decide`] turns what the
//! trackers report (jobs due now, jobs running) and what was decided before into the number of
//! pods.
//!
//! * Wanted pods = ⌈(due + running) / `targetBacklogPerReplica`⌉, within
//!   [`minReplicas`, `maxReplicas`]; at least one while anything is due or running, so a group
//!   scaled to zero comes back when a job for it is queued.
//! * Growing is at once; shrinking waits until the queue has wanted fewer pods for
//!   `scaleDownDelaySeconds` without a break (`lowSince`), so a lull between bursts does not
//!   stop pods that are about to be needed again.

use k8s_openapi::jiff::Timestamp;

use crate::crd::{AutoscalingSpec, AutoscalingStatus};

/// What the trackers report about one node group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Queued jobs due now.
    pub due: u64,
    /// Running jobs.
    pub running: u64,
}

/// The pods `load` calls for, before any delay.
pub fn wanted(spec: &AutoscalingSpec, load: Load) -> i32 {
    let target = u64::try_from(spec.target_backlog_per_replica.max(1)).unwrap_or(1);
    let jobs = load.due.saturating_add(load.running);
    let pods = i32::try_from(jobs.div_ceil(target)).unwrap_or(i32::MAX);
    let floor = if jobs > 0 {
        spec.min_replicas.max(1)
    } else {
        spec.min_replicas
    };
    pods.max(floor).min(spec.max_replicas.max(floor))
}

/// The next autoscaling status: the pods to run now and since when fewer were wanted.
/// `previous` is `None` the first time (the group then starts at what the load wants);
/// `load` is `None` when the trackers could not be asked (nothing changes).
pub fn decide(
    spec: &AutoscalingSpec,
    previous: Option<&AutoscalingStatus>,
    load: Option<Load>,
    now: Timestamp,
) -> AutoscalingStatus {
    let Some(load) = load else {
        return previous.cloned().unwrap_or_else(|| AutoscalingStatus {
            desired_replicas: spec.min_replicas.max(1).min(spec.max_replicas),
            ..AutoscalingStatus::default()
        });
    };
    let want = wanted(spec, load);
    let mut next = AutoscalingStatus {
        due: i64::try_from(load.due).unwrap_or(i64::MAX),
        running: i64::try_from(load.running).unwrap_or(i64::MAX),
        ..previous.cloned().unwrap_or_default()
    };
    let current = match previous {
        // Within the bounds even when the spec changed since.
        Some(p) => p
            .desired_replicas
            .clamp(spec.min_replicas, spec.max_replicas.max(spec.min_replicas)),
        None => want,
    };
    let scale_to = |next: &mut AutoscalingStatus, to: i32| {
        if to != next.desired_replicas || previous.is_none() {
            next.last_scale_time = Some(now.to_string());
        }
        next.desired_replicas = to;
        next.low_since = None;
    };
    if want >= current {
        scale_to(&mut next, want);
        return next;
    }
    let since = next
        .low_since
        .as_deref()
        .and_then(|s| s.parse::<Timestamp>().ok())
        .unwrap_or(now);
    let waited = now.duration_since(since).as_secs();
    if waited >= spec.scale_down_delay_seconds {
        scale_to(&mut next, want);
    } else {
        next.desired_replicas = current;
        next.low_since = Some(since.to_string());
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: i32, max: i32, target: i32, delay: i64) -> AutoscalingSpec {
        AutoscalingSpec {
            min_replicas: min,
            max_replicas: max,
            target_backlog_per_replica: target,
            scale_down_delay_seconds: delay,
            external: false,
        }
    }

    fn load(due: u64, running: u64) -> Option<Load> {
        Some(Load { due, running })
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn pods_follow_the_jobs_within_the_bounds() {
        let s = spec(1, 10, 10, 300);
        for (due, running, pods) in [
            (0, 0, 1),
            (1, 0, 1),
            (10, 0, 1),
            (11, 0, 2),
            (45, 5, 5),
            (95, 0, 10),
            (1_000_000, 0, 10),
        ] {
            assert_eq!(
                wanted(&s, Load { due, running }),
                pods,
                "{due} due, {running} running"
            );
        }
        let zero = spec(0, 4, 5, 60);
        assert_eq!(wanted(&zero, Load::default()), 0, "idle: scale to zero");
        assert_eq!(
            wanted(&zero, Load { due: 1, running: 0 }),
            1,
            "a queued job wakes it"
        );
        assert_eq!(
            wanted(&zero, Load { due: 0, running: 1 }),
            1,
            "running work keeps one"
        );
    }

    #[test]
    fn growing_is_at_once_and_shrinking_waits_for_the_delay() {
        let s = spec(0, 10, 10, 300);
        let first = decide(&s, None, load(0, 0), t(0));
        assert_eq!(first.desired_replicas, 0);
        let up = decide(&s, Some(&first), load(35, 0), t(10));
        assert_eq!(up.desired_replicas, 4, "at once");
        assert_eq!(up.last_scale_time, Some(t(10).to_string()));
        // The queue empties: fewer wanted, but the delay holds the pods.
        let low = decide(&s, Some(&up), load(0, 12), t(20));
        assert_eq!(low.desired_replicas, 4);
        assert_eq!(low.low_since, Some(t(20).to_string()));
        let still = decide(&s, Some(&low), load(0, 12), t(200));
        assert_eq!(still.desired_replicas, 4);
        assert_eq!(still.low_since, low.low_since, "the wait keeps its start");
        // A burst in between resets the wait.
        let burst = decide(&s, Some(&still), load(40, 0), t(250));
        assert_eq!((burst.desired_replicas, burst.low_since.clone()), (4, None));
        let low = decide(&s, Some(&burst), load(0, 12), t(260));
        let down = decide(&s, Some(&low), load(0, 12), t(260 + 300));
        assert_eq!(down.desired_replicas, 2, "after 300 s of wanting fewer");
        assert_eq!(down.low_since, None);
        assert_eq!(down.last_scale_time, Some(t(560).to_string()));
        let idle = decide(&s, Some(&down), load(0, 0), t(600));
        let gone = decide(&s, Some(&idle), load(0, 0), t(900));
        assert_eq!(gone.desired_replicas, 0, "scaled to zero when idle");
        assert_eq!((gone.due, gone.running), (0, 0));
    }

    #[test]
    fn without_an_answer_nothing_changes() {
        let s = spec(2, 8, 10, 0);
        let before = decide(&s, None, load(50, 0), t(0));
        assert_eq!(before.desired_replicas, 5);
        assert_eq!(decide(&s, Some(&before), None, t(100)), before);
        assert_eq!(
            decide(&s, None, None, t(0)).desired_replicas,
            2,
            "first look: min"
        );
        // A spec change pulls the current size into the new bounds.
        let narrower = spec(1, 3, 10, 3600);
        assert_eq!(
            decide(&narrower, Some(&before), load(50, 0), t(1)).desired_replicas,
            3
        );
    }

    /// The decision driven by a live tracker's counts: jobs submitted for the group show as
    /// due (those scheduled later do not), and the group grows to carry them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_trackers_queue_drives_the_decision() {
        use lts_core::{JobSpec, Schedule};
        let dir = tempfile::tempdir().unwrap();
        let tracker = lts_tests::TrackerProc::start(dir.path(), &[])
            .await
            .unwrap();
        let client = tracker.client();
        let mut jobs: Vec<JobSpec> = (0..25)
            .map(|i| JobSpec::new(format!("now-{i}"), "batch"))
            .collect();
        let later = lts_core::now_ms() + 3_600_000;
        jobs.extend((0..7).map(|i| {
            JobSpec::new(format!("later-{i}"), "batch").schedule(Schedule::TriggerAt {
                trigger_time_ms: later,
            })
        }));
        client.submit_batch(jobs).await.unwrap();
        let stats = client.stats(Some("batch")).await.unwrap();
        assert_eq!((stats.queued, stats.due, stats.running), (32, 25, 0));
        let s = spec(0, 10, 10, 300);
        let load = Load {
            due: stats.due,
            running: stats.running,
        };
        let first = decide(&s, None, Some(load), t(0));
        assert_eq!(first.desired_replicas, 3, "25 due jobs at 10 per pod");
        let other = client.stats(Some("idle")).await.unwrap();
        assert_eq!(
            decide(
                &s,
                Some(&first),
                Some(Load {
                    due: other.due,
                    running: other.running
                }),
                t(1)
            )
            .desired_replicas,
            3,
            "an idle group shrinks only after the delay"
        );
    }
}
