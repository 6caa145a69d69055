//! How a [`Transition`] is written: one guarded update of the job (its state and revision as
//! read; see [`codec::update`]), the job it creates inserted first, its log lines handed to
//! the log writer, its cascade applied job by job. A guard that matches nothing means someone
//! changed the job meanwhile: it is read again and the event applied again, a bounded number
//! of times.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use lts_core::transition::{self, Cascade, Event, FollowUp, Refusal, Transition};
use lts_core::transition::{Related, StoredJob, Write};
use lts_core::{JobState, Shard, ShardProgress, workflow};
use mongodb::bson::{Bson, Document, doc};

use super::MongoStore;
use super::batch;
use super::codec::{self, Read};
use crate::store::work::Work;
use crate::store::{StoreError, StoreResult};

/// How many times an event is applied to a job that keeps changing under it.
pub(super) const ATTEMPTS: usize = 5;

/// Where the first read of a job comes from.
pub(super) enum First {
    /// Read it now.
    Fetch,
    /// As read from the server just now: a refusal stands.
    Fresh(Read),
    /// As this tracker last wrote it (its lease cache): a hint that saves a read. A refusal
    /// or a guard that matches nothing sends it to the server.
    Cached(Read),
}

/// What applying an event to one job came to.
pub(super) enum Applied {
    /// Written (or nothing to write): the transition, and the job as it was read.
    Done {
        /// The job as read.
        before: Read,
        /// The transition written.
        t: Box<Transition>,
        /// The node groups where its cascade queued jobs (workflow nodes).
        woken: Vec<String>,
    },
    /// The event does not apply to the job as read.
    Refused {
        /// The job as read.
        before: Read,
        /// Why.
        refusal: Refusal,
    },
    /// No job matches.
    Missing,
}

impl MongoStore {
    /// Applies the event `event` makes of the job that `filter` finds (or of `first`) at `now`
    /// and writes the transition: the job's guarded update, the job it creates, its log
    /// lines, then its cascade.
    pub(super) async fn apply_to(
        &self,
        filter: &Document,
        first: First,
        event: impl Fn(&StoredJob) -> Event,
        now: i64,
    ) -> StoreResult<Applied> {
        let mut applied = self.apply_job(filter, first, event, now).await?;
        if let Applied::Done { t, woken, .. } = &mut applied
            && let Some(cascade) = &t.cascade
        {
            fail::fail_point!("mongo-between-a-job-and-its-cascade");
            *woken = self.cascade(cascade, now).await?;
        }
        Ok(applied)
    }

    /// [`MongoStore::apply_to`] for the job alone, without the transition's cascade.
    async fn apply_job(
        &self,
        filter: &Document,
        first: First,
        event: impl Fn(&StoredJob) -> Event,
        now: i64,
    ) -> StoreResult<Applied> {
        let mut next = first;
        for _ in 0..ATTEMPTS {
            let (read, cached) = match std::mem::replace(&mut next, First::Fetch) {
                First::Cached(read) => (read, true),
                First::Fresh(read) => (read, false),
                First::Fetch => match self.jobs.find_one(filter.clone()).await? {
                    Some(d) => (codec::read(&d)?, false),
                    None => return Ok(Applied::Missing),
                },
            };
            let t = match transition::apply(&read.stored, event(&read.stored), now, &self.retry) {
                Ok(t) => t,
                Err(_) if cached => continue,
                Err(refusal) => {
                    return Ok(Applied::Refused {
                        before: read,
                        refusal,
                    });
                }
            };
            if self.write(&read, &t).await? {
                return Ok(Applied::Done {
                    before: read,
                    t: Box::new(t),
                    woken: Vec::new(),
                });
            }
        }
        Err(StoreError::Backend(
            "the job kept changing; try again".to_string(),
        ))
    }

