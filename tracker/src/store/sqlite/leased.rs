//! The jobs the writer leased, as it wrote them: the completion of one needs no read.
//!
//! Only the writer thread keeps this (a thread-local map, so the operations it runs need no
//! extra argument). It is exact by construction: a claim keeps a job it leased by updating its
//! row ([`keep`]), every other write of a job through [`super::write`] forgets it first
//! ([`forget`]), and a rolled back transaction forgets them all ([`forget_all`]). A completion
//! takes its job from here if its token still holds it, and reads the row otherwise. In debug
//! builds every job taken is checked against its row.

use std::cell::RefCell;
use std::collections::HashMap;

use super::schema::Found;

/// The most jobs kept; beyond it a claim keeps none (a completion reads its job instead).
const MOST: usize = 65_536;
/// The most bytes of params kept (each job counts [`BASE_BYTES`] more): a job's params may
/// hold 256 KiB.
const MOST_BYTES: usize = 64 << 20;
/// What a kept job counts besides its params.
const BASE_BYTES: usize = 1024;

#[derive(Default)]
struct Kept {
    jobs: HashMap<String, (Found, usize)>,
    bytes: usize,
}

thread_local! {
    static LEASED: RefCell<Kept> = RefCell::new(Kept::default());
}

/// What keeping `found` costs, roughly.
fn weight(found: &Found) -> usize {
    let params = &found.stored.job.spec.params;
    BASE_BYTES + params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// Keeps a job a claim just wrote leased, as written (unless the bounds are reached).
pub(super) fn keep(found: Found) {
    if found.stored.job.spec.workflow.is_some() {
        return;
    }
    let w = weight(&found);
    LEASED.with_borrow_mut(|k| {
        if k.jobs.len() >= MOST || k.bytes + w > MOST_BYTES {
            return;
        }
        k.bytes += w;
        let id = found.stored.job.job_id.clone();
        if let Some((_, old)) = k.jobs.insert(id, (found, w)) {
            k.bytes -= old;
        }
    });
}

/// Takes the job `job_id` as its claim wrote it, if kept and unchanged since.
pub(super) fn take(job_id: &str) -> Option<Found> {
    LEASED.with_borrow_mut(|k| {
        let (found, w) = k.jobs.remove(job_id)?;
        k.bytes -= w;
        Some(found)
    })
}

/// Forgets the job `job_id`, which is being written.
pub(super) fn forget(job_id: &str) {
    let _ = take(job_id);
}

/// Forgets every job: the transaction that wrote them was rolled back.
pub(super) fn forget_all() {
    LEASED.with_borrow_mut(|k| *k = Kept::default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use lts_core::JobSpec;

    fn found(id: &str, param_bytes: usize) -> Found {
        let mut spec = JobSpec::new(id, "g");
        spec.params.insert("p".into(), "x".repeat(param_bytes));
        let stored = lts_core::transition::accept(spec, id.to_string(), 0).job;
        Found { seq: 1, stored }
    }

    /// Kept jobs are bounded by bytes too: large params fill the budget long before the count.
    #[test]
    fn keeping_stops_at_the_byte_budget_and_taking_frees_it() {
        forget_all();
        let big = 256 * 1024;
        let fits = MOST_BYTES / (BASE_BYTES + 1 + big);
        for i in 0..fits + 10 {
            keep(found(&format!("j{i}"), big));
        }
        let kept = LEASED.with_borrow(|k| (k.jobs.len(), k.bytes));
        assert_eq!(kept.0, fits);
        assert!(kept.1 <= MOST_BYTES);
        assert!(take("j0").is_some());
        assert!(
            take(&format!("j{fits}")).is_none(),
            "past the budget: not kept"
        );
        keep(found("again", big));
        assert!(take("again").is_some(), "taking one made room");
        forget_all();
        assert_eq!(LEASED.with_borrow(|k| (k.jobs.len(), k.bytes)), (0, 0));
    }
}
