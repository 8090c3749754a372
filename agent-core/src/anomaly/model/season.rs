//! Seasonality: hour-of-day and hour-of-week profiles, folded once an hour, trusted only once
//! they predict hours out of sample clearly better than a flat line.

use super::super::time::{HOUR_S, hour_index, hour_of_day, hour_of_week};
use super::tail::fade_hist;
use super::{Model, Params, ewma};

/// Slots of the daily profile: one per hour of the day.
pub(crate) const DAY_SLOTS: usize = 24;
/// Slots of the weekly profile: one per hour of the week (Monday 00:00 first).
pub(crate) const WEEK_SLOTS: usize = 168;
/// Hours folded before any profile is used: two days, the least that shows a daily rhythm.
const SEASON_MIN_HOURS: u16 = 48;
/// Weight (of a profile, or of both blended) from which it is named in descriptions and the
/// seasonal view judges against it: more than half trusted.
const PROFILE_TRUSTED_WEIGHT: f64 = 0.5;

/// The daily profile's weight ramps in between these many days of history.
const DAILY_RAMP_DAYS: (f64, f64) = (2.0, 4.0);
/// The weekly profile's weight ramps in between these many weeks of history.
const WEEKLY_RAMP_WEEKS: (f64, f64) = (1.5, 3.0);
/// Gain of a profile over a flat line (1 − its error / the flat line's) over which its weight
/// ramps in: below 20% there is no rhythm worth following, from 50% it is clear.
const RHYTHM_GAIN_RAMP: (f64, f64) = (0.2, 0.5);
/// Extra gain of the weekly profile over the daily one over which it takes over: it must
/// explain something the daily one cannot (quiet weekends).
const WEEKLY_EXTRA_GAIN_RAMP: (f64, f64) = (0.02, 0.1);

/// Memory, in hours, of the profiles' out-of-sample errors: a week, so every weekday counts.
const RHYTHM_ERR_MEMORY_H: f64 = 168.0;
/// Memory, in hours, of the daily profile's reference level: a day.
const DAY_REF_MEMORY_H: f64 = 24.0;
/// Memory, in hours, of the weekly profile's reference level: a week.
const WEEK_REF_MEMORY_H: f64 = 168.0;
/// Clip, in typical errors, of an hour's error and of a reference's step: one odd hour cannot
/// reshape the rhythm test or the references.
const HOUR_CLIP_ERRS: f64 = 4.0;
/// Clip, in typical profile errors, of a slot's move once the profile has a few cycles.
const SLOT_CLIP_ERRS: f64 = 4.0;
/// Cycles (days, or weeks) of a profile after which its slot moves are clipped.
const SLOT_CLIP_AFTER_CYCLES: f64 = 3.0;
/// Slowest learning rate of a daily slot: it keeps following a rhythm that changes over ~10 days.
const DAY_SLOT_MIN_RATE: f64 = 0.1;
/// Slowest learning rate of a weekly slot: higher than the daily one, as it sees 7× fewer hours.
const WEEK_SLOT_MIN_RATE: f64 = 0.25;
/// Share of an hour's weight lost when it was all anomalous against a fully trusted profile.
const ANOMALOUS_HOUR_DISCOUNT: f64 = 0.75;
/// Points an hour needs before a smaller spread may replace a slot's spread quickly.
const FAST_DOWN_MIN_POINTS: u16 = 6;
/// Fastest rate at which a slot's spread falls (with enough points in the hour).
const SLOT_SIGMA_FAST_DOWN_RATE: f64 = 0.5;
/// Most a slot's spread may grow per hour (factor).
const SLOT_SIGMA_MAX_GROWTH: f64 = 2.0;
/// Largest magnitude stored in a bfloat16 slot (keeps infinities out).
const BF16_MAX: f64 = 1e30;
/// A weekly slot's spread is stored in a byte against the series' reference spread: code `c`
/// is the reference × 2^((c − 128) / 16) (steps of 4.4%, about 1/256 to 256 times); 0 is
/// unset, 1 a zero spread.
const RATIO_ONE: f64 = 128.0;
const RATIO_MIN_CODE: u8 = 2;
const RATIO_STEPS: f64 = 16.0;

/// Which seasonal profile shaped the expectation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Profile {
    /// Hour of the day, 0..24.
    Daily(usize),
    /// Hour of the week, 0..168 (Monday 00:00 first).
    Weekly(usize),
}

/// 16-bit float (bfloat16: the upper half of an f32): 8 significant bits are plenty for a
/// seasonal offset or spread. NaN marks an empty slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bf16(pub u16);

impl Bf16 {
    pub const EMPTY: Bf16 = Bf16(0x7fc0);

