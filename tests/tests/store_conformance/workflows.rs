//! Workflows: nodes run after their predecessors, a failure edge is taken, a skip runs down a
//! long chain in one go, and a cancelled workflow cancels its waiting nodes.

use lts_core::workflow::{Edge, EdgeOn, Workflow, WorkflowNode};
use lts_core::{Job, Shard};

use super::*;

fn workflow(task: &str, nodes: &[&str], edges: &[(&str, &str, EdgeOn)]) -> JobSpec {
    let mut spec = JobSpec::new(task, "g");
    spec.workflow = Some(Workflow {
        nodes: nodes
            .iter()
            .map(|n| WorkflowNode {
                name: n.to_string(),
                spec: JobSpec::new("", "").max_retries(0),
                kept_output: None,
            })
            .collect(),
        edges: edges
            .iter()
            .map(|(from, to, on)| Edge {
                from: from.to_string(),
                to: to.to_string(),
                on: *on,
            })
            .collect(),
    });
    spec
}

/// The node `name` of the workflow `wf` (its current run), as stored.
async fn node(store: &Arc<dyn JobStore>, wf: &Job, name: &str) -> Job {
    let graph = wf.spec.workflow.as_ref().unwrap();
    let index = graph.nodes.iter().position(|n| n.name == name).unwrap();
    let id = Shard::id(&Shard::run_of(wf), index as u32);
    store.get(JobKey::Id(id)).await.unwrap().unwrap()
}

/// Claims every due job of `g` and ends each as `outcome(node name)` says, with the node's
/// name as its message; how many ran.
async fn run_due(
    store: &Arc<dyn JobStore>,
    now: i64,
    outcome: impl Fn(&str) -> Outcome,
) -> Vec<String> {
    let leased = store.claim(claim("g", "w1", 100, now)).await.unwrap();
    let mut ran = Vec::new();
    for l in leased {
        let name = l.job.node.as_ref().map(|n| n.name.clone()).unwrap();
        let r = store
            .complete(Completion {
                message: format!("out-{name}"),
                ..done(&l.job.job_id, &l.token, outcome(&name), now + 1)
            })
            .await
            .unwrap();
        assert!(matches!(r, CompleteOutcome::Accepted { .. }), "{r:?}");
        ran.push(name);
    }
    ran.sort();
    ran
}

/// The diamond `a -> b`, `a -> c (on failure)`, `b -> d (always)`, `c -> d (always)`: with `a`
/// failing, `b` is skipped, `c` runs and gets nothing of `a`, `d` runs with `c`'s output; the
/// workflow succeeds, `a`'s failure handled by its edge to `c`.
pub async fn a_workflow_runs_its_nodes_after_their_predecessors(store: Arc<dyn JobStore>) {
    let spec = workflow(
        "etl",
        &["a", "b", "c", "d"],
        &[
            ("a", "b", EdgeOn::Success),
            ("a", "c", EdgeOn::Failure),
            ("b", "d", EdgeOn::Always),
            ("c", "d", EdgeOn::Always),
        ],
    );
    let key = JobKey::Id(id(&store.submit(vec![spec], NOW).await.unwrap()[0]));
    // The workflow's own claim hands nothing out: it creates the nodes.
    assert!(
        store
            .claim(claim("g", "w1", 10, NOW))
            .await
            .unwrap()
            .is_empty()
    );
    let wf = store.get(key.clone()).await.unwrap().unwrap();
    assert_eq!(
        (wf.state, wf.lease_owner.clone()),
        (JobState::Running, None)
    );
    let p = wf.shard_progress.unwrap();
    assert_eq!((p.pending, p.unfinished()), (4, 4));
    for (name, state) in [("a", JobState::Queued), ("b", JobState::Waiting)] {
        let n = node(&store, &wf, name).await;
        assert_eq!(n.state, state, "{name}");
        assert_eq!(n.spec.task_id, format!("etl/{name}"));
    }
    // Only a is due; waiting nodes are not claimed.
    assert_eq!(run_due(&store, NOW + 10, |_| Outcome::Failed).await, ["a"]);
    let b = node(&store, &wf, "b").await;
    assert_eq!(b.state, JobState::Skipped, "{b:?}");
    assert!(
        b.last_message
            .as_deref()
            .unwrap()
            .contains("after a succeeds"),
        "{b:?}"
    );
    assert_eq!(node(&store, &wf, "d").await.state, JobState::Waiting);
    let c = node(&store, &wf, "c").await;
    assert_eq!(c.state, JobState::Queued);
    assert!(c.spec.params.is_empty(), "a failed: no output {c:?}");
    assert_eq!(run_due(&store, NOW + 20, |_| Outcome::Success).await, ["c"]);
    let d = node(&store, &wf, "d").await;
    assert_eq!(d.state, JobState::Queued);
    assert_eq!(
        d.spec.params.get("output.c").map(String::as_str),
        Some("out-c")
    );
    assert!(!d.spec.params.contains_key("output.b"));
    assert_eq!(run_due(&store, NOW + 30, |_| Outcome::Success).await, ["d"]);
    let wf = store.get(key).await.unwrap().unwrap();
    assert_eq!(wf.state, JobState::Succeeded, "{wf:?}");
    assert_eq!(
        wf.last_message.as_deref(),
        Some("4 nodes ended: 2 succeeded, 1 failed (1 handled by an edge), 1 skipped")
    );
    let p = wf.shard_progress.unwrap();
    assert_eq!(
        (p.succeeded, p.failed, p.skipped, p.handled, p.unfinished()),
        (2, 1, 1, 1, 0)
    );

    // Without the failure edge the same failure fails the workflow.
    let spec = workflow("strict", &["a", "b"], &[("a", "b", EdgeOn::Success)]);
    let key = JobKey::Id(id(&store.submit(vec![spec], NOW).await.unwrap()[0]));
    store.claim(claim("g", "w1", 10, NOW + 40)).await.unwrap();
    assert_eq!(run_due(&store, NOW + 41, |_| Outcome::Failed).await, ["a"]);
    let wf = store.get(key).await.unwrap().unwrap();
    assert_eq!(wf.state, JobState::Failed, "{wf:?}");
    assert!(
        wf.last_message
            .as_deref()
            .unwrap()
            .ends_with("1 failure no edge handles"),
        "{wf:?}"
    );
}

