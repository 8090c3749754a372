//! Run-queue latency: the time a task waits runnable before it runs (as BCC's `runqlat`),
//! host-wide. A task is queued at `sched_wakeup` / `sched_wakeup_new`, or at `sched_switch`
//! when it is switched out still runnable (preempted); it stops waiting when `sched_switch`
//! switches it in. BTF tracepoints where the kernel's BTF allows (the task's pid read at an
//! offset from the BTF), else classic ones (record fields at offsets from tracefs).

use crate::{
    layout,
    maps::{GlobalSpec, MapSpec},
};

/// The one histogram row: every wait of every task on every CPU.
pub const ROW_LATENCY: usize = 0;
/// One histogram row, then the counter row.
pub const ROWS: usize = 2;

/// Slow waits over the events' budget (`agent_common::event::EventBudget`), not sent.
pub const CTR_EVENTS_LIMITED: usize = layout::CTR_PROBE0;

/// Table row of one of the probe's histogram rows.
#[inline(always)]
pub const fn row(i: usize) -> usize {
    layout::RUNQ.row(i)
}

pub mod progs {
    pub const SCHED_WAKEUP: &str = "sched_wakeup";
    pub const SCHED_WAKEUP_NEW: &str = "sched_wakeup_new";
    pub const SCHED_SWITCH: &str = "sched_switch";
    /// The same three as BTF tracepoints (preferred: no record built per event).
    pub const BTF_WAKEUP: &str = "btf_sched_wakeup";
    pub const BTF_WAKEUP_NEW: &str = "btf_sched_wakeup_new";
    pub const BTF_SWITCH: &str = "btf_sched_switch";
}

/// Queued tasks: an array slot per thread id hash ([`RunqInflight::slot`]).
pub const MAP_INFLIGHT: &str = "RUNQ_INFLIGHT";
/// A power of two. Runnable-but-waiting tasks number in the hundreds even on a saturated
/// host; 8192 × 16 bytes = 128 KiB, shared by all CPUs.
pub const INFLIGHT_BITS: u32 = 13;
pub const INFLIGHT_ENTRIES: u32 = 1 << INFLIGHT_BITS;
/// Load-time global holding [`RunqTpOffsets`].
pub const GLOBAL_TP: &str = "RUNQ_TP";
/// Load-time global holding [`RunqBtf`].
pub const GLOBAL_BTF: &str = "RUNQ_BTF";
/// Per-CPU budget of slow-wait events (one `EventBudget`).
pub const MAP_BUDGET: &str = "RUNQ_EV_BUDGET";

/// A slot holding another thread for longer than this is taken over silently (that thread
/// exited or was migrated without being seen to run); a younger one counts as in-flight
/// dropped.
pub const STALE_NS: u64 = 10_000_000_000;

/// The `prev_state` a classic `sched_switch` reports for a preempted task
/// (`TASK_REPORT_MAX`, stable since Linux 4.14); 0 is `TASK_RUNNING` (a yield).
pub const TASK_REPORT_MAX: u64 = 0x100;

pub const MAPS: &[MapSpec] = &[
    MapSpec {
        name: MAP_INFLIGHT,
        value_size: size_of::<RunqInflight>(),
        max_entries: INFLIGHT_ENTRIES,
    },
    MapSpec {
        name: MAP_BUDGET,
        value_size: size_of::<crate::event::EventBudget>(),
        max_entries: 1,
    },
];
pub const GLOBALS: &[GlobalSpec] = &[
    GlobalSpec {
        name: GLOBAL_TP,
        size: size_of::<RunqTpOffsets>(),
    },
    GlobalSpec {
        name: GLOBAL_BTF,
        size: size_of::<RunqBtf>(),
    },
];

/// A queued task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunqInflight {
    /// `bpf_ktime_get_ns` when it became runnable; 0 = free.
    pub start_ns: u64,
    /// Its thread id (the kernel's `pid`), to tell slot sharers apart.
    pub tid: u32,
    /// How it became runnable: `event::RUNQ_WOKEN` or `event::RUNQ_PREEMPTED` (for its
    /// slow-wait event).
    pub why: u32,
}
const _: () = assert!(size_of::<RunqInflight>() == 16);

impl RunqInflight {
    /// A thread's slot: its id hashed over the table (ids are dense, so spread them).
    #[inline(always)]
    pub fn slot(tid: u32) -> u32 {
        ((u64::from(tid)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - INFLIGHT_BITS)) as u32
    }
}

/// Byte offsets of the classic tracepoints' record fields, read from tracefs `format` files at
/// load time. An offset of [`MISSING`] marks a field the kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunqTpOffsets {
    /// `sched:sched_wakeup`'s and `sched:sched_wakeup_new`'s `pid`.
    pub wakeup_pid: u16,
    pub wakeup_new_pid: u16,
    // sched:sched_switch
    pub prev_pid: u16,
    pub prev_state: u16,
    pub next_pid: u16,
    /// `sched:sched_switch`'s `next_comm` (char[16]): who waited, for a slow-wait event.
    pub next_comm: u16,
    pub _pad: [u16; 2],
}
const _: () = assert!(size_of::<RunqTpOffsets>() == 16);

/// A tracepoint field the kernel lacks.
pub const MISSING: u16 = u16::MAX;

impl RunqTpOffsets {
    pub const UNSET: Self = Self {
        wakeup_pid: MISSING,
        wakeup_new_pid: MISSING,
        prev_pid: MISSING,
        prev_state: MISSING,
        next_pid: MISSING,
        next_comm: MISSING,
        _pad: [0; 2],
    };
}

/// What the BTF programs read of `struct task_struct`: byte offsets from the kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunqBtf {
    /// `task_struct.pid` (pid_t: the thread id).
    pub task_pid: u32,
    /// `task_struct.tgid` (pid_t: the process id) and `comm` (char[16]): who waited, for a
    /// slow-wait event.
    pub task_tgid: u32,
    pub task_comm: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<RunqBtf>() == 16);

impl RunqBtf {
    pub const UNSET: Self = Self {
        task_pid: 0,
        task_tgid: 0,
        task_comm: 0,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers with explicit padding fields.
    unsafe impl aya::Pod for super::RunqInflight {}
    // SAFETY: #[repr(C)], integers with explicit padding fields.
    unsafe impl aya::Pod for super::RunqTpOffsets {}
    // SAFETY: #[repr(C)], integers with explicit padding fields.
    unsafe impl aya::Pod for super::RunqBtf {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn consecutive_threads_spread_over_slots() {
        let seen: std::collections::HashSet<u32> = (1000..1512).map(RunqInflight::slot).collect();
        assert!(seen.iter().all(|&s| s < INFLIGHT_ENTRIES));
        assert!(seen.len() > 490, "{} distinct slots", seen.len());
    }
}
