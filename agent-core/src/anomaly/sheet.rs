//! Reference sheets: what a known-good period looked like, per key, and what deviates from it.
//!
//! [`SheetBuilder`] takes snapshots and gives a [`Sheet`]: per key the count, mean, standard
//! deviation, min, max, quantiles (p1, p10, p50, p90, p99, from a log-bucketed sketch accurate
//! to 2%), and, when the recording spans a day or more, an hour-of-day profile of means.
//! Counters are kept as per-interval values and compared per second; a counter missing from a
//! snapshot counted 0 in it. [`compare`] puts a live sheet beside a reference one, worst first.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::State;
use super::describe::{format_value, metric_label};
use super::persist::{LoadError, write_atomic};
use super::time::{hour_index, hour_of_day};
use crate::format;
use crate::snapshot::{Kind, Snapshot};

const FORMAT: &str = "ebpf-agent-sheet";
const VERSION: u32 = 1;
/// Keys a sheet holds at most (further keys are ignored).
const MAX_KEYS: usize = 16_384;
/// Sketch buckets grow by this factor: quantiles within ±2%.
const GAMMA: f64 = 1.04;

/// Log-bucketed quantile sketch (DDSketch-like), bounded by the values' dynamic range.
#[derive(Clone, Debug, Default)]
struct Sketch {
    pos: BTreeMap<i16, u64>,
    neg: BTreeMap<i16, u64>,
    zero: u64,
}

impl Sketch {
    fn bucket(x: f64) -> i16 {
        (x.ln() / GAMMA.ln()).ceil().clamp(-30_000.0, 30_000.0) as i16
    }

    fn value(i: i16) -> f64 {
        2.0 * GAMMA.powi(i32::from(i)) / (GAMMA + 1.0)
    }

    fn add(&mut self, x: f64, n: u64) {
        if n == 0 {
            return;
        }
        if x.abs() < 1e-12 {
            self.zero += n;
        } else if x > 0.0 {
            *self.pos.entry(Self::bucket(x)).or_default() += n;
        } else {
            *self.neg.entry(Self::bucket(-x)).or_default() += n;
        }
    }

    fn quantile(&self, q: f64, count: u64) -> f64 {
        if count == 0 {
            return f64::NAN;
        }
        let rank = (q * (count - 1) as f64).round() as u64;
        let mut seen = 0;
        for (&i, &c) in self.neg.iter().rev() {
            seen += c;
            if seen > rank {
                return -Self::value(i);
            }
        }
        seen += self.zero;
        if seen > rank {
            return 0.0;
        }
        for (&i, &c) in &self.pos {
            seen += c;
            if seen > rank {
                return Self::value(i);
            }
        }
        f64::NAN
    }
}

#[derive(Clone, Debug)]
struct Acc {
    name: String,
    tags: Vec<(String, String)>,
    kind: Kind,
    count: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    sketch: Sketch,
    hours: [(u64, f64); 24],
    /// Snapshots this key appeared in, per hour of day, and the last one.
    seen: [u64; 24],
    last: u64,
}

impl Acc {
    fn add(&mut self, x: f64, n: u64, hour: Option<usize>) {
        if n == 0 {
            return;
        }
        // Welford, merging n equal values at once.
        let c0 = self.count as f64;
        self.count += n;
        let c = self.count as f64;
        let d = x - self.mean;
        self.mean += d * n as f64 / c;
        self.m2 += d * d * c0 * n as f64 / c;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.sketch.add(x, n);
        if let Some(h) = hour {
            self.hours[h].0 += n;
            self.hours[h].1 += x * n as f64;
        }
    }
}

/// Builds a [`Sheet`] from snapshots.
#[derive(Clone, Debug, Default)]
pub struct SheetBuilder {
    host: String,
    start: Option<f64>,
    end: f64,
    interval_s: f64,
    snapshots: u64,
    /// Snapshots per hour of day (UTC): where absent counters count zeros.
    hours: [u64; 24],
    keys: HashMap<String, Acc>,
}

