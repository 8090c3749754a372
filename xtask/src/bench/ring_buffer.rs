//! The agent itself: the events its ring buffer delivers, and loses, by size.

use anyhow::Result;
use serde_json::{Value, json};

use super::{
    Bench,
    driver::Window,
    load,
    report::{Table, Target, Verdict},
    stats::Spread,
};

impl Bench {
    pub(super) fn ring_buffer(&mut self) -> Result<Value> {
        let (rounds, secs) = (self.plan.ring_rounds, self.plan.ring_secs);
        let all = load::all_cpus();
        // Every size with one loop (the consumer has a CPU of its own), then the largest with
        // a loop on every CPU (more events than one loop makes; the consumer competes for CPU).
        let mut configs: Vec<(u64, Vec<usize>)> = self
            .plan
            .ring_kib
            .iter()
            .map(|&k| (k, vec![self.cpu]))
            .collect();
        if all.len() > 1
            && let Some(&k) = self.plan.ring_kib.last()
        {
            configs.push((k, all.clone()));
        }
        let n = configs.len();
        let mut got: Vec<Vec<Window>> = vec![Vec::new(); n];
        for r in 0..rounds {
            for k in (0..n).map(|i| (i + r) % n) {
                let (kib, cpus) = &configs[k];
                let kib_arg: &'static str = Box::leak(kib.to_string().into_boxed_str());
                eprintln!(
                    "bench: ring buffer round {}/{rounds}: {kib} KiB, {} loop(s)",
                    r + 1,
                    cpus.len()
                );
                let args = [
                    "--probes",
                    "syscall",
                    "--slow-threshold",
                    "0",
                    "--ring-buffer-kib",
                    kib_arg,
                ];
                match self.agent_window(&args, cpus, secs) {
                    Ok(w) => got[k].push(w),
                    Err(e) => self.errors.push(format!("ring buffer, {kib} KiB: {e:#}")),
                }
            }
        }
        let mut table = Table::new(
            &format!(
                "Ring buffer: --probes syscall --slow-threshold 0 (every syscall is an event), getppid loops at full speed ({secs} s windows, {rounds} rounds)"
            ),
            &[
                "--ring-buffer-kib",
                "loops (pinned)",
                "loop syscalls/s",
                "events/s consumed",
                "events lost (sum)",
                "lost/s",
                "agent CPU % of one core",
            ],
        );
        let mut out = Vec::new();
        let mut enough: Option<(u64, usize)> = None;
        let mut best: Option<(u64, f64)> = None;
        for (k, (kib, cpus)) in configs.iter().enumerate() {
            let w = &got[k];
            let s = |f: fn(&Window) -> Option<f64>| Spread(w.iter().filter_map(f).collect());
            let rate = s(|w| Some(w.calls_per_s));
            let ev = s(|w| w.events_per_s);
            let cpu = s(|w| Some(w.cpu_pct));
            let lost: f64 = w.iter().map(|w| w.lost).sum();
            let lost_rate = s(|w| w.lost_per_s);
            let where_ = if cpus.len() == 1 {
                format!("1 (CPU {})", cpus[0])
            } else {
                format!("{} (every CPU)", cpus.len())
            };
            table.row(vec![
                kib.to_string(),
                where_,
                rate.show(0),
                ev.show(0),
                format!("{lost:.0}"),
                lost_rate.show(0),
                cpu.show(1),
            ]);
            if let Some(e) = ev.median() {
                if best.is_none_or(|(_, b)| e > b) {
                    best = Some((*kib, e));
                }
                if enough.is_none() && e >= 1e6 && lost == 0.0 {
                    enough = Some((*kib, cpus.len()));
                }
            }
            out.push(json!({
                "ring_buffer_kib": kib,
                "loop_cpus": cpus,
                "syscalls_per_s": rate.json(),
                "events_per_s": ev.json(),
                "events_lost": lost,
                "events_lost_per_s": lost_rate.json(),
                "cpu_pct": cpu.json(),
                "agent_intervals": w.iter().map(|w| w.intervals).collect::<Vec<_>>(),
            }));
        }
        table.note(
            "events/s: agent.events per whole interval inside the window (median; it also counts \
             the other processes' syscalls); lost: agent.events_lost{probe=syscall} summed over \
             every interval of the runs, lost/s over the whole intervals.",
        );
        self.print(table);
        self.target(Target {
            name: "ring buffer: ≥ 1M events/s consumed with 0 lost".into(),
            value: match (enough, best) {
                (Some((k, l)), _) => format!("met with --ring-buffer-kib {k} ({l} loop(s))"),
                (None, Some((k, e))) => format!("best {e:.0} events/s ({k} KiB)"),
                _ => "–".into(),
            },
            limit: "≥ 1000000/s, 0 lost".into(),
            verdict: Verdict::of(best.map(|_| enough.is_some())),
            note: "smallest ring that met it; the loops' rate (cost per traced syscall) caps \
                   what can be produced"
                .into(),
        });
        Ok(json!({
            "rounds": rounds,
            "secs": secs,
            "configs": out,
            "smallest_kib_meeting_target": enough.map(|e| e.0),
        }))
    }
}
