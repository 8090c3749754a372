//! Reading the histogram table and its row index through `mmap`: no syscall per entry, work
//! proportional to the table's size (and for unchanged rows, to one cache line per CPU).
//!
//! Buckets are 32-bit in the kernel (`agent_common::layout`): summed over CPUs modulo 2^32 and
//! diffed modulo 2^32, then widened. That is exact while one row gains fewer than 2^32 samples
//! in one interval (4.3 G: at 10 M/s of one syscall on every one of 256 CPUs, 1.6 s); past
//! that the row's exact 64-bit count says how many 2^32s are missing, and they go to its
//! fullest bucket (the only one that can have taken them all).

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use agent_common::{
    hist,
    layout::{self, CELL_BUCKETS, CELL_COUNT, HEAD, INDEX_CELLS, Index, ROW_BYTES, ROW_LEN, ROWS},
};
use aya::maps::MapData;

/// A read-only shared mapping of a `BPF_F_MMAPABLE` array.
struct Mapping {
    base: NonNull<u8>,
    len_bytes: usize,
}

// SAFETY: the mapping is read-only and lives as long as the struct; reads are volatile.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(map: &MapData, len_bytes: usize) -> io::Result<Self> {
        // SAFETY: mapping a BPF map fd read-only; the kernel checks the length against the map.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self { base, len_bytes })
    }

    /// The `u64` at byte `off` (8-aligned).
    #[inline]
    fn u64_at(&self, off: usize) -> u64 {
        debug_assert!(off + 8 <= self.len_bytes && off.is_multiple_of(8));
        // SAFETY: inside the mapping and aligned (callers compute offsets from the layout); the
        // kernel writes concurrently, hence the volatile read of an aligned word.
        unsafe { self.base.as_ptr().add(off).cast::<u64>().read_volatile() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len_bytes) };
    }
}

/// Read-only view of the kernel's `HIST` array, shared with the kernel through `mmap`.
pub struct HistTable {
    map: Mapping,
    ncpus: usize,
}

impl HistTable {
    /// Maps the array behind `map` (created with `BPF_F_MMAPABLE`, `ncpus × ROWS` rows).
    pub fn new(map: &MapData, ncpus: usize) -> io::Result<Self> {
        let map = Mapping::new(map, layout::hist_entries(ncpus) * ROW_BYTES)?;
        Ok(Self { map, ncpus })
    }

    /// Head cell `cell` (< HEAD) of `row` on `cpu`.
    #[inline]
    fn head(&self, cpu: usize, row: usize, cell: usize) -> u64 {
        self.map.u64_at(layout::row_offset(cpu, row) + cell * 8)
    }

    /// Sum over CPUs of head cell `cell` (count, sum, aux, or a counter).
    pub fn total(&self, row: usize, cell: usize) -> u64 {
        debug_assert!(cell < HEAD);
        (0..self.ncpus).fold(0u64, |acc, cpu| acc.wrapping_add(self.head(cpu, row, cell)))
    }

    /// Sum over CPUs of a whole row: head cells as they are, buckets modulo 2^32 (see the
    /// module's doc; [`widen`] turns two such sums into a delta).
    pub fn row_total(&self, row: usize, out: &mut [u64; ROW_LEN]) {
        let mut heads = [0u64; HEAD];
        let mut buckets = [0u32; hist::BUCKETS];
        for cpu in 0..self.ncpus {
            let at = layout::row_offset(cpu, row);
            for (c, h) in heads.iter_mut().enumerate() {
                *h = h.wrapping_add(self.map.u64_at(at + c * 8));
            }
            // Two buckets per aligned 8-byte read (each seen whole).
            let at = at + HEAD * 8;
            for (i, pair) in buckets.chunks_exact_mut(2).enumerate() {
                let w = self.map.u64_at(at + i * 8);
                pair[0] = pair[0].wrapping_add(w as u32);
                pair[1] = pair[1].wrapping_add((w >> 32) as u32);
            }
        }
        out[..HEAD].copy_from_slice(&heads);
        for (o, b) in out[CELL_BUCKETS..].iter_mut().zip(buckets) {
            *o = u64::from(b);
        }
    }
}

const _: () = assert!(hist::BUCKETS.is_multiple_of(2));

/// Read-only view of the kernel's `ROW_INDEX` array (key → row of the indexed probes).
pub struct RowIndex {
    map: Mapping,
}

impl RowIndex {
    pub fn new(map: &MapData) -> io::Result<Self> {
        // The kernel lays out array values 8 bytes apart: u64 cells, no padding.
        let bytes = (INDEX_CELLS * 8).next_multiple_of(page_size());
        Ok(Self {
            map: Mapping::new(map, bytes)?,
        })
    }