/// A chain of nodes whose first fails: every other node is skipped by the one write that ends
/// the first (a work list, not a recursion as deep as the chain), and the workflow fails.
pub async fn a_failure_skips_a_long_chain_at_once(store: Arc<dyn JobStore>) {
    const N: usize = 2_000;
    let names: Vec<String> = (0..N).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let edges: Vec<(&str, &str, EdgeOn)> = refs
        .windows(2)
        .map(|w| (w[0], w[1], EdgeOn::Success))
        .collect();
    let key = JobKey::Id(id(&store
        .submit(vec![workflow("chain", &refs, &edges)], NOW)
        .await
        .unwrap()[0]));
    store.claim(claim("g", "w1", 10, NOW)).await.unwrap();
    let wf = store.get(key.clone()).await.unwrap().unwrap();
    assert_eq!(wf.shard_progress.unwrap().pending, N as u32);
    assert_eq!(run_due(&store, NOW + 1, |_| Outcome::Failed).await, ["n0"]);
    let wf = store.get(key).await.unwrap().unwrap();
    assert_eq!(wf.state, JobState::Failed, "{:?}", wf.last_message);
    let p = wf.shard_progress.unwrap();
    assert_eq!((p.failed, p.skipped), (1, N as u32 - 1));
    assert_eq!(node(&store, &wf, "n1999").await.state, JobState::Skipped);
}

