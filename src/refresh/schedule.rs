//! When a named query refreshes: every fixed period (`REFRESH EVERY '5 minutes'`), or on a
//! five-field cron expression in UTC (`REFRESH CRON '0 6 * * 1-5'`).

use std::fmt;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, DurationRound, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::ddl::{DdlError, parse_interval};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// A fixed period, in seconds, counted from the last refresh.
    Every { seconds: u64, text: String },
    /// A cron expression: minute, hour, day of month, month, day of week (0 or 7 = Sunday).
    Cron { expression: String },
}

impl Schedule {
    pub fn every(text: &str) -> Result<Schedule, DdlError> {
        let period = parse_interval(text)?;
        Ok(Schedule::Every {
            seconds: period.as_secs(),
            text: text.trim().to_string(),
        })
    }

    pub fn cron(expression: &str) -> Result<Schedule, DdlError> {
        CronFields::parse(expression)?;
        Ok(Schedule::Cron {
            expression: expression.split_whitespace().collect::<Vec<_>>().join(" "),
        })
    }

    /// The first time after `last` (the last refresh, or the definition's creation) when a
    /// refresh is due.
    pub fn next_after(&self, last: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every { seconds, .. } => {
                Some(last + ChronoDuration::seconds(i64::try_from(*seconds).ok()?))
            }
            Schedule::Cron { expression } => CronFields::parse(expression).ok()?.next_after(last),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every { text, .. } => write!(f, "EVERY '{text}'"),
            Schedule::Cron { expression } => write!(f, "CRON '{expression}'"),
        }
    }
}

/// A parsed cron expression: the allowed values of each field as a bit set.
struct CronFields {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Cron's rule: when both day fields are restricted, a day matching either one fires.
    any_day_field: bool,
}

impl CronFields {
    fn parse(expression: &str) -> Result<CronFields, DdlError> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(DdlError(format!(
                "cron '{expression}' must have five fields: minute hour day-of-month month day-of-week"
            )));
        };
        let field = |text: &str, name: &str, low: u32, high: u32| {
            parse_field(text, low, high).map_err(|reason| {
                DdlError(format!(
                    "cron '{expression}': {name} field '{text}': {reason}"
                ))
            })
        };
        let mut days_of_week = field(weekday, "day-of-week", 0, 7)?;
        // 7 is Sunday too.
        if days_of_week & (1 << 7) != 0 {
            days_of_week |= 1;
        }
        Ok(CronFields {
            minutes: field(minute, "minute", 0, 59)?,
            hours: field(hour, "hour", 0, 23)?,
            days_of_month: field(day, "day-of-month", 1, 31)?,
            months: field(month, "month", 1, 12)?,
            days_of_week,
            any_day_field: day != "*" && weekday != "*",
        })
    }

    fn day_matches(&self, time: DateTime<Utc>) -> bool {
        let by_month_day = self.days_of_month & (1 << time.day()) != 0;
        let by_week_day = self.days_of_week & (1 << time.weekday().num_days_from_sunday()) != 0;
        if self.any_day_field {
            by_month_day || by_week_day
        } else {
            by_month_day && by_week_day
        }
    }

    /// Walks forward minute by minute, skipping whole days and hours that cannot match; a
    /// matching time exists within about four years (29 February) or never.
    fn next_after(&self, last: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let minute = ChronoDuration::minutes(1);
        let mut time = last.duration_trunc(minute).ok()? + minute;
        let limit = last + ChronoDuration::days(366 * 4 + 1);
        while time <= limit {
            if self.months & (1 << time.month()) == 0 || !self.day_matches(time) {
                time = (time + ChronoDuration::days(1))
                    .duration_trunc(ChronoDuration::days(1))
                    .ok()?;
            } else if self.hours & (1 << time.hour()) == 0 {
                time = (time + ChronoDuration::hours(1))
                    .duration_trunc(ChronoDuration::hours(1))
                    .ok()?;
            } else if self.minutes & (1 << time.minute()) == 0 {
                time += minute;
            } else {
                return Some(time);
            }
        }
        None
    }
}

/// One cron field: `*`, `5`, `1-5`, `*/15`, `0-30/10`, and comma-separated lists of those.
fn parse_field(text: &str, low: u32, high: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (
                range,
                step.parse::<u32>()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| format!("bad step '{step}'"))?,
            ),
            None => (part, 1),
        };
        let number = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|n| (low..=high).contains(n))
                .ok_or_else(|| format!("'{s}' is not a number from {low} to {high}"))
        };
        let (from, to) = if range == "*" {
            (low, high)
        } else if let Some((from, to)) = range.split_once('-') {
            (number(from)?, number(to)?)
        } else {
            let single = number(range)?;
            // `5/10` means from 5 to the end, every 10.
            (single, if part.contains('/') { high } else { single })
        };
        if from > to {
            return Err(format!("range {from}-{to} runs backwards"));
        }
        for value in (from..=to).step_by(step as usize) {
            bits |= 1 << value;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn every_counts_from_the_last_refresh() {
        let schedule = Schedule::every("5 minutes").unwrap();
        assert_eq!(
            schedule.next_after(at(2026, 1, 1, 10, 0)),
            Some(at(2026, 1, 1, 10, 5))
        );
        assert_eq!(schedule.to_string(), "EVERY '5 minutes'");
    }

    #[test]
    fn cron_fires_on_the_next_matching_minute() {
        let hourly = Schedule::cron("0 * * * *").unwrap();
        assert_eq!(
            hourly.next_after(at(2026, 1, 1, 10, 0)),
            Some(at(2026, 1, 1, 11, 0))
        );
        let quarter = Schedule::cron("*/15 * * * *").unwrap();
        assert_eq!(
            quarter.next_after(at(2026, 1, 1, 10, 7)),
            Some(at(2026, 1, 1, 10, 15))
        );
        // Weekdays at 06:00: Friday 2026-01-02 → Monday 2026-01-05.
        let weekdays = Schedule::cron("0 6 * * 1-5").unwrap();
        assert_eq!(
            weekdays.next_after(at(2026, 1, 2, 7, 0)),
            Some(at(2026, 1, 5, 6, 0))
        );
        // Sunday as 7.
        let sundays = Schedule::cron("30 9 * * 7").unwrap();
        assert_eq!(
            sundays.next_after(at(2026, 1, 1, 0, 0)),
            Some(at(2026, 1, 4, 9, 30))
        );
        let leap = Schedule::cron("0 0 29 2 *").unwrap();
        assert_eq!(
            leap.next_after(at(2026, 3, 1, 0, 0)),
            Some(at(2028, 2, 29, 0, 0))
        );
        assert_eq!(
            Schedule::cron("0 0 31 2 *")
                .unwrap()
                .next_after(at(2026, 1, 1, 0, 0)),
            None
        );
    }

    #[test]
    fn bad_cron_expressions_name_the_field() {
        for (expression, expected) in [
            ("* * * *", "five fields"),
            ("60 * * * *", "minute field '60'"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day-of-month field"),
            ("* * * 13 *", "month field"),
            ("*/0 * * * *", "bad step"),
            ("5-1 * * * *", "backwards"),
            ("a * * * *", "'a' is not a number"),
        ] {
            let err = Schedule::cron(expression).unwrap_err();
            assert!(err.0.contains(expected), "{expression}: {err}");
        }
    }
}
