//! Calendar arithmetic on the proleptic Gregorian calendar (UTC), without a date crate.
//!
//! `days_from_civil`/`civil_from_days` are Howard Hinnant's algorithms
//! (<https://howardhinnant.github.io/date_algorithms.html>).

pub(crate) const HOUR_S: f64 = 3600.0;
#[cfg(test)]
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
}
