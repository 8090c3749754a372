//! Novelty of the recent pattern (the principle of contextOSE / CAD-OSE, re-implemented in
//! constant memory): each value is quantized into a few levels relative to the series' learnt
//! level and spread; the recent sequences of levels (contexts of 1 to [`MAX_CONTEXT`] points)
//! are counted in a small table of 2-bit counters indexed by a hash. The novelty of a point is
//! the share of its contexts the table has not seen (a value at a level never seen is new at
//! every length; a known level reached in a new order only at the longer ones; seen once counts
//! half), beyond the series' usual share (a noisy series meets new contexts all the time). A pattern seen
//! before (a series' normal bursts, a recurring shape) stops being new; one not seen scores at
//! once. Counters are decremented slowly, one table word at a time, so what is not seen again
//! is forgotten and memory stays constant.

/// Quantization levels (3 bits each).
pub(super) const LEVELS: i32 = 8;
/// Width of a level in (tail-scaled) σ: ordinary jitter stays within a level or two.
pub(super) const LEVEL_SIGMA: f64 = 1.5;
/// Longest context, in points.
pub(crate) const MAX_CONTEXT: usize = 4;
/// Table words (u64, 32 two-bit counters each).
pub(crate) const WORDS: usize = 16;
const COUNTERS: u32 = (WORDS * 32) as u32;
/// Points between two decrements of one table word: a counter is decremented once every
/// `WORDS × AGE_POINTS` points, so a context seen once is forgotten after about that many
/// points, one seen often (counter 3) after three times that.
pub(crate) const AGE_POINTS: u16 = 64;

/// A context seen once is half new: once may be chance, twice is a pattern.
const SEEN_ONCE_NEW: f64 = 0.5;
/// Memory, in points, of the series' usual novelty.
const MEAN_POINTS: f64 = 500.0;

/// The novelty memory of one series: 136 bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Novelty {
    /// 2-bit saturating counters.
    pub table: [u64; WORDS],
    /// The last `MAX_CONTEXT - 1` levels, 3 bits each, newest in the low bits.
    pub recent: u16,
    /// Levels in `recent` (up to `MAX_CONTEXT - 1`).
    pub filled: u8,
    /// Points until the next word is aged, and which word.
    pub age_in: u16,
    pub age_word: u8,
    /// Usual novelty of this series (EWMA over [`MEAN_POINTS`]).
    pub mean: f32,
}

impl Default for Novelty {
    fn default() -> Self {
        Self {
            table: [0; WORDS],
            recent: 0,
            filled: 0,
            age_in: AGE_POINTS,
            age_word: 0,
            mean: 0.0,
        }
    }
}

fn slot(len: usize, code: u64) -> u32 {
    let h = (code | (len as u64) << 60).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 40) as u32) % COUNTERS
}

impl Novelty {
    /// The level of a value `u` σ from the learnt level.
    pub fn level(u: f64) -> u16 {
        if u.is_nan() {
            return (LEVELS / 2) as u16;
        }
        let q = (u / LEVEL_SIGMA + f64::from(LEVELS) / 2.0).floor();
        q.clamp(0.0, f64::from(LEVELS - 1)) as u16
    }

    /// Whether the counters' cursors are in range (a decoded file).
    pub fn valid(&self) -> bool {
        usize::from(self.filled) < MAX_CONTEXT
            && (1..=AGE_POINTS).contains(&self.age_in)
            && usize::from(self.age_word) < WORDS
            && self.recent < 1 << (3 * (MAX_CONTEXT - 1))
            && (0.0..=1.0).contains(&self.mean)
    }

    fn get(&self, i: u32) -> u64 {
        (self.table[(i / 32) as usize] >> ((i % 32) * 2)) & 3
    }

    fn bump(&mut self, i: u32) {
        let c = self.get(i);
        if c < 3 {
            self.table[(i / 32) as usize] += 1 << ((i % 32) * 2);
        }
    }

    /// Feeds the newest level (the `n`-th point of the series); returns how much more new its
    /// contexts are than usual for this series (in [0, 1]), and learns them.
    pub fn step(&mut self, q: u16, n: u32) -> f64 {
        let raw = self.raw_step(q);
        let mean = f64::from(self.mean);
        let a = (1.0 / MEAN_POINTS).max(1.0 / f64::from(n.max(1)));
        self.mean += (a * (raw - mean)) as f32;
        ((raw - mean) / (1.0 - mean).max(1e-3)).clamp(0.0, 1.0)
    }