    /// Writes `t` over the job as `read`; `false` when the guard matched nothing (or, for a
    /// new job, its task id is taken).
    async fn write(&self, read: &Read, t: &Transition) -> StoreResult<bool> {
        // The job a transition creates goes first: the fire or trigger it stands for happens
        // once, even if this write is lost.
        if let Some(f) = &t.follow_up {
            self.insert_follow_ups(std::slice::from_ref(f)).await?;
        }
        // So do the children a map makes and a reduce step: their ids are the run's, so a
        // write made again inserts none twice (the duplicates are left out).
        if !t.fan_out.is_empty() {
            let docs = t
                .fan_out
                .iter()
                .map(codec::new_doc)
                .collect::<StoreResult<Vec<_>>>()?;
            self.insert_new(docs).await?;
        }
        let written = match &t.write {
            Write::Keep => true,
            Write::Insert => self
                .insert_new(vec![codec::new_doc(&t.job)?])
                .await?
                .is_empty(),
            Write::Update { .. } | Write::Finish { .. } => self.update_one_guarded(read, t).await?,
        };
        if !written {
            return Ok(false);
        }
        if t.job.lease_token.is_none() {
            self.forget_lease(&t.job.job.job_id);
        }
        self.append_log(t.logs.iter().map(codec::log_doc).collect())
            .await;
        Ok(true)
    }

    /// The guarded update of `t` over the job as `read`: whether it matched. Sent with the
    /// concurrent updates of other operations in one command ([`batch::UpdateBatcher`]).
    pub(super) async fn update_one_guarded(
        &self,
        read: &Read,
        t: &Transition,
    ) -> StoreResult<bool> {
        match codec::update(read, &t.job, &t.write, t.feedback.as_ref())? {
            None => Ok(true),
            Some((guard, update)) => {
                self.updates
                    .update(&read.stored.job.job_id, guard, update)
                    .await
            }
        }
    }

    /// Sends guarded updates (guard, update) in as few `update` commands as the server takes;
    /// returns how many matched.
    pub(super) async fn update_batch(
        &self,
        statements: Vec<(Document, Document)>,
    ) -> StoreResult<u64> {
        batch::update_command(&self.db, &self.jobs, &statements).await
    }

    /// Inserts new jobs, with the concurrent inserts of other operations in one command
    /// ([`batch::InsertBatcher`]); returns the positions that hit the dedup index (an
    /// unfinished job has their node group and task id) or another unique key.
    pub(super) async fn insert_new(&self, docs: Vec<Document>) -> StoreResult<Vec<usize>> {
        self.inserts.insert(docs).await
    }

    /// Inserts the jobs that transitions create, with their log lines; returns whether each
    /// was inserted (not when an unfinished job has its task id: that fire already has its
    /// job).
    pub(super) async fn insert_follow_ups(
        &self,
        follow_ups: &[FollowUp],
    ) -> StoreResult<Vec<bool>> {
        let docs = follow_ups
            .iter()
            .map(|f| codec::new_doc(&f.job))
            .collect::<StoreResult<Vec<_>>>()?;
        let taken = self.insert_new(docs).await?;
        let inserted: Vec<bool> = (0..follow_ups.len()).map(|i| !taken.contains(&i)).collect();
        let lines = follow_ups
            .iter()
            .zip(&inserted)
            .filter(|(_, inserted)| **inserted)
            .flat_map(|(f, _)| f.logs.iter().map(codec::log_doc))
            .collect();
        self.append_log(lines).await;
        Ok(inserted)
    }

    /// Applies a transition's work on other jobs: each instance or shard by its own transition,
    /// a workflow node's waiting successors, or the sharded job whose shards all ended — and
    /// the work of those changes in turn, one after another (a node's skip may skip a chain of
    /// 10,000 nodes: a work list, not recursion).
    /// Answers the node groups where it queued jobs (workflow nodes whose predecessors ended).
    pub(super) async fn cascade(&self, cascade: &Cascade, now: i64) -> StoreResult<Vec<String>> {
        let mut work = Work::default();
        work.todo.push_back(cascade.clone());
        while let Some(cascade) = work.todo.pop_front() {
            self.cascade_one(&cascade, now, &mut work).await?;
        }
        Ok(work.woken)
    }

