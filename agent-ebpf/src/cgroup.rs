//! Per-cgroup attribution (contract: `agent_common::probes::cgroup`): the other probes call in
//! here with what they measured; every function is a no-op the verifier removes when the
//! agent loaded the object with `CGROUP_ON` = 0.

use agent_common::{
    layout::{self, CGROUP, CLAIMING, Row},
    probes::cgroup::{
        ALL_SLOTS, CELL_DISK_BYTES, CELL_EVENTS, CELL_SYS_COUNT, CELL_SYS_ERRORS, CELL_SYS_TIME_NS,
        CELL_TAKEN, CELL_TCP_CONNECTS, CTR_OVERFLOW, CgroupBtf, HASH_ENTRIES, HIST_DISK, HIST_RUNQ,
        HIST_SYSCALL, OPS_DISK, OVERFLOW, PROBES, bit_index, cell_id, cell_slot, coarse_bucket,
        home,
    },
};
use aya_ebpf::{Global, helpers::bpf_get_current_cgroup_id};
use core::intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg};

use crate::shared::{count, index_cell, kload, table_row};

#[unsafe(no_mangle)]
static CGROUP_ON: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CGROUP_BTF: Global<CgroupBtf> = Global::new(CgroupBtf::UNSET);

#[inline(always)]
fn on() -> bool {
    CGROUP_ON.load() != 0
}

/// The slot (histogram row in the block) of cgroup `id`, claimed on first sight; the overflow
/// when the slots or the probed entries are taken.
#[inline(always)]
fn slot_of(id: u64) -> usize {
    if id == 0 {
        return OVERFLOW;
    }
    let h = home(id);
    for i in 0..PROBES {
        let e = (h + i) & (HASH_ENTRIES - 1);
        let Some(cell) = index_cell(layout::CGROUP_INDEX + cell_id(e)) else {
            return OVERFLOW;
        };
        // SAFETY: a valid element, only ever written atomically (compare-and-swap below).
        let v = unsafe { core::ptr::read_volatile(cell) };
        if v == id {
            return slot_in(e);
        }
        if v == 0 {
            // SAFETY: as above (BPF_CMPXCHG, see `shared::claim`).
            let (old, won) = unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(cell, 0, id) };
            if won || old == id {
                return slot_in(e);
            }
        }
    }
    OVERFLOW
}

/// The slot entry `e` names, claiming one when it names none yet.
#[inline(always)]
fn slot_in(e: usize) -> usize {
    let at = layout::CGROUP_INDEX + cell_slot(e);
    let Some(cell) = index_cell(at) else {
        return OVERFLOW;
    };
    // SAFETY: as in `slot_of`.
    let v = unsafe { core::ptr::read_volatile(cell) };
    let s = match v {
        0 => claim_slot(at as u32),
        // Another CPU is claiming it right now: this sample goes to the overflow.
        CLAIMING => OVERFLOW as u64,
        v => v - 1,
    };
    (s as usize).min(OVERFLOW)
}

/// First sight of a cgroup in the entry whose slot is ROW_INDEX cell `at`: elects one CPU
/// (compare-and-swap of the cell from 0 to CLAIMING), which takes the lowest free slot of the
/// taken-slots bitmap (or the overflow when none is free or the bitmap stays contended). Out
/// of line: once per cgroup (a cell index, not a pointer, crosses the call, as in
/// `shared::claim`).
#[inline(never)]
fn claim_slot(at: u32) -> u64 {
    let Some(cell) = index_cell(at as usize) else {
        return OVERFLOW as u64;
    };
    // SAFETY: a valid element, only ever written atomically (BPF_CMPXCHG, see `shared::claim`).
    let (old, won) = unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(cell, 0, CLAIMING) };
    if !won {
        return if old == CLAIMING {
            OVERFLOW as u64
        } else {
            old.wrapping_sub(1)
        };
    }
    let mut slot = OVERFLOW as u64;
    if let Some(taken) = index_cell(layout::CGROUP_INDEX + CELL_TAKEN) {
        // SAFETY: as above (userspace clears bits with an atomic and).
        let mut b = unsafe { core::ptr::read_volatile(taken) };
        for _ in 0..CLAIM_TRIES {
            let free = !b & ALL_SLOTS;
            if free == 0 {
                break;
            }
            let bit = free & free.wrapping_neg();
            // SAFETY: as above.
            let (old, ok) =
                unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(taken, b, b | bit) };
            if ok {
                slot = bit_index(bit);
                break;
            }
            b = old;
        }
    }
    // SAFETY: as above; only the winner writes the cell from CLAIMING on (an aligned 64-bit
    // store is seen whole).
    unsafe { core::ptr::write_volatile(cell, slot + 1) };
    slot
}

