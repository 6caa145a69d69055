//! NodeGroup controller scenarios against a mocked API server and a fake tracker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::Action;
use lts_core::proto::{ListNodesResponse, Node};
use serde_json::Value;

use super::*;
use crate::crd::{NodeGroupStatus, SecretKeyRef};
use crate::fixtures::{FakeTracker, Step, context, finish, nodegroup, status_of};

const NS: &str = "/apis/apps/v1/namespaces/lts";

fn deployment_with_ready(body: &Value, ready: i32) -> Value {
    let mut d: Deployment = serde_json::from_value(body.clone()).unwrap();
    d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
        ready_replicas: Some(ready),
        ..Default::default()
    });
    serde_json::to_value(d).unwrap()
}

/// The built workload (Deployment or StatefulSet) as the API server answers an apply, with
/// `ready` ready pods.
fn applied_with_ready(ng: &NodeGroup, siblings: &[NodeGroup], ready: i32) -> Value {
    let v = validate(ng, siblings).unwrap();
    match build(ng, &v, &BuildConfig::default()).workload {
        Workload::Deployment(d) => deployment_with_ready(&serde_json::to_value(d).unwrap(), ready),
        Workload::StatefulSet(mut s) => {
            s.status = Some(k8s_openapi::api::apps::v1::StatefulSetStatus {
                ready_replicas: Some(ready),
                ..Default::default()
            });
            serde_json::to_value(s).unwrap()
        }
    }
}

/// What follows a TaskTracker group's Deployment apply: its PodDisruptionBudget (applied with
/// more than one pod, else deleted), its NetworkPolicy, its status.
fn task_tracker_rest(name: &str, pdb: bool) -> Vec<Step> {
    let pdb_path = format!("/apis/policy/v1/namespaces/lts/poddisruptionbudgets/{name}");
    vec![
        if pdb {
            Step::echo(Method::PATCH, pdb_path)
        } else {
            Step::error(Method::DELETE, pdb_path, 404, "NotFound")
        },
        Step::echo(
            Method::PATCH,
            format!("/apis/networking.k8s.io/v1/namespaces/lts/networkpolicies/{name}"),
        ),
        Step::status(
            format!("/apis/lts.io/v1alpha1/namespaces/lts/nodegroups/{name}/status"),
            &nodegroup(name, NodeRole::TaskTracker),
        ),
    ]
}

async fn run(ng: NodeGroup, ctx: Arc<Context>) -> Result<Action> {
    tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(ng), ctx))
        .await
        .expect("reconcile made a request the test did not expect")
}

fn nodes() -> ListNodesResponse {
    let node = |role: ProtoRole, id: &str, group: &str, master: bool| Node {
        role: role as i32,
        identity: id.into(),
        node_group: group.into(),
        address: format!("{id}:7070"),
        threads: 4,
        is_master: master,
        ..Node::default()
    };
    ListNodesResponse {
        cluster: "prod".into(),
        nodes: vec![
            node(ProtoRole::JobTracker, "tracker-b", "tracker", false),
            node(ProtoRole::JobTracker, "tracker-a", "tracker", true),
            node(ProtoRole::TaskTracker, "mailers-1", "mailers", false),
        ],
        store_health: "ok".into(),
        ..ListNodesResponse::default()
    }
}

