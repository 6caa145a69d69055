//! The production [`JobStore`]: MongoDB, shared by every JobTracker of a cluster.
//!
//! # Layout
//!
//! One database per cluster (the URI's database, else `lts_<cluster>`), two collections:
//!
//! * `jobs`: one document per job, queued, running or finished (finished ones until the
//!   retention period ends). A job never moves between collections, so finishing it is one
//!   update. Dedup is the unique index (`task_tracker_node_group`, `task_id`, `done`) where
//!   `done` is `""` while the job is unfinished and the job id once it finished, so finished
//!   jobs free their task id. Pending feedback lives in the job document (`fb`, with
//!   `fb_group` naming the submit node group), written in the same update that records the
//!   result, so a result and its feedback are stored together or not at all.
//! * `job_log`: one document per log line, with a TTL index on `at` for the retention period.
//!
//! # The rules live elsewhere
//!
//! What an event does to a job is [`lts_core::transition`]'s to say. This store reads a job
//! ([`codec`]: document ↔ [`StoredJob`](lts_core::transition::StoredJob)), applies the event
//! and writes the transition as one update guarded by the state and revision it read
//! ([`write`]); a guard that matches nothing means the job changed meanwhile, and the event
//! is applied again to the job as it is now.
//!
//! # Round trips
//!
//! Every command the driver sends is counted as it checks a connection out of the pool
//! ([`MongoStore::round_trips`], metric `lts_store_round_trips_total`; the readiness probe's
//! `ping` included). Per job the path costs:
//! submit — one `insert` per batch; claim — one `find` and one `update` command per batch of
//! leases (each statement guarded by its job's state and revision, so two trackers never lease
//! the same job); completion — one guarded `update` statement, without a read when this
//! tracker handed the lease out (it keeps the job it leased). The single-job inserts and
//! updates of concurrent operations share commands (group commit, in `batch`), and a job
//! handed over at submit ([`JobStore::submit_leased`]) is inserted already leased, with no
//! claim at all. Log lines are written by one background writer
//! that gathers the lines of every operation for [`LOG_LINGER`] and sends them in one
//! `insert`; operations do not wait for it, and reading a job's log first flushes it.

mod batch;
mod claim;
mod codec;
mod events;
mod floor;
mod log;
mod migrate;
mod queries;
mod turns;
mod write;

use lts_core::redact::{redact_url, scrub};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use lts_core::schedule::RetryPolicy;
use lts_core::{FeedbackItem, Job, JobSpec, JobState, LogEntry};
use mongodb::bson::{Document, doc};
use mongodb::event::EventHandler;
use mongodb::event::cmap::CmapEvent;
use mongodb::options::{Acknowledgment, ClientOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use tokio::sync::mpsc;

pub use self::log::LOG_LINGER;
use super::{
    CancelOutcome, ChangeOutcome, ClaimRequest, CompleteOutcome, Completion, HeldLease, JobKey,
    JobStore, Lease, LeaseRef, ListFilter, Page, Requeued, Stats, StoreError, StoreResult,
    SubmitOutcome, TriggerOutcome,
};
use codec::Read;

/// Options of the MongoDB store.
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// How retries are spaced.
    pub retry: RetryPolicy,
    /// How long finished jobs and log lines are kept; sets the job log's TTL index.
    pub retention: Duration,
    /// How long start-up keeps retrying an unreachable server before giving up.
    pub connect_timeout: Duration,
}

impl Default for MongoOptions {
    fn default() -> Self {
        MongoOptions {
            retry: RetryPolicy::default(),
            retention: Duration::from_secs(7 * 24 * 3600),
            connect_timeout: Duration::from_secs(120),
        }
    }
}

impl From<mongodb::error::Error> for StoreError {
    fn from(e: mongodb::error::Error) -> Self {
        StoreError::Backend(format!("mongodb: {e}"))
    }
}

/// The write concern of every store write unless the URI sets one: acknowledged once a
/// majority of the replica set has it in its journal.
pub fn durable_write_concern() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build()
}

const DUPLICATE_KEY: i32 = 11000;
/// The server's answer to dropping an index that is not there.
const INDEX_NOT_FOUND: i32 = 27;
/// Indexes of `jobs` that earlier versions made and this one replaced.
const OLD_JOB_INDEXES: &[&str] = &["claim", "due", "instance_of", "feedback"];
/// Leases kept for their results before the cache drops those long expired.
const MAX_CACHED_LEASES: usize = 200_000;

