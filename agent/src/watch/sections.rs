//! One section of a frame per source (syscalls, disks, TCP, memory and pressure, slow events),
//! each a [`Section`]: the same signature, nothing shared between them but [`SectionCtx`] and
//! the helpers of [`super::layout`] and [`super::model`], so each can move next to its probe.
//!
//! A kernel probe's section is its own (`ProbeDef::watch_section`, in its module); the syscall
//! table (the frame's main table, sized by what room is left) and the /proc and events sections
//! are here.

use agent_core::format::{self, Style::Column};

use super::{
    layout::{Line, event_header, event_row, kv_row, spark_width},
    model::{
        History, Mark, Scale, TimedEvent, mark, named, probe_state, sparkline, syscall_rows, window,
    },
};
use crate::{
    catalogue::agent as self_metrics,
    probes::{disk, syscall, tcp},
    procfs,
    snapshot::{Snapshot, tags_include},
};
use std::collections::VecDeque;

// ------------------------------------------------------------------------------------------------
// Metric names read by `watch` (frames, history and the exit report), from the typed catalogue;
// a quantile of a latency family is checked against it by a test.

pub(crate) const AGENT_PROBE_UP: &str = self_metrics::PROBE_UP.name;
pub(crate) const AGENT_EVENTS: &str = self_metrics::EVENTS.name;
pub(crate) const AGENT_EVENTS_LOST: &str = self_metrics::EVENTS_LOST.name;
pub(crate) const AGENT_CPU_PCT: &str = self_metrics::CPU_PCT.name;

pub(crate) const SYSCALL_COUNT: &str = syscall::COUNT.name;
pub(crate) const SYSCALL_ERRORS: &str = syscall::ERRORS.name;
pub(crate) const SYSCALL_LATENCY: &str = syscall::LATENCY.name;
pub(crate) const SYSCALL_LATENCY_MEAN: &str = "syscall.latency_us.mean";
pub(crate) const SYSCALL_LATENCY_P99: &str = "syscall.latency_us.p99";
/// Every syscall metric, for the row's mark.
pub(crate) const SYSCALL_FAMILY: &str = "syscall.";

pub(crate) const DISK_OPS: &str = disk::OPS_DONE.name;
pub(crate) const DISK_BYTES: &str = disk::BYTES.name;
pub(crate) const DISK_LATENCY: &str = disk::LATENCY.name;
pub(crate) const DISK_LATENCY_P50: &str = "disk.latency_us.p50";
pub(crate) const DISK_LATENCY_P99: &str = "disk.latency_us.p99";
pub(crate) const DISK_FAMILY: &str = "disk.";

pub(crate) const TCP_CONNECTS: &str = tcp::CONNECTS.name;
pub(crate) const TCP_ACCEPTS: &str = tcp::ACCEPTS.name;
pub(crate) const TCP_RETRANSMITS: &str = tcp::RETRANSMITS.name;
pub(crate) const TCP_RESETS: &str = tcp::RESETS.name;
pub(crate) const TCP_RTT: &str = tcp::RTT.name;
pub(crate) const TCP_RTT_P50: &str = "tcp.rtt_us.p50";
pub(crate) const TCP_RTT_P99: &str = "tcp.rtt_us.p99";
pub(crate) const TCP_RTT_FAMILY: &str = "tcp.rtt_us.";
pub(crate) const TCP_CONNECT_LATENCY: &str = tcp::CONNECT_LATENCY.name;
pub(crate) const TCP_CONNECT_LATENCY_P99: &str = "tcp.connect_latency_us.p99";
pub(crate) const TCP_CONNECT_LATENCY_FAMILY: &str = "tcp.connect_latency_us.";

pub(crate) const MEM_TOTAL: &str = procfs::MEM_TOTAL.name;
pub(crate) const MEM_USED: &str = procfs::MEM_USED.name;
pub(crate) const MEM_AVAILABLE: &str = procfs::MEM_AVAILABLE.name;
pub(crate) const SWAP_TOTAL: &str = procfs::SWAP_TOTAL.name;
pub(crate) const SWAP_USED: &str = procfs::SWAP_USED.name;
pub(crate) const CPU_IOWAIT_PCT: &str = procfs::CPU_IOWAIT.name;
/// Pressure stall information: (resource, `some avg10` metric, family for the row's mark).
pub(crate) const PSI: [(&str, &str, &str); 3] = [
    ("cpu", "psi.cpu.some_avg10", "psi.cpu."),
    ("io", "psi.io.some_avg10", "psi.io."),
    ("memory", "psi.memory.some_avg10", "psi.memory."),
];