#[tokio::test]
async fn create_applies_deployment_and_service_and_reports_not_ready() {
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let tracker = Arc::new(FakeTracker::default());
    let (ctx, api) = context(std::slice::from_ref(&jt), tracker.clone());
    let verifier = api.run(vec![
        Step::error(
            Method::DELETE,
            format!("{NS}/deployments/tracker"),
            404,
            "NotFound",
        ),
        Step::echo(Method::PATCH, format!("{NS}/statefulsets/tracker")),
        Step::echo(Method::PATCH, "/api/v1/namespaces/lts/services/tracker"),
        Step::error(
            Method::DELETE,
            "/apis/policy/v1/namespaces/lts/poddisruptionbudgets/tracker",
            404,
            "NotFound",
        ),
        Step::echo(
            Method::PATCH,
            "/apis/networking.k8s.io/v1/namespaces/lts/networkpolicies/tracker",
        ),
        Step::status(
            "/apis/lts.io/v1alpha1/namespaces/lts/nodegroups/tracker/status",
            &nodegroup("tracker", NodeRole::JobTracker),
        ),
    ]);
    let action = run(jt.clone(), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(REFRESH_UNSETTLED));
    let calls = finish(verifier).await;
    for c in &calls[1..3] {
        assert!(
            c.uri.contains("fieldManager=lts-operator") && c.uri.contains("force=true"),
            "server-side apply: {}",
            c.uri
        );
    }
    // The embedded store: a StatefulSet, after any Deployment of an older operator is gone.
    assert_eq!(calls[1].body["kind"], "StatefulSet");
    assert_eq!(
        calls[1].body["metadata"]["ownerReferences"][0]["kind"],
        "NodeGroup"
    );
    assert_eq!(calls[2].body["spec"]["ports"][0]["port"], 7070);
    // Default-deny inbound: metrics for anyone, gRPC for the cluster's pods and the operator.
    let np = &calls[4].body;
    assert_eq!(np["kind"], "NetworkPolicy");
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], "metrics");
    assert!(np["spec"]["ingress"][0].get("from").is_none());
    assert_eq!(np["spec"]["ingress"][1]["ports"][0]["port"], "grpc");
    assert_eq!(
        np["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabels"]["lts.io/cluster"],
        "prod"
    );
    assert_eq!(
        np["spec"]["ingress"][1]["from"][1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "operator"
    );
    let status: NodeGroupStatus = status_of(&calls[5]);
    assert_eq!(status.ready_replicas, 0);
    let ready = conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ReplicasNotReady")
    );
    assert!(
        tracker.ops().is_empty(),
        "no tracker pod is up: nothing to ask"
    );
}

#[tokio::test]
async fn update_to_three_replicas_adds_a_pdb_and_reports_members_and_master() {
    let mut jt = nodegroup("tracker", NodeRole::JobTracker);
    jt.spec.replicas = 3;
    jt.spec.zookeeper = Some("zk:2181".into());
    jt.spec.mongo_uri_secret_ref = Some(SecretKeyRef {
        name: "mongo".into(),
        key: "uri".into(),
    });
    jt.metadata.generation = Some(2);
    let tracker = Arc::new(FakeTracker::default());
    *tracker.nodes.lock().unwrap() = Some(nodes());
    let (ctx, api) = context(std::slice::from_ref(&jt), tracker.clone());
    let ready = applied_with_ready(&jt, std::slice::from_ref(&jt), 3);
    let verifier = api.run(vec![
        Step::error(
            Method::DELETE,
            format!("{NS}/statefulsets/tracker"),
            404,
            "NotFound",
        ),
        Step::json(Method::PATCH, format!("{NS}/deployments/tracker"), ready),
        Step::echo(Method::PATCH, "/api/v1/namespaces/lts/services/tracker"),
        Step::echo(
            Method::PATCH,
            "/apis/policy/v1/namespaces/lts/poddisruptionbudgets/tracker",
        ),
        Step::echo(
            Method::PATCH,
            "/apis/networking.k8s.io/v1/namespaces/lts/networkpolicies/tracker",
        ),
        Step::status(
            "/apis/lts.io/v1alpha1/namespaces/lts/nodegroups/tracker/status",
            &nodegroup("tracker", NodeRole::JobTracker),
        ),
    ]);
    assert_eq!(
        run(jt, ctx.clone()).await.unwrap(),
        Action::requeue(REFRESH)
    );
    let calls = finish(verifier).await;
    assert_eq!(calls[1].body["kind"], "Deployment", "MongoDB: a Deployment");
    assert_eq!(calls[1].body["spec"]["replicas"], 3);
    assert_eq!(calls[3].body["spec"]["maxUnavailable"], 1);
    let status: NodeGroupStatus = status_of(&calls[5]);
    assert_eq!(status.ready_replicas, 3);
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.master.as_deref(), Some("tracker-a"));
    let ids: Vec<&str> = status.members.iter().map(|m| m.identity.as_str()).collect();
    assert_eq!(ids, ["tracker-a", "tracker-b"]);
    let r = conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(r.status, "True");
    let d = conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("False", "AsExpected")
    );
    assert_eq!(tracker.ops(), ["nodes"]);
}

