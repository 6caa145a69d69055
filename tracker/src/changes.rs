//! The change feed behind `JobService.Watch`: a [`JobStore`] decorator that announces every
//! job a store write touched, and the watch loop that turns announcements into `JobChange`
//! messages for one subscriber.
//!
//! Announcements are cheap hints (job id, and the node groups where the write knew them), sent
//! on a broadcast channel; with no watcher nothing else happens. A watcher drops hints whose
//! known groups do not match its filter, gathers the rest for a few milliseconds (a job
//! changed twice in that window is read once) and reads the jobs back from the store, so what
//! it sends is always the stored state. A watcher that falls behind the channel gets a
//! `resync` marker instead of silently missing changes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lts_core::{FeedbackItem, Job, JobKey, JobSpec, LogEntry, convert, proto};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::store::{
    CancelOutcome, ChangeOutcome, ClaimRequest, CompleteOutcome, Completion, HeldLease, JobStore,
    Lease, LeaseRef, ListFilter, Page, Requeued, Stats, StoreResult, SubmitOutcome, TriggerOutcome,
};

/// How many announcement batches a slow watcher may fall behind before it must resync.
const CHANNEL_CAPACITY: usize = 4096;
/// How long a watcher gathers hints before reading the jobs back.
const GATHER: Duration = Duration::from_millis(5);

/// One job touched by a store write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeHint {
    /// The job.
    pub job_id: String,
    /// Its TaskTracker node group, where the write knew it.
    pub node_group: Option<String>,
    /// Its submitting JobClient node group, where the write knew it.
    pub submit_node_group: Option<String>,
}

impl ChangeHint {
    fn of_job(job: &Job) -> ChangeHint {
        ChangeHint {
            job_id: job.job_id.clone(),
            node_group: Some(job.spec.task_tracker_node_group.clone()),
            submit_node_group: Some(job.spec.submit_node_group.clone()),
        }
    }

    fn of_requeued(r: &Requeued) -> ChangeHint {
        ChangeHint {
            job_id: r.job_id.clone(),
            node_group: Some(r.node_group.clone()),
            submit_node_group: None,
        }
    }
}

/// What a watcher wants to see; empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Only this TaskTracker node group.
    pub node_group: Option<String>,
    /// Only jobs submitted by this JobClient node group.
    pub submit_node_group: Option<String>,
    /// Only task ids starting with this.
    pub task_id_prefix: Option<String>,
}

impl WatchFilter {
    /// From the wire request (empty strings match anything).
    pub fn from_proto(r: proto::WatchJobsRequest) -> WatchFilter {
        let opt = |s: String| (!s.is_empty()).then_some(s);
        WatchFilter {
            node_group: opt(r.task_tracker_node_group),
            submit_node_group: opt(r.submit_node_group),
            task_id_prefix: opt(r.task_id_prefix),
        }
    }

    /// Whether a hint may concern a matching job (unknown groups may).
    fn may_match(&self, h: &ChangeHint) -> bool {
        let fits = |want: &Option<String>, known: &Option<String>| match (want, known) {
            (Some(w), Some(k)) => w == k,
            _ => true,
        };
        fits(&self.node_group, &h.node_group) && fits(&self.submit_node_group, &h.submit_node_group)
    }

    /// Whether a stored job matches.
    pub fn matches(&self, job: &Job) -> bool {
        self.node_group
            .as_ref()
            .is_none_or(|g| *g == job.spec.task_tracker_node_group)
            && self
                .submit_node_group
                .as_ref()
                .is_none_or(|g| *g == job.spec.submit_node_group)
            && self
                .task_id_prefix
                .as_ref()
                .is_none_or(|p| job.spec.task_id.starts_with(p.as_str()))
    }
}

/// A [`JobStore`] that announces the jobs its writes touch. Reads pass straight through.
pub struct ChangeFeed {
    inner: Arc<dyn JobStore>,
    tx: broadcast::Sender<Arc<Vec<ChangeHint>>>,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("watchers", &self.tx.receiver_count())
            .finish_non_exhaustive()
    }
}

