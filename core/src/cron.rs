//! Cron expressions, as PartyKit's `crons` (Cloudflare Workers cron triggers) take them, and
//! when they are next due. All times are UTC.
//!
//! Five fields, `minute hour day-of-month month day-of-week`:
//!
//! | Field | Values | Names |
//! |---|---|---|
//! | minute | 0-59 | |
//! | hour | 0-23 | |
//! | day-of-month | 1-31 | |
//! | month | 1-12 | `JAN`-`DEC` |
//! | day-of-week | 0-7 (0 and 7 are Sunday) | `SUN`-`SAT` |
//!
//! Each field is `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from `a` to the
//! end of the field's range), or a list of those, `a,b-c,*/n`. Names are case-insensitive and
//! may be used in ranges (`MON-FRI`). `?` is accepted as `*` in the two day fields.
//!
//! When both day fields are restricted (neither starts with `*` or `?`), a day matches when
//! EITHER matches, as in Vixie cron: `0 0 1 * MON` is due on the 1st of every month and on
//! every Monday. When one of them starts with `*`, a day must match both.
//!
//! **Partyline extension:** an optional sixth field in front, seconds (0-59, same syntax), as in
//! `*/5 * * * * *` (every five seconds). Cloudflare does not accept it; it exists for tests and
//! for schedules finer than a minute. A five-field expression is due at second 0.
//!
//! Not supported (an error, naming the field): `L`, `W`, `#`, `@daily` style macros, a year
//! field, values out of range, a range that runs backwards, a step of 0.
//!
//! ```
//! use partyline::cron::Schedule;
//!
//! let s = Schedule::parse("30 9 * * MON-FRI").unwrap();
//! // 2024-01-05 (a Friday) 09:30 UTC, then the next weekday, Monday 2024-01-08.
//! let friday = 1_704_447_000_000;
//! assert_eq!(s.next_after(friday), Some(friday + 3 * 86_400_000));
//! assert_eq!(
//!     Schedule::parse("61 * * * *").unwrap_err().to_string(),
//!     "cron \"61 * * * *\": minute 61 is out of range 0-59"
//! );
//! ```

use std::fmt;

/// How far [`Schedule::next_after`] looks ahead, in years: 8 covers every leap day (the longest
/// gap between two February 29ths is 8 years, around 2100).
const HORIZON_YEARS: i64 = 8;

const MS_PER_DAY: i64 = 86_400_000;

/// A parsed cron expression; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Bit `n`: due at second `n` (only bit 0 for five fields).
    seconds: u64,
    minutes: u64,
    hours: u32,
    /// Bits 1-31.
    days: u32,
    /// Bits 1-12.
    months: u16,
    /// Bits 0-6, Sunday = 0.
    weekdays: u8,
    /// The day-of-month field starts with `*` or `?` (see the OR rule in the module docs).
    days_star: bool,
    /// The day-of-week field starts with `*` or `?`.
    weekdays_star: bool,
    /// Six fields (a seconds field first).
    with_seconds: bool,
}

/// Why an expression is not a valid cron expression; the text names the expression, the field
/// and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronError(String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CronError {}

#[derive(Clone, Copy)]
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for values `min..`, three letters each.
    names: &'static [&'static str],
    /// `?` is `*`.
    question: bool,
}

const SECOND: Field = Field { name: "second", min: 0, max: 59, names: &[], question: false };
const MINUTE: Field = Field { name: "minute", min: 0, max: 59, names: &[], question: false };
const HOUR: Field = Field { name: "hour", min: 0, max: 23, names: &[], question: false };
const DAY_OF_MONTH: Field = Field { name: "day-of-month", min: 1, max: 31, names: &[], question: true };
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
    question: false,
};
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    question: true,
};

impl Field {
    fn range(&self) -> String {
        format!("{}-{}", self.min, self.max)
    }

