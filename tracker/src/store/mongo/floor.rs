//! Where a TaskTracker's claims of a node group may start: past the jobs claimed before.
//!
//! A claim reads the best due jobs from the front of the `claim_queued` index. Every job it
//! leases leaves that index, but WiredTiger keeps the removed keys as invisible entries until
//! it next writes the page out (at a checkpoint, a minute apart by default), and every later
//! seek to the front of the group walks over them. In a drain of a deep queue that walk grew to
//! most of the claim's time: on `mongod` 6.0 here, a `find` of 64 took 13 ms after 80,000 of
//! 100,000 queued jobs were claimed, against 1.6 ms for one that starts where the queue now
//! begins.
//!
//! So after a claim that found a full window (a deep queue), the store remembers the first
//! candidate's priority and trigger time, the *floor*: no queued job the TaskTracker could take
//! sorted before it. For [`FLOOR_FOR_MS`] the TaskTracker's claims read only that priority from
//! that trigger time on, an index range that starts past the removed keys. A claim that finds
//! fewer than it asked for there reads the whole queue at once, in the same claim (the level ran
//! out, or lower priorities wait), and forgets the floor.
//!
//! Jobs that sort before the floor can appear meanwhile. A submit through this tracker with a
//! higher priority or an earlier trigger time drops the floors it sorts before at once, so the
//! next claim reads the whole queue ([`Floors::queued`]). Jobs other trackers queue, jobs put
//! back with their old trigger time (a lost lease, a resume), and jobs that became open to the
//! TaskTracker (a routing bucket dealt to it) are seen by the first whole-queue read, at most
//! [`FLOOR_FOR_MS`] later: their turn may come that much late in a deep queue, never lost.

use std::collections::HashMap;
use std::sync::Mutex;

/// How long a floor is trusted after the whole-queue read that set it.
pub(super) const FLOOR_FOR_MS: i64 = 200;
/// Node groups with floors at once; past it, expired floors go first, and then new ones wait.
const MAX_GROUPS: usize = 10_000;
/// TaskTrackers of one group with floors at once.
const MAX_OWNERS: usize = 10_000;

/// The first key of a TaskTracker's queue in a node group, as its last claims found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Floor {
    /// Priority of the best queued job.
    pub priority: i64,
    /// Its trigger time; no job of that priority was queued earlier.
    pub trigger_time: i64,
    /// Until when the floor is trusted.
    until_ms: i64,
}

/// The floors of every node group's TaskTrackers.
#[derive(Debug, Default)]
pub(super) struct Floors {
    groups: Mutex<HashMap<String, HashMap<String, Floor>>>,
}

impl Floors {
    /// The floor of `owner`'s claims in `group`, while trusted.
    pub(super) fn get(&self, group: &str, owner: &str, now: i64) -> Option<Floor> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .get(group)?
            .get(owner)
            .filter(|f| f.until_ms > now)
            .copied()
    }

    /// Records what a claim read. `first` is the priority and trigger time of the first job it
    /// found; `full` whether it found its whole window; `whole` whether it read the whole queue
    /// (`false`: only from the floor on).
    ///
    /// A full whole-queue read sets a new floor; a full read from the floor moves the floor up
    /// to what it found, keeping its expiry; anything else forgets it.
    pub(super) fn found(
        &self,
        group: &str,
        owner: &str,
        first: Option<(i64, i64)>,
        full: bool,
        whole: bool,
        now: i64,
    ) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some((priority, trigger_time)) = first.filter(|_| full) else {
            if let Some(owners) = groups.get_mut(group) {
                owners.remove(owner);
                if owners.is_empty() {
                    groups.remove(group);
                }
            }
            return;
        };
        if !whole {
            if let Some(f) = groups.get_mut(group).and_then(|o| o.get_mut(owner))
                && f.priority == priority
                && trigger_time >= f.trigger_time
            {
                f.trigger_time = trigger_time;
            }
            return;
        }
        if groups.len() >= MAX_GROUPS && !groups.contains_key(group) {
            groups.retain(|_, owners| {
                owners.retain(|_, f| f.until_ms > now);
                !owners.is_empty()
            });
            if groups.len() >= MAX_GROUPS {
                return;
            }
        }
        let owners = groups.entry(group.to_string()).or_default();
        if owners.len() >= MAX_OWNERS && !owners.contains_key(owner) {
            owners.retain(|_, f| f.until_ms > now);
            if owners.len() >= MAX_OWNERS {
                return;
            }
        }
        owners.insert(
            owner.to_string(),
            Floor {
                priority,
                trigger_time,
                until_ms: now + FLOOR_FOR_MS,
            },
        );
    }

    /// A job of `group` was queued through this tracker: the floors it sorts before are
    /// forgotten.
    pub(super) fn queued(&self, group: &str, priority: i64, trigger_time: i64) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(owners) = groups.get_mut(group) else {
            return;
        };
        owners.retain(|_, f| {
            priority < f.priority || (priority == f.priority && trigger_time >= f.trigger_time)
        });
        if owners.is_empty() {
            groups.remove(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_read_of_the_whole_queue_sets_a_floor_for_a_while() {
        let floors = Floors::default();
        floors.found("g", "w", Some((0, 100)), false, true, 1_000);
        assert_eq!(floors.get("g", "w", 1_000), None, "a short read sets none");
        floors.found("g", "w", Some((0, 100)), true, true, 1_000);
        let f = floors.get("g", "w", 1_000).unwrap();
        assert_eq!((f.priority, f.trigger_time), (0, 100));
        assert_eq!(floors.get("g", "other", 1_000), None, "per TaskTracker");
        assert_eq!(floors.get("h", "w", 1_000), None, "per node group");
        assert!(floors.get("g", "w", 1_000 + FLOOR_FOR_MS - 1).is_some());
        assert_eq!(floors.get("g", "w", 1_000 + FLOOR_FOR_MS), None, "expired");
    }

    #[test]
    fn a_read_from_the_floor_moves_it_up_without_extending_it_and_a_short_one_forgets_it() {
        let floors = Floors::default();
        floors.found("g", "w", Some((5, 100)), true, true, 1_000);
        floors.found("g", "w", Some((5, 180)), true, false, 1_100);
        let f = floors.get("g", "w", 1_100).unwrap();
        assert_eq!(f.trigger_time, 180);
        assert_eq!(floors.get("g", "w", 1_000 + FLOOR_FOR_MS), None);
        floors.found("g", "w", Some((5, 100)), true, true, 2_000);
        floors.found("g", "w", Some((5, 150)), false, false, 2_010);
        assert_eq!(floors.get("g", "w", 2_010), None);
    }

    #[test]
    fn a_job_queued_before_the_floor_lowers_it() {
        let floors = Floors::default();
        floors.found("g", "w", Some((5, 100)), true, true, 1_000);
        floors.queued("g", 5, 100);
        floors.queued("g", 4, 10);
        floors.queued("h", 9, 0);
        assert!(floors.get("g", "w", 1_000).is_some(), "behind the floor");
        floors.queued("g", 5, 99);
        assert_eq!(floors.get("g", "w", 1_000), None, "earlier");
        floors.found("g", "w", Some((5, 100)), true, true, 1_000);
        floors.queued("g", 6, 500);
        assert_eq!(floors.get("g", "w", 1_000), None, "higher priority");
    }
}