/// A cancelled workflow cancels its nodes, waiting ones included; none is skipped or run.
pub async fn a_cancelled_workflow_cancels_its_waiting_nodes(store: Arc<dyn JobStore>) {
    let spec = workflow(
        "gone",
        &["a", "b", "c"],
        &[("a", "b", EdgeOn::Success), ("b", "c", EdgeOn::Always)],
    );
    let key = JobKey::Id(id(&store.submit(vec![spec], NOW).await.unwrap()[0]));
    store.claim(claim("g", "w1", 10, NOW)).await.unwrap();
    let running = store.claim(claim("g", "w1", 10, NOW + 1)).await.unwrap();
    assert_eq!(running.len(), 1);
    assert!(matches!(
        store.cancel(key.clone(), NOW + 2).await.unwrap(),
        CancelOutcome::Cancelled(_)
    ));
    let wf = store.get(key).await.unwrap().unwrap();
    assert_eq!(wf.state, JobState::Cancelled);
    for name in ["a", "b", "c"] {
        assert_eq!(
            node(&store, &wf, name).await.state,
            JobState::Cancelled,
            "{name}"
        );
    }
    // The running node's result is refused; nothing becomes due.
    let late = store
        .complete(done(
            &running[0].job.job_id,
            &running[0].token,
            Outcome::Success,
            NOW + 3,
        ))
        .await
        .unwrap();
    assert!(
        !matches!(late, CompleteOutcome::Accepted { .. }),
        "{late:?}"
    );
    assert!(
        store
            .claim(claim("g", "w1", 10, NOW + 10))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A suspended workflow suspends its nodes: the queued ones at once, a running one's successor
/// once it ended (it stays suspended instead of queued); resumed, it runs on to its end.
pub async fn a_suspended_workflow_holds_its_nodes_until_resumed(store: Arc<dyn JobStore>) {
    let spec = workflow(
        "paused",
        &["a", "b", "c"],
        &[("a", "c", EdgeOn::Success), ("b", "c", EdgeOn::Success)],
    );
    let key = JobKey::Id(id(&store.submit(vec![spec], NOW).await.unwrap()[0]));
    store.claim(claim("g", "w1", 10, NOW)).await.unwrap();
    // a runs; b is still queued when the workflow is suspended.
    let running = store.claim(claim("g", "w1", 1, NOW + 1)).await.unwrap();
    assert_eq!(running.len(), 1);
    assert!(matches!(
        store.suspend(key.clone(), NOW + 2).await.unwrap(),
        ChangeOutcome::Changed(_)
    ));
    let wf = store.get(key.clone()).await.unwrap().unwrap();
    let first = running[0].job.node.as_ref().unwrap().name.clone();
    let other = if first == "a" { "b" } else { "a" };
    assert_eq!(node(&store, &wf, other).await.state, JobState::Suspended);
    assert!(
        store
            .claim(claim("g", "w1", 10, NOW + 3))
            .await
            .unwrap()
            .is_empty(),
        "nothing runs while it is suspended"
    );
    // The running node finishes its attempt.
    let r = store
        .complete(done(
            &running[0].job.job_id,
            &running[0].token,
            Outcome::Success,
            NOW + 4,
        ))
        .await
        .unwrap();
    assert!(matches!(r, CompleteOutcome::Accepted { .. }), "{r:?}");
    assert_eq!(node(&store, &wf, "c").await.state, JobState::Waiting);
    // Resumed: the other node runs, then c (which waited, marked suspended, for both).
    assert!(matches!(
        store.resume(key.clone(), NOW + 5).await.unwrap(),
        ChangeOutcome::Changed(_)
    ));
    assert_eq!(
        run_due(&store, NOW + 6, |_| Outcome::Success).await,
        [other.to_string()]
    );
    assert_eq!(node(&store, &wf, "c").await.state, JobState::Queued);
    assert_eq!(run_due(&store, NOW + 7, |_| Outcome::Success).await, ["c"]);
    let wf = store.get(key).await.unwrap().unwrap();
    assert_eq!(wf.state, JobState::Succeeded, "{wf:?}");

    // A node suspended while it waits stays suspended when its predecessors end.
    let spec = workflow("held", &["x", "y"], &[("x", "y", EdgeOn::Success)]);
    let key = JobKey::Id(id(&store.submit(vec![spec], NOW).await.unwrap()[0]));
    store.claim(claim("g", "w1", 10, NOW + 10)).await.unwrap();
    let wf = store.get(key.clone()).await.unwrap().unwrap();
    let y = JobKey::Id(node(&store, &wf, "y").await.job_id);
    assert!(matches!(
        store.suspend(y.clone(), NOW + 11).await.unwrap(),
        ChangeOutcome::Changed(_)
    ));
    assert_eq!(run_due(&store, NOW + 12, |_| Outcome::Success).await, ["x"]);
    assert_eq!(node(&store, &wf, "y").await.state, JobState::Suspended);
    store.resume(y, NOW + 13).await.unwrap();
    assert_eq!(run_due(&store, NOW + 14, |_| Outcome::Success).await, ["y"]);
    assert_eq!(
        store.get(key).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
}

/// A retry's kept nodes are stored as succeeded from its claim on (never run), the nodes they
/// let run are queued at once with their outputs, and the retry runs to its end.
pub async fn a_retry_runs_only_the_nodes_that_did_not_succeed(store: Arc<dyn JobStore>) {
    let mut spec = workflow(
        "again",
        &["a", "b", "c"],
        &[("a", "b", EdgeOn::Success), ("b", "c", EdgeOn::Success)],
    );
    spec.workflow.as_mut().unwrap().nodes[0].kept_output = Some("out-a".into());
    let key = JobKey::Id(id(&store.submit(vec![spec], NOW).await.unwrap()[0]));
    store.claim(claim("g", "w1", 10, NOW)).await.unwrap();
    let wf = store.get(key.clone()).await.unwrap().unwrap();
    let a = node(&store, &wf, "a").await;
    assert_eq!((a.state, a.attempt), (JobState::Succeeded, 0));
    let b = node(&store, &wf, "b").await;
    assert_eq!(b.state, JobState::Queued);
    assert_eq!(b.spec.params["output.a"], "out-a");
    assert_eq!(run_due(&store, NOW + 1, |_| Outcome::Success).await, ["b"]);
    assert_eq!(run_due(&store, NOW + 2, |_| Outcome::Success).await, ["c"]);
    let wf = store.get(key).await.unwrap().unwrap();
    assert_eq!(wf.state, JobState::Succeeded, "{wf:?}");
    assert_eq!(wf.shard_progress.unwrap().succeeded, 3);
}

/// A repeat workflow whose fires overlap: under `Forbid` a fire while the last run's nodes are
/// unfinished is skipped; under `Replace` it cancels that run, its nodes with it.
pub async fn concurrency_policies_apply_to_recurring_workflows(store: Arc<dyn JobStore>) {
    use lts_core::ConcurrencyPolicy;
    for policy in [ConcurrencyPolicy::Forbid, ConcurrencyPolicy::Replace] {
        let task = format!("every-{}", policy.as_str());
        let mut spec = workflow(&task, &["a", "b"], &[("a", "b", EdgeOn::Success)]);
        spec.schedule = Schedule::Repeat {
            interval_ms: 1_000,
            count: -1,
            first_fire_ms: Some(NOW),
        };
        spec.concurrency_policy = policy;
        let t0 = NOW + 100_000 * (policy as i64);
        let definition = id(&store.submit(vec![spec], t0).await.unwrap()[0]);
        // Fire 1: its instance, then its nodes; a runs.
        store.claim(claim("g", "w1", 10, t0)).await.unwrap();
        store.claim(claim("g", "w1", 10, t0 + 1)).await.unwrap();
        let running = store.claim(claim("g", "w1", 10, t0 + 2)).await.unwrap();
        assert_eq!(running.len(), 1, "{running:?}");
        let first_run = running[0].job.shard.as_ref().unwrap().of.clone();
        // Fire 2, while the first run is unfinished.
        store.claim(claim("g", "w1", 10, t0 + 1_000)).await.unwrap();
        let first = store
            .get(JobKey::Id(first_run.clone()))
            .await
            .unwrap()
            .unwrap();
        let instances = store
            .list(ListFilter {
                task_id_prefix: Some(format!("{task}~")),
                limit: 100,
                ..ListFilter::default()
            })
            .await
            .unwrap()
            .jobs;
        let instances: Vec<_> = instances
            .into_iter()
            .filter(|j| j.instance_of.as_deref() == Some(definition.as_str()))
            .collect();
        match policy {
            ConcurrencyPolicy::Forbid => {
                assert_eq!(first.state, JobState::Running, "{first:?}");
                assert_eq!(
                    instances.len(),
                    1,
                    "the second fire is skipped: {instances:?}"
                );
            }
            _ => {
                assert_eq!(first.state, JobState::Cancelled, "{first:?}");
                for name in ["a", "b"] {
                    assert_eq!(
                        node(&store, &first, name).await.state,
                        JobState::Cancelled,
                        "{name} of the replaced run"
                    );
                }
                assert_eq!(instances.len(), 2, "{instances:?}");
                // The running node's result is refused.
                let late = store
                    .complete(done(
                        &running[0].job.job_id,
                        &running[0].token,
                        Outcome::Success,
                        t0 + 1_001,
                    ))
                    .await
                    .unwrap();
                assert!(
                    !matches!(late, CompleteOutcome::Accepted { .. }),
                    "{late:?}"
                );
            }
        }
        store
            .cancel(JobKey::Id(definition), t0 + 2_000)
            .await
            .unwrap();
    }
}
