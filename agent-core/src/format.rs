//! Numbers for people: the one place that decides how a value is written on a screen or in a
//! sentence (`watch`'s frames and exit report, anomaly descriptions, `compare`, `run`'s text
//! output). Wire formats (StatsD, Riemann, JSON) keep their own exact encoders in `sinks/` and
//! `serde`: nothing here goes over the wire.
//!
//! One rule for every value: three significant digits, rounded first, so the unit or prefix is
//! picked on the number actually shown (999.96 µs is `1 ms`, not `1000 µs`). Two styles of it:
//! - [`Style::Column`] keeps trailing zeros so the digits of a table column line up (`1.00`,
//!   `0.300`) and writes whole numbers up to 99,999 before switching to k/M/G.
//! - [`Style::Prose`] drops trailing zeros (`7.7 ms`, `3 MiB/s`) and switches to k/M/G at 10,000.
//!
//! Values under 0.001, which three decimals would show as zero, are written as `1.50e-4`.
//! Non-finite values are `-`.

/// How a number sits on the page (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Aligned table columns: trailing zeros kept, whole numbers up to 99,999.
    Column,
    /// Sentences: trailing zeros dropped, k/M/G from 10,000.
    Prose,
}

impl Style {
    fn keep_zeros(self) -> bool {
        self == Style::Column
    }

    /// Plain numbers are written whole below this, with k/M/G from it.
    fn whole_below(self) -> f64 {
        match self {
            Style::Column => 1e5,
            Style::Prose => 1e4,
        }
    }
}

/// `v` rounded to three significant digits.
fn round3(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    format!("{v:.2e}").parse().unwrap_or(v)
}

/// Three significant digits, no prefix: `0.256`, `1.02`, `16.4`, `131`, `48296`.
pub fn sig(v: f64, style: Style) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let r = round3(v);
    let a = r.abs();
    if a == 0.0 {
        return "0".into();
    }
    if a < 0.001 {
        return format!("{r:.2e}");
    }
    if a >= 1000.0 {
        // Whole numbers stay exact: 48296, not 48300.
        return format!("{v:.0}");
    }
    // 2 decimals at 1..10, 3 below 1 (at most: a column keeps its width).
    let decimals = (2 - a.log10().floor() as i32).clamp(0, 3) as usize;
    let s = format!("{r:.decimals$}");
    let s = if !style.keep_zeros() && s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".into() } else { s }
}

/// `v` with the largest unit of `steps` (divisor, unit) it reaches once rounded, e.g.
/// `(1e3, "ms")` for 48,100 µs: `48.1 ms`, with `sep` between number and unit. The first step
/// applies below all others.
fn scaled(v: f64, steps: &[(f64, &str)], style: Style, sep: &str) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let &(div, unit) = steps
        .iter()
        .rev()
        .find(|(d, _)| round3(v / d).abs() >= 1.0)
        .unwrap_or(&steps[0]);
    format!("{}{sep}{unit}", sig(v / div, style))
}

/// A plain number: [`sig`], whole up to the style's limit, then k/M/G: `48296`, `134k`, `1.02M`
/// in columns; `1234`, `25k`, `0.53` in prose.
pub fn number(v: f64, style: Style) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = round3(v).abs();
    if a < 1000.0 {
        return sig(v, style);
    }
    if v.abs().round() < style.whole_below() {
        return format!("{v:.0}");
    }
    let prefixes = [(1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "G")];
    scaled(v, &prefixes, style, "")
}

/// Microseconds as µs, ms or s: `812 µs`, `48.1 ms`, `2.5 s`.
pub fn micros(v: f64, style: Style) -> String {
    scaled(v, &[(1.0, "µs"), (1e3, "ms"), (1e6, "s")], style, " ")
}

/// Bytes as B, KiB, MiB, GiB or TiB: `1.5 KiB` in prose, `2.00 GiB` in columns. Below 1 KiB a
/// column shows whole bytes (`512 B`): a byte count has no fraction.
pub fn bytes(v: f64, style: Style) -> String {
    const KIB: f64 = 1024.0;
    if style == Style::Column && v.is_finite() && round3(v).abs() < KIB {
        return format!("{:.0} B", v.max(0.0));
    }
    scaled(
        v,
        &[
            (1.0, "B"),
            (KIB, "KiB"),
            (KIB * KIB, "MiB"),
            (KIB * KIB * KIB, "GiB"),
            (KIB * KIB * KIB * KIB, "TiB"),
        ],
        style,
        " ",
    )
}

/// A percentage with its sign: `12.5%`.
pub fn percent(v: f64, style: Style) -> String {
    format!("{}%", sig(v, style))
}

