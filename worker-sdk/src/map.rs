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

/// The most bytes of items one map call sends (well under a tracker's message limit).
pub const MAX_MAP_CALL_BYTES: usize = 4 << 20;

/// The most bytes of items and messages [`crate::JobContext::map_results`] holds at once.
pub const MAX_RESULTS_BYTES: usize = 256 << 20;

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
    /// [`MAX_MAP_BATCH`] items and [`MAX_MAP_CALL_BYTES`], one after another; an item over [`MAX_MAP_ITEM`] bytes is
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
            // At most MAX_MAP_BATCH items and MAX_MAP_CALL_BYTES a call (one item at least).
            let mut batch: Vec<String> = Vec::new();
            let mut bytes = 0usize;
            while let Some(item) = items.peek() {
                let more = item.len() + 16;
                if batch.len() == MAX_MAP_BATCH
                    || (!batch.is_empty() && bytes + more > MAX_MAP_CALL_BYTES)
                {
                    break;
                }
                bytes += more;
                batch.extend(items.next());
            }
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

    /// One page of the children's results, for the reduce step, in id order after
    /// `page_token` (`None`: the first page); the token of the next page, if there is one.
    pub async fn results_page(
        &self,
        page_token: Option<String>,
    ) -> Result<(Vec<ChildResult>, Option<String>), ClientError> {
        let page = self
            .client
            .clone()
            .map_results(proto::MapResultsRequest {
                job_id: self.job_id.clone(),
                lease_token: self.token.clone(),
                page_token: page_token.unwrap_or_default(),
                limit: 0,
            })
            .await?
            .into_inner();
        let results = page
            .results
            .into_iter()
            .map(|r| ChildResult {
                index: r.index,
                state: convert::state_from_proto(r.state).unwrap_or(JobState::Failed),
                message: r.message,
                item: r.item,
            })
            .collect();
        Ok((
            results,
            (!page.next_page_token.is_empty()).then_some(page.next_page_token),
        ))
    }

    /// Every child's result, for the reduce step, by index — at most `max_bytes` of items and
    /// messages: a larger map is refused with the reason (read it a page at a time with
    /// [`Mapper::results_page`] instead).
    pub async fn results(&self, max_bytes: usize) -> Result<Vec<ChildResult>, ClientError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut token = None;
        loop {
            let (page, next) = self.results_page(token).await?;
            bytes += page
                .iter()
                .map(|r| r.message.len() + r.item.len() + 32)
                .sum::<usize>();
            if bytes > max_bytes {
                return Err(ClientError::FailedPrecondition(format!(
                    "the children's results pass {max_bytes} bytes: read them a page at a time \
                     (JobContext::map_results_page)"
                )));
            }
            out.extend(page);
            match next {
                Some(n) => token = Some(n),
                None => break,
            }
        }
        out.sort_by_key(|r| r.index);
        Ok(out)
    }
}
