//! One series' online model: what is usual, and how far the newest value is from it.
//!
//! Five views, each a robust z-score in units of the series' usual spread (σ); the largest one
//! is scored:
//! - **point**: the value against a short-term robust baseline (Huber-clipped EWMAs of location
//!   and absolute deviation, about an hour of memory, 10 to 60 points), after removing the
//!   learnt seasonal profile;
//! - **seasonal**: where a rhythm is trusted, the value against the long-term level plus this
//!   hour's profile, in units of the point noise and the profile's own error (a quiet holiday
//!   afternoon that the short-term baseline would soon follow);
//! - **sustained**: a medium-term level against the long-term level (slow drift, a quiet
//!   Tuesday afternoon that slid in gradually), normalised by how far the two usually stray;
//! - **variance**: the last ~16 points' spread against the usual spread (turned erratic);
//! - **flat**: a run of identical values in a normally noisy series, scored by how unlikely the
//!   run is given how often this series repeats a value and how long its runs usually are.
//!
//! The state (with hysteresis) follows the strength of the winning z; the score is the surprise:
//! the k-th consecutive anomalous point scores as if its z were divided by k, so onsets stand
//! out and a persisting condition fades from the score while its state stays.
//!
//! The score also hears a second, different signal: the **novelty** of the recent pattern
//! (`novelty.rs`, after contextOSE): short sequences of quantized levels never seen before add up
//! to one σ to the z the score judges (a new shape lifts a borderline onset; a burst this series
//! has shown before does not), never to the state.
//!
//! And a third: the **remembered range** (`range.rs`), the highest and lowest value of the last
//! 1,536-2,048 points. A record beyond it is judged as at least a critical deviation (the
//! series has not gone this far lately, however spiky it is, and a record is never a habit); a
//! point- or seasonal-view spike that goes as far as the range's bigger excursions, but no
//! further, is a familiar magnitude and scores at most a warning's worth. Score only, too.
//!
//! Point and seasonal z are divided by a tail factor learnt from the series' own |z| histogram
//! (its 99th percentile and the steepness of its tail against a normal one; fed by calm points
//! and by alerts that recur within 300 points): a naturally spiky series is judged against its
//! own spikes, while rare spikes stay anomalies. Scores come from a slowly saturating map of z
//! (see [`score_of`]), so big anomalies stay ranked.
//!
//! Robustness: every update is clipped to a few σ, so a spike moves nothing far; at
//! sub-minute resolution anomalous points teach the baselines a fifth as much, so a burst
//! leaves them in place. A level shift held for an hour (at least 6 points) is accepted: every
//! level re-anchors on it at once. A deviation only the sustained view still sees makes the
//! long-term level follow eight times faster. A flat line is reported for two hours at most.
//!
//! Seasonality: each hour's mean and spread are folded, at the end of the hour, into 24
//! hour-of-day and 168 hour-of-week slots (offsets from a slow reference level of their own,
//! stored as 16-bit floats; the weekly spreads as a byte each against a reference spread). A profile is trusted only when it predicts the next hours out of
//! sample clearly better than a flat line (a rhythm exists), its weight ramping in over days
//! (daily) and weeks (weekly, when it beats the daily one: quiet weekends). The profile is
//! interpolated between slot centres (smooth rhythms) and also read as a step (a job starting
//! on the hour); a value is judged by whichever explains it better.
//!
//! Every update is O(1); the hour fold is O(1) too, once an hour.
//!
//! Layout: `views.rs` holds the five views (read-only: the state before the point in, a z out),
//! `season.rs` the profiles and the hour fold, `tail.rs` the z → score map and tail learning,
//! `hysteresis.rs` the state machine, `novelty.rs` the pattern memory, `range.rs` the
//! remembered extremes; [`Model::step`] here
//! composes them and then learns.

mod hysteresis;
mod novelty;
mod range;
mod season;
mod surprise;
mod tail;
mod views;

use super::State;
use super::time::{HOUR_S, hour_index};
use views::{
    FAST_MEMORY, MID_DEV_FLOOR_SIGMA, PointView, RESIDUAL_CLIP_SIGMA, SUSTAINED_MIN_MIDS,
    SustainedView, VAR_DEV_FLOOR, VarianceView, burst_learn_share, strongest,
};

pub(crate) use hysteresis::Hysteresis;
pub(crate) use novelty::Novelty;
pub(crate) use range::Range;
use range::{FAMILIAR_MAX_Z, FAMILIAR_SHARE, Reach, record_z};
pub(crate) use season::{Bf16, Profile, Slot};
use season::{DAY_SLOTS, WEEK_SLOTS};
pub(crate) use surprise::Surprise;
pub(crate) use tail::{HIST_BINS, WARN_SCORE};
use tail::{Z_MID, hist_add, raw_state, score_of, tail_factor};

/// σ / E|X − μ| for a normal distribution: turns mean absolute deviations into σ.
const SIGMA_PER_MAD: f64 = 1.253_314;

