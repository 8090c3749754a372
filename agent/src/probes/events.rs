//! The ring buffer of one-by-one events (slow syscalls, slow block requests, TCP opens),
//! consumed asynchronously as it fills, independent of the per-second collection.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use agent_common::{Event, EventKind, event::EVENT_SIZE};
pub use agent_core::events::{EventView, comm_str};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// How often the ring buffer is drained without a wakeup from the kernel.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Events kept for display between two intervals; beyond that they are counted only.
pub const KEEP_PER_INTERVAL: usize = 256;

#[derive(Default)]
struct State {
    recent: VecDeque<Event>,
    received: u64,
}

/// Events received since the last [`EventLog::drain`].
#[derive(Default)]
pub struct EventLog {
    state: Mutex<State>,
}

impl EventLog {
    fn push_batch(&self, batch: &mut Vec<Event>, received: u64) {
        let mut st = self.state.lock().expect("event log lock");
        st.received += received;
        for e in batch.drain(..) {
            if st.recent.len() == KEEP_PER_INTERVAL {
                st.recent.pop_front();
            }
            st.recent.push_back(e);
        }
    }

    /// The kept events and the number received (kept or not) since the previous call.
    pub fn drain(&self) -> (Vec<Event>, u64) {
        let mut st = self.state.lock().expect("event log lock");
        let received = std::mem::take(&mut st.received);
        (st.recent.drain(..).collect(), received)
    }
}

/// Reads the ring buffer whenever the kernel signals data, until the task is dropped.
pub async fn consume(rb: RingBuf<MapData>, log: Arc<EventLog>) -> std::io::Result<()> {
    // SAFETY: the fd belongs to `rb`, which the AsyncFd owns: it stays open while registered.
    let mut fd =
        unsafe { AsyncFd::register(rb) }.map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut batch = Vec::with_capacity(KEEP_PER_INTERVAL);
    // The kernel side submits without waking us unless the buffer is filling up (see
    // agent-ebpf's wakeup_flags): drain on this timer too.
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let n = drain(guard.get_inner_mut(), &mut batch);
                guard.clear_ready();
                n
            }
            _ = tick.tick() => drain(fd.get_mut(), &mut batch),
        };
        log.push_batch(&mut batch, received);
    }
}

/// Reads every pending event, keeping up to `KEEP_PER_INTERVAL` in `batch`; returns how many.
fn drain(rb: &mut RingBuf<MapData>, batch: &mut Vec<Event>) -> u64 {
    let mut received = 0u64;
    while let Some(item) = rb.next() {
        received += 1;
        if item.len() >= EVENT_SIZE && batch.len() < KEEP_PER_INTERVAL {
            // SAFETY: the kernel wrote a whole `Event` (checked length); read unaligned.
            batch.push(unsafe { item.as_ptr().cast::<Event>().read_unaligned() });
        }
    }
    received
}

fn addr(family: u32, raw: &[u8; 16]) -> IpAddr {
    const AF_INET: u32 = 2;
    let v6 = Ipv6Addr::from(*raw);
    match (family, v6.to_ipv4_mapped()) {
        (AF_INET, Some(v4)) => IpAddr::V4(v4),
        (AF_INET, None) => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        _ => IpAddr::V6(v6),
    }
}

/// Renders `e`, naming devices with `device_name`.
pub fn view(e: &Event, device_name: impl Fn(u32) -> String) -> Option<EventView> {
    let kind = EventKind::from_u32(e.kind)?;
    let (kind, target, ret) = match kind {
        EventKind::SlowSyscall => (
            "slow_syscall",
            super::syscall::name(e.key as usize),
            Some(e.ret),
        ),
        EventKind::SlowDisk => {
            let op = ["read", "write", "other"]
                .get(e.op as usize)
                .copied()
                .unwrap_or("other");
            (
                "slow_disk",
                format!("{} {op}", device_name(e.key)),
                Some(e.ret),
            )
        }
        EventKind::TcpConnect | EventKind::TcpAccept => {
            let (s, d) = (addr(e.op, &e.saddr), addr(e.op, &e.daddr));
            let k = if kind == EventKind::TcpConnect {
                "tcp_connect"
            } else {
                "tcp_accept"
            };
            // SocketAddr brackets IPv6 addresses: [::1]:5432.
            let (s, d) = (SocketAddr::new(s, e.sport), SocketAddr::new(d, e.dport));
            (k, format!("{s} -> {d}"), None)
        }
    };
    Some(EventView {
        kind,
        pid: e.pid,
        tid: e.tid,
        comm: comm_str(&e.comm),
        latency_us: e.latency_ns as f64 / 1000.0,
        target,
        ret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> Event {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        Event {
            kind: kind as u32,
            pid: 10,
            tid: 11,
            cpu: 0,
            latency_ns: 1_500_000,
            end_ns: 0,
            key: syscalls::Sysno::read as u32,
            op: 2,
            ret: -4,
            comm,
            saddr: Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets(),
            daddr: Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets(),
            sport: 40000,
            dport: 80,
            _pad: 0,
        }
    }

    #[test]
    fn renders_events() {
        let v = view(&event(EventKind::SlowSyscall), |_| unreachable!()).unwrap();
        assert_eq!(
            (v.kind, v.target.as_str(), v.comm.as_str(), v.ret),
            ("slow_syscall", "read", "curl", Some(-4))
        );
        assert_eq!(v.latency_us, 1500.0);
        let v = view(&event(EventKind::TcpConnect), |_| unreachable!()).unwrap();
        assert_eq!(v.target, "127.0.0.1:40000 -> 10.1.2.3:80");
        // IPv4 in the first 4 bytes (the BTF programs' form) reads the same.
        let mut e = event(EventKind::TcpAccept);
        e.saddr = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            view(&e, |_| unreachable!()).unwrap().target,
            "127.0.0.1:40000 -> 10.1.2.3:80"
        );
        e.op = 10; // AF_INET6
        e.saddr = Ipv6Addr::LOCALHOST.octets();
        e.daddr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(
            view(&e, |_| unreachable!()).unwrap().target,
            "[::1]:40000 -> [::1]:80"
        );
        let mut e = event(EventKind::SlowDisk);
        e.op = 1;
        let v = view(&e, |dev| format!("dev{dev}")).unwrap();
        assert_eq!(v.target, format!("dev{} write", e.key));
        e.kind = 99;
        assert!(view(&e, |_| String::new()).is_none());
    }
}
