//! The TaskTracker's durable outbox (LTS's FailStore): results of finished runs that the
//! tracker has not acknowledged yet, kept in a [`Spool`] file (SQLite, fsynced on every write)
//! so that a TaskTracker that crashes or restarts before the acknowledgement sends them again
//! instead of letting the job run a second time.
//!
//! A result is written before it is sent and removed when the tracker acknowledges it — or
//! refuses it as stale (the lease moved on meanwhile), which is logged.

use std::collections::HashMap;
use std::path::Path;

use lts_core::proto;
use serde::{Deserialize, Serialize};

use crate::spool::{Spool, SpoolError};

/// A result as the outbox keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    job_id: String,
    lease_token: String,
    outcome: i32,
    message: String,
    /// `(time_ms, level, message)` of each business-log line.
    logs: Vec<(i64, String, String)>,
    started_at_ms: i64,
    finished_at_ms: i64,
    /// A map-reduce run's count of children (kept results from before the field: none).
    #[serde(default)]
    mapped: u32,
}

impl Entry {
    fn of(r: &proto::JobResult) -> Entry {
        Entry {
            job_id: r.job_id.clone(),
            lease_token: r.lease_token.clone(),
            outcome: r.outcome,
            message: r.message.clone(),
            logs: r
                .logs
                .iter()
                .map(|l| (l.time_ms, l.level.clone(), l.message.clone()))
                .collect(),
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            mapped: r.mapped,
        }
    }

    fn into_result(self) -> proto::JobResult {
        proto::JobResult {
            job_id: self.job_id,
            lease_token: self.lease_token,
            outcome: self.outcome,
            message: self.message,
            logs: self
                .logs
                .into_iter()
                .map(|(time_ms, level, message)| proto::BizLog {
                    time_ms,
                    level,
                    message,
                })
                .collect(),
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            credits: 0,
            mapped: self.mapped,
        }
    }
}

/// The outbox: see the module docs.
#[derive(Debug, Clone)]
pub struct Outbox {
    spool: Spool,
}

impl Outbox {
    /// Opens (or creates) the outbox file.
    pub fn open(path: impl AsRef<Path>) -> Result<Outbox, SpoolError> {
        Ok(Outbox {
            spool: Spool::open(path)?,
        })
    }

    /// Keeps a result durably; its entry id.
    pub async fn keep(&self, result: &proto::JobResult) -> Result<i64, SpoolError> {
        let body = serde_json::to_string(&Entry::of(result)).unwrap_or_default();
        let mut ids = self.spool.push_returning_ids(vec![body]).await?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Forgets results (acknowledged, or refused as stale).
    pub async fn forget(&self, ids: Vec<i64>) -> Result<(), SpoolError> {
        self.spool.remove(ids).await
    }

    /// Every result kept, by job id, with its entry id. Entries that cannot be read go to the
    /// spool's quarantine file; of two results for one job, the newest is kept.
    pub async fn load(&self) -> Result<HashMap<String, (i64, proto::JobResult)>, SpoolError> {
        let mut out: HashMap<String, (i64, proto::JobResult)> = HashMap::new();
        let mut unreadable = Vec::new();
        let mut older = Vec::new();
        for (id, body) in self.spool.peek(usize::MAX >> 1).await? {
            match serde_json::from_str::<Entry>(&body) {
                Ok(e) => {
                    let result = e.into_result();
                    if let Some((old, _)) = out.insert(result.job_id.clone(), (id, result)) {
                        older.push(old);
                    }
                }
                Err(e) => unreadable.push((id, body, format!("unreadable outbox entry: {e}"))),
            }
        }
        self.spool.quarantine(unreadable).await?;
        self.spool.remove(older).await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever a spool file holds (torn writes, foreign text, JSON of the wrong shape),
        /// reading it never panics: what reads is kept, the rest goes to quarantine, nothing
        /// is dropped unseen.
        #[test]
        fn reading_any_spool_content_never_panics_and_loses_nothing(
            bodies in proptest::collection::vec(
                prop_oneof![
                    any::<String>(),
                    "\\{\"job_id\":\"[a-z]{1,4}\"[^}]{0,40}\\}?",
                    Just("{\"job_id\":\"j\",\"lease_token\":\"t\",\"outcome\":1,\"message\":\"m\",\"logs\":[],\"started_at_ms\":1,\"finished_at_ms\":2}".to_string()),
                ],
                0..12,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("outbox.db");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let spool = Spool::open(&path).unwrap();
                spool.push(bodies.clone()).await.unwrap();
                let outbox = Outbox::open(&path).unwrap();
                let loaded = outbox.load().await.unwrap();
                let readable = bodies.iter().filter(|b| serde_json::from_str::<Entry>(b).is_ok()).count();
                let quarantined = std::fs::read_to_string(spool.quarantine_path())
                    .map(|t| t.lines().count())
                    .unwrap_or(0);
                // Several readable entries of one job collapse to its newest.
                prop_assert!(loaded.len() <= readable);
                prop_assert_eq!(quarantined, bodies.len() - readable);
                prop_assert_eq!(spool.len().await.unwrap() as usize, loaded.len());
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn results_survive_a_reopen_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let outbox = Outbox::open(&path).unwrap();
        let result = proto::JobResult {
            job_id: "j1".into(),
            lease_token: "t".into(),
            outcome: proto::Outcome::Success as i32,
            message: "done".into(),
            logs: vec![proto::BizLog {
                time_ms: 5,
                level: "INFO".into(),
                message: "line".into(),
            }],
            started_at_ms: 1,
            finished_at_ms: 2,
            credits: 1,
            mapped: 7,
        };
        let id = outbox.keep(&result).await.unwrap();
        let other = outbox
            .keep(&proto::JobResult {
                job_id: "j2".into(),
                ..result.clone()
            })
            .await
            .unwrap();
        drop(outbox);
        let outbox = Outbox::open(&path).unwrap();
        let loaded = outbox.load().await.unwrap();
        assert_eq!(loaded.len(), 2);
        let (loaded_id, back) = &loaded["j1"];
        assert_eq!(*loaded_id, id);
        assert_eq!(
            *back,
            proto::JobResult {
                credits: 0,
                ..result
            }
        );
        outbox.forget(vec![id, other]).await.unwrap();
        assert!(
            Outbox::open(&path)
                .unwrap()
                .load()
                .await
                .unwrap()
                .is_empty()
        );
    }
}
