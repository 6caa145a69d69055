//! Bounds on what one run may report, and on the size of a gRPC message.
//!
//! A run reports a message and business-log lines with its outcome. Unbounded, one chatty
//! program makes a result larger than a gRPC message may be, and a result that cannot be sent
//! is sent again for ever. So every layer bounds it the same way: the worker SDK while the run
//! logs ([`ReportLimits`] in its `BizLogger`), the sidecar while it reads a program's output or
//! answer, and the tracker again on arrival (a client need not be ours). What is cut is cut
//! visibly: a truncated text ends with [`TRUNCATED_MARKER`] and the number of bytes cut, and
//! dropped lines leave a WARN line saying how many.

use crate::model::{BizLine, LogLevel};
use crate::validate::FieldViolation;

/// The largest gRPC message (encoded) trackers, workers and clients send and accept unless
/// configured otherwise: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The least a message limit may be set to: a result cut to its bare outcome always fits.
pub const MIN_MAX_MESSAGE_BYTES: usize = 64 << 10;

/// What ends a text that was cut short, followed by how many bytes were cut.
pub const TRUNCATED_MARKER: &str = "…[truncated ";

/// Bounds on one run's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    /// Longest result message, in bytes (default 16 KiB).
    pub message_bytes: usize,
    /// Most business-log lines per run (default 1,000): the first half and the last half are
    /// kept, with a line in between saying how many were dropped.
    pub log_lines: usize,
    /// Longest business-log line, in bytes (default 4 KiB).
    pub log_line_bytes: usize,
}

impl Default for ReportLimits {
    fn default() -> Self {
        ReportLimits {
            message_bytes: 16 << 10,
            log_lines: 1_000,
            log_line_bytes: 4 << 10,
        }
    }
}

impl ReportLimits {
    /// The most a report within these limits takes, roughly, in bytes.
    pub fn max_report_bytes(&self) -> usize {
        self.message_bytes.saturating_add(
            self.log_lines
                .saturating_mul(self.log_line_bytes.saturating_add(32)),
        )
    }

    /// Cuts `message` and `lines` to these limits (see [`truncate`] and [`LineBudget`]).
    pub fn bound(&self, message: &mut String, lines: &mut Vec<BizLine>) {
        truncate(message, self.message_bytes);
        if lines.len() <= self.log_lines
            && lines.iter().all(|l| l.message.len() <= self.log_line_bytes)
        {
            return;
        }
        let mut budget = LineBudget::new(*self);
        for line in lines.drain(..) {
            budget.push(line);
        }
        *lines = budget.into_lines();
    }
}

/// Checks a message-size setting `field`: at least [`MIN_MAX_MESSAGE_BYTES`], at most 2 GiB.
pub fn check_message_limit(field: &str, bytes: usize, v: &mut Vec<FieldViolation>) {
    // gRPC frames a message with a 32-bit length.
    let max = i32::MAX as usize;
    if !(MIN_MAX_MESSAGE_BYTES..=max).contains(&bytes) {
        v.push(FieldViolation::new(
            field,
            format!("must be between {MIN_MAX_MESSAGE_BYTES} and {max} bytes (got {bytes})"),
        ));
    }
}

/// Checks report limits: a message and a line of at least 256 bytes (room for the marker of a
/// cut), at least one line, and at most 1,000,000 lines.
pub fn check_report_limits(limits: &ReportLimits, v: &mut Vec<FieldViolation>) {
    for (field, bytes) in [
        ("max_result_message_bytes", limits.message_bytes),
        ("max_log_line_bytes", limits.log_line_bytes),
    ] {
        if !(256..=MIN_MAX_MESSAGE_BYTES * 256).contains(&bytes) {
            v.push(FieldViolation::new(
                field,
                format!(
                    "must be between 256 and {} bytes (got {bytes})",
                    MIN_MAX_MESSAGE_BYTES * 256
                ),
            ));
        }
    }
    if !(1..=1_000_000).contains(&limits.log_lines) {
        v.push(FieldViolation::new(
            "max_log_lines",
            format!("must be between 1 and 1000000 (got {})", limits.log_lines),
        ));
    }
}

/// Cuts `text` to at most `max_bytes` bytes (on a character boundary), ending it with
/// [`TRUNCATED_MARKER`] and the number of bytes cut, marker included in the bound (a bound
/// too small for the marker cuts without one). Returns whether it cut.
pub fn truncate(text: &mut String, max_bytes: usize) -> bool {
    truncate_after(text, max_bytes, 0)
}

