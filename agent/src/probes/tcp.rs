//! TCP: smoothed RTT (tcp:tcp_probe), connect latency and opens (sock:inet_sock_set_state),
//! retransmits and resets (raw tracepoints).

use std::path::Path;

use agent_common::{TpOffsets, layout, maps::progs};

use super::{
    Attach, Program,
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
