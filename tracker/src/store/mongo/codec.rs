//! One codec between the `jobs` documents and [`StoredJob`], and the documents of the job log
//! and of pending feedback.
//!
//! A job document keeps every field of the job, the lease token, `suspend_requested`, the
//! revision `rev` (bumped by every write: the guard of the next one), the dedup key `done`
//! (`""` while the job is unfinished, its id once final) and the spec as JSON with the parts
//! of it that claims sort on and listings filter on beside it ([`spec_fields`]). A field
//! without a value is absent, never `null`.

use lts_core::transition::{Field, StoredJob, Write};
use lts_core::{FeedbackItem, Job, JobSpec, JobState, LogEntry, LogLevel, Outcome, Shard};
use mongodb::bson::{Bson, DateTime, Document, doc};

use crate::store::{StoreError, StoreResult, parse_log_type};

/// A job as read, with the revision its next write is guarded by.
#[derive(Debug, Clone)]
pub(super) struct Read {
    /// The job.
    pub stored: StoredJob,
    /// Its revision when read.
    pub rev: i64,
}

pub(super) fn int(doc: &Document, key: &str) -> Option<i64> {
    match doc.get(key)? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

pub(super) fn text<'a>(doc: &'a Document, key: &str) -> Option<&'a str> {
    doc.get_str(key).ok()
}

fn corrupt(doc: &Document, what: &str) -> StoreError {
    let id = doc.get("_id").map(|b| b.to_string()).unwrap_or_default();
    StoreError::Corrupt(format!("job {id}: {what}"))
}

/// Decodes a `jobs` document as the model's job.
pub(super) fn job(doc: &Document) -> StoreResult<Job> {
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
        instance_of: text(doc, "instance_of").map(str::to_string),
        lease_losses: int(doc, "lease_losses").unwrap_or(0) as u32,
        deadline_ms: int(doc, "deadline"),
        shard: text(doc, "shard_of").map(|of| Shard {
            of: of.to_string(),
            index: int(doc, "shard_index").unwrap_or(0) as u32,
            count: int(doc, "shard_count").unwrap_or(0) as u32,
            on: text(doc, "shard_on").map(str::to_string),
        }),
        shard_progress: None,
        node: match text(doc, "node") {
            Some(json) => {
                Some(serde_json::from_str(json).map_err(|e| corrupt(doc, &format!("node: {e}")))?)
            }
            None => None,
        },
        map: match text(doc, "map") {
            Some(json) => {
                Some(serde_json::from_str(json).map_err(|e| corrupt(doc, &format!("map: {e}")))?)
            }
            None => None,
        },
    })
}

/// Decodes a `jobs` document as a stored job and its revision.
pub(super) fn read(doc: &Document) -> StoreResult<Read> {
    Ok(Read {
        stored: StoredJob {
            job: job(doc)?,
            lease_token: text(doc, "lease_token").map(str::to_string),
            suspend_requested: doc.get_bool("suspend_requested").unwrap_or(false),
        },
        rev: int(doc, "rev").unwrap_or(0),
    })
}

/// The fields a job's spec is kept in: the spec itself (as JSON), and the parts of it that
/// claims sort on (`priority`) and listings filter on (`submit_node_group`, `schedule_kind`).
pub(super) fn spec_fields(spec: &JobSpec) -> StoreResult<Document> {
    Ok(doc! {
        "spec": serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        "priority": spec.priority,
        "submit_node_group": &spec.submit_node_group,
        "schedule_kind": spec.schedule.kind().as_str(),
    })
}

/// The dedup key of a job: `""` while unfinished, its id once final.
fn done(job: &Job) -> &str {
    if job.state.is_final() {
        &job.job_id
    } else {
        ""
    }
}

