//! Offline replay: a `timestamp,value` history through the same model as the daemon.
//!
//! Input: a header naming a `timestamp` column (also accepted: `timestamps`, `time`) and a
//! `value` column, in any position (other columns are ignored); rows with timestamps as
//! `YYYY-MM-DD HH:MM:SS` (UTC; also `T` between date and time, fractional seconds, a trailing
//! `Z`, or no seconds) or unix seconds (integer or float), strictly increasing, at a regular
//! interval (inferred: the median step; gaps are fine). An empty value, `nan` or `null` is a gap:
//! echoed with score 0 and the current state. Blank lines are skipped. The whole input is read
//! before any output, so a bad row fails before anything is written.
//!
//! Timestamps that are only a row index (integers from near zero at a constant step, as some
//! benchmark exports have) carry no calendar: each row is taken as an hour, or, when the values
//! show a clear period of P rows (autocorrelation), P rows as a day, so the daily profile can
//! learn the rhythm.
//!
//! Output: `timestamp,value,anomaly_score,state`, timestamps and values echoed as given, score
//! in [0, 1] with four decimals. Hysteresis is counted in time as in the daemon (raise after
//! 3 s, clear after 10 s), so at a minute or more per point a state follows each point; warm-up
//! is a twentieth of the points, between 30 and 300.

use std::io::{BufRead, Write};

use thiserror::Error;

use super::time::unix_from_civil;
use super::{DetectorConfig, Series};

