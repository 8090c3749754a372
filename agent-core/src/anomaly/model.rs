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
//! stored as 16-bit floats). A profile is trusted only when it predicts the next hours out of
//! sample clearly better than a flat line (a rhythm exists), its weight ramping in over days
//! (daily) and weeks (weekly, when it beats the daily one: quiet weekends). The profile is
//! interpolated between slot centres (smooth rhythms) and also read as a step (a job starting
//! on the hour); a value is judged by whichever explains it better.
//!
//! Every update is O(1); the hour fold is O(1) too, once an hour.

use super::State;
use super::time::{HOUR_S, hour_index, hour_of_day, hour_of_week};

/// Score at which a point counts as a warning (z ≈ 5 σ at sensitivity 1).
pub(crate) const WARN_SCORE: f64 = 0.5;
/// Score at which a point counts as critical (z ≈ 7.8 σ at sensitivity 1).
pub(crate) const CRIT_SCORE: f64 = 0.75;

/// σ / E|X − μ| for a normal distribution: turns mean absolute deviations into σ.
const SIGMA_PER_MAD: f64 = 1.253_314;
/// 99th percentile of |Z| for a standard normal: the tail we expect before calibration.
const Q99: f64 = 2.575_829;
/// 90th percentile of |Z| for a standard normal.
const Q90: f64 = 1.644_854;
/// z (in σ) that scores [`WARN_SCORE`].
const Z_MID: f64 = 5.0;

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
        (HOUR_S / self.interval_s).clamp(10.0, 60.0)
    }

    fn mid_len(&self) -> f64 {
        2.0 * self.short_len()
    }

    /// Memory of the long-term level: half a day, and at least 8 short memories.
    fn long_len(&self) -> f64 {
        (12.0 * HOUR_S / self.interval_s).max(8.0 * self.short_len())
    }

    /// Memory of how far the medium and long-term levels usually stray apart: a week, so a
    /// weekend does not make Monday look new.
    fn dev_len(&self) -> f64 {
        (7.0 * 24.0 * HOUR_S / self.interval_s).max(4.0 * self.long_len())
    }

    /// A level shift held this long (an hour, and at least 6 points) becomes the new normal.
    fn accept_len(&self) -> u32 {
        (HOUR_S / self.interval_s).clamp(6.0, 3600.0) as u32
    }

    /// Hourly profiles need at least one point an hour.
    fn seasonal(&self) -> bool {
        self.interval_s <= HOUR_S
    }

    /// A silence longer than this restarts the short-term view.
    fn gap_s(&self) -> f64 {
        (20.0 * self.interval_s).max(600.0)
    }

    /// Points without alerts after a gap.
    fn rewarm(&self) -> u32 {
        self.warmup.min(2 * self.short_len() as u32).max(1)
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

/// Which seasonal profile shaped the expectation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Profile {
    /// Hour of the day, 0..24.
    Daily(usize),
    /// Hour of the week, 0..168 (Monday 00:00 first).
    Weekly(usize),
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

/// 16-bit float (bfloat16: the upper half of an f32): 8 significant bits are plenty for a
/// seasonal offset or spread. NaN marks an empty slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bf16(pub u16);

impl Bf16 {
    pub const EMPTY: Bf16 = Bf16(0x7fc0);

    pub fn new(x: f64) -> Self {
        let x = x.clamp(-1e30, 1e30) as f32;
        if x.is_nan() {
            return Self::EMPTY;
        }
        let b = x.to_bits();
        // Round to nearest, ties to even.
        Bf16(((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16)
    }

    pub fn get(self) -> f64 {
        f64::from(f32::from_bits(u32::from(self.0) << 16))
    }

    pub fn is_set(self) -> bool {
        !self.get().is_nan()
    }
}

/// One hour slot of a profile: location relative to the long-term level, and spread (σ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub loc: Bf16,
    pub sigma: Bf16,
}

impl Slot {
    pub const EMPTY: Slot = Slot {
        loc: Bf16::EMPTY,
        sigma: Bf16::EMPTY,
    };
}

/// Hysteresis: a state changes only after it held `raise_after` points; back to ok only after
/// `clear_after` calm points.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub(crate) struct Hysteresis {
    pub state: State,
    /// Consecutive points at warning or above.
    pub hot: u16,
    /// Consecutive critical points.
    pub crit: u16,
    /// Consecutive points below critical.
    pub below: u16,
    /// Consecutive ok points.
    pub calm: u16,
    /// Time of the first point of the current run at warning or above.
    pub pending_since: f64,
    /// Onset of the current episode (first anomalous point), or when it ended.
    pub since: f64,
}

impl Hysteresis {
    /// Feeds one raw state; returns whether the state changed.
    pub fn update(&mut self, raw: State, t: f64, raise_after: u32, clear_after: u32) -> bool {
        let inc = |c: u16| c.saturating_add(1);
        if raw >= State::Warning {
            if self.hot == 0 {
                self.pending_since = t;
            }
            self.hot = inc(self.hot);
            self.calm = 0;
        } else {
            self.hot = 0;
            self.calm = inc(self.calm);
        }
        if raw == State::Critical {
            self.crit = inc(self.crit);
            self.below = 0;
        } else {
            self.crit = 0;
            self.below = inc(self.below);
        }
        let raise = raise_after.max(1);
        let clear = clear_after.max(1);
        let next = match self.state {
            State::Ok if u32::from(self.crit) >= raise => State::Critical,
            State::Ok if u32::from(self.hot) >= raise => State::Warning,
            State::Warning if u32::from(self.crit) >= raise => State::Critical,
            State::Warning | State::Critical if u32::from(self.calm) >= clear => State::Ok,
            State::Critical if u32::from(self.below) >= clear => State::Warning,
            s => s,
        };
        if next == self.state {
            return false;
        }
        if self.state == State::Ok {
            self.since = self.pending_since;
        } else if next == State::Ok {
            self.since = t;
        }
        self.state = next;
        true
    }
}

/// The whole state of one series. About 900 bytes (see the `size` test).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Model {
    /// Points seen since the series started (saturating).
    pub n: u32,
    /// Points since the short-term view (re)started.
    pub n_short: u32,
    /// Hours folded into the profiles.
    pub hours: u32,
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
    /// The current hour (hours since the epoch, local).
    pub acc_hour: i64,
    /// Short-term spread σ (from clipped absolute residuals), and a slower copy (its floor).
    pub scale: f32,
    pub scale_slow: f32,
    /// Spread of the last ~16 points, and how far log(fast/scale) usually strays.
    pub fast: f32,
    pub var_dev: f32,
    /// Histogram of |z| (bins growing by √2 from 1.5; counts halved every few thousand points):
    /// the series' own tail, to judge a new z against.
    pub hist: [u16; HIST_BINS],
    /// Points since the last alert episode began (saturating).
    pub since_episode: u16,
    /// How far mid and long usually stray apart (σ).
    pub mid_dev: f32,
    /// Smallest non-zero step between consecutive values (resolution of the data).
    pub quantum: f32,
    /// Probability that a value repeats the previous one, the current run of repeats, and the
    /// longest run this series usually has (slowly forgotten).
    pub p_same: f32,
    pub run: u32,
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
    pub hod: [Slot; 24],
    pub how: [Slot; 168],
}