/// The MongoDB job store.
pub struct MongoStore {
    db: Database,
    jobs: Collection<Document>,
    log: Collection<Document>,
    round_trips: Arc<AtomicU64>,
    retry: RetryPolicy,
    /// The jobs this tracker leased, as it wrote them: a result or a renewal is then one
    /// guarded update without a read (the guard catches any change since).
    leases: Mutex<HashMap<String, Read>>,
    /// Per node group: the turn of this tracker's claims.
    claim_turns: turns::Turns,
    /// Per node group: when a claim last lost jobs to another tracker.
    lost_races: Mutex<HashMap<String, i64>>,
    /// Where each TaskTracker's claims of a node group start (see `floor`).
    floors: floor::Floors,
    /// Per run of a sharded job (a workflow): the turn of this tracker's tallies of its
    /// shards, while some shard's end waits for one.
    tally_turns: turns::Turns,
    log_tx: mpsc::Sender<log::LogWrite>,
    /// Guarded updates of single jobs, grouped into one command per batch.
    updates: batch::UpdateBatcher,
    /// Inserts of new jobs, grouped into one command per batch.
    inserts: batch::InsertBatcher,
    /// When the sweep last looked for sharded jobs whose shards all ended (ms).
    shard_sweep_at: AtomicI64,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.db.name())
            .finish()
    }
}

/// The database of a cluster when the URI names none: `lts_<cluster>` with characters MongoDB
/// does not allow in database names replaced by `_`.
pub fn default_database(cluster: &str) -> String {
    let clean: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("lts_{clean}");
    name.truncate(63);
    name
}

/// Drops the database `lts bench` used, unless the URI named a database of the user's.
pub async fn drop_bench_database(uri: &str, cluster: &str) -> StoreResult<()> {
    let options = ClientOptions::parse(uri)
        .await
        .map_err(|e| StoreError::Backend(scrub(&format!("store URI: {e}"), uri)))?;
    if options.default_database.is_some() {
        return Ok(());
    }
    let client = Client::with_options(options)?;
    client.database(&default_database(cluster)).drop().await?;
    Ok(())
}

