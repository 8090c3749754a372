//! TCP: smoothed RTT (tcp_probe), connect latency and opens (inet_sock_set_state), as BTF
//! tracepoints where the kernel's BTF allows, else classic ones; retransmits and resets (raw
//! tracepoints).

use crate::{
    layout,
    maps::{GlobalSpec, MapSpec},
};

/// Histogram rows (relative to the probe's block).
pub const ROW_RTT: usize = 0;
pub const ROW_CONNECT: usize = 1;
/// Two histogram rows, then the counter row.
pub const ROWS: usize = 3;

/// Table row of one of the probe's histogram rows.
#[inline(always)]
pub const fn row(i: usize) -> usize {
    layout::TCP.row(i)
}

// The probe's own counter cells.
pub const CTR_CONNECTS: usize = layout::CTR_PROBE0;
pub const CTR_ACCEPTS: usize = layout::CTR_PROBE0 + 1;
pub const CTR_RETRANSMITS: usize = layout::CTR_PROBE0 + 2;
pub const CTR_RESETS: usize = layout::CTR_PROBE0 + 3;
/// Failed-connect events over the budget (`agent_common::event::EventBudget`), not sent.
pub const CTR_EVENTS_LIMITED: usize = layout::CTR_PROBE0 + 4;
const _: () = assert!(CTR_EVENTS_LIMITED < layout::CTRS);

pub mod progs {
    pub const INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
    pub const TCP_PROBE: &str = "tcp_probe";
    /// The same two as BTF tracepoints (preferred).
    pub const BTF_SOCK_STATE: &str = "btf_sock_state";
    pub const BTF_TCP_PROBE: &str = "btf_tcp_probe";
    pub const TCP_RETRANSMIT_SKB: &str = "tcp_retransmit_skb";
    pub const TCP_SEND_RESET: &str = "tcp_send_reset";
    pub const TCP_RECEIVE_RESET: &str = "tcp_receive_reset";
}

/// TCP sockets in SYN_SENT, keyed by socket address.
pub const MAP_INFLIGHT: &str = "TCP_INFLIGHT";
pub const INFLIGHT_ENTRIES: u32 = 1024;
/// Load-time global holding [`TcpTpOffsets`].
pub const GLOBAL_TP: &str = "TCP_TP";
/// Load-time global holding [`TcpBtf`].
pub const GLOBAL_BTF: &str = "TCP_BTF";
/// Per-CPU budget of failed-connect events (one `EventBudget`): a storm of refused connects
/// must not flood the ring buffer.
pub const MAP_BUDGET: &str = "TCP_EV_BUDGET";

pub const MAPS: &[MapSpec] = &[
    MapSpec {
        name: MAP_INFLIGHT,
        value_size: size_of::<TcpInflight>(),
        max_entries: INFLIGHT_ENTRIES,
    },
    MapSpec {
        name: MAP_BUDGET,
        value_size: size_of::<crate::event::EventBudget>(),
        max_entries: 1,
    },
];
pub const GLOBALS: &[GlobalSpec] = &[
    GlobalSpec {
        name: GLOBAL_TP,
        size: size_of::<TcpTpOffsets>(),
    },
    GlobalSpec {
        name: GLOBAL_BTF,
        size: size_of::<TcpBtf>(),
    },
];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInflight {
    pub start_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<TcpInflight>() == 32);

/// Byte offsets of the classic tracepoints' record fields, from tracefs `format` files at load
/// time. An offset of [`MISSING`] marks a field the kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpTpOffsets {
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
    pub _pad: [u16; 2],
}
const _: () = assert!(size_of::<TcpTpOffsets>() == 24);

/// A tracepoint field the kernel lacks.
pub const MISSING: u16 = u16::MAX;

impl TcpTpOffsets {
    /// Every field missing: the programs read nothing until userspace sets real offsets.
    pub const UNSET: Self = Self {
        sk_skaddr: MISSING,
        sk_oldstate: MISSING,
        sk_newstate: MISSING,
        sk_sport: MISSING,
        sk_dport: MISSING,
        sk_family: MISSING,
        sk_protocol: MISSING,
        sk_saddr_v6: MISSING,
        sk_daddr_v6: MISSING,
        probe_srtt: MISSING,
        _pad: [0; 2],
    };
}

/// What the BTF tracepoint programs on TCP read from `struct sock` (its `sock_common` head)
/// and `struct tcp_sock`: byte offsets from the kernel's BTF at load time.
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
const _: () = assert!(size_of::<TcpBtf>() == 40);

impl TcpBtf {
    /// Nothing found (see [`super::disk::BlockBtf::UNSET`]).
    // SAFETY: plain integers; all zero is a valid value.
    pub const UNSET: Self = unsafe { core::mem::zeroed() };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers with explicit padding fields.
    unsafe impl aya::Pod for super::TcpInflight {}
    // SAFETY: #[repr(C)], integers with explicit padding fields.
    unsafe impl aya::Pod for super::TcpTpOffsets {}
    // SAFETY: #[repr(C)], integers with explicit padding fields.
    unsafe impl aya::Pod for super::TcpBtf {}
}
