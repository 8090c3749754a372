//! Snapshots and views shared by the tests of `watch`'s modules.

use std::time::{Duration, UNIX_EPOCH};

use super::{DEFAULT_SLOW, model::View, terminal::PIPE_WIDTH};
use crate::{
    anomaly::State,
    snapshot::{Anomaly, Metric, Snapshot, Tags},
};

pub(super) fn snap(metrics: Vec<Metric>) -> Snapshot {
    Snapshot {
        annotations: Default::default(),
        time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        interval: Duration::from_secs(1),
        host: "testhost".into(),
        metrics,
    }
}

pub(super) fn syscall(
    name: &str,
    count: u64,
    mean_us: f64,
    p99_us: f64,
    errors: u64,
) -> Vec<Metric> {
    let t = || vec![("syscall", name.to_string())];
    vec![
        Metric::counter("syscall.count", t(), count),
        Metric::counter("syscall.errors", t(), errors),
        Metric::gauge("syscall.latency_us.mean", t(), mean_us),
        Metric::gauge("syscall.latency_us.p99", t(), p99_us),
    ]
}

pub(super) fn up(probe: &str) -> Metric {
    Metric::gauge("agent.probe_up", vec![("probe", probe.into())], 1.0)
}

pub(super) fn view() -> View {
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

pub(super) fn sample_snapshot(getppid_calls: u64) -> Snapshot {
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

pub(super) fn anomaly(name: &str, tags: Tags, state: State, value: f64, usual: f64) -> Anomaly {
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
