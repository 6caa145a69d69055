//! Test fixtures: readable builders of resources, a fake tracker, and the mocked API server
//! (`ApiServerVerifier`, after kube-rs/controller-rs): each expected request is checked for
//! method and path, answered like the API server would, and recorded for assertions.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use lts_core::proto::ListNodesResponse;
use lts_core::{JobKey, JobSpec as LtsSpec, JobState};
use lts_worker_sdk::{ClientError, SubmitAnswer};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use crate::crd::{
    ConcurrencyPolicy, Job, JobSpec, JobStatus, MisfirePolicy, NodeGroup, NodeGroupSpec,
    NodeGroupStatus, NodeRole,
};
use crate::job::Watches;
use crate::nodegroup::BuildConfig;
use crate::tracker::{EventStream, JobWatchFilter, TrackerApi, TrackerConnector};
use crate::{Context, job};

/// A NodeGroup `name` of cluster `prod` in namespace `lts`.
pub fn nodegroup(name: &str, role: NodeRole) -> NodeGroup {
    let mut ng = NodeGroup::new(name, NodeGroupSpec::new("prod", role));
    ng.metadata.namespace = Some("lts".into());
    ng.metadata.uid = Some(format!("uid-{name}"));
    ng.metadata.generation = Some(1);
    ng
}

/// A real-time Job `name` in namespace `lts` for node group `mailers`.
pub fn job(name: &str) -> Job {
    let mut j = Job::new(
        name,
        JobSpec {
            cluster: None,
            task_id: None,
            task_tracker_node_group: "mailers".into(),
            submit_node_group: None,
            priority: 5,
            params: BTreeMap::from([("to".to_string(), "a@b.c".to_string())]),
            need_feedback: false,
            max_retries: 2,
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
    );
    j.metadata.namespace = Some("lts".into());
    j.metadata.uid = Some("0b6f3c1e-uid".into());
    j.metadata.generation = Some(1);
    j
}

impl Job {
    /// With the operator's finalizer.
    pub fn finalized(mut self) -> Job {
        self.finalizers_mut().push(job::FINALIZER.to_string());
        self
    }

    /// Being deleted.
    pub fn deleting(mut self) -> Job {
        self.meta_mut().deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        self
    }

    /// With `status`.
    pub fn with_status(mut self, status: JobStatus) -> Job {
        self.status = Some(status);
        self
    }
}

impl NodeGroup {
    /// With `status`.
    pub fn with_status(mut self, status: NodeGroupStatus) -> NodeGroup {
        self.status = Some(status);
        self
    }
}

/// A store holding `objects`.
pub fn store<K>(objects: &[K]) -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = reflector::store();
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(o.clone()));
    }
    reader
}

/// A store of guarded `objects` (all of them valid).
pub fn guarded_store<K>(objects: &[K]) -> Store<DeserializeGuard<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let guarded: Vec<DeserializeGuard<K>> = objects
        .iter()
        .map(|o| DeserializeGuard(Ok(o.clone())))
        .collect();
    store(&guarded)
}

/// An in-memory tracker with the semantics the Job controller relies on.
#[derive(Default)]
pub struct FakeTracker {
    jobs: Mutex<HashMap<String, lts_core::Job>>,
    next: AtomicU64,
    /// Every call, as `op key`.
    pub calls: Mutex<Vec<String>>,
    /// Answer every call with `Unavailable`.
    pub unavailable: AtomicBool,
    /// `get` by task id finds nothing (as if the job were submitted concurrently).
    pub blind_task_lookup: AtomicBool,
    /// A running job stays `Running` when suspended (as on a real tracker: its attempt
    /// finishes first).
    pub attempts_finish_first: AtomicBool,
    /// What `nodes()` answers.
    pub nodes: Mutex<Option<ListNodesResponse>>,
    /// What `stats()` answers.
    pub stats: Mutex<lts_core::proto::StatsResponse>,
}

impl FakeTracker {
    fn record(&self, call: String) -> Result<(), ClientError> {
        self.calls.lock().unwrap().push(call);
        if self.unavailable.load(Ordering::Relaxed) {
            return Err(ClientError::Unavailable("connection refused".into()));
        }
        Ok(())
    }