impl SheetBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, snap: &Snapshot) {
        let t = snap.unix_seconds();
        self.start.get_or_insert(t - snap.interval.as_secs_f64());
        self.end = self.end.max(t);
        self.interval_s = snap.interval.as_secs_f64();
        if self.host.is_empty() {
            self.host = snap.host.clone();
        }
        self.snapshots += 1;
        let h = hour_of_day(hour_index(t, 0.0));
        self.hours[h] += 1;
        for m in &snap.metrics {
            // agent.* describe the recording agent itself (its CPU, its own events), not the
            // host: a deploy is not judged by them.
            if !m.value.is_finite() || m.name.starts_with("agent.") {
                continue;
            }
            let key = super::key_string(&m.name, &m.tags);
            if !self.keys.contains_key(&key) {
                if self.keys.len() >= MAX_KEYS {
                    continue;
                }
                self.keys.insert(
                    key.clone(),
                    Acc {
                        name: m.name.to_string(),
                        tags: m
                            .tags
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.clone()))
                            .collect(),
                        kind: m.kind,
                        count: 0,
                        mean: 0.0,
                        m2: 0.0,
                        min: f64::INFINITY,
                        max: f64::NEG_INFINITY,
                        sketch: Sketch::default(),
                        hours: [(0, 0.0); 24],
                        seen: [0; 24],
                        last: 0,
                    },
                );
            }
            if let Some(acc) = self.keys.get_mut(&key) {
                if acc.last == self.snapshots {
                    continue; // the same key twice in one snapshot: first wins
                }
                acc.last = self.snapshots;
                acc.seen[h] += 1;
                acc.add(m.value, 1, Some(h));
            }
        }
    }

    pub fn finish(self) -> Sheet {
        let span = self.end - self.start.unwrap_or(self.end);
        let mut entries: Vec<SheetEntry> = self
            .keys
            .into_iter()
            .map(|(key, mut acc)| {
                if acc.kind == Kind::Counter {
                    for h in 0..24 {
                        let zeros = self.hours[h].saturating_sub(acc.seen[h]);
                        acc.add(0.0, zeros, Some(h));
                    }
                }
                let q = |p: f64| acc.sketch.quantile(p, acc.count).clamp(acc.min, acc.max);
                let profile = (span >= 86_400.0).then(|| {
                    acc.hours
                        .iter()
                        .enumerate()
                        .filter(|(_, (c, _))| *c > 0)
                        .map(|(hour, &(count, sum))| ProfileHour {
                            hour: hour as u8,
                            count,
                            mean: sum / count as f64,
                        })
                        .collect()
                });
                SheetEntry {
                    key,
                    name: acc.name.clone(),
                    tags: acc.tags.iter().cloned().collect(),
                    kind: match acc.kind {
                        Kind::Gauge => "gauge".into(),
                        Kind::Counter => "counter".into(),
                    },
                    count: acc.count,
                    mean: acc.mean,
                    std: if acc.count > 1 {
                        (acc.m2 / (acc.count - 1) as f64).max(0.0).sqrt()
                    } else {
                        0.0
                    },
                    min: acc.min,
                    max: acc.max,
                    p1: q(0.01),
                    p10: q(0.10),
                    p50: q(0.50),
                    p90: q(0.90),
                    p99: q(0.99),
                    profile,
                }
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Sheet {
            format: FORMAT.into(),
            version: VERSION,
            host: self.host,
            start: self.start.unwrap_or(0.0),
            end: self.end,
            interval_s: self.interval_s,
            snapshots: self.snapshots,
            entries,
        }
    }
}

/// Mean of one hour of the day (UTC) over the recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileHour {
    pub hour: u8,
    pub count: u64,
    pub mean: f64,
}

