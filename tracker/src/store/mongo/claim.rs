//! Claims: the best due jobs of a node group, leased to one TaskTracker in one batch.
//!
//! One `find` reads the candidates; [`transition::apply`] decides what a claim does to each
//! (leases it, fires an instance of it, skips a missed fire, finishes a schedule); the leases
//! go to the server as one `update` command, each statement guarded by its job's state and
//! revision as read, so that a job another tracker took (or a user changed) meanwhile is left
//! alone. The instances of fires are inserted before their definitions move on. Claims of one
//! node group from one tracker take turns; a tracker that lost jobs to another one spreads
//! its next claims over a wider window of the best jobs for a while.

use std::collections::HashSet;

use futures::TryStreamExt;
use futures::future::try_join_all;
use lts_core::JobState;
use lts_core::schedule::fires_overlapping_instances;
use lts_core::transition::{self, Cascade, Claim, Event, Handout, Transition};
use mongodb::bson::{Bson, Document, doc};

use super::MongoStore;
use super::codec::{self, Read};
use crate::store::{ClaimRequest, Lease, LeaseRef, StoreResult};

/// How much wider than asked a contended claim looks for candidates.
const SPREAD: usize = 4;
/// The widest window of candidates a claim reads.
const MAX_WINDOW: usize = 2_048;
/// How long after losing jobs to another tracker a node group's claims stay spread out.
const CONTENDED_FOR_MS: i64 = 2_000;
/// Node groups whose lost races are remembered at once (the stale ones go first).
const MAX_GROUPS: usize = 10_000;

/// A candidate and what the claim does to it.
struct Claimed {
    read: Read,
    t: Transition,
}

impl MongoStore {
    /// The jobs, among the parents of the shards in `found`, that ended or are suspended: one
    /// read, and none when no candidate is a shard. Their cascades normally reach their queued
    /// shards first; only a tracker killed between the two writes leaves such shards queued.
    async fn held_parents(&self, found: &[Document]) -> StoreResult<HashSet<String>> {
        let parents: HashSet<&str> = found
            .iter()
            .filter_map(|d| d.get_str("shard_of").ok())
            .collect();
        if parents.is_empty() {
            return Ok(HashSet::new());
        }
        let held: Vec<Document> = self
            .jobs
            .find(doc! {
                "_id": { "$in": parents.into_iter().collect::<Vec<_>>() },
                "$or": [ { "done": { "$ne": "" } }, { "suspend_requested": true } ],
            })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        if !held.is_empty() {
            tracing::debug!(
                jobs = held.len(),
                "mongodb: a claim leaves alone the queued shards of ended or suspended jobs"
            );
        }
        Ok(held
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect())
    }

    /// The best `window` queued jobs that match `filter`, best first.
    async fn candidates(&self, filter: Document, window: usize) -> StoreResult<Vec<Document>> {
        Ok(self
            .jobs
            .find(filter)
            .sort(doc! { "priority": -1, "trigger_time": 1, "_id": 1 })
            .limit(window as i64)
            .await?
            .try_collect()
            .await?)
    }

