//! The tcp probe: smoothed RTT (tcp_probe), connect latency and opens (inet_sock_set_state),
//! both as BTF tracepoints where the kernel's BTF allows, else classic ones; retransmits and
//! resets (raw tracepoints). Kernel side: `agent-ebpf/src/tcp.rs`; contract:
//! `agent_common::probes::tcp`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

#[cfg(test)]
use agent_common::maps::{GlobalSpec, MapSpec};
use agent_common::{
    Event, EventKind,
    layout::{self, Block},
    probes::tcp::{self as contract, TcpBtf, TcpTpOffsets, progs},
};
use aya::Ebpf;

use super::{
    Globals, ProbeDef, ProbeState, Program, Rows, Section,
    btf::{Btf, BtfError},
    table,
    tracefs::{self, TracefsError},
};
use crate::{
    catalogue::MetricDef,
    histogram::LatencyStats,
    snapshot::{Metric, Tags},
};
use agent_core::events::{EventView, comm_str};

pub const RTT: MetricDef = MetricDef::latency(
    "tcp.rtt_us",
    &[],
    "smoothed RTT of received segments (tcp_probe)",
);
pub const RTT_SAMPLES: MetricDef =
    MetricDef::counter("tcp.rtt_samples", &[], "RTT samples in the interval");
pub const CONNECT_LATENCY: MetricDef =
    MetricDef::latency("tcp.connect_latency_us", &[], "SYN_SENT to ESTABLISHED");
pub const CONNECTS: MetricDef = MetricDef::counter(
    "tcp.connects",
    &[],
    "active opens completed (SYN_SENT → ESTABLISHED)",
);
pub const ACCEPTS: MetricDef = MetricDef::counter(
    "tcp.accepts",
    &[],
    "passive opens completed (SYN_RECV → ESTABLISHED)",
);
pub const RETRANSMITS: MetricDef =
    MetricDef::counter("tcp.retransmits", &[], "segments retransmitted");
pub const RESETS: MetricDef = MetricDef::counter("tcp.resets", &[], "resets sent and received");

const PROGRAMS: &[Program] = &[
    Program::tracepoint(progs::INET_SOCK_SET_STATE, "sock", "inet_sock_set_state"),
    Program::tracepoint(progs::TCP_PROBE, "tcp", "tcp_probe"),
    Program::raw(progs::TCP_RETRANSMIT_SKB, "tcp_retransmit_skb"),
    Program::raw(progs::TCP_SEND_RESET, "tcp_send_reset"),
    Program::raw(progs::TCP_RECEIVE_RESET, "tcp_receive_reset"),
];

/// Preferred: no record built per event (tcp_probe's is large, and it fires per segment).
const PROGRAMS_BTF: &[Program] = &[
    Program::btf(progs::BTF_SOCK_STATE, "inet_sock_set_state"),
    Program::btf(progs::BTF_TCP_PROBE, "tcp_probe"),
    Program::raw(progs::TCP_RETRANSMIT_SKB, "tcp_retransmit_skb"),
    Program::raw(progs::TCP_SEND_RESET, "tcp_send_reset"),
    Program::raw(progs::TCP_RECEIVE_RESET, "tcp_receive_reset"),
];

pub struct Tcp;

impl ProbeDef for Tcp {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn block(&self) -> Block {
        layout::TCP
    }

    fn variants(&self) -> &'static [&'static [Program]] {
        &[PROGRAMS_BTF, PROGRAMS]
    }

    #[cfg(test)]
    fn maps(&self) -> &'static [MapSpec] {
        contract::MAPS
    }

    #[cfg(test)]
    fn globals(&self) -> &'static [GlobalSpec] {
        contract::GLOBALS
    }

    fn set_btf_globals(&self, btf: &Btf, g: &mut Globals) -> Result<(), BtfError> {
        g.set(contract::GLOBAL_BTF, &btf_offsets(btf)?);
        Ok(())
    }

    fn set_classic_globals(&self, tracefs: &Path, g: &mut Globals) -> Result<(), TracefsError> {
        g.set(contract::GLOBAL_TP, &read_offsets(tracefs)?);
        Ok(())
    }

    fn metrics(&self) -> &'static [MetricDef] {
        &[
            RTT,
            RTT_SAMPLES,
            CONNECT_LATENCY,
            CONNECTS,
            ACCEPTS,
            RETRANSMITS,
            RESETS,
        ]
    }

    fn state(&self) -> Box<dyn ProbeState> {
        Box::new(TcpState)
    }

    fn watch_section(&self) -> Option<(&'static str, Section)> {
        Some(("tcp", watch_section))
    }
}

