//! Schedules in a time zone: which instants are ticks, and the data intervals
//! between them.
//!
//! The contract's DST rules live here. A cron expression matches wall-clock
//! minutes; each match becomes one instant: the only one if the local time is
//! unambiguous, the first occurrence if it is repeated (fall back), and the first
//! instant after the gap if it was skipped (spring forward). Several matches in one
//! gap become one tick.

use std::fmt;

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::cron::{Cron, CronError};

/// How a DAG's runs are created over time.
#[derive(Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Only manual or API triggers create runs.
    None,
    /// One run for the interval `[start_date, start_date]`.
    Once,
    /// Cron ticks; `text` keeps what the user wrote (`@daily` or the expression).
    Cron { text: String, cron: Cron },
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, CronError> {
        let expression = match text.trim() {
            "@once" => return Ok(Schedule::Once),
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let cron = Cron::parse(expression)?;
        Ok(Schedule::Cron { text: text.trim().to_string(), cron })
    }

    /// What the user wrote, `None` when unscheduled.
    pub fn text(&self) -> Option<&str> {
        match self {
            Schedule::None => None,
            Schedule::Once => Some("@once"),
            Schedule::Cron { text, .. } => Some(text),
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.text() {
            Some(text) => write!(f, "Schedule({text:?})"),
            None => f.write_str("Schedule(None)"),
        }
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.text().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(Schedule::None),
            Some(text) => Schedule::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// A data interval `[start, end)`. A run covers it and is created once `end` passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DataInterval {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// A schedule bound to its time zone and date range.
#[derive(Debug, Clone)]
pub struct Timetable<'a> {
    pub schedule: &'a Schedule,
    pub tz: &'a TimeZone,
    pub start_date: Option<Timestamp>,
    pub end_date: Option<Timestamp>,
}

/// The longest DST shift we account for when looking near a transition; real zones
/// shift by at most two hours.
const DST_WINDOW: SignedDuration = SignedDuration::from_hours(3);

impl Timetable<'_> {
    /// The first interval of the schedule, or the one after `last` (the latest interval
    /// a scheduled run was created for). `None` when the schedule has no more.
    pub fn next_interval(&self, last: Option<DataInterval>) -> Option<DataInterval> {
        let start_date = self.start_date?;
        match self.schedule {
            Schedule::None => None,
            Schedule::Once => match last {
                Some(_) => None,
                None => Some(DataInterval { start: start_date, end: start_date }),
            },
            Schedule::Cron { cron, .. } => {
                let from = match last {
                    Some(last) => last.end.max(start_date),
                    None => start_date,
                };
                let start = tick_at_or_after(cron, self.tz, from)?;
                self.interval_from(cron, start)
            }
        }
    }

    /// The interval to create next: with catch-up, simply the next one; without, the
    /// latest that has ended by `now` if that is later than the next one.
    pub fn next_interval_to_create(
        &self,
        last: Option<DataInterval>,
        catchup: bool,
        now: Timestamp,
    ) -> Option<DataInterval> {
        let next = self.next_interval(last)?;
        if catchup {
            return Some(next);
        }
        match self.latest_complete_interval(now) {
            Some(latest) if latest.start > next.start => Some(latest),
            _ => Some(next),
        }
    }

    /// The latest interval that ended at or before `now` and starts within the date range.
    pub fn latest_complete_interval(&self, now: Timestamp) -> Option<DataInterval> {
        let start_date = self.start_date?;
        let Schedule::Cron { cron, .. } = self.schedule else {
            return None;
        };
        let mut end = tick_at_or_before(cron, self.tz, now)?;
        loop {
            let start = tick_at_or_before(cron, self.tz, end.checked_sub(SignedDuration::from_nanos(1)).ok()?)?;
            if start < start_date {
                return None;
            }
            if self.end_date.is_none_or(|end_date| start <= end_date) {
                return Some(DataInterval { start, end });
            }
            end = start;
        }
    }

    /// Up to `count` intervals whose start is at or after `after` (never before
    /// `start_date`), for `dags next-runs`.
    pub fn intervals_from(&self, after: Timestamp, count: usize) -> Vec<DataInterval> {
        let mut intervals = Vec::with_capacity(count.min(1024));
        let Some(start_date) = self.start_date else {
            return intervals;
        };
        match self.schedule {
            Schedule::None => {}
            Schedule::Once => {
                if start_date >= after && count > 0 {
                    intervals.push(DataInterval { start: start_date, end: start_date });
                }
            }
            Schedule::Cron { cron, .. } => {
                let mut from = after.max(start_date);
                while intervals.len() < count {
                    let Some(start) = tick_at_or_after(cron, self.tz, from) else {
                        break;
                    };
                    let Some(interval) = self.interval_from(cron, start) else {
                        break;
                    };
                    intervals.push(interval);
                    from = interval.end;
                }
            }
        }
        intervals
    }

    /// The data interval of a manual run at `logical_date`: from it to the next tick
    /// (so a date on a tick gets exactly the scheduled run's interval), or empty for
    /// DAGs without a cron schedule.
    pub fn manual_interval(&self, logical_date: Timestamp) -> DataInterval {
        let end = match self.schedule {
            Schedule::Cron { cron, .. } => tick_after(cron, self.tz, logical_date).unwrap_or(logical_date),
            Schedule::None | Schedule::Once => logical_date,
        };
        DataInterval { start: logical_date, end }
    }

    fn interval_from(&self, cron: &Cron, start: Timestamp) -> Option<DataInterval> {
        if self.end_date.is_some_and(|end_date| start > end_date) {
            return None;
        }
        let end = tick_after(cron, self.tz, start)?;
        Some(DataInterval { start, end })
    }
}

/// The instant a wall-clock match fires at, per the contract's DST rules.
pub fn resolve_local(tz: &TimeZone, local: DateTime) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(local).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(local).ok(),
        AmbiguousOffset::Fold { before, after } => {
            let first = before.to_timestamp(local).ok()?;
            let second = after.to_timestamp(local).ok()?;
            Some(first.min(second))
        }
        AmbiguousOffset::Gap { before, after } => {
            // The transition lies after `local` read with the later offset.
            let earliest = after.to_timestamp(local).ok()?.min(before.to_timestamp(local).ok()?);
            tz.following(earliest).next().map(|transition| transition.timestamp())
        }
    }
}