// Memories, derived from the interval by `Params`.
/// The short-term baseline remembers about this much time...
const SHORT_MEMORY_S: f64 = HOUR_S;
/// ...but at least this many points (a noisy estimate otherwise)...
const SHORT_MIN_POINTS: f64 = 10.0;
/// ...and at most this many (at high resolution an hour of points would be slow to adapt).
const SHORT_MAX_POINTS: f64 = 60.0;
/// The medium-term level (sustained view) remembers this many short memories.
const MID_PER_SHORT: f64 = 2.0;
/// The long-term level remembers half a day...
const LONG_MEMORY_S: f64 = 12.0 * HOUR_S;
/// ...and at least this many short memories (it must be clearly slower than the medium one).
const LONG_MIN_SHORTS: f64 = 8.0;
/// How far the medium and long-term levels usually stray is remembered for a week, so a weekend
/// does not make Monday look new...
const DEV_MEMORY_S: f64 = 7.0 * 24.0 * HOUR_S;
/// ...and at least this many long memories.
const DEV_MIN_LONGS: f64 = 4.0;
/// A level shift held this long becomes the new normal: an hour...
const ACCEPT_S: f64 = HOUR_S;
/// ...and at least this many points: a few points are a burst, not a shift, and a shift stays
/// news while it is new (at 30-minute data half a day: a blizzard's night of collapsed demand
/// is anomalous throughout, not accepted after two points)...
const ACCEPT_MIN_POINTS: f64 = 12.0;
/// ...and at most this many (an hour at 1 s).
const ACCEPT_MAX_POINTS: f64 = 3600.0;
/// A silence longer than this many intervals restarts the short-term view...
const GAP_INTERVALS: f64 = 20.0;
/// ...and never one under ten minutes (a restart of the agent is no gap).
const GAP_MIN_S: f64 = 600.0;
/// After a gap, alerts wait this many short memories at most (the restarted baseline settles).
const REWARM_SHORTS: u32 = 2;

// Learning.
/// Residuals moving the short-term level are clipped to this many σ (Huber): a spike cannot drag
/// the baseline.
const HUBER_CLIP_SIGMA: f64 = 2.5;
/// Until this many points since a (re)start, the level is a plain running mean: too few points
/// for a spread to clip against.
const PLAIN_MEAN_POINTS: u32 = 3;
/// The short-term spread remembers this many short memories (slower than the level, so a
/// shift's first points do not inflate it at once).
const SCALE_MEMORY_SHORTS: f64 = 3.0;
/// The slow spread (floor of the short one) remembers this many short memories.
const SLOW_SCALE_MEMORY_SHORTS: f64 = 20.0;
/// Clip, in usual strays, of a stray teaching the usual stray of the log spread ratio.
const VAR_DEV_CLIP: f64 = 4.0;
/// Clip, in σ (or usual strays if larger), of the long-term level's update.
const LONG_CLIP_SIGMA: f64 = 4.0;
/// Clip, in usual strays, of a stray teaching how far the medium and long levels usually stray.
const MID_DEV_CLIP: f64 = 4.0;
/// While the sustained view alone calls a point anomalous, the long-term level follows this many
/// times faster: a deviation held for about an hour becomes the usual.
const LONG_CATCH_UP: f64 = 8.0;
/// |z| of the point view under which the sustained view is "alone" in calling the point off.
const SUSTAINED_ONLY_POINT_Z: f64 = 3.0;
/// Memory, in points, of how often a value repeats the previous one.
const P_SAME_MEMORY: f64 = 500.0;
/// Before any data, a repeat is taken as likely as not: the flat view stays quiet until learnt.
const P_SAME_PRIOR: f32 = 0.5;
/// A point beyond this many σ from the baseline (unscaled by the tail) counts toward a level
/// shift on its side.
const SHIFT_SIDE_Z: f64 = 1.0;
/// An anomalous point coming within this many points of the previous one, after calm ones,
/// teaches the tail: spikes that keep coming back are this series' nature.
pub(super) const RECURRING_EPISODE_POINTS: u16 = 300;
/// σ a wholly new pattern (every context unseen) adds to the z the score judges.
const NOVELTY_GAIN_SIGMA: f64 = 1.0;
/// What the model learns is judged at this sensitivity, whatever the configured one: the
/// sensitivity moves what is reported, never what is learnt (so the same data teaches the same
/// model at any sensitivity).
const LEARN_SENSITIVITY: f64 = 1.0;

/// How the model is asked to run: derived from the configuration and the data's interval.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub interval_s: f64,
    pub sensitivity: f64,
    pub warmup: u32,
    pub raise_after: u32,
    pub clear_after: u32,
    /// Counters are Poisson-like: their spread is at least about √level.
    pub counter: bool,
    /// Smallest spread as a share of the level: the data's relative precision (latency
    /// percentiles from log-linear histograms are bucket midpoints, within 6.25%).
    pub rel_floor: f64,
    /// Added to unix time before cutting hours, days and weeks (local time).
    pub tz_offset_s: f64,
}

