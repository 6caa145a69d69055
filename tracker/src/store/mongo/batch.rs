//! Group commit for MongoDB: the writes of concurrent operations — results of many
//! TaskTrackers' runs, single submits of many clients — gathered into one command each, so
//! that one journal flush (and one majority acknowledgement) serves them all.
//!
//! Each writer is a task fed by a bounded channel. It takes whatever is queued (up to
//! [`MAX_BATCH`] items) as one batch and sends it while the next batch gathers; at most
//! [`IN_FLIGHT`] batches are on the wire at once. A lone operation goes out at once: there is
//! no timer to wait for, so batching costs no latency when the tracker is idle and gains the
//! most when it is busy.
//!
//! * **Guarded updates** ([`UpdateBatcher`]): each statement carries a stamp (`last_write`),
//!   set by the update: the batch's own, and for a job with several statements in the batch,
//!   one per statement. The `update` command answers only how many documents matched; when
//!   that is fewer than were sent, the stamps read back tell which statements did. Statements
//!   alike but for their job go as one multi-document statement ([`merge`]).
//! * **Inserts** ([`InsertBatcher`]): one unordered `insert` for everyone's documents; the
//!   positions that hit a unique index go back to the operation that owns them.

use std::collections::HashMap;
use std::sync::Arc;

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::{Collection, Database};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::DUPLICATE_KEY;
use super::codec;
use crate::store::{StoreError, StoreResult};

/// Most items in one batch (and statements in one command).
pub(super) const MAX_BATCH: usize = 1000;
/// Batches on the wire at once, per writer. Two, not four: fewer, larger commands share
/// journal flushes better (in interleaved runs on two cores: single submits +20–24%, the
/// drain +6–19%, dispatch latency p50 at 1,000 jobs/s 9.5–13.8 → 6.3–8.9 ms).
const IN_FLIGHT: usize = 2;
/// Operations waiting for a batch, per writer: past it, callers wait for room.
const QUEUE: usize = 16_384;

/// Sends guarded updates (guard, update) in as few `update` commands as the server takes,
/// with the collection's write concern; returns how many documents matched.
///
/// Statements that differ only in their job (`_id`) go as one multi-document statement
/// (`_id: {$in: …}`, see [`merge`]): the server then plans the update once and writes each
/// job without the per-statement work, about half the server time per job.
pub(super) async fn update_command(
    db: &Database,
    coll: &Collection<Document>,
    statements: &[(Document, Document)],
) -> StoreResult<u64> {
    let mut matched = 0;
    let merged = merge(statements);
    for chunk in merged.chunks(MAX_BATCH) {
        let mut command = doc! {
            "update": coll.name(),
            "updates": chunk,
            "ordered": false,
        };
        if let Some(wc) = coll.write_concern() {
            let wc = mongodb::bson::to_document(wc)
                .map_err(|e| StoreError::Backend(format!("mongodb: write concern: {e}")))?;
            command.insert("writeConcern", wc);
        }
        let reply = db.run_command(command).await?;
        for key in ["writeErrors", "writeConcernError"] {
            if let Some(e) = reply.get(key) {
                return Err(StoreError::Backend(format!("mongodb: update: {e}")));
            }
        }
        matched += codec::int(&reply, "n").unwrap_or(0) as u64;
    }
    Ok(matched)
}

/// Most jobs in one merged statement.
const MAX_MERGED: usize = 1000;

/// The `update` command's statements for `statements`: those whose guard and update are the
/// same but for the job id become one statement over all their jobs (`multi: true`).
///
/// A `$set` of the job's own id (a finished job's `done`) is told apart from other values: such
/// statements merge as an update pipeline that sets the field to `$_id`, every other value
/// taken literally. A statement that is alone in its kind, has no plain string `_id`, or an
/// update a pipeline cannot say (`$push`), goes as it is.
pub(super) fn merge(statements: &[(Document, Document)]) -> Vec<Document> {
    struct Group<'a> {
        ids: Vec<&'a str>,
        members: Vec<usize>,
        own_id: Vec<String>,
    }
    let plain = |n: usize| {
        let (q, u) = &statements[n];
        doc! { "q": q, "u": u }
    };
    let mut groups: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut kinds: Vec<Group> = Vec::new();
    let mut out = Vec::new();
    for (n, (q, u)) in statements.iter().enumerate() {
        let Some((key, id, own_id)) = merge_key(q, u) else {
            out.push(plain(n));
            continue;
        };
        match groups.get(&key).map(|&k| &mut kinds[k]) {
            Some(g) if g.ids.len() < MAX_MERGED => {
                g.ids.push(id);
                g.members.push(n);
            }
            Some(_) => out.push(plain(n)),
            None => {
                groups.insert(key, kinds.len());
                kinds.push(Group {
                    ids: vec![id],
                    members: vec![n],
                    own_id,
                });
            }
        }
    }
    for g in kinds {
        let first = g.members[0];
        let u = match (g.members.len(), g.own_id.is_empty()) {
            (1, _) => None,
            (_, true) => Some(Bson::Document(statements[first].1.clone())),
            (_, false) => pipeline(&statements[first].1, &g.own_id).map(Bson::Array),
        };
        let Some(u) = u else {
            // Alone in its kind (or not expressible as a pipeline): as it is.
            out.extend(g.members.into_iter().map(plain));
            continue;
        };
        let mut q = statements[first].0.clone();
        q.insert("_id", doc! { "$in": &g.ids });
        out.push(doc! { "q": q, "u": u, "multi": true });
    }
    out
}