#[tokio::test]
async fn task_tracker_members_come_from_its_clusters_trackers() {
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let mut tt = nodegroup("mailers", NodeRole::TaskTracker);
    tt.spec.image = Some("example/mailer:1".into());
    let tracker = Arc::new(FakeTracker::default());
    *tracker.nodes.lock().unwrap() = Some(nodes());
    let groups = [jt, tt.clone()];
    let (ctx, api) = context(&groups, tracker.clone());
    let ready = applied_with_ready(&tt, &groups, 1);
    let mut steps = vec![Step::json(
        Method::PATCH,
        format!("{NS}/deployments/mailers"),
        ready,
    )];
    steps.extend(task_tracker_rest("mailers", false));
    let verifier = api.run(steps);
    run(tt, ctx).await.unwrap();
    let calls = finish(verifier).await;
    // A TaskTracker accepts nothing inbound but metrics scrapes.
    let np = &calls[2].body;
    assert_eq!(np["spec"]["ingress"].as_array().unwrap().len(), 1);
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], "metrics");
    let status: NodeGroupStatus = status_of(&calls[3]);
    assert_eq!(status.members.len(), 1);
    assert_eq!(status.members[0].identity, "mailers-1");
    assert_eq!(status.members[0].threads, Some(4));
    assert_eq!(status.master.as_deref(), Some("tracker-a"));
}

#[tokio::test]
async fn an_autoscaled_group_runs_the_pods_its_queue_calls_for_and_says_so() {
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let mut tt = nodegroup("batch", NodeRole::TaskTracker);
    tt.spec.image = Some("example/batch:1".into());
    tt.spec.autoscaling = Some(crate::crd::AutoscalingSpec {
        min_replicas: 0,
        max_replicas: 5,
        target_backlog_per_replica: 10,
        scale_down_delay_seconds: 300,
        external: false,
    });
    tt = tt.with_status(NodeGroupStatus {
        autoscaling: Some(crate::crd::AutoscalingStatus {
            desired_replicas: 0,
            ..Default::default()
        }),
        ..Default::default()
    });
    let tracker = Arc::new(FakeTracker::default());
    *tracker.stats.lock().unwrap() = lts_core::proto::StatsResponse {
        due: 35,
        running: 0,
        queued: 40,
        ..Default::default()
    };
    let groups = [jt, tt.clone()];
    let (ctx, api) = context(&groups, tracker.clone());
    let mut scaled = tt.clone();
    scaled.spec.replicas = 4;
    let ready = applied_with_ready(&scaled, &groups, 0);
    let mut steps = vec![
        Step::event(),
        Step::json(Method::PATCH, format!("{NS}/deployments/batch"), ready),
    ];
    // Four pods: at most one down at a time.
    steps.extend(task_tracker_rest("batch", true));
    let verifier = api.run(steps);
    let action = run(tt, ctx).await.unwrap();
    assert_eq!(action, Action::requeue(REFRESH_UNSETTLED));
    let calls = finish(verifier).await;
    assert_eq!(calls[0].body["reason"], "Scaled");
    assert_eq!(
        calls[0].body["note"],
        "scaled from 0 to 4 pods: 35 jobs due, 0 running, 10 per pod"
    );
    assert_eq!(
        calls[1].body["spec"]["replicas"], 4,
        "the queue, not spec.replicas"
    );
    let status: NodeGroupStatus = status_of(&calls[4]);
    let a = status.autoscaling.unwrap();
    assert_eq!((a.desired_replicas, a.due, a.running), (4, 35, 0));
    assert!(a.last_scale_time.is_some());
    let r = conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(r.message, "0/4 pods ready");
    assert!(
        tracker.ops().contains(&"stats".to_string()),
        "{:?}",
        tracker.ops()
    );
}

#[tokio::test]
async fn an_externally_scaled_group_leaves_replicas_to_its_hpa() {
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let mut tt = nodegroup("batch", NodeRole::TaskTracker);
    tt.spec.image = Some("example/batch:1".into());
    tt.spec.autoscaling = Some(crate::crd::AutoscalingSpec {
        min_replicas: 0,
        max_replicas: 20,
        target_backlog_per_replica: 10,
        scale_down_delay_seconds: 300,
        external: true,
    });
    let tracker = Arc::new(FakeTracker::default());
    let groups = [jt, tt.clone()];
    let (ctx, api) = context(&groups, tracker.clone());
    // The API server answers with the replicas the HPA set (7), 7 ready.
    let mut answer = applied_with_ready(&tt, &groups, 7);
    answer["spec"]["replicas"] = serde_json::json!(7);
    let mut steps = vec![Step::json(
        Method::PATCH,
        format!("{NS}/deployments/batch"),
        answer,
    )];
    steps.extend(task_tracker_rest("batch", true));
    let verifier = api.run(steps);
    run(tt, ctx).await.unwrap();
    let calls = finish(verifier).await;
    assert!(
        calls[0].body["spec"].get("replicas").is_none(),
        "the operator does not own replicas: {}",
        calls[0].body["spec"]
    );
    let status: NodeGroupStatus = status_of(&calls[3]);
    assert!(status.autoscaling.is_none());
    let r = conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(
        (r.status.as_str(), r.message.as_str()),
        ("True", "7/7 pods ready")
    );
    assert!(
        !tracker.ops().contains(&"stats".to_string()),
        "no decision of its own"
    );
}

