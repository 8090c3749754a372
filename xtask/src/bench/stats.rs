//! Medians, spreads and histogram percentiles for the benchmark.

use serde_json::{Value, json};

/// Values of one figure over the rounds of a run: reported as median and min–max.
#[derive(Clone, Debug, Default)]
pub struct Spread(pub Vec<f64>);

impl Spread {
    pub fn push(&mut self, v: f64) {
        if v.is_finite() {
            self.0.push(v);
        }
    }

    pub fn median(&self) -> Option<f64> {
        median(&self.0)
    }

    pub fn min(&self) -> Option<f64> {
        self.0.iter().copied().reduce(f64::min)
    }

    pub fn max(&self) -> Option<f64> {
        self.0.iter().copied().reduce(f64::max)
    }

    pub fn json(&self) -> Value {
        json!({
            "median": self.median(),
            "min": self.min(),
            "max": self.max(),
            "values": self.0,
        })
    }

    /// `median (min–max)` with `digits` decimals, or `–` when empty.
    pub fn show(&self, digits: usize) -> String {
        match (self.median(), self.min(), self.max()) {
            (Some(m), Some(lo), Some(hi)) if self.0.len() > 1 => {
                format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
            }
            (Some(m), ..) => format!("{m:.digits$}"),
            _ => "–".into(),
        }
    }
}

/// Median of `values` (mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The `p`-th percentile (0–100) of `values`, nearest rank.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// A log2 histogram as printed by the BCC/libbpf tools: `lo -> hi : count` rows, where a row
/// counts values in [lo, hi] (integers).
#[derive(Clone, Debug, Default)]
pub struct Log2Hist {
    /// (lo, hi, count), in the order printed.
    pub rows: Vec<(u64, u64, u64)>,
}

impl Log2Hist {
    pub fn add(&mut self, lo: u64, hi: u64, count: u64) {
        match self.rows.iter_mut().find(|r| r.0 == lo && r.1 == hi) {
            Some(r) => r.2 += count,
            None => {
                self.rows.push((lo, hi, count));
                self.rows.sort_unstable();
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.rows.iter().map(|r| r.2).sum()
    }

    /// The bucket `[lo, hi]` holding the `p`-th percentile (0–100).
    pub fn percentile_bucket(&self, p: f64) -> Option<(u64, u64)> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let want = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for &(lo, hi, n) in &self.rows {
            seen += n;
            if seen >= want {
                return Some((lo, hi));
            }
        }
        None
    }
}

/// Parses one line of a log2 table, `     32 -> 63         : 59       |****  |`.
pub fn parse_log2_row(line: &str) -> Option<(u64, u64, u64)> {
    let (range, rest) = line.split_once(':')?;
    let (lo, hi) = range.split_once("->")?;
    let count = rest.split('|').next()?.trim();
    Some((
        lo.trim().parse().ok()?,
        hi.trim().parse().ok()?,
        count.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
    }

    #[test]
    fn log2_rows() {
        assert_eq!(
            parse_log2_row("        32 -> 63         : 59       |*****   |"),
            Some((32, 63, 59))
        );
        assert_eq!(parse_log2_row("     usecs               : count"), None);
        let mut h = Log2Hist::default();
        h.add(32, 63, 60);
        h.add(16, 31, 30);
        h.add(64, 127, 10);
        h.add(32, 63, 0);
        assert_eq!(h.percentile_bucket(50.0), Some((32, 63)));
        assert_eq!(h.percentile_bucket(30.0), Some((16, 31)));
        assert_eq!(h.percentile_bucket(99.0), Some((64, 127)));
    }
}