/// What a statement must share with others to merge with them (its guard and update without
/// the job id, as bytes), its job id, and the `$set` fields that hold that id.
fn merge_key<'a>(q: &'a Document, u: &Document) -> Option<(Vec<u8>, &'a str, Vec<String>)> {
    let id = q.get_str("_id").ok()?;
    let mut rest = q.clone();
    rest.remove("_id");
    let mut u = u.clone();
    let mut own_id = Vec::new();
    if let Ok(set) = u.get_document_mut("$set") {
        for (k, v) in set.iter_mut() {
            if v.as_str() == Some(id) {
                own_id.push(k.clone());
                *v = Bson::Null;
            }
        }
    }
    if !own_id.is_empty()
        && u.keys()
            .any(|k| !matches!(k.as_str(), "$set" | "$inc" | "$unset"))
    {
        return None;
    }
    let mut key = Vec::new();
    doc! { "q": rest, "u": u, "own_id": &own_id }
        .to_writer(&mut key)
        .ok()?;
    Some((key, id, own_id))
}

/// `u` (only `$set`, `$inc` and `$unset`) as an update pipeline in which the `own_id` fields
/// are set to the job's `_id`.
fn pipeline(u: &Document, own_id: &[String]) -> Option<Vec<Bson>> {
    let mut set = Document::new();
    for (op, fields) in u {
        let fields = fields.as_document()?;
        match op.as_str() {
            "$set" => {
                for (k, v) in fields {
                    if own_id.contains(k) {
                        set.insert(k, "$_id");
                    } else {
                        set.insert(k, doc! { "$literal": v });
                    }
                }
            }
            "$inc" => {
                for (k, v) in fields {
                    set.insert(
                        k,
                        doc! { "$add": [{ "$ifNull": [format!("${k}"), 0i64] }, v] },
                    );
                }
            }
            "$unset" => {}
            _ => return None,
        }
    }
    let mut stages = vec![Bson::Document(doc! { "$set": set })];
    if let Ok(unset) = u.get_document("$unset") {
        let names: Vec<&String> = unset.keys().collect();
        if !names.is_empty() {
            stages.push(Bson::Document(doc! { "$unset": names }));
        }
    }
    Some(stages)
}

/// Inserts `docs` in one unordered `insert`; returns the positions that hit a unique index
/// (for jobs: an unfinished job has their node group and task id, or a fire or submit key is
/// taken). Any other failure is an error.
pub(super) async fn insert_command(
    coll: &Collection<Document>,
    docs: &[Document],
) -> StoreResult<Vec<usize>> {
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    match coll.insert_many(docs).ordered(false).await {
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

/// Takes what is queued on `rx` as batches and runs `send` on each, [`IN_FLIGHT`] at most at
/// once, until every sender is gone.
async fn gather<T, F, Fut>(mut rx: mpsc::Receiver<T>, send: F)
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let take = |batch: &mut Vec<T>, rx: &mut mpsc::Receiver<T>| {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        };
        take(&mut batch, &mut rx);
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // What queued while every slot was busy joins this batch.
        take(&mut batch, &mut rx);
        let write = send(batch);
        tokio::spawn(async move {
            write.await;
            drop(slot);
        });
    }
}

/// One guarded update waiting for its batch.
struct Update {
    id: String,
    guard: Document,
    update: Document,
    stamp: String,
    reply: oneshot::Sender<StoreResult<bool>>,
}

/// Guarded updates of single jobs, sent in batches: see the [module](self) documentation.
#[derive(Debug, Clone)]
pub(super) struct UpdateBatcher {
    tx: mpsc::Sender<Update>,
}

impl UpdateBatcher {
    /// Starts the writer of `coll` in `db`.
    pub(super) fn start(db: Database, coll: Collection<Document>) -> UpdateBatcher {
        let (tx, rx) = mpsc::channel::<Update>(QUEUE);
        tokio::spawn(gather(rx, move |batch| {
            let (db, coll) = (db.clone(), coll.clone());
            async move { write_updates(&db, &coll, batch).await }
        }));
        UpdateBatcher { tx }
    }

