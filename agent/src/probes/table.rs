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
    layout::{
        self, CELL_BUCKETS, CELL_COUNT, CELL_MASK, HEAD, INDEX_CELLS, Index, MASK_WORDS, ROW_BYTES,
        ROW_LEN, ROWS,
    },
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
        Self::with_prot(map, len_bytes, libc::PROT_READ)
    }

    fn with_prot(map: &MapData, len_bytes: usize, prot: libc::c_int) -> io::Result<Self> {
        // SAFETY: mapping a BPF map fd; the kernel checks the length against the map.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                prot,
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

    /// The `u32` at byte `off` (4-aligned).
    #[inline]
    fn u32_at(&self, off: usize) -> u32 {
        debug_assert!(off + 4 <= self.len_bytes && off.is_multiple_of(4));
        // SAFETY: as in `u64_at`.
        unsafe { self.base.as_ptr().add(off).cast::<u32>().read_volatile() }
    }

    /// The `u64` at byte `off` (8-aligned) as an atomic shared with the kernel programs (whose
    /// compare-and-swaps are the same locked instructions). Only on a writable mapping.
    fn atomic_u64(&self, off: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(off + 8 <= self.len_bytes && off.is_multiple_of(8));
        // SAFETY: inside the mapping, aligned, lives as long as `self`; every access to the
        // word, here and in the kernel, is atomic or a volatile aligned load/store.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(self.base.as_ptr().add(off).cast()) }
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

impl Mapping {
    /// Private anonymous memory of `len_bytes`, zeroed (the read-cost benchmark's table).
    fn anonymous(len_bytes: usize) -> io::Result<Self> {
        // SAFETY: a fresh private mapping; no file, no aliasing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
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

    /// Adds `n` to the `u32` at byte `off` (the read-cost benchmark's writer; the mapping must
    /// be [`Self::anonymous`]).
    fn bump_u32(&self, off: usize, n: u32) {
        assert!(off + 4 <= self.len_bytes && off.is_multiple_of(4));
        // SAFETY: inside a writable mapping, aligned.
        unsafe {
            let p = self.base.as_ptr().add(off).cast::<u32>();
            p.write_volatile(p.read_volatile().wrapping_add(n));
        }
    }

    fn or_u64(&self, off: usize, bits: u64) {
        assert!(off + 8 <= self.len_bytes && off.is_multiple_of(8));
        // SAFETY: as in `bump_u32`.
        unsafe {
            let p = self.base.as_ptr().add(off).cast::<u64>();
            p.write_volatile(p.read_volatile() | bits);
        }
    }

    fn bump_u64(&self, off: usize, n: u64) {
        assert!(off + 8 <= self.len_bytes && off.is_multiple_of(8));
        // SAFETY: as in `bump_u32`.
        unsafe {
            let p = self.base.as_ptr().add(off).cast::<u64>();
            p.write_volatile(p.read_volatile().wrapping_add(n));
        }
    }
}

/// What reading the table costs per interval, measured on a synthetic table.
#[derive(Clone, Debug)]
pub struct ReadCost {
    pub ncpus: usize,
    pub table_bytes: usize,
    /// Rows read per interval (on every CPU).
    pub rows_read: usize,
    /// Milliseconds per interval: median and worst of the intervals.
    pub median_ms: f64,
    pub max_ms: f64,
}

/// Userspace's reading cost per interval for a table of `ncpus` possible CPUs in which every
/// histogram row changed on every CPU (the worst case: work is proportional to changed rows),
/// over `intervals` intervals. Between reads a writer bumps each row's count, sum and one bucket
/// on every CPU, as the kernel would (so the reader finds them changed, and mostly not in its
/// cache: the table is bigger than the last-level cache at 256 CPUs); each row's samples spread
/// over 32 buckets (four powers of two) per CPU. The per-cgroup block is read only with
/// `cgroup` (its source is off by default, and then the agent never reads it).
pub fn read_cost(ncpus: usize, intervals: usize, cgroup: bool) -> io::Result<ReadCost> {
    let table_bytes = layout::hist_entries(ncpus) * ROW_BYTES;
    let table = HistTable {
        map: Mapping::anonymous(table_bytes)?,
        ncpus,
    };
    let mut diff = RowDiff::default();
    let mut out = [0u64; ROW_LEN];
    let mut times = Vec::with_capacity(intervals);
    let rows: Vec<usize> = (0..ROWS)
        .filter(|r| cgroup || !(layout::CGROUP.start..layout::CGROUP.end()).contains(r))
        .collect();
    for i in 0..=intervals {
        for cpu in 0..ncpus {
            for &row in &rows {
                let at = layout::row_offset(cpu, row);
                let n = 1000 + (cpu * 7 + row * 13 + i) as u64 % 1000;
                table.map.bump_u64(at + CELL_COUNT * 8, n);
                table.map.bump_u64(at + layout::CELL_SUM * 8, n * 1500);
                // A row's samples span a few powers of two: 32 buckets (4 of them).
                let b = 60 + (row * 5 + cpu + i) % 32;
                table.map.bump_u32(at + HEAD * 8 + b * 4, n as u32);
                let (cell, bit) = layout::mask_bit(b);
                table.map.or_u64(at + cell * 8, bit);
            }
        }
        let started = std::time::Instant::now();
        let mut samples = 0u64;
        for &row in &rows {
            // Per-cgroup rows are read whole, as the cgroup source reads them.
            let d = if (layout::CGROUP.start..layout::CGROUP.end()).contains(&row) {
                diff.delta_all(&table, row, CELL_COUNT, CELL_COUNT)
            } else {
                diff.delta(&table, row)
            };
            if let Some(d) = d {
                out.copy_from_slice(d);
                samples += out[CELL_COUNT];
            }
        }
        std::hint::black_box(samples);
        // The first read primes (as at load).
        if i > 0 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(ReadCost {
        ncpus,
        table_bytes,
        rows_read: rows.len(),
        median_ms: times.get(times.len() / 2).copied().unwrap_or(0.0),
        max_ms: times.last().copied().unwrap_or(0.0),
    })
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

    /// Sum over CPUs of a whole row: count, sum and aux as they are, buckets modulo 2^32 (see
    /// the module's doc; [`widen`] turns two such sums into a delta). Only the buckets a CPU's
    /// mask names are read: the others are zero (a bucket whose bit is not visible yet counts as
    /// zero now and whole at a later read, which the diff turns into the right delta).
    pub fn row_total(&self, row: usize, out: &mut [u64; ROW_LEN]) {
        let mut heads = [0u64; CELL_MASK];
        let mut buckets = [0u32; hist::BUCKETS];
        for cpu in 0..self.ncpus {
            let at = layout::row_offset(cpu, row);
            for (c, h) in heads.iter_mut().enumerate() {
                *h = h.wrapping_add(self.map.u64_at(at + c * 8));
            }
            let at_buckets = at + HEAD * 8;
            for w in 0..MASK_WORDS {
                let mut bits = self.map.u64_at(at + (CELL_MASK + w) * 8);
                while bits != 0 {
                    let b = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if let Some(acc) = buckets.get_mut(b) {
                        *acc = acc.wrapping_add(self.map.u32_at(at_buckets + b * 4));
                    }
                }
            }
        }
        out.fill(0);
        out[..CELL_MASK].copy_from_slice(&heads);
        for (o, b) in out[CELL_BUCKETS..].iter_mut().zip(buckets) {
            *o = u64::from(b);
        }
    }
}

impl HistTable {
    /// Sum over CPUs of a whole row, every head cell and every bucket (modulo 2^32): for rows
    /// with their own cells and no bucket masks (`agent_common::probes::cgroup`).
    pub fn row_total_all(&self, row: usize, out: &mut [u64; ROW_LEN]) {
        out.fill(0);
        for cpu in 0..self.ncpus {
            let at = layout::row_offset(cpu, row);
            for (c, o) in out[..HEAD].iter_mut().enumerate() {
                *o = o.wrapping_add(self.map.u64_at(at + c * 8));
            }
            for (b, o) in out[CELL_BUCKETS..].iter_mut().enumerate() {
                *o = u64::from((*o as u32).wrapping_add(self.map.u32_at(at + HEAD * 8 + b * 4)));
            }
        }
    }
}

/// View of the kernel's `ROW_INDEX` array (key → row of the indexed probes). Read-only but for
/// the cgroup index, whose entries userspace gives back ([`Self::compare_exchange`],
/// [`Self::and`]: `agent_common::probes::cgroup`).
pub struct RowIndex {
    map: Mapping,
}

impl RowIndex {
    pub fn new(map: &MapData) -> io::Result<Self> {
        // The kernel lays out array values 8 bytes apart: u64 cells, no padding.
        let bytes = (INDEX_CELLS * 8).next_multiple_of(page_size());
        Ok(Self {
            map: Mapping::with_prot(map, bytes, libc::PROT_READ | libc::PROT_WRITE)?,
        })
    }

    /// Sets cell `cell` to `new` if it is `old`; whether it was.
    pub fn compare_exchange(&self, cell: usize, old: u64, new: u64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        cell < INDEX_CELLS
            && self
                .map
                .atomic_u64(cell * 8)
                .compare_exchange(old, new, SeqCst, SeqCst)
                .is_ok()
    }

    /// Clears the bits of cell `cell` not in `mask`, atomically.
    pub fn and(&self, cell: usize, mask: u64) {
        if cell < INDEX_CELLS {
            self.map
                .atomic_u64(cell * 8)
                .fetch_and(mask, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Cell `cell` as it is now (indexes with their own layout: `probes::cgroup`).
    pub fn cell(&self, cell: usize) -> u64 {
        if cell >= INDEX_CELLS {
            return 0;
        }
        self.map.u64_at(cell * 8)
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
        let whole = layout::CGROUP.start..layout::CGROUP.end();
        for row in rows {
            if whole.contains(&row) {
                // Rows without bucket masks: read whole (see `delta_all`).
                table.row_total_all(row, &mut self.scratch);
                self.rows[row].raw = *self.scratch;
            } else {
                self.advance(table, row);
            }
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

    /// Takes `row`'s current values (read whole) as its baseline: a row given to a new key
    /// reports only what happens from now on.
    pub fn reprime_all(&mut self, table: &HistTable, row: usize) {
        table.row_total_all(row, &mut self.scratch);
        self.rows[row].raw = *self.scratch;
    }

    /// Like [`Self::delta`] for a row read whole ([`HistTable::row_total_all`]): changed when
    /// head cell `a` or `b` changed. Every cell diffed modulo its width (u64 head, u32 buckets).
    pub fn delta_all(
        &mut self,
        table: &HistTable,
        row: usize,
        a: usize,
        b: usize,
    ) -> Option<&[u64; ROW_LEN]> {
        let st = &mut self.rows[row];
        if table.total(row, a) == st.raw[a] && table.total(row, b) == st.raw[b] {
            return None;
        }
        table.row_total_all(row, &mut self.scratch);
        let cur = *self.scratch;
        for (c, p) in self.scratch[..HEAD].iter_mut().zip(&st.raw) {
            *c = c.wrapping_sub(*p);
        }
        for (c, p) in self.scratch[CELL_BUCKETS..]
            .iter_mut()
            .zip(&st.raw[CELL_BUCKETS..])
        {
            *c = u64::from((*c as u32).wrapping_sub(*p as u32));
        }
        st.raw = cur;
        for (t, d) in st.total.iter_mut().zip(self.scratch.iter()) {
            *t = t.wrapping_add(*d);
        }
        Some(&self.scratch)
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
    fn rows_sum_the_buckets_each_cpus_mask_names() {
        let ncpus = 3;
        let table = HistTable {
            map: Mapping::anonymous(layout::hist_entries(ncpus) * ROW_BYTES).unwrap(),
            ncpus,
        };
        let row = layout::SYSCALL.row(5);
        let put = |cpu: usize, b: usize, n: u32, marked: bool| {
            let at = layout::row_offset(cpu, row);
            table.map.bump_u64(at + CELL_COUNT * 8, u64::from(n));
            table.map.bump_u32(at + HEAD * 8 + b * 4, n);
            if marked {
                let (cell, bit) = layout::mask_bit(b);
                table.map.or_u64(at + cell * 8, bit);
            }
        };
        put(0, 40, 3, true);
        put(2, 40, 4, true);
        put(2, 271, 1, true);
        // Not marked yet (the kernel's store not visible): read as zero for now.
        put(1, 100, 9, false);
        let mut diff = RowDiff::default();
        let d = *diff.delta(&table, row).unwrap();
        assert_eq!(d[CELL_COUNT], 17);
        assert_eq!(d[CELL_BUCKETS + 40], 7);
        assert_eq!(d[CELL_BUCKETS + 271], 1);
        assert_eq!(d[CELL_BUCKETS + 100], 0);
        // Once marked, the bucket's whole count arrives in the next delta.
        let (cell, bit) = layout::mask_bit(100);
        table.map.or_u64(layout::row_offset(1, row) + cell * 8, bit);
        put(0, 40, 1, true);
        let d = *diff.delta(&table, row).unwrap();
        assert_eq!(d[CELL_COUNT], 1);
        assert_eq!(d[CELL_BUCKETS + 40], 1);
        assert_eq!(d[CELL_BUCKETS + 100], 9);
        assert_eq!(diff.cumulative(&table, row)[CELL_BUCKETS + 40], 8);
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
