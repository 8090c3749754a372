//! Syscall latency: raw tracepoints sys_enter / sys_exit (contract:
//! `agent_common::probes::syscall`).

use agent_common::{
    EventKind, layout,
    probes::syscall::{INFLIGHT_ENTRIES, InflightTable, MAX_SYSCALLS, OWNER_NR_MASK, SysInflight},
};
use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use aya_log_ebpf::debug;

use crate::shared::{config, count, emit, indexed_row, now_ns, record, selected};

#[unsafe(no_mangle)]
static mut SYS_INFLIGHT: InflightTable = InflightTable::EMPTY;

// Syscall numbers that never return (set by userspace for this architecture).
#[unsafe(no_mangle)]
static NR_EXIT: Global<i64> = Global::new(-1);
#[unsafe(no_mangle)]
static NR_EXIT_GROUP: Global<i64> = Global::new(-1);

/// The task's in-flight slot.
#[inline(always)]
fn slot(regs: u64) -> &'static mut SysInflight {
    // The mask proves the index in range to the verifier (`slot` is below the size already).
    let i = SysInflight::slot(regs) as usize & (INFLIGHT_ENTRIES as usize - 1);
    // SAFETY: an element of the table. Two CPUs may hit one slot (a hash collision), which at
    // worst loses or mixes one sample: the owner check below tells, and the loss is counted.
    unsafe { &mut *(&raw mut SYS_INFLIGHT.0).cast::<SysInflight>().add(i) }
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let _ = try_sys_enter(&ctx);
    0
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) -> Option<()> {
    let cfg = config();
    // The filters are the only readers of the tgid and cgroup here: no helper call when off.
    if cfg.filter_tgid != 0 || cfg.filter_comm_on != 0 || cfg.filter_cgroup != 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if !selected(cfg, tgid) {
            return None;
        }
    }
    let regs: u64 = ctx.arg(0);
    let nr: i64 = ctx.arg(1);
    if nr >= MAX_SYSCALLS as i64 {
        // Not a syscall of this architecture's table (ENOSYS): said at debug level only, so at
        // the default level the verifier drops this call (the level is a load-time constant).
        debug!(
            ctx,
            "syscall {} is beyond the agent's table of {}: not timed", nr, MAX_SYSCALLS
        );
        return None;
    }
    // exit/exit_group never reach sys_exit: their entries would only go stale.
    if nr < 0 || nr == NR_EXIT.load() || nr == NR_EXIT_GROUP.load() {
        return None;
    }
    let slot = slot(regs);
    let owner = SysInflight::owner(regs, nr as u64);
    if slot.start_ns != 0 && (slot.owner ^ owner) & !OWNER_NR_MASK != 0 {
        // Another live thread owns this slot: its sample is lost, and counted.
        count(layout::SYSCALL, layout::CTR_INFLIGHT_DROPPED, 1);
    }
    slot.owner = owner;
    slot.start_ns = now_ns();
    Some(())
}

/// A syscall over the threshold: its event. Out of line (a BPF-to-BPF call), so the common
/// path's image stays small: two helper calls and the event's construction are most of the
/// program's instructions, and run for a few calls per second at most.
#[inline(never)]
fn slow_syscall(delta: u64, nr: u32, ret: i64) {
    let id = bpf_get_current_pid_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    emit(
        EventKind::SlowSyscall,
        (id >> 32) as u32,
        id as u32,
        comm,
        delta,
        nr,
        0,
        ret,
        layout::SYSCALL,
    );
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let _ = try_sys_exit(&ctx);
    0
}

#[inline(always)]
fn try_sys_exit(ctx: &RawTracePointContext) -> Option<()> {
    let regs: u64 = ctx.arg(0);
    let slot = slot(regs);
    let start = slot.start_ns;
    let owner = slot.owner;
    // Not ours (filtered out, started before attach, or taken over by a colliding thread).
    if start == 0 || (owner ^ regs) & !OWNER_NR_MASK != 0 {
        return None;
    }
    slot.start_ns = 0;
    let delta = now_ns().saturating_sub(start);
    let ret: i64 = ctx.arg(1);
    let nr = (owner & OWNER_NR_MASK) as u32;
    let nr_idx = nr as usize;
    if nr_idx >= MAX_SYSCALLS {
        return None;
    }
    record(
        indexed_row(layout::SYSCALL_INDEX, nr_idx)?,
        delta,
        (ret < 0) as u64,
    );
    crate::cgroup::syscall(delta, ret < 0);
    if delta >= config().slow_syscall_ns {
        slow_syscall(delta, nr, ret);
    }
    Some(())
}