    /// One cascade's work; the cascades of the changes it makes go to `work`.
    async fn cascade_one(&self, cascade: &Cascade, now: i64, work: &mut Work) -> StoreResult<()> {
        let filter = match cascade.related() {
            Related::InstancesOf(definition) => doc! { "instance_of": definition, "done": "" },
            Related::ShardsOf(run) => doc! {
                "_id": { "$gte": Shard::ids_from(run), "$lt": Shard::ids_to(run) },
                "done": "",
            },
            Related::Job(id) => doc! { "_id": id, "done": "" },
            Related::Parent {
                parent,
                run,
                successors,
            } => {
                fail::fail_point!("mongo-between-a-shard-and-its-job");
                if !successors.is_empty() {
                    if self.has_ended(parent).await? {
                        // The workflow ended (a cancel whose cascade a tracker's death cut
                        // short): its nodes go with it, none is judged to run.
                        tracing::warn!(workflow = %parent, "mongodb: cancelling the nodes of a workflow that ended before them");
                        work.todo.push_back(Cascade::CancelShards {
                            parent: parent.to_string(),
                            run: run.to_string(),
                        });
                        return Ok(());
                    }
                    self.judge_successors(run, successors, now, work).await?;
                }
                return self.end_shards(parent, run, now).await;
            }
        };
        let found: Vec<Document> = self.jobs.find(filter).await?.try_collect().await?;
        for d in found {
            let read = codec::read(&d)?;
            let Some(event) = cascade.event_for(&read.stored.job.job_id) else {
                continue;
            };
            let filter = doc! { "_id": &read.stored.job.job_id };
            // A running instance cancelled with its schedule finishes its attempt (refused).
            if let Applied::Done { t, .. } = self
                .apply_job(&filter, First::Fresh(read), |_| event.clone(), now)
                .await?
            {
                work.todo.extend(t.cascade);
            }
        }
        Ok(())
    }

