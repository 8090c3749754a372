//! `ebpf-agent watch`: a live per-second view for a person at a terminal (like `top`, for kernel
//! latencies), then, on exit, the session's latency histograms drawn as bars and its slow events.
//!
//! It runs the same [`Collector`] as `run`, on the same wall-clock-aligned intervals, so `--pid`
//! and `--comm` filter in the kernel. Rendering is pure (snapshot + history → lines) and
//! unit-tested; only [`watch`] touches the terminal. On a TTY every frame redraws in place on the
//! alternate screen, clipped to the terminal's size; otherwise (a pipe, a file, tests) every frame
//! is printed after a `--- <time>` line, without escape codes.
//!
//! The session histograms are exact: the kernel's cumulative buckets at the end minus those at the
//! start ([`Collector::cumulative_histograms`]), merged into power-of-two rows for display.

use std::{
    collections::{HashMap, VecDeque},
    io::{self, IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::{hist, layout};
use anyhow::Result;

use crate::{
    anomaly::{DetectorConfig, Verdicts},
    cli::{DEFAULT_STATE_DIR, WatchArgs},
    collector::Collector,
    config::{self, ConfigError},
    detection::Detection,
    histogram::LatencyStats,
    probes::events::EventView,
    run::hostname,
    snapshot::{Anomaly, Snapshot, Tags, tags_include},
    ticker::{Tick, Ticker},
};

/// Points of history per key (one per interval): a minute at the default interval.
pub const HISTORY: usize = 60;
/// Keys with history kept at most; the least recently active go first.
pub const MAX_KEYS: usize = 256;
/// Slow events kept for the exit report.
pub const KEEP_EVENTS: usize = 50;
/// Slow events shown live at the bottom of a frame.
const LIVE_EVENTS: usize = 5;
/// `--slow-threshold` of `watch` when not given (`run` reports none by default).
pub const DEFAULT_SLOW: Duration = Duration::from_millis(10);
/// Syscall rows of a frame when the height is not limited (a pipe).
const TOP_SYSCALLS: usize = 20;
/// Syscall histograms in the exit report: the top by total time, plus the most frequent.
const REPORT_BY_TIME: usize = 10;
const REPORT_BY_CALLS: usize = 3;
/// Width of the histogram bars.
const BAR_WIDTH: usize = 40;
/// Width given to frames when stdout is not a terminal.
const PIPE_WIDTH: usize = 200;
/// Anomaly descriptions shown at most per frame.
const MAX_ANOMALY_LINES: usize = 5;
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

// ------------------------------------------------------------------------------------------------
// Formatting

/// How a sparkline maps values to heights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Rates and latencies: 0 is the lowest block, any non-zero value at least the second,
    /// the window's maximum the highest.
    FromZero,
    /// Levels (memory): the window's range, at least 2% of its maximum, so noise stays flat.
    Range,
}

/// The last `width` points of `series` as block characters, oldest first, right-aligned (padded
/// with spaces on the left while history is shorter than `width`). NaN points are blank.
pub fn sparkline(series: &[f64], width: usize, scale: Scale) -> String {
    let pts = &series[series.len().saturating_sub(width)..];
    let finite = || pts.iter().copied().filter(|v| v.is_finite());
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    let lo = finite().fold(f64::INFINITY, f64::min);
    let mut s = " ".repeat(width - pts.len());
    for &v in pts {
        let level = if !v.is_finite() {
            None
        } else {
            Some(match scale {
                Scale::FromZero if v <= 0.0 || hi <= 0.0 => 0,
                // 1..=7: any activity shows.
                Scale::FromZero => 1 + ((v / hi) * 7.0 - 1e-9).max(0.0) as usize,
                Scale::Range => {
                    let span = (hi - lo).max(hi.abs() * 0.02);
                    if span <= 0.0 {
                        0
                    } else {
                        ((v - lo) / span * 7.0).round() as usize
                    }
                }
            })
        };
        s.push(level.map_or(' ', |l| SPARKS[l.min(7)]));
    }
    s
}

/// Up to three significant digits below 1000, whole numbers up to 99,999, then k/M/G.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a < 1000.0 {
        let digits = a.log10().floor() as i32;
        let decimals = (2 - digits).clamp(0, 3) as usize;
        format!("{v:.decimals$}")
    } else if a < 100_000.0 {
        format!("{v:.0}")
    } else {
        let (scaled, suffix) = if a < 1e6 {
            (v / 1e3, "k")
        } else if a < 1e9 {
            (v / 1e6, "M")
        } else {
            (v / 1e9, "G")
        };
        format!("{}{suffix}", fmt_num(scaled))
    }
}

