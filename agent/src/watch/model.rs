//! What a frame shows, before any text: the per-second history behind the sparklines, the
//! ranking of syscalls, which rows the detector marks and how they group. Pure: snapshots in,
//! numbers and flags out.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, SystemTime},
};

use super::sections::{AGENT_PROBE_UP, SYSCALL_COUNT, SYSCALL_LATENCY_MEAN};
use agent_core::incident::Impact;

use crate::{
    anomaly::State,
    probes::EventView,
    snapshot::{Anomaly, Kind, Snapshot},
};

/// Points of history per key (one per interval): a minute at the default interval.
pub const HISTORY: usize = 60;
/// Keys with history kept at most; the least recently active go first.
pub const MAX_KEYS: usize = 2048;
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

// ------------------------------------------------------------------------------------------------
// Sparklines

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

// ------------------------------------------------------------------------------------------------
// History

struct Series {
    points: VecDeque<f64>,
    /// Absent from a snapshot: a rate counts as 0, a level as unknown (NaN).
    rate: bool,
    /// Last tick with a non-zero value (for eviction).
    active: u64,
    name: String,
    tags: Vec<(String, String)>,
}

/// The last [`HISTORY`] values of every metric the snapshots carry, bounded to [`MAX_KEYS`]
/// series: counters as per-second rates, gauges as levels. Nothing here names a metric, so a
/// new probe's rows get sparklines without touching this.
#[derive(Default)]
pub struct History {
    series: HashMap<String, Series>,
    tick: u64,
}

/// A series' key: the metric's name and its tags, sorted (callers need not know their order).
fn series_key<'a>(name: &str, tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut tags: Vec<_> = tags.into_iter().collect();
    tags.sort_unstable();
    let mut k = name.to_string();
    for (t, v) in tags {
        k.push('\0');
        k.push_str(t);
        k.push('=');
        k.push_str(v);
    }
    k
}

impl History {
    /// Appends one interval.
    pub fn record(&mut self, snap: &Snapshot) {
        let secs = snap.interval.as_secs_f64().max(1e-9);
        self.tick += 1;
        let tick = self.tick;
        let mut seen = HashSet::new();
        for m in &snap.metrics {
            let rate = m.kind == Kind::Counter;
            let v = if rate { m.value / secs } else { m.value };
            let key = series_key(&m.name, m.tags.iter().map(|(t, v)| (*t, v.as_str())));
            if !seen.insert(key.clone()) {
                continue;
            }
            let s = self.series.entry(key).or_insert_with(|| Series {
                points: VecDeque::with_capacity(HISTORY),
                rate,
                active: tick,
                name: m.name.to_string(),
                tags: m
                    .tags
                    .iter()
                    .map(|(t, v)| (t.to_string(), v.clone()))
                    .collect(),
            });
            push_bounded(&mut s.points, v);
            if v != 0.0 && v.is_finite() {
                s.active = tick;
            }
        }
        for (key, s) in &mut self.series {
            if !seen.contains(key) {
                push_bounded(&mut s.points, if s.rate { 0.0 } else { f64::NAN });
            }
        }
        if self.series.len() > MAX_KEYS {
            // Least recently active first; ties by key, so eviction is deterministic.
            let excess = self.series.len() - MAX_KEYS;
            let mut by_age: Vec<(u64, &String)> =
                self.series.iter().map(|(k, s)| (s.active, k)).collect();
            by_age.select_nth_unstable(excess - 1);
            let gone: Vec<String> = by_age[..excess].iter().map(|(_, k)| (*k).clone()).collect();
            for k in gone {
                self.series.remove(&k);
            }
        }
    }

