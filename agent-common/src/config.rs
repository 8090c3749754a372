//! Settings handed to the kernel programs.

/// Changeable while attached: lives in the one-value data section [`crate::maps::CONFIG`].
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
    /// 1 = send every TCP connect/accept, and failed connects (rate-limited), to the ring
    /// buffer.
    pub tcp_events_on: u32,
    /// Depth below the v2 root of `filter_cgroup` (the root is 0).
    pub filter_cgroup_level: u32,
    /// Only count tasks in this cgroup (v2 id) or below it; 0 = every cgroup.
    pub filter_cgroup: u64,
    /// Run-queue waits at least this long (ns) go to the ring buffer (rate-limited);
    /// `u64::MAX` = none. Host-wide: the pid/comm/cgroup filters do not apply.
    pub slow_runq_ns: u64,
}
const _: () = assert!(size_of::<RuntimeConfig>() == 64);

impl RuntimeConfig {
    pub const OFF: u64 = u64::MAX;

    /// The defaults, also the kernel side's value before the agent writes its own: nothing is
    /// an event until then.
    pub const DEFAULT: Self = Self {
        slow_syscall_ns: Self::OFF,
        slow_disk_ns: Self::OFF,
        filter_tgid: 0,
        filter_comm_on: 0,
        filter_comm: [0; 16],
        tcp_events_on: 1,
        filter_cgroup_level: 0,
        filter_cgroup: 0,
        slow_runq_ns: Self::OFF,
    };
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers without padding (u64s first, then u32 pairs, then u64s).
    unsafe impl aya::Pod for super::RuntimeConfig {}
}
