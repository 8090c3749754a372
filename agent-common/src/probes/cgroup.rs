//! Per-cgroup attribution: the syscall, disk, tcp and runq programs also add each event to the
//! row of its cgroup (the task's cgroup v2 id, as `bpf_get_current_cgroup_id` gives it), when
//! the agent loaded them with [`GLOBAL_ON`] set (a load-time constant: off, the verifier drops
//! the code and it costs nothing).
//!
//! Rows: [`SLOTS`] cgroups, claimed on first sight of a cgroup id through the cgroup index in
//! ROW_INDEX (see [`cell_id`]), then the overflow row (cgroups first seen once the slots are
//! taken, and a sample whose slot another CPU is claiming at that instant), then the counter
//! row. Userspace gives the slots of deleted cgroups back (see [`CELL_TAKEN`]), so pod churn
//! does not push new cgroups into the overflow row (`cgroup=other`) once [`SLOTS`] distinct
//! ones were seen; only more than [`SLOTS`] live at once do.
//!
//! A cgroup row reuses the table's [`crate::layout::Row`] with its own cells (no bucket masks:
//! userspace reads a changed cgroup row whole): the head's `u64`s are [`CELL_EVENTS`] ..
//! [`CELL_TCP_CONNECTS`], the `u32` buckets hold three coarse histograms ([`HIST_SYSCALL`],
//! [`HIST_DISK`], [`HIST_RUNQ`], [`CG_BUCKETS`] buckets each) and the disk ops per op
//! ([`OPS_DISK`]). Coarse buckets are the host's (`crate::hist`) shifted right by
//! [`COARSE_SHIFT`]: 2 per power of two instead of 8, so a value is known within 50% (within
//! 25% at the bucket's midpoint): memory keeps three histograms per cgroup within one row.

use crate::{
    hist, layout,
    maps::{GlobalSpec, MapSpec},
};

/// Cgroups with a row of their own (see the module's doc for what comes after): 40 rows of
/// 1152 bytes per CPU keep the agent within 256 KiB of kernel maps per CPU at 256 CPUs.
pub const SLOTS: usize = 40;
/// The slots' rows, the overflow row, then the counter row.
pub const ROWS: usize = SLOTS + 2;
/// Histogram row (in the block) of the overflow.
pub const OVERFLOW: usize = SLOTS;

// Head cells of a cgroup row (u64, cumulative since load).
/// Disk completions, runq waits and tcp connects recorded in the row (with [`CELL_SYS_COUNT`],
/// what tells userspace the row changed).
pub const CELL_EVENTS: usize = 0;
pub const CELL_SYS_COUNT: usize = 1;
pub const CELL_SYS_TIME_NS: usize = 2;
pub const CELL_SYS_ERRORS: usize = 3;
/// Disk bytes, one cell per op (`disk::OP_*`) from here.
pub const CELL_DISK_BYTES: usize = 4;
pub const CELL_TCP_CONNECTS: usize = 7;
const _: () = assert!(CELL_DISK_BYTES + super::disk::OPS == CELL_TCP_CONNECTS);
const _: () = assert!(CELL_TCP_CONNECTS < layout::HEAD);

/// Coarse bucket = host bucket >> this.
pub const COARSE_SHIFT: u32 = 2;
pub const CG_BUCKETS: usize = hist::BUCKETS >> COARSE_SHIFT;
/// First `u32` bucket cell of each histogram, then of the disk ops per op.
pub const HIST_SYSCALL: usize = 0;
pub const HIST_DISK: usize = CG_BUCKETS;
pub const HIST_RUNQ: usize = 2 * CG_BUCKETS;
pub const OPS_DISK: usize = 3 * CG_BUCKETS;
const _: () = assert!(OPS_DISK + super::disk::OPS <= hist::BUCKETS);

/// Coarse bucket of a value in ns.
#[inline(always)]
pub fn coarse_bucket(v: u64) -> usize {
    hist::bucket(v) >> COARSE_SHIFT
}

/// The host's buckets a coarse bucket spans: `[lo, hi)` of host bucket indexes.
pub const fn fine_range(coarse: usize) -> (usize, usize) {
    (coarse << COARSE_SHIFT, (coarse + 1) << COARSE_SHIFT)
}

// Counter row cells (after the standard ones).
/// Samples that went to the overflow row because every slot was taken or the index was full.
pub const CTR_OVERFLOW: usize = layout::CTR_PROBE0;

// ---- the cgroup index, in ROW_INDEX from `layout::CGROUP_INDEX` ----
//
// Cells: the taken-slots bitmap (alone in its cache line), then [`HASH_ENTRIES`] entries of
// two cells, open-addressed by a hash of the cgroup id ([`home`], probed [`PROBES`] entries
// on): the cgroup id (0 = free; claimed by compare-and-swap from 0) and its slot as a
// `layout::Index` cell holds a row (0 = not yet, `layout::CLAIMING` = being claimed, else
// 1 + slot; past the slots, the overflow).
//
// Release (userspace, for a cgroup deleted from the hierarchy and idle for an interval): its
// slot cell to 0, its row's baseline re-read, its bit cleared, its id cell to 0, in this
// order, so that the slot is free before the entry is and no new cgroup can find the old
// slot in a reclaimed entry.

