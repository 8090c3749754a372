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
    /// A task waited on a run queue at least the slow threshold before it ran: `pid`/`tid`/
    /// `comm` name the task that waited (`pid` is its thread id on kernels without BTF),
    /// `latency_ns` = the wait, `op` = [`RUNQ_WOKEN`] or [`RUNQ_PREEMPTED`]. Rate-limited per
    /// CPU ([`EventBudget`]).
    RunqWait = 5,
    /// An active TCP open failed (SYN_SENT -> CLOSE: refused, unreachable, timed out, or closed
    /// before it completed): the connecting task (as at its SYN), addresses and ports as for
    /// [`EventKind::TcpConnect`], `latency_ns` = SYN to failure. Rate-limited per CPU
    /// ([`EventBudget`]).
    TcpConnectFailed = 6,
}

/// [`EventKind::RunqWait`]'s `op`: the task was woken from sleep (a service answering, a
/// timer): the wait is latency someone feels.
pub const RUNQ_WOKEN: u32 = 0;
/// [`EventKind::RunqWait`]'s `op`: the task was preempted while running (it was busy on a
/// CPU and had to share it).
pub const RUNQ_PREEMPTED: u32 = 1;

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::SlowSyscall,
            2 => Self::SlowDisk,
            3 => Self::TcpConnect,
            4 => Self::TcpAccept,
            5 => Self::RunqWait,
            6 => Self::TcpConnectFailed,
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

/// A probe's per-CPU budget of events that can come in storms (refused connects, run-queue
/// waits on a saturated host), so a storm cannot flood the ring buffer nor the agent: at most
/// [`EVENT_BURST`] at once, then one per [`EVENT_GAP_NS`] (100/s per CPU). Events over budget
/// are counted (the probe's `CTR_EVENTS_LIMITED` cell), not sent.
///
/// A generic cell rate algorithm: one timestamp, no division. Lives in a one-entry per-CPU
/// array, so no two CPUs touch it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// When the budget would be back to one event's worth of debt (ns, `bpf_ktime_get_ns`).
    pub next_ns: u64,
}
const _: () = assert!(size_of::<EventBudget>() == 8);

/// Events a CPU may send at once after a quiet spell.
pub const EVENT_BURST: u64 = 20;
/// Then one per this many ns: 100 events/s per CPU.
pub const EVENT_GAP_NS: u64 = 10_000_000;

impl EventBudget {
    /// Takes one event's worth at `now_ns`; false when the budget is spent (the event is not
    /// to be sent).
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64) -> bool {
        let next = if self.next_ns > now_ns {
            self.next_ns
        } else {
            now_ns
        };
        if next - now_ns > (EVENT_BURST - 1) * EVENT_GAP_NS {
            return false;
        }
        self.next_ns = next + EVENT_GAP_NS;
        true
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], one integer.
unsafe impl aya::Pod for EventBudget {}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::offset_of;

    /// Kinds are numbered once: both sides decode every kind the kernel sends.
    #[test]
    fn every_kind_decodes_to_itself() {
        use EventKind::*;
        for k in [
            SlowSyscall,
            SlowDisk,
            TcpConnect,
            TcpAccept,
            RunqWait,
            TcpConnectFailed,
        ] {
            assert_eq!(EventKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(EventKind::from_u32(0), None);
        assert_eq!(EventKind::from_u32(7), None);
        assert_ne!(RUNQ_WOKEN, RUNQ_PREEMPTED);
    }

    /// The event's layout, field by field: the kernel writes these bytes, userspace reads them.
    #[test]
    fn event_layout() {
        assert_eq!(offset_of!(Event, latency_ns), 16);
        assert_eq!(offset_of!(Event, end_ns), 24);
        assert_eq!(offset_of!(Event, key), 32);
        assert_eq!(offset_of!(Event, ret), 40);
        assert_eq!(offset_of!(Event, comm), 48);
        assert_eq!(offset_of!(Event, saddr), 64);
        assert_eq!(offset_of!(Event, daddr), 80);
        assert_eq!(offset_of!(Event, sport), 96);
        assert_eq!(offset_of!(Event, _pad), 100);
    }

    /// A storm gets the burst, then one event per gap; a quiet spell refills the budget, and
    /// never beyond the burst.
    #[test]
    fn the_budget_allows_a_burst_then_a_steady_rate() {
        let mut b = EventBudget::default();
        let t0 = 5_000_000_000;
        // 10,000 events in one second, evenly spread.
        let sent = (0..10_000u64).filter(|i| b.take(t0 + i * 100_000)).count() as u64;
        assert_eq!(sent, EVENT_BURST + 1_000_000_000 / EVENT_GAP_NS - 1);
        // A minute of quiet: a whole burst again, no more.
        let t1 = t0 + 60_000_000_000;
        let again = (0..1000).filter(|_| b.take(t1)).count() as u64;
        assert_eq!(again, EVENT_BURST);
        // Slow events (one per 20 ms) are never limited.
        let t2 = t1 + 60_000_000_000;
        assert!((0..500u64).all(|i| b.take(t2 + i * 20_000_000)));
    }
}
