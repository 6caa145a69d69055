//! Routing by key: jobs that share a `route_key` run on the same TaskTracker of their node
//! group while it stays connected.
//!
//! A key is hashed to one of [`BUCKETS`] buckets ([`bucket`]), which the store keeps with the
//! job. The buckets are dealt to the node group's connected TaskTrackers by rendezvous
//! (highest-random-weight) hashing ([`Assignment`]): each bucket goes to the TaskTracker with
//! the highest weight `hash(bucket, identity)`. Every tracker that sees the same TaskTrackers
//! deals the same way, without talking to the others; when a TaskTracker leaves, only its
//! buckets move (each to its runner-up), and one that joins takes about `1/n` of the buckets,
//! from every other one alike. A claim for a TaskTracker takes only the routed jobs of its
//! buckets.
//!
//! The hash is SipHash-1-3 with zero keys over the text's bytes: fixed, so that the stored
//! buckets keep their meaning across versions and machines.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// How many buckets the keys are hashed to. Enough that the buckets spread evenly over
/// hundreds of TaskTrackers; few enough that a claim's list of its buckets stays small.
pub const BUCKETS: u32 = 1024;

/// The longest route key, in bytes.
pub const MAX_ROUTE_KEY_LEN: usize = 256;

fn sip(parts: &[&[u8]]) -> u64 {
    let mut h = SipHasher13::new_with_keys(0, 0);
    for part in parts {
        // The length first, so that no two different lists of parts hash the same bytes.
        h.write(&(part.len() as u64).to_le_bytes());
        h.write(part);
    }
    h.finish()
}

/// The bucket of a route key, `0..BUCKETS`.
pub fn bucket(key: &str) -> u32 {
    (sip(&[b"key", key.as_bytes()]) % u64::from(BUCKETS)) as u32
}

/// The buckets of a node group dealt to its connected TaskTrackers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The TaskTrackers' identities, sorted and without duplicates.
    targets: Vec<String>,
    /// For each bucket, the index in `targets` of the TaskTracker it goes to.
    owner: Vec<u32>,
}

impl Assignment {
    /// Deals the buckets to `targets` (identities, in any order; duplicates count once).
    /// Costs `BUCKETS × targets` hashes: keep it while the targets stay the same.
    pub fn new(targets: &[String]) -> Self {
        let mut targets = targets.to_vec();
        targets.sort();
        targets.dedup();
        let owner = (0..BUCKETS)
            .map(|b| {
                let b = b.to_le_bytes();
                let mut best: Option<(u64, u32)> = None;
                for (i, t) in targets.iter().enumerate() {
                    let weight = sip(&[b"bucket", &b, t.as_bytes()]);
                    // Ties (never seen in practice) go to the first identity in order.
                    if best.is_none_or(|(w, _)| weight > w) {
                        best = Some((weight, i as u32));
                    }
                }
                best.map_or(u32::MAX, |(_, i)| i)
            })
            .collect();
        Assignment { targets, owner }
    }

    /// The identities dealt to, sorted.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// The TaskTracker that bucket `b` goes to; `None` with no TaskTracker (or no such
    /// bucket).
    pub fn owner_of(&self, b: u32) -> Option<&str> {
        let i = *self.owner.get(b as usize)?;
        self.targets.get(i as usize).map(String::as_str)
    }

    /// The TaskTracker that the jobs with route key `key` go to.
    pub fn owner_of_key(&self, key: &str) -> Option<&str> {
        self.owner_of(bucket(key))
    }

    /// The buckets dealt to `identity`, ascending (none if it is not one of the targets).
    pub fn buckets_of(&self, identity: &str) -> Vec<u32> {
        let Ok(i) = self.targets.binary_search_by(|t| t.as_str().cmp(identity)) else {
            return Vec::new();
        };
        let i = i as u32;
        (0..BUCKETS)
            .filter(|&b| self.owner[b as usize] == i)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}")).collect()
    }

    #[test]
    fn buckets_are_fixed_and_in_range() {
        // Stored buckets must keep their meaning: these values may never change.
        assert_eq!(bucket("customer-42"), bucket("customer-42"));
        let spread: std::collections::HashSet<u32> =
            (0..10_000).map(|i| bucket(&format!("k{i}"))).collect();
        assert!(spread.iter().all(|&b| b < BUCKETS));
        assert!(spread.len() > 1_000, "10,000 keys fill most buckets");
        assert_ne!(sip(&[b"ab", b"c"]), sip(&[b"a", b"bc"]));
    }

    #[test]
    fn every_bucket_has_one_owner_and_the_deal_is_even() {
        let targets = ids(8);
        let a = Assignment::new(&targets);
        let mut total = 0;
        for t in &targets {
            let mine = a.buckets_of(t);
            // 128 each on average; rendezvous hashing keeps each within a loose band.
            assert!((64..=192).contains(&mine.len()), "{t}: {}", mine.len());
            for b in &mine {
                assert_eq!(a.owner_of(*b), Some(t.as_str()));
            }
            total += mine.len();
        }
        assert_eq!(total, BUCKETS as usize);
        assert!(a.buckets_of("stranger").is_empty());
    }

    #[test]
    fn the_deal_does_not_depend_on_order_or_duplicates() {
        let mut targets = ids(5);
        let a = Assignment::new(&targets);
        targets.reverse();
        targets.push("worker-2".into());
        assert_eq!(Assignment::new(&targets), a);
    }

    #[test]
    fn a_leaving_tracker_moves_only_its_own_buckets() {
        let before = Assignment::new(&ids(6));
        let mut fewer = ids(6);
        fewer.retain(|t| t != "worker-3");
        let after = Assignment::new(&fewer);
        for b in 0..BUCKETS {
            let was = before.owner_of(b).unwrap();
            let now = after.owner_of(b).unwrap();
            if was != "worker-3" {
                assert_eq!(was, now, "bucket {b} moved though its owner stayed");
            }
        }
        // A joining one takes some buckets and leaves every other bucket where it was.
        let mut more = ids(6);
        more.push("worker-new".into());
        let joined = Assignment::new(&more);
        let taken = (0..BUCKETS)
            .filter(|&b| joined.owner_of(b) == Some("worker-new"))
            .count();
        assert!((60..=250).contains(&taken), "took {taken}");
        for b in 0..BUCKETS {
            if joined.owner_of(b) != Some("worker-new") {
                assert_eq!(joined.owner_of(b), before.owner_of(b));
            }
        }
    }

    #[test]
    fn no_targets_no_owner() {
        let a = Assignment::new(&[]);
        assert_eq!(a.owner_of(0), None);
        assert_eq!(a.owner_of_key("k"), None);
        let one = Assignment::new(&ids(1));
        assert_eq!(one.buckets_of("worker-0").len(), BUCKETS as usize);
        assert_eq!(one.owner_of(BUCKETS), None);
    }
}
