//! Durations as people write them on the command line and in resources: `250ms`, `30s`, `5m`,
//! `2h`, `1d`, spans added up (`1h30m`), decimals (`1.5h`, `.5h`), or a bare number of
//! milliseconds (`250`). Parsed with `humantime`, restricted to the units above and to no
//! space inside.

use std::borrow::Cow;
use std::time::Duration;

/// The units a duration may be written in: milliseconds, seconds, minutes, hours, days.
pub const UNITS: [&str; 5] = ["ms", "s", "m", "h", "d"];

/// Parses a duration (see the module docs); zero is accepted, negative numbers are not. The
/// error names the value: `"5 weeks" is not a duration: unknown unit "weeks" (e.g. 500ms, 30s,
/// 5m, 1h30m, 1.5h, 1d, or a number of milliseconds)`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err(invalid(s, "it is empty"));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| invalid(s, "the number is too large"));
    }
    if text.contains(char::is_whitespace) {
        return Err(invalid(s, "it has a space inside"));
    }
    if let Some(unit) = text
        .split(|c: char| !c.is_alphabetic())
        .find(|u| !u.is_empty() && !UNITS.contains(u))
    {
        return Err(invalid(s, &format!("unknown unit {unit:?}")));
    }
    humantime::parse_duration(&whole_decimals(text)).map_err(|e| invalid(s, &e.to_string()))
}

/// `text` with a 0 on each side of a decimal point that has no digit there (`.5h` → `0.5h`,
/// `5.h` → `5.0h`), as Go and Kubernetes write decimals and `humantime` does not read them.
fn whole_decimals(text: &str) -> Cow<'_, str> {
    if !text.contains('.') {
        return Cow::Borrowed(text);
    }
    let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
    let mut out = String::with_capacity(text.len() + 2);
    let mut chars = text.chars().peekable();
    let mut prev = None;
    while let Some(c) = chars.next() {
        if c == '.' && !digit(prev) {
            out.push('0');
        }
        out.push(c);
        if c == '.' && !digit(chars.peek().copied()) {
            out.push('0');
        }
        prev = Some(c);
    }
    Cow::Owned(out)
}

/// [`parse_duration`] in whole milliseconds (rounded to the nearest), failing for durations
/// beyond `i64::MAX` milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let ms = (parse_duration(s)?.as_nanos() + 500_000) / 1_000_000;
    i64::try_from(ms).map_err(|_| invalid(s, "it is too long"))
}

/// A number of milliseconds as people read it: `1s`, `10m`, `1h 30m`, `30days`.
pub fn format_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// The one error message: the value, why, and what would do.
fn invalid(s: &str, why: &str) -> String {
    format!(
        "{s:?} is not a duration: {why} (e.g. 500ms, 30s, 5m, 1h30m, 1.5h, 1d, or a number of milliseconds)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_form_either_caller_took() {
        let ok: &[(&str, i64)] = &[
            // Bare numbers are milliseconds (the CLI's `--every 250`).
            ("250", 250),
            ("0", 0),
            (" 42 ", 42),
            // One unit.
            ("500ms", 500),
            ("10s", 10_000),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("0s", 0),
            // Spans added up (the operator's `1h30m`).
            ("1h30m", 5_400_000),
            ("1m30s250ms", 90_250),
            ("2d1h", 176_400_000),
            // Decimals (the operator's `1.5h`), rounded to the millisecond.
            ("1.5h", 5_400_000),
            ("0.5s", 500),
            ("1.4ms", 1),
            ("1.5ms", 2),
            (".5h", 1_800_000),
            ("5.h", 18_000_000),
            ("1h.5m", 3_630_000),
        ];
        for (text, ms) in ok {
            assert_eq!(parse_duration_ms(text), Ok(*ms), "{text:?}");
        }

        let bad: &[(&str, &str)] = &[
            ("", "it is empty"),
            ("  ", "it is empty"),
            ("x", "unknown unit \"x\""),
            ("5 weeks", "a space inside"),
            ("5weeks", "unknown unit \"weeks\""),
            ("1h 30m", "a space inside"),
            ("1 0s", "a space inside"),
            ("5w", "unknown unit \"w\""),
            ("3M", "unknown unit \"M\""),
            ("10sec", "unknown unit \"sec\""),
            ("µs", "unknown unit \"µs\""),
            ("-5s", "expected number"),
            ("+5s", "expected number"),
            ("1,5h", "invalid character"),
            ("1..5h", "invalid character"),
            ("1.5.5h", "invalid character"),
            (".", "time unit needed"),
            ("s", "expected number"),
            ("5s5", "time unit needed"),
            ("99999999999999999999", "too large"),
        ];
        for (text, why) in bad {
            let err = parse_duration_ms(text).unwrap_err();
            assert!(
                err.starts_with(&format!("{text:?} is not a duration: ")) && err.contains(why),
                "{text:?}: {err}"
            );
        }
        let err = parse_duration_ms("200000000000d").unwrap_err();
        assert!(
            err.starts_with("\"200000000000d\" is not a duration: it is too long"),
            "{err}"
        );
    }

    #[test]
    fn a_duration_keeps_its_sub_millisecond_part() {
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1_500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
    }
}
