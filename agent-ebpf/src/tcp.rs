//! TCP: smoothed RTT, connect latency and opens, retransmits and resets (contract:
//! `agent_common::probes::tcp`).

use agent_common::{
    Event, EventKind,
    event::EventBudget,
    layout::{self, TCP},
    probes::tcp::{
        self, CTR_ACCEPTS, CTR_CONNECTS, CTR_EVENTS_LIMITED, CTR_RESETS, CTR_RETRANSMITS,
        INFLIGHT_ENTRIES, ROW_CONNECT, ROW_RTT, TcpBtf, TcpInflight, TcpTpOffsets,
    },
};
use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_skc_to_tcp_sock},
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use crate::shared::{
    config, count, event, field, kload, now_ns, pointer_key, read, record, record_head, send,
    within_budget,
};

#[map]
static TCP_INFLIGHT: LruHashMap<u64, TcpInflight> =
    LruHashMap::with_max_entries(INFLIGHT_ENTRIES, 0);
#[map]
static TCP_EV_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static TCP_TP: Global<TcpTpOffsets> = Global::new(TcpTpOffsets::UNSET);
#[unsafe(no_mangle)]
static TCP_BTF: Global<TcpBtf> = Global::new(TcpBtf::UNSET);

const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

/// A socket's addresses for a connect/accept event: family, local and remote port (host
/// order), local and remote address (IPv4 in the first 4 bytes).
type SockAddrs = (u16, u16, u16, [u8; 16], [u8; 16]);

/// A TCP socket's state change: times connects (SYN_SENT → ESTABLISHED) and counts connects
/// and accepts, sending each as an event when on, and failed connects (SYN_SENT → CLOSE)
/// within the probe's per-CPU budget. `sk` names the socket; `addrs` is read only for an event.
#[inline(always)]
fn sock_state(
    sk: u64,
    old: i32,
    new: i32,
    addrs: impl FnOnce() -> Option<SockAddrs>,
) -> Option<()> {
    let (kind, latency_ns, pid, tid, comm) = if new == TCP_SYN_SENT {
        // In the connecting task's context: remember who and when.
        crate::cgroup::connect();
        let id = bpf_get_current_pid_tgid();
        let val = TcpInflight {
            start_ns: now_ns(),
            pid: (id >> 32) as u32,
            tid: id as u32,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
        if TCP_INFLIGHT.insert(&sk, &val, 0).is_err() {
            count(TCP, layout::CTR_INFLIGHT_DROPPED, 1);
        }
        return Some(());
    } else if old == TCP_SYN_SENT {
        // SAFETY: a plain lookup; the value is copied at once.
        let started = unsafe { TCP_INFLIGHT.get(&sk) }.copied();
        let _ = TCP_INFLIGHT.remove(&sk);
        if new == TCP_CLOSE {
            // Refused, unreachable, timed out or abandoned: named by who connected (the
            // failure arrives in whatever context received the reset). A storm of them is
            // bounded by the budget.
            let started = started?;
            if config().tcp_events_on == 0
                || !within_budget(&TCP_EV_BUDGET, TCP, CTR_EVENTS_LIMITED)
            {
                return Some(());
            }
            (
                EventKind::TcpConnectFailed,
                now_ns().saturating_sub(started.start_ns),
                started.pid,
                started.tid,
                started.comm,
            )
        } else if new != TCP_ESTABLISHED {
            return Some(());
        } else {
            count(TCP, CTR_CONNECTS, 1);
            let started = started?; // connect began before we attached: counted, not timed
            let delta = now_ns().saturating_sub(started.start_ns);
            record(tcp::row(ROW_CONNECT), delta, 0);
            (
                EventKind::TcpConnect,
                delta,
                started.pid,
                started.tid,
                started.comm,
            )
        }
    } else if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        count(TCP, CTR_ACCEPTS, 1);
        let id = bpf_get_current_pid_tgid();
        (
            EventKind::TcpAccept,
            0,
            (id >> 32) as u32,
            id as u32,
            bpf_get_current_comm().unwrap_or([0; 16]),
        )
    } else {
        return Some(());
    };
    if config().tcp_events_on == 0 {
        return Some(());
    }
    let (family, sport, dport, saddr, daddr) = addrs()?;
    send(
        Event {
            op: family as u32,
            saddr,
            daddr,
            sport,
            dport,
            ..event(kind, pid, tid, comm, latency_ns)
        },
        TCP,
    );
    Some(())
}

