//! Bringing jobs stored by older versions up to the fields this version reads. Each pass
//! writes a job once, works in pages, and ends: a job it cannot place is marked as seen.

use futures::TryStreamExt;
use lts_core::JobSpec;
use mongodb::bson::{Bson, Document, doc};

use super::{MongoStore, codec};
use crate::store::StoreResult;

/// Jobs read per page.
const PAGE: i64 = 1000;

impl MongoStore {
    /// Gives jobs stored before `submit_node_group` and `schedule_kind` were kept beside the
    /// spec those two fields, so that listings filtered on them find every job. Each job is
    /// written once; a job whose spec cannot be read is left to fail where it is read.
    pub(super) async fn backfill_spec_fields(&self) -> StoreResult<()> {
        let mut written = 0u64;
        loop {
            let docs: Vec<Document> = self
                .jobs
                .find(doc! { "schedule_kind": { "$exists": false }, "spec": { "$type": "string" } })
                .projection(doc! { "spec": 1 })
                .limit(PAGE)
                .await?
                .try_collect()
                .await?;
            let mut progressed = false;
            for d in &docs {
                let Some(spec) =
                    codec::text(d, "spec").and_then(|t| serde_json::from_str::<JobSpec>(t).ok())
                else {
                    continue;
                };
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                self.jobs
                    .update_one(
                        doc! { "_id": id },
                        doc! { "$set": codec::spec_fields(&spec)? },
                    )
                    .await?;
                written += 1;
                progressed = true;
            }
            if (docs.len() as i64) < PAGE || !progressed {
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

    /// Gives the unfinished instances stored before [`lts_core::Job::instance_of`] existed the
    /// id of their recurring job, found by their task id (`<its task id cut to 48
    /// characters>~<fire ms>`) in their node group; an instance whose recurring job is gone
    /// keeps none (`null`), so that it is looked at once.
    pub(super) async fn backfill_instance_of(&self) -> StoreResult<()> {
        let mut written = 0u64;
        loop {
            let docs: Vec<Document> = self
                .jobs
                .find(doc! {
                    "instance_of": { "$exists": false },
                    "done": "",
                    "task_id": { "$regex": "~[0-9]+$" },
                })
                .projection(doc! { "task_id": 1, "task_tracker_node_group": 1 })
                .limit(PAGE)
                .await?
                .try_collect()
                .await?;
            for d in &docs {
                let (Some(task_id), Some(group)) = (
                    codec::text(d, "task_id"),
                    codec::text(d, "task_tracker_node_group"),
                ) else {
                    continue;
                };
                let prefix = task_id.rsplit_once('~').map_or(task_id, |(p, _)| p);
                let candidates: Vec<Document> = self
                    .jobs
                    .find(doc! {
                        "task_tracker_node_group": group,
                        "done": "",
                        "schedule_kind": { "$in": ["cron", "repeat"] },
                        "task_id": { "$regex": codec::prefix_regex(prefix) },
                    })
                    .projection(doc! { "task_id": 1 })
                    .limit(PAGE)
                    .await?
                    .try_collect()
                    .await?;
                let definition = candidates.iter().find(|c| {
                    codec::text(c, "task_id").is_some_and(|t| t.chars().take(48).eq(prefix.chars()))
                });
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                let of = definition
                    .and_then(|c| c.get("_id").cloned())
                    .unwrap_or(Bson::Null);
                self.jobs
                    .update_one(doc! { "_id": id }, doc! { "$set": { "instance_of": of } })
                    .await?;
                written += 1;
            }
            if (docs.len() as i64) < PAGE {
                break;
            }
        }
        if written > 0 {
            tracing::info!(
                jobs = written,
                "mongodb: gave older instances the id of their recurring job"
            );
        }
        Ok(())
    }
}