    /// One value: a number or a name.
    fn value(&self, tok: &str) -> Result<u32, String> {
        let name = self.name;
        if tok.is_empty() {
            return Err(format!("{name} has an empty value"));
        }
        if tok.bytes().all(|b| b.is_ascii_digit()) {
            let n: u32 = tok.parse().map_err(|_| format!("{name} {tok} is out of range {}", self.range()))?;
            if n < self.min || n > self.max {
                return Err(format!("{name} {n} is out of range {}", self.range()));
            }
            return Ok(n);
        }
        let upper = tok.to_ascii_uppercase();
        if let Some(i) = self.names.iter().position(|n| *n == upper) {
            return Ok(self.min + i as u32);
        }
        if self.question && (upper == "L" || upper.ends_with('L') || upper.ends_with('W')) {
            return Err(format!("{name} {tok:?}: `L` and `W` are not supported"));
        }
        if self.names.is_empty() {
            Err(format!("{name} {tok:?} is not a number"))
        } else {
            Err(format!(
                "{name} {tok:?} is not a number or a name ({}-{})",
                self.names[0],
                self.names[self.names.len() - 1]
            ))
        }
    }

    /// The whole field as a bit set, and whether it starts with `*` (or `?`).
    fn parse(&self, text: &str) -> Result<(u64, bool), String> {
        let name = self.name;
        let star = text.starts_with('*') || (self.question && text.starts_with('?'));
        let mut bits = 0u64;
        for item in text.split(',') {
            if item.contains('#') {
                return Err(format!("{name} {item:?}: `#` (nth weekday of the month) is not supported"));
            }
            let (base, step) = match item.split_once('/') {
                Some((base, step)) => {
                    let n = if !step.is_empty() && step.bytes().all(|b| b.is_ascii_digit()) {
                        step.parse::<u32>().ok()
                    } else {
                        None
                    };
                    match n {
                        Some(n) if n > 0 => (base, Some(n)),
                        _ => return Err(format!("{name} step {step:?} in {item:?} is not a positive number")),
                    }
                }
                None => (item, None),
            };
            let (from, to) = if base == "*" || (self.question && base == "?") {
                (self.min, self.max)
            } else if let Some((a, b)) = base.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if a > b {
                    return Err(format!("{name} range {base:?} runs backwards"));
                }
                (a, b)
            } else {
                let a = self.value(base)?;
                // `a/n` runs from `a` to the end of the range.
                (a, if step.is_some() { self.max } else { a })
            };
            let step = step.unwrap_or(1);
            let mut v = from;
            while v <= to {
                bits |= 1 << v;
                v += step;
            }
        }
        Ok((bits, star))
    }
}

