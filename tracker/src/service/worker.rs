//! `WorkerService`: the `Work` stream of each TaskTracker — its Hello, credits, pings,
//! renewals, results and hand-backs — and what happens when it ends.

use std::sync::Arc;
use std::time::Duration;

use lts_core::heartbeat::Heartbeat;
use lts_core::proto::{
    self, tracker_message, worker_message, worker_service_server::WorkerService,
};
use lts_core::{convert, now_ms, validate};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{BoxStream, TrackerCore, invalid_argument, store_status};
use crate::admission::first_message;
use crate::auth::Need;
use crate::conn::WorkerConn;
use crate::dispatch::WorkerTx;
use crate::registry::{NodeInfo, Role};
use crate::store::{CompleteOutcome, Completion, HeldLease, LeaseRef};

/// `WorkerService`.
#[derive(Debug, Clone)]
pub struct WorkerApi(pub Arc<TrackerCore>);

fn lease_refs(v: Vec<proto::LeaseRef>) -> Vec<LeaseRef> {
    v.into_iter()
        .map(|l| LeaseRef {
            job_id: l.job_id,
            token: l.lease_token,
        })
        .collect()
}

/// The answer to a map or a results read that the rules refused.
fn refused(r: lts_core::transition::Refusal) -> Status {
    use lts_core::transition::Refusal;
    match r {
        Refusal::MapBatchTooLarge(_) | Refusal::MapItemTooLarge(_) => {
            Status::invalid_argument(r.to_string())
        }
        _ => Status::failed_precondition(r.to_string()),
    }
}

/// Refused unless the job `job_id` exists and `who` may run its node group's jobs (`action`
/// names what for).
async fn require_worker_of(
    core: &TrackerCore,
    who: &crate::auth::Principal,
    job_id: &str,
    action: &str,
) -> Result<(), Status> {
    let job = core
        .store
        .get(crate::store::JobKey::Id(job_id.to_string()))
        .await
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("no job {job_id}")))?;
    who.require(Need::Worker(&job.spec.task_tracker_node_group), action)?;
    Ok(())
}

