//! Reads and housekeeping: one job, listings, the job log, counts, the next due time, pending
//! feedback and its acknowledgement, retention, the master fence and the health check.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use lts_core::{FeedbackItem, Job, JobState, LogEntry};
use mongodb::bson::{DateTime, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};

use super::events::active_filter;
use super::{DUPLICATE_KEY, MongoStore, codec};
use crate::store::{FENCE_STALE_MS, JobKey, ListFilter, Page, Stats, StoreError, StoreResult};

impl MongoStore {
    /// The newest finished job with this key.
    pub(super) async fn find_finished(&self, key: &JobKey) -> StoreResult<Option<Document>> {
        let filter = match key {
            JobKey::Id(id) => doc! { "_id": id, "done": { "$ne": "" } },
            JobKey::Task {
                node_group,
                task_id,
            } => doc! {
                "task_tracker_node_group": node_group,
                "task_id": task_id,
                "done": { "$ne": "" },
            },
        };
        Ok(self
            .jobs
            .find_one(filter)
            .sort(doc! { "finished_at": -1 })
            .await?)
    }

    /// One job, unfinished or finished (by task id: the unfinished one, else the newest
    /// finished one).
    pub(super) async fn get_job(&self, key: JobKey) -> StoreResult<Option<Job>> {
        let found = match &key {
            JobKey::Id(id) => self.jobs.find_one(doc! { "_id": id }).await?,
            JobKey::Task { .. } => match self.jobs.find_one(active_filter(&key)).await? {
                Some(d) => Some(d),
                None => self.find_finished(&key).await?,
            },
        };
        let Some(mut job) = found.as_ref().map(codec::job).transpose()? else {
            return Ok(None);
        };
        // A sharded job that ran: the shards of its current run by state.
        if job.spec.fans_out() && job.shard.is_none() && job.attempt > 0 {
            let run = lts_core::Shard::run_of(&job);
            job.shard_progress = Some(self.shard_progress(&run).await?);
        }
        Ok(Some(job))
    }

