//! Per-cgroup attribution: the syscall, disk, tcp and runq programs also add each event to the
//! row of its cgroup (the task's cgroup v2 id, as `bpf_get_current_cgroup_id` gives it), when
//! the agent loaded them with [`GLOBAL_ON`] set (a load-time constant: off, the verifier drops
//! the code and it costs nothing).
//!
//! Rows: [`SLOTS`] cgroups, claimed on first sight of a cgroup id through the cgroup index in
//! ROW_INDEX (see [`cell_id`]), then the overflow row (cgroups first seen once the slots are
//! taken, and a sample whose slot another CPU is claiming at that instant), then the counter
//! row. Slots are never given back while the programs stay loaded: a host that runs more than
//! [`SLOTS`] distinct cgroups over the agent's life sees the later ones in the overflow row
//! (`cgroup=other`), counted there.
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
// Cells: the slot claim counter (alone in its cache line), then [`HASH_ENTRIES`] entries of two
// cells, open-addressed by a hash of the cgroup id ([`home`], probed [`PROBES`] entries on):
// the cgroup id (0 = free; claimed by compare-and-swap from 0) and its slot as a
// `layout::Index` cell holds a row (0 = not yet, `layout::CLAIMING` = being claimed, else
// 1 + slot; past the slots, the overflow).

/// Entries of the id hash table (a power of two, a few times [`SLOTS`] so probes are short).
pub const HASH_BITS: u32 = 8;
pub const HASH_ENTRIES: usize = 1 << HASH_BITS;
/// Entries probed from a cgroup's home before it goes to the overflow.
pub const PROBES: usize = 4;
/// Cells of the cgroup index.
pub const INDEX_CELLS: usize = layout::HEAD + 2 * HASH_ENTRIES;

/// Cell (from the index's start) of the slot claim counter.
pub const CELL_COUNTER: usize = 0;
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
