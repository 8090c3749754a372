//! Log-linear histogram buckets, shared by the kernel (which increments them) and userspace
//! (which turns them into percentiles).
//!
//! Unit: nanoseconds. Buckets are half-open `[lo, hi)`. Values below 8 get one bucket each;
//! every power of two from 8 up is split into [`SUB_BUCKETS`] equal sub-buckets, so a bucket's
//! width is at most 1/8 of its lower bound: any value is known within 12.5% (6.25% when reported
//! at the bucket's midpoint). Values at or above [`MAX_VALUE`] (2^36 ns, about 68.7 s) are
//! clamped into the last bucket.

/// log2 of the number of sub-buckets per power of two.
pub const SUB_BITS: u32 = 3;
pub const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// The first power of two that no longer fits: values >= 2^MAX_POW are clamped.
pub const MAX_POW: u32 = 36;
pub const MAX_VALUE: u64 = 1 << MAX_POW;
/// Number of buckets: 8 direct ones, then 8 per power of two from 2^3 to 2^35.
pub const BUCKETS: usize = ((MAX_POW - SUB_BITS + 1) as usize) << SUB_BITS;
const _: () = assert!(BUCKETS == 272);

/// Bucket index of `v` (ns). Two range checks, then the highest bit from a byte table (one
/// more compare below 2 us): cheap enough for every syscall.
#[inline(always)]
pub fn bucket(v: u64) -> usize {
    let v = if v >= MAX_VALUE { MAX_VALUE - 1 } else { v };
    // shift = index of the highest set bit of (v | 8), minus SUB_BITS: the highest set bit of
    // y, in [1, 2^33). Above 2^32 (samples of 34 s or more) it is 32.
    let y = (v | SUB_BUCKETS) >> SUB_BITS;
    let shift = if y >> 32 != 0 { 32 } else { msb32(y) };
    // For v >= 8, v >> shift lies in [8, 16): it carries the leading 1 plus the sub-bucket bits;
    // below 8, shift is 0 and v is its own bucket.
    ((shift as usize) << SUB_BITS) + (v >> shift) as usize
}

/// Index of the highest set bit of `y` in [1, 2^32). BPF has no count-leading-zeros
/// instruction: a table of each byte's highest bit, read at the highest non-zero byte. Most
/// samples (below 2 us, `y` < 256) take one compare and one load; a branch-free bit smear and
/// population count costs about 35 instructions on one dependency chain, on every syscall.
#[inline(always)]
fn msb32(y: u64) -> u64 {
    // The mask keeps the index provably inside the table for the verifier, which does not
    // carry the range tests over to `y` (LLVM tests `v`, of which `y` is a shift); the volatile
    // read stops LLVM from dropping the mask as redundant.
    let (base, byte) = if y < 1 << 8 {
        (0, y)
    } else if y < 1 << 16 {
        (8, y >> 8)
    } else if y < 1 << 24 {
        (16, y >> 16)
    } else {
        (24, y >> 24)
    };
    // SAFETY: reading a local.
    let byte = unsafe { core::ptr::read_volatile(&byte) } & 0xff;
    base + MSB8[byte as usize] as u64
}

/// The highest set bit of each byte value (0 for 0, never asked).
static MSB8: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 1;
    while i < 256 {
        t[i] = (usize::BITS - 1 - i.leading_zeros()) as u8;
        i += 1;
    }
    t
};

/// Inclusive lower bound of bucket `i` (ns).
pub const fn bucket_lo(i: usize) -> u64 {
    if i < SUB_BUCKETS as usize {
        return i as u64;
    }
    let shift = (i >> SUB_BITS) as u32 - 1;
    let mantissa = (i as u64 & (SUB_BUCKETS - 1)) | SUB_BUCKETS;
    mantissa << shift
}

/// Exclusive upper bound of bucket `i` (ns).
pub const fn bucket_hi(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        return MAX_VALUE;
    }
    bucket_lo(i + 1)
}

/// The value reported for a sample that fell in bucket `i`: the bucket's midpoint.
pub const fn bucket_mid(i: usize) -> u64 {
    let lo = bucket_lo(i);
    lo + (bucket_hi(i) - lo) / 2
}

/// The `q`-quantile (0 < q <= 1) of a histogram, as a bucket midpoint in ns; `None` when empty.
///
/// The rank is `ceil(q * n)`: the smallest value such that at least a fraction `q` of the samples
/// are at or below it (the "nearest rank" definition).
pub fn quantile(buckets: &[u64], q: f64) -> Option<u64> {
    quantiles(buckets, [q]).map(|[v]| v)
}

