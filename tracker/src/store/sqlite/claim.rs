//! The claim, the drain's hot path: one statement finds the due jobs of a node group through
//! the `jobs_claim` index, best first; each is claimed by its own transition and written by
//! its row id, all in the writer's one transaction.

use lts_core::schedule::{RetryPolicy, fires_overlapping_instances};
use lts_core::transition::{Claim, Event, Handout};
use rusqlite::{Connection, params};

use super::schema::{DUE_JOBS, Found, found_all, states};
use super::write::change;
use crate::store::{ClaimRequest, Lease, StoreResult};

/// A fresh job id: a UUIDv7, so ids sort in submit order.
pub(super) fn new_job_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Leases up to `req.max` due jobs of the node group under one `token`, best first: each job
/// itself, or the instance of its fire that the claim created (a recurring job whose instances
/// overlap). A claim that hands out nothing (a missed fire skipped, an instance whose task id
/// an unfinished job has) leases nothing.
pub(super) fn claim(
    conn: &Connection,
    req: &ClaimRequest,
    token: &str,
    expiry_ms: i64,
    retry: &RetryPolicy,
) -> StoreResult<Vec<Lease>> {
    // Under a cap on the group's running jobs, no more than it leaves room for: inside the
    // writer's transaction the count is exact (one tracker owns an SQLite store).
    let max = match req.max_running {
        Some(cap) => {
            let running = running_count(conn, &req.node_group, cap)?;
            req.max.min(cap.saturating_sub(running) as usize)
        }
        None => req.max,
    };
    if max == 0 {
        return Ok(Vec::new());
    }
    let due = found_all(
        &mut conn.prepare_cached(DUE_JOBS.text())?,
        params![
            req.node_group,
            req.due_by_ms(),
            max as i64,
            req.owner,
            allowed_affinities(conn, req)?,
            serde_json::to_string(&req.route_buckets).unwrap_or_else(|_| "[]".into()),
        ],
    )?;
    let mut leases = Vec::with_capacity(due.len());
    for found in &due {
        let event = Event::Claim(Claim {
            owner: req.owner.clone(),
            token: token.to_string(),
            expiry_ms,
            // Only a fire of overlapping instances creates a job (a fresh id costs a read of
            // the system's randomness).
            instance_id: if fires_overlapping_instances(&found.stored.job.spec) {
                new_job_id()
            } else {
                String::new()
            },
            due_by_ms: req.due_by_ms(),
            targets: if found.stored.job.spec.broadcast {
                req.targets.clone()
            } else {
                Vec::new()
            },
            unfinished_instances: unfinished_instances(
                conn,
                &found.stored.job.job_id,
                Claim::instances_to_count(&found.stored.job.spec),
            )?,
        });
        // The statement found it queued and due: a refusal cannot happen, and writes nothing.
        let Ok(written) = change(conn, found, event, req.now_ms, retry, None)? else {
            continue;
        };
        let t = written.transition;
        let no_cascade = t.cascade.is_none();
        let job = match (t.handout, t.follow_up) {
            (Handout::Job, _) => {
                if no_cascade {
                    // Its row as just written: its completion needs no read.
                    super::leased::keep(Found {
                        seq: found.seq,
                        stored: t.job.clone(),
                    });
                }
                t.job.job
            }
            (Handout::FollowUp, Some(instance)) if written.follow_up_inserted => instance.job.job,
            _ => continue,
        };
        leases.push(Lease::of(job, token, expiry_ms));
    }
    Ok(leases)
}

/// How many unfinished instances the recurring job `definition` has (every row of `jobs` is
/// unfinished), counted up to `most`.
fn unfinished_instances(conn: &Connection, definition: &str, most: u32) -> StoreResult<u32> {
    if most == 0 {
        return Ok(0);
    }
    Ok(conn
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM jobs INDEXED BY jobs_instance_of
             WHERE instance_of = ?1 LIMIT ?2)",
        )?
        .query_row(params![definition, i64::from(most)], |r| r.get(0))?)
}

/// How many jobs of the node group run now, counted up to `most`: through the index of running
/// jobs (all groups), which holds no more rows than there are busy TaskTracker threads.
pub(super) fn running_count(conn: &Connection, node_group: &str, most: u32) -> StoreResult<u32> {
    Ok(conn
        .prepare_cached(&states(
            "SELECT count(*) FROM (SELECT 1 FROM jobs INDEXED BY jobs_lease
             WHERE state = {RUNNING} AND node_group = ?1 LIMIT ?2)",
        ))?
        .query_row(params![node_group, i64::from(most)], |r| r.get(0))?)
}

/// The affinities of the group's queued jobs that the claiming TaskTracker's labels satisfy,
/// as a JSON array (the few distinct ones, through their own index).
fn allowed_affinities(conn: &Connection, req: &ClaimRequest) -> StoreResult<String> {
    let mut stmt = conn.prepare_cached(&states(
        "SELECT DISTINCT affinity FROM jobs INDEXED BY jobs_affinity
         WHERE node_group = ?1 AND affinity IS NOT NULL AND state = {QUEUED}",
    ))?;
    let found = stmt.query_map(params![req.node_group], |r| r.get::<_, String>(0))?;
    let mut allowed = Vec::new();
    for key in found {
        let key = key?;
        if lts_core::model::labels_satisfy(&req.labels, &key) {
            allowed.push(key);
        }
    }
    Ok(serde_json::to_string(&allowed).unwrap_or_else(|_| "[]".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim's query is prepared once: its plan does not depend on the values bound to it
    /// (its `LIMIT` among them), so running it again with other values reuses it.
    #[test]
    fn the_claim_query_is_not_prepared_again_for_other_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claim.db");
        let conn = super::super::open_conn(&path, super::super::SyncMode::Normal).unwrap();
        super::super::schema::migrate(&conn, &path).unwrap();
        let mut stmt = conn.prepare_cached(DUE_JOBS.text()).unwrap();
        for i in 0..10 {
            let params = rusqlite::params!["group", 1_000 + i, 1 + i, "me", "[]", "[]"];
            assert!(found_all(&mut stmt, params).unwrap().is_empty());
        }
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }
}