impl MongoStore {
    /// Connects to `uri` (`mongodb://…`), creates collections and indexes if needed, and starts
    /// the log writer. Retries an unreachable server with backoff for
    /// [`MongoOptions::connect_timeout`], logging every failure.
    pub async fn connect(uri: &str, cluster: &str, options: MongoOptions) -> StoreResult<Self> {
        let mut client_options = ClientOptions::parse(uri).await.map_err(|e| {
            let why = format!("store URI {}: {e}", redact_url(uri));
            StoreError::Backend(scrub(&why, uri))
        })?;
        client_options.app_name = Some("lts-tracker".into());
        // Every acknowledged write survives the loss of the primary: a majority has it in its
        // journal. A `w=`/`journal=` in the URI overrides this (at the user's risk).
        if client_options.write_concern.is_none() {
            client_options.write_concern = Some(durable_write_concern());
        }
        let write_concern = client_options.write_concern.clone().unwrap_or_default();
        let round_trips = Arc::new(AtomicU64::new(0));
        let counter = round_trips.clone();
        // Every command checks a connection out of the pool (a cursor's `getMore` too; the
        // server monitors' `hello`s use connections of their own). Counting check-outs costs
        // nothing per command, where command monitoring copies every command and reply into a
        // `Document` first: 13% of the tracker's CPU in a drain.
        client_options.cmap_event_handler = Some(EventHandler::callback(move |ev: CmapEvent| {
            if let CmapEvent::ConnectionCheckedOut(_) = ev {
                counter.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("lts_store_round_trips_total").increment(1);
            }
        }));
        let database = client_options
            .default_database
            .clone()
            .unwrap_or_else(|| default_database(cluster));
        let client = Client::with_options(client_options)?;
        let db = client.database(&database);
        let (log_tx, log_rx) = mpsc::channel(4096);
        tokio::spawn(log::log_writer(db.collection("job_log"), log_rx));
        let updates = batch::UpdateBatcher::start(db.clone(), db.collection("jobs"));
        let inserts = batch::InsertBatcher::start(db.collection("jobs"));
        let store = MongoStore {
            jobs: db.collection("jobs"),
            log: db.collection("job_log"),
            db,
            round_trips,
            retry: options.retry,
            leases: Mutex::new(HashMap::new()),
            claim_turns: turns::Turns::default(),
            lost_races: Mutex::new(HashMap::new()),
            floors: floor::Floors::default(),
            tally_turns: turns::Turns::default(),
            shard_sweep_at: AtomicI64::new(0),
            log_tx,
            updates,
            inserts,
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_total_delay(Some(options.connect_timeout))
            .without_max_times();
        (|| store.ensure_indexes(options.retention))
            .retry(backoff)
            .notify(|e, retry_in| {
                tracing::warn!(error = %e, ?retry_in, database = %database, "mongodb: not ready, retrying");
            })
            .await?;
        tracing::info!(
            database = %database,
            w = ?write_concern.w,
            journal = ?write_concern.journal,
            "mongodb: connected"
        );
        store.backfill_spec_fields().await?;
        store.backfill_instance_of().await?;
        tracing::info!(database = %database, "mongodb store ready");
        Ok(store)
    }

    /// Commands sent to the server so far (store work only: handshakes and pings excluded).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The database in use.
    pub fn database(&self) -> &str {
        self.db.name()
    }

    async fn ensure_indexes(&self, retention: Duration) -> StoreResult<()> {
        let index = |keys: Document, name: &str, sparse: bool, unique: bool| {
            let options = IndexOptions::builder()
                .name(name.to_string())
                .sparse(sparse.then_some(true))
                .unique(unique.then_some(true))
                .build();
            IndexModel::builder().keys(keys).options(options).build()
        };
        let queued = |keys: Document, name: &str| {
            let options = IndexOptions::builder()
                .name(name.to_string())
                .partial_filter_expression(doc! { "state": JobState::Queued.code() })
                .build();
            IndexModel::builder().keys(keys).options(options).build()
        };
        let having = |keys: Document, name: &str, field: &str| {
            let options = IndexOptions::builder()
                .name(name.to_string())
                .partial_filter_expression(doc! { field: { "$exists": true } })
                .build();
            IndexModel::builder().keys(keys).options(options).build()
        };
        let jobs_indexes = vec![
            index(
                doc! { "task_tracker_node_group": 1, "task_id": 1, "done": 1 },
                "dedup",
                false,
                true,
            ),
            // The claim's and the dispatcher's indexes hold queued jobs only: a job leaves them
            // when it is leased and never comes back once it finished, so the finished jobs
            // (most of the collection) and the running ones cost these indexes nothing.
            queued(
                doc! { "task_tracker_node_group": 1, "priority": -1, "trigger_time": 1, "_id": 1 },
                "claim_queued",
            ),
            queued(
                doc! { "task_tracker_node_group": 1, "trigger_time": 1 },
                "due_queued",
            ),
            index(doc! { "lease_expiry": 1 }, "lease", true, false),
            index(doc! { "lease_owner": 1 }, "owner", true, false),
            index(doc! { "finished_at": 1 }, "finished", true, false),
            // Partial, not sparse: a sparse compound index still holds every document that
            // has any of its fields, and `done` and `_id` are in every job.
            having(
                doc! { "instance_of": 1, "done": 1 },
                "instance_of_only",
                "instance_of",
            ),
            // One instance per fire of a recurring job, finished ones included (see
            // `claim::fire_batch`).
            index(doc! { "fire_key": 1 }, "fire", true, true),
            index(doc! { "submit_key": 1 }, "submit_key", true, true),
            having(
                doc! { "fb_group": 1, "_id": 1 },
                "feedback_only",
                "fb_group",
            ),
            // The unfinished shards (workflow nodes) of a job: whether any is left, at each
            // shard's end, without a scan of the run.
            having(
                doc! { "shard_of": 1, "done": 1, "_id": 1 },
                "shards_unfinished",
                "shard_of",
            ),
            // The sharded jobs whose shards run (see `write::end_stranded_shards`).
            having(doc! { "shards_wait": 1 }, "shards_wait_only", "shards_wait"),
            having(
                doc! { "shard_on": 1, "done": 1 },
                "shard_on_only",
                "shard_on",
            ),
            // The distinct affinities of a group's queue, for its claims.
            IndexModel::builder()
                .keys(doc! { "task_tracker_node_group": 1, "affinity": 1 })
                .options(
                    IndexOptions::builder()
                        .name("affinity_queued".to_string())
                        .partial_filter_expression(doc! {
                            "state": JobState::Queued.code(),
                            "affinity": { "$gt": "" },
                        })
                        .build(),
                )
                .build(),
        ];
        self.jobs.create_indexes(jobs_indexes).await?;
        // Their predecessors held every job (the sparse compound ones too: every job has a
        // `done` and an `_id`); once the partial ones exist they are dead weight on every
        // write. (An older tracker still running works without them, only slower.)
        for old in OLD_JOB_INDEXES {
            match self.jobs.drop_index(*old).await {
                Ok(()) => {
                    tracing::info!(index = old, "mongodb: dropped an index of an older version")
                }
                Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == INDEX_NOT_FOUND) =>
                    {}
                Err(e) => return Err(e.into()),
            }
        }
        self.log
            .create_index(index(
                doc! { "job_id": 1, "time": 1, "_id": 1 },
                "job",
                false,
                false,
            ))
            .await?;
        let ttl = retention.as_secs().max(1);
        let ttl_index = IndexModel::builder()
            .keys(doc! { "at": 1 })
            .options(
                IndexOptions::builder()
                    .name("retention".to_string())
                    .expire_after(Duration::from_secs(ttl))
                    .build(),
            )
            .build();
        if let Err(e) = self.log.create_index(ttl_index).await {
            // The retention changed since the index was made: change the index in place.
            tracing::info!(error = %e, ttl_seconds = ttl, "mongodb: updating the job log TTL");
            self.db
                .run_command(doc! {
                    "collMod": "job_log",
                    "index": { "name": "retention", "expireAfterSeconds": ttl as i64 },
                })
                .await?;
        }
        Ok(())
    }

