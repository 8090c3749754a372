//! Reading the histogram table through `mmap`: no syscall per entry, work proportional to the
//! table's size (and for unchanged rows, to one cache line per CPU).

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use agent_common::layout::{self, CELL_BUCKETS, CELL_COUNT, ROW_LEN, ROWS};
use aya::maps::MapData;

/// Read-only view of the kernel's `HIST` array, shared with the kernel through `mmap`.
pub struct HistTable {
    base: NonNull<u64>,
    len_bytes: usize,
    ncpus: usize,
}

// SAFETY: the mapping is read-only and lives as long as the struct; reads are volatile.
unsafe impl Send for HistTable {}

impl HistTable {
    /// Maps the array behind `map` (created with `BPF_F_MMAPABLE`, `ncpus × ROWS` rows).
    pub fn new(map: &MapData, ncpus: usize) -> io::Result<Self> {
        let len_bytes = layout::hist_entries(ncpus) * ROW_LEN * 8;
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
        let base = NonNull::new(ptr.cast::<u64>())
            .ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self {
            base,
            len_bytes,
            ncpus,
        })
    }

    #[inline]
    fn cell(&self, cpu: usize, row: usize, cell: usize) -> u64 {
        let i = layout::cell(cpu, row, cell);
        debug_assert!(i * 8 < self.len_bytes);
        // SAFETY: i is within the mapping (cpu < ncpus, row < ROWS, cell < ROW_LEN); the kernel
        // writes concurrently, hence the volatile read of an aligned u64.
        unsafe { self.base.as_ptr().add(i).read_volatile() }
    }

    /// Sum over CPUs of one cell.
    pub fn total(&self, row: usize, cell: usize) -> u64 {
        (0..self.ncpus).fold(0u64, |acc, cpu| acc.wrapping_add(self.cell(cpu, row, cell)))
    }

    /// Sum over CPUs of a whole row.
    pub fn row_total(&self, row: usize, out: &mut [u64; ROW_LEN]) {
        out.fill(0);
        for cpu in 0..self.ncpus {
            for (c, o) in out.iter_mut().enumerate() {
                *o = o.wrapping_add(self.cell(cpu, row, c));
            }
        }
    }
}

impl Drop for HistTable {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len_bytes) };
    }
}

/// Turns the table's cumulative rows into per-interval deltas.
pub struct RowDiff {
    prev: Vec<Option<Box<[u64; ROW_LEN]>>>,
    scratch: Box<[u64; ROW_LEN]>,
}

impl Default for RowDiff {
    fn default() -> Self {
        Self {
            prev: (0..ROWS).map(|_| None).collect(),
            scratch: Box::new([0; ROW_LEN]),
        }
    }
}

impl RowDiff {
    /// Primes every row so the first real interval only counts what happened after this call.
    pub fn prime(&mut self, table: &HistTable, rows: impl Iterator<Item = usize>) {
        for row in rows {
            let mut cur = Box::new([0u64; ROW_LEN]);
            table.row_total(row, &mut cur);
            self.prev[row] = Some(cur);
        }
    }

    /// The row's change since the previous call, or `None` when nothing was recorded.
    /// Reads one cell per CPU for unchanged rows.
    pub fn delta(&mut self, table: &HistTable, row: usize) -> Option<&[u64; ROW_LEN]> {
        let count = table.total(row, CELL_COUNT);
        let prev = self.prev[row].get_or_insert_with(|| Box::new([0; ROW_LEN]));
        if count == prev[CELL_COUNT] {
            return None;
        }
        table.row_total(row, &mut self.scratch);
        for (p, c) in prev.iter_mut().zip(self.scratch.iter_mut()) {
            let cur = *c;
            *c = cur.wrapping_sub(*p);
            *p = cur;
        }
        Some(&self.scratch)
    }

    /// Change of plain counter cell `ctr` of `row` (always read).
    pub fn counter(&mut self, table: &HistTable, row: usize, ctr: usize) -> u64 {
        let cur = table.total(row, ctr);
        let prev = self.prev[row].get_or_insert_with(|| Box::new([0; ROW_LEN]));
        let d = cur.wrapping_sub(prev[ctr]);
        prev[ctr] = cur;
        d
    }
}

/// The buckets of a row.
pub fn buckets(row: &[u64; ROW_LEN]) -> &[u64] {
    &row[CELL_BUCKETS..]
}
