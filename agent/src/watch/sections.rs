//! One section of a frame per source (syscalls, disks, TCP, memory and pressure, slow events),
//! each a [`Section`]: the same signature, nothing shared between them but [`SectionCtx`] and
//! the helpers of [`super::layout`] and [`super::model`], so each can move next to its probe.
//!
//! The metric names `watch` reads are listed once, below, until the probes publish a typed
//! catalogue to point them at.

use agent_core::format::{self, Style::Column};

use super::{
    layout::{Line, event_header, event_row, kv_row, spark_width},
    model::{
        History, Mark, Scale, TimedEvent, disk_key, mark, named, probe_state, sparkline,
        syscall_key, syscall_rows, tcp_key, window,
    },
};
use crate::snapshot::{Snapshot, tags_include};
use std::collections::VecDeque;

// ------------------------------------------------------------------------------------------------
// Metric names read by `watch` (frames, history and the exit report)

pub(super) const AGENT_PROBE_UP: &str = "agent.probe_up";
pub(super) const AGENT_EVENTS: &str = "agent.events";
pub(super) const AGENT_EVENTS_LOST: &str = "agent.events_lost";
pub(super) const AGENT_CPU_PCT: &str = "agent.cpu_pct";

pub(super) const SYSCALL_COUNT: &str = "syscall.count";
pub(super) const SYSCALL_ERRORS: &str = "syscall.errors";
pub(super) const SYSCALL_LATENCY: &str = "syscall.latency_us";
pub(super) const SYSCALL_LATENCY_MEAN: &str = "syscall.latency_us.mean";
pub(super) const SYSCALL_LATENCY_P99: &str = "syscall.latency_us.p99";
/// Every syscall metric, for the row's mark.
const SYSCALL_FAMILY: &str = "syscall.";

pub(super) const DISK_OPS: &str = "disk.ops";
pub(super) const DISK_BYTES: &str = "disk.bytes";
pub(super) const DISK_LATENCY: &str = "disk.latency_us";
pub(super) const DISK_LATENCY_P50: &str = "disk.latency_us.p50";
pub(super) const DISK_LATENCY_P99: &str = "disk.latency_us.p99";
const DISK_FAMILY: &str = "disk.";

pub(super) const TCP_CONNECTS: &str = "tcp.connects";
pub(super) const TCP_ACCEPTS: &str = "tcp.accepts";
pub(super) const TCP_RETRANSMITS: &str = "tcp.retransmits";
pub(super) const TCP_RESETS: &str = "tcp.resets";
pub(super) const TCP_RTT: &str = "tcp.rtt_us";
pub(super) const TCP_RTT_P50: &str = "tcp.rtt_us.p50";
pub(super) const TCP_RTT_P99: &str = "tcp.rtt_us.p99";
const TCP_RTT_FAMILY: &str = "tcp.rtt_us.";
pub(super) const TCP_CONNECT_LATENCY: &str = "tcp.connect_latency_us";
pub(super) const TCP_CONNECT_LATENCY_P99: &str = "tcp.connect_latency_us.p99";
const TCP_CONNECT_LATENCY_FAMILY: &str = "tcp.connect_latency_us.";

pub(super) const MEM_TOTAL: &str = "mem.total_bytes";
pub(super) const MEM_USED: &str = "mem.used_bytes";
pub(super) const MEM_AVAILABLE: &str = "mem.available_bytes";
pub(super) const SWAP_TOTAL: &str = "swap.total_bytes";
pub(super) const SWAP_USED: &str = "swap.used_bytes";
pub(super) const CPU_IOWAIT_PCT: &str = "cpu.iowait_pct";
/// Pressure stall information: (resource, `some avg10` metric, family for the row's mark).
pub(super) const PSI: [(&str, &str, &str); 3] = [
    ("cpu", "psi.cpu.some_avg10", "psi.cpu."),
    ("io", "psi.io.some_avg10", "psi.io."),
    ("memory", "psi.memory.some_avg10", "psi.memory."),
];

/// Probe names of `agent.probe_up`.
pub(super) const PROBE_SYSCALL: &str = "syscall";
pub(super) const PROBE_DISK: &str = "disk";
pub(super) const PROBE_TCP: &str = "tcp";
pub(super) const PROBE_PROCFS: &str = "procfs";

/// TCP counters shown per second: (row label, metric).
pub(super) const TCP_COUNTERS: [(&str, &str); 4] = [
    ("connects", TCP_CONNECTS),
    ("accepts", TCP_ACCEPTS),
    ("retransmits", TCP_RETRANSMITS),
    ("resets", TCP_RESETS),
];
/// Levels kept in history besides the rates: `(key, metric)`.
pub(super) const LEVELS: [(&str, &str); 9] = [
    ("mem.used", MEM_USED),
    ("mem.available", MEM_AVAILABLE),
    ("swap.used", SWAP_USED),
    ("cpu.iowait", CPU_IOWAIT_PCT),
    ("psi.cpu", PSI[0].1),
    ("psi.io", PSI[1].1),
    ("psi.memory", PSI[2].1),
    ("tcp.rtt.p99", TCP_RTT_P99),
    ("tcp.connect.p99", TCP_CONNECT_LATENCY_P99),
];

