//! Cron schedules for backups in the sidecar (UTC).
//!
//! Five fields (minute hour day-of-month month day-of-week) with `*`,
//! numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and lists; day of week 0-7
//! (0 and 7 are Sunday); `@hourly`, `@daily`, `@weekly`, `@monthly`,
//! `@yearly`. When both day fields are restricted a day matching either
//! runs, as in cron. Pure: times in, times out.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days_of_month: Vec<bool>,
    months: Vec<bool>,
    days_of_week: Vec<bool>,
    dom_restricted: bool,
    dow_restricted: bool,
}

/// A schedule that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid cron schedule {text:?}: {reason} (expected five fields, e.g. \"0 3 * * *\" for 03:00 UTC daily)"
)]
pub struct ScheduleError {
    text: String,
    reason: String,
}

fn parse_field(field: &str, min: u32, max: u32) -> Result<Vec<bool>, String> {
    let mut set = vec![false; max as usize + 1];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("bad step in {item:?}"))?,
            ),
            None => (item, 1),
        };
        if step == 0 {
            return Err(format!("zero step in {item:?}"));
        }
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                a.parse().map_err(|_| format!("bad number in {item:?}"))?,
                b.parse().map_err(|_| format!("bad number in {item:?}"))?,
            )
        } else {
            let v: u32 = range
                .parse()
                .map_err(|_| format!("bad number in {item:?}"))?;
            (v, if item.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{item:?} is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            set[v as usize] = true;
            let Some(next) = v.checked_add(step) else {
                break;
            };
            v = next;
        }
    }
    Ok(set)
}

impl Schedule {
    /// Parses a cron expression.
    ///
    /// # Errors
    /// [`ScheduleError`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let err = |reason: String| ScheduleError {
            text: text.to_string(),
            reason,
        };
        let expanded = match text.trim() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(format!("{} fields", fields.len())));
        }
        let mut dow = parse_field(fields[4], 0, 7).map_err(err)?;
        if dow[7] {
            dow[0] = true;
        }
        Ok(Schedule {
            minutes: parse_field(fields[0], 0, 59).map_err(err)?,
            hours: parse_field(fields[1], 0, 23).map_err(err)?,
            days_of_month: parse_field(fields[2], 1, 31).map_err(err)?,
            months: parse_field(fields[3], 1, 12).map_err(err)?,
            days_of_week: dow,
            dom_restricted: fields[2] != "*",
            dow_restricted: fields[4] != "*",
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days_of_month[t.day() as usize];
        let dow = self.days_of_week[t.weekday().num_days_from_sunday() as usize];
        match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first time strictly after `after` that the schedule fires, if
    /// any within five years (e.g. `0 0 31 2 *` never fires).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let limit = after + Duration::days(5 * 366);
        while t <= limit {
            if !self.months[t.month() as usize] {
                // Jump to the first day of the next month.
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = chrono::NaiveDate::from_ymd_opt(y, m, 1)?
                    .and_hms_opt(0, 0, 0)?
                    .and_utc();
                continue;
            }
            if !self.day_matches(&t) {
                t = (t + Duration::days(1)).with_hour(0)?.with_minute(0)?;
                continue;
            }
            if !self.hours[t.hour() as usize] {
                t = (t + Duration::hours(1)).with_minute(0)?;
                continue;
            }
            if !self.minutes[t.minute() as usize] {
                t += Duration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_times() {
        let daily = Schedule::parse("0 3 * * *").unwrap();
        assert_eq!(
            daily.next_after(at("2026-11-21T02:59:30Z")),
            Some(at("2026-11-21T03:00:00Z"))
        );
        assert_eq!(
            daily.next_after(at("2026-11-21T03:00:00Z")),
            Some(at("2026-11-22T03:00:00Z"))
        );
        let every15 = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(
            every15.next_after(at("2026-11-21T10:16:00Z")),
            Some(at("2026-11-21T10:30:00Z"))
        );
        let sunday = Schedule::parse("30 1 * * 7").unwrap();
        assert_eq!(
            sunday.next_after(at("2026-11-21T12:00:00Z")),
            Some(at("2026-11-22T01:30:00Z"))
        );
        let new_year = Schedule::parse("@yearly").unwrap();
        assert_eq!(
            new_year.next_after(at("2026-11-21T12:00:00Z")),
            Some(at("2027-01-01T00:00:00Z"))
        );
        // Either day field matches when both are restricted.
        let either = Schedule::parse("0 0 1 * 1").unwrap();
        assert_eq!(
            either.next_after(at("2026-11-21T12:00:00Z")),
            Some(at("2026-11-23T00:00:00Z"))
        );
        assert_eq!(
            Schedule::parse("0 0 31 2 *")
                .unwrap()
                .next_after(at("2026-11-21T12:00:00Z")),
            None
        );
    }

    #[test]
    fn bad_schedules_are_named() {
        assert!(Schedule::parse("0 3 * *").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("*/0 * * * *").is_err());
        // A step past the end of the field is one value, never an overflow.
        assert!(Schedule::parse("*/4294967295 * * * *").is_ok());
        assert!(Schedule::parse("5/99999999999 * * * *").is_err());
        assert!(
            Schedule::parse("a * * * *")
                .unwrap_err()
                .to_string()
                .contains("bad number")
        );
    }
}
