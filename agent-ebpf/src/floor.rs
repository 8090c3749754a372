//! The benchmark's floor: empty programs on the syscall probe's hooks. Never attached by the
//! agent; `ebpf-agent floor` attaches them so the overhead benchmark can measure what merely
//! running a program on every syscall costs (names: `agent_common::probes::floor`).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::shared::now_ns;

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

// The clock floor: the same, plus the one thing any latency tracer must do, read the clock at
// entry and at exit (`ebpf-agent floor --clock`).

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_clock_enter(_ctx: RawTracePointContext) -> i32 {
    let _ = now_ns();
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_clock_exit(_ctx: RawTracePointContext) -> i32 {
    let _ = now_ns();
    0
}