    /// Applies `update` to the job `id` if it still matches `guard`, in the next batch;
    /// whether it matched.
    pub(super) async fn update(
        &self,
        id: &str,
        guard: Document,
        update: Document,
    ) -> StoreResult<bool> {
        let (reply, answer) = oneshot::channel();
        let item = Update {
            id: id.to_string(),
            guard,
            update,
            stamp: String::new(),
            reply,
        };
        self.tx.send(item).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Stamps every statement of `batch` with the batch's stamp and, for a job that has more
/// than one statement in the batch, the statement's rank among them: the first statement of
/// each job carries the same stamp, so that statements alike but for the job merge.
fn stamp(batch: &mut [Update]) {
    let base = uuid::Uuid::new_v4().simple().to_string();
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(batch.len());
    for u in batch.iter_mut() {
        let rank = seen.entry(u.id.clone()).or_insert(0);
        u.stamp = if *rank == 0 {
            base.clone()
        } else {
            format!("{base}-{rank}")
        };
        *rank += 1;
        match u.update.get_document_mut("$set") {
            Ok(set) => {
                set.insert("last_write", &u.stamp);
            }
            Err(_) => {
                u.update.insert("$set", doc! { "last_write": &u.stamp });
            }
        }
    }
}

async fn write_updates(db: &Database, coll: &Collection<Document>, mut batch: Vec<Update>) {
    stamp(&mut batch);
    let statements: Vec<(Document, Document)> = batch
        .iter()
        .map(|u| (u.guard.clone(), u.update.clone()))
        .collect();
    let answers = match update_command(db, coll, &statements).await {
        Ok(n) if n == batch.len() as u64 => Ok(vec![true; batch.len()]),
        Ok(_) => which_matched(coll, &batch).await,
        Err(e) => Err(e),
    };
    match answers {
        Ok(matched) => {
            for (u, m) in batch.into_iter().zip(matched) {
                let _ = u.reply.send(Ok(m));
            }
        }
        Err(e) => {
            for u in batch {
                let _ = u.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Which statements of a batch matched, from the stamps they wrote.
async fn which_matched(coll: &Collection<Document>, batch: &[Update]) -> StoreResult<Vec<bool>> {
    let ids: Vec<&str> = batch.iter().map(|u| u.id.as_str()).collect();
    let found: Vec<Document> = coll
        .find(doc! { "_id": { "$in": ids } })
        .projection(doc! { "_id": 1, "last_write": 1 })
        .await?
        .try_collect()
        .await?;
    let stamps: HashMap<&str, &str> = found
        .iter()
        .filter_map(|d| Some((codec::text(d, "_id")?, codec::text(d, "last_write")?)))
        .collect();
    Ok(batch
        .iter()
        .map(|u| stamps.get(u.id.as_str()) == Some(&u.stamp.as_str()))
        .collect())
}

/// One operation's documents waiting for their batch.
struct Insert {
    docs: Vec<Document>,
    reply: oneshot::Sender<StoreResult<Vec<usize>>>,
}

/// Inserts of many operations, sent as one `insert` per batch: see the [module](self)
/// documentation.
#[derive(Debug, Clone)]
pub(super) struct InsertBatcher {
    tx: mpsc::Sender<Insert>,
}

impl InsertBatcher {
    /// Starts the writer of `coll`.
    pub(super) fn start(coll: Collection<Document>) -> InsertBatcher {
        let (tx, rx) = mpsc::channel::<Insert>(QUEUE);
        tokio::spawn(gather(rx, move |batch| {
            let coll = coll.clone();
            async move { write_inserts(&coll, batch).await }
        }));
        InsertBatcher { tx }
    }

    /// Inserts `docs` with the next batch; returns the positions (in `docs`) that hit a
    /// unique index.
    pub(super) async fn insert(&self, docs: Vec<Document>) -> StoreResult<Vec<usize>> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Insert { docs, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn write_inserts(coll: &Collection<Document>, batch: Vec<Insert>) {
    if batch.len() == 1 {
        let Some(one) = batch.into_iter().next() else {
            return;
        };
        let _ = one.reply.send(insert_command(coll, &one.docs).await);
        return;
    }
    let mut docs = Vec::new();
    let mut starts = Vec::with_capacity(batch.len());
    for i in &batch {
        starts.push(docs.len());
        docs.extend(i.docs.iter().cloned());
    }
    match insert_command(coll, &docs).await {
        Ok(taken) => {
            for (n, i) in batch.into_iter().enumerate() {
                let (start, end) = (starts[n], starts[n] + i.docs.len());
                let mine = taken
                    .iter()
                    .filter(|&&t| t >= start && t < end)
                    .map(|t| t - start)
                    .collect();
                let _ = i.reply.send(Ok(mine));
            }
        }
        // Not only duplicates (a server or write-concern failure): each operation on its own,
        // so that one operation's bad document fails that operation alone. A document the
        // failed batch did store meets its own `_id` now and comes back as taken: its submit
        // is then answered with the job it stored (by its idempotency key or its task id),
        // an instance with "that fire has its job" — stored once either way.
        Err(_) => {
            for i in batch {
                let _ = i.reply.send(insert_command(coll, &i.docs).await);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: &str) -> (Document, Document) {
        (
            doc! { "_id": id, "state": 1, "rev": 0i64 },
            doc! { "$inc": { "rev": 1i64 }, "$set": { "state": 2, "lease_token": "t" } },
        )
    }

    fn finish(id: &str, message: &str) -> (Document, Document) {
        (
            doc! { "_id": id, "state": 2, "rev": 1i64, "lease_token": "t" },
            doc! {
                "$inc": { "rev": 1i64 },
                "$set": { "state": 4, "done": id, "last_message": message },
                "$unset": { "lease_token": "", "lease_owner": "" },
            },
        )
    }

    #[test]
    fn statements_alike_but_for_the_job_become_one() {
        let merged = merge(&[claim("a"), claim("b"), claim("c")]);
        assert_eq!(merged.len(), 1);
        let s = &merged[0];
        assert_eq!(
            s.get_document("q").unwrap(),
            &doc! { "_id": { "$in": ["a", "b", "c"] }, "state": 1, "rev": 0i64 }
        );
        assert_eq!(s.get_document("u").unwrap(), &claim("a").1);
        assert_eq!(s.get_bool("multi"), Ok(true));
    }

    #[test]
    fn a_different_guard_or_update_is_a_statement_of_its_own() {
        let (q, mut u) = claim("c");
        u.get_document_mut("$set").unwrap().insert("state", 3);
        let (mut q2, u2) = claim("d");
        q2.insert("rev", 7i64);
        let merged = merge(&[
            claim("a"),
            (q, u.clone()),
            (q2.clone(), u2.clone()),
            claim("b"),
        ]);
        assert_eq!(merged.len(), 3);
        assert_eq!(
            merged[0]
                .get_document("q")
                .unwrap()
                .get_document("_id")
                .unwrap(),
            &doc! { "$in": ["a", "b"] }
        );
        assert_eq!(merged[1], doc! { "q": claim("c").0, "u": u });
        assert_eq!(merged[2], doc! { "q": q2, "u": u2 });
    }

    #[test]
    fn the_jobs_own_id_is_set_by_a_pipeline_and_every_other_value_literally() {
        let merged = merge(&[finish("a", "$x"), finish("b", "$x")]);
        assert_eq!(merged.len(), 1);
        let u = merged[0].get_array("u").unwrap();
        assert_eq!(
            u[0].as_document().unwrap(),
            &doc! { "$set": {
                "rev": { "$add": [{ "$ifNull": ["$rev", 0i64] }, 1i64] },
                "state": { "$literal": 4 },
                "done": "$_id",
                "last_message": { "$literal": "$x" },
            } }
        );
        assert_eq!(
            u[1].as_document().unwrap(),
            &doc! { "$unset": ["lease_token", "lease_owner"] }
        );
        // A different message: two kinds, each alone.
        let merged = merge(&[finish("a", "x"), finish("b", "y")]);
        assert_eq!(
            merged,
            vec![
                doc! { "q": finish("a", "x").0, "u": finish("a", "x").1 },
                doc! { "q": finish("b", "y").0, "u": finish("b", "y").1 },
            ]
        );
    }

    #[test]
    fn an_update_a_pipeline_cannot_say_goes_as_it_is() {
        let with_push = |id: &str| {
            let (q, mut u) = finish(id, "");
            u.insert("$push", doc! { "fb": { "$each": [1], "$slice": -10 } });
            (q, u)
        };
        let merged = merge(&[with_push("a"), with_push("b")]);
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().all(|s| s.get("multi").is_none()));
    }

    #[test]
    fn two_statements_of_one_job_in_a_batch_keep_their_own_stamps() {
        let update = |id: &str| {
            let (reply, _) = oneshot::channel();
            let (guard, update) = claim(id);
            Update {
                id: id.to_string(),
                guard,
                update,
                stamp: String::new(),
                reply,
            }
        };
        let mut batch = vec![update("a"), update("b"), update("a")];
        stamp(&mut batch);
        assert_eq!(batch[0].stamp, batch[1].stamp);
        assert_ne!(batch[0].stamp, batch[2].stamp);
        let statements: Vec<_> = batch
            .iter()
            .map(|u| (u.guard.clone(), u.update.clone()))
            .collect();
        // "a" and "b" merge; the second statement of "a" goes on its own.
        assert_eq!(merge(&statements).len(), 2);
    }
}