/// A per-second rate: whole numbers exactly (up to 9,999,999), else one decimal.
pub fn fmt_rate(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 9_999_999.5 {
        fmt_num(v)
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub fn fmt_bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// At most `width` characters of `s`, trailing spaces removed.
pub fn fit(s: &str, width: usize) -> String {
    let cut = s.char_indices().nth(width).map_or(s.len(), |(i, _)| i);
    s[..cut].trim_end().to_string()
}

/// `HH:MM:SS` in local time.
fn clock(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as libc::time_t;
    // SAFETY: an all-zero `tm` is valid; localtime_r writes only into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return humantime::format_rfc3339_seconds(t).to_string();
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

fn fmt_elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

// ------------------------------------------------------------------------------------------------
// History

struct Series {
    points: VecDeque<f64>,
    /// Absent from a snapshot: a rate counts as 0, a level as unknown (NaN).
    rate: bool,
    /// Last tick with a non-zero value (for eviction).
    active: u64,
}

/// The last [`HISTORY`] values of every row's sparkline, bounded to [`MAX_KEYS`] keys.
#[derive(Default)]
pub struct History {
    series: HashMap<String, Series>,
    tick: u64,
}

/// Levels kept in history besides the rates: `(key, metric)`.
const LEVELS: [(&str, &str); 9] = [
    ("mem.used", "mem.used_bytes"),
    ("mem.available", "mem.available_bytes"),
    ("swap.used", "swap.used_bytes"),
    ("cpu.iowait", "cpu.iowait_pct"),
    ("psi.cpu", "psi.cpu.some_avg10"),
    ("psi.io", "psi.io.some_avg10"),
    ("psi.memory", "psi.memory.some_avg10"),
    ("tcp.rtt.p99", "tcp.rtt_us.p99"),
    ("tcp.connect.p99", "tcp.connect_latency_us.p99"),
];
const TCP_COUNTERS: [(&str, &str); 4] = [
    ("connects", "tcp.connects"),
    ("accepts", "tcp.accepts"),
    ("retransmits", "tcp.retransmits"),
    ("resets", "tcp.resets"),
];

fn syscall_key(name: &str) -> String {
    format!("syscall {name}")
}

fn disk_key(device: &str, op: &str) -> String {
    format!("disk {device} {op}")
}

impl History {
    /// Appends one interval: per-second rates of syscalls, disk ops and TCP counters, and levels.
    pub fn record(&mut self, snap: &Snapshot) {
        let secs = snap.interval.as_secs_f64().max(1e-9);
        let mut now: Vec<(String, f64, bool)> = Vec::new();
        for m in &snap.metrics {
            match m.name.as_str() {
                "syscall.count" => {
                    if let Some(s) = m.tag("syscall") {
                        now.push((syscall_key(s), m.value / secs, true));
                    }
                }
                "disk.ops" => {
                    if let (Some(d), Some(op)) = (m.tag("device"), m.tag("op")) {
                        now.push((disk_key(d, op), m.value / secs, true));
                    }
                }
                name => {
                    if let Some((key, _)) = TCP_COUNTERS.iter().find(|(_, n)| *n == name) {
                        now.push((format!("tcp.{key}"), m.value / secs, true));
                    } else if let Some((key, _)) = LEVELS.iter().find(|(_, n)| *n == name) {
                        now.push((key.to_string(), m.value, false));
                    }
                }
            }
        }
        self.tick += 1;
        let tick = self.tick;
        let mut seen = std::collections::HashSet::new();
        for (key, v, rate) in now {
            let s = self.series.entry(key.clone()).or_insert_with(|| Series {
                points: VecDeque::with_capacity(HISTORY),
                rate,
                active: tick,
            });
            push_bounded(&mut s.points, v);
            if v != 0.0 {
                s.active = tick;
            }
            seen.insert(key);
        }
        for (key, s) in &mut self.series {
            if !seen.contains(key) {
                push_bounded(&mut s.points, if s.rate { 0.0 } else { f64::NAN });
            }
        }
        while self.series.len() > MAX_KEYS {
            let Some(oldest) = self
                .series
                .iter()
                .min_by(|a, b| a.1.active.cmp(&b.1.active).then(a.0.cmp(b.0)))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.series.remove(&oldest);
        }
    }

    /// The key's points, oldest first (empty when unknown).
    pub fn points(&self, key: &str) -> Vec<f64> {
        self.series
            .get(key)
            .map(|s| s.points.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Keys starting with `prefix` that were non-zero at least once in the window.
    fn active_keys(&self, prefix: &str) -> Vec<&str> {
        self.series
            .iter()
            .filter(|(k, s)| k.starts_with(prefix) && s.points.iter().any(|&v| v > 0.0))
            .map(|(k, _)| k.as_str())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

fn push_bounded(q: &mut VecDeque<f64>, v: f64) {
    if q.len() == HISTORY {
        q.pop_front();
    }
    q.push_back(v);
}

// ------------------------------------------------------------------------------------------------
// Frames

/// What a frame needs besides the snapshot and history.
#[derive(Clone, Debug)]
pub struct View {
    /// Characters per line.
    pub width: usize,
    /// Lines available (a terminal), or unlimited (a pipe).
    pub height: Option<usize>,
    /// e.g. `pid 1234, comm nginx`, or empty.
    pub filters: String,
    /// `None`: no event stream (`--no-events`).
    pub slow_threshold: Option<Duration>,
    pub elapsed: Duration,
    /// Shown in the header on a terminal.
    pub hint: bool,
    /// What the anomaly marks rest on (e.g. `anomalies 2, baseline 812 keys`); `None`: off.
    pub anomaly: Option<String>,
}

/// A slow event with the end of the interval that delivered it.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedEvent {
    pub time: SystemTime,
    pub event: EventView,
}

fn probe_state(snap: &Snapshot, probe: &str) -> Option<bool> {
    snap.value("agent.probe_up", &[("probe", probe)])
        .map(|v| v > 0.0)
}

/// Marks a row whose metrics are not ok in this interval: `▲ ` above its usual, `▼ ` below
/// (the worst such metric decides), else nothing. Marked lines are coloured on a terminal.
fn mark(snap: &Snapshot, pick: impl Fn(&Anomaly) -> bool) -> &'static str {
    // Worst first: the detector sorts its verdicts.
    match snap
        .annotations
        .anomalies
        .iter()
        .find(|a| a.state != "ok" && pick(a))
    {
        Some(a) if a.value >= a.usual => "▲ ",
        Some(_) => "▼ ",
        None => "",
    }
}

/// A metric name, or a family when it ends with `.`.
fn named(a: &Anomaly, name: &str) -> bool {
    if name.ends_with('.') {
        a.name.starts_with(name)
    } else {
        a.name == name
    }
}

/// Not-ok anomalies with their descriptions, worst first, one line per subject (a syscall, a
/// disk and op, ...: its family and tags) so five quantiles of one slow syscall take one line;
/// at most `MAX_ANOMALY_LINES`.
fn section_anomalies(snap: &Snapshot) -> Vec<String> {
    let off: Vec<&Anomaly> = snap
        .annotations
        .anomalies
        .iter()
        .filter(|a| a.state != "ok")
        .collect();
    if off.is_empty() {
        return vec![];
    }
    let family = |a: &Anomaly| a.name.split('.').next().unwrap_or("").to_string();
    // (worst anomaly of the subject, how many more of its metrics), in worst-first order.
    let mut subjects: Vec<(&Anomaly, usize)> = vec![];
    for a in &off {
        match subjects
            .iter_mut()
            .find(|(w, _)| family(w) == family(a) && w.tags == a.tags)
        {
            Some((_, more)) => *more += 1,
            None => subjects.push((a, 0)),
        }
    }
    let mut out = vec![format!("ANOMALIES ({} not usual, worst first)", off.len())];
    for (a, more) in subjects.iter().take(MAX_ANOMALY_LINES) {
        let also = match more {
            0 => String::new(),
            n => format!(" (and {n} more of its metrics)"),
        };
        out.push(format!("{:<9}{}{also}", a.state, a.description));
    }
    if subjects.len() > MAX_ANOMALY_LINES {
        out.push(format!("  and {} more", subjects.len() - MAX_ANOMALY_LINES));
    }
    out
}

/// `label value  sparkline` rows of the disk/TCP/memory sections.
fn kv_row(label: &str, value: &str, points: &[f64], scale: Scale, width: usize) -> String {
    let head = format!("{label:<22}{value:>24}  ");
    let w = spark_width(width, head.chars().count());
    format!("{head}{}", sparkline(points, w, scale))
}

fn spark_width(width: usize, used: usize) -> usize {
    let w = width.saturating_sub(used).min(HISTORY);
    if w < 4 { 0 } else { w }
}

struct SyscallRow<'a> {
    name: &'a str,
    count: f64,
    total_us: f64,
}

fn syscall_rows(snap: &Snapshot) -> Vec<SyscallRow<'_>> {
    let mut mean_us: HashMap<&str, f64> = HashMap::new();
    for m in &snap.metrics {
        if m.name == "syscall.latency_us.mean"
            && let Some(name) = m.tag("syscall")
        {
            mean_us.insert(name, m.value);
        }
    }
    let mut rows: Vec<SyscallRow> = snap
        .metrics
        .iter()
        .filter(|m| m.name == "syscall.count")
        .filter_map(|m| {
            let name = m.tag("syscall")?;
            Some(SyscallRow {
                name,
                count: m.value,
                total_us: m.value * mean_us.get(name).copied().unwrap_or(0.0),
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        b.total_us
            .total_cmp(&a.total_us)
            .then(b.count.total_cmp(&a.count))
            .then(a.name.cmp(b.name))
    });
    rows
}

/// The sparklines' span, e.g. `1m` at one-second intervals.
fn window(snap: &Snapshot) -> String {
    humantime::format_duration(snap.interval * HISTORY as u32).to_string()
}

fn section_syscalls(snap: &Snapshot, h: &History, rows_max: usize, width: usize) -> Vec<String> {
    let mut out = vec![];
    match probe_state(snap, "syscall") {
        None => return out,
        Some(false) => {
            out.push("SYSCALLS: probe down (see the warning printed at start)".into());
            return out;
        }
        Some(true) => {}
    }
    let secs = snap.interval.as_secs_f64().max(1e-9);
    let rows = syscall_rows(snap);
    out.push(format!(
        "TOP SYSCALLS BY TOTAL TIME ({} of {} called)",
        rows.len().min(rows_max),
        rows.len()
    ));
    let head = format!(
        "{:<22}{:>10}{:>10}{:>10}{:>8}{:>11}  ",
        "syscall", "calls/s", "mean µs", "p99 µs", "err/s", "time ms/s"
    );
    let spark_w = spark_width(width, head.chars().count());
    let legend = if spark_w > 0 {
        format!("calls/s, last {}", window(snap))
    } else {
        String::new()
    };
    out.push(format!("{head}{legend}"));
    if rows.is_empty() {
        out.push("  (no syscalls in this interval)".into());
    }
    for r in rows.iter().take(rows_max) {
        let tag = [("syscall", r.name)];
        let mean = snap.value("syscall.latency_us.mean", &tag);
        let p99 = snap.value("syscall.latency_us.p99", &tag);
        let errors = snap.value("syscall.errors", &tag).unwrap_or(0.0);
        let m = mark(snap, |a| {
            named(a, "syscall.") && tags_include(&a.tags, &tag)
        });
        out.push(format!(
            "{:<22}{:>10}{:>10}{:>10}{:>8}{:>11}  {}",
            format!("{m}{}", r.name),
            fmt_rate(r.count / secs),
            mean.map_or("-".into(), fmt_num),
            p99.map_or("-".into(), fmt_num),
            fmt_rate(errors / secs),
            fmt_num(r.total_us / 1000.0 / secs),
            sparkline(&h.points(&syscall_key(r.name)), spark_w, Scale::FromZero)
        ));
    }
    out
}

fn section_disks(snap: &Snapshot, h: &History, width: usize) -> Vec<String> {
    let mut out = vec![];
    match probe_state(snap, "disk") {
        None => return out,
        Some(false) => {
            out.push("DISKS: probe down (see the warning printed at start)".into());
            return out;
        }
        Some(true) => {}
    }
    let secs = snap.interval.as_secs_f64().max(1e-9);
    let head = format!(
        "{:<22}{:>10}{:>10}{:>10}{:>10}  ",
        "device op", "ops/s", "MB/s", "p50 µs", "p99 µs"
    );
    let spark_w = spark_width(width, head.chars().count());
    out.push("DISKS".into());
    let legend = if spark_w > 0 {
        format!("ops/s, last {}", window(snap))
    } else {
        String::new()
    };
    out.push(format!("{head}{legend}"));
    // Devices busy now or within the window.
    let mut keys: Vec<(String, String)> = snap
        .metrics
        .iter()
        .filter(|m| m.name == "disk.ops")
        .filter_map(|m| Some((m.tag("device")?.to_string(), m.tag("op")?.to_string())))
        .collect();
    for k in h.active_keys("disk ") {
        let mut parts = k["disk ".len()..].rsplitn(2, ' ');
        if let (Some(op), Some(dev)) = (parts.next(), parts.next()) {
            keys.push((dev.to_string(), op.to_string()));
        }
    }
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        out.push("  (no block I/O in the last minute)".into());
    }
    for (dev, op) in keys {
        let tags = [("device", dev.as_str()), ("op", op.as_str())];
        let ops = snap.value("disk.ops", &tags).unwrap_or(0.0);
        let bytes = snap.value("disk.bytes", &tags).unwrap_or(0.0);
        let p50 = snap.value("disk.latency_us.p50", &tags);
        let p99 = snap.value("disk.latency_us.p99", &tags);
        let m = mark(snap, |a| named(a, "disk.") && tags_include(&a.tags, &tags));
        out.push(format!(
            "{:<22}{:>10}{:>10}{:>10}{:>10}  {}",
            format!("{m}{dev} {op}"),
            fmt_rate(ops / secs),
            format!("{:.2}", bytes / secs / 1e6),
            p50.map_or("-".into(), fmt_num),
            p99.map_or("-".into(), fmt_num),
            sparkline(&h.points(&disk_key(&dev, &op)), spark_w, Scale::FromZero)
        ));
    }
    out
}

fn section_tcp(snap: &Snapshot, h: &History, width: usize) -> Vec<String> {
    let mut out = vec![];
    match probe_state(snap, "tcp") {
        None => return out,
        Some(false) => {
            out.push("TCP: probe down (see the warning printed at start)".into());
            return out;
        }
        Some(true) => {}
    }
    let secs = snap.interval.as_secs_f64().max(1e-9);
    out.push("TCP".into());
    for (key, name) in TCP_COUNTERS {
        let v = snap.value(name, &[]).unwrap_or(0.0) / secs;
        out.push(kv_row(
            &format!("{}{key}/s", mark(snap, |a| named(a, name))),
            &fmt_rate(v),
            &h.points(&format!("tcp.{key}")),
            Scale::FromZero,
            width,
        ));
    }
    let q = |m: &str| snap.value(m, &[]).map_or("-".into(), fmt_num);
    out.push(kv_row(
        &format!(
            "{}rtt p50 / p99 µs",
            mark(snap, |a| named(a, "tcp.rtt_us."))
        ),
        &format!("{} / {}", q("tcp.rtt_us.p50"), q("tcp.rtt_us.p99")),
        &h.points("tcp.rtt.p99"),
        Scale::FromZero,
        width,
    ));
    out.push(kv_row(
        &format!(
            "{}connect p99 µs",
            mark(snap, |a| named(a, "tcp.connect_latency_us."))
        ),
        &q("tcp.connect_latency_us.p99"),
        &h.points("tcp.connect.p99"),
        Scale::FromZero,
        width,
    ));
    out
}

fn section_memory(snap: &Snapshot, h: &History, width: usize) -> Vec<String> {
    let mut out = vec![];
    if probe_state(snap, "procfs") != Some(true) {
        return out;
    }
    out.push("MEMORY, SWAP, IOWAIT".into());
    let v = |m: &str| snap.value(m, &[]);
    let of = |used: Option<f64>, total: Option<f64>| match (used, total) {
        (Some(u), Some(t)) => format!("{} of {}", fmt_bytes(u), fmt_bytes(t)),
        (Some(u), None) => fmt_bytes(u),
        _ => "-".into(),
    };
    out.push(kv_row(
        &format!("{}mem used", mark(snap, |a| named(a, "mem.used_bytes"))),
        &of(v("mem.used_bytes"), v("mem.total_bytes")),
        &h.points("mem.used"),
        Scale::Range,
        width,
    ));
    out.push(kv_row(
        &format!(
            "{}mem available",
            mark(snap, |a| named(a, "mem.available_bytes"))
        ),
        &v("mem.available_bytes").map_or("-".into(), fmt_bytes),
        &h.points("mem.available"),
        Scale::Range,
        width,
    ));
    out.push(kv_row(
        &format!("{}swap used", mark(snap, |a| named(a, "swap.used_bytes"))),
        &of(v("swap.used_bytes"), v("swap.total_bytes")),
        &h.points("swap.used"),
        Scale::Range,
        width,
    ));
    out.push(kv_row(
        &format!("{}cpu iowait %", mark(snap, |a| named(a, "cpu.iowait_pct"))),
        &v("cpu.iowait_pct").map_or("-".into(), |p| format!("{p:.1}")),
        &h.points("cpu.iowait"),
        Scale::FromZero,
        width,
    ));
    for res in ["cpu", "io", "memory"] {
        if let Some(p) = v(&format!("psi.{res}.some_avg10")) {
            let m = mark(snap, |a| named(a, &format!("psi.{res}.")));
            out.push(kv_row(
                &format!("{m}psi {res} some avg10 %"),
                &format!("{p:.2}"),
                &h.points(&format!("psi.{res}")),
                Scale::FromZero,
                width,
            ));
        }
    }
    out
}

fn event_row(e: &TimedEvent) -> String {
    let v = &e.event;
    let kind = v.kind.strip_prefix("slow_").unwrap_or(v.kind);
    let kind = kind.strip_prefix("tcp_").unwrap_or(kind);
    format!(
        "{}  {:<8}{:<16}{:>8}  {:<28}{:>10} µs{}",
        clock(e.time),
        kind,
        v.comm,
        v.pid,
        v.target,
        fmt_num(v.latency_us),
        v.ret.map(|r| format!("  ret {r}")).unwrap_or_default()
    )
}

fn event_header() -> String {
    format!(
        "{:<10}{:<8}{:<16}{:>8}  {:<28}{:>13}",
        "time", "kind", "comm", "pid", "target", "latency"
    )
}

/// One frame: header, top syscalls, disks, TCP, memory, the latest slow events; at most
/// `view.width` characters per line and `view.height` lines.
pub fn render_frame(
    snap: &Snapshot,
    h: &History,
    events: &VecDeque<TimedEvent>,
    view: &View,
) -> Vec<String> {
    let width = view.width;
    let mut up = vec![];
    let mut down = vec![];
    for m in snap.metrics.iter().filter(|m| m.name == "agent.probe_up") {
        let p = m.tag("probe").unwrap_or("?");
        if m.value > 0.0 { &mut up } else { &mut down }.push(p);
    }
    let mut header = vec![format!(
        "ebpf-agent watch · {} · {} · every {} · {} elapsed{}",
        snap.host,
        clock(snap.time),
        humantime::format_duration(snap.interval),
        fmt_elapsed(view.elapsed),
        if view.hint {
            " · Ctrl-C: stop and show histograms"
        } else {
            ""
        }
    )];
    let mut line = format!(
        "collecting: {}",
        if up.is_empty() {
            "nothing".into()
        } else {
            up.join(", ")
        }
    );
    if !down.is_empty() {
        line.push_str(&format!(" · down: {}", down.join(", ")));
    }
    line.push_str(&format!(
        " · filter: {}",
        if view.filters.is_empty() {
            "none"
        } else {
            &view.filters
        }
    ));
    match view.slow_threshold {
        Some(t) => line.push_str(&format!(" · slow ≥ {}", humantime::format_duration(t))),
        None => line.push_str(" · slow events off"),
    }
    if let Some(n) = snap.value("agent.events", &[]) {
        line.push_str(&format!(" · ring events {}", fmt_rate(n)));
    }
    let lost: f64 = snap
        .metrics
        .iter()
        .filter(|m| m.name == "agent.events_lost")
        .map(|m| m.value)
        .sum();
    if lost > 0.0 {
        line.push_str(&format!(" (lost {lost})"));
    }
    if let Some(cpu) = snap.value("agent.cpu_pct", &[]) {
        line.push_str(&format!(" · agent cpu {cpu:.1}%"));
    }
    line.push_str(&format!(
        " · {}",
        view.anomaly.as_deref().unwrap_or("anomaly marks off")
    ));
    header.push(line);
    // What is off comes first and always fits: it is why a person looks.
    let anomalies = section_anomalies(snap);
    if !anomalies.is_empty() {
        header.push(String::new());
        header.extend(anomalies);
    }

    let mut live_events = vec![];
    if !events.is_empty() {
        live_events.push(format!(
            "LATEST SLOW EVENTS (all {} kept are listed on exit)",
            events.len()
        ));
        live_events.push(event_header());
        let skip = events.len().saturating_sub(LIVE_EVENTS);
        live_events.extend(events.iter().skip(skip).map(event_row));
    }
    let sections = [
        ("disks", section_disks(snap, h, width)),
        ("tcp", section_tcp(snap, h, width)),
        ("memory", section_memory(snap, h, width)),
        ("slow events", live_events),
    ];

    // On a terminal: header, then the syscall table with up to 10 rows, then the other sections
    // in order while they fit (one line stays for saying what did not); the syscall table takes
    // what room is left, up to TOP_SYSCALLS rows.
    let called = snap
        .metrics
        .iter()
        .filter(|m| m.name == "syscall.count")
        .count();
    let mut rest = vec![];
    let mut omitted = vec![];
    let rows_max = match view.height {
        None => {
            for (_, section) in sections.into_iter().filter(|(_, s)| !s.is_empty()) {
                rest.push(String::new());
                rest.extend(section);
            }
            TOP_SYSCALLS
        }
        Some(hgt) => {
            // Blank line, title, column names / one line when down.
            let table = match probe_state(snap, "syscall") {
                Some(true) => 3,
                Some(false) => 2,
                None => 0,
            };
            let rows = if table == 3 { called.clamp(1, 10) } else { 0 };
            let mut used = header.len() + table + rows;
            for (name, section) in sections.into_iter().filter(|(_, s)| !s.is_empty()) {
                if used + 1 + section.len() < hgt {
                    used += 1 + section.len();
                    rest.push(String::new());
                    rest.extend(section);
                } else {
                    omitted.push(name);
                }
            }
            let note = usize::from(!omitted.is_empty());
            hgt.saturating_sub(header.len() + table + rest.len() + note)
                .clamp(1, TOP_SYSCALLS)
        }
    };
    let syscalls = section_syscalls(snap, h, rows_max, width);
    let mut lines = header;
    if !syscalls.is_empty() {
        lines.push(String::new());
        lines.extend(syscalls);
    }
    lines.extend(rest);
    if !omitted.is_empty() {
        lines.push(format!("(no room for: {})", omitted.join(", ")));
    }
    if let Some(hgt) = view.height {
        lines.truncate(hgt);
    }
    lines.iter().map(|l| fit(l, width)).collect()
}

// ------------------------------------------------------------------------------------------------
// The exit report

/// One latency histogram over the whole session.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionHist {
    /// Metric base name, e.g. `syscall.latency_us`.
    pub name: &'static str,
    pub tags: Tags,
    pub count: u64,
    pub sum_ns: u64,
    /// `hist::BUCKETS` buckets, ns.
    pub buckets: Vec<u64>,
}

impl SessionHist {
    pub fn title(&self) -> String {
        let tags: Vec<&str> = self.tags.iter().map(|(_, v)| v.as_str()).collect();
        let what = match self.name {
            "syscall.latency_us" => "syscall",
            "disk.latency_us" => "disk",
            "tcp.rtt_us" => "tcp rtt",
            "tcp.connect_latency_us" => "tcp connect",
            other => other,
        };
        if tags.is_empty() {
            what.to_string()
        } else {
            format!("{what} {}", tags.join(" "))
        }
    }
}

/// Cumulative rows (see [`Collector::cumulative_histograms`]) at the end minus those at the start:
/// what happened during the session, exactly. Rows without new samples are dropped.
pub fn session_histograms(
    start: &[(&'static str, Tags, Vec<u64>)],
    end: &[(&'static str, Tags, Vec<u64>)],
) -> Vec<SessionHist> {
    let before: HashMap<(&str, &Tags), &Vec<u64>> =
        start.iter().map(|(n, t, row)| ((*n, t), row)).collect();
    end.iter()
        .filter_map(|(name, tags, row)| {
            if row.len() < layout::ROW_LEN {
                return None;
            }
            let prev = before.get(&(*name, tags));
            let cell = |i: usize| row[i].wrapping_sub(prev.map_or(0, |p| p[i]));
            let buckets: Vec<u64> = (layout::CELL_BUCKETS..layout::ROW_LEN).map(cell).collect();
            // The count is the buckets' sum, not the count cell: the kernel may be between the
            // two increments while we read, and the report's rows must add up to its count.
            let count: u64 = buckets.iter().sum();
            (count > 0).then(|| SessionHist {
                name,
                tags: tags.clone(),
                count,
                sum_ns: cell(layout::CELL_SUM),
                buckets,
            })
        })
        .collect()
}

/// What the report shows: syscalls by total time (plus the most frequent ones not among them),
/// then disks by device and op, then TCP.
pub fn select_histograms(mut all: Vec<SessionHist>) -> Vec<SessionHist> {
    let (mut sys, mut other): (Vec<_>, Vec<_>) =
        all.drain(..).partition(|h| h.name == "syscall.latency_us");
    sys.sort_by(|a, b| b.sum_ns.cmp(&a.sum_ns).then(b.count.cmp(&a.count)));
    let mut shown: Vec<SessionHist> = sys.iter().take(REPORT_BY_TIME).cloned().collect();
    let mut by_calls: Vec<&SessionHist> = sys.iter().skip(REPORT_BY_TIME).collect();
    by_calls.sort_by_key(|h| std::cmp::Reverse(h.count));
    shown.extend(by_calls.into_iter().take(REPORT_BY_CALLS).cloned());
    other.sort_by(|a, b| {
        let rank = |h: &SessionHist| {
            (
                h.name != "disk.latency_us",
                h.name == "tcp.connect_latency_us",
            )
        };
        rank(a).cmp(&rank(b)).then(a.tags.cmp(&b.tags))
    });
    shown.extend(other);
    shown
}

/// The buckets (ns, 8 per power of two) merged into power-of-two rows `[lo, hi) µs | count |
/// bar`, from the first to the last non-empty row; bars are scaled to the fullest row, and any
/// non-empty row gets at least one `*`.
pub fn bar_rows(buckets: &[u64], width: usize) -> Vec<String> {
    let per = hist::SUB_BUCKETS as usize;
    let rows: Vec<(u64, u64, u64)> = buckets
        .chunks(per)
        .enumerate()
        .map(|(r, c)| {
            let first = r * per;
            let last = (first + c.len() - 1).min(hist::BUCKETS - 1);
            (
                hist::bucket_lo(first),
                hist::bucket_hi(last),
                c.iter().sum(),
            )
        })
        .collect();
    let (Some(first), Some(last)) = (
        rows.iter().position(|r| r.2 > 0),
        rows.iter().rposition(|r| r.2 > 0),
    ) else {
        return vec![];
    };
    let max = rows.iter().map(|r| r.2).max().unwrap_or(1).max(1);
    rows[first..=last]
        .iter()
        .map(|&(lo, hi, n)| {
            let mut stars = (n as u128 * width as u128 / max as u128) as usize;
            if n > 0 {
                stars = stars.max(1);
            }
            format!(
                "  [{:>7}, {:>7}) µs {:>12} |{:<width$}|",
                fmt_num(lo as f64 / 1000.0),
                fmt_num(hi as f64 / 1000.0),
                n,
                "*".repeat(stars)
            )
        })
        .collect()
}

/// Session facts for the report's heading.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub host: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub frames: usize,
    pub filters: String,
    /// `None`: no event stream (`--no-events`).
    pub slow_threshold: Option<Duration>,
    /// Events received from the ring buffer during the session.
    pub events_received: u64,
    /// Whether kernel histograms could be read at all.
    pub kernel: bool,
}

/// The exit report: histograms as bars, then the slow events (oldest first).
pub fn render_report(
    info: &SessionInfo,
    hists: &[SessionHist],
    events: &VecDeque<TimedEvent>,
) -> Vec<String> {
    let len = info.end.duration_since(info.start).unwrap_or_default();
    let mut out = vec![format!(
        "=== ebpf-agent watch · {} · {} to {} ({}, {} intervals) · filter: {}",
        info.host,
        clock(info.start),
        clock(info.end),
        humantime::format_duration(Duration::from_secs(len.as_secs())),
        info.frames,
        if info.filters.is_empty() {
            "none"
        } else {
            &info.filters
        }
    )];
    out.push(String::new());
    if !info.kernel {
        out.push("LATENCY HISTOGRAMS: none (no kernel probe ran)".into());
    } else if hists.is_empty() {
        out.push("LATENCY HISTOGRAMS: no samples during the session".into());
    } else {
        out.push(format!(
            "LATENCY HISTOGRAMS over the whole session: exact kernel buckets (log-linear, 8 per \
             power of two), merged into power-of-two rows; syscalls: top {REPORT_BY_TIME} by \
             total time, then the {REPORT_BY_CALLS} most called others"
        ));
        for h in hists {
            out.push(String::new());
            let stats = LatencyStats::from_buckets(&h.buckets, h.sum_ns);
            let us = |ns: u64| fmt_num(ns as f64 / 1000.0);
            out.push(match stats {
                Some(s) => format!(
                    "{}: {} samples, total {} ms, mean {} µs, p50 {}, p90 {}, p99 {}, max {} µs",
                    h.title(),
                    h.count,
                    fmt_num(h.sum_ns as f64 / 1e6),
                    fmt_num(s.mean_ns / 1000.0),
                    us(s.quantiles_ns[0]),
                    us(s.quantiles_ns[1]),
                    us(s.quantiles_ns[2]),
                    us(s.max_ns)
                ),
                None => format!("{}: {} samples", h.title(), h.count),
            });
            out.extend(bar_rows(&h.buckets, BAR_WIDTH));
        }
    }
    out.push(String::new());
    let threshold = info
        .slow_threshold
        .map(|t| humantime::format_duration(t).to_string());
    if let Some(t) = &threshold
        && events.is_empty()
    {
        out.push(format!(
            "SLOW EVENTS: none at or above {t} (--slow-threshold)"
        ));
    } else if threshold.is_none() {
        out.push("SLOW EVENTS: off (--no-events)".into());
    } else {
        out.push(format!(
            "SLOW EVENTS: last {} of {} received (syscalls and block requests ≥ {}, TCP opens; \
             the watcher's own not listed); time = end of the interval that delivered them",
            events.len(),
            info.events_received,
            threshold.unwrap_or_default()
        ));
        out.push(event_header());
        out.extend(events.iter().map(event_row));
    }
    out
}

// ------------------------------------------------------------------------------------------------
// The terminal

/// Columns and rows of the terminal on stdout.
fn terminal_size() -> Option<(usize, usize)> {
    // SAFETY: an all-zero winsize is valid; TIOCGWINSZ writes only into it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: fd 1 and a valid pointer to a winsize.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}

/// stdout: the alternate screen on a terminal (left on drop, even on error), plain frames otherwise.
struct Screen {
    tty: bool,
    on_alternate: bool,
    out: io::Stdout,
}

impl Screen {
    fn new() -> io::Result<Screen> {
        let out = io::stdout();
        let tty = out.is_terminal();
        let mut s = Screen {
            tty,
            on_alternate: false,
            out,
        };
        if tty {
            // Alternate screen, cursor hidden, cleared.
            s.out.write_all(b"\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J")?;
            s.on_alternate = true;
            s.out
                .write_all("waiting for the first interval…".as_bytes())?;
            s.out.flush()?;
        }
        Ok(s)
    }

    /// Width and height for the next frame.
    fn size(&self) -> (usize, Option<usize>) {
        if self.tty {
            let (w, h) = terminal_size().unwrap_or((80, 24));
            (w, Some(h))
        } else {
            (PIPE_WIDTH, None)
        }
    }

    fn frame(&mut self, time: SystemTime, lines: &[String]) -> io::Result<()> {
        let mut buf = String::new();
        if self.tty {
            // Home, then each line cleared to its end, then the rest of the screen: no flicker,
            // and no newline after the last line, so the screen never scrolls.
            buf.push_str("\x1b[H");
            let coloured: Vec<String> = lines.iter().map(|l| colour(l)).collect();
            buf.push_str(&coloured.join("\x1b[K\r\n"));
            buf.push_str("\x1b[K\x1b[J");
        } else {
            // Whole seconds, or milliseconds for sub-second intervals.
            let subsec = time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            let stamp = if subsec == 0 {
                humantime::format_rfc3339_seconds(time).to_string()
            } else {
                humantime::format_rfc3339_millis(time).to_string()
            };
            buf.push_str(&format!("--- {stamp}\n"));
            for l in lines {
                buf.push_str(l);
                buf.push('\n');
            }
        }
        self.out.write_all(buf.as_bytes())?;
        self.out.flush()
    }

    fn leave(&mut self) {
        if self.on_alternate {
            self.on_alternate = false;
            let _ = self.out.write_all(b"\x1b[?25h\x1b[?1049l");
            let _ = self.out.flush();
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.leave();
    }
}

/// On a terminal: marked rows bold, critical lines red, warning lines yellow.
fn colour(line: &str) -> String {
    let code = if line.starts_with("critical") {
        "1;31"
    } else if line.starts_with("warning") {
        "1;33"
    } else if line.starts_with('▲') || line.starts_with('▼') {
        "1"
    } else {
        return line.to_string();
    };
    format!("\x1b[{code}m{line}\x1b[0m")
}

fn quiet_pipe(r: io::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        // A closed stdout (e.g. `| head`) ends the view quietly.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Where `watch` reads the daemon's baseline and with which detector settings: `--state-dir`,
/// else the configuration file's (`--config`, else the default file when it exists), else the
/// default directory. `None` with `--no-anomaly`. A bad file is an error (exit 2).
pub fn anomaly_settings(
    args: &WatchArgs,
) -> Result<Option<(PathBuf, DetectorConfig)>, ConfigError> {
    if args.no_anomaly {
        return Ok(None);
    }
    let (dir, cfg) = match config::path(args.config.as_deref()) {
        Some(p) => config::anomaly_settings(&config::load(&p)?)?,
        None => (None, None),
    };
    let dir = args
        .state_dir
        .clone()
        .or(dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    Ok(Some((dir, cfg.unwrap_or_default())))
}

/// The header's word on anomaly marks.
fn anomaly_note(d: &Detection, v: &Verdicts, dir: &Path, warmup: u32) -> String {
    if d.loaded_keys == 0 && v.scores.is_empty() {
        format!(
            "anomalies: learning, no baseline in {} (marks after {warmup} intervals)",
            dir.display()
        )
    } else {
        format!("anomalies {}, baseline {} keys", v.active, d.loaded_keys)
    }
}

pub async fn watch(args: WatchArgs, judge: Option<(PathBuf, DetectorConfig)>) -> Result<ExitCode> {
    let mut common = args.common.settings();
    let slow_threshold = common
        .enable
        .slow_events
        .then(|| *common.slow_threshold.get_or_insert(DEFAULT_SLOW));
    let mut filters = vec![];
    if let Some(pid) = common.pid {
        filters.push(format!("pid {pid}"));
    }
    if let Some(comm) = &common.comm {
        filters.push(format!("comm {comm}"));
    }
    // The kernel applies them to the syscall probe only.
    let filters = if filters.is_empty() {
        String::new()
    } else {
        format!("{} (syscalls only)", filters.join(", "))
    };
    // Read-only: the session learns as it goes but never writes the daemon's file. Filtered
    // syscall figures are not what the baseline learnt, so they are not judged.
    let mut judge = judge.map(|(dir, mut cfg)| {
        if !filters.is_empty() {
            cfg.exclude.push("syscall.".into());
        }
        // agent.* describe this watcher (its own events and CPU), not what the daemon learnt.
        cfg.exclude.push("agent.".into());
        let warmup = cfg.warmup;
        (Detection::read_only(cfg, &dir), dir, warmup)
    });
    let host = hostname();
    let interval = common.interval;
    let mut collector = Collector::start(&common);
    tracing::info!(
        "{} (every {})",
        collector.summary(),
        humantime::format_duration(interval)
    );
    // Warnings and the line above stay on the main screen, readable after exit.
    let mut screen = Screen::new()?;

    let mut ticker = Ticker::new(interval, false)?;
    // Prime at the first boundary so every frame shows a whole interval.
    let Some(session_start) = ticker.first(common.duration).await else {
        return Ok(ExitCode::SUCCESS);
    };
    let baseline = collector.cumulative_histograms();
    collector.prime();

    let mut history = History::default();
    let mut events: VecDeque<TimedEvent> = VecDeque::with_capacity(KEEP_EVENTS);
    let mut events_received = 0u64;
    let mut frames = 0usize;
    let mut open = true;
    let mut session_end;
    loop {
        let Tick::Interval { end, len, last } = ticker.next().await else {
            continue; // no SIGHUP handling in watch
        };
        let mut stopping = last;
        session_end = end;
        if len > Duration::ZERO {
            let mut snap = collector.collect(end, len, &host);
            let anomaly = judge.as_mut().map(|(d, dir, warmup)| {
                let v = d.annotate(&mut snap);
                anomaly_note(d, &v, dir, *warmup)
            });
            history.record(&snap);
            events_received += snap.value("agent.events", &[]).unwrap_or(0.0) as u64;
            // The watcher's own waits (its runtime's epoll_wait, futex) would crowd the list.
            let own = std::process::id();
            for e in collector.last_events.drain(..).filter(|e| e.pid != own) {
                if events.len() == KEEP_EVENTS {
                    events.pop_front();
                }
                events.push_back(TimedEvent {
                    time: end,
                    event: e,
                });
            }
            let (width, height) = screen.size();
            let view = View {
                width,
                height,
                filters: filters.clone(),
                slow_threshold,
                elapsed: end.duration_since(session_start).unwrap_or_default(),
                hint: screen.tty,
                anomaly,
            };
            let lines = render_frame(&snap, &history, &events, &view);
            frames += 1;
            if !quiet_pipe(screen.frame(end, &lines))? {
                open = false;
                stopping = true;
            }
        }
        if stopping {
            break;
        }
    }
    let hists = session_histograms(&baseline, &collector.cumulative_histograms());
    let kernel = collector.kernel.is_some();
    collector.stop();
    drop(collector); // detaches every program
    screen.leave();
    if open {
        let info = SessionInfo {
            host,
            start: session_start,
            end: session_end,
            frames,
            filters,
            slow_threshold,
            events_received,
            kernel,
        };
        let mut text = render_report(&info, &select_histograms(hists), &events).join("\n");
        text.push('\n');
        let mut out = io::stdout().lock();
        quiet_pipe(out.write_all(text.as_bytes()).and_then(|()| out.flush()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Metric;

    fn snap(metrics: Vec<Metric>) -> Snapshot {
        Snapshot {
            annotations: Default::default(),
            time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            interval: Duration::from_secs(1),
            host: "testhost".into(),
            metrics,
        }
    }

    fn syscall(name: &str, count: u64, mean_us: f64, p99_us: f64, errors: u64) -> Vec<Metric> {
        let t = || vec![("syscall", name.to_string())];
        vec![
            Metric::counter("syscall.count", t(), count),
            Metric::counter("syscall.errors", t(), errors),
            Metric::gauge("syscall.latency_us.mean", t(), mean_us),
            Metric::gauge("syscall.latency_us.p99", t(), p99_us),
        ]
    }

    fn up(probe: &str) -> Metric {
        Metric::gauge("agent.probe_up", vec![("probe", probe.into())], 1.0)
    }

    fn view() -> View {
        View {
            width: PIPE_WIDTH,
            height: None,
            filters: String::new(),
            slow_threshold: Some(DEFAULT_SLOW),
            elapsed: Duration::from_secs(5),
            hint: false,
            anomaly: None,
        }
    }

    fn sample_snapshot(getppid_calls: u64) -> Snapshot {
        let mut m = vec![up("syscall"), up("disk"), up("tcp"), up("procfs")];
        m.extend(syscall("futex", 10, 100_000.0, 500_000.0, 2));
        m.extend(syscall("getppid", getppid_calls, 0.3, 1.0, 0));
        m.extend(syscall("read", 1000, 2.0, 10.0, 0));
        let disk = || vec![("device", "vda".to_string()), ("op", "write".to_string())];
        m.push(Metric::counter("disk.ops", disk(), 12));
        m.push(Metric::counter("disk.bytes", disk(), 3_000_000));
        m.push(Metric::gauge("disk.latency_us.p50", disk(), 350.0));
        m.push(Metric::gauge("disk.latency_us.p99", disk(), 1200.0));
        m.push(Metric::counter("tcp.connects", vec![], 3));
        m.push(Metric::counter("tcp.accepts", vec![], 3));
        m.push(Metric::counter("tcp.retransmits", vec![], 0));
        m.push(Metric::counter("tcp.resets", vec![], 1));
        m.push(Metric::gauge("tcp.rtt_us.p50", vec![], 42.0));
        m.push(Metric::gauge("tcp.rtt_us.p99", vec![], 120.0));
        m.push(Metric::gauge(
            "mem.total_bytes",
            vec![],
            8.0 * (1u64 << 30) as f64,
        ));
        m.push(Metric::gauge(
            "mem.used_bytes",
            vec![],
            2.0 * (1u64 << 30) as f64,
        ));
        m.push(Metric::gauge(
            "mem.available_bytes",
            vec![],
            6.0 * (1u64 << 30) as f64,
        ));
        m.push(Metric::gauge("swap.used_bytes", vec![], 0.0));
        m.push(Metric::gauge("swap.total_bytes", vec![], 0.0));
        m.push(Metric::gauge("cpu.iowait_pct", vec![], 1.5));
        m.push(Metric::gauge("psi.io.some_avg10", vec![], 0.25));
        snap(m)
    }

    fn anomaly(name: &str, tags: Tags, state: &'static str, value: f64, usual: f64) -> Anomaly {
        Anomaly {
            description: format!("{name} is {value}: its usual {usual}"),
            name: name.into(),
            tags,
            state,
            score: 0.9,
            value,
            usual,
            since_s: 3.0,
            changed: false,
        }
    }

    #[test]
    fn anomalous_rows_stand_out_with_their_description() {
        let mut s = sample_snapshot(50_000);
        let read = || vec![("syscall", "read".to_string())];
        let disk = || vec![("device", "vda".to_string()), ("op", "write".to_string())];
        s.annotations.anomalies = vec![
            anomaly("syscall.latency_us.p99", read(), "critical", 10.0, 2.0),
            anomaly("syscall.latency_us.mean", read(), "warning", 5.0, 2.0),
            anomaly("disk.ops", disk(), "warning", 12.0, 400.0),
            anomaly("tcp.resets", vec![], "warning", 1.0, 0.0),
            anomaly("psi.io.some_avg10", vec![], "warning", 0.25, 0.0),
            // Back to ok this interval: listed by the detector, not marked.
            anomaly("mem.used_bytes", vec![], "ok", 1.0, 1.0),
        ];
        let mut v = view();
        v.anomaly = Some("anomalies 4, baseline 812 keys".into());
        let f = render_frame(&s, &History::default(), &VecDeque::new(), &v);
        assert!(f[1].ends_with("anomalies 4, baseline 812 keys"), "{f:#?}");
        let at = f
            .iter()
            .position(|l| l.starts_with("ANOMALIES (5 not usual"))
            .unwrap();
        assert_eq!(
            f[at + 1],
            "critical syscall.latency_us.p99 is 10: its usual 2 (and 1 more of its metrics)",
            "{f:#?}"
        );
        assert!(f[at + 2].starts_with("warning  disk.ops is 12"), "{f:#?}");
        // Up or down from the usual, on the row of the metric.
        let row = |start: &str| f.iter().find(|l| l.starts_with(start)).cloned();
        assert!(row("▲ read ").is_some(), "{f:#?}");
        assert!(row("▼ vda write").is_some(), "{f:#?}");
        assert!(row("▲ resets/s").is_some(), "{f:#?}");
        assert!(row("▲ psi io some").is_some(), "{f:#?}");
        assert!(
            row("getppid ").is_some() && row("mem used").is_some(),
            "{f:#?}"
        );
        // Columns stay aligned: the mark takes room from the name.
        let calls = |l: &str| l.chars().take(32).collect::<String>();
        assert_eq!(
            calls(&row("▲ read ").unwrap()).trim_end(),
            "▲ read                      1000"
        );
        // On a terminal, marked and described lines are coloured; others are left alone.
        assert_eq!(colour("critical x"), "\x1b[1;31mcritical x\x1b[0m");
        assert_eq!(colour("▲ read"), "\x1b[1m▲ read\x1b[0m");
        assert_eq!(colour("read"), "read");
        // Without marks the header says so.
        let f = render_frame(&s, &History::default(), &VecDeque::new(), &view());
        assert!(f[1].ends_with("anomaly marks off"), "{f:#?}");
    }

    #[test]
    fn sparkline_scales_to_the_window() {
        assert_eq!(
            sparkline(&[0.0, 1.0, 2.0, 4.0, 8.0], 5, Scale::FromZero),
            "▁▂▃▅█"
        );
        // Shorter history is right-aligned; longer is cut to the newest points.
        assert_eq!(sparkline(&[8.0], 3, Scale::FromZero), "  █");
        let long: Vec<f64> = (0..100).map(|i| i as f64).collect();
        let s = sparkline(&long, 60, Scale::FromZero);
        assert_eq!(s.chars().count(), 60);
        assert!(s.ends_with('█'));
        // Gaps are blank, flat zero is the lowest block, width 0 is empty.
        assert_eq!(sparkline(&[f64::NAN, 0.0, 0.0], 3, Scale::FromZero), " ▁▁");
        assert_eq!(sparkline(&[1.0, 2.0], 0, Scale::FromZero), "");
        assert_eq!(sparkline(&[], 2, Scale::Range), "  ");
        // Levels: the range is stretched, but noise under 2% of the level stays low.
        assert_eq!(sparkline(&[100.0, 150.0, 200.0], 3, Scale::Range), "▁▅█");
        let flat = sparkline(&[1000.0, 1001.0, 1000.0], 3, Scale::Range);
        assert!(
            flat.chars().all(|c| c == '▁' || c == '▂' || c == '▃'),
            "{flat}"
        );
    }

    #[test]
    fn numbers_are_short_and_rates_exact() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(0.256), "0.256");
        assert_eq!(fmt_num(1.024), "1.02");
        assert_eq!(fmt_num(16.384), "16.4");
        assert_eq!(fmt_num(131.07), "131");
        assert_eq!(fmt_num(48_296.4), "48296");
        assert_eq!(fmt_num(134_217.7), "134k");
        assert_eq!(fmt_num(1_020_000.0), "1.02M");
        assert_eq!(fmt_rate(50_000.0), "50000");
        assert_eq!(fmt_rate(2.5), "2.5");
        assert_eq!(fmt_rate(3.0), "3");
        assert_eq!(fmt_bytes(0.0), "0 B");
        assert_eq!(fmt_bytes(1536.0 * 1024.0), "1.50 MiB");
        assert_eq!(fit("abcdef  ", 4), "abcd");
        assert_eq!(fit("▁▂▃", 2), "▁▂");
        assert_eq!(fit("ab  ", 10), "ab");
    }

    #[test]
    fn history_is_bounded_and_fills_gaps() {
        let mut h = History::default();
        for i in 0..(HISTORY + 10) {
            let mut m = vec![Metric::gauge("mem.used_bytes", vec![], i as f64)];
            if i % 2 == 0 {
                m.extend(syscall("read", 10, 1.0, 1.0, 0));
            }
            h.record(&snap(m));
        }
        let read = h.points("syscall read");
        assert_eq!(read.len(), HISTORY);
        // Absent rates are 0, present ones per second.
        assert!(read.iter().all(|&v| v == 0.0 || v == 10.0));
        assert_eq!(read.iter().filter(|&&v| v == 0.0).count(), HISTORY / 2);
        assert_eq!(h.points("mem.used").last(), Some(&((HISTORY + 9) as f64)));

        // Many distinct keys: only MAX_KEYS stay, the most recently active ones.
        let mut h = History::default();
        for i in 0..(MAX_KEYS + 50) {
            h.record(&snap(syscall(&format!("sys_{i}"), 1, 1.0, 1.0, 0)));
        }
        assert_eq!(h.len(), MAX_KEYS);
        assert!(h.points(&syscall_key("sys_0")).is_empty());
        assert!(
            !h.points(&syscall_key(&format!("sys_{}", MAX_KEYS + 49)))
                .is_empty()
        );
    }

    #[test]
    fn frame_ranks_syscalls_by_total_time() {
        let mut h = History::default();
        let mut s = sample_snapshot(0);
        for calls in [100, 50_000, 200] {
            s = sample_snapshot(calls);
            h.record(&s);
        }
        let lines = render_frame(&s, &h, &VecDeque::new(), &view());
        let text = lines.join("\n");
        assert!(
            lines[0].starts_with("ebpf-agent watch · testhost"),
            "{text}"
        );
        assert!(
            lines[1].contains("collecting: syscall, disk, tcp, procfs"),
            "{text}"
        );
        assert!(lines[1].contains("filter: none"), "{text}");
        let rows: Vec<&String> = lines
            .iter()
            .skip_while(|l| !l.starts_with("TOP SYSCALLS"))
            .skip(2)
            .take_while(|l| !l.is_empty())
            .collect();
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r.split_whitespace().next().unwrap())
            .collect();
        // futex 10 × 100 ms, read 1000 × 2 µs, getppid 200 × 0.3 µs.
        assert_eq!(names, ["futex", "read", "getppid"], "{text}");
        let getppid: Vec<&str> = rows[2].split_whitespace().collect();
        assert_eq!(&getppid[1..6], ["200", "0.300", "1.00", "0", "0.060"]);
        // The sparkline shows the 50,000-call spike between two quiet intervals.
        assert!(rows[2].ends_with("▂█▂"), "{}", rows[2]);
        assert!(text.contains("vda write"), "{text}");
        assert!(text.contains("3.00"), "MB/s of vda write: {text}");
        assert!(text.contains("connects/s"), "{text}");
        assert!(text.contains("42.0 / 120"), "{text}");
        assert!(text.contains("2.00 GiB of 8.00 GiB"), "{text}");
        assert!(text.contains("psi io some avg10 %"), "{text}");
        assert!(!text.contains("psi cpu"), "absent PSI is not shown: {text}");
        assert!(!text.contains('\x1b'), "no escape codes in frames");
    }

    #[test]
    fn frame_reports_down_probes_and_filters() {
        let mut m = vec![
            up("procfs"),
            Metric::gauge("agent.probe_up", vec![("probe", "syscall".into())], 0.0),
        ];
        m.push(Metric::gauge("mem.used_bytes", vec![], 1.0));
        let s = snap(m);
        let mut v = view();
        v.filters = "pid 42".into();
        let text = render_frame(&s, &History::default(), &VecDeque::new(), &v).join("\n");
        assert!(
            text.contains("collecting: procfs · down: syscall"),
            "{text}"
        );
        assert!(text.contains("filter: pid 42"), "{text}");
        assert!(text.contains("SYSCALLS: probe down"), "{text}");
        assert!(!text.contains("DISKS"), "disk not asked for: {text}");
    }

    #[test]
    fn frame_fits_any_terminal() {
        let s = sample_snapshot(5);
        let mut h = History::default();
        h.record(&s);
        let events: VecDeque<TimedEvent> = (0..3)
            .map(|i| TimedEvent {
                time: s.time,
                event: EventView {
                    kind: "slow_syscall",
                    pid: 7,
                    tid: 7,
                    comm: "postgres".into(),
                    latency_us: 12_000.0 + i as f64,
                    target: "fsync".into(),
                    ret: Some(0),
                },
            })
            .collect();
        for (w, hgt) in [(0, 0), (1, 1), (10, 3), (40, 10), (80, 24), (200, 60)] {
            let mut v = view();
            v.width = w;
            v.height = Some(hgt);
            let lines = render_frame(&s, &h, &events, &v);
            assert!(lines.len() <= hgt, "{w}x{hgt}");
            assert!(lines.iter().all(|l| l.chars().count() <= w), "{w}x{hgt}");
        }
        // A short terminal keeps 10 syscall rows and says which sections did not fit.
        let mut many = sample_snapshot(5);
        for i in 0..15 {
            many.metrics
                .extend(syscall(&format!("sys_{i}"), 1, 1.0, 1.0, 0));
        }
        let mut v = view();
        v.height = Some(24);
        let lines = render_frame(&many, &h, &events, &v);
        assert_eq!(lines.len(), 24, "{lines:#?}");
        let rows = lines
            .iter()
            .skip_while(|l| !l.starts_with("TOP SYSCALLS"))
            .skip(2)
            .take_while(|l| !l.is_empty())
            .count();
        // 10 rows at least; what the skipped sections leave goes to the table too.
        assert_eq!(rows, 14, "{lines:#?}");
        assert_eq!(
            lines.last().unwrap(),
            "(no room for: tcp, memory, slow events)",
            "{lines:#?}"
        );
        // A tall terminal shows the whole frame, events included.
        let mut v = view();
        v.height = Some(100);
        let text = render_frame(&s, &h, &events, &v).join("\n");
        assert!(text.contains("LATEST SLOW EVENTS"), "{text}");
        assert!(text.contains("postgres"), "{text}");
    }

    #[test]
    fn bars_merge_buckets_into_power_of_two_rows() {
        let mut b = vec![0u64; hist::BUCKETS];
        // 1000 samples at 300 ns, 10 at 1.5 µs, 1 at 10 ms.
        b[hist::bucket(300)] += 600;
        b[hist::bucket(400)] += 400;
        b[hist::bucket(1_500)] += 10;
        b[hist::bucket(10_000_000)] += 1;
        let rows = bar_rows(&b, 40);
        // From [256, 512) ns to [8.39, 16.8) ms: rows for 2^8 .. 2^23 ns.
        assert_eq!(rows.len(), 16, "{rows:#?}");
        assert!(
            rows[0].starts_with("  [  0.256,   0.512) µs         1000 |"),
            "{}",
            rows[0]
        );
        assert!(rows[0].ends_with(&format!("|{}|", "*".repeat(40))));
        assert!(rows[2].contains("[   1.02,    2.05)"), "{}", rows[2]);
        assert!(rows[2].contains(" 10 |*"), "{}", rows[2]);
        assert!(
            rows[1].ends_with(&format!("|{}|", " ".repeat(40))),
            "empty rows have no bar"
        );
        assert!(rows[15].contains("[   8389,   16777) µs"), "{}", rows[15]);
        assert!(rows[15].contains(" 1 |*  "), "a lone sample still shows");
        assert!(bar_rows(&vec![0; hist::BUCKETS], 40).is_empty());
        // Values under 8 ns and clamped values have rows too.
        let mut b = vec![0u64; hist::BUCKETS];
        b[0] = 1;
        b[hist::BUCKETS - 1] = 1;
        let rows = bar_rows(&b, 10);
        assert!(
            rows[0].starts_with("  [      0,   0.008) µs"),
            "{}",
            rows[0]
        );
        assert_eq!(rows.len(), hist::BUCKETS / 8);
    }

    fn row(count: u64, sum: u64, at_ns: &[(u64, u64)]) -> Vec<u64> {
        let mut r = vec![0u64; layout::ROW_LEN];
        r[layout::CELL_COUNT] = count;
        r[layout::CELL_SUM] = sum;
        for &(v, n) in at_ns {
            r[layout::CELL_BUCKETS + hist::bucket(v)] += n;
        }
        r
    }

    #[test]
    fn session_histograms_are_end_minus_start() {
        let t = |s: &str| vec![("syscall", s.to_string())];
        let start = vec![
            (
                "syscall.latency_us",
                t("read"),
                row(10, 10_000, &[(1_000, 10)]),
            ),
            ("syscall.latency_us", t("idle"), row(5, 5, &[(1, 5)])),
        ];
        let end = vec![
            (
                "syscall.latency_us",
                t("read"),
                row(15, 20_000, &[(1_000, 10), (2_000, 5)]),
            ),
            ("syscall.latency_us", t("idle"), row(5, 5, &[(1, 5)])),
            ("syscall.latency_us", t("getppid"), row(3, 900, &[(300, 3)])),
            ("tcp.rtt_us", vec![], row(2, 200_000, &[(100_000, 2)])),
        ];
        let h = session_histograms(&start, &end);
        assert_eq!(h.len(), 3, "idle had nothing new: {h:#?}");
        assert_eq!((h[0].count, h[0].sum_ns), (5, 10_000));
        assert_eq!(h[0].buckets.iter().sum::<u64>(), 5);
        assert_eq!(h[0].buckets[hist::bucket(2_000)], 5);
        assert_eq!(h[1].title(), "syscall getppid");
        assert_eq!(h[2].title(), "tcp rtt");

        let shown = select_histograms(h);
        let titles: Vec<String> = shown.iter().map(SessionHist::title).collect();
        assert_eq!(titles, ["syscall read", "syscall getppid", "tcp rtt"]);
    }

    #[test]
    fn select_adds_the_most_called_syscalls() {
        let mk = |name: &str, count: u64, sum_ns: u64| SessionHist {
            name: "syscall.latency_us",
            tags: vec![("syscall", name.to_string())],
            count,
            sum_ns,
            buckets: vec![0; hist::BUCKETS],
        };
        let mut all: Vec<SessionHist> = (0..20)
            .map(|i| mk(&format!("slow{i}"), 1, 1_000_000_000 + i))
            .collect();
        all.push(mk("getppid", 50_000, 10_000_000));
        all.push(SessionHist {
            name: "disk.latency_us",
            tags: vec![("device", "vda".into()), ("op", "read".into())],
            ..mk("x", 1, 1)
        });
        let shown = select_histograms(all);
        assert_eq!(shown.len(), REPORT_BY_TIME + REPORT_BY_CALLS + 1);
        assert_eq!(shown[0].title(), "syscall slow19");
        assert_eq!(shown[REPORT_BY_TIME].title(), "syscall getppid");
        assert_eq!(shown.last().unwrap().title(), "disk vda read");
    }

    #[test]
    fn report_draws_histograms_and_events() {
        let mut b = vec![0u64; hist::BUCKETS];
        b[hist::bucket(300)] = 50_000;
        let hists = vec![SessionHist {
            name: "syscall.latency_us",
            tags: vec![("syscall", "getppid".into())],
            count: 50_000,
            sum_ns: 15_000_000,
            buckets: b,
        }];
        let info = SessionInfo {
            host: "h".into(),
            start: UNIX_EPOCH + Duration::from_secs(100),
            end: UNIX_EPOCH + Duration::from_secs(103),
            frames: 3,
            filters: "pid 9".into(),
            slow_threshold: Some(DEFAULT_SLOW),
            events_received: 70,
            kernel: true,
        };
        let events: VecDeque<TimedEvent> = [TimedEvent {
            time: info.end,
            event: EventView {
                kind: "slow_disk",
                pid: 1,
                tid: 1,
                comm: "jbd2/vda1-8".into(),
                latency_us: 25_000.0,
                target: "vda write".into(),
                ret: Some(4096),
            },
        }]
        .into();
        let lines = render_report(&info, &hists, &events);
        let text = lines.join("\n");
        assert!(lines[0].starts_with("=== ebpf-agent watch · h"), "{text}");
        assert!(text.contains("(3s, 3 intervals) · filter: pid 9"), "{text}");
        assert!(text.contains("exact kernel buckets"), "{text}");
        assert!(
            text.contains("syscall getppid: 50000 samples, total 15.0 ms, mean 0.300 µs"),
            "{text}"
        );
        assert!(
            text.contains("[  0.256,   0.512) µs        50000 |****"),
            "{text}"
        );
        assert!(
            text.contains("SLOW EVENTS: last 1 of 70 received"),
            "{text}"
        );
        assert!(text.contains("disk    jbd2/vda1-8"), "{text}");
        assert!(text.contains("vda write"), "{text}");
        assert!(text.contains("25000 µs  ret 4096"), "{text}");

        let none = render_report(
            &SessionInfo {
                kernel: false,
                ..info.clone()
            },
            &[],
            &VecDeque::new(),
        )
        .join("\n");
        assert!(none.contains("none (no kernel probe ran)"), "{none}");
        assert!(
            none.contains("SLOW EVENTS: none at or above 10ms"),
            "{none}"
        );
        let off = SessionInfo {
            slow_threshold: None,
            ..info
        };
        let off = render_report(&off, &[], &VecDeque::new()).join("\n");
        assert!(off.contains("SLOW EVENTS: off (--no-events)"), "{off}");
    }
}