    /// The calls so far (op names only).
    pub fn ops(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.split(' ').next().unwrap_or_default().to_string())
            .collect()
    }

    /// Every stored job.
    pub fn jobs(&self) -> Vec<lts_core::Job> {
        self.jobs.lock().unwrap().values().cloned().collect()
    }

    /// Stores `job` as it is.
    pub fn put(&self, job: lts_core::Job) {
        self.jobs.lock().unwrap().insert(job.job_id.clone(), job);
    }

    fn find(&self, key: &JobKey) -> Option<lts_core::Job> {
        let jobs = self.jobs.lock().unwrap();
        match key {
            JobKey::Id(id) => jobs.get(id).cloned(),
            JobKey::Task {
                node_group,
                task_id,
            } => jobs
                .values()
                .find(|j| {
                    j.spec.task_tracker_node_group == *node_group && j.spec.task_id == *task_id
                })
                .cloned(),
        }
    }

    fn update(
        &self,
        key: &JobKey,
        f: impl FnOnce(&mut lts_core::Job) -> Result<(), ClientError>,
    ) -> Result<lts_core::Job, ClientError> {
        let found = self
            .find(key)
            .ok_or_else(|| ClientError::NotFound(format!("no job {key}")))?;
        let mut jobs = self.jobs.lock().unwrap();
        let j = jobs.get_mut(&found.job_id).expect("present");
        f(j)?;
        Ok(j.clone())
    }
}

/// A new queued tracker job for `spec`.
pub fn tracker_job(job_id: &str, spec: LtsSpec) -> lts_core::Job {
    lts_core::Job {
        trigger_time_ms: 1_893_456_000_000,
        created_at_ms: 1,
        updated_at_ms: 1,
        ..lts_core::Job::new(job_id, spec)
    }
}

#[async_trait]
impl TrackerApi for FakeTracker {
    async fn submit(&self, spec: LtsSpec) -> Result<SubmitAnswer, ClientError> {
        self.record(format!("submit {}", spec.task_id))?;
        let key = JobKey::of_spec(&spec);
        if let Some(existing) = self.find(&key).filter(|j| !j.state.is_final()) {
            if spec.replace_on_exist {
                self.update(&key, |j| {
                    j.spec = spec;
                    Ok(())
                })?;
                return Ok(SubmitAnswer::Replaced {
                    job_id: existing.job_id,
                });
            }
            return Ok(SubmitAnswer::Duplicate {
                job_id: existing.job_id,
            });
        }
        let id = format!("J{}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        self.put(tracker_job(&id, spec));
        Ok(SubmitAnswer::Accepted { job_id: id })
    }

    async fn get(&self, key: JobKey) -> Result<lts_core::Job, ClientError> {
        self.record(format!("get {key}"))?;
        if matches!(key, JobKey::Task { .. }) && self.blind_task_lookup.load(Ordering::Relaxed) {
            return Err(ClientError::NotFound(format!("no job {key}")));
        }
        self.find(&key)
            .ok_or_else(|| ClientError::NotFound(format!("no job {key}")))
    }

    async fn cancel(&self, key: JobKey) -> Result<lts_core::Job, ClientError> {
        self.record(format!("cancel {key}"))?;
        self.update(&key, |j| {
            if j.state.is_final() {
                return Err(ClientError::FailedPrecondition("finished".into()));
            }
            j.state = JobState::Cancelled;
            Ok(())
        })
    }

    async fn suspend(&self, key: JobKey) -> Result<lts_core::Job, ClientError> {
        self.record(format!("suspend {key}"))?;
        let later = self.attempts_finish_first.load(Ordering::Relaxed);
        self.update(&key, |j| {
            if !(later && j.state == JobState::Running) {
                j.state = JobState::Suspended;
            }
            Ok(())
        })
    }

    async fn resume(&self, key: JobKey) -> Result<lts_core::Job, ClientError> {
        self.record(format!("resume {key}"))?;
        self.update(&key, |j| {
            j.state = JobState::Queued;
            Ok(())
        })
    }

    async fn nodes(&self) -> Result<ListNodesResponse, ClientError> {
        self.record("nodes".into())?;
        Ok(self.nodes.lock().unwrap().clone().unwrap_or_default())
    }

    async fn stats(&self, node_group: &str) -> Result<lts_core::proto::StatsResponse, ClientError> {
        self.record(format!("stats {node_group}"))?;
        Ok(*self.stats.lock().unwrap())
    }

    async fn list(
        &self,
        query: lts_worker_sdk::ListQuery,
    ) -> Result<(Vec<lts_core::Job>, Option<String>), ClientError> {
        self.record("list".into())?;
        let mut jobs: Vec<lts_core::Job> = self
            .jobs()
            .into_iter()
            .filter(|j| {
                query
                    .submit_node_group
                    .as_ref()
                    .is_none_or(|g| *g == j.spec.submit_node_group)
            })
            .collect();
        jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        Ok((jobs, None))
    }

    async fn watch(&self, _filter: JobWatchFilter) -> Result<Option<EventStream>, ClientError> {
        Ok(None)
    }
}

/// Hands out the same tracker for every address, and records the addresses.
pub struct SameTracker(pub Arc<dyn TrackerApi>, pub Mutex<Vec<String>>);

impl TrackerConnector for SameTracker {
    fn tracker(
        &self,
        address: &str,
        _creds: Option<lts_worker_sdk::Credentials>,
    ) -> Result<Arc<dyn TrackerApi>, ClientError> {
        self.1.lock().unwrap().push(address.to_string());
        Ok(self.0.clone())
    }
}

/// One expected request and the answer to it.
pub struct Step {
    method: Method,
    path: String,
    reply: Reply,
}

enum Reply {
    /// Answer with this object.
    Json(Value),
    /// Answer with the request's own body (what a create or a patch returns, roughly).
    Echo,
    /// Answer with an API error.
    Error(u16, &'static str),
    /// Answer with this object, its status taken from the request (a status patch).
    WithStatus(Value),
}

impl Step {
    /// `method path`, answered with `body`.
    pub fn json(method: Method, path: impl Into<String>, body: Value) -> Step {
        Step {
            method,
            path: path.into(),
            reply: Reply::Json(body),
        }
    }