    /// The workflow nodes `indexes` of `run` that wait: each queued or skipped once every
    /// predecessor ended ([`workflow::readiness`]). Two reads (the nodes, then the predecessors
    /// this cascade has not read yet), then the nodes' writes side by side — a root's end that
    /// lets 10,000 successors run is not 10,000 round trips one after another.
    async fn judge_successors(
        &self,
        run: &str,
        indexes: &[u32],
        now: i64,
        work: &mut Work,
    ) -> StoreResult<()> {
        const CHUNK: usize = 1_000;
        const WRITES: usize = 1_000;
        let started = std::time::Instant::now();
        let _log = scopeguard_log(run, indexes.len(), started);
        for chunk in indexes.chunks(CHUNK) {
            let ids: Vec<String> = chunk.iter().map(|&i| Shard::id(run, i)).collect();
            let found: Vec<Document> = self
                .jobs
                .find(doc! { "_id": { "$in": ids }, "state": JobState::Waiting.code() })
                .await?
                .try_collect()
                .await?;
            let waiting: Vec<Read> = found.iter().map(codec::read).collect::<StoreResult<_>>()?;
            let mut to_read: Vec<String> = waiting
                .iter()
                .flat_map(|r| r.stored.job.node.iter().flat_map(|n| &n.needs))
                .map(|need| Shard::id(run, need.index))
                .filter(|id| !work.ended.contains_key(id))
                .collect();
            to_read.sort();
            to_read.dedup();
            let mut running = std::collections::HashSet::new();
            for ids in to_read.chunks(CHUNK) {
                let preds: Vec<Document> = self
                    .jobs
                    .find(doc! { "_id": { "$in": ids } })
                    .await?
                    .try_collect()
                    .await?;
                for d in &preds {
                    let job = codec::job(d)?;
                    if !job.state.is_final() {
                        // Its own end judges its successors.
                        running.insert(job.job_id);
                        continue;
                    }
                    work.remember_ended(job);
                }
            }
            let judged: Vec<(Read, workflow::Verdict)> = waiting
                .into_iter()
                .filter_map(|read| {
                    let needs = read.stored.job.node.as_ref()?.needs.clone();
                    let preds: Vec<Arc<lts_core::Job>> = needs
                        .iter()
                        .map(|n| Shard::id(run, n.index))
                        .filter(|id| !running.contains(id))
                        .filter_map(|id| work.ended.get(&id).cloned())
                        .collect();
                    let refs: Vec<&lts_core::Job> = preds.iter().map(|p| p.as_ref()).collect();
                    let verdict = workflow::readiness(&read.stored.job, &refs)?;
                    Some((read, verdict))
                })
                .collect();
            let writes = futures::stream::iter(judged)
                .map(|(read, verdict)| async move {
                    let filter = doc! {
                        "_id": &read.stored.job.job_id,
                        "state": JobState::Waiting.code(),
                    };
                    let event = |_: &StoredJob| Event::PredecessorsEnded(verdict.clone());
                    self.apply_job(&filter, First::Fresh(read), event, now)
                        .await
                })
                .buffer_unordered(WRITES);
            let applied: Vec<Applied> = writes.try_collect().await?;
            for a in applied {
                // Refused: another predecessor's end judged it first.
                if let Applied::Done { t, .. } = a {
                    if t.job.job.state == JobState::Queued {
                        work.wake(&t.job.job.spec.task_tracker_node_group);
                    }
                    work.todo.extend(t.cascade);
                }
            }
        }
        Ok(())
    }

    /// Whether the job `id` is final (or gone).
    async fn has_ended(&self, id: &str) -> StoreResult<bool> {
        let found = self
            .jobs
            .find_one(doc! { "_id": id })
            .projection(doc! { "state": 1 })
            .await?;
        Ok(found
            .and_then(|d| codec::int(&d, "state"))
            .and_then(JobState::from_code)
            .is_none_or(JobState::is_final))
    }

    /// A shard of `run` ended: once none of the run's shards is unfinished, its sharded job
    /// `parent` ends with their tally. (Two shards ending at once may both find none left:
    /// the job's guarded write lets one of them end it.)
    async fn end_shards(&self, parent: &str, run: &str, now: i64) -> StoreResult<()> {
        // One probe of the `shards_unfinished` index first: the tally reads the whole run.
        // From the highest id down: shards are claimed (and end) lowest id first, and the
        // index entries of the ended ones stay behind as deleted entries until the storage
        // engine cleans its pages, which a probe from the lowest id would walk, each time,
        // over all of them.
        let unfinished = doc! {
            "shard_of": parent,
            "done": "",
            "_id": { "$gte": Shard::ids_from(run), "$lt": Shard::ids_to(run) },
        };
        let probe = self
            .jobs
            .find_one(unfinished)
            .sort(doc! { "shard_of": -1, "done": -1, "_id": -1 })
            .projection(doc! { "_id": 1 })
            .await?;
        if probe.is_some() {
            return Ok(());
        }
        // The last shards' results are written together (one batch), so their ends all find
        // none left at once: they take turns, and those after the one that ended the job see
        // it ended instead of each tallying the whole run again.
        let _turn = self.tally_turns.take(run).await;
        if self.has_ended(parent).await? {
            return Ok(());
        }
        let progress = self.shard_progress(run).await?;
        if progress.unfinished() > 0 {
            return Ok(());
        }
        let filter = doc! { "_id": parent };
        let event = |_: &StoredJob| Event::ShardsEnded(progress);
        // Refused: it ended already (another tracker, a cancel). Its end has no cascade.
        self.apply_job(&filter, First::Fetch, event, now).await?;
        Ok(())
    }