/// What the BTF programs read: `struct sock` (its `sock_common` head) and `tcp_sock.srtt_us`.
pub fn btf_offsets(btf: &Btf) -> Result<TcpBtf, BtfError> {
    let common = btf.member("sock", "__sk_common")?.offset;
    let skc = |name: &str, size: u32| -> Result<u32, BtfError> {
        Ok(common + btf.member_sized("sock_common", name, size)?)
    };
    Ok(TcpBtf {
        sk_protocol: btf.member_sized("sock", "sk_protocol", 2)?,
        skc_family: skc("skc_family", 2)?,
        skc_num: skc("skc_num", 2)?,
        skc_dport: skc("skc_dport", 2)?,
        skc_rcv_saddr: skc("skc_rcv_saddr", 4)?,
        skc_daddr: skc("skc_daddr", 4)?,
        skc_v6_rcv_saddr: skc("skc_v6_rcv_saddr", 16)?,
        skc_v6_daddr: skc("skc_v6_daddr", 16)?,
        tp_srtt_us: btf.member_sized("tcp_sock", "srtt_us", 4)?,
        _pad: 0,
    })
}

pub fn read_offsets(tracefs: &Path) -> Result<TcpTpOffsets, TracefsError> {
    let mut o = TcpTpOffsets::UNSET;
    let tp = "sock:inet_sock_set_state";
    let f = tracefs::format(tracefs, "sock", "inet_sock_set_state")?;
    o.sk_skaddr = f.offset(tp, "skaddr", 8)?;
    o.sk_oldstate = f.offset(tp, "oldstate", 4)?;
    o.sk_newstate = f.offset(tp, "newstate", 4)?;
    o.sk_sport = f.offset(tp, "sport", 2)?;
    o.sk_dport = f.offset(tp, "dport", 2)?;
    o.sk_family = f.offset(tp, "family", 2)?;
    o.sk_protocol = f.offset(tp, "protocol", 2)?;
    o.sk_saddr_v6 = f.offset(tp, "saddr_v6", 16)?;
    o.sk_daddr_v6 = f.offset(tp, "daddr_v6", 16)?;
    let tp = "tcp:tcp_probe";
    let f = tracefs::format(tracefs, "tcp", "tcp_probe")?;
    o.probe_srtt = f.offset(tp, "srtt", 4)?;
    Ok(o)
}

struct TcpState;

impl ProbeState for TcpState {
    fn collect(&mut self, _ebpf: &mut Ebpf, rows: &mut Rows<'_>, out: &mut Vec<Metric>) {
        if let Some(d) = rows.delta(contract::ROW_RTT) {
            out.push(RTT_SAMPLES.count(vec![], d[layout::CELL_COUNT]));
            if let Some(s) = LatencyStats::from_buckets(table::buckets(d), d[layout::CELL_SUM]) {
                RTT.latency_of(&s, &vec![], out);
            }
        }
        if let Some(d) = rows.delta(contract::ROW_CONNECT)
            && let Some(s) = LatencyStats::from_buckets(table::buckets(d), d[layout::CELL_SUM])
        {
            CONNECT_LATENCY.latency_of(&s, &vec![], out);
        }
        for (def, ctr) in [
            (CONNECTS, contract::CTR_CONNECTS),
            (ACCEPTS, contract::CTR_ACCEPTS),
            (RETRANSMITS, contract::CTR_RETRANSMITS),
            (RESETS, contract::CTR_RESETS),
        ] {
            out.push(def.count(vec![], rows.counter(ctr)));
        }
        let limited = rows.counter(contract::CTR_EVENTS_LIMITED);
        if limited > 0 {
            out.push(
                crate::catalogue::agent::EVENTS_LIMITED
                    .count(vec![("probe", Tcp.name().into())], limited),
            );
        }
    }

    fn keys(&self) -> Vec<(&'static str, Tags, usize)> {
        vec![
            (RTT.name, vec![], contract::ROW_RTT),
            (CONNECT_LATENCY.name, vec![], contract::ROW_CONNECT),
        ]
    }

