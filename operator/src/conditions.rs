//! Status Conditions: building them and merging them into a previous list so that
//! `lastTransitionTime` only moves when the status really changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition as the controller wants it, without timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Condition type (`Ready`, `Degraded`, `Submitted`, `Synced`).
    pub type_: &'static str,
    /// Whether it holds.
    pub status: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

impl Wanted {
    /// A condition of `type_` with the given status, reason and message.
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Wanted {
        Wanted {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Merges `wanted` into `previous`: conditions whose status did not change keep their
/// `lastTransitionTime`; types not in `wanted` are kept as they were.
pub fn merge(
    previous: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| !wanted.iter().any(|w| w.type_ == c.type_))
        .cloned()
        .collect();
    for w in wanted {
        let status = if w.status { "True" } else { "False" };
        let last = previous
            .iter()
            .find(|c| c.type_ == w.type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(Condition {
            type_: w.type_.to_string(),
            status: status.to_string(),
            reason: w.reason.clone(),
            message: w.message.clone(),
            observed_generation: generation,
            last_transition_time: last,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = merge(
            &[],
            &[Wanted::new("Ready", false, "Starting", "")],
            Some(1),
            t0,
        );
        let same = merge(
            &first,
            &[Wanted::new("Ready", false, "Still", "x")],
            Some(2),
            t1,
        );
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].reason, "Still");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &[Wanted::new("Ready", true, "Up", "")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn other_types_are_kept_and_sorted() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let a = merge(&[], &[Wanted::new("Ready", true, "Up", "")], None, t0);
        let b = merge(
            &a,
            &[Wanted::new("Degraded", false, "AsExpected", "")],
            None,
            t0,
        );
        let types: Vec<_> = b.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Degraded", "Ready"]);
        assert!(find(&b, "Ready").is_some());
    }
}
