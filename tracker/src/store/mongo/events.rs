//! The events of a job's life other than its claim — submit, result, renewal, hand-back, lost
//! lease, cancel, suspend, resume — each read, applied and written through
//! [`MongoStore::apply_to`], and the answers the store API gives for them.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt, stream};
use lts_core::transition::{
    self, CancelCause, Claim, Event, Handout, LeaseLoss, Refusal, RunReport, StoredJob,
};
use lts_core::{JobSpec, JobState};
use mongodb::bson::{Document, doc};

use super::MongoStore;
use super::codec::{self, Read};
use super::write::{ATTEMPTS, Applied, First};
use crate::store::{
    CancelOutcome, ChangeOutcome, ClaimRequest, CompleteOutcome, Completion, HeldLease, JobKey,
    Lease, LeaseRef, Requeued, StoreError, StoreResult, SubmitOutcome, TriggerOutcome, only_answer,
};

/// Jobs written at once by the paths that write one job at a time (hand-backs, lost leases).
const CONCURRENCY: usize = 16;

/// Which leases are lost.
pub(super) enum Lost<'a> {
    /// Every lease past its expiry.
    Expired,
    /// Every lease of this TaskTracker, which left the cluster.
    Owner(&'a str),
    /// These leases, each if still exactly as the ended stream last wrote it.
    Held(&'a [HeldLease]),
}

/// A user's change of a job.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change {
    /// Suspend it.
    Suspend,
    /// Resume it.
    Resume,
}

fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The unfinished job a key names.
pub(super) fn active_filter(key: &JobKey) -> Document {
    match key {
        JobKey::Id(id) => doc! { "_id": id, "done": "" },
        JobKey::Task {
            node_group,
            task_id,
        } => doc! { "task_tracker_node_group": node_group, "task_id": task_id, "done": "" },
    }
}

fn requeued(t: &transition::Transition) -> Requeued {
    Requeued {
        job_id: t.job.job.job_id.clone(),
        node_group: t.job.job.spec.task_tracker_node_group.clone(),
    }
}