/// The most results one `MapResults` page holds.
const MAX_RESULTS_PAGE: u32 = 1_000;
/// The most bytes of results (items and messages) one `MapResults` page holds: 1,000 results
/// of 64 KiB items would not fit one gRPC message. At least one result goes out.
const MAX_RESULTS_PAGE_BYTES: usize = 4 << 20;

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type WorkStream = BoxStream<proto::TrackerMessage>;

    async fn map(
        &self,
        request: Request<proto::MapRequest>,
    ) -> Result<Response<proto::MapResponse>, Status> {
        let core = &self.0;
        let who = core.auth.principal(&request)?;
        let r = request.into_inner();
        // Checked here too, before a read: a flood of huge maps costs no store work.
        if r.items.len() > lts_core::model::MAX_MAP_BATCH {
            return Err(refused(lts_core::transition::Refusal::MapBatchTooLarge(
                r.items.len(),
            )));
        }
        require_worker_of(core, &who, &r.job_id, "map this node group's jobs").await?;
        let batch = lts_core::transition::MapBatch {
            token: r.lease_token,
            first_index: r.first_index,
            items: r.items,
        };
        match core
            .store
            .map(&r.job_id, batch, now_ms())
            .await
            .map_err(store_status)?
        {
            crate::store::MapOutcome::Accepted {
                node_group,
                created,
            } => {
                if created > 0 {
                    core.dispatcher.signal_work(&node_group);
                }
                metrics::counter!("lts_map_children_total").increment(u64::from(created));
                Ok(Response::new(proto::MapResponse { created }))
            }
            crate::store::MapOutcome::Refused(r) => Err(refused(r)),
            crate::store::MapOutcome::Missing => Err(Status::failed_precondition(format!(
                "job {} is no longer running",
                r.job_id
            ))),
        }
    }

    async fn map_results(
        &self,
        request: Request<proto::MapResultsRequest>,
    ) -> Result<Response<proto::MapResultsResponse>, Status> {
        let core = &self.0;
        let who = core.auth.principal(&request)?;
        let r = request.into_inner();
        require_worker_of(core, &who, &r.job_id, "read this node group's map results").await?;
        let limit = match r.limit {
            0 => MAX_RESULTS_PAGE,
            n => n.min(MAX_RESULTS_PAGE),
        } as usize;
        let after = (!r.page_token.is_empty()).then_some(r.page_token);
        let results = core
            .store
            .map_results(&r.job_id, &r.lease_token, after, limit)
            .await
            .map_err(store_status)?
            .map_err(refused)?;
        let full = results.len() == limit;
        let mut results = results;
        let mut bytes = 0usize;
        let keep = results
            .iter()
            .take_while(|r| {
                bytes += r.message.len() + r.item.len() + 32;
                bytes <= MAX_RESULTS_PAGE_BYTES
            })
            .count()
            .max(1);
        let cut = keep < results.len();
        results.truncate(keep);
        let next_page_token = match results.last() {
            Some(last) if full || cut => last.job_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(proto::MapResultsResponse {
            results: results
                .into_iter()
                .map(|c| proto::MapResult {
                    index: c.index,
                    state: convert::state_to_proto(c.state) as i32,
                    message: c.message,
                    item: c.item,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn work(
        &self,
        request: Request<Streaming<proto::WorkerMessage>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let core = self.0.clone();
        let (who, presented) = core.auth.authenticate(&request)?;
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let admitted = core.worker_streams.admit()?;
        let mut inbound = request.into_inner();
        let first = first_message(&mut inbound, core.hello_timeout, "Hello").await?;
        let hello = match first {
            Some(proto::WorkerMessage {
                msg: Some(worker_message::Msg::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a Work stream must be Hello",
                ));
            }
        };
        validate::validate_hello(&hello, &core.cluster).map_err(|v| invalid_argument(&v))?;
        who.require(
            Need::Worker(&hello.node_group),
            "run this node group's jobs",
        )?;
        // The identity is this principal's while the stream lives: nobody else can take over
        // its leases or its registration.
        let binding = core.auth.bind(&hello.identity, &who)?;

        // Room for the Welcome, a full window of assignments and their acknowledgements, and
        // pings: only a TaskTracker that stops reading fills it.
        let capacity = (hello.threads.saturating_add(hello.prefetch) as usize)
            .saturating_mul(2)
            .saturating_add(1_024);
        let (tx, rx) = WorkerTx::channel(capacity);
        // Pings go both ways when the TaskTracker takes part: it learns fast that this tracker
        // froze, and this tracker stops handing jobs to (and renewing leases through) a stream
        // whose TaskTracker stopped answering.
        let conn = Arc::new(
            WorkerConn::new(
                (hello.heartbeat_ms > 0)
                    .then(|| Heartbeat::new(core.heartbeat * crate::conn::SILENT_AFTER_PINGS)),
            )
            .waiting_for_start(hello.waits_for_start)
            .labelled(hello.labels.clone().into_iter().collect()),
        );
        // Leases the TaskTracker still holds from an earlier connection: renewing them through
        // this stream moves them here (the old stream's leases no longer match).
        let lost = if hello.running.is_empty() {
            Vec::new()
        } else {
            let expiry = now_ms() + core.dispatcher.lease_ms();
            let lost = core
                .store
                .renew(lease_refs(hello.running.clone()), expiry)
                .await
                .map_err(store_status)?;
            for l in &hello.running {
                if !lost.contains(&l.job_id) {
                    conn.hold(HeldLease {
                        job_id: l.job_id.clone(),
                        token: l.lease_token.clone(),
                        expiry_ms: expiry,
                    });
                }
            }
            lost
        };
        let _ = tx.send(Ok(proto::TrackerMessage {
            msg: Some(tracker_message::Msg::Welcome(proto::Welcome {
                tracker_identity: core.identity.clone(),
                lease_ms: core.dispatcher.lease_ms(),
                lost_job_ids: lost,
                heartbeat_ms: core.heartbeat.as_millis() as u32,
                max_message_bytes: core.max_message_bytes as u64,
            })),
        }));
        let group = hello.node_group.clone();
        let identity = hello.identity.clone();
        // Its window: a job for each thread, and its prefetch queued behind them.
        let window = hello.threads.saturating_add(hello.prefetch);
        let conn_id = core
            .dispatcher
            .connect(&group, &identity, window, tx.clone(), conn.clone());
        if core.register_peers {
            let _ = core
                .registry
                .register(NodeInfo {
                    role: Role::TaskTracker,
                    identity: identity.clone(),
                    node_group: group.clone(),
                    address: peer,
                    threads: hello.threads,
                    version: hello.version.clone(),
                    since_ms: now_ms(),
                })
                .await;
        }
        tracing::info!(node_group = %group, identity = %identity, threads = hello.threads, "TaskTracker connected");

        let ended = CancellationToken::new();
        if conn.heartbeat().is_some() {
            tokio::spawn(ping_loop(
                conn.clone(),
                tx.clone(),
                core.heartbeat,
                ended.clone(),
            ));
        }
        // Renewals and results in flight on this stream at once: past it, the stream is read
        // no further until some are done (back-pressure instead of a task per message).
        let in_flight = Arc::new(tokio::sync::Semaphore::new(
            window.clamp(16, validate::MAX_THREADS + validate::MAX_PREFETCH) as usize,
        ));
        tokio::spawn(async move {
            let _admitted = admitted;
            let _binding = binding;
            let _ended = ended.drop_guard();
            // A token revoked or a grant removed ends the stream within a reload of the rules:
            // its jobs go back to the queue like those of any TaskTracker that left.
            let (auth, granted) = (core.auth.clone(), group.clone());
            let revoked = auth.revoked(
                &presented,
                Need::Worker(&granted),
                "run this node group's jobs",
            );
            tokio::pin!(revoked);
            loop {
                let msg = tokio::select! {
                    m = inbound.next() => m,
                    _ = core.shutdown.cancelled() => break,
                    _ = tx.overflowed().cancelled() => break,
                    status = &mut revoked => {
                        tracing::warn!(node_group = %group, identity = %identity, reason = %status.message(), "TaskTracker's credentials revoked; ending its stream");
                        let _ = tx.send(Err(status));
                        break;
                    }
                };
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    Some(Err(status)) => {
                        // A message over the size limit, or one that does not decode: say why
                        // before the stream ends, so the TaskTracker can mend what it sends.
                        tracing::warn!(node_group = %group, identity = %identity, error = %status.message(), "TaskTracker stream failed");
                        let _ = tx.send(Err(status));
                        break;
                    }
                    None => break,
                };
                match msg.msg {
                    Some(worker_message::Msg::Credit(c)) => {
                        core.dispatcher.add_credits(&group, conn_id, c.n);
                    }
                    Some(worker_message::Msg::Ping(p)) => {
                        let _ = tx.send(Ok(proto::TrackerMessage {
                            msg: Some(tracker_message::Msg::Pong(proto::Pong { nonce: p.nonce })),
                        }));
                    }
                    Some(worker_message::Msg::Pong(p)) => {
                        if let Some(hb) = conn.heartbeat() {
                            hb.answered(p.nonce);
                        }
                    }
                    Some(worker_message::Msg::Renew(r)) => {
                        if !conn.is_alive() {
                            // Read late (this tracker was frozen, or the TaskTracker went
                            // silent): it may have moved its leases to another stream since.
                            tracing::debug!(node_group = %group, identity = %identity, "renewal on a silent stream ignored");
                            continue;
                        }
                        let core = core.clone();
                        let tx = tx.clone();
                        let conn = conn.clone();
                        let Ok(permit) = in_flight.clone().acquire_owned().await else {
                            break;
                        };
                        tokio::spawn(async move {
                            let _permit = permit;
                            let expiry = now_ms() + core.dispatcher.lease_ms();
                            let ids: Vec<String> =
                                r.leases.iter().map(|l| l.job_id.clone()).collect();
                            match core.store.renew(lease_refs(r.leases), expiry).await {
                                Ok(lost) => {
                                    conn.renewed(
                                        ids.iter().filter(|id| !lost.contains(id)),
                                        &lost,
                                        expiry,
                                    );
                                    let _ = tx.send(Ok(proto::TrackerMessage {
                                        msg: Some(tracker_message::Msg::RenewAck(
                                            proto::RenewAck {
                                                lease_deadline_ms: expiry,
                                                lost_job_ids: lost,
                                            },
                                        )),
                                    }));
                                }
                                Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                            }
                        });
                    }
                    Some(worker_message::Msg::Result(r)) => {
                        // Completions run concurrently so that many land in one commit.
                        let core = core.clone();
                        let tx = tx.clone();
                        let conn = conn.clone();
                        let (group, identity) = (group.clone(), identity.clone());
                        let Ok(permit) = in_flight.clone().acquire_owned().await else {
                            break;
                        };
                        tokio::spawn(async move {
                            let _permit = permit;
                            complete(&core, &group, &identity, conn_id, &conn, r, &tx).await;
                        });
                    }
                    Some(worker_message::Msg::Release(r)) => {
                        for l in &r.leases {
                            conn.forget(&l.job_id);
                        }
                        match core.store.release(lease_refs(r.leases), now_ms()).await {
                            Ok(released) => {
                                if !released.is_empty() {
                                    tracing::info!(node_group = %group, identity = %identity, n = released.len(), "jobs handed back");
                                    core.dispatcher.signal_work(&group);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "release failed; leases will expire")
                            }
                        }
                    }
                    Some(worker_message::Msg::Hello(_)) | None => {}
                }
            }
            core.dispatcher.disconnect(&group, conn_id);
            tracing::info!(node_group = %group, identity = %identity, "TaskTracker disconnected");
            orphan_check(core, group, identity, conn).await;
        });
        Ok(Response::new(Box::pin(rx)))
    }
}

/// Pings the TaskTracker of one stream every `every` until the stream ends.
async fn ping_loop(conn: Arc<WorkerConn>, tx: WorkerTx, every: Duration, ended: CancellationToken) {
    let Some(hb) = conn.heartbeat() else { return };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ended.cancelled() => return,
        }
        let ping = proto::TrackerMessage {
            msg: Some(tracker_message::Msg::Ping(proto::Ping { nonce: hb.ping() })),
        };
        if tx.send(Ok(ping)).is_err() {
            return;
        }
    }
}

async fn complete(
    core: &TrackerCore,
    group: &str,
    identity: &str,
    conn_id: u64,
    conn: &WorkerConn,
    r: proto::JobResult,
    tx: &WorkerTx,
) {
    // The thread is free now: hand out its next job while this result is being committed, so
    // the claim and the completion share one grouped commit.
    core.dispatcher.add_credits(group, conn_id, r.credits);
    let job_id = r.job_id.clone();
    let Some(outcome) = convert::outcome_from_proto(r.outcome) else {
        let _ = tx.send(Ok(result_ack(&job_id, false, "outcome is required")));
        return;
    };
    let (mut message, mut logs) = (
        r.message,
        r.logs.into_iter().map(convert::biz_from_proto).collect(),
    );
    core.report_limits.bound(&mut message, &mut logs);
    let completion = Completion {
        job_id: r.job_id,
        token: r.lease_token,
        outcome,
        message,
        logs,
        node: identity.to_string(),
        mapped: r.mapped,
        now_ms: now_ms(),
    };
    let result = core.store.complete(completion).await;
    if result.is_ok() {
        // Recorded or refused as stale: either way this stream no longer holds the lease.
        conn.forget(&job_id);
    }
    let ack = match result {
        Ok(CompleteOutcome::Accepted {
            node_group,
            disposition,
            feedback_group,
            woken,
            ..
        }) => {
            metrics::counter!("lts_jobs_completed_total", "outcome" => outcome.as_str())
                .increment(1);
            core.dispatcher.run_ended(&node_group);
            match disposition {
                lts_core::schedule::Disposition::Retry { at_ms }
                | lts_core::schedule::Disposition::NextFire { at_ms, .. } => {
                    core.dispatcher.signal_work_at(&node_group, at_ms);
                }
                lts_core::schedule::Disposition::Finish(_)
                | lts_core::schedule::Disposition::WaitsForChildren => {}
            }
            if let Some(g) = feedback_group {
                core.feedback.signal(&g);
            }
            // A workflow node's end queued its successors.
            for g in woken {
                core.dispatcher.signal_work(&g);
            }
            result_ack(&job_id, true, "")
        }
        Ok(CompleteOutcome::Stale { reason }) => {
            metrics::counter!("lts_stale_results_total").increment(1);
            tracing::info!(job_id = %job_id, node = %identity, %reason, "stale result refused");
            result_ack(&job_id, false, &reason)
        }
        Err(e) => {
            tracing::warn!(job_id = %job_id, error = %e, "recording a result failed");
            // Not acknowledged: the TaskTracker keeps it and sends it again.
            return;
        }
    };
    let _ = tx.send(Ok(ack));
}

fn result_ack(job_id: &str, accepted: bool, reason: &str) -> proto::TrackerMessage {
    proto::TrackerMessage {
        msg: Some(tracker_message::Msg::ResultAck(proto::ResultAck {
            job_id: job_id.to_string(),
            accepted,
            reason: reason.to_string(),
        })),
    }
}

/// After a TaskTracker's stream ends, wait `orphan_grace`, then put the leases this stream
/// held back in the queue so another TaskTracker runs them — each only if nobody renewed it
/// meanwhile (a TaskTracker that reconnected, here or to another tracker, re-announced it).
async fn orphan_check(
    core: Arc<TrackerCore>,
    group: String,
    identity: String,
    conn: Arc<WorkerConn>,
) {
    tokio::select! {
        _ = tokio::time::sleep(core.orphan_grace) => {}
        _ = core.shutdown.cancelled() => return,
    }
    if core.register_peers && !core.dispatcher.is_connected(&identity) {
        let _ = core.registry.unregister(Role::TaskTracker, &identity).await;
    }
    let held = conn.held();
    if held.is_empty() {
        return;
    }
    match core.store.requeue_held(held, now_ms()).await {
        Ok(requeued) if !requeued.is_empty() => {
            metrics::counter!("lts_jobs_requeued_total", "reason" => "task_tracker_left")
                .increment(requeued.len() as u64);
            tracing::warn!(node_group = %group, identity = %identity, n = requeued.len(), "TaskTracker gone; its jobs are queued again");
            for r in requeued {
                core.dispatcher.signal_work(&r.node_group);
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "requeue of a gone TaskTracker's jobs failed; leases will expire")
        }
    }
}
