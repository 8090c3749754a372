//! Run-queue latency: wake-up (or preemption) to running, host-wide, as BTF tracepoints
//! (preferred) or classic ones (contract: `agent_common::probes::runq`).

use agent_common::{
    EventKind,
    event::{EventBudget, RUNQ_PREEMPTED, RUNQ_WOKEN},
    layout::{self, RUNQ},
    probes::runq::{
        self, CTR_EVENTS_LIMITED, INFLIGHT_ENTRIES, ROW_LATENCY, RunqBtf, RunqInflight,
        RunqTpOffsets, STALE_NS, TASK_REPORT_MAX,
    },
};
use aya_ebpf::{
    Global,
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, PerCpuArray},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::shared::{
    config, count, emit, field, kload, now_ns, record, record_head, within_budget,
};

#[map]
static RUNQ_INFLIGHT: Array<RunqInflight> = Array::with_max_entries(INFLIGHT_ENTRIES, 0);
#[map]
static RUNQ_EV_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static RUNQ_TP: Global<RunqTpOffsets> = Global::new(RunqTpOffsets::UNSET);
#[unsafe(no_mangle)]
static RUNQ_BTF: Global<RunqBtf> = Global::new(RunqBtf::UNSET);

#[inline(always)]
fn slot(tid: u32) -> Option<&'static mut RunqInflight> {
    let p = RUNQ_INFLIGHT.get_ptr_mut(RunqInflight::slot(tid) & (INFLIGHT_ENTRIES - 1))?;
    // SAFETY: a valid array element. Two CPUs touching one slot at once (a wakeup racing a
    // switch of another thread hashed there) lose at most one sample.
    Some(unsafe { &mut *p })
}

/// `tid` became runnable now: it waits from here until switched in. Each wakeup restarts the
/// wait (as runqlat): a task woken while still on its CPU (about to sleep) never waits in the
/// queue, and its next real wakeup must not inherit that time.
#[inline(always)]
fn enqueue(tid: u32, why: u32) {
    // The idle task never waits.
    if tid == 0 {
        return;
    }
    let Some(s) = slot(tid) else { return };
    let now = now_ns();
    if s.start_ns != 0 && s.tid != tid && now.saturating_sub(s.start_ns) < STALE_NS {
        count(RUNQ, layout::CTR_INFLIGHT_DROPPED, 1);
    }
    *s = RunqInflight {
        start_ns: now,
        tid,
        why,
    };
}

/// `tid` is switched in: its wait ends. Returns the wait and how it began (for its cgroup, and
/// for an event naming the task when the wait is at least the slow threshold: [`is_slow`]).
#[inline(always)]
fn dequeue(tid: u32) -> Option<(u64, u32)> {
    if tid == 0 {
        return None;
    }
    let s = slot(tid)?;
    if s.start_ns == 0 || s.tid != tid {
        return None;
    }
    let delta = now_ns().saturating_sub(s.start_ns);
    s.start_ns = 0;
    record(runq::row(ROW_LATENCY), delta, 0);
    Some((delta, s.why))
}

/// A wait long enough to be sent one by one.
#[inline(always)]
fn is_slow(wait: u64) -> bool {
    wait >= config().slow_runq_ns
}

/// A wait over the threshold: its event, within this CPU's budget (a saturated host has many
/// such waits). Out of line, so the switch's common path stays small.
#[inline(never)]
fn slow_wait(wait: u64, tgid: u32, tid: u32, comm: &[u8; 16], why: u32) {
    if !within_budget(&RUNQ_EV_BUDGET, RUNQ, CTR_EVENTS_LIMITED) {
        return;
    }
    emit(EventKind::RunqWait, tgid, tid, *comm, wait, 0, why, 0, RUNQ);
}

// ---- classic tracepoints ----

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    let _ = try_wakeup(&ctx, RUNQ_TP.load().wakeup_pid);
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    let _ = try_wakeup(&ctx, RUNQ_TP.load().wakeup_new_pid);
    0
}

#[inline(always)]
fn try_wakeup(ctx: &TracePointContext, pid_off: u16) -> Option<()> {
    let head: [u8; 32] = record_head(ctx, RUNQ)?;
    let pid: u32 = field(ctx, &head, pid_off, RUNQ)?;
    enqueue(pid, RUNQ_WOKEN);
    Some(())
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let _ = try_switch(&ctx);
    0
}

#[inline(always)]
fn try_switch(ctx: &TracePointContext) -> Option<()> {
    let off = RUNQ_TP.load();
    let head: [u8; 64] = record_head(ctx, RUNQ)?;
    let prev: u32 = field(ctx, &head, off.prev_pid, RUNQ)?;
    let state: u64 = field(ctx, &head, off.prev_state, RUNQ)?;
    let next: u32 = field(ctx, &head, off.next_pid, RUNQ)?;
    // Still runnable when switched out: preempted (reported as TASK_REPORT_MAX) or yielding
    // (TASK_RUNNING, 0).
    if state == 0 || state == TASK_REPORT_MAX {
        enqueue(prev, RUNQ_PREEMPTED);
    }
    if let Some((wait, why)) = dequeue(next)
        && is_slow(wait)
    {
        // The classic record has the thread id only: it stands for the process.
        let comm: [u8; 16] = field(ctx, &head, off.next_comm, RUNQ).unwrap_or([0; 16]);
        slow_wait(wait, next, next, &comm, why);
    }
    Some(())
}

// ---- preferred: the same three as BTF tracepoints ----

#[inline(always)]
fn task_tid(task: *const u8) -> u32 {
    if task.is_null() {
        return 0;
    }
    kload(task, RUNQ_BTF.load().task_pid)
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn btf_sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    enqueue(task_tid(ctx.arg(0)), RUNQ_WOKEN);
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn btf_sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    enqueue(task_tid(ctx.arg(0)), RUNQ_WOKEN);
    0
}

/// `sched_switch(bool preempt, prev, next, unsigned int prev_state)` (prev_state an argument
/// since Linux 5.18; older kernels refuse this program and the classic set serves).
#[btf_tracepoint(function = "sched_switch")]
pub fn btf_sched_switch(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let state: u64 = ctx.arg(3);
    if preempt & 0xff != 0 || state as u32 == 0 {
        enqueue(task_tid(prev), RUNQ_PREEMPTED);
    }
    let tid = task_tid(next);
    let Some((wait, why)) = dequeue(tid) else {
        return 0;
    };
    // Only here is the task itself at hand (the classic tracepoints give its pid alone).
    crate::cgroup::runq(next, wait);
    if is_slow(wait) {
        let o = RUNQ_BTF.load();
        let tgid: u32 = kload(next, o.task_tgid);
        let comm: [u8; 16] = kload(next, o.task_comm);
        slow_wait(wait, tgid, tid, &comm, why);
    }
    0
}
