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
//! # Round trips
//!
//! Every command the driver sends is counted through command monitoring
//! ([`MongoStore::round_trips`], metric `lts_store_round_trips_total`). Per job the path costs:
//! submit — one `insert` per batch; claim — one `find` and one `update` per batch of leases
//! (the update is guarded by `state = QUEUED` and each job's revision, so two trackers never
//! lease the same job; a claim of one job is one `findAndModify`); completion — one `update`
//! guarded by the lease token. Log lines are written by one background writer that gathers
//! the lines of every operation for [`LOG_LINGER`] and sends them in one `insert`; operations
//! do not wait for it, and reading a job's log first flushes it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use lts_core::schedule::{
    self, Disposition, RetryPolicy, disposition, first_trigger, resume_trigger,
};
use lts_core::{FeedbackItem, Job, JobSpec, JobState, LogEntry, LogLevel, LogType, Outcome};
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use tokio::sync::{mpsc, oneshot};

use super::{
    CancelOutcome, ChangeOutcome, ClaimRequest, CompleteOutcome, Completion, HeldLease, JobKey,
    JobStore, Lease, LeaseRef, ListFilter, Page, Requeued, Stats, StoreError, StoreResult,
    SubmitOutcome, parse_log_type,
};

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

const DUPLICATE_KEY: i32 = 11000;
/// How long the log writer gathers lines before it writes them.
pub const LOG_LINGER: Duration = Duration::from_millis(20);
/// Commands that are not store work (connection handshakes, health checks).
const NOT_STORE_WORK: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "ping",
    "buildInfo",
    "endSessions",
    "saslStart",
    "saslContinue",
];

/// A lease this tracker handed out, kept so that the result can be recorded with one update.
#[derive(Debug, Clone)]
struct CachedLease {
    token: String,
    job: Job,
    rev: i64,
}

/// Lines to write, and whom to tell once everything queued so far is written (a flush).
type LogWrite = (Vec<Document>, Option<oneshot::Sender<()>>);

/// The MongoDB job store.
pub struct MongoStore {
    db: Database,
    jobs: Collection<Document>,
    log: Collection<Document>,
    round_trips: Arc<AtomicU64>,
    retry: RetryPolicy,
    leases: Mutex<HashMap<String, CachedLease>>,
    log_tx: mpsc::Sender<LogWrite>,
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
        .map_err(|e| StoreError::Backend(format!("store URI: {e}")))?;
    if options.default_database.is_some() {
        return Ok(());
    }
    let client = Client::with_options(options)?;
    client.database(&default_database(cluster)).drop().await?;
    Ok(())
}

fn int(doc: &Document, key: &str) -> Option<i64> {
    match doc.get(key)? {
        Bson::Int32(v) => Some(*v as i64),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

fn text<'a>(doc: &'a Document, key: &str) -> Option<&'a str> {
    doc.get_str(key).ok()
}

fn corrupt(doc: &Document, what: &str) -> StoreError {
    let id = doc.get("_id").map(|b| b.to_string()).unwrap_or_default();
    StoreError::Corrupt(format!("job {id}: {what}"))
}

/// Decodes a `jobs` document.
fn decode(doc: &Document) -> StoreResult<Job> {
    let job_id = text(doc, "_id").ok_or_else(|| corrupt(doc, "_id"))?;
    let spec: JobSpec =
        serde_json::from_str(text(doc, "spec").ok_or_else(|| corrupt(doc, "spec"))?)
            .map_err(|e| corrupt(doc, &format!("spec: {e}")))?;
    let state = int(doc, "state")
        .and_then(JobState::from_code)
        .ok_or_else(|| corrupt(doc, "state"))?;
    Ok(Job {
        job_id: job_id.to_string(),
        spec,
        state,
        attempt: int(doc, "attempt").unwrap_or(0) as u32,
        trigger_time_ms: int(doc, "trigger_time").unwrap_or(0),
        created_at_ms: int(doc, "created_at").unwrap_or(0),
        updated_at_ms: int(doc, "updated_at").unwrap_or(0),
        lease_owner: text(doc, "lease_owner").map(str::to_string),
        lease_expiry_ms: int(doc, "lease_expiry"),
        last_outcome: int(doc, "last_outcome").and_then(Outcome::from_code),
        last_message: text(doc, "last_message").map(str::to_string),
        finished_at_ms: int(doc, "finished_at"),
        scheduled_fire_ms: int(doc, "scheduled_fire"),
        fire_count: int(doc, "fire_count").unwrap_or(1) as u64,
    })
}

/// The fields a job's spec is kept in: the spec itself (as JSON), and the parts of it that
/// claims sort on (`priority`) and listings filter on (`submit_node_group`, `schedule_kind`).
fn spec_fields(spec: &JobSpec) -> StoreResult<Document> {
    Ok(doc! {
        "spec": serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        "priority": spec.priority,
        "submit_node_group": &spec.submit_node_group,
        "schedule_kind": spec.schedule.kind().as_str(),
    })
}

fn opt_i64(v: Option<i64>) -> Bson {
    v.map(Bson::Int64).unwrap_or(Bson::Null)
}

/// One job-log line as a document.
#[allow(clippy::too_many_arguments)]
fn log_doc(
    job: &str,
    task_id: &str,
    node_group: &str,
    time: i64,
    log_type: LogType,
    level: LogLevel,
    message: &str,
    attempt: u32,
    node: &str,
) -> Document {
    doc! {
        "job_id": job,
        "task_id": task_id,
        "task_tracker_node_group": node_group,
        "time": time,
        "at": DateTime::from_millis(time),
        "log_type": log_type.as_str(),
        "level": level.as_str(),
        "message": message,
        "attempt": attempt as i64,
        "node": node,
    }
}

fn job_log_doc(
    job: &Job,
    time: i64,
    t: LogType,
    level: LogLevel,
    msg: &str,
    node: &str,
) -> Document {
    log_doc(
        &job.job_id,
        &job.spec.task_id,
        &job.spec.task_tracker_node_group,
        time,
        t,
        level,
        msg,
        job.attempt,
        node,
    )
}

fn escape_regex(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1);
    s.push('^');
    for c in prefix.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

const UNLEASE: &str = "lease_owner";

fn unset_lease() -> Document {
    doc! { UNLEASE: "", "lease_token": "", "lease_expiry": "" }
}

