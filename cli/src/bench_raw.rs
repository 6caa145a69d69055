//! `lts bench --phases raw`: the raw limit of a store's backend, to read the store's own figures
//! against. The same server (or SQLite file settings) does the least durable work a queue needs
//! per job — insert, claim, complete — with no scheduler in between, in the best batching the
//! backend allows and with the write concern the store uses. The store's figures are then
//! reported as fractions of these (`raw.drain_of_raw` …).

use std::time::Instant;

use futures::TryStreamExt;
use indicatif::ProgressBar;
use mongodb::bson::{Document, doc};
use mongodb::options::ClientOptions;
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::error::{CliError, CliResult};

/// Jobs inserted per batch, and claimed and completed per transaction in SQLite.
const BATCH: usize = 1_000;
/// Jobs claimed per SQLite transaction (what one TaskTracker's free threads take at once).
const SQLITE_CLAIM: usize = 32;
/// The size of a job's payload: about what a stored spec of a bench job is.
const PAYLOAD: usize = 200;

/// The raw figures, and the store's as fractions of them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RawReport {
    /// Inserts per second, in batches of 1,000.
    pub insert_batched_jobs_per_s: f64,
    /// Claims and completions per second through a backlog.
    pub drain_jobs_per_s: f64,
    /// The store's batched submit rate as a fraction of the raw insert rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submit_batched_of_raw: Option<f64>,
    /// The store's drain rate as a fraction of the raw drain rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_of_raw: Option<f64>,
}

fn failed(what: &str) -> impl Fn(String) -> CliError + '_ {
    move |e| CliError::Failed(format!("raw {what}: {e}"))
}

/// The raw limit of the MongoDB server at `url` (no database in it): `jobs` documents inserted
/// with `insert_many` in batches of 1,000, then drained by `concurrency` loops (one per
/// TaskTracker) that each claim up to `claim` jobs at a time (one `find` of due ids, one
/// guarded `update_many` that leases them) and complete them (one `update_many`), all with
/// `w: majority` and the journal, in a database of its own that is dropped afterwards.
pub async fn mongo(
    url: &str,
    jobs: u64,
    concurrency: usize,
    claim: usize,
    bar: &ProgressBar,
) -> CliResult<RawReport> {
    let failed = failed("mongodb");
    // A driver's error may quote the URL or its secrets.
    let err = |e: String| failed(lts_core::redact::scrub(&e, url));
    let mut options = ClientOptions::parse(url)
        .await
        .map_err(|e| err(e.to_string()))?;
    // The store's write concern: its durable default unless the URL sets one.
    if options.write_concern.is_none() {
        options.write_concern = Some(lts_tracker::store::mongo::durable_write_concern());
    }
    let client = mongodb::Client::with_options(options).map_err(|e| err(e.to_string()))?;
    let db = client.database(&format!("lts_bench_raw_{}", std::process::id()));
    let result = mongo_run(&db, jobs, concurrency, claim, bar).await;
    let dropped = db.drop().await;
    let report = result.map_err(|e| err(e.to_string()))?;
    dropped.map_err(|e| err(format!("dropping the raw bench database: {e}")))?;
    Ok(report)
}

async fn mongo_run(
    db: &mongodb::Database,
    jobs: u64,
    concurrency: usize,
    claim: usize,
    bar: &ProgressBar,
) -> mongodb::error::Result<RawReport> {
    let q = db.collection::<Document>("jobs");
    q.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! { "g": 1, "s": 1, "_id": 1 })
            .build(),
    )
    .await?;
    let payload = "x".repeat(PAYLOAD);
    let started = Instant::now();
    let mut next = 0u64;
    while next < jobs {
        let n = (jobs - next).min(BATCH as u64);
        let docs: Vec<Document> = (next..next + n)
            .map(|i| doc! { "_id": i as i64, "g": "raw", "s": 0, "p": &payload })
            .collect();
        q.insert_many(docs).ordered(false).await?;
        next += n;
        bar.inc(n);
    }
    let insert = jobs as f64 / started.elapsed().as_secs_f64();
    bar.set_position(0);
    let started = Instant::now();
    let mut loops = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let (q, bar) = (q.clone(), bar.clone());
        loops.push(tokio::spawn(async move {
            for round in 0u64.. {
                // Claim: the ids of up to `claim` due jobs, then all of them that are still
                // due, marked with this round's token; what another loop took first is not.
                let ids: Vec<mongodb::bson::Bson> = q
                    .find(doc! { "g": "raw", "s": 0 })
                    .sort(doc! { "_id": 1 })
                    .projection(doc! { "_id": 1 })
                    .limit(claim as i64)
                    .await?
                    .try_collect::<Vec<Document>>()
                    .await?
                    .into_iter()
                    .filter_map(|d| d.get("_id").cloned())
                    .collect();
                if ids.is_empty() {
                    return Ok::<_, mongodb::error::Error>(());
                }
                let token = format!("w{w}-{round}");
                let expiry = lts_core::now_ms() + 30_000;
                let claimed = q
                    .update_many(
                        doc! { "_id": { "$in": &ids }, "s": 0 },
                        doc! { "$set": { "s": 1, "o": &token, "e": expiry } },
                    )
                    .await?
                    .modified_count;
                // Complete: every job of the round, found by id (an index, as the store's
                // completions are) and guarded by its token.
                q.update_many(
                    doc! { "_id": { "$in": &ids }, "o": &token, "s": 1 },
                    doc! { "$set": { "s": 2 }, "$unset": { "o": "", "e": "" } },
                )
                .await?;
                bar.inc(claimed);
            }
            Ok(())
        }));
    }
    for l in loops {
        l.await.expect("a raw drain loop panicked")?;
    }
    Ok(RawReport {
        insert_batched_jobs_per_s: insert,
        drain_jobs_per_s: jobs as f64 / started.elapsed().as_secs_f64(),
        ..Default::default()
    })
}

