//! Run-queue latency: what the runq probe adds to a context switch, beside libbpf-tools
//! `runqlat`, on a pinned pipe ping-pong (two switches per round trip, the worst case for a
//! scheduler tracer).

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::{
    Bench,
    driver::Cfg,
    load,
    report::{Table, Target, Verdict},
    stats::Spread,
};

impl Bench {
    pub(super) fn runq(&mut self) -> Result<Value> {
        let configs: Vec<(&str, Cfg)> = vec![
            ("nothing", Cfg::Nothing),
            (
                "ebpf-agent (--probes runq)",
                Cfg::Agent(vec!["--output", "none", "--probes", "runq"]),
            ),
            (
                "ebpf-agent, classic tracepoints",
                Cfg::AgentClassic(vec!["--output", "none", "--probes", "runq"]),
            ),
            ("runqlat", Cfg::Runqlat),
        ];
        let (rounds, secs) = (self.plan.tcp_rounds, self.plan.tcp_secs);
        let d = Duration::from_secs_f64(secs);
        let cpu = self.cpu;
        let rates = self.interleaved("runq", &configs, rounds, |_| load::pipe_ping_pong(cpu, d));
        // ns added per context switch in round r: half the round trip's extra time.
        let added = |k: usize, r: usize| -> Option<f64> {
            Some((1e9 / rates[k][r]? - 1e9 / rates[0][r]?) / 2.0)
        };
        let per_round = |k: usize| Spread((0..rounds).filter_map(|r| added(k, r)).collect());
        let mut table = Table::new(
            &format!("Run-queue latency tracing: pinned pipe ping-pong, {secs} s, {rounds} rounds"),
            &[
                "attached",
                "round trips/s",
                "added ns per switch",
                "÷ runqlat's",
            ],
        );
        let peer = configs.len() - 1;
        let mut out = serde_json::Map::new();
        for (k, (name, _)) in configs.iter().enumerate() {
            let rate = Spread(rates[k].iter().flatten().copied().collect());
            let add = per_round(k);
            let vs_peer = Spread(
                (0..rounds)
                    .filter_map(|r| Some(added(k, r)? / added(peer, r)?))
                    .collect(),
            );
            table.row(vec![
                name.to_string(),
                rate.show(0),
                if k == 0 { "–".into() } else { add.show(0) },
                if k == 0 || k == peer {
                    "–".into()
                } else {
                    vs_peer.show(2)
                },
            ]);
            out.insert(
                name.to_string(),
                json!({
                    "round_trips_per_s": rate.json(),
                    "added_ns_per_switch": add.json(),
                    "ratio_to_runqlat": vs_peer.json(),
                }),
            );
            if k == 1 {
                let m = vs_peer.median();
                self.target(Target {
                    name: "runq: agent's added ns per context switch ≤ 1 × runqlat's".into(),
                    value: m.map_or("–".into(), |m| format!("{m:.2}")),
                    limit: "≤ 1".into(),
                    verdict: Verdict::rounds(&vs_peer.0, |v| v <= 1.0),
                    note: format!(
                        "agent +{} ns, runqlat +{} ns per switch (medians)",
                        add.show(0),
                        per_round(peer).show(0)
                    ),
                });
            }
        }
        table.note(
            "Two threads pinned to the load CPU pass a byte through pipes: each round trip is two \
             wake-ups and two context switches. Added ns per switch: (1/rate − 1/rate of nothing) \
             ÷ 2, per round. runqlat: libbpf-tools, no options (one histogram, BTF tracepoints).",
        );
        self.print(table);
        Ok(json!({ "rounds": rounds, "secs": secs, "configs": out }))
    }
}