/// A new job's document, at revision 0.
pub(super) fn new_doc(s: &StoredJob) -> StoreResult<Document> {
    let job = &s.job;
    let mut d = doc! {
        "_id": &job.job_id,
        "task_tracker_node_group": &job.spec.task_tracker_node_group,
        "task_id": &job.spec.task_id,
        "done": done(job),
        "created_at": job.created_at_ms,
        "rev": 0i64,
    };
    if let Some(of) = &job.instance_of {
        d.insert("instance_of", of);
        if job.scheduled_fire_ms.is_some() {
            // A scheduled fire (not a trigger): the `fire` index keeps it to one instance.
            d.insert("fire_key", format!("{of}#{}", job.fire_count));
        }
    }
    if let Some(key) = &job.spec.idempotency_key {
        // The `submit_key` index answers a repeated submit with this job.
        d.insert("submit_key", key);
    }
    if let Some(key) = job.spec.affinity_key() {
        d.insert("affinity", key);
    }
    if let Some(bucket) = job.spec.route_bucket() {
        d.insert("route_bucket", bucket);
    }
    if let Some(shard) = &job.shard {
        d.insert("shard_of", &shard.of);
        d.insert("shard_index", i64::from(shard.index));
        d.insert("shard_count", i64::from(shard.count));
        if let Some(on) = &shard.on {
            d.insert("shard_on", on);
        }
    }
    if let Some(node) = &job.node {
        let json = serde_json::to_string(node).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        d.insert("node", json);
        if node.handles_failure {
            // Counted by `write::shard_progress`: its failure does not fail the workflow.
            d.insert("node_handles", true);
        }
    }
    if let Some(map) = &job.map {
        d.insert("map", map_json(map)?);
    }
    d.extend(spec_fields(&job.spec)?);
    let (set, _) = fields(s, ALL_FIELDS)?;
    d.extend(set);
    Ok(d)
}

/// Every field a transition can change: what a new document is written with.
const ALL_FIELDS: &[Field] = &[
    Field::State,
    Field::Attempt,
    Field::TriggerTime,
    Field::ScheduledFire,
    Field::FireCount,
    Field::Lease,
    Field::LastResult,
    Field::SuspendRequested,
    Field::FinishedAt,
    Field::UpdatedAt,
];

fn put(set: &mut Document, unset: &mut Document, key: &str, value: Option<Bson>) {
    match value {
        Some(v) => {
            set.insert(key, v);
        }
        None => {
            unset.insert(key, "");
        }
    }
}

/// The `$set` and `$unset` of `fields` with their values in `s`.
pub(super) fn fields(s: &StoredJob, fields: &[Field]) -> StoreResult<(Document, Document)> {
    let (job, mut set, mut unset) = (&s.job, Document::new(), Document::new());
    let i64s = |v: Option<i64>| v.map(Bson::Int64);
    for field in fields {
        match field {
            Field::State => {
                set.insert("state", job.state.code());
                // Marks a sharded job whose shards run, for the sweep that ends one whose
                // last shard's tracker died before ending it.
                let waits = job.waits_for_shards().then_some(Bson::Boolean(true));
                put(&mut set, &mut unset, "shards_wait", waits);
            }
            Field::Map => {
                let map = job
                    .map
                    .as_ref()
                    .map(map_json)
                    .transpose()?
                    .map(Bson::String);
                put(&mut set, &mut unset, "map", map);
                // A map-reduce job that now waits for its children (still running): the sweep
                // ends it should its last child's tracker die before ending it.
                let waits = job.waits_for_shards().then_some(Bson::Boolean(true));
                put(&mut set, &mut unset, "shards_wait", waits);
            }
            Field::Spec => {
                set.extend(spec_fields(&job.spec)?);
                let affinity = job.spec.affinity_key().map(Bson::String);
                put(&mut set, &mut unset, "affinity", affinity);
                let bucket = job.spec.route_bucket().map(Bson::Int64);
                put(&mut set, &mut unset, "route_bucket", bucket);
            }
            Field::Attempt => {
                set.insert("attempt", i64::from(job.attempt));
                set.insert("lease_losses", i64::from(job.lease_losses));
            }
            Field::TriggerTime => {
                set.insert("trigger_time", job.trigger_time_ms);
            }
            Field::ScheduledFire => put(
                &mut set,
                &mut unset,
                "scheduled_fire",
                i64s(job.scheduled_fire_ms),
            ),
            Field::FireCount => {
                set.insert("fire_count", job.fire_count as i64);
            }
            Field::Lease => {
                let owner = job.lease_owner.clone().map(Bson::String);
                put(&mut set, &mut unset, "lease_owner", owner);
                let token = s.lease_token.clone().map(Bson::String);
                put(&mut set, &mut unset, "lease_token", token);
                put(
                    &mut set,
                    &mut unset,
                    "lease_expiry",
                    i64s(job.lease_expiry_ms),
                );
                put(&mut set, &mut unset, "deadline", i64s(job.deadline_ms));
            }
            Field::LeaseExpiry => put(
                &mut set,
                &mut unset,
                "lease_expiry",
                i64s(job.lease_expiry_ms),
            ),
            Field::LastResult => {
                let outcome = job.last_outcome.map(|o| Bson::Int64(o.code()));
                put(&mut set, &mut unset, "last_outcome", outcome);
                let message = job.last_message.clone().map(Bson::String);
                put(&mut set, &mut unset, "last_message", message);
            }
            Field::SuspendRequested => {
                let flag = s.suspend_requested.then_some(Bson::Boolean(true));
                put(&mut set, &mut unset, "suspend_requested", flag)
            }
            Field::FinishedAt => put(
                &mut set,
                &mut unset,
                "finished_at",
                i64s(job.finished_at_ms),
            ),
            Field::UpdatedAt => {
                set.insert("updated_at", job.updated_at_ms);
            }
        }
    }
    Ok((set, unset))
}