// ---- classic tracepoints ----

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_inet_sock_set_state(&ctx);
    0
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &TracePointContext) -> Option<()> {
    let off = TCP_TP.load();
    // The whole record (72 bytes on 6.x) in one call.
    let head: [u8; 72] = record_head(ctx, TCP)?;
    let protocol: u16 = field(ctx, &head, off.sk_protocol, TCP)?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let sk: u64 = field(ctx, &head, off.sk_skaddr, TCP)?;
    let old: i32 = field(ctx, &head, off.sk_oldstate, TCP)?;
    let new: i32 = field(ctx, &head, off.sk_newstate, TCP)?;
    sock_state(sk, old, new, || {
        Some((
            field(ctx, &head, off.sk_family, TCP)?,
            field(ctx, &head, off.sk_sport, TCP)?,
            field(ctx, &head, off.sk_dport, TCP)?,
            field(ctx, &head, off.sk_saddr_v6, TCP)?,
            field(ctx, &head, off.sk_daddr_v6, TCP)?,
        ))
    })
}

#[tracepoint(category = "tcp", name = "tcp_probe")]
pub fn tcp_probe(ctx: TracePointContext) -> u32 {
    let off = TCP_TP.load();
    // srtt is in microseconds (tp->srtt_us >> 3); the histogram counts ns.
    if let Some(srtt_us) = read::<u32>(&ctx, off.probe_srtt, TCP) {
        record(tcp::row(ROW_RTT), srtt_us as u64 * 1000, 0);
    }
    0
}

// ---- preferred: the same two tracepoints as BTF tracepoints ----
// tcp_probe fires on every segment an established socket receives: its classic record (both
// addresses, a dozen counters, the socket cookie) costs more than everything the agent does.

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn btf_sock_state(ctx: BtfTracePointContext) -> i32 {
    let _ = try_btf_sock_state(&ctx);
    0
}

#[inline(always)]
fn try_btf_sock_state(ctx: &BtfTracePointContext) -> Option<()> {
    let o = TCP_BTF.load();
    let sk: *const u8 = ctx.arg(0);
    let protocol: u16 = kload(sk, o.sk_protocol);
    if protocol != IPPROTO_TCP {
        return None;
    }
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    sock_state(pointer_key(sk), old, new, || {
        let family: u16 = kload(sk, o.skc_family);
        let sport: u16 = kload(sk, o.skc_num);
        let dport: u16 = u16::from_be(kload(sk, o.skc_dport));
        let (mut saddr, mut daddr) = ([0u8; 16], [0u8; 16]);
        if family == AF_INET {
            saddr[..4].copy_from_slice(&kload::<[u8; 4]>(sk, o.skc_rcv_saddr));
            daddr[..4].copy_from_slice(&kload::<[u8; 4]>(sk, o.skc_daddr));
        } else {
            saddr = kload(sk, o.skc_v6_rcv_saddr);
            daddr = kload(sk, o.skc_v6_daddr);
        }
        Some((family, sport, dport, saddr, daddr))
    })
}

#[btf_tracepoint(function = "tcp_probe")]
pub fn btf_tcp_probe(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    // SAFETY: the helper checks that `sk` is a full TCP socket and returns it typed (or null),
    // so its tcp_sock fields become verified loads.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) } as *const u8;
    if !tp.is_null() {
        let srtt_x8: u32 = kload(tp, TCP_BTF.load().tp_srtt_us);
        record(tcp::row(ROW_RTT), u64::from(srtt_x8 >> 3) * 1000, 0);
    }
    0
}

// ---- raw tracepoints: counts only ----

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(_ctx: RawTracePointContext) -> i32 {
    count(TCP, CTR_RETRANSMITS, 1);
    0
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(_ctx: RawTracePointContext) -> i32 {
    count(TCP, CTR_RESETS, 1);
    0
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(_ctx: RawTracePointContext) -> i32 {
    count(TCP, CTR_RESETS, 1);
    0
}