    /// `method path`, answered with the request body.
    pub fn echo(method: Method, path: impl Into<String>) -> Step {
        Step {
            method,
            path: path.into(),
            reply: Reply::Echo,
        }
    }

    /// `method path`, answered with an API error.
    pub fn error(method: Method, path: impl Into<String>, code: u16, reason: &'static str) -> Step {
        Step {
            method,
            path: path.into(),
            reply: Reply::Error(code, reason),
        }
    }

    /// A status patch of `object` at `path`, answered with the patched object.
    pub fn status<K: serde::Serialize>(path: impl Into<String>, object: &K) -> Step {
        Step {
            method: Method::PATCH,
            path: path.into(),
            reply: Reply::WithStatus(serde_json::to_value(object).unwrap()),
        }
    }

    /// The Event the Recorder posts.
    pub fn event() -> Step {
        Step::echo(Method::POST, "/apis/events.k8s.io/v1/namespaces/lts/events")
    }
}

/// One request the mocked API server received.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method.
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// JSON body (`Null` if none).
    pub body: Value,
}

/// The mocked API server.
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// A verifier answering through `handle`.
    pub fn new(handle: Handle<Request<Body>, Response<Body>>) -> ApiServerVerifier {
        ApiServerVerifier(handle)
    }

    /// Answers `steps` in order, asserting each request's method and path; the handle yields
    /// every request once all steps were answered.
    pub fn run(self, steps: Vec<Step>) -> JoinHandle<Vec<Call>> {
        let round = self.round(steps);
        tokio::spawn(async move { round.await.expect("verifier panicked").0 })
    }

    /// [`ApiServerVerifier::run`] that hands the verifier back for the next round on the same
    /// client (a reconcile that makes no request keeps it idle: such a request would hang).
    pub fn round(self, steps: Vec<Step>) -> JoinHandle<(Vec<Call>, ApiServerVerifier)> {
        let mut handle = self.0;
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for (i, step) in steps.into_iter().enumerate() {
                let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                    panic!("step {i}: {} {} never came", step.method, step.path)
                });
                let method = request.method().clone();
                let uri = request.uri().to_string();
                let path = request.uri().path().to_string();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                assert_eq!(
                    (&method, path.as_str()),
                    (&step.method, step.path.as_str()),
                    "step {i}: unexpected request {method} {uri} with {body}"
                );
                let response = match step.reply {
                    Reply::Json(v) => Response::builder()
                        .body(Body::from(serde_json::to_vec(&v).unwrap()))
                        .unwrap(),
                    Reply::Echo => Response::builder().body(Body::from(bytes.to_vec())).unwrap(),
                    Reply::WithStatus(mut object) => {
                        object["status"] = body["status"].clone();
                        Response::builder()
                            .body(Body::from(serde_json::to_vec(&object).unwrap()))
                            .unwrap()
                    }
                    Reply::Error(code, reason) => Response::builder()
                        .status(StatusCode::from_u16(code).unwrap())
                        .body(Body::from(
                            serde_json::to_vec(&json!({
                                "kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": reason, "reason": reason, "code": code
                            }))
                            .unwrap(),
                        ))
                        .unwrap(),
                };
                send.send_response(response);
                calls.push(Call { method, uri, body });
            }
            (calls, ApiServerVerifier(handle))
        })
    }
}

