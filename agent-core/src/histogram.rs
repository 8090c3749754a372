//! Turning a latency histogram (agent_common::hist buckets, in ns) into catalogue metrics.

use agent_common::hist;

use crate::snapshot::{Metric, Tags};

/// Quantiles reported for every latency histogram, with their metric suffix.
pub const QUANTILES: [(&str, f64); 4] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)];

/// Statistics of one interval's histogram, in ns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyStats {
    pub count: u64,
    pub mean_ns: f64,
    /// In the order of [`QUANTILES`].
    pub quantiles_ns: [u64; 4],
    pub max_ns: u64,
}

impl LatencyStats {
    /// `None` when the histogram is empty.
    pub fn from_buckets(buckets: &[u64], sum_ns: u64) -> Option<Self> {
        let count: u64 = buckets.iter().sum();
        if count == 0 {
            return None;
        }
        let quantiles_ns = hist::quantiles(buckets, QUANTILES.map(|(_, p)| p))?;
        Some(Self {
            count,
            mean_ns: sum_ns as f64 / count as f64,
            quantiles_ns,
            max_ns: hist::max(buckets)?,
        })
    }

    /// Appends `<base>.mean`, `.p50`, `.p90`, `.p99`, `.p999`, `.max` as gauges in µs.
    pub fn push_us(&self, base: &'static str, tags: &Tags, out: &mut Vec<Metric>) {
        let us = |ns: f64| ns / 1000.0;
        let [mean, quantiles @ .., max] = latency_names(base);
        out.push(Metric::gauge(*mean, tags.clone(), us(self.mean_ns)));
        for (name, q) in quantiles.iter().zip(self.quantiles_ns) {
            out.push(Metric::gauge(*name, tags.clone(), us(q as f64)));
        }
        out.push(Metric::gauge(*max, tags.clone(), us(self.max_ns as f64)));
    }
}

/// `<base>.mean`, `.p50`, `.p90`, `.p99`, `.p999`, `.max`, made once per latency family and kept
/// for the life of the process (a handful of families): six names per histogram every interval
/// were built anew before, the most frequent allocation of the idle agent.
fn latency_names(base: &'static str) -> &'static [&'static str; 6] {
    type Names = &'static [&'static str; 6];
    static MADE: std::sync::Mutex<Vec<(&'static str, Names)>> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, names)) = made.iter().find(|(b, _)| *b == base) {
        return names;
    }
    let names: Names = Box::leak(Box::new(
        crate::catalogue::LATENCY_SUFFIXES.map(|s| &*format!("{base}.{s}").leak()),
    ));
    made.push((base, names));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_a_known_histogram() {
        let mut b = vec![0u64; hist::BUCKETS];
        // 90 samples at 1 µs, 9 at 100 µs, 1 at 10 ms.
        b[hist::bucket(1_000)] += 90;
        b[hist::bucket(100_000)] += 9;
        b[hist::bucket(10_000_000)] += 1;
        let sum = 90 * 1_000 + 9 * 100_000 + 10_000_000;
        let s = LatencyStats::from_buckets(&b, sum).unwrap();
        assert_eq!(s.count, 100);
        assert!((s.mean_ns - 109_900.0).abs() < 1e-9);
        let within = |got: u64, want: f64| (got as f64 - want).abs() <= want * 0.0625;
        assert!(within(s.quantiles_ns[0], 1_000.0)); // p50
        assert!(within(s.quantiles_ns[1], 1_000.0)); // p90: the 90th sample is still 1 µs
        assert!(within(s.quantiles_ns[2], 100_000.0)); // p99
        assert!(within(s.quantiles_ns[3], 10_000_000.0)); // p999
        assert!(within(s.max_ns, 10_000_000.0));
        let mut out = vec![];
        s.push_us("x.latency_us", &vec![("k", "v".into())], &mut out);
        let names: Vec<_> = out.iter().map(|m| &*m.name).collect();
        assert_eq!(
            names,
            [
                "x.latency_us.mean",
                "x.latency_us.p50",
                "x.latency_us.p90",
                "x.latency_us.p99",
                "x.latency_us.p999",
                "x.latency_us.max"
            ]
        );
        assert!((out[0].value - 109.9).abs() < 1e-9);
    }

    #[test]
    fn empty_is_none() {
        assert!(LatencyStats::from_buckets(&[0; hist::BUCKETS], 0).is_none());
    }
}