    pub fn new(x: f64) -> Self {
        let x = x.clamp(-BF16_MAX, BF16_MAX) as f32;
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

/// What the profiles expect at one instant.
pub(crate) struct Season {
    /// Profile offset interpolated between slot centres (smooth rhythms).
    pub offset: f64,
    /// Offset of the slot of this very hour (step-like rhythms: a job starting on the hour).
    pub step: f64,
    pub sigma: f64,
    /// Weight of the profile's spread in the effective spread.
    pub weight: f64,
    /// Typical error of the profile's prediction of an hour's mean.
    pub err: f64,
    pub profile: Option<Profile>,
}

impl Season {
    pub const NONE: Season = Season {
        offset: 0.0,
        step: 0.0,
        sigma: 0.0,
        weight: 0.0,
        err: 0.0,
        profile: None,
    };

    /// The profiles are trusted enough for the seasonal view (NaN weights are not).
    pub fn trusted(&self) -> bool {
        self.weight >= PROFILE_TRUSTED_WEIGHT
    }
}

fn ramp(x: f64, (lo, hi): (f64, f64)) -> f64 {
    ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
}

impl Model {
    /// Weights of the daily and weekly profiles: each needs history and a rhythm that predicts
    /// hours out of sample clearly better than a flat line.
    fn rhythm_weights(&self) -> (f64, f64) {
        let flat = f64::from(self.err_flat);
        if flat.is_nan() || flat <= 0.0 {
            return (0.0, 0.0);
        }
        let days = f64::from(self.hours) / DAY_SLOTS as f64;
        let g_day = 1.0 - f64::from(self.err_day) / flat;
        let wd = if g_day.is_nan() {
            0.0
        } else {
            ramp(days, DAILY_RAMP_DAYS) * ramp(g_day, RHYTHM_GAIN_RAMP)
        };
        let g_week = 1.0 - f64::from(self.err_week) / flat;
        let ww = if g_week.is_nan() {
            0.0
        } else {
            let better = if g_day.is_nan() {
                1.0
            } else {
                ramp(g_week - g_day, WEEKLY_EXTRA_GAIN_RAMP)
            };
            let weeks = days / (WEEK_SLOTS / DAY_SLOTS) as f64;
            ramp(weeks, WEEKLY_RAMP_WEEKS) * ramp(g_week, RHYTHM_GAIN_RAMP) * better
        };
        (wd, ww)
    }

    /// Weight of the profiles together (what [`Season::weight`] is when both are usable).
    fn trust(&self) -> f64 {
        if self.hours < SEASON_MIN_HOURS {
            return 0.0;
        }
        let (wd, ww) = self.rhythm_weights();
        ww + (1.0 - ww) * wd
    }

    /// What the trusted profiles expect at `t` ([`Season::NONE`] when none is trusted).
    pub(super) fn season(&self, t: f64, p: &Params) -> Season {
        if !p.seasonal() || self.hours < SEASON_MIN_HOURS {
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
        let at = |h: i64| (hour_of_day(h), hour_of_week(h));
        let get = |h: i64, field: fn(&Model, (usize, usize)) -> Bf16| -> Option<f64> {
            let v = field(self, at(h));
            v.is_set().then(|| v.get())
        };
        let lerp = |field: fn(&Model, (usize, usize)) -> Bf16| -> Option<f64> {
            match (get(h0, field), get(h0 + 1, field)) {
                (Some(a), Some(b)) => Some(a * (1.0 - frac) + b * frac),
                (a, b) => a.or(b),
            }
        };
        let day_loc = |m: &Model, (d, _): (usize, usize)| m.hod[d].loc;
        let sig = |m: &Model, (d, _): (usize, usize)| m.hod[d].sigma;
        let week_loc = |m: &Model, (_, w): (usize, usize)| m.how[w];
        let week_sig = |m: &Model, (_, w): (usize, usize)| m.week_sigma(w);
        let day = (lerp(day_loc), get(here, day_loc), lerp(sig));
        let week = (lerp(week_loc), get(here, week_loc), lerp(week_sig));
        let usable = |v: &(Option<f64>, Option<f64>, Option<f64>)| v.0.is_some() && v.2.is_some();
        let ww = if usable(&week) { ww } else { 0.0 };
        let wd = if usable(&day) { wd } else { 0.0 };
        let blend = |w: Option<f64>, d: Option<f64>| {
            ww * w.unwrap_or(0.0) + (1.0 - ww) * wd * d.unwrap_or(0.0)
        };
        let weight = ww + (1.0 - ww) * wd;
        let profile = if ww >= PROFILE_TRUSTED_WEIGHT {
            Some(Profile::Weekly(hour_of_week(here)))
        } else if weight >= PROFILE_TRUSTED_WEIGHT {
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

    /// Adds a point to the current hour.
    pub(super) fn accumulate(&mut self, x: f64, abs_sigma: f64, calm: bool) {
        if self.acc_n == u16::MAX {
            return;
        }
        self.acc_sum += x;
        self.acc_abs += abs_sigma as f32;
        self.acc_n += 1;
        self.acc_calm += u16::from(calm);
    }

    /// Spread of an hour-of-week slot: a byte, relative to the series' reference spread.
    fn week_sigma(&self, w: usize) -> Bf16 {
        let c = self.how_sigma[w];
        if c == 0 {
            return Bf16::EMPTY;
        }
        let r = f64::from(self.how_ref);
        Bf16::new(if r > 0.0 && c >= RATIO_MIN_CODE {
            r * ((f64::from(c) - RATIO_ONE) / RATIO_STEPS).exp2()
        } else {
            0.0
        })
    }

    /// Stores an hour-of-week slot's spread; the first non-zero one fixes the reference, which
    /// moves (and every code with it) when a spread falls outside what the codes reach.
    fn set_week_sigma(&mut self, w: usize, sigma: f64) {
        if sigma.is_nan() || sigma <= 0.0 {
            self.how_sigma[w] = 1;
            return;
        }
        let lo = f64::from(RATIO_MIN_CODE);
        if self.how_ref.is_nan() || self.how_ref <= 0.0 {
            self.how_ref = sigma as f32;
        }
        let code = |s: f64, r: f32| RATIO_ONE + RATIO_STEPS * (s / f64::from(r)).log2();
        let c = code(sigma, self.how_ref).round();
        let shift = if c > 255.0 {
            c - 255.0
        } else if c < lo {
            c - lo
        } else {
            0.0
        };
        if shift != 0.0 {
            // Rebase: the others keep their spread, saturating at the far end.
            self.how_ref = (f64::from(self.how_ref) * (shift / RATIO_STEPS).exp2()) as f32;
            for k in self.how_sigma.iter_mut().filter(|k| **k >= RATIO_MIN_CODE) {
                *k = (f64::from(*k) - shift).round().clamp(lo, 255.0) as u8;
            }
        }
        self.how_sigma[w] = code(sigma, self.how_ref).round().clamp(lo, 255.0) as u8;
    }

    /// Folds the finished hour into the profiles and the rhythm test.
    pub(super) fn fold_hour(&mut self) {
        if self.acc_n == 0 {
            return;
        }
        let trusted_before = self.trust() >= PROFILE_TRUSTED_WEIGHT;
        let n = f64::from(self.acc_n);
        let mean = self.acc_sum / n;
        let sigma = f64::from(self.acc_abs) / n;
        let calm = f64::from(self.acc_calm) / n;
        let h = i64::from(self.acc_hour);
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
        let beta = 1.0 / RHYTHM_ERR_MEMORY_H;
        let clip = |e: f64, r: f32| {
            if r > 0.0 {
                e.min(HOUR_CLIP_ERRS * f64::from(r))
            } else {
                e
            }
        };

        // Out of sample: how well would each profile have predicted this hour?
        let sd = self.hod[d].loc.is_set().then(|| self.hod[d].loc.get());
        let sw = self.how[w].is_set().then(|| self.how[w].get());
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
            let weight = 1.0 - ANOMALOUS_HOUR_DISCOUNT * trust * (1.0 - calm);
            let cycles = f64::from(self.hours) / DAY_SLOTS as f64;
            let a = (1.0 / (cycles + 1.0)).max(DAY_SLOT_MIN_RATE) * weight;
            let lim = if cycles >= SLOT_CLIP_AFTER_CYCLES {
                self.err_day
            } else {
                f32::NAN
            };
            let down = self.acc_n >= FAST_DOWN_MIN_POINTS;
            learn_slot(&mut self.hod[d], dev_d, sigma, a, lim, down);
            let cycles = f64::from(self.hours) / WEEK_SLOTS as f64;
            let a = (1.0 / (cycles + 1.0)).max(WEEK_SLOT_MIN_RATE) * weight;
            let lim = if cycles >= SLOT_CLIP_AFTER_CYCLES {
                self.err_week
            } else {
                f32::NAN
            };
            let mut slot = Slot {
                loc: self.how[w],
                sigma: self.week_sigma(w),
            };
            learn_slot(&mut slot, dev_w, sigma, a, lim, down);
            self.how[w] = slot.loc;
            self.set_week_sigma(w, slot.sigma.get());
        }
        let hours = f64::from(self.hours) + 1.0;
        let lim = if self.err_flat > 0.0 {
            HOUR_CLIP_ERRS * f64::from(self.err_flat)
        } else {
            f64::INFINITY
        };
        let step =
            |r: f64, s: Option<f64>, a: f64| a * (mean - s.unwrap_or(0.0) - r).clamp(-lim, lim);
        self.day_ref += step(self.day_ref, sd, (1.0 / DAY_REF_MEMORY_H).max(1.0 / hours));
        self.week_ref += step(
            self.week_ref,
            sw,
            (1.0 / WEEK_REF_MEMORY_H).max(1.0 / hours),
        );
        self.hours = self.hours.saturating_add(1);
        if !trusted_before && self.trust() >= PROFILE_TRUSTED_WEIGHT && !self.tail_faded {
            // The yardstick changed: the z's of the hours before the rhythm was learnt (its
            // daily steps judged as spikes) no longer describe this series' tail. Once: a
            // trust that wavers around the bar must not wipe the tail each time it climbs back
            // (a tweet series lost its tail four times in three days, and every burst after
            // each loss alerted).
            fade_hist(&mut self.hist);
            self.tail_faded = true;
        }
        self.acc_sum = 0.0;
        self.acc_abs = 0.0;
        self.acc_n = 0;
        self.acc_calm = 0;
    }
}

/// Moves a slot toward one hour's deviation and spread; after a few cycles the move is clipped
/// to four typical profile errors, so one odd hour cannot reshape the profile. The spread grows
/// at most twofold per hour; with enough points in the hour (`fast_down`) it falls faster than
/// it grows, so the poor fits of the first weeks (before the profile was trusted) fade quickly.
fn learn_slot(slot: &mut Slot, dev: f64, sigma: f64, a: f64, lim: f32, fast_down: bool) {
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
        let lim = SLOT_CLIP_ERRS * f64::from(lim);
        innov = innov.clamp(-lim, lim);
    }
    let sg = slot.sigma.get();
    slot.loc = Bf16::new(loc + a * innov);
    let a_sigma = if fast_down && sigma < sg {
        a.max(SLOT_SIGMA_FAST_DOWN_RATE)
    } else {
        a
    };
    // The tiny floor keeps a zero spread able to grow.
    let grown = sigma.min(SLOT_SIGMA_MAX_GROWTH * sg.max(1e-300));
    slot.sigma = Bf16::new(sg + a_sigma * (grown - sg));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekly_spreads_in_a_byte() {
        let mut m = Model::new();
        assert!(!m.week_sigma(0).is_set());
        let close = |a: f64, b: f64| (a - b).abs() <= 0.023 * b;
        m.set_week_sigma(0, 3.0);
        m.set_week_sigma(1, 0.5);
        m.set_week_sigma(2, 0.0);
        assert!(close(m.week_sigma(0).get(), 3.0));
        assert!(close(m.week_sigma(1).get(), 0.5));
        assert_eq!(m.week_sigma(2).get(), 0.0);
        // Beyond what the codes reach from the reference: it moves, the others keep their
        // spread while the codes' span (about 57,000 times) holds them...
        m.set_week_sigma(3, 10_000.0);
        assert!(close(m.week_sigma(3).get(), 10_000.0));
        assert!(close(m.week_sigma(0).get(), 3.0));
        assert!(close(m.week_sigma(1).get(), 0.5));
        // ...and the smallest saturate when it does not.
        m.set_week_sigma(4, 1e7);
        assert!(close(m.week_sigma(4).get(), 1e7));
        assert!(close(m.week_sigma(1).get(), 1e7 / 2f64.powf(253.0 / 16.0)));
        assert_eq!(m.week_sigma(2).get(), 0.0);
    }

    #[test]
    fn the_tail_fades_once_when_the_rhythm_is_first_trusted() {
        // Hourly folds of a clean daily rhythm (5-minute points, 20 at night, 75 by day).
        let p = Params {
            interval_s: 300.0,
            warmup: 150,
            ..super::super::tests::params()
        };
        let mut m = Model::new();
        let mut i = 0u32;
        let mut feed = |m: &mut Model, days: u32| {
            for _ in 0..days * 288 {
                let hour = (i % 288) / 12;
                let x = if (9..18).contains(&hour) { 75.0 } else { 20.0 };
                m.step(x + f64::from(i % 5) * 0.3, f64::from(i) * 300.0, &p);
                i += 1;
            }
        };
        feed(&mut m, 10);
        assert!(m.trust() >= PROFILE_TRUSTED_WEIGHT && m.tail_faded);
        // Trust wavers below the bar (the profiles predict no better than a flat line for a
        // moment) and climbs back: the tail learnt since must survive.
        m.hist = [0; super::super::HIST_BINS];
        m.hist[0] = 800;
        m.hist[3] = 40;
        m.err_day = m.err_flat;
        m.err_week = m.err_flat;
        assert!(m.trust() < PROFILE_TRUSTED_WEIGHT);
        for _ in 0..10 {
            if m.trust() >= PROFILE_TRUSTED_WEIGHT {
                break;
            }
            feed(&mut m, 1);
        }
        assert!(m.trust() >= PROFILE_TRUSTED_WEIGHT);
        assert!(m.hist[0] >= 800, "the tail was faded again: {:?}", m.hist);
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
}
