//! Membership and master election: see the `lts-registry` crate.

pub use lts_registry::*;
