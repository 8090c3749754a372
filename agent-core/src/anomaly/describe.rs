//! Words for people: metric labels, values with units, and the one-line description of an
//! anomaly, e.g. `disk vda write latency p99 48.1 ms: 6.2x its usual 7.7 ms (Tue 14:00-15:00
//! profile), for 12 s`.
//!
//! Units come from the metric name (see the README's catalogue): a segment ending in `_us` is
//! microseconds (shown as µs, ms or s), `_bytes` or `bytes` is bytes (KiB, MiB, GiB), `_pct` is
//! a percentage, `_pages` pages. Counters are shown per second.

use super::State;
use super::model::{Assessment, Profile, View, WARN_SCORE};
use super::time::WEEKDAYS;
use crate::format::{self, Style::Prose};
use crate::snapshot::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Micros,
    Bytes,
    Pct,
    Pages,
    Plain,
}

fn unit_of(name: &str) -> Unit {
    for seg in name.split('.') {
        if seg == "us" || seg.ends_with("_us") {
            return Unit::Micros;
        }
        if seg == "bytes" || seg.ends_with("_bytes") {
            return Unit::Bytes;
        }
        if seg.ends_with("_pct") {
            return Unit::Pct;
        }
        if seg.ends_with("_pages") {
            return Unit::Pages;
        }
    }
    Unit::Plain
}