// ------------------------------------------------------------------------------------------------
// Sections

/// Slow events shown live at the bottom of a frame.
const LIVE_EVENTS: usize = 5;

/// Everything a section may read.
pub struct SectionCtx<'a> {
    pub snap: &'a Snapshot,
    pub history: &'a History,
    pub events: &'a VecDeque<TimedEvent>,
    /// Characters per line.
    pub width: usize,
    /// Rows the syscall table may take (the layout decides, from what else fits).
    pub syscall_rows: usize,
}

/// A frame section: its lines, or none when its source is not running.
pub type Section = fn(&SectionCtx) -> Vec<Line>;

/// `TITLE: probe down ...` when `probe` is down, nothing when it was not asked for.
fn probe_down(snap: &Snapshot, probe: &str, title: &str) -> Option<Vec<Line>> {
    match probe_state(snap, probe) {
        None => Some(vec![]),
        Some(false) => Some(vec![Line::plain(format!(
            "{title}: probe down (see the warning printed at start)"
        ))]),
        Some(true) => None,
    }
}

/// `label` after its mark, as a toned line's start.
fn marked(m: Option<Mark>, label: &str) -> String {
    format!("{}{label}", Mark::prefix(m))
}

pub fn syscall_section(ctx: &SectionCtx) -> Vec<Line> {
    let (snap, h, width) = (ctx.snap, ctx.history, ctx.width);
    if let Some(lines) = probe_down(snap, PROBE_SYSCALL, "SYSCALLS") {
        return lines;
    }
    let secs = snap.interval.as_secs_f64().max(1e-9);
    let rows = syscall_rows(snap);
    let mut out = vec![Line::plain(format!(
        "TOP SYSCALLS BY TOTAL TIME ({} of {} called)",
        rows.len().min(ctx.syscall_rows),
        rows.len()
    ))];
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
    out.push(Line::plain(format!("{head}{legend}")));
    if rows.is_empty() {
        out.push(Line::plain("  (no syscalls in this interval)"));
    }
    let num = |v: Option<f64>| v.map_or("-".into(), |v| format::number(v, Column));
    for r in rows.iter().take(ctx.syscall_rows) {
        let tag = [("syscall", r.name)];
        let mean = snap.value(SYSCALL_LATENCY_MEAN, &tag);
        let p99 = snap.value(SYSCALL_LATENCY_P99, &tag);
        let errors = snap.value(SYSCALL_ERRORS, &tag).unwrap_or(0.0);
        let m = mark(snap, |a| {
            named(a, SYSCALL_FAMILY) && tags_include(&a.tags, &tag)
        });
        out.push(Line::marked(
            m,
            format!(
                "{:<22}{:>10}{:>10}{:>10}{:>8}{:>11}  {}",
                marked(m, r.name),
                format::count(r.count / secs),
                num(mean),
                num(p99),
                format::count(errors / secs),
                format::number(r.total_us / 1000.0 / secs, Column),
                sparkline(&h.points(&syscall_key(r.name)), spark_w, Scale::FromZero)
            ),
        ));
    }
    out
}

pub fn disk_section(ctx: &SectionCtx) -> Vec<Line> {
    let (snap, h, width) = (ctx.snap, ctx.history, ctx.width);
    if let Some(lines) = probe_down(snap, PROBE_DISK, "DISKS") {
        return lines;
    }
    let secs = snap.interval.as_secs_f64().max(1e-9);
    let head = format!(
        "{:<22}{:>10}{:>10}{:>10}{:>10}  ",
        "device op", "ops/s", "MB/s", "p50 µs", "p99 µs"
    );
    let spark_w = spark_width(width, head.chars().count());
    let mut out = vec![Line::plain("DISKS")];
    let legend = if spark_w > 0 {
        format!("ops/s, last {}", window(snap))
    } else {
        String::new()
    };
    out.push(Line::plain(format!("{head}{legend}")));
    // Devices busy now or within the window.
    let mut keys: Vec<(String, String)> = snap
        .metrics
        .iter()
        .filter(|m| m.name == DISK_OPS)
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
        out.push(Line::plain("  (no block I/O in the last minute)"));
    }
    let num = |v: Option<f64>| v.map_or("-".into(), |v| format::number(v, Column));
    for (dev, op) in keys {
        let tags = [("device", dev.as_str()), ("op", op.as_str())];
        let ops = snap.value(DISK_OPS, &tags).unwrap_or(0.0);
        let bytes = snap.value(DISK_BYTES, &tags).unwrap_or(0.0);
        let m = mark(snap, |a| {
            named(a, DISK_FAMILY) && tags_include(&a.tags, &tags)
        });
        out.push(Line::marked(
            m,
            format!(
                "{:<22}{:>10}{:>10}{:>10}{:>10}  {}",
                marked(m, &format!("{dev} {op}")),
                format::count(ops / secs),
                format::sig(bytes / secs / 1e6, Column),
                num(snap.value(DISK_LATENCY_P50, &tags)),
                num(snap.value(DISK_LATENCY_P99, &tags)),
                sparkline(&h.points(&disk_key(&dev, &op)), spark_w, Scale::FromZero)
            ),
        ));
    }
    out
}

