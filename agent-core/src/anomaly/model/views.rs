//! The five views, each judging the newest value against the state before it (read-only):
//! a robust z in σ units, plus what its learning step needs.

use super::season::Season;
use super::tail::Z_MID;
use super::{Model, Params, SIGMA_PER_MAD, View};

/// Share of the effective spread that the profile's own spread may take at most: half, as each
/// slot's spread rests on few hours.
const PROFILE_SPREAD_SHARE: f64 = 0.5;
/// Floor of the effective spread as a share of the slow spread: a quiet spell cannot shrink the
/// yardstick until every wobble alarms.
const SLOW_SPREAD_FLOOR: f64 = 0.3;
/// Absolute floor of the effective spread (a constant series still divides by something).
const SPREAD_FLOOR_ABS: f64 = 1e-12;
/// Floor of the effective spread in quanta (the data's resolution): half a step is noise.
const QUANTUM_FLOOR: f64 = 0.5;
/// Counters are Poisson-like (σ = √level): the spread is at least this share of √level.
const COUNTER_FLOOR: f64 = 0.5;

/// Interval from which a point the point view calls anomalous teaches the short-term baseline
/// fully (5 min); below it, in proportion.
const BURST_FULL_LEARN_S: f64 = 300.0;
/// Least share a point the point view calls anomalous teaches (at 1 s and below): a fifth.
const BURST_MIN_LEARN: f64 = 0.2;

/// Clip of the medium-term level's update, in σ.
const MID_CLIP_SIGMA: f64 = 4.0;
/// The sustained view speaks once this many medium memories are seen (the long-term level and
/// the usual stray have settled).
pub(super) const SUSTAINED_MIN_MIDS: f64 = 4.0;
/// Floor of the usual stray of the medium-term level, in σ.
pub(super) const MID_DEV_FLOOR_SIGMA: f64 = 0.25;

/// Memory of the recent spread, in points (the variance view's window).
pub(super) const FAST_MEMORY: f64 = 16.0;
/// Clip of a residual, in σ, before it feeds a spread: one spike cannot blow a spread up.
pub(super) const RESIDUAL_CLIP_SIGMA: f64 = 4.0;
/// Floor of the slow spread in the variance view's reference, as a share of σ.
const SLOW_SPREAD_MIN_SHARE: f64 = 0.25;
/// Floor of how far log(recent / usual spread) usually strays: a very steady spread must not
/// make a small wobble look erratic.
pub(super) const VAR_DEV_FLOOR: f64 = 0.1;

/// Relative tolerance under which two consecutive values are the same (float noise).
const SAME_REL_TOL: f64 = 1e-12;
/// The flat view watches only series that repeat a value at most this often (normally noisy).
const FLAT_MAX_P_SAME: f32 = 0.3;
/// A flat line is reported for this many acceptance periods at most (two hours): then it is the
/// usual.
const FLAT_MAX_ACCEPTS: u32 = 2;
/// Bounds of the repeat probability in the flat view's likelihood (never certain either way).
const FLAT_P_SAME_RANGE: (f64, f64) = (0.02, 0.999);

/// Floor of the seasonal view's spread, in σ: the profile's error cannot make it sharper than
/// half the point noise.
const SEASON_SD_FLOOR_SIGMA: f64 = 0.5;

/// The point view: the value against the short-term baseline plus the profile.
pub(super) struct PointView {
    /// The value minus the smooth profile (what the levels learn from).
    pub y: f64,
    /// Residual against the smooth profile.
    pub r_smooth: f64,
    /// Residual against whichever profile (smooth or step) explains the value better.
    pub r: f64,
    /// That profile's offset.
    pub offset: f64,
    /// What was expected: level plus offset.
    pub pred: f64,
    /// Effective spread (σ).
    pub s: f64,
    /// z before the tail factor (what the tail and the shift acceptance learn from).
    pub z_raw: f64,
    pub z: f64,
}

