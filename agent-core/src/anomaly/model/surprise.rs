//! The score: how surprising the newest point is, in σ-like units before the sensitivity.
//!
//! Two readings, the larger one wins:
//! - **onset**: the winning view's z, divided by k for the k-th consecutive strong point (a
//!   condition that persists is no new surprise);
//! - **likelihood** (after Numenta's anomaly likelihood): the mean strength of the last ~8 points
//!   against the long-run mean and spread of this series' strengths, so a run of moderately odd
//!   points (a level that moved, a pattern that broke) scores although no single point stands
//!   out, while a series whose points are often odd must do more to surprise.
//!
//! After a surprise (≥ [`Z_MID`]) the score rests for [`REST_POINTS`] points: one episode, one
//! high score, unless a surprise twice as strong comes (a bigger fault); the state (hysteresis)
//! still follows every point. A surprise at least half as strong as the last one that comes
//! within [`RECUR_POINTS`] of it is a recurrence; from the second recurrence in a row it is the
//! series' habit (a daily job's spike, a burst that keeps coming back) and scores only by how
//! much it outgrows the last one: a warning's worth ([`Z_MID`]) when it is no bigger.
//!
//! Everything here is judged at sensitivity 1: the sensitivity only scales the final score, so
//! it moves how much is reported, never what the model learns.

use super::RECURRING_EPISODE_POINTS;
use super::tail::{Z_MID, score_of};

/// Points of the recent mean strength (EWMA memory).
const WINDOW_POINTS: f32 = 8.0;
/// Points of the long-run mean and spread of strengths (EWMA memory; a plain mean before).
const LONG_POINTS: f32 = 3000.0;
/// z-equivalent of one long-run standard deviation of the recent mean above the long-run mean.
const LIKELIHOOD_GAIN: f64 = 3.0;
/// Floor of the long-run spread of strengths: a series that was never odd still needs a real
/// move to score.
const SPREAD_FLOOR: f32 = 1e-3;
/// While resting, a surprise this many times the strongest of the rest breaks through: a second,
/// much bigger fault is news.
const ESCALATION: f64 = 2.0;
/// Judged points before the likelihood speaks (its long-run mean and spread need a few).
const LIKELY_MIN_POINTS: u16 = 32;
/// Points after a surprise during which the score rests at 0.
pub(super) const REST_POINTS: u16 = 100;
/// A surprise within this many points of the last one, and about as strong, is a recurrence
/// (the same horizon as the tail's recurring spikes).
const RECUR_POINTS: u16 = RECURRING_EPISODE_POINTS;
/// Recurrences in a row that make a habit.
const HABIT_RECURRENCES: u16 = 2;

/// Score state of one series: 24 bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Surprise {
    /// Recent mean strength (transient).
    pub recent: f32,
    /// Long-run mean and mean square of strengths (learnt; persisted).
    pub mean: f32,
    pub sq: f32,
    /// Points since the last surprise (transient; saturating).
    pub rest: u16,
    /// Consecutive points with |z| ≥ [`Z_MID`] (transient).
    pub hot: u16,
    /// Points judged (saturating).
    pub seen: u16,
    /// The strongest score of the current rest (transient).
    pub peak: f32,
    /// Recurrences in a row (transient; not persisted).
    pub streak: u16,
}

impl Default for Surprise {
    fn default() -> Self {
        Self {
            recent: 0.0,
            mean: 0.0,
            sq: 0.0,
            rest: u16::MAX,
            hot: 0,
            seen: 0,
            peak: 0.0,
            streak: 0,
        }
    }
}