/// [`truncate`] of a text of which `already_cut` more bytes were dropped before it got here
/// (a reader that stopped keeping a long line): the marker counts them too, and is there
/// whenever `already_cut` is not 0.
pub fn truncate_after(text: &mut String, max_bytes: usize, already_cut: usize) -> bool {
    if text.len() <= max_bytes && already_cut == 0 {
        return false;
    }
    let total = text.len();
    // The marker's own length depends on the count; 20 digits is the most a usize takes.
    let marker_room = TRUNCATED_MARKER.len() + 20 + " bytes]".len();
    let marked = max_bytes >= marker_room;
    let mut keep = if marked {
        max_bytes - marker_room
    } else {
        max_bytes
    };
    while keep > 0 && !text.is_char_boundary(keep) {
        keep -= 1;
    }
    text.truncate(keep);
    if marked {
        let cut = (total - keep).saturating_add(already_cut);
        text.push_str(&format!("{TRUNCATED_MARKER}{cut} bytes]"));
    }
    true
}

/// Business-log lines of one run, bounded as they come: the first half of
/// [`ReportLimits::log_lines`] is kept, then the latest lines in a ring, so memory stays
/// bounded however much a run logs, and what it logged last (often the error) survives.
#[derive(Debug, Clone)]
pub struct LineBudget {
    limits: ReportLimits,
    head: Vec<BizLine>,
    tail: std::collections::VecDeque<BizLine>,
    dropped: u64,
}

impl LineBudget {
    /// An empty budget.
    pub fn new(limits: ReportLimits) -> LineBudget {
        LineBudget {
            limits,
            head: Vec::new(),
            tail: std::collections::VecDeque::new(),
            dropped: 0,
        }
    }

    /// Adds a line, cut to the longest a line may be.
    pub fn push(&mut self, mut line: BizLine) {
        truncate(&mut line.message, self.limits.log_line_bytes);
        // One line of the budget is kept for the "dropped" note.
        let room = self.limits.log_lines.saturating_sub(1);
        let head_room = room.div_ceil(2);
        if self.head.len() < head_room {
            self.head.push(line);
            return;
        }
        let tail_room = room - head_room;
        if tail_room == 0 {
            self.dropped += 1;
            return;
        }
        if self.tail.len() == tail_room {
            self.tail.pop_front();
            self.dropped += 1;
        }
        self.tail.push_back(line);
    }

    /// How many lines were dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The kept lines in order, with a WARN line where lines were dropped.
    pub fn into_lines(self) -> Vec<BizLine> {
        let mut lines = self.head;
        if self.dropped > 0 {
            let time_ms = self
                .tail
                .front()
                .map(|l| l.time_ms)
                .or_else(|| lines.last().map(|l| l.time_ms))
                .unwrap_or_default();
            lines.push(BizLine {
                time_ms,
                level: LogLevel::Warn,
                message: format!(
                    "{} log lines dropped here (at most {} lines a run)",
                    self.dropped, self.limits.log_lines
                ),
            });
        }
        lines.extend(self.tail);
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(i: usize) -> BizLine {
        BizLine {
            time_ms: i as i64,
            level: LogLevel::Info,
            message: format!("line {i}"),
        }
    }

    #[test]
    fn a_long_text_is_cut_on_a_character_boundary_with_a_marker() {
        let mut s = "é".repeat(100);
        assert!(truncate(&mut s, 60));
        assert!(s.len() <= 60, "{} bytes", s.len());
        assert!(
            s.contains(TRUNCATED_MARKER) && s.ends_with(" bytes]"),
            "{s}"
        );
        let mut short = String::from("fits");
        assert!(!truncate(&mut short, 4));
        assert_eq!(short, "fits");
    }

    #[test]
    fn too_many_lines_keep_the_first_and_the_last_with_a_note_between() {
        let limits = ReportLimits {
            log_lines: 5,
            ..ReportLimits::default()
        };
        let mut lines: Vec<BizLine> = (0..100).map(line).collect();
        let mut message = String::new();
        limits.bound(&mut message, &mut lines);
        let texts: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            texts,
            [
                "line 0",
                "line 1",
                "96 log lines dropped here (at most 5 lines a run)",
                "line 98",
                "line 99"
            ]
        );
        assert_eq!(lines[2].level, LogLevel::Warn);
    }

    proptest! {
        #[test]
        fn a_bounded_report_stays_within_its_limits(
            n in 0usize..300,
            len in 0usize..3000,
            message_bytes in 0usize..5000,
            log_lines in 1usize..50,
            log_line_bytes in 0usize..2000,
        ) {
            let limits = ReportLimits { message_bytes, log_lines, log_line_bytes };
            let mut message = "ü".repeat(len);
            let mut lines: Vec<BizLine> = (0..n)
                .map(|i| BizLine { time_ms: i as i64, level: LogLevel::Info, message: "x".repeat(len) })
                .collect();
            limits.bound(&mut message, &mut lines);
            prop_assert!(message.len() <= message_bytes);
            prop_assert!(lines.len() <= log_lines.max(1));
            for l in &lines {
                // The note of dropped lines is the one line not cut to the line limit.
                prop_assert!(l.message.len() <= log_line_bytes || l.message.contains("dropped here"));
            }
        }
    }
}
