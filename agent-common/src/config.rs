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

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::RuntimeConfig {}
    unsafe impl aya::Pod for super::TpOffsets {}
}