    /// Leases up to `req.max` due jobs of the node group to `req.owner`, best first.
    pub(super) async fn claim_due(&self, req: ClaimRequest) -> StoreResult<Vec<Lease>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        // Claims of one node group from this tracker (one per TaskTracker in a dispatch
        // round) take turns: each finds what the one before left, instead of all racing for
        // the same best jobs and all but one losing them.
        let _turn = self.claim_turns.take(&req.node_group).await;
        let mut req = req;
        if let Some(cap) = req.max_running {
            let running = self.running_jobs(&req.node_group, cap).await?;
            req.max = req.max.min(cap.saturating_sub(running) as usize);
            if req.max == 0 {
                return Ok(Vec::new());
            }
        }
        let now = req.now_ms;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expiry = now + req.lease_ms;
        let due = doc! {
            "task_tracker_node_group": &req.node_group,
            "state": JobState::Queued.code(),
            "trigger_time": { "$lte": req.due_by_ms() },
            // Not the broadcast shards for other TaskTrackers, nor the jobs whose affinity the
            // TaskTracker's labels do not satisfy.
            "shard_on": { "$in": [null, &req.owner] },
            "affinity": { "$in": self.allowed_affinities(&req).await? },
            // Nor the routed jobs of buckets dealt to other TaskTrackers (`null`: no key).
            "route_bucket": { "$in": route_buckets(&req) },
        };
        // Trackers that share the queue all see the same best jobs: after this tracker lost
        // some of a claim to another one, it takes its next claims at random from a wider
        // window of the best, so that the trackers stop racing for the same documents.
        let contended = self.contended(&req.node_group, now);
        let window = if contended {
            req.max.saturating_mul(SPREAD).min(MAX_WINDOW).max(req.max)
        } else {
            req.max
        };
        // From the floor on while there is one (see `floor`); the whole queue when there is
        // none, or when the floor's level has fewer than the window.
        let floor = self.floors.get(&req.node_group, &req.owner, now);
        let mut found = Vec::new();
        if let Some(f) = floor {
            let mut from_floor = due.clone();
            from_floor.insert("priority", f.priority);
            from_floor.insert(
                "trigger_time",
                doc! { "$gte": f.trigger_time, "$lte": req.due_by_ms() },
            );
            found = self.candidates(from_floor, window).await?;
        }
        let whole = floor.is_none() || found.len() < window;
        if whole {
            found = self.candidates(due, window).await?;
        }
        let first = found.first().map(|d| {
            (
                codec::int(d, "priority").unwrap_or(0),
                codec::int(d, "trigger_time").unwrap_or(0),
            )
        });
        self.floors.found(
            &req.node_group,
            &req.owner,
            first,
            found.len() >= window,
            whole,
            now,
        );
        // The shards (workflow nodes, map children) of a job that ended or is suspended, whose
        // cascade a tracker's death cut short, wait for the master's sweep: they must not run
        // meanwhile.
        let held = self.held_parents(&found).await?;
        if !held.is_empty() {
            found.retain(|d| !d.get_str("shard_of").is_ok_and(|p| held.contains(p)));
        }
        if found.len() > req.max {
            let mut keep =
                rand::seq::index::sample(&mut rand::rng(), found.len(), req.max).into_vec();
            keep.sort_unstable();
            let mut i = 0;
            found.retain(|_| {
                let kept = keep.binary_search(&i).is_ok();
                i += 1;
                kept
            });
        }
        // Leases of the jobs themselves, and the rest: fires, skipped fires, ended schedules.
        let (mut leases, mut others) = (Vec::new(), Vec::new());
        for d in &found {
            let read = codec::read(d)?;
            let claim = Claim {
                owner: req.owner.clone(),
                token: token.clone(),
                expiry_ms: expiry,
                instance_id: if fires_overlapping_instances(&read.stored.job.spec) {
                    uuid::Uuid::now_v7().simple().to_string()
                } else {
                    String::new()
                },
                due_by_ms: req.due_by_ms(),
                targets: if read.stored.job.spec.broadcast {
                    req.targets.clone()
                } else {
                    Vec::new()
                },
                unfinished_instances: self
                    .unfinished_instances(
                        &read.stored.job.job_id,
                        Claim::instances_to_count(&read.stored.job.spec),
                    )
                    .await?,
            };
            // A refusal: it is no longer queued and due as read.
            let Ok(t) = transition::apply(&read.stored, Event::Claim(claim), now, &self.retry)
            else {
                continue;
            };
            match t.handout {
                Handout::Job => leases.push(Claimed { read, t }),
                Handout::FollowUp | Handout::Nothing => others.push(Claimed { read, t }),
            }
        }
        let (won, fired) =
            tokio::try_join!(self.lease_batch(&leases, &token), self.fire_batch(&others))?;
        if won.len() < leases.len() {
            self.lost_race(&req.node_group, now);
        }
        let mut out = Vec::with_capacity(won.len() + fired.len());
        for c in leases
            .into_iter()
            .filter(|c| won.contains(&c.read.stored.job.job_id))
        {
            self.append_log(c.t.logs.iter().map(codec::log_doc).collect())
                .await;
            let rev = c.read.rev + 1;
            out.push(self.handed_out(c.t.job, rev, &token, expiry));
        }
        for job in fired {
            out.push(self.handed_out(job, 0, &token, expiry));
        }
        out.sort_by(|a, b| {
            b.job
                .spec
                .priority
                .cmp(&a.job.spec.priority)
                .then(a.job.trigger_time_ms.cmp(&b.job.trigger_time_ms))
                .then(a.job.job_id.cmp(&b.job.job_id))
        });
        if let Some(cap) = req.max_running
            && !out.is_empty()
        {
            self.keep_under_cap(&req.node_group, cap, &mut out, now)
                .await?;
        }
        Ok(out)
    }

    /// Another tracker may have claimed jobs of the capped group since this claim counted
    /// them: counted again now that this claim's leases are written, the group's running jobs
    /// must not pass the cap, or this claim hands back as many of its own (the last ones)
    /// before any is sent. Two trackers racing may both hand back, and the group runs under
    /// its cap for a moment; it never runs over it.
    async fn keep_under_cap(
        &self,
        node_group: &str,
        cap: u32,
        out: &mut Vec<Lease>,
        now: i64,
    ) -> StoreResult<()> {
        let most = cap.saturating_add(out.len() as u32);
        let over = self
            .running_jobs(node_group, most)
            .await?
            .saturating_sub(cap) as usize;
        if over == 0 {
            return Ok(());
        }
        let back: Vec<LeaseRef> = out
            .split_off(out.len().saturating_sub(over))
            .into_iter()
            .map(|l| LeaseRef {
                job_id: l.job.job_id,
                token: l.token,
            })
            .collect();
        tracing::debug!(
            node_group,
            n = back.len(),
            "over the group's cap; handing back"
        );
        self.release_leases(back, now).await?;
        Ok(())
    }

    /// How many jobs of the node group run now, counted up to `most`: through the index of
    /// leases, which holds the running jobs of every group and nothing else.
    pub(super) async fn running_jobs(&self, node_group: &str, most: u32) -> StoreResult<u32> {
        let n = self
            .jobs
            .count_documents(doc! {
                "lease_expiry": { "$exists": true },
                "task_tracker_node_group": node_group,
                "state": JobState::Running.code(),
            })
            .hint(mongodb::options::Hint::Name("lease".into()))
            .limit(u64::from(most))
            .await?;
        Ok(u32::try_from(n).unwrap_or(most).min(most))
    }

    /// How many unfinished instances the recurring job `definition` has, counted up to
    /// `most`.
    async fn unfinished_instances(&self, definition: &str, most: u32) -> StoreResult<u32> {
        if most == 0 {
            return Ok(0);
        }
        let n = self
            .jobs
            .count_documents(doc! { "instance_of": definition, "done": "" })
            .limit(u64::from(most))
            .await?;
        Ok(u32::try_from(n).unwrap_or(most).min(most))
    }

    /// The affinities of the group's queued jobs that the claiming TaskTracker's labels
    /// satisfy, and `null` (no affinity): the few distinct ones, through their own index.
    async fn allowed_affinities(&self, req: &ClaimRequest) -> StoreResult<Vec<Bson>> {
        let found = self
            .jobs
            .distinct(
                "affinity",
                doc! {
                    "task_tracker_node_group": &req.node_group,
                    "state": JobState::Queued.code(),
                    "affinity": { "$gt": "" },
                },
            )
            .await?;
        let mut allowed = vec![Bson::Null];
        allowed.extend(found.into_iter().filter(|key| {
            key.as_str()
                .is_some_and(|k| lts_core::model::labels_satisfy(&req.labels, k))
        }));
        Ok(allowed)
    }

    /// Whether a claim of this node group lost jobs to another tracker lately.
    fn contended(&self, node_group: &str, now: i64) -> bool {
        let lost = self.lost_races.lock().unwrap_or_else(|e| e.into_inner());
        lost.get(node_group)
            .is_some_and(|&at| now.saturating_sub(at) < CONTENDED_FOR_MS)
    }

    /// Remembers that a claim of this node group lost jobs to another tracker.
    fn lost_race(&self, node_group: &str, now: i64) {
        let mut lost = self.lost_races.lock().unwrap_or_else(|e| e.into_inner());
        if lost.len() >= MAX_GROUPS && !lost.contains_key(node_group) {
            lost.retain(|_, at| now.saturating_sub(*at) < CONTENDED_FOR_MS);
        }
        lost.insert(node_group.to_string(), now);
    }

    /// A leased job, kept for its result.
    pub(super) fn handed_out(
        &self,
        stored: transition::StoredJob,
        rev: i64,
        token: &str,
        expiry: i64,
    ) -> Lease {
        let job = stored.job.clone();
        self.cache_lease(Read { stored, rev });
        Lease::of(job, token, expiry)
    }

    /// Writes the leases of a claim in one command; returns the ids of the jobs it won.
    async fn lease_batch(&self, leases: &[Claimed], token: &str) -> StoreResult<HashSet<String>> {
        let mut statements = Vec::with_capacity(leases.len());
        for c in leases {
            let update = codec::update(&c.read, &c.t.job, &c.t.write, None)?;
            statements.extend(update);
        }
        if statements.is_empty() {
            return Ok(HashSet::new());
        }
        let ids = || leases.iter().map(|c| c.read.stored.job.job_id.clone());
        let expected = statements.len() as u64;
        if self.update_batch(statements).await? == expected {
            return Ok(ids().collect());
        }
        // Lost some to another tracker: read back exactly what this claim's token holds.
        let ids: Vec<String> = ids().collect();
        let mine: Vec<Document> = self
            .jobs
            .find(doc! { "_id": { "$in": ids }, "lease_token": token })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(mine
            .iter()
            .filter_map(|d| codec::text(d, "_id").map(str::to_string))
            .collect())
    }

    /// Writes the claims that do not lease the job itself: the instance of each fire first,
    /// then each definition moved on. Returns the instances to hand out.
    ///
    /// A fire happens once even if this tracker dies between the two writes: the instance's
    /// fire key (its recurring job and fire number, see [`codec::new_doc`]) is unique, so the
    /// claim that takes the definition again finds that fire taken (its instance runs, or
    /// ran), hands nothing out for it, and moves the definition on.
    async fn fire_batch(&self, others: &[Claimed]) -> StoreResult<Vec<transition::StoredJob>> {
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let follow_ups: Vec<_> = others
            .iter()
            .filter_map(|c| c.t.follow_up.clone().map(|f| (f, c.t.handout)))
            .collect();
        let (follow_ups, handouts): (Vec<_>, Vec<_>) = follow_ups.into_iter().unzip();
        let inserted = self.insert_follow_ups(&follow_ups).await?;
        // The shards of a sharded job go in before it moves on, like the instance of a fire;
        // their ids are the run's, so a claim written again inserts none twice.
        let shards = others
            .iter()
            .flat_map(|c| &c.t.fan_out)
            .map(codec::new_doc)
            .collect::<StoreResult<Vec<_>>>()?;
        if !shards.is_empty() {
            self.insert_new(shards).await?;
        }
        fail::fail_point!("mongo-fire-between-instance-and-definition");
        let moved = others.iter().map(|c| async move {
            if self.update_one_guarded(&c.read, &c.t).await? {
                self.append_log(c.t.logs.iter().map(codec::log_doc).collect())
                    .await;
            }
            StoreResult::Ok(())
        });
        try_join_all(moved).await?;
        // A fire that replaces earlier runs cancels them once its own instance is stored (not
        // when another tracker fired it first: that one cancels them).
        let stored: HashSet<&str> = follow_ups
            .iter()
            .zip(&inserted)
            .filter(|(_, inserted)| **inserted)
            .map(|(f, _)| f.job.job.job_id.as_str())
            .collect();
        for c in others {
            if let Some(cascade @ Cascade::ReplaceInstances { keep, .. }) = &c.t.cascade
                && stored.contains(keep.as_str())
            {
                self.cascade(cascade, c.t.job.job.updated_at_ms).await?;
            }
        }
        // Handed out: the inserted instances that are leased (not a sharded one, queued).
        Ok(follow_ups
            .into_iter()
            .zip(inserted)
            .zip(handouts)
            .filter(|((_, inserted), handout)| *inserted && *handout == Handout::FollowUp)
            .map(|((f, _), _)| f.job)
            .collect())
    }
}

/// The route buckets a claim takes, and `null` (the jobs without a route key).
fn route_buckets(req: &ClaimRequest) -> Vec<Bson> {
    std::iter::once(Bson::Null)
        .chain(req.route_buckets.iter().map(|&b| Bson::Int64(i64::from(b))))
        .collect()
}