#[test]
fn a_changed_job_tracker_calls_its_task_trackers_at_once() {
    let mut jt = nodegroup("tracker", NodeRole::JobTracker);
    jt.metadata.generation = Some(2);
    let mailers = nodegroup("mailers", NodeRole::TaskTracker);
    let mut elsewhere = nodegroup("other", NodeRole::TaskTracker);
    elsewhere.spec.cluster = "staging".into();
    let all = [jt.clone(), mailers.clone(), elsewhere];
    // Generation 2 not yet observed: its cluster's TaskTrackers follow.
    assert_eq!(followers(&jt, &all), ["mailers"]);
    let seen = jt.clone().with_status(NodeGroupStatus {
        observed_generation: Some(2),
        ..Default::default()
    });
    assert!(followers(&seen, &all).is_empty(), "nothing changed");
    assert!(
        followers(&mailers, &all).is_empty(),
        "only a JobTracker leads"
    );
}

#[tokio::test]
async fn sibling_triggers_reach_the_controller_and_drop_when_full() {
    use futures::StreamExt;
    let t = SiblingTriggers::default();
    t.trigger("lts", "mailers");
    let mut stream = Box::pin(t.take().expect("the stream, once"));
    assert!(t.take().is_none());
    let r = stream.next().await.unwrap();
    assert_eq!(
        (r.name.as_str(), r.namespace.as_deref()),
        ("mailers", Some("lts"))
    );
    for i in 0..SIBLING_TRIGGERS + 10 {
        t.trigger("lts", &format!("g{i}"));
    }
    let mut n = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), stream.next()).await {
        n += 1;
    }
    assert_eq!(n, SIBLING_TRIGGERS, "bounded: the rest were dropped");
}

#[tokio::test]
async fn an_invalid_spec_is_a_condition_and_one_event_and_builds_nothing() {
    let mut tt = nodegroup("mailers", NodeRole::TaskTracker);
    tt.spec.worker = Some(crate::crd::WorkerSpec {
        mode: crate::crd::WorkerMode::Sidecar,
        ..Default::default()
    });
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let tracker = Arc::new(FakeTracker::default());
    let groups = [jt, tt.clone()];
    let (ctx, api) = context(&groups, tracker.clone());
    let verifier = api.run(vec![
        Step::event(),
        Step::status(
            "/apis/lts.io/v1alpha1/namespaces/lts/nodegroups/mailers/status",
            &nodegroup("mailers", NodeRole::TaskTracker),
        ),
    ]);
    let action = run(tt.clone(), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(INVALID_RECHECK));
    let calls = finish(verifier).await;
    assert_eq!(calls[0].body["type"], "Warning");
    assert_eq!(calls[0].body["reason"], "InvalidSpec");
    let status: NodeGroupStatus = status_of(&calls[1]);
    let d = conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        d.message.contains("exactly one of http or exec"),
        "{}",
        d.message
    );
    let r = conditions::find(&status.conditions, "Ready").unwrap();
    assert_eq!(r.status, "False");

    // Unchanged on the next reconcile: no new Event, no write.
    let (ctx, api) = context(&groups, tracker);
    let verifier = api.run(vec![]);
    run(tt.with_status(status), ctx).await.unwrap();
    finish(verifier).await;
}