impl Params {
    /// Memory of the short-term baseline, in points: about an hour, between 10 and 60 points.
    fn short_len(&self) -> f64 {
        (SHORT_MEMORY_S / self.interval_s).clamp(SHORT_MIN_POINTS, SHORT_MAX_POINTS)
    }

    fn mid_len(&self) -> f64 {
        MID_PER_SHORT * self.short_len()
    }

    /// Memory of the long-term level: half a day, and at least 8 short memories.
    fn long_len(&self) -> f64 {
        (LONG_MEMORY_S / self.interval_s).max(LONG_MIN_SHORTS * self.short_len())
    }

    /// Memory of how far the medium and long-term levels usually stray apart: a week, so a
    /// weekend does not make Monday look new.
    fn dev_len(&self) -> f64 {
        (DEV_MEMORY_S / self.interval_s).max(DEV_MIN_LONGS * self.long_len())
    }

    /// A level shift held this long (an hour, and at least 6 points) becomes the new normal.
    fn accept_len(&self) -> u32 {
        (ACCEPT_S / self.interval_s).clamp(ACCEPT_MIN_POINTS, ACCEPT_MAX_POINTS) as u32
    }

    /// Hourly profiles need at least one point an hour.
    fn seasonal(&self) -> bool {
        self.interval_s <= HOUR_S
    }

    /// A silence longer than this restarts the short-term view.
    fn gap_s(&self) -> f64 {
        (GAP_INTERVALS * self.interval_s).max(GAP_MIN_S)
    }

    /// Points without alerts after a gap.
    fn rewarm(&self) -> u32 {
        self.warmup
            .min(REWARM_SHORTS * self.short_len() as u32)
            .max(1)
    }
}

/// Which view judged the point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum View {
    #[default]
    Point,
    /// Against the hour's profile on top of the long-term level.
    Seasonal,
    Sustained,
    Variance,
    Flat,
}

/// The verdict on one point.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub(crate) struct Assessment {
    pub value: f64,
    /// Surprise, in [0, 1]: the strength, faded over consecutive anomalous points; 0 while
    /// warming up.
    pub score: f64,
    /// How far off this point is, in [0, 1]: what the state follows.
    pub strength: f64,
    /// Signed z of the winning view (σ units, before sensitivity).
    pub z: f64,
    pub view: View,
    /// What the winning view expected.
    pub usual: f64,
    /// The usual spread (σ) around it.
    pub spread: f64,
    /// For the variance view: the recent spread (σ).
    pub recent_spread: f64,
    /// For the flat view: how many points have repeated the value.
    pub run: u32,
    /// z of each view: point, sustained, variance, flat, seasonal.
    pub zs: [f64; 5],
    pub profile: Option<Profile>,
    pub warming_up: bool,
    /// State after hysteresis.
    pub state: State,
    pub changed: bool,
    /// The state before this point (meaningful when `changed`).
    pub previous: State,
}

/// The whole state of one series: 1024 bytes (see the `size` test). Its fields, in this
/// order, are the persisted format (`persist.rs`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Model {
    /// Points seen since the series started (saturating).
    pub n: u32,
    /// Points since the short-term view (re)started (saturating).
    pub n_short: u16,
    /// Hours folded into the profiles (saturating: 7 years).
    pub hours: u16,
    pub last_t: f64,
    /// Short-term robust location of the deseasonalised value.
    pub level: f64,
    /// Medium-term and long-term levels (sustained view).
    pub mid: f64,
    pub long: f64,
    pub prev: f64,
    /// Sum of the current hour's values.
    pub acc_sum: f64,
    /// Reference levels of the daily and weekly profiles.
    pub day_ref: f64,
    pub week_ref: f64,
    /// The current hour (hours since the epoch, local; i32 lasts 245,000 years).
    pub acc_hour: i32,
    /// Short-term spread σ (from clipped absolute residuals), and a slower copy (its floor).
    pub scale: f32,
    pub scale_slow: f32,
    /// Spread of the last ~16 points, and how far log(fast/scale) usually strays.
    pub fast: f32,
    pub var_dev: f32,
    /// Histogram of |z| (bins growing by √2 from 1.5; counts halved every few thousand points):
    /// the series' own tail, to judge a new z against.
    pub hist: [u16; HIST_BINS],
    /// Points since the last anomalous point (at [`LEARN_SENSITIVITY`]; saturating).
    pub since_episode: u16,
    /// How far mid and long usually stray apart (σ).
    pub mid_dev: f32,
    /// Smallest non-zero step between consecutive values (resolution of the data).
    pub quantum: f32,
    /// Probability that a value repeats the previous one, the current run of repeats, and the
    /// longest run this series usually has (slowly forgotten).
    pub p_same: f32,
    pub run: u16,
    pub run_ref: f32,
    /// Current run of points on one side of the short-term baseline (sign × count), and the
    /// running mean of their deseasonalised values: a level shift held this long is accepted.
    pub shift_run: i32,
    pub shift_mean: f64,
    /// Current hour: sum of clipped |residual| (σ units), points, calm points.
    pub acc_abs: f32,
    pub acc_n: u16,
    pub acc_calm: u16,
    /// Mean absolute out-of-sample error of an hour's mean: flat line, daily, weekly profile.
    pub err_flat: f32,
    pub err_day: f32,
    pub err_week: f32,
    pub hyst: Hysteresis,
    pub surprise: Surprise,
    pub novelty: Novelty,
    /// The unit values are modelled in, as a power of two (see [`Model::step`]).
    pub unit_exp: i16,
    pub hod: [Slot; DAY_SLOTS],
    /// Weekly profile: locations, and spreads in a byte against `how_ref` (see `season.rs`).
    pub how: [Bf16; WEEK_SLOTS],
    pub how_sigma: [u8; WEEK_SLOTS],
    pub how_ref: f32,
    /// The last 1,536-2,048 points' extremes (records and familiar magnitudes).
    pub range: Range,
    /// Whether the tail was faded when the profiles first became trusted (once per series).
    pub tail_faded: bool,
}