    /// The points of metric `name` with exactly these tags, oldest first (empty when unknown).
    pub fn points(&self, name: &str, tags: &[(&str, &str)]) -> Vec<f64> {
        self.series
            .get(&series_key(name, tags.iter().copied()))
            .map(|s| s.points.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The tag sets of metric `name` that were non-zero at least once in the window.
    pub(crate) fn active(&self, name: &str) -> Vec<&[(String, String)]> {
        self.series
            .values()
            .filter(|s| s.name == name && s.points.iter().any(|&v| v > 0.0))
            .map(|s| s.tags.as_slice())
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

/// The sparklines' span, e.g. `1m` at one-second intervals.
pub(crate) fn window(snap: &Snapshot) -> String {
    humantime::format_duration(snap.interval * HISTORY as u32).to_string()
}

// ------------------------------------------------------------------------------------------------
// What a frame shows

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

/// `Some(up)` when the snapshot reports on `probe`, `None` when it was not asked for.
pub(super) fn probe_state(snap: &Snapshot, probe: &str) -> Option<bool> {
    snap.value(AGENT_PROBE_UP, &[("probe", probe)])
        .map(|v| v > 0.0)
}

/// How a line stands out: from the detector's state or a row's mark, never from its text.
/// The terminal maps it to colours; a pipe ignores it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tone {
    #[default]
    Normal,
    /// A row with a metric the detector finds off.
    Mark,
    Warning,
    Critical,
}

/// The tone of a detector state ([`Anomaly::state`]).
pub(super) fn tone_of(state: State) -> Tone {
    match state {
        State::Critical => Tone::Critical,
        State::Warning => Tone::Warning,
        State::Ok => Tone::Normal,
    }
}

/// A row whose metrics are not ok in this interval: above or below its usual (the worst such
/// metric decides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Up,
    Down,
}

impl Mark {
    /// The prefix of a marked row's label.
    pub(super) fn prefix(m: Option<Mark>) -> &'static str {
        match m {
            Some(Mark::Up) => "▲ ",
            Some(Mark::Down) => "▼ ",
            None => "",
        }
    }
}

/// The mark of a row whose metrics `pick` selects: the worst not-ok anomaly among them.
pub(crate) fn mark(snap: &Snapshot, pick: impl Fn(&Anomaly) -> bool) -> Option<Mark> {
    // Worst first: the detector sorts its verdicts. What a row's arrow says is its impact when
    // it has one (slower calls, more errors), as the incidents judge it, or its latency (a
    // waiting call's, which judges as a rate), not the fall in calls that slower calls bring
    // with them.
    let off = || {
        snap.annotations
            .anomalies
            .iter()
            .filter(|a| tone_of(a.state) != Tone::Normal && pick(a))
    };
    off()
        .find(|a| {
            agent_core::incident::impact(&a.name, &a.tags) != Impact::Rate
                || a.name.contains(".latency_us.")
        })
        .or_else(|| off().next())
        .map(|a| {
            if a.value >= a.usual {
                Mark::Up
            } else {
                Mark::Down
            }
        })
}

/// A metric name, or a family when it ends with `.`.
pub(crate) fn named(a: &Anomaly, name: &str) -> bool {
    if name.ends_with('.') {
        a.name.starts_with(name)
    } else {
        a.name == name
    }
}

/// The not-ok anomalies grouped by subject (a syscall, a disk and op, ...: family and tags), so
/// five quantiles of one slow syscall are one subject: `(how many are not ok, [(the subject's
/// worst anomaly, how many more of its metrics)])`, worst first.
pub(super) fn anomaly_subjects(snap: &Snapshot) -> (usize, Vec<(&Anomaly, usize)>) {
    let off: Vec<&Anomaly> = snap
        .annotations
        .anomalies
        .iter()
        .filter(|a| tone_of(a.state) != Tone::Normal)
        .collect();
    let family = |a: &Anomaly| a.name.split('.').next().unwrap_or("").to_string();
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
    (off.len(), subjects)
}

/// One row of the syscall table.
pub(super) struct SyscallRow<'a> {
    pub name: &'a str,
    pub count: f64,
    pub total_us: f64,
}

/// Syscalls of the interval by total time (count × mean), then count, then name.
pub(super) fn syscall_rows(snap: &Snapshot) -> Vec<SyscallRow<'_>> {
    let mut mean_us: HashMap<&str, f64> = HashMap::new();
    for m in &snap.metrics {
        if m.name == SYSCALL_LATENCY_MEAN
            && let Some(name) = m.tag("syscall")
        {
            mean_us.insert(name, m.value);
        }
    }
    let mut rows: Vec<SyscallRow> = snap
        .metrics
        .iter()
        .filter(|m| m.name == SYSCALL_COUNT)
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

