//! TCP over loopback: short connections and ping-pong with each tracer attached.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::{Bench, driver::Cfg, load, report::Table, stats::Spread};

impl Bench {
    pub(super) fn tcp(&mut self) -> Result<Value> {
        let configs: Vec<(&str, Cfg)> = vec![
            ("nothing", Cfg::Nothing),
            (
                "ebpf-agent (--probes tcp)",
                Cfg::Agent(vec!["--output", "none", "--probes", "tcp"]),
            ),
            (
                "ebpf-agent, classic tracepoints",
                Cfg::AgentClassic(vec!["--output", "none", "--probes", "tcp"]),
            ),
        ];
        let (rounds, secs) = (self.plan.tcp_rounds, self.plan.tcp_secs);
        let d = Duration::from_secs_f64(secs);
        let runs = self.interleaved("tcp", &configs, rounds, |_| {
            let s = load::tcp_short_connections(d);
            let p = load::tcp_ping_pong(d);
            Ok((s?, p?))
        });
        let short: Vec<Vec<Option<f64>>> = runs
            .iter()
            .map(|rs| rs.iter().map(|v| v.map(|(s, _)| s)).collect())
            .collect();
        let pp: Vec<Vec<Option<f64>>> = runs
            .iter()
            .map(|rs| rs.iter().map(|v| v.map(|(_, p)| p)).collect())
            .collect();
        let ratio = |v: &Vec<Vec<Option<f64>>>, k: usize| -> Spread {
            Spread(
                (0..rounds)
                    .filter_map(|r| Some(v[k][r]? / v[0][r]?))
                    .collect(),
            )
        };
        let mut table = Table::new(
            &format!("TCP over loopback, {secs} s per load, {rounds} rounds"),
            &[
                "attached",
                "short connections/s",
                "÷ nothing",
                "ping-pong round trips/s",
                "÷ nothing",
            ],
        );
        let mut out = serde_json::Map::new();
        for (k, (name, _)) in configs.iter().enumerate() {
            let s = Spread(short[k].iter().flatten().copied().collect());
            let p = Spread(pp[k].iter().flatten().copied().collect());
            let (rs, rp) = (ratio(&short, k), ratio(&pp, k));
            table.row(vec![
                name.to_string(),
                s.show(0),
                if k == 0 { "1".into() } else { rs.show(3) },
                p.show(0),
                if k == 0 { "1".into() } else { rp.show(3) },
            ]);
            out.insert(
                name.to_string(),
                json!({
                    "short_connections_per_s": s.json(),
                    "short_ratio_to_nothing": rs.json(),
                    "ping_pong_per_s": p.json(),
                    "ping_pong_ratio_to_nothing": rp.json(),
                }),
            );
        }
        table.note(
            "Short connection: connect, send 64 B, receive 64 B, close (server closes first). \
             Ping-pong: one connection, 64 B each way, TCP_NODELAY. Classic tracepoints: the \
             agent as on a kernel without BTF (tcp_probe builds its record on every segment). \
             No target: reported only.",
        );
        self.print(table);
        Ok(json!({ "rounds": rounds, "secs": secs, "configs": out }))
    }
}
