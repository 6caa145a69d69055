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

thread_local! {
    static LEASED: RefCell<HashMap<String, Found>> = RefCell::new(HashMap::new());
}

/// Keeps a job a claim just wrote leased, as written.
pub(super) fn keep(found: Found) {
    LEASED.with_borrow_mut(|m| {
        if m.len() < MOST {
            m.insert(found.stored.job.job_id.clone(), found);
        }
    });
}

/// Takes the job `job_id` as its claim wrote it, if kept and unchanged since.
pub(super) fn take(job_id: &str) -> Option<Found> {
    LEASED.with_borrow_mut(|m| m.remove(job_id))
}

/// Forgets the job `job_id`, which is being written.
pub(super) fn forget(job_id: &str) {
    LEASED.with_borrow_mut(|m| {
        m.remove(job_id);
    });
}

/// Forgets every job: the transaction that wrote them was rolled back.
pub(super) fn forget_all() {
    LEASED.with_borrow_mut(HashMap::clear);
}
