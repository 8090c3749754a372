//! Offline replay: a `timestamp,value` history through the same model as the daemon.
//!
//! Input: CSV (RFC 4180: quoted fields, embedded commas and quotes) with a header naming a
//! `timestamp` column (also accepted: `timestamps`, `time`) and a `value` column, in any position
//! (other columns are ignored); timestamps as RFC 3339 / ISO 8601 with an offset
//! (`2024-03-10T02:30:00-05:00`, `...Z`), as a civil date and time taken as UTC
//! (`YYYY-MM-DD HH:MM[:SS[.fff]]`, `T` or a space between), or as unix seconds (integer or
//! float); rows oldest first at a regular interval (inferred: the median step of the first rows;
//! gaps are fine, the odd duplicate or out-of-order row too). An empty value, `nan` or `null` is a
//! gap: echoed with score 0 and the current state. Blank lines are skipped.
//!
//! Streaming: the first [`PREFIX_ROWS`] rows are held to infer the interval (and refuse a file
//! that runs newest first before anything is written); then every row is scored and written as
//! it is read, in constant memory. A bad row stops the replay with its line number.
//!
//! Timestamps that are only a row index (integers from near zero at a constant step, as some
//! benchmark exports have) carry no calendar: each row is taken as an hour, or, when the values
//! show a clear period of P rows (autocorrelation), P rows as a day, so the daily profile can
//! learn the rhythm.
//!
//! Output: `timestamp,value,anomaly_score,state`, timestamps and values echoed as given, score
//! in [0, 1] with four decimals. Hysteresis is counted in time as in the daemon (raise after
//! 3 s, clear after 10 s), so at a minute or more per point a state follows each point; the
//! warm-up is a fixed [`DETECT_WARMUP`] points (the replay never knows how long the series is).

use std::io::{Read, Write};

use thiserror::Error;

use super::{DetectorConfig, Series};

/// Rows held before the first output: enough for the median step and a period of up to 500
/// rows (the autocorrelation looks at a third of them).
const PREFIX_ROWS: usize = 2000;

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

/// Unix seconds of a timestamp: unix seconds as a number, an instant with an offset (RFC 3339,
/// ISO 8601), or a civil date and time with hours and minutes at least (UTC).
pub(crate) fn parse_timestamp(s: &str) -> Option<f64> {
    // The CSV reader unquotes fields; a stray pair of quotes around one is tolerated too.
    let s = s.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
        .trim();
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    // A date alone is no time of day.
    if !s.contains(':') {
        return None;
    }
    let ts = match s.parse::<jiff::Timestamp>() {
        Ok(ts) => ts,
        Err(_) => s
            .parse::<jiff::civil::DateTime>()
            .ok()?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp(),
    };
    Some(ts.as_second() as f64 + f64::from(ts.subsec_nanosecond()) / 1e9)
}

/// One data row, its fields as given.
struct Row {
    line: usize,
    ts: String,
    t: f64,
    raw: String,
    value: f64,
}

/// Where the columns are, and how to read a record into a [`Row`].
struct Columns {
    ts: usize,
    value: usize,
    need: usize,
}

impl Columns {
    fn header(rec: &csv::StringRecord, line: usize) -> Result<Self, CsvError> {
        let cols: Vec<String> = rec
            .iter()
            .map(|c| c.trim_start_matches('\u{feff}').trim().to_lowercase())
            .collect();
        let find = |names: &[&str]| cols.iter().position(|c| names.contains(&c.as_str()));
        match (find(&["timestamp", "timestamps", "time"]), find(&["value"])) {
            (Some(ts), Some(value)) => Ok(Self {
                ts,
                value,
                need: ts.max(value) + 1,
            }),
            _ => Err(row_err(
                line,
                format!(
                    "expected a header `timestamp,value`, found `{}`",
                    cols.join(",")
                ),
            )),
        }
    }

    fn row(&self, rec: &csv::StringRecord, line: usize) -> Result<Row, CsvError> {
        if rec.len() < self.need {
            return Err(row_err(
                line,
                format!(
                    "expected at least {} columns, found {}",
                    self.need,
                    rec.len()
                ),
            ));
        }
        let ts = rec[self.ts].trim();
        let t = parse_timestamp(ts).ok_or_else(|| {
            row_err(
                line,
                format!(
                    "bad timestamp `{ts}`: expected RFC 3339 (2024-03-10T02:30:00+01:00), \
                     YYYY-MM-DD HH:MM:SS (UTC) or unix seconds"
                ),
            )
        })?;
        let raw = rec[self.value].trim();
        let value = if raw.is_empty()
            || raw.eq_ignore_ascii_case("nan")
            || raw.eq_ignore_ascii_case("null")
        {
            f64::NAN
        } else {
            match raw.parse::<f64>() {
                Ok(x) if x.is_finite() => x,
                _ => {
                    return Err(row_err(
                        line,
                        format!("bad value `{raw}`: expected a number"),
                    ));
                }
            }
        };
        Ok(Row {
            line,
            ts: ts.to_string(),
            t,
            raw: raw.to_string(),
            value,
        })
    }
}

