//! Each store call that changes jobs, as events: find the job, apply the event
//! ([`super::write::change`]), and answer with the store API's outcome for what the transition
//! did or why it was refused.

use lts_core::schedule::RetryPolicy;
use lts_core::transition::{
    self, CancelCause, Event, LeaseLoss, MapBatch, Refusal, RunReport, Write,
};
use lts_core::{JobKey, JobSpec};
use rusqlite::{Connection, params};

use super::claim::new_job_id;
use super::queries::{find_by_id, find_by_key, get_finished};
use super::schema::{EXPIRED_LEASES, Found, OWNER_LEASES, found_all};
use super::write::{change, insert, log_lines, write};
use crate::store::{
    CancelOutcome, ChangeOutcome, ChildResult, CompleteOutcome, Completion, HeldLease, LeaseRef,
    MapOutcome, Requeued, StoreError, StoreResult, SubmitOutcome, TriggerOutcome, reduce_leased,
};

/// A refusal that the store API has no answer for: the caller's rule and the store's disagree.
fn unexpected(refusal: Refusal) -> StoreError {
    StoreError::Backend(format!("refused: {refusal}"))
}

/// Submits each spec (with its JSON): a new job, or a replace or a duplicate of the unfinished
/// job with its task id.
pub(super) fn submit(
    conn: &Connection,
    specs: Vec<(JobSpec, String)>,
    now: i64,
    retry: &RetryPolicy,
) -> StoreResult<Vec<SubmitOutcome>> {
    let mut out = Vec::with_capacity(specs.len());
    for (spec, text) in specs {
        let idempotency = spec.idempotency_key.clone();
        let new_job_id = new_job_id();
        if let Some(k) = &idempotency {
            // The key is claimed first, for the job about to be stored: its unique index is
            // the lookup, so a new key costs one probe, not a read and a write.
            let claimed = conn
                .prepare_cached(
                    "INSERT INTO submit_keys (key, job_id, at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO NOTHING",
                )?
                .execute(rusqlite::params![k, new_job_id, now])?
                == 1;
            if !claimed && let Some(job_id) = known_submit(conn, k)? {
                out.push(SubmitOutcome::Duplicate { job_id });
                continue;
            }
        }
        let key = JobKey::of_spec(&spec);
        let outcome = match find_by_key(conn, &key)? {
            None => {
                let job_id = new_job_id;
                let accepted = transition::accept(spec, job_id.clone(), now);
                write(conn, None, accepted, Some(&text), now, retry)?;
                SubmitOutcome::Accepted { job_id }
            }
            Some(found) => {
                let submit = Event::Submit {
                    spec: Box::new(spec),
                    new_job_id,
                };
                match change(conn, &found, submit, now, retry, Some(&text))? {
                    Ok(w) if w.transition.write == Write::Insert => SubmitOutcome::Accepted {
                        job_id: w.transition.job.job.job_id,
                    },
                    Ok(w) => SubmitOutcome::Replaced {
                        job_id: w.transition.job.job.job_id,
                    },
                    Err(Refusal::Duplicate(job_id)) => SubmitOutcome::Duplicate { job_id },
                    Err(other) => return Err(unexpected(other)),
                }
            }
        };
        // The submit resolved to a job already there (its task id's): the key names that one.
        if let (Some(k), SubmitOutcome::Replaced { job_id } | SubmitOutcome::Duplicate { job_id }) =
            (&idempotency, &outcome)
        {
            conn.prepare_cached("UPDATE submit_keys SET job_id = ?2 WHERE key = ?1")?
                .execute(rusqlite::params![k, job_id])?;
        }
        out.push(outcome);
    }
    Ok(out)
}

