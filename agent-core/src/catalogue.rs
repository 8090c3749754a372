//! The metric catalogue, typed: every metric family the agent emits is a [`MetricDef`] defined
//! next to the code that fills it (the probes' in their modules, the others here), and code
//! builds metrics through it rather than from string literals. The README's table is checked
//! against the whole catalogue by a test, and the tests check that what the agent emits is in it.

use crate::{
    histogram::LatencyStats,
    snapshot::{Kind, Metric, Tags},
};

/// How a family appears in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A per-interval count.
    Counter,
    /// A level.
    Gauge,
    /// A latency histogram: gauges `<name>.mean`, `.p50`, `.p90`, `.p99`, `.p999`, `.max` in µs.
    Latency,
}

/// One metric family.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub shape: Shape,
    /// Tag keys, in order.
    pub tags: &'static [&'static str],
    /// What it measures, for people (the README's "meaning").
    pub help: &'static str,
}

/// Suffixes of a [`Shape::Latency`] family.
pub const LATENCY_SUFFIXES: [&str; 6] = ["mean", "p50", "p90", "p99", "p999", "max"];

impl MetricDef {
    pub const fn counter(
        name: &'static str,
        tags: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        Self {
            name,
            shape: Shape::Counter,
            tags,
            help,
        }
    }

    pub const fn gauge(
        name: &'static str,
        tags: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        Self {
            name,
            shape: Shape::Gauge,
            tags,
            help,
        }
    }

    pub const fn latency(
        name: &'static str,
        tags: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        Self {
            name,
            shape: Shape::Latency,
            tags,
            help,
        }
    }

    /// The kind of every metric this family produces (a latency family's are gauges).
    pub fn kind(&self) -> Kind {
        match self.shape {
            Shape::Counter => Kind::Counter,
            Shape::Gauge | Shape::Latency => Kind::Gauge,
        }
    }

    /// The metric names this family produces.
    pub fn names(&self) -> Vec<String> {
        match self.shape {
            Shape::Latency => LATENCY_SUFFIXES
                .iter()
                .map(|s| format!("{}.{s}", self.name))
                .collect(),
            _ => vec![self.name.to_string()],
        }
    }

    /// Whether `name` is one of this family's metrics.
    pub fn produces(&self, name: &str) -> bool {
        match self.shape {
            Shape::Latency => name
                .strip_prefix(self.name)
                .and_then(|s| s.strip_prefix('.'))
                .is_some_and(|s| LATENCY_SUFFIXES.contains(&s)),
            _ => name == self.name,
        }
    }

    /// A value of this counter family.
    pub fn count(&self, tags: Tags, value: u64) -> Metric {
        debug_assert_eq!(self.shape, Shape::Counter, "{} is not a counter", self.name);
        Metric::counter(self.name, tags, value)
    }

    /// A value of this gauge family.
    pub fn level(&self, tags: Tags, value: f64) -> Metric {
        debug_assert_eq!(self.shape, Shape::Gauge, "{} is not a gauge", self.name);
        Metric::gauge(self.name, tags, value)
    }

    /// This latency family's gauges for one histogram.
    pub fn latency_of(&self, stats: &LatencyStats, tags: &Tags, out: &mut Vec<Metric>) {
        debug_assert_eq!(self.shape, Shape::Latency, "{} is not a latency", self.name);
        stats.push_us(self.name, tags, out);
    }
}

/// The agent's own health and cost.
pub mod agent {
    use super::MetricDef;

    pub const PROBE_UP: MetricDef = MetricDef::gauge(
        "agent.probe_up",
        &["probe"],
        "1 when the probe is running, 0 when down",
    );
    pub const EVENTS_LOST: MetricDef = MetricDef::counter(
        "agent.events_lost",
        &["probe"],
        "ring buffer reservations that failed (buffer full)",
    );
    pub const INFLIGHT_DROPPED: MetricDef = MetricDef::counter(
        "agent.inflight_dropped",
        &["probe"],
        "samples lost to the bounded in-flight tables",
    );
    pub const EVENTS_LIMITED: MetricDef = MetricDef::counter(
        "agent.events_limited",
        &["probe"],
        "events over the probe's per-CPU budget of 100/s (failed connects, run-queue waits), counted instead of sent; sent only when not 0",
    );
    pub const READ_ERRORS: MetricDef = MetricDef::counter(
        "agent.read_errors",
        &["probe"],
        "tracepoint fields that could not be read (a layout the agent did not expect; also logged); sent only when not 0",
    );
    pub const EVENTS: MetricDef =
        MetricDef::counter("agent.events", &[], "ring buffer events received");
    pub const HEARTBEAT: MetricDef = MetricDef::counter("agent.heartbeat", &[], "1 every interval");
    pub const SINK_ERRORS: MetricDef = MetricDef::counter(
        "agent.sink_errors",
        &["sink"],
        "failed sends, connects, acks, timeouts, lookups of a sink",
    );
    pub const SINK_DROPPED: MetricDef = MetricDef::counter(
        "agent.sink_dropped",
        &["sink"],
        "metric values a sink could not deliver",
    );
    pub const PROCFS_UP: MetricDef = MetricDef::gauge(
        "agent.procfs_up",
        &["source"],
        "1 when the /proc file (meminfo, vmstat, stat, loadavg, pressure_cpu|io|memory) was read this interval, 0 when missing or malformed (logged once)",
    );
    pub const PROCFS_DROPPED: MetricDef = MetricDef::counter(
        "agent.procfs_dropped",
        &["source"],
        "values of a /proc file dropped as NaN, infinite or negative; sent only when not 0",
    );
    pub const CPU_PCT: MetricDef = MetricDef::gauge(
        "agent.cpu_pct",
        &[],
        "the agent's own CPU, percent of one core",
    );
    pub const RSS_BYTES: MetricDef =
        MetricDef::gauge("agent.rss_bytes", &[], "the agent's own resident memory");
    pub const BPF_NS_PER_EVENT: MetricDef = MetricDef::gauge(
        "agent.bpf_ns_per_event",
        &["program"],
        "the kernel's measure of one run of each attached program",
    );
    pub const BPF_CPU_PCT: MetricDef = MetricDef::gauge(
        "agent.bpf_cpu_pct",
        &["program"],
        "CPU spent in each program, percent of one core",
    );

    pub const ALL: &[MetricDef] = &[
        PROBE_UP,
        EVENTS_LOST,
        INFLIGHT_DROPPED,
        EVENTS_LIMITED,
        READ_ERRORS,
        EVENTS,
        HEARTBEAT,
        SINK_ERRORS,
        SINK_DROPPED,
        PROCFS_UP,
        PROCFS_DROPPED,
        CPU_PCT,
        RSS_BYTES,
        BPF_NS_PER_EVENT,
        BPF_CPU_PCT,
    ];
}

/// The anomaly detector's own series.
pub mod anomaly {
    use super::MetricDef;

    pub const SCORE: MetricDef = MetricDef::gauge(
        "anomaly.score",
        &["key"],
        "anomaly score of a key in [0, 1] (sent while ≥ 0.5 or not ok, then once 0)",
    );
    pub const ACTIVE: MetricDef = MetricDef::gauge("anomaly.active", &[], "keys not ok");
    pub const INCIDENTS_OPEN: MetricDef =
        MetricDef::gauge("incidents.open", &[], "incidents open (see Incidents)");

    pub const ALL: &[MetricDef] = &[SCORE, ACTIVE, INCIDENTS_OPEN];
}
