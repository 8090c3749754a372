//! Layout of the histogram table (map [`crate::maps::HIST`]) and of its row index (map
//! [`crate::maps::ROW_INDEX`]).
//!
//! One `BPF_F_MMAPABLE` array of [`Row`]s: userspace reads it through `mmap` with no syscall
//! per entry. It is sliced per CPU (each CPU only writes its own slice, so no atomics are
//! needed, exactly like a per-CPU array); a slice holds [`ROWS`] rows of [`ROW_BYTES`].
//!
//! A row is one histogram key (one syscall, one disk × op, one TCP measure): a head of
//! [`HEAD`] `u64`s `[count, sum_ns, aux, bucket mask × 5]` (one cache line, so userspace can
//! skip unchanged rows by reading one line, and read only the buckets the mask names), then
//! [`hist::BUCKETS`] `u32` buckets. Buckets are 32-bit
//! to halve the table: userspace reads every interval and widens them (a bucket cannot gain
//! 2^32 samples in one interval unless its row's exact 64-bit count does too, see
//! `agent/src/probes/table.rs`). Sums and byte counts stay 64-bit: one interval's latency sum
//! exceeds 2^32 ns as soon as a few blocked calls return. All cells are cumulative since load:
//! userspace diffs successive reads, nobody ever clears them.
//!
//! Each probe owns one [`Block`] of consecutive rows: its histogram rows, then one row of plain
//! counters (the [`CTR_EVENTS_LOST`], [`CTR_INFLIGHT_DROPPED`] and [`CTR_READ_ERRORS`] cells
//! every probe has, then its own from [`CTR_PROBE0`], in the row's `u64` head). The blocks are
//! allocated below, one line per probe, in table order.
//!
//! A probe whose keys are many but few are used (syscall numbers, disk × op) puts an [`Index`]
//! in front of its block: its rows are claimed on first sight of a key (see [`Index`]), so the
//! table grows with the keys a host uses, not with the keys that exist.

use crate::{hist, probes};

/// `u64` cells at the head of a row (count, sum, aux, padding: one cache line).
pub const HEAD: usize = 8;
/// Index of the event count in a row.
pub const CELL_COUNT: usize = 0;
/// Sum of the recorded values in ns (for the mean).
pub const CELL_SUM: usize = 1;
/// Syscall rows: calls that returned an error (< 0). Disk rows: bytes transferred.
pub const CELL_AUX: usize = 2;
/// Histogram rows: the buckets this CPU ever incremented, one bit each, in [`MASK_WORDS`] cells
/// from here (never cleared). Userspace reads only those buckets: a row's samples span a few
/// powers of two, so a changed row costs it 2-4 cache lines per CPU instead of 18.
pub const CELL_MASK: usize = 3;
pub const MASK_WORDS: usize = HEAD - CELL_MASK;
const _: () = assert!(hist::BUCKETS <= MASK_WORDS * 64);

/// Where bucket `b`'s bit lives: (head cell, bit).
#[inline(always)]
pub const fn mask_bit(b: usize) -> (usize, u64) {
    (CELL_MASK + (b >> 6), 1 << (b & 63))
}
/// First bucket of the histogram, in a row's cells as userspace sees them (widened to u64).
pub const CELL_BUCKETS: usize = HEAD;
/// Cells of a row as userspace sees them: the head, then the buckets widened to `u64`.
pub const ROW_LEN: usize = CELL_BUCKETS + hist::BUCKETS;
/// Bytes of one row in the kernel's table.
pub const ROW_BYTES: usize = size_of::<Row>();
// Rows are whole cache lines: CPUs never share a line. No padding between head and buckets.
const _: () = assert!(ROW_BYTES.is_multiple_of(64));
const _: () = assert!(ROW_BYTES == HEAD * 8 + hist::BUCKETS * 4);

// Cells of a probe's counter row.
/// An event for the ring buffer found it full.
pub const CTR_EVENTS_LOST: usize = 0;
/// An operation could not be tracked (its in-flight table slot was taken).
pub const CTR_INFLIGHT_DROPPED: usize = 1;
/// A tracepoint field could not be read (bad offset): a bug, surfaced instead of hidden.
pub const CTR_READ_ERRORS: usize = 2;
/// The first counter cell a probe defines for itself (counters live in the `u64` head).
pub const CTR_PROBE0: usize = 3;
/// Counter cells of a counter row.
pub const CTRS: usize = HEAD;

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
pub const CGROUP: Block = RUNQ.then(probes::cgroup::ROWS);
/// Rows per CPU slice.
pub const ROWS: usize = CGROUP.end();

// ---- the probes' row indexes (a probe with few keys in use among many: one line here) ----
pub const SYSCALL_INDEX: Index = Index::first(SYSCALL, probes::syscall::MAX_SYSCALLS);
pub const DISK_INDEX: Index = SYSCALL_INDEX.then(DISK, probes::disk::KEYS);
/// First cell of the cgroup index (its own layout: `probes::cgroup`).
pub const CGROUP_INDEX: usize = DISK_INDEX.end();
/// `u64` cells of the ROW_INDEX map.
pub const INDEX_CELLS: usize = CGROUP_INDEX + probes::cgroup::INDEX_CELLS;