/// A small in-memory API server of Jobs, enough to run the Job controller for real: list;
/// watch (each watch request is answered once there are changes after its resourceVersion,
/// with those changes, and the watcher asks again); status patches (the status is replaced and
/// the change goes to the watches, as the API server does); Events (accepted). Records every
/// request.
#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<FakeApiState>>);

#[derive(Default)]
struct FakeApiState {
    objects: BTreeMap<(String, String), Value>,
    version: u64,
    changes: Vec<(u64, Value)>,
    calls: Vec<Call>,
}

impl FakeApiState {
    fn store(&mut self, mut object: Value) -> Value {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let key = (
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        self.objects.insert(key, object.clone());
        object
    }

    fn changes_after(&self, version: u64) -> Vec<Value> {
        self.changes
            .iter()
            .filter(|(v, _)| *v > version)
            .map(|(_, c)| c.clone())
            .collect()
    }
}

fn json_response(v: &Value) -> Response<Body> {
    Response::builder()
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

impl FakeApi {
    /// Serves `jobs`; the client talks to it.
    pub fn start(jobs: &[Job]) -> (Client, FakeApi) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api = FakeApi::default();
        for j in jobs {
            api.state().store(serde_json::to_value(j).unwrap());
        }
        let state = api.clone();
        tokio::spawn(async move {
            let mut watches: Vec<(u64, mock::SendResponse<Response<Body>>)> = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let uri = request.uri().to_string();
                let path = request.uri().path().to_string();
                let query = request.uri().query().unwrap_or_default().to_string();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let mut st = state.state();
                st.calls.push(Call {
                    method: method.clone(),
                    uri,
                    body: body.clone(),
                });
                let segments: Vec<&str> = path.split('/').collect();
                match (method, segments.as_slice()) {
                    (Method::GET, [.., "jobs"]) if query.contains("watch=true") => {
                        let since = query
                            .split('&')
                            .find_map(|p| p.strip_prefix("resourceVersion="))
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        watches.push((since, send));
                    }
                    (Method::GET, [.., "jobs"]) => {
                        let list = json!({
                            "apiVersion": "lts.io/v1alpha1",
                            "kind": "JobList",
                            "metadata": {"resourceVersion": st.version.to_string()},
                            "items": st.objects.values().cloned().collect::<Vec<_>>(),
                        });
                        send.send_response(json_response(&list));
                    }
                    (Method::PATCH, [.., "namespaces", ns, "jobs", name, "status"]) => {
                        let key = (ns.to_string(), name.to_string());
                        let mut object = st.objects.get(&key).cloned().expect("a known Job");
                        object["status"] = body["status"].clone();
                        let object = st.store(object);
                        let version = st.version;
                        st.changes
                            .push((version, json!({"type": "MODIFIED", "object": object})));
                        send.send_response(json_response(&object));
                    }
                    (Method::POST, [.., "events"]) => send.send_response(json_response(&body)),
                    // The recorder patches an event it published a moment ago (the same
                    // reason again) into a series instead of posting another.
                    (Method::PATCH, [.., "events", _]) => send.send_response(json_response(&body)),
                    (method, _) => panic!("the fake API server does not serve {method} {path}"),
                }
                // Answer the watches that have news (each answer ends its watch request).
                let mut waiting = Vec::new();
                for (since, send) in watches.drain(..) {
                    let news = st.changes_after(since);
                    if news.is_empty() {
                        waiting.push((since, send));
                    } else {
                        let lines: Vec<String> = news.iter().map(Value::to_string).collect();
                        send.send_response(
                            Response::builder()
                                .body(Body::from(lines.join("\n").into_bytes()))
                                .unwrap(),
                        );
                    }
                }
                watches = waiting;
            }
        });
        (Client::new(service, "lts"), api)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeApiState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status patches received so far.
    pub fn status_patches(&self) -> Vec<Call> {
        self.state()
            .calls
            .iter()
            .filter(|c| c.method == Method::PATCH && c.uri.contains("/status?"))
            .cloned()
            .collect()
    }

    /// The Job `namespace/name` as stored now.
    pub fn job(&self, namespace: &str, name: &str) -> Job {
        let st = self.state();
        let v = st.objects[&(namespace.to_string(), name.to_string())].clone();
        serde_json::from_value(v).unwrap()
    }
}

/// Waits for the verifier to have answered every step.
pub async fn finish(handle: JoinHandle<Vec<Call>>) -> Vec<Call> {
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("the API server saw fewer requests than expected")
        .expect("verifier panicked")
}

/// A context on a mocked API server with `nodegroups` in the store and `tracker` behind
/// every address.
pub fn context(
    nodegroups: &[NodeGroup],
    tracker: Arc<dyn TrackerApi>,
) -> (Arc<Context>, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "lts");
    let ctx = Context::new(
        client,
        guarded_store(nodegroups),
        Arc::new(SameTracker(tracker, Mutex::default())),
        BuildConfig::default(),
        Arc::new(Watches::default()),
    );
    (Arc::new(ctx), ApiServerVerifier(handle))
}