    /// The shards of one run of a sharded job by state, found by their ids' range.
    pub(super) async fn shard_progress(&self, run: &str) -> StoreResult<ShardProgress> {
        let pipeline = vec![
            doc! { "$match": {
                "_id": { "$gte": Shard::ids_from(run), "$lt": Shard::ids_to(run) },
            } },
            doc! { "$group": {
                "_id": { "state": "$state", "handles": "$node_handles" },
                "n": { "$sum": 1 },
            } },
        ];
        let groups: Vec<Document> = self.jobs.aggregate(pipeline).await?.try_collect().await?;
        let mut p = ShardProgress::default();
        for g in groups {
            let n = codec::int(&g, "n")
                .unwrap_or(0)
                .clamp(0, i64::from(u32::MAX)) as u32;
            let key = g.get_document("_id").ok();
            let state = key.and_then(|k| codec::int(k, "state"));
            let handles = key.is_some_and(|k| k.get_bool("handles").unwrap_or(false));
            match state.and_then(JobState::from_code) {
                Some(JobState::Running) => p.running += n,
                Some(JobState::Queued | JobState::Suspended | JobState::Waiting) => p.pending += n,
                Some(JobState::Succeeded) => p.succeeded += n,
                Some(JobState::Skipped) => p.skipped += n,
                Some(JobState::Failed | JobState::Cancelled) | None => {
                    p.failed += n;
                    if handles {
                        p.handled += n;
                    }
                }
            }
        }
        Ok(p)
    }

    /// The waiting nodes of the workflow `parent`'s `run` whose predecessors all ended, judged
    /// (their last predecessor's tracker died between its end and the judging). Reads every
    /// waiting node's predecessors (ids only) and their states (states only), then
    /// [`MongoStore::judge_successors`] of the nodes found ready.
    async fn judge_stranded_nodes(&self, parent: &str, run: &str, now: i64) -> StoreResult<()> {
        const CHUNK: usize = 1_000;
        let mut cursor = self
            .jobs
            .find(doc! {
                "shard_of": parent,
                "done": "",
                "_id": { "$gte": Shard::ids_from(run), "$lt": Shard::ids_to(run) },
                "state": JobState::Waiting.code(),
            })
            .projection(doc! { "shard_index": 1, "node": 1 })
            .await?;
        let mut waiting: Vec<(u32, Vec<String>)> = Vec::new();
        while let Some(d) = cursor.try_next().await? {
            let Some(index) = codec::int(&d, "shard_index") else {
                continue;
            };
            let needs: Vec<String> = codec::text(&d, "node")
                .and_then(|json| serde_json::from_str::<workflow::NodeOf>(json).ok())
                .map(|n| n.needs.iter().map(|p| Shard::id(run, p.index)).collect())
                .unwrap_or_default();
            waiting.push((index as u32, needs));
            if waiting.len() >= workflow::MAX_NODES {
                break;
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<&String> = waiting.iter().flat_map(|(_, needs)| needs).collect();
        ids.sort();
        ids.dedup();
        let mut ended = std::collections::HashSet::new();
        for chunk in ids.chunks(CHUNK) {
            let states: Vec<Document> = self
                .jobs
                .find(doc! { "_id": { "$in": chunk } })
                .projection(doc! { "state": 1 })
                .await?
                .try_collect()
                .await?;
            for d in states {
                let state = codec::int(&d, "state").and_then(JobState::from_code);
                if state.is_some_and(JobState::is_final)
                    && let Some(id) = codec::text(&d, "_id")
                {
                    ended.insert(id.to_string());
                }
            }
        }
        let ready: Vec<u32> = waiting
            .iter()
            .filter(|(_, needs)| needs.iter().all(|id| ended.contains(id)))
            .map(|(index, _)| *index)
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            workflow = %parent,
            nodes = ready.len(),
            "mongodb: judging workflow nodes their last predecessor's end did not reach"
        );
        let mut work = Work::default();
        self.judge_successors(run, &ready, now, &mut work).await?;
        while let Some(cascade) = work.todo.pop_front() {
            self.cascade_one(&cascade, now, &mut work).await?;
        }
        Ok(())
    }

    /// Ends the sharded jobs whose shards all ended but which did not end with their last one
    /// (its tracker died between the two writes): the master's sweep, at most every
    /// [`SHARD_SWEEP_MS`], over jobs that waited at least that long since their last change.
    pub(super) async fn end_stranded_shards(&self, now: i64) -> StoreResult<()> {
        let last = self
            .shard_sweep_at
            .load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) < SHARD_SWEEP_MS {
            return Ok(());
        }
        self.shard_sweep_at
            .store(now, std::sync::atomic::Ordering::Relaxed);
        let waiting: Vec<Document> = self
            .jobs
            .find(doc! {
                "shards_wait": true,
                "updated_at": { "$lt": now.saturating_sub(SHARD_SWEEP_MS) },
            })
            .limit(SHARD_SWEEP_MAX)
            .await?
            .try_collect()
            .await?;
        for d in waiting {
            let read = codec::read(&d)?;
            let job = &read.stored.job;
            if let Some(lts_core::model::MapOf::Parent {
                children,
                reducing: Some(_),
            }) = job.map
            {
                // Its reduce step runs, or ended without its end reaching the job.
                self.end_reduced(&job.job_id, &Shard::run_of(job), children, now)
                    .await?;
                continue;
            }
            if job.waits_for_shards() {
                let run = Shard::run_of(job);
                if read.stored.suspend_requested {
                    self.suspend_stranded_shards(&job.job_id, now).await?;
                } else {
                    self.resume_stranded_shards(&job.job_id, job.updated_at_ms, now)
                        .await?;
                }
                if job.spec.workflow.is_some() {
                    self.judge_stranded_nodes(&job.job_id, &run, now).await?;
                }
                self.end_shards(&job.job_id, &run, now).await?;
            }
        }
        self.cancel_stranded_shards(now).await
    }