/// Magnitudes of a first value the model takes as they are; outside, it works in a unit near it.
const UNIT_FREE: (f64, f64) = (1e-15, 1e15);
/// Largest magnitude, in units, the model takes in (f32 spreads hold up to 3e38).
const UNIT_RANGE: f64 = 1e30;

/// The unit a series starting at `x` is modelled in, as a power of two: 1 (2⁰), or the power of
/// two nearest |x| when it is outside [`UNIT_FREE`].
fn unit_exp_of(x: f64) -> i16 {
    let a = x.abs();
    if a == 0.0 || (UNIT_FREE.0..=UNIT_FREE.1).contains(&a) {
        0
    } else {
        // Finite doubles have exponents within ±1075.
        a.log2().round() as i16
    }
}

/// The hour index of `t` as stored (saturating: timestamps past year 245,000 share one hour).
fn hour32(t: f64, p: &Params) -> i32 {
    hour_index(t, p.tz_offset_s).clamp(i32::MIN.into(), i32::MAX.into()) as i32
}

/// Lazily initialised EWMA (NaN = empty).
fn ewma(acc: &mut f32, x: f64, a: f64) {
    if acc.is_nan() {
        *acc = x as f32;
    } else {
        *acc += (a * (x - f64::from(*acc))) as f32;
    }
}

impl Model {
    pub fn new() -> Self {
        Self {
            n: 0,
            n_short: 0,
            hours: 0,
            last_t: 0.0,
            level: 0.0,
            mid: 0.0,
            long: 0.0,
            prev: 0.0,
            acc_sum: 0.0,
            day_ref: 0.0,
            week_ref: 0.0,
            acc_hour: 0,
            scale: 0.0,
            scale_slow: 0.0,
            fast: 0.0,
            var_dev: f32::NAN,
            hist: [0; HIST_BINS],
            since_episode: u16::MAX,
            mid_dev: 0.0,
            quantum: f32::INFINITY,
            p_same: P_SAME_PRIOR,
            run: 0,
            run_ref: 0.0,
            shift_run: 0,
            shift_mean: 0.0,
            acc_abs: 0.0,
            acc_n: 0,
            acc_calm: 0,
            err_flat: f32::NAN,
            err_day: f32::NAN,
            err_week: f32::NAN,
            hyst: Hysteresis::default(),
            surprise: Surprise::default(),
            novelty: Novelty::default(),
            range: Range::default(),
            tail_faded: false,
            unit_exp: 0,
            hod: [Slot::EMPTY; DAY_SLOTS],
            how: [Bf16::EMPTY; WEEK_SLOTS],
            how_sigma: [0; WEEK_SLOTS],
            how_ref: 0.0,
        }
    }

    pub fn warming_up(&self, p: &Params) -> bool {
        self.n <= p.warmup || u32::from(self.n_short) <= p.rewarm()
    }

    fn start(&mut self, x: f64, t: f64, p: &Params) {
        self.n = 1;
        self.n_short = 1;
        self.last_t = t;
        self.level = x;
        self.mid = x;
        self.long = x;
        self.prev = x;
        self.acc_hour = hour32(t, p);
        self.accumulate(x, 0.0, true);
    }

    fn restart_short(&mut self, x: f64) {
        self.n_short = 1;
        self.level = x;
        self.mid = x;
        self.prev = x;
        self.fast = self.scale;
        self.run = 0;
    }

    /// Feeds one point at unix time `t`; returns its assessment. Non-finite values are ignored.
    ///
    /// The model works in a unit fixed by the series' first value when that is outside
    /// [`UNIT_FREE`] (a power of two near it): its spreads are f32, so a series of 1e130 would
    /// overflow them; values beyond [`UNIT_RANGE`] units saturate (their z is huge anyway).
    pub fn step(&mut self, x: f64, t: f64, p: &Params) -> Assessment {
        if self.n == 0 && x.is_finite() {
            self.unit_exp = unit_exp_of(x);
        }
        let unit = self.unit();
        let mut a = self.step_in_unit((x / unit).clamp(-UNIT_RANGE, UNIT_RANGE), t, p);
        a.value = x;
        a.usual *= unit;
        a.spread *= unit;
        a.recent_spread *= unit;
        a
    }