/// The update that moves a just-claimed recurring job on to its fire `next` (queued, lease
/// dropped, one more fire counted), or finishes it when its schedule is exhausted (`None`),
/// and the log line saying `what` it did with `fire`.
fn advance_schedule(
    job_id: &str,
    fire: i64,
    next: Option<i64>,
    what: &str,
    now: i64,
) -> (Document, String) {
    match next {
        Some(next) => (
            doc! {
                "$set": {
                    "state": JobState::Queued.code(),
                    "trigger_time": next,
                    "scheduled_fire": next,
                    "attempt": 0i64,
                    "updated_at": now,
                },
                "$inc": { "fire_count": 1i64, "rev": 1i64 },
                "$unset": unset_lease(),
            },
            format!(
                "{what} {}; next fire {}",
                lts_core::format_ms(fire),
                lts_core::format_ms(next)
            ),
        ),
        None => (
            doc! {
                "$set": {
                    "state": JobState::Succeeded.code(),
                    "done": job_id,
                    "finished_at": now,
                    "attempt": 0i64,
                    "last_message": "schedule complete",
                    "updated_at": now,
                },
                "$inc": { "rev": 1i64 },
                "$unset": unset_lease(),
            },
            format!(
                "{what} {}, the last of its schedule",
                lts_core::format_ms(fire)
            ),
        ),
    }
}

impl MongoStore {
    /// Connects to `uri` (`mongodb://…`), creates collections and indexes if needed, and starts
    /// the log writer. Retries an unreachable server with backoff for
    /// [`MongoOptions::connect_timeout`], logging every failure.
    pub async fn connect(uri: &str, cluster: &str, options: MongoOptions) -> StoreResult<Self> {
        let mut client_options = ClientOptions::parse(uri)
            .await
            .map_err(|e| StoreError::Backend(format!("store URI {uri:?}: {e}")))?;
        client_options.app_name = Some("lts-tracker".into());
        let round_trips = Arc::new(AtomicU64::new(0));
        let counter = round_trips.clone();
        client_options.command_event_handler = Some(EventHandler::callback(
            move |ev: CommandEvent| {
                if let CommandEvent::Started(started) = ev
                    && !NOT_STORE_WORK.contains(&started.command_name.as_str())
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("lts_store_round_trips_total", "command" => started.command_name)
                        .increment(1);
                }
            },
        ));
        let database = client_options
            .default_database
            .clone()
            .unwrap_or_else(|| default_database(cluster));
        let client = Client::with_options(client_options)?;
        let db = client.database(&database);
        let store = MongoStore {
            jobs: db.collection("jobs"),
            log: db.collection("job_log"),
            db,
            round_trips,
            retry: options.retry,
            leases: Mutex::new(HashMap::new()),
            log_tx: {
                let (tx, rx) = mpsc::channel(4096);
                tokio::spawn(log_writer(
                    client.database(&database).collection("job_log"),
                    rx,
                ));
                tx
            },
        };
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match store.ensure_indexes(options.retention).await {
                Ok(()) => break,
                Err(e) if started.elapsed() < options.connect_timeout => {
                    tracing::warn!(error = %e, retry_in = ?delay, database = %database, "mongodb: not ready, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
        store.backfill_spec_fields().await?;
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

    /// Gives jobs stored before `submit_node_group` and `schedule_kind` were kept beside the
    /// spec those two fields, so that listings filtered on them find every job. Each job is
    /// written once; a job whose spec cannot be read is left to fail where it is read.
    async fn backfill_spec_fields(&self) -> StoreResult<()> {
        let mut written = 0u64;
        loop {
            let docs: Vec<Document> = self
                .jobs
                .find(doc! { "schedule_kind": { "$exists": false }, "spec": { "$type": "string" } })
                .projection(doc! { "spec": 1 })
                .limit(1000)
                .await?
                .try_collect()
                .await?;
            let mut progressed = false;
            for d in &docs {
                let Some(spec) =
                    text(d, "spec").and_then(|t| serde_json::from_str::<JobSpec>(t).ok())
                else {
                    continue;
                };
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                self.jobs
                    .update_one(doc! { "_id": id }, doc! { "$set": spec_fields(&spec)? })
                    .await?;
                written += 1;
                progressed = true;
            }
            if docs.len() < 1000 || !progressed {
                break;
            }
        }
        if written > 0 {
            tracing::info!(
                jobs = written,
                "mongodb: kept submit_node_group and schedule_kind beside the spec of older jobs"
            );
        }
        Ok(())
    }

    async fn ensure_indexes(&self, retention: Duration) -> StoreResult<()> {
        let named = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).build())
                .build()
        };
        let sparse = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(
                    IndexOptions::builder()
                        .name(name.to_string())
                        .sparse(true)
                        .build(),
                )
                .build()
        };
        let jobs_indexes = vec![
            IndexModel::builder()
                .keys(doc! { "task_tracker_node_group": 1, "task_id": 1, "done": 1 })
                .options(
                    IndexOptions::builder()
                        .name("dedup".to_string())
                        .unique(true)
                        .build(),
                )
                .build(),
            named(
                doc! { "task_tracker_node_group": 1, "state": 1, "priority": -1, "trigger_time": 1, "_id": 1 },
                "claim",
            ),
            named(
                doc! { "task_tracker_node_group": 1, "state": 1, "trigger_time": 1 },
                "due",
            ),
            sparse(doc! { "lease_expiry": 1 }, "lease"),
            sparse(doc! { "lease_owner": 1 }, "owner"),
            sparse(doc! { "finished_at": 1 }, "finished"),
            sparse(doc! { "fb_group": 1, "_id": 1 }, "feedback"),
        ];
        self.jobs.create_indexes(jobs_indexes).await?;
        self.log
            .create_index(named(doc! { "job_id": 1, "time": 1, "_id": 1 }, "job"))
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

    /// Queues log lines for the grouping writer. Waits only for room in its queue, not for
    /// the write: the job path never waits on its log.
    async fn append_log(&self, lines: Vec<Document>) {
        if !lines.is_empty() {
            let _ = self.log_tx.send((lines, None)).await;
        }
    }

    /// Waits until every line queued so far is written (so a tracker reads its own log lines).
    async fn flush_log(&self) {
        let (tx, rx) = oneshot::channel();
        if self.log_tx.send((Vec::new(), Some(tx))).await.is_ok() {
            let _ = rx.await;
        }
    }

