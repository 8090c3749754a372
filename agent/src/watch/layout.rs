//! The model turned into the lines of a frame: header, what is off, then the sections while
//! they fit, each line with its [`Tone`]. Pure: no terminal (see [`super::terminal`]).

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_core::format::{self, Style::Column};

use super::{
    model::{
        HISTORY, History, Mark, Scale, TimedEvent, Tone, View, anomaly_subjects, probe_state,
        sparkline, tone_of,
    },
    sections::{
        AGENT_CPU_PCT, AGENT_EVENTS, AGENT_EVENTS_LOST, AGENT_PROBE_UP, PROBE_SYSCALL,
        SYSCALL_COUNT, Section, SectionCtx, events_section, memory_section, syscall_section,
    },
};
use crate::{probes::Probe, snapshot::Snapshot};

/// Syscall rows of a frame when the height is not limited (a pipe).
const TOP_SYSCALLS: usize = 20;
/// Anomaly descriptions shown at most per frame.
const MAX_ANOMALY_LINES: usize = 5;

/// One line of a frame and how it stands out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line {
    pub tone: Tone,
    pub text: String,
}

impl Line {
    pub fn new(tone: Tone, text: impl Into<String>) -> Line {
        Line {
            tone,
            text: text.into(),
        }
    }

    pub fn plain(text: impl Into<String>) -> Line {
        Line::new(Tone::Normal, text)
    }

    /// A table row: it stands out when marked.
    pub fn marked(m: Option<Mark>, text: impl Into<String>) -> Line {
        Line::new(
            if m.is_some() {
                Tone::Mark
            } else {
                Tone::Normal
            },
            text,
        )
    }
}

/// At most `width` characters of `s`, trailing spaces removed.
pub fn fit(s: &str, width: usize) -> String {
    let cut = s.char_indices().nth(width).map_or(s.len(), |(i, _)| i);
    s[..cut].trim_end().to_string()
}

/// `HH:MM:SS` in local time.
pub(super) fn clock(t: SystemTime) -> String {
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

pub(crate) fn spark_width(width: usize, used: usize) -> usize {
    let w = width.saturating_sub(used).min(HISTORY);
    if w < 4 { 0 } else { w }
}

/// `label value  sparkline` rows of the disk/TCP/memory sections; a marked row stands out.
pub(crate) fn kv_row(
    m: Option<Mark>,
    label: &str,
    value: &str,
    points: &[f64],
    scale: Scale,
    width: usize,
) -> Line {
    let label = format!("{}{label}", Mark::prefix(m));
    let head = format!("{label:<22}{value:>24}  ");
    let w = spark_width(width, head.chars().count());
    Line::marked(m, format!("{head}{}", sparkline(points, w, scale)))
}

pub(super) fn event_row(e: &TimedEvent) -> String {
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
        format::number(v.latency_us, Column),
        v.ret.map(|r| format!("  ret {r}")).unwrap_or_default()
    )
}

pub(super) fn event_header() -> String {
    format!(
        "{:<10}{:<8}{:<16}{:>8}  {:<28}{:>13}",
        "time", "kind", "comm", "pid", "target", "latency"
    )
}

/// Not-ok anomalies with their descriptions, worst first, one line per subject, toned by
/// state; at most `MAX_ANOMALY_LINES`.
fn anomalies(snap: &Snapshot) -> Vec<Line> {
    let (off, subjects) = anomaly_subjects(snap);
    if off == 0 {
        return vec![];
    }
    let mut out = vec![Line::plain(format!(
        "ANOMALIES ({off} not usual, worst first)"
    ))];
    for (a, more) in subjects.iter().take(MAX_ANOMALY_LINES) {
        let also = match more {
            0 => String::new(),
            n => format!(" (and {n} more of its metrics)"),
        };
        out.push(Line::new(
            tone_of(a.state),
            format!("{:<9}{}{also}", a.state, a.description),
        ));
    }
    if subjects.len() > MAX_ANOMALY_LINES {
        out.push(Line::plain(format!(
            "  and {} more",
            subjects.len() - MAX_ANOMALY_LINES
        )));
    }
    out
}

/// Open incidents, worst first, one line each with its description (what changed, since when,
/// which processes); those closing this interval are not shown.
fn incidents(snap: &Snapshot) -> Vec<Line> {
    let mut open: Vec<&crate::incident::Incident> = snap
        .annotations
        .incidents
        .iter()
        .filter(|i| i.state != crate::anomaly::State::Ok)
        .collect();
    if open.is_empty() {
        return vec![];
    }
    open.sort_by(|a, b| b.state.cmp(&a.state).then(a.id.cmp(&b.id)));
    let mut out = vec![Line::plain(format!("INCIDENTS ({} open)", open.len()))];
    for i in open.iter().take(MAX_ANOMALY_LINES) {
        out.push(Line::new(
            tone_of(i.state),
            format!("{} (#{})", i.description, i.id),
        ));
    }
    if open.len() > MAX_ANOMALY_LINES {
        out.push(Line::plain(format!(
            "  and {} more",
            open.len() - MAX_ANOMALY_LINES
        )));
    }
    out
}