    /// The short-term usual value, in the series' own unit.
    pub fn usual(&self) -> f64 {
        self.level * self.unit()
    }

    /// The unit values are modelled in.
    pub fn unit(&self) -> f64 {
        2f64.powi(i32::from(self.unit_exp))
    }

    fn step_in_unit(&mut self, x: f64, t: f64, p: &Params) -> Assessment {
        let mut out = Assessment {
            value: x,
            usual: self.level,
            warming_up: true,
            state: self.hyst.state,
            previous: self.hyst.state,
            ..Default::default()
        };
        if !x.is_finite() {
            out.warming_up = self.warming_up(p);
            return out;
        }
        if self.n == 0 {
            self.start(x, t, p);
            out.usual = x;
            return out;
        }
        self.advance(t, x, p);

        // Judge against the state before this point.
        let warming = self.warming_up(p);
        let season = self.season(t, p);
        let tail = tail_factor(&self.hist);
        let point = self.point_view(x, &season, tail, p);
        let learn = burst_learn_share(point.z * LEARN_SENSITIVITY, warming, p);
        let sustained = self.sustained_view(point.y, point.s, learn, p);
        let variance = self.variance_view(point.r, point.s, learn);
        let flat = self.flat_view(x, p);
        let z_season = if warming {
            0.0
        } else {
            self.seasonal_view(x, &season, &point, tail)
        };
        let (view, z) = strongest([
            (View::Point, point.z),
            (View::Seasonal, z_season),
            (View::Sustained, sustained.z),
            (View::Variance, variance.z),
            (View::Flat, flat.z),
        ]);
        // Novelty of the recent pattern (see `novelty.rs`), in levels of the tail-scaled
        // spread around the long-term level: learnt from the first point, counted after the
        // warm-up, and only beyond what is usual for this series (a noisy one keeps meeting
        // new contexts). A wholly new pattern adds one σ to what the score judges, so it lifts
        // a borderline onset or a run of odd points but cannot alert on its own; the state
        // (what live alerts follow) stays with the views' z.
        let u = (point.y - self.long) / (point.s * tail);
        let novel = self.novelty.step(Novelty::level(u), self.n);
        // Against the magnitudes this series has reached lately (see `range.rs`): a record is
        // news however spiky the series, a spike as far as the range's bigger excursions (but
        // no further) is familiar, at most a warning. Like the novelty, the score's alone.
        let reach = self.range.reach(x, self.long, self.n);
        self.range.learn(x, self.n);
        let z_score = if warming {
            z
        } else {
            let z = z.abs() + NOVELTY_GAIN_SIGMA * novel;
            match reach {
                Reach::Beyond(excess) => z.max(record_z(excess)),
                Reach::Within(share)
                    if share >= FAMILIAR_SHARE && matches!(view, View::Point | View::Seasonal) =>
                {
                    z.min(FAMILIAR_MAX_Z)
                }
                _ => z,
            }
        };
        // The state follows the strength; the score is the surprise (see `surprise.rs`): an
        // onset, or a run of odd points that is unlikely for this series, then a rest.
        let (strength, score) = if warming {
            (0.0, 0.0)
        } else {
            let record = matches!(reach, Reach::Beyond(_));
            let surprise = self.surprise.step(z_score, record);
            (
                score_of(z * p.sensitivity),
                score_of(surprise * p.sensitivity),
            )
        };
        let raw = raw_state(strength);
        // What is learnt does not depend on the configured sensitivity.
        let learn_raw = if warming {
            State::Ok
        } else {
            raw_state(score_of(z * LEARN_SENSITIVITY))
        };
        out.strength = strength;
        out.score = score;
        out.z = z;
        out.view = view;
        out.usual = match view {
            View::Sustained => self.long + season.offset,
            View::Seasonal => self.long + point.offset,
            _ => point.pred,
        };
        out.spread = if view == View::Sustained {
            sustained.mid_dev.max(MID_DEV_FLOOR_SIGMA * point.s)
        } else {
            point.s
        };
        out.recent_spread = variance.fast;
        out.run = flat.run;
        out.zs = [point.z, sustained.z, variance.z, flat.z, z_season];
        out.profile = season.profile;
        out.warming_up = warming;

        // Learn, robustly: every update is clipped, so a spike moves nothing far.
        let abs_sigma = self.learn_baseline(&point, learn, p);
        self.learn_variance(&variance, p);
        self.learn_levels(&sustained, &point, p);
        self.learn_repeats(x, flat.same, flat.run, learn_raw, p);
        self.accept_shift(point.y, point.z_raw, warming, p);
        // Unclipped: an hour that is shaped unlike the baseline is what a profile must learn;
        // odd hours are kept out by the calm share and by the clipped slot update.
        self.accumulate(x, abs_sigma, learn_raw == State::Ok);

        let previous = self.hyst.state;
        out.changed = self.judge(raw, learn_raw, t, point.z_raw, warming, p);
        out.state = self.hyst.state;
        out.previous = previous;
        out
    }

