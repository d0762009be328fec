//! Durations as the DAG format writes them: `30s`, `5m`, `1h30m`, `2d`, or whole seconds.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A whole number of seconds. DAG files never need less than a second, and keeping
/// it whole makes `Display` round-trip through [`Duration::parse`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("expected a duration like `30s`, `5m`, `1h30m`, `2d` or whole seconds")]
    Syntax,
    #[error("unit `{0}` appears twice or out of order (write the largest unit first, e.g. `1h30m`)")]
    UnitOrder(char),
    #[error("is too large")]
    Overflow,
}

const UNITS: [(char, u64); 5] = [('w', 604_800), ('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

impl Duration {
    pub const ZERO: Duration = Duration(0);

    pub const fn from_secs(secs: u64) -> Duration {
        Duration(secs)
    }

    pub const fn as_secs(self) -> u64 {
        self.0
    }

    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }

    pub fn to_signed(self) -> jiff::SignedDuration {
        // Parsing caps durations far below i64::MAX seconds.
        jiff::SignedDuration::from_secs(i64::try_from(self.0).unwrap_or(i64::MAX))
    }

    /// Parses `1h30m`-style text. Units go from largest to smallest, each at most once.
    pub fn parse(text: &str) -> Result<Duration, DurationError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DurationError::Syntax);
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            let secs: u64 = text.parse().map_err(|_| DurationError::Overflow)?;
            return Duration::checked(secs);
        }
        let mut total: u64 = 0;
        let mut next_unit = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(DurationError::Syntax);
            }
            let number: u64 = rest[..digits].parse().map_err(|_| DurationError::Overflow)?;
            let unit = rest[digits..].chars().next().ok_or(DurationError::Syntax)?;
            let position = UNITS.iter().position(|(name, _)| *name == unit).ok_or(DurationError::Syntax)?;
            if position < next_unit {
                return Err(DurationError::UnitOrder(unit));
            }
            next_unit = position + 1;
            let secs = number.checked_mul(UNITS[position].1).ok_or(DurationError::Overflow)?;
            total = total.checked_add(secs).ok_or(DurationError::Overflow)?;
            rest = &rest[digits + unit.len_utf8()..];
        }
        Duration::checked(total)
    }

    /// Durations beyond a hundred years are surely typos, and staying far below
    /// `i64::MAX` keeps timestamp arithmetic from overflowing.
    fn checked(secs: u64) -> Result<Duration, DurationError> {
        const LIMIT: u64 = 100 * 366 * 86_400;
        if secs > LIMIT {
            return Err(DurationError::Overflow);
        }
        Ok(Duration(secs))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.0;
        // Weeks are left out on purpose: `14d` reads better than `2w`.
        for (unit, secs) in &UNITS[1..] {
            if rest >= *secs {
                write!(f, "{}{unit}", rest / secs)?;
                rest %= secs;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: &str) {
        let actual = match Duration::parse(text) {
            Ok(duration) => format!("{} = {duration}", duration.as_secs()),
            Err(error) => format!("error: {error}"),
        };
        assert_eq!(actual, expect, "input {text:?}");
    }

    #[test]
    fn parse() {
        check("30s", "30 = 30s");
        check("5m", "300 = 5m");
        check("1h", "3600 = 1h");
        check("1h30m", "5400 = 1h30m");
        check("2d", "172800 = 2d");
        check("1w", "604800 = 7d");
        check("90", "90 = 1m30s");
        check("0", "0 = 0s");
        check("1d2h3m4s", "93784 = 1d2h3m4s");
        check("", "error: expected a duration like `30s`, `5m`, `1h30m`, `2d` or whole seconds");
        check("1x", "error: expected a duration like `30s`, `5m`, `1h30m`, `2d` or whole seconds");
        check("h", "error: expected a duration like `30s`, `5m`, `1h30m`, `2d` or whole seconds");
        check("1h1", "error: expected a duration like `30s`, `5m`, `1h30m`, `2d` or whole seconds");
        check("-5m", "error: expected a duration like `30s`, `5m`, `1h30m`, `2d` or whole seconds");
        check("30m1h", "error: unit `h` appears twice or out of order (write the largest unit first, e.g. `1h30m`)");
        check("1m1m", "error: unit `m` appears twice or out of order (write the largest unit first, e.g. `1h30m`)");
        check("99999999999999999999", "error: is too large");
        check("36600d2s", "error: is too large");
    }
}