/// Entries of the id hash table (a power of two, a few times [`SLOTS`] so probes are short).
pub const HASH_BITS: u32 = 8;
pub const HASH_ENTRIES: usize = 1 << HASH_BITS;
/// Entries probed from a cgroup's home before it goes to the overflow.
pub const PROBES: usize = 4;
/// Cells of the cgroup index.
pub const INDEX_CELLS: usize = layout::HEAD + 2 * HASH_ENTRIES;

/// Cell (from the index's start) of the taken-slots bitmap: bit `s` set = slot `s` belongs to
/// an entry. The kernel sets the lowest clear bit by compare-and-swap on a first sight;
/// userspace clears a released slot's bit (an atomic `and` on the mapped cell).
pub const CELL_TAKEN: usize = 0;
/// The bits of [`CELL_TAKEN`] that are slots.
pub const ALL_SLOTS: u64 = (1 << SLOTS) - 1;
const _: () = assert!(SLOTS < 64);

/// Index of the one bit set in `bit` (a power of two), branchless: the kernel side has no
/// count-trailing-zeros instruction.
#[inline(always)]
pub const fn bit_index(bit: u64) -> u64 {
    ((bit & 0xFFFF_FFFF_0000_0000 != 0) as u64) << 5
        | ((bit & 0xFFFF_0000_FFFF_0000 != 0) as u64) << 4
        | ((bit & 0xFF00_FF00_FF00_FF00 != 0) as u64) << 3
        | ((bit & 0xF0F0_F0F0_F0F0_F0F0 != 0) as u64) << 2
        | ((bit & 0xCCCC_CCCC_CCCC_CCCC != 0) as u64) << 1
        | (bit & 0xAAAA_AAAA_AAAA_AAAA != 0) as u64
}
/// Cell of entry `e`'s cgroup id.
#[inline(always)]
pub const fn cell_id(e: usize) -> usize {
    layout::HEAD + 2 * e
}
/// Cell of entry `e`'s slot.
#[inline(always)]
pub const fn cell_slot(e: usize) -> usize {
    cell_id(e) + 1
}

/// Home entry of a cgroup id (Fibonacci hashing: ids are inode numbers, often consecutive).
#[inline(always)]
pub fn home(id: u64) -> usize {
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - HASH_BITS)) as usize
}

/// Load-time global (`u32`): 1 = attribute events to cgroups.
pub const GLOBAL_ON: &str = "CGROUP_ON";
/// Load-time global holding [`CgroupBtf`].
pub const GLOBAL_BTF: &str = "CGROUP_BTF";

/// How to go from a `task_struct` to its cgroup v2 id (`task->cgroups->dfl_cgrp->kn->id`),
/// offsets from the kernel's BTF: the run-queue wait belongs to the woken task, not to the
/// task running when it ends. `on` = 0 when the BTF lacks one of them (runq waits are then not
/// attributed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupBtf {
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    pub on: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CgroupBtf>() == 24);

impl CgroupBtf {
    pub const UNSET: CgroupBtf = CgroupBtf {
        task_cgroups: 0,
        css_set_dfl_cgrp: 0,
        cgroup_kn: 0,
        kn_id: 0,
        on: 0,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
// SAFETY: plain u32s, no padding.
unsafe impl aya::Pod for CgroupBtf {}

pub const MAPS: &[MapSpec] = &[];
pub const GLOBALS: &[GlobalSpec] = &[
    GlobalSpec {
        name: GLOBAL_ON,
        size: 4,
    },
    GlobalSpec {
        name: GLOBAL_BTF,
        size: size_of::<CgroupBtf>(),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_index_is_trailing_zeros() {
        for i in 0..64 {
            assert_eq!(bit_index(1 << i), i as u64);
        }
        assert_eq!(ALL_SLOTS.count_ones() as usize, SLOTS);
    }

    #[test]
    fn coarse_buckets_cover_the_fine_ones() {
        for v in [0u64, 7, 8, 100, 1_000, 123_456, 1 << 35, u64::MAX] {
            let (lo, hi) = fine_range(coarse_bucket(v));
            assert!((lo..hi).contains(&hist::bucket(v)), "v={v}");
        }
        assert_eq!(coarse_bucket(u64::MAX), CG_BUCKETS - 1);
    }

    #[test]
    fn index_cells_fit() {
        assert!(cell_slot(HASH_ENTRIES - 1) < INDEX_CELLS);
        assert!(home(u64::MAX) < HASH_ENTRIES && home(1) < HASH_ENTRIES);
    }
}