/// Attempts at the bitmap before a cgroup settles for the overflow (as `shared::claim`).
const CLAIM_TRIES: u32 = 16;

/// This CPU's row of `slot` (the overflow counted).
#[inline(always)]
fn row(slot: usize) -> Option<&'static mut Row> {
    if slot >= OVERFLOW {
        count(CGROUP, CTR_OVERFLOW, 1);
    }
    table_row(CGROUP.row(slot.min(OVERFLOW)))
}

#[inline(always)]
fn bump(r: &mut Row, cell: usize) {
    // A barrier: otherwise LLVM folds the coarse bucket's `>> 2` into the byte offset's `* 4`
    // (`fine & !3`), and the verifier, tracking `fine <= 1087`, refuses the access.
    // SAFETY: reading a local.
    let cell = unsafe { core::ptr::read_volatile(&cell) };
    if let Some(b) = r.buckets.get_mut(cell) {
        // 32-bit, widened by userspace like the host's buckets.
        *b = b.wrapping_add(1);
    }
}

#[inline(always)]
fn current() -> u64 {
    // SAFETY: a helper without arguments (the current task's cgroup v2 id).
    unsafe { bpf_get_current_cgroup_id() }
}

/// A syscall of the current task ended after `delta` ns.
#[inline(always)]
pub fn syscall(delta: u64, failed: bool) {
    if !on() {
        return;
    }
    let Some(r) = row(slot_of(current())) else {
        return;
    };
    r.head[CELL_SYS_COUNT] += 1;
    r.head[CELL_SYS_TIME_NS] += delta;
    r.head[CELL_SYS_ERRORS] += failed as u64;
    bump(r, HIST_SYSCALL + coarse_bucket(delta));
}

/// The current task's slot + 1, for a record that ends later (a block request at issue); 0
/// when off.
#[inline(always)]
pub fn current_slot() -> u32 {
    if !on() {
        return 0;
    }
    slot_of(current()) as u32 + 1
}

/// A block request issued by slot `slot1 - 1` ended.
#[inline(always)]
pub fn disk(slot1: u32, op: u32, delta: u64, bytes: u32) {
    if !on() || slot1 == 0 {
        return;
    }
    let Some(r) = row(slot1 as usize - 1) else {
        return;
    };
    r.head[CELL_EVENTS] += 1;
    if let Some(b) = r.head.get_mut(CELL_DISK_BYTES + op as usize) {
        *b += bytes as u64;
    }
    bump(r, OPS_DISK + op as usize);
    bump(r, HIST_DISK + coarse_bucket(delta));
}

/// The current task starts a TCP connect.
#[inline(always)]
pub fn connect() {
    if !on() {
        return;
    }
    let Some(r) = row(slot_of(current())) else {
        return;
    };
    r.head[CELL_EVENTS] += 1;
    r.head[CELL_TCP_CONNECTS] += 1;
}

/// `task` (a BTF `task_struct` pointer) waited `delta` ns in a run queue.
#[inline(always)]
pub fn runq(task: *const u8, delta: u64) {
    let o = CGROUP_BTF.load();
    if !on() || o.on == 0 || task.is_null() {
        return;
    }
    // task->cgroups->dfl_cgrp->kn->id: what bpf_get_current_cgroup_id reads for the current one.
    let cgroups: *const u8 = kload(task, o.task_cgroups);
    if cgroups.is_null() {
        return;
    }
    let cgrp: *const u8 = kload(cgroups, o.css_set_dfl_cgrp);
    if cgrp.is_null() {
        return;
    }
    let kn: *const u8 = kload(cgrp, o.cgroup_kn);
    if kn.is_null() {
        return;
    }
    let id: u64 = kload(kn, o.kn_id);
    let Some(r) = row(slot_of(id)) else {
        return;
    };
    r.head[CELL_EVENTS] += 1;
    bump(r, HIST_RUNQ + coarse_bucket(delta));
}