    /// The histogram row (in `index`'s block) of `key`; `None` while the key was never seen.
    pub fn row(&self, index: Index, key: usize) -> Option<usize> {
        if key >= index.keys {
            return None;
        }
        index.row_of(self.map.u64_at(index.cell(key) * 8))
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(1)
}

/// One row's last read (head sums, bucket sums modulo 2^32) and its widened total since load.
#[derive(Clone)]
struct RowState {
    raw: [u64; ROW_LEN],
    total: [u64; ROW_LEN],
}

/// Turns the table's cumulative rows into per-interval deltas.
pub struct RowDiff {
    rows: Vec<RowState>,
    scratch: Box<[u64; ROW_LEN]>,
}

impl Default for RowDiff {
    fn default() -> Self {
        Self {
            rows: vec![
                RowState {
                    raw: [0; ROW_LEN],
                    total: [0; ROW_LEN],
                };
                ROWS
            ],
            scratch: Box::new([0; ROW_LEN]),
        }
    }
}

/// Turns `cur` (a [`HistTable::row_total`]) into its change since `prev`, widening the buckets.
pub fn widen(prev: &[u64; ROW_LEN], cur: &mut [u64; ROW_LEN]) {
    for (c, p) in cur[..HEAD].iter_mut().zip(prev) {
        *c = c.wrapping_sub(*p);
    }
    let mut seen = 0u64;
    for (c, p) in cur[CELL_BUCKETS..].iter_mut().zip(&prev[CELL_BUCKETS..]) {
        *c = u64::from((*c as u32).wrapping_sub(*p as u32));
        seen += *c;
    }
    // Whole 2^32s the buckets lost to wrapping: only the fullest bucket can have taken them.
    let missing = cur[CELL_COUNT].saturating_sub(seen) >> 32 << 32;
    if missing > 0
        && let Some(top) = cur[CELL_BUCKETS..].iter_mut().max()
    {
        *top += missing;
    }
}

impl RowDiff {
    /// Reads `row` and returns its change since the last read (in the scratch buffer).
    fn advance(&mut self, table: &HistTable, row: usize) -> &[u64; ROW_LEN] {
        table.row_total(row, &mut self.scratch);
        let st = &mut self.rows[row];
        let cur = *self.scratch;
        widen(&st.raw, &mut self.scratch);
        st.raw = cur;
        for (t, d) in st.total.iter_mut().zip(self.scratch.iter()) {
            *t = t.wrapping_add(*d);
        }
        &self.scratch
    }

    /// Primes every row so the first real interval only counts what happened after this call.
    pub fn prime(&mut self, table: &HistTable, rows: impl Iterator<Item = usize>) {
        for row in rows {
            self.advance(table, row);
        }
    }

    /// The row's change since the previous call, or `None` when nothing was recorded.
    /// Reads one cell per CPU for unchanged rows.
    pub fn delta(&mut self, table: &HistTable, row: usize) -> Option<&[u64; ROW_LEN]> {
        let count = table.total(row, CELL_COUNT);
        if count == self.rows[row].raw[CELL_COUNT] {
            return None;
        }
        Some(self.advance(table, row))
    }

    /// Change of plain counter cell `ctr` of `row` (always read).
    pub fn counter(&mut self, table: &HistTable, row: usize, ctr: usize) -> u64 {
        let cur = table.total(row, ctr);
        let st = &mut self.rows[row];
        let d = cur.wrapping_sub(st.raw[ctr]);
        st.raw[ctr] = cur;
        st.total[ctr] = st.total[ctr].wrapping_add(d);
        d
    }

    /// The row's widened cells since load, up to now (without consuming the interval's delta).
    pub fn cumulative(&self, table: &HistTable, row: usize) -> [u64; ROW_LEN] {
        let st = &self.rows[row];
        let mut d = [0u64; ROW_LEN];
        table.row_total(row, &mut d);
        widen(&st.raw, &mut d);
        let mut out = st.total;
        for (o, d) in out.iter_mut().zip(d) {
            *o = o.wrapping_add(d);
        }
        out
    }
}

/// The buckets of a row.
pub fn buckets(row: &[u64; ROW_LEN]) -> &[u64] {
    &row[CELL_BUCKETS..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_with(count: u64, buckets: &[(usize, u64)]) -> [u64; ROW_LEN] {
        let mut r = [0u64; ROW_LEN];
        r[CELL_COUNT] = count;
        for &(b, n) in buckets {
            r[CELL_BUCKETS + b] = n;
        }
        r
    }

    #[test]
    fn widening_undoes_32_bit_wraparound() {
        // A bucket at 2^32 - 10 gains 25 samples: the kernel's u32 wrapped to 15.
        let prev = row_with(
            u64::from(u32::MAX) - 9 + 7,
            &[(40, u64::from(u32::MAX) - 9), (3, 7)],
        );
        let mut cur = row_with(prev[CELL_COUNT] + 26, &[(40, 15), (3, 8)]);
        widen(&prev, &mut cur);
        assert_eq!(cur[CELL_COUNT], 26);
        assert_eq!(cur[CELL_BUCKETS + 40], 25);
        assert_eq!(cur[CELL_BUCKETS + 3], 1);
        assert_eq!(buckets(&cur).iter().sum::<u64>(), 26);
    }

    #[test]
    fn a_whole_2_pow_32_in_one_interval_goes_to_the_fullest_bucket() {
        let n = (1u64 << 32) + 1000;
        let prev = row_with(5, &[(40, 5)]);
        // 2^32 + 990 samples in bucket 40 (it reads 5 + 990 modulo 2^32), 10 in bucket 41.
        let mut cur = row_with(5 + n, &[(40, 995), (41, 10)]);
        widen(&prev, &mut cur);
        assert_eq!(cur[CELL_COUNT], n);
        assert_eq!(cur[CELL_BUCKETS + 40], (1 << 32) + 990);
        assert_eq!(cur[CELL_BUCKETS + 41], 10);
    }

    #[test]
    fn lagging_buckets_are_not_taken_for_a_wrap() {
        // The kernel bumped the count but not yet the bucket when userspace read.
        let prev = row_with(0, &[]);
        let mut cur = row_with(3, &[(40, 2)]);
        widen(&prev, &mut cur);
        assert_eq!(cur[CELL_BUCKETS + 40], 2);
    }
}
