//! Five-field cron expressions matched on a wall clock (civil date and time).
//!
//! Mapping wall-clock matches to instants, with the DST rules of the contract, is
//! the job of `timetable.rs`; this module knows nothing about time zones.

use std::fmt;

use jiff::civil::{Date, DateTime, Time};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("expected 5 fields (minute hour day-of-month month day-of-week), found {0}")]
    FieldCount(usize),
    #[error("{field} `{item}` is not a number, range, list or step")]
    Syntax { field: &'static str, item: String },
    #[error("{field} `{value}` is out of range {min}-{max}")]
    OutOfRange { field: &'static str, value: String, min: u32, max: u32 },
    #[error("{field} range `{item}` runs backwards")]
    Backwards { field: &'static str, item: String },
    #[error("{field} step in `{item}` must be at least 1")]
    ZeroStep { field: &'static str, item: String },
    #[error("day-of-month and month never meet (e.g. 30 February), so it never fires")]
    Never,
}

#[derive(Clone, Copy)]
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: FieldSpec = FieldSpec { name: "hour", min: 0, max: 23, names: &[] };
const DAY_OF_MONTH: FieldSpec = FieldSpec { name: "day-of-month", min: 1, max: 31, names: &[] };
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
};
// 7 is Sunday too, as in Vixie cron; it is folded into 0 after parsing.
const DAY_OF_WEEK: FieldSpec =
    FieldSpec { name: "day-of-week", min: 0, max: 7, names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"] };

/// A parsed cron expression: one bit set per field.
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    /// Vixie cron's rule: a field written starting with `*` does not restrict the day,
    /// so the other day field alone decides; when both are restricted, either matches.
    dom_star: bool,
    dow_star: bool,
    text: String,
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError::FieldCount(fields.len()));
        }
        let minutes = parse_field(fields[0], MINUTE)?;
        let hours = parse_field(fields[1], HOUR)?;
        let days_of_month = parse_field(fields[2], DAY_OF_MONTH)?;
        let months = parse_field(fields[3], MONTH)?;
        let mut days_of_week = parse_field(fields[4], DAY_OF_WEEK)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week | 1) & !(1 << 7);
        }
        let cron = Cron {
            minutes,
            hours: hours as u32,
            days_of_month: days_of_month as u32,
            months: months as u16,
            days_of_week: days_of_week as u8,
            dom_star: fields[2].starts_with('*'),
            dow_star: fields[4].starts_with('*'),
            text: fields.join(" "),
        };
        if !cron.can_fire() {
            return Err(CronError::Never);
        }
        Ok(cron)
    }

    /// The expression as written, with whitespace normalised.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether some day of some year matches. Only a day-of-month restriction that no
    /// chosen month reaches (with day-of-week not widening it) can make this false.
    fn can_fire(&self) -> bool {
        if !self.dom_star && !self.dow_star {
            return true; // either day field may match: any weekday matches somewhere
        }
        if self.dom_star {
            return true;
        }
        (1..=12u8).filter(|month| self.months & (1 << month) != 0).any(|month| {
            let longest = days_in_month_max(month);
            (1..=longest).any(|day| self.days_of_month & (1 << day) != 0)
        })
    }

    pub fn matches_day(&self, date: Date) -> bool {
        let month = date.month() as u32;
        if self.months & (1 << month) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day() as u32) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset() as u32) != 0;
        if self.dom_star || self.dow_star { dom && dow } else { dom || dow }
    }

    /// The first matching wall-clock minute at or after `from` (seconds are ignored:
    /// a `from` with seconds counts from its next whole minute). `None` if nothing
    /// matches before year 9999.
    pub fn next_at_or_after(&self, from: DateTime) -> Option<DateTime> {
        let mut date = from.date();
        let (hour, minute) = (from.hour() as u32, from.minute() as u32);
        let mut start = if from.second() == 0 && from.subsec_nanosecond() == 0 {
            Some((hour, minute))
        } else if minute < 59 {
            Some((hour, minute + 1))
        } else if hour < 23 {
            Some((hour + 1, 0))
        } else {
            None
        };
        // Every field combination repeats within 28 years; Feb 29 on a given weekday
        // is the longest wait, so this bound only stops impossible searches.
        for _ in 0..(366 * 29) {
            if let Some((hour, minute)) = start
                && self.matches_day(date)
                && let Some(time) = self.next_time_at_or_after(hour, minute)
            {
                return Some(date.to_datetime(time));
            }
            date = date.tomorrow().ok()?;
            start = Some((0, 0));
        }
        None
    }

    /// The last matching wall-clock minute at or before `from` (seconds ignored).
    pub fn prev_at_or_before(&self, from: DateTime) -> Option<DateTime> {
        let mut date = from.date();
        let mut limit = (from.hour() as u32, from.minute() as u32);
        for _ in 0..(366 * 29) {
            if self.matches_day(date)
                && let Some(time) = self.prev_time_at_or_before(limit.0, limit.1)
            {
                return Some(date.to_datetime(time));
            }
            date = date.yesterday().ok()?;
            limit = (23, 59);
        }
        None
    }

    fn prev_time_at_or_before(&self, hour: u32, minute: u32) -> Option<Time> {
        let mut hour = hour as i32;
        let mut minute = minute;
        while hour >= 0 {
            if self.hours & (1 << hour) != 0 {
                let earlier = self.minutes & ((1u64 << (minute + 1)) - 1);
                if earlier != 0 {
                    let found = 63 - earlier.leading_zeros();
                    return Time::new(hour as i8, found as i8, 0, 0).ok();
                }
            }
            hour -= 1;
            minute = 59;
        }
        None
    }

    fn next_time_at_or_after(&self, hour: u32, minute: u32) -> Option<Time> {
        let mut hour = hour;
        let mut minute = minute;
        while hour < 24 {
            if self.hours & (1 << hour) != 0 {
                let later = self.minutes >> minute;
                if later != 0 {
                    let found = minute + later.trailing_zeros();
                    return Time::new(hour as i8, found as i8, 0, 0).ok();
                }
            }
            hour += 1;
            minute = 0;
        }
        None
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.text)
    }
}