impl ChangeFeed {
    /// Wraps a store.
    pub fn new(inner: Arc<dyn JobStore>) -> Arc<ChangeFeed> {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        Arc::new(ChangeFeed { inner, tx })
    }

    /// A new subscription to the hints.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<ChangeHint>>> {
        self.tx.subscribe()
    }

    fn announce(&self, hints: impl FnOnce() -> Vec<ChangeHint>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let hints = hints();
        if !hints.is_empty() {
            let _ = self.tx.send(Arc::new(hints));
        }
    }

    /// Streams the changes matching `filter` into `out` until the receiver goes away or
    /// `stop` fires. Starts with a resync marker.
    pub async fn watch(
        self: Arc<Self>,
        filter: WatchFilter,
        out: mpsc::Sender<Result<proto::JobChange, tonic::Status>>,
        stop: CancellationToken,
    ) {
        let mut rx = self.subscribe();
        let resync = proto::JobChange {
            job: None,
            resync: true,
        };
        if out.send(Ok(resync.clone())).await.is_err() {
            return;
        }
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                _ = out.closed() => return,
                r = rx.recv() => r,
            };
            let mut ids: Vec<String> = Vec::new();
            let mut seen = HashSet::new();
            let mut lagged = false;
            let mut take = |r: Result<Arc<Vec<ChangeHint>>, broadcast::error::RecvError>,
                            ids: &mut Vec<String>|
             -> bool {
                match r {
                    Ok(batch) => {
                        for h in batch.iter().filter(|h| filter.may_match(h)) {
                            if seen.insert(h.job_id.clone()) {
                                ids.push(h.job_id.clone());
                            }
                        }
                        true
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a job watcher fell behind; resyncing it");
                        lagged = true;
                        true
                    }
                    Err(broadcast::error::RecvError::Closed) => false,
                }
            };
            if !take(first, &mut ids) {
                return;
            }
            let until = tokio::time::Instant::now() + GATHER;
            while let Ok(r) = tokio::time::timeout_at(until, rx.recv()).await {
                if !take(r, &mut ids) {
                    break;
                }
            }
            if lagged && out.send(Ok(resync.clone())).await.is_err() {
                return;
            }
            for id in ids {
                match self.inner.get(JobKey::Id(id.clone())).await {
                    Ok(Some(job)) if filter.matches(&job) => {
                        let change = proto::JobChange {
                            job: Some(convert::job_to_proto(&job)),
                            resync: false,
                        };
                        if out.send(Ok(change)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // The watcher cannot know what it missed: tell it to re-read.
                        tracing::warn!(job_id = %id, error = %e, "reading a changed job failed");
                        if out.send(Ok(resync.clone())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl JobStore for ChangeFeed {
    async fn submit(&self, jobs: Vec<JobSpec>, now_ms: i64) -> StoreResult<Vec<SubmitOutcome>> {
        let groups: Vec<(String, String)> = if self.tx.receiver_count() > 0 {
            jobs.iter()
                .map(|s| {
                    (
                        s.task_tracker_node_group.clone(),
                        s.submit_node_group.clone(),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let out = self.inner.submit(jobs, now_ms).await?;
        self.announce(|| {
            out.iter()
                .zip(groups)
                .filter_map(|(o, (g, s))| match o {
                    SubmitOutcome::Accepted { job_id } | SubmitOutcome::Replaced { job_id } => {
                        Some(ChangeHint {
                            job_id: job_id.clone(),
                            node_group: Some(g),
                            submit_node_group: Some(s),
                        })
                    }
                    SubmitOutcome::Duplicate { .. } => None,
                })
                .collect()
        });
        Ok(out)
    }

    async fn submit_leased(
        &self,
        spec: JobSpec,
        claim: ClaimRequest,
    ) -> StoreResult<(SubmitOutcome, Option<Lease>)> {
        let (g, s) = (
            spec.task_tracker_node_group.clone(),
            spec.submit_node_group.clone(),
        );
        let (out, lease) = self.inner.submit_leased(spec, claim).await?;
        if let SubmitOutcome::Accepted { job_id } | SubmitOutcome::Replaced { job_id } = &out {
            self.announce(|| {
                vec![ChangeHint {
                    job_id: job_id.clone(),
                    node_group: Some(g),
                    submit_node_group: Some(s),
                }]
            });
        }
        Ok((out, lease))
    }

    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Lease>> {
        let leases = self.inner.claim(req).await?;
        self.announce(|| leases.iter().map(|l| ChangeHint::of_job(&l.job)).collect());
        Ok(leases)
    }

    async fn renew(&self, leases: Vec<LeaseRef>, expiry_ms: i64) -> StoreResult<Vec<String>> {
        self.inner.renew(leases, expiry_ms).await
    }

    async fn running_count(&self, node_group: &str, most: u32) -> StoreResult<u32> {
        self.inner.running_count(node_group, most).await
    }

    fn claim_rounds(&self) -> usize {
        self.inner.claim_rounds()
    }

    async fn broadcast_targets(&self, before_ms: i64) -> StoreResult<Vec<String>> {
        self.inner.broadcast_targets(before_ms).await
    }

    async fn target_gone(&self, identity: &str, now_ms: i64) -> StoreResult<usize> {
        self.inner.target_gone(identity, now_ms).await
    }

    async fn map(
        &self,
        job_id: &str,
        batch: lts_core::transition::MapBatch,
        now_ms: i64,
    ) -> StoreResult<crate::store::MapOutcome> {
        self.inner.map(job_id, batch, now_ms).await
    }

    async fn map_results(
        &self,
        reduce_id: &str,
        token: &str,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<Result<Vec<crate::store::ChildResult>, lts_core::transition::Refusal>> {
        self.inner.map_results(reduce_id, token, after, limit).await
    }

    async fn complete(&self, completion: Completion) -> StoreResult<CompleteOutcome> {
        let job_id = completion.job_id.clone();
        let out = self.inner.complete(completion).await?;
        if let CompleteOutcome::Accepted {
            node_group,
            submit_node_group,
            ..
        } = &out
        {
            self.announce(|| {
                vec![ChangeHint {
                    job_id,
                    node_group: Some(node_group.clone()),
                    submit_node_group: Some(submit_node_group.clone()),
                }]
            });
        }
        Ok(out)
    }

    async fn release(&self, leases: Vec<LeaseRef>, now_ms: i64) -> StoreResult<Vec<Requeued>> {
        let out = self.inner.release(leases, now_ms).await?;
        self.announce(|| out.iter().map(ChangeHint::of_requeued).collect());
        Ok(out)
    }

    async fn requeue_expired(&self, now_ms: i64) -> StoreResult<Vec<Requeued>> {
        let out = self.inner.requeue_expired(now_ms).await?;
        self.announce(|| out.iter().map(ChangeHint::of_requeued).collect());
        Ok(out)
    }

    async fn requeue_owner(&self, owner: &str, now_ms: i64) -> StoreResult<Vec<Requeued>> {
        let out = self.inner.requeue_owner(owner, now_ms).await?;
        self.announce(|| out.iter().map(ChangeHint::of_requeued).collect());
        Ok(out)
    }

    async fn requeue_held(
        &self,
        leases: Vec<HeldLease>,
        now_ms: i64,
    ) -> StoreResult<Vec<Requeued>> {
        let out = self.inner.requeue_held(leases, now_ms).await?;
        self.announce(|| out.iter().map(ChangeHint::of_requeued).collect());
        Ok(out)
    }

    async fn cancel(&self, key: JobKey, now_ms: i64) -> StoreResult<CancelOutcome> {
        let out = self.inner.cancel(key, now_ms).await?;
        if let CancelOutcome::Cancelled(job) = &out {
            self.announce(|| vec![ChangeHint::of_job(job)]);
        }
        Ok(out)
    }

    async fn suspend(&self, key: JobKey, now_ms: i64) -> StoreResult<ChangeOutcome> {
        let out = self.inner.suspend(key, now_ms).await?;
        if let ChangeOutcome::Changed(job) = &out {
            self.announce(|| vec![ChangeHint::of_job(job)]);
        }
        Ok(out)
    }

    async fn resume(&self, key: JobKey, now_ms: i64) -> StoreResult<ChangeOutcome> {
        let out = self.inner.resume(key, now_ms).await?;
        if let ChangeOutcome::Changed(job) = &out {
            self.announce(|| vec![ChangeHint::of_job(job)]);
        }
        Ok(out)
    }

    async fn trigger(&self, key: JobKey, now_ms: i64) -> StoreResult<TriggerOutcome> {
        let out = self.inner.trigger(key, now_ms).await?;
        if let TriggerOutcome::Triggered(job) = &out {
            self.announce(|| vec![ChangeHint::of_job(job)]);
        }
        Ok(out)
    }

    async fn get(&self, key: JobKey) -> StoreResult<Option<Job>> {
        self.inner.get(key).await
    }

    async fn list(&self, filter: ListFilter) -> StoreResult<Page> {
        self.inner.list(filter).await
    }

    async fn log(&self, job_id: &str, limit: usize) -> StoreResult<Vec<LogEntry>> {
        self.inner.log(job_id, limit).await
    }

    async fn stats(&self, node_group: Option<&str>) -> StoreResult<Stats> {
        self.inner.stats(node_group).await
    }

    async fn next_due(&self, node_group: &str) -> StoreResult<Option<i64>> {
        self.inner.next_due(node_group).await
    }

    async fn due_count(&self, node_group: &str, now: i64) -> StoreResult<u64> {
        self.inner.due_count(node_group, now).await
    }

    async fn backlog(
        &self,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<crate::store::GroupBacklog>> {
        self.inner.backlog(now, limit).await
    }

    async fn pending_feedback(
        &self,
        submit_node_group: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<FeedbackItem>> {
        self.inner
            .pending_feedback(submit_node_group, after, limit)
            .await
    }

    async fn ack_feedback(
        &self,
        submit_node_group: &str,
        feedback_ids: Vec<String>,
    ) -> StoreResult<()> {
        self.inner
            .ack_feedback(submit_node_group, feedback_ids)
            .await
    }

    async fn enforce_retention(&self, before_ms: i64) -> StoreResult<u64> {
        self.inner.enforce_retention(before_ms).await
    }

    async fn fence(&self, epoch: u64, identity: &str, now_ms: i64) -> StoreResult<bool> {
        self.inner.fence(epoch, identity, now_ms).await
    }

    async fn health(&self) -> StoreResult<()> {
        self.inner.health().await
    }

    fn round_trips(&self) -> Option<u64> {
        self.inner.round_trips()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(id: &str, g: Option<&str>, s: Option<&str>) -> ChangeHint {
        ChangeHint {
            job_id: id.into(),
            node_group: g.map(Into::into),
            submit_node_group: s.map(Into::into),
        }
    }

    #[test]
    fn hints_with_unknown_groups_may_match() {
        let f = WatchFilter {
            submit_node_group: Some("op".into()),
            ..Default::default()
        };
        assert!(f.may_match(&hint("a", Some("g"), Some("op"))));
        assert!(f.may_match(&hint("a", Some("g"), None)));
        assert!(!f.may_match(&hint("a", Some("g"), Some("other"))));
        let mut spec = JobSpec::new("k8s-1", "g");
        spec.submit_node_group = "op".into();
        let job = Job::new("a", spec);
        assert!(f.matches(&job));
        let f = WatchFilter {
            task_id_prefix: Some("k8s-".into()),
            node_group: Some("h".into()),
            ..Default::default()
        };
        assert!(!f.matches(&job));
    }
}