    fn cache_lease(&self, job: &Job, token: &str, rev: i64) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.len() > 200_000 {
            // Leases whose results never came (their jobs were requeued elsewhere).
            let cutoff = lts_core::now_ms() - 3_600_000;
            leases.retain(|_, l| l.job.lease_expiry_ms.unwrap_or(0) > cutoff);
        }
        leases.insert(
            job.job_id.clone(),
            CachedLease {
                token: token.to_string(),
                job: job.clone(),
                rev,
            },
        );
    }

    fn forget_lease(&self, job_id: &str) -> Option<CachedLease> {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job_id)
    }

    /// Inserts new jobs; returns which ones hit the dedup index.
    async fn insert_new(&self, docs: Vec<Document>) -> StoreResult<Vec<usize>> {
        match self.jobs.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(Vec::new()),
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(failure)
                    if failure.write_concern_error.is_none()
                        && failure
                            .write_errors
                            .as_ref()
                            .is_some_and(|w| w.iter().all(|w| w.code == DUPLICATE_KEY)) =>
                {
                    Ok(failure
                        .write_errors
                        .iter()
                        .flatten()
                        .map(|w| w.index)
                        .collect())
                }
                _ => Err(e.into()),
            },
        }
    }

    /// For a just-claimed recurring job relying on its previous cycle, whose first attempt
    /// at a fire was claimed late: the misfire policy ([`schedule::late_fire`]). `FireOnce`
    /// runs it as the fire of now (so its completion does not queue another catch-up);
    /// `Skip` gives the lease back and queues it for its next fire (`Some(None)`: nothing to
    /// hand out). `def` is the job as it was before the claim.
    async fn late_sequential_fire(
        &self,
        def: &Document,
        job: Job,
        req: &ClaimRequest,
        token: &str,
    ) -> StoreResult<Option<Option<Document>>> {
        if job.attempt != 0 {
            return Ok(None); // a retry keeps its fire
        }
        let now = req.now_ms;
        let fire = job.scheduled_fire_ms.unwrap_or(job.trigger_time_ms);
        let late = schedule::late_fire(
            &job.spec,
            job.trigger_time_ms,
            fire,
            job.fire_count.max(1),
            now,
        );
        let guard = doc! {
            "_id": &job.job_id,
            "lease_token": token,
            "state": JobState::Running.code(),
        };
        let (update, note) = match late {
            schedule::LateFire::OnTime => return Ok(None),
            schedule::LateFire::CatchUp => (
                doc! { "$set": { "scheduled_fire": now } },
                format!(
                    "missed fire {}: one catch-up run now",
                    lts_core::format_ms(fire)
                ),
            ),
            schedule::LateFire::Skip { next_ms } => {
                advance_schedule(&job.job_id, fire, next_ms, "skipped the missed fire", now)
            }
        };
        let catch_up = matches!(late, schedule::LateFire::CatchUp);
        // The catch-up keeps its lease and revision (the completion's guard).
        self.jobs.update_one(guard, update).await?;
        self.append_log(vec![job_log_doc(
            &job,
            now,
            LogType::Update,
            LogLevel::Info,
            &note,
            "",
        )])
        .await;
        if catch_up {
            let mut d = def.clone();
            d.insert("scheduled_fire", now);
            return Ok(Some(Some(d)));
        }
        Ok(Some(None))
    }

    /// For a definition just leased by a claim whose instances overlap
    /// ([`lts_core::schedule::fires_overlapping_instances`]): inserts the instance of its due
    /// fire, leased with the claim's token, and moves the definition on to its next fire (or
    /// finishes it when the schedule is exhausted). `def` is the definition as it was before
    /// the claim. Returns `None` when it is no such definition, `Some(None)` when no instance
    /// runs (the misfire policy skips a missed fire, or the instance already existed after a
    /// claim that crashed half-way: the unique task id makes each fire happen once), else the
    /// instance as it was before its lease (like claimed documents).
    async fn fire_instance(
        &self,
        def: &Document,
        req: &ClaimRequest,
        token: &str,
        expiry: i64,
    ) -> StoreResult<Option<Option<Document>>> {
        let job = decode(def)?;
        if !schedule::fires_overlapping_instances(&job.spec) {
            return self.late_sequential_fire(def, job, req, token).await;
        }
        let now = req.now_ms;
        let fire = job.scheduled_fire_ms.unwrap_or(job.trigger_time_ms);
        let fired = job.fire_count.max(1);
        let step = schedule::overlap_step(&job.spec, fire, fired, now);
        let inst = schedule::instance_spec(&job.spec, step.instance_fire_ms);
        let inst_id = uuid::Uuid::now_v7().simple().to_string();
        let mut inst_doc = doc! {
            "_id": &inst_id,
            "task_tracker_node_group": &inst.task_tracker_node_group,
            "task_id": &inst.task_id,
            "done": "",
            "state": JobState::Running.code(),
            "trigger_time": job.trigger_time_ms,
            "attempt": 1i64,
            "fire_count": fired as i64,
            "scheduled_fire": step.instance_fire_ms,
            "created_at": now,
            "updated_at": now,
            "rev": 0i64,
            "lease_owner": &req.owner,
            "lease_token": token,
            "lease_expiry": expiry,
        };
        inst_doc.extend(spec_fields(&inst)?);
        let inserted = step.run && self.insert_new(vec![inst_doc.clone()]).await?.is_empty();
        let mut lines = Vec::new();
        let group = &job.spec.task_tracker_node_group;
        if inserted {
            lines.push(log_doc(
                &inst_id,
                &inst.task_id,
                group,
                now,
                LogType::Receive,
                LogLevel::Info,
                &format!("fire {} of {}", lts_core::format_ms(fire), job.job_id),
                0,
                "",
            ));
        }
        let guard = doc! {
            "_id": &job.job_id,
            "lease_token": token,
            "state": JobState::Running.code(),
        };
        let what = if step.run {
            "fired"
        } else {
            "skipped the missed fire"
        };
        let (update, note) = advance_schedule(&job.job_id, fire, step.next_ms, what, now);
        self.jobs.update_one(guard, update).await?;
        // A plain fire is told by the instance's own log; a cron firing every second would
        // fill its definition's log otherwise.
        if step.next_ms.is_none() || !step.run {
            lines.push(log_doc(
                &job.job_id,
                &job.spec.task_id,
                group,
                now,
                LogType::Update,
                LogLevel::Info,
                &note,
                0,
                "",
            ));
        }
        self.append_log(lines).await;
        if !inserted {
            return Ok(Some(None));
        }
        // As claimed documents are handed on: before the lease's attempt increment.
        inst_doc.insert("attempt", 0i64);
        Ok(Some(Some(inst_doc)))
    }

    /// Cancels the queued (or suspended) instances of a cancelled recurring job `def`: its
    /// pending retries and triggered runs; returns their log lines. Running instances finish
    /// their attempt.
    async fn cancel_queued_instances(&self, def: &Job, now: i64) -> StoreResult<Vec<Document>> {
        let filter = doc! {
            "task_tracker_node_group": &def.spec.task_tracker_node_group,
            "task_id": { "$regex": escape_regex(&schedule::instance_prefix(&def.spec.task_id)) },
            "done": "",
            "state": { "$in": [JobState::Queued.code(), JobState::Suspended.code()] },
        };
        let found: Vec<Document> = self.jobs.find(filter.clone()).await?.try_collect().await?;
        let mut lines = Vec::new();
        for d in found {
            let mut job = decode(&d)?;
            let r = self
                .jobs
                .update_one(
                    doc! { "_id": &job.job_id, "done": "", "state": job.state.code() },
                    doc! {
                        "$set": {
                            "state": JobState::Cancelled.code(),
                            "done": &job.job_id,
                            "finished_at": now,
                            "updated_at": now,
                        },
                    },
                )
                .await?;
            if r.matched_count == 1 {
                job.state = JobState::Cancelled;
                lines.push(job_log_doc(
                    &job,
                    now,
                    LogType::Del,
                    LogLevel::Info,
                    &format!("cancelled with its schedule {}", def.job_id),
                    "",
                ));
            }
        }
        Ok(lines)
    }

    /// Puts leased jobs matching `filter` back in their queues, one guarded update each.
    async fn requeue_matching(
        &self,
        filter: Document,
        now: i64,
        note: &str,
    ) -> StoreResult<Vec<Requeued>> {
        let found: Vec<Document> = self
            .jobs
            .find(filter)
            .projection(doc! {
                "task_tracker_node_group": 1, "task_id": 1, "attempt": 1, "lease_token": 1,
                "lease_expiry": 1, "rev": 1, "suspend_requested": 1,
            })
            .await?
            .try_collect()
            .await?;
        let mut out = Vec::new();
        let mut lines = Vec::new();
        for d in found {
            let (Some(id), Some(token)) = (text(&d, "_id"), text(&d, "lease_token")) else {
                continue;
            };
            let state = if d.get_bool("suspend_requested").unwrap_or(false) {
                JobState::Suspended
            } else {
                JobState::Queued
            };
            let r = self
                .jobs
                .update_one(
                    // Unchanged since it was read: a renewal in between (a new expiry) keeps it.
                    doc! {
                        "_id": id,
                        "state": JobState::Running.code(),
                        "lease_token": token,
                        "lease_expiry": int(&d, "lease_expiry").unwrap_or(0),
                        "rev": int(&d, "rev").unwrap_or(0),
                    },
                    doc! {
                        "$set": { "state": state.code(), "updated_at": now },
                        "$unset": unset_lease(),
                    },
                )
                .await?;
            if r.matched_count == 0 {
                continue;
            }
            self.forget_lease(id);
            let group = text(&d, "task_tracker_node_group").unwrap_or_default();
            lines.push(log_doc(
                id,
                text(&d, "task_id").unwrap_or_default(),
                group,
                now,
                LogType::FixedDead,
                LogLevel::Warn,
                note,
                int(&d, "attempt").unwrap_or(0) as u32,
                "",
            ));
            out.push(Requeued {
                job_id: id.to_string(),
                node_group: group.to_string(),
            });
        }
        self.append_log(lines).await;
        Ok(out)
    }

    /// The newest finished job with this key.
    async fn find_finished(&self, key: &JobKey) -> StoreResult<Option<Document>> {
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

    /// The answer for a key with no unfinished job.
    async fn not_active(&self, key: &JobKey) -> StoreResult<ChangeOutcome> {
        Ok(match self.find_finished(key).await? {
            Some(d) => ChangeOutcome::AlreadyFinished(decode(&d)?),
            None => ChangeOutcome::NotFound,
        })
    }

    async fn find_active(&self, key: &JobKey) -> StoreResult<Option<Document>> {
        let filter = match key {
            JobKey::Id(id) => doc! { "_id": id, "done": "" },
            JobKey::Task {
                node_group,
                task_id,
            } => doc! { "task_tracker_node_group": node_group, "task_id": task_id, "done": "" },
        };
        Ok(self.jobs.find_one(filter).await?)
    }
}