impl Schedule {
    /// Parses a cron expression; see the module docs for what is accepted.
    pub fn parse(expr: &str) -> Result<Schedule, CronError> {
        let err = |why: String| CronError(format!("cron {expr:?}: {why}"));
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let (seconds, rest, with_seconds) = match fields.len() {
            5 => (1u64, &fields[..], false),
            6 => (SECOND.parse(fields[0]).map_err(err)?.0, &fields[1..], true),
            n => {
                return Err(err(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first; \
                     found {n}"
                )))
            }
        };
        let (minutes, _) = MINUTE.parse(rest[0]).map_err(err)?;
        let (hours, _) = HOUR.parse(rest[1]).map_err(err)?;
        let (days, days_star) = DAY_OF_MONTH.parse(rest[2]).map_err(err)?;
        let (months, _) = MONTH.parse(rest[3]).map_err(err)?;
        let (weekdays, weekdays_star) = DAY_OF_WEEK.parse(rest[4]).map_err(err)?;
        // 7 is Sunday too.
        let weekdays = (weekdays & 0x7f) | ((weekdays >> 7) & 1);
        Ok(Schedule {
            seconds,
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_star,
            weekdays_star,
            with_seconds,
        })
    }

    /// Whether the expression has a seconds field (six fields).
    pub fn has_seconds(&self) -> bool {
        self.with_seconds
    }

    fn day_matches(&self, days: i64, day: u32) -> bool {
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday(days)) != 0;
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first due time strictly after `after_ms` (ms since the Unix epoch), on a whole second
    /// (a whole minute for 5-field expressions); None if there is none within ~5 years (in fact
    /// 8, so that every February 29th is found).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        // The first whole second after `after_ms`.
        let start = after_ms.div_euclid(1000).checked_add(1)?;
        let mut days = start.div_euclid(86_400);
        let mut sod = start.rem_euclid(86_400) as u32;
        let (first_year, ..) = civil_from_days(days);
        loop {
            let (y, m, d) = civil_from_days(days);
            if y > first_year + HORIZON_YEARS {
                return None;
            }
            if self.months & (1 << m) == 0 {
                // The first day of the next month.
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days = days_from_civil(ny, nm, 1);
                sod = 0;
                continue;
            }
            if !self.day_matches(days, d) {
                days += 1;
                sod = 0;
                continue;
            }
            let (h, mi, s) = (sod / 3600, sod / 60 % 60, sod % 60);
            let Some(nh) = next_bit(self.hours as u64, h) else {
                days += 1;
                sod = 0;
                continue;
            };
            if nh != h {
                sod = nh * 3600;
                continue;
            }
            let Some(nmi) = next_bit(self.minutes, mi) else {
                sod = (h + 1) * 3600;
                if sod >= 86_400 {
                    days += 1;
                    sod = 0;
                }
                continue;
            };
            if nmi != mi {
                sod = h * 3600 + nmi * 60;
                continue;
            }
            let Some(ns) = next_bit(self.seconds, s) else {
                sod = h * 3600 + (mi + 1) * 60;
                if sod >= 86_400 {
                    days += 1;
                    sod = 0;
                }
                continue;
            };
            return days.checked_mul(MS_PER_DAY)?.checked_add((h * 3600 + mi * 60 + ns) as i64 * 1000);
        }
    }
}

/// The lowest set bit of `bits` at `from` or above.
fn next_bit(bits: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = bits >> from;
    (rest != 0).then(|| from + rest.trailing_zeros())
}

