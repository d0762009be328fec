//! Tables and JSON on stdout; times in a DAG's zone.

use std::io::Write;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use updraft_core::timetable::format_in_zone;

/// Prints rows under a header, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| -> String {
        let mut text = String::new();
        let last = cells.len().saturating_sub(1);
        for (idx, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            text.push_str(cell);
            if idx < last {
                text.push_str(&" ".repeat(width - cell.chars().count() + 2));
            }
        }
        text
    };
    let _ = writeln!(out, "{}", line(headers.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

pub fn json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

/// RFC 3339 with the zone's offset, or empty.
pub fn time(at: Option<Timestamp>, tz: &TimeZone) -> String {
    at.map(|at| format_in_zone(at, tz)).unwrap_or_default()
}

pub fn time_json(at: Option<Timestamp>, tz: &TimeZone) -> serde_json::Value {
    at.map_or(serde_json::Value::Null, |at| serde_json::Value::String(format_in_zone(at, tz)))
}

/// Whether stderr is an interactive terminal (progress bars, color).
pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// `crate::outln!` that never panics: a closed stdout (`| head`) is not an error of ours.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `crate::errln!` that never panics.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