/// Probe names of `agent.probe_up`.
pub(crate) const PROBE_SYSCALL: &str = "syscall";
pub(crate) const PROBE_PROCFS: &str = "procfs";

/// TCP counters shown per second: (row label, metric).
pub(crate) const TCP_COUNTERS: [(&str, &str); 4] = [
    ("connects", TCP_CONNECTS),
    ("accepts", TCP_ACCEPTS),
    ("retransmits", TCP_RETRANSMITS),
    ("resets", TCP_RESETS),
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

/// A table's column header, followed, when the terminal leaves room for sparklines, by what
/// they show (`calls/s, last 01:00`); and the sparklines' width.
pub(crate) fn table_head(head: String, what: &str, snap: &Snapshot, width: usize) -> (Line, usize) {
    let spark_w = spark_width(width, head.chars().count());
    if spark_w == 0 {
        return (Line::plain(head), 0);
    }
    (
        Line::plain(format!("{head}{what}, last {}", window(snap))),
        spark_w,
    )
}

/// `TITLE: probe down ...` when `probe` is down, nothing when it was not asked for.
pub(crate) fn probe_down(snap: &Snapshot, probe: &str, title: &str) -> Option<Vec<Line>> {
    match probe_state(snap, probe) {
        None => Some(vec![]),
        Some(false) => Some(vec![Line::plain(format!(
            "{title}: probe down (see the warning printed at start)"
        ))]),
        Some(true) => None,
    }
}

/// `label` after its mark, as a toned line's start.
pub(crate) fn marked(m: Option<Mark>, label: &str) -> String {
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
    let (head, spark_w) = table_head(head, "calls/s", snap, width);
    out.push(head);
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
                sparkline(
                    &h.points(SYSCALL_COUNT, &[("syscall", r.name)]),
                    spark_w,
                    Scale::FromZero
                )
            ),
        ));
    }
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
        &h.points(MEM_USED, &[]),
        Scale::Range,
        width,
    ));
    out.push(kv_row(
        mark(snap, |a| named(a, MEM_AVAILABLE)),
        "mem available",
        &v(MEM_AVAILABLE).map_or("-".into(), bytes),
        &h.points(MEM_AVAILABLE, &[]),
        Scale::Range,
        width,
    ));
    out.push(kv_row(
        mark(snap, |a| named(a, SWAP_USED)),
        "swap used",
        &of(v(SWAP_USED), v(SWAP_TOTAL)),
        &h.points(SWAP_USED, &[]),
        Scale::Range,
        width,
    ));
    out.push(kv_row(
        mark(snap, |a| named(a, CPU_IOWAIT_PCT)),
        "cpu iowait %",
        &v(CPU_IOWAIT_PCT).map_or("-".into(), |p| format::sig(p, Column)),
        &h.points(CPU_IOWAIT_PCT, &[]),
        Scale::FromZero,
        width,
    ));
    for (res, metric, family) in PSI {
        if let Some(p) = v(metric) {
            out.push(kv_row(
                mark(snap, |a| named(a, family)),
                &format!("psi {res} some avg10 %"),
                &format::sig(p, Column),
                &h.points(metric, &[]),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_watch_reads_is_in_the_catalogue() {
        let catalogue = crate::metric_catalogue();
        let names = [
            AGENT_PROBE_UP,
            AGENT_EVENTS,
            AGENT_EVENTS_LOST,
            AGENT_CPU_PCT,
            SYSCALL_COUNT,
            SYSCALL_ERRORS,
            SYSCALL_LATENCY_MEAN,
            SYSCALL_LATENCY_P99,
            DISK_OPS,
            DISK_BYTES,
            DISK_LATENCY_P50,
            DISK_LATENCY_P99,
            TCP_RTT_P50,
            TCP_RTT_P99,
            TCP_CONNECT_LATENCY_P99,
            MEM_TOTAL,
            MEM_USED,
            MEM_AVAILABLE,
            SWAP_TOTAL,
            SWAP_USED,
            CPU_IOWAIT_PCT,
        ];
        let psi = PSI.map(|(_, name, _)| name);
        let counters = TCP_COUNTERS.map(|(_, name)| name);
        for name in names.iter().chain(&psi).chain(&counters) {
            assert!(
                catalogue.iter().any(|d| d.produces(name)),
                "{name} is not in the catalogue"
            );
        }
        // Families used as prefixes name real families.
        for family in [SYSCALL_LATENCY, DISK_LATENCY, TCP_RTT, TCP_CONNECT_LATENCY] {
            assert!(catalogue.iter().any(|d| d.name == family), "{family}");
        }
    }
}
