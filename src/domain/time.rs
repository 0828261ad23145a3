//! Points in time and spans of time, as plain values.
//!
//! Time never comes from the system here: use cases get `now` from the clock
//! port, so everything in the domain is deterministic and testable.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    #[must_use]
    pub fn plus(self, span: Span) -> Self {
        Self(self.0.saturating_add(span.as_millis()))
    }

    #[must_use]
    pub fn minus(self, span: Span) -> Self {
        Self(self.0.saturating_sub(span.as_millis()))
    }

    /// The span from `earlier` to `self`, zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Span {
        Span::from_millis(self.0.saturating_sub(earlier.0).max(0))
    }

    /// RFC 3339 in UTC with second precision, e.g. `2026-11-25T19:30:00Z`.
    pub fn rfc3339(self) -> String {
        let secs = self.0.div_euclid(1000);
        match time::OffsetDateTime::from_unix_timestamp(secs) {
            Ok(t) => {
                let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
                format!(
                    "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
                    t.hour(),
                    t.minute(),
                    t.second()
                )
            }
            Err(_) => format!("@{}ms", self.0),
        }
    }

    /// Parses RFC 3339 (`2026-11-25T19:30:00Z`) or a plain date (`2026-11-25`, midnight UTC).
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(t) =
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        {
            return Some(Self((t.unix_timestamp_nanos() / 1_000_000) as i64));
        }
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(text, fmt)
            .ok()
            .map(|d| Self(d.midnight().assume_utc().unix_timestamp() * 1000))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

/// A non-negative span of time with millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Span(i64);

impl Span {
    pub const ZERO: Span = Span(0);

    pub const fn from_millis(ms: i64) -> Self {
        Self(if ms < 0 { 0 } else { ms })
    }

    pub const fn from_secs(s: i64) -> Self {
        Self::from_millis(s * 1000)
    }

    pub const fn from_minutes(m: i64) -> Self {
        Self::from_millis(m * 60_000)
    }

