//! Calendar arithmetic on the proleptic Gregorian calendar (UTC), and the local time the
//! daily and weekly rhythms follow ([`LocalTime`]: the host's time zone with daylight saving,
//! from `jiff` and the system tz database, or a fixed offset).
//!
//! `days_from_civil`/`civil_from_days` are Howard Hinnant's algorithms
//! (<https://howardhinnant.github.io/date_algorithms.html>).

pub(crate) const HOUR_S: f64 = 3600.0;
const DAY_S: i64 = 86_400;

/// Days since 1970-01-01 of the date `y-m-d` (`m` in 1..=12, `d` in 1..=31).
#[cfg(test)]
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The date `(y, m, d)` of a day counted from 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Unix seconds of a civil date and time (UTC); `None` when a field is out of range.
#[cfg(test)]
pub(crate) fn unix_from_civil(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: f64) -> Option<f64> {
    if !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || !(0.0..61.0).contains(&s)
    {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some((days * DAY_S + i64::from(h) * 3600 + i64::from(mi) * 60) as f64 + s)
}

/// Hours since the epoch of `t` (unix seconds) shifted by `offset_s` (local time).
pub(crate) fn hour_index(t: f64, offset_s: f64) -> i64 {
    ((t + offset_s) / HOUR_S).floor() as i64
}

/// Hour of the day, 0..24.
pub(crate) fn hour_of_day(hour: i64) -> usize {
    hour.rem_euclid(24) as usize
}

/// Day of the week, 0 = Monday (1970-01-01 was a Thursday).
pub(crate) fn weekday(hour: i64) -> usize {
    (hour.div_euclid(24) + 3).rem_euclid(7) as usize
}

/// Hour of the week, 0..168, Monday 00:00 first.
pub(crate) fn hour_of_week(hour: i64) -> usize {
    weekday(hour) * 24 + hour_of_day(hour)
}

/// The local time daily and weekly rhythms and descriptions follow: a time zone (with its
/// daylight-saving rules) or a fixed offset east of UTC (`anomaly.utc_offset_s`, an override).
#[derive(Clone, Debug, PartialEq)]
pub enum LocalTime {
    Fixed(i32),
    Zone(jiff::tz::TimeZone),
}

impl LocalTime {
    /// The host's time zone (`TZ`, else `/etc/localtime`); UTC, with one warning, when it
    /// cannot be read.
    pub fn system() -> LocalTime {
        match jiff::tz::TimeZone::try_system() {
            Ok(tz) => LocalTime::Zone(tz),
            Err(e) => {
                tracing::warn!(
                    "cannot read the host's time zone ({e}); daily rhythms follow UTC (set anomaly.utc_offset_s to override)"
                );
                LocalTime::Fixed(0)
            }
        }
    }

    /// `offset_s` when given (the configuration's override), else the host's zone.
    pub fn from_override(offset_s: Option<i32>) -> LocalTime {
        offset_s.map_or_else(LocalTime::system, LocalTime::Fixed)
    }

    /// A zone from a POSIX TZ string (`CET-1CEST,M3.5.0,M10.5.0/3`) or an IANA name.
    pub fn named(tz: &str) -> Result<LocalTime, String> {
        jiff::tz::TimeZone::posix(tz)
            .or_else(|_| jiff::tz::TimeZone::get(tz))
            .map(LocalTime::Zone)
            .map_err(|e| format!("unknown time zone `{tz}`: {e}"))
    }

    /// Seconds east of UTC at unix time `t` (daylight saving included).
    pub fn offset_s(&self, t: f64) -> i32 {
        match self {
            LocalTime::Fixed(o) => *o,
            LocalTime::Zone(tz) => {
                let secs = if t.is_finite() { t.floor() as i64 } else { 0 };
                jiff::Timestamp::from_second(secs).map_or(0, |ts| tz.to_offset(ts).seconds())
            }
        }
    }

    /// `HH:MM:SS` of unix time `t` in this local time.
    pub fn clock(&self, t: f64) -> String {
        let s = (t.floor() as i64 + i64::from(self.offset_s(t))).rem_euclid(DAY_S);
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }
}

pub(crate) const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for z in (-800_000..800_000).step_by(37) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn known_instants() {
        // 2023-11-14 22:13:20 UTC, a Tuesday.
        let t = unix_from_civil(2023, 11, 14, 22, 13, 20.0).unwrap();
        assert_eq!(t, 1_700_000_000.0);
        let h = hour_index(t, 0.0);
        assert_eq!(hour_of_day(h), 22);
        assert_eq!(WEEKDAYS[weekday(h)], "Tue");
        assert_eq!(hour_of_week(h), 24 + 22);
        // One hour east of UTC it is already 23:13.
        assert_eq!(hour_of_day(hour_index(t, 3600.0)), 23);
        assert!(unix_from_civil(2023, 2, 29, 0, 0, 0.0).is_none());
        assert!(unix_from_civil(2024, 2, 29, 0, 0, 0.0).is_some());
        assert!(unix_from_civil(2024, 13, 1, 0, 0, 0.0).is_none());
        assert!(unix_from_civil(2024, 1, 1, 24, 0, 0.0).is_none());
    }

    /// Central European time across the 2024 changes (31 March 02:00 CET -> 03:00 CEST, 27
    /// October 03:00 CEST -> 02:00 CET), given as a POSIX rule so the host's TZ and tz
    /// database play no part.
    #[test]
    fn local_time_follows_daylight_saving() {
        let berlin = LocalTime::named("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let before = unix_from_civil(2024, 3, 31, 0, 30, 0.0).unwrap(); // 01:30 CET
        let after = unix_from_civil(2024, 3, 31, 1, 30, 0.0).unwrap(); // 03:30 CEST
        assert_eq!(berlin.offset_s(before), 3600);
        assert_eq!(berlin.offset_s(after), 7200);
        assert_eq!(berlin.clock(before), "01:30:00");
        assert_eq!(berlin.clock(after), "03:30:00");
        // The local hour-of-day slot a point folds into: 14:00 local is slot 14 in winter and
        // in summer, though it is 13:00 UTC in one and 12:00 UTC in the other.
        let winter = unix_from_civil(2024, 1, 9, 13, 10, 0.0).unwrap();
        let summer = unix_from_civil(2024, 7, 9, 12, 10, 0.0).unwrap();
        for t in [winter, summer] {
            let h = hour_index(t, f64::from(berlin.offset_s(t)));
            assert_eq!(hour_of_day(h), 14);
            assert_eq!(WEEKDAYS[weekday(h)], "Tue");
        }
        // Back to CET: 02:30 local happens twice, an hour apart.
        let first = unix_from_civil(2024, 10, 27, 0, 30, 0.0).unwrap();
        let second = first + 3600.0;
        assert_eq!(berlin.clock(first), "02:30:00");
        assert_eq!(berlin.clock(second), "02:30:00");
        assert_eq!(berlin.offset_s(second), 3600);
        // A fixed override ignores the rules.
        assert_eq!(LocalTime::Fixed(-18_000).offset_s(summer), -18_000);
        assert_eq!(LocalTime::Fixed(0).clock(winter), "13:10:00");
        assert!(LocalTime::named("Not/AZone").is_err());
    }
}
