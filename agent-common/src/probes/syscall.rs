//! Syscall latency: raw tracepoints sys_enter / sys_exit, one histogram row per syscall number
//! seen (claimed on first sight through `layout::SYSCALL_INDEX`).

use crate::maps::{GlobalSpec, MapSpec};

/// Syscall numbers at or above this are not tracked (x86_64 and arm64 stay below 512).
pub const MAX_SYSCALLS: usize = 512;
/// Syscalls with a row of their own: a host calls 50-100 distinct ones; the ones first seen
/// after these are taken share the catch-all row (reported as `syscall=other`).
pub const SYSCALL_ROWS: usize = 128;
/// The syscalls' rows, the catch-all row, then the counter row.
pub const ROWS: usize = SYSCALL_ROWS + 2;

pub mod progs {
    pub const SYS_ENTER: &str = "sys_enter";
    pub const SYS_EXIT: &str = "sys_exit";
}

/// In-flight syscalls: a zero-initialised global (in the object's `.bss`), indexed by
/// [`SysInflight::slot`]. A global, not an array map: the programs reach it by its address,
/// without a map lookup (the key's round trip through the stack and a null check, about 1 ns
/// per program on every syscall). Only the kernel side reads it.
pub const GLOBAL_INFLIGHT: &str = "SYS_INFLIGHT";
/// Load-time globals: syscall numbers that never return (their entries would go stale).
pub const GLOBAL_NR_EXIT: &str = "NR_EXIT";
pub const GLOBAL_NR_EXIT_GROUP: &str = "NR_EXIT_GROUP";

/// Size of the in-flight table (a power of two). 32768 × 16 bytes = 512 KiB.
pub const INFLIGHT_BITS: u32 = 15;
pub const INFLIGHT_ENTRIES: u32 = 1 << INFLIGHT_BITS;

pub const MAPS: &[MapSpec] = &[];
pub const GLOBALS: &[GlobalSpec] = &[
    GlobalSpec {
        name: GLOBAL_INFLIGHT,
        size: size_of::<InflightTable>(),
    },
    GlobalSpec {
        name: GLOBAL_NR_EXIT,
        size: 8,
    },
    GlobalSpec {
        name: GLOBAL_NR_EXIT_GROUP,
        size: 8,
    },
];

/// In-flight syscall: written at sys_enter, consumed at sys_exit.
///
/// The slot's owner is the task's `struct pt_regs *`, the first argument of both raw
/// tracepoints: it sits at the top of the task's kernel stack, so it names the thread without a
/// helper call (`bpf_get_current_pid_tgid` costs 10-20 ns per call, a third of the budget).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysInflight {
    /// `(regs & !OWNER_NR_MASK) | nr`: two tasks' `pt_regs` are at least a kernel stack (16 KiB)
    /// apart, so the low bits are free to carry the syscall number (sys_exit does not get it).
    pub owner: u64,
    /// `bpf_ktime_get_ns` at entry; 0 = empty.
    pub start_ns: u64,
}
const _: () = assert!(size_of::<SysInflight>() == 16);

/// The in-flight table ([`GLOBAL_INFLIGHT`]), on cache lines of its own: the globals read on
/// every syscall must not share a line with slots other CPUs write.
#[repr(C, align(64))]
pub struct InflightTable(pub [SysInflight; INFLIGHT_ENTRIES as usize]);
const _: () = assert!(size_of::<InflightTable>() == 512 * 1024);

impl InflightTable {
    pub const EMPTY: Self = Self(
        [SysInflight {
            owner: 0,
            start_ns: 0,
        }; INFLIGHT_ENTRIES as usize],
    );
}

/// Bits of [`SysInflight::owner`] that hold the syscall number.
pub const OWNER_NR_MASK: u64 = 511;
const _: () = assert!(MAX_SYSCALLS as u64 <= OWNER_NR_MASK + 1);

impl SysInflight {
    /// The slot of a task (by its `pt_regs` pointer): its kernel stack's number, hashed
    /// (Fibonacci hashing) over the table.
    #[inline(always)]
    pub fn slot(regs: u64) -> u32 {
        ((regs >> 14).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - INFLIGHT_BITS)) as u32
    }

    #[inline(always)]
    pub fn owner(regs: u64, nr: u64) -> u64 {
        (regs & !OWNER_NR_MASK) | nr
    }
}

#[cfg(feature = "user")]
// SAFETY: plain integers, no padding.
unsafe impl aya::Pod for SysInflight {}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn inflight_owner_carries_the_syscall_and_slots_spread() {
        // x86-64: pt_regs 168 bytes below the top of a 16 KiB-aligned kernel stack.
        let regs = |stack: u64| 0xffff_c900_0000_0000 + stack * 0x4000 + 0x4000 - 168;
        let o = SysInflight::owner(regs(7), 511);
        assert_eq!(o & OWNER_NR_MASK, 511);
        assert_eq!(o & !OWNER_NR_MASK, regs(7) & !OWNER_NR_MASK);
        assert_ne!(o & !OWNER_NR_MASK, regs(8) & !OWNER_NR_MASK);
        // 4096 consecutive stacks (vmalloc'd stacks are often 2 apart: guard pages): few share
        // a slot.
        for step in [1, 2] {
            let mut seen = std::collections::HashSet::new();
            for i in 0..4096 {
                let s = SysInflight::slot(regs(i * step));
                assert!(s < INFLIGHT_ENTRIES);
                seen.insert(s);
            }
            assert!(
                seen.len() > 3900,
                "step {step}: {} distinct slots",
                seen.len()
            );
        }
    }
}
