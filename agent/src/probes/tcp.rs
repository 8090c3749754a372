//! TCP: smoothed RTT (tcp:tcp_probe), connect latency and opens (sock:inet_sock_set_state),
//! both as BTF tracepoints where the kernel's BTF allows, else classic ones; retransmits and
//! resets (raw tracepoints).

use std::path::Path;

use agent_common::{TcpBtf, TpOffsets, layout, maps::progs};

use super::{
    Attach, Program,
    btf::{Btf, BtfError},
    table::{self, HistTable, RowDiff},
    tracefs::{self, TracefsError},
};
use crate::{histogram::LatencyStats, snapshot::Metric};

pub const PROGRAMS: &[Program] = &[
    Program {
        name: progs::INET_SOCK_SET_STATE,
        attach: Attach::Tracepoint("sock", "inet_sock_set_state"),
    },
    Program {
        name: progs::TCP_PROBE,
        attach: Attach::Tracepoint("tcp", "tcp_probe"),
    },
    Program {
        name: progs::TCP_RETRANSMIT_SKB,
        attach: Attach::Raw("tcp_retransmit_skb"),
    },
    Program {
        name: progs::TCP_SEND_RESET,
        attach: Attach::Raw("tcp_send_reset"),
    },
    Program {
        name: progs::TCP_RECEIVE_RESET,
        attach: Attach::Raw("tcp_receive_reset"),
    },
];

/// Preferred: no record built per event (tcp_probe's is large, and it fires per segment).
pub const PROGRAMS_BTF: &[Program] = &[
    Program {
        name: progs::BTF_SOCK_STATE,
        attach: Attach::Btf("inet_sock_set_state"),
    },
    Program {
        name: progs::BTF_TCP_PROBE,
        attach: Attach::Btf("tcp_probe"),
    },
    PROGRAMS[2],
    PROGRAMS[3],
    PROGRAMS[4],
];

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

pub fn read_offsets(tracefs: &Path, o: &mut TpOffsets) -> Result<(), TracefsError> {
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
    Ok(())
}

pub struct TcpProbe;

impl TcpProbe {
    pub fn collect(&self, t: &HistTable, diff: &mut RowDiff, out: &mut Vec<Metric>) {
        if let Some(d) = diff.delta(t, layout::ROW_TCP_RTT) {
            out.push(Metric::counter(
                "tcp.rtt_samples",
                vec![],
                d[layout::CELL_COUNT],
            ));
            if let Some(s) = LatencyStats::from_buckets(table::buckets(d), d[layout::CELL_SUM]) {
                s.push_us("tcp.rtt_us", &vec![], out);
            }
        }
        if let Some(d) = diff.delta(t, layout::ROW_TCP_CONNECT)
            && let Some(s) = LatencyStats::from_buckets(table::buckets(d), d[layout::CELL_SUM])
        {
            s.push_us("tcp.connect_latency_us", &vec![], out);
        }
        for (name, ctr) in [
            ("tcp.connects", layout::CTR_TCP_CONNECTS),
            ("tcp.accepts", layout::CTR_TCP_ACCEPTS),
            ("tcp.retransmits", layout::CTR_TCP_RETRANSMITS),
            ("tcp.resets", layout::CTR_TCP_RESETS),
        ] {
            out.push(Metric::counter(name, vec![], diff.counter(t, ctr)));
        }
    }
}