    /// One page of the jobs matching a filter, in job-id order.
    pub(super) async fn list_jobs(&self, f: ListFilter) -> StoreResult<Page> {
        let limit = f.limit.clamp(1, 1000);
        let mut filter = doc! {};
        if let Some(after) = &f.after {
            filter.insert("_id", doc! { "$gt": after });
        }
        if let Some(g) = &f.node_group {
            filter.insert("task_tracker_node_group", g);
        }
        if let Some(s) = f.state {
            filter.insert("state", s.code());
        }
        if let Some(p) = &f.task_id_prefix {
            filter.insert("task_id", doc! { "$regex": codec::prefix_regex(p) });
        }
        if let Some(g) = &f.submit_node_group {
            filter.insert("submit_node_group", g);
        }
        if let Some(k) = f.schedule_kind {
            filter.insert("schedule_kind", k.as_str());
        }
        let docs: Vec<Document> = self
            .jobs
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(limit as i64 + 1)
            .await?
            .try_collect()
            .await?;
        let mut jobs = docs
            .iter()
            .map(codec::job)
            .collect::<StoreResult<Vec<_>>>()?;
        let next = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last().map(|j| j.job_id.clone())
        } else {
            None
        };
        Ok(Page { jobs, next })
    }

    /// The log of one job, oldest first (after the lines still queued are written).
    pub(super) async fn job_log(&self, job_id: &str, limit: usize) -> StoreResult<Vec<LogEntry>> {
        self.flush_log().await;
        let docs: Vec<Document> = self
            .log
            .find(doc! { "job_id": job_id })
            .sort(doc! { "time": 1, "_id": 1 })
            .limit(limit as i64)
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().map(codec::log_entry).collect())
    }

    /// Counts per state and of pending feedback.
    pub(super) async fn job_stats(&self, node_group: Option<&str>) -> StoreResult<Stats> {
        let mut stage = doc! {};
        if let Some(g) = node_group {
            stage.insert("task_tracker_node_group", g);
        }
        let groups: Vec<Document> = self
            .jobs
            .aggregate(vec![
                doc! { "$match": stage },
                doc! { "$group": { "_id": "$state", "n": { "$sum": 1 } } },
            ])
            .await?
            .try_collect()
            .await?;
        let mut stats = Stats::default();
        for g in groups {
            let n = codec::int(&g, "n").unwrap_or(0) as u64;
            match codec::int(&g, "_id").and_then(JobState::from_code) {
                // A workflow node waiting for its predecessors is queued behind them.
                Some(JobState::Queued | JobState::Waiting) => stats.queued += n,
                Some(JobState::Running) => stats.running += n,
                Some(JobState::Suspended) => stats.suspended += n,
                Some(JobState::Succeeded) => stats.succeeded += n,
                Some(JobState::Failed) => stats.failed += n,
                Some(JobState::Cancelled | JobState::Skipped) => stats.cancelled += n,
                None => {}
            }
        }
        let pending: Vec<Document> = self
            .jobs
            .find(doc! { "fb_group": { "$exists": true } })
            .projection(doc! { "fb": 1 })
            .await?
            .try_collect()
            .await?;
        stats.pending_feedback = pending
            .iter()
            .map(|d| d.get_array("fb").map(|a| a.len() as u64).unwrap_or(0))
            .sum();
        Ok(stats)
    }

    /// The earliest trigger time of a queued job of the node group.
    pub(super) async fn next_due_time(&self, node_group: &str) -> StoreResult<Option<i64>> {
        let d = self
            .jobs
            .find_one(
                doc! { "task_tracker_node_group": node_group, "state": JobState::Queued.code() },
            )
            .sort(doc! { "trigger_time": 1 })
            .projection(doc! { "trigger_time": 1 })
            .await?;
        Ok(d.and_then(|d| codec::int(&d, "trigger_time")))
    }

    /// How many queued jobs of the node group are due at `now` (the claim index serves it).
    pub(super) async fn due_jobs_count(&self, node_group: &str, now: i64) -> StoreResult<u64> {
        Ok(self
            .jobs
            .count_documents(doc! {
                "task_tracker_node_group": node_group,
                "state": JobState::Queued.code(),
                "trigger_time": { "$lte": now },
            })
            .await?)
    }

    /// Queued, due and running jobs per node group with any, by group name.
    pub(super) async fn group_backlog(
        &self,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<crate::store::GroupBacklog>> {
        let queued = JobState::Queued.code();
        let running = JobState::Running.code();
        let is = |state: i64| doc! { "$cond": [{ "$eq": ["$state", state] }, 1, 0] };
        let groups: Vec<Document> = self
            .jobs
            .aggregate(vec![
                doc! { "$match": { "state": { "$in": [queued, running] } } },
                doc! { "$group": {
                    "_id": "$task_tracker_node_group",
                    "queued": { "$sum": is(queued) },
                    "due": { "$sum": { "$cond": [
                        { "$and": [{ "$eq": ["$state", queued] }, { "$lte": ["$trigger_time", now] }] },
                        1, 0,
                    ] } },
                    "running": { "$sum": is(running) },
                } },
                doc! { "$sort": { "_id": 1 } },
                doc! { "$limit": limit as i64 },
            ])
            .await?
            .try_collect()
            .await?;
        Ok(groups
            .iter()
            .map(|g| crate::store::GroupBacklog {
                node_group: g.get_str("_id").unwrap_or_default().to_string(),
                queued: codec::int(g, "queued").unwrap_or(0) as u64,
                due: codec::int(g, "due").unwrap_or(0) as u64,
                running: codec::int(g, "running").unwrap_or(0) as u64,
            })
            .collect())
    }

    /// Pending feedback of a submit node group, by job after the job of `after`.
    pub(super) async fn feedback_after(
        &self,
        submit_node_group: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<FeedbackItem>> {
        let mut filter = doc! { "fb_group": submit_node_group };
        if let Some(after) = after.and_then(|a| a.split('/').next()) {
            filter.insert("_id", doc! { "$gt": after });
        }
        let docs: Vec<Document> = self
            .jobs
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(limit.max(1) as i64)
            .await?
            .try_collect()
            .await?;
        let mut items = Vec::new();
        for d in &docs {
            items.extend(codec::feedback_items(d)?);
        }
        Ok(items)
    }

    /// Deletes acknowledged feedback (`<job id>/<n>`).
    pub(super) async fn ack(&self, group: &str, ids: Vec<String>) -> StoreResult<()> {
        let mut per_job: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for id in &ids {
            if let Some((job, n)) = id.rsplit_once('/')
                && let Ok(n) = n.parse()
            {
                per_job.entry(job.to_string()).or_default().push(n);
            }
        }
        if per_job.is_empty() {
            return Ok(());
        }
        for (job, ns) in &per_job {
            self.jobs
                .update_one(
                    doc! { "_id": job, "fb_group": group },
                    doc! { "$pull": { "fb": { "n": { "$in": ns } } } },
                )
                .await?;
        }
        let jobs: Vec<&String> = per_job.keys().collect();
        self.jobs
            .update_many(
                doc! { "_id": { "$in": jobs }, "fb_group": group, "fb": { "$size": 0 } },
                doc! { "$unset": { "fb": "", "fb_group": "" } },
            )
            .await?;
        Ok(())
    }

    /// Records that the master of `epoch` acts now, unless a newer master acted lately.
    pub(super) async fn fence_master(
        &self,
        epoch: u64,
        identity: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let r = self
            .db
            .collection::<Document>("fence")
            .update_one(
                doc! {
                    "_id": "master",
                    "$or": [
                        { "epoch": { "$lte": epoch as i64 } },
                        { "at": { "$lt": now - FENCE_STALE_MS } },
                    ],
                },
                doc! { "$set": { "epoch": epoch as i64, "identity": identity, "at": now } },
            )
            .upsert(true)
            .await;
        match r {
            Ok(_) => Ok(true),
            // The upsert found no matching fence and collided with the newer master's.
            Err(e) if matches!(e.kind.as_ref(), ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes finished jobs (whose feedback is acknowledged) and log lines older than
    /// `before`.
    pub(super) async fn retention(&self, before: i64) -> StoreResult<u64> {
        // Feedback nobody took within the retention period goes (a submit group without a
        // subscriber must not grow the store for ever); a job left with none loses its mark.
        let expired = doc! { "finished_at": { "$lt": before } };
        let pulled = self
            .jobs
            .update_many(
                doc! { "fb_group": { "$exists": true }, "fb": { "$elemMatch": expired.clone() } },
                doc! { "$pull": { "fb": expired } },
            )
            .await?;
        if pulled.modified_count > 0 {
            tracing::warn!(
                jobs = pulled.modified_count,
                "feedback nobody acknowledged within the retention period deleted"
            );
            self.jobs
                .update_many(
                    doc! { "fb_group": { "$exists": true }, "fb": { "$size": 0 } },
                    doc! { "$unset": { "fb": "", "fb_group": "" } },
                )
                .await?;
        }
        // Finished jobs whose (recent) feedback is still pending stay until it is taken.
        let jobs = self
            .jobs
            .delete_many(doc! {
                "finished_at": { "$lt": before },
                "done": { "$ne": "" },
                "fb_group": { "$exists": false },
            })
            .await?;
        let lines = self
            .log
            .delete_many(doc! { "at": { "$lt": DateTime::from_millis(before) } })
            .await?;
        Ok(jobs.deleted_count + lines.deleted_count)
    }

    /// Whether the server answers a ping within 2 s.
    pub(super) async fn ping(&self) -> StoreResult<()> {
        match tokio::time::timeout(
            Duration::from_secs(2),
            self.db.run_command(doc! { "ping": 1 }),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(StoreError::Backend(
                "mongodb: no answer to a ping within 2 s".into(),
            )),
        }
    }
}
