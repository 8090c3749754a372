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

use crate::hist;

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

/// Syscall numbers at or above this are not tracked (x86_64 and arm64 stay below 512).
pub const MAX_SYSCALLS: usize = 512;
/// Block devices with their own rows; the last slot gathers every device beyond the others.
pub const DISK_SLOTS: usize = 32;
pub const DISK_OPS: usize = 3;
pub const DISK_OP_READ: u32 = 0;
pub const DISK_OP_WRITE: u32 = 1;
/// Flush, discard, and anything that is neither read nor write.
pub const DISK_OP_OTHER: u32 = 2;

pub const ROW_SYSCALL0: usize = 0;
pub const ROW_DISK0: usize = ROW_SYSCALL0 + MAX_SYSCALLS;
pub const ROW_TCP_RTT: usize = ROW_DISK0 + DISK_SLOTS * DISK_OPS;
pub const ROW_TCP_CONNECT: usize = ROW_TCP_RTT + 1;
/// A row of plain per-CPU counters, indexed by `CTR_*` (buckets unused).
pub const ROW_COUNTERS: usize = ROW_TCP_CONNECT + 1;
pub const ROWS: usize = ROW_COUNTERS + 1;

/// u64 cells per CPU slice.
pub const CPU_STRIDE: usize = ROWS * ROW_LEN;
/// Bytes per CPU of the histogram table (about 1.3 MiB).
pub const CPU_BYTES: usize = CPU_STRIDE * 8;

// Counter cells of ROW_COUNTERS.
/// sys_enter overwrote a live entry of another thread (in-flight table collision).
pub const CTR_SYS_INFLIGHT_DROPPED: usize = 0;
pub const CTR_SYS_EVENTS_LOST: usize = 1;
/// Block request could not be tracked (in-flight table full).
pub const CTR_DISK_INFLIGHT_DROPPED: usize = 2;
pub const CTR_DISK_EVENTS_LOST: usize = 3;
pub const CTR_TCP_INFLIGHT_DROPPED: usize = 4;
pub const CTR_TCP_EVENTS_LOST: usize = 5;
pub const CTR_TCP_CONNECTS: usize = 6;
pub const CTR_TCP_ACCEPTS: usize = 7;
pub const CTR_TCP_RETRANSMITS: usize = 8;
pub const CTR_TCP_RESETS: usize = 9;
/// A tracepoint field could not be read (bad offset): a bug, surfaced instead of hidden.
pub const CTR_READ_ERRORS: usize = 10;
pub const CTR_COUNT: usize = 11;
const _: () = assert!(CTR_COUNT <= ROW_LEN);

/// One row, the value type of the HIST array (so one lookup yields a whole row).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Row {
    pub cells: [u64; ROW_LEN],
}

#[cfg(feature = "user")]
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

/// Row of a disk slot and op.
#[inline(always)]
pub const fn disk_row(slot: usize, op: u32) -> usize {
    ROW_DISK0 + slot * DISK_OPS + op as usize
}

/// Number of entries (rows) of the HIST map for `ncpus` possible CPUs.
pub const fn hist_entries(ncpus: usize) -> usize {
    ncpus * ROWS
}
