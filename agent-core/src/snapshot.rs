//! One interval's worth of metrics: a flat list, knowing no probe and no wire format.
//!
//! Producers (probes, procfs, the agent itself) push [`Metric`]s; sinks read [`Snapshot`]s.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeStruct, Serializer};

use crate::anomaly::State;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A level at the end of the interval (memory used, p99 latency, ...).
    Gauge,
    /// What happened during the interval: a per-interval delta, always a whole number.
    Counter,
}

impl Kind {
    /// As in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// Tags as (key, value) pairs, in a fixed order for stable output.
pub type Tags = Vec<(&'static str, String)>;

/// A metric's name: the catalogue's names are static, and borrowing them spares a `String` per
/// metric every interval (a fifth of the idle agent's allocations).
pub type Name = Cow<'static, str>;

#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// Dotted name from the catalogue, e.g. `syscall.latency_us.p99`.
    pub name: Name,
    pub tags: Tags,
    pub kind: Kind,
    pub value: f64,
}

impl Metric {
    pub fn gauge(name: impl Into<Name>, tags: Tags, value: f64) -> Self {
        Self {
            name: name.into(),
            tags,
            kind: Kind::Gauge,
            value,
        }
    }

    pub fn counter(name: impl Into<Name>, tags: Tags, value: u64) -> Self {
        Self {
            name: name.into(),
            tags,
            kind: Kind::Counter,
            value: value as f64,
        }
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// End of the interval (aligned to the interval boundary on the wall clock).
    pub time: SystemTime,
    pub interval: Duration,
    pub host: String,
    pub metrics: Vec<Metric>,
    /// What the anomaly detection says about some of the metrics (empty without detection).
    pub annotations: Annotations,
}

/// Judgements attached to an interval by the anomaly detection, for sinks that can carry them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Annotations {
    /// Metrics that are not ok or changed state this interval, worst first.
    pub anomalies: Vec<Anomaly>,
    /// Set when some state changed this interval: what is off overall.
    pub summary: Option<AnomalySummary>,
    /// Open incidents, and those closing this interval (state ok), for people.
    pub incidents: Vec<crate::incident::Incident>,
}

/// One metric's state, by name and tags.
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub name: String,
    pub tags: Tags,
    pub state: State,
    /// In [0, 1].
    pub score: f64,
    pub value: f64,
    pub usual: f64,
    pub since_s: f64,
    /// For a person, e.g. `disk vda write p99 48.1 ms: 6x its usual 7.7 ms (...), for 12 s`.
    pub description: String,
    pub changed: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AnomalySummary {
    /// The worst state of the keys that changed.
    pub state: State,
    /// Keys not ok.
    pub active: usize,
    pub description: String,
}

impl Serialize for Anomaly {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Anomaly", 9)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("tags", &TagMap(&self.tags))?;
        st.serialize_field("state", &self.state)?;
        st.serialize_field("score", &self.score)?;
        st.serialize_field("value", &self.value)?;
        st.serialize_field("usual", &self.usual)?;
        st.serialize_field("since_s", &self.since_s)?;
        st.serialize_field("description", &self.description)?;
        st.serialize_field("changed", &self.changed)?;
        st.end()
    }
}

impl Snapshot {
    pub fn new(time: SystemTime, interval: Duration, host: String, metrics: Vec<Metric>) -> Self {
        Snapshot {
            time,
            interval,
            host,
            metrics,
            annotations: Annotations::default(),
        }
    }

    /// The annotation of metric `m`, if any.
    pub fn anomaly_of(&self, m: &Metric) -> Option<&Anomaly> {
        self.annotations
            .anomalies
            .iter()
            .find(|a| a.name == m.name && a.tags == m.tags)
    }
}

impl Snapshot {
    pub fn unix_seconds(&self) -> f64 {
        self.time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    }

    /// First metric with this name whose tags include every `(key, value)` of `tags`.
    pub fn find(&self, name: &str, tags: &[(&str, &str)]) -> Option<&Metric> {
        self.metrics
            .iter()
            .find(|m| m.name == name && tags_include(&m.tags, tags))
    }

    pub fn value(&self, name: &str, tags: &[(&str, &str)]) -> Option<f64> {
        self.find(name, tags).map(|m| m.value)
    }
}

/// Whether `tags` hold every `(key, value)` of `want`.
pub fn tags_include(tags: &[(&'static str, String)], want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(k, v)| tags.iter().any(|(k2, v2)| k2 == k && v2 == v))
}

/// JSON shape of one interval: `{"time", "interval_s", "host", "metrics": [...]}`.
impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Snapshot", 6)?;
        let t = self.unix_seconds();
        // Whole seconds print as integers.
        if t.fract() == 0.0 {
            st.serialize_field("time", &(t as u64))?;
        } else {
            st.serialize_field("time", &t)?;
        }
        st.serialize_field("interval_s", &self.interval.as_secs_f64())?;
        st.serialize_field("host", &self.host)?;
        st.serialize_field("metrics", &self.metrics)?;
        st.serialize_field("anomalies", &self.annotations.anomalies)?;
        if self.annotations.incidents.is_empty() {
            st.skip_field("incidents")?;
        } else {
            st.serialize_field("incidents", &self.annotations.incidents)?;
        }
        st.end()
    }
}

/// Tags as a JSON object.
pub(crate) struct TagMap<'a>(pub(crate) &'a Tags);

impl Serialize for TagMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl Serialize for Metric {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Metric", 4)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("tags", &TagMap(&self.tags))?;
        st.serialize_field("kind", &self.kind)?;
        match self.kind {
            Kind::Counter => st.serialize_field("value", &(self.value as u64))?,
            Kind::Gauge => st.serialize_field("value", &self.value)?,
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let snap = Snapshot {
            annotations: Default::default(),
            time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            interval: Duration::from_secs(1),
            host: "h".into(),
            metrics: vec![
                Metric::counter("syscall.count", vec![("syscall", "read".into())], 12),
                Metric::gauge("load.1", vec![], 0.5),
            ],
        };
        let v: serde_json::Value = serde_json::to_value(&snap).unwrap();
        assert_eq!(v["time"], 1_700_000_000u64);
        assert_eq!(v["interval_s"], 1.0);
        assert_eq!(v["metrics"][0]["tags"]["syscall"], "read");
        assert_eq!(v["metrics"][0]["kind"], "counter");
        assert_eq!(v["metrics"][0]["value"], 12);
        assert_eq!(v["metrics"][1]["value"], 0.5);
        assert_eq!(
            snap.value("syscall.count", &[("syscall", "read")]),
            Some(12.0)
        );
    }
}