impl MongoStore {
    /// Stores specs as new jobs, all in one insert; those whose task id an unfinished job has
    /// then meet that job (a duplicate, or a replace).
    pub(super) async fn submit_specs(
        &self,
        specs: Vec<JobSpec>,
        now: i64,
    ) -> StoreResult<Vec<SubmitOutcome>> {
        let accepted: Vec<_> = specs
            .iter()
            .map(|spec| transition::accept(spec.clone(), new_id(), now))
            .collect();
        for t in &accepted {
            self.queued_here(&t.job.job);
        }
        let docs = accepted
            .iter()
            .map(|t| codec::new_doc(&t.job))
            .collect::<StoreResult<Vec<_>>>()?;
        let taken = self.insert_new(docs).await?;
        let mut out = Vec::with_capacity(specs.len());
        let mut lines = Vec::new();
        for (i, t) in accepted.iter().enumerate() {
            if taken.contains(&i) {
                out.push(None);
                continue;
            }
            lines.extend(t.logs.iter().map(codec::log_doc));
            let job_id = t.job.job.job_id.clone();
            out.push(Some(SubmitOutcome::Accepted { job_id }));
        }
        self.append_log(lines).await;
        for i in taken {
            out[i] = Some(self.submit_over(&specs[i], now).await?);
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Backend("submit: no answer for a job".into())))
            .collect()
    }

    /// Stores a spec already leased to `req.owner` when the claim applies to it at once (due
    /// now, not recurring): one insert of the job as claimed, with the submit's and the
    /// claim's log lines. Anything else is an ordinary submit.
    pub(super) async fn submit_and_lease(
        &self,
        spec: JobSpec,
        req: ClaimRequest,
    ) -> StoreResult<(SubmitOutcome, Option<Lease>)> {
        let now = req.now_ms;
        let accepted = transition::accept(spec.clone(), new_id(), now);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expiry = now + req.lease_ms;
        let claim = Claim {
            owner: req.owner,
            token: token.clone(),
            expiry_ms: expiry,
            instance_id: new_id(),
            due_by_ms: now,
            unfinished_instances: 0,
            targets: Vec::new(),
        };
        let leased = match transition::apply(&accepted.job, Event::Claim(claim), now, &self.retry) {
            Ok(t) if matches!(t.handout, Handout::Job) && t.follow_up.is_none() => t,
            _ => {
                let out = self.submit_specs(vec![spec], now).await?;
                return Ok((only_answer(out)?, None));
            }
        };
        if !self
            .insert_new(vec![codec::new_doc(&leased.job)?])
            .await?
            .is_empty()
        {
            // Its task id (or its idempotency key) is taken.
            return Ok((self.submit_over(&spec, now).await?, None));
        }
        let lines = accepted.logs.iter().chain(&leased.logs).map(codec::log_doc);
        self.append_log(lines.collect()).await;
        let job_id = leased.job.job.job_id.clone();
        let lease = self.handed_out(leased.job, 0, &token, expiry);
        Ok((SubmitOutcome::Accepted { job_id }, Some(lease)))
    }

    /// A job this tracker is about to queue: claims whose floor it sorts before read the whole
    /// queue again (see `floor`).
    fn queued_here(&self, job: &lts_core::Job) {
        self.floors.queued(
            &job.spec.task_tracker_node_group,
            i64::from(job.spec.priority),
            job.trigger_time_ms,
        );
    }

    /// Submits a spec whose task id an unfinished job had a moment ago.
    async fn submit_over(&self, spec: &JobSpec, now: i64) -> StoreResult<SubmitOutcome> {
        // A submit seen before (its answer lost, say) is answered with its job.
        if let Some(job_id) = self.known_submit(spec).await? {
            return Ok(SubmitOutcome::Duplicate { job_id });
        }
        let key = JobKey::of_spec(spec);
        let filter = active_filter(&key);
        for _ in 0..ATTEMPTS {
            let new_job_id = new_id();
            let event = |_: &StoredJob| Event::Submit {
                spec: Box::new(spec.clone()),
                new_job_id: new_job_id.clone(),
            };
            match self.apply_to(&filter, First::Fetch, event, now).await? {
                Applied::Done { before, t, .. } => {
                    self.queued_here(&t.job.job);
                    let job_id = before.stored.job.job_id;
                    return Ok(SubmitOutcome::Replaced { job_id });
                }
                Applied::Refused { before, refusal } => {
                    let job_id = before.stored.job.job_id;
                    return match refusal {
                        Refusal::Duplicate(_) => Ok(SubmitOutcome::Duplicate { job_id }),
                        other => Err(StoreError::Backend(format!(
                            "submit over {job_id}: {other}"
                        ))),
                    };
                }
                Applied::Missing => {
                    // It finished meanwhile, freeing its task id: the spec is a new job.
                    let t = transition::accept(spec.clone(), new_job_id, now);
                    self.queued_here(&t.job.job);
                    if self
                        .insert_new(vec![codec::new_doc(&t.job)?])
                        .await?
                        .is_empty()
                    {
                        self.append_log(t.logs.iter().map(codec::log_doc).collect())
                            .await;
                        let job_id = t.job.job.job_id;
                        return Ok(SubmitOutcome::Accepted { job_id });
                    }
                    if let Some(job_id) = self.known_submit(spec).await? {
                        return Ok(SubmitOutcome::Duplicate { job_id });
                    }
                }
            }
        }
        Err(StoreError::Backend("submit: dedup did not settle".into()))
    }

    /// The job a submit with `spec`'s idempotency key stored, if one did (within retention).
    async fn known_submit(&self, spec: &JobSpec) -> StoreResult<Option<String>> {
        let Some(key) = &spec.idempotency_key else {
            return Ok(None);
        };
        let found = self
            .jobs
            .find_one(doc! { "submit_key": key })
            .projection(doc! { "_id": 1 })
            .await?;
        Ok(found.and_then(|d| d.get_str("_id").ok().map(str::to_string)))
    }

    /// Records a run's result: one guarded update, without a read when this tracker leased
    /// the job.
    pub(super) async fn complete_run(&self, c: Completion) -> StoreResult<CompleteOutcome> {
        let first = match self.cached_lease(&c.job_id, &c.token) {
            Some(read) => First::Cached(read),
            None => First::Fetch,
        };
        let report = RunReport {
            mapped: c.mapped,
            token: c.token.clone(),
            outcome: c.outcome,
            message: c.message,
            logs: c.logs,
            node: c.node,
        };
        let filter = doc! { "_id": &c.job_id };
        let event = |_: &StoredJob| Event::Complete(report.clone());
        let applied = self.apply_to(&filter, first, event, c.now_ms).await?;
        let reason = match applied {
            Applied::Done { t, woken, .. } => {
                let spec = &t.job.job.spec;
                let disposition = t.disposition.clone().ok_or_else(|| {
                    StoreError::Backend("complete: a result without a disposition".into())
                })?;
                return Ok(CompleteOutcome::Accepted {
                    node_group: spec.task_tracker_node_group.clone(),
                    disposition,
                    feedback_group: t.feedback.as_ref().map(|_| spec.submit_node_group.clone()),
                    submit_node_group: spec.submit_node_group.clone(),
                    woken,
                });
            }
            Applied::Missing
            | Applied::Refused {
                refusal: Refusal::Finished(..),
                ..
            } => "job is no longer active (cancelled or already finished)",
            Applied::Refused { .. } => "lease token does not match: the job was reassigned",
        };
        self.forget_lease_of(&c.job_id, &c.token);
        Ok(CompleteOutcome::Stale {
            reason: reason.into(),
        })
    }

    /// Extends leases to `expiry`: one `update` command for all of them, with a read first
    /// of those this tracker does not keep. Returns the jobs whose lease is lost.
    pub(super) async fn renew_leases(
        &self,
        leases: Vec<LeaseRef>,
        expiry: i64,
    ) -> StoreResult<Vec<String>> {
        let now = lts_core::now_ms();
        let mut lost = Vec::new();
        let mut todo: Vec<(LeaseRef, Option<Read>)> = leases
            .into_iter()
            .map(|l| {
                let cached = self.cached_lease(&l.job_id, &l.token);
                (l, cached)
            })
            .collect();
        for _ in 0..ATTEMPTS {
            if todo.is_empty() {
                return Ok(lost);
            }
            let fetched = self
                .read_jobs(
                    todo.iter()
                        .filter(|(_, r)| r.is_none())
                        .map(|(l, _)| &l.job_id),
                )
                .await?;
            let (mut statements, mut written) = (Vec::new(), Vec::new());
            for (l, cached) in todo.drain(..) {
                let Some(read) = cached.or_else(|| fetched.get(&l.job_id).cloned()) else {
                    lost.push(l.job_id);
                    continue;
                };
                let event = Event::Renew {
                    token: l.token.clone(),
                    expiry_ms: expiry,
                };
                let Ok(t) = transition::apply(&read.stored, event, now, &self.retry) else {
                    self.forget_lease_of(&l.job_id, &l.token);
                    lost.push(l.job_id);
                    continue;
                };
                match codec::update(&read, &t.job, &t.write, None)? {
                    None => self.cache_lease(Read {
                        stored: t.job,
                        rev: read.rev,
                    }),
                    Some(statement) => {
                        statements.push(statement);
                        written.push((
                            l,
                            Read {
                                stored: t.job,
                                rev: read.rev + 1,
                            },
                        ));
                    }
                }
            }
            if statements.is_empty() {
                return Ok(lost);
            }
            let expected = statements.len() as u64;
            if self.update_batch(statements).await? == expected {
                written
                    .into_iter()
                    .for_each(|(_, read)| self.cache_lease(read));
                return Ok(lost);
            }
            // Some changed meanwhile: read them all again (a renewal that went through
            // reads as done).
            todo = written.into_iter().map(|(l, _)| (l, None)).collect();
        }
        Err(StoreError::Backend(
            "renew: the leases kept changing; try again".into(),
        ))
    }

    /// The jobs with these ids, as read now.
    async fn read_jobs(
        &self,
        ids: impl Iterator<Item = &String>,
    ) -> StoreResult<HashMap<String, Read>> {
        let ids: Vec<&String> = ids.collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let docs: Vec<Document> = self
            .jobs
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await?;
        docs.iter()
            .map(|d| codec::read(d).map(|r| (r.stored.job.job_id.clone(), r)))
            .collect()
    }

    /// Hands leased jobs back unrun.
    pub(super) async fn release_leases(
        &self,
        leases: Vec<LeaseRef>,
        now: i64,
    ) -> StoreResult<Vec<Requeued>> {
        let one = |l: LeaseRef| async move {
            let first = match self.cached_lease(&l.job_id, &l.token) {
                Some(read) => First::Cached(read),
                None => First::Fetch,
            };
            let filter = doc! { "_id": &l.job_id };
            let event = |_: &StoredJob| Event::Release(l.token.clone());
            StoreResult::Ok(match self.apply_to(&filter, first, event, now).await? {
                Applied::Done { t, .. } => Some(requeued(&t)),
                Applied::Refused { .. } | Applied::Missing => {
                    self.forget_lease_of(&l.job_id, &l.token);
                    None
                }
            })
        };
        self.each(leases, one).await
    }

    /// Puts the jobs of lost leases back in their queues (or suspends them, if a user asked).
    pub(super) async fn requeue_lost(
        &self,
        lost: Lost<'_>,
        now: i64,
    ) -> StoreResult<Vec<Requeued>> {
        let running = JobState::Running.code();
        // Narrows the search; each job's transition decides.
        let filter = match &lost {
            Lost::Expired => doc! { "state": running, "lease_expiry": { "$lt": now } },
            Lost::Owner(owner) => doc! { "state": running, "lease_owner": *owner },
            Lost::Held([]) => return Ok(Vec::new()),
            Lost::Held(held) => {
                let ids: Vec<&String> = held.iter().map(|l| &l.job_id).collect();
                doc! { "state": running, "_id": { "$in": ids } }
            }
        };
        let held: HashMap<&str, &HeldLease> = match &lost {
            Lost::Held(held) => held.iter().map(|l| (l.job_id.as_str(), l)).collect(),
            _ => HashMap::new(),
        };
        let found: Vec<Document> = self.jobs.find(filter).await?.try_collect().await?;
        let reads = found
            .iter()
            .map(codec::read)
            .collect::<StoreResult<Vec<_>>>()?;
        let loss = |id: &str| match &lost {
            Lost::Expired => LeaseLoss::Expired,
            Lost::Owner(owner) => LeaseLoss::OwnerGone(owner.to_string()),
            Lost::Held(_) => {
                let l = held.get(id);
                LeaseLoss::StreamEnded {
                    token: l.map(|l| l.token.clone()).unwrap_or_default(),
                    expiry_ms: l.map(|l| l.expiry_ms).unwrap_or_default(),
                }
            }
        };
        let one = |read: Read| async move {
            let id = read.stored.job.job_id.clone();
            let filter = doc! { "_id": &id };
            let event = |_: &StoredJob| Event::LeaseLost(loss(&id));
            let applied = self.apply_to(&filter, First::Fresh(read), event, now);
            StoreResult::Ok(match applied.await? {
                Applied::Done { t, .. } => Some(requeued(&t)),
                Applied::Refused { .. } | Applied::Missing => None,
            })
        };
        self.each(reads, one).await
    }

    /// Runs `one` for each item, a few at a time; the items it answered.
    async fn each<I, T, F, Fut>(&self, items: Vec<I>, one: F) -> StoreResult<Vec<T>>
    where
        F: Fn(I) -> Fut,
        Fut: Future<Output = StoreResult<Option<T>>>,
    {
        let answers: Vec<Option<T>> = stream::iter(items)
            .map(one)
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(answers.into_iter().flatten().collect())
    }

    /// Cancels an unfinished job (and the queued instances of a schedule).
    pub(super) async fn cancel_job(&self, key: JobKey, now: i64) -> StoreResult<CancelOutcome> {
        let event = |_: &StoredJob| Event::Cancel(CancelCause::User);
        Ok(
            match self
                .apply_to(&active_filter(&key), First::Fetch, event, now)
                .await?
            {
                Applied::Done { t, .. } => CancelOutcome::Cancelled(t.job.job),
                Applied::Refused { before, .. } => {
                    CancelOutcome::AlreadyFinished(before.stored.job)
                }
                Applied::Missing => match self.find_finished(&key).await? {
                    Some(d) => CancelOutcome::AlreadyFinished(codec::job(&d)?),
                    None => CancelOutcome::NotFound,
                },
            },
        )
    }

    /// Queues an extra run of an unfinished recurring job now: its instance for this instant,
    /// or the one a trigger in the same millisecond created.
    pub(super) async fn trigger_job(&self, key: JobKey, now: i64) -> StoreResult<TriggerOutcome> {
        let instance_id = new_id();
        let event = |_: &StoredJob| Event::Trigger(instance_id.clone());
        let t = match self
            .apply_to(&active_filter(&key), First::Fetch, event, now)
            .await?
        {
            Applied::Done { t, .. } => t,
            Applied::Refused {
                before,
                refusal: Refusal::NotRecurring(_),
            } => return Ok(TriggerOutcome::NotRecurring(before.stored.job)),
            Applied::Refused { before, .. } => {
                return Ok(TriggerOutcome::AlreadyFinished(before.stored.job));
            }
            Applied::Missing => {
                return Ok(match self.find_finished(&key).await? {
                    Some(d) => TriggerOutcome::AlreadyFinished(codec::job(&d)?),
                    None => TriggerOutcome::NotFound,
                });
            }
        };
        let Some(f) = &t.follow_up else {
            return Err(StoreError::Backend("a trigger created no instance".into()));
        };
        let key = JobKey::of_spec(&f.job.job.spec);
        match self.get_job(key.clone()).await? {
            Some(job) => Ok(TriggerOutcome::Triggered(job)),
            None => Err(StoreError::Backend(format!(
                "trigger instance {key} vanished"
            ))),
        }
    }

    /// Suspends or resumes an unfinished job.
    pub(super) async fn change(
        &self,
        key: JobKey,
        change: Change,
        now: i64,
    ) -> StoreResult<ChangeOutcome> {
        let event = |_: &StoredJob| match change {
            Change::Suspend => Event::Suspend,
            Change::Resume => Event::Resume,
        };
        Ok(
            match self
                .apply_to(&active_filter(&key), First::Fetch, event, now)
                .await?
            {
                Applied::Done { t, .. } => ChangeOutcome::Changed(t.job.job),
                Applied::Refused {
                    before,
                    refusal: Refusal::Finished(..),
                } => ChangeOutcome::AlreadyFinished(before.stored.job),
                Applied::Refused { before, .. } => ChangeOutcome::Unchanged(before.stored.job),
                Applied::Missing => match self.find_finished(&key).await? {
                    Some(d) => ChangeOutcome::AlreadyFinished(codec::job(&d)?),
                    None => ChangeOutcome::NotFound,
                },
            },
        )
    }
}
