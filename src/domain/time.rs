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

    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }
}

impl fmt::Display for Span {
    /// Human form in the same notation the grammar accepts: `2h`, `1h30m`, `45m`,
    /// or seconds for spans under a minute.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_secs = self.0 / 1000;
        if total_secs < 60 {
            return write!(f, "{total_secs}s");
        }
        let minutes = total_secs / 60;
        let (h, m) = (minutes / 60, minutes % 60);
        match (h, m) {
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