/// The guard and the update that write `write` over the job as `read`, with `s` the job as
/// it is to be stored and `feedback` recorded in the same update; `None` when nothing changed.
/// The guard is the state and revision as read (and the lease token, for a running job); the
/// update bumps the revision.
pub(super) fn update(
    read: &Read,
    s: &StoredJob,
    write: &Write,
    feedback: Option<&FeedbackItem>,
) -> StoreResult<Option<(Document, Document)>> {
    let (from, changed) = match write {
        Write::Update { from, fields } | Write::Finish { from, fields } => (*from, fields),
        Write::Insert | Write::Keep => return Ok(None),
    };
    if changed.is_empty() && feedback.is_none() {
        return Ok(None);
    }
    let (mut set, unset) = fields(s, changed)?;
    if matches!(write, Write::Finish { .. }) {
        set.insert("done", done(&s.job));
    }
    let mut update = doc! { "$inc": { "rev": 1i64 } };
    if let Some(item) = feedback {
        set.insert("fb_group", &item.job.spec.submit_node_group);
        // Bounded: a recurring job whose feedback nobody takes keeps its latest items only,
        // and its document never grows toward MongoDB's 16 MB limit.
        update.insert(
            "$push",
            doc! { "fb": { "$each": [feedback_entry(item)], "$slice": -MAX_PENDING_FEEDBACK } },
        );
    }
    if !set.is_empty() {
        update.insert("$set", set);
    }
    if !unset.is_empty() {
        update.insert("$unset", unset);
    }
    let mut guard = doc! {
        "_id": &read.stored.job.job_id,
        "state": from.code(),
        "rev": read.rev,
    };
    // Writers that predate the revision on every write left it alone when they leased a
    // job: the token tells one lease from the next.
    if let Some(token) = &read.stored.lease_token {
        guard.insert("lease_token", token);
    }
    Ok(Some((guard, update)))
}

/// The most unacknowledged feedback items one job document keeps (the oldest go first).
pub const MAX_PENDING_FEEDBACK: i64 = 1_000;

/// The feedback of one run, kept in its job's `fb` array until acknowledged; `n` (the fire
/// the run belonged to) numbers it within the job.
fn feedback_entry(item: &FeedbackItem) -> Document {
    let job = &item.job;
    doc! {
        "n": job.fire_count as i64,
        "state": job.state.code(),
        "outcome": item.outcome.code(),
        "message": &item.message,
        "finished_at": item.finished_at_ms,
        "attempt": i64::from(job.attempt),
        "fire_count": job.fire_count as i64,
        "scheduled_fire": job.scheduled_fire_ms.map(Bson::Int64).unwrap_or(Bson::Null),
        "trigger_time": job.trigger_time_ms,
    }
}

