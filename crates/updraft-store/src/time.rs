//! Timestamps as stored: microseconds since the Unix epoch.

use jiff::Timestamp;

pub fn to_db(at: Timestamp) -> i64 {
    at.as_microsecond()
}

pub fn from_db(micros: i64) -> Timestamp {
    Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH)
}

pub fn opt_from_db(micros: Option<i64>) -> Option<Timestamp> {
    micros.map(from_db)
}