fn days_in_month_max(month: u8) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn parse_field(text: &str, spec: FieldSpec) -> Result<u64, CronError> {
    let mut bits = 0u64;
    for item in text.split(',') {
        bits |= parse_item(item, spec)?;
    }
    Ok(bits)
}

fn parse_item(item: &str, spec: FieldSpec) -> Result<u64, CronError> {
    let syntax = || CronError::Syntax { field: spec.name, item: item.to_string() };
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => {
            let step: u32 = step.parse().map_err(|_| syntax())?;
            if step == 0 {
                return Err(CronError::ZeroStep { field: spec.name, item: item.to_string() });
            }
            (range, Some(step))
        }
        None => (item, None),
    };
    let (low, high) = if range == "*" {
        (spec.min, spec.max)
    } else if let Some((low, high)) = range.split_once('-') {
        let low = parse_value(low, spec, item)?;
        let high = parse_value(high, spec, item)?;
        if low > high {
            return Err(CronError::Backwards { field: spec.name, item: item.to_string() });
        }
        (low, high)
    } else {
        let value = parse_value(range, spec, item)?;
        // `5/15` means from 5 to the end, every 15, as most crons read it.
        (value, if step.is_some() { spec.max } else { value })
    };
    let step = step.unwrap_or(1);
    let mut bits = 0u64;
    let mut value = low;
    while value <= high {
        bits |= 1 << value;
        value += step;
    }
    Ok(bits)
}