    /// Keeps a job this tracker leased (or renewed), as written.
    fn cache_lease(&self, read: Read) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.len() > MAX_CACHED_LEASES {
            // Leases whose results never came (their jobs were requeued elsewhere).
            let cutoff = lts_core::now_ms() - 3_600_000;
            leases.retain(|_, l| l.stored.job.lease_expiry_ms.unwrap_or(0) > cutoff);
        }
        leases.insert(read.stored.job.job_id.clone(), read);
    }

    /// The job this tracker leased with `token`, as written, if it is kept.
    fn cached_lease(&self, job_id: &str, token: &str) -> Option<Read> {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases
            .get(job_id)
            .filter(|r| r.stored.lease_token.as_deref() == Some(token))
            .cloned()
    }

    /// Drops the kept lease of a job if it has this token (a refused result or hand-back
    /// shows it is stale; a stale token says nothing about the lease kept).
    fn forget_lease_of(&self, job_id: &str, token: &str) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases
            .get(job_id)
            .is_some_and(|r| r.stored.lease_token.as_deref() == Some(token))
        {
            leases.remove(job_id);
        }
    }

    fn forget_lease(&self, job_id: &str) {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job_id);
    }
}

#[async_trait]
impl JobStore for MongoStore {
    async fn submit(&self, jobs: Vec<JobSpec>, now: i64) -> StoreResult<Vec<SubmitOutcome>> {
        self.submit_specs(jobs, now).await
    }

    async fn submit_leased(
        &self,
        spec: JobSpec,
        claim: ClaimRequest,
    ) -> StoreResult<(SubmitOutcome, Option<Lease>)> {
        self.submit_and_lease(spec, claim).await
    }

    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Lease>> {
        self.claim_due(req).await
    }

    async fn renew(&self, leases: Vec<LeaseRef>, expiry: i64) -> StoreResult<Vec<String>> {
        self.renew_leases(leases, expiry).await
    }

    async fn complete(&self, c: Completion) -> StoreResult<CompleteOutcome> {
        self.complete_run(c).await
    }

    async fn release(&self, leases: Vec<LeaseRef>, now: i64) -> StoreResult<Vec<Requeued>> {
        self.release_leases(leases, now).await
    }