/// Writes the log lines of concurrent operations together: one `insert` per group, gathering
/// lines for up to [`LOG_LINGER`] so that a busy tracker sends few, large inserts. A failed write
/// is retried with backoff a few times, then dropped with an error in the log (a job's state
/// never depends on its log lines). A crash loses at most the lines of the last linger window.
async fn log_writer(coll: Collection<Document>, mut rx: mpsc::Receiver<LogWrite>) {
    const MAX_LINES: usize = 10_000;
    while let Some((first, flush)) = rx.recv().await {
        let mut docs = first;
        let mut waiters: Vec<oneshot::Sender<()>> = flush.into_iter().collect();
        let deadline = tokio::time::Instant::now() + LOG_LINGER;
        while docs.len() < MAX_LINES && waiters.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((more, flush))) => {
                    docs.extend(more);
                    waiters.extend(flush);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=5 {
            if docs.is_empty() {
                break;
            }
            match coll.insert_many(docs.iter()).ordered(false).await {
                Ok(_) => break,
                Err(e) if attempt < 5 => {
                    tracing::warn!(error = %e, lines = docs.len(), retry_in = ?delay, "mongodb: job log write failed");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    metrics::counter!("lts_store_log_lines_dropped_total")
                        .increment(docs.len() as u64);
                    tracing::error!(error = %e, lines = docs.len(), "mongodb: job log lines dropped");
                }
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

fn outcome_set(now: i64, c: &Completion) -> Document {
    doc! {
        "updated_at": now,
        "last_outcome": c.outcome.code(),
        "last_message": &c.message,
    }
}

#[async_trait]
impl JobStore for MongoStore {
    async fn submit(&self, jobs: Vec<JobSpec>, now: i64) -> StoreResult<Vec<SubmitOutcome>> {
        let mut out: Vec<Option<SubmitOutcome>> = vec![None; jobs.len()];
        let mut todo: Vec<usize> = (0..jobs.len()).collect();
        let mut lines = Vec::new();
        // A duplicate that finishes between our insert and our lookup frees its task id: try
        // the insert again (a few rounds at most; each round makes progress or returns).
        for _round in 0..5 {
            if todo.is_empty() {
                break;
            }
            let mut docs = Vec::with_capacity(todo.len());
            let mut ids = Vec::with_capacity(todo.len());
            for &i in &todo {
                let spec = &jobs[i];
                let job_id = uuid::Uuid::now_v7().simple().to_string();
                let trigger = first_trigger(spec, now).unwrap_or(now);
                let scheduled = spec.schedule.is_recurring().then_some(trigger);
                let mut d = doc! {
                    "_id": &job_id,
                    "task_tracker_node_group": &spec.task_tracker_node_group,
                    "task_id": &spec.task_id,
                    "done": "",
                    "state": JobState::Queued.code(),
                    "trigger_time": trigger,
                    "attempt": 0i64,
                    "fire_count": 1i64,
                    "scheduled_fire": opt_i64(scheduled),
                    "created_at": now,
                    "updated_at": now,
                    "rev": 0i64,
                };
                d.extend(spec_fields(spec)?);
                docs.push(d);
                ids.push(job_id);
            }
            let dup_positions = self.insert_new(docs).await?;
            let mut dups = Vec::new();
            for (k, &i) in todo.iter().enumerate() {
                if dup_positions.contains(&k) {
                    dups.push(i);
                    continue;
                }
                let spec = &jobs[i];
                lines.push(log_doc(
                    &ids[k],
                    &spec.task_id,
                    &spec.task_tracker_node_group,
                    now,
                    LogType::Receive,
                    LogLevel::Info,
                    "accepted",
                    0,
                    "",
                ));
                out[i] = Some(SubmitOutcome::Accepted {
                    job_id: ids[k].clone(),
                });
            }
            todo.clear();
            for i in dups {
                let spec = &jobs[i];
                let key = JobKey::Task {
                    node_group: spec.task_tracker_node_group.clone(),
                    task_id: spec.task_id.clone(),
                };
                let Some(existing) = self.find_active(&key).await? else {
                    todo.push(i);
                    continue;
                };
                let job_id = text(&existing, "_id")
                    .ok_or_else(|| corrupt(&existing, "_id"))?
                    .to_string();
                if !spec.replace_on_exist {
                    out[i] = Some(SubmitOutcome::Duplicate { job_id });
                    continue;
                }
                let trigger = first_trigger(spec, now).unwrap_or(now);
                let mut set = spec_fields(spec)?;
                set.insert("updated_at", now);
                // A queued job takes the new trigger time; a running one keeps its lease and
                // the new definition applies to what comes after it.
                let mut queued_set = set.clone();
                queued_set.insert("trigger_time", trigger);
                queued_set.insert("scheduled_fire", trigger);
                let queued = self
                    .jobs
                    .update_one(
                        doc! { "_id": &job_id, "state": JobState::Queued.code() },
                        doc! { "$set": queued_set, "$inc": { "rev": 1i64 } },
                    )
                    .await?;
                let note = if queued.matched_count == 1 {
                    "replaced by a new submit"
                } else {
                    let r = self
                        .jobs
                        .update_one(
                            doc! { "_id": &job_id, "done": "" },
                            doc! { "$set": set, "$inc": { "rev": 1i64 } },
                        )
                        .await?;
                    if r.matched_count == 0 {
                        todo.push(i); // finished meanwhile: submit it as new
                        continue;
                    }
                    "replaced by a new submit; applies after the running attempt"
                };
                lines.push(log_doc(
                    &job_id,
                    &spec.task_id,
                    &spec.task_tracker_node_group,
                    now,
                    LogType::Update,
                    LogLevel::Info,
                    note,
                    int(&existing, "attempt").unwrap_or(0) as u32,
                    "",
                ));
                out[i] = Some(SubmitOutcome::Replaced { job_id });
            }
        }
        self.append_log(lines).await;
        out.into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Backend("submit: dedup did not settle".into())))
            .collect()
    }

    async fn claim(&self, req: ClaimRequest) -> StoreResult<Vec<Lease>> {
        if req.max == 0 {
            return Ok(Vec::new());
        }
        let now = req.now_ms;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expiry = now + req.lease_ms;
        let due = doc! {
            "task_tracker_node_group": &req.node_group,
            "state": JobState::Queued.code(),
            "trigger_time": { "$lte": now },
        };
        let order = doc! { "priority": -1, "trigger_time": 1, "_id": 1 };
        let lease = doc! {
            "$set": {
                "state": JobState::Running.code(),
                "lease_owner": &req.owner,
                "lease_token": &token,
                "lease_expiry": expiry,
                "updated_at": now,
            },
            "$inc": { "attempt": 1i64 },
        };
        let won: Vec<Document> = if req.max == 1 {
            // One job: one find_one_and_update takes the best and leases it.
            self.jobs
                .find_one_and_update(due, lease)
                .sort(order)
                .return_document(ReturnDocument::After)
                .await?
                .into_iter()
                .map(|mut d| {
                    let a = int(&d, "attempt").unwrap_or(1) - 1;
                    d.insert("attempt", a);
                    d
                })
                .collect()
        } else {
            // Several: read the best candidates, then lease each only if it is still queued,
            // due and unchanged (same revision) — what another tracker took or a submit
            // replaced meanwhile is left alone. Two round trips for up to `max` jobs.
            let candidates: Vec<Document> = self
                .jobs
                .find(due.clone())
                .sort(order)
                .limit(req.max as i64)
                .await?
                .try_collect()
                .await?;
            if candidates.is_empty() {
                return Ok(Vec::new());
            }
            let guards: Vec<Document> = candidates
                .iter()
                .map(|d| doc! { "_id": d.get("_id").cloned().unwrap_or(Bson::Null), "rev": int(d, "rev").unwrap_or(0) })
                .collect();
            let mut guarded = due;
            guarded.insert("$or", guards);
            let r = self.jobs.update_many(guarded, lease).await?;
            if r.matched_count as usize == candidates.len() {
                candidates
            } else {
                // Lost some to another tracker: read back exactly what this token holds.
                let ids: Vec<Bson> = candidates
                    .iter()
                    .filter_map(|d| d.get("_id").cloned())
                    .collect();
                let mut mine: Vec<Document> = self
                    .jobs
                    .find(doc! { "_id": { "$in": ids }, "lease_token": &token })
                    .await?
                    .try_collect()
                    .await?;
                for d in &mut mine {
                    // Undo the attempt increment for the common decode below.
                    let a = int(d, "attempt").unwrap_or(1) - 1;
                    d.insert("attempt", a);
                }
                mine
            }
        };
        // A recurring job with overlapping instances is not run itself: the instance of its
        // due fire is created and leased in its place (see `fire_instance`).
        let mut docs = Vec::with_capacity(won.len());
        for d in won {
            let recurring = text(&d, "spec").is_some_and(super::spec_may_recur);
            if !recurring {
                docs.push(d);
                continue;
            }
            match self.fire_instance(&d, &req, &token, expiry).await? {
                None => docs.push(d),
                Some(Some(instance)) => docs.push(instance),
                Some(None) => {}
            }
        }
        let mut leases = Vec::with_capacity(docs.len());
        let mut lines = Vec::with_capacity(docs.len());
        for d in docs {
            let mut job = decode(&d)?;
            job.state = JobState::Running;
            job.attempt += 1;
            job.lease_owner = Some(req.owner.clone());
            job.lease_expiry_ms = Some(expiry);
            job.updated_at_ms = now;
            self.cache_lease(&job, &token, int(&d, "rev").unwrap_or(0));
            lines.push(job_log_doc(
                &job,
                now,
                LogType::Sent,
                LogLevel::Info,
                &req.owner,
                &req.owner,
            ));
            leases.push(Lease {
                job,
                token: token.clone(),
                expiry_ms: expiry,
            });
        }
        leases.sort_by(|a, b| {
            b.job
                .spec
                .priority
                .cmp(&a.job.spec.priority)
                .then(a.job.trigger_time_ms.cmp(&b.job.trigger_time_ms))
                .then(a.job.job_id.cmp(&b.job.job_id))
        });
        self.append_log(lines).await;
        Ok(leases)
    }

    async fn renew(&self, leases: Vec<LeaseRef>, expiry: i64) -> StoreResult<Vec<String>> {
        let mut by_token: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in leases {
            by_token.entry(l.token).or_default().push(l.job_id);
        }
        let mut lost = Vec::new();
        for (token, ids) in by_token {
            let filter = doc! { "_id": { "$in": &ids }, "lease_token": &token, "state": JobState::Running.code() };
            let r = self
                .jobs
                .update_many(filter.clone(), doc! { "$set": { "lease_expiry": expiry } })
                .await?;
            if r.matched_count as usize == ids.len() {
                continue;
            }
            let held: Vec<Document> = self
                .jobs
                .find(filter)
                .projection(doc! { "_id": 1 })
                .await?
                .try_collect()
                .await?;
            let held: Vec<&str> = held.iter().filter_map(|d| text(d, "_id")).collect();
            lost.extend(
                ids.iter()
                    .filter(|id| !held.contains(&id.as_str()))
                    .cloned(),
            );
        }
        for id in &lost {
            self.forget_lease(id);
        }
        Ok(lost)
    }

    async fn complete(&self, c: Completion) -> StoreResult<CompleteOutcome> {
        let mut cached = self.forget_lease(&c.job_id).filter(|l| l.token == c.token);
        // Suspending a running job changes its revision, so a cached lease never hides it.
        let now = c.now_ms;
        // A replace between the claim and the result changes the revision: read the job again
        // and decide with the new definition (a few rounds at most).
        for _ in 0..5 {
            let (mut job, rev, suspended) = match cached.take() {
                Some(l) => (l.job, l.rev, false),
                None => {
                    let Some(d) = self.jobs.find_one(doc! { "_id": &c.job_id }).await? else {
                        return Ok(CompleteOutcome::Stale {
                            reason: "job is no longer active (cancelled or already finished)"
                                .into(),
                        });
                    };
                    if text(&d, "done") != Some("") {
                        return Ok(CompleteOutcome::Stale {
                            reason: "job is no longer active (cancelled or already finished)"
                                .into(),
                        });
                    }
                    if int(&d, "state") != Some(JobState::Running.code())
                        || text(&d, "lease_token") != Some(c.token.as_str())
                    {
                        return Ok(CompleteOutcome::Stale {
                            reason: "lease token does not match: the job was reassigned".into(),
                        });
                    }
                    (
                        decode(&d)?,
                        int(&d, "rev").unwrap_or(0),
                        d.get_bool("suspend_requested").unwrap_or(false),
                    )
                }
            };
            let requeued_state = if suspended {
                JobState::Suspended
            } else {
                JobState::Queued
            };
            let scheduled = job.scheduled_fire_ms.unwrap_or(job.created_at_ms);
            let disp = disposition(
                &job.spec,
                job.attempt,
                scheduled,
                job.fire_count,
                c.outcome,
                now,
                &self.retry,
            );
            let mut set = outcome_set(now, &c);
            let mut update = Document::new();
            let mut instance_state = None;
            match &disp {
                Disposition::Finish(state) => {
                    set.insert("state", state.code());
                    set.insert("done", &job.job_id);
                    set.insert("finished_at", now);
                    instance_state = Some(*state);
                }
                Disposition::Retry { at_ms } => {
                    set.insert("state", requeued_state.code());
                    set.insert("trigger_time", *at_ms);
                }
                Disposition::NextFire { at_ms, instance } => {
                    set.insert("state", requeued_state.code());
                    set.insert("trigger_time", *at_ms);
                    set.insert("scheduled_fire", *at_ms);
                    set.insert("attempt", 0i64);
                    update.insert("$inc", doc! { "fire_count": 1i64 });
                    instance_state = Some(*instance);
                }
            }
            let feedback_group = match instance_state {
                Some(state) if job.spec.need_feedback => {
                    update.insert(
                        "$push",
                        doc! { "fb": {
                            "n": job.fire_count as i64,
                            "state": state.code(),
                            "outcome": c.outcome.code(),
                            "message": &c.message,
                            "finished_at": now,
                            "attempt": job.attempt as i64,
                            "fire_count": job.fire_count as i64,
                            "scheduled_fire": opt_i64(job.scheduled_fire_ms),
                        } },
                    );
                    set.insert("fb_group", &job.spec.submit_node_group);
                    Some(job.spec.submit_node_group.clone())
                }
                _ => None,
            };
            update.insert("$set", set);
            update.insert("$unset", unset_lease());
            let r = self
                .jobs
                .update_one(
                    doc! {
                        "_id": &c.job_id,
                        "lease_token": &c.token,
                        "state": JobState::Running.code(),
                        "rev": rev,
                    },
                    update,
                )
                .await?;
            if r.matched_count == 0 {
                continue; // re-read: stale, or a new revision
            }
            let mut lines: Vec<Document> = c
                .logs
                .iter()
                .map(|l| job_log_doc(&job, l.time_ms, LogType::Biz, l.level, &l.message, &c.node))
                .collect();
            let summary = if c.message.is_empty() {
                c.outcome.as_str().to_string()
            } else {
                format!("{}: {}", c.outcome, c.message)
            };
            let level = if c.outcome == Outcome::Success {
                LogLevel::Info
            } else {
                LogLevel::Warn
            };
            lines.push(job_log_doc(
                &job,
                now,
                LogType::Finished,
                level,
                &summary,
                &c.node,
            ));
            if let Disposition::Retry { at_ms } = &disp {
                lines.push(job_log_doc(
                    &job,
                    now,
                    LogType::Resend,
                    LogLevel::Info,
                    &format!(
                        "retry {} of {} at {}",
                        job.attempt,
                        job.spec.max_retries,
                        lts_core::format_ms(*at_ms)
                    ),
                    "",
                ));
            }
            job.last_outcome = Some(c.outcome);
            self.append_log(lines).await;
            return Ok(CompleteOutcome::Accepted {
                node_group: job.spec.task_tracker_node_group,
                disposition: disp,
                feedback_group,
                submit_node_group: job.spec.submit_node_group,
            });
        }
        Err(StoreError::Backend(format!(
            "complete {}: the job kept changing; try again",
            c.job_id
        )))
    }

    async fn release(&self, leases: Vec<LeaseRef>, now: i64) -> StoreResult<Vec<Requeued>> {
        let mut out = Vec::new();
        let mut lines = Vec::new();
        for l in leases {
            let mut r = None;
            for (suspended, state) in [(false, JobState::Queued), (true, JobState::Suspended)] {
                r = self
                    .jobs
                    .find_one_and_update(
                        doc! {
                            "_id": &l.job_id,
                            "lease_token": &l.token,
                            "state": JobState::Running.code(),
                            "suspend_requested": if suspended { Bson::Boolean(true) } else { Bson::Document(doc! { "$ne": true }) },
                        },
                        doc! {
                            "$set": { "state": state.code(), "updated_at": now },
                            "$unset": unset_lease(),
                            "$inc": { "attempt": -1i64 },
                        },
                    )
                    .projection(doc! { "task_tracker_node_group": 1, "task_id": 1, "attempt": 1 })
                    .await?;
                if r.is_some() {
                    break;
                }
            }
            self.forget_lease(&l.job_id);
            if let Some(d) = r {
                let group = text(&d, "task_tracker_node_group")
                    .unwrap_or_default()
                    .to_string();
                lines.push(log_doc(
                    &l.job_id,
                    text(&d, "task_id").unwrap_or_default(),
                    &group,
                    now,
                    LogType::Resend,
                    LogLevel::Info,
                    "handed back by its TaskTracker",
                    (int(&d, "attempt").unwrap_or(1) - 1).max(0) as u32,
                    "",
                ));
                out.push(Requeued {
                    job_id: l.job_id,
                    node_group: group,
                });
            }
        }
        self.append_log(lines).await;
        Ok(out)
    }

    async fn requeue_expired(&self, now: i64) -> StoreResult<Vec<Requeued>> {
        self.requeue_matching(
            doc! { "lease_expiry": { "$lt": now }, "state": JobState::Running.code() },
            now,
            "lease expired",
        )
        .await
    }

    async fn requeue_owner(&self, owner: &str, now: i64) -> StoreResult<Vec<Requeued>> {
        self.requeue_matching(
            doc! { "lease_owner": owner, "state": JobState::Running.code() },
            now,
            "its TaskTracker left the cluster",
        )
        .await
    }

    async fn requeue_held(&self, leases: Vec<HeldLease>, now: i64) -> StoreResult<Vec<Requeued>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let held: Vec<Document> = leases
            .iter()
            .map(
                |l| doc! { "_id": &l.job_id, "lease_token": &l.token, "lease_expiry": l.expiry_ms },
            )
            .collect();
        self.requeue_matching(
            doc! { "$or": held, "state": JobState::Running.code() },
            now,
            "its TaskTracker left the cluster (its stream ended)",
        )
        .await
    }

    async fn cancel(&self, key: JobKey, now: i64) -> StoreResult<CancelOutcome> {
        for _ in 0..5 {
            let Some(d) = self.find_active(&key).await? else {
                return Ok(match self.find_finished(&key).await? {
                    Some(d) => CancelOutcome::AlreadyFinished(decode(&d)?),
                    None => CancelOutcome::NotFound,
                });
            };
            let mut job = decode(&d)?;
            let r = self
                .jobs
                .update_one(
                    doc! { "_id": &job.job_id, "done": "", "updated_at": job.updated_at_ms, "state": job.state.code() },
                    doc! {
                        "$set": {
                            "state": JobState::Cancelled.code(),
                            "done": &job.job_id,
                            "finished_at": now,
                            "updated_at": now,
                        },
                        "$unset": unset_lease(),
                    },
                )
                .await?;
            if r.matched_count == 0 {
                continue; // it changed meanwhile: look again
            }
            self.forget_lease(&job.job_id);
            job.state = JobState::Cancelled;
            job.finished_at_ms = Some(now);
            job.updated_at_ms = now;
            job.lease_owner = None;
            job.lease_expiry_ms = None;
            let mut lines = vec![job_log_doc(
                &job,
                now,
                LogType::Del,
                LogLevel::Info,
                "cancelled by a user",
                "",
            )];
            if job.spec.schedule.is_recurring() {
                lines.extend(self.cancel_queued_instances(&job, now).await?);
            }
            self.append_log(lines).await;
            return Ok(CancelOutcome::Cancelled(job));
        }
        Err(StoreError::Backend(
            "cancel: the job kept changing; try again".into(),
        ))
    }

    async fn suspend(&self, key: JobKey, now: i64) -> StoreResult<ChangeOutcome> {
        for _ in 0..5 {
            let Some(d) = self.find_active(&key).await? else {
                return self.not_active(&key).await;
            };
            let mut job = decode(&d)?;
            if d.get_bool("suspend_requested").unwrap_or(false) {
                return Ok(ChangeOutcome::Unchanged(job));
            }
            let state = if job.state == JobState::Queued {
                JobState::Suspended
            } else {
                job.state
            };
            let r = self
                .jobs
                .update_one(
                    doc! { "_id": &job.job_id, "done": "", "rev": int(&d, "rev").unwrap_or(0), "state": job.state.code() },
                    doc! {
                        "$set": { "suspend_requested": true, "state": state.code(), "updated_at": now },
                        "$inc": { "rev": 1i64 },
                    },
                )
                .await?;
            if r.matched_count == 0 {
                continue; // it changed meanwhile: look again
            }
            let note = if job.state == JobState::Running {
                "suspended by a user; the running attempt finishes first"
            } else {
                "suspended by a user"
            };
            job.state = state;
            job.updated_at_ms = now;
            self.append_log(vec![job_log_doc(
                &job,
                now,
                LogType::Suspend,
                LogLevel::Info,
                note,
                "",
            )])
            .await;
            return Ok(ChangeOutcome::Changed(job));
        }
        Err(StoreError::Backend(
            "suspend: the job kept changing; try again".into(),
        ))
    }

    async fn resume(&self, key: JobKey, now: i64) -> StoreResult<ChangeOutcome> {
        for _ in 0..5 {
            let Some(d) = self.find_active(&key).await? else {
                return self.not_active(&key).await;
            };
            let mut job = decode(&d)?;
            let flagged = d.get_bool("suspend_requested").unwrap_or(false);
            if !flagged && job.state != JobState::Suspended {
                return Ok(ChangeOutcome::Unchanged(job));
            }
            let mut set = doc! { "suspend_requested": false, "updated_at": now };
            let note = if job.state == JobState::Suspended {
                let at = resume_trigger(&job.spec, job.trigger_time_ms, job.fire_count, now);
                set.insert("state", JobState::Queued.code());
                set.insert("trigger_time", at);
                job.state = JobState::Queued;
                job.trigger_time_ms = at;
                if job.spec.schedule.is_recurring() {
                    set.insert("scheduled_fire", at);
                    job.scheduled_fire_ms = Some(at);
                }
                format!("resumed by a user; runs at {}", lts_core::format_ms(at))
            } else {
                "resumed by a user before its running attempt ended".to_string()
            };
            let r = self
                .jobs
                .update_one(
                    doc! { "_id": &job.job_id, "done": "", "rev": int(&d, "rev").unwrap_or(0), "state": int(&d, "state").unwrap_or(0) },
                    doc! { "$set": set, "$inc": { "rev": 1i64 } },
                )
                .await?;
            if r.matched_count == 0 {
                continue;
            }
            job.updated_at_ms = now;
            self.append_log(vec![job_log_doc(
                &job,
                now,
                LogType::Resume,
                LogLevel::Info,
                &note,
                "",
            )])
            .await;
            return Ok(ChangeOutcome::Changed(job));
        }
        Err(StoreError::Backend(
            "resume: the job kept changing; try again".into(),
        ))
    }

    async fn get(&self, key: JobKey) -> StoreResult<Option<Job>> {
        let found = match &key {
            JobKey::Id(id) => self.jobs.find_one(doc! { "_id": id }).await?,
            JobKey::Task { .. } => match self.find_active(&key).await? {
                Some(d) => Some(d),
                None => self.find_finished(&key).await?,
            },
        };
        found.as_ref().map(decode).transpose()
    }

    async fn list(&self, f: ListFilter) -> StoreResult<Page> {
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
            filter.insert("task_id", doc! { "$regex": escape_regex(p) });
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
        let mut jobs = docs.iter().map(decode).collect::<StoreResult<Vec<_>>>()?;
        let next = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last().map(|j| j.job_id.clone())
        } else {
            None
        };
        Ok(Page { jobs, next })
    }

    async fn log(&self, job_id: &str, limit: usize) -> StoreResult<Vec<LogEntry>> {
        self.flush_log().await;
        let docs: Vec<Document> = self
            .log
            .find(doc! { "job_id": job_id })
            .sort(doc! { "time": 1, "_id": 1 })
            .limit(limit as i64)
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .iter()
            .map(|d| LogEntry {
                time_ms: int(d, "time").unwrap_or(0),
                log_type: parse_log_type(text(d, "log_type").unwrap_or_default()),
                level: LogLevel::parse_lenient(text(d, "level").unwrap_or_default()),
                message: text(d, "message").unwrap_or_default().to_string(),
                attempt: int(d, "attempt").unwrap_or(0) as u32,
                job_id: text(d, "job_id").unwrap_or_default().to_string(),
                task_id: text(d, "task_id").unwrap_or_default().to_string(),
                task_tracker_node_group: text(d, "task_tracker_node_group")
                    .unwrap_or_default()
                    .to_string(),
                node: text(d, "node").unwrap_or_default().to_string(),
            })
            .collect())
    }

    async fn stats(&self, node_group: Option<&str>) -> StoreResult<Stats> {
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
            let n = int(&g, "n").unwrap_or(0) as u64;
            match int(&g, "_id").and_then(JobState::from_code) {
                Some(JobState::Queued) => stats.queued += n,
                Some(JobState::Running) => stats.running += n,
                Some(JobState::Suspended) => stats.suspended += n,
                Some(JobState::Succeeded) => stats.succeeded += n,
                Some(JobState::Failed) => stats.failed += n,
                Some(JobState::Cancelled) => stats.cancelled += n,
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

    async fn next_due(&self, node_group: &str) -> StoreResult<Option<i64>> {
        let d = self
            .jobs
            .find_one(
                doc! { "task_tracker_node_group": node_group, "state": JobState::Queued.code() },
            )
            .sort(doc! { "trigger_time": 1 })
            .projection(doc! { "trigger_time": 1 })
            .await?;
        Ok(d.and_then(|d| int(&d, "trigger_time")))
    }

    async fn pending_feedback(
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
        for d in docs {
            let job = decode(&d)?;
            for entry in d.get_array("fb").map(|a| a.as_slice()).unwrap_or_default() {
                let Some(e) = entry.as_document() else {
                    continue;
                };
                let outcome = int(e, "outcome")
                    .and_then(Outcome::from_code)
                    .ok_or_else(|| corrupt(&d, "feedback outcome"))?;
                let message = text(e, "message").unwrap_or_default().to_string();
                let finished_at = int(e, "finished_at").unwrap_or(0);
                let mut snapshot = job.clone();
                snapshot.state = int(e, "state")
                    .and_then(JobState::from_code)
                    .unwrap_or(snapshot.state);
                snapshot.attempt = int(e, "attempt").unwrap_or(0) as u32;
                snapshot.fire_count = int(e, "fire_count").unwrap_or(1) as u64;
                snapshot.scheduled_fire_ms = int(e, "scheduled_fire");
                snapshot.last_outcome = Some(outcome);
                snapshot.last_message = Some(message.clone());
                snapshot.finished_at_ms = Some(finished_at);
                snapshot.lease_owner = None;
                snapshot.lease_expiry_ms = None;
                items.push(FeedbackItem {
                    feedback_id: format!("{}/{}", job.job_id, int(e, "n").unwrap_or(0)),
                    job: snapshot,
                    outcome,
                    message,
                    finished_at_ms: finished_at,
                });
            }
        }
        Ok(items)
    }

    async fn ack_feedback(&self, ids: Vec<String>) -> StoreResult<()> {
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
                    doc! { "_id": job },
                    doc! { "$pull": { "fb": { "n": { "$in": ns } } } },
                )
                .await?;
        }
        let jobs: Vec<&String> = per_job.keys().collect();
        self.jobs
            .update_many(
                doc! { "_id": { "$in": jobs }, "fb": { "$size": 0 } },
                doc! { "$unset": { "fb": "", "fb_group": "" } },
            )
            .await?;
        Ok(())
    }

    async fn fence(&self, epoch: u64, identity: &str, now: i64) -> StoreResult<bool> {
        let r = self
            .db
            .collection::<Document>("fence")
            .update_one(
                doc! {
                    "_id": "master",
                    "$or": [
                        { "epoch": { "$lte": epoch as i64 } },
                        { "at": { "$lt": now - super::FENCE_STALE_MS } },
                    ],
                },
                doc! { "$set": { "epoch": epoch as i64, "identity": identity, "at": now } },
            )
            .upsert(true)
            .await;
        match r {
            Ok(_) => Ok(true),
            // The upsert found no matching fence and collided with the newer master's.
            Err(e) if matches!(e.kind.as_ref(), ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn enforce_retention(&self, before: i64) -> StoreResult<u64> {
        // Finished jobs whose feedback is still pending stay until it is acknowledged.
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

    async fn health(&self) -> StoreResult<()> {
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

    fn round_trips(&self) -> Option<u64> {
        Some(self.round_trips())
    }
}