/// One key of a sheet. Counter values are per interval (see [`Sheet::interval_s`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SheetEntry {
    /// `name{k=v,...}`.
    pub key: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    /// `gauge` or `counter`.
    pub kind: String,
    pub count: u64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub p1: f64,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// Hour-of-day means (UTC), when the recording spans a day or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<ProfileHour>>,
}

impl SheetEntry {
    fn is_counter(&self) -> bool {
        self.kind == "counter"
    }

    fn kind(&self) -> Kind {
        if self.is_counter() {
            Kind::Counter
        } else {
            Kind::Gauge
        }
    }

    /// A counter absent from every snapshot of a recording: all zeros.
    fn zeros(like: &SheetEntry, snapshots: u64) -> SheetEntry {
        SheetEntry {
            count: snapshots,
            mean: 0.0,
            std: 0.0,
            min: 0.0,
            max: 0.0,
            p1: 0.0,
            p10: 0.0,
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            profile: None,
            ..like.clone()
        }
    }
}

/// A recording: per key statistics over a period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sheet {
    /// Always `ebpf-agent-sheet`.
    pub format: String,
    pub version: u32,
    pub host: String,
    /// Unix seconds: start of the first interval, end of the last.
    pub start: f64,
    pub end: f64,
    pub interval_s: f64,
    pub snapshots: u64,
    pub entries: Vec<SheetEntry>,
}

impl Sheet {
    /// Writes the sheet as JSON, atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(path, &json)
    }

    /// Reads a sheet written by [`Sheet::save`]; anything else is an error.
    pub fn load(path: &Path) -> Result<Sheet, LoadError> {
        let bytes = std::fs::read(path)?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| LoadError::Foreign)?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(LoadError::Foreign);
        }
        let version = v.get("version").and_then(|f| f.as_u64()).unwrap_or(0);
        if version != u64::from(VERSION) {
            return Err(LoadError::Version(version as u32));
        }
        serde_json::from_value(v).map_err(|e| LoadError::Corrupt(e.to_string()))
    }

    fn per_second(&self, e: &SheetEntry) -> f64 {
        if e.is_counter() && self.interval_s > 0.0 {
            1.0 / self.interval_s
        } else {
            1.0
        }
    }
}

/// One key's difference between a reference sheet and a live one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Deviation {
    pub key: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    /// The statistic that deviates most: `mean`, `p50`, `p90`, `p99`, or `missing`/`new`.
    pub stat: String,
    /// Its value in the reference and live (counters per second).
    pub reference: f64,
    pub live: f64,
    /// Distance in the reference's spreads (σ); 0 when not comparable.
    pub z: f64,
    pub severity: State,
    /// For people, e.g. `disk vda write p99: 7.7 ms → 48.1 ms (6.2x, 9.1σ)`.
    pub description: String,
}

/// Compares `live` with the reference `sheet` at sensitivity 1; see [`compare_with`].
pub fn compare(sheet: &Sheet, live: &Sheet) -> Vec<Deviation> {
    compare_with(sheet, live, 1.0)
}

