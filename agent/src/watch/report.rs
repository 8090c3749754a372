//! The exit report: the session's latency histograms drawn as bars (exact kernel buckets, end
//! minus start), then its slow events. Pure: rows in, lines out.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, SystemTime},
};

use agent_common::{hist, layout};
use agent_core::format::{self, Style::Column};

use super::{
    layout::{clock, event_header, event_row},
    model::TimedEvent,
    sections::{DISK_LATENCY, SYSCALL_LATENCY, TCP_CONNECT_LATENCY, TCP_RTT},
};
use crate::{histogram::LatencyStats, snapshot::Tags};

/// Syscall histograms in the exit report: the top by total time, plus the most frequent.
pub const REPORT_BY_TIME: usize = 10;
pub const REPORT_BY_CALLS: usize = 3;
/// Width of the histogram bars.
const BAR_WIDTH: usize = 40;

/// Three significant digits, trailing zeros kept: the report lines up like the frames.
fn num(v: f64) -> String {
    format::number(v, Column)
}

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
            SYSCALL_LATENCY => "syscall",
            DISK_LATENCY => "disk",
            TCP_RTT => "tcp rtt",
            TCP_CONNECT_LATENCY => "tcp connect",
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
        all.drain(..).partition(|h| h.name == SYSCALL_LATENCY);
    sys.sort_by(|a, b| b.sum_ns.cmp(&a.sum_ns).then(b.count.cmp(&a.count)));
    let mut shown: Vec<SessionHist> = sys.iter().take(REPORT_BY_TIME).cloned().collect();
    let mut by_calls: Vec<&SessionHist> = sys.iter().skip(REPORT_BY_TIME).collect();
    by_calls.sort_by_key(|h| std::cmp::Reverse(h.count));
    shown.extend(by_calls.into_iter().take(REPORT_BY_CALLS).cloned());
    other.sort_by(|a, b| {
        let rank = |h: &SessionHist| (h.name != DISK_LATENCY, h.name == TCP_CONNECT_LATENCY);
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
                num(lo as f64 / 1000.0),
                num(hi as f64 / 1000.0),
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
            let us = |ns: u64| num(ns as f64 / 1000.0);
            out.push(match stats {
                Some(s) => format!(
                    "{}: {} samples, total {} ms, mean {} µs, p50 {}, p90 {}, p99 {}, max {} µs",
                    h.title(),
                    h.count,
                    num(h.sum_ns as f64 / 1e6),
                    num(s.mean_ns / 1000.0),
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

#[cfg(test)]
mod tests {
    use super::super::DEFAULT_SLOW;
    use super::*;
    use crate::probes::EventView;
    use std::time::UNIX_EPOCH;

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
