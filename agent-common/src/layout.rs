//! Layout of the histogram table (map [`crate::maps::HIST`]).
//!
//! One `BPF_F_MMAPABLE` array of `u64`: userspace reads it through `mmap` with no syscall per
//! entry. It is sliced per CPU (each CPU only writes its own slice, so no atomics are needed,
//! exactly like a per-CPU array); a slice holds [`ROWS`] rows of [`ROW_LEN`] `u64`s.
//!
//! A row is one histogram key (one syscall, one disk × op, one TCP measure):
//! `[count, sum_ns, aux, pad × 5, buckets × hist::BUCKETS]`. Count and sum share the row's first
//! cache line so userspace can skip unchanged rows by reading one line. All cells are cumulative
//! since load: userspace diffs successive reads, nobody ever clears them.
//!
//! Each probe owns one [`Block`] of consecutive rows: its histogram rows, then one row of plain
//! counters (the [`CTR_EVENTS_LOST`], [`CTR_INFLIGHT_DROPPED`] and [`CTR_READ_ERRORS`] cells
//! every probe has, then its own from [`CTR_PROBE0`]). The blocks are allocated below, one line
//! per probe, in table order.

use crate::{hist, probes};

/// Index of the event count in a row.
pub const CELL_COUNT: usize = 0;
/// Sum of the recorded values in ns (for the mean).
pub const CELL_SUM: usize = 1;
/// Syscall rows: calls that returned an error (< 0). Disk rows: bytes transferred.
pub const CELL_AUX: usize = 2;
/// First bucket of the histogram.
pub const CELL_BUCKETS: usize = 8;
pub const ROW_LEN: usize = CELL_BUCKETS + hist::BUCKETS;
// Rows are whole cache lines (8 × u64 = 64 bytes): CPUs never share a line.
const _: () = assert!(ROW_LEN.is_multiple_of(8));

// Cells of a probe's counter row.
/// An event for the ring buffer found it full.
pub const CTR_EVENTS_LOST: usize = 0;
/// An operation could not be tracked (its in-flight table slot was taken).
pub const CTR_INFLIGHT_DROPPED: usize = 1;
/// A tracepoint field could not be read (bad offset): a bug, surfaced instead of hidden.
pub const CTR_READ_ERRORS: usize = 2;
/// The first counter cell a probe defines for itself.
pub const CTR_PROBE0: usize = 3;

/// A probe's rows: `len - 1` histogram rows, then its counter row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub start: usize,
    pub len: usize,
}

impl Block {
    pub const fn first(len: usize) -> Block {
        assert!(len >= 1, "a block holds at least its counter row");
        Block { start: 0, len }
    }

    /// The block right after this one.
    pub const fn then(self, len: usize) -> Block {
        assert!(len >= 1, "a block holds at least its counter row");
        Block {
            start: self.end(),
            len,
        }
    }

    pub const fn end(self) -> usize {
        self.start + self.len
    }

    /// Table row of the block's histogram row `i`.
    #[inline(always)]
    pub const fn row(self, i: usize) -> usize {
        self.start + i
    }

    /// Number of histogram rows.
    pub const fn hist_rows(self) -> usize {
        self.len - 1
    }

    /// Table row of the block's counters.
    #[inline(always)]
    pub const fn counters(self) -> usize {
        self.end() - 1
    }
}

// ---- the probes' blocks, in table order (a new probe: one line here) ----
pub const SYSCALL: Block = Block::first(probes::syscall::ROWS);
pub const DISK: Block = SYSCALL.then(probes::disk::ROWS);
pub const TCP: Block = DISK.then(probes::tcp::ROWS);
pub const RUNQ: Block = TCP.then(probes::runq::ROWS);
/// Rows per CPU slice.
pub const ROWS: usize = RUNQ.end();

/// u64 cells per CPU slice.
pub const CPU_STRIDE: usize = ROWS * ROW_LEN;
/// Bytes per CPU of the histogram table (about 1.3 MiB).
pub const CPU_BYTES: usize = CPU_STRIDE * 8;

/// One row, the value type of the HIST array (so one lookup yields a whole row).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Row {
    pub cells: [u64; ROW_LEN],
}

#[cfg(feature = "user")]
// SAFETY: plain u64s, no padding.
unsafe impl aya::Pod for Row {}

/// Array index of `row` in `cpu`'s slice.
#[inline(always)]
pub const fn row_index(cpu: usize, row: usize) -> usize {
    cpu * ROWS + row
}

/// Cell index of `cell` in `row` for `cpu`, counting u64s from the start of the table.
#[inline(always)]
pub const fn cell(cpu: usize, row: usize, cell: usize) -> usize {
    cpu * CPU_STRIDE + row * ROW_LEN + cell
}

/// Number of entries (rows) of the HIST map for `ncpus` possible CPUs.
pub const fn hist_entries(ncpus: usize) -> usize {
    ncpus * ROWS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_tile_the_table() {
        assert_eq!(SYSCALL.start, 0);
        assert_eq!(DISK.start, SYSCALL.end());
        assert_eq!(TCP.start, DISK.end());
        assert_eq!(RUNQ.start, TCP.end());
        assert_eq!(ROWS, RUNQ.end());
        assert_eq!(SYSCALL.counters(), DISK.start - 1);
    }
}
