//! Syscalls: what each tracer adds to a getppid loop.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{Value, json};

use super::{
    Bench,
    driver::Cfg,
    load,
    report::{Table, Target, Verdict, num},
    stats::{Spread, median},
};

impl Bench {
    pub(super) fn syscalls(&mut self) -> Result<Value> {
        let configs: Vec<(&str, Cfg)> = vec![
            ("nothing", Cfg::Nothing),
            (
                "ebpf-agent (--probes syscall)",
                Cfg::Agent(vec!["--output", "none", "--probes", "syscall"]),
            ),
            ("syscount -L (libbpf-tools)", Cfg::Syscount),
            ("bpftrace hist per syscall (raw_syscalls)", Cfg::Bpftrace),
            ("floor: 2 empty raw tracepoints", Cfg::Floor),
            ("floor + BPF run-time stats on", Cfg::FloorStats),
            (
                "clock floor: 2 raw tracepoints reading the clock",
                Cfg::FloorClock,
            ),
        ];
        let (rounds, samples, calls, cpu) = (
            self.plan.sys_rounds,
            self.plan.sys_samples,
            self.plan.sys_calls,
            self.cpu,
        );
        let samples_ns = self.interleaved("syscalls", &configs, rounds, |_| {
            Ok(load::pinned(cpu, move || {
                load::getppid_ns(calls / 10);
                (0..samples)
                    .map(|_| load::getppid_ns(calls))
                    .collect::<Vec<_>>()
            }))
        });
        let ns: Vec<Vec<Option<f64>>> = samples_ns
            .iter()
            .map(|rs| rs.iter().map(|v| v.as_deref().and_then(median)).collect())
            .collect();
        let best: Vec<f64> = samples_ns
            .iter()
            .map(|rs| {
                rs.iter()
                    .flatten()
                    .flatten()
                    .copied()
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        // Added cost per round against "nothing" of the same round, and the agent's ratio.
        let added = |k: usize| -> Vec<Option<f64>> {
            (0..rounds).map(|r| Some(ns[k][r]? - ns[0][r]?)).collect()
        };
        let agent_added = added(1);
        let mut table = Table::new(
            &format!(
                "Syscalls: getppid loop pinned to CPU {cpu}, ns per call ({rounds} rounds × {samples} samples × {calls} calls)"
            ),
            &[
                "attached",
                "ns/call",
                "added ns/call",
                "agent added ÷ this added",
                "best sample ns/call",
                "best added",
            ],
        );
        let mut out = serde_json::Map::new();
        let mut ratio_of = BTreeMap::new();
        for (k, (name, _)) in configs.iter().enumerate() {
            let total: Spread = Spread(ns[k].iter().flatten().copied().collect());
            let add_k = added(k);
            let add: Spread = Spread(add_k.iter().flatten().copied().collect());
            let ratio: Spread = Spread(
                agent_added
                    .iter()
                    .zip(&add_k)
                    .filter_map(|(a, b)| Some(a.as_ref()? / b.as_ref()?))
                    .collect(),
            );
            let (add_s, ratio_s) = match k {
                0 => ("–".into(), "–".into()),
                1 => (add.show(0), "1".into()),
                _ => (add.show(0), ratio.show(2)),
            };
            let best_added =
                (k > 0 && best[k].is_finite() && best[0].is_finite()).then(|| best[k] - best[0]);
            table.row(vec![
                name.to_string(),
                total.show(0),
                add_s,
                ratio_s,
                num(best[k].is_finite().then_some(best[k]), 0),
                num(best_added, 0),
            ]);
            ratio_of.insert(k, ratio.clone());
            out.insert(
                name.to_string(),
                json!({
                    "ns_per_call": total.json(),
                    "added_ns_per_call": if k == 0 { Value::Null } else { add.json() },
                    "agent_added_ratio": if k <= 1 { Value::Null } else { ratio.json() },
                    "best_sample_ns_per_call": best[k].is_finite().then_some(best[k]),
                    "best_added_ns_per_call": best_added,
                }),
            );
        }
        table.note(
            "Medians over rounds (min–max). Each round's figure is the median of its samples; \
             added = that round's ns/call minus the same round's \"nothing\"; ratios are per round. \
             Best sample: the fastest single sample over all rounds (least disturbed by other load). \
             Clock floor: the empty programs plus one bpf_ktime_get_ns each, the least any latency \
             tracer adds (it must read the clock at entry and at exit).",
        );
        self.print(table);
        let ratio_target = |b: &mut Bench, k: usize, limit: f64, peer: &str| {
            let m = ratio_of.get(&k).and_then(Spread::median);
            b.target(Target {
                name: format!("syscall: agent's added ns/call ≤ {limit} × {peer}'s"),
                value: num(m, 2),
                limit: format!("≤ {limit}"),
                verdict: Verdict::of(m.map(|m| m <= limit)),
                note: format!(
                    "agent +{} ns, {peer} +{} ns (medians)",
                    num(
                        Spread(agent_added.iter().flatten().copied().collect()).median(),
                        0
                    ),
                    num(
                        Spread(added(k).iter().flatten().copied().collect()).median(),
                        0
                    )
                ),
            });
        };
        ratio_target(self, 2, 0.5, "syscount -L");
        ratio_target(self, 4, 1.3, "the empty-program floor");
        ratio_target(self, 6, 1.15, "the clock floor");
        Ok(json!({
            "rounds": rounds,
            "samples_per_round": samples,
            "calls_per_sample": calls,
            "cpu": cpu,
            "configs": out,
        }))
    }
}