/// `name` made readable: tag values after the family, unit suffixes and the word `latency`
/// dropped (the unit says it), underscores as spaces: `disk.latency_us.p99{device=vda,op=write}`
/// → `disk vda write p99`; `syscall.count{syscall=read}` → `syscall read count`.
pub fn metric_label(name: &str, tags: &[(&'static str, String)]) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut segs = name.split('.');
    if let Some(first) = segs.next() {
        words.push(first.replace('_', " "));
    }
    words.extend(tags.iter().map(|(_, v)| v.clone()));
    for seg in segs {
        let mut s = seg;
        for suffix in ["_us", "_bytes", "_pct", "_pages"] {
            if let Some(stem) = s.strip_suffix(suffix) {
                s = stem;
            }
        }
        if s.is_empty() || s == "latency" {
            continue;
        }
        words.push(s.replace('_', " "));
    }
    words.join(" ")
}

/// A value with its unit, from the metric name; counters (per-interval deltas) per second.
/// `disk.latency_us.p99` 48100 → `48.1 ms`; `disk.bytes` counter 3145728 over 1 s →
/// `3 MiB/s`; `cpu.iowait_pct` 12.5 → `12.5%`; `syscall.count` 1234 over 1 s → `1234/s`.
pub fn format_value(name: &str, kind: Kind, value: f64, interval_s: f64) -> String {
    let (v, per) = match kind {
        Kind::Counter => (value / interval_s.max(1e-9), "/s"),
        Kind::Gauge => (value, ""),
    };
    match unit_of(name) {
        Unit::Micros => format!("{}{per}", format::micros(v, Prose)),
        Unit::Bytes => format!("{}{per}", format::bytes(v, Prose)),
        Unit::Pct => format!("{}{per}", format::percent(v, Prose)),
        Unit::Pages => format!("{} pages{per}", format::number(v, Prose)),
        Unit::Plain => format!("{}{per}", format::number(v, Prose)),
    }
}

/// `12 s`, `4 min`, `2 h 5 min`, `3 d 4 h`.
pub(crate) fn duration(s: f64) -> String {
    format::seconds_words(s)
}

fn profile_label(p: Profile) -> String {
    let hours = |h: usize| format!("{h:02}:00-{:02}:00", (h + 1) % 24);
    match p {
        Profile::Daily(h) => format!("{} profile", hours(h)),
        Profile::Weekly(h) => format!("{} {} profile", WEEKDAYS[h / 24], hours(h % 24)),
    }
}

/// How `value` compares with `usual`, e.g. `6.2x its usual 7.7 ms`, `down to 12% of its usual
/// 40/s`, `3.1 ms above its usual 7.7 ms`.
fn comparison(value: f64, usual: f64, fmt: &dyn Fn(f64) -> String) -> String {
    if usual > 0.0 && value >= 0.0 {
        let r = value / usual;
        if r >= 1.5 {
            return format!("{}x its usual {}", format::ratio(r), fmt(usual));
        }
        if value == 0.0 {
            return format!("down from its usual {}", fmt(usual));
        }
        if r <= 0.67 {
            return format!("down to {:.0}% of its usual {}", r * 100.0, fmt(usual));
        }
    }
    let diff = value - usual;
    let dir = if diff >= 0.0 { "above" } else { "below" };
    format!("{} {dir} its usual {}", fmt(diff.abs()), fmt(usual))
}

/// The description of one key's assessment.
pub(crate) fn describe(
    name: &str,
    tags: &[(&'static str, String)],
    kind: Kind,
    interval_s: f64,
    a: &Assessment,
    since_s: f64,
) -> String {
    let label = metric_label(name, tags);
    let fmt = |v: f64| format_value(name, kind, v, interval_s);
    let value = fmt(a.value);
    let profile = a
        .profile
        .map(|p| format!(" ({})", profile_label(p)))
        .unwrap_or_default();
    if a.state == State::Ok {
        let was = if a.changed && a.previous != State::Ok {
            format!(" after {} {}", duration(since_s), a.previous)
        } else {
            String::new()
        };
        return format!("{label} {value}: back to usual ({}){was}", fmt(a.usual));
    }
    let dur = duration(since_s);
    if a.strength < WARN_SCORE {
        // Held by hysteresis while the value is calm: back near the usual, or settled at a new
        // level the short-term baseline has learnt (then "back near" would be false).
        let near =
            a.value == a.usual || (a.usual != 0.0 && (0.5..=2.0).contains(&(a.value / a.usual)));
        let how = if near {
            format!("back near its usual {}", fmt(a.usual))
        } else {
            format!(
                "steady at this level now ({})",
                comparison(a.value, a.usual, &fmt)
            )
        };
        return format!("{label} {value}: {how}, clearing after {dur} {}", a.state);
    }
    match a.view {
        View::Point | View::Seasonal => format!(
            "{label} {value}: {}{profile}, for {dur}",
            comparison(a.value, a.usual, &fmt)
        ),
        View::Sustained => format!(
            "{label} {value}: {}{profile}, drifting for {dur}",
            comparison(a.value, a.usual, &fmt)
        ),
        View::Variance => format!(
            "{label} {value}: erratic, swinging ±{} where ±{} is usual{profile}, for {dur}",
            fmt(a.recent_spread),
            fmt(a.spread)
        ),
        View::Flat => format!(
            "{label} stuck at {value} for {dur} ({} intervals), usually moves ±{}",
            u64::from(a.run) + 1,
            fmt(a.spread)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let t = |k: &'static str, v: &str| (k, v.to_string());
        assert_eq!(
            metric_label(
                "disk.latency_us.p99",
                &[t("device", "vda"), t("op", "write")]
            ),
            "disk vda write p99"
        );
        assert_eq!(
            metric_label("syscall.count", &[t("syscall", "read")]),
            "syscall read count"
        );
        assert_eq!(metric_label("cpu.iowait_pct", &[]), "cpu iowait");
        assert_eq!(
            metric_label("tcp.connect_latency_us.p50", &[]),
            "tcp connect latency p50"
        );
        assert_eq!(metric_label("mem.available_bytes", &[]), "mem available");
    }

    #[test]
    fn values() {
        let g = Kind::Gauge;
        let c = Kind::Counter;
        assert_eq!(
            format_value("disk.latency_us.p99", g, 48_100.0, 1.0),
            "48.1 ms"
        );
        assert_eq!(
            format_value("disk.latency_us.p99", g, 7_700.0, 1.0),
            "7.7 ms"
        );
        assert_eq!(
            format_value("syscall.latency_us.p50", g, 812.0, 1.0),
            "812 µs"
        );
        assert_eq!(format_value("tcp.rtt_us.max", g, 2_500_000.0, 1.0), "2.5 s");
        assert_eq!(format_value("disk.bytes", c, 3_145_728.0, 1.0), "3 MiB/s");
        assert_eq!(format_value("mem.used_bytes", g, 1536.0, 1.0), "1.5 KiB");
        assert_eq!(format_value("cpu.iowait_pct", g, 12.5, 1.0), "12.5%");
        assert_eq!(format_value("syscall.count", c, 1234.0, 1.0), "1234/s");
        assert_eq!(format_value("syscall.count", c, 50_000.0, 2.0), "25k/s");
        assert_eq!(format_value("syscall.count", c, 0.0, 1.0), "0/s");
        assert_eq!(
            format_value("psi.io.some_stall_us", c, 25_000.0, 1.0),
            "25 ms/s"
        );
        assert_eq!(format_value("swap.in_pages", c, 10.0, 1.0), "10 pages/s");
        assert_eq!(format_value("load.1", g, 0.53, 1.0), "0.53");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(12.0), "12 s");
        assert_eq!(duration(300.0), "5 min");
        assert_eq!(duration(7500.0), "2 h 5 min");
        assert_eq!(duration(7200.0), "2 h");
        assert_eq!(duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3 d 4 h");
    }

    #[test]
    fn the_issue_example() {
        let a = Assessment {
            value: 48_100.0,
            usual: 7_700.0,
            score: 1.0,
            strength: 1.0,
            state: State::Critical,
            profile: Some(Profile::Weekly(24 + 14)),
            ..Default::default()
        };
        let tags = [("device", "vda".to_string()), ("op", "write".to_string())];
        assert_eq!(
            describe("disk.latency_us.p99", &tags, Kind::Gauge, 1.0, &a, 12.0),
            "disk vda write p99 48.1 ms: 6.2x its usual 7.7 ms (Tue 14:00-15:00 profile), for 12 s"
        );
        let drop = Assessment {
            value: 0.0,
            usual: 1000.0,
            state: State::Warning,
            ..a
        };
        let tags = [("syscall", "read".to_string())];
        assert!(
            describe("syscall.count", &tags, Kind::Counter, 1.0, &drop, 3.0)
                .starts_with("syscall read count 0/s: down from its usual 1000/s")
        );
        // Held by hysteresis while calm: near the usual, or settled at a new level.
        let calm = Assessment {
            value: 7_900.0,
            strength: 0.0,
            ..a
        };
        let tags = [("device", "vda".to_string()), ("op", "write".to_string())];
        assert_eq!(
            describe("disk.latency_us.p99", &tags, Kind::Gauge, 1.0, &calm, 600.0),
            "disk vda write p99 7.9 ms: back near its usual 7.7 ms, clearing after 10 min critical"
        );
        let settled = Assessment {
            value: 48_100.0,
            ..calm
        };
        assert_eq!(
            describe(
                "disk.latency_us.p99",
                &tags,
                Kind::Gauge,
                1.0,
                &settled,
                600.0
            ),
            "disk vda write p99 48.1 ms: steady at this level now (6.2x its usual 7.7 ms), \
             clearing after 10 min critical"
        );
    }
}
