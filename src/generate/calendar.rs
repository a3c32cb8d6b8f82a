//! The two years of history the data covers: fixed reference date, seasons, Paris local time.
//!
//! Everything is relative to a fixed reference date, never the wall clock, so that a seed gives
//! the same data whenever it is run.

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat};

use super::rng::Rng;

/// The end of the generated history: 2026-11-01T00:00:00Z.
pub const REFERENCE_EPOCH_SECONDS: i64 = 1_793_491_200;
/// How many days of history end at the reference date.
pub const DAYS: u32 = 730;

const MICROS_PER_SECOND: i64 = 1_000_000;

/// Relative weights (percent of the busiest month) of each month, January first.
pub type Season = [u8; 12];

/// Overall retail traffic of a home-and-garden chain: spring peak, Christmas, quiet winter.
pub const TRAFFIC: Season = [60, 60, 85, 100, 100, 95, 80, 65, 70, 70, 85, 95];

#[derive(Clone, Copy)]
struct Day {
    month: u8,
    /// 0 = Monday … 6 = Sunday.
    weekday: u8,
    /// Paris offset from UTC on that day, in seconds (CET or CEST).
    utc_offset: i32,
}

pub struct Calendar {
    days: Vec<Day>,
    start_seconds: i64,
}

impl Calendar {
    pub fn new() -> Self {
        let start_seconds = REFERENCE_EPOCH_SECONDS - i64::from(DAYS) * 86_400;
        let days = (0..DAYS)
            .map(|d| {
                let date = DateTime::from_timestamp(start_seconds + i64::from(d) * 86_400, 0)
                    .map(|t| t.date_naive())
                    .unwrap_or_default();
                Day {
                    month: date.month0() as u8,
                    weekday: date.weekday().num_days_from_monday() as u8,
                    utc_offset: if summer_time(date) { 7200 } else { 3600 },
                }
            })
            .collect();
        Calendar {
            days,
            start_seconds,
        }
    }

    /// A day in `from..DAYS`, weighted by the season (rejection sampling keeps it integer-exact).
    pub fn pick_day(&self, rng: &mut Rng, from: u32, season: &Season) -> u32 {
        let from = from.min(DAYS - 1);
        let mut day = from;
        for _ in 0..32 {
            day = rng.range(u64::from(from), u64::from(DAYS)) as u32;
            if rng.below(100) < u64::from(season[self.month(day)]) {
                break;
            }
        }
        day
    }

    pub fn month(&self, day: u32) -> usize {
        usize::from(self.day(day).month)
    }

    pub fn is_sunday(&self, day: u32) -> bool {
        self.day(day).weekday == 6
    }

    pub fn is_saturday(&self, day: u32) -> bool {
        self.day(day).weekday == 5
    }

    /// UTC microseconds of a Paris local time of day (seconds after local midnight).
    pub fn micros(&self, day: u32, local_seconds: u32) -> i64 {
        let day = day.min(DAYS - 1);
        let seconds = self.start_seconds + i64::from(day) * 86_400 + i64::from(local_seconds)
            - i64::from(self.day(day).utc_offset);
        seconds * MICROS_PER_SECOND
    }

    /// The day index of a UTC timestamp (clamped to the covered window).
    pub fn day_of(&self, micros: i64) -> u32 {
        let d = (micros / MICROS_PER_SECOND - self.start_seconds).div_euclid(86_400);
        d.clamp(0, i64::from(DAYS) - 1) as u32
    }

    fn day(&self, day: u32) -> Day {
        self.days[(day as usize).min(self.days.len() - 1)]
    }
}

/// European summer time: from the last Sunday of March to the last Sunday of October.
fn summer_time(date: NaiveDate) -> bool {
    let last_sunday = |month: u32| {
        let last = NaiveDate::from_ymd_opt(date.year(), month, 31).unwrap_or(date);
        31 - (last.weekday().num_days_from_monday() + 1) % 7
    };
    match date.month() {
        4..=9 => true,
        3 => date.day() >= last_sunday(3),
        10 => date.day() < last_sunday(10),
        _ => false,
    }
}

/// RFC 3339 in UTC with a `Z`, as the CSV and NDJSON sources carry timestamps.
pub fn rfc3339(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_ends_at_the_reference_date() {
        let cal = Calendar::new();
        assert_eq!(rfc3339(cal.micros(0, 0)), "2024-10-31T23:00:00Z");
        // 2026-10-31 is after the last Sunday of October: winter time, UTC+1.
        assert_eq!(
            rfc3339(cal.micros(DAYS - 1, 12 * 3600)),
            "2026-10-31T11:00:00Z"
        );
        // 2026-07-14 is summer time, UTC+2.
        let july_14 = (DAYS - 1) - 109;
        assert_eq!(
            rfc3339(cal.micros(july_14, 12 * 3600)),
            "2026-07-14T10:00:00Z"
        );
        assert_eq!(cal.day_of(cal.micros(july_14, 12 * 3600)), july_14);
    }
}