/// The sustained view: a medium-term level against the long-term one.
pub(super) struct SustainedView {
    /// The medium-term level, this point included.
    pub mid: f64,
    /// Its distance from the long-term level.
    pub d: f64,
    /// How far the two usually stray (σ), before this point.
    pub mid_dev: f64,
    pub z: f64,
}

/// The variance view: the recent spread against the usual one.
pub(super) struct VarianceView {
    /// The recent spread (σ), this point included.
    pub fast: f64,
    /// log(recent / usual spread).
    pub v: f64,
    /// How far `v` usually strays, before this point (NaN: not yet known).
    pub var_dev: f64,
    pub z: f64,
}

/// The flat view: a run of repeated values.
pub(super) struct FlatView {
    /// The value repeats the previous one.
    pub same: bool,
    /// Points that repeated the value, this one included.
    pub run: u32,
    pub z: f64,
}

/// The view with the largest |z| (the point view, z = 0, when none is finite); the first wins a
/// tie.
pub(super) fn strongest(candidates: [(View, f64); 5]) -> (View, f64) {
    candidates
        .into_iter()
        .filter(|(_, z)| z.is_finite())
        .fold((View::Point, 0.0_f64), |best, c| {
            if c.1.abs() > best.1.abs() { c } else { best }
        })
}

/// Share of a normal update that the short-term views learn from this point (`z_point` at the
/// learning sensitivity): at high resolution
/// a burst spans many points, so a point the point view calls anomalous teaches the baseline
/// less (a fifth at 1 s, fully from 5 min); the burst leaves the baseline where it was and its
/// end is no second anomaly. A shift that lasts is adopted whole by the acceptance.
pub(super) fn burst_learn_share(z_point: f64, warming: bool, p: &Params) -> f64 {
    if !warming && z_point.abs() >= Z_MID {
        (p.interval_s / BURST_FULL_LEARN_S).clamp(BURST_MIN_LEARN, 1.0)
    } else {
        1.0
    }
}

impl Model {
    /// Effective spread: the short-term spread blended with the profile's, above floors that
    /// keep a quiet or constant series from turning every wobble into an alarm.
    fn sigma(&self, season: &Season, pred: f64, p: &Params) -> f64 {
        let w = PROFILE_SPREAD_SHARE * season.weight;
        let base = (1.0 - w) * f64::from(self.scale) + w * season.sigma;
        let mut floor = SLOW_SPREAD_FLOOR * f64::from(self.scale_slow);
        floor = floor.max(p.rel_floor * pred.abs()).max(SPREAD_FLOOR_ABS);
        if self.quantum.is_finite() {
            floor = floor.max(QUANTUM_FLOOR * f64::from(self.quantum));
        }
        if p.counter {
            // √level in the series' own unit, back in the model's.
            let unit = self.unit();
            floor = floor.max(COUNTER_FLOOR * (pred.abs() * unit).max(1.0).sqrt() / unit);
        }
        base.max(floor)
    }

    /// Point: spikes, drops, shifts. The value is judged by whichever of the smooth and the
    /// step-shaped profile explains it better; the levels learn from the smooth one only, to
    /// stay consistent. `tail`: the series' tail factor.
    pub(super) fn point_view(&self, x: f64, season: &Season, tail: f64, p: &Params) -> PointView {
        let y = x - season.offset;
        let r_smooth = y - self.level;
        let r_step = x - season.step - self.level;
        let (r, offset) = if r_step.abs() < r_smooth.abs() {
            (r_step, season.step)
        } else {
            (r_smooth, season.offset)
        };
        let pred = self.level + offset;
        let s = self.sigma(season, pred, p);
        let z_raw = r / s;
        PointView {
            y,
            r_smooth,
            r,
            offset,
            pred,
            s,
            z_raw,
            z: z_raw / tail,
        }
    }

