//! The work list both stores run a transition's cascades on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use lts_core::Job;
use lts_core::transition::Cascade;

/// The most finished workflow nodes one write keeps read ([`Work::ended`]).
const ENDED_CACHE: usize = 10_000;

/// The cascades left to run (one after another, not recursively: a skip may run down a chain
/// of 10,000 nodes), and what those run so far found out.
#[derive(Default)]
pub(crate) struct Work {
    /// Cascades still to run.
    pub todo: VecDeque<Cascade>,
    /// Node groups where the cascades queued jobs (workflow nodes), to wake their dispatchers;
    /// each once ([`Work::wake`]).
    pub woken: Vec<String>,
    /// Finished workflow nodes read by this write, by id (they do not change): a root that
    /// fans out to 10,000 successors is read once, not once for each.
    pub ended: HashMap<String, Arc<Job>>,
}

impl Work {
    /// Notes that a cascade queued a job of `group` (each group once: a fan-out's root queues
    /// thousands of nodes of one group).
    pub fn wake(&mut self, group: &str) {
        if !self.woken.iter().any(|g| g == group) {
            self.woken.push(group.to_string());
        }
    }

    /// Keeps a finished node read (forgetting every other once [`ENDED_CACHE`] are kept).
    pub fn remember_ended(&mut self, job: Job) -> Arc<Job> {
        if self.ended.len() >= ENDED_CACHE {
            self.ended.clear();
        }
        let job = Arc::new(job);
        self.ended.insert(job.job_id.clone(), job.clone());
        job
    }
}
