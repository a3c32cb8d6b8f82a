//! What may be sent: consent, required personalisation, holdouts, frequency caps and quiet
//! hours, decided for each row a trigger fires, before anything is queued.
//!
//! The rules, in the order they apply (the first that refuses gives the reason):
//! 1. `no_consent`: the profile has not opted in to the channel (NULL is not consent);
//! 2. `missing_field`: a `require`d column is NULL, blank or junk (`null`, `n/a`, `test`…);
//! 3. holdout: a deterministic share of profiles (hash of trigger and profile) is held out,
//!    and recorded as `held_out`, so that uplift can be measured;
//! 4. `trigger_cap`: this trigger already reached this profile `cap` times in the window;
//! 5. `pressure_cap`: all triggers together reached the channel's global cap for the profile;
//! 6. quiet hours: a message due inside them waits for their end (delayed, not dropped).
//!
//! Priorities are applied by the scheduler, which runs the triggers due in one tick highest
//! `priority` first: when a cap allows one more message, the most important trigger takes it.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::ddl::parse_interval;
use crate::error::{C360Error, Result};

/// How far back caps look: the longest window a cap may have.
pub const HISTORY_WINDOW_MICROS: i64 = 90 * 86_400 * 1_000_000;

/// Values that a required personalisation field must not hold ("Hello {first_name}").
const JUNK: [&str; 10] = [
    "null",
    "none",
    "n/a",
    "na",
    "-",
    "test",
    "unknown",
    "xxx",
    "undefined",
    "?",
];

/// `N per <interval>`: at most N messages in any window of that length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cap {
    pub count: usize,
    pub window_micros: i64,
}