    /// Sustained: slow drift, a quiet afternoon that slid in gradually. The medium-term level
    /// (moved by `y` at the rate `learn` allows) against the long-term one, in units of how far
    /// they usually stray.
    pub(super) fn sustained_view(&self, y: f64, s: f64, learn: f64, p: &Params) -> SustainedView {
        let ns = f64::from(self.n_short);
        let n = f64::from(self.n);
        let a_mid = learn * (1.0 / p.mid_len()).max(1.0 / ns);
        let clip = MID_CLIP_SIGMA * s;
        let mid = self.mid + a_mid * (y - self.mid).clamp(-clip, clip);
        let d = mid - self.long;
        let mid_dev = f64::from(self.mid_dev);
        let z = if n >= SUSTAINED_MIN_MIDS * p.mid_len() {
            d / mid_dev.max(MID_DEV_FLOOR_SIGMA * s)
        } else {
            0.0
        };
        SustainedView { mid, d, mid_dev, z }
    }

    /// Variance: turned erratic. The recent spread (residual `r` included) against the
    /// geometric mean of the short and the slow spread (the short one soon follows a variance
    /// change), in units of how far their log ratio usually strays.
    pub(super) fn variance_view(&self, r: f64, s: f64, learn: f64) -> VarianceView {
        let ns = f64::from(self.n_short);
        let a_fast = learn * (1.0 / FAST_MEMORY).max(1.0 / ns);
        let fast = f64::from(self.fast)
            + a_fast
                * ((r.abs().min(RESIDUAL_CLIP_SIGMA * s)) * SIGMA_PER_MAD - f64::from(self.fast));
        let v_ref = (s * f64::from(self.scale_slow).max(SLOW_SPREAD_MIN_SHARE * s)).sqrt();
        let v = if fast > 0.0 { (fast / v_ref).ln() } else { 0.0 };
        let var_dev = f64::from(self.var_dev);
        let z = if v > 0.0 && ns >= FAST_MEMORY && var_dev.is_finite() {
            v / var_dev.max(VAR_DEV_FLOOR)
        } else {
            0.0
        };
        VarianceView {
            fast,
            v,
            var_dev,
            z,
        }
    }

    /// Flat: a run of identical values in a normally noisy series, scored by how unlikely the
    /// run is given how often this series repeats a value and how long its runs usually are.
    pub(super) fn flat_view(&self, x: f64, p: &Params) -> FlatView {
        let same = (x - self.prev).abs() <= SAME_REL_TOL * x.abs().max(self.prev.abs());
        let run = if same { u32::from(self.run) + 1 } else { 0 };
        // Only the part of the run beyond the longest runs this series usually has counts.
        let excess = f64::from(run) - f64::from(self.run_ref).max(1.0);
        // Only for a normally noisy series, and for two hours at most: then it is the usual.
        let z = if excess > 0.0
            && self.p_same <= FLAT_MAX_P_SAME
            && run <= FLAT_MAX_ACCEPTS * p.accept_len()
        {
            let (lo, hi) = FLAT_P_SAME_RANGE;
            let p_same = f64::from(self.p_same).clamp(lo, hi);
            // The run's log-likelihood ratio against a fresh value, as a z: √(2·LLR).
            (2.0 * excess * -p_same.ln()).sqrt()
        } else {
            0.0
        };
        FlatView { same, run, z }
    }

    /// Seasonal: where a rhythm is trusted, the value against what this hour of the day or week
    /// usually brings on top of the long-term level, in units of the point noise and the
    /// profile's own error. Catches the quiet holiday the short-term baseline soon follows.
    pub(super) fn seasonal_view(&self, x: f64, season: &Season, pt: &PointView, tail: f64) -> f64 {
        if !season.trusted() {
            return 0.0;
        }
        let expected = self.long + pt.offset;
        let sd = (f64::from(self.scale_slow).powi(2) + (SIGMA_PER_MAD * season.err).powi(2))
            .sqrt()
            .max(SEASON_SD_FLOOR_SIGMA * pt.s);
        (x - expected) / sd / tail
    }
}