/// Echoes a field, quoted when it must be (it held a comma, a quote or a line break).
fn field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// Replays `input` (CSV `timestamp,value`) through the detector at `sensitivity` (1 = the
/// daemon's default) and writes `timestamp,value,anomaly_score,state` to `out`, row by row.
pub fn detect_csv(input: impl Read, mut out: impl Write, sensitivity: f64) -> Result<(), CsvError> {
    if !(sensitivity.is_finite() && sensitivity > 0.0) {
        return Err(row_err(
            0,
            format!("sensitivity must be positive, not {sensitivity}"),
        ));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut rec = csv::StringRecord::new();
    let mut next = |rec: &mut csv::StringRecord| -> Result<Option<usize>, CsvError> {
        match reader.read_record(rec) {
            Ok(true) => Ok(Some(rec.position().map_or(0, |p| p.line() as usize))),
            Ok(false) => Ok(None),
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                match e.into_kind() {
                    csv::ErrorKind::Io(e) => Err(CsvError::Io(e)),
                    csv::ErrorKind::Utf8 { .. } => Err(row_err(line, "not UTF-8 text")),
                    other => Err(row_err(line, format!("{other:?}"))),
                }
            }
        }
    };
    let blank = |rec: &csv::StringRecord| rec.iter().all(|f| f.trim().is_empty());
    let cols = loop {
        match next(&mut rec)? {
            None => {
                return Err(row_err(
                    1,
                    "empty input: expected a header `timestamp,value`",
                ));
            }
            Some(_) if blank(&rec) => continue,
            Some(line) => break Columns::header(&rec, line)?,
        }
    };

    // The prefix: held to infer the interval, the calendar of index-only files, and the order.
    let mut rows: Vec<Row> = Vec::new();
    let mut more = true;
    while rows.len() < PREFIX_ROWS {
        match next(&mut rec)? {
            None => {
                more = false;
                break;
            }
            Some(_) if blank(&rec) => {}
            Some(line) => rows.push(cols.row(&rec, line)?),
        }
    }
    // Real exports carry the odd duplicate or out-of-order row: tolerated (in file order); a
    // file mostly going backwards (newest first) is refused.
    let back: Vec<&Row> = rows
        .windows(2)
        .filter(|w| w[1].t < w[0].t)
        .map(|w| &w[1])
        .collect();
    if let Some(first) = back.first()
        && back.len() * 100 > rows.len()
    {
        let prev = rows
            .iter()
            .take_while(|r| r.line < first.line)
            .last()
            .map_or("", |r| r.ts.as_str());
        return Err(row_err(
            first.line,
            format!(
                "timestamp `{}` is before the previous row's `{prev}`: rows must be in time \
                 order, oldest first",
                first.ts
            ),
        ));
    }
    let mut interval = infer_interval(&rows);
    // A plain row index (1, 2, 3, ...) carries no calendar: each row is taken as one hour, or,
    // when the values repeat with a clear period of P rows, P rows as one day, so the daily
    // profile can learn the rhythm.
    let index = if index_like(&rows, interval) {
        let values: Vec<f64> = rows.iter().map(|r| r.value).collect();
        let step = interval;
        interval = match period(&values) {
            Some(p) if p > 24 => 86_400.0 / p as f64,
            _ => 3600.0,
        };
        Some((rows[0].t, step))
    } else {
        None
    };
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
    let mut emit = |r: &Row| -> Result<(), CsvError> {
        let t = match index {
            Some((t0, step)) => PSEUDO_EPOCH + ((r.t - t0) / step).round() * interval,
            None => r.t,
        };
        let p = series.push(t, r.value);
        let score = if r.value.is_finite() { p.score } else { 0.0 };
        writeln!(
            w,
            "{},{},{score:.4},{}",
            field(&r.ts),
            field(&r.raw),
            p.state.as_str()
        )?;
        Ok(())
    };
    for r in &rows {
        emit(r)?;
    }
    drop(rows);
    while more {
        match next(&mut rec)? {
            None => more = false,
            Some(_) if blank(&rec) => {}
            Some(line) => emit(&cols.row(&rec, line)?)?,
        }
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
                    line: 0,
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
    #[test]
    fn rfc3339_offsets_and_quoted_columns() {
        assert_eq!(
            parse_timestamp("2023-11-15T00:13:20+02:00"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            parse_timestamp("2023-11-14 17:13:20.25-05:00"),
            Some(1_700_000_000.25)
        );
        assert_eq!(
            parse_timestamp("2023-11-14T22:13:20z"),
            Some(1_700_000_000.0)
        );
        // A real export: quoted header and fields, a comma inside a quoted column, CRLF line
        // ends, local times with their offset (a daylight-saving change in the middle).
        let dir = std::env::temp_dir().join(format!("detect-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("export.csv");
        let mut text = String::from("\"host, region\",\"Time\",\"Value\"\r\n");
        let mut t = jiff::Timestamp::from_second(1_711_846_800).unwrap(); // 2024-03-31 01:00Z
        let tz = jiff::tz::TimeZone::get("Europe/Paris")
            .unwrap_or(jiff::tz::TimeZone::fixed(jiff::tz::offset(1)));
        for i in 0..400 {
            let v = if i == 300 {
                900.0
            } else {
                100.0 + f64::from(i % 5)
            };
            let local = t.to_zoned(tz.clone());
            text.push_str(&format!(
                "\"web-1, eu\",\"{}\",\"{v}\"\r\n",
                local.strftime("%Y-%m-%dT%H:%M:%S%:z")
            ));
            t = t.checked_add(jiff::SignedDuration::from_secs(300)).unwrap();
        }
        std::fs::write(&path, &text).unwrap();
        let mut out = Vec::new();
        detect_csv(std::fs::File::open(&path).unwrap(), &mut out, 1.0).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 401);
        // Times are echoed as given; they moved by 5 minutes per row across the change (no
        // hour-long gap or overlap), so nothing but the spike stands out.
        assert!(
            lines[1].starts_with("2024-03-31T03:00:00+02:00,100,"),
            "{}",
            lines[1]
        );
        let scores: Vec<f64> = lines[1..]
            .iter()
            .map(|l| l.rsplit(',').nth(1).unwrap().parse().unwrap())
            .collect();
        assert!(scores[300] > 0.9, "{}", lines[301]);
        let others = scores.iter().enumerate().filter(|&(i, _)| i != 300);
        assert!(others.clone().all(|(_, &s)| s < 0.5), "{out}");
    }

    /// A reader of `rows` generated rows that checks, once far past the prefix, that output was
    /// already written: the replay streams instead of reading everything first.
    struct Lazy {
        row: usize,
        rows: usize,
        pending: Vec<u8>,
        written: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
    }

    impl Read for Lazy {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.pending.is_empty() {
                if self.row == 0 {
                    self.pending.extend_from_slice(b"timestamp,value\n");
                } else if self.row <= self.rows {
                    if self.row == PREFIX_ROWS + 1000 {
                        assert!(!self.written.borrow().is_empty(), "nothing written yet");
                    }
                    let line = format!("{},{}\n", 1_600_000_000 + self.row * 60, self.row % 7);
                    self.pending.extend_from_slice(line.as_bytes());
                } else {
                    return Ok(0);
                }
                self.row += 1;
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }

    struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn streams_rows() {
        let written = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let input = Lazy {
            row: 0,
            rows: PREFIX_ROWS + 5000,
            pending: Vec::new(),
            written: written.clone(),
        };
        detect_csv(input, Shared(written.clone()), 1.0).unwrap();
        let lines = written.borrow().iter().filter(|&&b| b == b'\n').count();
        assert_eq!(lines, PREFIX_ROWS + 5001);
    }

    #[test]
    fn huge_values_are_scored() {
        for scale in [1e130, 1e300, 1e-200] {
            let mut input = String::from("timestamp,value\n");
            for i in 0..400 {
                let v = if i == 300 {
                    50.0
                } else {
                    1.0 + f64::from(i % 7) * 0.01
                };
                input.push_str(&format!("{},{:e}\n", 1_600_000_000 + i * 60, v * scale));
            }
            let out = run(&input).unwrap();
            let scores: Vec<f64> = out
                .lines()
                .skip(1)
                .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
                .collect();
            assert!(scores.iter().all(|s| s.is_finite()), "{scale}: {out}");
            assert!(scores[300] > 0.9, "{scale}: {}", scores[300]);
            assert!(
                scores.iter().enumerate().all(|(i, &s)| i == 300 || s < 0.5),
                "{scale}: {out}"
            );
        }
    }
}
