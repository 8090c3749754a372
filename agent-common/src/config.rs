//! Settings handed to the kernel programs.

/// Changeable while attached: lives in the one-entry [`crate::maps::CONFIG`] array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Syscalls at least this slow (ns) go to the ring buffer; `u64::MAX` = none.
    pub slow_syscall_ns: u64,
    /// Block requests at least this slow (ns) go to the ring buffer; `u64::MAX` = none.
    pub slow_disk_ns: u64,
    /// Only count this process (tgid); 0 = every process.
    pub filter_tgid: u32,
    /// 1 = only count tasks whose comm equals `filter_comm`.
    pub filter_comm_on: u32,
    pub filter_comm: [u8; 16],
    /// 1 = send every TCP connect/accept to the ring buffer.
    pub tcp_events_on: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<RuntimeConfig>() == 48);

impl RuntimeConfig {
    pub const OFF: u64 = u64::MAX;
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            slow_syscall_ns: Self::OFF,
            slow_disk_ns: Self::OFF,
            filter_tgid: 0,
            filter_comm_on: 0,
            filter_comm: [0; 16],
            tcp_events_on: 1,
            _pad: 0,
        }
    }
}

/// Byte offsets of tracepoint fields, read by userspace from tracefs `format` files at load time
/// (never hard-coded: they change between kernels). Set once as the global
/// [`crate::maps::GLOBAL_TP_OFFSETS`]. An offset of `u16::MAX` marks a field the kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpOffsets {
    // block:block_rq_issue
    pub issue_dev: u16,
    pub issue_sector: u16,
    pub issue_bytes: u16,
    pub issue_rwbs: u16,
    // block:block_rq_complete
    pub complete_dev: u16,
    pub complete_sector: u16,
    // sock:inet_sock_set_state
    pub sk_skaddr: u16,
    pub sk_oldstate: u16,
    pub sk_newstate: u16,
    pub sk_sport: u16,
    pub sk_dport: u16,
    pub sk_family: u16,
    pub sk_protocol: u16,
    pub sk_saddr_v6: u16,
    pub sk_daddr_v6: u16,
    // tcp:tcp_probe
    pub probe_srtt: u16,
    pub _pad: [u16; 4],
}
const _: () = assert!(core::mem::size_of::<TpOffsets>() == 40);

impl TpOffsets {
    pub const MISSING: u16 = u16::MAX;
    /// Every field missing: the kernel programs read nothing until userspace sets real offsets.
    pub const UNSET: Self = Self {
        issue_dev: Self::MISSING,
        issue_sector: Self::MISSING,
        issue_bytes: Self::MISSING,
        issue_rwbs: Self::MISSING,
        complete_dev: Self::MISSING,
        complete_sector: Self::MISSING,
        sk_skaddr: Self::MISSING,
        sk_oldstate: Self::MISSING,
        sk_newstate: Self::MISSING,
        sk_sport: Self::MISSING,
        sk_dport: Self::MISSING,
        sk_family: Self::MISSING,
        sk_protocol: Self::MISSING,
        sk_saddr_v6: Self::MISSING,
        sk_daddr_v6: Self::MISSING,
        probe_srtt: Self::MISSING,
        _pad: [0; 4],
    };
}

impl Default for TpOffsets {
    fn default() -> Self {
        Self::UNSET
    }
}

/// What the BTF tracepoint programs on block requests read from `struct request` and the
/// structs it points to: byte offsets from the kernel's BTF (/sys/kernel/btf/vmlinux), found
/// at load time (never hard-coded), and the request-op encoding. Set once as the global
/// [`crate::maps::GLOBAL_BLOCK_BTF`]; the programs are loaded only when every field was found,
/// else the classic tracepoints (and [`TpOffsets`]) serve instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockBtf {
    /// `request.q` (`struct request_queue *`).
    pub rq_q: u32,
    /// `request.cmd_flags` (u32: the op in its low bits, then flags).
    pub rq_cmd_flags: u32,
    /// `request.__data_len` (u32 bytes).
    pub rq_data_len: u32,
    /// `request_queue.disk` (`struct gendisk *`).
    pub q_disk: u32,
    /// `gendisk.major`, `gendisk.first_minor` (int).
    pub disk_major: u32,
    pub disk_first_minor: u32,
    /// `cmd_flags & op_mask` is the op: `(1 << REQ_OP_BITS) - 1`.
    pub op_mask: u32,
    /// `REQ_OP_READ`, `REQ_OP_WRITE`.
    pub op_read: u32,
    pub op_write: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<BlockBtf>() == 40);

impl BlockBtf {
    /// Nothing found: userspace loads the BTF programs only after setting real offsets.
    // SAFETY: plain integers; all zero is a valid value.
    pub const UNSET: Self = unsafe { core::mem::zeroed() };
}

/// What the BTF tracepoint programs on TCP read from `struct sock` (its `sock_common` head)
/// and `struct tcp_sock`: byte offsets from the kernel's BTF at load time, set once as the
/// global [`crate::maps::GLOBAL_TCP_BTF`] (like [`BlockBtf`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpBtf {
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `sock_common` members, from the start of `struct sock`: `skc_family` (u16), `skc_num`
    /// (u16, local port, host order), `skc_dport` (u16, network order).
    pub skc_family: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    /// IPv4 addresses (4 bytes, network order) and IPv6 ones (16 bytes).
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    /// `tcp_sock.srtt_us` (u32: smoothed RTT in µs, times 8).
    pub tp_srtt_us: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TcpBtf>() == 40);

impl TcpBtf {
    /// Nothing found (see [`BlockBtf::UNSET`]).
    // SAFETY: plain integers; all zero is a valid value.
    pub const UNSET: Self = unsafe { core::mem::zeroed() };
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::RuntimeConfig {}
    unsafe impl aya::Pod for super::TpOffsets {}
    unsafe impl aya::Pod for super::BlockBtf {}
    unsafe impl aya::Pod for super::TcpBtf {}
}