#[cfg(test)]
mod tests {
    use super::super::testkit::{snap, syscall};
    use super::*;
    use crate::snapshot::Metric;

    /// A row's arrow follows its latency before its count, even for a waiting call (whose
    /// latency judges as a rate): slower sleeps are ▲ though their calls fell further.
    #[test]
    fn a_rows_arrow_follows_its_latency() {
        use super::super::testkit::anomaly;
        let t = || vec![("syscall", "nanosleep".to_string())];
        let mut s = snap(vec![]);
        s.annotations.anomalies = vec![
            anomaly("syscall.count", t(), State::Critical, 64.0, 912.0),
            anomaly(
                "syscall.latency_us.mean",
                t(),
                State::Warning,
                15_100.0,
                1_100.0,
            ),
        ];
        assert_eq!(mark(&s, |_| true), Some(Mark::Up));
        s.annotations.anomalies.truncate(1);
        assert_eq!(mark(&s, |_| true), Some(Mark::Down));
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
    fn history_is_bounded_and_fills_gaps() {
        let mut h = History::default();
        for i in 0..(HISTORY + 10) {
            let mut m = vec![Metric::gauge("mem.used_bytes", vec![], i as f64)];
            if i % 2 == 0 {
                m.extend(syscall("read", 10, 1.0, 1.0, 0));
            }
            h.record(&snap(m));
        }
        let read = h.points(SYSCALL_COUNT, &[("syscall", "read")]);
        assert_eq!(read.len(), HISTORY);
        // Absent rates are 0, present ones per second.
        assert!(read.iter().all(|&v| v == 0.0 || v == 10.0));
        assert_eq!(read.iter().filter(|&&v| v == 0.0).count(), HISTORY / 2);
        assert_eq!(
            h.points("mem.used_bytes", &[]).last(),
            Some(&((HISTORY + 9) as f64))
        );

        // Many distinct keys: only MAX_KEYS stay, the most recently active ones.
        let mut h = History::default();
        for i in 0..(MAX_KEYS + 50) {
            h.record(&snap(syscall(&format!("sys_{i}"), 1, 1.0, 1.0, 0)));
        }
        assert_eq!(h.len(), MAX_KEYS);
        assert!(h.points(SYSCALL_COUNT, &[("syscall", "sys_0")]).is_empty());
        assert!(
            !h.points(
                SYSCALL_COUNT,
                &[("syscall", &format!("sys_{}", MAX_KEYS + 49))]
            )
            .is_empty()
        );
    }

    #[test]
    fn every_metric_gets_a_series_without_being_named_here() {
        // A family watch has never heard of: counters become per-second rates (0 when absent),
        // gauges levels (unknown when absent), each tag set its own series.
        let counter = |cg: &str, v: f64| Metric {
            name: "some.new.count".into(),
            tags: vec![("cgroup", cg.to_string())],
            kind: Kind::Counter,
            value: v,
        };
        let mut h = History::default();
        h.record(&snap(vec![
            counter("a", 4.0),
            counter("b", 0.0),
            Metric::gauge("some.new.level_us", vec![], 7.0),
        ]));
        h.record(&snap(vec![counter("a", 2.0)]));
        assert_eq!(h.points("some.new.count", &[("cgroup", "a")]), [4.0, 2.0]);
        assert_eq!(h.points("some.new.count", &[("cgroup", "b")]), [0.0, 0.0]);
        let level = h.points("some.new.level_us", &[]);
        assert_eq!(level[0], 7.0);
        assert!(level[1].is_nan());
        // Only tag sets that were non-zero in the window count as active.
        let active = h.active("some.new.count");
        assert_eq!(active.len(), 1);
        assert_eq!(active[0], [("cgroup".to_string(), "a".to_string())]);
    }

    #[test]
    fn tones_come_from_the_detector_state() {
        assert_eq!(tone_of(State::Critical), Tone::Critical);
        assert_eq!(tone_of(State::Warning), Tone::Warning);
        assert_eq!(tone_of(State::Ok), Tone::Normal);
    }
}