/// The job a submit with idempotency key `key` stored, if one did (within retention).
fn known_submit(conn: &Connection, key: &str) -> StoreResult<Option<String>> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .prepare_cached("SELECT job_id FROM submit_keys WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// Extends each lease its token still holds; answers the job ids whose lease is lost.
pub(super) fn renew(
    conn: &Connection,
    leases: Vec<LeaseRef>,
    expiry_ms: i64,
    retry: &RetryPolicy,
) -> StoreResult<Vec<String>> {
    let mut lost = Vec::new();
    for l in leases {
        let kept = match find_by_id(conn, &l.job_id)? {
            Some(found) => {
                let renew = Event::Renew {
                    token: l.token,
                    expiry_ms,
                };
                // A renewal changes only the expiry: no clock is read by its rule.
                change(conn, &found, renew, expiry_ms, retry, None)?.is_ok()
            }
            None => false,
        };
        if !kept {
            lost.push(l.job_id);
        }
    }
    Ok(lost)
}

/// Records a run's result, if its lease token still holds the job.
pub(super) fn complete(
    conn: &Connection,
    c: Completion,
    retry: &RetryPolicy,
) -> StoreResult<CompleteOutcome> {
    let kept = super::leased::take(&c.job_id)
        .filter(|f| f.stored.lease_token.as_deref() == Some(c.token.as_str()));
    let found = match kept {
        Some(found) => {
            debug_assert_eq!(
                find_by_id(conn, &c.job_id)
                    .ok()
                    .flatten()
                    .map(|f| (f.seq, f.stored)),
                Some((found.seq, found.stored.clone())),
                "a leased job kept differs from its row"
            );
            Some(found)
        }
        None => find_by_id(conn, &c.job_id)?,
    };
    let Some(found) = found else {
        return Ok(CompleteOutcome::Stale {
            reason: "job is no longer active (cancelled or already finished)".into(),
        });
    };
    let report = RunReport {
        token: c.token,
        outcome: c.outcome,
        message: c.message,
        logs: c.logs,
        node: c.node,
        mapped: c.mapped,
    };
    match change(conn, &found, Event::Complete(report), c.now_ms, retry, None)? {
        Ok(w) => {
            let spec = &w.transition.job.job.spec;
            let disposition =
                w.transition.disposition.clone().ok_or_else(|| {
                    StoreError::Backend("a completion without disposition".into())
                })?;
            Ok(CompleteOutcome::Accepted {
                node_group: spec.task_tracker_node_group.clone(),
                disposition,
                feedback_group: w.feedback_group,
                submit_node_group: spec.submit_node_group.clone(),
                woken: w.woken,
            })
        }
        Err(Refusal::StaleLease | Refusal::NotRunning(_)) => Ok(CompleteOutcome::Stale {
            reason: Refusal::StaleLease.to_string(),
        }),
        Err(other) => Ok(CompleteOutcome::Stale {
            reason: other.to_string(),
        }),
    }
}

/// The job of a requeue, for its answer.
fn requeued(w: &super::write::Written) -> Requeued {
    let job = &w.transition.job.job;
    Requeued {
        job_id: job.job_id.clone(),
        node_group: job.spec.task_tracker_node_group.clone(),
    }
}

/// Hands leased jobs back unrun, each if its token still holds it.
pub(super) fn release(
    conn: &Connection,
    leases: Vec<LeaseRef>,
    now: i64,
    retry: &RetryPolicy,
) -> StoreResult<Vec<Requeued>> {
    let mut out = Vec::new();
    for l in leases {
        if let Some(found) = find_by_id(conn, &l.job_id)?
            && let Ok(w) = change(conn, &found, Event::Release(l.token), now, retry, None)?
        {
            out.push(requeued(&w));
        }
    }
    Ok(out)
}

/// The lease losses a sweep applies.
#[derive(Debug, Clone)]
pub(super) enum Sweep {
    /// Every lease that expired before now.
    Expired,
    /// Every lease of this TaskTracker, which left.
    Owner(String),
    /// These leases, each if still exactly as its ended stream wrote it.
    Held(Vec<HeldLease>),
}

/// Puts the jobs whose lease `sweep` finds lost back in their queue (or suspends them).
pub(super) fn requeue(
    conn: &Connection,
    sweep: Sweep,
    now: i64,
    retry: &RetryPolicy,
) -> StoreResult<Vec<Requeued>> {
    let losses: Vec<(Found, LeaseLoss)> = match sweep {
        Sweep::Expired => found_all(&mut conn.prepare_cached(EXPIRED_LEASES.text())?, [now])?
            .into_iter()
            .map(|f| (f, LeaseLoss::Expired))
            .collect(),
        Sweep::Owner(owner) => found_all(
            &mut conn.prepare_cached(OWNER_LEASES.text())?,
            params![owner],
        )?
        .into_iter()
        .map(|f| (f, LeaseLoss::OwnerGone(owner.clone())))
        .collect(),
        Sweep::Held(held) => {
            let mut losses = Vec::with_capacity(held.len());
            for h in held {
                if let Some(found) = find_by_id(conn, &h.job_id)? {
                    let loss = LeaseLoss::StreamEnded {
                        token: h.token,
                        expiry_ms: h.expiry_ms,
                    };
                    losses.push((found, loss));
                }
            }
            losses
        }
    };
    let mut out = Vec::new();
    for (found, loss) in losses {
        if let Ok(w) = change(conn, &found, Event::LeaseLost(loss), now, retry, None)? {
            out.push(requeued(&w));
        }
    }
    Ok(out)
}

/// The answer for a key with no unfinished job.
fn not_active(conn: &Connection, key: &JobKey) -> StoreResult<ChangeOutcome> {
    Ok(match get_finished(conn, key)? {
        Some(job) => ChangeOutcome::AlreadyFinished(job),
        None => ChangeOutcome::NotFound,
    })
}

/// Suspends (`Event::Suspend`) or resumes (`Event::Resume`) the unfinished job with `key`.
pub(super) fn suspend_or_resume(
    conn: &Connection,
    key: JobKey,
    event: Event,
    now: i64,
    retry: &RetryPolicy,
) -> StoreResult<ChangeOutcome> {
    let Some(found) = find_by_key(conn, &key)? else {
        return not_active(conn, &key);
    };
    Ok(match change(conn, &found, event, now, retry, None)? {
        Ok(w) => ChangeOutcome::Changed(w.transition.job.job),
        Err(Refusal::AlreadySuspended | Refusal::NotSuspended) => {
            ChangeOutcome::Unchanged(found.stored.job)
        }
        Err(other) => return Err(unexpected(other)),
    })
}

/// Queues an extra run of the unfinished recurring job with `key` now (`Event::Trigger`): its
/// instance for this instant, or the one a trigger in the same millisecond created.
pub(super) fn trigger(
    conn: &Connection,
    key: JobKey,
    now: i64,
    retry: &RetryPolicy,
) -> StoreResult<TriggerOutcome> {
    let Some(found) = find_by_key(conn, &key)? else {
        return Ok(match get_finished(conn, &key)? {
            Some(job) => TriggerOutcome::AlreadyFinished(job),
            None => TriggerOutcome::NotFound,
        });
    };
    let w = match change(conn, &found, Event::Trigger(new_job_id()), now, retry, None)? {
        Ok(w) => w,
        Err(Refusal::NotRecurring(_)) => return Ok(TriggerOutcome::NotRecurring(found.stored.job)),
        Err(other) => return Err(unexpected(other)),
    };
    let Some(instance) = w.transition.follow_up else {
        return Err(StoreError::Backend("a trigger created no instance".into()));
    };
    if w.follow_up_inserted {
        return Ok(TriggerOutcome::Triggered(instance.job.job));
    }
    // A trigger of the same millisecond created it already.
    let key = JobKey::of_spec(&instance.job.job.spec);
    match find_by_key(conn, &key)? {
        Some(found) => Ok(TriggerOutcome::Triggered(found.stored.job)),
        None => Err(StoreError::Backend(format!(
            "trigger instance {key} vanished"
        ))),
    }
}

/// Cancels the unfinished job with `key` (and the queued instances of a recurring one).
pub(super) fn cancel(
    conn: &Connection,
    key: JobKey,
    now: i64,
    retry: &RetryPolicy,
) -> StoreResult<CancelOutcome> {
    let Some(found) = find_by_key(conn, &key)? else {
        return Ok(match get_finished(conn, &key)? {
            Some(job) => CancelOutcome::AlreadyFinished(job),
            None => CancelOutcome::NotFound,
        });
    };
    let cancel = Event::Cancel(CancelCause::User);
    match change(conn, &found, cancel, now, retry, None)? {
        Ok(w) => Ok(CancelOutcome::Cancelled(w.transition.job.job)),
        Err(other) => Err(unexpected(other)),
    }
}

/// Cancels the unfinished broadcast shards for the TaskTracker `identity`, which left the
/// cluster, each by its own transition (its job ends with its last shard); how many.
pub(super) fn target_gone(
    conn: &Connection,
    identity: &str,
    now: i64,
    retry: &RetryPolicy,
) -> StoreResult<usize> {
    let shards = found_all(
        &mut conn.prepare_cached(&format!(
            "SELECT {} FROM jobs INDEXED BY jobs_shard_on WHERE shard_on = ?1",
            super::schema::JOB_COLS
        ))?,
        params![identity],
    )?;
    let mut n = 0;
    for found in &shards {
        let gone = Event::Cancel(CancelCause::TargetGone(identity.to_string()));
        if change(conn, found, gone, now, retry, None)?.is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// A map of the running map-reduce job `job_id`: its children inserted, each unless a job
/// (unfinished or finished) has its id already — a map made again makes none twice.
pub(super) fn map(
    conn: &Connection,
    job_id: &str,
    batch: &MapBatch,
    now: i64,
    retry: &RetryPolicy,
) -> StoreResult<MapOutcome> {
    let Some(found) = find_by_id(conn, job_id)? else {
        return Ok(MapOutcome::Missing);
    };
    let t = match transition::apply(&found.stored, Event::Map(batch.clone()), now, retry) {
        Ok(t) => t,
        Err(refusal) => return Ok(MapOutcome::Refused(refusal)),
    };
    let mut created = 0;
    for child in &t.fan_out {
        let known: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE job_id = ?1)
                     OR EXISTS (SELECT 1 FROM finished_jobs WHERE job_id = ?1)",
            )?
            .query_row([&child.job.job_id], |r| r.get(0))?;
        if !known && insert(conn, child, None)? {
            created += 1;
        }
    }
    log_lines(conn, &t.logs)?;
    Ok(MapOutcome::Accepted {
        node_group: found.stored.job.spec.task_tracker_node_group,
        created,
    })
}

/// The children of the map-reduce job whose reduce step `reduce_id` runs with `token`: the
/// finished ones (all of them, once the reduce step runs), in id order after `after`.
pub(super) fn map_results(
    conn: &Connection,
    reduce_id: &str,
    token: &str,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Result<Vec<ChildResult>, Refusal>> {
    let Some(found) = find_by_id(conn, reduce_id)? else {
        return Ok(Err(Refusal::NotReducing));
    };
    if let Err(refusal) = reduce_leased(&found.stored, token) {
        return Ok(Err(refusal));
    }
    let run = lts_core::Shard::run_of_id(reduce_id);
    let from = lts_core::Shard::ids_from(run);
    let after = after.filter(|a| **a >= *from.as_str()).unwrap_or("");
    let mut stmt = conn.prepare_cached(
        "SELECT job FROM finished_jobs WHERE job_id >= ?1 AND job_id > ?2 AND job_id < ?3
         ORDER BY job_id LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![from, after, lts_core::Shard::ids_to(run), limit as i64],
        |r| r.get::<_, String>(0),
    )?;
    let mut out = Vec::new();
    for text in rows {
        let job = super::schema::decode_finished(&text?)?;
        out.extend(ChildResult::of(&job));
    }
    Ok(Ok(out))
}
