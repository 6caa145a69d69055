//! The `JobStore` conformance suite: the same semantics for every backend. The embedded store
//! gets one `#[tokio::test]` per case; MongoDB (a real `mongod`, started here) runs
//! every case in one test, each in a fresh database, so that one server serves them all.

use std::sync::Arc;

use lts_core::schedule::{Disposition, RetryPolicy};
use lts_core::{JobSpec, JobState, LogType, Outcome, Schedule, ScheduleKind};
use lts_tests::MongoServer;
use lts_tracker::store::mongo::{MongoOptions, MongoStore};
use lts_tracker::store::sqlite::{SqliteOptions, SqliteStore};
use lts_tracker::store::{
    CancelOutcome, ChangeOutcome, ClaimRequest, CompleteOutcome, Completion, HeldLease, JobKey,
    JobStore, LeaseRef, ListFilter, SubmitOutcome, TriggerOutcome,
};

const NOW: i64 = 1_800_000_000_000;

fn claim(group: &str, owner: &str, max: usize, now: i64) -> ClaimRequest {
    ClaimRequest {
        lease_ms: 10_000,
        ..lts_tests::claim_request(group, owner, max, now)
    }
}

fn done(job_id: &str, token: &str, outcome: Outcome, now: i64) -> Completion {
    Completion {
        job_id: job_id.into(),
        token: token.into(),
        outcome,
        message: format!("{outcome}"),
        logs: vec![],
        node: "w1".into(),
        mapped: 0,
        now_ms: now,
    }
}

fn id(o: &SubmitOutcome) -> String {
    match o {
        SubmitOutcome::Accepted { job_id }
        | SubmitOutcome::Duplicate { job_id }
        | SubmitOutcome::Replaced { job_id } => job_id.clone(),
    }
}

mod map_reduce;
mod queries;
mod queue;
mod schedules;
mod suspend;
mod workflows;

use map_reduce::*;
use queries::*;
use queue::*;
use schedules::*;
use suspend::*;
use workflows::*;

macro_rules! for_each_case {
    ($m:ident) => {
        $m!(
            claim_order,
            no_double_lease,
            dedup_and_replace,
            complete_retry_and_stale,
            requeue_paths,
            lost_runs_end_a_poison_job,
            idempotent_submits_answer_the_stored_job,
            deadlines_cap_leases_and_end_runs_timeout,
            requeue_held_only_what_nobody_renewed,
            cancel_list_stats_retention,
            many_reads_at_once,
            list_by_submit_group_and_schedule_kind,
            repeat_fires_until_count,
            feedback_until_acknowledged,
            master_fence,
            suspend_and_resume,
            overlapping_instances,
            months_of_a_daily_cron,
            stale_token_after_reassignment,
            suspended_while_running_waits_after_its_attempt,
            cancel_cascades_to_queued_instances_only,
            instances_name_their_recurring_job,
            claims_ahead_of_the_trigger_time,
            concurrency_policies,
            max_concurrent_caps_overlapping_runs,
            a_group_cap_limits_its_running_jobs,
            sharded_jobs_run_as_their_shards,
            broadcast_jobs_run_once_on_each_task_tracker,
            affinity_matches_jobs_to_labelled_task_trackers,
            route_keys_keep_to_their_task_tracker,
            a_workflow_runs_its_nodes_after_their_predecessors,
            a_failure_skips_a_long_chain_at_once,
            a_cancelled_workflow_cancels_its_waiting_nodes,
            a_suspended_workflow_holds_its_nodes_until_resumed,
            a_retry_runs_only_the_nodes_that_did_not_succeed,
            concurrency_policies_apply_to_recurring_workflows,
            a_map_reduce_job_runs_its_children_then_its_reduce_step
        );
    };
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        jitter: false,
        ..RetryPolicy::default()
    }
}

mod sqlite_store {
    use super::*;

    fn open() -> (Arc<dyn JobStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            dir.path().join("lts.db"),
            SqliteOptions {
                retry: retry(),
                ..Default::default()
            },
        )
        .unwrap();
        (Arc::new(store), dir)
    }

    macro_rules! cases {
        ($($case:ident),*) => {
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _dir) = open();
                    super::$case(store).await;
                }
            )*
        };
    }
    for_each_case!(cases);
}

/// Every case against MongoDB, each in its own database of one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = MongoServer::start(dir.path()).await.unwrap();
    macro_rules! cases {
        ($($case:ident),*) => {
            $(
                eprintln!("mongo_store: {}", stringify!($case));
                let store = MongoStore::connect(
                    &server.url(stringify!($case)),
                    "conformance",
                    MongoOptions { retry: retry(), ..Default::default() },
                )
                .await
                .unwrap();
                assert_eq!(store.database(), stringify!($case));
                $case(Arc::new(store)).await;
            )*
        };
    }
    for_each_case!(cases);
}