/// [`quantile`] of each of `qs`, in one pass over the buckets; `None` when empty.
pub fn quantiles<const N: usize>(buckets: &[u64], qs: [f64; N]) -> Option<[u64; N]> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let ranks = qs.map(|q| {
        let exact = q * total as f64;
        // ceil() without std.
        let mut rank = exact as u64;
        if (rank as f64) < exact {
            rank += 1;
        }
        rank.clamp(1, total)
    });
    let mut out = [0u64; N];
    let mut found = [false; N];
    let mut left = N;
    let mut seen = 0u64;
    for (i, &c) in buckets.iter().enumerate() {
        if c == 0 {
            continue;
        }
        seen += c;
        for k in 0..N {
            if !found[k] && seen >= ranks[k] {
                out[k] = bucket_mid(i);
                found[k] = true;
                left -= 1;
            }
        }
        if left == 0 {
            break;
        }
    }
    Some(out)
}

/// Highest non-empty bucket's midpoint (ns), the histogram's view of the maximum.
pub fn max(buckets: &[u64]) -> Option<u64> {
    buckets.iter().rposition(|&c| c != 0).map(bucket_mid)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// Brute force: the bucket whose [lo, hi) contains v.
    fn brute_bucket(v: u64) -> usize {
        let v = v.min(MAX_VALUE - 1);
        (0..BUCKETS)
            .find(|&i| bucket_lo(i) <= v && v < bucket_hi(i))
            .unwrap()
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Log-uniform value: spreads samples over every power of two.
        fn log_uniform(&mut self) -> u64 {
            let bits = self.next() % 40;
            self.next() & ((1u64 << bits) - 1)
        }
    }

    #[test]
    fn buckets_are_contiguous_and_cover_the_range() {
        assert_eq!(bucket_lo(0), 0);
        for i in 0..BUCKETS - 1 {
            assert_eq!(bucket_hi(i), bucket_lo(i + 1), "gap after bucket {i}");
            assert!(bucket_lo(i) < bucket_hi(i));
        }
        assert_eq!(bucket_hi(BUCKETS - 1), MAX_VALUE);
    }

    #[test]
    fn bucket_matches_brute_force() {
        for v in 0..5000u64 {
            assert_eq!(bucket(v), brute_bucket(v), "v={v}");
        }
        for p in 0..64u32 {
            for d in [0i64, -1, 1] {
                let v = (1u64 << p).wrapping_add(d as u64);
                assert_eq!(bucket(v), brute_bucket(v), "v={v}");
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        let mut rng = XorShift(0x9e3779b97f4a7c15);
        for _ in 0..200_000 {
            let v = rng.log_uniform();
            assert_eq!(bucket(v), brute_bucket(v), "v={v}");
        }
    }

    #[test]
    fn relative_error_is_bounded() {
        for i in SUB_BUCKETS as usize..BUCKETS {
            let (lo, hi) = (bucket_lo(i), bucket_hi(i));
            // Width at most 1/8 of the lower bound: 12.5% for any value in the bucket.
            assert!((hi - lo) * 8 <= lo, "bucket {i}: [{lo}, {hi})");
            // The reported midpoint is within 6.25% of any value in the bucket.
            let mid = bucket_mid(i) as f64;
            assert!((mid - lo as f64).abs() / lo as f64 <= 0.0625 + 1e-12);
            assert!((hi as f64 - 1.0 - mid).abs() / (hi as f64 - 1.0) <= 0.0625 + 1e-12);
        }
    }

    #[test]
    fn quantiles_match_brute_force_within_bound() {
        let mut rng = XorShift(42);
        for round in 0..200 {
            let n = 1 + (rng.next() % 5000) as usize;
            let mut values: Vec<u64> = (0..n).map(|_| 8 + rng.log_uniform() % (1 << 34)).collect();
            let mut hist = [0u64; BUCKETS];
            for &v in &values {
                hist[bucket(v)] += 1;
            }
            values.sort_unstable();
            for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
                let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
                let exact = values[rank - 1] as f64;
                let got = quantile(&hist, q).unwrap() as f64;
                assert!(
                    (got - exact).abs() <= exact * 0.0625 + 1.0,
                    "round {round} q={q}: got {got}, exact {exact}"
                );
            }
            // All at once, exactly the bucket of the sample at each rank.
            let qs = [0.5, 0.9, 0.99, 0.999, 1.0];
            let all = quantiles(&hist, qs).unwrap();
            for (q, got) in qs.into_iter().zip(all) {
                let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
                assert_eq!(
                    got,
                    bucket_mid(bucket(values[rank - 1])),
                    "round {round} q={q}"
                );
            }
            let exact_max = *values.last().unwrap() as f64;
            let got_max = max(&hist).unwrap() as f64;
            assert!((got_max - exact_max).abs() <= exact_max * 0.0625 + 1.0);
        }
    }

    #[test]
    fn empty_histogram_has_no_quantile() {
        let hist = [0u64; BUCKETS];
        assert_eq!(quantile(&hist, 0.5), None);
        assert_eq!(quantiles(&hist, [0.5, 0.9]), None);
        assert_eq!(max(&hist), None);
    }
}