#[derive(Debug, Error)]
pub enum CsvError {
    /// `line` is 1-based.
    #[error("line {line}: {reason}")]
    Row { line: usize, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn row_err(line: usize, reason: impl Into<String>) -> CsvError {
    CsvError::Row {
        line,
        reason: reason.into(),
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
        .trim()
}

fn digits<T: std::str::FromStr>(s: &str, len: usize) -> Option<T> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `YYYY-MM-DD HH:MM[:SS[.fff]]` (UTC), or unix seconds.
pub(crate) fn parse_timestamp(s: &str) -> Option<f64> {
    let s = unquote(s);
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let y: i64 = digits(d.next()?, 4)?;
    let mo: u32 = digits(d.next()?, 2)?;
    let day: u32 = digits(d.next()?, 2)?;
    if d.next().is_some() {
        return None;
    }
    let mut t = time.trim().split(':');
    let h: u32 = digits(t.next()?, 2)?;
    let mi: u32 = digits(t.next()?, 2)?;
    let sec = match t.next() {
        None => 0.0,
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            let whole: u32 = digits(whole, 2)?;
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let frac: f64 = if frac.is_empty() {
                0.0
            } else {
                format!("0.{frac}").parse().ok()?
            };
            f64::from(whole) + frac
        }
    };
    if t.next().is_some() {
        return None;
    }
    unix_from_civil(y, mo, day, h, mi, sec)
}

struct Row {
    ts: String,
    t: f64,
    raw: String,
    value: f64,
}

/// Replays `input` (CSV `timestamp,value`) through the detector at `sensitivity` (1 = the
/// daemon's default) and writes `timestamp,value,anomaly_score,state` to `out`.
pub fn detect_csv(
    input: impl BufRead,
    mut out: impl Write,
    sensitivity: f64,
) -> Result<(), CsvError> {
    if !(sensitivity.is_finite() && sensitivity > 0.0) {
        return Err(row_err(
            0,
            format!("sensitivity must be positive, not {sensitivity}"),
        ));
    }
    let mut lines = input.lines().enumerate();
    let (ts_col, val_col) = loop {
        let Some((i, line)) = lines.next() else {
            return Err(row_err(
                1,
                "empty input: expected a header `timestamp,value`",
            ));
        };
        let line = line?;
        let line = line.trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<String> = line.split(',').map(|c| unquote(c).to_lowercase()).collect();
        let find = |names: &[&str]| cols.iter().position(|c| names.contains(&c.as_str()));
        match (find(&["timestamp", "timestamps", "time"]), find(&["value"])) {
            (Some(t), Some(v)) => break (t, v),
            _ => {
                return Err(row_err(
                    i + 1,
                    format!(
                        "expected a header `timestamp,value`, found `{}`",
                        line.trim()
                    ),
                ));
            }
        }
    };
    let need = ts_col.max(val_col) + 1;

    let mut rows: Vec<Row> = Vec::new();
    // Real exports carry the odd duplicate or out-of-order row: tolerated (in file order);
    // a file mostly going backwards (newest first) is refused.
    let mut backwards: Option<(usize, String, String)> = None;
    let mut back_count = 0usize;
    for (i, line) in lines {
        let line = line?;
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() < need {
            return Err(row_err(
                n,
                format!("expected at least {need} columns, found {}", fields.len()),
            ));
        }
        let ts = fields[ts_col].trim();
        let t = parse_timestamp(ts).ok_or_else(|| {
            row_err(
                n,
                format!("bad timestamp `{ts}`: expected YYYY-MM-DD HH:MM:SS or unix seconds"),
            )
        })?;
        if let Some(prev) = rows.last()
            && t < prev.t
        {
            backwards.get_or_insert((n, ts.to_string(), prev.ts.clone()));
            back_count += 1;
        }
        let raw = fields[val_col].trim();
        let v = unquote(raw);
        let value =
            if v.is_empty() || v.eq_ignore_ascii_case("nan") || v.eq_ignore_ascii_case("null") {
                f64::NAN
            } else {
                match v.parse::<f64>() {
                    Ok(x) if x.is_finite() => x,
                    _ => return Err(row_err(n, format!("bad value `{raw}`: expected a number"))),
                }
            };
        rows.push(Row {
            ts: ts.to_string(),
            t,
            raw: raw.to_string(),
            value,
        });
    }

    if let Some((n, ts, prev)) = backwards
        && back_count * 100 > rows.len()
    {
        return Err(row_err(
            n,
            format!(
                "timestamp `{ts}` is before the previous row's `{prev}`: rows must be in time \
                 order, oldest first"
            ),
        ));
    }
    let mut interval = infer_interval(&rows);
    // A plain row index (1, 2, 3, ...) carries no calendar: each row is taken as one hour, or,
    // when the values repeat with a clear period of P rows, P rows as one day, so the daily
    // profile can learn the rhythm.
    if index_like(&rows, interval) {
        let t0 = rows[0].t;
        let step = interval;
        let values: Vec<f64> = rows.iter().map(|r| r.value).collect();
        interval = match period(&values) {
            Some(p) if p > 24 => 86_400.0 / p as f64,
            _ => 3600.0,
        };
        for r in &mut rows {
            r.t = PSEUDO_EPOCH + ((r.t - t0) / step).round() * interval;
        }
    }
    let cfg = DetectorConfig {
        sensitivity,
        raise_after: (3.0 / interval).ceil().max(1.0) as u32,
        clear_after: (10.0 / interval).ceil().max(1.0) as u32,
        warmup: DETECT_WARMUP,
        ..DetectorConfig::default()
    };
    let mut series = Series::new(&cfg, interval, false);
    let mut w = std::io::BufWriter::new(&mut out);
    writeln!(w, "timestamp,value,anomaly_score,state")?;
    for r in &rows {
        let p = series.push(r.t, r.value);
        let score = if r.value.is_finite() { p.score } else { 0.0 };
        writeln!(w, "{},{},{score:.4},{}", r.ts, r.raw, p.state.as_str())?;
    }
    w.flush()?;
    Ok(())
}

/// Points before the first score: fixed, so the replay is online (it never knows the length
/// of the series).
const DETECT_WARMUP: u32 = 150;

/// Where rows of an index-only file are placed in time: 2024-01-01 00:00 UTC, a Monday.
const PSEUDO_EPOCH: f64 = 1_704_067_200.0;

/// Integer timestamps starting before 1970-01-12 at a constant step: a row index, not a time.
fn index_like(rows: &[Row], step: f64) -> bool {
    rows.len() >= 2
        && rows[0].t.abs() < 1e6
        && rows.iter().all(|r| r.t.fract() == 0.0)
        && rows.windows(2).all(|w| w[1].t - w[0].t == step)
}

/// The dominant period of a series in rows (4 to 500, at most a third of the first 2000 rows),
/// from the autocorrelation of the linearly detrended values: the shortest lag whose
/// autocorrelation is a local peak within 90% of the best one, if that best is at least 0.3.
fn period(values: &[f64]) -> Option<usize> {
    let mut x: Vec<f64> = Vec::with_capacity(values.len().min(2000));
    let mut last = 0.0;
    for &v in values.iter().take(2000) {
        last = if v.is_finite() { v } else { last };
        x.push(last);
    }
    let n = x.len();
    let max_lag = (n / 3).min(500);
    if max_lag < 8 {
        return None;
    }
    // Least-squares line through (i, x[i]), removed.
    let nf = n as f64;
    let mean_i = (nf - 1.0) / 2.0;
    let mean_x = x.iter().sum::<f64>() / nf;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, v) in x.iter().enumerate() {
        let di = i as f64 - mean_i;
        sxy += di * (v - mean_x);
        sxx += di * di;
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    for (i, v) in x.iter_mut().enumerate() {
        *v -= mean_x + slope * (i as f64 - mean_i);
    }
    let var: f64 = x.iter().map(|v| v * v).sum();
    if var <= 0.0 {
        return None;
    }
    let acf: Vec<f64> = (0..=max_lag + 1)
        .map(|lag| x.iter().zip(&x[lag..]).map(|(a, b)| a * b).sum::<f64>() / var)
        .collect();
    let peaks: Vec<usize> = (4..=max_lag)
        .filter(|&l| acf[l] > acf[l - 1] && acf[l] >= acf[l + 1])
        .collect();
    let best = peaks
        .iter()
        .map(|&l| acf[l])
        .fold(f64::NEG_INFINITY, f64::max);
    if best < 0.3 {
        return None;
    }
    peaks.into_iter().find(|&l| acf[l] >= 0.9 * best)
}

/// Median positive step between consecutive timestamps (1 s when unknown).
fn infer_interval(rows: &[Row]) -> f64 {
    let mut steps: Vec<f64> = rows
        .windows(2)
        .map(|w| w[1].t - w[0].t)
        .filter(|&d| d > 0.0)
        .collect();
    if steps.is_empty() {
        return 1.0;
    }
    let mid = steps.len() / 2;
    let (_, m, _) = steps.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str) -> Result<String, CsvError> {
        let mut out = Vec::new();
        detect_csv(input.as_bytes(), &mut out, 1.0)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn err_line(input: &str) -> (usize, String) {
        match run(input) {
            Err(CsvError::Row { line, reason }) => (line, reason),
            other => panic!("expected a row error, got {other:?}"),
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            parse_timestamp("2023-11-14 22:13:20"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            parse_timestamp("2023-11-14T22:13:20Z"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            parse_timestamp("\"2023-11-14 22:13\""),
            Some(1_699_999_980.0)
        );
        assert_eq!(
            parse_timestamp("2023-11-14 22:13:20.5"),
            Some(1_700_000_000.5)
        );
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000.0));
        assert_eq!(parse_timestamp("1700000000.25"), Some(1_700_000_000.25));
        for bad in [
            "2023-13-01 00:00:00",
            "2023-02-29 00:00:00",
            "23-11-14 22:13:20",
            "x",
            "2023-11-14",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(err_line("").0, 1);
        let (l, r) = err_line("time_stamp,val\n1,2\n");
        assert_eq!(l, 1);
        assert!(r.contains("header"), "{r}");
        let (l, r) = err_line("timestamp,value\n1,2\n2,3\nabc,4\n");
        assert_eq!(l, 4);
        assert!(r.contains("bad timestamp `abc`"), "{r}");
        let (l, r) = err_line("timestamp,value\n1,2\n2,x\n");
        assert_eq!(l, 3);
        assert!(r.contains("bad value `x`"), "{r}");
        let (l, r) = err_line("timestamp,value\n1,2\n\n5,3\n4,3\n");
        assert_eq!(l, 5);
        assert!(r.contains("oldest first"), "{r}");
        // One duplicate among many rows is fine.
        let mut ok = String::from("timestamp,value\n");
        for i in 0..200 {
            ok.push_str(&format!("{},1\n", i.max(1)));
        }
        assert_eq!(run(&ok).unwrap().lines().count(), 201);
        let (l, _) = err_line("timestamp,value\n1,2\n2\n");
        assert_eq!(l, 3);
        let e = run("timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:00:61,1\n").unwrap_err();
        assert_eq!(e.to_string().split(':').next(), Some("line 3"));
    }

    #[test]
    fn periods_of_index_files() {
        let wave = |p: f64| -> Vec<f64> {
            (0..1500)
                .map(|i| (std::f64::consts::TAU * f64::from(i) / p).sin() + 0.001 * f64::from(i))
                .collect()
        };
        assert_eq!(period(&wave(24.0)), Some(24));
        assert_eq!(period(&wave(50.0)), Some(50));
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<f64> = (0..1500)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 1000) as f64
            })
            .collect();
        assert_eq!(period(&noise), None);
        let rows = |ts: &[f64]| -> Vec<Row> {
            ts.iter()
                .map(|&t| Row {
                    ts: String::new(),
                    t,
                    raw: String::new(),
                    value: 0.0,
                })
                .collect()
        };
        assert!(index_like(&rows(&[1.0, 2.0, 3.0]), 1.0));
        assert!(!index_like(&rows(&[1.6e9, 1.6e9 + 60.0]), 60.0));
        assert!(!index_like(&rows(&[1.0, 2.5, 3.0]), 1.0));
    }

    #[test]
    fn output_echoes_and_scores() {
        let mut input = String::from("value,timestamp,is_anomaly\n");
        for i in 0..400 {
            let v = if i == 300 {
                500.0
            } else {
                100.0 + f64::from(i % 7)
            };
            input.push_str(&format!("{v},{},0\n", 1_600_000_000 + i * 300));
        }
        input.push_str(",1600120000,0\n");
        let out = run(&input).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "timestamp,value,anomaly_score,state");
        assert_eq!(lines.len(), 402);
        assert_eq!(lines[1], "1600000000,100,0.0000,ok");
        let spike: Vec<&str> = lines[301].split(',').collect();
        assert_eq!(spike[1], "500");
        assert!(spike[2].parse::<f64>().unwrap() > 0.9, "{}", lines[301]);
        assert_eq!(spike[3], "critical");
        assert!(lines[401].starts_with("1600120000,,0.0000,"));
    }
}