    /// Ends the map-reduce job `parent` whose reduce step (shard `children` of `run`) ended but
    /// whose end did not reach it: with the step's outcome and message, as the step's own end
    /// would have (whichever of the two comes first ends it; the other is refused).
    async fn end_reduced(
        &self,
        parent: &str,
        run: &str,
        children: u32,
        now: i64,
    ) -> StoreResult<()> {
        let Some(d) = self
            .jobs
            .find_one(doc! { "_id": Shard::id(run, children) })
            .await?
        else {
            return Ok(());
        };
        let step = codec::read(&d)?.stored.job;
        if let Some(event) = transition::reduce_end(&step) {
            tracing::warn!(job = %parent, "mongodb: ending a map-reduce job whose reduce step's end did not reach it");
            let filter = doc! { "_id": parent };
            self.apply_job(&filter, First::Fetch, |_| event.clone(), now)
                .await?;
        }
        Ok(())
    }

    /// Suspends the unfinished shards (workflow nodes) of the suspended job `parent` that its
    /// suspend did not reach (a tracker died between the two writes): those neither suspended
    /// nor marked to be.
    async fn suspend_stranded_shards(&self, parent: &str, now: i64) -> StoreResult<()> {
        let stranded = doc! {
            "state": { "$ne": JobState::Suspended.code() },
            "suspend_requested": { "$ne": true },
        };
        self.cascade_stranded(parent, stranded, Event::Suspend, now)
            .await
    }