fn parse_value(text: &str, spec: FieldSpec, item: &str) -> Result<u32, CronError> {
    if text.is_empty() {
        return Err(CronError::Syntax { field: spec.name, item: item.to_string() });
    }
    if let Some(index) = spec.names.iter().position(|name| name.eq_ignore_ascii_case(text)) {
        let base = if spec.name == "month" { 1 } else { 0 };
        return Ok(index as u32 + base);
    }
    let value: u32 = text.parse().map_err(|_| CronError::Syntax { field: spec.name, item: item.to_string() })?;
    if value < spec.min || value > spec.max {
        return Err(CronError::OutOfRange { field: spec.name, value: text.to_string(), min: spec.min, max: spec.max });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn check_parse(text: &str, expect: &str) {
        let actual = match Cron::parse(text) {
            Ok(cron) => format!("ok {cron}"),
            Err(error) => format!("error: {error}"),
        };
        assert_eq!(actual, expect, "input {text:?}");
    }

    #[test]
    fn parse() {
        check_parse("0 6 * * *", "ok 0 6 * * *");
        check_parse("  */15   *  * * MON-FRI ", "ok */15 * * * MON-FRI");
        check_parse("0 0 1,15 jan,Jul sun", "ok 0 0 1,15 jan,Jul sun");
        check_parse("0 6 * *", "error: expected 5 fields (minute hour day-of-month month day-of-week), found 4");
        check_parse("0 25 * * *", "error: hour `25` is out of range 0-23");
        check_parse("60 * * * *", "error: minute `60` is out of range 0-59");
        check_parse("0 0 0 * *", "error: day-of-month `0` is out of range 1-31");
        check_parse("0 0 * 13 *", "error: month `13` is out of range 1-12");
        check_parse("0 0 * * 8", "error: day-of-week `8` is out of range 0-7");
        check_parse("0 0 * FOO *", "error: month `FOO` is not a number, range, list or step");
        check_parse("0 0 L * *", "error: day-of-month `L` is not a number, range, list or step");
        check_parse("5-1 * * * *", "error: minute range `5-1` runs backwards");
        check_parse("*/0 * * * *", "error: minute step in `*/0` must be at least 1");
        check_parse("1,,2 * * * *", "error: minute `` is not a number, range, list or step");
        check_parse("0 0 30 2 *", "error: day-of-month and month never meet (e.g. 30 February), so it never fires");
        check_parse("0 0 30 2 MON", "ok 0 0 30 2 MON");
        check_parse("0 0 29 2 *", "ok 0 0 29 2 *");
    }

    fn check_next(text: &str, from: DateTime, expect: &[&str]) {
        let cron = Cron::parse(text).unwrap();
        let mut actual = Vec::new();
        let mut at = from;
        for _ in 0..expect.len() {
            let next = cron.next_at_or_after(at).unwrap();
            actual.push(next.to_string());
            at = next + jiff::Span::new().minutes(1);
        }
        assert_eq!(actual, expect, "cron {text:?} from {from}");
    }

    #[test]
    fn next() {
        let jan1 = date(2024, 1, 1).at(0, 0, 0, 0);
        check_next("0 6 * * *", jan1, &["2024-01-01T06:00:00", "2024-01-02T06:00:00"]);
        check_next("*/20 * * * *", jan1, &["2024-01-01T00:00:00", "2024-01-01T00:20:00", "2024-01-01T00:40:00"]);
        // From mid-minute, the current minute has passed.
        check_next("* * * * *", date(2024, 1, 1).at(0, 0, 30, 0), &["2024-01-01T00:01:00"]);
        check_next("59 23 * * *", date(2024, 1, 1).at(23, 59, 1, 0), &["2024-01-02T23:59:00"]);
        // 2024-01-01 is a Monday. Both day fields restricted: either matches.
        check_next("0 0 13 * FRI", jan1, &["2024-01-05T00:00:00", "2024-01-12T00:00:00", "2024-01-13T00:00:00"]);
        // A day field written with `*` does not widen: both must match (Vixie).
        check_next("0 0 */2 * FRI", jan1, &["2024-01-05T00:00:00", "2024-01-19T00:00:00"]);
        // 0 and 7 are both Sunday.
        check_next("0 0 * * 7", jan1, &["2024-01-07T00:00:00"]);
        check_next("0 0 * * 5-7", jan1, &["2024-01-05T00:00:00", "2024-01-06T00:00:00", "2024-01-07T00:00:00"]);
        check_next("0 0 29 2 *", jan1, &["2024-02-29T00:00:00", "2028-02-29T00:00:00"]);
        check_next("30 4 1 JAN,jul *", jan1, &["2024-01-01T04:30:00", "2024-07-01T04:30:00"]);
        check_next(
            "0 12 5/10 * *",
            jan1,
            &["2024-01-05T12:00:00", "2024-01-15T12:00:00", "2024-01-25T12:00:00", "2024-02-05T12:00:00"],
        );
    }
}
