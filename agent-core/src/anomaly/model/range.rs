//! The remembered range: the highest and lowest value of the last 1,536 to 2,048 points, kept
//! as the extremes of four blocks of 512 points (the current one and the three before it).
//!
//! It gives the score two readings of a value that no spread can give, because they are about
//! magnitudes this series has actually reached (what contextOSE and ARTime read from a file's
//! minimum and maximum before its first row; here learnt online, in 32 bytes):
//! - a **record**: a value beyond every value of the remembered range ("disk writes at a
//!   two-day high") is news however spiky the series is, by how far it goes beyond the range's
//!   reach from the long-term level (see [`record_z`]);
//! - a **familiar magnitude**: a spike that goes as far as the bigger excursions of the range,
//!   but not beyond, is one this series has shown lately; it scores at most a warning's worth.
//!
//! Records are counted once a whole block is in. Every update is O(1); the block shift once per
//! 512 points is a copy of 24 bytes.

use super::tail::Z_MID;

/// Points per block.
const BLOCK_POINTS: u32 = 512;
/// Blocks remembered, the current one included.
const BLOCKS: usize = 4;
/// A record going beyond the range by this share of its reach...
const RECORD_SHARE: f64 = 0.1;
/// ...is judged as a deviation of this many σ (critical); the z grows with the square root of
/// the excess (a record by 2.5% of the reach is 4 σ, by 40% 16 σ).
const RECORD_Z: f64 = 8.0;
/// A spike reaching at least this share of the range's reach on its side, and no further, is
/// a familiar magnitude.
pub(crate) const FAMILIAR_SHARE: f64 = 0.7;
/// What a familiar magnitude may score at most, in σ: a warning's worth.
pub(crate) const FAMILIAR_MAX_Z: f64 = Z_MID;

/// Extremes of the last [`BLOCKS`] blocks: 32 bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Range {
    /// Highest and lowest value of each block, the current one first (NaN: no point yet).
    pub hi: [f32; BLOCKS],
    pub lo: [f32; BLOCKS],
}

impl Default for Range {
    fn default() -> Self {
        Self {
            hi: [f32::NAN; BLOCKS],
            lo: [f32::NAN; BLOCKS],
        }
    }
}

/// Where a value sits against the remembered range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Reach {
    /// Not enough points yet, or the value is on the side of the level the range does not
    /// reach (a flat range).
    Unknown,
    /// Inside the range: its distance from the level as a share of the range's reach on that
    /// side (0 at the level, 1 at the extreme).
    Within(f64),
    /// Beyond it: by how much, as a share of the range's reach on that side.
    Beyond(f64),
}

impl Range {
    /// Whether a decoded range is consistent (each block empty, or lo ≤ hi, both finite).
    pub fn valid(&self) -> bool {
        self.hi
            .iter()
            .zip(&self.lo)
            .all(|(h, l)| (h.is_nan() && l.is_nan()) || (h.is_finite() && l.is_finite() && l <= h))
    }

    /// The value `x` against the range, seen from `level` (the long-term level), after `n`
    /// points.
    pub fn reach(&self, x: f64, level: f64, n: u32) -> Reach {
        if n < BLOCK_POINTS {
            return Reach::Unknown;
        }
        // max and min skip the empty blocks (NaN).
        let hi = self
            .hi
            .iter()
            .fold(f64::NEG_INFINITY, |a, &h| a.max(h.into()));
        let lo = self.lo.iter().fold(f64::INFINITY, |a, &l| a.min(l.into()));
        let (d, reach) = if x >= level {
            (x - level, hi - level)
        } else {
            (level - x, level - lo)
        };
        // A range that does not reach past the level on this side (or NaN) says nothing.
        if reach.is_nan() || reach <= 0.0 {
            return Reach::Unknown;
        }
        if d > reach {
            Reach::Beyond((d - reach) / reach)
        } else {
            Reach::Within(d / reach)
        }
    }

    /// Takes point number `n` (1-based; finite `x`) in.
    pub fn learn(&mut self, x: f64, n: u32) {
        if n.is_multiple_of(BLOCK_POINTS) {
            self.hi.copy_within(0..BLOCKS - 1, 1);
            self.lo.copy_within(0..BLOCKS - 1, 1);
            self.hi[0] = f32::NAN;
            self.lo[0] = f32::NAN;
        }
        // An empty block (NaN) takes `x` as it is.
        self.hi[0] = self.hi[0].max(x as f32);
        self.lo[0] = self.lo[0].min(x as f32);
    }
}

/// The z a record by `excess` (a share of the range's reach) is judged as: [`RECORD_Z`] at
/// [`RECORD_SHARE`], growing with the square root of the excess (a bigger record is bigger
/// news, but the first few percent beyond the range already count).
pub(crate) fn record_z(excess: f64) -> f64 {
    RECORD_Z * (excess.max(0.0) / RECORD_SHARE).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(points: u32, f: impl Fn(u32) -> f64) -> Range {
        let mut r = Range::default();
        for n in 1..=points {
            r.learn(f(n), n);
        }
        r
    }

    #[test]
    fn records_and_familiar_magnitudes() {
        // Noise around 10 with a spike to 30 once: the range reaches 20 above the level.
        let r = filled(1000, |n| {
            if n == 700 {
                30.0
            } else {
                10.0 + f64::from(n % 3) - 1.0
            }
        });
        assert_eq!(r.reach(15.0, 10.0, 1000), Reach::Within(0.25));
        assert_eq!(r.reach(26.0, 10.0, 1000), Reach::Within(0.8));
        let Reach::Beyond(e) = r.reach(34.0, 10.0, 1000) else {
            panic!("a new high is a record");
        };
        assert!((e - 0.2).abs() < 1e-9);
        assert!((record_z(0.1) - RECORD_Z).abs() < 1e-9);
        assert!(record_z(0.4) > record_z(0.1) && record_z(0.025) < Z_MID);
        // Downwards, the reach is the lowest value's (9) distance from the level.
        assert_eq!(r.reach(8.0, 10.0, 1000), Reach::Beyond(1.0));
        // Too early to tell.
        assert_eq!(r.reach(34.0, 10.0, 100), Reach::Unknown);
    }

    #[test]
    fn the_range_forgets_after_four_blocks() {
        let mut r = filled(600, |n| {
            if n == 10 {
                100.0
            } else {
                1.0 + f64::from(n % 2)
            }
        });
        assert!(matches!(r.reach(90.0, 1.5, 600), Reach::Within(_)));
        for n in 601..=4 * BLOCK_POINTS {
            r.learn(1.0 + f64::from(n % 2), n);
        }
        // The spike's block has just left the memory: 90 is a record again.
        assert!(matches!(
            r.reach(90.0, 1.5, 4 * BLOCK_POINTS),
            Reach::Beyond(_)
        ));
        assert!(r.valid());
        assert!(
            !Range {
                hi: [1.0, 0.0, f32::NAN, f32::NAN],
                lo: [2.0, 0.0, f32::NAN, f32::NAN]
            }
            .valid()
        );
    }
}