/// A count, or a count per second, in a column: whole numbers exactly up to 9,999,999 (a person
/// compares calls/s to what they know they sent), one decimal for a fraction below 100, beyond
/// that [`number`]'s k/M/G.
pub fn count(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 9_999_999.5 {
        number(v, Style::Column)
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// At most `max` decimals, trailing zeros dropped: `1.5`, `2`, `0` for -0.0001 with 3. For lists
/// read by people and scripts alike (`run --output text`), where rounding to three significant
/// digits would lose what a script compares.
pub fn decimals(v: f64, max: usize) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let s = format!("{v:.max$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    // -0.0001 rounds to "-0".
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// A ratio as `6.2` or, from 10 on, `12`: for `6.2x its usual`.
pub fn ratio(r: f64) -> String {
    if r.abs() >= 10.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// Seconds in words, rounded to what matters at that length: `12 s`, `4 min`, `2 h 5 min`,
/// `3 d 4 h`.
pub fn seconds_words(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", (s + 30) / 60),
        7200..172_800 => {
            let m = (s + 30) / 60;
            if m.is_multiple_of(60) {
                format!("{} h", m / 60)
            } else {
                format!("{} h {} min", m / 60, m % 60)
            }
        }
        _ => format!("{} d {} h", s / 86_400, (s % 86_400 + 1800) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Style::{Column, Prose};

    #[test]
    fn columns_keep_their_digits() {
        assert_eq!(number(0.0, Column), "0");
        assert_eq!(number(0.256, Column), "0.256");
        assert_eq!(number(0.06, Column), "0.060");
        assert_eq!(number(0.3, Column), "0.300");
        assert_eq!(number(1.024, Column), "1.02");
        assert_eq!(number(16.384, Column), "16.4");
        assert_eq!(number(42.0, Column), "42.0");
        assert_eq!(number(131.07, Column), "131");
        assert_eq!(number(8388.608, Column), "8389");
        assert_eq!(number(48_296.4, Column), "48296");
        assert_eq!(number(134_217.7, Column), "134k");
        assert_eq!(number(1_020_000.0, Column), "1.02M");
        assert_eq!(number(-2.5, Column), "-2.50");
        assert_eq!(number(f64::NAN, Column), "-");
    }

    #[test]
    fn prose_drops_zeros_and_shortens_sooner() {
        assert_eq!(number(0.53, Prose), "0.53");
        assert_eq!(number(1234.0, Prose), "1234");
        assert_eq!(number(25_000.0, Prose), "25k");
        assert_eq!(number(48_296.4, Prose), "48.3k");
        assert_eq!(number(0.0, Prose), "0");
        assert_eq!(sig(-0.0001, Prose), "-1.00e-4");
        assert_eq!(sig(0.005, Prose), "0.005");
    }

    #[test]
    fn rounding_picks_the_unit_shown() {
        // Rounded before choosing: never `1000 µs` or `100.0`.
        assert_eq!(micros(999.96, Prose), "1 ms");
        assert_eq!(sig(99.96, Column), "100");
        assert_eq!(sig(9.996, Column), "10.0");
        assert_eq!(number(999_999.0, Column), "1.00M");
    }

    #[test]
    fn units() {
        assert_eq!(micros(48_100.0, Prose), "48.1 ms");
        assert_eq!(micros(7_700.0, Prose), "7.7 ms");
        assert_eq!(micros(812.0, Prose), "812 µs");
        assert_eq!(micros(2_500_000.0, Prose), "2.5 s");
        assert_eq!(micros(0.0, Prose), "0 µs");
        assert_eq!(bytes(3_145_728.0, Prose), "3 MiB");
        assert_eq!(bytes(1536.0, Prose), "1.5 KiB");
        assert_eq!(bytes(0.0, Column), "0 B");
        assert_eq!(bytes(512.0, Column), "512 B");
        assert_eq!(bytes(1536.0 * 1024.0, Column), "1.50 MiB");
        assert_eq!(bytes(2.0 * (1u64 << 30) as f64, Column), "2.00 GiB");
        assert_eq!(percent(12.5, Prose), "12.5%");
    }

    #[test]
    fn counts_are_exact() {
        assert_eq!(count(50_000.0), "50000");
        assert_eq!(count(2.5), "2.5");
        assert_eq!(count(3.0), "3");
        assert_eq!(count(123.4), "123");
        assert_eq!(count(12_345_678.0), "12.3M");
    }

    #[test]
    fn decimals_and_ratios_and_words() {
        assert_eq!(decimals(1.5, 3), "1.5");
        assert_eq!(decimals(2.0, 3), "2");
        assert_eq!(decimals(0.0001, 3), "0");
        assert_eq!(decimals(-0.0001, 3), "0");
        assert_eq!(decimals(1234.56789, 3), "1234.568");
        assert_eq!(ratio(6.25), "6.2");
        assert_eq!(ratio(12.4), "12");
        assert_eq!(seconds_words(12.0), "12 s");
        assert_eq!(seconds_words(300.0), "5 min");
        assert_eq!(seconds_words(7500.0), "2 h 5 min");
        assert_eq!(seconds_words(7200.0), "2 h");
        assert_eq!(seconds_words(3.0 * 86_400.0 + 4.0 * 3600.0), "3 d 4 h");
    }
}