    async fn requeue_expired(&self, now: i64) -> StoreResult<Vec<Requeued>> {
        let requeued = self.requeue_lost(events::Lost::Expired, now).await?;
        self.end_stranded_shards(now).await?;
        Ok(requeued)
    }

    async fn requeue_owner(&self, owner: &str, now: i64) -> StoreResult<Vec<Requeued>> {
        self.requeue_lost(events::Lost::Owner(owner), now).await
    }

    async fn requeue_held(&self, leases: Vec<HeldLease>, now: i64) -> StoreResult<Vec<Requeued>> {
        self.requeue_lost(events::Lost::Held(&leases), now).await
    }

    async fn cancel(&self, key: JobKey, now: i64) -> StoreResult<CancelOutcome> {
        self.cancel_job(key, now).await
    }

    async fn suspend(&self, key: JobKey, now: i64) -> StoreResult<ChangeOutcome> {
        self.change(key, events::Change::Suspend, now).await
    }

    async fn resume(&self, key: JobKey, now: i64) -> StoreResult<ChangeOutcome> {
        self.change(key, events::Change::Resume, now).await
    }

    async fn trigger(&self, key: JobKey, now: i64) -> StoreResult<TriggerOutcome> {
        self.trigger_job(key, now).await
    }

    async fn get(&self, key: JobKey) -> StoreResult<Option<Job>> {
        self.get_job(key).await
    }

    async fn list(&self, filter: ListFilter) -> StoreResult<Page> {
        self.list_jobs(filter).await
    }

    async fn log(&self, job_id: &str, limit: usize) -> StoreResult<Vec<LogEntry>> {
        self.job_log(job_id, limit).await
    }

    async fn stats(&self, node_group: Option<&str>) -> StoreResult<Stats> {
        self.job_stats(node_group).await
    }

    async fn next_due(&self, node_group: &str) -> StoreResult<Option<i64>> {
        self.next_due_time(node_group).await
    }

    async fn due_count(&self, node_group: &str, now: i64) -> StoreResult<u64> {
        self.due_jobs_count(node_group, now).await
    }

    async fn running_count(&self, node_group: &str, most: u32) -> StoreResult<u32> {
        self.running_jobs(node_group, most).await
    }

    async fn broadcast_targets(&self, before_ms: i64) -> StoreResult<Vec<String>> {
        let found = self
            .jobs
            .distinct(
                "shard_on",
                doc! {
                    "shard_on": { "$exists": true },
                    "done": "",
                    "created_at": { "$lt": before_ms },
                },
            )
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|b| b.as_str().map(str::to_string))
            .take(1_000)
            .collect())
    }

    async fn target_gone(&self, identity: &str, now: i64) -> StoreResult<usize> {
        self.cancel_for_gone_target(identity, now).await
    }

    async fn map(
        &self,
        job_id: &str,
        batch: lts_core::transition::MapBatch,
        now: i64,
    ) -> StoreResult<super::MapOutcome> {
        self.map_children(job_id, batch, now).await
    }

    async fn map_results(
        &self,
        reduce_id: &str,
        token: &str,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<Result<Vec<super::ChildResult>, lts_core::transition::Refusal>> {
        self.children_results(reduce_id, token, after, limit).await
    }

    async fn backlog(
        &self,
        now: i64,
        limit: usize,
    ) -> StoreResult<Vec<crate::store::GroupBacklog>> {
        self.group_backlog(now, limit).await
    }

    async fn pending_feedback(
        &self,
        submit_node_group: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<FeedbackItem>> {
        self.feedback_after(submit_node_group, after, limit).await
    }

    async fn ack_feedback(&self, group: &str, ids: Vec<String>) -> StoreResult<()> {
        self.ack(group, ids).await
    }

    async fn fence(&self, epoch: u64, identity: &str, now: i64) -> StoreResult<bool> {
        self.fence_master(epoch, identity, now).await
    }

    async fn enforce_retention(&self, before: i64) -> StoreResult<u64> {
        self.retention(before).await
    }

    async fn health(&self) -> StoreResult<()> {
        self.ping().await
    }

    fn round_trips(&self) -> Option<u64> {
        Some(MongoStore::round_trips(self))
    }
}
