//! stdout output of `run`: one JSON object per interval, or readable text.

use std::io::{self, Write};

use serde::Serialize;

use crate::{
    events::EventView,
    snapshot::{Kind, Snapshot},
};

/// Whether `e`, or an error it wraps, is a write to a closed stdout (`ebpf-agent ... | head`).
/// Every command ends quietly with exit 0 on it, as if it had finished: the reader has what it
/// wanted.
pub fn stdout_closed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The JSON line: the snapshot's fields plus the interval's slow events.
#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(flatten)]
    snapshot: &'a Snapshot,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    events: &'a [EventView],
}

pub fn write_json(w: &mut impl Write, snap: &Snapshot, events: &[EventView]) -> io::Result<()> {
    serde_json::to_writer(
        &mut *w,
        &JsonLine {
            snapshot: snap,
            events,
        },
    )?;
    w.write_all(b"\n")?;
    w.flush()
}

pub fn write_text(w: &mut impl Write, snap: &Snapshot, events: &[EventView]) -> io::Result<()> {
    let t = humantime::format_rfc3339_seconds(snap.time);
    writeln!(w, "--- {t} {} ({} metrics)", snap.host, snap.metrics.len())?;
    for m in &snap.metrics {
        let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let name = if tags.is_empty() {
            m.name.to_string()
        } else {
            format!("{}{{{}}}", m.name, tags.join(","))
        };
        match m.kind {
            Kind::Counter => writeln!(w, "{name} {}", m.value as u64)?,
            Kind::Gauge => writeln!(w, "{name} {}", fmt_gauge(m.value))?,
        }
    }
    for a in &snap.annotations.anomalies {
        writeln!(w, "anomaly {} {}", a.state, a.description)?;
    }
    for i in &snap.annotations.incidents {
        writeln!(w, "incident {} {} {}", i.id, i.state, i.description)?;
    }
    for e in events {
        writeln!(
            w,
            "event {} pid={} tid={} comm={} {} latency_us={:.1}{}",
            e.kind,
            e.pid,
            e.tid,
            e.comm,
            e.target,
            e.latency_us,
            e.ret.map(|r| format!(" ret={r}")).unwrap_or_default()
        )?;
    }
    w.flush()
}

/// Up to 3 decimals, without trailing zeros.
pub fn fmt_gauge(v: f64) -> String {
    crate::format::decimals(v, 3)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::snapshot::Metric;

    #[test]
    fn json_line_is_one_object() {
        let snap = Snapshot {
            annotations: Default::default(),
            time: UNIX_EPOCH + Duration::from_secs(5),
            interval: Duration::from_secs(1),
            host: "h".into(),
            metrics: vec![Metric::counter("tcp.connects", vec![], 3)],
        };
        let mut buf = vec![];
        write_json(&mut buf, &snap, &[]).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["time"], 5);
        assert_eq!(v["metrics"][0]["value"], 3);
        assert!(v.get("events").is_none());
    }

    #[test]
    fn gauges_are_short() {
        assert_eq!(fmt_gauge(1.5), "1.5");
        assert_eq!(fmt_gauge(2.0), "2");
        assert_eq!(fmt_gauge(0.0001), "0");
        assert_eq!(fmt_gauge(-0.0001), "0");
    }
}