/// The frame's first two lines: who and when, then what is collected and how.
fn header(snap: &Snapshot, view: &View) -> Vec<Line> {
    let mut up = vec![];
    let mut down = vec![];
    for m in snap.metrics.iter().filter(|m| m.name == AGENT_PROBE_UP) {
        let p = m.tag("probe").unwrap_or("?");
        if m.value > 0.0 { &mut up } else { &mut down }.push(p);
    }
    let title = format!(
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
    );
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
    if let Some(n) = snap.value(AGENT_EVENTS, &[]) {
        line.push_str(&format!(" · ring events {}", format::count(n)));
    }
    let lost: f64 = snap
        .metrics
        .iter()
        .filter(|m| m.name == AGENT_EVENTS_LOST)
        .map(|m| m.value)
        .sum();
    if lost > 0.0 {
        line.push_str(&format!(" (lost {})", format::count(lost)));
    }
    if let Some(cpu) = snap.value(AGENT_CPU_PCT, &[]) {
        line.push_str(&format!(" · agent cpu {}", format::percent(cpu, Column)));
    }
    line.push_str(&format!(
        " · {}",
        view.anomaly.as_deref().unwrap_or("anomaly marks off")
    ));
    vec![Line::plain(title), Line::plain(line)]
}

/// The sections below the syscall table, in the order they get room: the kernel probes' (in
/// registry order), then memory and pressure, then the latest slow events.
fn sections() -> Vec<(&'static str, Section)> {
    let mut all: Vec<(&'static str, Section)> = Probe::ALL
        .iter()
        .filter_map(|p| p.def().watch_section())
        .collect();
    all.push(("memory", memory_section));
    all.push(("slow events", events_section));
    all
}

/// One frame: header, top syscalls, disks, TCP, memory, the latest slow events; at most
/// `view.width` characters per line and `view.height` lines.
pub fn frame_lines(
    snap: &Snapshot,
    h: &History,
    events: &VecDeque<TimedEvent>,
    view: &View,
) -> Vec<Line> {
    let width = view.width;
    let mut header = header(snap, view);
    // What is off comes first and always fits: it is why a person looks. With incidents
    // (the daemon's detection), they replace the list of keys; the rows stay marked.
    let mut anomalies = incidents(snap);
    if anomalies.is_empty() && snap.annotations.incidents.is_empty() {
        anomalies = self::anomalies(snap);
    }
    if !anomalies.is_empty() {
        header.push(Line::default());
        header.extend(anomalies);
    }
    let mut ctx = SectionCtx {
        snap,
        history: h,
        events,
        width,
        syscall_rows: TOP_SYSCALLS,
    };
    let sections: Vec<(&str, Vec<Line>)> = sections()
        .into_iter()
        .map(|(name, section)| (name, section(&ctx)))
        .collect();

    // On a terminal: header, then the syscall table with up to 10 rows, then the other sections
    // in order while they fit (one line stays for saying what did not); the syscall table takes
    // what room is left, up to TOP_SYSCALLS rows.
    let called = snap
        .metrics
        .iter()
        .filter(|m| m.name == SYSCALL_COUNT)
        .count();
    let mut rest = vec![];
    let mut omitted = vec![];
    ctx.syscall_rows = match view.height {
        None => {
            for (_, section) in sections.into_iter().filter(|(_, s)| !s.is_empty()) {
                rest.push(Line::default());
                rest.extend(section);
            }
            TOP_SYSCALLS
        }
        Some(hgt) => {
            // Blank line, title, column names / one line when down.
            let table = match probe_state(snap, PROBE_SYSCALL) {
                Some(true) => 3,
                Some(false) => 2,
                None => 0,
            };
            let rows = if table == 3 { called.clamp(1, 10) } else { 0 };
            let mut used = header.len() + table + rows;
            for (name, section) in sections.into_iter().filter(|(_, s)| !s.is_empty()) {
                if used + 1 + section.len() < hgt {
                    used += 1 + section.len();
                    rest.push(Line::default());
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
    let syscalls = syscall_section(&ctx);
    let mut lines = header;
    if !syscalls.is_empty() {
        lines.push(Line::default());
        lines.extend(syscalls);
    }
    lines.extend(rest);
    if !omitted.is_empty() {
        lines.push(Line::plain(format!(
            "(no room for: {})",
            omitted.join(", ")
        )));
    }
    if let Some(hgt) = view.height {
        lines.truncate(hgt);
    }
    for l in &mut lines {
        l.text = fit(&l.text, width);
    }
    lines
}

/// [`frame_lines`] as text alone (a pipe, tests).
pub fn render_frame(
    snap: &Snapshot,
    h: &History,
    events: &VecDeque<TimedEvent>,
    view: &View,
) -> Vec<String> {
    frame_lines(snap, h, events, view)
        .into_iter()
        .map(|l| l.text)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{anomaly, sample_snapshot, snap, syscall, up, view};
    use super::*;
    use crate::{anomaly::State, probes::EventView, snapshot::Metric};

    #[test]
    fn open_incidents_come_first_instead_of_keys() {
        use crate::incident::{Change, Incident};
        let mut s = sample_snapshot(50_000);
        let read = || vec![("syscall", "read".to_string())];
        s.annotations.anomalies = vec![anomaly(
            "syscall.latency_us.p99",
            read(),
            State::Critical,
            10.0,
            2.0,
        )];
        let inc = |id, state: State, d: &str| Incident {
            id,
            state,
            since: 1_700_000_000,
            subsystems: vec!["disk".into()],
            processes: vec![],
            keys: vec![],
            description: d.into(),
            change: Some(Change::Opened),
        };
        s.annotations.incidents = vec![
            inc(
                3,
                State::Warning,
                "warning: syscall busier than usual since 14:01:02",
            ),
            inc(4, State::Critical, "critical: disk stalled since 14:02:11"),
            inc(2, State::Ok, "resolved: tcp failing since 13:50:00"),
        ];
        let f = render_frame(&s, &History::default(), &VecDeque::new(), &view());
        let at = f.iter().position(|l| l == "INCIDENTS (2 open)").unwrap();
        assert_eq!(f[at + 1], "critical: disk stalled since 14:02:11 (#4)");
        assert_eq!(
            f[at + 2],
            "warning: syscall busier than usual since 14:01:02 (#3)"
        );
        assert!(!f.iter().any(|l| l.starts_with("ANOMALIES")), "{f:#?}");
        assert!(!f.iter().any(|l| l.contains("resolved")), "{f:#?}");
    }

    #[test]
    fn anomalous_rows_stand_out_with_their_description() {
        let mut s = sample_snapshot(50_000);
        let read = || vec![("syscall", "read".to_string())];
        let disk = || vec![("device", "vda".to_string()), ("op", "write".to_string())];
        s.annotations.anomalies = vec![
            anomaly("syscall.latency_us.p99", read(), State::Critical, 10.0, 2.0),
            anomaly("syscall.latency_us.mean", read(), State::Warning, 5.0, 2.0),
            anomaly("disk.ops", disk(), State::Warning, 12.0, 400.0),
            anomaly("tcp.resets", vec![], State::Warning, 1.0, 0.0),
            anomaly("psi.io.some_avg10", vec![], State::Warning, 0.25, 0.0),
            // Back to ok this interval: listed by the detector, not marked.
            anomaly("mem.used_bytes", vec![], State::Ok, 1.0, 1.0),
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
        // Marked and described lines carry their tone (a terminal colours them); others none.
        let lines = frame_lines(&s, &History::default(), &VecDeque::new(), &v);
        let tone = |start: &str| {
            lines
                .iter()
                .find(|l| l.text.starts_with(start))
                .unwrap()
                .tone
        };
        assert_eq!(tone("critical syscall.latency_us.p99"), Tone::Critical);
        assert_eq!(tone("warning  disk.ops"), Tone::Warning);
        assert_eq!(tone("▲ read "), Tone::Mark);
        assert_eq!(tone("▼ vda write"), Tone::Mark);
        assert_eq!(tone("▲ psi io some"), Tone::Mark);
        assert_eq!(tone("getppid "), Tone::Normal);
        assert_eq!(tone("ANOMALIES"), Tone::Normal);
        // Without marks the header says so.
        let f = render_frame(&s, &History::default(), &VecDeque::new(), &view());
        assert!(f[1].ends_with("anomaly marks off"), "{f:#?}");
    }

    #[test]
    fn fit_cuts_characters_not_bytes() {
        assert_eq!(fit("abcdef  ", 4), "abcd");
        assert_eq!(fit("▁▂▃", 2), "▁▂");
        assert_eq!(fit("ab  ", 10), "ab");
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
}