    pub const fn from_hours(h: i64) -> Self {
        Self::from_minutes(h * 60)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    pub const fn whole_minutes(self) -> i64 {
        self.0 / 60_000
    }

    #[must_use]
    pub fn saturating_sub(self, other: Span) -> Span {
        Span::from_millis(self.0 - other.0)
    }

    /// Rounded to the nearest whole minute (at least one minute when positive),
    /// for telling people how long is left.
    #[must_use]
    pub fn to_nearest_minute(self) -> Span {
        if self.0 <= 0 {
            return Span::ZERO;
        }
        Span::from_minutes(((self.0 + 30_000) / 60_000).max(1))
    }

    /// A `std` duration, to the millisecond (saturating).
    pub fn from_std(d: std::time::Duration) -> Span {
        Span::from_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }
}

/// How durations are written, for messages that ask for one.
pub const SPAN_FORMS: &str =
    "forms like 90s, 15m, 2h, 1h30m or 7d (units d, h, m, s and ms, largest first), or 0";

/// The units of the duration grammar, largest first, in milliseconds.
const UNITS: [(&str, i64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Digits per number: enough for any sensible duration, few enough that no
/// sum overflows.
const MAX_DIGITS: usize = 9;

impl Span {
    /// Parses the one duration grammar of Passport, used by commands and every
    /// setting alike: `0`, or one or more `<number><unit>` with the units `d`,
    /// `h`, `m`, `s` and `ms`, each at most once and largest first (`500ms`,
    /// `90s`, `15m`, `2h`, `1h30m`, `2m30s`, `7d`), in either case, with an
    /// optional leading `+` (`extend AR-1 +1h`). Anything else is `None`,
    /// including numbers of more than nine digits.
    pub fn parse(text: &str) -> Option<Span> {
        let text = text.trim();
        let text = text.strip_prefix('+').unwrap_or(text).to_ascii_lowercase();
        if text == "0" {
            return Some(Span::ZERO);
        }
        let mut rest = text.as_str();
        let mut total: i64 = 0;
        // Index into UNITS of the next unit allowed: each unit once, largest first.
        let mut next_unit = 0;
        if rest.is_empty() {
            return None;
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > MAX_DIGITS {
                return None;
            }
            let (number, after) = rest.split_at(digits);
            let letters = after.bytes().take_while(u8::is_ascii_alphabetic).count();
            let (unit, after) = after.split_at(letters);
            let at = UNITS[next_unit..].iter().position(|(u, _)| *u == unit)? + next_unit;
            let n: i64 = number.parse().ok()?;
            total = total.checked_add(n.checked_mul(UNITS[at].1)?)?;
            next_unit = at + 1;
            rest = after;
        }
        Some(Span(total))
    }
}

/// A setting's duration ([`Span::parse`]); the error names the field, what
/// was written and the forms to use.
pub fn parse_setting(field: &str, text: &str) -> Result<Span, String> {
    Span::parse(text)
        .ok_or_else(|| format!("{field}: {text:?} is not a duration: use {SPAN_FORMS}"))
}

/// [`parse_setting`] within `min..=max`; the error also names the bounds.
pub fn parse_setting_within(field: &str, text: &str, min: Span, max: Span) -> Result<Span, String> {
    let span = parse_setting(field, text)?;
    if span < min || span > max {
        return Err(format!(
            "{field}: {text:?} must be from {min} to {max}: use {SPAN_FORMS}"
        ));
    }
    Ok(span)
}

impl fmt::Display for Span {
    /// Human form in the same notation the grammar accepts: `2h`, `1h30m`, `45m`,
    /// `1m30s` and `45s` under an hour, milliseconds under a second. The one
    /// way Passport writes a duration, in messages and logs alike.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if (1..1000).contains(&self.0) {
            return write!(f, "{}ms", self.0);
        }
        let total_secs = self.0 / 1000;
        if total_secs < 60 {
            return write!(f, "{total_secs}s");
        }
        let minutes = total_secs / 60;
        let (h, m) = (minutes / 60, minutes % 60);
        let s = total_secs % 60;
        match (h, m) {
            (0, m) if s > 0 => write!(f, "{m}m{s}s"),
            (0, m) => write!(f, "{m}m"),
            (h, 0) => write!(f, "{h}h"),
            (h, m) => write!(f, "{h}h{m}m"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_displays_in_grammar_notation() {
        assert_eq!(Span::from_minutes(90).to_string(), "1h30m");
        assert_eq!(Span::from_hours(2).to_string(), "2h");
        assert_eq!(Span::from_minutes(45).to_string(), "45m");
        assert_eq!(Span::from_secs(12).to_string(), "12s");
        assert_eq!(Span::from_secs(90).to_string(), "1m30s");
        assert_eq!(Span::from_secs(5430).to_string(), "1h30m");
        assert_eq!(Span::from_millis(20).to_string(), "20ms");
        assert_eq!(
            Span::from_std(std::time::Duration::from_secs(300)).to_string(),
            "5m"
        );
    }

    #[test]
    fn durations_parse_in_the_one_grammar() {
        let p = |s: &str| Span::parse(s).map(Span::as_millis);
        assert_eq!(p("0"), Some(0));
        assert_eq!(p("500ms"), Some(500));
        assert_eq!(p("90s"), Some(90_000));
        assert_eq!(p("15m"), Some(900_000));
        assert_eq!(p("2h"), Some(7_200_000));
        assert_eq!(p("1h30m"), Some(5_400_000));
        assert_eq!(p("2m30s"), Some(150_000));
        assert_eq!(p("7d"), Some(604_800_000));
        assert_eq!(p("1d12h"), Some(129_600_000));
        assert_eq!(p("1s500ms"), Some(1_500));
        assert_eq!(p("90m"), Some(5_400_000));
        assert_eq!(p("0s"), Some(0));
        // Spellings accepted before there was one grammar stay valid.
        assert_eq!(p("+45m"), Some(2_700_000));
        assert_eq!(p("2H"), Some(7_200_000));
        assert_eq!(p(" 30m "), Some(1_800_000));
        assert_eq!(p("720h"), Some(2_592_000_000));
        for bad in [
            "",
            "+",
            "h",
            "m",
            "5",
            "00",
            "1m30h",
            "30s1m",
            "1h1h",
            "1.5h",
            "-1h",
            "2hrs",
            "1 h",
            "1h 30m",
            "5w",
            "1y",
            "ms",
            "1hm",
            "1234567890s",
        ] {
            assert_eq!(Span::parse(bad), None, "{bad:?}");
        }
        // The largest numbers cannot overflow.
        assert_eq!(p("999999999d"), Some(999_999_999 * 86_400_000));
        assert!(p("999999999d999999999h999999999m999999999s999999999ms").is_some());
    }

    #[test]
    fn setting_errors_name_the_field_the_bounds_and_the_forms() {
        assert_eq!(
            parse_setting("aws.poll_max", "15 s"),
            Err(format!(
                "aws.poll_max: \"15 s\" is not a duration: use {SPAN_FORMS}"
            ))
        );
        assert_eq!(
            parse_setting_within("slack.cache_ttl", "2h", Span::ZERO, Span::from_hours(1)),
            Err(format!(
                "slack.cache_ttl: \"2h\" must be from 0s to 1h: use {SPAN_FORMS}"
            ))
        );
        assert_eq!(
            parse_setting_within(
                "slack.channel_pace",
                "500ms",
                Span::ZERO,
                Span::from_secs(10)
            ),
            Ok(Span::from_millis(500))
        );
    }

    #[test]
    fn what_is_displayed_parses_back() {
        for ms in [
            1, 500, 1_000, 45_000, 60_000, 5_400_000, 7_200_000, 86_400_000,
        ] {
            let span = Span::from_millis(ms);
            assert_eq!(Span::parse(&span.to_string()), Some(span), "{span}");
        }
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        let t = Timestamp::from_millis(1_795_000_000_000);
        let text = t.rfc3339();
        assert_eq!(Timestamp::parse_rfc3339(&text), Some(t));
        assert_eq!(
            Timestamp::parse_rfc3339("1970-01-02"),
            Some(Timestamp::from_millis(86_400_000))
        );
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }
}