fn near_transition(tz: &TimeZone, at: Timestamp) -> bool {
    let low = at.checked_sub(DST_WINDOW).unwrap_or(Timestamp::MIN);
    let high = at.checked_add(DST_WINDOW).unwrap_or(Timestamp::MAX);
    tz.following(low).next().is_some_and(|transition| transition.timestamp() <= high)
}

/// The first tick at or after `at`.
pub fn tick_at_or_after(cron: &Cron, tz: &TimeZone, at: Timestamp) -> Option<Timestamp> {
    let local = tz.to_datetime(at);
    // Near a transition, a wall-clock time before `local` may map to `at` or later
    // (a match in a gap fires at the gap's end), so start the scan earlier.
    let mut scan = if near_transition(tz, at) { local.checked_sub(DST_WINDOW).ok()? } else { local };
    loop {
        let candidate = cron.next_at_or_after(scan)?;
        let instant = resolve_local(tz, candidate)?;
        if instant >= at {
            return Some(instant);
        }
        scan = candidate.checked_add(SignedDuration::from_mins(1)).ok()?;
    }
}

/// The first tick strictly after `at`.
pub fn tick_after(cron: &Cron, tz: &TimeZone, at: Timestamp) -> Option<Timestamp> {
    tick_at_or_after(cron, tz, at.checked_add(SignedDuration::from_nanos(1)).ok()?)
}

/// The latest tick at or before `at`.
pub fn tick_at_or_before(cron: &Cron, tz: &TimeZone, at: Timestamp) -> Option<Timestamp> {
    let local = tz.to_datetime(at);
    let mut scan = if near_transition(tz, at) { local.checked_add(DST_WINDOW).ok()? } else { local };
    loop {
        let candidate = cron.prev_at_or_before(scan)?;
        let instant = resolve_local(tz, candidate)?;
        if instant <= at {
            return Some(instant);
        }
        scan = candidate.checked_sub(SignedDuration::from_mins(1)).ok()?;
    }
}