/// The status in a server-side-apply status patch.
pub fn status_of<T: serde::de::DeserializeOwned>(call: &Call) -> T {
    assert!(
        call.uri.contains("fieldManager=lts-operator") && call.uri.contains("force=true"),
        "status is written with server-side apply by lts-operator: {}",
        call.uri
    );
    serde_json::from_value(call.body["status"].clone()).expect("status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_crds_stop_the_operator_with_one_clear_message() {
        let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
        let verifier = api.run(vec![
            Step::error(
                Method::GET,
                "/apis/lts.io/v1alpha1/nodegroups",
                404,
                "NotFound",
            ),
            Step::error(Method::GET, "/apis/lts.io/v1alpha1/jobs", 404, "NotFound"),
        ]);
        let err = crate::check_crds(&ctx.client, None).await.unwrap_err();
        finish(verifier).await;
        let msg = err.to_string();
        assert!(
            msg.contains("nodegroups.lts.io, jobs.lts.io are not installed"),
            "{msg}"
        );
        assert!(msg.contains("kubectl apply -f crds/"), "{msg}");
    }

    #[tokio::test]
    async fn installed_crds_pass_the_check() {
        let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
        let empty = |kind: &str| json!({"apiVersion": "meta.k8s.io/v1", "kind": format!("PartialObjectMetadataList"), "metadata": {}, "items": [], "x": kind});
        let verifier = api.run(vec![
            Step::json(Method::GET, "/apis/lts.io/v1alpha1/nodegroups", empty("ng")),
            Step::json(Method::GET, "/apis/lts.io/v1alpha1/jobs", empty("job")),
        ]);
        crate::check_crds(&ctx.client, None).await.unwrap();
        finish(verifier).await;
    }

    #[tokio::test]
    async fn a_namespace_scoped_operator_reads_only_its_namespace() {
        let (ctx, api) = context(&[], Arc::new(FakeTracker::default()));
        let ctx = Arc::try_unwrap(ctx)
            .unwrap_or_else(|_| panic!("context is shared"))
            .watching(Some("team-a".into()));
        let empty = |kind: &str| json!({"apiVersion": "meta.k8s.io/v1", "kind": format!("PartialObjectMetadataList"), "metadata": {}, "items": [], "x": kind});
        let verifier = api.run(vec![
            Step::json(
                Method::GET,
                "/apis/lts.io/v1alpha1/namespaces/team-a/nodegroups",
                empty("ng"),
            ),
            Step::json(
                Method::GET,
                "/apis/lts.io/v1alpha1/namespaces/team-a/jobs",
                empty("job"),
            ),
        ]);
        crate::check_crds(&ctx.client, ctx.watch_namespace.as_deref())
            .await
            .unwrap();
        finish(verifier).await;
        assert_eq!(
            ctx.api::<crate::crd::Job>().resource_url(),
            "/apis/lts.io/v1alpha1/namespaces/team-a/jobs"
        );
        let all = ctx.watching(None);
        assert_eq!(
            all.api::<crate::crd::Job>().resource_url(),
            "/apis/lts.io/v1alpha1/jobs"
        );
    }
}