/// The pending feedback of a job document, each as the job was when its run ended.
pub(super) fn feedback_items(d: &Document) -> StoreResult<Vec<FeedbackItem>> {
    let job = job(d)?;
    let mut items = Vec::new();
    for entry in d.get_array("fb").map(|a| a.as_slice()).unwrap_or_default() {
        let Some(e) = entry.as_document() else {
            continue;
        };
        let outcome = int(e, "outcome")
            .and_then(Outcome::from_code)
            .ok_or_else(|| corrupt(d, "feedback outcome"))?;
        let message = text(e, "message").unwrap_or_default().to_string();
        let finished_at = int(e, "finished_at").unwrap_or(0);
        let mut snapshot = job.clone();
        snapshot.state = int(e, "state")
            .and_then(JobState::from_code)
            .unwrap_or(snapshot.state);
        snapshot.attempt = int(e, "attempt").unwrap_or(0) as u32;
        snapshot.fire_count = int(e, "fire_count").unwrap_or(1) as u64;
        snapshot.scheduled_fire_ms = int(e, "scheduled_fire");
        snapshot.trigger_time_ms = int(e, "trigger_time").unwrap_or(snapshot.trigger_time_ms);
        snapshot.last_outcome = Some(outcome);
        snapshot.last_message = Some(message.clone());
        snapshot.finished_at_ms = Some(finished_at);
        snapshot.updated_at_ms = finished_at;
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
    Ok(items)
}

/// One job-log line as a document; `at` carries the time for the TTL index.
pub(super) fn log_doc(l: &LogEntry) -> Document {
    doc! {
        "job_id": &l.job_id,
        "task_id": &l.task_id,
        "task_tracker_node_group": &l.task_tracker_node_group,
        "time": l.time_ms,
        "at": DateTime::from_millis(l.time_ms),
        "log_type": l.log_type.as_str(),
        "level": l.level.as_str(),
        "message": &l.message,
        "attempt": i64::from(l.attempt),
        "node": &l.node,
    }
}

/// Decodes a job-log document.
pub(super) fn log_entry(d: &Document) -> LogEntry {
    let s = |key: &str| text(d, key).unwrap_or_default().to_string();
    LogEntry {
        time_ms: int(d, "time").unwrap_or(0),
        log_type: parse_log_type(text(d, "log_type").unwrap_or_default()),
        level: LogLevel::parse_lenient(text(d, "level").unwrap_or_default()),
        message: s("message"),
        attempt: int(d, "attempt").unwrap_or(0) as u32,
        job_id: s("job_id"),
        task_id: s("task_id"),
        task_tracker_node_group: s("task_tracker_node_group"),
        node: s("node"),
    }
}

/// A regular expression matching strings that start with `prefix`.
pub(super) fn prefix_regex(prefix: &str) -> String {
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

/// A map-reduce job's part as stored: JSON text.
fn map_json(map: &lts_core::model::MapOf) -> StoreResult<String> {
    serde_json::to_string(map).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use lts_core::schedule::RetryPolicy;
    use lts_core::transition::{Claim, Event, RunReport, accept, apply};
    use lts_core::{Outcome, Schedule};

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    /// What the server makes of an update: `$set`, `$unset` and `$inc` of `rev` on `doc`.
    fn updated(mut doc: Document, update: &Document) -> Document {
        if let Ok(set) = update.get_document("$set") {
            doc.extend(set.clone());
        }
        if let Ok(unset) = update.get_document("$unset") {
            for key in unset.keys() {
                doc.remove(key);
            }
        }
        let rev = int(&doc, "rev").unwrap_or(0) + 1;
        doc.insert("rev", rev);
        doc
    }

    fn stored(read: &Read) -> &StoredJob {
        &read.stored
    }

    #[test]
    fn a_document_reads_back_as_the_job_written_through_its_life() {
        let spec = JobSpec::new("tick", "g")
            .schedule(Schedule::Repeat {
                interval_ms: 1000,
                count: 1,
                first_fire_ms: Some(NOW),
            })
            .max_retries(1)
            .feedback_to("clients");
        let mut spec = spec;
        spec.rely_on_prev_cycle = true;
        let t = accept(spec, "j1".into(), NOW);
        let doc = new_doc(&t.job).unwrap();
        assert_eq!(text(&doc, "done"), Some(""));
        let mut read = super::read(&doc).unwrap();
        assert_eq!(stored(&read), &t.job);
        assert_eq!(read.rev, 0);
        let claim = Event::Claim(Claim {
            owner: "w1".into(),
            token: "tok".into(),
            expiry_ms: NOW + 50,
            instance_id: "i1".into(),
            due_by_ms: NOW,
            unfinished_instances: 0,
            targets: Vec::new(),
        });
        let report = |outcome| {
            Event::Complete(RunReport {
                token: "tok".into(),
                outcome,
                message: "m".into(),
                logs: Vec::new(),
                node: "w1".into(),
                mapped: 0,
            })
        };
        let mut doc = doc;
        for (event, at) in [
            (claim.clone(), NOW),
            (report(Outcome::Later), NOW + 10),
            (claim, NOW + 60_000),
            (report(Outcome::Exception), NOW + 60_010),
        ] {
            let t = apply(stored(&read), event, at, &RetryPolicy::default()).unwrap();
            let (guard, update) = update(&read, &t.job, &t.write, t.feedback.as_ref())
                .unwrap()
                .unwrap();
            assert_eq!(int(&guard, "rev"), Some(read.rev));
            assert_eq!(int(&guard, "state"), Some(stored(&read).job.state.code()));
            doc = updated(doc, &update);
            read = super::read(&doc).unwrap();
            assert_eq!(stored(&read), &t.job, "{update}");
        }
        // Failed after its retry, the last of its schedule: final, its task id free.
        assert_eq!(read.stored.job.state, JobState::Failed);
        assert_eq!(text(&doc, "done"), Some("j1"));
        assert!(!doc.contains_key("lease_token") && !doc.contains_key("lease_owner"));
    }

    #[test]
    fn feedback_reads_back_as_the_job_when_its_run_ended() {
        let spec = JobSpec::new("fb", "g").feedback_to("clients");
        let mut doc = new_doc(&accept(spec, "j1".into(), NOW).job).unwrap();
        let read = super::read(&doc).unwrap();
        let claim = Event::Claim(Claim {
            owner: "w1".into(),
            token: "tok".into(),
            expiry_ms: NOW + 50,
            instance_id: "i1".into(),
            due_by_ms: NOW,
            unfinished_instances: 0,
            targets: Vec::new(),
        });
        let t = apply(&read.stored, claim, NOW, &RetryPolicy::default()).unwrap();
        let (_, u) = update(&read, &t.job, &t.write, None).unwrap().unwrap();
        doc = updated(doc, &u);
        let read = super::read(&doc).unwrap();
        let done = Event::Complete(RunReport {
            token: "tok".into(),
            outcome: Outcome::Success,
            message: "ok".into(),
            logs: Vec::new(),
            node: "w1".into(),
            mapped: 0,
        });
        let t = apply(&read.stored, done, NOW + 5, &RetryPolicy::default()).unwrap();
        let item = t.feedback.clone().unwrap();
        let (guard, u) = update(&read, &t.job, &t.write, Some(&item))
            .unwrap()
            .unwrap();
        assert_eq!(text(&guard, "lease_token"), Some("tok"));
        let mut doc = updated(doc, &u);
        let push = u.get_document("$push").unwrap().get_document("fb").unwrap();
        assert_eq!(push.get_i64("$slice").unwrap(), -MAX_PENDING_FEEDBACK);
        let entry = push.get_array("$each").unwrap()[0].clone();
        doc.insert("fb", vec![entry]);
        let items = feedback_items(&doc).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].job, item.job);
        assert_eq!(items[0].feedback_id, "j1/1");
        assert_eq!(
            (items[0].outcome, items[0].finished_at_ms),
            (Outcome::Success, NOW + 5)
        );
    }

    #[test]
    fn a_prefix_matches_literally() {
        assert_eq!(prefix_regex("a.b~"), "^a\\.b~");
        assert_eq!(prefix_regex("(x)*"), "^\\(x\\)\\*");
    }
}