#[tokio::test]
async fn unreachable_trackers_degrade_the_group_but_do_not_fail_the_reconcile() {
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let tracker = Arc::new(FakeTracker::default());
    tracker.unavailable.store(true, Ordering::Relaxed);
    let (ctx, api) = context(std::slice::from_ref(&jt), tracker.clone());
    let ready = applied_with_ready(&jt, std::slice::from_ref(&jt), 1);
    let verifier = api.run(vec![
        Step::error(
            Method::DELETE,
            format!("{NS}/deployments/tracker"),
            404,
            "NotFound",
        ),
        Step::json(Method::PATCH, format!("{NS}/statefulsets/tracker"), ready),
        Step::echo(Method::PATCH, "/api/v1/namespaces/lts/services/tracker"),
        Step::error(
            Method::DELETE,
            "/apis/policy/v1/namespaces/lts/poddisruptionbudgets/tracker",
            404,
            "NotFound",
        ),
        Step::echo(
            Method::PATCH,
            "/apis/networking.k8s.io/v1/namespaces/lts/networkpolicies/tracker",
        ),
        Step::status(
            "/apis/lts.io/v1alpha1/namespaces/lts/nodegroups/tracker/status",
            &nodegroup("tracker", NodeRole::JobTracker),
        ),
    ]);
    assert_eq!(
        run(jt, ctx).await.unwrap(),
        Action::requeue(REFRESH_UNSETTLED)
    );
    let calls = finish(verifier).await;
    let status: NodeGroupStatus = status_of(&calls[5]);
    assert_eq!(status.ready_replicas, 1, "from the StatefulSet's status");
    let d = conditions::find(&status.conditions, "Degraded").unwrap();
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", "TrackersUnreachable")
    );
}

#[tokio::test]
async fn an_api_error_fails_the_reconcile_and_backs_off() {
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let tracker = Arc::new(FakeTracker::default());
    let (ctx, api) = context(std::slice::from_ref(&jt), tracker);
    let verifier = api.run(vec![Step::error(
        Method::DELETE,
        format!("{NS}/deployments/tracker"),
        403,
        "Forbidden",
    )]);
    let err = run(jt.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(err.metric_label(), "kube");
    finish(verifier).await;
    let jt = Arc::new(jt);
    assert_eq!(
        error_policy(jt.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        error_policy(jt, &err, ctx),
        Action::requeue(Duration::from_secs(2))
    );
}

#[test]
fn status_without_master_is_degraded() {
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let mut n = nodes();
    for node in &mut n.nodes {
        node.is_master = false;
    }
    let s = observed_status(&jt, 1, Some(&Ok(n)), Timestamp::now());
    let d = conditions::find(&s.conditions, "Degraded").unwrap();
    assert_eq!(d.reason, "NoMaster");
}

#[test]
fn scaled_to_zero_is_ready() {
    let mut jt = nodegroup("tracker", NodeRole::JobTracker);
    jt.spec.replicas = 0;
    let s = observed_status(&jt, 0, None, Timestamp::now());
    let r = conditions::find(&s.conditions, "Ready").unwrap();
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("True", "ScaledToZero")
    );
}

#[tokio::test]
async fn an_unreadable_object_gets_an_event_and_nothing_else() {
    let tracker = Arc::new(FakeTracker::default());
    let (ctx, api) = context(&[], tracker.clone());
    let verifier = api.run(vec![Step::event()]);
    let broken = DeserializeGuard::<NodeGroup>(Err(kube::core::error_boundary::InvalidObject {
        error: "unknown variant `Leader`, expected `JobTracker` or `TaskTracker`".into(),
        metadata: kube::api::ObjectMeta {
            name: Some("odd".into()),
            namespace: Some("lts".into()),
            ..Default::default()
        },
    }));
    let action = reconcile_guarded(Arc::new(broken), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    let calls = finish(verifier).await;
    assert_eq!(calls[0].body["reason"], "UnreadableObject");
    assert_eq!(calls[0].body["regarding"]["name"], "odd");
    assert_eq!(calls[0].body["regarding"]["kind"], "NodeGroup");
    assert!(tracker.ops().is_empty());
}

#[tokio::test]
async fn a_readable_guarded_object_is_reconciled() {
    let jt = nodegroup("tracker", NodeRole::JobTracker);
    let (ctx, api) = context(std::slice::from_ref(&jt), Arc::new(FakeTracker::default()));
    let verifier = api.run(vec![Step::error(
        Method::DELETE,
        format!("{NS}/deployments/tracker"),
        500,
        "InternalError",
    )]);
    let err = reconcile_guarded(Arc::new(DeserializeGuard(Ok(jt))), ctx)
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "kube");
    finish(verifier).await;
}