pub fn tcp_section(ctx: &SectionCtx) -> Vec<Line> {
    let (snap, h, width) = (ctx.snap, ctx.history, ctx.width);
    if let Some(lines) = probe_down(snap, PROBE_TCP, "TCP") {
        return lines;
    }
    let secs = snap.interval.as_secs_f64().max(1e-9);
    let mut out = vec![Line::plain("TCP")];
    for (key, name) in TCP_COUNTERS {
        let v = snap.value(name, &[]).unwrap_or(0.0) / secs;
        let m = mark(snap, |a| named(a, name));
        out.push(kv_row(
            m,
            &format!("{key}/s"),
            &format::count(v),
            &h.points(&tcp_key(key)),
            Scale::FromZero,
            width,
        ));
    }
    let q = |m: &str| {
        snap.value(m, &[])
            .map_or("-".into(), |v| format::number(v, Column))
    };
    out.push(kv_row(
        mark(snap, |a| named(a, TCP_RTT_FAMILY)),
        "rtt p50 / p99 µs",
        &format!("{} / {}", q(TCP_RTT_P50), q(TCP_RTT_P99)),
        &h.points("tcp.rtt.p99"),
        Scale::FromZero,
        width,
    ));
    out.push(kv_row(
        mark(snap, |a| named(a, TCP_CONNECT_LATENCY_FAMILY)),
        "connect p99 µs",
        &q(TCP_CONNECT_LATENCY_P99),
        &h.points("tcp.connect.p99"),
        Scale::FromZero,
        width,
    ));
    out
}

pub fn memory_section(ctx: &SectionCtx) -> Vec<Line> {
    let (snap, h, width) = (ctx.snap, ctx.history, ctx.width);
    if probe_state(snap, PROBE_PROCFS) != Some(true) {
        return vec![];
    }
    let mut out = vec![Line::plain("MEMORY, SWAP, IOWAIT")];
    let v = |m: &str| snap.value(m, &[]);
    let bytes = |b: f64| format::bytes(b, Column);
    let of = |used: Option<f64>, total: Option<f64>| match (used, total) {
        (Some(u), Some(t)) => format!("{} of {}", bytes(u), bytes(t)),
        (Some(u), None) => bytes(u),
        _ => "-".into(),
    };
    out.push(kv_row(
        mark(snap, |a| named(a, MEM_USED)),
        "mem used",
        &of(v(MEM_USED), v(MEM_TOTAL)),
        &h.points("mem.used"),
        Scale::Range,
        width,
    ));
    out.push(kv_row(
        mark(snap, |a| named(a, MEM_AVAILABLE)),
        "mem available",
        &v(MEM_AVAILABLE).map_or("-".into(), bytes),
        &h.points("mem.available"),
        Scale::Range,
        width,
    ));
    out.push(kv_row(
        mark(snap, |a| named(a, SWAP_USED)),
        "swap used",
        &of(v(SWAP_USED), v(SWAP_TOTAL)),
        &h.points("swap.used"),
        Scale::Range,
        width,
    ));
    out.push(kv_row(
        mark(snap, |a| named(a, CPU_IOWAIT_PCT)),
        "cpu iowait %",
        &v(CPU_IOWAIT_PCT).map_or("-".into(), |p| format::sig(p, Column)),
        &h.points("cpu.iowait"),
        Scale::FromZero,
        width,
    ));
    for (res, metric, family) in PSI {
        if let Some(p) = v(metric) {
            out.push(kv_row(
                mark(snap, |a| named(a, family)),
                &format!("psi {res} some avg10 %"),
                &format::sig(p, Column),
                &h.points(&format!("psi.{res}")),
                Scale::FromZero,
                width,
            ));
        }
    }
    out
}

pub fn events_section(ctx: &SectionCtx) -> Vec<Line> {
    let events = ctx.events;
    if events.is_empty() {
        return vec![];
    }
    let mut out = vec![
        Line::plain(format!(
            "LATEST SLOW EVENTS (all {} kept are listed on exit)",
            events.len()
        )),
        Line::plain(event_header()),
    ];
    let skip = events.len().saturating_sub(LIVE_EVENTS);
    out.extend(events.iter().skip(skip).map(|e| Line::plain(event_row(e))));
    out
}
