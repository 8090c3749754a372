//! The benchmark's floor programs (not a probe: `ebpf-agent floor` attaches them so the
//! benchmark can measure what merely running a program on every syscall costs).

/// Empty programs on sys_enter and sys_exit.
pub const ENTER: &str = "floor_enter";
pub const EXIT: &str = "floor_exit";
/// The same, reading the clock once each (what any latency tracer must do).
pub const CLOCK_ENTER: &str = "floor_clock_enter";
pub const CLOCK_EXIT: &str = "floor_clock_exit";

pub const PROGRAMS: &[&str] = &[ENTER, EXIT, CLOCK_ENTER, CLOCK_EXIT];