    /// Counts the point, restarts the short-term view after a gap, folds a finished hour.
    fn advance(&mut self, t: f64, x: f64, p: &Params) {
        if t - self.last_t > p.gap_s() {
            self.restart_short(x);
        } else {
            self.n_short = self.n_short.saturating_add(1);
        }
        self.last_t = self.last_t.max(t);
        self.n = self.n.saturating_add(1);
        let hour = hour32(t, p);
        if hour != self.acc_hour {
            if p.seasonal() {
                self.fold_hour();
            }
            self.acc_hour = hour;
        }
    }

    /// Learning rate of the slow spread (also of the variance view's usual stray).
    fn slow_rate(&self, p: &Params) -> f64 {
        (1.0 / (SLOW_SCALE_MEMORY_SHORTS * p.short_len())).max(1.0 / f64::from(self.n_short))
    }

    /// The short-term level (Huber-clipped) and the spreads; returns the point's clipped
    /// absolute residual in σ (what the hour's spread is made of).
    fn learn_baseline(&mut self, pt: &PointView, learn: f64, p: &Params) -> f64 {
        let sl = p.short_len();
        let ns = f64::from(self.n_short);
        let a_level = learn * (1.0 / sl).max(1.0 / ns);
        let a_scale = learn * (1.0 / (SCALE_MEMORY_SHORTS * sl)).max(1.0 / ns);
        let a_slow = self.slow_rate(p);
        let clip = HUBER_CLIP_SIGMA * pt.s;
        let clip_r = pt.r_smooth.clamp(-clip, clip);
        let abs_sigma = pt.r.abs().min(RESIDUAL_CLIP_SIGMA * pt.s) * SIGMA_PER_MAD;
        if u32::from(self.n_short) <= PLAIN_MEAN_POINTS {
            // Too few points for a spread: plain running means.
            self.level += (pt.y - self.level) / ns;
        } else {
            self.level += a_level * clip_r;
        }
        self.scale += (a_scale * (abs_sigma - f64::from(self.scale))) as f32;
        self.scale_slow += (a_slow * (abs_sigma - f64::from(self.scale_slow))) as f32;
        abs_sigma
    }

    /// The recent spread, and how far its log ratio to the usual spread usually strays.
    fn learn_variance(&mut self, var: &VarianceView, p: &Params) {
        self.fast = var.fast as f32;
        let ns = f64::from(self.n_short);
        if ns >= FAST_MEMORY {
            let cap = if var.var_dev.is_finite() {
                VAR_DEV_CLIP * var.var_dev.max(VAR_DEV_FLOOR)
            } else {
                f64::INFINITY
            };
            // A plain mean over the points since the recent spread filled, then slow.
            let a = self.slow_rate(p).max(1.0 / (ns - (FAST_MEMORY - 1.0)));
            ewma(&mut self.var_dev, var.v.abs().min(cap) * SIGMA_PER_MAD, a);
        }
    }

    /// The medium and long-term levels and how far they usually stray apart.
    fn learn_levels(&mut self, sus: &SustainedView, pt: &PointView, p: &Params) {
        let n = f64::from(self.n);
        // While the sustained view alone calls the point anomalous, the long-term level
        // follows faster: a deviation held for about an hour becomes the usual.
        let sustained_only =
            sus.z.abs() * LEARN_SENSITIVITY >= Z_MID && pt.z.abs() < SUSTAINED_ONLY_POINT_Z;
        let boost = if sustained_only { LONG_CATCH_UP } else { 1.0 };
        let a_long = (boost / p.long_len()).max(1.0 / n).min(1.0);
        self.mid = sus.mid;
        let lim = LONG_CLIP_SIGMA * pt.s.max(sus.mid_dev);
        self.long += a_long * (pt.y - self.long).clamp(-lim, lim);
        let a_md = (1.0 / p.dev_len()).max(1.0 / n);
        let cap = if n > SUSTAINED_MIN_MIDS * p.mid_len() {
            MID_DEV_CLIP * sus.mid_dev.max(MID_DEV_FLOOR_SIGMA * pt.s)
        } else {
            f64::INFINITY
        };
        self.mid_dev += (a_md * ((sus.d.abs() * SIGMA_PER_MAD).min(cap) - sus.mid_dev)) as f32;
    }

    /// How often values repeat and how long runs usually are (flat view), and the data's
    /// resolution.
    fn learn_repeats(&mut self, x: f64, same: bool, run: u32, raw: State, p: &Params) {
        let a_same = (1.0 / P_SAME_MEMORY).max(1.0 / f64::from(self.n));
        self.p_same += (a_same * (f64::from(u8::from(same)) - f64::from(self.p_same))) as f32;
        if !same && self.run > 0 {
            self.run_ref = self.run_ref.max(self.run as f32);
        }
        self.run_ref *= (1.0 - 1.0 / p.dev_len()) as f32;
        self.run = u16::try_from(run).unwrap_or(u16::MAX);
        // The resolution is learnt from unremarkable steps only: the first move of a series that
        // was constant must not become its "smallest step".
        if !same && raw == State::Ok {
            self.quantum = self.quantum.min((x - self.prev).abs() as f32);
        }
        self.prev = x;
    }