/// The raw limit of SQLite with the store's settings (WAL, `synchronous` as given) in `dir`:
/// `jobs` rows inserted in transactions of 1,000, then claimed 32 at a time by one statement
/// and completed in transactions of up to 1,000 — one writer, as the store has.
pub async fn sqlite(
    dir: &std::path::Path,
    synchronous: &'static str,
    jobs: u64,
    bar: &ProgressBar,
) -> CliResult<RawReport> {
    let path = dir.join(format!("raw-{}.db", std::process::id()));
    let bar = bar.clone();
    let report = tokio::task::spawn_blocking(move || {
        let r = sqlite_run(&path, synchronous, jobs, &bar);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        r
    })
    .await
    .map_err(|e| CliError::Failed(format!("raw sqlite: {e}")))?;
    report.map_err(|e| failed("sqlite")(e.to_string()))
}

fn sqlite_run(
    path: &std::path::Path,
    synchronous: &str,
    jobs: u64,
    bar: &ProgressBar,
) -> rusqlite::Result<RawReport> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.execute_batch(
        "CREATE TABLE q (seq INTEGER PRIMARY KEY, g TEXT NOT NULL, s INTEGER NOT NULL,
                         owner TEXT, payload TEXT NOT NULL);
         CREATE INDEX q_claim ON q(g, seq) WHERE s = 0;",
    )?;
    let payload = "x".repeat(PAYLOAD);
    let started = Instant::now();
    let mut next = 0u64;
    while next < jobs {
        let n = (jobs - next).min(BATCH as u64);
        let tx = conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO q (g, s, payload) VALUES ('raw', 0, ?1)")?;
            for _ in 0..n {
                insert.execute(params![payload])?;
            }
        }
        tx.commit()?;
        next += n;
        bar.inc(n);
    }
    let insert = jobs as f64 / started.elapsed().as_secs_f64();
    bar.set_position(0);
    let started = Instant::now();
    let mut claimed: Vec<i64> = Vec::new();
    loop {
        let tx = conn.transaction()?;
        let got: Vec<i64> = tx
            .prepare_cached(
                "UPDATE q SET s = 1, owner = 'w' WHERE seq IN (
                     SELECT seq FROM q WHERE g = 'raw' AND s = 0 ORDER BY seq LIMIT ?1)
                 RETURNING seq",
            )?
            .query_map(params![SQLITE_CLAIM as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        tx.commit()?;
        let done = got.is_empty();
        claimed.extend(got);
        if done || claimed.len() >= BATCH {
            let tx = conn.transaction()?;
            {
                let mut complete =
                    tx.prepare_cached("UPDATE q SET s = 2, owner = NULL WHERE seq = ?1 AND s = 1")?;
                for seq in &claimed {
                    complete.execute(params![seq])?;
                }
            }
            tx.commit()?;
            bar.inc(claimed.len() as u64);
            claimed.clear();
        }
        if done {
            break;
        }
    }
    Ok(RawReport {
        insert_batched_jobs_per_s: insert,
        drain_jobs_per_s: jobs as f64 / started.elapsed().as_secs_f64(),
        ..Default::default()
    })
}

/// Fills in the store's figures as fractions of the raw ones.
pub fn relate(raw: &mut RawReport, submit_batched: Option<f64>, drain: Option<f64>) {
    let of = |store: Option<f64>, raw: f64| store.filter(|_| raw > 0.0).map(|s| s / raw);
    raw.submit_batched_of_raw = of(submit_batched, raw.insert_batched_jobs_per_s);
    raw.drain_of_raw = of(drain, raw.drain_jobs_per_s);
}
