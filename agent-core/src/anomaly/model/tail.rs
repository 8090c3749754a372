//! From z to score and raw state, and tail learning: the series' own |z| histogram, so a
//! naturally spiky series is judged against its own spikes.

use super::super::State;

/// Score at which a point counts as a warning (z ≈ 5 σ at sensitivity 1).
pub(crate) const WARN_SCORE: f64 = 0.5;
/// Score at which a point counts as critical (z ≈ 7.8 σ at sensitivity 1).
pub(crate) const CRIT_SCORE: f64 = 0.75;
/// z (in σ) that scores [`WARN_SCORE`]; also the |z| at which a view calls a point anomalous.
pub(crate) const Z_MID: f64 = 5.0;
/// Exponent of the score map: steep enough that 5 σ → 0.5 and 7.8 σ → 0.75, gentle enough that
/// it saturates slowly (large anomalies stay ranked).
const SCORE_EXPONENT: f64 = 2.5;

/// 99th percentile of |Z| for a standard normal: the tail we expect before calibration.
const Q99: f64 = 2.575_829;
/// 90th percentile of |Z| for a standard normal.
const Q90: f64 = 1.644_854;

/// Bins of the |z| histogram: bin 0 below [`HIST_FIRST_EDGE`], bin k ≥ 1 from
/// `HIST_FIRST_EDGE·√2^(k-1)` up (the last bin reaches z ≈ 1000).
pub(crate) const HIST_BINS: usize = 20;
/// Lower edge of bin 1: |z| under 1.5 is the unremarkable body, not the tail.
const HIST_FIRST_EDGE: f64 = 1.5;
/// Counts are halved when they reach this total: the tail reflects the last ~2000-4000 points,
/// so the poor fits of a young model fade.
const HIST_MAX: u32 = 4096;
/// Points in the histogram before its tail is trusted (a 99th percentile needs ~100 points).
const TAIL_MIN_POINTS: f64 = 100.0;
/// Floor under the series' 90th percentile when comparing tail steepness: a series whose body
/// is narrower than a normal one must not look heavy-tailed for that alone.
const TAIL_Q90_FLOOR: f64 = 0.8;
/// Most the tail's steepness (90→99 climb against the normal one) may widen the factor.
const TAIL_SHAPE_MAX: f64 = 2.5;
/// Most the tail factor may shrink a z: even a very spiky series keeps its huge outliers.
const TAIL_FACTOR_MAX: f64 = 1000.0;

/// Bounded monotone map from |z| (σ units, sensitivity applied) to [0, 1]: z^2.5 / (z^2.5 +
/// 5^2.5). 0 at z = 0, [`WARN_SCORE`] at z = 5, [`CRIT_SCORE`] at z ≈ 7.8; it saturates slowly
/// (0.97 at z = 20, 0.9994 at z = 100) so large anomalies stay ranked.
pub(crate) fn score_of(z: f64) -> f64 {
    let z = z.abs();
    if z.is_nan() {
        return 0.0;
    }
    if z.is_infinite() {
        return 1.0;
    }
    let a = (z / Z_MID).powf(SCORE_EXPONENT);
    (a / (a + 1.0)).clamp(0.0, 1.0)
}

/// The state one point calls for on its own, before hysteresis.
pub(crate) fn raw_state(score: f64) -> State {
    if score >= CRIT_SCORE {
        State::Critical
    } else if score >= WARN_SCORE {
        State::Warning
    } else {
        State::Ok
    }
}

fn hist_edge(k: usize) -> f64 {
    HIST_FIRST_EDGE * std::f64::consts::SQRT_2.powi(k as i32 - 1)
}

pub(crate) fn hist_add(hist: &mut [u16; HIST_BINS], z: f64) {
    let k = if z < HIST_FIRST_EDGE || z.is_nan() {
        0
    } else {
        // Bins grow by √2: two bins per doubling.
        ((2.0 * (z / HIST_FIRST_EDGE).log2()).floor() as usize + 1).min(HIST_BINS - 1)
    };
    let total: u32 = hist.iter().map(|&c| u32::from(c)).sum();
    if total >= HIST_MAX || hist[k] == u16::MAX {
        for c in hist.iter_mut() {
            *c /= 2;
        }
    }
    hist[k] += 1;
}

/// Keeps an eighth of the histogram: what it learnt stays as a prior, new points soon outweigh it.
pub(crate) fn fade_hist(hist: &mut [u16; HIST_BINS]) {
    for c in hist.iter_mut() {
        *c /= 8;
    }
}

/// |z| exceeded by a fraction `frac` of the histogram (log-interpolated within a bin, linearly
/// within the first one, [0, 1.5)).
fn hist_quantile(hist: &[u16; HIST_BINS], total: f64, frac: f64) -> f64 {
    let need = frac * total;
    let mut cum = 0.0;
    for k in (1..HIST_BINS).rev() {
        let c = f64::from(hist[k]);
        if c > 0.0 && cum + c >= need {
            let (lo, hi) = (hist_edge(k), hist_edge(k + 1));
            return hi * (lo / hi).powf((need - cum) / c);
        }
        cum += c;
    }
    let c = f64::from(hist[0]);
    if c > 0.0 {
        hist_edge(1) * (1.0 - ((need - cum) / c).clamp(0.0, 1.0))
    } else {
        hist_edge(1)
    }
}

/// How much wider than normal the series' tails are, from its |z| histogram: its 99th
/// percentile against the normal 2.58, times how much steeper its 90→99 percentile climb is than
/// the normal one (a power-law extrapolation further out, where alerts live). 1 for normal or
/// lighter tails, and until 100 points are in.
pub(crate) fn tail_factor(hist: &[u16; HIST_BINS]) -> f64 {
    let total: f64 = hist.iter().map(|&c| f64::from(c)).sum();
    if total < TAIL_MIN_POINTS {
        return 1.0;
    }
    // Fractions above the 90th and the 99th percentile.
    let q90 = hist_quantile(hist, total, 0.10);
    let q99 = hist_quantile(hist, total, 0.01);
    let shape = (q99 / q90.max(TAIL_Q90_FLOOR) / (Q99 / Q90)).clamp(1.0, TAIL_SHAPE_MAX);
    ((q99 / Q99) * shape).clamp(1.0, TAIL_FACTOR_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_bounded_and_monotone() {
        let mut last = -1.0;
        for i in 0..200 {
            let s = score_of(f64::from(i) * 0.1);
            assert!((0.0..=1.0).contains(&s));
            assert!(s >= last);
            last = s;
        }
        assert_eq!(score_of(0.0), 0.0);
        assert!((score_of(5.0) - 0.5).abs() < 0.01);
        assert!(score_of(7.8) >= CRIT_SCORE - 0.01);
        assert!(score_of(100.0) < 0.9995);
        assert_eq!(score_of(f64::NAN), 0.0);
    }
}
