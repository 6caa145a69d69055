//! Map-reduce from a run: [`Mapper`] sends the items a run maps to the tracker, which stores
//! each as a child job, and reads the children's results for the reduce step.
//!
//! A map call returns once the tracker stored its items (durably): a runner that maps faster
//! than the store takes them waits, which is the back-pressure. Items are numbered in the order
//! the run maps them; a retried run that maps the same items makes no child twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use lts_core::model::{MAX_MAP_BATCH, MAX_MAP_ITEM};
use lts_core::proto::{self, worker_service_client::WorkerServiceClient};
use lts_core::{JobState, convert};
use tokio::sync::Mutex;

use crate::client::ClientError;
use crate::credentials::AuthChannel;

/// One child's end, as its job's reduce step reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildResult {
    /// Its item's index in the map.
    pub index: u32,
    /// How it ended.
    pub state: JobState,
    /// Its message: its output when it succeeded.
    pub message: String,
    /// Its item.
    pub item: String,
}

/// A run's line to the tracker for its map and its results.
#[derive(Debug, Clone)]
pub struct Mapper {
    client: WorkerServiceClient<AuthChannel>,
    job_id: String,
    token: String,
    /// The index of the next item (how many were mapped).
    next: Arc<AtomicU32>,
    /// One map call at a time, so that the items keep their order.
    turn: Arc<Mutex<()>>,
}

impl Mapper {
    /// A mapper for the run of `job_id` leased with `token`, through `client`.
    pub fn new(client: WorkerServiceClient<AuthChannel>, job_id: String, token: String) -> Self {
        Mapper {
            client,
            job_id,
            token,
            next: Arc::new(AtomicU32::new(0)),
            turn: Arc::new(Mutex::new(())),
        }
    }

    /// How many items the run mapped so far.
    pub fn mapped(&self) -> u32 {
        self.next.load(Ordering::SeqCst)
    }

    /// Maps `items`: each becomes a child job once this returns. Sent in calls of at most
    /// [`MAX_MAP_BATCH`] items, one after another; an item over [`MAX_MAP_ITEM`] bytes is
    /// refused before anything is sent.
    pub async fn map(&self, items: Vec<String>) -> Result<u32, ClientError> {
        if let Some(i) = items.iter().position(|item| item.len() > MAX_MAP_ITEM) {
            return Err(ClientError::Invalid(lts_core::validate::Violations(vec![
                lts_core::validate::FieldViolation::new(
                    format!("items[{i}]"),
                    format!("at most {MAX_MAP_ITEM} bytes (got {})", items[i].len()),
                ),
            ])));
        }
        let _turn = self.turn.lock().await;
        let mut created = 0;
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let batch: Vec<String> = items.by_ref().take(MAX_MAP_BATCH).collect();
            let n = batch.len() as u32;
            let first_index = self.next.load(Ordering::SeqCst);
            let answer = self
                .client
                .clone()
                .map(proto::MapRequest {
                    job_id: self.job_id.clone(),
                    lease_token: self.token.clone(),
                    first_index,
                    items: batch,
                })
                .await?;
            created += answer.into_inner().created;
            self.next
                .store(first_index.saturating_add(n), Ordering::SeqCst);
        }
        Ok(created)
    }

    /// Every child's result, for the reduce step (read a page of 1,000 at a time), by index.
    pub async fn results(&self) -> Result<Vec<ChildResult>, ClientError> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .client
                .clone()
                .map_results(proto::MapResultsRequest {
                    job_id: self.job_id.clone(),
                    lease_token: self.token.clone(),
                    page_token: page_token.clone(),
                    limit: 0,
                })
                .await?
                .into_inner();
            out.extend(page.results.into_iter().map(|r| ChildResult {
                index: r.index,
                state: convert::state_from_proto(r.state).unwrap_or(JobState::Failed),
                message: r.message,
                item: r.item,
            }));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        out.sort_by_key(|r| r.index);
        Ok(out)
    }
}