/// Every key of either sheet, worst first. A statistic is a warning when it moved at least 3
/// reference spreads and 20%, critical at 6 spreads and 50% (spreads divided by
/// `sensitivity`). The spread is robust (p10..p90), floored by the value's resolution (a
/// latency bucket, a percentage point) so near-constant keys need a real change; the mean is
/// also judged against its standard error. A gauge seen in fewer than 5 intervals on either
/// side is at most a warning. The p90 counts only with 50 intervals on both sides, the p99 with 100. A gauge key missing live or new
/// live is at most a warning.
pub fn compare_with(sheet: &Sheet, live: &Sheet, sensitivity: f64) -> Vec<Deviation> {
    let sens = if sensitivity.is_finite() && sensitivity > 0.0 {
        sensitivity
    } else {
        1.0
    };
    let refs: HashMap<&str, &SheetEntry> =
        sheet.entries.iter().map(|e| (e.key.as_str(), e)).collect();
    let lives: HashMap<&str, &SheetEntry> =
        live.entries.iter().map(|e| (e.key.as_str(), e)).collect();
    let mut keys: Vec<&str> = refs.keys().chain(lives.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    let live_hours = live_hour_weights(live);
    let mut out: Vec<Deviation> = keys
        .into_iter()
        .map(|k| match (refs.get(k), lives.get(k)) {
            (Some(r), Some(l)) => deviate(sheet, r, live, l, sens, &live_hours),
            (Some(r), None) if r.is_counter() => {
                let l = SheetEntry::zeros(r, live.snapshots);
                deviate(sheet, r, live, &l, sens, &live_hours)
            }
            (None, Some(l)) if l.is_counter() => {
                let r = SheetEntry::zeros(l, sheet.snapshots);
                deviate(sheet, &r, live, l, sens, &live_hours)
            }
            (Some(r), None) => presence(r, sheet, "missing", sheet.snapshots),
            (None, Some(l)) => presence(l, live, "new", live.snapshots),
            (None, None) => unreachable!("key from one of the maps"),
        })
        .collect();
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.z.total_cmp(&a.z))
            .then_with(|| a.key.cmp(&b.key))
    });
    out
}

/// Share of the live recording in each hour of day, when known (from its span).
fn live_hour_weights(live: &Sheet) -> [f64; 24] {
    let mut w = [0.0; 24];
    let step = live.interval_s.max(1.0);
    let n = ((live.end - live.start) / step).round().clamp(0.0, 1e6) as usize;
    for i in 0..n {
        w[hour_of_day(hour_index(live.start + (i as f64 + 1.0) * step, 0.0))] += 1.0;
    }
    w
}

