//! The agent itself: its process's CPU and memory, idle and under load.

use anyhow::Result;
use serde_json::{Value, json};

use super::{
    Bench,
    driver::Window,
    load,
    report::{Table, Target, Verdict, num},
    stats::Spread,
};

impl Bench {
    pub(super) fn agent_itself(&mut self) -> Result<Value> {
        let (rounds, secs) = (self.plan.self_rounds, self.plan.self_secs);
        let all = load::all_cpus();
        let states = [
            ("idle, all probes", vec![]),
            (
                "getppid loops at full speed on every CPU, all probes",
                all.clone(),
            ),
        ];
        let mut got: Vec<Vec<Window>> = vec![Vec::new(), Vec::new()];
        for r in 0..rounds {
            for k in (0..2).map(|i| (i + r) % 2) {
                eprintln!(
                    "bench: agent itself round {}/{rounds}: {}",
                    r + 1,
                    states[k].0
                );
                match self.agent_window(&[], &states[k].1, secs) {
                    Ok(w) => got[k].push(w),
                    Err(e) => self
                        .errors
                        .push(format!("agent itself, {}: {e:#}", states[k].0)),
                }
            }
        }
        let mut table = Table::new(
            &format!(
                "The agent itself: its process's CPU and memory ({secs} s windows, {rounds} rounds)"
            ),
            &[
                "state",
                "traced syscalls/s (loop)",
                "agent CPU % of one core",
                "of which user %",
                "agent.cpu_pct (JSON)",
                "RSS MiB (max)",
                "peak RSS MiB (VmHWM)",
            ],
        );
        let mut out = serde_json::Map::new();
        let (mut rss_max, mut peak_max): (f64, f64) = (0.0, 0.0);
        for (k, (name, _)) in states.iter().enumerate() {
            let s = |f: fn(&Window) -> Option<f64>| Spread(got[k].iter().filter_map(f).collect());
            let rate = s(|w| Some(w.calls_per_s));
            let cpu = s(|w| Some(w.cpu_pct));
            let user = s(|w| Some(w.user_pct));
            let jcpu = s(|w| w.json_cpu_pct);
            let rss = s(|w| Some(w.rss_bytes / 1048576.0));
            let peak = s(|w| Some(w.peak_bytes / 1048576.0));
            rss_max = rss_max.max(rss.max().unwrap_or(0.0));
            peak_max = peak_max.max(peak.max().unwrap_or(0.0));
            table.row(vec![
                name.to_string(),
                if k == 0 { "–".into() } else { rate.show(0) },
                cpu.show(2),
                user.show(2),
                jcpu.show(2),
                num(rss.max(), 1),
                num(peak.max(), 1),
            ]);
            out.insert(
                name.to_string(),
                json!({
                    "syscalls_per_s": rate.json(),
                    "cpu_pct": cpu.json(),
                    "user_cpu_pct": user.json(),
                    "agent_cpu_pct_json": jcpu.json(),
                    "rss_mib": rss.json(),
                    "peak_rss_mib": peak.json(),
                    "agent_intervals": got[k].iter().map(|w| w.intervals).collect::<Vec<_>>(),
                }),
            );
            if k == 1 {
                let m = cpu.median();
                let r = rate.median();
                self.target(Target {
                    name: "agent: userspace CPU < 1% of one core at ≥ 1M traced syscalls/s".into(),
                    value: format!("{} %", num(m, 2)),
                    limit: "< 1 %".into(),
                    verdict: Verdict::of(match (m, r) {
                        (Some(m), Some(r)) if r >= 1e6 => Some(m < 1.0),
                        _ => None,
                    }),
                    note: format!(
                        "at {} syscalls/s; utime+stime of the agent's process over the window",
                        num(r, 0)
                    ),
                });
            }
        }
        table.note(
            "CPU: utime+stime of every agent thread (/proc/PID/stat) over the window, in % of one \
             core (10 ms ticks: 0.16% is one tick in a 6 s window); agent.cpu_pct is the agent's \
             own figure over each 1 s interval. The kernel programs' cost is not in this column: \
             see the syscall table and the kernel-side table.",
        );
        self.print(table);
        self.target(Target {
            name: "agent: RSS < 32 MiB".into(),
            value: format!("{rss_max:.1} MiB"),
            limit: "< 32 MiB".into(),
            verdict: Verdict::of((rss_max > 0.0).then_some(rss_max.max(peak_max) < 32.0)),
            note: format!(
                "max over the idle and loaded windows; peak since start {peak_max:.1} MiB (VmHWM: parsing the kernel's BTF at start), also below the limit for a PASS"
            ),
        });
        Ok(json!({ "rounds": rounds, "secs": secs, "states": out }))
    }
}
