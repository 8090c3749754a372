//! Kernel side: each program's own cost under each load (for the hot-path work).

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Bench,
    driver::{Cfg, enable_bpf_stats},
    load, proc,
    report::{Table, Target, Verdict, num},
    stats::Spread,
};

impl Bench {
    pub(super) fn kernel_costs(&mut self) -> Result<Value> {
        let secs = self.plan.costs_secs;
        let dev = self.loop_dev()?;
        let all = load::all_cpus();
        let att = self.attach(&Cfg::Agent(vec![
            "--output",
            "json",
            "--bpf-stats-every",
            "1",
        ]))?;
        let d = Duration::from_secs_f64(secs);
        let mut phases: Vec<(&str, SystemTime, SystemTime)> = Vec::new();
        let res = (|| -> Result<()> {
            let mut phase = |name, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
                eprintln!("bench: kernel costs: {name}");
                let from = SystemTime::now();
                f()?;
                phases.push((name, from, SystemTime::now()));
                Ok(())
            };
            phase("getppid loops on every CPU", &mut || {
                load::getppid_on(&all, d);
                Ok(())
            })?;
            phase("TCP short connections", &mut || {
                load::tcp_short_connections(d).map(drop)
            })?;
            phase("TCP ping-pong", &mut || load::tcp_ping_pong(d).map(drop))?;
            phase("fio on the loop device", &mut || {
                self.fio(&dev, secs).map(drop)
            })?;
            Ok(())
        })();
        if let (Some(h), Some(last)) = (att.helper.as_ref(), phases.last()) {
            let to = last.2;
            h.wait_stdout(Duration::from_secs(3), |l| proc::interval_ends_after(l, to));
        }
        let fin = att.stop()?.context("agent output")?;
        res?;
        let ivs = proc::intervals(&fin.stdout);
        let mut table = Table::new(
            &format!(
                "Kernel side: the agent's programs under each load (all probes, BPF run-time statistics on, {secs} s per load)"
            ),
            &["load", "program", "ns per run", "runs/s"],
        );
        let mut out = Vec::new();
        for (name, from, to) in &phases {
            let inside = proc::inside(&ivs, *from, *to);
            let mut per: BTreeMap<String, (Spread, Spread)> = BTreeMap::new();
            for i in &inside {
                for (tags, ns) in proc::metrics(&i.v, "agent.bpf_ns_per_event") {
                    let Some(p) = tags.get("program").and_then(Value::as_str) else {
                        continue;
                    };
                    let pct = proc::metric(&i.v, "agent.bpf_cpu_pct", &[("program", p)]);
                    let e = per.entry(p.to_string()).or_default();
                    e.0.push(ns);
                    if let Some(pct) = pct.filter(|_| ns > 0.0) {
                        e.1.push(pct / 100.0 * 1e9 / ns);
                    }
                }
            }
            for (p, (ns, rate)) in &per {
                if rate.median().unwrap_or(0.0) < 100.0 {
                    continue;
                }
                table.row(vec![name.to_string(), p.clone(), ns.show(0), rate.show(0)]);
                out.push(json!({
                    "load": name,
                    "program": p,
                    "ns_per_run": ns.json(),
                    "runs_per_s": rate.json(),
                }));
            }
        }
        table.note(
            "agent.bpf_ns_per_event and agent.bpf_cpu_pct{program} per whole interval (median, \
             min–max); programs running under 100 times/s are left out. The statistics add two \
             clock reads to every run, so these are a little above the cost with them off.",
        );
        self.print(table);
        Ok(json!({ "secs": secs, "programs": out }))
    }

    /// Every tool's programs under the same load, from the kernel's run-time statistics (held
    /// on by the bench for the whole section, read with bpftool): what each costs per traced
    /// event inside its programs, without the throughput noise of the tables above.
    pub(super) fn kernel_costs_peers(&mut self) -> Result<Value> {
        let secs = self.plan.costs_peer_secs;
        let file = self.fio_file.clone();
        self.fio(&file, 1.0).context("fio warm-up")?;
        let bpftool = self
            .tools
            .bpftool
            .clone()
            .context("bpftool is not installed")?;
        let _stats = enable_bpf_stats()?;
        // The floor first: the others' rows subtract it.
        let configs: Vec<(&str, Cfg, bool)> = vec![
            ("floor: 2 empty raw tracepoints", Cfg::Floor, false),
            (
                "clock floor: 2 raw tracepoints reading the clock",
                Cfg::FloorClock,
                false,
            ),
            (
                "ebpf-agent --probes syscall",
                Cfg::Agent(vec!["--output", "none", "--probes", "syscall"]),
                false,
            ),
            ("syscount -L", Cfg::Syscount, false),
            ("bpftrace hist per syscall", Cfg::Bpftrace, false),
            (
                "ebpf-agent --probes disk",
                Cfg::Agent(vec!["--output", "none", "--probes", "disk"]),
                true,
            ),
            ("biolatency 1", Cfg::Biolatency(vec!["1"]), true),
        ];
        let mut table = Table::new(
            &format!(
                "Kernel side, every tool under the same load (BPF run-time statistics on for all; getppid loop on CPU {} or fio on the root disk, {secs} s each)",
                self.cpu
            ),
            &[
                "tool",
                "load",
                "ns per event in its programs",
                "minus the floor's",
                "programs: ns per run × runs per event",
            ],
        );
        let mut out = Vec::new();
        let mut floor_ns = None;
        // ns per request of the agent's disk programs, then biolatency's.
        let mut disk_ns: Vec<Option<f64>> = Vec::new();
        let d = Duration::from_secs_f64(secs);
        let cpu = self.cpu;
        // getppid with nothing attached, then with the floor: what a tracepoint costs to
        // dispatch to a program, outside the program's own (timed) run.
        let getppid_ns = move || {
            let (calls, secs) = load::pinned(cpu, move || load::getppid_for(d));
            secs * 1e9 / calls as f64
        };
        let nothing_ns_call = getppid_ns();
        let mut floor_ns_call = None;
        let mut agent_disk: Option<(ProgRuns, load::Fio)> = None;
        for (name, cfg, disk) in &configs {
            eprintln!("bench: kernel costs, peers: {name}");
            let mut fio_run = None;
            let res = (|| -> Result<ProgRuns> {
                let before = prog_stats(&bpftool)?;
                let att = self.attach(cfg)?;
                let mine: Vec<u64> = prog_stats(&bpftool)?
                    .keys()
                    .filter(|id| !before.contains_key(id))
                    .copied()
                    .collect();
                let s0 = prog_stats(&bpftool)?;
                let load = if *disk {
                    self.fio(&file, secs).map(|f| fio_run = Some(f))
                } else {
                    let ns = getppid_ns();
                    if matches!(cfg, Cfg::Floor) {
                        floor_ns_call = Some(ns);
                    }
                    Ok(())
                };
                let s1 = prog_stats(&bpftool)?;
                att.stop()?;
                load?;
                Ok(mine
                    .iter()
                    .filter_map(|id| {
                        let (n, t0, c0) = s0.get(id)?;
                        let (_, t1, c1) = s1.get(id)?;
                        Some((
                            n.clone(),
                            t1.saturating_sub(*t0) as f64,
                            c1.saturating_sub(*c0) as f64,
                        ))
                    })
                    .filter(|p| p.2 > 0.0)
                    .collect())
            })();
            let progs = match res {
                Ok(p) => p,
                Err(e) => {
                    self.errors.push(format!("kernel costs, {name}: {e:#}"));
                    continue;
                }
            };
            // One event = one run of the tool's most frequent program (a syscall runs both the
            // enter and the exit program once; a request, issue and completion).
            let events = progs.iter().map(|p| p.2).fold(0.0, f64::max);
            let total_ns: f64 = progs.iter().map(|p| p.1).sum();
            let per_event = (events > 0.0).then(|| total_ns / events);
            if matches!(cfg, Cfg::Floor) {
                floor_ns = per_event;
            }
            if *disk {
                disk_ns.push(per_event);
                if matches!(cfg, Cfg::Agent(_)) {
                    agent_disk = fio_run.map(|f| (progs.clone(), f));
                }
            }
            let over_floor = match (disk, per_event, floor_ns) {
                (false, Some(a), Some(f)) => num(Some(a - f), 0),
                _ => "–".into(),
            };
            let list: Vec<String> = progs
                .iter()
                .map(|(n, t, c)| format!("{n} {:.0} × {:.2}", t / c, c / events))
                .collect();
            table.row(vec![
                name.to_string(),
                if *disk { "fio" } else { "getppid" }.into(),
                num(per_event, 0),
                over_floor,
                list.join(", "),
            ]);
            out.push(json!({
                "tool": name,
                "load": if *disk { "fio on the root disk" } else { "getppid loop" },
                "ns_per_event": per_event,
                "events": events,
                "programs": progs.iter().map(|(n, t, c)| json!({
                    "name": n, "run_time_ns": t, "run_cnt": c,
                })).collect::<Vec<_>>(),
            }));
        }
        table.note(
            "Only the time inside the programs (the kernel times each run; the statistics' own \
             clock reads inflate every run by the same few tens of ns, which is what the \
             floor's empty programs show). The dispatch from the tracepoint to the program is not \
             in these figures: it is in the floor's row of the syscall table. Programs are the \
             ones the tool loaded (new BPF program ids after it attached).",
        );
        self.print(table);
        // The disk throughput targets drown in a VM's IOPS noise; the programs' own cost per
        // request is what attaching adds, measured under the same load.
        if let [Some(agent), Some(bio)] = disk_ns[..] {
            self.target(Target {
                name: "disk (kernel side): the agent's ns per request ≤ biolatency's".into(),
                value: format!("{:.2}", agent / bio),
                limit: "≤ 1.00".into(),
                verdict: Verdict::of(Some(agent <= bio)),
                note: format!(
                    "agent {agent:.0} ns, biolatency {bio:.0} ns in their programs per request (fio on the root disk)"
                ),
            });
        }
        let share = self.disk_share(agent_disk, nothing_ns_call, floor_ns_call, floor_ns);
        Ok(json!({
            "secs": secs,
            "getppid_ns_nothing": nothing_ns_call,
            "getppid_ns_floor": floor_ns_call,
            "tools": out,
            "agent_disk_share": share,
        }))
    }

    /// What the agent's disk programs add to the root disk's fio load, from the kernel's
    /// timing of them: their run time plus a tracepoint's dispatch per run, over fio's run time.
    /// At queue depth 1 every request waits for both programs, so this is the share of IOPS
    /// the agent can take (an upper bound: the statistics' own clock reads are in it).
    fn disk_share(
        &mut self,
        agent: Option<(ProgRuns, load::Fio)>,
        nothing_ns_call: f64,
        floor_ns_call: Option<f64>,
        floor_run_ns: Option<f64>,
    ) -> Value {
        let (Some((progs, fio)), Some(floor_call), Some(floor_run)) =
            (agent, floor_ns_call, floor_run_ns)
        else {
            return Value::Null;
        };
        // The floor's two programs per getppid: what they added, minus their timed runs.
        let dispatch = ((floor_call - nothing_ns_call - floor_run) / 2.0).max(0.0);
        let run_ns: f64 = progs.iter().map(|p| p.1).sum();
        let runs: f64 = progs.iter().map(|p| p.2).sum();
        let added_ns = run_ns + runs * dispatch;
        let wall_ns = fio.runtime_ms * 1e6;
        if wall_ns <= 0.0 || fio.ios <= 0.0 {
            return Value::Null;
        }
        let share = added_ns / wall_ns;
        let per_write = added_ns / fio.ios;
        self.target(Target {
            name: "disk (root disk): IOPS with the agent within 2% of nothing, from what its programs add per write".into(),
            value: format!("{:.2} %", share * 100.0),
            limit: "≤ 2 %".into(),
            verdict: Verdict::of(Some(share <= 0.02)),
            note: format!(
                "{per_write:.0} ns per fio write ({:.1} program runs: {:.0} ns each + dispatch {dispatch:.0}) of its {:.1} µs",
                runs / fio.ios,
                run_ns / runs,
                wall_ns / fio.ios / 1000.0
            ),
        });
        json!({
            "share": share,
            "ns_per_write": per_write,
            "dispatch_ns_per_run": dispatch,
            "program_ns_per_run": run_ns / runs,
            "runs": runs,
            "fio_ios": fio.ios,
            "fio_runtime_ms": fio.runtime_ms,
        })
    }
}

/// Per program of a tool: (name, run time ns, run count) over a load.
type ProgRuns = Vec<(String, f64, f64)>;

/// Every loaded BPF program's (name, run_time_ns, run_cnt) by id, from `bpftool prog show`.
fn prog_stats(bpftool: &Path) -> Result<BTreeMap<u64, (String, u64, u64)>> {
    let out = Command::new(bpftool)
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool prog show")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let u = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
            Some((
                p.get("id")?.as_u64()?,
                (
                    p.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    u("run_time_ns"),
                    u("run_cnt"),
                ),
            ))
        })
        .collect())
}