fn labels(e: &SheetEntry) -> (String, Vec<(&'static str, String)>) {
    // Labels only need the values, in order: the tag names are placeholders.
    let tags = e.tags.values().map(|v| ("", v.clone())).collect();
    (e.name.clone(), tags)
}

fn presence(e: &SheetEntry, sheet: &Sheet, stat: &str, snapshots: u64) -> Deviation {
    let (name, tags) = labels(e);
    let label = metric_label(&name, &tags);
    let common = snapshots > 0 && e.count * 2 >= snapshots;
    let value = e.mean;
    let shown = format_value(&e.name, e.kind(), value, sheet.interval_s);
    let (reference, live, description) = if stat == "missing" {
        (value, f64::NAN, format!("{label}: missing (was {shown})"))
    } else {
        (f64::NAN, value, format!("{label}: new ({shown})"))
    };
    Deviation {
        key: e.key.clone(),
        name: e.name.clone(),
        tags: e.tags.clone(),
        stat: stat.into(),
        reference: reference * sheet.per_second(e),
        live: live * sheet.per_second(e),
        z: 0.0,
        severity: if common { State::Warning } else { State::Ok },
        description,
    }
}

/// Gauges seen in fewer intervals than this on either side are at most a warning.
const MIN_GAUGE_INTERVALS: u64 = 5;

/// The smallest change of a value that can mean anything, in its own unit: latencies come from
/// log-linear buckets (one is 12.5% wide, so a quantile moves in 12.5% steps), percentages
/// (CPU shares, pressure) move by whole points when nothing happens, anything else by 1%.
fn resolution(name: &str, reference: f64) -> f64 {
    let r = reference.abs();
    if name.split('.').any(|seg| seg.ends_with("_us")) && !name.contains("stall_us") {
        0.125 * r
    } else if name.ends_with("_pct") || name.ends_with("_avg10") {
        1.0
    } else {
        0.01 * r
    }
}

fn deviate(
    sheet: &Sheet,
    r: &SheetEntry,
    live: &Sheet,
    l: &SheetEntry,
    sens: f64,
    live_hours: &[f64; 24],
) -> Deviation {
    let rs = sheet.per_second(r);
    let ls = live.per_second(l);
    let floor = {
        let mut f = resolution(&r.name, r.mean).max(0.25 * r.std).max(1e-9);
        if r.is_counter() {
            f = f.max(0.5 * r.mean.abs().max(1.0).sqrt());
        }
        f
    };
    let spread = ((r.p90 - r.p10) / 2.563).max(floor) * rs;
    let tail = spread.max((r.p99 - r.p50) / 2.326 * rs);
    // The mean moves with one outlier interval: judged against its standard error too (Welch),
    // so a steady reference and one slow live interval do not make a shift.
    let se = ((r.std * rs).powi(2) / r.count.max(1) as f64
        + (l.std * ls).powi(2) / l.count.max(1) as f64)
        .sqrt();
    // The mean's reference follows the rhythm when the sheet has one for the live hours.
    let mut mean_ref = r.mean;
    if let Some(prof) = &r.profile {
        let (mut w, mut s) = (0.0, 0.0);
        for p in prof {
            let lw = live_hours[usize::from(p.hour) % 24];
            w += lw;
            s += lw * p.mean;
        }
        let total: f64 = live_hours.iter().sum();
        if total > 0.0 && w >= 0.9 * total {
            mean_ref = s / w;
        }
    }
    let mut stats = vec![
        ("p50", r.p50 * rs, l.p50 * ls, spread),
        ("mean", mean_ref * rs, l.mean * ls, spread.max(se)),
    ];
    // A tail of a few intervals is one or two values: on a short recording, one slow timer
    // wake-up would move it by half.
    if l.count >= 50 && r.count >= 50 {
        stats.push(("p90", r.p90 * rs, l.p90 * ls, tail));
    }
    if l.count >= 100 && r.count >= 100 {
        stats.push(("p99", r.p99 * rs, l.p99 * ls, tail));
    }
    let judged: Vec<(State, f64, &str, f64, f64)> = stats
        .into_iter()
        .map(|(stat, a, b, unit)| {
            let z = (b - a).abs() / unit;
            let rel = (b - a).abs() / a.abs().max(unit);
            let sev = if z * sens >= 6.0 && rel >= 0.5 {
                State::Critical
            } else if z * sens >= 3.0 && rel >= 0.2 {
                State::Warning
            } else {
                State::Ok
            };
            (sev, z, stat, a, b)
        })
        .collect();
    // A gauge seen in a handful of intervals (a rare syscall's latency) cannot be sure.
    let few = !r.is_counter() && r.count.min(l.count) < MIN_GAUGE_INTERVALS;
    let judged: Vec<_> = judged
        .into_iter()
        .map(|(sev, z, stat, a, b)| {
            (
                if few { sev.min(State::Warning) } else { sev },
                z,
                stat,
                a,
                b,
            )
        })
        .collect();
    // The worst severity; at equal severity the most central statistic (listed first), and
    // among ok ones the largest z.
    let worst = judged.iter().map(|j| j.0).max().unwrap_or(State::Ok);
    let &(severity, z, stat, a, b) = if worst == State::Ok {
        judged.iter().max_by(|x, y| x.1.total_cmp(&y.1))
    } else {
        judged.iter().find(|j| j.0 == worst)
    }
    .expect("at least one statistic");
    let (name, tags) = labels(r);
    let fmt = |v: f64| format_value(&r.name, Kind::Gauge, v, 1.0);
    let per = if r.is_counter() { "/s" } else { "" };
    let ratio = if a > 0.0 && b > 0.0 {
        format!("{}x, ", format::ratio(b / a))
    } else if a > 0.0 && b == 0.0 {
        "stopped, ".into()
    } else {
        String::new()
    };
    let stat_label = match stat {
        "p50" => "median",
        s => s,
    };
    let description = format!(
        "{} [{stat_label}]: {}{per} → {}{per} ({ratio}{z:.1}σ)",
        metric_label(&name, &tags),
        fmt(a),
        fmt(b)
    );
    Deviation {
        key: r.key.clone(),
        name: r.name.clone(),
        tags: r.tags.clone(),
        stat: stat.into(),
        reference: a,
        live: b,
        z,
        severity,
        description,
    }
}

fn when(t: f64) -> String {
    let days = (t / 86_400.0).floor() as i64;
    let (y, m, d) = super::time::civil_from_days(days);
    let s = (t - days as f64 * 86_400.0) as u64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn span(s: &Sheet) -> String {
    format!(
        "{}, {} intervals of {} s from {}",
        super::describe::duration(s.end - s.start),
        s.snapshots,
        s.interval_s,
        when(s.start)
    )
}

/// For people: what deviates (warnings and worse), worst first, then a count.
pub fn render_text(sheet: &Sheet, live: &Sheet, devs: &[Deviation]) -> String {
    let mut s = format!(
        "reference: {} ({})\nlive:      {} ({})\n\n",
        sheet.host,
        span(sheet),
        live.host,
        span(live)
    );
    let count = |st: State| devs.iter().filter(|d| d.severity == st).count();
    let off: Vec<&Deviation> = devs.iter().filter(|d| d.severity != State::Ok).collect();
    if off.is_empty() {
        s.push_str("nothing deviates beyond the warning level\n");
    }
    for d in &off {
        s.push_str(&format!(
            "{:<9} {}\n",
            d.severity.as_str().to_uppercase(),
            d.description
        ));
    }
    s.push_str(&format!(
        "\n{} keys compared: {} critical, {} warning, {} ok\n",
        devs.len(),
        count(State::Critical),
        count(State::Warning),
        count(State::Ok)
    ));
    s
}

/// For machines: `{"reference": {..}, "live": {..}, "critical": n, "warning": n,
/// "deviations": [...]}` (every key, worst first).
pub fn render_json(sheet: &Sheet, live: &Sheet, devs: &[Deviation]) -> serde_json::Value {
    let meta = |s: &Sheet| {
        serde_json::json!({
            "host": s.host, "start": s.start, "end": s.end,
            "interval_s": s.interval_s, "snapshots": s.snapshots,
        })
    };
    let count = |st: State| devs.iter().filter(|d| d.severity == st).count();
    serde_json::json!({
        "reference": meta(sheet),
        "live": meta(live),
        "critical": count(State::Critical),
        "warning": count(State::Warning),
        "deviations": devs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Metric;
    use std::time::{Duration, UNIX_EPOCH};

    fn record(n: u64, lat: impl Fn(u64) -> f64, reads: impl Fn(u64) -> u64) -> Sheet {
        sheet_of(n, |i| {
            let mut metrics = vec![Metric::gauge(
                "disk.latency_us.p99",
                vec![("device", "vda".into()), ("op", "write".into())],
                lat(i),
            )];
            let r = reads(i);
            if r > 0 {
                metrics.push(Metric::counter(
                    "syscall.count",
                    vec![("syscall", "read".into())],
                    r,
                ));
            }
            metrics
        })
    }

    fn noise(i: u64) -> f64 {
        ((i * 2_654_435_761) % 1000) as f64 / 1000.0
    }

    /// A sheet of `n` one-second snapshots carrying `metrics(i)`.
    fn sheet_of(n: u64, metrics: impl Fn(u64) -> Vec<Metric>) -> Sheet {
        let mut b = SheetBuilder::new();
        for i in 0..n {
            b.add(&Snapshot {
                annotations: Default::default(),
                time: UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i),
                interval: Duration::from_secs(1),
                host: "h".into(),
                metrics: metrics(i),
            });
        }
        b.finish()
    }

    #[test]
    fn steady_keys_need_a_real_change() {
        let fstat = || vec![("syscall", "fstat".to_string())];
        // A reference where every value is the same (one latency bucket, an idle CPU share).
        let steady = |max_us: f64, steal: f64| {
            move |i: u64| {
                vec![
                    Metric::gauge(
                        "syscall.latency_us.max",
                        fstat(),
                        if i == 7 { max_us } else { 8.38 },
                    ),
                    Metric::gauge("cpu.steal_pct", vec![], steal),
                ]
            }
        };
        let base = sheet_of(20, steady(8.38, 0.0));
        // One slow interval among 20, steal at half a point, one bucket up: all noise.
        let live = sheet_of(20, |i| {
            let mut m = steady(150.0, 0.5)(i);
            if i == 3 {
                m[0].value = 9.43;
            }
            m
        });
        let devs = compare(&base, &live);
        assert!(
            devs.iter().all(|d| d.severity == State::Ok),
            "{}",
            render_text(&base, &live, &devs)
        );
        // Twice as slow every interval, and 20 points of steal: critical.
        let live = sheet_of(20, |_| {
            vec![
                Metric::gauge("syscall.latency_us.max", fstat(), 16.76),
                Metric::gauge("cpu.steal_pct", vec![], 20.0),
            ]
        });
        let devs = compare(&base, &live);
        assert!(
            devs.iter().all(|d| d.severity == State::Critical),
            "{}",
            render_text(&base, &live, &devs)
        );
        // Seen in 3 intervals only: at most a warning, however far.
        let rare = sheet_of(20, |i| {
            if i < 3 {
                vec![Metric::gauge("syscall.latency_us.max", fstat(), 1000.0)]
            } else {
                vec![]
            }
        });
        let devs = compare(&base, &rare);
        let d = devs
            .iter()
            .find(|d| d.name == "syscall.latency_us.max")
            .unwrap();
        assert_eq!(d.severity, State::Warning, "{}", d.description);
    }

    #[test]
    fn quantiles_are_close() {
        let s = record(1000, |i| 1000.0 + i as f64, |_| 0);
        let e = &s.entries[0];
        assert_eq!(e.count, 1000);
        assert!((e.p50 / 1500.0 - 1.0).abs() < 0.03, "{}", e.p50);
        assert!((e.p90 / 1900.0 - 1.0).abs() < 0.03, "{}", e.p90);
        assert!((e.mean - 1499.5).abs() < 1e-6);
        assert_eq!((e.min, e.max), (1000.0, 1999.0));
    }

    #[test]
    fn same_load_is_ok_changed_load_is_critical() {
        let base = record(
            600,
            |i| 7700.0 + 500.0 * noise(i),
            |i| 1000 + (noise(i) * 50.0) as u64,
        );
        let same = record(
            120,
            |i| 7700.0 + 500.0 * noise(i + 7),
            |i| 1000 + (noise(i + 3) * 50.0) as u64,
        );
        let devs = compare(&base, &same);
        assert!(
            devs.iter().all(|d| d.severity == State::Ok),
            "{}",
            render_text(&base, &same, &devs)
        );
        let slow = record(120, |i| 48_100.0 + 500.0 * noise(i), |_| 0);
        let devs = compare(&base, &slow);
        assert_eq!(devs.len(), 2);
        assert!(devs.iter().all(|d| d.severity == State::Critical));
        let text = render_text(&base, &slow, &devs);
        assert!(
            text.contains("CRITICAL  disk vda write p99 [median]: 7.8 ms → 48.6 ms (6.2x"),
            "{text}"
        );
        assert!(text.contains("syscall read count"), "{text}");
        let json = render_json(&base, &slow, &devs);
        assert_eq!(json["critical"], 2);
        assert_eq!(json["deviations"][0]["severity"], "critical");
    }

    #[test]
    fn save_and_load() {
        let s = record(100, |i| 10.0 + noise(i), |i| i + 1);
        let dir = std::env::temp_dir().join(format!("sheet-test-{}", std::process::id()));
        let path = dir.join("ref.json");
        s.save(&path).unwrap();
        assert_eq!(Sheet::load(&path).unwrap(), s);
        std::fs::write(&path, b"{\"format\": \"other\"}").unwrap();
        assert!(matches!(Sheet::load(&path), Err(LoadError::Foreign)));
        std::fs::write(&path, b"\x00\x01garbage").unwrap();
        assert!(Sheet::load(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