fn ramp(x: f64, lo: f64, hi: f64) -> f64 {
    ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
}

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
    let a = (z / Z_MID).powf(2.5);
    (a / (a + 1.0)).clamp(0.0, 1.0)
}

pub(crate) fn raw_state(score: f64) -> State {
    if score >= CRIT_SCORE {
        State::Critical
    } else if score >= WARN_SCORE {
        State::Warning
    } else {
        State::Ok
    }
}

/// Lazily initialised EWMA (NaN = empty).
fn ewma(acc: &mut f32, x: f64, a: f64) {
    if acc.is_nan() {
        *acc = x as f32;
    } else {
        *acc += (a * (x - f64::from(*acc))) as f32;
    }
}

struct Season {
    /// Profile offset interpolated between slot centres (smooth rhythms).
    offset: f64,
    /// Offset of the slot of this very hour (step-like rhythms: a job starting on the hour).
    step: f64,
    sigma: f64,
    /// Weight of the profile's spread in the effective spread.
    weight: f64,
    /// Typical error of the profile's prediction of an hour's mean.
    err: f64,
    profile: Option<Profile>,
}

impl Season {
    const NONE: Season = Season {
        offset: 0.0,
        step: 0.0,
        sigma: 0.0,
        weight: 0.0,
        err: 0.0,
        profile: None,
    };
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
            p_same: 0.5,
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
            hod: [Slot::EMPTY; 24],
            how: [Slot::EMPTY; 168],
        }
    }

    pub fn warming_up(&self, p: &Params) -> bool {
        self.n <= p.warmup || self.n_short <= p.rewarm()
    }

    /// Weights of the daily and weekly profiles: each needs history and a rhythm that predicts
    /// hours out of sample clearly better than a flat line.
    fn rhythm_weights(&self) -> (f64, f64) {
        let flat = f64::from(self.err_flat);
        if flat.is_nan() || flat <= 0.0 {
            return (0.0, 0.0);
        }
        let days = f64::from(self.hours) / 24.0;
        let g_day = 1.0 - f64::from(self.err_day) / flat;
        let wd = if g_day.is_nan() {
            0.0
        } else {
            ramp(days, 2.0, 4.0) * ramp(g_day, 0.2, 0.5)
        };
        let g_week = 1.0 - f64::from(self.err_week) / flat;
        let ww = if g_week.is_nan() {
            0.0
        } else {
            let better = if g_day.is_nan() {
                1.0
            } else {
                ramp(g_week - g_day, 0.02, 0.1)
            };
            ramp(days / 7.0, 1.5, 3.0) * ramp(g_week, 0.2, 0.5) * better
        };
        (wd, ww)
    }

    fn season(&self, t: f64, p: &Params) -> Season {
        if !p.seasonal() || self.hours < 48 {
            return Season::NONE;
        }
        let (wd, ww) = self.rhythm_weights();
        if wd == 0.0 && ww == 0.0 {
            return Season::NONE;
        }
        let here = hour_index(t, p.tz_offset_s);
        // Slot centres sit at the mean offset of an hour's samples (hour-aligned sampling).
        let (h0, frac) = if p.interval_s < HOUR_S {
            let centre = 0.5 - p.interval_s / (2.0 * HOUR_S);
            let u = (t + p.tz_offset_s) / HOUR_S - centre;
            let i = u.floor();
            (i as i64, u - i)
        } else {
            (here, 0.0)
        };
        let get = |slots: &[Slot], h: i64, field: fn(Slot) -> Bf16| -> Option<f64> {
            let v = field(
                slots[if slots.len() == 24 {
                    hour_of_day(h)
                } else {
                    hour_of_week(h)
                }],
            );
            v.is_set().then(|| v.get())
        };
        let lerp = |slots: &[Slot], field: fn(Slot) -> Bf16| -> Option<f64> {
            match (get(slots, h0, field), get(slots, h0 + 1, field)) {
                (Some(a), Some(b)) => Some(a * (1.0 - frac) + b * frac),
                (a, b) => a.or(b),
            }
        };
        let loc = |s: Slot| s.loc;
        let sig = |s: Slot| s.sigma;
        let day = (
            lerp(&self.hod, loc),
            get(&self.hod, here, loc),
            lerp(&self.hod, sig),
        );
        let week = (
            lerp(&self.how, loc),
            get(&self.how, here, loc),
            lerp(&self.how, sig),
        );
        let usable = |v: &(Option<f64>, Option<f64>, Option<f64>)| v.0.is_some() && v.2.is_some();
        let ww = if usable(&week) { ww } else { 0.0 };
        let wd = if usable(&day) { wd } else { 0.0 };
        let blend = |w: Option<f64>, d: Option<f64>| {
            ww * w.unwrap_or(0.0) + (1.0 - ww) * wd * d.unwrap_or(0.0)
        };
        let weight = ww + (1.0 - ww) * wd;
        let profile = if ww >= 0.5 {
            Some(Profile::Weekly(hour_of_week(here)))
        } else if weight >= 0.5 {
            Some(Profile::Daily(hour_of_day(here)))
        } else {
            None
        };
        let err = ww * f64::from(self.err_week) + (1.0 - ww) * f64::from(self.err_day);
        Season {
            offset: blend(week.0, day.0),
            step: blend(week.1.or(week.0), day.1.or(day.0)),
            sigma: blend(week.2, day.2),
            weight,
            err: if err.is_finite() { err } else { 0.0 },
            profile,
        }
    }

    /// Effective spread: the short-term spread blended with the profile's, above floors that
    /// keep a quiet or constant series from turning every wobble into an alarm.
    fn sigma(&self, season: &Season, pred: f64, p: &Params) -> f64 {
        // The profile's spread anticipates quiet and busy hours; half weight at most, as each
        // slot's spread rests on few hours.
        let w = 0.5 * season.weight;
        let base = (1.0 - w) * f64::from(self.scale) + w * season.sigma;
        let mut floor = 0.3 * f64::from(self.scale_slow);
        floor = floor.max(p.rel_floor * pred.abs()).max(1e-12);
        if self.quantum.is_finite() {
            floor = floor.max(0.5 * f64::from(self.quantum));
        }
        if p.counter {
            floor = floor.max(0.5 * pred.abs().max(1.0).sqrt());
        }
        base.max(floor)
    }

    fn start(&mut self, x: f64, t: f64, p: &Params) {
        self.n = 1;
        self.n_short = 1;
        self.last_t = t;
        self.level = x;
        self.mid = x;
        self.long = x;
        self.prev = x;
        self.acc_hour = hour_index(t, p.tz_offset_s);
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

    fn accumulate(&mut self, x: f64, abs_sigma: f64, calm: bool) {
        if self.acc_n == u16::MAX {
            return;
        }
        self.acc_sum += x;
        self.acc_abs += abs_sigma as f32;
        self.acc_n += 1;
        self.acc_calm += u16::from(calm);
    }

    /// Folds the finished hour into the profiles and the rhythm test.
    fn fold_hour(&mut self) {
        if self.acc_n == 0 {
            return;
        }
        let n = f64::from(self.acc_n);
        let mean = self.acc_sum / n;
        let sigma = f64::from(self.acc_abs) / n;
        let calm = f64::from(self.acc_calm) / n;
        let h = self.acc_hour;
        let (d, w) = (hour_of_day(h), hour_of_week(h));
        if self.hours == 0 {
            self.day_ref = mean;
            self.week_ref = mean;
        }
        // Each profile is learnt relative to its own slow reference level (about a day and a
        // week of hours, fed with the hours its profile deseasonalises), so a flat reference
        // and an hour-shaped profile converge together instead of chasing each other.
        let dev_d = mean - self.day_ref;
        let dev_w = mean - self.week_ref;
        let beta = 1.0 / 168.0;
        let clip = |e: f64, r: f32| {
            if r > 0.0 {
                e.min(4.0 * f64::from(r))
            } else {
                e
            }
        };

        // Out of sample: how well would each profile have predicted this hour?
        let sd = self.hod[d].loc.is_set().then(|| self.hod[d].loc.get());
        let sw = self.how[w].loc.is_set().then(|| self.how[w].loc.get());
        if let Some(sd) = sd {
            let ef = clip(dev_d.abs(), self.err_flat);
            let ed = clip((dev_d - sd).abs(), self.err_day);
            ewma(&mut self.err_flat, ef, beta);
            ewma(&mut self.err_day, ed, beta);
            if let Some(sw) = sw {
                let ew = clip((dev_w - sw).abs(), self.err_week);
                ewma(&mut self.err_week, ew, beta);
            }
        }

        // Learn. Once a profile is trusted, an hour that was mostly anomalous against it counts
        // less; before, "anomalies" are mostly the rhythm not learnt yet, so they count fully.
        {
            let (wd, ww) = self.rhythm_weights();
            let trust = ww + (1.0 - ww) * wd;
            let weight = 1.0 - 0.75 * trust * (1.0 - calm);
            let cycles = f64::from(self.hours) / 24.0;
            let a = (1.0 / (cycles + 1.0)).max(0.1) * weight;
            let lim = if cycles >= 3.0 {
                self.err_day
            } else {
                f32::NAN
            };
            let down = self.acc_n >= 6;
            learn(&mut self.hod[d], dev_d, sigma, a, lim, down);
            let cycles = f64::from(self.hours) / 168.0;
            let a = (1.0 / (cycles + 1.0)).max(0.25) * weight;
            let lim = if cycles >= 3.0 {
                self.err_week
            } else {
                f32::NAN
            };
            learn(&mut self.how[w], dev_w, sigma, a, lim, down);
        }
        let hours = f64::from(self.hours) + 1.0;
        let lim = if self.err_flat > 0.0 {
            4.0 * f64::from(self.err_flat)
        } else {
            f64::INFINITY
        };
        let step =
            |r: f64, s: Option<f64>, a: f64| a * (mean - s.unwrap_or(0.0) - r).clamp(-lim, lim);
        self.day_ref += step(self.day_ref, sd, (1.0 / 24.0f64).max(1.0 / hours));
        self.week_ref += step(self.week_ref, sw, (1.0 / 168.0f64).max(1.0 / hours));
        self.hours = self.hours.saturating_add(1);
        self.acc_sum = 0.0;
        self.acc_abs = 0.0;
        self.acc_n = 0;
        self.acc_calm = 0;
    }

    /// Feeds one point at unix time `t`; returns its assessment. Non-finite values are ignored.
    pub fn step(&mut self, x: f64, t: f64, p: &Params) -> Assessment {
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
        if t - self.last_t > p.gap_s() {
            self.restart_short(x);
        } else {
            self.n_short = self.n_short.saturating_add(1);
        }
        self.last_t = self.last_t.max(t);
        self.n = self.n.saturating_add(1);
        let hour = hour_index(t, p.tz_offset_s);
        if hour != self.acc_hour {
            if p.seasonal() {
                self.fold_hour();
            }
            self.acc_hour = hour;
        }

        // Score against the state before this point.
        let season = self.season(t, p);
        // The value is judged by whichever of the smooth and the step-shaped profile explains it
        // better; the levels learn from the smooth one only, to stay consistent.
        let y = x - season.offset;
        let r_smooth = y - self.level;
        let r_step = x - season.step - self.level;
        let (r, offset) = if r_step.abs() < r_smooth.abs() {
            (r_step, season.step)
        } else {
            (r_smooth, season.offset)
        };
        let pred = self.level + offset;
        let s = self.sigma(&season, pred, p);
        let z_raw = r / s;
        let z_point = z_raw / tail_factor(&self.hist);

        let sl = p.short_len();
        let ns = f64::from(self.n_short);
        let n = f64::from(self.n);
        let warming = self.warming_up(p);

        // At high resolution a burst spans many points: a point the point view calls anomalous
        // teaches the short-term baseline less (a fifth at 1 s, fully from 5 min), so a burst
        // leaves the baseline where it was and its end is no second anomaly. A shift that lasts
        // is adopted whole by the acceptance below.
        let learn = if !warming && z_point.abs() * p.sensitivity >= Z_MID {
            (p.interval_s / 300.0).clamp(0.2, 1.0)
        } else {
            1.0
        };
        // Sustained: medium-term level against the long-term one.
        let a_mid = learn * (1.0 / p.mid_len()).max(1.0 / ns);
        let mid = self.mid + a_mid * (y - self.mid).clamp(-4.0 * s, 4.0 * s);
        let d = mid - self.long;
        let mid_dev = f64::from(self.mid_dev);
        let z_level = if n >= 4.0 * p.mid_len() {
            d / mid_dev.max(0.25 * s)
        } else {
            0.0
        };

        // Variance: recent spread against the usual one.
        let a_fast = learn * (1.0_f64 / 16.0).max(1.0 / ns);
        let fast = f64::from(self.fast)
            + a_fast * ((r.abs().min(4.0 * s)) * SIGMA_PER_MAD - f64::from(self.fast));
        // Against the geometric mean of the short and the slow spread: the short one soon
        // follows a variance change.
        let v_ref = (s * f64::from(self.scale_slow).max(0.25 * s)).sqrt();
        let v = if fast > 0.0 { (fast / v_ref).ln() } else { 0.0 };
        let var_dev = f64::from(self.var_dev);
        let z_var = if v > 0.0 && ns >= 16.0 && var_dev.is_finite() {
            v / var_dev.max(0.1)
        } else {
            0.0
        };

        // Flat: a run of repeated values, against how often this series repeats itself.
        let same = (x - self.prev).abs() <= 1e-12 * x.abs().max(self.prev.abs());
        let run = if same { self.run.saturating_add(1) } else { 0 };
        // Only the part of the run beyond the longest runs this series usually has counts.
        let excess = f64::from(run) - f64::from(self.run_ref).max(1.0);
        // Only for a normally noisy series, and for two hours at most: then it is the usual.
        let z_flat = if excess > 0.0 && self.p_same <= 0.3 && run <= 2 * p.accept_len() {
            let p_same = f64::from(self.p_same).clamp(0.02, 0.999);
            (2.0 * excess * -p_same.ln()).sqrt()
        } else {
            0.0
        };

        // Seasonal: where a rhythm is trusted, the value against what this hour of the day or
        // week usually brings on top of the long-term level, in units of the point noise and the
        // profile's own error. Catches the quiet holiday the short-term baseline soon follows.
        let z_season = if !warming && season.weight >= 0.5 {
            let expected = self.long + offset;
            let sd = (f64::from(self.scale_slow).powi(2) + (SIGMA_PER_MAD * season.err).powi(2))
                .sqrt()
                .max(0.5 * s);
            (x - expected) / sd / tail_factor(&self.hist)
        } else {
            0.0
        };

        let candidates = [
            (View::Point, z_point),
            (View::Seasonal, z_season),
            (View::Sustained, z_level),
            (View::Variance, z_var),
            (View::Flat, z_flat),
        ];
        let (view, z) = candidates.into_iter().filter(|(_, z)| z.is_finite()).fold(
            (View::Point, 0.0_f64),
            |best, c| {
                if c.1.abs() > best.1.abs() { c } else { best }
            },
        );
        let score = if warming {
            0.0
        } else {
            score_of(z * p.sensitivity)
        };
        let raw = raw_state(score);
        // The state follows the strength; the score is the surprise: the k-th consecutive
        // anomalous point scores as if its z were divided by k, so an onset stands out and a
        // condition that persists fades (its state stays until calm returns).
        out.strength = score;
        out.score = if warming {
            0.0
        } else {
            score_of(z * p.sensitivity / (1.0 + f64::from(self.hyst.hot)))
        };
        out.z = z;
        out.view = view;
        out.usual = match view {
            View::Sustained => self.long + season.offset,
            View::Seasonal => self.long + offset,
            _ => pred,
        };
        out.spread = if view == View::Sustained {
            mid_dev.max(0.25 * s)
        } else {
            s
        };
        out.recent_spread = fast;
        out.run = run;
        out.zs = [z_point, z_level, z_var, z_flat, z_season];
        out.profile = season.profile;
        out.warming_up = warming;

        // Learn (robustly: every update is clipped, so a spike moves nothing far).
        let a_level = learn * (1.0 / sl).max(1.0 / ns);
        let a_scale = learn * (1.0 / (3.0 * sl)).max(1.0 / ns);
        let a_slow = (1.0 / (20.0 * sl)).max(1.0 / ns);
        // While the sustained view alone calls the point anomalous, the long-term level
        // follows eight times faster: a deviation held for about an hour becomes the usual.
        let sustained_only = z_level.abs() * p.sensitivity >= Z_MID && z_point.abs() < 3.0;
        let boost = if sustained_only { 8.0 } else { 1.0 };
        let a_long = (boost / p.long_len()).max(1.0 / n).min(1.0);
        let clip_r = r_smooth.clamp(-2.5 * s, 2.5 * s);
        let abs_sigma = r.abs().min(4.0 * s) * SIGMA_PER_MAD;
        if self.n_short <= 3 {
            // Too few points for a spread: plain running means.
            self.level += (y - self.level) / ns;
        } else {
            self.level += a_level * clip_r;
        }
        self.scale += (a_scale * (abs_sigma - f64::from(self.scale))) as f32;
        self.scale_slow += (a_slow * (abs_sigma - f64::from(self.scale_slow))) as f32;
        self.fast = fast as f32;
        if ns >= 16.0 {
            let cap = if var_dev.is_finite() {
                4.0 * var_dev.max(0.1)
            } else {
                f64::INFINITY
            };
            ewma(
                &mut self.var_dev,
                v.abs().min(cap) * SIGMA_PER_MAD,
                a_slow.max(1.0 / (ns - 15.0)),
            );
        }
        self.mid = mid;
        let lim = 4.0 * s.max(mid_dev);
        self.long += a_long * (y - self.long).clamp(-lim, lim);
        let a_md = (1.0 / p.dev_len()).max(1.0 / n);
        let cap = if n > 4.0 * p.mid_len() {
            4.0 * mid_dev.max(0.25 * s)
        } else {
            f64::INFINITY
        };
        self.mid_dev += (a_md * ((d.abs() * SIGMA_PER_MAD).min(cap) - mid_dev)) as f32;
        let a_same = (1.0_f64 / 500.0).max(1.0 / n);
        self.p_same += (a_same * (f64::from(u8::from(same)) - f64::from(self.p_same))) as f32;
        if !same && self.run > 0 {
            self.run_ref = self.run_ref.max(self.run as f32);
        }
        self.run_ref *= (1.0 - 1.0 / p.dev_len()) as f32;
        self.run = run;
        // The resolution is learnt from unremarkable steps only: the first move of a series that
        // was constant must not become its "smallest step".
        if !same && raw == State::Ok {
            self.quantum = self.quantum.min((x - self.prev).abs() as f32);
        }
        self.prev = x;
        // A level shift held for an hour is the new normal: re-anchor every level at once
        // rather than alerting until the slow ones catch up.
        let side = if z_raw > 1.0 {
            1
        } else if z_raw < -1.0 {
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
        // Unclipped: an hour that is shaped unlike the baseline is what a profile must learn;
        // odd hours are kept out by the calm share and by the clipped slot update.
        self.accumulate(x, abs_sigma, raw == State::Ok);

        // Hysteresis.
        let previous = self.hyst.state;
        let changed = if warming {
            false
        } else {
            self.hyst.update(raw, t, p.raise_after, p.clear_after)
        };
        // The tail learns from calm points, and from the first point of an alert episode that
        // follows another within 300 points: spikes that keep coming back are this series'
        // nature; rare ones stay anomalies.
        let episode_start = changed && previous == State::Ok;
        let frequent = episode_start && self.since_episode < 300;
        if episode_start {
            self.since_episode = 0;
        } else {
            self.since_episode = self.since_episode.saturating_add(1);
        }
        if !warming && (self.hyst.state == State::Ok || frequent) {
            hist_add(&mut self.hist, z_raw.abs());
        }
        out.state = self.hyst.state;
        out.changed = changed;
        out.previous = previous;
        out
    }
}

/// Bins of the |z| histogram: bin 0 below 1.5, bin k ≥ 1 from 1.5·√2^(k-1) up.
pub(crate) const HIST_BINS: usize = 20;
/// Counts are halved when they reach this total: the tail reflects the last ~2000-4000 points,
/// so the poor fits of a young model fade.
const HIST_MAX: u32 = 4096;

fn hist_edge(k: usize) -> f64 {
    1.5 * std::f64::consts::SQRT_2.powi(k as i32 - 1)
}

fn hist_add(hist: &mut [u16; HIST_BINS], z: f64) {
    let k = if z < 1.5 || z.is_nan() {
        0
    } else {
        ((2.0 * (z / 1.5).log2()).floor() as usize + 1).min(HIST_BINS - 1)
    };
    let total: u32 = hist.iter().map(|&c| u32::from(c)).sum();
    if total >= HIST_MAX || hist[k] == u16::MAX {
        for c in hist.iter_mut() {
            *c /= 2;
        }
    }
    hist[k] += 1;
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
/// the normal one (a power-law extrapolation further out, where alerts
/// live). 1 for normal or
/// lighter tails, and until 100 points are in.
pub(crate) fn tail_factor(hist: &[u16; HIST_BINS]) -> f64 {
    let total: f64 = hist.iter().map(|&c| f64::from(c)).sum();
    if total < 100.0 {
        return 1.0;
    }
    let q90 = hist_quantile(hist, total, 0.10);
    let q99 = hist_quantile(hist, total, 0.01);
    let shape = (q99 / q90.max(0.8) / (Q99 / Q90)).clamp(1.0, 2.5);
    ((q99 / Q99) * shape).clamp(1.0, 1000.0)
}

/// Moves a slot toward one hour's deviation and spread; after a few cycles the move is clipped
/// to four typical profile errors, so one odd hour cannot reshape the profile. The spread grows
/// at most twofold per hour; with enough points in the hour (`fast_down`) it falls faster than
/// it grows, so the poor fits of the first weeks (before the profile was trusted) fade quickly.
fn learn(slot: &mut Slot, dev: f64, sigma: f64, a: f64, lim: f32, fast_down: bool) {
    if !slot.loc.is_set() || !slot.sigma.is_set() {
        *slot = Slot {
            loc: Bf16::new(dev),
            sigma: Bf16::new(sigma),
        };
        return;
    }
    let loc = slot.loc.get();
    let mut innov = dev - loc;
    if lim > 0.0 {
        let lim = 4.0 * f64::from(lim);
        innov = innov.clamp(-lim, lim);
    }
    let sg = slot.sigma.get();
    slot.loc = Bf16::new(loc + a * innov);
    let a_sigma = if fast_down && sigma < sg {
        a.max(0.5)
    } else {
        a
    };
    slot.sigma = Bf16::new(sg + a_sigma * (sigma.min(2.0 * sg.max(1e-300)) - sg));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
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
        let size = std::mem::size_of::<Model>();
        assert!(size <= 1024, "per-key model state is {size} bytes");
    }

    #[test]
    fn bf16_round_trip() {
        for x in [0.0, 1.0, -3.5, 1234.5678, 1e-20, 6.02e23] {
            let y = Bf16::new(x).get();
            assert!((y - x).abs() <= x.abs() / 256.0, "{x} -> {y}");
        }
        assert!(!Bf16::EMPTY.is_set());
        assert!(!Bf16::new(f64::NAN).is_set());
    }

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

    #[test]
    fn hysteresis_holds_and_clears() {
        let mut h = Hysteresis::default();
        let w = State::Warning;
        assert!(!h.update(w, 1.0, 3, 2));
        assert!(!h.update(w, 2.0, 3, 2));
        assert!(h.update(w, 3.0, 3, 2));
        assert_eq!(h.state, State::Warning);
        assert_eq!(h.since, 1.0);
        assert!(!h.update(State::Ok, 4.0, 3, 2));
        assert!(h.update(State::Ok, 5.0, 3, 2));
        assert_eq!(h.state, State::Ok);
        // Alternating never settles into a change.
        for i in 0..100 {
            let raw = if i % 2 == 0 {
                State::Critical
            } else {
                State::Ok
            };
            assert!(!h.update(raw, 6.0 + f64::from(i), 3, 2));
        }
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