impl Surprise {
    /// Feeds the winning view's |z| (σ units, sensitivity 1) of a judged point, and whether the
    /// value is a record (beyond the remembered range: never a habit). Returns the
    /// z-equivalent to score (0 while resting).
    pub fn step(&mut self, z: f64, record: bool) -> f64 {
        self.seen = self.seen.saturating_add(1);
        let z = z.abs();
        let strength = score_of(z) as f32;
        let onset = z / (1.0 + f64::from(self.hot));
        self.hot = if z >= Z_MID {
            self.hot.saturating_add(1)
        } else {
            0
        };
        self.recent += (strength - self.recent) / WINDOW_POINTS;
        let spread = (self.sq - self.mean * self.mean)
            .max(0.0)
            .sqrt()
            .max(SPREAD_FLOOR);
        let likely = if self.seen > LIKELY_MIN_POINTS {
            LIKELIHOOD_GAIN * f64::from((self.recent - self.mean) / spread)
        } else {
            0.0
        };
        let a = (1.0 / LONG_POINTS).max(1.0 / f32::from(self.seen));
        self.mean += a * (strength - self.mean);
        self.sq += a * (strength * strength - self.sq);

        let out = onset.max(likely);
        let since = self.rest;
        self.rest = self.rest.saturating_add(1);
        if since < REST_POINTS {
            if out >= ESCALATION * f64::from(self.peak) {
                self.peak = out as f32;
                return out;
            }
            return 0.0;
        }
        if out >= Z_MID {
            self.rest = 0;
            let last = f64::from(self.peak);
            self.peak = out as f32;
            // The same kind of burst coming back soon (at least 1/ESCALATION of the last one),
            // again and again, is this series' habit (contextOSE's remembered contexts, in two
            // numbers): news only by how much it outgrows the last one. Once may be a fault
            // coming back, so the first recurrence still scores in full; a record (beyond every
            // value of the remembered range) is never a habit.
            if since < RECUR_POINTS && out * ESCALATION >= last {
                self.streak = self.streak.saturating_add(1);
                if self.streak >= HABIT_RECURRENCES && !record {
                    return out.min(Z_MID * out / last);
                }
            } else {
                self.streak = 0;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_episode_one_surprise() {
        let mut s = Surprise::default();
        for i in 0..500 {
            s.step(f64::from(i % 3), false);
        }
        assert!(s.step(20.0, false) >= 20.0);
        // The same spike again while resting scores nothing...
        s.step(1.0, false);
        assert_eq!(s.step(20.0, false), 0.0);
        // ...but one twice as strong breaks through (a bigger fault), and then only one twice
        // as strong as that.
        s.step(1.0, false);
        assert!(s.step(45.0, false) >= 45.0);
        s.step(1.0, false);
        assert_eq!(s.step(60.0, false), 0.0);
        // After the rest, a fresh spike scores again.
        for i in 0..REST_POINTS {
            s.step(f64::from(i % 3), false);
        }
        assert!(s.step(20.0, false) >= 20.0);
    }

    #[test]
    fn a_burst_that_recurs_soon_stops_alerting() {
        let mut s = Surprise::default();
        let calm = |s: &mut Surprise, n: u16| {
            for i in 0..n {
                s.step(f64::from(i % 3), false);
            }
        };
        calm(&mut s, 500);
        assert!(s.step(20.0, false) >= 20.0);
        // The same burst again 150 points later (after the rest) may be a fault coming back:
        // news in full once...
        calm(&mut s, 150);
        assert!(s.step(20.0, false) >= 20.0);
        // ...but a third time in a row it is the series' habit: at most a warning's worth.
        calm(&mut s, 150);
        let again = s.step(20.0, false);
        assert!(again <= Z_MID + 1e-9, "{again}");
        // One more than twice as strong is news by how much it outgrows the last one.
        calm(&mut s, 150);
        let bigger = s.step(45.0, false);
        assert!(bigger >= 2.0 * Z_MID, "{bigger}");
        // A record (beyond every value the range remembers) is never the habit, however soon.
        calm(&mut s, 150);
        s.step(45.0, false);
        calm(&mut s, 150);
        assert!(s.step(45.0, true) >= 45.0);
        // Long after the last one, the same burst is news again.
        calm(&mut s, RECUR_POINTS + 1);
        assert!(s.step(45.0, false) >= 45.0);
    }

    #[test]
    fn a_run_of_moderate_points_is_likely_news() {
        let mut s = Surprise::default();
        for i in 0..2000 {
            s.step(0.5 + f64::from(i % 5) * 0.3, false);
        }
        // z = 3.5 is no alert on its own, but eight of them in a row are.
        let best = (0..8).map(|_| s.step(3.5, false)).fold(0.0, f64::max);
        assert!(best >= Z_MID, "{best}");
    }
}