/// A block's rows claimed on first sight of a key: key → histogram row, in the shared
/// ROW_INDEX array (not per CPU: read by every CPU, written only on a first sight).
///
/// Cells from [`Index::start`]: the claim counter (alone in its cache line, so claims never
/// dirty the line the hot path reads), then one cell per key: 0 = not seen yet, [`CLAIMING`] =
/// a CPU is claiming it right now, else 1 + the block's histogram row.
///
/// Claiming: a compare-and-swap of the key's cell from 0 to [`CLAIMING`] elects one CPU per key,
/// which takes the next row with a fetch-add on the counter and stores it. After the first
/// sight a key costs one plain read of a line that every CPU shares and nobody writes: no atomics
/// on the hot path. The block's last histogram row is the catch-all ([`Index::other`]): keys
/// first seen once every other row is taken map to it for good, and a sample whose key another
/// CPU is claiming at that very instant lands there too. Its count is the part not resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Index {
    pub block: Block,
    /// Keys `0..keys` (e.g. syscall numbers).
    pub keys: usize,
    /// First cell in ROW_INDEX.
    pub start: usize,
}

/// A key's index cell while a CPU claims a row for it.
pub const CLAIMING: u64 = u64::MAX;

impl Index {
    pub const fn first(block: Block, keys: usize) -> Index {
        assert!(
            block.hist_rows() >= 2,
            "an indexed block needs a catch-all row"
        );
        Index {
            block,
            keys,
            start: 0,
        }
    }

    /// The index right after this one in ROW_INDEX.
    pub const fn then(self, block: Block, keys: usize) -> Index {
        Index {
            start: self.end(),
            ..Index::first(block, keys)
        }
    }

    /// One past its last cell (cache-line aligned).
    pub const fn end(self) -> usize {
        self.start + HEAD + self.keys.div_ceil(HEAD) * HEAD
    }

    /// Cell of the claim counter.
    pub const fn counter(self) -> usize {
        self.start
    }

    /// Cell of `key` (< `keys`).
    #[inline(always)]
    pub const fn cell(self, key: usize) -> usize {
        self.start + HEAD + key
    }

    /// Rows keys can claim: the histogram rows but the catch-all.
    pub const fn claimable(self) -> u64 {
        (self.block.hist_rows() - 1) as u64
    }

    /// The catch-all's histogram row (in the block).
    #[inline(always)]
    pub const fn other(self) -> usize {
        self.block.hist_rows() - 1
    }

    /// The histogram row (in the block) a key's cell value names; `None` when not claimed.
    #[inline(always)]
    pub const fn row_of(self, v: u64) -> Option<usize> {
        if v == 0 || v == CLAIMING {
            None
        } else if v > self.other() as u64 {
            Some(self.other())
        } else {
            Some((v - 1) as usize)
        }
    }
}

/// Kernel map bytes per CPU (the histogram table), and those that do not grow with CPUs (the
/// row index, in-flight tables, ring buffer), for `ncpus` possible CPUs: what `check` prints and
/// a test holds. `fixed` is the caller's measure of the maps besides HIST.
pub const fn projected_bytes(ncpus: usize, fixed: usize) -> usize {
    ncpus * CPU_BYTES + fixed
}

/// Bytes per CPU of the histogram table.
pub const CPU_BYTES: usize = ROWS * ROW_BYTES;

/// One row, the value type of the HIST array (so one lookup yields a whole row).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Row {
    pub head: [u64; HEAD],
    pub buckets: [u32; hist::BUCKETS],
}

#[cfg(feature = "user")]
// SAFETY: plain u64s, no padding.
unsafe impl aya::Pod for Row {}

/// Array index of `row` in `cpu`'s slice.
#[inline(always)]
pub const fn row_index(cpu: usize, row: usize) -> usize {
    cpu * ROWS + row
}

/// Byte offset of `row` of `cpu` from the start of the table.
#[inline(always)]
pub const fn row_offset(cpu: usize, row: usize) -> usize {
    row_index(cpu, row) * ROW_BYTES
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
        assert_eq!(CGROUP.start, RUNQ.end());
        assert_eq!(ROWS, CGROUP.end());
        assert_eq!(SYSCALL.counters(), DISK.start - 1);
        assert_eq!(SYSCALL_INDEX.start, 0);
        assert_eq!(DISK_INDEX.start, SYSCALL_INDEX.end());
        assert!(SYSCALL_INDEX.cell(SYSCALL_INDEX.keys - 1) < DISK_INDEX.start);
        assert!(DISK_INDEX.cell(DISK_INDEX.keys - 1) < INDEX_CELLS);
        assert_eq!(INDEX_CELLS % HEAD, 0);
    }

    #[test]
    fn index_cells_name_rows_of_the_block() {
        let ix = SYSCALL_INDEX;
        assert_eq!(ix.row_of(0), None);
        assert_eq!(ix.row_of(CLAIMING), None);
        assert_eq!(ix.row_of(1), Some(0));
        assert_eq!(ix.row_of(ix.claimable()), Some(ix.claimable() as usize - 1));
        // Past the claimable rows: the catch-all, never another block's row.
        assert_eq!(ix.row_of(ix.claimable() + 1), Some(ix.other()));
        assert_eq!(ix.row_of(1 << 40), Some(ix.other()));
        assert!(ix.other() < ix.block.hist_rows());
    }
}