/// Day of the week of a day since the Unix epoch, Sunday = 0 (1970-01-01 was a Thursday).
fn weekday(days: i64) -> u32 {
    (days + 4).rem_euclid(7) as u32
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01: (year, month 1-12, day 1-31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ms of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64) -> i64 {
        (days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s) * 1000
    }

    /// The next `n` due times after `from`.
    fn next_n(expr: &str, from: i64, n: usize) -> Vec<i64> {
        let s = Schedule::parse(expr).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        let mut t = from;
        for _ in 0..n {
            t = s.next_after(t).unwrap_or_else(|| panic!("{expr}: nothing after {t}"));
            out.push(t);
        }
        out
    }

    fn err(expr: &str) -> String {
        Schedule::parse(expr).unwrap_err().to_string()
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(weekday(0), 4);
        assert_eq!(weekday(days_from_civil(2024, 1, 7)), 0, "2024-01-07 was a Sunday");
        for z in (-800_000..800_000).step_by(37) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn every_minute_and_strictly_after() {
        let t = at(2024, 5, 17, 10, 20, 0);
        assert_eq!(next_n("* * * * *", t, 2), vec![t + 60_000, t + 120_000]);
        // From inside a minute: the next whole minute.
        assert_eq!(next_n("* * * * *", t + 1, 1), vec![t + 60_000]);
        assert_eq!(next_n("* * * * *", t - 1, 1), vec![t]);
    }

    #[test]
    fn values_lists_ranges_and_steps() {
        let t = at(2024, 5, 17, 10, 20, 0);
        assert_eq!(next_n("5 * * * *", t, 2), vec![at(2024, 5, 17, 11, 5, 0), at(2024, 5, 17, 12, 5, 0)]);
        assert_eq!(
            next_n("0,30 9,17 * * *", t, 3),
            vec![at(2024, 5, 17, 17, 0, 0), at(2024, 5, 17, 17, 30, 0), at(2024, 5, 18, 9, 0, 0)]
        );
        assert_eq!(
            next_n("10-12 * * * *", t, 4),
            vec![
                at(2024, 5, 17, 11, 10, 0),
                at(2024, 5, 17, 11, 11, 0),
                at(2024, 5, 17, 11, 12, 0),
                at(2024, 5, 17, 12, 10, 0)
            ]
        );
        assert_eq!(
            next_n("*/15 * * * *", t, 3),
            vec![at(2024, 5, 17, 10, 30, 0), at(2024, 5, 17, 10, 45, 0), at(2024, 5, 17, 11, 0, 0)]
        );
        assert_eq!(
            next_n("10-40/20 * * * *", t, 3),
            vec![at(2024, 5, 17, 10, 30, 0), at(2024, 5, 17, 11, 10, 0), at(2024, 5, 17, 11, 30, 0)]
        );
        // `a/n`: from a to the end of the range.
        assert_eq!(
            next_n("50/5 * * * *", t, 3),
            vec![at(2024, 5, 17, 10, 50, 0), at(2024, 5, 17, 10, 55, 0), at(2024, 5, 17, 11, 50, 0)]
        );
        assert_eq!(next_n("0 */6 * * *", t, 2), vec![at(2024, 5, 17, 12, 0, 0), at(2024, 5, 17, 18, 0, 0)]);
        assert_eq!(next_n("0 0 1 * *", t, 2), vec![at(2024, 6, 1, 0, 0, 0), at(2024, 7, 1, 0, 0, 0)]);
        assert_eq!(
            Schedule::parse("1,2-3,*/20 * * * *").unwrap().minutes,
            (1 << 1) | (1 << 2) | (1 << 3) | 1 | (1 << 20) | (1 << 40)
        );
    }

    #[test]
    fn month_and_weekday_names_any_case() {
        let t = at(2024, 5, 17, 10, 20, 0); // a Friday
        assert_eq!(Schedule::parse("0 0 1 jan *").unwrap(), Schedule::parse("0 0 1 1 *").unwrap());
        assert_eq!(Schedule::parse("0 0 1 Jun-AUG *").unwrap(), Schedule::parse("0 0 1 6-8 *").unwrap());
        assert_eq!(Schedule::parse("0 0 * * mon-FRI").unwrap(), Schedule::parse("0 0 * * 1-5").unwrap());
        assert_eq!(Schedule::parse("0 0 * * SUN,sat").unwrap(), Schedule::parse("0 0 * * 0,6").unwrap());
        assert_eq!(next_n("0 0 1 JAN *", t, 1), vec![at(2025, 1, 1, 0, 0, 0)]);
        assert_eq!(
            next_n("30 9 * * MON-FRI", t, 3),
            vec![at(2024, 5, 20, 9, 30, 0), at(2024, 5, 21, 9, 30, 0), at(2024, 5, 22, 9, 30, 0)]
        );
    }

    #[test]
    fn sunday_is_0_and_7() {
        let t = at(2024, 5, 17, 10, 20, 0);
        let sunday = vec![at(2024, 5, 19, 0, 0, 0), at(2024, 5, 26, 0, 0, 0)];
        assert_eq!(next_n("0 0 * * 0", t, 2), sunday);
        assert_eq!(next_n("0 0 * * 7", t, 2), sunday);
        assert_eq!(next_n("0 0 * * SUN", t, 2), sunday);
        assert_eq!(Schedule::parse("0 0 * * 5-7").unwrap(), Schedule::parse("0 0 * * 0,5,6").unwrap());
    }

    #[test]
    fn question_mark_is_a_star_in_the_day_fields() {
        assert_eq!(Schedule::parse("0 0 ? * MON").unwrap(), Schedule::parse("0 0 * * MON").unwrap());
        assert_eq!(Schedule::parse("0 0 1 * ?").unwrap(), Schedule::parse("0 0 1 * *").unwrap());
        assert!(err("? * * * *").contains("minute \"?\" is not a number"), "{}", err("? * * * *"));
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 13th of any month, or any Friday (2024-05-17 was a Friday).
        let t = at(2024, 5, 17, 10, 20, 0);
        assert_eq!(
            next_n("0 0 13 * FRI", t, 4),
            vec![at(2024, 5, 24, 0, 0, 0), at(2024, 5, 31, 0, 0, 0), at(2024, 6, 7, 0, 0, 0), at(2024, 6, 13, 0, 0, 0)]
        );
        // A star in one of them: both must match (a Friday on an odd day).
        assert_eq!(next_n("0 0 */2 * FRI", t, 2), vec![at(2024, 5, 31, 0, 0, 0), at(2024, 6, 7, 0, 0, 0)]);
        // Days 1-7 and Monday: either.
        assert_eq!(
            next_n("0 0 1-7 * 1", at(2024, 5, 8, 0, 0, 0), 2),
            vec![at(2024, 5, 13, 0, 0, 0), at(2024, 5, 20, 0, 0, 0)]
        );
    }

    #[test]
    fn short_months_and_leap_days_are_skipped() {
        let t = at(2024, 1, 1, 0, 0, 0);
        assert_eq!(
            next_n("0 0 31 * *", t, 4),
            vec![
                at(2024, 1, 31, 0, 0, 0),
                at(2024, 3, 31, 0, 0, 0),
                at(2024, 5, 31, 0, 0, 0),
                at(2024, 7, 31, 0, 0, 0)
            ]
        );
        assert_eq!(
            next_n("0 12 29 2 *", at(2024, 3, 1, 0, 0, 0), 2),
            vec![at(2028, 2, 29, 12, 0, 0), at(2032, 2, 29, 12, 0, 0)]
        );
        // 2100 is not a leap year: 2096, then 2104 (8 years, the horizon).
        assert_eq!(next_n("0 0 29 2 *", at(2096, 3, 1, 0, 0, 0), 1), vec![at(2104, 2, 29, 0, 0, 0)]);
        // Never: nothing, quickly.
        assert_eq!(Schedule::parse("0 0 30 2 *").unwrap().next_after(t), None);
        assert_eq!(Schedule::parse("0 0 31 4,6,9,11 *").unwrap().next_after(t), None);
    }

    #[test]
    fn years_roll_over() {
        assert_eq!(next_n("59 23 31 12 *", at(2024, 12, 31, 23, 59, 0), 1), vec![at(2025, 12, 31, 23, 59, 0)]);
        assert_eq!(next_n("* * * * *", at(2024, 12, 31, 23, 59, 30), 1), vec![at(2025, 1, 1, 0, 0, 0)]);
        assert_eq!(next_n("0 0 * * *", at(2024, 12, 31, 0, 0, 0), 1), vec![at(2025, 1, 1, 0, 0, 0)]);
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let t = at(2024, 5, 17, 10, 20, 0);
        let s = Schedule::parse("*/5 * * * * *").unwrap();
        assert!(s.has_seconds());
        assert!(!Schedule::parse("* * * * *").unwrap().has_seconds());
        assert_eq!(next_n("*/5 * * * * *", t, 3), vec![t + 5000, t + 10_000, t + 15_000]);
        assert_eq!(next_n("*/5 * * * * *", t + 2500, 1), vec![t + 5000]);
        assert_eq!(next_n("* * * * * *", t + 999, 1), vec![t + 1000]);
        assert_eq!(next_n("30 0 12 * * *", t, 2), vec![at(2024, 5, 17, 12, 0, 30), at(2024, 5, 18, 12, 0, 30)]);
        assert_eq!(next_n("10,50 * * * * *", at(2024, 5, 17, 23, 59, 55), 1), vec![at(2024, 5, 18, 0, 0, 10)]);
    }

    #[test]
    fn before_the_epoch() {
        assert_eq!(next_n("0 0 * * *", -1, 1), vec![0]);
        assert_eq!(next_n("* * * * *", -90_000, 1), vec![-60_000]);
    }

    #[test]
    fn errors_name_the_field_and_why() {
        assert_eq!(err("61 * * * *"), "cron \"61 * * * *\": minute 61 is out of range 0-59");
        assert_eq!(err("* 24 * * *"), "cron \"* 24 * * *\": hour 24 is out of range 0-23");
        assert_eq!(err("* * 0 * *"), "cron \"* * 0 * *\": day-of-month 0 is out of range 1-31");
        assert_eq!(err("* * * 13 *"), "cron \"* * * 13 *\": month 13 is out of range 1-12");
        assert_eq!(err("* * * * 8"), "cron \"* * * * 8\": day-of-week 8 is out of range 0-7");
        assert_eq!(err("60 * * * * *"), "cron \"60 * * * * *\": second 60 is out of range 0-59");
        assert_eq!(
            err("* * * *"),
            "cron \"* * * *\": expected 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds \
             first; found 4"
        );
        assert!(err("* * * * * * 2024").contains("found 7"));
        assert!(err("").contains("found 0"));
        assert_eq!(err("* * L * *"), "cron \"* * L * *\": day-of-month \"L\": `L` and `W` are not supported");
        assert_eq!(err("* * 15W * *"), "cron \"* * 15W * *\": day-of-month \"15W\": `L` and `W` are not supported");
        assert_eq!(err("* * * * 5L"), "cron \"* * * * 5L\": day-of-week \"5L\": `L` and `W` are not supported");
        assert_eq!(
            err("* * * * MON#2"),
            "cron \"* * * * MON#2\": day-of-week \"MON#2\": `#` (nth weekday of the month) is not supported"
        );
        assert_eq!(err("*/0 * * * *"), "cron \"*/0 * * * *\": minute step \"0\" in \"*/0\" is not a positive number");
        assert_eq!(err("*/ * * * *"), "cron \"*/ * * * *\": minute step \"\" in \"*/\" is not a positive number");
        assert_eq!(err("30-10 * * * *"), "cron \"30-10 * * * *\": minute range \"30-10\" runs backwards");
        assert_eq!(err("1,,2 * * * *"), "cron \"1,,2 * * * *\": minute has an empty value");
        assert_eq!(err("x * * * *"), "cron \"x * * * *\": minute \"x\" is not a number");
        assert_eq!(err("0 0 * FOO *"), "cron \"0 0 * FOO *\": month \"FOO\" is not a number or a name (JAN-DEC)");
        assert_eq!(
            err("0 0 * * MONDAY"),
            "cron \"0 0 * * MONDAY\": day-of-week \"MONDAY\" is not a number or a name (SUN-SAT)"
        );
        assert_eq!(err("0 JAN * * *"), "cron \"0 JAN * * *\": hour \"JAN\" is not a number");
        assert!(err("99999999999 * * * *").contains("out of range 0-59"));
        assert!(err("@daily").contains("found 1"));
        // Errors are std errors.
        let e: Box<dyn std::error::Error> = Box::new(Schedule::parse("x").unwrap_err());
        assert!(e.to_string().starts_with("cron \"x\""));
    }

    #[test]
    fn search_is_fast_for_sparse_schedules() {
        // A schedule that never comes looks 8 years ahead without stepping minute by minute.
        let started = std::time::Instant::now();
        let never = Schedule::parse("59 23 31 2 *").unwrap();
        for i in 0..200 {
            assert_eq!(never.next_after(at(2024, 1, 1, 0, 0, 0) + i * 1000), None);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