    /// Feeds the newest level; returns the share of its contexts not seen before (in [0, 1];
    /// seen once counts half) and learns them.
    fn raw_step(&mut self, q: u16) -> f64 {
        let mut code = u64::from(q);
        let mut slots = [0u32; MAX_CONTEXT];
        let n = 1 + usize::from(self.filled);
        let (mut new, mut total) = (0.0, 0.0);
        for (len, s) in slots.iter_mut().enumerate().take(n) {
            if len > 0 {
                code |= u64::from((self.recent >> (3 * (len - 1))) & 7) << (3 * len);
            }
            *s = slot(len, code);
            total += 1.0;
            new += match self.get(*s) {
                0 => 1.0,
                1 => SEEN_ONCE_NEW,
                _ => 0.0,
            };
        }
        for &s in &slots[..n] {
            self.bump(s);
        }
        self.recent = ((self.recent << 3) | q) & ((1 << (3 * (MAX_CONTEXT - 1))) - 1);
        self.filled = (self.filled + 1).min((MAX_CONTEXT - 1) as u8);
        self.age_in = self.age_in.saturating_sub(1);
        if self.age_in == 0 {
            self.age_in = AGE_POINTS;
            let w = &mut self.table[usize::from(self.age_word)];
            // Decrement each non-zero 2-bit counter of the word.
            let mut out = 0u64;
            for k in 0..32 {
                let c = (*w >> (2 * k)) & 3;
                out |= c.saturating_sub(1) << (2 * k);
            }
            *w = out;
            self.age_word = ((usize::from(self.age_word) + 1) % WORDS) as u8;
        }
        if total > 0.0 { new / total } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_seen_before_is_not_new() {
        let mut nv = Novelty::default();
        // A burst pattern (level 4 with a spike to 7 every 10 points): new at first...
        let pattern = |i: u32| if i % 10 == 9 { 7 } else { 4 };
        let first: Vec<f64> = (0..10).map(|i| nv.raw_step(pattern(i))).collect();
        assert_eq!(first[0], 1.0);
        assert_eq!(first[9], 1.0, "the first spike is new at every length");
        // ...and the points after it (a known level after a new one); seen once, a context is
        // half new, and from the third cycle every context of it is known: the burst stops
        // being news.
        assert!(nv.raw_step(pattern(10)) > 0.0);
        for i in 11..20 {
            nv.raw_step(pattern(i));
        }
        // (a 4 after the spike: three of its four contexts seen once)
        assert_eq!(nv.raw_step(pattern(20)), 0.375);
        for i in 21..30 {
            nv.raw_step(pattern(i));
        }
        for i in 30..200 {
            assert_eq!(nv.raw_step(pattern(i)), 0.0, "point {i}");
        }
        // A level never seen is new at every length; a known level in a new order only at
        // the longer contexts.
        assert_eq!(nv.raw_step(0), 1.0);
        for _ in 0..3 {
            nv.raw_step(4);
        }
        assert_eq!(nv.raw_step(7), 0.0);
        // Two spikes in a row: the level is known, the order is not.
        let order = nv.raw_step(7);
        assert!(order > 0.0 && order < 1.0, "{order}");
    }

    #[test]
    fn what_is_not_seen_again_is_forgotten() {
        let mut nv = Novelty::default();
        nv.raw_step(0);
        nv.raw_step(0);
        // Another level for longer than a counter's whole decay cycle: the first is forgotten.
        for _ in 0..(4 * WORDS as u32 * u32::from(AGE_POINTS)) {
            nv.raw_step(3);
        }
        assert!(nv.raw_step(0) > 0.0);
        assert!(nv.valid());
    }

    #[test]
    fn novelty_counts_beyond_the_usual() {
        // A series that meets new contexts all the time (levels from a noisy sequence) learns
        // that as its usual (and fills the table: collisions make contexts look known, the safe
        // side); a steady one does not, and a new level there is news in full.
        let (mut noisy, mut steady) = (Novelty::default(), Novelty::default());
        let mut seed = 1u32;
        let mut late = 0.0_f64;
        for n in 1..=3000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let got = noisy.step(((seed >> 16) % 8) as u16, n);
            if n > 2000 {
                late += got / 1000.0;
            }
            steady.step(4, n);
        }
        assert!(late < 0.3, "noisy series' mean novelty {late}");
        assert!(steady.step(0, 3001) > 0.99);
    }

    #[test]
    fn levels_follow_the_spread() {
        assert_eq!(Novelty::level(0.0), 4);
        assert_eq!(Novelty::level(-0.1), 3);
        assert_eq!(Novelty::level(1e9), 7);
        assert_eq!(Novelty::level(-1e9), 0);
        assert_eq!(Novelty::level(f64::NAN), 4);
    }
}
