//! Events sent one by one through the ring buffer [`crate::maps::EVENTS`].

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A syscall slower than the threshold: `key` = syscall number, `ret` = return value.
    SlowSyscall = 1,
    /// A block request slower than the threshold: `key` = dev (MKDEV of the kernel: major << 20 |
    /// minor), `op` = disk op, `ret` = bytes.
    SlowDisk = 2,
    /// An active TCP open completed (SYN_SENT -> ESTABLISHED): addresses and ports are set,
    /// `latency_ns` = connect time, `op` = address family.
    TcpConnect = 3,
    /// A passive TCP open completed (SYN_RECV -> ESTABLISHED).
    TcpAccept = 4,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::SlowSyscall,
            2 => Self::SlowDisk,
            3 => Self::TcpConnect,
            4 => Self::TcpAccept,
            _ => return None,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// An [`EventKind`] as u32.
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub latency_ns: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at the end of the measured operation.
    pub end_ns: u64,
    pub key: u32,
    pub op: u32,
    pub ret: i64,
    pub comm: [u8; 16],
    /// IPv4 addresses use the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
}
pub const EVENT_SIZE: usize = 104;
const _: () = assert!(size_of::<Event>() == EVENT_SIZE);

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and byte arrays with an explicit padding field.
unsafe impl aya::Pod for Event {}