/// Formats an instant in RFC 3339 with the zone's offset at that instant, whole
/// seconds: `2024-03-10T03:00:00-04:00`.
pub fn format_in_zone(at: Timestamp, tz: &TimeZone) -> String {
    let zoned = at.to_zoned(tz.clone());
    let offset = zoned.offset();
    let seconds = offset.seconds();
    let sign = if seconds < 0 { '-' } else { '+' };
    let minutes = seconds.unsigned_abs() / 60;
    let local = zoned.datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
        local.year(),
        local.month(),
        local.day(),
        local.hour(),
        local.minute(),
        local.second(),
        minutes / 60,
        minutes % 60
    )
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateArgError {
    #[error(
        "`{0}` has no UTC offset; write a date (`2024-01-01`) or a timestamp with its offset (`2024-01-01T09:00:00+09:00` or `...Z`)"
    )]
    NoOffset(String),
    #[error("`{0}` is not a date (`2024-01-01`) or an RFC 3339 timestamp (`2024-01-01T09:00:00+09:00`)")]
    Syntax(String),
}

/// Reads a date as the contract writes it: a bare date is midnight at the start of
/// that day in `tz`; a timestamp must carry its offset.
pub fn parse_date_in_zone(text: &str, tz: &TimeZone) -> Result<Timestamp, DateArgError> {
    let text = text.trim();
    if let Ok(date) = text.parse::<jiff::civil::Date>()
        && text.len() == 10
    {
        let midnight = date.to_datetime(jiff::civil::Time::midnight());
        return resolve_local(tz, midnight).ok_or_else(|| DateArgError::Syntax(text.to_string()));
    }
    if let Ok(timestamp) = text.parse::<Timestamp>() {
        return Ok(timestamp);
    }
    if text.parse::<DateTime>().is_ok() {
        return Err(DateArgError::NoOffset(text.to_string()));
    }
    Err(DateArgError::Syntax(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// Renders the next `count` ticks from `from` in the zone's local form.
    fn ticks(expression: &str, zone: &str, from: &str, count: usize) -> Vec<String> {
        let schedule = Schedule::parse(expression).unwrap();
        let Schedule::Cron { cron, .. } = &schedule else { panic!("cron expected") };
        let tz = TimeZone::get(zone).unwrap();
        let mut at = parse_date_in_zone(from, &tz).unwrap();
        let mut out = Vec::new();
        at = tick_at_or_after(cron, &tz, at).unwrap();
        for _ in 0..count {
            out.push(format_in_zone(at, &tz));
            at = tick_after(cron, &tz, at).unwrap();
        }
        out
    }

    #[test]
    fn spring_forward_new_york() {
        // 2024-03-10 02:00 EST jumps to 03:00 EDT.
        insta::assert_debug_snapshot!(ticks("30 2 * * *", "America/New_York", "2024-03-09", 3), @r#"
        [
            "2024-03-09T02:30:00-05:00",
            "2024-03-10T03:00:00-04:00",
            "2024-03-11T02:30:00-04:00",
        ]
        "#);
        // Every quarter hour: the four matches inside the gap fire once, at its end.
        insta::assert_debug_snapshot!(ticks("*/15 * * * *", "America/New_York", "2024-03-10T06:30:00Z", 5), @r#"
        [
            "2024-03-10T01:30:00-05:00",
            "2024-03-10T01:45:00-05:00",
            "2024-03-10T03:00:00-04:00",
            "2024-03-10T03:15:00-04:00",
            "2024-03-10T03:30:00-04:00",
        ]
        "#);
    }

    #[test]
    fn fall_back_new_york() {
        // 2024-11-03 02:00 EDT falls back to 01:00 EST: 01:30 happens twice, fires once.
        insta::assert_debug_snapshot!(ticks("30 1 * * *", "America/New_York", "2024-11-02", 3), @r#"
        [
            "2024-11-02T01:30:00-04:00",
            "2024-11-03T01:30:00-04:00",
            "2024-11-04T01:30:00-05:00",
        ]
        "#);
        insta::assert_debug_snapshot!(ticks("0 * * * *", "America/New_York", "2024-11-03T04:00:00Z", 4), @r#"
        [
            "2024-11-03T00:00:00-04:00",
            "2024-11-03T01:00:00-04:00",
            "2024-11-03T02:00:00-05:00",
            "2024-11-03T03:00:00-05:00",
        ]
        "#);
    }

    #[test]
    fn spring_forward_berlin() {
        // 2024-03-31 02:00 CET jumps to 03:00 CEST.
        insta::assert_debug_snapshot!(ticks("15 2 * * *", "Europe/Berlin", "2024-03-30", 3), @r#"
        [
            "2024-03-30T02:15:00+01:00",
            "2024-03-31T03:00:00+02:00",
            "2024-04-01T02:15:00+02:00",
        ]
        "#);
        insta::assert_debug_snapshot!(ticks("@daily", "Europe/Berlin", "2024-03-30", 3), @r#"
        [
            "2024-03-30T00:00:00+01:00",
            "2024-03-31T00:00:00+01:00",
            "2024-04-01T00:00:00+02:00",
        ]
        "#);
    }

    #[test]
    fn fall_back_berlin() {
        // 2024-10-27 03:00 CEST falls back to 02:00 CET.
        insta::assert_debug_snapshot!(ticks("30 2 * * *", "Europe/Berlin", "2024-10-26", 3), @r#"
        [
            "2024-10-26T02:30:00+02:00",
            "2024-10-27T02:30:00+02:00",
            "2024-10-28T02:30:00+01:00",
        ]
        "#);
        insta::assert_debug_snapshot!(ticks("*/30 * * * *", "Europe/Berlin", "2024-10-26T23:30:00Z", 5), @r#"
        [
            "2024-10-27T01:30:00+02:00",
            "2024-10-27T02:00:00+02:00",
            "2024-10-27T02:30:00+02:00",
            "2024-10-27T03:00:00+01:00",
            "2024-10-27T03:30:00+01:00",
        ]
        "#);
    }

    #[test]
    fn ticks_backwards_across_dst() {
        let schedule = Schedule::parse("30 2 * * *").unwrap();
        let Schedule::Cron { cron, .. } = &schedule else { panic!() };
        let tz = TimeZone::get("America/New_York").unwrap();
        let gap_tick = ts("2024-03-10T07:00:00Z");
        assert_eq!(tick_at_or_before(cron, &tz, gap_tick), Some(gap_tick));
        assert_eq!(tick_at_or_before(cron, &tz, ts("2024-03-10T06:59:00Z")), Some(ts("2024-03-09T07:30:00Z")));
        let fold = Schedule::parse("30 1 * * *").unwrap();
        let Schedule::Cron { cron, .. } = &fold else { panic!() };
        // During the repeated hour's second pass, the latest tick is its first pass.
        assert_eq!(tick_at_or_before(cron, &tz, ts("2024-11-03T06:45:00Z")), Some(ts("2024-11-03T05:30:00Z")));
    }

    fn timetable<'a>(schedule: &'a Schedule, tz: &'a TimeZone, start: &str, end: Option<&str>) -> Timetable<'a> {
        Timetable {
            schedule,
            tz,
            start_date: Some(parse_date_in_zone(start, tz).unwrap()),
            end_date: end.map(|end| parse_date_in_zone(end, tz).unwrap()),
        }
    }

    fn show(interval: Option<DataInterval>, tz: &TimeZone) -> String {
        match interval {
            Some(interval) => format!("{} {}", format_in_zone(interval.start, tz), format_in_zone(interval.end, tz)),
            None => "none".to_string(),
        }
    }

    #[test]
    fn intervals() {
        let tz = TimeZone::get("Asia/Seoul").unwrap();
        let daily = Schedule::parse("0 6 * * *").unwrap();
        let table = timetable(&daily, &tz, "2024-01-01", Some("2024-01-03"));
        let first = table.next_interval(None);
        assert_eq!(show(first, &tz), "2024-01-01T06:00:00+09:00 2024-01-02T06:00:00+09:00");
        let second = table.next_interval(first);
        assert_eq!(show(second, &tz), "2024-01-02T06:00:00+09:00 2024-01-03T06:00:00+09:00");
        // The last interval starts before end_date (midnight of 01-03) and may end after it.
        assert_eq!(show(table.next_interval(second), &tz), "none");

        let now = ts("2024-01-02T22:00:00Z"); // 07:00 on 01-03 in Seoul
        assert_eq!(
            show(table.latest_complete_interval(now), &tz),
            "2024-01-02T06:00:00+09:00 2024-01-03T06:00:00+09:00"
        );
        assert_eq!(
            show(table.next_interval_to_create(None, false, now), &tz),
            "2024-01-02T06:00:00+09:00 2024-01-03T06:00:00+09:00"
        );
        assert_eq!(
            show(table.next_interval_to_create(None, true, now), &tz),
            "2024-01-01T06:00:00+09:00 2024-01-02T06:00:00+09:00"
        );
        // Nothing has ended yet: the first interval is next.
        assert_eq!(
            show(table.next_interval_to_create(None, false, ts("2023-06-01T00:00:00Z")), &tz),
            "2024-01-01T06:00:00+09:00 2024-01-02T06:00:00+09:00"
        );

        let once = Schedule::Once;
        let table = timetable(&once, &tz, "2024-01-01T09:00:00+09:00", None);
        assert_eq!(show(table.next_interval(None), &tz), "2024-01-01T09:00:00+09:00 2024-01-01T09:00:00+09:00");
        assert_eq!(show(table.next_interval(table.next_interval(None)), &tz), "none");
        assert_eq!(table.intervals_from(ts("2020-01-01T00:00:00Z"), 5).len(), 1);
        assert_eq!(table.intervals_from(ts("2025-01-01T00:00:00Z"), 5).len(), 0);
    }

    #[test]
    fn manual_interval() {
        let tz = TimeZone::UTC;
        let daily = Schedule::parse("@daily").unwrap();
        let table = timetable(&daily, &tz, "2024-01-01", None);
        assert_eq!(
            show(Some(table.manual_interval(ts("2024-02-01T00:00:00Z"))), &tz),
            "2024-02-01T00:00:00+00:00 2024-02-02T00:00:00+00:00"
        );
        assert_eq!(
            show(Some(table.manual_interval(ts("2024-02-01T13:45:00Z"))), &tz),
            "2024-02-01T13:45:00+00:00 2024-02-02T00:00:00+00:00"
        );
        let none = Schedule::None;
        let table = timetable(&none, &tz, "2024-01-01", None);
        assert_eq!(
            show(Some(table.manual_interval(ts("2024-02-01T13:45:00Z"))), &tz),
            "2024-02-01T13:45:00+00:00 2024-02-01T13:45:00+00:00"
        );
    }

    #[test]
    fn date_arguments() {
        let tz = TimeZone::get("Asia/Seoul").unwrap();
        let check = |text: &str| match parse_date_in_zone(text, &tz) {
            Ok(at) => at.to_string(),
            Err(error) => error.to_string(),
        };
        assert_eq!(check("2024-01-01"), "2023-12-31T15:00:00Z");
        assert_eq!(check("2024-01-01T09:00:00+09:00"), "2024-01-01T00:00:00Z");
        assert_eq!(check("2024-01-01T00:00:00Z"), "2024-01-01T00:00:00Z");
        assert!(check("2024-01-01T00:00:00").contains("has no UTC offset"));
        assert!(check("yesterday").contains("is not a date"));
        assert!(check("2024-13-01").contains("is not a date"));
    }
}

/// A schedule in words for people (`0 6 * * 1-5` -> "on weekdays at 06:00"), for
/// the common shapes; anything else is shown as its cron expression.
pub fn describe_schedule(text: &str) -> String {
    let text = text.trim();
    let preset = match text {
        "@once" => Some("once"),
        "@hourly" => Some("every hour"),
        "@daily" | "@midnight" => Some("every day at 00:00"),
        "@weekly" => Some("every Sunday at 00:00"),
        "@monthly" => Some("on day 1 of every month at 00:00"),
        "@yearly" | "@annually" => Some("every year on 1 January at 00:00"),
        _ => None,
    };
    if let Some(words) = preset {
        return words.to_string();
    }
    let fallback = || format!("cron `{text}`");
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [minute, hour, day, month, weekday] = fields[..] else { return fallback() };
    let number = |field: &str, max: u32| field.parse::<u32>().ok().filter(|n| *n <= max);
    let every = |field: &str| field.strip_prefix("*/").and_then(|n| n.parse::<u32>().ok()).filter(|n| *n > 0);
    let any = |field: &str| field == "*";
    if !any(month) {
        return fallback();
    }
    // Minute-level shapes first.
    if any(day) && any(weekday) {
        match (minute, hour) {
            ("*", "*") => return "every minute".to_string(),
            (m, "*") if every(m).is_some() => return format!("every {} minutes", every(m).unwrap_or(1)),
            (m, "*") if number(m, 59).is_some() => {
                return format!("every hour at minute {}", number(m, 59).unwrap_or(0));
            }
            (m, h) if number(m, 59).is_some() && every(h).is_some() => {
                return format!("every {} hours at minute {}", every(h).unwrap_or(1), number(m, 59).unwrap_or(0));
            }
            _ => {}
        }
    }
    let Some(minute) = number(minute, 59) else { return fallback() };
    let hours: Option<Vec<u32>> = hour.split(',').map(|h| number(h, 23)).collect();
    let Some(hours) = hours else { return fallback() };
    let times: Vec<String> = hours.iter().map(|h| format!("{h:02}:{minute:02}")).collect();
    let at = match times.as_slice() {
        [one] => format!("at {one}"),
        [rest @ .., last] => format!("at {} and {last}", rest.join(", ")),
        [] => return fallback(),
    };
    const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    let day_name = |field: &str| -> Option<&'static str> {
        let index = match field.to_ascii_lowercase().as_str() {
            "sun" => 0,
            "mon" => 1,
            "tue" => 2,
            "wed" => 3,
            "thu" => 4,
            "fri" => 5,
            "sat" => 6,
            other => other.parse::<usize>().ok().filter(|n| *n <= 7)? % 7,
        };
        Some(DAYS[index])
    };
    match (day, weekday) {
        ("*", "*") => format!("every day {at}"),
        ("*", "1-5") | ("*", "mon-fri") | ("*", "MON-FRI") => format!("on weekdays {at}"),
        ("*", "0,6") | ("*", "6,0") | ("*", "sat,sun") | ("*", "SAT,SUN") => format!("on weekends {at}"),
        ("*", days) => {
            let names: Option<Vec<&str>> = days.split(',').map(day_name).collect();
            match names.as_deref() {
                Some([one]) => format!("every {one} {at}"),
                Some(many) if !many.is_empty() => format!("on {} {at}", many.join(", ")),
                _ => fallback(),
            }
        }
        (dom, "*") => match number(dom, 31).filter(|n| *n >= 1) {
            Some(dom) => format!("on day {dom} of every month {at}"),
            None => fallback(),
        },
        _ => fallback(),
    }
}

#[cfg(test)]
mod describe_tests {
    use super::describe_schedule;

    #[test]
    fn schedules_in_words() {
        for (cron, words) in [
            ("@daily", "every day at 00:00"),
            ("@hourly", "every hour"),
            ("* * * * *", "every minute"),
            ("*/15 * * * *", "every 15 minutes"),
            ("5 * * * *", "every hour at minute 5"),
            ("0 */6 * * *", "every 6 hours at minute 0"),
            ("0 6 * * *", "every day at 06:00"),
            ("30 6,18 * * *", "every day at 06:30 and 18:30"),
            ("0 6 * * 1-5", "on weekdays at 06:00"),
            ("0 9 * * 1", "every Monday at 09:00"),
            ("0 9 * * mon,thu", "on Monday, Thursday at 09:00"),
            ("0 0 1 * *", "on day 1 of every month at 00:00"),
            ("0 0 1 1 *", "cron `0 0 1 1 *`"),
            ("0 0 L * *", "cron `0 0 L * *`"),
        ] {
            assert_eq!(describe_schedule(cron), words, "{cron}");
        }
    }
}