    /// Resumes the suspended shards (workflow nodes) of the job `parent`, not suspended itself,
    /// that its resume did not reach (a tracker died between the two writes): those suspended,
    /// or marked to be, and last changed no later than the job (`parent_changed`), as the
    /// resume's own cascade would have. A shard a user suspended on its own after the job's
    /// last change stays suspended.
    async fn resume_stranded_shards(
        &self,
        parent: &str,
        parent_changed: i64,
        now: i64,
    ) -> StoreResult<()> {
        let stranded = doc! {
            "$or": [
                { "state": JobState::Suspended.code() },
                { "suspend_requested": true },
            ],
            "updated_at": { "$lte": parent_changed },
        };
        self.cascade_stranded(parent, stranded, Event::Resume, now)
            .await
    }

    /// Gives `event` to each unfinished shard of `parent` that matches `stranded` (at most
    /// [`SHARD_SWEEP_MAX`]); a shard read again after a conflict must still match it.
    async fn cascade_stranded(
        &self,
        parent: &str,
        stranded: Document,
        event: Event,
        now: i64,
    ) -> StoreResult<()> {
        let mut filter = doc! { "shard_of": parent, "done": "" };
        filter.extend(stranded.clone());
        let found: Vec<Document> = self
            .jobs
            .find(filter)
            .limit(SHARD_SWEEP_MAX)
            .await?
            .try_collect()
            .await?;
        if !found.is_empty() {
            tracing::warn!(job = %parent, shards = found.len(), ?event, "mongodb: a sweep finishes a cascade a tracker's death cut short");
        }
        for d in found {
            let read = codec::read(&d)?;
            let mut again = doc! { "_id": &read.stored.job.job_id };
            again.extend(stranded.clone());
            self.apply_job(&again, First::Fresh(read), |_| event.clone(), now)
                .await?;
        }
        Ok(())
    }

    /// Cancels the unfinished shards (workflow nodes) whose job ended — cancelled while a
    /// tracker died before its cancel reached them. One distinct scan of the unfinished shards'
    /// jobs, one read of those jobs' states, then each stranded run's cascade.
    async fn cancel_stranded_shards(&self, now: i64) -> StoreResult<()> {
        let parents = self
            .jobs
            .distinct(
                "shard_of",
                doc! { "shard_of": { "$exists": true }, "done": "" },
            )
            .await?;
        if parents.is_empty() {
            return Ok(());
        }
        let parents: Vec<Bson> = parents.into_iter().take(SHARD_SWEEP_MAX as usize).collect();
        let ended: Vec<Document> = self
            .jobs
            .find(doc! { "_id": { "$in": parents }, "done": { "$ne": "" } })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        for d in ended {
            let Some(parent) = codec::text(&d, "_id") else {
                continue;
            };
            let shards: Vec<Document> = self
                .jobs
                .find(doc! { "shard_of": parent, "done": "" })
                .projection(doc! { "_id": 1 })
                .await?
                .try_collect()
                .await?;
            let mut runs: Vec<String> = shards
                .iter()
                .filter_map(|s| codec::text(s, "_id"))
                .map(|id| Shard::run_of_id(id).to_string())
                .collect();
            runs.sort();
            runs.dedup();
            tracing::warn!(job = %parent, shards = shards.len(), "mongodb: cancelling shards their job's end did not reach");
            for run in runs {
                let cascade = Cascade::CancelShards {
                    parent: parent.to_string(),
                    run,
                };
                self.cascade(&cascade, now).await?;
            }
        }
        Ok(())
    }

