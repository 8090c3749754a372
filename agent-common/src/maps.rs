//! Map names, defined once (15 bytes at most: the kernel truncates longer names).

/// The histogram table: one `BPF_F_MMAPABLE` array of `u64`, sliced per CPU (see [`crate::layout`]).
pub const HIST: &str = "HIST";
/// In-flight syscalls: array indexed by [`SysInflight::slot`].
pub const SYS_INFLIGHT: &str = "SYS_INFLIGHT";
/// In-flight block requests: array probed from [`DiskInflight::slot`].
pub const DISK_INFLIGHT: &str = "DISK_INFLIGHT";
/// Block device number to histogram slot, allocated by the kernel on first sight.
pub const DISK_SLOTS: &str = "DISK_SLOTS";
/// One shared counter: the next free disk slot.
pub const DISK_NEXT: &str = "DISK_NEXT";
/// TCP sockets in SYN_SENT, keyed by socket address.
pub const TCP_INFLIGHT: &str = "TCP_INFLIGHT";
/// Slow events and connects, one by one.
pub const EVENTS: &str = "EVENTS";
/// One-entry array holding [`crate::RuntimeConfig`], changeable while attached.
pub const CONFIG: &str = "CONFIG";

/// Load-time global holding [`crate::TpOffsets`].
pub const GLOBAL_TP_OFFSETS: &str = "TP_OFFSETS";
/// Load-time global holding [`crate::BlockBtf`].
pub const GLOBAL_BLOCK_BTF: &str = "BLOCK_BTF";
/// Load-time global holding [`crate::TcpBtf`].
pub const GLOBAL_TCP_BTF: &str = "TCP_BTF";
/// Load-time globals: syscall numbers that never return (their entries would go stale).
pub const GLOBAL_NR_EXIT: &str = "NR_EXIT";
pub const GLOBAL_NR_EXIT_GROUP: &str = "NR_EXIT_GROUP";

/// Size of the syscall in-flight table (a power of two). 32768 × 16 bytes = 512 KiB.
pub const SYS_INFLIGHT_BITS: u32 = 15;
pub const SYS_INFLIGHT_ENTRIES: u32 = 1 << SYS_INFLIGHT_BITS;
/// Size of the block request in-flight table (a power of two). 4096 × 56 bytes = 224 KiB.
pub const DISK_INFLIGHT_BITS: u32 = 12;
pub const DISK_INFLIGHT_ENTRIES: u32 = 1 << DISK_INFLIGHT_BITS;
pub const TCP_INFLIGHT_ENTRIES: u32 = 1024;
/// Default ring buffer size in bytes (a power of two, multiple of the page size).
pub const EVENTS_DEFAULT_BYTES: u32 = 1 << 18;

/// Program names (the function names in `agent-ebpf`).
pub mod progs {
    pub const SYS_ENTER: &str = "sys_enter";
    pub const SYS_EXIT: &str = "sys_exit";
    pub const BLOCK_RQ_ISSUE: &str = "block_rq_issue";
    pub const BLOCK_RQ_COMPLETE: &str = "block_rq_complete";
    /// The same two as BTF tracepoints (preferred: no record to build, fields read directly).
    pub const BTF_RQ_ISSUE: &str = "btf_rq_issue";
    pub const BTF_RQ_COMPLETE: &str = "btf_rq_complete";
    pub const INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
    pub const TCP_PROBE: &str = "tcp_probe";
    /// The same two as BTF tracepoints (preferred).
    pub const BTF_SOCK_STATE: &str = "btf_sock_state";
    pub const BTF_TCP_PROBE: &str = "btf_tcp_probe";
    pub const TCP_RETRANSMIT_SKB: &str = "tcp_retransmit_skb";
    pub const TCP_SEND_RESET: &str = "tcp_send_reset";
    pub const TCP_RECEIVE_RESET: &str = "tcp_receive_reset";
}

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

/// Bits of [`SysInflight::owner`] that hold the syscall number.
pub const OWNER_NR_MASK: u64 = 511;
const _: () = assert!(crate::layout::MAX_SYSCALLS as u64 <= OWNER_NR_MASK + 1);

impl SysInflight {
    /// The slot of a task (by its `pt_regs` pointer): its kernel stack's number, hashed
    /// (Fibonacci hashing) over the table.
    #[inline(always)]
    pub fn slot(regs: u64) -> u32 {
        ((regs >> 14).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SYS_INFLIGHT_BITS)) as u32
    }

    #[inline(always)]
    pub fn owner(regs: u64, nr: u64) -> u64 {
        (regs & !OWNER_NR_MASK) | nr
    }
}
const _: () = assert!(core::mem::size_of::<SysInflight>() == 16);

/// An in-flight block request, in an array slot (a hash-map update costs several hundred ns
/// per request here; an array slot is a plain store). The BTF tracepoints key a request by its
/// `struct request` address (`dev` 0 in [`DiskInflight::slot`]); the classic ones carry no
/// request pointer, so there a request is its device and start sector (as bcc's tracepoint
/// tools do). A request probes up to [`DISK_PROBES`] slots from [`DiskInflight::slot`]; a slot
/// is free when empty or older than [`DISK_STALE_NS`] (a completion never seen).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskInflight {
    /// The request's address (BTF tracepoints) or start sector (classic tracepoints).
    pub key: u64,
    /// `bpf_ktime_get_ns` at issue; 0 = free.
    pub start_ns: u64,
    pub dev: u32,
    pub bytes: u32,
    /// One of [`crate::layout::DISK_OP_READ`], ...
    pub op: u32,
    /// The issuing task, while slow-request events are on (else 0).
    pub pid: u32,
    pub tid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<DiskInflight>() == 56);

/// Slots a request may take, from its hashed one on.
pub const DISK_PROBES: u32 = 4;
/// An entry this old is taken for a completion that was never seen.
pub const DISK_STALE_NS: u64 = 60_000_000_000;

impl DiskInflight {
    /// The first slot of a request: (dev, key) hashed over the table.
    #[inline(always)]
    pub fn slot(dev: u32, key: u64) -> u32 {
        ((key ^ (u64::from(dev) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> (64 - DISK_INFLIGHT_BITS)) as u32
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInflight {
    pub start_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<TcpInflight>() == 32);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SysInflight {}
    unsafe impl aya::Pod for super::DiskInflight {}
    unsafe impl aya::Pod for super::TcpInflight {}
}

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
                assert!(s < SYS_INFLIGHT_ENTRIES);
                seen.insert(s);
            }
            assert!(
                seen.len() > 3900,
                "step {step}: {} distinct slots",
                seen.len()
            );
        }
    }

    #[test]
    fn disk_keys_spread_over_slots() {
        // A queue's requests sit in one array (struct request plus the driver's data: a few
        // hundred bytes each); 256 in flight at once rarely need a second probe.
        for size in [320u64, 384, 512, 640] {
            let mut seen = std::collections::HashSet::new();
            for tag in 0..256 {
                let s = DiskInflight::slot(0, 0xffff_8881_0400_0000 + tag * size);
                assert!(s < DISK_INFLIGHT_ENTRIES);
                seen.insert(s);
            }
            assert!(
                seen.len() > 240,
                "size {size}: {} distinct slots",
                seen.len()
            );
        }
        // Classic keys: consecutive sectors of one device.
        let seen: std::collections::HashSet<u32> = (0..256)
            .map(|i| DiskInflight::slot(254 << 20, 2048 + i * 8))
            .collect();
        assert!(seen.len() > 240, "{} distinct slots", seen.len());
    }
}
