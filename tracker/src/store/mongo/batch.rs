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
//! * **Guarded updates** ([`UpdateBatcher`]): each statement carries a stamp unique to it
//!   (`last_write`), set by the update. The `update` command answers only how many statements
//!   matched; when that is fewer than were sent, the stamps read back tell which ones did.
//! * **Inserts** ([`InsertBatcher`]): one unordered `insert` for everyone's documents; the
//!   positions that hit a unique index go back to the operation that owns them.

use std::collections::HashMap;
use std::sync::Arc;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::error::ErrorKind;
use mongodb::{Collection, Database};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::DUPLICATE_KEY;
use super::codec;
use crate::store::{StoreError, StoreResult};

/// Most items in one batch (and statements in one command).
pub(super) const MAX_BATCH: usize = 1000;
/// Batches on the wire at once, per writer.
const IN_FLIGHT: usize = 4;
/// Operations waiting for a batch, per writer: past it, callers wait for room.
const QUEUE: usize = 16_384;

/// Sends guarded updates (guard, update) in as few `update` commands as the server takes,
/// with the collection's write concern; returns how many matched.
pub(super) async fn update_command(
    db: &Database,
    coll: &Collection<Document>,
    statements: &[(Document, Document)],
) -> StoreResult<u64> {
    let mut matched = 0;
    for chunk in statements.chunks(MAX_BATCH) {
        let updates: Vec<Document> = chunk.iter().map(|(q, u)| doc! { "q": q, "u": u }).collect();
        let mut command = doc! {
            "update": coll.name(),
            "updates": updates,
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
        mut update: Document,
    ) -> StoreResult<bool> {
        let stamp = uuid::Uuid::new_v4().simple().to_string();
        match update.get_document_mut("$set") {
            Ok(set) => {
                set.insert("last_write", &stamp);
            }
            Err(_) => {
                update.insert("$set", doc! { "last_write": &stamp });
            }
        }
        let (reply, answer) = oneshot::channel();
        let item = Update {
            id: id.to_string(),
            guard,
            update,
            stamp,
            reply,
        };
        self.tx.send(item).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn write_updates(db: &Database, coll: &Collection<Document>, batch: Vec<Update>) {
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