    fn event(&self, e: &Event) -> Option<EventView> {
        let kind = match EventKind::from_u32(e.kind)? {
            EventKind::TcpConnect => "tcp_connect",
            EventKind::TcpAccept => "tcp_accept",
            EventKind::TcpConnectFailed => agent_core::events::TCP_CONNECT_FAILED,
            _ => return None,
        };
        // SocketAddr brackets IPv6 addresses: [::1]:5432.
        let s = SocketAddr::new(addr(e.op, &e.saddr), e.sport);
        let d = SocketAddr::new(addr(e.op, &e.daddr), e.dport);
        Some(EventView {
            kind,
            pid: e.pid,
            tid: e.tid,
            comm: comm_str(&e.comm),
            latency_us: e.latency_ns as f64 / 1000.0,
            target: format!("{s} -> {d}"),
            ret: None,
        })
    }
}

/// An event's address: IPv4 in the first 4 bytes (BTF programs) or IPv4-mapped (classic
/// tracepoints) for AF_INET, else IPv6.
fn addr(family: u32, raw: &[u8; 16]) -> IpAddr {
    const AF_INET: u32 = 2;
    let v6 = Ipv6Addr::from(*raw);
    match (family, v6.to_ipv4_mapped()) {
        (AF_INET, Some(v4)) => IpAddr::V4(v4),
        (AF_INET, None) => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        _ => IpAddr::V6(v6),
    }
}

// ---- its section of `watch` ----

use crate::watch::{
    layout::{Line, kv_row},
    model::{Scale, mark, named},
    sections::{
        SectionCtx, TCP_CONNECT_LATENCY_FAMILY, TCP_CONNECT_LATENCY_P99, TCP_COUNTERS,
        TCP_RTT_FAMILY, TCP_RTT_P50, TCP_RTT_P99, probe_down,
    },
};
use agent_core::format::{self, Style::Column};

/// Opens, retransmits and resets per second, RTT and connect latency, with sparklines.
fn watch_section(ctx: &SectionCtx) -> Vec<Line> {
    let (snap, h, width) = (ctx.snap, ctx.history, ctx.width);
    if let Some(lines) = probe_down(snap, Tcp.name(), "TCP") {
        return lines;
    }
    let secs = snap.interval.as_secs_f64().max(1e-9);
    let mut out = vec![Line::plain("TCP")];
    for (key, name) in TCP_COUNTERS {
        let v = snap.value(name, &[]).unwrap_or(0.0) / secs;
        let m = mark(snap, |a| named(a, name));
        out.push(kv_row(
            m,
            &format!("{key}/s"),
            &format::count(v),
            &h.points(name, &[]),
            Scale::FromZero,
            width,
        ));
    }
    let q = |m: &str| {
        snap.value(m, &[])
            .map_or("-".into(), |v| format::number(v, Column))
    };
    out.push(kv_row(
        mark(snap, |a| named(a, TCP_RTT_FAMILY)),
        "rtt p50 / p99 µs",
        &format!("{} / {}", q(TCP_RTT_P50), q(TCP_RTT_P99)),
        &h.points(TCP_RTT_P99, &[]),
        Scale::FromZero,
        width,
    ));
    out.push(kv_row(
        mark(snap, |a| named(a, TCP_CONNECT_LATENCY_FAMILY)),
        "connect p99 µs",
        &q(TCP_CONNECT_LATENCY_P99),
        &h.points(TCP_CONNECT_LATENCY_P99, &[]),
        Scale::FromZero,
        width,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_opens_with_bracketed_ipv6() {
        let view = |e: &Event| TcpState.event(e).unwrap().target;
        let mut e = super::super::tests_support::event(EventKind::TcpConnect);
        assert_eq!(view(&e), "127.0.0.1:40000 -> 10.1.2.3:80");
        // IPv4 in the first 4 bytes (the BTF programs' form) reads the same.
        e.kind = EventKind::TcpAccept as u32;
        e.saddr = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(view(&e), "127.0.0.1:40000 -> 10.1.2.3:80");
        e.op = 10; // AF_INET6
        e.saddr = Ipv6Addr::LOCALHOST.octets();
        e.daddr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(view(&e), "[::1]:40000 -> [::1]:80");
        e.kind = EventKind::SlowSyscall as u32;
        assert!(TcpState.event(&e).is_none());
    }
}