impl Cap {
    pub fn parse(text: &str) -> Result<Cap> {
        let bad = || {
            C360Error::InvalidArgument(format!(
                "cap '{text}': write it as 'N per <interval>', e.g. '3 per 7 days'"
            ))
        };
        let (count, window) = text.split_once(" per ").ok_or_else(bad)?;
        let count: usize = count.trim().parse().map_err(|_| bad())?;
        let window = parse_interval(window).map_err(|e| C360Error::InvalidArgument(e.0))?;
        let window_micros = i64::try_from(window.as_micros()).map_err(|_| bad())?;
        if window_micros > HISTORY_WINDOW_MICROS {
            return Err(C360Error::InvalidArgument(format!(
                "cap '{text}': the window can be at most 90 days"
            )));
        }
        Ok(Cap {
            count,
            window_micros,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Queue it, deliverable from `available_at` (later than now inside quiet hours).
    Send {
        available_at: i64,
    },
    Suppress(Reason),
    HoldOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoConsent,
    MissingField,
    TriggerCap,
    PressureCap,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoConsent => "no_consent",
            Reason::MissingField => "missing_field",
            Reason::TriggerCap => "trigger_cap",
            Reason::PressureCap => "pressure_cap",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row a trigger fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub profile_id: String,
    /// The row's identity: the profile id, and the `dedup_key` column's value if any.
    pub key: String,
    /// The row's position in the query result, where its payload is rendered from (only
    /// for the rows that are sent).
    pub row: usize,
    /// The `require`d fields' values, in `Policy::require` order.
    pub required: Vec<Option<String>>,
    /// The profile's consent to the channel (`None`: unknown, which is not consent).
    pub consent: Option<bool>,
    /// The profile's time zone, if known and valid.
    pub time_zone: Option<Tz>,
}

/// A trigger's policy, from its `WITH (…)` options and the engine's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub channel: String,
    /// The `profiles` column holding consent to the channel; `None` when consent does not
    /// apply (`consent = 'none'`, e.g. a transactional webhook).
    pub consent_column: Option<String>,
    pub require: Vec<String>,
    /// Held-out share, in parts per million.
    pub holdout_ppm: u64,
    pub cap: Option<Cap>,
    pub pressure_cap: Option<Cap>,
    /// `(start, end)` local times; the range may cross midnight.
    pub quiet_hours: Option<(NaiveTime, NaiveTime)>,
    pub default_time_zone: Tz,
    pub priority: i64,
    pub refire_after: Option<i64>,
    pub dedup_key: Option<String>,
}

pub const OPTIONS: [&str; 8] = [
    "cap",
    "holdout",
    "require",
    "priority",
    "refire_after",
    "quiet_hours",
    "dedup_key",
    "consent",
];

pub const CHANNELS: [&str; 4] = ["email", "sms", "push", "webhook"];

impl Policy {
    pub fn from_options(
        channel: &str,
        options: &BTreeMap<String, String>,
        pressure_cap: Option<Cap>,
        default_time_zone: Tz,
    ) -> Result<Policy> {
        if !CHANNELS.contains(&channel) {
            return Err(C360Error::InvalidArgument(format!(
                "unknown channel {channel}: use one of {}",
                CHANNELS.join(", ")
            )));
        }
        if let Some(unknown) = options.keys().find(|k| !OPTIONS.contains(&k.as_str())) {
            return Err(C360Error::InvalidArgument(format!(
                "unknown trigger option {unknown}: use {}",
                OPTIONS.join(", ")
            )));
        }
        let consent_column = match options.get("consent").map(String::as_str) {
            Some("none") => None,
            Some(column) => Some(column.to_string()),
            None if channel == "webhook" => None,
            None => Some(format!("{channel}_opt_in")),
        };
        let holdout_ppm = match options.get("holdout") {
            None => 0,
            Some(text) => {
                let percent: f64 = text
                    .trim()
                    .trim_end_matches('%')
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| {
                        C360Error::InvalidArgument(format!(
                            "holdout '{text}': write a percentage from 0 to 100, e.g. '10%'"
                        ))
                    })?;
                (percent * 10_000.0).round() as u64
            }
        };
        let quiet_hours = match options.get("quiet_hours") {
            None => None,
            Some(text) => Some(parse_quiet_hours(text)?),
        };
        let interval_micros = |name: &str| -> Result<Option<i64>> {
            options
                .get(name)
                .map(|text| {
                    parse_interval(text)
                        .map(|d| d.as_micros() as i64)
                        .map_err(|e| C360Error::InvalidArgument(format!("{name}: {}", e.0)))
                })
                .transpose()
        };
        Ok(Policy {
            channel: channel.to_string(),
            consent_column,
            require: options
                .get("require")
                .map(|list| {
                    list.split(',')
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            holdout_ppm,
            cap: options.get("cap").map(|c| Cap::parse(c)).transpose()?,
            pressure_cap,
            quiet_hours,
            default_time_zone,
            priority: options
                .get("priority")
                .map(|p| {
                    p.trim().parse().map_err(|_| {
                        C360Error::InvalidArgument(format!("priority '{p}' is not an integer"))
                    })
                })
                .transpose()?
                .unwrap_or(0),
            refire_after: interval_micros("refire_after")?,
            dedup_key: options.get("dedup_key").map(|k| k.trim().to_string()),
        })
    }

    /// Decides for one fired row, given the profile's messages on this channel
    /// (`(at µs, trigger)`, any order).
    pub fn decide(
        &self,
        trigger: &str,
        candidate: &Candidate,
        now: i64,
        history: &[(i64, String)],
    ) -> Decision {
        self.screen(trigger, candidate)
            .unwrap_or_else(|| self.decide_sendable(trigger, candidate, now, history))
    }

    /// The rules that need no message history (consent, required fields, holdout): a
    /// decision if one of them refuses the row. Most rows of a large run stop here, so the
    /// queue reads history only for the rest.
    pub fn screen(&self, trigger: &str, candidate: &Candidate) -> Option<Decision> {
        if self.consent_column.is_some() && candidate.consent != Some(true) {
            return Some(Decision::Suppress(Reason::NoConsent));
        }
        if candidate
            .required
            .iter()
            .any(|value| is_junk(value.as_deref()))
        {
            return Some(Decision::Suppress(Reason::MissingField));
        }
        if self.holdout_ppm > 0 && holdout_bucket(trigger, &candidate.profile_id) < self.holdout_ppm
        {
            return Some(Decision::HoldOut);
        }
        None
    }

    /// The caps and quiet hours, for a row that [`Policy::screen`] let through.
    pub fn decide_sendable(
        &self,
        trigger: &str,
        candidate: &Candidate,
        now: i64,
        history: &[(i64, String)],
    ) -> Decision {
        let within = |cap: &Cap, of_trigger: bool| {
            history
                .iter()
                .filter(|(at, t)| now - at < cap.window_micros && (!of_trigger || t == trigger))
                .count()
        };
        if let Some(cap) = &self.cap
            && within(cap, true) >= cap.count
        {
            return Decision::Suppress(Reason::TriggerCap);
        }
        if let Some(cap) = &self.pressure_cap
            && within(cap, false) >= cap.count
        {
            return Decision::Suppress(Reason::PressureCap);
        }
        Decision::Send {
            available_at: self.after_quiet_hours(candidate, now),
        }
    }

    /// Whether any rule reads the profile's message history.
    pub fn has_caps(&self) -> bool {
        self.cap.is_some() || self.pressure_cap.is_some()
    }

    /// `now`, or the end of the quiet hours in the profile's time zone if `now` falls in them.
    fn after_quiet_hours(&self, candidate: &Candidate, now: i64) -> i64 {
        let Some((start, end)) = self.quiet_hours else {
            return now;
        };
        let zone = candidate.time_zone.unwrap_or(self.default_time_zone);
        let Some(utc) = DateTime::<Utc>::from_timestamp_micros(now) else {
            return now;
        };
        let local = utc.with_timezone(&zone);
        let time = local.time();
        let quiet = if start <= end {
            time >= start && time < end
        } else {
            time >= start || time < end
        };
        if !quiet {
            return now;
        }
        let mut day = local.date_naive();
        if start > end && time >= start {
            day = day.succ_opt().unwrap_or(day);
        }
        zone.from_local_datetime(&day.and_time(end))
            .earliest()
            .map_or(now, |t| t.with_timezone(&Utc).timestamp_micros())
    }
}

fn is_junk(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None => true,
        Some(v) => v.is_empty() || JUNK.iter().any(|junk| v.eq_ignore_ascii_case(junk)),
    }
}

/// A stable bucket in `0..1_000_000` for (trigger, profile): the same on every run and
/// machine, so a profile held out of a trigger stays held out.
pub fn holdout_bucket(trigger: &str, profile_id: &str) -> u64 {
    // FNV-1a: tiny, stable across Rust versions (unlike `DefaultHasher`).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in trigger.bytes().chain([0]).chain(profile_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash % 1_000_000
}

fn parse_quiet_hours(text: &str) -> Result<(NaiveTime, NaiveTime)> {
    let bad = || {
        C360Error::InvalidArgument(format!(
            "quiet_hours '{text}': write it as 'HH:MM-HH:MM', e.g. '21:00-08:00'"
        ))
    };
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let time = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| bad());
    Ok((time(start)?, time(end)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400 * 1_000_000;

    fn policy(options: &[(&str, &str)]) -> Policy {
        let options = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Policy::from_options("email", &options, None, chrono_tz::Europe::Paris).unwrap()
    }

    fn candidate(profile: &str) -> Candidate {
        Candidate {
            profile_id: profile.into(),
            key: profile.into(),
            row: 0,
            required: Vec::new(),
            consent: Some(true),
            time_zone: None,
        }
    }

    /// 2026-01-15 12:00 UTC (13:00 in Paris).
    const NOON: i64 = 1_768_478_400_000_000;

    #[test]
    fn consent_is_required_and_unknown_is_no() {
        let p = policy(&[]);
        assert_eq!(p.consent_column.as_deref(), Some("email_opt_in"));
        let mut c = candidate("a");
        assert!(matches!(
            p.decide("t", &c, NOON, &[]),
            Decision::Send { .. }
        ));
        c.consent = Some(false);
        assert_eq!(
            p.decide("t", &c, NOON, &[]),
            Decision::Suppress(Reason::NoConsent)
        );
        c.consent = None;
        assert_eq!(
            p.decide("t", &c, NOON, &[]),
            Decision::Suppress(Reason::NoConsent)
        );
        let transactional = policy(&[("consent", "none")]);
        assert!(matches!(
            transactional.decide("t", &c, NOON, &[]),
            Decision::Send { .. }
        ));
    }

    #[test]
    fn required_fields_must_hold_something_real() {
        let p = policy(&[("require", "first_name, city")]);
        assert_eq!(p.require, ["first_name", "city"]);
        let mut c = candidate("a");
        c.required = vec![Some("Anne".into()), Some("Lyon".into())];
        assert!(matches!(
            p.decide("t", &c, NOON, &[]),
            Decision::Send { .. }
        ));
        for junk in [
            None,
            Some(""),
            Some("  "),
            Some("NULL"),
            Some("n/a"),
            Some("Test"),
        ] {
            c.required = vec![junk.map(str::to_string), Some("Lyon".into())];
            assert_eq!(
                p.decide("t", &c, NOON, &[]),
                Decision::Suppress(Reason::MissingField),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn holdouts_are_deterministic_and_near_their_share() {
        let p = policy(&[("holdout", "10%")]);
        let held = (0..20_000)
            .filter(|i| {
                p.decide("t", &candidate(&format!("p_{i}")), NOON, &[]) == Decision::HoldOut
            })
            .count();
        assert!((1_700..2_300).contains(&held), "{held} of 20000 held out");
        for i in 0..100 {
            let c = candidate(&format!("p_{i}"));
            let today = p.decide("t", &c, NOON, &[]) == Decision::HoldOut;
            let tomorrow = p.decide("t", &c, NOON + DAY, &[]) == Decision::HoldOut;
            assert_eq!(today, tomorrow, "p_{i} is held out on every run or none");
        }
        assert_eq!(holdout_bucket("t", "p_42"), holdout_bucket("t", "p_42"));
        assert_ne!(holdout_bucket("t", "p_42"), holdout_bucket("u", "p_42"));
    }

    #[test]
    fn caps_count_the_window_per_trigger_and_across_triggers() {
        let mut p = policy(&[("cap", "1 per 7 days")]);
        p.pressure_cap = Some(Cap::parse("3 per 7 days").unwrap());
        let c = candidate("a");
        let recent = |t: &str, days_ago: i64| (NOON - days_ago * DAY, t.to_string());
        assert_eq!(
            p.decide("t", &c, NOON, &[recent("t", 2)]),
            Decision::Suppress(Reason::TriggerCap)
        );
        // Outside the window, it counts no more.
        assert!(matches!(
            p.decide("t", &c, NOON, &[recent("t", 8)]),
            Decision::Send { .. }
        ));
        // Three messages from other triggers this week: the pressure cap says no.
        let others = [recent("u", 1), recent("v", 2), recent("w", 3)];
        assert_eq!(
            p.decide("t", &c, NOON, &others),
            Decision::Suppress(Reason::PressureCap)
        );
        assert!(Cap::parse("3 every week").is_err());
        assert!(Cap::parse("3 per 200 days").is_err());
    }

    #[test]
    fn quiet_hours_delay_to_their_end_in_the_profile_time_zone() {
        let p = policy(&[("quiet_hours", "21:00-08:00")]);
        let mut c = candidate("a");
        // 13:00 in Paris: not quiet.
        assert_eq!(
            p.decide("t", &c, NOON, &[]),
            Decision::Send { available_at: NOON }
        );
        // 23:00 UTC is midnight in Paris: wait until 08:00 Paris (07:00 UTC) next day.
        let late = NOON + 11 * 3_600 * 1_000_000;
        let next_morning = NOON + 19 * 3_600 * 1_000_000;
        assert_eq!(
            p.decide("t", &c, late, &[]),
            Decision::Send {
                available_at: next_morning
            }
        );
        // In New York it is 18:00: not quiet there.
        c.time_zone = "America/New_York".parse().ok();
        assert_eq!(
            p.decide("t", &c, late, &[]),
            Decision::Send { available_at: late }
        );
        assert!(
            Policy::from_options(
                "email",
                &[("quiet_hours".to_string(), "late".to_string())].into(),
                None,
                chrono_tz::UTC
            )
            .is_err()
        );
    }

    #[test]
    fn options_and_channels_are_checked() {
        let options: BTreeMap<String, String> = [("caps".to_string(), "1".to_string())].into();
        let err = Policy::from_options("email", &options, None, chrono_tz::UTC).unwrap_err();
        assert!(
            err.to_string().contains("unknown trigger option caps"),
            "{err}"
        );
        let err = Policy::from_options("fax", &BTreeMap::new(), None, chrono_tz::UTC).unwrap_err();
        assert!(err.to_string().contains("unknown channel fax"), "{err}");
    }
}