    /// A level shift held for an hour is the new normal: re-anchor every level at once rather
    /// than alerting until the slow ones catch up.
    fn accept_shift(&mut self, y: f64, z_raw: f64, warming: bool, p: &Params) {
        let side = if z_raw > SHIFT_SIDE_Z {
            1
        } else if z_raw < -SHIFT_SIDE_Z {
            -1
        } else {
            0
        };
        if side != 0 && side == self.shift_run.signum() {
            self.shift_run += side;
            self.shift_mean += (y - self.shift_mean) / f64::from(self.shift_run.unsigned_abs());
        } else {
            self.shift_run = side;
            self.shift_mean = y;
        }
        if !warming && self.shift_run.unsigned_abs() >= p.accept_len() {
            // The profiles' references follow on their own: a rhythm's daily steps look
            // like shifts too, and must not drag them.
            self.level = self.shift_mean;
            self.mid = self.shift_mean;
            self.long = self.shift_mean;
            self.scale = self.scale.min(self.scale_slow.max(f32::MIN_POSITIVE));
            self.fast = self.scale;
            self.shift_run = 0;
        }
    }

    /// Hysteresis on the raw state, then tail learning (from `learn_raw`, the state at
    /// [`LEARN_SENSITIVITY`]); returns whether the state changed.
    fn judge(
        &mut self,
        raw: State,
        learn_raw: State,
        t: f64,
        z_raw: f64,
        warming: bool,
        p: &Params,
    ) -> bool {
        let changed = if warming {
            false
        } else {
            self.hyst.update(raw, t, p.raise_after, p.clear_after)
        };
        // The tail learns from calm points, and from the first anomalous point after calm ones
        // that follows the previous anomalous point closely: spikes that keep coming back are
        // this series' nature; rare ones stay anomalies.
        let anomalous = learn_raw != State::Ok;
        let recurring = anomalous && (2..RECURRING_EPISODE_POINTS).contains(&self.since_episode);
        self.since_episode = if anomalous {
            0
        } else {
            self.since_episode.saturating_add(1)
        };
        if !warming && (!anomalous || recurring) {
            hist_add(&mut self.hist, z_raw.abs());
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRIT_SCORE_TEST: f64 = 0.75;

    pub(super) fn params() -> Params {
        Params {
            interval_s: 60.0,
            sensitivity: 1.0,
            warmup: 50,
            raise_after: 1,
            clear_after: 1,
            counter: false,
            rel_floor: 1e-3,
            tz_offset_s: 0.0,
        }
    }

    #[test]
    fn size() {
        let size = size_of::<Model>();
        assert!(size <= 1024, "per-key model state is {size} bytes");
    }

    #[test]
    fn spike_does_not_poison_the_baseline() {
        let p = params();
        let mut m = Model::new();
        let mut t = 0.0;
        for i in 0..300 {
            t += 60.0;
            m.step(100.0 + f64::from(i % 7) - 3.0, t, &p);
        }
        let before = (m.level, m.scale);
        t += 60.0;
        let a = m.step(10_000.0, t, &p);
        assert_eq!(a.state, State::Critical);
        assert!(
            (m.level - before.0).abs() < 1.0,
            "{} vs {}",
            m.level,
            before.0
        );
        assert!(f64::from(m.scale) < 1.2 * f64::from(before.1));
    }

    #[test]
    fn constant_series_that_jumps_is_caught() {
        // A first move must not teach the resolution ("smallest step") before it is judged.
        let p = Params {
            raise_after: 2,
            ..params()
        };
        let mut m = Model::new();
        for i in 0..100 {
            m.step(1114.0, f64::from(i) * 60.0, &p);
        }
        let a = m.step(15_204.0, 100.0 * 60.0, &p);
        assert!(a.score > 0.99);
        let a = m.step(15_204.0, 101.0 * 60.0, &p);
        assert_eq!(a.state, State::Critical);
    }

    /// A deterministic uniform noise in [-1, 1] (an LCG): tests stay reproducible.
    fn noise(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    #[test]
    fn a_changed_day_of_a_learnt_rhythm_is_caught() {
        // 5-minute data, a daily square wave (20, and 75 from 09:00 to 18:00) with noise; on
        // day 11 the high phase doubles. Before the rhythm is learnt its daily steps look like
        // spikes; once the profile is trusted those early z's must not keep the series' tail
        // wide, or the changed day scores nothing (NAB's art_daily_jumpsup scored 0.24).
        let p = five_minute();
        let mut m = Model::new();
        let mut seed = 7;
        let (mut normal_day, mut changed_day) = (0.0_f64, 0.0_f64);
        for i in 0..(11 * 288) {
            let t = f64::from(i) * 300.0;
            let day = i / 288;
            let hour = (i % 288) / 12;
            let high = (9..18).contains(&hour);
            // As in NAB's series: the high phase is also much noisier.
            let (level, spread) = match (high, day) {
                (false, _) => (20.0, 1.5),
                (true, 10) => (150.0, 12.0),
                (true, _) => (75.0, 12.0),
            };
            let a = m.step(level + spread * noise(&mut seed), t, &p);
            match day {
                9 => normal_day = normal_day.max(a.score),
                10 => changed_day = changed_day.max(a.score),
                _ => {}
            }
        }
        assert!(
            changed_day >= CRIT_SCORE_TEST,
            "changed day scored {changed_day}"
        );
        assert!(normal_day < WARN_SCORE, "a normal day scored {normal_day}");
    }

    /// 5-minute points around 100 (±2) with a burst to 400 every `every` points, for `points`
    /// points: the model, and the assessments of the bursts.
    fn bursty(every: u32, points: u32, seed: u64) -> (Model, Vec<Assessment>) {
        let p = five_minute();
        let mut m = Model::new();
        let mut seed = seed;
        let mut bursts = Vec::new();
        for i in 0..points {
            let burst = i % every == every - 1;
            let x = if burst {
                400.0
            } else {
                100.0 + 2.0 * noise(&mut seed)
            };
            let a = m.step(x, f64::from(i) * 300.0, &p);
            if burst {
                bursts.push(a);
            }
        }
        (m, bursts)
    }

    fn five_minute() -> Params {
        Params {
            interval_s: 300.0,
            warmup: 150,
            ..params()
        }
    }

    #[test]
    fn a_familiar_burst_is_a_warning_a_record_is_news() {
        // Bursts every 600 points: too rare for the tail or the habit to learn.
        let (mut m, bursts) = bursty(600, 3100, 5);
        // The first is beyond anything seen: news.
        assert!(bursts[0].score >= CRIT_SCORE_TEST, "{}", bursts[0].score);
        // The next ones reach as far as the range remembers, no further: a warning's worth in
        // the score (the likelihood of the last points may add a little), while the state
        // still alerts on each (the score ranks, it does not mute).
        for a in &bursts[1..] {
            assert_eq!(raw_state(a.score), State::Warning, "{}", a.score);
            assert_eq!(a.state, State::Critical);
        }
        let a = m.step(700.0, 3100.0 * 300.0, &five_minute());
        assert!(a.score >= 0.9, "a record scored {}", a.score);
    }

    #[test]
    fn a_record_is_news_in_a_spiky_series() {
        // Bursts every 50 points are this series' nature (its tail and its habit learn them);
        // one to 700 goes beyond anything in the remembered range.
        let (mut m, bursts) = bursty(50, 3000, 9);
        let late = bursts[40..].iter().map(|a| a.score).fold(0.0, f64::max);
        assert!(late < WARN_SCORE, "the usual bursts scored {late}");
        let a = m.step(700.0, 3000.0 * 300.0, &five_minute());
        assert!(a.score >= CRIT_SCORE_TEST, "a record scored {}", a.score);
    }

    #[test]
    fn a_sustained_level_shift_stays_anomalous_then_is_learnt() {
        let p = Params {
            interval_s: 300.0,
            warmup: 150,
            raise_after: 1,
            clear_after: 2,
            ..params()
        };
        let mut m = Model::new();
        let mut seed = 11;
        let mut t = 0.0;
        for _ in 0..600 {
            t += 300.0;
            m.step(100.0 + 2.0 * noise(&mut seed), t, &p);
        }
        let (mut held, mut first_score, mut late_score) = (0, 0.0, 0.0_f64);
        let mut late_ok = true;
        for i in 0..300 {
            t += 300.0;
            let a = m.step(130.0 + 2.0 * noise(&mut seed), t, &p);
            if i == 0 {
                first_score = a.score;
            }
            if a.state != State::Ok && held == i {
                held += 1;
            }
            if i >= 200 {
                late_ok &= a.state == State::Ok;
                late_score = late_score.max(a.score);
            }
        }
        // News at once, anomalous for the acceptance period (an hour: 12 points)...
        assert!(first_score >= WARN_SCORE, "{first_score}");
        assert!(held >= p.accept_len(), "anomalous for {held} points");
        // ...then the new level is the usual.
        assert!(late_ok && late_score < WARN_SCORE, "{late_score}");
        assert!((m.usual() - 130.0).abs() < 3.0, "{}", m.usual());
    }

    #[test]
    fn warming_up_gives_no_alert() {
        let p = params();
        let mut m = Model::new();
        for i in 0..50 {
            let x = if i == 30 { 1e9 } else { 1.0 + f64::from(i % 3) };
            let a = m.step(x, f64::from(i) * 60.0, &p);
            assert!(a.warming_up);
            assert_eq!(a.score, 0.0);
            assert_eq!(a.state, State::Ok);
        }
        let a = m.step(2.0, 50.0 * 60.0, &p);
        assert!(!a.warming_up);
    }
}