    /// Cancels the unfinished broadcast shards for the TaskTracker `identity`, which left the
    /// cluster, each by its own transition (with its cascade: its job ends with its last
    /// shard); how many.
    pub(super) async fn cancel_for_gone_target(
        &self,
        identity: &str,
        now: i64,
    ) -> StoreResult<usize> {
        let found: Vec<Document> = self
            .jobs
            .find(doc! { "shard_on": identity, "done": "" })
            .await?
            .try_collect()
            .await?;
        let mut n = 0;
        for d in found {
            let read = codec::read(&d)?;
            let filter = doc! { "_id": &read.stored.job.job_id };
            let gone = Event::Cancel(transition::CancelCause::TargetGone(identity.to_string()));
            if let Applied::Done { .. } = self
                .apply_to(&filter, First::Fresh(read), |_| gone.clone(), now)
                .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Logs (at debug) how long judging `n` nodes of `run` took, when dropped.
fn scopeguard_log(run: &str, n: usize, started: std::time::Instant) -> impl Drop {
    struct Logged(String, usize, std::time::Instant);
    impl Drop for Logged {
        fn drop(&mut self) {
            if self.1 > 0 {
                tracing::debug!(run = %self.0, nodes = self.1, ms = self.2.elapsed().as_millis() as u64, "mongodb: judged workflow nodes");
            }
        }
    }
    Logged(run.to_string(), n, started)
}

/// How often the sweep looks for sharded jobs to end, and how long such a job must have waited.
const SHARD_SWEEP_MS: i64 = 5_000;
/// The most sharded jobs one sweep looks at.
const SHARD_SWEEP_MAX: i64 = 1_000;

impl MongoStore {
    /// A map of the running map-reduce job `job_id`: its children inserted side by side; the
    /// ones whose id a job has already (a map made again) are left out by the unique index.
    pub(super) async fn map_children(
        &self,
        job_id: &str,
        batch: lts_core::transition::MapBatch,
        now: i64,
    ) -> StoreResult<crate::store::MapOutcome> {
        use crate::store::MapOutcome;
        let Some(d) = self
            .jobs
            .find_one(doc! { "_id": job_id, "done": "" })
            .await?
        else {
            return Ok(MapOutcome::Missing);
        };
        let read = codec::read(&d)?;
        let t = match transition::apply(&read.stored, Event::Map(batch), now, &self.retry) {
            Ok(t) => t,
            Err(refusal) => return Ok(MapOutcome::Refused(refusal)),
        };
        let docs = t
            .fan_out
            .iter()
            .map(codec::new_doc)
            .collect::<StoreResult<Vec<_>>>()?;
        let n = docs.len();
        let taken = if docs.is_empty() {
            Vec::new()
        } else {
            self.insert_new(docs).await?
        };
        self.append_log(t.logs.iter().map(codec::log_doc).collect())
            .await;
        Ok(MapOutcome::Accepted {
            node_group: read.stored.job.spec.task_tracker_node_group,
            created: n.saturating_sub(taken.len()) as u32,
        })
    }

    /// The finished children of the map-reduce job whose reduce step `reduce_id` runs with
    /// `token`, in id order after `after`.
    pub(super) async fn children_results(
        &self,
        reduce_id: &str,
        token: &str,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<Result<Vec<crate::store::ChildResult>, transition::Refusal>> {
        let Some(d) = self
            .jobs
            .find_one(doc! { "_id": reduce_id, "done": "" })
            .await?
        else {
            return Ok(Err(transition::Refusal::NotReducing));
        };
        let read = codec::read(&d)?;
        if let Err(refusal) = crate::store::reduce_leased(&read.stored, token) {
            return Ok(Err(refusal));
        }
        let run = Shard::run_of_id(reduce_id);
        let from = Shard::ids_from(run);
        let after = after.filter(|a| *a >= from).unwrap_or_default();
        let found: Vec<Document> = self
            .jobs
            .find(doc! {
                "_id": { "$gte": &from, "$gt": after, "$lt": Shard::ids_to(run) },
                "done": { "$ne": "" },
            })
            .sort(doc! { "_id": 1 })
            .limit(limit as i64)
            .await?
            .try_collect()
            .await?;
        let mut out = Vec::with_capacity(found.len());
        for d in &found {
            out.extend(crate::store::ChildResult::of(&codec::read(d)?.stored.job));
        }
        Ok(Ok(out))
    }
}
